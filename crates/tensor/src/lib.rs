#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod attention;
pub mod lanes;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod packed_float;
pub mod pool;
pub mod qdot;

pub use attention::{attention, AttentionScratch, AttentionSeq, AttentionShape, Visibility};
pub use matmul::{matmul, MatmulScratch, MatmulTarget, WeightMatrix, Weights};
pub use packed::PackedMatrix;
pub use packed_float::PackedFloatMatrix;
pub use peregrine_loops::FloatType;
pub use pool::ThreadPool;

/// Errors from kernels: shapes that do not fit. Messages name the operation and the sizes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes or buffer sizes that do not fit together.
    #[error("{0}")]
    Shape(String),
}

/// Result of kernel calls.
pub type Result<T> = std::result::Result<T, Error>;
