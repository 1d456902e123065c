//! `peregrine tokenize` (being written).

/// Arguments of `peregrine tokenize`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the verb.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`peregrine tokenize` is not built yet")
}
