//! `accellm bench --predict` against a real server (tiny random-weight model, loopback): the
//! simulator replays the very requests the bench sent, configured from `GET /accellm/config`.

mod support;

use std::time::{Duration, Instant};

use accellm_bench::cli::{run, BenchArgs};
use clap::Parser;
use serde_json::Value;
use support::{start, tiny_config, TINY_CONTEXT};

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: BenchArgs,
}

/// A profile of the tiny model: 2 layers, 2 KV heads of 16 dims in f32 (K and V).
fn tiny_profile(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tiny-profile.toml");
    let text = format!(
        "name = \"tiny test model\"\na_ms = 0.5\nb_ms_per_token = 0.02\nc_ms_per_context = 0.0001\n\
         d_ms_per_logit_row = 0.05\noverhead_ms = 0.2\nrequest_overhead_ms = 1.0\n\
         [geometry]\nlayers = 2\nkv_bytes_per_token = 512\ncontext_length = {TINY_CONTEXT}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn predicted_and_measured_counts_agree_exactly() {
    let t0 = Instant::now();
    let server = start(tiny_config());
    let dir = std::env::temp_dir().join(format!("accellm-fidelity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = tiny_profile(&dir);
    let json_path = dir.join("out.json");
    let live_path = dir.join("live.toml");
    let base = format!("http://{}", server.addr());
    let tokenizer = support::tiny_model();
    let argv = [
        "bench",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--base-url",
        &base,
        "--no-progress",
        "--workload",
        "synthetic:prompt=lognormal(40,0.5),output=lognormal(12,0.5)",
        "--num-prompts",
        "8",
        "--rate",
        "20",
        "--slo",
        "classes",
        "--timeout",
        "60",
        "--predict",
        profile.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
        "--calibrate-out",
        live_path.to_str().unwrap(),
    ];
    run(Cmd::try_parse_from(argv).unwrap().args).unwrap();
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let f = &j["fidelity"];
    assert_eq!(f["setup"]["instances"], 2, "{f}");
    assert_eq!(f["setup"]["kv_blocks"], 256);
    let (p, m) = (&f["predicted"], &f["measured"]);
    assert_eq!(m["completed"], 8, "{m}");
    for k in ["requests", "completed", "prompt_tokens", "output_tokens"] {
        assert_eq!(p[k], m[k], "{k}: predicted {p} measured {m}");
    }
    assert_eq!(m["output_tokens"], j["total_output_tokens"]);
    // Every latency figure is there on both sides.
    for side in [p, m] {
        for k in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            assert!(side[k]["p50"].as_f64().unwrap() > 0.0, "{k}: {side}");
        }
    }
    assert!(f["measured_iterations"]["count"].as_u64().unwrap() > 0);
    assert!(f["predicted_iterations"]["count"].as_u64().unwrap() > 0);
    // The profile fitted to the run's own iterations reads back and names them.
    let live = accellm_sim::profile::load(&live_path).unwrap();
    let measured = f["measured_iterations"]["count"].as_u64().unwrap() as usize;
    // Iterations on a partner's cores too are fitted apart (`[wide]`), when they determine a fit.
    match &live.wide {
        Some(w) => assert_eq!(live.points.len() + w.points.len(), measured),
        None => assert!(!live.points.is_empty() && live.points.len() <= measured),
    }
    assert_eq!((live.clock.as_str(), live.geometry.layers), ("server", 2));
    server.shutdown().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
}

/// The real default model served with its defaults (AcceLLM pair, AccelGen, the cost model of
/// the start-up probe), 10 requests replayed live and predicted with the server's own cost model:
/// the same requests and tokens on both sides, and the simulator runs as many iterations as the
/// server within 20%.
#[test]
fn the_servers_own_cost_model_predicts_its_iteration_count() {
    let Some(path) = support::real_model() else {
        return;
    };
    let server = start(accellm_server::ServerConfig {
        model: Some(path.clone()),
        port: 0,
        kv_blocks: 256,
        ..accellm_server::ServerConfig::default()
    });
    let dir = std::env::temp_dir().join(format!("accellm-fidelity-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("out.json");
    let base = format!("http://{}", server.addr());
    let argv = [
        "bench",
        "--tokenizer",
        path.to_str().unwrap(),
        "--base-url",
        &base,
        "--no-progress",
        "--workload",
        "synthetic:prompt=lognormal(96,0.5),output=lognormal(24,0.5)",
        "--num-prompts",
        "10",
        "--rate",
        "2",
        "--slo",
        "classes",
        "--seed",
        "1",
        "--timeout",
        "120",
        "--predict",
        "server",
        "--json",
        json_path.to_str().unwrap(),
    ];
    run(Cmd::try_parse_from(argv).unwrap().args).unwrap();
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let f = &j["fidelity"];
    let (p, m) = (&f["predicted"], &f["measured"]);
    assert_eq!(m["completed"], 10, "{m}");
    for k in ["requests", "completed", "prompt_tokens", "output_tokens"] {
        assert_eq!(p[k], m[k], "{k}: predicted {p} measured {m}");
    }
    let count = |side: &str| f[side]["count"].as_f64().unwrap();
    let (pi, mi) = (count("predicted_iterations"), count("measured_iterations"));
    assert!(
        (pi - mi).abs() <= 0.2 * mi,
        "iterations predicted {pi} measured {mi}: {f}"
    );
    server.shutdown().unwrap();
}
