//! `splitwise`: disaggregated prefill and decode pools, Patel et al., ISCA'24.
//!
//! The first `prefill_instances` instances only prefill; the others only decode. A new request
//! goes to the least-loaded prefill instance; when its prompt is done its KV moves to the
//! least-loaded decode instance, either streamed layer by layer while the prompt is computed
//! (`layerwise`, Splitwise's overlapped transfer) or in one transfer afterwards. A request whose
//! KV finds no room in the decode pool waits on its prefill instance and is retried.
//! Knobs: `prefill_instances` (default: half, at least one), `layerwise` (default on).

use serde::{Deserialize, Serialize};

use super::{least_loaded, ClusterCtx, ClusterPolicy, Migration};
use crate::{
    batch::{Entry, Work},
    instance::PhaseConstraint,
    request::{Phase, RequestId},
    InstanceId,
};

/// Knobs of `splitwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitwiseConfig {
    /// Instances in the prefill pool (the first ones); 0 means half of the cluster.
    pub prefill_instances: u32,
    /// Stream KV to the decode instance layer by layer during the prefill.
    pub layerwise: bool,
}

impl Default for SplitwiseConfig {
    fn default() -> Self {
        Self {
            prefill_instances: 0,
            layerwise: true,
        }
    }
}

/// The Splitwise-style policy.
#[derive(Debug)]
pub struct Splitwise {
    prefill: u32,
    total: u32,
    layerwise: bool,
    /// Decode instance chosen for each request (by slot), for layer-wise streaming.
    dest: Vec<InstanceId>,
    /// Prefilled requests that found no room in the decode pool yet.
    stranded: Vec<RequestId>,
}

const NONE: InstanceId = InstanceId::MAX;

impl Splitwise {
    /// For a cluster of `instances` instances.
    pub fn new(instances: u32, cfg: &SplitwiseConfig) -> Self {
        let prefill = match cfg.prefill_instances {
            0 => (instances / 2).max(1),
            p => p,
        }
        .min(instances.saturating_sub(1).max(1));
        Self {
            prefill,
            total: instances,
            layerwise: cfg.layerwise,
            dest: Vec::new(),
            stranded: Vec::new(),
        }
    }

    /// Whether `i` is in the prefill pool.
    pub fn is_prefill(&self, i: InstanceId) -> bool {
        i < self.prefill
    }

    fn decode_pool(&self) -> std::ops::Range<InstanceId> {
        self.prefill..self.total
    }

    fn send_to_decode(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) -> bool {
        let r = ctx.request(id);
        if r.phase != Phase::Decoding || r.in_flight || !self.is_prefill(r.instance) {
            return true;
        }
        let chosen = self.dest.get(id.index()).copied().unwrap_or(NONE);
        let first = if chosen != NONE && ctx.request(id).replica_on() == Some(chosen) {
            Some(chosen)
        } else {
            least_loaded(ctx, self.decode_pool())
        };
        let mut order: Vec<InstanceId> = first.into_iter().collect();
        let mut rest: Vec<InstanceId> = self.decode_pool().filter(|&i| Some(i) != first).collect();
        rest.sort_by_key(|&i| (ctx.load(i), i));
        order.extend(rest);
        for to in order {
            if let Ok(m) = ctx.migrate(id, to, false) {
                debug_assert!(matches!(
                    m,
                    Migration::Free | Migration::AwaitingCopy | Migration::Transfer
                ));
                return true;
            }
        }
        false
    }
}

impl ClusterPolicy for Splitwise {
    fn name(&self) -> &'static str {
        "splitwise"
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, _id: RequestId) -> InstanceId {
        least_loaded(ctx, 0..self.prefill).unwrap_or(0)
    }

    fn before_schedule(&mut self, _ctx: &mut ClusterCtx<'_>, i: InstanceId) -> PhaseConstraint {
        if self.is_prefill(i) {
            PhaseConstraint::PrefillOnly
        } else {
            PhaseConstraint::DecodeOnly
        }
    }

    fn copy_target(
        &mut self,
        ctx: &ClusterCtx<'_>,
        i: InstanceId,
        e: &Entry,
    ) -> Option<InstanceId> {
        if !self.layerwise || !self.is_prefill(i) {
            return None;
        }
        let Work::Prefill { start, .. } = e.work else {
            return None;
        };
        let slot = e.request.index();
        if self.dest.len() <= slot {
            self.dest.resize(slot + 1, NONE);
        }
        if start == 0 || self.dest[slot] == NONE {
            self.dest[slot] = least_loaded(ctx, self.decode_pool())?;
        }
        Some(self.dest[slot])
    }

    fn on_prefill_done(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) {
        if !self.send_to_decode(ctx, id) {
            self.stranded.push(id);
        }
    }

    fn on_iteration_done(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        if self.is_prefill(i) || self.stranded.is_empty() {
            return;
        }
        // A decode instance made progress (and maybe room): retry stranded requests in order.
        let stranded = std::mem::take(&mut self.stranded);
        for id in stranded {
            let alive = ctx.s.requests.try_get(id).is_some();
            if alive && !self.send_to_decode(ctx, id) {
                self.stranded.push(id);
            }
        }
    }
}
