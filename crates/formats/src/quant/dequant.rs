//! Block dequantization, ported from ggml's reference (scalar) code.
//!
//! Each function computes exactly what ggml computes, operation by operation in `f32` (Rust
//! never fuses `a * b + c` into an FMA), so the results are bit-identical to
//! `ggml-quants.c` and to `gguf-py`'s `gguf.quants`.

use half::f16;

use super::blocks::*;
use crate::ggml_type::GgmlType;

/// A quant block: a fixed-size `Pod` record of [`BLOCK_LEN`](Self::BLOCK_LEN) elements.
pub trait QuantBlock: bytemuck::Pod {
    /// The GGML type stored in blocks of this layout.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK_LEN: usize;

    /// Writes the block's `BLOCK_LEN` values to `out`.
    ///
    /// # Panics
    /// If `out.len() != Self::BLOCK_LEN`.
    fn dequantize(&self, out: &mut [f32]);
}

impl QuantBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_LEN: usize = QK;
    // Port of ggml dequantize_row_q4_0 (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q4_0 block has 32 elements");
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            let x0 = (q & 0x0F) as i32 - 8;
            let x1 = (q >> 4) as i32 - 8;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_LEN: usize = QK;
    // Port of ggml dequantize_row_q4_1 (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q4_1 block has 32 elements");
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = (q & 0x0F) as f32 * d + m;
            out[j + QK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

impl QuantBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_LEN: usize = QK;
    // Port of ggml dequantize_row_q5_0 (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q5_0 block has 32 elements");
        let d = self.d.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((q as u32 & 0x0F) | xh_0) as i32 - 16;
            let x1 = ((q as u32 >> 4) | xh_1) as i32 - 16;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_LEN: usize = QK;
    // Port of ggml dequantize_row_q5_1 (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q5_1 block has 32 elements");
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = (q as u32 & 0x0F) | xh_0;
            let x1 = (q as u32 >> 4) | xh_1;
            out[j] = x0 as f32 * d + m;
            out[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

impl QuantBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_LEN: usize = QK;
    // Port of ggml dequantize_row_q8_0 (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q8_0 block has 32 elements");
        let d = self.d.to_f32();
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK_LEN: usize = QK;
    // ggml has no dequantize_row_q8_1 (Q8_1 only holds activations); this is `d * q`, as for Q8_0.
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK, "q8_1 block has 32 elements");
        let d = self.d.to_f32();
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q2_K (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q2_K block has 256 elements");
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        let mut y_idx = 0;
        let mut scale_idx = 0;
        for q in self.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for half in q.chunks_exact(16) {
                    let sc = self.scales[scale_idx];
                    scale_idx += 1;
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &byte in half {
                        out[y_idx] = dl * ((byte >> shift) & 3) as f32 - ml;
                        y_idx += 1;
                    }
                }
            }
        }
    }
}

impl QuantBlock for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q3_K (llama.cpp 0c1e57098). The 6-bit scales are unpacked
    // per scale rather than with ggml's u32 mask trick; the values are the same.
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q3_K block has 256 elements");
        let d_all = self.d.to_f32();
        let scales: [i32; 16] = std::array::from_fn(|i| {
            let low = if i < 8 {
                self.scales[i] & 0x0F
            } else {
                self.scales[i - 8] >> 4
            };
            let high = (self.scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
            (low | (high << 4)) as i32 - 32
        });
        let mut y_idx = 0;
        let mut scale_idx = 0;
        let mut mask = 1u8;
        for q in self.qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for (half_idx, half) in q.chunks_exact(16).enumerate() {
                    let dl = d_all * scales[scale_idx] as f32;
                    scale_idx += 1;
                    for (l, &byte) in half.iter().enumerate() {
                        let hm = self.hmask[half_idx * 16 + l];
                        let sub = if hm & mask != 0 { 0 } else { 4 };
                        out[y_idx] = dl * (((byte >> shift) & 3) as i32 - sub) as f32;
                        y_idx += 1;
                    }
                }
                mask = mask.wrapping_shl(1);
            }
        }
    }
}

/// Scale and minimum `j` (0..8) of the packed 6-bit K-quant scales.
// Port of ggml get_scale_min_k4 (llama.cpp 0c1e57098).
fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl QuantBlock for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q4_K (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q4_K block has 256 elements");
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        for (chunk_idx, (q, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk_idx, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * chunk_idx + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for (l, &byte) in q.iter().enumerate() {
                y[l] = d1 * (byte & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (byte >> 4) as f32 - m2;
            }
        }
    }
}

impl QuantBlock for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q5_K (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q5_K block has 256 elements");
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        for (chunk_idx, (ql, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * chunk_idx, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * chunk_idx + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let u1 = 1u8 << (2 * chunk_idx);
            let u2 = 2u8 << (2 * chunk_idx);
            for (l, &byte) in ql.iter().enumerate() {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((byte & 0x0F) + h1) as f32 - m1;
                y[l + 32] = d2 * ((byte >> 4) + h2) as f32 - m2;
            }
        }
    }
}

impl QuantBlock for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q6_K (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q6_K block has 256 elements");
        let d = self.d.to_f32();
        for (n, y) in out.chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            let sc = &self.scales[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

impl QuantBlock for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK_LEN: usize = QK_K;
    // Port of ggml dequantize_row_q8_K (llama.cpp 0c1e57098).
    fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), QK_K, "q8_K block has 256 elements");
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = self.d * q as f32;
        }
    }
}

/// Dequantizes whole blocks; `bytes` and `out` lengths were checked by the caller.
pub(super) fn dequantize_blocks<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) {
    let block_bytes = std::mem::size_of::<B>();
    for (chunk, y) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(B::BLOCK_LEN))
    {
        // Tensor data is not necessarily aligned for the block's f16/f32 fields: copy out.
        let block: B = bytemuck::pod_read_unaligned(chunk);
        block.dequantize(y);
    }
}

/// `f16` little-endian pairs to `f32` (exact).
pub(super) fn dequantize_f16(bytes: &[u8], out: &mut [f32]) {
    for (chunk, y) in bytes.chunks_exact(2).zip(out) {
        *y = f16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
    }
}

/// `bf16` little-endian pairs to `f32` (exact: the bits move to the top half).
pub(super) fn dequantize_bf16(bytes: &[u8], out: &mut [f32]) {
    for (chunk, y) in bytes.chunks_exact(2).zip(out) {
        *y = f32::from_bits((u16::from_le_bytes([chunk[0], chunk[1]]) as u32) << 16);
    }
}

/// `f32` little-endian to `f32`.
pub(super) fn dequantize_f32(bytes: &[u8], out: &mut [f32]) {
    for (chunk, y) in bytes.chunks_exact(4).zip(out) {
        *y = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}
