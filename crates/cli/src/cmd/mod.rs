//! One module per verb: each has `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench;
pub mod bench_spec;
pub mod chat;
pub mod common;
pub mod generate;
pub mod inspect;
pub mod kernels;
pub mod model_args;
pub mod spec_args;
pub mod tokenize;
pub mod train;
