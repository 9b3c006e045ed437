//! `least-load`: each new request goes to the instance with the least outstanding work (prompt
//! tokens still to prefill plus KV context of its decodes); every instance runs its instance
//! policy unconstrained. No knobs.

use super::{least_loaded, ClusterCtx, ClusterPolicy};
use crate::{request::RequestId, InstanceId};

/// Least-outstanding-work routing.
#[derive(Debug, Default)]
pub struct LeastLoad;

impl ClusterPolicy for LeastLoad {
    fn name(&self) -> &'static str {
        "least-load"
    }

    fn copies_kv(&self) -> bool {
        false
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, _id: RequestId) -> InstanceId {
        let n = ctx.instances().len() as u32;
        least_loaded(ctx, 0..n).unwrap_or(0)
    }
}
