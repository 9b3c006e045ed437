//! Server configuration: a TOML file, overridden by command-line flags, with defaults for
//! everything (`accellm serve` with no arguments is a complete configuration).

use std::path::{Path, PathBuf};

use accellm_core::{
    cluster::ClusterConfig,
    cost::{LinearCostModel, Link, TokenKnot},
    instance::InstanceConfig,
    policy::PolicyConfig,
    profile::{HardwareProfile, Knot, KvCopy, WideFit},
    request::Slo,
};
use accellm_engine::WeightFormat;
use accellm_workload::SloClass;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Errors while reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything `accellm serve` needs. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// GGUF model file; `None` fetches and uses the default model (SmolLM2-135M-Instruct).
    pub model: Option<PathBuf>,
    /// Name the model is served under (`/v1/models`, the `model` field); by default the file
    /// name without `.gguf`.
    pub served_model_name: Option<String>,
    /// How projection weights are stored after loading.
    pub weight_format: WeightFormat,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Engine instances (model replicas); AcceLLM pairs them up.
    pub instances: u32,
    /// Threads of each instance.
    pub threads_per_instance: usize,
    /// KV blocks per instance.
    pub kv_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Reuse the KV blocks of prompt prefixes already computed (vLLM's automatic prefix caching,
    /// in the scheduling core: see docs/prefix-cache.md).
    pub prefix_cache: bool,
    /// vLLM's KV events (`--kv-events-config`): what the prefix cache stores and evicts,
    /// published on ZMQ for llm-d's precise prefix scorer (see docs/prefix-cache.md).
    pub kv_events: crate::kv_events::KvEventsConfig,
    /// Pin each instance's threads to CPUs of their own when there are enough (instances ×
    /// threads per instance ≤ CPUs this process may use): less noise from the OS moving them.
    pub pin_threads: bool,
    /// Instances `2k` and `2k + 1` lend each other their cores while one has nothing to run
    /// (`accellm_core::SchedulerConfig::share_idle_cores`); local instances only.
    pub share_idle_cores: bool,
    /// Most requests waiting for prefill before new ones get 429 (0: unbounded).
    pub max_waiting: usize,
    /// Largest accepted request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Bearer token required on `/v1/*` (also read from `ACCELLM_API_KEY`).
    pub api_key: Option<String>,
    /// Default SLOs of requests that bring none.
    pub slo: Slo,
    /// SLO classes a request can name with llm-d's objective header
    /// (`x-llm-d-inference-objective`): its targets and priority, below the request's own.
    /// By default the workload crate's classes (`chat`, `code`, `summarisation`, `batch`).
    pub slo_classes: Vec<SloClass>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM before they are cancelled.
    pub shutdown_grace_s: f64,
    /// Iteration-time model of one instance; by default the CPU engine's measured fit scaled to
    /// the thread count.
    pub cost: Option<CostConfig>,
    /// Instance policy and its knobs: `instance = "vllm"`, or `[instance.accelgen]` with knobs
    /// (`accelgen`, `vllm`, `sarathi`).
    pub instance: InstanceConfig,
    /// Cluster policy and its knobs: `cluster = "least-load"`, or `[cluster.accellm]` with knobs
    /// (`accellm`, `round-robin`, `least-load`, `splitwise`).
    pub cluster: ClusterConfig,
    /// Addresses of `accellm worker` processes to drive, one instance each (empty: instances are
    /// threads of this process).
    pub workers: Vec<String>,
    /// Seconds to keep retrying workers that do not accept connections yet.
    pub worker_connect_timeout_s: f64,
    /// Seconds a remote worker may take to report an iteration before it is declared down.
    pub worker_deadline_s: f64,
    /// Mutual TLS with the workers (`--tls-cert`, `--tls-key`, `--tls-ca`; `[tls]` here).
    pub tls: Option<crate::remote::tls::TlsFiles>,
    /// The port workers take each other's KV links on when they listen for them apart from the
    /// front (`accellm worker --kv-listen`); by default their front address.
    pub worker_kv_port: Option<u16>,
    /// HTTPS on the API: this PEM certificate chain (`--ssl-certfile`, as vLLM)...
    pub ssl_certfile: Option<PathBuf>,
    /// ... and its PEM private key (`--ssl-keyfile`).
    pub ssl_keyfile: Option<PathBuf>,
}

