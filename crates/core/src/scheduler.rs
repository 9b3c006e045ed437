//! The scheduling state machine: events and the current time in, actions out.
//!
//! The executor (simulator or server) calls [`Scheduler::submit`], [`Scheduler::iteration_done`],
//! [`Scheduler::copy_done`], [`Scheduler::transfer_done`] and [`Scheduler::cancel`] with the
//! current time, then drains [`Scheduler::take_actions`] and carries the actions out: run the
//! batch now in `instance.batch` on that instance, move KV blocks, report a finished request.

mod build;
mod failure;

pub use failure::Recovery;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    batch::{BatchKind, Work},
    cluster::{CatchUp, ClusterCtx, ClusterPolicy, Migration},
    cost::{CostModel, Link, OnWidth},
    instance::{Instance, InstancePolicy, PhaseConstraint, ScheduleCtx},
    kv::{BlockKey, BlockKeys, BlockManager, Ownership},
    metrics::Metrics,
    plan::{BlockSpan, RunPlan},
    request::{FinishReason, Phase, RejectReason, RequestId, RequestSpec, RequestState},
    InstanceId, TimeUs,
};

/// What the executor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run this iteration now (everything needed is in the plan). When it ends, call
    /// [`Scheduler::iteration_done`]; if it has copies, report them with
    /// [`Scheduler::copy_done`] once they land.
    Run(Arc<RunPlan>),
    /// Copy `tokens` tokens of `request`'s KV (positions `from_token..from_token+tokens`) from
    /// instance `from` to instance `to` (block by block: `spans`, when plans carry block ids),
    /// then call [`Scheduler::transfer_done`] with `id`.
    Transfer {
        /// Transfer handle.
        id: u32,
        /// Whose KV.
        request: RequestId,
        /// Source instance.
        from: InstanceId,
        /// Destination instance.
        to: InstanceId,
        /// First token position to copy.
        from_token: u32,
        /// Tokens to copy.
        tokens: u32,
        /// The blocks ([`Scheduler::set_block_plans`]; empty otherwise).
        spans: Vec<BlockSpan>,
    },
    /// The request ended; its KV blocks are already free in the core.
    Finished {
        /// Which.
        request: RequestId,
        /// Why.
        reason: FinishReason,
    },
    /// The request was refused at submission.
    Rejected {
        /// Which.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
}

/// Live requests, in reusable slots.
#[derive(Debug, Default)]
pub struct Requests {
    slots: Vec<Option<RequestState>>,
    free: Vec<u32>,
    next_serial: u64,
}

impl Requests {
    /// The live request `id`. Panics if it is not live: ids come from the core itself.
    pub fn get(&self, id: RequestId) -> &RequestState {
        self.slots[id.index()]
            .as_ref()
            .expect("request id refers to a live request")
    }

    /// Mutable access to the live request `id`.
    pub fn get_mut(&mut self, id: RequestId) -> &mut RequestState {
        self.slots[id.index()]
            .as_mut()
            .expect("request id refers to a live request")
    }

    /// The request `id`, if live.
    pub fn try_get(&self, id: RequestId) -> Option<&RequestState> {
        self.slots.get(id.index()).and_then(Option::as_ref)
    }

    /// `id`'s state, mutable, if it is live.
    pub(crate) fn try_get_mut(&mut self, id: RequestId) -> Option<&mut RequestState> {
        self.slots.get_mut(id.index()).and_then(Option::as_mut)
    }

    /// Live requests.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no request is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block manager evicted the replicas of `victims` to make room: they forget them.
    pub(crate) fn replicas_evicted(&mut self, victims: &[RequestId]) {
        for &v in victims {
            self.get_mut(v).forget_replica();
        }
    }

    fn insert(&mut self, mut state: RequestState) -> RequestId {
        state.serial = self.next_serial;
        self.next_serial += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(state);
                RequestId(i)
            }
            None => {
                self.slots.push(Some(state));
                RequestId(self.slots.len() as u32 - 1)
            }
        }
    }

    fn remove(&mut self, id: RequestId) -> Option<RequestState> {
        let s = self.slots.get_mut(id.index())?.take()?;
        self.free.push(id.0);
        Some(s)
    }
}

/// Layer-wise copy issued with an iteration, waiting for [`Scheduler::copy_done`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingCopy {
    pub iteration: u64,
    pub request: RequestId,
    pub serial: u64,
    pub to: InstanceId,
    pub tokens: u32,
}

/// An explicit KV transfer in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub request: RequestId,
    pub to: InstanceId,
    pub keep_source: bool,
}

/// Cluster-wide counters beyond per-request metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterCounters {
    /// Bytes moved by explicit transfers (migrations without a current replica, disaggregation).
    pub transfer_bytes: u64,
    /// Bytes streamed layer-wise alongside iterations (replicas, overlapped disaggregation).
    pub copy_bytes: u64,
    /// Migrations served by a current replica (no bulk transfer).
    pub migrations_free: u64,
    /// Migrations that needed a transfer.
    pub migrations_transfer: u64,
    /// Migrations onto a replica that lacked the latest tokens, which the destination recomputes
    /// (a recompute chunk) instead of receiving them.
    pub migrations_recompute: u64,
    /// Tokens whose KV was recomputed after such migrations.
    pub recompute_tokens: u64,
    /// Replicas evicted to make room for primaries.
    pub replica_evictions: u64,
    /// Requests preempted (KV dropped for recompute).
    pub preemptions: u64,
    /// Role switches reported by the cluster policy.
    pub role_switches: u64,
    /// Requests rejected at submission.
    pub rejected: u64,
    /// Prompt tokens looked up in the prefix cache when their prefill started (vLLM's
    /// `prefix_cache_queries`).
    #[serde(default)]
    pub prefix_query_tokens: u64,
    /// Of those, tokens found cached, whose prefill was skipped (vLLM's `prefix_cache_hits`).
    #[serde(default)]
    pub prefix_hit_tokens: u64,
    /// Requests on a failed instance that went on from their partner's current replica.
    #[serde(default)]
    pub recovered_by_replica: u64,
    /// Requests on a failed instance that were prefilled again elsewhere.
    #[serde(default)]
    pub recovered_by_recompute: u64,
}

