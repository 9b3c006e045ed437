//! Cost models: predicted iteration, per-layer and KV-transfer times.
//!
//! The simulator plugs in hardware roofline models; the engine plugs in a model calibrated on the
//! machine it runs on ([`LinearCostModel`]). Policies that size batches from predictions
//! (AccelGen) use the same trait.

use serde::{Deserialize, Serialize};

use crate::TimeUs;

/// The shape of one iteration, aggregated so that policies can grow it token by token and ask for
/// a prediction cheaply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationShape {
    /// Prompt tokens processed (sum of all prefill chunk lengths).
    pub prefill_tokens: u32,
    /// Number of prefill chunks.
    pub prefill_seqs: u32,
    /// Decoding requests (one token each).
    pub decode_seqs: u32,
    /// Attention query-key pairs of the prefill chunks: Σ len·(offset + (len+1)/2).
    pub prefill_attn_pairs: u64,
    /// KV tokens read by the prefill chunks' attention: Σ (offset + len).
    pub prefill_kv_tokens: u64,
    /// KV tokens read by the decodes' attention: Σ context (including the new token).
    pub decode_kv_tokens: u64,
    /// Rows that need logits (last chunk of a prompt, every decode).
    pub logit_rows: u32,
}

impl IterationShape {
    /// Adds a prefill chunk of `len` tokens starting after `offset` cached tokens; `last` when it
    /// completes the prompt (and so needs logits).
    pub fn add_prefill(&mut self, offset: u32, len: u32, last: bool) {
        let (o, l) = (offset as u64, len as u64);
        self.prefill_tokens += len;
        self.prefill_seqs += 1;
        self.prefill_attn_pairs += l * o + l * (l + 1) / 2;
        self.prefill_kv_tokens += o + l;
        self.logit_rows += last as u32;
    }

    /// Adds one decoding request whose attention spans `context` tokens (the new one included).
    pub fn add_decode(&mut self, context: u32) {
        self.decode_seqs += 1;
        self.decode_kv_tokens += context as u64;
        self.logit_rows += 1;
    }

    /// Adds everything in `other` (two parts of one iteration).
    pub fn add(&mut self, other: &IterationShape) {
        self.prefill_tokens += other.prefill_tokens;
        self.prefill_seqs += other.prefill_seqs;
        self.decode_seqs += other.decode_seqs;
        self.prefill_attn_pairs += other.prefill_attn_pairs;
        self.prefill_kv_tokens += other.prefill_kv_tokens;
        self.decode_kv_tokens += other.decode_kv_tokens;
        self.logit_rows += other.logit_rows;
    }

    /// Tokens in the iteration's activation matrix.
    pub fn tokens(&self) -> u32 {
        self.prefill_tokens + self.decode_seqs
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.tokens() == 0
    }
}

/// A point-to-point link between two instances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Usable bandwidth in bytes per second (one direction).
    pub bytes_per_s: f64,
    /// Fixed latency per transfer, in microseconds.
    pub latency_us: f64,
}

impl Link {
    /// Time to move `bytes` over the link.
    pub fn transfer_us(&self, bytes: u64) -> TimeUs {
        if bytes == 0 {
            return 0;
        }
        (self.latency_us + bytes as f64 / self.bytes_per_s * 1e6).ceil() as TimeUs
    }
}

/// Predicts how long an iteration takes on one instance.
pub trait CostModel: Send + Sync {
    /// Predicted wall time of one iteration of this shape, in microseconds.
    fn iteration_us(&self, shape: &IterationShape) -> TimeUs;

    /// Transformer layers (for layer-wise KV streaming).
    fn num_layers(&self) -> u32;

    /// Bytes of KV per token on one instance (all layers, K and V).
    fn kv_bytes_per_token(&self) -> u64;

    /// Predicted time of one layer of this iteration. By default an even share of the iteration.
    fn layer_us(&self, shape: &IterationShape) -> TimeUs {
        self.iteration_us(shape) / self.num_layers().max(1) as TimeUs
    }

    /// Predicted wall time of the iteration on `width` times the instance's own cores (2: with
    /// its idle partner's, see [`crate::SchedulerConfig::share_idle_cores`]). By default the
    /// width is ignored: hardware whose instances cannot lend each other cores.
    fn iteration_us_on(&self, shape: &IterationShape, width: u32) -> TimeUs {
        let _ = width;
        self.iteration_us(shape)
    }
}

/// A cost model seen through an iteration that runs on `width` times the instance's cores: what
/// a policy sizing that iteration must be given.
pub struct OnWidth<'a> {
    /// The instance's cost model.
    pub inner: &'a dyn CostModel,
    /// Width of the iteration (1: own cores).
    pub width: u32,
}

impl CostModel for OnWidth<'_> {
    fn iteration_us(&self, shape: &IterationShape) -> TimeUs {
        self.inner.iteration_us_on(shape, self.width)
    }

    fn num_layers(&self) -> u32 {
        self.inner.num_layers()
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.inner.kv_bytes_per_token()
    }

    fn iteration_us_on(&self, shape: &IterationShape, width: u32) -> TimeUs {
        self.inner.iteration_us_on(shape, width)
    }
}

