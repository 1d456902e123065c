//! GGML block layouts (Q4_0, Q4_1, Q8_0) and the activation block (Q8Act), read byte-wise.
//!
//! Layouts, 32 elements per block, little-endian:
//! - Q4_0 = `{ d: f16, qs: [u8; 16] }`, value `(q - 8) * d`;
//! - Q4_1 = `{ d: f16, m: f16, qs: [u8; 16] }`, value `q * d + m`;
//! - Q8_0 = `{ d: f16, qs: [i8; 32] }`, value `q * d`;
//!
//! and in the 4-bit types element `i < 16` is the low nibble of `qs[i]`, element `16 + i` the
//! high nibble. Q8Act = `{ d: f32, s: f32, sum_q: i32, pad: i32, qs: [i8; 32] }` (48 bytes) holds
//! activations quantized per block at run time (llama.cpp's `q8_1`, with its f16-rounded `d`
//! and `s` widened to f32): `s = d * sum_q` is what Q4_1's offset multiplies.

use half::f16;
use std::fmt;

/// A block-quantized element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// GGML Q4_0 (18 bytes / 32 weights).
    Q4_0,
    /// GGML Q4_1 (20 bytes / 32 weights).
    Q4_1,
    /// GGML Q8_0 (34 bytes / 32 weights).
    Q8_0,
    /// Activations quantized to int8 per block of 32 (48 bytes).
    Q8Act,
}

/// Elements per block, for every type.
pub const BLOCK: usize = 32;

impl QuantType {
    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q8_0 => 34,
            QuantType::Q8Act => 48,
        }
    }
    /// Whether blocks carry an offset (Q4_1 `m`) or a sum (Q8Act `s`).
    pub const fn has_min(self) -> bool {
        matches!(self, QuantType::Q4_1 | QuantType::Q8Act)
    }
    /// Parses `q4_0`, `q4_1`, `q8_0` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4_0" => Some(QuantType::Q4_0),
            "q4_1" => Some(QuantType::Q4_1),
            "q8_0" => Some(QuantType::Q8_0),
            _ => None,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q8_0 => "q8_0",
            QuantType::Q8Act => "q8act",
        })
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One block's bytes, viewed by type.
#[derive(Clone, Copy)]
pub struct BlockRef<'a> {
    /// The type.
    pub ty: QuantType,
    /// Exactly `ty.block_bytes()` bytes.
    pub bytes: &'a [u8],
}

impl<'a> BlockRef<'a> {
    /// Block `idx` of a buffer of blocks.
    pub fn at(ty: QuantType, buf: &'a [u8], idx: usize) -> Self {
        let n = ty.block_bytes();
        BlockRef {
            ty,
            bytes: &buf[idx * n..(idx + 1) * n],
        }
    }
    /// The scale `d`.
    pub fn scale(&self) -> f32 {
        match self.ty {
            QuantType::Q8Act => f32_at(self.bytes, 0),
            _ => f16_at(self.bytes, 0),
        }
    }
    /// The offset `m` (Q4_1) or the sum `s = d * sum_q` (Q8Act); 0 otherwise.
    pub fn min(&self) -> f32 {
        match self.ty {
            QuantType::Q4_1 => f16_at(self.bytes, 2),
            QuantType::Q8Act => f32_at(self.bytes, 4),
            _ => 0.0,
        }
    }
    /// The raw quant `q` of element `i` (0..15 for 4-bit types, -128..127 for 8-bit).
    pub fn raw(&self, i: usize) -> i32 {
        match self.ty {
            QuantType::Q4_0 | QuantType::Q4_1 => {
                let off = if self.ty == QuantType::Q4_0 { 2 } else { 4 };
                let byte = self.bytes[off + (i % 16)];
                (if i < 16 { byte & 15 } else { byte >> 4 }) as i32
            }
            QuantType::Q8_0 => self.bytes[2 + i] as i8 as i32,
            QuantType::Q8Act => self.bytes[16 + i] as i8 as i32,
        }
    }
    /// The code that enters an integer dot product: `q - 8` for Q4_0, `q` otherwise.
    pub fn code(&self, i: usize) -> i32 {
        match self.ty {
            QuantType::Q4_0 => self.raw(i) - 8,
            _ => self.raw(i),
        }
    }
    /// The dequantized value of element `i` (GGML's `dequantize_row_*`).
    pub fn value(&self, i: usize) -> f32 {
        match self.ty {
            QuantType::Q4_1 => self.raw(i) as f32 * self.scale() + self.min(),
            _ => self.code(i) as f32 * self.scale(),
        }
    }
}