/// Configuration of the scheduler that is not a policy knob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// KV blocks per instance.
    pub kv_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Link between any two instances (pairs, pools).
    pub link: Link,
    /// Most requests waiting in the whole cluster before new ones are rejected (0: unbounded).
    pub max_waiting: usize,
    /// Keep every request's token times (tests, small runs); off for large simulations.
    pub record_timelines: bool,
    /// Reuse cached KV blocks of equal prompt prefixes (requests submitted with block keys).
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache: bool,
    /// Instances `2k` and `2k + 1` run on cores of one machine and lend each other those cores:
    /// an instance whose partner has nothing to run (and is not itself borrowing) runs its next
    /// iteration on both instances' cores, priced by [`CostModel::iteration_us_on`] at width 2;
    /// the partner starts its own next iteration once that one ends.
    #[serde(default)]
    pub share_idle_cores: bool,
}

fn default_prefix_cache() -> bool {
    true
}

/// State shared by the scheduler and the policies it calls.
pub struct State {
    pub(crate) now: TimeUs,
    pub(crate) instances: Vec<Instance>,
    pub(crate) requests: Requests,
    pub(crate) cost: Arc<dyn CostModel>,
    pub(crate) link: Link,
    pub(crate) actions: Vec<Action>,
    pub(crate) dirty: Vec<InstanceId>,
    pub(crate) is_dirty: Vec<bool>,
    pub(crate) pending_copies: Vec<VecDeque<PendingCopy>>,
    pub(crate) transfers: Vec<Option<Transfer>>,
    pub(crate) free_transfers: Vec<u32>,
    pub(crate) counters: ClusterCounters,
    pub(crate) metrics: Metrics,
    pub(crate) max_waiting: usize,
    pub(crate) catch_up: CatchUp,
    pub(crate) prefix_cache: bool,
    /// Instances declared down ([`Scheduler::instance_down`]).
    pub(crate) down: Vec<bool>,
    /// Links between instances that are down, as `(lower, higher)` ([`Scheduler::pair_link_down`]).
    pub(crate) cut: Vec<(InstanceId, InstanceId)>,
    /// [`SchedulerConfig::share_idle_cores`].
    pub(crate) share_idle_cores: bool,
    /// Plans carry block ids ([`Scheduler::set_block_plans`]).
    pub(crate) block_plans: bool,
}

impl State {
    pub(crate) fn waiting_total(&self) -> usize {
        self.instances.iter().map(|i| i.waiting.len()).sum()
    }

    /// The partner whose cores `i` may borrow: `i ^ 1`, when lending is on and it exists.
    pub(crate) fn partner_cores(&self, i: InstanceId) -> Option<InstanceId> {
        let p = i ^ 1;
        (self.share_idle_cores && (p as usize) < self.instances.len()).then_some(p)
    }

    /// Whether `i` can lend its cores now: up, idle, not lent, and nothing to run.
    fn can_lend(&self, i: InstanceId) -> bool {
        let inst = &self.instances[i as usize];
        !self.is_down(i)
            && !inst.busy
            && inst.lent_to.is_none()
            && inst.waiting.is_empty()
            && inst.running.is_empty()
    }

    /// `p`'s cores come back from the iteration that borrowed them; it may schedule again.
    pub(crate) fn give_back(&mut self, p: InstanceId) {
        self.instances[p as usize].lent_to = None;
        self.mark_dirty(p);
    }

    pub(crate) fn mark_dirty(&mut self, i: InstanceId) {
        if !self.is_dirty[i as usize] {
            self.is_dirty[i as usize] = true;
            self.dirty.push(i);
        }
    }

    /// Ends `id`: frees its KV everywhere, records metrics, emits [`Action::Finished`].
    pub(crate) fn finish(&mut self, id: RequestId, reason: FinishReason) {
        let Some(mut r) = self.requests.remove(id) else {
            return;
        };
        let replica = release_replica(&mut r, id, &mut self.instances, self.now);
        let inst = &mut self.instances[r.instance as usize];
        inst.account_kv(self.now);
        inst.kv.release(id);
        inst.load_tokens -= r.load();
        match r.phase {
            Phase::Waiting => {
                if let Some(p) = inst.waiting.iter().position(|&x| x == id) {
                    inst.waiting.remove(p);
                }
            }
            Phase::Decoding => inst.running.retain(|&x| x != id),
            Phase::Moving { .. } | Phase::Done => {}
        }
        // The primary blocks reserved on a move's destination (a replica there is one of them).
        if let Some(to) = r.moving_to().filter(|&to| Some(to) != replica) {
            let o = &mut self.instances[to as usize];
            o.account_kv(self.now);
            o.kv.release(id);
        }
        for other in [replica, r.moving_to()].into_iter().flatten() {
            self.mark_dirty(other);
        }
        self.mark_dirty(r.instance);
        self.metrics.on_finish(&r, id, self.now, reason);
        self.actions.push(Action::Finished {
            request: id,
            reason,
        });
    }

    /// Drops `id`'s replica, if it has one: frees its blocks and forgets it. Returns where it was.
    pub(crate) fn drop_replica(&mut self, id: RequestId) -> Option<InstanceId> {
        let r = self.requests.get_mut(id);
        release_replica(r, id, &mut self.instances, self.now)
    }

