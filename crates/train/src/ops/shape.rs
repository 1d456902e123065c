//! Column and row concatenation and column slices of matrices.

use crate::error::{shape_err, Result};
use crate::tape::{Backward, GradBuf, Tape, Var};
use crate::tensor::Shape;

struct ConcatColsBack {
    parts: Vec<(Var, usize)>,
}

struct SliceColsBack {
    x: Var,
    start: usize,
}

struct ConcatRowsBack {
    parts: Vec<Var>,
}

impl Tape<'_> {
    /// Matrices `[rows, c_i]` side by side → `[rows, Σ c_i]`.
    pub fn concat_cols(&mut self, parts: &[Var]) -> Result<Var> {
        let Some(&first) = parts.first() else {
            return Err(shape_err("concat_cols", "no inputs"));
        };
        let rows = self.shape(first).rows();
        let mut widths = Vec::with_capacity(parts.len());
        for &p in parts {
            let s = self.shape(p);
            if s.dims().len() != 2 || s.rows() != rows {
                return Err(shape_err(
                    "concat_cols",
                    format!("input {s} among matrices of {rows} rows"),
                ));
            }
            widths.push(s.cols());
        }
        let total: usize = widths.iter().sum();
        let mut y = vec![0f32; rows * total];
        let mut off = 0;
        for (&p, &w) in parts.iter().zip(&widths) {
            let v = self.value(p);
            for r in 0..rows {
                y[r * total + off..r * total + off + w].copy_from_slice(&v[r * w..(r + 1) * w]);
            }
            off += w;
        }
        let back = ConcatColsBack {
            parts: parts.iter().copied().zip(widths).collect(),
        };
        Ok(self.push_op(Shape::matrix(rows, total), y, parts, back))
    }

    /// Columns `start..start + len` of `x[rows, cols]`.
    pub fn slice_cols(&mut self, x: Var, start: usize, len: usize) -> Result<Var> {
        let s = self.shape(x).clone();
        if s.dims().len() != 2 || start + len > s.cols() {
            return Err(shape_err(
                "slice_cols",
                format!("columns {start}..{} of {s}", start + len),
            ));
        }
        let (rows, cols) = (s.rows(), s.cols());
        let v = self.value(x);
        let mut y = Vec::with_capacity(rows * len);
        for r in 0..rows {
            y.extend_from_slice(&v[r * cols + start..r * cols + start + len]);
        }
        Ok(self.push_op(
            Shape::matrix(rows, len),
            y,
            &[x],
            SliceColsBack { x, start },
        ))
    }

    /// Matrices `[r_i, cols]` stacked → `[Σ r_i, cols]`.
    pub fn concat_rows(&mut self, parts: &[Var]) -> Result<Var> {
        let Some(&first) = parts.first() else {
            return Err(shape_err("concat_rows", "no inputs"));
        };
        let cols = self.shape(first).cols();
        let mut rows = 0;
        for &p in parts {
            let s = self.shape(p);
            if s.dims().len() != 2 || s.cols() != cols {
                return Err(shape_err(
                    "concat_rows",
                    format!("input {s} among matrices of {cols} columns"),
                ));
            }
            rows += s.rows();
        }
        let mut y = Vec::with_capacity(rows * cols);
        for &p in parts {
            y.extend_from_slice(self.value(p));
        }
        let back = ConcatRowsBack {
            parts: parts.to_vec(),
        };
        Ok(self.push_op(Shape::matrix(rows, cols), y, parts, back))
    }
}

impl Backward for ConcatColsBack {
    fn name(&self) -> &'static str {
        "concat_cols"
    }

    fn backward(&self, _tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let total: usize = self.parts.iter().map(|(_, w)| w).sum();
        let rows = g.len() / total.max(1);
        let mut off = 0;
        for &(p, w) in &self.parts {
            grads.with(p, |acc, _| {
                for r in 0..rows {
                    let src = &g[r * total + off..r * total + off + w];
                    for (a, v) in acc[r * w..(r + 1) * w].iter_mut().zip(src) {
                        *a += v;
                    }
                }
            });
            off += w;
        }
        Ok(())
    }
}

impl Backward for SliceColsBack {
    fn name(&self) -> &'static str {
        "slice_cols"
    }

    fn backward(&self, tape: &Tape<'_>, out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let cols = tape.shape(self.x).cols();
        let len = tape.shape(out).cols();
        let start = self.start;
        grads.with(self.x, |acc, _| {
            for (arow, grow) in acc.chunks_exact_mut(cols).zip(g.chunks_exact(len)) {
                for (a, v) in arow[start..start + len].iter_mut().zip(grow) {
                    *a += v;
                }
            }
        });
        Ok(())
    }
}

impl Backward for ConcatRowsBack {
    fn name(&self) -> &'static str {
        "concat_rows"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let mut off = 0;
        for &p in &self.parts {
            let n = tape.shape(p).numel();
            grads.with(p, |acc, _| {
                for (a, v) in acc.iter_mut().zip(&g[off..off + n]) {
                    *a += v;
                }
            });
            off += n;
        }
        Ok(())
    }
}
