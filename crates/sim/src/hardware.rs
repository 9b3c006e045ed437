//! The hardware cost model: a roofline per operator group over published device figures.
//!
//! One iteration on an instance of `tp` GPUs costs, per GPU, the sum of
//! - **linear layers**: `max(2·T·W/tp / (peak·mfu), 2·W/tp / (bw·eff))` for `T` tokens and `W`
//!   block parameters (FP16) — compute-bound for prefill, weight-streaming-bound for decode.
//!   Tokens beyond `large_batch_tokens` run at `gemm_mfu_large`;
//! - **LM head**, only for the rows that need logits: the same roofline over `vocab × hidden`;
//! - **attention**: `4·heads·head_dim·layers` FLOPs per query-key pair (prefill pairs and decode
//!   context) against the KV bytes read, prefill and decode each their own roofline;
//! - **tensor-parallel all-reduce**, two per layer: `2(tp-1)` ring steps of fixed latency plus
//!   `2(tp-1)/tp · T·hidden·2` bytes over the scale-up link;
//! - **fixed overheads** per layer, per layer with prefill, and per layer per sequence.
//!
//! The efficiency factors come from `data/specs/cost-model.toml` (fitted to Splitwise's
//! measurements, see docs/cost-model.md) and can be overridden.

use accellm_core::cost::{CostModel, IterationShape, Link};
use accellm_core::TimeUs;
use serde::{Deserialize, Serialize};

use crate::specs::{Device, Efficiency, Model, SpecError};

/// The roofline cost model of one model on one instance of `tp` devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareCostModel {
    layers: u32,
    kv_bytes_per_token: u64,
    // All coefficients in µs, precomputed so that a prediction is a handful of multiply-adds.
    gemm_us_per_token: f64,
    gemm_us_per_token_large: f64,
    large_batch_tokens: u32,
    weight_stream_us: f64,
    lm_us_per_row: f64,
    lm_stream_us: f64,
    attn_us_per_pair: f64,
    kv_us_per_token: f64,
    allreduce_fixed_us: f64,
    allreduce_us_per_token: f64,
    base_us: f64,
    prefill_us: f64,
    seq_us: f64,
    /// Per-layer linear-layer roofline, for operator-level validation.
    layer_gemm: (f64, f64, f64),
}

impl HardwareCostModel {
    /// Builds the model of `model` on `tp` devices of `device` with efficiency factors `eff`.
    pub fn new(
        model: &Model,
        device: &Device,
        device_name: &str,
        tp: u32,
        eff: &Efficiency,
    ) -> Result<Self, SpecError> {
        let peak = device.peak_flops().ok_or(SpecError::Missing {
            name: device_name.to_string(),
            field: "bf16_tflops",
        })?;
        let t = tp.max(1) as f64;
        let bw = device.hbm_bw_gbps * 1e9;
        let link = device.scale_up_bytes_per_s().unwrap_or(bw / 10.0);
        let mfu = eff.gemm_mfu.max(1e-6);
        let mfu_large = eff.gemm_mfu_large.max(1e-6);
        let attn_mfu = eff.attention_mfu.max(1e-6);
        let bwe = eff.bandwidth_efficiency.max(1e-6);
        let l = model.layers as f64;
        let w = model.params_non_embedding as f64;
        let h = model.hidden_size as f64;
        let lm = (model.vocab_size * model.hidden_size) as f64;
        let us = 1e6;
        let hops = 2.0 * (t - 1.0);
        Ok(Self {
            layers: model.layers,
            kv_bytes_per_token: model.kv_bytes_per_token_fp16,
            gemm_us_per_token: 2.0 * w / t / (peak * mfu) * us,
            gemm_us_per_token_large: 2.0 * w / t / (peak * mfu_large) * us,
            large_batch_tokens: eff.large_batch_tokens,
            weight_stream_us: 2.0 * w / t / (bw * bwe) * us,
            lm_us_per_row: 2.0 * lm / t / (peak * mfu) * us,
            lm_stream_us: 2.0 * lm / t / (bw * bwe) * us,
            attn_us_per_pair: 4.0 * (model.num_heads * model.head_dim) as f64 * l
                / t
                / (peak * attn_mfu)
                * us,
            kv_us_per_token: model.kv_bytes_per_token_fp16 as f64 / t / (bw * bwe) * us,
            allreduce_fixed_us: 2.0 * l * hops * eff.allreduce_hop_latency_us,
            allreduce_us_per_token: if tp > 1 {
                2.0 * l * (hops / t) * h * 2.0 / (link * eff.allreduce_bw_efficiency.max(1e-6)) * us
            } else {
                0.0
            },
            base_us: l * eff.layer_overhead_us,
            prefill_us: l * eff.prefill_layer_overhead_us,
            seq_us: l * eff.seq_layer_overhead_us,
            layer_gemm: (
                2.0 * w / l / t / (peak * mfu) * us,
                2.0 * w / l / t / (peak * mfu_large) * us,
                2.0 * w / l / t / (bw * bwe) * us,
            ),
        })
    }

