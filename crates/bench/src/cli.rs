//! `accellm bench`.

/// Arguments of `accellm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs `accellm bench`.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: not implemented yet")
}
