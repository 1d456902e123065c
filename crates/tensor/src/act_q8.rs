//! Activations quantized to 8 bits in blocks of 32, as llama.cpp's CPU backend does before every
//! quantized matmul (its `block_q8_0` / `block_q8_1`), plus the per-block vectors our VNNI
//! kernels consume directly.
//!
//! Numerics follow llama.cpp's `quantize_row_q8_1`: `d = amax / 127`, `q = round(x / d)`, and the
//! scale the dot product uses is `d` rounded to f16; `s = d * sum(q)` likewise. We keep these
//! 8-bit activations (rather than f32) for two reasons: it is what makes integer dot products
//! (`vpdpbusd`) possible, halving the work per weight; and it keeps our logits within llama.cpp's
//! own rounding, which is the oracle the model is checked against.

use half::f16;

/// Elements per quantization block.
pub const QK: usize = 32;
/// Lanes of the per-block-pair vectors (`[a; 8] ++ [b; 8]` for blocks `a`, `b` of a pair).
pub const PAIR_LANES: usize = 16;

/// `m` rows of `k` activations each, quantized; reused across calls without reallocating.
#[derive(Default)]
pub struct QuantizedRows {
    k: usize,
    m: usize,
    /// `m * k` quantized values, row-major.
    qs: Vec<i8>,
    /// Per block pair, `[d_a; 8] ++ [d_b; 8]` (f16-rounded scales): `m * k/64 * 16`.
    d_pairs: Vec<f32>,
    /// Per block pair, `[s_a/8; 8] ++ [s_b/8; 8]` with `s = d * sum(q)` (f16-rounded).
    s_pairs: Vec<f32>,
    /// Per group of 4 values, `-128 * sum(q)`: the correction that turns `vpdpbusd` on
    /// `w + 128` (unsigned) into the signed dot product for Q8_0 weights.
    corr4: Vec<i32>,
    /// Per block: scale, `d * sum(q)` and `sum(q)`, for the 16-row tile kernels.
    d_blk: Vec<f32>,
    s_blk: Vec<f32>,
    sum_blk: Vec<i32>,
}

impl QuantizedRows {
    /// Number of rows currently held.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Row length.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Quantized values of row `row`.
    pub fn row_qs(&self, row: usize) -> &[i8] {
        &self.qs[row * self.k..(row + 1) * self.k]
    }
    /// Pair scale vectors of row `row` (`k / 64 * 16` values).
    pub fn row_d_pairs(&self, row: usize) -> &[f32] {
        let n = self.k / 64 * PAIR_LANES;
        &self.d_pairs[row * n..(row + 1) * n]
    }
    /// Pair sum vectors of row `row` (`k / 64 * 16` values).
    pub fn row_s_pairs(&self, row: usize) -> &[f32] {
        let n = self.k / 64 * PAIR_LANES;
        &self.s_pairs[row * n..(row + 1) * n]
    }
    /// Q8_0 corrections of row `row` (`k / 4` values).
    pub fn row_corr4(&self, row: usize) -> &[i32] {
        let n = self.k / 4;
        &self.corr4[row * n..(row + 1) * n]
    }

    /// Scale, `d * sum(q)` and `sum(q)` of block `blk` of row `row`.
    #[inline(always)]
    pub fn block(&self, row: usize, blk: usize) -> (f32, f32, i32) {
        let i = row * (self.k / QK) + blk;
        (self.d_blk[i], self.s_blk[i], self.sum_blk[i])
    }

