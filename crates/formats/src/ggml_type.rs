//! GGML tensor element types and their block geometry.

use crate::error::{Error, Result};

/// A GGML tensor element type, with its GGUF type id as discriminant.
///
/// Quantized types store elements in blocks: [`block_len`](Self::block_len) elements in
/// [`block_bytes`](Self::block_bytes) bytes. Plain types are blocks of one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// IEEE f32.
    F32 = 0,
    /// IEEE f16.
    F16 = 1,
    /// 32 × 4-bit, one f16 scale.
    Q4_0 = 2,
    /// 32 × 4-bit, f16 scale and minimum.
    Q4_1 = 3,
    /// 32 × 5-bit, one f16 scale.
    Q5_0 = 6,
    /// 32 × 5-bit, f16 scale and minimum.
    Q5_1 = 7,
    /// 32 × 8-bit, one f16 scale.
    Q8_0 = 8,
    /// 32 × 8-bit, f16 scale and f16 `d * sum(qs)`.
    Q8_1 = 9,
    /// 256-element super-block, 2-bit quants with 4-bit scales and minimums.
    Q2_K = 10,
    /// 256-element super-block, 3-bit quants with 6-bit scales.
    Q3_K = 11,
    /// 256-element super-block, 4-bit quants with 6-bit scales and minimums.
    Q4_K = 12,
    /// 256-element super-block, 5-bit quants with 6-bit scales and minimums.
    Q5_K = 13,
    /// 256-element super-block, 6-bit quants with 8-bit scales.
    Q6_K = 14,
    /// 256-element super-block, 8-bit quants, f32 scale and 16 partial sums.
    Q8_K = 15,
    /// bfloat16.
    BF16 = 30,
}

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    /// The type with GGUF id `type_id`, or [`Error::UnknownGgmlType`].
    pub fn from_id(type_id: u32) -> Result<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.id() == type_id)
            .ok_or(Error::UnknownGgmlType { type_id })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block (1 for plain types).
    pub fn block_len(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }

    /// The name ggml and `gguf-py` use (`"q4_1"`, `"f32"`, `"q4_K"`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
        }
    }

    /// Whether the type is block-quantized (not F32/F16/BF16).
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes taken by `n_elements` elements, which must be a whole number of blocks.
    pub fn row_bytes(self, n_elements: u64) -> Result<u64> {
        let block_len = self.block_len() as u64;
        if n_elements % block_len != 0 {
            return Err(Error::NotBlockMultiple {
                ggml_type: self.name(),
                n_elements,
                block_len: self.block_len(),
            });
        }
        (n_elements / block_len)
            .checked_mul(self.block_bytes() as u64)
            .ok_or(Error::SizeOverflow {
                ggml_type: self.name(),
                n_elements,
            })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = Error;
    fn try_from(type_id: u32) -> Result<GgmlType> {
        GgmlType::from_id(type_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
        }
        assert!(matches!(
            GgmlType::from_id(4),
            Err(Error::UnknownGgmlType { type_id: 4 })
        ));
        assert!(matches!(
            GgmlType::from_id(u32::MAX),
            Err(Error::UnknownGgmlType { .. })
        ));
    }

    #[test]
    fn row_bytes_checks_blocks() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576).unwrap(), 18 * 20);
        assert_eq!(GgmlType::F32.row_bytes(3).unwrap(), 12);
        assert!(matches!(
            GgmlType::Q4_K.row_bytes(576),
            Err(Error::NotBlockMultiple { .. })
        ));
        assert_eq!(
            GgmlType::F32.row_bytes(u64::MAX / 4).unwrap(),
            u64::MAX / 4 * 4
        );
        assert!(matches!(
            GgmlType::F32.row_bytes(u64::MAX / 2),
            Err(Error::SizeOverflow { .. })
        ));
    }
}