/// When a copy streamed layer by layer during an iteration completes.
///
/// Each of `layers` layers takes `layer_us` to compute; as soon as a layer is computed its KV
/// (`layer_copy_us` over the link) is sent, one layer at a time. Returns the time after `start`
/// at which the last layer has arrived.
pub fn layerwise_copy_end(layers: u32, layer_us: TimeUs, layer_copy_us: TimeUs) -> TimeUs {
    if layers == 0 {
        return 0;
    }
    // Pipeline of two stages: the first layer computes, then the slower stage sets the pace.
    layer_us + layer_us.max(layer_copy_us) * (layers as TimeUs - 1) + layer_copy_us
}

/// A change of the per-token cost from a token count on: an iteration of `t` tokens pays
/// `delta_us · max(0, t − tokens)` on top of [`LinearCostModel::per_token_us`]`·t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenKnot {
    /// Token count from which the slope changes.
    pub tokens: u32,
    /// Change of the cost per token past `tokens` (µs; negative when larger batches are cheaper
    /// per token).
    pub delta_us: f64,
}

/// A cost model linear in the iteration shape, the form measured for the CPU engine:
/// `us = base + cost(tokens) + per_kv_token·(kv tokens read) + per_logit_row·rows`, where
/// `cost(tokens)` is `per_token·tokens` bent at the [`TokenKnot`]s: the engine's matmul
/// kernels change with the number of activation rows (the `blocks` format runs a per-row kernel
/// below 32 rows and a dequantized dense matmul above), so a small prefill chunk costs more per
/// token than a large one. Without knots the model is a straight line in tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearCostModel {
    /// Fixed cost per iteration (µs).
    pub base_us: f64,
    /// Cost per token in the iteration up to the first knot (µs).
    pub per_token_us: f64,
    /// Cost per KV token read by attention (µs).
    pub per_kv_token_us: f64,
    /// Cost per row that needs logits (µs).
    pub per_logit_row_us: f64,
    /// Where the cost per token changes, ascending token counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knots: Vec<TokenKnot>,
    /// Layers of the model.
    pub layers: u32,
    /// KV bytes per token.
    pub kv_bytes_per_token: u64,
    /// The same iterations on the instance's cores and its partner's (width 2), where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<Box<LinearCostModel>>,
}

impl LinearCostModel {
    /// Predicted cost of the token term alone for `tokens` tokens (µs).
    pub fn token_us(&self, tokens: u32) -> f64 {
        self.per_token_us * tokens as f64
            + self
                .knots
                .iter()
                .map(|k| k.delta_us * tokens.saturating_sub(k.tokens) as f64)
                .sum::<f64>()
    }
}

impl CostModel for LinearCostModel {
    fn iteration_us(&self, s: &IterationShape) -> TimeUs {
        if s.is_empty() {
            return 0;
        }
        let kv = (s.prefill_attn_pairs + s.decode_kv_tokens) as f64;
        let us = self.base_us
            + self.token_us(s.tokens())
            + self.per_kv_token_us * kv
            + self.per_logit_row_us * s.logit_rows as f64;
        us.max(1.0).round() as TimeUs
    }

    fn num_layers(&self) -> u32 {
        self.layers
    }

    fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token
    }

    fn iteration_us_on(&self, shape: &IterationShape, width: u32) -> TimeUs {
        match &self.wide {
            Some(wide) if width >= 2 => wide.iteration_us(shape),
            _ => self.iteration_us(shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_accumulates_prefill_and_decode() {
        let mut s = IterationShape::default();
        s.add_prefill(0, 4, false);
        s.add_prefill(10, 2, true);
        s.add_decode(7);
        assert_eq!(s.tokens(), 7);
        assert_eq!(s.prefill_attn_pairs, 10 + (20 + 3));
        assert_eq!(s.prefill_kv_tokens, 4 + 12);
        assert_eq!(s.decode_kv_tokens, 7);
        assert_eq!(s.logit_rows, 2);
    }

    #[test]
    fn layerwise_copy_is_bounded_by_the_slower_stage() {
        // Compute-bound: the copy ends one layer-copy after the compute.
        assert_eq!(layerwise_copy_end(4, 10, 2), 10 * 4 + 2);
        // Link-bound: the copy paces the pipeline.
        assert_eq!(layerwise_copy_end(4, 2, 10), 2 + 10 * 4);
        assert_eq!(layerwise_copy_end(0, 5, 5), 0);
    }

    #[test]
    fn knots_bend_the_token_cost() {
        let mut m = LinearCostModel {
            base_us: 100.0,
            per_token_us: 10.0,
            per_kv_token_us: 0.0,
            per_logit_row_us: 0.0,
            knots: Vec::new(),
            layers: 1,
            kv_bytes_per_token: 1,
            wide: None,
        };
        let shape = |t: u32| {
            let mut s = IterationShape::default();
            s.add_prefill(0, t, false);
            s
        };
        assert_eq!(m.iteration_us(&shape(40)), 500);
        m.knots = vec![TokenKnot {
            tokens: 32,
            delta_us: -4.0,
        }];
        // 32 tokens at 10 µs, then 8 at 6 µs.
        assert_eq!(m.iteration_us(&shape(32)), 420);
        assert_eq!(m.iteration_us(&shape(40)), 100 + 320 + 48);
    }

    #[test]
    fn link_time_includes_latency() {
        let link = Link {
            bytes_per_s: 1e9,
            latency_us: 5.0,
        };
        assert_eq!(link.transfer_us(1_000_000), 1005);
        assert_eq!(link.transfer_us(0), 0);
    }
}
