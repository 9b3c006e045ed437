//! `accellm`: paired instances with dynamic prefill/decode roles and redundant KV, after
//! Bournias, Cavigelli and Zacharopoulos, "AcceLLM: Accelerating LLM Inference using Redundancy
//! for Load Balancing and Data Locality" (arXiv 2411.05555).
//!
//! Instances form static pairs (by default instance `2k` with `2k+1`). Every iteration of an
//! instance is either a prefill batch or a decode batch, never both, so a new prompt never stalls
//! running decodes on the same accelerator.
//!
//! - **Scheduling manager** ([`ClusterPolicy::route`]): a new request goes to the pair with the
//!   least outstanding work (or the shortest prompt backlog, `routing`) among pairs whose
//!   instances have KV room for its prompt, and there to the pair's prefill instance. If the pair has none, one instance takes the prefill role
//!   (`prefill_choice`).
//! - **Roles.** The prefill instance hands its decoding requests to its partner and runs
//!   prefill-only iterations until its prompt queue drains; then it returns to decoding. With no
//!   prompt pending both instances decode, and the more loaded one pushes decodes to the other
//!   (`rebalance`).
//! - **Redundant KV.** Each prefill chunk's KV is streamed to the partner layer by layer while it
//!   is computed, so both instances hold the request (primary on one, replica on the other).
//!   Replicas are kept current during decode by `sync`: `eager` streams each decode step's new KV
//!   too, `lazy` sends the missing tokens when a request moves, `recompute` sends nothing and
//!   the partner recomputes the missing tokens' KV in the moved request's first step there (a
//!   recompute chunk: a prefill chunk of the missing tokens plus the latest one, run in a decode
//!   iteration, since it produces the request's next token). A move to a partner holding a
//!   current replica is free; one whose copy is still landing completes when it lands.
//! - **Memory.** Replicas count against the holder's KV blocks; routing counts replica blocks as
//!   free (they are evicted, in the `eviction` order, least recently used first by default, when a
//!   primary needs room). A request whose replica was evicted is pinned to its owner: rebalancing
//!   never moves it. Only a role switch moves it, by an explicit transfer of its whole KV, which
//!   leaves the old primary behind as a fresh replica.
//!
//! Where the paper is silent the choices are ours, each a knob of [`AccellmConfig`]; the prefill
//! token budget per batch is the instance policy's (`vllm`: `max_num_batched_tokens`, `sarathi`:
//! `chunk_size`). `docs/accellm.md` explains the knobs and reproduces the paper's comparison.

use serde::{Deserialize, Serialize};

use super::{CatchUp, ClusterCtx, ClusterPolicy};
use crate::{
    batch::{Entry, Work},
    instance::PhaseConstraint,
    kv::EvictionPolicy,
    request::{Phase, RequestId},
    InstanceId,
};

/// Which instance of an idle pair takes the prefill role when a prompt arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefillChoice {
    /// The instance with less outstanding decode work (fewer decodes to hand over).
    LeastDecodeLoad,
    /// The instance that prefilled last time in this pair.
    Sticky,
    /// The other instance than last time.
    Alternate,
}

/// What rebalancing between the two decoding instances of a pair equalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebalanceMetric {
    /// Total KV context tokens of the decodes (what a memory-bound decode step reads).
    ContextTokens,
    /// Number of decoding requests.
    Count,
    /// No rebalancing: decodes stay where the role switches put them.
    Off,
}

/// How replicas follow their primary while it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// Every decode step's new KV is streamed to the replica with the iteration.
    Eager,
    /// Nothing is sent while decoding; a move transfers the tokens the replica lacks.
    Lazy,
    /// Nothing is sent while decoding; after a move the partner recomputes the tokens its replica
    /// lacks, as a chunk in the request's first iteration there: compute instead of link bytes.
    Recompute,
}

/// How the scheduling manager ranks the pairs that have KV room for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Least outstanding work of the pair: prompt tokens to prefill plus KV context held.
    LeastLoad,
    /// Fewest prompt tokens queued for prefill in the pair (what the new request waits behind),
    /// then least outstanding work.
    LeastPrefillBacklog,
}

