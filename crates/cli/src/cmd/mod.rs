//! One module per verb: each has `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod inspect;
pub mod tokenize;
