//! `least-load`: each new request goes to the instance with the least outstanding work (prompt
//! tokens still to prefill plus KV context of its decodes), less the prompt tokens it has cached
//! times [`LeastLoadConfig::prefix_weight`] (cache-aware routing, as SGLang's router and
//! llm-d's prefix scorer do); every instance runs its instance policy unconstrained.

use serde::{Deserialize, Serialize};

use super::{prefix_score, ClusterCtx, ClusterPolicy};
use crate::{request::RequestId, InstanceId};

/// Knobs of `least-load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeastLoadConfig {
    /// Cache-aware routing: how many tokens of load one prompt token found in an instance's
    /// prefix cache is worth. 0: load only. Default 4: on 16 simulated instances it raised the
    /// hit rate on multi-turn chat from 9% to 59% with more goodput (docs/prefix-cache.md).
    pub prefix_weight: f64,
}

impl Default for LeastLoadConfig {
    fn default() -> Self {
        Self { prefix_weight: 4.0 }
    }
}

/// Least-outstanding-work routing.
#[derive(Debug)]
pub struct LeastLoad {
    /// Tokens of load one cached prompt token is worth (0: load only).
    prefix_weight: f64,
}

impl LeastLoad {
    /// With the knobs in `cfg`.
    pub fn new(cfg: &LeastLoadConfig) -> Self {
        Self {
            prefix_weight: cfg.prefix_weight,
        }
    }
}

impl ClusterPolicy for LeastLoad {
    fn name(&self) -> &'static str {
        "least-load"
    }

    fn copies_kv(&self) -> bool {
        false
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) -> InstanceId {
        let n = ctx.instances().len() as u32;
        (0..n)
            .min_by_key(|&i| {
                let hit = ctx.cached_prefix_tokens(i, id);
                (prefix_score(ctx.load(i), hit, self.prefix_weight), i)
            })
            .unwrap_or(0)
    }
}