/// Knobs of `accellm`, each with a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccellmConfig {
    /// Explicit pairs of instances. Empty: `2k` with `2k+1`. Entries naming an instance that does
    /// not exist or is already paired are ignored; instances left out are paired in order (a last
    /// odd one runs alone, alternating prefill and decode iterations).
    pub pairs: Vec<[InstanceId; 2]>,
    /// Stream KV to the partner (primary + replica). Off gives Splitwise-like pairs: the KV of a
    /// prefilled request moves to the partner by an explicit transfer and is not kept.
    pub replication: bool,
    /// Let roles change with the load. Off: the first instance of each pair always prefills, the
    /// second always decodes (no decode-time sync, no rebalancing).
    pub role_switching: bool,
    /// How new requests pick a pair.
    pub routing: Routing,
    /// Which instance of an idle pair starts prefilling.
    pub prefill_choice: PrefillChoice,
    /// What rebalancing equalises between two decoding partners.
    pub rebalance: RebalanceMetric,
    /// Rebalance only when the heavier partner exceeds the lighter by more than this fraction of
    /// the pair's total.
    pub rebalance_tolerance: f64,
    /// How replicas follow decoding primaries.
    pub sync: SyncMode,
    /// When neither partner has decodes, a new prompt may start a second prefill instance.
    pub both_prefill: bool,
    /// Which replica an instance evicts first when a primary needs room.
    pub eviction: EvictionPolicy,
}

impl Default for AccellmConfig {
    fn default() -> Self {
        Self {
            pairs: Vec::new(),
            replication: true,
            role_switching: true,
            routing: Routing::LeastLoad,
            prefill_choice: PrefillChoice::LeastDecodeLoad,
            rebalance: RebalanceMetric::ContextTokens,
            rebalance_tolerance: 0.1,
            sync: SyncMode::Eager,
            both_prefill: false,
            eviction: EvictionPolicy::Lru,
        }
    }
}

/// The role an instance currently plays in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs prefill-only iterations (and hands its decodes to its partner).
    Prefill,
    /// Runs decode-only iterations.
    Decode,
}

/// The AcceLLM policy.
#[derive(Debug)]
pub struct Accellm {
    cfg: AccellmConfig,
    /// Partner of each instance (itself when it runs alone).
    partner: Vec<InstanceId>,
    /// Pairs as (first, second); `first == second` for a lone instance.
    pairs: Vec<(InstanceId, InstanceId)>,
    /// Pair index of each instance.
    pair_of: Vec<usize>,
    role: Vec<Role>,
    /// Instance that last took the prefill role, per pair.
    last_prefiller: Vec<InstanceId>,
    /// Whether the instance's last iteration was a prefill one (alternation when it holds decodes
    /// it cannot hand over).
    last_was_prefill: Vec<bool>,
    scratch: Vec<RequestId>,
}

impl Accellm {
    /// For a cluster of `instances` instances.
    pub fn new(instances: u32, cfg: &AccellmConfig) -> Self {
        let n = instances as usize;
        let mut taken = vec![false; n];
        let mut pairs = Vec::new();
        for &[a, b] in &cfg.pairs {
            let ok = a != b
                && (a as usize) < n
                && (b as usize) < n
                && !taken[a as usize]
                && !taken[b as usize];
            if ok {
                taken[a as usize] = true;
                taken[b as usize] = true;
                pairs.push((a, b));
            }
        }
        let rest: Vec<InstanceId> = (0..instances).filter(|&i| !taken[i as usize]).collect();
        for c in rest.chunks(2) {
            pairs.push((c[0], *c.get(1).unwrap_or(&c[0])));
        }
        let mut partner = vec![0; n];
        let mut pair_of = vec![0; n];
        for (k, &(a, b)) in pairs.iter().enumerate() {
            partner[a as usize] = b;
            partner[b as usize] = a;
            pair_of[a as usize] = k;
            pair_of[b as usize] = k;
        }
        Self {
            cfg: cfg.clone(),
            last_prefiller: pairs.iter().map(|&(a, _)| a).collect(),
            partner,
            pairs,
            pair_of,
            role: vec![Role::Decode; n],
            last_was_prefill: vec![false; n],
            scratch: Vec::new(),
        }
    }

