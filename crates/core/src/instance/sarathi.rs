//! `sarathi`: Sarathi-Serve's stall-free chunked prefill, Agrawal et al., OSDI'24.
//!
//! Every iteration first schedules one decode step for each running request, then fills the rest
//! of a fixed token budget (`chunk_size`) with prefill chunks of waiting prompts, first come first
//! served, so a long prompt is split across iterations and never stalls the decodes. When KV runs
//! out during decode, the latest-queued running request is preempted and later recomputed.
//! Knobs: `chunk_size`, `max_num_seqs`.

use serde::{Deserialize, Serialize};

use super::{decode_all_or_preempt, InstancePolicy, ScheduleCtx};
use crate::request::RequestId;

/// Knobs of `sarathi`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SarathiConfig {
    /// Most requests in one iteration.
    pub max_num_seqs: u32,
    /// Token budget of each iteration.
    pub chunk_size: u32,
}

impl Default for SarathiConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            chunk_size: 512,
        }
    }
}

/// The Sarathi-style policy.
#[derive(Debug)]
pub struct Sarathi {
    budget: u32,
    max_seqs: u32,
    scratch: Vec<RequestId>,
}

impl Sarathi {
    /// With the knobs in `cfg`.
    pub fn new(cfg: &SarathiConfig) -> Self {
        Self {
            budget: cfg.chunk_size.max(1),
            max_seqs: cfg.max_num_seqs,
            scratch: Vec::new(),
        }
    }
}

impl InstancePolicy for Sarathi {
    fn name(&self) -> &'static str {
        "sarathi"
    }

    fn schedule(&mut self, ctx: &mut ScheduleCtx<'_>) {
        if ctx.constraint().allows_decode() {
            decode_all_or_preempt(ctx, self.max_seqs.min(self.budget), &mut self.scratch);
        }
        if !ctx.constraint().allows_prefill() {
            return;
        }
        let mut i = 0;
        while i < ctx.waiting().len() {
            let left = self.budget.saturating_sub(ctx.batch().shape.tokens());
            if left == 0 || ctx.batch().entries.len() as u32 >= self.max_seqs {
                break;
            }
            let id = ctx.waiting()[i];
            if ctx.is_scheduled(id) {
                i += 1;
                continue;
            }
            match ctx.add_prefill(id, left) {
                Ok(_) => i += 1,
                Err(_) => break,
            }
        }
    }
}
