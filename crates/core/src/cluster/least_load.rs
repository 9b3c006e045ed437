//! `least-load`: each new request goes to the instance with the least outstanding work (prompt
//! tokens still to prefill plus KV context of its decodes), less the prompt tokens it has cached
//! times [`super::ClusterConfig::prefix_weight`] (cache-aware routing, as SGLang's router and
//! llm-d's prefix scorer do); every instance runs its instance policy unconstrained.

use super::{prefix_score, ClusterCtx, ClusterPolicy};
use crate::{request::RequestId, InstanceId};

/// Least-outstanding-work routing.
#[derive(Debug, Default)]
pub struct LeastLoad {
    /// Tokens of load one cached prompt token is worth (0: load only).
    pub prefix_weight: f64,
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
