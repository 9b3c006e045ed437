//! `accellm serve`.

/// Arguments of `accellm serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs `accellm serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve: not implemented yet")
}
