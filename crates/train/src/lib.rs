//! Training on CPU for Peregrine: a reverse-mode autograd tape over f32 tensors, AdamW with a
//! warm-up + cosine schedule and global-norm clipping, safetensors checkpoints that resume
//! bit-exactly, and the EAGLE-3 draft head with its training-time-test (TTT) loss.
//!
//! **Layer.** Beside `spec`, above `loops` (whose JIT sgemm runs the large products); no other
//! peregrine crate is needed. Recipes that read a target model (feature extraction,
//! self-distillation) belong to the caller.
//!
//! **Tour.**
//! - [`Tensor`], [`Shape`]: dense row-major f32 values of at most two dimensions.
//! - [`ParamStore`]: named parameters with gradients; [`Tape`] borrows it, records ops
//!   ([`ops`]) and returns [`ParamGrads`] from [`Tape::backward`].
//! - [`Compute`]: matmul backend (JIT sgemm / `gemm` crate) and thread count.
//! - [`keep_freed_memory`]: the allocator policy a training process wants.
//! - [`Tape::enable_profiling`] / [`Tape::profile`]: forward and backward time per op kind.
//! - [`optim`]: [`AdamW`], [`LrSchedule`], [`clip_grad_norm`].
//! - [`checkpoint`]: save/resume training state; bf16 export of parameters.
//! - [`eagle3`]: the EAGLE-3 head, its TTT batches and loss.
//!
//! **Invariants.** Shapes are checked when an op is recorded; bad shapes, indices and
//! configurations are errors, never panics. Gradients of every op are checked against central
//! finite differences of f64 reference implementations (`tests/gradcheck.rs`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod checkpoint;
pub mod eagle3;
mod error;
mod matmul;
mod memory;
pub mod ops;
pub mod optim;
mod params;
mod simd;
mod tape;
mod tensor;

pub use checkpoint::{export_bf16, load_checkpoint, load_params, save_checkpoint, Resumed};
pub use eagle3::{Eagle3Config, Eagle3Head, TttConfig, TttSequence, TttStats};
pub use error::{Error, Result};
pub use matmul::{Compute, MatmulBackend, JIT_MIN_FLOPS};
pub use memory::keep_freed_memory;
pub use ops::{KeyLists, KeyListsBuilder};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};
pub use params::{ParamGrads, ParamId, ParamStore};
pub use tape::{Gradients, OpTime, Tape, Var};
pub use tensor::{Shape, Tensor};
