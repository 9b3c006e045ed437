//! What the scheduler thread tells observers: the iteration log (`GET /accellm/iterations`),
//! Prometheus gauges, and the core's KV events.

use accellm_core::{instance::PhaseConstraint, profile::Point};

use super::Executor;
use crate::metrics::Role;

/// The last iterations run, as `(shape, time from dispatch to the report being handled)`:
/// what `GET /accellm/iterations` serves and `accellm bench --calibrate-out` fits.
#[derive(Debug, Default)]
pub(crate) struct IterationLog {
    /// Iterations logged since the start (also those no longer kept).
    pub total: u64,
    /// The most recent ones, oldest first.
    pub points: std::collections::VecDeque<Point>,
    /// The same for iterations that also ran on the idle partner's cores (a profile's `[wide]`).
    pub wide_total: u64,
    /// The most recent of those, oldest first.
    pub wide_points: std::collections::VecDeque<Point>,
    /// Time the scheduler thread spent handling iteration reports (detokenising, stop checks,
    /// the core's decisions, preparing the next batch), in ms, summed since the start.
    pub scheduler_ms: f64,
}

impl IterationLog {
    /// Iterations kept.
    pub const CAPACITY: usize = 50_000;

    pub(super) fn push(&mut self, p: Point, wide: bool) {
        let (points, total) = if wide {
            (&mut self.wide_points, &mut self.wide_total)
        } else {
            (&mut self.points, &mut self.total)
        };
        if points.len() == Self::CAPACITY {
            points.pop_front();
        }
        points.push_back(p);
        *total += 1;
    }
}

impl Executor {
    pub(super) fn publish_metrics(&mut self) {
        let copied_r = self
            .link_counters
            .replica_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let copied_t = self
            .link_counters
            .transfer_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let linked = self.pairs_linked();
        let Ok(mut m) = self.metrics.lock() else {
            return;
        };
        m.pairs_linked = linked;
        let waiting = self.sched.waiting_requests() as u64;
        m.waiting = waiting;
        m.running = (self.sched.live_requests() as u64).saturating_sub(waiting);
        let (mut used, mut total) = (0u64, 0u64);
        for (k, inst) in self.sched.instances().iter().enumerate() {
            let kv = &inst.kv;
            // As a new request sees it: replicas it would evict are room (vLLM's meaning).
            used += kv.num_blocks().saturating_sub(kv.available_for_primary()) as u64;
            total += kv.num_blocks() as u64;
            if let Some(g) = m.instances.get_mut(k) {
                g.free_blocks = kv.free_blocks();
                g.primary_blocks = kv.primary_blocks();
                g.replica_blocks = kv.replica_blocks();
                g.total_blocks = kv.num_blocks();
                g.waiting = inst.waiting.len() as u32;
                g.running = inst.running.len() as u32;
                g.role = match inst.constraint {
                    PhaseConstraint::Any => Role::Mixed,
                    PhaseConstraint::PrefillOnly => Role::Prefill,
                    PhaseConstraint::DecodeOnly => Role::Decode,
                    PhaseConstraint::Idle => Role::Idle,
                };
            }
        }
        m.kv_usage = if total == 0 {
            0.0
        } else {
            used as f64 / total as f64
        };
        m.counters = *self.sched.counters();
        m.copied_replica_bytes = copied_r;
        m.copied_transfer_bytes = copied_t;
    }

    /// Sends the KV events of the last call into the core as one batch, with the token ids of
    /// the stored blocks (read from the requests' token streams, which the core's keys were
    /// computed from). Runs before the core's actions are carried out, while every request an
    /// event names is still live.
    pub(super) fn publish_kv_events(&mut self) {
        let Some(publisher) = &self.kv_events else {
            return;
        };
        self.sched.take_kv_events(&mut self.kv_scratch);
        if self.kv_scratch.is_empty() {
            return;
        }
        use crate::kv_events::WireEvent;
        use accellm_core::kv_events::CacheEvent;
        let bs = self.sched.block_size();
        let mut events = Vec::with_capacity(self.kv_scratch.len());
        for e in self.kv_scratch.drain(..) {
            events.push(match e {
                CacheEvent::Stored {
                    request,
                    first_block,
                    keys,
                    parent,
                } => {
                    let from = first_block as usize * bs as usize;
                    let to = from + keys.len() * bs as usize;
                    let tokens = self
                        .lives
                        .get(request.index())
                        .and_then(Option::as_ref)
                        .and_then(|l| l.tokens.get(from..to));
                    let Some(tokens) = tokens else {
                        tracing::warn!(
                            request = request.0,
                            "KV event for blocks whose tokens are gone; not published"
                        );
                        continue;
                    };
                    WireEvent::Stored {
                        hashes: keys,
                        parent,
                        token_ids: tokens.to_vec(),
                        block_size: bs,
                    }
                }
                CacheEvent::Removed { keys } => WireEvent::Removed { hashes: keys },
                CacheEvent::AllCleared => WireEvent::AllCleared,
            });
        }
        if !events.is_empty() {
            publisher.publish(crate::kv_events::Batch::now(events));
        }
    }
}