    /// The partner of `i` (`i` itself if it runs alone).
    pub fn partner(&self, i: InstanceId) -> InstanceId {
        self.partner[i as usize]
    }

    /// The current role of `i`.
    pub fn role(&self, i: InstanceId) -> Role {
        self.role[i as usize]
    }

    /// Whether `i` is the statically chosen prefill instance of its pair (used when role
    /// switching is off).
    fn is_first(&self, i: InstanceId) -> bool {
        self.pairs[self.pair_of[i as usize]].0 == i
    }

    fn set_role(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId, role: Role) {
        if self.role[i as usize] != role {
            self.role[i as usize] = role;
            ctx.count_role_switch();
            if role == Role::Prefill {
                self.last_prefiller[self.pair_of[i as usize]] = i;
            }
            ctx.wake(i);
        }
    }

    /// Prompt tokens instance `i` could still take: blocks a primary could obtain (free plus
    /// evictable replicas) minus prompt tokens queued but not yet holding blocks.
    fn room_tokens(ctx: &ClusterCtx<'_>, i: InstanceId) -> u64 {
        let kv = &ctx.instance(i).kv;
        let bs = kv.block_size() as u64;
        let held = kv.primary_blocks() as u64 * bs;
        let queued = ctx.load(i).saturating_sub(held);
        (kv.available_for_primary() as u64 * bs).saturating_sub(queued)
    }

    /// Prompt tokens queued on `i` and not yet prefilled.
    fn backlog(ctx: &ClusterCtx<'_>, i: InstanceId) -> u64 {
        let inst = ctx.instance(i);
        inst.waiting
            .iter()
            .map(|&w| ctx.request(w).remaining_prefill() as u64)
            .sum()
    }

    /// The instance of pair `k` that takes a new prompt, switching a role if needed.
    fn prefill_instance(&mut self, ctx: &mut ClusterCtx<'_>, k: usize) -> InstanceId {
        let (a, b) = self.pairs[k];
        if a == b || !self.cfg.role_switching {
            return a;
        }
        let (ra, rb) = (self.role[a as usize], self.role[b as usize]);
        let pick = match (ra, rb) {
            (Role::Prefill, Role::Prefill) => {
                if ctx.load(a) <= ctx.load(b) {
                    a
                } else {
                    b
                }
            }
            (Role::Prefill, Role::Decode) | (Role::Decode, Role::Prefill) => {
                let (p, d) = if ra == Role::Prefill { (a, b) } else { (b, a) };
                // Both may prefill when neither holds decodes (nor KV on its way to one).
                let no_decodes = |i: InstanceId| {
                    let inst = ctx.instance(i);
                    inst.running.is_empty() && inst.kv.primary_blocks() == 0
                };
                if self.cfg.both_prefill && no_decodes(d) && ctx.instance(p).running.is_empty() {
                    d
                } else {
                    p
                }
            }
            (Role::Decode, Role::Decode) => match self.cfg.prefill_choice {
                PrefillChoice::LeastDecodeLoad => {
                    if ctx.load(a) <= ctx.load(b) {
                        a
                    } else {
                        b
                    }
                }
                PrefillChoice::Sticky => self.last_prefiller[k],
                PrefillChoice::Alternate => {
                    let last = self.last_prefiller[k];
                    if last == a {
                        b
                    } else {
                        a
                    }
                }
            },
        };
        self.set_role(ctx, pick, Role::Prefill);
        pick
    }