    /// Predicted time of one layer's linear layers (QKV, O, MLP) for `tokens` tokens, in µs
    /// (no overheads): the operator group Vidur profiles.
    pub fn layer_gemm_us(&self, tokens: u32) -> f64 {
        let (small, large, stream) = self.layer_gemm;
        let t1 = tokens.min(self.large_batch_tokens) as f64;
        let t2 = tokens.saturating_sub(self.large_batch_tokens) as f64;
        (t1 * small + t2 * large).max(stream)
    }

    /// Predicted iteration time in µs, unrounded.
    #[inline]
    pub fn iteration_us_f64(&self, s: &IterationShape) -> f64 {
        let tokens = s.tokens();
        if tokens == 0 {
            return 0.0;
        }
        let t1 = tokens.min(self.large_batch_tokens) as f64;
        let t2 = tokens.saturating_sub(self.large_batch_tokens) as f64;
        let gemm = (t1 * self.gemm_us_per_token + t2 * self.gemm_us_per_token_large)
            .max(self.weight_stream_us);
        let lm = if s.logit_rows > 0 {
            (s.logit_rows as f64 * self.lm_us_per_row).max(self.lm_stream_us)
        } else {
            0.0
        };
        let attn_prefill = if s.prefill_attn_pairs > 0 {
            (to_f64(s.prefill_attn_pairs) * self.attn_us_per_pair)
                .max(to_f64(s.prefill_kv_tokens) * self.kv_us_per_token)
        } else {
            0.0
        };
        let attn_decode = if s.decode_kv_tokens > 0 {
            let kv = to_f64(s.decode_kv_tokens);
            (kv * self.attn_us_per_pair).max(kv * self.kv_us_per_token)
        } else {
            0.0
        };
        let allreduce = if self.allreduce_us_per_token > 0.0 {
            self.allreduce_fixed_us + tokens as f64 * self.allreduce_us_per_token
        } else {
            0.0
        };
        let overhead = self.base_us
            + if s.prefill_seqs > 0 {
                self.prefill_us
            } else {
                0.0
            }
            + self.seq_us * (s.prefill_seqs + s.decode_seqs) as f64;
        overhead + gemm + lm + attn_prefill + attn_decode + allreduce
    }
}

/// `x as f64`; the signed conversion is one instruction, the unsigned one several.
#[inline]
fn to_f64(x: u64) -> f64 {
    match i64::try_from(x) {
        Ok(i) => i as f64,
        Err(_) => x as f64,
    }
}

impl CostModel for HardwareCostModel {
    fn iteration_us(&self, s: &IterationShape) -> TimeUs {
        if s.is_empty() {
            return 0;
        }
        let us = (self.iteration_us_f64(s) + 0.5).max(1.0);
        // The same as `us as TimeUs`; the signed conversion is one instruction.
        if us < i64::MAX as f64 {
            us as i64 as TimeUs
        } else {
            us as TimeUs
        }
    }

    fn num_layers(&self) -> u32 {
        self.layers
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token
    }
}

/// What connects two instances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LinkKind {
    /// NVLink / HCCS when every instance fits in one server, the network otherwise.
    Auto,
    /// Scale-up link inside one server (NVLink, HCCS peer).
    Nvlink,
    /// PCIe.
    Pcie,
    /// The network between servers (`internode_gbps` per GPU).
    InterNode,
    /// Explicit figures for the whole instance.
    Custom {
        /// GB/s per direction.
        gbps: f64,
        /// Fixed latency per transfer (µs).
        latency_us: f64,
    },
}

impl std::str::FromStr for LinkKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "nvlink" | "hccs" => Ok(Self::Nvlink),
            "pcie" => Ok(Self::Pcie),
            "inter-node" | "internode" | "network" | "ib" => Ok(Self::InterNode),
            other => {
                let gbps = other
                    .strip_suffix("gbps")
                    .or_else(|| other.strip_suffix("GBps"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| *v > 0.0);
                gbps.map(|gbps| Self::Custom {
                    gbps,
                    latency_us: 10.0,
                })
                .ok_or_else(|| {
                    format!(
                        "unknown link `{other}`; valid: auto, nvlink, pcie, inter-node, or NUMgbps \
                         (GB/s per direction)"
                    )
                })
            }
        }
    }
}

