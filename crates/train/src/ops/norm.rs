//! `rms_norm(x, w, eps) = x · rsqrt(mean(x²) + eps) · w`, per row.

use crate::error::{shape_err, Result};
use crate::tape::{Backward, GradBuf, Tape, Var};

struct RmsNormBack {
    x: Var,
    w: Var,
    /// `rsqrt(mean(x²) + eps)` per row.
    r: Vec<f32>,
}

impl Tape<'_> {
    /// RMSNorm of each row of `x[rows, d]` with weight `w[d]` (Llama's `RMSNorm`).
    pub fn rms_norm(&mut self, x: Var, w: Var, eps: f32) -> Result<Var> {
        let d = self.shape(x).cols();
        if self.shape(w).numel() != d || self.shape(x).dims().is_empty() || d == 0 {
            return Err(shape_err(
                "rms_norm",
                format!("x {} with weight {}", self.shape(x), self.shape(w)),
            ));
        }
        let (xv, wv) = (self.value(x), self.value(w));
        let rows = xv.len() / d;
        let mut y = vec![0f32; xv.len()];
        let mut r = Vec::with_capacity(rows);
        for (xr, yr) in xv.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let ri = 1.0 / (ss / d as f32 + eps).sqrt();
            for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(wv) {
                *yv = xv * ri * wv;
            }
            r.push(ri);
        }
        let shape = self.shape(x).clone();
        Ok(self.push_op(shape, y, &[x, w], RmsNormBack { x, w, r }))
    }
}

impl Backward for RmsNormBack {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let (xv, wv) = (tape.value(self.x), tape.value(self.w));
        let d = wv.len();
        grads.with(self.x, |acc, _| {
            for (((ar, xr), gr), &r) in acc
                .chunks_exact_mut(d)
                .zip(xv.chunks_exact(d))
                .zip(g.chunks_exact(d))
                .zip(&self.r)
            {
                // dx = r·(g∘w) − x · r³/d · Σ (g∘w∘x)
                let dot: f32 = gr.iter().zip(wv).zip(xr).map(|((g, w), x)| g * w * x).sum();
                let c = r * r * r * dot / d as f32;
                for (((a, g), w), x) in ar.iter_mut().zip(gr).zip(wv).zip(xr) {
                    *a += r * g * w - c * x;
                }
            }
        });
        grads.with(self.w, |acc, _| {
            for ((xr, gr), &r) in xv.chunks_exact(d).zip(g.chunks_exact(d)).zip(&self.r) {
                for ((a, g), x) in acc.iter_mut().zip(gr).zip(xr) {
                    *a += g * x * r;
                }
            }
        });
        Ok(())
    }
}
