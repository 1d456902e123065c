//! `#[repr(C)]` layouts of the GGML quant blocks, byte-for-byte as in `ggml-common.h`.
//!
//! Each size is pinned by a `const` assertion, as candle's `k_quants.rs` does. `QK_K` = 256.

use bytemuck::{Pod, Zeroable};
use half::f16;
use std::mem::size_of;

/// Elements per block of the legacy types (Q4_0 … Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the K types.
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales/minimums of Q3_K, Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// 32 × 4-bit quants `q`, value = `d * (q - 8)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Element `j` in the low nibble of `qs[j]`, element `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// 32 × 4-bit quants, value = `d * q + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Nibbles as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// 32 × 5-bit quants, value = `d * (q - 16)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits: bit `j` of this little-endian u32 belongs to element `j`.
    pub qh: [u8; 4],
    /// Low four bits, as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// 32 × 5-bit quants, value = `d * q + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low four bits, as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// 32 × int8 quants, value = `d * q`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// 32 × int8 quants with their scaled sum (the activation side of `q4_1 · q8_1` dots).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

/// 256 × 2-bit quants in 16 groups of 16; value = `d * (sc & 15) * q - dmin * (sc >> 4)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ2_K {
    /// Per group: 4-bit scale (low nibble) and 4-bit minimum (high nibble).
    pub scales: [u8; QK_K / 16],
    /// Quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the minimums.
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2_K>() == 84);

/// 256 × 3-bit quants in 16 groups of 16 with 6-bit scales; value = `d * (sc - 32) * q`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ3_K {
    /// High bits (a cleared bit subtracts 4).
    pub hmask: [u8; QK_K / 8],
    /// Low two bits, four per byte.
    pub qs: [u8; QK_K / 4],
    /// 16 × 6-bit scales, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3_K>() == 110);

/// 256 × 4-bit quants in 8 groups of 32 with 6-bit scales and minimums.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the minimums.
    pub dmin: f16,
    /// 8 scales and 8 minimums, 6 bits each, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// Quants, two per byte.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4_K>() == 144);

/// 256 × 5-bit quants in 8 groups of 32 with 6-bit scales and minimums.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the minimums.
    pub dmin: f16,
    /// 8 scales and 8 minimums, 6 bits each, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bits.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, two per byte.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5_K>() == 176);

/// 256 × 6-bit quants in 16 groups of 16 with int8 scales; value = `d * sc * (q - 32)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// Low four bits.
    pub ql: [u8; QK_K / 2],
    /// High two bits.
    pub qh: [u8; QK_K / 4],
    /// Per-group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6_K>() == 210);

/// 256 × int8 quants with an f32 scale and 16 partial sums (the activation side of K dots).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8_K>() == 292);
