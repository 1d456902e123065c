//! Dot products of one quantized weight row with up to four 8-bit activation rows.
//!
//! Two implementations with identical results bit for bit: `avx512` (VNNI `vpdpbusd` on two
//! 32-weight blocks per zmm) and `portable`, which mirrors the same lane structure in plain Rust.
//! Each token's accumulation does not depend on which other tokens share the call, so a row's
//! result is the same for M = 1, a 64-token tree, or a 512-token prefill.
//!
//! Lane structure for a block pair `p` (weights `64p .. 64p+64` of the row): lane `l` (0..16)
//! holds the integer dot product of elements `4l .. 4l+4`; lanes 0..8 belong to the pair's first
//! block and 8..16 to the second. Per pair and token:
//! `acc[l] = fma(float(sumi[l]), d_w[l] * d_x[l], acc[l])` and, for Q4_1,
//! `accm[l] = fma(m_w[l], s_x[l] / 8, accm[l])`; the row result is `reduce16(acc + accm)`.

use crate::act_q8::{QuantizedRows, PAIR_LANES};
use crate::lanes::{reduce16, LANES};
use half::f16;

/// Quantized weight layouts with a VNNI kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    /// `{ d: f16, qs: [u8; 16] }`, value `(q - 8) * d`.
    Q4_0,
    /// `{ d: f16, m: f16, qs: [u8; 16] }`, value `q * d + m`.
    Q4_1,
    /// `{ d: f16, qs: [i8; 32] }`, value `q * d`.
    Q8_0,
}

impl QuantKind {
    /// Bytes of one 32-weight block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
            QuantKind::Q8_0 => 34,
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Weights of one block pair as 64 small integers plus per-lane scale and offset.
struct PairWeights {
    /// Element values as the unsigned/signed integers the dot product uses.
    q: [i32; 64],
    d: [f32; 2],
    m: [f32; 2],
}

fn unpack_pair(kind: QuantKind, row: &[u8], pair: usize) -> PairWeights {
    let bb = kind.block_bytes();
    let mut out = PairWeights {
        q: [0; 64],
        d: [0.0; 2],
        m: [0.0; 2],
    };
    for half in 0..2 {
        let blk = &row[(2 * pair + half) * bb..(2 * pair + half + 1) * bb];
        out.d[half] = f16_at(blk, 0);
        let q = &mut out.q[half * 32..half * 32 + 32];
        match kind {
            QuantKind::Q4_0 | QuantKind::Q4_1 => {
                let qs_at = if kind == QuantKind::Q4_1 { 4 } else { 2 };
                if kind == QuantKind::Q4_1 {
                    out.m[half] = f16_at(blk, 2);
                }
                let off = if kind == QuantKind::Q4_0 { 8 } else { 0 };
                for j in 0..16 {
                    q[j] = i32::from(blk[qs_at + j] & 0x0F) - off;
                    q[j + 16] = i32::from(blk[qs_at + j] >> 4) - off;
                }
            }
            QuantKind::Q8_0 => {
                for j in 0..32 {
                    q[j] = i32::from(blk[2 + j] as i8);
                }
            }
        }
    }
    out
}

/// Portable twin of the AVX-512 kernel: `out[t] = dot(row, acts row t0 + t)` for `t < out.len()`.
pub fn dot_rows_portable(
    kind: QuantKind,
    row: &[u8],
    acts: &QuantizedRows,
    t0: usize,
    out: &mut [f32],
) {
    let n_pairs = acts.k() / 64;
    for (t, o) in out.iter_mut().enumerate() {
        let xq = acts.row_qs(t0 + t);
        let dx = acts.row_d_pairs(t0 + t);
        let sx = acts.row_s_pairs(t0 + t);
        let mut acc = [0f32; LANES];
        let mut accm = [0f32; LANES];
        for p in 0..n_pairs {
            let w = unpack_pair(kind, row, p);
            for l in 0..LANES {
                let mut sumi = 0i32;
                for i in 4 * l..4 * l + 4 {
                    sumi += w.q[i] * i32::from(xq[64 * p + i]);
                }
                let half = l / 8;
                acc[l] = (sumi as f32).mul_add(w.d[half] * dx[p * PAIR_LANES + l], acc[l]);
                if kind == QuantKind::Q4_1 {
                    accm[l] = w.m[half].mul_add(sx[p * PAIR_LANES + l], accm[l]);
                }
            }
        }
        let mut v = [0f32; LANES];
        for l in 0..LANES {
            v[l] = acc[l] + accm[l];
        }
        *o = reduce16(&v);
    }
}

/// Whether the AVX-512 VNNI kernels can run on this CPU.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[t] = dot(row, acts row t0 + t)` for `t < out.len() <= 4`, on the best path of this CPU.
///
/// `row` holds `acts.k() / 32` blocks of `kind`; `acts.k()` is a multiple of 64.
pub fn dot_rows(
    kind: QuantKind,
    use_avx512: bool,
    row: &[u8],
    acts: &QuantizedRows,
    t0: usize,
    out: &mut [f32],
) {
    assert!(
        row.len() >= acts.k() / 32 * kind.block_bytes(),
        "dot_rows: weight row too short"
    );
    assert!(
        t0 + out.len() <= acts.m() && out.len() <= 4,
        "dot_rows: token range out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        // SAFETY: the caller checked `avx512_available()` (see `MatmulPlan`); the asserts above
        // bound every load: the kernel reads `k/32` blocks of `row` and rows `t0..t0+out.len()`
        // of `acts`, and writes only `out`.
        // SAFETY: within bounds, as stated at the top of this loop.
        unsafe {
            match out.len() {
                1 => avx512::dot_rows::<1>(kind, row, acts, t0, out),
                2 => avx512::dot_rows::<2>(kind, row, acts, t0, out),
                3 => avx512::dot_rows::<3>(kind, row, acts, t0, out),
                4 => avx512::dot_rows::<4>(kind, row, acts, t0, out),
                _ => {}
            }
        }
        return;
    }
    let _ = use_avx512;
    dot_rows_portable(kind, row, acts, t0, out);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::QuantKind;
    use crate::act_q8::{QuantizedRows, PAIR_LANES};
    use std::arch::x86_64::*;

    /// Folds a zmm like `lanes::reduce16`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    fn reduce16(v: __m512) -> f32 {
        let a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        let d = _mm_add_ss(c, _mm_shuffle_ps::<1>(c, c));
        _mm_cvtss_f32(d)
    }

