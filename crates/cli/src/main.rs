//! The `accellm` command: serve, worker, simulate, bench, engine-bench, calibrate.

use clap::{Parser, Subcommand};

/// accellm: LLM serving with AcceLLM and AccelGen scheduling, real or simulated.
#[derive(Debug, Parser)]
#[command(name = "accellm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a GGUF model over the OpenAI API on several engine instances.
    Serve(accellm_server::cli::ServeArgs),
    /// Run one engine instance for an `accellm serve --workers` front on another host.
    Worker(accellm_server::remote::WorkerArgs),
    /// Simulate a cluster in virtual time over hardware cost models and traces.
    Simulate(accellm_sim::cli::SimulateArgs),
    /// Replay a workload against any OpenAI-compatible endpoint.
    Bench(accellm_bench::cli::BenchArgs),
    /// Measure the engine's prefill and decode speed on this machine.
    EngineBench(accellm_engine::cli::EngineBenchArgs),
    /// Fit an iteration-time cost model of the engine on this machine.
    Calibrate(accellm_engine::cli::CalibrateArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => accellm_server::cli::run(args),
        Command::Worker(args) => accellm_server::remote::run_worker(args),
        Command::Simulate(args) => accellm_sim::cli::run(args),
        Command::Bench(args) => accellm_bench::cli::run(args),
        Command::EngineBench(args) => accellm_engine::cli::run_bench(args),
        Command::Calibrate(args) => accellm_engine::cli::run_calibrate(args),
    }
}
