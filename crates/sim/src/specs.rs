//! Hardware, model and efficiency figures, read from `data/specs/*.toml`.
//!
//! The files ship inside the binary (they are small), so `accellm simulate` works anywhere; each
//! entry cites its source in the TOML. Names are looked up exactly, then through the aliases of
//! `cost-model.toml` (`h100` → `h100-sxm5-80gb`); an unknown name is an error listing valid ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const HARDWARE_TOML: &str = include_str!("../../../data/specs/hardware.toml");
const MODELS_TOML: &str = include_str!("../../../data/specs/models.toml");
const COST_MODEL_TOML: &str = include_str!("../../../data/specs/cost-model.toml");

/// Why a spec could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A name that is neither a spec nor an alias.
    #[error("unknown {kind} `{name}`; valid: {valid}")]
    Unknown {
        /// "model" or "hardware".
        kind: &'static str,
        /// The name given.
        name: String,
        /// Valid names, comma-separated.
        valid: String,
    },
    /// A spec file that does not parse.
    #[error("bad spec file {file}: {message}")]
    Parse {
        /// Which file.
        file: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A device without the figure the cost model needs.
    #[error("hardware `{name}` lacks `{field}`")]
    Missing {
        /// The device.
        name: String,
        /// The missing field.
        field: &'static str,
    },
}

/// One accelerator, as in `hardware.toml` (only the fields the cost model uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// `nvidia` or `huawei`.
    pub vendor: String,
    /// Dense BF16 peak, TFLOP/s.
    pub bf16_tflops: Option<f64>,
    /// Dense FP16 peak, TFLOP/s.
    pub fp16_tflops: Option<f64>,
    /// Memory as marketed, GB.
    pub hbm_gb: f64,
    /// Exact memory in bytes, where known.
    pub hbm_bytes: Option<u64>,
    /// Memory bandwidth, GB/s.
    pub hbm_bw_gbps: f64,
    /// NVLink, both directions summed, GB/s.
    pub nvlink_bidir_gbps: Option<f64>,
    /// PCIe, both directions summed, GB/s.
    pub pcie_bidir_gbps: Option<f64>,
    /// Ascend HCCS to all peers, both directions summed, GB/s.
    pub hccs_total_bidir_gbps: Option<f64>,
    /// Ascend HCCS to one peer, both directions summed, GB/s.
    pub hccs_peer_bidir_gbps: Option<f64>,
}

impl Device {
    /// Dense 16-bit peak in FLOP/s.
    pub fn peak_flops(&self) -> Option<f64> {
        self.bf16_tflops.or(self.fp16_tflops).map(|t| t * 1e12)
    }

    /// Device memory in bytes (`hbm_bytes`, else `hbm_gb` × 10⁹).
    pub fn memory_bytes(&self) -> u64 {
        self.hbm_bytes.unwrap_or((self.hbm_gb * 1e9) as u64)
    }

    /// Scale-up link (NVLink or HCCS to all peers) per direction, bytes/s.
    pub fn scale_up_bytes_per_s(&self) -> Option<f64> {
        self.nvlink_bidir_gbps
            .or(self.hccs_total_bidir_gbps)
            .map(|g| g * 1e9 / 2.0)
    }

    /// Scale-up link to one peer per direction, bytes/s.
    pub fn peer_bytes_per_s(&self) -> Option<f64> {
        self.nvlink_bidir_gbps
            .or(self.hccs_peer_bidir_gbps)
            .map(|g| g * 1e9 / 2.0)
    }
}

/// One model architecture, as in `models.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden_size: u64,
    /// Attention heads.
    pub num_heads: u64,
    /// KV heads.
    pub num_kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// MLP width.
    pub intermediate_size: u64,
    /// Vocabulary size.
    pub vocab_size: u64,
    /// Longest context.
    pub max_position_embeddings: u32,
    /// All parameters.
    pub params: u64,
    /// Parameters of the transformer blocks (no embeddings, no LM head).
    pub params_non_embedding: u64,
    /// Weights in FP16.
    pub weights_bytes_fp16: u64,
    /// KV bytes per token in FP16 (all layers, K and V).
    pub kv_bytes_per_token_fp16: u64,
}

