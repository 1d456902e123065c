//! Elementwise ops: `add`, `sub`, `mul` (same shapes), `mul_row` (broadcast a `[cols]` vector
//! over rows), `scale` (by a constant), `silu`.

use crate::error::{shape_err, Result};
use crate::simd::{exp, multiversion};
use crate::tape::{Backward, GradBuf, Tape, Var};

#[derive(Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
}

struct BinaryBack {
    op: Binary,
    a: Var,
    b: Var,
}

struct MulRowBack {
    x: Var,
    v: Var,
}

struct ScaleBack {
    x: Var,
    s: f32,
}

struct SiluBack {
    x: Var,
}

impl Tape<'_> {
    fn binary(&mut self, op: Binary, a: Var, b: Var) -> Result<Var> {
        let name = match op {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
        };
        if self.shape(a) != self.shape(b) {
            return Err(shape_err(
                name,
                format!("{} and {}", self.shape(a), self.shape(b)),
            ));
        }
        let (av, bv) = (self.value(a), self.value(b));
        let y: Vec<f32> = match op {
            Binary::Add => av.iter().zip(bv).map(|(x, y)| x + y).collect(),
            Binary::Sub => av.iter().zip(bv).map(|(x, y)| x - y).collect(),
            Binary::Mul => av.iter().zip(bv).map(|(x, y)| x * y).collect(),
        };
        let shape = self.shape(a).clone();
        Ok(self.push_op(shape, y, &[a, b], BinaryBack { op, a, b }))
    }

    /// `a + b` (same shapes).
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Add, a, b)
    }

    /// `a - b` (same shapes).
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Sub, a, b)
    }

    /// `a * b` elementwise (same shapes).
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Mul, a, b)
    }

    /// `x[rows, cols] * v[cols]`, each row multiplied elementwise by `v`.
    pub fn mul_row(&mut self, x: Var, v: Var) -> Result<Var> {
        let cols = self.shape(x).cols();
        if self.shape(v).numel() != cols || self.shape(x).dims().is_empty() {
            return Err(shape_err(
                "mul_row",
                format!("x {} and row vector {}", self.shape(x), self.shape(v)),
            ));
        }
        let vv = self.value(v);
        let mut y = self.value(x).to_vec();
        for row in y.chunks_exact_mut(cols) {
            for (a, b) in row.iter_mut().zip(vv) {
                *a *= b;
            }
        }
        let shape = self.shape(x).clone();
        Ok(self.push_op(shape, y, &[x, v], MulRowBack { x, v }))
    }

    /// `s * x` for a constant `s`.
    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        let y = self.value(x).iter().map(|v| v * s).collect();
        let shape = self.shape(x).clone();
        Ok(self.push_op(shape, y, &[x], ScaleBack { x, s }))
    }

    /// `silu(x) = x · σ(x)` elementwise.
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        let mut y = vec![0f32; self.shape(x).numel()];
        silu_forward(self.value(x), &mut y);
        let shape = self.shape(x).clone();
        Ok(self.push_op(shape, y, &[x], SiluBack { x }))
    }
}

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

#[inline(always)]
fn silu_forward_kernel(x: &[f32], y: &mut [f32]) {
    for (yv, &v) in y.iter_mut().zip(x) {
        *yv = v * sigmoid(v);
    }
}

#[inline(always)]
fn silu_backward_kernel(x: &[f32], g: &[f32], acc: &mut [f32]) {
    for ((a, gv), &x) in acc.iter_mut().zip(g).zip(x) {
        let s = sigmoid(x);
        *a += gv * s * (1.0 + x * (1.0 - s));
    }
}

multiversion! {
    fn silu_forward(x: &[f32], y: &mut [f32]) => silu_forward_kernel;
}

multiversion! {
    fn silu_backward(x: &[f32], g: &[f32], acc: &mut [f32]) => silu_backward_kernel;
}

impl Backward for BinaryBack {
    fn name(&self) -> &'static str {
        match self.op {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
        }
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        match self.op {
            Binary::Add | Binary::Sub => {
                grads.with(self.a, |acc, _| {
                    acc.iter_mut().zip(g).for_each(|(a, v)| *a += v)
                });
                let sign = if matches!(self.op, Binary::Add) {
                    1.0
                } else {
                    -1.0
                };
                grads.with(self.b, |acc, _| {
                    acc.iter_mut().zip(g).for_each(|(a, v)| *a += sign * v)
                });
            }
            Binary::Mul => {
                let (av, bv) = (tape.value(self.a), tape.value(self.b));
                grads.with(self.a, |acc, _| {
                    for ((a, gv), o) in acc.iter_mut().zip(g).zip(bv) {
                        *a += gv * o;
                    }
                });
                grads.with(self.b, |acc, _| {
                    for ((a, gv), o) in acc.iter_mut().zip(g).zip(av) {
                        *a += gv * o;
                    }
                });
            }
        }
        Ok(())
    }
}

impl Backward for MulRowBack {
    fn name(&self) -> &'static str {
        "mul_row"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let (xv, vv) = (tape.value(self.x), tape.value(self.v));
        let cols = vv.len();
        grads.with(self.x, |acc, _| {
            for (arow, grow) in acc.chunks_exact_mut(cols).zip(g.chunks_exact(cols)) {
                for ((a, gv), v) in arow.iter_mut().zip(grow).zip(vv) {
                    *a += gv * v;
                }
            }
        });
        grads.with(self.v, |acc, _| {
            for (grow, xrow) in g.chunks_exact(cols).zip(xv.chunks_exact(cols)) {
                for ((a, gv), x) in acc.iter_mut().zip(grow).zip(xrow) {
                    *a += gv * x;
                }
            }
        });
        Ok(())
    }
}

impl Backward for ScaleBack {
    fn name(&self) -> &'static str {
        "scale"
    }

    fn backward(&self, _tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        grads.with(self.x, |acc, _| {
            acc.iter_mut().zip(g).for_each(|(a, v)| *a += self.s * v)
        });
        Ok(())
    }
}

impl Backward for SiluBack {
    fn name(&self) -> &'static str {
        "silu"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let xv = tape.value(self.x);
        grads.with(self.x, |acc, _| silu_backward(xv, g, acc));
        Ok(())
    }
}
