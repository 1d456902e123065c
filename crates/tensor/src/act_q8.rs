//! Activations quantized to 8 bits in blocks of 32, as llama.cpp's CPU backend does before every
//! quantized matmul (its `block_q8_0` / `block_q8_1`), plus the per-block vectors our VNNI
//! kernels consume directly.
//!
//! Numerics follow llama.cpp's `quantize_row_q8_1`: `d = amax / 127`, `q = round(x / d)`, and the
//! scale the dot product uses is `d` rounded to f16; `s = d * sum(q)` likewise. We keep these
//! 8-bit activations (rather than f32) for two reasons: it is what makes integer dot products
//! (`vpdpbusd`) possible, halving the work per weight; and it keeps our logits within llama.cpp's
//! own rounding, which is the oracle the model is checked against.
//!
//! Two layouts. The 16-row tile kernels ([`crate::packed`]) read tokens in groups of
//! [`GROUP_TOKENS`]: per group and block, the 8 tokens' 32 values are adjacent, and so are their
//! scales, sums and corrections, so a kernel walks one pointer per group. The row kernels
//! ([`crate::qdot`]) read row-major values plus per-pair vectors; those are filled only by
//! [`QuantizedRows::quantize`], not by [`QuantizedRows::quantize_for_tiles`].

use half::f16;

/// Elements per quantization block.
pub const QK: usize = 32;
/// Lanes of the per-block-pair vectors (`[a; 8] ++ [b; 8]` for blocks `a`, `b` of a pair).
pub const PAIR_LANES: usize = 16;
/// Tokens per group in the tile layout.
pub const GROUP_TOKENS: usize = 8;

/// `m` rows of `k` activations each, quantized; reused across calls without reallocating.
#[derive(Default)]
pub struct QuantizedRows {
    k: usize,
    m: usize,
    /// Whether the row-kernel vectors (`qs`, `d_pairs`, `s_pairs`, `corr4`) are current.
    rows_valid: bool,
    /// Tile layout: `[group][block][token of 8][32 values]`.
    g_qs: Vec<i8>,
    /// Tile layout, `[group][block][token of 8]`: f16-rounded scale `d`.
    g_d: Vec<f32>,
    /// Tile layout: `d * sum(q)`, f16-rounded.
    g_s: Vec<f32>,
    /// Tile layout: `-128 * sum(q)` (the Q8_0 correction; Q4_0 uses it divided by 16).
    g_corr: Vec<i32>,
    /// `m * k` quantized values, row-major.
    qs: Vec<i8>,
    /// Per block pair, `[d_a; 8] ++ [d_b; 8]` (f16-rounded scales): `m * k/64 * 16`.
    d_pairs: Vec<f32>,
    /// Per block pair, `[s_a/8; 8] ++ [s_b/8; 8]` with `s = d * sum(q)` (f16-rounded).
    s_pairs: Vec<f32>,
    /// Per group of 4 values, `-128 * sum(q)`: the correction that turns `vpdpbusd` on
    /// `w + 128` (unsigned) into the signed dot product for Q8_0 weights.
    corr4: Vec<i32>,
}

/// Raw pointers to one token group of the tile layout (see [`QuantizedRows::group`]).
#[derive(Clone, Copy)]
pub struct GroupPtrs {
    /// Values: block `b`, token `t` at `qs + (8b + t) * 32`.
    pub qs: *const i8,
    /// Scales: block `b`, token `t` at `d + 8b + t`.
    pub d: *const f32,
    /// `d * sum(q)`, as `d`.
    pub s: *const f32,
    /// `-128 * sum(q)`, as `d`.
    pub corr: *const i32,
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
    /// Quantized values of row `row` (after [`QuantizedRows::quantize`]).
    pub fn row_qs(&self, row: usize) -> &[i8] {
        assert!(self.rows_valid, "row vectors need QuantizedRows::quantize");
        &self.qs[row * self.k..(row + 1) * self.k]
    }
    /// Pair scale vectors of row `row` (`k / 64 * 16` values).
    pub fn row_d_pairs(&self, row: usize) -> &[f32] {
        assert!(self.rows_valid, "row vectors need QuantizedRows::quantize");
        let n = self.k / 64 * PAIR_LANES;
        &self.d_pairs[row * n..(row + 1) * n]
    }
    /// Pair sum vectors of row `row` (`k / 64 * 16` values).
    pub fn row_s_pairs(&self, row: usize) -> &[f32] {
        assert!(self.rows_valid, "row vectors need QuantizedRows::quantize");
        let n = self.k / 64 * PAIR_LANES;
        &self.s_pairs[row * n..(row + 1) * n]
    }
    /// Q8_0 corrections of row `row` (`k / 4` values).
    pub fn row_corr4(&self, row: usize) -> &[i32] {
        assert!(self.rows_valid, "row vectors need QuantizedRows::quantize");
        let n = self.k / 4;
        &self.corr4[row * n..(row + 1) * n]
    }

