//! `vllm`: the vLLM (v0) scheduler, Kwon et al., SOSP'23.
//!
//! Continuous batching that prioritises prefill: when prompts wait, an iteration prefills as many
//! whole prompts as fit in `max_num_batched_tokens`, `max_num_seqs` and free KV blocks, and the
//! running decodes pause; otherwise every running request decodes one token. When KV runs out
//! during decode, the latest-queued running request is preempted and later recomputed.
//! Knobs: `max_num_batched_tokens`, `max_num_seqs`.

use serde::{Deserialize, Serialize};

use super::{decode_all_or_preempt, InstancePolicy, ScheduleCtx};
use crate::request::RequestId;

/// Knobs of `vllm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VllmConfig {
    /// Most requests in one iteration.
    pub max_num_seqs: u32,
    /// Most tokens in one iteration.
    pub max_num_batched_tokens: u32,
}

impl Default for VllmConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 4096,
        }
    }
}

/// The vLLM-style policy.
#[derive(Debug)]
pub struct Vllm {
    max_tokens: u32,
    max_seqs: u32,
    scratch: Vec<RequestId>,
}

impl Vllm {
    /// With the knobs in `cfg`.
    pub fn new(cfg: &VllmConfig) -> Self {
        Self {
            max_tokens: cfg.max_num_batched_tokens,
            max_seqs: cfg.max_num_seqs,
            scratch: Vec::new(),
        }
    }
}

impl InstancePolicy for Vllm {
    fn name(&self) -> &'static str {
        "vllm"
    }

    fn schedule(&mut self, ctx: &mut ScheduleCtx<'_>) {
        if ctx.constraint().allows_prefill() {
            let running = ctx.running().len() as u32;
            let mut tokens = 0u32;
            let mut i = 0;
            while i < ctx.waiting().len() {
                let id = ctx.waiting()[i];
                let need = ctx.request(id).remaining_prefill();
                let seqs = ctx.batch().entries.len() as u32;
                // A prompt longer than the budget still runs alone rather than never.
                if (tokens + need > self.max_tokens && seqs > 0) || running + seqs >= self.max_seqs
                {
                    break;
                }
                if ctx.is_scheduled(id) || ctx.add_prefill(id, need).is_err() {
                    break;
                }
                tokens += need;
                i += 1;
            }
            if !ctx.batch().is_empty() {
                return;
            }
        }
        if ctx.constraint().allows_decode() {
            decode_all_or_preempt(ctx, self.max_seqs, &mut self.scratch);
        }
    }
}