    /// Quantizes `m` rows of `x` (row-major, `k` each). `k` must be a multiple of 32; the
    /// pair vectors of the row kernels are filled when it is a multiple of 64.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            unsafe { self.quantize_avx512(x, m, k) };
            return;
        }
        self.quantize_portable(x, m, k);
    }

    /// The same code compiled for AVX-512, so rounding and scans vectorise (identical results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn quantize_avx512(&mut self, x: &[f32], m: usize, k: usize) {
        self.quantize_portable(x, m, k);
    }

    #[inline(always)]
    fn quantize_portable(&mut self, x: &[f32], m: usize, k: usize) {
        assert!(
            k.is_multiple_of(QK),
            "QuantizedRows needs k % 32 == 0, got {k}"
        );
        assert_eq!(
            x.len(),
            m * k,
            "QuantizedRows::quantize: x has {} values, expected {m}x{k}",
            x.len()
        );
        self.k = k;
        self.m = m;
        let n_pairs = k / 64;
        resize(&mut self.qs, m * k, 0);
        resize(&mut self.d_pairs, m * n_pairs * PAIR_LANES, 0.0);
        resize(&mut self.s_pairs, m * n_pairs * PAIR_LANES, 0.0);
        resize(&mut self.corr4, m * k / 4, 0);
        resize(&mut self.d_blk, m * k / QK, 0.0);
        resize(&mut self.s_blk, m * k / QK, 0.0);
        resize(&mut self.sum_blk, m * k / QK, 0);
        let with_pairs = k.is_multiple_of(64);
        for row in 0..m {
            let xr = &x[row * k..(row + 1) * k];
            let qr = &mut self.qs[row * k..(row + 1) * k];
            for blk in 0..k / QK {
                let (d, s, sum) = quantize_block(
                    &xr[blk * QK..(blk + 1) * QK],
                    &mut qr[blk * QK..(blk + 1) * QK],
                );
                let i = row * (k / QK) + blk;
                self.d_blk[i] = d;
                self.s_blk[i] = s;
                self.sum_blk[i] = sum;
                if !with_pairs {
                    continue;
                }
                let pair = blk / 2;
                let half = (blk % 2) * 8;
                let base = (row * n_pairs + pair) * PAIR_LANES + half;
                self.d_pairs[base..base + 8].fill(d);
                self.s_pairs[base..base + 8].fill(s / 8.0);
            }
            let cr = &mut self.corr4[row * k / 4..(row + 1) * k / 4];
            for (c, q4) in cr.iter_mut().zip(qr.chunks_exact(4)) {
                *c = -128 * q4.iter().map(|&q| i32::from(q)).sum::<i32>();
            }
        }
    }
}

fn resize<T: Copy>(v: &mut Vec<T>, n: usize, fill: T) {
    // Grows only; the hot loop reuses the allocation.
    if v.len() < n {
        v.resize(n, fill);
    }
}

/// Quantizes one block of 32; returns the f16-rounded scale, `d * sum(q)` (f16-rounded) and
/// `sum(q)`.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    // Lane-wise maxima with plain comparisons, so the scan vectorises (NaN inputs are not
    // expected; a NaN lane simply never wins).
    let mut lanes = [0f32; 16];
    for chunk in x.chunks_exact(16) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let d = amax / 127.0;
    // As llama.cpp: `127 / amax`, not `1 / d` (they differ in the last bit, which moves ties).
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        // Round half to even, as `_mm256_round_ps(.., _MM_ROUND_NEAREST)` in llama.cpp's AVX path.
        let v = (xi * id).round_ties_even() as i32;
        *qi = v as i8;
        sum += v;
    }
    let d16 = f16::from_f32(d).to_f32();
    let s16 = f16::from_f32(sum as f32 * d).to_f32();
    (d16, s16, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip_is_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        let mut q = QuantizedRows::default();
        q.quantize(&x, 1, 64);
        for blk in 0..2 {
            let d = q.row_d_pairs(0)[blk * 8];
            for i in 0..32 {
                let got = f32::from(q.row_qs(0)[blk * 32 + i]) * d;
                assert!((got - x[blk * 32 + i]).abs() <= d * 0.51 + 1e-3, "i={i}");
            }
        }
        let sum: i32 = q.row_qs(0)[..4].iter().map(|&v| i32::from(v)).sum();
        assert_eq!(q.row_corr4(0)[0], -128 * sum);
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let mut q = QuantizedRows::default();
        q.quantize(&[0.0; 64], 1, 64);
        assert!(q.row_qs(0).iter().all(|&v| v == 0));
        assert!(q.row_d_pairs(0).iter().all(|&v| v == 0.0));
    }
}
