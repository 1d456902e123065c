//! `peregrine inspect` (being written).

/// Arguments of `peregrine inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the verb.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`peregrine inspect` is not built yet")
}