/// Coefficients of the linear iteration-time model, in milliseconds (the form
/// `accellm calibrate` fits): `ms = base + per_token·T + per_kv_token·Σcontext + per_logit_row·rows`,
/// the token term bent at the knots when there are any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// Fixed cost per iteration (ms).
    pub base_ms: f64,
    /// Cost per token in the iteration (ms).
    pub per_token_ms: f64,
    /// Cost per KV token read by attention (ms).
    pub per_kv_token_ms: f64,
    /// Cost per row that needs logits (ms).
    pub per_logit_row_ms: f64,
    /// Measured KV copy speed between instances (from a hardware profile's `[kv_copy]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_copy: Option<KvCopy>,
    /// Where the cost per token changes (a hardware profile's `[[knot]]` rows).
    #[serde(default, rename = "knot", skip_serializing_if = "Vec::is_empty")]
    pub knots: Vec<Knot>,
    /// The model on twice the threads (a hardware profile's `[wide]`), executor overhead included
    /// in its `a_ms`: what an iteration on an idle partner's cores costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<WideFit>,
}

impl CostConfig {
    /// The fit measured for SmolLM2-135M with the Q8-padded weights on 2 threads of this
    /// machine class (see the engine notes), scaled to `threads` assuming compute scales
    /// linearly with threads (a rough guess; calibrate for better).
    pub fn default_for_threads(threads: usize) -> Self {
        let scale = 2.0 / threads.max(1) as f64;
        Self {
            base_ms: 9.0 * scale,
            per_token_ms: 2.2 * scale,
            per_kv_token_ms: 0.006 * scale,
            per_logit_row_ms: 0.4 * scale,
            kv_copy: None,
            knots: Vec::new(),
            wide: None,
        }
    }

    /// The coefficients of a hardware profile (its executor overhead added to the base), with
    /// its KV copy speed and knots.
    pub fn from_profile(p: &HardwareProfile) -> anyhow::Result<Self> {
        let [a, b, c, d] = p
            .coefficients()
            .context("the profile has no fitted coefficients")?;
        Ok(Self {
            base_ms: a + p.overhead_ms,
            per_token_ms: b,
            per_kv_token_ms: c,
            per_logit_row_ms: d,
            kv_copy: Some(p.kv_copy),
            knots: p.knots.clone(),
            wide: p.wide.clone().map(|mut w| {
                w.a_ms += p.overhead_ms;
                w
            }),
        })
    }

    /// The link the scheduler assumes between instances: the measured copy speed, or the
    /// default of [`KvCopy`].
    pub fn link(&self) -> Link {
        let k = self.kv_copy.unwrap_or_default();
        Link {
            bytes_per_s: k.bytes_per_s,
            latency_us: k.latency_us,
        }
    }

