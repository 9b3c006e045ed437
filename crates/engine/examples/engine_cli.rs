//! The engine's two commands without the full `accellm` binary (quicker to build):
//! `cargo run --release -p accellm-engine --example engine_cli -- engine-bench ...`.

use clap::Parser;

#[derive(Parser)]
enum Cmd {
    /// Same as `accellm engine-bench`.
    EngineBench(accellm_engine::cli::EngineBenchArgs),
    /// Same as `accellm calibrate`.
    Calibrate(accellm_engine::cli::CalibrateArgs),
}

fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::EngineBench(a) => accellm_engine::cli::run_bench(a),
        Cmd::Calibrate(a) => accellm_engine::cli::run_calibrate(a),
    }
}
