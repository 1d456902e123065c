//! Ops on the tape, each with its forward and backward, one concept per module.
//!
//! Every op is a method of [`crate::Tape`] returning a new [`crate::Var`]; shape errors are
//! `Err`, never panics. Gradients are checked against central finite differences of f64
//! reference implementations in `tests/gradcheck.rs`.

mod attention;
mod elementwise;
mod embedding;
mod linear;
mod loss;
mod norm;
mod rope;
mod shape;

pub use attention::{KeyLists, KeyListsBuilder};