    fn tile_index(&self, row: usize, blk: usize) -> usize {
        let nb = self.k / QK;
        ((row / GROUP_TOKENS) * nb + blk) * GROUP_TOKENS + row % GROUP_TOKENS
    }

    /// Scale, `d * sum(q)` and `sum(q)` of block `blk` of row `row`.
    #[inline(always)]
    pub fn block(&self, row: usize, blk: usize) -> (f32, f32, i32) {
        let i = self.tile_index(row, blk);
        (self.g_d[i], self.g_s[i], self.g_corr[i] / -128)
    }

    /// The 32 quantized values of block `blk` of row `row`.
    #[inline(always)]
    pub fn block_qs(&self, row: usize, blk: usize) -> &[i8] {
        let i = self.tile_index(row, blk);
        &self.g_qs[i * QK..(i + 1) * QK]
    }

    /// Pointers to token group `group` (rows `8 * group..`) of the tile layout.
    ///
    /// # Panics
    /// If the group holds no row.
    pub fn group(&self, group: usize) -> GroupPtrs {
        assert!(
            group * GROUP_TOKENS < self.m,
            "QuantizedRows::group: no row {group} * 8"
        );
        let i = group * (self.k / QK) * GROUP_TOKENS;
        GroupPtrs {
            qs: self.g_qs[i * QK..].as_ptr(),
            d: self.g_d[i..].as_ptr(),
            s: self.g_s[i..].as_ptr(),
            corr: self.g_corr[i..].as_ptr(),
        }
    }

    /// Quantizes `m` rows of `x` (row-major, `k` each) for both the tile and the row kernels.
    /// `k` must be a multiple of 32; the pair vectors of the row kernels are filled when it is a
    /// multiple of 64.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        self.quantize_with(x, m, k, true, true);
    }

    /// As [`QuantizedRows::quantize`], for the tile kernels only (the row-kernel accessors
    /// panic until the next full `quantize`).
    pub fn quantize_for_tiles(&mut self, x: &[f32], m: usize, k: usize) {
        self.quantize_with(x, m, k, false, true);
    }

    fn quantize_with(&mut self, x: &[f32], m: usize, k: usize, rows: bool, avx512: bool) {
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
        self.rows_valid = rows;
        let nb = k / QK;
        let n_slots = m.div_ceil(GROUP_TOKENS) * GROUP_TOKENS * nb;
        resize(&mut self.g_qs, n_slots * QK, 0);
        resize(&mut self.g_d, n_slots, 0.0);
        resize(&mut self.g_s, n_slots, 0.0);
        resize(&mut self.g_corr, n_slots, 0);
        if rows {
            resize(&mut self.qs, m * k, 0);
            resize(&mut self.d_pairs, m * k / 64 * PAIR_LANES, 0.0);
            resize(&mut self.s_pairs, m * k / 64 * PAIR_LANES, 0.0);
            resize(&mut self.corr4, m * k / 4, 0);
        }
        #[cfg(target_arch = "x86_64")]
        if avx512 && crate::qdot::avx512_available() {
            // SAFETY: the features were just detected.
            unsafe { self.quantize_avx512(x) };
            return;
        }
        self.quantize_portable(x);
    }

    /// Stores block `blk` of row `row`: values `q`, scale, sum term and sum.
    #[inline(always)]
    fn store_block(&mut self, row: usize, blk: usize, q: &[i8; QK], d: f32, s: f32, sum: i32) {
        let i = self.tile_index(row, blk);
        self.g_qs[i * QK..(i + 1) * QK].copy_from_slice(q);
        self.g_d[i] = d;
        self.g_s[i] = s;
        self.g_corr[i] = -128 * sum;
        if !self.rows_valid {
            return;
        }
        let k = self.k;
        self.qs[row * k + blk * QK..row * k + (blk + 1) * QK].copy_from_slice(q);
        if k.is_multiple_of(64) {
            let base = (row * (k / 64) + blk / 2) * PAIR_LANES + (blk % 2) * 8;
            self.d_pairs[base..base + 8].fill(d);
            self.s_pairs[base..base + 8].fill(s / 8.0);
        }
        for (c, q4) in self.corr4[(row * k + blk * QK) / 4..][..QK / 4]
            .iter_mut()
            .zip(q.chunks_exact(4))
        {
            *c = -128 * q4.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
    }

    fn quantize_portable(&mut self, x: &[f32]) {
        let (m, k) = (self.m, self.k);
        for row in 0..m {
            for blk in 0..k / QK {
                let mut q = [0i8; QK];
                let (d, s, sum) = quantize_block(&x[row * k + blk * QK..][..QK], &mut q);
                self.store_block(row, blk, &q, d, s, sum);
            }
        }
    }

    /// The AVX-512 twin of `quantize_portable` (identical results: the maximum and the integer
    /// sum are exact in any order, and every rounding is the same IEEE operation).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and F16C are present.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn quantize_avx512(&mut self, x: &[f32]) {
        use std::arch::x86_64::*;
        let (m, k) = (self.m, self.k);
        let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
        for row in 0..m {
            for blk in 0..k / QK {
                let xb = &x[row * k + blk * QK..][..QK];
                // SAFETY: `xb` holds 32 values.
                let (x0, x1) = unsafe {
                    (
                        _mm512_loadu_ps(xb.as_ptr()),
                        _mm512_loadu_ps(xb.as_ptr().add(16)),
                    )
                };
                let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), abs_mask));
                let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), abs_mask));
                // As the portable scan: a NaN lane never wins (max returns the second operand).
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(a1, _mm512_max_ps(a0, _mm512_setzero_ps())));
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let idv = _mm512_set1_ps(id);
                // Round half to even (the default MXCSR mode), as `round_ties_even`.
                let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, idv));
                let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, idv));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                let mut q = [0i8; QK];
                // SAFETY: `q` holds 32 bytes; each store writes 16.
                unsafe {
                    _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
                    _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(q1));
                }
                let d16 = f16_round(d);
                let s16 = f16_round(sum as f32 * d);
                self.store_block(row, blk, &q, d16, s16, sum);
            }
        }
    }
}