/// Quantizes rows of `k` activations into Q8Act blocks (`k` a multiple of 32), block by
/// block, so a row's blocks do not depend on the other rows (batch invariance).
///
/// Port of the x86 path of ggml `quantize_row_q8_1` (llama.cpp `ggml-cpu/arch/x86/quants.c`):
/// `d = amax / 127` rounded to f16, codes `round_half_even(x * (127 / amax))`, and
/// `s = d * sum_q` (with the unrounded `d`) rounded to f16. The rounded values are stored as
/// f32, so the engine's int8 matmuls agree with llama.cpp's `q4_1 × q8_1` dot products.
pub fn quantize_q8act(x: &[f32], k: usize, out: &mut [u8]) {
    assert!(k % BLOCK == 0, "quantize_q8act: k must be a multiple of 32");
    let n_blocks = x.len() / BLOCK;
    assert_eq!(
        out.len(),
        n_blocks * QuantType::Q8Act.block_bytes(),
        "quantize_q8act: output length"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the features were just detected.
        return unsafe { quantize_q8act_avx2(x, out) };
    }
    quantize_q8act_blocks(x, out);
}

/// The AVX2 twin of [`quantize_q8act_blocks`], with identical results: the maximum and the
/// integer sum are exact in any order, `vcvtps2dq` after `vroundps` rounds half to even, and
/// every other rounding is the same IEEE operation. A 512-token prefill quantizes ~50 M
/// activations per forward, so this matters (the plain loop is ~5x slower).
///
/// Port of the AVX2 branch of ggml `quantize_row_q8_1` (llama.cpp
/// `ggml/src/ggml-cpu/arch/x86/quants.c`), writing Q8Act blocks.
///
/// # Safety
/// AVX2 and F16C are present; `out` holds 48 bytes per 32 values of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn quantize_q8act_avx2(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let f16_round = |v: f32| {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
        _mm_cvtss_f32(_mm_cvtph_ps(h))
    };
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(48)) {
        // SAFETY: `xb` holds 32 values.
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) });
        let mut amax = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(
            _mm256_extractf128_ps::<1>(amax),
            _mm256_castps256_ps128(amax),
        );
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
                v[i], id,
            )))
        });
        let s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(s8),
            _mm256_extracti128_si256::<1>(s8),
        );
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let sum_q = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
        ob[0..4].copy_from_slice(&f16_round(d).to_le_bytes());
        ob[4..8].copy_from_slice(&f16_round(sum_q as f32 * d).to_le_bytes());
        ob[8..12].copy_from_slice(&sum_q.to_le_bytes());
        ob[12..16].copy_from_slice(&0i32.to_le_bytes());
        // Saturating packs interleave the 128-bit lanes; the permutation restores the order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `ob` holds 48 bytes; the store writes 32 at 16.
        unsafe { _mm256_storeu_si256(ob.as_mut_ptr().add(16).cast(), p) };
    }
}