    /// The core's cost model for a model of `layers` layers and `kv_bytes_per_token`.
    pub fn to_model(&self, layers: u32, kv_bytes_per_token: u64) -> LinearCostModel {
        LinearCostModel {
            base_us: self.base_ms * 1000.0,
            per_token_us: self.per_token_ms * 1000.0,
            per_kv_token_us: self.per_kv_token_ms * 1000.0,
            per_logit_row_us: self.per_logit_row_ms * 1000.0,
            knots: self.knots.iter().copied().map(TokenKnot::from).collect(),
            layers,
            kv_bytes_per_token,
            // Its `a_ms` already carries the executor overhead.
            wide: self
                .wide
                .as_ref()
                .map(|w| Box::new(w.cost_model(0.0, layers, kv_bytes_per_token))),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: None,
            served_model_name: None,
            weight_format: WeightFormat::default(),
            host: "127.0.0.1".into(),
            port: 8000,
            instances: 2,
            threads_per_instance: 1,
            kv_blocks: 1024,
            block_size: 16,
            prefix_cache: true,
            kv_events: Default::default(),
            pin_threads: true,
            share_idle_cores: true,
            max_waiting: 256,
            max_body_bytes: 4 << 20,
            api_key: None,
            slo: Slo::default(),
            slo_classes: SloClass::defaults(),
            shutdown_grace_s: 30.0,
            cost: None,
            instance: InstanceConfig::Accelgen(Default::default()),
            cluster: ClusterConfig::Accellm(Default::default()),
            workers: Vec::new(),
            worker_connect_timeout_s: 120.0,
            worker_deadline_s: 30.0,
            tls: None,
            worker_kv_port: None,
            ssl_certfile: None,
            ssl_keyfile: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML configuration file; missing fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks ranges and policy knobs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.workers.is_empty() && self.workers.len() != self.instances as usize {
            return bad(format!(
                "{} workers given but instances = {}; with workers, each worker is one instance",
                self.workers.len(),
                self.instances
            ));
        }
        if self.instances == 0 {
            return bad("instances must be at least 1".into());
        }
        if self.threads_per_instance == 0 {
            return bad("threads_per_instance must be at least 1".into());
        }
        if self.kv_blocks == 0 || self.block_size == 0 {
            return bad("kv_blocks and block_size must be at least 1".into());
        }
        self.kv_events.validate().map_err(ConfigError::Invalid)?;
        if self.kv_events.enabled() && !self.prefix_cache {
            return bad("KV events report the prefix cache: they need prefix_cache on".into());
        }
        self.cluster
            .validate()
            .and_then(|()| self.instance.validate())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, v) in [
            ("slo.ttft_ms", self.slo.ttft_ms),
            ("slo.tbt_ms", self.slo.tbt_ms),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return bad(format!("{name} must be a positive number of milliseconds"));
            }
        }
        for (i, c) in self.slo_classes.iter().enumerate() {
            if c.name.trim().is_empty() || c.name.trim() != c.name {
                return bad(format!(
                    "slo_classes[{i}]: name `{}` must be non-empty without surrounding spaces",
                    c.name
                ));
            }
            if self.slo_classes[..i].iter().any(|o| o.name == c.name) {
                return bad(format!("slo_classes: `{}` defined twice", c.name));
            }
            for (what, v) in [("ttft_ms", c.ttft_ms), ("tbt_ms", c.tbt_ms)] {
                if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                    return bad(format!(
                        "slo_classes `{}`: {what} must be a positive number of milliseconds",
                        c.name
                    ));
                }
            }
        }
        if !(self.shutdown_grace_s.is_finite() && self.shutdown_grace_s >= 0.0) {
            return bad("shutdown_grace_s must be >= 0".into());
        }
        Ok(())
    }

    /// The cost coefficients in force.
    pub fn cost_config(&self) -> CostConfig {
        self.cost
            .clone()
            .unwrap_or_else(|| CostConfig::default_for_threads(self.threads_per_instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accellm_core::cluster::least_load::LeastLoadConfig;

    #[test]
    fn partial_toml_keeps_defaults() {
        let c: ServerConfig =
            toml::from_str("instances = 4\ncluster = \"round-robin\"\n[slo]\nttft_ms = 500.0\n")
                .unwrap();
        assert_eq!(c.instances, 4);
        assert_eq!(c.cluster, ClusterConfig::RoundRobin);
        assert_eq!(c.instance.name(), "accelgen");
        assert_eq!(c.slo.ttft_ms, Some(500.0));
        assert_eq!(c.port, 8000);
        assert_eq!(c.threads_per_instance, 1);
    }

    #[test]
    fn slo_classes_come_from_toml_and_are_checked() {
        let c: ServerConfig = toml::from_str(
            "[[slo_classes]]\nname = \"live\"\nttft_ms = 300.0\ntbt_ms = 40.0\npriority = -1\n",
        )
        .unwrap();
        assert_eq!(c.slo_classes.len(), 1);
        assert_eq!(c.slo_classes[0].priority, -1);
        assert!(c.validate().is_ok());
        let names: Vec<_> = ServerConfig::default()
            .slo_classes
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, ["chat", "code", "summarisation", "batch"]);
        let mut twice = ServerConfig::default();
        twice.slo_classes.push(twice.slo_classes[0].clone());
        assert!(twice.validate().is_err());
        let mut zero = ServerConfig::default();
        zero.slo_classes[1].ttft_ms = Some(0.0);
        assert!(zero.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ServerConfig>("instancez = 4\n").is_err());
    }

    #[test]
    fn default_cost_scales_with_threads() {
        let one = CostConfig::default_for_threads(1);
        let two = CostConfig::default_for_threads(2);
        assert!((one.base_ms - 2.0 * two.base_ms).abs() < 1e-9);
        let m = two.to_model(30, 1000);
        assert_eq!(m.base_us, 9000.0);
    }

    #[test]
    fn bad_values_are_reported() {
        let e = toml::from_str::<ServerConfig>("cluster = \"nope\"\n").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let c = ServerConfig {
            cluster: ClusterConfig::LeastLoad(LeastLoadConfig {
                prefix_weight: f64::NAN,
            }),
            ..ServerConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("prefix_weight"));
    }

    #[test]
    fn knobs_of_another_policy_are_errors() {
        // vLLM has no chunk size; AcceLLM's knobs under another cluster policy cannot be written.
        let e = toml::from_str::<ServerConfig>("[instance.vllm]\nchunk_size = 256\n").unwrap_err();
        assert!(e.to_string().contains("chunk_size"), "{e}");
        let e =
            toml::from_str::<ServerConfig>("[cluster.least-load]\nsync = \"lazy\"\n").unwrap_err();
        assert!(e.to_string().contains("sync"), "{e}");
        let c: ServerConfig =
            toml::from_str("[instance.vllm]\nmax_num_batched_tokens = 1024\n").unwrap();
        assert_eq!((c.cluster.name(), c.instance.name()), ("accellm", "vllm"));
    }
}
