//! `accellm serve`: flags, merged over an optional TOML config, then [`crate::serve`] until
//! SIGINT or SIGTERM.

use std::path::PathBuf;

use accellm_core::{
    policy::PolicyConfig,
    profile::{Knot, KvCopy, WideFit},
};
use accellm_engine::WeightFormat;
use anyhow::Context as _;

use crate::config::{CostConfig, ServerConfig};

/// Arguments of `accellm serve`. Flags override the `--config` file, which overrides defaults.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (every key optional; see docs/server.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// GGUF model file [default: SmolLM2-135M-Instruct Q4_1, fetched into ~/.cache/accellm/models].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Name the model is served under [default: the file name without .gguf].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Weight format after loading: int8, q8-padded, blocks, native, f32 [default: int8 where its
    /// kernels have SIMD (AVX-512 VNNI, or AVX2 with FMA and F16C), blocks with AVX2 alone, f32
    /// otherwise].
    #[arg(long)]
    pub weight_format: Option<WeightFormat>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port [default: 8000].
    #[arg(long)]
    pub port: Option<u16>,
    /// Engine instances [default: 2, one AcceLLM pair].
    #[arg(long)]
    pub instances: Option<u32>,
    /// Threads per instance [default: 1].
    #[arg(long)]
    pub threads_per_instance: Option<usize>,
    /// Cluster policy [default: accellm].
    #[arg(long)]
    pub cluster_policy: Option<String>,
    /// Instance policy [default: accelgen].
    #[arg(long)]
    pub instance_policy: Option<String>,
    /// KV blocks per instance [default: 1024].
    #[arg(long)]
    pub kv_blocks: Option<u32>,
    /// Tokens per KV block [default: 16].
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Prefix caching: reuse the KV of prompt prefixes already computed [default: on].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub prefix_cache: Option<bool>,
    /// KV events as vLLM publishes them, for llm-d's precise prefix scorer: vLLM's
    /// KVEventsConfig as JSON, e.g. `{"enable_kv_cache_events": true, "publisher": "zmq",
    /// "endpoint": "tcp://*:5557", "topic": "kv@POD_IP@MODEL"}` [default: off].
    #[arg(long, value_name = "JSON")]
    pub kv_events_config: Option<String>,
    /// Pin each instance's threads to CPUs of their own when the process may use at least
    /// instances × threads CPUs [default: on].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub pin_threads: Option<bool>,
    /// Let an instance run an iteration on its partner's cores too (instances 2k and 2k+1)
    /// while the partner has nothing to run: a lone request gets the whole machine [default: on].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub share_idle_cores: Option<bool>,
    /// Most requests waiting before new ones get HTTP 429 (0: unbounded) [default: 256].
    #[arg(long)]
    pub max_waiting: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1/* routes.
    #[arg(long, env = "ACCELLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Default time-to-first-token SLO in ms for requests that bring none.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// Default time-between-tokens SLO in ms for requests that bring none.
    #[arg(long)]
    pub slo_tbt_ms: Option<f64>,
    /// Cost model: the TOML file `accellm calibrate --out` writes (or base_ms, per_token_ms,
    /// per_kv_token_ms, per_logit_row_ms) [default: the measured CPU fit scaled to the threads].
    #[arg(long)]
    pub cost_model: Option<PathBuf>,
    /// Drive `accellm worker` processes at these addresses (comma-separated, one instance each,
    /// consecutive pairs form AcceLLM pairs) instead of running instances in this process.
    #[arg(long, value_delimiter = ',')]
    pub workers: Option<Vec<String>>,
    /// Mutual TLS with the cluster CA on the links to `--workers`.
    #[command(flatten)]
    pub tls: crate::remote::tls::TlsArgs,
    /// The port the workers take each other's KV links on, when they listen for them apart
    /// from the front (`accellm worker --kv-listen`) [default: their --workers address].
    #[arg(long)]
    pub worker_kv_port: Option<u16>,
    /// Serve the API over HTTPS with this PEM certificate (then any intermediates), as vLLM's
    /// flag of the same name.
    #[arg(long, requires = "ssl_keyfile")]
    pub ssl_certfile: Option<PathBuf>,
    /// The PEM private key of `--ssl-certfile`.
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_keyfile: Option<PathBuf>,
}

impl ServeArgs {
    /// The configuration these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_file(p)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = &self.$f { c.$f = v.clone().into(); } )*};
        }
        set!(
            host,
            port,
            instances,
            threads_per_instance,
            kv_blocks,
            block_size,
            prefix_cache,
            pin_threads,
            share_idle_cores,
            max_waiting,
            weight_format
        );
        if let Some(p) = &self.cluster_policy {
            c.cluster = c.cluster.select(p)?;
        }
        if let Some(p) = &self.instance_policy {
            c.instance = c.instance.select(p)?;
        }
        if let Some(m) = &self.model {
            c.model = Some(m.clone());
        }
        if let Some(n) = &self.served_model_name {
            c.served_model_name = Some(n.clone());
        }
        if let Some(k) = &self.api_key {
            c.api_key = Some(k.clone());
        }
        if let Some(j) = &self.kv_events_config {
            c.kv_events = serde_json::from_str(j).context("--kv-events-config")?;
        }
        if let Some(v) = self.slo_ttft_ms {
            c.slo.ttft_ms = Some(v);
        }
        if let Some(v) = self.slo_tbt_ms {
            c.slo.tbt_ms = Some(v);
        }
        if let Some(files) = self.tls.files()? {
            c.tls = Some(files);
        }
        if let Some(p) = self.worker_kv_port {
            c.worker_kv_port = Some(p);
        }
        if let Some(f) = &self.ssl_certfile {
            c.ssl_certfile = Some(f.clone());
        }
        if let Some(f) = &self.ssl_keyfile {
            c.ssl_keyfile = Some(f.clone());
        }
        if let Some(w) = &self.workers {
            c.workers = w.clone();
            c.instances = w.len() as u32;
        }
        if let Some(p) = &self.cost_model {
            c.cost = Some(read_cost(p)?);
        }
        c.validate()?;
        Ok(c)
    }
}

pub use accellm_engine::cli::on_off;

/// Reads cost coefficients from a TOML file: the hardware profile `accellm calibrate --out`
/// writes (`a_ms`, `b_ms_per_token`, `c_ms_per_context`, `d_ms_per_logit_row`, plus
/// `overhead_ms` and `[kv_copy]` when present), or the server's own
/// names (`base_ms`, `per_token_ms`, `per_kv_token_ms`, `per_logit_row_ms`), at the top level or
/// under `[cost]`.
fn read_cost(path: &std::path::Path) -> anyhow::Result<CostConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cost model {}", path.display()))?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("invalid TOML in {}", path.display()))?;
    let table = v.get("cost").cloned().unwrap_or(v);
    let get = |names: [&str; 2]| -> anyhow::Result<f64> {
        names
            .iter()
            .find_map(|k| {
                let x = table.get(*k)?;
                x.as_float().or_else(|| x.as_integer().map(|i| i as f64))
            })
            .with_context(|| format!("{}: missing number `{}`", path.display(), names[0]))
    };
    // A hardware profile's executor overhead is part of every iteration the scheduler predicts.
    let overhead = get(["overhead_ms", "overhead_ms"]).unwrap_or(0.0);
    let kv_copy = match table.get("kv_copy") {
        Some(t) => Some(
            t.clone()
                .try_into::<KvCopy>()
                .with_context(|| format!("{}: invalid [kv_copy]", path.display()))?,
        ),
        None => None,
    };
    let knots = match table.get("knot") {
        Some(t) => t
            .clone()
            .try_into::<Vec<Knot>>()
            .with_context(|| format!("{}: invalid [[knot]]", path.display()))?,
        None => Vec::new(),
    };
    let wide = match table.get("wide") {
        Some(t) => {
            let mut w = t
                .clone()
                .try_into::<WideFit>()
                .with_context(|| format!("{}: invalid [wide]", path.display()))?;
            w.a_ms += overhead;
            Some(w)
        }
        None => None,
    };
    Ok(CostConfig {
        base_ms: get(["base_ms", "a_ms"])? + overhead,
        per_token_ms: get(["per_token_ms", "b_ms_per_token"])?,
        per_kv_token_ms: get(["per_kv_token_ms", "c_ms_per_context"])?,
        per_logit_row_ms: get(["per_logit_row_ms", "d_ms_per_logit_row"])?,
        kv_copy,
        knots,
        wide,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Runs `accellm serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    accellm_engine::inline_candle_matmuls()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("accellm-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let scheme = if cfg.ssl_certfile.is_some() {
        "https"
    } else {
        "http"
    };
    rt.block_on(crate::serve(&cfg, shutdown_signal(), |addr| {
        tracing::info!("listening on {scheme}://{addr}");
        eprintln!("accellm serve: listening on {scheme}://{addr} (Ctrl-C to stop)");
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn flags_override_defaults() {
        let w = Wrap::parse_from([
            "x",
            "--instances",
            "4",
            "--port",
            "0",
            "--cluster-policy",
            "round-robin",
            "--instance-policy",
            "vllm",
            "--slo-ttft-ms",
            "300",
        ]);
        let c = w.args.to_config().unwrap();
        assert_eq!(c.instances, 4);
        assert_eq!(
            (c.cluster.name(), c.instance.name()),
            ("round-robin", "vllm")
        );
        assert_eq!(c.port, 0);
        assert_eq!(c.slo.ttft_ms, Some(300.0));
        assert_eq!(c.host, "127.0.0.1");
    }

    /// A policy flag over a config file keeps the file's knobs for that policy and refuses to
    /// drop knobs of another.
    #[test]
    fn a_policy_flag_over_config_knobs_of_another_policy_is_an_error() {
        let dir = std::env::temp_dir().join(format!("accellm-serve-knobs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("serve.toml");
        std::fs::write(
            &p,
            "[cluster.accellm]\nsync = \"lazy\"\n[instance.vllm]\nmax_num_batched_tokens = 1024\n",
        )
        .unwrap();
        let config = |flags: &[&str]| {
            let mut argv = vec!["x", "--config", p.to_str().unwrap()];
            argv.extend(flags);
            Wrap::parse_from(argv)
                .args
                .to_config()
                .map_err(|e| format!("{e:#}"))
        };
        let e = config(&["--cluster-policy", "least-load"]).unwrap_err();
        assert!(
            e.contains("[cluster.accellm]") && e.contains("not `least-load`"),
            "{e}"
        );
        let e = config(&["--instance-policy", "accelgen"]).unwrap_err();
        assert!(
            e.contains("[instance.vllm]") && e.contains("not `accelgen`"),
            "{e}"
        );
        let c = config(&["--cluster-policy", "accellm", "--instance-policy", "vllm"]).unwrap();
        let accellm_core::cluster::ClusterConfig::Accellm(k) = &c.cluster else {
            panic!("{:?}", c.cluster)
        };
        assert_eq!(k.sync, accellm_core::cluster::accellm::SyncMode::Lazy);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cost_file_is_read() {
        let dir = std::env::temp_dir().join(format!("accellm-cost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cost.toml");
        std::fs::write(
            &p,
            "[cost]\nbase_ms = 5\nper_token_ms = 1.5\nper_kv_token_ms = 0.01\nper_logit_row_ms = 0.2\n",
        )
        .unwrap();
        let c = read_cost(&p).unwrap();
        assert_eq!(c.base_ms, 5.0);
        assert_eq!(c.per_token_ms, 1.5);
        std::fs::write(&p, "base_ms = 5\n").unwrap();
        assert!(read_cost(&p).is_err());
        // What `accellm calibrate --out` writes.
        std::fs::write(
            &p,
            "a_ms = 8.5\nb_ms_per_token = 2.1\nc_ms_per_context = 0.005\nd_ms_per_logit_row = 0.3\nr2 = 0.99\nsamples = 40\n",
        )
        .unwrap();
        let c = read_cost(&p).unwrap();
        assert_eq!((c.base_ms, c.per_logit_row_ms), (8.5, 0.3));
    }
}