    /// Loads two blocks' 16 nibble bytes and spreads them to 64 values `[lo0, hi0, lo1, hi1]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn nibbles_pair(qs0: *const u8, qs1: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 16 readable bytes at each pointer.
        let (q0, q1) = unsafe { (_mm_loadu_si128(qs0.cast()), _mm_loadu_si128(qs1.cast())) };
        let z = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(q0), q0);
        let z = _mm512_inserti32x4::<2>(z, q1);
        let z = _mm512_inserti32x4::<3>(z, q1);
        // Shift 128-bit lanes 1 and 3 (words 8..16 and 24..32) to bring the high nibbles down.
        let z = _mm512_mask_srli_epi16(z, 0xFF00_FF00, z, 4);
        _mm512_and_si512(z, _mm512_set1_epi8(0x0F))
    }

    /// `[a; 8] ++ [b; 8]` from two f16 values.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    fn splat_pair(a: u16, b: u16) -> __m512 {
        let h = _mm_setr_epi16(a as i16, b as i16, 0, 0, 0, 0, 0, 0);
        let f = _mm512_castps128_ps512(_mm_cvtph_ps(h));
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        _mm512_permutexvar_ps(idx, f)
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/DQ/VL/VNNI, F16C and FMA; `row` holds `acts.k()/32` blocks;
    /// rows `t0..t0+N` exist in `acts`; `out.len() == N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c,fma")]
    pub unsafe fn dot_rows<const N: usize>(
        kind: QuantKind,
        row: &[u8],
        acts: &QuantizedRows,
        t0: usize,
        out: &mut [f32],
    ) {
        let n_pairs = acts.k() / 64;
        let bb = kind.block_bytes();
        let mut xq = [std::ptr::null::<i8>(); N];
        let mut dx = [std::ptr::null::<f32>(); N];
        let mut sx = [std::ptr::null::<f32>(); N];
        let mut cx = [std::ptr::null::<i32>(); N];
        for t in 0..N {
            xq[t] = acts.row_qs(t0 + t).as_ptr();
            dx[t] = acts.row_d_pairs(t0 + t).as_ptr();
            sx[t] = acts.row_s_pairs(t0 + t).as_ptr();
            cx[t] = acts.row_corr4(t0 + t).as_ptr();
        }
        let mut acc = [_mm512_setzero_ps(); N];
        let mut accm = [_mm512_setzero_ps(); N];
        let w = row.as_ptr();
        for p in 0..n_pairs {
            // SAFETY (all pointer arithmetic below): block `2p + 1` is within `row` because
            // `2 * n_pairs == k / 32` blocks fit (checked by the caller); activation offsets
            // `64p..64p+64`, `16p..16p+16` are within rows of `k`, `k/64*16`, `k/4` values.
            // SAFETY: within bounds, as stated at the top of this loop.
            let b0 = unsafe { w.add(2 * p * bb) };
            // SAFETY: within bounds, as stated at the top of this loop.
            let b1 = unsafe { b0.add(bb) };
            // SAFETY: within bounds, as stated at the top of this loop.
            let d0 = unsafe { b0.cast::<u16>().read_unaligned() };
            // SAFETY: within bounds, as stated at the top of this loop.
            let d1 = unsafe { b1.cast::<u16>().read_unaligned() };
            let dw = splat_pair(d0, d1);
            let (wv, mw) = match kind {
                QuantKind::Q4_1 => {
                    // SAFETY: within bounds, as stated at the top of this loop.
                    let m0 = unsafe { b0.add(2).cast::<u16>().read_unaligned() };
                    // SAFETY: within bounds, as stated at the top of this loop.
                    let m1 = unsafe { b1.add(2).cast::<u16>().read_unaligned() };
                    // SAFETY: within bounds, as stated at the top of this loop.
                    (
                        // SAFETY: within bounds, as stated at the top of this loop.
                        unsafe { nibbles_pair(b0.add(4), b1.add(4)) },
                        splat_pair(m0, m1),
                    )
                }
                // SAFETY: within bounds, as stated at the top of this loop.
                QuantKind::Q4_0 => (
                    // SAFETY: within bounds, as stated at the top of this loop.
                    unsafe { nibbles_pair(b0.add(2), b1.add(2)) },
                    _mm512_setzero_ps(),
                ),
                QuantKind::Q8_0 => {
                    // SAFETY: within bounds, as stated at the top of this loop.
                    let lo = unsafe { _mm256_loadu_si256(b0.add(2).cast()) };
                    // SAFETY: within bounds, as stated at the top of this loop.
                    let hi = unsafe { _mm256_loadu_si256(b1.add(2).cast()) };
                    let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    // w + 128 as unsigned; the activation correction removes the 128 * sum(x).
                    (
                        _mm512_xor_si512(q, _mm512_set1_epi8(-128)),
                        _mm512_setzero_ps(),
                    )
                }
            };
            for t in 0..N {
                // SAFETY: within bounds, as stated at the top of this loop.
                let x = unsafe { _mm512_loadu_si512(xq[t].add(64 * p).cast()) };
                let init = match kind {
                    QuantKind::Q4_1 => _mm512_setzero_si512(),
                    // SAFETY: within bounds, as stated at the top of this loop.
                    QuantKind::Q8_0 => unsafe {
                        _mm512_loadu_si512(cx[t].add(PAIR_LANES * p).cast())
                    },
                    // -8 * sum(x) = (-128 * sum(x)) / 16, exact.
                    QuantKind::Q4_0 => {
                        // SAFETY: within bounds, as stated at the top of this loop.
                        _mm512_srai_epi32::<4>(unsafe {
                            _mm512_loadu_si512(cx[t].add(PAIR_LANES * p).cast())
                        })
                    }
                };
                let sumi = _mm512_dpbusd_epi32(init, wv, x);
                // SAFETY: within bounds, as stated at the top of this loop.
                let dxv = unsafe { _mm512_loadu_ps(dx[t].add(PAIR_LANES * p)) };
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(dw, dxv), acc[t]);
                if kind == QuantKind::Q4_1 {
                    // SAFETY: within bounds, as stated at the top of this loop.
                    let sxv = unsafe { _mm512_loadu_ps(sx[t].add(PAIR_LANES * p)) };
                    accm[t] = _mm512_fmadd_ps(mw, sxv, accm[t]);
                }
            }
        }
        for t in 0..N {
            out[t] = reduce16(_mm512_add_ps(acc[t], accm[t]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_row(kind: QuantKind, n_blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
        let bb = kind.block_bytes();
        let mut row = vec![0u8; n_blocks * bb];
        for b in 0..n_blocks {
            let blk = &mut row[b * bb..(b + 1) * bb];
            rng.fill(&mut blk[..]);
            blk[..2].copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
            if kind == QuantKind::Q4_1 {
                blk[2..4]
                    .copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
            }
        }
        row
    }

    fn dequant(kind: QuantKind, row: &[u8], k: usize) -> Vec<f32> {
        (0..k / 64)
            .flat_map(|p| {
                let w = unpack_pair(kind, row, p);
                (0..64).map(move |i| w.q[i] as f32 * w.d[i / 32] + w.m[i / 32])
            })
            .collect()
    }

    #[test]
    fn avx512_matches_portable_bit_for_bit_and_f32_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            for k in [64, 576, 1536] {
                let row = random_row(kind, k / 32, &mut rng);
                let x: Vec<f32> = (0..4 * k).map(|_| rng.random_range(-2.0..2.0)).collect();
                let mut acts = QuantizedRows::default();
                acts.quantize(&x, 4, k);
                let mut portable = [0f32; 4];
                dot_rows_portable(kind, &row, &acts, 0, &mut portable);
                let w = dequant(kind, &row, k);
                for t in 0..4 {
                    let exact: f64 = w
                        .iter()
                        .zip(&x[t * k..])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    let norm: f64 = w.iter().map(|&a| (a as f64).abs()).sum::<f64>() * 2.0;
                    assert!(
                        (portable[t] as f64 - exact).abs() < norm * 0.01,
                        "{kind:?} k={k}"
                    );
                }
                if avx512_available() {
                    for n in 1..=4 {
                        for t0 in 0..=4 - n {
                            let mut fast = vec![0f32; n];
                            dot_rows(kind, true, &row, &acts, t0, &mut fast);
                            assert_eq!(fast, portable[t0..t0 + n], "{kind:?} k={k} n={n} t0={t0}");
                        }
                    }
                }
            }
        }
    }
}