/// The link between two instances of `tp` devices each: every GPU of an instance moves its
/// own KV shard, so the bandwidth of one GPU's link is multiplied by `tp`.
pub fn instance_link(
    kind: LinkKind,
    device: &Device,
    eff: &Efficiency,
    tp: u32,
    instances: u32,
) -> Link {
    let t = tp.max(1) as f64;
    let efficiency = 0.8;
    let kind = match kind {
        LinkKind::Auto if tp * instances <= eff.gpus_per_node => LinkKind::Nvlink,
        LinkKind::Auto => LinkKind::InterNode,
        k => k,
    };
    let (per_gpu, latency_us) = match kind {
        LinkKind::Nvlink => (
            device
                .peer_bytes_per_s()
                .unwrap_or(eff.internode_gbps * 1e9),
            5.0,
        ),
        LinkKind::Pcie => (device.pcie_bidir_gbps.unwrap_or(64.0) * 1e9 / 2.0, 10.0),
        LinkKind::InterNode | LinkKind::Auto => (eff.internode_gbps * 1e9, 20.0),
        LinkKind::Custom { gbps, latency_us } => {
            return Link {
                bytes_per_s: gbps * 1e9,
                latency_us,
            }
        }
    };
    Link {
        bytes_per_s: per_gpu * t * efficiency,
        latency_us,
    }
}

/// KV blocks of one instance: memory of `tp` devices less the reserve, less the weights.
pub fn kv_blocks(
    model: &Model,
    device: &Device,
    eff: &Efficiency,
    tp: u32,
    block_size: u32,
) -> u32 {
    accellm_core::kv::capacity_blocks(
        device.memory_bytes() * tp.max(1) as u64,
        model.weights_bytes_fp16,
        eff.memory_reserve,
        model.kv_bytes_per_token_fp16,
        block_size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specs::Specs;

    fn model(name: &str, hw: &str, tp: u32) -> HardwareCostModel {
        let s = Specs::builtin().unwrap();
        let (canon, d) = s.device(hw).unwrap();
        HardwareCostModel::new(s.model(name).unwrap(), d, &canon, tp, &s.efficiency(&canon))
            .unwrap()
    }

    #[test]
    fn prefill_grows_with_tokens_and_tp_helps() {
        let m8 = model("llama2-70b", "h100", 8);
        let m2 = model("llama2-70b", "h100", 2);
        let mut small = IterationShape::default();
        small.add_prefill(0, 512, true);
        let mut big = IterationShape::default();
        big.add_prefill(0, 4096, true);
        assert!(m8.iteration_us(&big) > 3 * m8.iteration_us(&small));
        assert!(m2.iteration_us(&big) > m8.iteration_us(&big));
    }

    #[test]
    fn decode_is_weight_bound_and_nearly_flat_in_batch() {
        let m = model("llama2-7b", "h100", 1);
        let mut one = IterationShape::default();
        one.add_decode(100);
        let mut eight = IterationShape::default();
        for _ in 0..8 {
            eight.add_decode(100);
        }
        let (a, b) = (m.iteration_us(&one), m.iteration_us(&eight));
        assert!(b > a && b < a * 2, "{a} {b}");
        // No all-reduce at TP 1.
        assert_eq!(m.allreduce_us_per_token, 0.0);
    }

    #[test]
    fn kv_capacity_is_memory_minus_weights() {
        let s = Specs::builtin().unwrap();
        let (c, d) = s.device("h100").unwrap();
        let e = s.efficiency(&c);
        let m = s.model("llama2-70b").unwrap();
        assert_eq!(kv_blocks(m, d, &e, 1, 16), 0);
        let b8 = kv_blocks(m, d, &e, 8, 16);
        let expect: f64 = (8.0 * 85899345920.0 * 0.9 - 137953296384.0) / (327680.0 * 16.0);
        assert_eq!(b8, expect.floor() as u32);
    }

    #[test]
    fn links_scale_with_tp_and_parse() {
        let s = Specs::builtin().unwrap();
        let (c, d) = s.device("h100").unwrap();
        let e = s.efficiency(&c);
        let nv = instance_link(LinkKind::Auto, d, &e, 2, 2);
        let net = instance_link(LinkKind::Auto, d, &e, 8, 2);
        assert_eq!(nv.bytes_per_s, 450e9 * 2.0 * 0.8);
        assert_eq!(net.bytes_per_s, 50e9 * 8.0 * 0.8);
        assert!("pcie".parse::<LinkKind>().is_ok());
        assert_eq!(
            "25gbps".parse::<LinkKind>().unwrap(),
            LinkKind::Custom {
                gbps: 25.0,
                latency_us: 10.0
            }
        );
        assert!("carrier-pigeon".parse::<LinkKind>().is_err());
    }
}
