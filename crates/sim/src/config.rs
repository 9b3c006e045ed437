//! A simulation described in TOML. Every field has a default; command-line flags override it.
//!
//! ```toml
//! model = "llama2-70b"
//! hardware = "h100"          # or h100-sxm5-80gb, a100, h200, ascend-910b2, ...
//! instances = 8
//! tp = 8
//! block_size = 16
//! link = "auto"              # nvlink, pcie, inter-node, or "25gbps" (per direction)
//! prefix_cache = true        # reuse cached KV of shared prefixes (workloads with prefixes)
//!
//! [workload]                 # accellm_workload::WorkloadSpec
//! source = "azure-conv"
//! arrivals = { kind = "retime", rate = 8.0 }
//! max_requests = 5000
//! slo = { kind = "classes" }
//!
//! [instance.sarathi]         # the instance policy and its knobs
//! chunk_size = 1024          #   (accellm_core::instance::InstanceConfig)
//!
//! [cluster.splitwise]        # the cluster policy and its knobs
//! prefill_instances = 3      #   (accellm_core::cluster::ClusterConfig)
//!
//! [cost]                     # efficiency overrides (data/specs/cost-model.toml)
//! gemm_mfu = 0.6
//! ```
//!
//! A policy with default knobs is named alone (`cluster = "least-load"`). Knobs of a policy other
//! than the one chosen are an error: `[cluster.accellm]` holds AcceLLM's (docs/accellm.md), e.g.
//!
//! ```toml
//! [cluster.accellm]
//! sync = "recompute"         # eager, lazy, recompute
//! eviction = "largest-first" # lru, largest-first
//! prefix_weight = 1.0        # cache-aware routing: weight of the expected prefix hit
//! ```

use std::path::{Path, PathBuf};

use accellm_core::{
    cluster::ClusterConfig,
    cost::{LinearCostModel, Link},
    instance::InstanceConfig,
    profile::HardwareProfile,
};
use accellm_workload::{BuiltinTrace, WorkloadSource, WorkloadSpec};
use serde::{Deserialize, Serialize};

use crate::specs::EfficiencyOverrides;

/// Everything one simulation needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Model name (`data/specs/models.toml`).
    pub model: String,
    /// Device name or alias (`data/specs/hardware.toml`, `cost-model.toml`).
    pub hardware: String,
    /// Instances (model replicas).
    pub instances: u32,
    /// Tensor parallelism: devices per instance.
    pub tp: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Link between instances: `auto`, `nvlink`, `pcie`, `inter-node` or `NUMgbps`.
    pub link: String,
    /// Most requests waiting cluster-wide before new ones are rejected (0: unbounded).
    pub max_waiting: usize,
    /// Reuse the cached KV of prompt prefixes (for workloads with prefix structure).
    pub prefix_cache: bool,
    /// Interval of time-series samples in ms (0: about 500 samples over the workload).
    pub sample_interval_ms: f64,
    /// The workload.
    pub workload: WorkloadSpec,
    /// Instance policy and its knobs.
    pub instance: InstanceConfig,
    /// Cluster policy and its knobs.
    pub cluster: ClusterConfig,
    /// Cost-model efficiency overrides.
    pub cost: EfficiencyOverrides,
    /// A measured hardware profile (`accellm calibrate --out`) to simulate instead of the
    /// roofline model of `model` on `hardware` (docs/simulator.md).
    pub hardware_profile: Option<PathBuf>,
    /// The profile itself, inline (`[profile]`), or as read from `hardware_profile`.
    pub profile: Option<HardwareProfile>,
    /// KV blocks per instance; default: what the profile records, or what fits in memory.
    pub kv_blocks: Option<u32>,
    /// With a profile: the iteration-time model the scheduler predicts with, when it is not the
    /// profile's (a live server configured with another cost model). The profile still sets
    /// how long iterations really take.
    pub scheduler_cost: Option<LinearCostModel>,
    /// With a profile: the link the scheduler assumes, when it is not the profile's.
    pub scheduler_link: Option<Link>,
    /// Instances that fail, as `(instance, seconds after the start)` (`--fail I@S`).
    pub failures: Vec<(u32, f64)>,
    /// Links between two instances that go down and come back, as `(a, b, start, end)` in
    /// seconds after the start (`--partition A-B@START..END`); both instances keep serving.
    pub partitions: Vec<(u32, u32, f64, f64)>,
    /// Instances `2k` and `2k + 1` lend each other cores while one has nothing to run
    /// (`accellm_core::SchedulerConfig::share_idle_cores`); default: when the profile has a
    /// `[wide]` fit (CPU instances side by side, as `accellm serve` runs them).
    pub share_idle_cores: Option<bool>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "llama2-70b".into(),
            hardware: "h100-sxm5-80gb".into(),
            instances: 4,
            tp: 8,
            block_size: 16,
            link: "auto".into(),
            max_waiting: 0,
            prefix_cache: true,
            sample_interval_ms: 0.0,
            workload: WorkloadSpec::new(WorkloadSource::builtin(BuiltinTrace::AzureConv)),
            instance: InstanceConfig::default(),
            cluster: ClusterConfig::default(),
            cost: EfficiencyOverrides::default(),
            hardware_profile: None,
            profile: None,
            kv_blocks: None,
            scheduler_cost: None,
            scheduler_link: None,
            failures: Vec::new(),
            partitions: Vec::new(),
            share_idle_cores: None,
        }
    }
}

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML or unknown keys.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: String,
        /// What is wrong (with line and column).
        message: String,
    },
}