    /// The layer-wise copy `c` landed: its destination is unpinned and, if that is still the
    /// request's replica, the replica holds the tokens it carried (its blocks full of them get
    /// their keys: they are prefix cache on the partner too, also if the request ends before it
    /// runs there). Returns the destination of a move that waited for copies into its replica,
    /// when this was the last copy of the request to land (whichever direction it went): the
    /// move can complete. (A move whose destination holds no replica has a transfer in flight
    /// instead.)
    fn land_copy(&mut self, c: PendingCopy) -> Option<InstanceId> {
        let r = self
            .requests
            .try_get_mut(c.request)
            .filter(|r| r.serial == c.serial)?;
        r.copy_settled();
        let to = c.to as usize;
        self.instances[to].kv.unpin(c.request);
        // An unpinned replica is evictable again: a prompt that found no room may fit now
        // (`mark_dirty` would borrow all of `self` while `r` is held).
        if !self.instances[to].waiting.is_empty() && !self.is_dirty[to] {
            self.is_dirty[to] = true;
            self.dirty.push(c.to);
        }
        if r.replica_on() == Some(c.to) {
            if let Some(before) = r.replica_grew(c.tokens) {
                if let Some(keys) = r.block_keys.as_deref() {
                    let dst_kv = &mut self.instances[to].kv;
                    let bs = dst_kv.block_size();
                    let full = (r.replica().map_or(0, |x| x.tokens) / bs).min(keys.len() as u32);
                    if full > before / bs {
                        dst_kv.publish(c.request, keys, before / bs, full);
                    }
                }
            }
        }
        let to = r.moving_to().filter(|&t| r.replica_on() == Some(t))?;
        (r.copies_pending() == 0).then_some(to)
    }

    /// Completes the migration of `id` to `to`, whose KV there is now complete.
    pub(crate) fn land_migration(&mut self, id: RequestId, to: InstanceId, keep_source: bool) {
        let ctx = self.requests.get(id).kv_tokens;
        self.land_migration_with(id, to, keep_source, ctx);
    }

    /// [`Self::land_migration`] when `to` holds only the first `valid` tokens of the KV yet (the
    /// rest is recomputed there). Its blocks holding them get their keys at once, so they stay
    /// cached if the request ends before it runs on `to` (a client gone after its first token).
    fn land_migration_with(
        &mut self,
        id: RequestId,
        to: InstanceId,
        keep_source: bool,
        valid: u32,
    ) {
        let r = self.requests.get_mut(id);
        let from = r.instance;
        r.instance = to;
        r.phase = Phase::Decoding;
        let ctx = r.kv_tokens;
        let dst_kv = &mut self.instances[to as usize].kv;
        r.published = match r.block_keys.as_deref() {
            Some(keys) => {
                let full = (valid.min(ctx) / dst_kv.block_size()).min(keys.len() as u32);
                dst_kv.publish(id, keys, 0, full);
                full
            }
            None => 0,
        };
        let load = r.load();
        let cancelled = r.cancelled;
        // The source may itself have lacked tokens it was about to recompute.
        let source_has = ctx - r.recompute_tokens.min(ctx);
        r.recompute_tokens = 0;
        // A replica it had was on `to`, and holds its primary now; with `keep_source` the old
        // primary becomes its replica.
        let promoted = r.forget_replica();
        debug_assert!(
            promoted.is_none_or(|p| p.on == to),
            "a replica off the move's path"
        );
        if keep_source {
            r.set_replica(from, source_has);
        }
        let src = &mut self.instances[from as usize];
        src.account_kv(self.now);
        if keep_source {
            src.kv.set_ownership(id, Ownership::Replica);
        } else {
            src.kv.release(id);
        }
        src.running.retain(|&x| x != id);
        src.load_tokens -= load;
        let dst = &mut self.instances[to as usize];
        dst.load_tokens += load;
        dst.kv.set_ownership(id, Ownership::Primary);
        dst.kv.touch(id);
        dst.running.push(id);
        self.mark_dirty(from);
        self.mark_dirty(to);
        if cancelled {
            self.finish(id, FinishReason::Cancelled);
        }
    }

    /// Completes the move of `id` (already [`Phase::Moving`], its primary blocks on `to`
    /// reserved) when the destination lacks some of its KV: the destination recomputes the tokens
    /// its replica lacks ([`CatchUp::Recompute`], when it holds a replica), or they are
    /// transferred ([`Action::Transfer`]).
    pub(crate) fn catch_up_move(
        &mut self,
        id: RequestId,
        to: InstanceId,
        keep_source: bool,
    ) -> Migration {
        let r = self.requests.get(id);
        let (from, tokens) = (r.instance, r.kv_tokens);
        let have = r
            .replica()
            .filter(|x| x.on == to)
            .map_or(0, |x| x.tokens.min(tokens));
        let missing = tokens - have;
        if self.catch_up == CatchUp::Recompute && have > 0 {
            self.counters.migrations_recompute += 1;
            self.counters.recompute_tokens += missing as u64;
            self.land_migration_with(id, to, keep_source, have);
            if let Some(r) = self.requests.try_get_mut(id) {
                r.recompute_tokens = missing;
            }
            return Migration::Recompute;
        }
        let tid = match self.free_transfers.pop() {
            Some(t) => t,
            None => {
                self.transfers.push(None);
                self.transfers.len() as u32 - 1
            }
        };
        self.transfers[tid as usize] = Some(Transfer {
            request: id,
            to,
            keep_source,
        });
        self.counters.migrations_transfer += 1;
        self.counters.transfer_bytes += missing as u64 * self.cost.kv_bytes_per_token();
        let mut spans = Vec::new();
        if self.block_plans {
            let (src, dst) = (
                &self.instances[from as usize].kv,
                &self.instances[to as usize].kv,
            );
            if let (Some(a), Some(b)) = (src.table(id), dst.table(id)) {
                BlockSpan::for_positions(a, b, have, tokens, src.block_size(), &mut spans);
            }
        }
        self.actions.push(Action::Transfer {
            id: tid,
            request: id,
            from,
            to,
            from_token: have,
            tokens: missing,
            spans,
        });
        Migration::Transfer
    }
}