    /// Hands `i`'s decodes to its partner if the partner decodes. Returns how many stay on `i`.
    /// Without replication a request's KV moves only once, right after its prefill
    /// ([`ClusterPolicy::on_prefill_done`]); afterwards it is pinned, so nothing is handed over.
    fn hand_over(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) -> usize {
        let p = self.partner(i);
        let running = ctx.instance(i).running.len();
        if p == i || self.role[p as usize] != Role::Decode || running == 0 || !self.cfg.replication
        {
            return running;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&ctx.instance(i).running);
        let mut stay = 0;
        for k in 0..self.scratch.len() {
            let id = self.scratch[k];
            if ctx.migrate(id, p, self.cfg.replication).is_err() {
                stay += 1;
            }
        }
        ctx.wake(p);
        stay
    }

    fn weight(&self, ctx: &ClusterCtx<'_>, id: RequestId) -> u64 {
        match self.cfg.rebalance {
            RebalanceMetric::Count | RebalanceMetric::Off => 1,
            RebalanceMetric::ContextTokens => ctx.request(id).kv_tokens as u64 + 1,
        }
    }

    /// Pushes decodes from idle `i` to its decoding partner while `i` carries clearly more.
    /// Only requests with a replica on the partner move (free when current, waiting for the copy
    /// in flight, or sending the missing tokens in `lazy` mode); others are pinned to `i`.
    fn rebalance(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        let p = self.partner(i);
        if p == i
            || self.cfg.rebalance == RebalanceMetric::Off
            || !self.cfg.replication
            || !self.cfg.role_switching
            || self.role[p as usize] != Role::Decode
        {
            return;
        }
        let mine: u64 = ctx
            .instance(i)
            .running
            .iter()
            .map(|&r| self.weight(ctx, r))
            .sum();
        let theirs: u64 = ctx
            .instance(p)
            .running
            .iter()
            .map(|&r| self.weight(ctx, r))
            .sum();
        let slack = (self.cfg.rebalance_tolerance.max(0.0) * (mine + theirs) as f64) as u64;
        let mut diff = mine.saturating_sub(theirs);
        if diff <= slack {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&ctx.instance(i).running);
        let mut moved = false;
        // Latest arrivals first: they have the most tokens still to generate.
        for k in (0..self.scratch.len()).rev() {
            let id = self.scratch[k];
            let w = self.weight(ctx, id);
            if w >= diff || ctx.request(id).replica_on != Some(p) {
                continue;
            }
            if ctx.migrate(id, p, true).is_ok() {
                moved = true;
                // Past the balance point the partner is now the heavier one: stop.
                if 2 * w >= diff || diff - 2 * w <= slack {
                    break;
                }
                diff -= 2 * w;
            }
        }
        if moved {
            ctx.wake(p);
        }
    }

    /// Whether `i` can start or continue a prefill now (its head prompt has or can get blocks).
    fn can_prefill(ctx: &ClusterCtx<'_>, i: InstanceId) -> bool {
        let inst = ctx.instance(i);
        let Some(&head) = inst.waiting.front() else {
            return false;
        };
        let r = ctx.request(head);
        r.prefilled > 0
            || inst.kv.extra_for(head, r.prefill_target) <= inst.kv.available_for_primary()
    }

    /// The constraint of a prefill-role instance that keeps `stay` decodes it could not hand over:
    /// prefill and decode iterations alternate so that neither starves.
    fn prefill_constraint(
        &mut self,
        ctx: &ClusterCtx<'_>,
        i: InstanceId,
        stay: usize,
    ) -> PhaseConstraint {
        let prefill =
            stay == 0 || (!self.last_was_prefill[i as usize] && Self::can_prefill(ctx, i));
        self.last_was_prefill[i as usize] = prefill;
        if prefill {
            PhaseConstraint::PrefillOnly
        } else {
            PhaseConstraint::DecodeOnly
        }
    }

    /// Moves `i`'s queued prompts that have not started to its partner; returns whether any
    /// started one stays.
    fn send_waiting_to_partner(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) -> bool {
        let p = self.partner(i);
        self.scratch.clear();
        self.scratch.extend(ctx.instance(i).waiting.iter().copied());
        let mut left = false;
        for k in 0..self.scratch.len() {
            let id = self.scratch[k];
            let r = ctx.request(id);
            if r.prefilled > 0 {
                left = true;
                continue;
            }
            // A recomputed request may still have its old replica on the partner, where its new
            // primary is about to be built.
            if r.replica_on == Some(p) {
                ctx.drop_replica(id);
            }
            if !ctx.move_waiting(id, p) {
                left = true;
            }
        }
        left
    }

