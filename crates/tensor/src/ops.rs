//! Row-wise f32 operations of a Llama layer: RMSNorm, RoPE, SiLU·mul, residual add, argmax.
//!
//! These are cheap next to the matmuls and run on the calling thread. Each row's result depends
//! only on that row, so they are batch invariant by construction.

use crate::lanes::{exp_clamped, sum_squares16};

/// `out = x / sqrt(mean(x²) + eps) * weight`, row by row (rows of `weight.len()` values).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the features were just detected.
        return unsafe { rms_norm_avx512(x, weight, eps, out) };
    }
    rms_norm_portable(x, weight, eps, out);
}

/// The same code compiled with AVX-512 and FMA (identical results: no reassociation).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn rms_norm_avx512(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_portable(x, weight, eps, out);
}

#[inline(always)]
fn rms_norm_portable(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = sum_squares16(xr) / n as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { add_in_place_avx512(x, y) };
    }
    add_in_place_portable(x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn add_in_place_avx512(x: &mut [f32], y: &[f32]) {
    add_in_place_portable(x, y);
}

#[inline(always)]
fn add_in_place_portable(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) * up`, the SwiGLU activation, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the features were just detected.
        return unsafe { silu_mul_avx512(gate, up) };
    }
    silu_mul_portable(gate, up);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    silu_mul_portable(gate, up);
}

/// `silu(v) * u = v / (1 + exp(-v)) * u`, with [`exp_clamped`] (a polynomial that vectorises;
/// libm's `expf` is a call per element). Below v = -88 the result is a tiny negative number
/// rather than the exact one (`|v| e^v < 1e-36`).
#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        *g = v / (1.0 + exp_clamped(-v)) * u;
    }
}

/// How Q and K pair their dimensions for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF files, whose converter permuted Q/K rows for this.
    Adjacent,
    /// Halves `(i, i + d/2)`: Hugging Face checkpoints.
    Halves,
}

/// Rotation angles for one position: `cos`/`sin` of each of the `head_dim / 2` frequencies.
pub struct RopeTable {
    head_dim: usize,
    /// Per frequency `i`, the angle per position step: `freq_scale * base^(-2i/d) / factor_i`.
    inv_freq: Vec<f32>,
}

impl RopeTable {
    /// Frequencies as llama.cpp computes them (`theta_scale = base^(-2/d)`, multiplied up
    /// step by step), divided by `freq_factors` (Llama 3 scaling) and scaled by `freq_scale`
    /// (linear scaling: `1 / factor`).
    pub fn new(head_dim: usize, base: f32, freq_scale: f32, freq_factors: Option<&[f32]>) -> Self {
        let theta_scale = base.powf(-2.0 / head_dim as f32);
        let mut theta = 1.0f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let ff = freq_factors.map_or(1.0, |f| f[i]);
                let v = freq_scale * (theta / ff);
                theta *= theta_scale;
                v
            })
            .collect();
        Self { head_dim, inv_freq }
    }

    /// Head dimension this table rotates.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Writes `cos` and `sin` of every frequency at `pos` into `cs` (`head_dim` values: cos then sin).
    pub fn angles(&self, pos: u32, cs: &mut [f32]) {
        let half = self.head_dim / 2;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let theta = pos as f32 * f;
            cs[i] = theta.cos();
            cs[half + i] = theta.sin();
        }
    }
}

/// Rotates every head of one row (`n_heads * head_dim` values) by precomputed `angles`.
pub fn rope_row(x: &mut [f32], head_dim: usize, angles: &[f32], layout: RopeLayout) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { rope_row_avx512(x, head_dim, angles, layout) };
    }
    rope_row_portable(x, head_dim, angles, layout);
}

/// The same code compiled with AVX-512 (identical results: no reassociation or contraction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rope_row_avx512(x: &mut [f32], head_dim: usize, angles: &[f32], layout: RopeLayout) {
    rope_row_portable(x, head_dim, angles, layout);
}

#[inline(always)]
fn rope_row_portable(x: &mut [f32], head_dim: usize, angles: &[f32], layout: RopeLayout) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (c, s) = (angles[i], angles[half + i]);
            let (a, b) = match layout {
                RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                RopeLayout::Halves => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// Index of the largest value (the first one on ties); `None` for an empty slice or NaN-only input.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 0.5, 2.0, 1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 1e-5, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0 + 1e-5f64).sqrt();
        for i in 0..4 {
            assert!((out[i] as f64 - x[i] as f64 / rms * w[i] as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn silu_mul_matches_definition_and_paths_agree() {
        let g: Vec<f32> = (0..999).map(|i| (i as f32 - 499.0) * 0.23).collect();
        let u: Vec<f32> = (0..999)
            .map(|i| ((i * 7) % 13) as f32 * 0.5 - 3.0)
            .collect();
        let mut fast = g.clone();
        silu_mul(&mut fast, &u);
        let mut slow = g.clone();
        silu_mul_portable(&mut slow, &u);
        assert_eq!(fast, slow);
        for i in 0..g.len() {
            let v = g[i] as f64;
            let want = v / (1.0 + (-v).exp()) * u[i] as f64;
            assert!(
                (fast[i] as f64 - want).abs() <= 2e-6 * want.abs() + 1e-30,
                "v={v}"
            );
        }
    }

    #[test]
    fn rope_layouts_agree_after_permutation() {
        // HF halves layout rotates (i, i+d/2); GGUF permutes rows so adjacent pairs rotate the same.
        let d = 8;
        let table = RopeTable::new(d, 10000.0, 1.0, None);
        let mut cs = vec![0f32; d];
        table.angles(5, &mut cs);
        let hf: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let mut gguf = vec![0f32; d];
        for i in 0..d / 2 {
            gguf[2 * i] = hf[i];
            gguf[2 * i + 1] = hf[i + d / 2];
        }
        let mut a = hf.clone();
        rope_row(&mut a, d, &cs, RopeLayout::Halves);
        rope_row(&mut gguf, d, &cs, RopeLayout::Adjacent);
        let (mut a2, mut gguf2) = (hf.clone(), gguf.clone());
        rope_row_portable(&mut a2, d, &cs, RopeLayout::Halves);
        let mut g0 = vec![0f32; d];
        for i in 0..d / 2 {
            g0[2 * i] = hf[i];
            g0[2 * i + 1] = hf[i + d / 2];
        }
        gguf2.copy_from_slice(&g0);
        rope_row_portable(&mut gguf2, d, &cs, RopeLayout::Adjacent);
        assert_eq!(a, a2, "AVX-512 and portable RoPE differ");
        assert_eq!(gguf, gguf2, "AVX-512 and portable RoPE differ");
        for i in 0..d / 2 {
            assert_eq!(a[i], gguf[2 * i]);
            assert_eq!(a[i + d / 2], gguf[2 * i + 1]);
        }
    }

    #[test]
    fn argmax_prefers_first_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