/// Efficiency factors of the roofline model (see `data/specs/cost-model.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of peak FLOP/s of the linear layers.
    pub gemm_mfu: f64,
    /// The same for tokens beyond `large_batch_tokens`.
    pub gemm_mfu_large: f64,
    /// Where the large-batch regime starts (tokens per iteration).
    pub large_batch_tokens: u32,
    /// Fraction of peak FLOP/s of attention.
    pub attention_mfu: f64,
    /// Fraction of HBM bandwidth when streaming weights and KV.
    pub bandwidth_efficiency: f64,
    /// Fixed time per layer of every iteration (µs).
    pub layer_overhead_us: f64,
    /// Extra time per layer of iterations with a prefill chunk (µs).
    pub prefill_layer_overhead_us: f64,
    /// Time per layer per sequence of the batch (µs).
    pub seq_layer_overhead_us: f64,
    /// Latency of one ring step of an all-reduce (µs).
    pub allreduce_hop_latency_us: f64,
    /// Fraction of the scale-up link bandwidth an all-reduce reaches.
    pub allreduce_bw_efficiency: f64,
    /// Fraction of device memory kept free.
    pub memory_reserve: f64,
    /// GPUs per server.
    pub gpus_per_node: u32,
    /// Network bandwidth per GPU between servers, GB/s per direction.
    pub internode_gbps: f64,
}

/// Overrides of [`Efficiency`] from a config's `[cost]` section; unset fields keep the spec's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EfficiencyOverrides {
    /// See [`Efficiency::gemm_mfu`].
    pub gemm_mfu: Option<f64>,
    /// See [`Efficiency::gemm_mfu_large`].
    pub gemm_mfu_large: Option<f64>,
    /// See [`Efficiency::large_batch_tokens`].
    pub large_batch_tokens: Option<u32>,
    /// See [`Efficiency::attention_mfu`].
    pub attention_mfu: Option<f64>,
    /// See [`Efficiency::bandwidth_efficiency`].
    pub bandwidth_efficiency: Option<f64>,
    /// See [`Efficiency::layer_overhead_us`].
    pub layer_overhead_us: Option<f64>,
    /// See [`Efficiency::prefill_layer_overhead_us`].
    pub prefill_layer_overhead_us: Option<f64>,
    /// See [`Efficiency::seq_layer_overhead_us`].
    pub seq_layer_overhead_us: Option<f64>,
    /// See [`Efficiency::allreduce_hop_latency_us`].
    pub allreduce_hop_latency_us: Option<f64>,
    /// See [`Efficiency::allreduce_bw_efficiency`].
    pub allreduce_bw_efficiency: Option<f64>,
    /// See [`Efficiency::memory_reserve`].
    pub memory_reserve: Option<f64>,
    /// See [`Efficiency::gpus_per_node`].
    pub gpus_per_node: Option<u32>,
    /// See [`Efficiency::internode_gbps`].
    pub internode_gbps: Option<f64>,
}

impl Efficiency {
    /// These factors with `o`'s set fields replacing them.
    pub fn with(mut self, o: &EfficiencyOverrides) -> Self {
        macro_rules! set {
            ($($f:ident),*) => {$(if let Some(v) = o.$f { self.$f = v; })*};
        }
        set!(
            gemm_mfu,
            gemm_mfu_large,
            large_batch_tokens,
            attention_mfu,
            bandwidth_efficiency,
            layer_overhead_us,
            prefill_layer_overhead_us,
            seq_layer_overhead_us,
            allreduce_hop_latency_us,
            allreduce_bw_efficiency,
            memory_reserve,
            gpus_per_node,
            internode_gbps
        );
        self
    }
}

#[derive(Deserialize)]
struct HardwareFile {
    devices: BTreeMap<String, Device>,
}

#[derive(Deserialize)]
struct ModelsFile {
    models: BTreeMap<String, Model>,
}

#[derive(Deserialize)]
struct CostFile {
    aliases: BTreeMap<String, String>,
    efficiency: BTreeMap<String, Efficiency>,
}

/// All specs: devices, models, efficiency factors and aliases.
#[derive(Debug, Clone)]
pub struct Specs {
    /// Devices by canonical name.
    pub devices: BTreeMap<String, Device>,
    /// Models by name.
    pub models: BTreeMap<String, Model>,
    /// Efficiency factors by device name, vendor or `default`.
    pub efficiency: BTreeMap<String, Efficiency>,
    /// Short hardware names.
    pub aliases: BTreeMap<String, String>,
}

