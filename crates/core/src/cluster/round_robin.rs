//! `round-robin`: each new request goes to the next instance in turn; every instance runs its
//! instance policy unconstrained. No knobs.

use super::{ClusterCtx, ClusterPolicy};
use crate::{request::RequestId, InstanceId};

/// Round-robin routing.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: u32,
}

impl ClusterPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn copies_kv(&self) -> bool {
        false
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, _id: RequestId) -> InstanceId {
        let n = ctx.instances().len() as u32;
        let i = self.next % n.max(1);
        self.next = (i + 1) % n.max(1);
        i
    }
}
