//! One module per verb: each has `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench;
pub mod common;
pub mod inspect;
pub mod kernels;
pub mod tokenize;
