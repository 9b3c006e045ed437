//! `accellm simulate`.

/// Arguments of `accellm simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Runs `accellm simulate`.
pub fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("simulate: not implemented yet")
}