impl SimConfig {
    /// Reads a TOML config; missing fields keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Toml {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Total devices.
    pub fn gpus(&self) -> u32 {
        self.instances * self.tp
    }

    /// Whether instances lend each other idle cores ([`SimConfig::share_idle_cores`]).
    pub fn shares_idle_cores(&self) -> bool {
        self.share_idle_cores
            .unwrap_or_else(|| self.profile.as_ref().is_some_and(|p| p.wide.is_some()))
    }

    /// Reads `hardware_profile` into `profile` if that is not loaded yet.
    pub fn load_profile(&mut self) -> Result<(), crate::profile::ProfileLoadError> {
        if let (None, Some(path)) = (&self.profile, &self.hardware_profile) {
            self.profile = Some(crate::profile::load(path)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accellm_core::{cluster::accellm::SyncMode, kv::EvictionPolicy, policy::PolicyConfig};

    #[test]
    fn toml_sections_reach_policy_knobs() {
        let c = SimConfig::parse(
            r#"
            instances = 6
            [workload]
            source = "sharegpt"
            max_requests = 10
            [instance.sarathi]
            chunk_size = 1024
            [cluster.splitwise]
            prefill_instances = 2
            [cost]
            gemm_mfu = 0.6
            "#,
        )
        .unwrap();
        assert_eq!(c.instances, 6);
        let InstanceConfig::Sarathi(i) = &c.instance else {
            panic!("{:?}", c.instance)
        };
        assert_eq!(i.chunk_size, 1024);
        let ClusterConfig::Splitwise(k) = &c.cluster else {
            panic!("{:?}", c.cluster)
        };
        assert_eq!(k.prefill_instances, 2);
        assert_eq!(c.cost.gemm_mfu, Some(0.6));
        assert_eq!(c.tp, 8);
        let c = SimConfig::parse(
            "[cluster.accellm]\nsync = \"recompute\"\neviction = \"largest-first\"\n",
        )
        .unwrap();
        let ClusterConfig::Accellm(a) = &c.cluster else {
            panic!("{:?}", c.cluster)
        };
        assert_eq!(a.sync, SyncMode::Recompute);
        assert_eq!(a.eviction, EvictionPolicy::LargestFirst);
        let e = SimConfig::parse("[cluster.accellm]\nsync = \"never\"\n").unwrap_err();
        assert!(e.contains("eager") && e.contains("recompute"), "{e}");
        let e = SimConfig::parse("[cluster.accellm]\neviction = \"fifo\"\n").unwrap_err();
        assert!(e.contains("lru") && e.contains("largest-first"), "{e}");
        let c =
            SimConfig::parse("prefix_cache = false\n[cluster.least-load]\nprefix_weight = 2.5\n")
                .unwrap();
        assert!(!c.prefix_cache);
        assert_eq!(
            c.cluster,
            ClusterConfig::LeastLoad(accellm_core::cluster::least_load::LeastLoadConfig {
                prefix_weight: 2.5
            })
        );
        assert!(SimConfig::default().prefix_cache);
        assert!(SimConfig::parse("instnaces = 3")
            .unwrap_err()
            .contains("instnaces"));
        // The policy names of before are gone, not ignored: the policy is its section's key.
        let e = SimConfig::parse("cluster_policy = \"accellm\"\n").unwrap_err();
        assert!(e.contains("cluster_policy"), "{e}");
        let c = SimConfig::parse("cluster = \"accellm\"\ninstance = \"accelgen\"\n").unwrap();
        assert_eq!(
            (c.cluster.name(), c.instance.name()),
            ("accellm", "accelgen")
        );
    }
}