#[inline(always)]
fn quantize_q8act_blocks(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(48)) {
        // Lane-wise maxima with plain comparisons, so the scan vectorises; the maximum is
        // exact in any order (a NaN lane never wins).
        let mut lanes = [0f32; 16];
        for half in xb.chunks_exact(16) {
            for (m, &v) in lanes.iter_mut().zip(half) {
                let a = v.abs();
                *m = if a > *m { a } else { *m };
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let d = amax / 127.0;
        // As llama.cpp's AVX path: `127 / amax`, not `1 / d` (they differ in the last bit,
        // which moves ties).
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut codes = [0i8; BLOCK];
        let mut sum_q = 0i32;
        for (c, &v) in codes.iter_mut().zip(xb) {
            // Round half to even, as `_mm256_round_ps(.., _MM_ROUND_NEAREST)` in llama.cpp.
            let q = (v * id).round_ties_even() as i32;
            *c = q as i8;
            sum_q += q;
        }
        let d16 = f16::from_f32(d).to_f32();
        let s16 = f16::from_f32(sum_q as f32 * d).to_f32();
        ob[0..4].copy_from_slice(&d16.to_le_bytes());
        ob[4..8].copy_from_slice(&s16.to_le_bytes());
        ob[8..12].copy_from_slice(&sum_q.to_le_bytes());
        ob[12..16].copy_from_slice(&0i32.to_le_bytes());
        for (o, &c) in ob[16..].iter_mut().zip(&codes) {
            *o = c as u8;
        }
    }
}

/// Quantizes `x` (a multiple of 32 long) to GGML blocks of `ty` (not Q8Act), for tests and
/// benches. Port of ggml `quantize_row_q4_0_ref` / `q4_1_ref` / `q8_0_ref`.
pub fn quantize_ggml(ty: QuantType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / BLOCK * ty.block_bytes());
    for xb in x.chunks_exact(BLOCK) {
        match ty {
            QuantType::Q4_0 => {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in xb {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                for j in 0..16 {
                    let q0 = ((xb[j] * id + 8.5) as i32).min(15) as u8;
                    let q1 = ((xb[16 + j] * id + 8.5) as i32).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
            QuantType::Q4_1 => {
                let min = xb.iter().copied().fold(f32::INFINITY, f32::min);
                let max = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
                for j in 0..16 {
                    let q0 = (((xb[j] - min) * id + 0.5) as i32).min(15) as u8;
                    let q1 = (((xb[16 + j] - min) * id + 0.5) as i32).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
            QuantType::Q8_0 => {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                for &v in xb {
                    out.push((v * id).round() as i8 as u8);
                }
            }
            QuantType::Q8Act => panic!("quantize_ggml: use quantize_q8act for activations"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_round_trip_is_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 30.0) * 0.1)
            .collect();
        for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let q = quantize_ggml(ty, &x);
            assert_eq!(q.len(), 2 * ty.block_bytes());
            let tol = if ty == QuantType::Q8_0 { 0.02 } else { 0.3 };
            for (i, &v) in x.iter().enumerate() {
                let got = BlockRef::at(ty, &q, i / 32).value(i % 32);
                assert!((got - v).abs() <= tol, "{ty} element {i}: {got} vs {v}");
            }
        }
    }

    #[test]
    fn q8act_fast_path_matches_portable_bit_for_bit() {
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.0137)
            .collect();
        // A zero block, ties at x * id = n + 0.5, and tiny values.
        x[..32].fill(0.0);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = (i as f32 - 15.5) * 127.0 / 16.0 / 31.0 * 2.0;
        }
        x[100] = 1e-30;
        let mut fast = vec![0u8; 40 * 48];
        quantize_q8act(&x, 32, &mut fast);
        let mut slow = vec![0u8; 40 * 48];
        quantize_q8act_blocks(&x, &mut slow);
        assert_eq!(fast, slow);
    }

    #[test]
    fn q8act_sum_matches_codes() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) / 3.0).collect();
        let mut out = vec![0u8; 48];
        quantize_q8act(&x, 32, &mut out);
        let b = BlockRef::at(QuantType::Q8Act, &out, 0);
        let sum: i32 = (0..32).map(|i| b.code(i)).sum();
        assert_eq!(i32::from_le_bytes(out[8..12].try_into().unwrap()), sum);
        // `s` is `d * sum` rounded to f16, as llama.cpp's q8_1.
        let s = b.scale() * sum as f32;
        assert!(
            (b.min() - s).abs() <= s.abs() / 1024.0,
            "{} vs {s}",
            b.min()
        );
    }
}
