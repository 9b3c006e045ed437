//! `accellm engine-bench` and `accellm calibrate`.

/// Arguments of `accellm engine-bench`.
#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {}

/// Runs `accellm engine-bench`.
pub fn run_bench(_args: EngineBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("engine-bench: not implemented yet")
}

/// Arguments of `accellm calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {}

/// Runs `accellm calibrate`.
pub fn run_calibrate(_args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::bail!("calibrate: not implemented yet")
}
