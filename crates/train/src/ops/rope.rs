//! Rotary position embedding in the Hugging Face "rotate halves" layout: in each head of
//! `head_dim`, element `i` pairs with `i + head_dim/2` and rotates by
//! `pos · theta^(-2i/head_dim)`.

use crate::error::{shape_err, Result};
use crate::tape::{Backward, GradBuf, Tape, Var};

struct RopeBack {
    x: Var,
    head_dim: usize,
    /// Per row, `head_dim/2` cosines then `head_dim/2` sines.
    cs: Vec<f32>,
}

/// Cosines and sines per row (`half` of each), angles computed in f64.
fn tables(positions: &[usize], half: usize, theta: f64) -> Vec<f32> {
    let hd = 2 * half;
    let inv: Vec<f64> = (0..half)
        .map(|i| theta.powf(-2.0 * i as f64 / hd as f64))
        .collect();
    let mut cs = Vec::with_capacity(positions.len() * hd);
    for &p in positions {
        let start = cs.len();
        cs.extend(inv.iter().map(|f| (p as f64 * f).cos() as f32));
        cs.extend(inv.iter().map(|f| (p as f64 * f).sin() as f32));
        debug_assert_eq!(cs.len() - start, hd);
    }
    cs
}

/// Rotates each head of each row by its `(cos, sin)` (`sign = -1` for the inverse rotation).
fn rotate(x: &[f32], cols: usize, head_dim: usize, cs: &[f32], sign: f32, y: &mut [f32]) {
    let half = head_dim / 2;
    for ((xr, yr), csr) in x
        .chunks_exact(cols)
        .zip(y.chunks_exact_mut(cols))
        .zip(cs.chunks_exact(head_dim))
    {
        let (cos, sin) = csr.split_at(half);
        for (xh, yh) in xr.chunks_exact(head_dim).zip(yr.chunks_exact_mut(head_dim)) {
            let (x1, x2) = xh.split_at(half);
            let (y1, y2) = yh.split_at_mut(half);
            for i in 0..half {
                let (c, s) = (cos[i], sign * sin[i]);
                y1[i] = x1[i] * c - x2[i] * s;
                y2[i] = x2[i] * c + x1[i] * s;
            }
        }
    }
}

impl Tape<'_> {
    /// RoPE on `x[T, n_heads·head_dim]`, row `t` at position `positions[t]`, base `theta`
    /// (HF halves layout; `head_dim` even).
    pub fn rope(
        &mut self,
        x: Var,
        positions: &[usize],
        head_dim: usize,
        theta: f32,
    ) -> Result<Var> {
        let s = self.shape(x).clone();
        let (rows, cols) = (s.rows(), s.cols());
        if s.dims().len() != 2
            || head_dim == 0
            || head_dim % 2 != 0
            || cols % head_dim != 0
            || positions.len() != rows
        {
            return Err(shape_err(
                "rope",
                format!(
                    "x {s}, head_dim {head_dim}, {} positions: want [T, heads·head_dim], even head_dim, T positions",
                    positions.len()
                ),
            ));
        }
        let cs = tables(positions, head_dim / 2, theta as f64);
        let mut y = vec![0f32; rows * cols];
        rotate(self.value(x), cols, head_dim, &cs, 1.0, &mut y);
        Ok(self.push_op(s, y, &[x], RopeBack { x, head_dim, cs }))
    }
}

impl Backward for RopeBack {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let cols = tape.shape(self.x).cols();
        let mut dx = vec![0f32; g.len()];
        rotate(g, cols, self.head_dim, &self.cs, -1.0, &mut dx);
        grads.add(self.x, dx);
        Ok(())
    }
}