    fn before_schedule_static(
        &mut self,
        ctx: &mut ClusterCtx<'_>,
        i: InstanceId,
    ) -> PhaseConstraint {
        let p = self.partner(i);
        if self.is_first(i) {
            self.role[i as usize] = Role::Prefill;
            self.role[p as usize] = Role::Decode;
            let stay = self.hand_over(ctx, i);
            return self.prefill_constraint(ctx, i, stay);
        }
        // The static decode instance: prompts queued here (recompute after a preemption) go to
        // the prefill instance; any that already started finish here between decode iterations.
        if !ctx.instance(i).waiting.is_empty() && self.send_waiting_to_partner(ctx, i) {
            let dec = !ctx.instance(i).running.is_empty();
            return self.prefill_constraint(ctx, i, dec as usize);
        }
        PhaseConstraint::DecodeOnly
    }
}

impl ClusterPolicy for Accellm {
    fn name(&self) -> &'static str {
        "accellm"
    }

    fn init(&mut self, ctx: &mut ClusterCtx<'_>) {
        for i in 0..self.partner.len() {
            ctx.set_eviction(i as InstanceId, self.cfg.eviction);
        }
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) -> InstanceId {
        let need = ctx.request(id).prefill_target as u64;
        let mut best: Option<(bool, u64, u64, usize)> = None;
        for (k, &(a, b)) in self.pairs.iter().enumerate() {
            let room = Self::room_tokens(ctx, a).max(Self::room_tokens(ctx, b)) >= need;
            let load = ctx.load(a) + if a == b { ctx.load(a) } else { ctx.load(b) };
            let backlog = match self.cfg.routing {
                Routing::LeastLoad => 0,
                Routing::LeastPrefillBacklog => {
                    Self::backlog(ctx, a) + if a == b { 0 } else { Self::backlog(ctx, b) }
                }
            };
            // Pairs with room first, then the least backlog (if asked), then the least load,
            // then the lowest index.
            let key = (!room, backlog, load, k);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let k = best.map_or(0, |b| b.3);
        self.prefill_instance(ctx, k)
    }

    fn before_schedule(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) -> PhaseConstraint {
        if !self.cfg.role_switching && self.partner(i) != i {
            return self.before_schedule_static(ctx, i);
        }
        let p = self.partner(i);
        if self.role[i as usize] == Role::Prefill {
            if !ctx.instance(i).waiting.is_empty() {
                let stay = self.hand_over(ctx, i);
                return self.prefill_constraint(ctx, i, stay);
            }
            // Prompt queue drained: back to decoding.
            self.set_role(ctx, i, Role::Decode);
            ctx.wake(p);
        }
        if !ctx.instance(i).waiting.is_empty() {
            // Prompts queued on a decode instance (recompute after a preemption): the partner
            // prefills them if it already does, otherwise this instance takes the prefill role.
            let partner_prefills = p != i && self.role[p as usize] == Role::Prefill;
            if !partner_prefills || self.send_waiting_to_partner(ctx, i) {
                self.set_role(ctx, i, Role::Prefill);
                let stay = self.hand_over(ctx, i);
                return self.prefill_constraint(ctx, i, stay);
            }
            ctx.wake(p);
        }
        self.last_was_prefill[i as usize] = false;
        self.rebalance(ctx, i);
        PhaseConstraint::DecodeOnly
    }

    fn copy_target(
        &mut self,
        ctx: &ClusterCtx<'_>,
        i: InstanceId,
        e: &Entry,
    ) -> Option<InstanceId> {
        let p = self.partner(i);
        if !self.cfg.replication || p == i {
            return None;
        }
        let r = ctx.request(e.request);
        match e.work {
            // A recompute chunk rebuilds KV the partner (the old primary) already holds.
            Work::Prefill { .. } if r.phase == Phase::Decoding => None,
            // A prompt's replica is built chunk by chunk; once a chunk could not be copied the
            // chain is broken and the request stays without replica.
            Work::Prefill { start, .. } => (start == 0 || r.replica_on == Some(p)).then_some(p),
            Work::Decode { .. } => (self.cfg.sync == SyncMode::Eager
                && self.cfg.role_switching
                && r.replica_on == Some(p)
                && r.phase == Phase::Decoding)
                .then_some(p),
        }
    }

    fn on_prefill_done(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) {
        if self.cfg.replication {
            return;
        }
        // Splitwise-like pairs: the KV moves to the decoding partner by one explicit transfer
        // and is not kept; if the partner has no room the request stays pinned here.
        let i = ctx.request(id).instance;
        let p = self.partner(i);
        if p != i && self.role[p as usize] == Role::Decode && ctx.migrate(id, p, false).is_ok() {
            ctx.wake(p);
        }
    }

    fn on_iteration_done(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        // An idle partner may now hand over, rebalance or prefill.
        let p = self.partner(i);
        if p != i && !ctx.instance(p).busy {
            ctx.wake(p);
        }
    }

    fn keeps_replica_after_migration(&self) -> bool {
        self.cfg.replication
    }

    fn catch_up(&self) -> CatchUp {
        match self.cfg.sync {
            SyncMode::Recompute => CatchUp::Recompute,
            SyncMode::Eager | SyncMode::Lazy => CatchUp::Transfer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pairs_are_neighbours_and_an_odd_one_runs_alone() {
        let a = Accellm::new(5, &AccellmConfig::default());
        assert_eq!(
            (0..5).map(|i| a.partner(i)).collect::<Vec<_>>(),
            vec![1, 0, 3, 2, 4]
        );
    }

    #[test]
    fn explicit_pairs_skip_invalid_entries() {
        let cfg = AccellmConfig {
            pairs: vec![[0, 3], [3, 1], [7, 2], [2, 2]],
            ..Default::default()
        };
        let a = Accellm::new(4, &cfg);
        assert_eq!(
            (0..4).map(|i| a.partner(i)).collect::<Vec<_>>(),
            vec![3, 2, 1, 0]
        );
    }

    #[test]
    fn knobs_parse_from_kebab_case() {
        let cfg = serde_json_like(&[("sync", "lazy"), ("prefill_choice", "alternate")]).unwrap();
        assert_eq!(cfg.sync, SyncMode::Lazy);
        assert_eq!(cfg.prefill_choice, PrefillChoice::Alternate);
        assert_eq!(cfg.eviction, EvictionPolicy::Lru);
        assert!(cfg.replication);
        let cfg = serde_json_like(&[("sync", "recompute"), ("eviction", "largest-first")]).unwrap();
        assert_eq!(cfg.sync, SyncMode::Recompute);
        assert_eq!(cfg.eviction, EvictionPolicy::LargestFirst);
    }

    #[test]
    fn unknown_knob_values_list_the_valid_ones() {
        let e = serde_json_like(&[("sync", "sometimes")]).unwrap_err();
        assert!(e.contains("`eager`, `lazy`"), "{e}");
        assert!(e.contains("`recompute`"), "{e}");
        let e = serde_json_like(&[("eviction", "fifo")]).unwrap_err();
        assert!(e.contains("`lru`") && e.contains("`largest-first`"), "{e}");
    }

    /// Builds a config through serde's derive without a format crate: the value tree below is
    /// what a TOML or JSON reader would produce.
    fn serde_json_like(map: &[(&'static str, &'static str)]) -> Result<AccellmConfig, String> {
        use serde::de::{value::MapDeserializer, IntoDeserializer};
        let de: MapDeserializer<'_, _, serde::de::value::Error> =
            MapDeserializer::new(map.iter().map(|&(k, v)| (k, v.into_deserializer())));
        AccellmConfig::deserialize(de).map_err(|e| e.to_string())
    }
}
