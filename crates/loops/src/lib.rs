#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod compiled;
mod error;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod kernel;
pub mod quant;
pub mod schedule;
pub mod tune;

pub use error::{Error, Result};
pub use ir::{Expr, FloatType, NodeId, VarId};
pub use jit::attention::{AttnDesc, AttnKernel, AttnKernelCache};
pub use jit::fgemm::{FGemmDesc, FGemmKernel, PackedFloatWeights};
pub use jit::qgemm::{ActsQ8, PackedWeights, QGemmDesc, QGemmKernel};
pub use jit::rowops::{RopeLayout, RowKernel, RowKernelCache, RowOp, RowOpDesc};
pub use jit::Isa;
pub use kernel::{Epilogue, EpilogueArgs, KernelCache, SgemmDesc, SgemmKernel};
pub use quant::QuantType;
pub use schedule::{Annot, Loop, Pack, Schedule, Tail};
