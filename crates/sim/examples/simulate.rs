//! `accellm simulate` without the rest of the `accellm` binary (no engine or server to build):
//! `cargo run --release -p accellm-sim --example simulate -- --compare vllm,sarathi`.

use clap::Parser;

/// Same flags as `accellm simulate`.
#[derive(Debug, Parser)]
#[command(name = "simulate")]
struct Cli {
    #[command(flatten)]
    args: accellm_sim::cli::SimulateArgs,
}

fn main() -> anyhow::Result<()> {
    accellm_sim::cli::run(Cli::parse().args)
}
