//! Reductions to a scalar: `sum`, `mean`, and softmax cross-entropy against hard targets or
//! soft target distributions.
//!
//! Both cross-entropies return `Σ_t w_t · CE_t / normaliser`: `row_weights` weight the rows
//! (0 skips a row, which then costs nothing), and the caller passes the normaliser (typically
//! the total weight of the whole batch, so that a batch processed a sequence at a time sums to
//! the same loss as one big batch). With soft targets `CE_t = −Σ_v P[t,v] · log softmax(z_t)_v`
//! (the cross-entropy, which differs from `KL(P ‖ softmax z)` by P's entropy, a constant with
//! the same gradient).

use crate::error::{shape_err, Error, Result};
use crate::simd::{dot, exp, max, multiversion, sum};
use crate::tape::{Backward, GradBuf, Tape, Var};
use crate::tensor::Shape;

struct SumBack {
    x: Var,
    scale: f32,
}

enum Targets<'a> {
    Hard(Vec<u32>),
    Soft(&'a [f32]),
}

struct CrossEntropyBack<'a> {
    logits: Var,
    targets: Targets<'a>,
    weights: Vec<f32>,
    normaliser: f32,
    lse: Vec<f32>,
}

/// `log Σ exp(z)` of one row.
#[inline(always)]
fn log_sum_exp(z: &[f32]) -> f32 {
    let mx = max(z);
    if mx == f32::NEG_INFINITY {
        return mx;
    }
    let mut acc = [0f32; 16];
    let chunks = z.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += exp(c[i] - mx);
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    for &v in rest {
        s += exp(v - mx);
    }
    mx + s.ln()
}

impl<'a> Tape<'a> {
    /// Sum of all elements → scalar.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let s: f64 = self.value(x).iter().map(|&v| v as f64).sum();
        Ok(self.push_op(
            Shape::scalar(),
            vec![s as f32],
            &[x],
            SumBack { x, scale: 1.0 },
        ))
    }

    /// Mean of all elements → scalar (an empty input is an error).
    pub fn mean(&mut self, x: Var) -> Result<Var> {
        let n = self.shape(x).numel();
        if n == 0 {
            return Err(shape_err("mean", "empty input"));
        }
        let s: f64 = self.value(x).iter().map(|&v| v as f64).sum();
        let scale = 1.0 / n as f32;
        Ok(self.push_op(
            Shape::scalar(),
            vec![(s / n as f64) as f32],
            &[x],
            SumBack { x, scale },
        ))
    }

    fn check_ce(
        &self,
        op: &'static str,
        logits: Var,
        row_weights: &[f32],
        normaliser: f32,
    ) -> Result<(usize, usize)> {
        let s = self.shape(logits);
        if s.dims().len() != 2 {
            return Err(shape_err(op, format!("logits {s} are not a matrix [T, V]")));
        }
        let (t, v) = (s.rows(), s.cols());
        if row_weights.len() != t {
            return Err(Error::BufferLen {
                what: format!("{op} row weights"),
                want: t,
                got: row_weights.len(),
            });
        }
        if !(normaliser.is_finite() && normaliser > 0.0) {
            return Err(Error::Invalid {
                what: "cross-entropy normaliser",
                reason: format!("{normaliser} is not a positive finite number"),
            });
        }
        if let Some(w) = row_weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(Error::Invalid {
                what: "cross-entropy row weight",
                reason: format!("{w} is not a non-negative finite number"),
            });
        }
        Ok((t, v))
    }

    /// `Σ_t w_t · (−log softmax(logits_t)[targets_t]) / normaliser` → scalar. Targets must be
    /// below the vocabulary size `V` of `logits[T, V]`.
    pub fn softmax_cross_entropy_hard(
        &mut self,
        logits: Var,
        targets: &[u32],
        row_weights: &[f32],
        normaliser: f32,
    ) -> Result<Var> {
        let op = "softmax_cross_entropy_hard";
        let (t, v) = self.check_ce(op, logits, row_weights, normaliser)?;
        if targets.len() != t {
            return Err(Error::BufferLen {
                what: format!("{op} targets"),
                want: t,
                got: targets.len(),
            });
        }
        if let Some(&bad) = targets.iter().find(|&&y| y as usize >= v) {
            return Err(Error::Index {
                op,
                index: bad as usize,
                size: v,
            });
        }
        let z = self.value(logits);
        let mut lse = vec![0f32; t];
        let hard = Targets::Hard(targets.to_vec());
        let total = ce_forward(z, v, row_weights, &hard, &mut lse);
        let back = CrossEntropyBack {
            logits,
            targets: hard,
            weights: row_weights.to_vec(),
            normaliser,
            lse,
        };
        let loss = (total / normaliser as f64) as f32;
        Ok(self.push_op(Shape::scalar(), vec![loss], &[logits], back))
    }

    /// `Σ_t w_t · (−Σ_v probs[t,v] · log softmax(logits_t)_v) / normaliser` → scalar, with
    /// `probs[T', V]` (row-major, borrowed for the tape's life: backward reads it again).
    /// `probs` may cover only the first `T' ≤ T` rows when the rows after it have weight 0
    /// (sequence ends).
    pub fn softmax_cross_entropy_soft(
        &mut self,
        logits: Var,
        probs: &'a [f32],
        row_weights: &[f32],
        normaliser: f32,
    ) -> Result<Var> {
        let op = "softmax_cross_entropy_soft";
        let (t, v) = self.check_ce(op, logits, row_weights, normaliser)?;
        let covered = probs.len() / v.max(1);
        if probs.len() % v.max(1) != 0 || covered > t {
            return Err(Error::BufferLen {
                what: format!("{op} target probabilities [≤{t}, {v}]"),
                want: t * v,
                got: probs.len(),
            });
        }
        if let Some(r) = (covered..t).find(|&r| row_weights[r] != 0.0) {
            return Err(Error::Invalid {
                what: "cross-entropy row weight",
                reason: format!(
                    "row {r} has weight {} but no target distribution ({covered} rows given)",
                    row_weights[r]
                ),
            });
        }
        let z = self.value(logits);
        let mut lse = vec![0f32; t];
        let total = ce_forward(z, v, row_weights, &Targets::Soft(probs), &mut lse);
        let back = CrossEntropyBack {
            logits,
            targets: Targets::Soft(probs),
            weights: row_weights.to_vec(),
            normaliser,
            lse,
        };
        let loss = (total / normaliser as f64) as f32;
        Ok(self.push_op(Shape::scalar(), vec![loss], &[logits], back))
    }
}