/// Drops `r`'s replica (request `id`), if it has one: frees its blocks on its instance (KV usage
/// counted up to `now` first) and forgets it. The one way a replica whose blocks it still holds
/// ends; returns where it was.
fn release_replica(
    r: &mut RequestState,
    id: RequestId,
    instances: &mut [Instance],
    now: TimeUs,
) -> Option<InstanceId> {
    let on = r.forget_replica()?.on;
    let inst = &mut instances[on as usize];
    inst.account_kv(now);
    inst.kv.release(id);
    Some(on)
}

/// The scheduling core: policies plus the state they act on.
pub struct Scheduler {
    state: State,
    cluster: Box<dyn ClusterPolicy>,
    instance_policies: Vec<Box<dyn InstancePolicy>>,
    scratch_done: Vec<RequestId>,
    scratch_evicted: Vec<RequestId>,
    /// The front's KV events, when turned on ([`Self::set_kv_events`]).
    kv_events: Option<crate::kv_events::CacheEvents>,
    /// Each instance's latest plan; its buffers are reused once the executor dropped it.
    plans: Vec<Arc<RunPlan>>,
}

impl Scheduler {
    /// A cluster of `instance_policies.len()` instances, each with its own instance policy object
    /// (tests that wrap a policy); from configuration, [`Scheduler::build`].
    pub fn new(
        cfg: &SchedulerConfig,
        cost: Arc<dyn CostModel>,
        cluster: Box<dyn ClusterPolicy>,
        instance_policies: Vec<Box<dyn InstancePolicy>>,
    ) -> Self {
        let n = instance_policies.len();
        let instances = (0..n as InstanceId)
            .map(|i| Instance::new(i, BlockManager::new(cfg.kv_blocks, cfg.block_size)))
            .collect();
        let mut s = Self {
            state: State {
                now: 0,
                instances,
                requests: Requests::default(),
                cost,
                link: cfg.link,
                actions: Vec::new(),
                dirty: Vec::new(),
                is_dirty: vec![false; n],
                pending_copies: vec![VecDeque::new(); n],
                transfers: Vec::new(),
                free_transfers: Vec::new(),
                counters: ClusterCounters::default(),
                metrics: Metrics::new(cfg.record_timelines),
                max_waiting: cfg.max_waiting,
                catch_up: cluster.catch_up(),
                prefix_cache: cfg.prefix_cache,
                down: vec![false; n],
                cut: Vec::new(),
                share_idle_cores: cfg.share_idle_cores,
                block_plans: false,
            },
            cluster,
            instance_policies,
            scratch_done: Vec::new(),
            scratch_evicted: Vec::new(),
            kv_events: None,
            plans: (0..n).map(|_| Arc::default()).collect(),
        };
        let mut ctx = ClusterCtx { s: &mut s.state };
        s.cluster.init(&mut ctx);
        s
    }

    /// The instances.
    pub fn instances(&self) -> &[Instance] {
        &self.state.instances
    }

    /// One instance, for observers (metrics, reports); an executor runs the [`RunPlan`] of
    /// [`Action::Run`] and reads nothing here.
    pub fn instance(&self, i: InstanceId) -> &Instance {
        &self.state.instances[i as usize]
    }

    /// A live request, if `id` is live, for observers.
    pub fn request(&self, id: RequestId) -> Option<&RequestState> {
        self.state.requests.try_get(id)
    }

    /// Live requests.
    pub fn live_requests(&self) -> usize {
        self.state.requests.len()
    }

    /// Requests waiting for prefill across the cluster.
    pub fn waiting_requests(&self) -> usize {
        self.state.waiting_total()
    }

    /// The cost model.
    pub fn cost(&self) -> &dyn CostModel {
        &*self.state.cost
    }

    /// The link between instances.
    pub fn link(&self) -> Link {
        self.state.link
    }

    /// Cluster-wide counters.
    pub fn counters(&self) -> &ClusterCounters {
        &self.state.counters
    }

