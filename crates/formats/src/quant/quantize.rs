//! Reference quantization to Q8_0, Q4_0 and Q4_1.
//!
//! These follow ggml's `quantize_row_*_ref`, in the form `gguf-py`'s `gguf.quants` vectorizes
//! them, so the bytes are identical to both (checked against `gguf.quants` goldens).

use half::f16;

use super::blocks::*;

// Port of ggml quantize_row_q8_0_ref (llama.cpp 0c1e57098).
pub(super) fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |acc, v| acc.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // roundf: halves away from zero, as ggml and gguf.quants' np_roundf do.
    let qs = std::array::from_fn(|j| (x[j] * id).round() as i8);
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs,
    }
}

// Port of ggml quantize_row_q4_0_ref (llama.cpp 0c1e57098).
pub(super) fn quantize_block_q4_0(x: &[f32]) -> BlockQ4_0 {
    // The element of largest magnitude, keeping its sign; the first one wins ties.
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    let qs = std::array::from_fn(|j| q(x[j]) | (q(x[j + QK / 2]) << 4));
    BlockQ4_0 {
        d: f16::from_f32(d),
        qs,
    }
}

// Port of ggml quantize_row_q4_1_ref (llama.cpp 0c1e57098).
pub(super) fn quantize_block_q4_1(x: &[f32]) -> BlockQ4_1 {
    let min = x.iter().fold(f32::INFINITY, |acc, &v| acc.min(v));
    let max = x.iter().fold(f32::NEG_INFINITY, |acc, &v| acc.max(v));
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    let qs = std::array::from_fn(|j| q(x[j]) | (q(x[j + QK / 2]) << 4));
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qs,
    }
}