fn parse<T: for<'de> Deserialize<'de>>(file: &'static str, text: &str) -> Result<T, SpecError> {
    toml::from_str(text).map_err(|e| SpecError::Parse {
        file,
        message: e.to_string(),
    })
}

impl Specs {
    /// The specs shipped with accellm (`data/specs/`, built into the binary).
    pub fn builtin() -> Result<Self, SpecError> {
        let hw: HardwareFile = parse("hardware.toml", HARDWARE_TOML)?;
        let models: ModelsFile = parse("models.toml", MODELS_TOML)?;
        let cost: CostFile = parse("cost-model.toml", COST_MODEL_TOML)?;
        Ok(Self {
            devices: hw.devices,
            models: models.models,
            efficiency: cost.efficiency,
            aliases: cost.aliases,
        })
    }

    /// The canonical name of device `name` (itself or through an alias).
    pub fn device_name(&self, name: &str) -> Result<String, SpecError> {
        let lower = name.trim().to_ascii_lowercase();
        if self.devices.contains_key(&lower) {
            return Ok(lower);
        }
        if let Some(c) = self.aliases.get(&lower) {
            return Ok(c.clone());
        }
        let mut valid: Vec<String> = self.devices.keys().cloned().collect();
        valid.extend(self.aliases.keys().map(|a| format!("{a} (alias)")));
        Err(SpecError::Unknown {
            kind: "hardware",
            name: name.to_string(),
            valid: valid.join(", "),
        })
    }

    /// Device `name` (or alias) with its canonical name.
    pub fn device(&self, name: &str) -> Result<(String, &Device), SpecError> {
        let c = self.device_name(name)?;
        let d = self.devices.get(&c).ok_or_else(|| SpecError::Unknown {
            kind: "hardware",
            name: name.to_string(),
            valid: self.devices.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        Ok((c, d))
    }

    /// Model `name`.
    pub fn model(&self, name: &str) -> Result<&Model, SpecError> {
        self.models
            .get(name.trim().to_ascii_lowercase().as_str())
            .ok_or_else(|| SpecError::Unknown {
                kind: "model",
                name: name.to_string(),
                valid: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Efficiency factors of device `canonical`: its own entry, else its vendor's, else `default`.
    pub fn efficiency(&self, canonical: &str) -> Efficiency {
        let vendor = self.devices.get(canonical).map(|d| d.vendor.as_str());
        self.efficiency
            .get(canonical)
            .or_else(|| vendor.and_then(|v| self.efficiency.get(v)))
            .or_else(|| self.efficiency.get("default"))
            .copied()
            .unwrap_or(Efficiency {
                gemm_mfu: 0.5,
                gemm_mfu_large: 0.5,
                large_batch_tokens: 4096,
                attention_mfu: 0.5,
                bandwidth_efficiency: 0.8,
                layer_overhead_us: 150.0,
                prefill_layer_overhead_us: 50.0,
                seq_layer_overhead_us: 3.5,
                allreduce_hop_latency_us: 6.0,
                allreduce_bw_efficiency: 0.2,
                memory_reserve: 0.1,
                gpus_per_node: 8,
                internode_gbps: 50.0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_specs_parse_and_cover_the_required_names() {
        let s = Specs::builtin().unwrap();
        for m in [
            "llama2-7b",
            "llama2-13b",
            "llama2-70b",
            "llama3-8b",
            "llama3-70b",
            "mistral-7b",
            "qwen2.5-7b",
            "smollm2-135m",
        ] {
            s.model(m).unwrap();
        }
        for (alias, canon) in [
            ("h100", "h100-sxm5-80gb"),
            ("h100-sxm5-80gb", "h100-sxm5-80gb"),
            ("a100", "a100-sxm4-80gb"),
            ("h200", "h200-sxm-141gb"),
            ("ascend-910b2", "ascend-910b2"),
        ] {
            assert_eq!(s.device_name(alias).unwrap(), canon);
        }
        assert!(s
            .device_name("tpu-v9")
            .unwrap_err()
            .to_string()
            .contains("h100"));
        assert!(s
            .model("gpt-5")
            .unwrap_err()
            .to_string()
            .contains("llama2-7b"));
        assert_eq!(s.efficiency("ascend-910b2").gemm_mfu, 0.35);
    }
}