/// `f16::from_f32(v).to_f32()` with F16C (the same round-to-nearest-even conversion).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "f16c")]
fn f16_round(v: f32) -> f32 {
    use std::arch::x86_64::*;
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
    _mm_cvtss_f32(_mm_cvtph_ps(h))
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
    use rand::{Rng, SeedableRng};

    #[test]
    fn block_round_trip_is_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        let mut q = QuantizedRows::default();
        q.quantize(&x, 1, 64);
        for blk in 0..2 {
            let d = q.row_d_pairs(0)[blk * 8];
            assert_eq!(d, q.block(0, blk).0);
            for i in 0..32 {
                let got = f32::from(q.row_qs(0)[blk * 32 + i]) * d;
                assert!((got - x[blk * 32 + i]).abs() <= d * 0.51 + 1e-3, "i={i}");
                assert_eq!(q.row_qs(0)[blk * 32 + i], q.block_qs(0, blk)[i]);
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

    #[test]
    fn avx512_quantization_matches_portable() {
        if !crate::qdot::avx512_available() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (m, k) in [(1, 64), (3, 96), (9, 576), (17, 128)] {
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0..4.0)).collect();
            // Ties at x * id = n + 0.5, a zero block, and tiny values.
            x[..32].copy_from_slice(&[0.0; 32]);
            for (i, v) in x[32..64].iter_mut().enumerate() {
                *v = (i as f32 - 15.5) * 127.0 / 16.0 / 31.0 * 2.0;
            }
            x[m * k - 1] = 1e-30;
            let mut fast = QuantizedRows::default();
            fast.quantize(&x, m, k);
            let mut slow = QuantizedRows::default();
            slow.quantize_with(&x, m, k, true, false);
            let nb = k / QK;
            for row in 0..m {
                for blk in 0..nb {
                    let (a, b) = (fast.block(row, blk), slow.block(row, blk));
                    assert_eq!(
                        a.0.to_bits(),
                        b.0.to_bits(),
                        "m={m} k={k} row={row} blk={blk}"
                    );
                    assert_eq!(
                        a.1.to_bits(),
                        b.1.to_bits(),
                        "m={m} k={k} row={row} blk={blk}"
                    );
                    assert_eq!(a.2, b.2);
                    assert_eq!(fast.block_qs(row, blk), slow.block_qs(row, blk));
                }
                assert_eq!(fast.row_qs(row), slow.row_qs(row));
                if k % 64 == 0 {
                    assert_eq!(fast.row_d_pairs(row), slow.row_d_pairs(row));
                    assert_eq!(fast.row_s_pairs(row), slow.row_s_pairs(row));
                }
                assert_eq!(fast.row_corr4(row), slow.row_corr4(row));
            }
        }
    }
}