    /// Per-request metrics collected so far.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The cluster policy's name.
    pub fn cluster_policy(&self) -> &'static str {
        self.cluster.name()
    }

    /// The instance policy's name.
    pub fn instance_policy(&self) -> &'static str {
        self.instance_policies.first().map_or("", |p| p.name())
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self, out: &mut Vec<Action>) {
        if out.is_empty() {
            // The usual case (the executor drains `out` each time): trade buffers, copy nothing.
            std::mem::swap(out, &mut self.state.actions);
        } else {
            out.append(&mut self.state.actions);
        }
    }

    /// Whether plans carry block ids and copy spans (off by default: the simulator does not
    /// address KV memory; the server does).
    pub fn set_block_plans(&mut self, on: bool) {
        self.state.block_plans = on;
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> u32 {
        self.state.instances[0].kv.block_size()
    }

    /// Turns vLLM-style KV events on or off ([`crate::kv_events`]; off by default). They
    /// change no decision: the block managers only note what their caches already do.
    pub fn set_kv_events(&mut self, on: bool) {
        for i in &mut self.state.instances {
            i.kv.set_record_events(on);
        }
        self.kv_events = on.then(Default::default);
    }

    /// Moves the KV events since the last call, oldest first, to the end of `out` (nothing when
    /// they are off). Drain after every call into the core, before carrying out its actions:
    /// a stored event names a request whose tokens the executor must still have.
    pub fn take_kv_events(&mut self, out: &mut Vec<crate::kv_events::CacheEvent>) {
        let Some(ev) = &mut self.kv_events else {
            return;
        };
        for i in &mut self.state.instances {
            ev.fold(&mut i.kv);
        }
        ev.take(out);
    }

    /// Forgets every cached prefix on every instance (vLLM's `reset_prefix_cache`): done only
    /// while no request holds KV blocks anywhere; returns whether it was. A KV event
    /// `AllCleared` follows the events before it.
    pub fn reset_prefix_cache(&mut self) -> bool {
        let insts = &mut self.state.instances;
        if insts
            .iter()
            .any(|i| i.kv.primary_blocks() + i.kv.replica_blocks() > 0)
        {
            return false;
        }
        if let Some(ev) = &mut self.kv_events {
            for i in insts.iter_mut() {
                ev.fold(&mut i.kv);
            }
        }
        for i in insts.iter_mut() {
            i.kv.reset_prefix_cache();
        }
        if let Some(ev) = &mut self.kv_events {
            ev.cleared();
        }
        true
    }

    /// Integrates KV usage of every instance up to `now` (call before reading stats).
    pub fn account(&mut self, now: TimeUs) {
        for i in &mut self.state.instances {
            i.account_kv(now);
        }
    }

    /// A new request arrives at `now`. Returns its id; it may be rejected right away
    /// ([`Action::Rejected`]).
    pub fn submit(&mut self, now: TimeUs, spec: RequestSpec) -> RequestId {
        self.submit_keyed(now, spec, None)
    }

    /// [`Self::submit`] with the content keys of the full blocks of the request's token stream
    /// ([`crate::kv::chain_keys`], [`crate::kv::run_keys`]), so its prefill can start after a
    /// prefix already cached, and its blocks serve later requests.
    pub fn submit_keyed(
        &mut self,
        now: TimeUs,
        spec: RequestSpec,
        keys: Option<BlockKeys>,
    ) -> RequestId {
        self.state.now = now;
        let mut state = RequestState::new(spec, 0);
        if self.state.prefix_cache {
            // Kept even when empty (a prompt shorter than a block): generated tokens may add
            // keys ([`Self::extend_block_keys`]).
            state.block_keys = keys;
        }
        let id = self.state.requests.insert(state);
        let s = &mut self.state;
        let kv = &s.instances[0].kv;
        let need = kv.blocks_for(spec.prompt_tokens.max(1) + spec.max_output_tokens);
        let reason = if need > kv.num_blocks() {
            Some(RejectReason::TooLong)
        } else if s.max_waiting > 0 && s.waiting_total() >= s.max_waiting {
            Some(RejectReason::QueueFull)
        } else {
            None
        };
        if let Some(reason) = reason {
            s.requests.remove(id);
            s.counters.rejected += 1;
            s.metrics.on_reject();
            s.actions.push(Action::Rejected {
                request: id,
                reason,
            });
            return id;
        }
        s.metrics.on_arrival(id, &spec);
        let mut ctx = ClusterCtx { s: &mut self.state };
        let target = self.cluster.route(&mut ctx, id);
        debug_assert!((target as usize) < self.state.instances.len());
        let s = &mut self.state;
        let target = match s.is_down(target) {
            true => s.least_loaded_up().unwrap_or(target),
            false => target,
        };
        s.requests.get_mut(id).instance = target;
        s.instances[target as usize].waiting.push_back(id);
        s.instances[target as usize].load_tokens += s.requests.get(id).load();
        s.mark_dirty(target);
        self.schedule_idle();
        id
    }

    /// Appends `more` to the content keys of `id`'s token stream (submitted with
    /// [`Self::submit_keyed`]): the keys of blocks of generated tokens, as the executor learns
    /// them ([`crate::kv::extend_chain_keys`]). A block is offered to later requests once its
    /// tokens' KV is computed (the last sampled token's KV is computed by the next iteration),
    /// and stays cached when the request ends, so a follow-up that resends the answer hits it.
    /// Ignored for requests that ended or were submitted without keys (or with caching off).
    pub fn extend_block_keys(&mut self, id: RequestId, more: &[BlockKey]) {
        if more.is_empty() {
            return;
        }
        let Some(r) = self.state.requests.try_get_mut(id) else {
            return;
        };
        if let Some(old) = r.block_keys.as_deref() {
            let keys: BlockKeys = old.iter().chain(more).copied().collect();
            r.block_keys = Some(keys);
        }
    }

    /// The iteration in flight on `instance` ended at `now`. `stopped` lists requests the executor
    /// ended early (end-of-sequence token, stop string); they must be in that batch.
    pub fn iteration_done(&mut self, now: TimeUs, instance: InstanceId, stopped: &[RequestId]) {
        self.state.now = now;
        let s = &mut self.state;
        let inst = &mut s.instances[instance as usize];
        if !inst.busy {
            return;
        }
        inst.busy = false;
        inst.account_kv(now);
        if let Some(p) = inst.borrowed.take() {
            s.give_back(p);
        }
        let inst = &mut s.instances[instance as usize];
        let took = now.saturating_sub(inst.started_us);
        inst.stats.iterations += 1;
        match inst.batch.kind() {
            BatchKind::Prefill => inst.stats.prefill_us += took,
            BatchKind::Decode => inst.stats.decode_us += took,
            BatchKind::Mixed | BatchKind::Empty => inst.stats.mixed_us += took,
        }
        let iteration = inst.iteration;
        let mut done = std::mem::take(&mut self.scratch_done);
        done.clear();
        let mut prefilled = Vec::new();
        let mut any_waiting_left = false;
        let State {
            instances,
            requests,
            metrics,
            pending_copies,
            ..
        } = &mut *s;
        let inst = &mut instances[instance as usize];
        let pending = &mut pending_copies[instance as usize];
        for e in &inst.batch.entries {
            let r = requests.get_mut(e.request);
            r.in_flight = false;
            match e.work {
                Work::Prefill { start, len, .. } if r.phase == Phase::Decoding => {
                    // A recompute chunk: the decode step that also rebuilt the KV this instance
                    // lacked; the context grows by the one token fed, as in a decode step.
                    let end = start + len;
                    inst.load_tokens += (end - r.kv_tokens) as u64;
                    r.kv_tokens = end;
                    r.recompute_tokens = 0;
                    r.generated += 1;
                    metrics.on_token(e.request, r, now);
                }
                Work::Prefill { len, last, .. } => {
                    r.prefilled += len;
                    r.kv_tokens += len;
                    if last {
                        r.phase = Phase::Decoding;
                        r.generated += 1;
                        any_waiting_left = true;
                        inst.running.push(e.request);
                        prefilled.push(e.request);
                        metrics.on_token(e.request, r, now);
                    }
                }
                Work::Decode { .. } => {
                    inst.load_tokens += 1;
                    r.kv_tokens += 1;
                    r.generated += 1;
                    metrics.on_token(e.request, r, now);
                }
            }
            if let Some(keys) = r.block_keys.as_deref() {
                let full = (r.kv_tokens / inst.kv.block_size()).min(keys.len() as u32);
                if full > r.published {
                    inst.kv.publish(e.request, keys, r.published, full);
                    r.published = full;
                }
            }
            if let Some(to) = e.copy_to {
                r.copy_issued();
                pending.push_back(PendingCopy {
                    iteration,
                    request: e.request,
                    serial: r.serial,
                    to,
                    tokens: r.kv_tokens,
                });
            }
            let finished = r.phase == Phase::Decoding && r.generated >= r.spec.max_output_tokens;
            if r.cancelled || finished || stopped.contains(&e.request) {
                done.push(e.request);
            }
        }
        if any_waiting_left {
            let reqs = &s.requests;
            s.instances[instance as usize]
                .waiting
                .retain(|&x| reqs.get(x).phase == Phase::Waiting);
        }
        for &id in &done {
            let r = s.requests.get(id);
            let reason = if r.cancelled {
                FinishReason::Cancelled
            } else if r.generated >= r.spec.max_output_tokens {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            s.finish(id, reason);
        }
        self.scratch_done = done;
        s.mark_dirty(instance);
        let mut ctx = ClusterCtx { s: &mut self.state };
        for id in prefilled {
            if ctx.s.requests.try_get(id).is_some() {
                self.cluster.on_prefill_done(&mut ctx, id);
            }
        }
        self.cluster.on_iteration_done(&mut ctx, instance);
        self.schedule_idle();
    }

    /// The layer-wise copies issued with iterations up to `iteration` on `instance` have landed.
    pub fn copy_done(&mut self, now: TimeUs, instance: InstanceId, iteration: u64) {
        self.state.now = now;
        if self.state.is_down(instance) {
            return;
        }
        let s = &mut self.state;
        while let Some(c) = s.pending_copies[instance as usize].front().copied() {
            if c.iteration > iteration {
                break;
            }
            s.pending_copies[instance as usize].pop_front();
            let Some(to) = s.land_copy(c) else {
                continue;
            };
            let keep = self.cluster.keeps_replica_after_migration();
            if s.requests.get(c.request).replica_current() {
                s.counters.migrations_free += 1;
                s.land_migration(c.request, to, keep);
            } else {
                // The request decoded while the copy was landing and nothing streamed those
                // steps (lazy or recompute sync): the replica is still behind.
                s.catch_up_move(c.request, to, keep);
            }
        }
        let mut ctx = ClusterCtx { s: &mut self.state };
        self.cluster.on_copy_done(&mut ctx, instance);
        self.schedule_idle();
    }

    /// The explicit transfer `id` has landed.
    pub fn transfer_done(&mut self, now: TimeUs, id: u32) {
        self.state.now = now;
        let s = &mut self.state;
        let Some(t) = s.transfers.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        s.free_transfers.push(id);
        s.land_migration(t.request, t.to, t.keep_source);
        self.schedule_idle();
    }

    /// The client cancelled `id` at `now`. Work in flight completes first; then its KV is freed.
    /// Ids of requests that already ended are ignored.
    pub fn cancel(&mut self, now: TimeUs, id: RequestId) {
        self.state.now = now;
        let s = &mut self.state;
        let Some(r) = s.requests.try_get_mut(id) else {
            return;
        };
        if r.in_flight || matches!(r.phase, Phase::Moving { .. }) {
            r.cancelled = true;
            return;
        }
        s.finish(id, FinishReason::Cancelled);
        self.schedule_idle();
    }

    /// Offers every idle instance with something new to its policies.
    fn schedule_idle(&mut self) {
        while let Some(i) = self.state.dirty.pop() {
            self.state.is_dirty[i as usize] = false;
            let inst = &self.state.instances[i as usize];
            if inst.busy || inst.lent_to.is_some() || self.state.is_down(i) {
                continue;
            }
            let mut cctx = ClusterCtx { s: &mut self.state };
            let constraint = self.cluster.before_schedule(&mut cctx, i);
            self.build_batch(i, constraint);
        }
    }

    fn build_batch(&mut self, i: InstanceId, constraint: PhaseConstraint) {
        let s = &mut self.state;
        let now = s.now;
        let inst = &mut s.instances[i as usize];
        inst.batch.clear();
        inst.constraint = constraint;
        if constraint == PhaseConstraint::Idle {
            return;
        }
        if inst.waiting.is_empty() && inst.running.is_empty() {
            return;
        }
        inst.account_kv(now);
        // An idle partner's cores, when it has nothing to run: the policy sizes the batch for them.
        let borrow = s.partner_cores(i).filter(|&p| s.can_lend(p));
        let wide = OnWidth {
            inner: &*s.cost,
            width: 2,
        };
        let inst = &mut s.instances[i as usize];
        let mut ctx = ScheduleCtx {
            now,
            inst,
            requests: &mut s.requests,
            cost: if borrow.is_some() { &wide } else { &*s.cost },
            constraint,
            evicted: std::mem::take(&mut self.scratch_evicted),
            preempted: 0,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        };
        ctx.evicted.clear();
        self.instance_policies[i as usize].schedule(&mut ctx);
        let (evicted, preempted) = (ctx.evicted.len(), ctx.preempted);
        s.counters.prefix_query_tokens += ctx.prefix_query_tokens;
        s.counters.prefix_hit_tokens += ctx.prefix_hit_tokens;
        self.scratch_evicted = ctx.evicted;
        s.counters.replica_evictions += evicted as u64;
        s.counters.preemptions += preempted as u64;
        s.metrics.preemptions += preempted as u64;
        if s.instances[i as usize].batch.is_empty() {
            // Preempting everything it had (e.g. under a decode-only constraint) changed the
            // instance's queues: offer it again, or it would idle with work queued.
            if preempted > 0 {
                s.mark_dirty(i);
            }
            return;
        }
        // Layer-wise copies the cluster policy asks for, with replica blocks reserved up front.
        let n = if self.cluster.copies_kv() {
            s.instances[i as usize].batch.entries.len()
        } else {
            0
        };
        let mut ev = Vec::new();
        for k in 0..n {
            let e = s.instances[i as usize].batch.entries[k];
            let cctx = ClusterCtx { s: &mut *s };
            let Some(to) = self.cluster.copy_target(&cctx, i, &e) else {
                continue;
            };
            if s.is_down(to) || s.is_cut(i, to) {
                continue;
            }
            let r = s.requests.get(e.request);
            let (tokens, fresh, new_from) = match e.work {
                // A prompt's first computed chunk starts after its cached prefix.
                Work::Prefill { start, len, .. } => {
                    let first = if r.phase == Phase::Waiting {
                        r.cached_tokens
                    } else {
                        0
                    };
                    (start + len, start == first, start)
                }
                Work::Decode { context } => (context, false, context - 1),
            };
            // A copy only extends a replica that holds everything before it: one that starts
            // with the prompt, or one already kept on `to`. A lost replica is not patched up.
            if !fresh && r.replica_on() != Some(to) {
                continue;
            }
            if r.replica_on().is_some_and(|o| o != to) {
                s.drop_replica(e.request);
            }
            let r = s.requests.get_mut(e.request);
            let dst = &mut s.instances[to as usize];
            dst.account_kv(now);
            ev.clear();
            // A kept replica with no copy landing that lacks tokens before the new ones gets
            // them too (copies in flight carry the rest of what it lacks now).
            let mut copy_from = match r.replica() {
                Some(x) if r.copies_pending() == 0 => x.tokens.min(new_from),
                _ => new_from,
            };
            // A fresh replica starts with the prefix the destination has cached itself; the copy
            // carries the rest of what the source found in its cache.
            let starts = fresh && r.replica().is_none();
            if starts {
                if let Some(keys) = r.block_keys.as_deref() {
                    let bs = dst.kv.block_size();
                    let have =
                        dst.kv
                            .attach_prefix(e.request, Ownership::Replica, keys, new_from / bs);
                    copy_from = have * bs;
                }
            }
            // A replica that already has room only moves the LRU clock (what `reserve` does then).
            let reserved =
                if tokens as u64 <= dst.kv.held(e.request) as u64 * dst.kv.block_size() as u64 {
                    dst.kv.touch(e.request);
                    Ok(())
                } else {
                    dst.kv
                        .reserve(e.request, Ownership::Replica, tokens, &mut ev)
                };
            match reserved {
                Ok(()) => {
                    dst.kv.pin(e.request);
                    if starts {
                        r.set_replica(to, copy_from);
                    }
                    let entry = &mut s.instances[i as usize].batch.entries[k];
                    entry.copy_to = Some(to);
                    entry.copy_from = copy_from;
                    s.counters.copy_bytes +=
                        s.cost.kv_bytes_per_token() * entry.copy_tokens() as u64;
                }
                // No room to start one: the cached prefix it attached goes back.
                Err(_) if starts => {
                    dst.kv.release(e.request);
                }
                // No room to grow: the replica goes.
                Err(_) => {
                    s.drop_replica(e.request);
                }
            }
        }
        let inst = &mut s.instances[i as usize];
        inst.busy = true;
        inst.started_us = now;
        inst.iteration += 1;
        inst.borrowed = borrow;
        if let Some(p) = borrow {
            s.instances[p as usize].lent_to = Some(i);
        }
        let plan = self.plan(i);
        self.state.actions.push(Action::Run(plan));
    }

    /// The plan of the batch just formed on `i`, in the instance's reused buffer when the
    /// executor has dropped the previous one.
    fn plan(&mut self, i: InstanceId) -> Arc<RunPlan> {
        let s = &self.state;
        let slot = &mut self.plans[i as usize];
        if Arc::get_mut(slot).is_none() {
            *slot = Arc::default();
        }
        let Some(plan) = Arc::get_mut(slot) else {
            unreachable!("a fresh Arc is unique");
        };
        let inst = &s.instances[i as usize];
        plan.clear();
        plan.with_blocks = s.block_plans;
        plan.instance = i;
        plan.iteration = inst.iteration;
        plan.borrowed = inst.borrowed;
        plan.shape = inst.batch.shape;
        plan.predicted_us = inst.iteration_us(&*s.cost);
        let bs = inst.kv.block_size();
        for e in &inst.batch.entries {
            let table = match s.block_plans {
                true => inst.kv.table(e.request).unwrap_or(&[]),
                false => &[],
            };
            plan.push_entry(e.request, e.work, table);
            if let Some(to) = e.copy_to {
                let dst = match s.block_plans {
                    true => s.instances[to as usize].kv.table(e.request).unwrap_or(&[]),
                    false => &[],
                };
                plan.push_copy(to, e.request, e.copy_from, e.end(), table, dst, bs);
            }
        }
        Arc::clone(slot)
    }

    /// Checks every instance's block-manager invariants and that no request holds blocks on an
    /// instance it has no business on. For tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let insts = &self.state.instances;
        for inst in insts {
            inst.kv.check_invariants()?;
            // Lent cores: the borrower runs on them, and the lender runs nothing meanwhile.
            if let Some(p) = inst.borrowed {
                if !inst.busy || insts[p as usize].lent_to != Some(inst.id) {
                    return Err(format!(
                        "instance {} borrows {p}, which does not lend",
                        inst.id
                    ));
                }
            }
            if let Some(b) = inst.lent_to {
                if inst.busy || insts[b as usize].borrowed != Some(inst.id) {
                    return Err(format!(
                        "instance {} lent to {b}, which does not borrow",
                        inst.id
                    ));
                }
            }
        }
        self.check_kv_owners()?;
        self.check_no_stray_blocks()
    }

    /// Checks that the requests and the block managers tell the same story: a request holds
    /// blocks on its own instance (primary), its replica's instance (replica) and a move's
    /// destination (primary, which a replica there turned into); a replica's blocks hold its
    /// tokens; and its count of copies in flight is that of the copies awaited. Cheap enough for
    /// debug builds to run after every event ([`crate::replay`] does); [`Self::check_invariants`]
    /// also checks that no request holds blocks anywhere else.
    pub fn check_kv_owners(&self) -> Result<(), String> {
        let s = &self.state;
        // Copies awaited per request, and per request and destination (those also pin it from
        // the batch that carries them until they land).
        let mut awaited = vec![0u32; s.requests.slots.len()];
        let mut to = Vec::new();
        for c in s.pending_copies.iter().flatten() {
            if s.requests
                .try_get(c.request)
                .is_some_and(|r| r.serial == c.serial)
            {
                awaited[c.request.index()] += 1;
                to.push((c.request, c.to));
            }
        }
        for inst in s.instances.iter().filter(|i| i.busy) {
            for e in &inst.batch.entries {
                to.extend(e.copy_to.map(|t| (e.request, t)));
            }
        }
        to.sort_unstable();
        for (k, r) in s.requests.slots.iter().enumerate() {
            let Some(r) = r else { continue };
            let id = RequestId(k as u32);
            let (replica, moving_to) = (r.replica(), r.moving_to());
            let state = || {
                format!(
                    "request {k} (serial {}) on {}, {:?}, replica {replica:?}",
                    r.serial, r.instance, r.phase
                )
            };
            // Its own instance holds its primary once its prefill started; a move's destination
            // holds it too (also where the replica was); the replica's instance holds a replica.
            let check = |on: InstanceId, want: Option<Ownership>| {
                let kv = &s.instances[on as usize].kv;
                let has = kv.ownership(id);
                if has != want {
                    return Err(format!("{}: its blocks on {on} are {has:?}", state()));
                }
                let copies = (to.partition_point(|&c| c <= (id, on))
                    - to.partition_point(|&c| c < (id, on))) as u32;
                if kv.pins(id) > copies {
                    return Err(format!("{}: {} pins on {on}", state(), kv.pins(id)));
                }
                Ok(())
            };
            let own = s.instances[r.instance as usize].kv.table(id).is_some();
            check(r.instance, own.then_some(Ownership::Primary))?;
            if let Some(on) = moving_to {
                check(on, Some(Ownership::Primary))?;
            }
            if let Some(x) = replica.filter(|x| Some(x.on) != moving_to) {
                check(x.on, Some(Ownership::Replica))?;
            }
            if let Some(x) = replica {
                let kv = &s.instances[x.on as usize].kv;
                let room = kv.held(id) as u64 * kv.block_size() as u64;
                if x.on == r.instance || x.tokens as u64 > room {
                    return Err(format!("{}: {room} tokens of room", state()));
                }
                if moving_to.is_some_and(|t| t != x.on) {
                    return Err(format!("{}: moving to {moving_to:?}", state()));
                }
            }
            if r.copies_pending() != awaited[k] {
                return Err(format!(
                    "{}: {} copies pending, {} awaited",
                    state(),
                    r.copies_pending(),
                    awaited[k]
                ));
            }
        }
        Ok(())
    }

    /// Checks that no request holds blocks on an instance other than its own, its replica's and
    /// its move's destination.
    fn check_no_stray_blocks(&self) -> Result<(), String> {
        let s = &self.state;
        for (k, r) in s.requests.slots.iter().enumerate() {
            let id = RequestId(k as u32);
            let allowed = |i: InstanceId| {
                r.as_ref().is_some_and(|r| {
                    i == r.instance || r.moving_to() == Some(i) || r.replica_on() == Some(i)
                })
            };
            for inst in &s.instances {
                if inst.kv.table(id).is_some() && !allowed(inst.id) {
                    return Err(format!("request {k} holds blocks on {}", inst.id));
                }
            }
        }
        Ok(())
    }
}
