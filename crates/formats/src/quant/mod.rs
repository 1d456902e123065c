//! GGML quant block layouts and row (de)quantization.
//!
//! [`dequantize_row`] turns any supported type into `f32`; [`quantize_row`] produces Q8_0, Q4_0
//! and Q4_1. Both check buffer lengths and return an error, never panic, on a mismatch.
//! Results are bit-identical to ggml and to `gguf-py`'s `gguf.quants` (see
//! `tests/data/README.md` for the goldens).

mod blocks;
mod dequant;
mod quantize;

pub use blocks::*;
pub use dequant::QuantBlock;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// Checks that `bytes` holds exactly `n_elements` elements of `ty`.
fn check_lengths(op: &str, ty: GgmlType, n_bytes: usize, n_elements: usize) -> Result<()> {
    let expected = ty.row_bytes(n_elements as u64)?;
    if n_bytes as u64 != expected {
        return Err(Error::LengthMismatch {
            what: format!("{op} {ty}: bytes for {n_elements} elements"),
            expected,
            got: n_bytes as u64,
        });
    }
    Ok(())
}

/// Dequantizes `out.len()` elements of type `ty` from `bytes` (any whole number of blocks).
///
/// Errors if `out.len()` is not a multiple of the block length or `bytes.len()` is not the
/// matching byte size.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_lengths("dequantize_row", ty, bytes.len(), out.len())?;
    match ty {
        GgmlType::F32 => dequant::dequantize_f32(bytes, out),
        GgmlType::F16 => dequant::dequantize_f16(bytes, out),
        GgmlType::BF16 => dequant::dequantize_bf16(bytes, out),
        GgmlType::Q4_0 => dequant::dequantize_blocks::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => dequant::dequantize_blocks::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => dequant::dequantize_blocks::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => dequant::dequantize_blocks::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => dequant::dequantize_blocks::<BlockQ8_0>(bytes, out),
        GgmlType::Q8_1 => dequant::dequantize_blocks::<BlockQ8_1>(bytes, out),
        GgmlType::Q2_K => dequant::dequantize_blocks::<BlockQ2_K>(bytes, out),
        GgmlType::Q3_K => dequant::dequantize_blocks::<BlockQ3_K>(bytes, out),
        GgmlType::Q4_K => dequant::dequantize_blocks::<BlockQ4_K>(bytes, out),
        GgmlType::Q5_K => dequant::dequantize_blocks::<BlockQ5_K>(bytes, out),
        GgmlType::Q6_K => dequant::dequantize_blocks::<BlockQ6_K>(bytes, out),
        GgmlType::Q8_K => dequant::dequantize_blocks::<BlockQ8_K>(bytes, out),
    }
    Ok(())
}

/// Quantizes `x` (a whole number of 32-element blocks) to `ty` ∈ {Q8_0, Q4_0, Q4_1, F32, F16,
/// BF16} into `out`, which must be exactly the byte size of `x.len()` elements.
///
/// Plain types round to nearest even (`bf16` as ggml's `ggml_compute_fp32_to_bf16`).
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    match ty {
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q8_0
        | GgmlType::Q4_0
        | GgmlType::Q4_1 => {}
        other => {
            return Err(Error::UnsupportedOperation {
                op: "quantize_row",
                ggml_type: other.name(),
            })
        }
    }
    check_lengths("quantize_row", ty, out.len(), x.len())?;
    match ty {
        GgmlType::F32 => {
            for (chunk, v) in out.chunks_exact_mut(4).zip(x) {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (chunk, v) in out.chunks_exact_mut(2).zip(x) {
                chunk.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (chunk, v) in out.chunks_exact_mut(2).zip(x) {
                chunk.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => quantize_blocks(x, out, quantize::quantize_block_q8_0),
        GgmlType::Q4_0 => quantize_blocks(x, out, quantize::quantize_block_q4_0),
        GgmlType::Q4_1 => quantize_blocks(x, out, quantize::quantize_block_q4_1),
        _ => unreachable!("unsupported types returned above"),
    }
    Ok(())
}

fn quantize_blocks<B: QuantBlock>(x: &[f32], out: &mut [u8], quantize_block: fn(&[f32]) -> B) {
    let block_bytes = std::mem::size_of::<B>();
    for (xs, chunk) in x
        .chunks_exact(B::BLOCK_LEN)
        .zip(out.chunks_exact_mut(block_bytes))
    {
        chunk.copy_from_slice(bytemuck::bytes_of(&quantize_block(xs)));
    }
}

// Port of ggml ggml_compute_fp32_to_bf16 (llama.cpp 0c1e57098): NaN made quiet, else RNE.
fn f32_to_bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((bits as u64 + (0x7fff + ((bits as u64 >> 16) & 1))) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize_row(GgmlType::Q4_1, &[0u8; 19], &mut out),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out),
            Err(Error::NotBlockMultiple { .. })
        ));
        assert!(matches!(
            quantize_row(GgmlType::Q4_K, &[0f32; 256], &mut [0u8; 144]),
            Err(Error::UnsupportedOperation { .. })
        ));
        assert!(matches!(
            quantize_row(GgmlType::Q8_0, &out, &mut [0u8; 33]),
            Err(Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0)
            .collect();
        let mut bytes = vec![0u8; 68];
        quantize_row(GgmlType::Q8_0, &x, &mut bytes).unwrap();
        let mut y = vec![0f32; 64];
        dequantize_row(GgmlType::Q8_0, &bytes, &mut y).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.04, "{a} vs {b}");
        }
    }

    #[test]
    fn bf16_rounding_matches_ggml() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }
}
