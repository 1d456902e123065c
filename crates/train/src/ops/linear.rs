//! `linear(x, w, b) = x · wᵀ + b` with torch's `nn.Linear` weight layout `[out, in]`.

use crate::error::{shape_err, Result};
use crate::tape::{Backward, GradBuf, Tape, Var};
use crate::tensor::Shape;

struct LinearBack {
    x: Var,
    w: Var,
    b: Option<Var>,
    m: usize,
    n: usize,
    k: usize,
}

impl Tape<'_> {
    /// `x[M,K] · w[N,K]ᵀ (+ bias[N])` → `[M,N]` (a vector `x[K]` gives a vector `[N]`).
    pub fn linear(&mut self, x: Var, w: Var, bias: Option<Var>) -> Result<Var> {
        let (xs, ws) = (self.shape(x).clone(), self.shape(w).clone());
        let (m, k) = (xs.rows(), xs.cols());
        if ws.dims().len() != 2 || ws.cols() != k || xs.dims().is_empty() {
            return Err(shape_err(
                "linear",
                format!("x {xs} and weight {ws}: want x [M,K] and weight [N,K]"),
            ));
        }
        let n = ws.rows();
        if let Some(b) = bias {
            if self.shape(b).numel() != n {
                return Err(shape_err(
                    "linear",
                    format!("bias {} for {n} outputs", self.shape(b)),
                ));
            }
        }
        let mut y = vec![0f32; m * n];
        match self.param_transposed(w) {
            Some(wt) => self
                .compute()
                .nn((m, n, k), self.value(x), wt, &mut y, false)?,
            None => self
                .compute()
                .nt((m, n, k), self.value(x), self.value(w), &mut y, false)?,
        }
        if let Some(b) = bias {
            let bv = self.value(b);
            for row in y.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(bv) {
                    *v += b;
                }
            }
        }
        let shape = if xs.is_vector() {
            Shape::vector(n)
        } else {
            Shape::matrix(m, n)
        };
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        Ok(self.push_op(
            shape,
            y,
            &inputs,
            LinearBack {
                x,
                w,
                b: bias,
                m,
                n,
                k,
            },
        ))
    }
}

impl Backward for LinearBack {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        let cx = tape.compute();
        // dx[M,K] = g[M,N] · w[N,K]
        grads
            .with(self.x, |acc, accumulate| {
                cx.nn((m, k, n), g, tape.value(self.w), acc, accumulate)
            })
            .transpose()?;
        // dw[N,K] = g[M,N]ᵀ · x[M,K]
        grads
            .with(self.w, |acc, accumulate| {
                cx.tn((n, k, m), g, tape.value(self.x), acc, accumulate)
            })
            .transpose()?;
        if let Some(b) = self.b {
            grads.with(b, |acc, _| {
                for row in g.chunks_exact(n) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
            });
        }
        Ok(())
    }
}