impl Backward for SumBack {
    fn name(&self) -> &'static str {
        "sum"
    }

    fn backward(&self, _tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let d = g[0] * self.scale;
        grads.with(self.x, |acc, _| acc.iter_mut().for_each(|a| *a += d));
        Ok(())
    }
}

impl Backward for CrossEntropyBack<'_> {
    fn name(&self) -> &'static str {
        match self.targets {
            Targets::Hard(_) => "cross_entropy_hard",
            Targets::Soft(_) => "cross_entropy_soft",
        }
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let z = tape.value(self.logits);
        let v = tape.shape(self.logits).cols();
        let scale = g[0] / self.normaliser;
        grads.with(self.logits, |acc, _| {
            ce_backward(z, v, &self.weights, &self.lse, &self.targets, scale, acc)
        });
        Ok(())
    }
}

/// Weighted CE sum over rows (not normalised), writing each weighted row's lse.
#[inline(always)]
fn ce_forward_kernel(
    z: &[f32],
    v: usize,
    weights: &[f32],
    targets: &Targets<'_>,
    lse: &mut [f32],
) -> f64 {
    let mut total = 0f64;
    for (r, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let zr = &z[r * v..(r + 1) * v];
        let l = log_sum_exp(zr);
        lse[r] = l;
        let ce = match targets {
            Targets::Hard(y) => (l - zr[y[r] as usize]) as f64,
            Targets::Soft(p) => {
                // Σ_v p (lse − z) = lse·Σp − p·z
                let pr = &p[r * v..(r + 1) * v];
                l as f64 * sum(pr) as f64 - dot(pr, zr) as f64
            }
        };
        total += w as f64 * ce;
    }
    total
}

/// `acc += scale · w_t · (softmax(z_t)·Σp_t − p_t)` per weighted row.
#[inline(always)]
fn ce_backward_kernel(
    z: &[f32],
    v: usize,
    weights: &[f32],
    lse: &[f32],
    targets: &Targets<'_>,
    scale: f32,
    acc: &mut [f32],
) {
    for (r, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let c = scale * w;
        let (zr, ar) = (&z[r * v..(r + 1) * v], &mut acc[r * v..(r + 1) * v]);
        let l = lse[r];
        match targets {
            Targets::Hard(y) => {
                for (a, &zv) in ar.iter_mut().zip(zr) {
                    *a += c * exp(zv - l);
                }
                ar[y[r] as usize] -= c;
            }
            Targets::Soft(p) => {
                let pr = &p[r * v..(r + 1) * v];
                let mass = sum(pr);
                for ((a, &zv), &pv) in ar.iter_mut().zip(zr).zip(pr) {
                    *a += c * (exp(zv - l) * mass - pv);
                }
            }
        }
    }
}

multiversion! {
    fn ce_forward(z: &[f32], v: usize, weights: &[f32], targets: &Targets<'_>, lse: &mut [f32]) -> f64 => ce_forward_kernel;
}

multiversion! {
    fn ce_backward(
        z: &[f32],
        v: usize,
        weights: &[f32],
        lse: &[f32],
        targets: &Targets<'_>,
        scale: f32,
        acc: &mut [f32],
    ) => ce_backward_kernel;
}
