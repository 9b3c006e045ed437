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

use super::{prefix_score, CatchUp, ClusterCtx, ClusterPolicy, Migration};
use crate::{
    batch::{Entry, Work},
    cost::{layerwise_copy_end, IterationShape},
    instance::PhaseConstraint,
    kv::EvictionPolicy,
    request::{Phase, RequestId, RequestState},
    InstanceId, TimeUs,
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

/// When a pair gives up the prefill/decode split and both partners run mixed iterations
/// (prefill chunks beside decodes, sized by the instance policy: AccelGen keeps them within the
/// decodes' TBT SLOs), as `least-load` with the same instance policy would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Colocate {
    /// Always split (the paper's design).
    Never,
    /// Colocated while the split would be overloaded ([`AccellmConfig::colocate`]), split
    /// otherwise.
    Adaptive,
    /// Always colocated: `least-load` within the pair, with replicas where the partner has room.
    Always,
}

/// Decodes are compute-bound when a batch of them takes at least this many times as long as one
/// of half of them (a CPU; an accelerator's memory-bound decodes batch almost for free).
const COMPUTE_BOUND: f64 = 1.6;

/// When a split pair's decoding partner may start prefilling a new prompt too
/// ([`AccellmConfig::both_prefill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BothPrefill {
    /// Only the prefilling partner takes new prompts (the paper's design).
    Never,
    /// When neither partner holds decodes, on hardware whose decodes are compute-bound (a batch
    /// of 16 takes at least 1.6 times one of 8, as on a CPU): there a second prefill costs the
    /// first little, and a prompt arriving behind another need not wait for it.
    ComputeBound,
    /// When neither partner holds decodes, on any hardware.
    Always,
}

/// Whether a colocated pair streams replicas ([`AccellmConfig::colocated_replicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColocatedReplicas {
    /// Colocated prompts start no replica.
    Never,
    /// Unless the partners share one machine's cores (in-process CPU instances,
    /// [`crate::SchedulerConfig::share_idle_cores`]): there a copy takes cores both partners
    /// compute on (live, two one-thread instances: 10% less strict goodput on average,
    /// docs/combination.md), while separate hosts or accelerators copy beside their compute
    /// and keep replicas for free moves and fast failover.
    SeparateCores,
    /// Always, where the partner has room.
    Always,
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
    /// Rebalance only while the heavier partner's decode iteration leaves less than this share of
    /// the tightest TBT SLO among its decodes (that can still meet theirs) free; decodes without
    /// such an SLO rebalance as before. 0: whenever the partners differ by more than
    /// `rebalance_tolerance`.
    pub rebalance_slack: f64,
    /// How replicas follow decoding primaries.
    pub sync: SyncMode,
    /// When a new prompt may start a second prefill instance in the pair: never, while neither
    /// partner has decodes on hardware whose decodes are compute-bound, or always then.
    pub both_prefill: BothPrefill,
    /// Which replica an instance evicts first when a primary needs room.
    pub eviction: EvictionPolicy,
    /// Align hand-overs with decode iterations: a decoding instance whose next iteration would
    /// straddle the moment its prefilling partner hands over a request with a TBT SLO, so that
    /// the request's first gap (first token to second) would exceed that SLO, waits for the
    /// hand-over instead, when every decode it holds still meets its own deadline after the wait.
    pub align_handover: bool,
    /// The decoding partner prefills too: while its partner prefills, prompts queued there that
    /// are predicted to miss their TTFT deadline move to the decoding instance, which then runs
    /// mixed iterations (the instance policy sizes the chunks: AccelGen within the decodes' TBT
    /// SLOs), if its decodes leave at least `decode_prefill_slack` of their tightest SLO free.
    pub decode_prefill: bool,
    /// Share of the tightest TBT SLO among a decoding instance's requests that its decode
    /// iteration must leave free for it to take prompts (`decode_prefill`).
    pub decode_prefill_slack: f64,
    /// Replicas are prefix cache: blocks only a replica holds can be hit, and stay cached when it
    /// ends, so a prompt prefix is found on either partner. Off: only primaries' blocks are.
    pub replicas_as_cache: bool,
    /// When the pair runs colocated instead of split. `adaptive` colocates while one partner
    /// could not hold the pair's work: the pair's primaries would take more than `colocate_kv`
    /// of one instance's KV blocks, or (`colocate_on_prompts`) the prompts arriving at the pair
    /// (averaged over `colocate_window_ms`) would take more than `colocate_prefill` of one
    /// instance's time to prefill and mixing serves them better (the decodes are compute-bound,
    /// or two partners mixing chunks within the tightest TBT SLO prefill faster than one
    /// prefilling alone). It splits again once each load is a quarter below its limit.
    pub colocate: Colocate,
    /// Share of one instance's KV blocks the pair's primaries may hold in the split
    /// ([`AccellmConfig::colocate`]).
    pub colocate_kv: f64,
    /// Colocate for the prompt load too, not only for KV ([`AccellmConfig::colocate`]).
    pub colocate_on_prompts: bool,
    /// Share of one instance's time the pair's arriving prompts may take to prefill in the
    /// split ([`AccellmConfig::colocate`], `colocate_on_prompts`).
    pub colocate_prefill: f64,
    /// Time constant of the arriving prompt load's moving average, in ms.
    pub colocate_window_ms: u64,
    /// Whether a colocated pair streams replicas of its new prompts (where the partner has at
    /// least half its KV free), so decodes can move once it splits again and a failed partner's
    /// requests go on from them: never, unless the partners share one machine's cores, or
    /// always.
    pub colocated_replicas: ColocatedReplicas,
    /// Cache-aware routing: tokens of load one prompt token cached on a pair is worth
    /// (as least-load's `prefix_weight`). 0: load only.
    pub prefix_weight: f64,
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
            rebalance_slack: 0.25,
            sync: SyncMode::Eager,
            both_prefill: BothPrefill::ComputeBound,
            eviction: EvictionPolicy::Lru,
            align_handover: true,
            decode_prefill: true,
            decode_prefill_slack: 0.25,
            replicas_as_cache: true,
            colocate: Colocate::Adaptive,
            colocate_kv: 0.75,
            colocate_on_prompts: true,
            colocate_prefill: 0.8,
            colocate_window_ms: 10_000,
            colocated_replicas: ColocatedReplicas::SeparateCores,
            prefix_weight: 4.0,
        }
    }
}

/// The decodes running on one instance ([`Accellm::decodes`]).
#[derive(Debug, Clone, Copy)]
struct Decodes {
    /// One decode step of each.
    shape: IterationShape,
    /// The tightest TBT SLO among those that can still meet theirs (`TimeUs::MAX`: none).
    tightest: TimeUs,
    /// Their earliest next-token deadline (`TimeUs::MAX`: none).
    due: TimeUs,
}

/// Requests about to be handed over to an instance ([`Accellm::incoming`]).
#[derive(Debug, Clone, Copy, Default)]
struct Incoming {
    /// When the last of those with a TBT SLO they can still meet arrives.
    eta: TimeUs,
    /// The tightest such SLO, if any.
    tightest: Option<TimeUs>,
    /// The earliest next-token deadline among them that have streamed a token.
    due: TimeUs,
    /// Their decode steps, to add to the receiver's next iteration.
    shape: IterationShape,
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
    /// Until when a decoding instance expects requests handed over with their copies landing.
    expect_until: Vec<TimeUs>,
    /// Whether a prefill-role instance already decoded once more to align its hand-over.
    delayed: Vec<bool>,
    /// Requests handed over to each instance whose copies are still landing.
    moving_in: Vec<Vec<RequestId>>,
    scratch: Vec<RequestId>,
    /// Whether each pair runs colocated ([`AccellmConfig::colocate`]).
    colocated: Vec<bool>,
    /// Per pair, the prompt tokens routed to it, exponentially decayed, and when last updated.
    arriving: Vec<(f64, TimeUs)>,
    /// When the first request arrived (the moving average's start).
    first_arrival: Option<TimeUs>,
    /// Cache-aware routing weight ([`AccellmConfig::prefix_weight`]).
    prefix_weight: f64,
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
        let colocated = vec![cfg.colocate == Colocate::Always; pairs.len()];
        Self {
            cfg: cfg.clone(),
            last_prefiller: pairs.iter().map(|&(a, _)| a).collect(),
            partner,
            pairs,
            pair_of,
            role: vec![Role::Decode; n],
            last_was_prefill: vec![false; n],
            expect_until: vec![0; n],
            delayed: vec![false; n],
            moving_in: vec![Vec::new(); n],
            scratch: Vec::new(),
            arriving: vec![(0.0, 0); colocated.len()],
            first_arrival: None,
            colocated,
            prefix_weight: cfg.prefix_weight,
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
                let allowed = match self.cfg.both_prefill {
                    BothPrefill::Never => false,
                    BothPrefill::ComputeBound => Self::decodes_compute_bound(ctx),
                    BothPrefill::Always => true,
                };
                if allowed && no_decodes(d) && ctx.instance(p).running.is_empty() {
                    d
                } else {
                    p
                }
            }
            (Role::Decode, Role::Decode) => match self.cfg.prefill_choice {
                PrefillChoice::LeastDecodeLoad => {
                    let by_load = if ctx.load(a) <= ctx.load(b) { a } else { b };
                    // The partner whose decodes can join the other's next iteration in time
                    // switches, if only one can.
                    match (self.handover_late(ctx, a), self.handover_late(ctx, b)) {
                        (false, true) => a,
                        (true, false) => b,
                        _ => by_load,
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
            let res = ctx.migrate(id, p, self.cfg.replication);
            if res == Ok(Migration::AwaitingCopy) {
                self.moving_in[p as usize].push(id);
            }
            if res.is_err() {
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
        let tolerance = (self.cfg.rebalance_tolerance.max(0.0) * (mine + theirs) as f64) as u64;
        let mut diff = mine.saturating_sub(theirs);
        // Decodes whose iteration leaves room within their tightest TBT SLO gain little from a
        // lighter batch, while a moved request risks its next gap (70B on H100, conversation
        // at 10 req/s: strict attainment 0.90 moving, 1.00 not).
        let roomy = || {
            self.cfg.rebalance_slack > 0.0
                && Self::slack_left(ctx, i, self.cfg.rebalance_slack) == Some(true)
        };
        if diff <= tolerance || roomy() {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&ctx.instance(i).running);
        let mut moved = false;
        // A move lands in the partner's next iteration: a request with a TBT SLO it can still
        // meet moves only if that iteration still produces its next token in time.
        let mut next_shape = Self::decodes(ctx, p).shape;
        let boundary = Self::boundary(ctx, p);
        // Latest arrivals first: they have the most tokens still to generate.
        for k in (0..self.scratch.len()).rev() {
            let id = self.scratch[k];
            let w = self.weight(ctx, id);
            let r = ctx.request(id);
            if w >= diff || r.replica_on() != Some(p) {
                continue;
            }
            if self.cfg.align_handover {
                let mut shape = next_shape;
                shape.add_decode(r.kv_tokens + 1);
                let end = boundary + ctx.cost().iteration_us(&shape);
                let late = match (Self::live_tbt_us(r), r.last_token_us) {
                    (Some(slo), Some(last)) => last + slo < end,
                    _ => false,
                };
                if late {
                    continue;
                }
                next_shape = shape;
            }
            if ctx.migrate(id, p, true).is_ok() {
                moved = true;
                // Past the balance point the partner is now the heavier one: stop.
                if 2 * w >= diff || diff - 2 * w <= tolerance {
                    break;
                }
                diff -= 2 * w;
            }
        }
        if moved {
            ctx.wake(p);
        }
    }

    /// When `x`'s iteration in flight is predicted to end (or, while `x` lends its cores, the
    /// borrowing iteration's); now if it is idle.
    fn boundary(ctx: &ClusterCtx<'_>, x: InstanceId) -> TimeUs {
        let inst = ctx.instance(x);
        let inst = match inst.lent_to {
            Some(b) if !inst.busy => ctx.instance(b),
            _ => inst,
        };
        if inst.busy {
            inst.started_us + inst.iteration_us(ctx.cost())
        } else {
            ctx.now()
        }
    }

    /// The decodes running on `x`: one decode step each, and among those with a TBT SLO they can
    /// still meet, the tightest SLO and the earliest next-token deadline (a request in flight
    /// produces its current token at `x`'s [`Self::boundary`]).
    fn decodes(ctx: &ClusterCtx<'_>, x: InstanceId) -> Decodes {
        let end = Self::boundary(ctx, x);
        let mut d = Decodes {
            shape: IterationShape::default(),
            tightest: TimeUs::MAX,
            due: TimeUs::MAX,
        };
        for &r in &ctx.instance(x).running {
            let r = ctx.request(r);
            d.shape.add_decode(r.kv_tokens + 1);
            if let Some(slo) = Self::live_tbt_us(r) {
                d.tightest = d.tightest.min(slo);
                let last = if r.in_flight {
                    Some(end)
                } else {
                    r.last_token_us
                };
                if let Some(last) = last {
                    d.due = d.due.min(last + slo);
                }
            }
        }
        d
    }

    /// When the requests whose prompts complete in `p`'s iteration in flight can decode on its
    /// partner: the iteration's predicted end, or the predicted landing of its layer-wise copies
    /// if later (the executor's pipeline, [`layerwise_copy_end`], on an idle link).
    fn handover_eta(ctx: &ClusterCtx<'_>, p: InstanceId, to: InstanceId) -> TimeUs {
        let inst = ctx.instance(p);
        let cost = ctx.cost();
        let dur = inst.iteration_us(cost).max(1);
        let layers = cost.num_layers().max(1);
        let bytes = inst.batch.copy_bytes_to(to, cost.kv_bytes_per_token());
        let copy = if bytes == 0 {
            0
        } else {
            let per_layer = ctx.link().transfer_us(bytes.div_ceil(layers as u64));
            layerwise_copy_end(layers, dur / layers as u64, per_layer)
        };
        inst.started_us + dur.max(copy)
    }

    /// The TBT SLO of `r` while it can still meet its SLO.
    fn live_tbt_us(r: &RequestState) -> Option<TimeUs> {
        r.spec
            .slo
            .tbt_ms
            .filter(|_| !r.slo_missed())
            .map(crate::ms_to_us)
    }

    /// Requests about to decode on `i`: the requests of the prefill-role partner's iteration in
    /// flight that will be decoding when it ends (prompts completing, and the decodes of a
    /// partner that just took the prefill role), all handed over then, and the requests already
    /// handed over whose copies are landing.
    fn incoming(&self, ctx: &ClusterCtx<'_>, i: InstanceId) -> Incoming {
        let p = self.partner(i);
        let mut inc = Incoming {
            due: TimeUs::MAX,
            ..Incoming::default()
        };
        let mut add = |r: &RequestState, context: u32, eta: TimeUs| {
            inc.shape.add_decode(context + 1);
            if let Some(slo) = Self::live_tbt_us(r) {
                inc.eta = inc.eta.max(eta);
                inc.tightest = Some(inc.tightest.map_or(slo, |t: TimeUs| t.min(slo)));
                if let Some(last) = r.last_token_us {
                    inc.due = inc.due.min(last + slo);
                }
            }
        };
        let inst = ctx.instance(p);
        if inst.busy && self.role[p as usize] == Role::Prefill {
            let eta = Self::handover_eta(ctx, p, i);
            for &r in &inst.running {
                let r = ctx.request(r);
                add(r, r.kv_tokens + r.in_flight as u32, eta);
            }
            for e in &inst.batch.entries {
                if let Work::Prefill {
                    start,
                    len,
                    last: true,
                } = e.work
                {
                    let r = ctx.request(e.request);
                    if r.phase == Phase::Waiting {
                        add(r, start + len, eta);
                    }
                }
            }
        }
        // A copy's landing event may come at the very instant of the hand-over, after this
        // instance was offered its next iteration: moves in progress arrive now at the earliest.
        let until = self.expect_until[i as usize].max(ctx.now());
        for &r in &self.moving_in[i as usize] {
            let r = ctx.request(r);
            add(r, r.kv_tokens, until);
        }
        inc
    }

    /// Whether prefill-role instance `i` should decode once more before handing its decodes over
    /// ([`AccellmConfig::align_handover`]): a request with a TBT SLO it can still meet would miss
    /// its next deadline in the partner's next iteration. Once per hand-over; the partner then
    /// waits for the hand-over at its own boundary if its decodes allow ([`Self::incoming`]).
    fn delay_handover(&self, ctx: &ClusterCtx<'_>, i: InstanceId) -> bool {
        let p = self.partner(i);
        if !self.cfg.align_handover
            || !self.cfg.replication
            || p == i
            || self.delayed[i as usize]
            || self.role[p as usize] != Role::Decode
        {
            return false;
        }
        // Called at `i`'s boundary: nothing of it is in flight.
        let (mine, theirs) = (Self::decodes(ctx, i), Self::decodes(ctx, p));
        if mine.due == TimeUs::MAX {
            return false;
        }
        let mut shape = mine.shape;
        shape.add(&theirs.shape);
        Self::boundary(ctx, p) + ctx.cost().iteration_us(&shape) > mine.due
    }

    /// Whether, if `i` took the prefill role now, a decode it holds with a TBT SLO it can still
    /// meet would miss its next deadline in the partner's first iteration after the hand-over
    /// (at `i`'s iteration boundary). False without `align_handover`.
    fn handover_late(&self, ctx: &ClusterCtx<'_>, i: InstanceId) -> bool {
        let p = self.partner(i);
        if !self.cfg.align_handover || p == i {
            return false;
        }
        let cost = ctx.cost();
        let handover = Self::boundary(ctx, i);
        let (mine, theirs) = (Self::decodes(ctx, i), Self::decodes(ctx, p));
        if mine.due == TimeUs::MAX {
            return false;
        }
        let mut shape = mine.shape;
        shape.add(&theirs.shape);
        // The partner's first boundary at or after the hand-over.
        let pi = ctx.instance(p);
        let mut start = Self::boundary(ctx, p);
        if pi.busy && start < handover {
            start += pi.iteration_us(cost);
        }
        start.max(handover) + cost.iteration_us(&shape) > mine.due
    }

    /// Whether decoding instance `i` should idle until its decoding partner's iteration ends, so
    /// that the two start their iterations together: then a hand-over at either's boundary (a
    /// role switch) lands in the other's next iteration at once. Only while one of them holds a
    /// decode with a TBT SLO it can still meet, and only if every such decode on `i` still meets
    /// its next deadline after the wait.
    fn lock_step(&self, ctx: &ClusterCtx<'_>, i: InstanceId) -> bool {
        let p = self.partner(i);
        let pi = ctx.instance(p);
        if !pi.busy || self.role[p as usize] != Role::Decode {
            return false;
        }
        // Only for decodes whose SLO a lone iteration can still meet.
        let cost = ctx.cost();
        let (mine, theirs) = (Self::decodes(ctx, i), Self::decodes(ctx, p));
        let tight =
            |d: &Decodes| d.tightest != TimeUs::MAX && cost.iteration_us(&d.shape) <= d.tightest;
        if (!tight(&mine) && !tight(&theirs)) || mine.shape.is_empty() {
            return false;
        }
        let p_end = Self::boundary(ctx, p);
        let d = cost.iteration_us(&mine.shape);
        // A short wait only: iterations of similar length stay in step once aligned.
        p_end <= ctx.now() + d / 2 && p_end + d <= mine.due
    }

    /// Whether decoding instance `i` should idle until requests its prefilling partner hands over
    /// arrive ([`AccellmConfig::align_handover`]). If `i` started an iteration now that ends
    /// after they arrive, their first gap would be the rest of it plus the next one. `i` waits
    /// when that gap would exceed the tightest TBT SLO among them and no decode here that can
    /// still meet its SLO would miss its next deadline by the wait.
    fn wait_for_handover(&self, ctx: &ClusterCtx<'_>, i: InstanceId) -> bool {
        if !self.cfg.align_handover || !self.cfg.replication || self.partner(i) == i {
            return false;
        }
        let inc = self.incoming(ctx, i);
        let Some(tightest) = inc.tightest else {
            return self.lock_step(ctx, i);
        };
        let arrive = inc.eta;
        // Called at `i`'s boundary: nothing of it is in flight.
        let mine = Self::decodes(ctx, i);
        if mine.shape.is_empty() {
            return false;
        }
        let now = ctx.now();
        let d = ctx.cost().iteration_us(&mine.shape);
        let mut merged = mine.shape;
        merged.add(&inc.shape);
        let d_merged = ctx.cost().iteration_us(&merged);
        // No wait if it is not needed, or would not help (the newcomers miss their gap anyway).
        if now + d <= arrive
            || (now + d + d_merged).saturating_sub(arrive) <= tightest
            || d_merged > tightest
        {
            return false;
        }
        // Waiting: the next iteration, with the newcomers, ends `d_merged` after they arrive.
        let next_end = arrive.max(now) + d_merged;
        next_end <= inc.due && next_end <= mine.due
    }

    /// Whether decoding instance `i`'s decodes leave at least `share` of the tightest TBT SLO
    /// among them (of requests that can still meet theirs) free; true without such decodes.
    fn has_slack(ctx: &ClusterCtx<'_>, i: InstanceId, share: f64) -> bool {
        Self::slack_left(ctx, i, share).unwrap_or(true)
    }

    /// [`Self::has_slack`], `None` without decodes with a TBT SLO they can still meet.
    fn slack_left(ctx: &ClusterCtx<'_>, i: InstanceId, share: f64) -> Option<bool> {
        let d = Self::decodes(ctx, i);
        (d.tightest != TimeUs::MAX).then(|| {
            ctx.cost().iteration_us(&d.shape) as f64
                <= d.tightest as f64 * (1.0 - share.clamp(0.0, 1.0))
        })
    }

    /// Whether pair `k` runs colocated, decided anew ([`AccellmConfig::colocate`]). A change
    /// leaves both partners in the decode role: a colocated pair has no roles, and a split pair
    /// picks its prefilling partner when a prompt is queued.
    fn update_mode(&mut self, ctx: &mut ClusterCtx<'_>, k: usize) -> bool {
        let (a, b) = self.pairs[k];
        if a == b {
            return false;
        }
        // Partners that cannot reach each other serve side by side, unpaired
        // ([`ClusterPolicy::on_link_down`]).
        if !ctx.linked(a, b) {
            return true;
        }
        // Static roles and Splitwise-like pairs (no replicas) always split.
        if !self.cfg.role_switching || !self.cfg.replication {
            return false;
        }
        let want = match self.cfg.colocate {
            Colocate::Never => false,
            Colocate::Always => true,
            Colocate::Adaptive => self.split_overloaded(ctx, k),
        };
        if want != self.colocated[k] {
            self.colocated[k] = want;
            for x in [a, b] {
                self.set_role(ctx, x, Role::Decode);
                self.last_was_prefill[x as usize] = false;
                self.delayed[x as usize] = false;
                self.expect_until[x as usize] = 0;
                ctx.wake(x);
            }
        }
        want
    }

    /// Whether one partner of pair `k` could not hold the pair's work (so a split pair
    /// colocates) or, for a colocated pair, could not yet hold it with a margin (so it stays).
    fn split_overloaded(&self, ctx: &ClusterCtx<'_>, k: usize) -> bool {
        let (a, b) = self.pairs[k];
        // A colocated pair splits again only a quarter below each limit (hysteresis).
        let below = if self.colocated[k] { 0.25 } else { 0.0 };
        let limit = |l: f64| (l - below).max(0.0);
        // One decoding partner holds every primary of the pair.
        let (ka, kb) = (&ctx.instance(a).kv, &ctx.instance(b).kv);
        let cap = ka.num_blocks().min(kb.num_blocks()) as f64;
        if (ka.primary_blocks() + kb.primary_blocks()) as f64 > limit(self.cfg.colocate_kv) * cap {
            return true;
        }
        // One prefilling partner prefills every arriving prompt.
        self.cfg.colocate_on_prompts
            && self.prefill_load(ctx, k) > limit(self.cfg.colocate_prefill)
            && Self::mixing_pays(ctx, a, b)
    }

    /// Decays pair `k`'s arriving prompt tokens to now.
    fn arriving_now(&self, ctx: &ClusterCtx<'_>, k: usize) -> f64 {
        let (tokens, at) = self.arriving[k];
        let tau = (self.cfg.colocate_window_ms.max(1) * 1000) as f64;
        tokens * (-(ctx.now().saturating_sub(at) as f64) / tau).exp()
    }

    /// The share of one instance's time that prefilling the prompts arriving at pair `k` takes,
    /// at their moving-average rate. Early in a run the average covers the time since the first
    /// arrival (at least a second), not a whole window.
    fn prefill_load(&self, ctx: &ClusterCtx<'_>, k: usize) -> f64 {
        let tau = (self.cfg.colocate_window_ms.max(1) * 1000) as f64;
        let since = ctx.now().saturating_sub(self.first_arrival.unwrap_or(0)) as f64;
        let span = (tau * (1.0 - (-since / tau).exp())).max(tau.min(1e6));
        self.arriving_now(ctx, k) / span * Self::prefill_us_per_token(ctx)
    }

    /// Whether colocating pair `a`, `b` serves prompts better than the split: the pair's decodes
    /// are compute-bound (one iteration of all of them takes at least 1.6 times one of half, so
    /// splitting them over both partners shortens every iteration, as on a CPU), or two partners
    /// mixing prompt chunks into iterations of half the decodes each, within the tightest TBT
    /// SLO among them, prefill faster than one partner running long prefill-only chunks. Not
    /// where AccelGen's chunks would be slivers beside decodes that batch for free and take
    /// most of the SLO (70B on H100 under a 50 ms class: 7.8 req/s strict goodput colocated,
    /// 25.1 split at 40 req/s on azure-conv).
    fn mixing_pays(ctx: &ClusterCtx<'_>, a: InstanceId, b: InstanceId) -> bool {
        let (da, db) = (Self::decodes(ctx, a), Self::decodes(ctx, b));
        // The tightest TBT SLO among the pair's requests, also of those that already missed
        // theirs (under overload most have; the prompts behind them have not).
        let pair = ctx
            .instance(a)
            .running
            .iter()
            .chain(&ctx.instance(a).waiting);
        let pair = pair
            .chain(&ctx.instance(b).running)
            .chain(&ctx.instance(b).waiting);
        let tightest = pair
            .filter_map(|&r| ctx.request(r).spec.slo.tbt_ms)
            .map(crate::ms_to_us)
            .min()
            .unwrap_or(TimeUs::MAX);
        if tightest == TimeUs::MAX {
            return true;
        }
        let cost = ctx.cost();
        let mut half = IterationShape::default();
        let decoding = ctx
            .instance(a)
            .running
            .iter()
            .chain(&ctx.instance(b).running);
        for &r in decoding.step_by(2) {
            half.add_decode(ctx.request(r).kv_tokens + 1);
        }
        let mut all = da.shape;
        all.add(&db.shape);
        if cost.iteration_us(&all) as f64 >= COMPUTE_BOUND * cost.iteration_us(&half) as f64 {
            return true;
        }
        const LONG: u32 = 2048;
        // The longest chunk (to `LONG` tokens) that fits beside them within the SLO.
        let fits = |c: u32| {
            let mut shape = half;
            shape.add_prefill(0, c, false);
            cost.iteration_us(&shape) <= tightest
        };
        let (mut lo, mut hi) = (0u32, LONG);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut long = IterationShape::default();
        long.add_prefill(0, LONG, false);
        let mut mixed = half;
        mixed.add_prefill(0, lo, false);
        // Prompt tokens per µs: two mixing partners against one prefilling one.
        2.0 * lo as f64 / cost.iteration_us(&mixed).max(1) as f64
            > LONG as f64 / cost.iteration_us(&long).max(1) as f64
    }

    /// Whether the cost model's decodes are compute-bound: a batch of 16 at 512 tokens of
    /// context takes at least 1.6 times one of 8 ([`BothPrefill::ComputeBound`]).
    fn decodes_compute_bound(ctx: &ClusterCtx<'_>) -> bool {
        let batch = |n: u32| {
            let mut shape = IterationShape::default();
            (0..n).for_each(|_| shape.add_decode(512));
            ctx.cost().iteration_us(&shape) as f64
        };
        batch(16) >= COMPUTE_BOUND * batch(8)
    }

    /// The cost model's time per prompt token in a long prefill chunk.
    fn prefill_us_per_token(ctx: &ClusterCtx<'_>) -> f64 {
        const REF_TOKENS: u32 = 2048;
        let mut reference = IterationShape::default();
        reference.add_prefill(0, REF_TOKENS, true);
        ctx.cost().iteration_us(&reference) as f64 / REF_TOKENS as f64
    }

    /// The least loaded partner of colocated pair `k` for request `id` (cache-aware).
    fn colocated_target(&self, ctx: &ClusterCtx<'_>, k: usize, id: RequestId) -> InstanceId {
        let (a, b) = self.pairs[k];
        let score = |x: InstanceId| {
            let hit = ctx.cached_prefix_tokens(x, id);
            (prefix_score(ctx.load(x), hit, self.prefix_weight), x)
        };
        if score(b) < score(a) {
            b
        } else {
            a
        }
    }

    /// Moves to decoding instance `i` the prompts queued on its prefilling partner that are
    /// predicted to miss their TTFT deadline there ([`AccellmConfig::decode_prefill`]): in TTFT
    /// deadline order, a prompt's first token is due after the partner's iteration in flight
    /// and the prefill of every prompt ahead of it, at the cost model's rate for a long chunk.
    /// Only if `i`'s decodes leave `decode_prefill_slack` of their tightest TBT SLO free.
    fn take_late_prompts(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        let p = self.partner(i);
        // Not under memory pressure: prompts taken here would push out the replicas that make
        // decodes movable.
        let kv = &ctx.instance(i).kv;
        if !Self::has_slack(ctx, i, self.cfg.decode_prefill_slack)
            || 2 * kv.free_blocks() < kv.num_blocks()
        {
            return;
        }
        let per_token_us = Self::prefill_us_per_token(ctx);
        let start = Self::boundary(ctx, p);
        let pi = ctx.instance(p);
        // Started prompts finish first; then the rest in TTFT deadline order.
        let mut ahead: u64 = 0;
        self.scratch.clear();
        for &w in &pi.waiting {
            let r = ctx.request(w);
            if r.prefilled > 0 || r.in_flight {
                ahead += r.remaining_prefill() as u64;
            } else if r.spec.slo.ttft_ms.is_some() {
                self.scratch.push(w);
            }
        }
        let deadline =
            |r: &RequestState| r.spec.arrival_us + r.spec.slo.ttft_ms.map_or(0, crate::ms_to_us);
        let mut order = std::mem::take(&mut self.scratch);
        order.sort_by_key(|&w| (deadline(ctx.request(w)), w));
        let mut moved = false;
        for &w in &order {
            let r = ctx.request(w);
            ahead += r.prefill_target as u64;
            let first_token = start + (ahead as f64 * per_token_us) as TimeUs;
            let room = ctx.instance(i).kv.extra_for(w, r.prefill_target)
                <= ctx.instance(i).kv.available_for_primary();
            if first_token > deadline(r) && room {
                ahead -= r.prefill_target as u64;
                if r.replica_on() == Some(i) {
                    ctx.drop_replica(w);
                }
                moved |= ctx.move_waiting(w, i);
            }
        }
        order.clear();
        self.scratch = order;
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

    /// Splits the prompts queued on `a` and `b` that have not started between them by load,
    /// latest arrivals first: a cut finds the pair's prompts where the split put them (all on
    /// the prefilling partner), and neither side can hand work to the other afterwards.
    fn balance_waiting(&mut self, ctx: &mut ClusterCtx<'_>, a: InstanceId, b: InstanceId) {
        let (heavy, light) = if ctx.load(a) >= ctx.load(b) {
            (a, b)
        } else {
            (b, a)
        };
        self.scratch.clear();
        self.scratch
            .extend(ctx.instance(heavy).waiting.iter().rev().copied());
        for k in 0..self.scratch.len() {
            let id = self.scratch[k];
            let r = ctx.request(id);
            let w = r.load();
            if r.prefilled > 0
                || r.in_flight
                || w >= ctx.load(heavy).saturating_sub(ctx.load(light))
            {
                continue;
            }
            ctx.move_waiting(id, light);
        }
        self.scratch.clear();
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
            if r.replica_on() == Some(p) {
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
            ctx.set_replicas_as_cache(i as InstanceId, self.cfg.replicas_as_cache);
        }
    }

    fn on_instance_down(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        // The partner runs alone (decodes and prefills) until `i` is back.
        let k = self.pair_of[i as usize];
        let p = self.partner(i);
        self.pairs[k] = (p, p);
        self.partner[p as usize] = p;
        for x in [i, p] {
            self.moving_in[x as usize].clear();
            self.expect_until[x as usize] = 0;
            self.delayed[x as usize] = false;
        }
        self.role[p as usize] = Role::Decode;
        self.last_prefiller[k] = p;
        ctx.wake(p);
    }

    fn on_instance_up(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) {
        // Pair again with the instance that ran alone (the pair's first stays first).
        let k = self.pair_of[i as usize];
        let (p, _) = self.pairs[k];
        if p == i {
            return;
        }
        self.pairs[k] = if p < i { (p, i) } else { (i, p) };
        self.partner[p as usize] = i;
        self.partner[i as usize] = p;
        self.role[i as usize] = Role::Decode;
        self.last_was_prefill[i as usize] = false;
        ctx.wake(i);
        ctx.wake(p);
    }

    fn on_link_down(&mut self, ctx: &mut ClusterCtx<'_>, a: InstanceId, b: InstanceId) {
        // Two unpaired instances until the link is back: each runs mixed iterations of its own
        // requests (the colocated mode, without replicas), new requests go to the less loaded.
        if self.partner(a) != b || a == b {
            return;
        }
        let k = self.pair_of[a as usize];
        self.colocated[k] = true;
        for x in [a, b] {
            self.role[x as usize] = Role::Decode;
            self.last_was_prefill[x as usize] = false;
            self.delayed[x as usize] = false;
            self.expect_until[x as usize] = 0;
            self.moving_in[x as usize].clear();
            ctx.wake(x);
        }
        self.balance_waiting(ctx, a, b);
    }

    fn on_link_up(&mut self, ctx: &mut ClusterCtx<'_>, a: InstanceId, b: InstanceId) {
        // Paired again: the next decision of the pair's mode (split or colocated) starts from
        // the colocated state the cut left, replicas follow from the next prefills.
        if self.partner(a) != b || a == b {
            return;
        }
        if !self.cfg.role_switching || !self.cfg.replication {
            // Pairs that never colocate split again at once.
            self.colocated[self.pair_of[a as usize]] = false;
        }
        ctx.wake(a);
        ctx.wake(b);
    }

    fn route(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) -> InstanceId {
        let need = ctx.request(id).prefill_target as u64;
        let mut best: Option<(bool, u64, i64, usize)> = None;
        for (k, &(a, b)) in self.pairs.iter().enumerate() {
            let room = Self::room_tokens(ctx, a).max(Self::room_tokens(ctx, b)) >= need;
            let load = ctx.load(a) + if a == b { ctx.load(a) } else { ctx.load(b) };
            // A prefix cached on either partner counts (replicas put it on both).
            let hit = ctx
                .cached_prefix_tokens(a, id)
                .max(ctx.cached_prefix_tokens(b, id));
            let load = prefix_score(load, hit, self.prefix_weight);
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
        self.first_arrival.get_or_insert(ctx.now());
        let tokens = self.arriving_now(ctx, k) + ctx.request(id).prefill_target as f64;
        self.arriving[k] = (tokens, ctx.now());
        if self.update_mode(ctx, k) {
            return self.colocated_target(ctx, k, id);
        }
        self.prefill_instance(ctx, k)
    }

    fn before_schedule(&mut self, ctx: &mut ClusterCtx<'_>, i: InstanceId) -> PhaseConstraint {
        if !ctx.linked(i, self.partner(i)) {
            // Cut off from its partner: mixed iterations of its own requests, as colocated.
            return PhaseConstraint::Any;
        }
        if !self.cfg.role_switching && self.partner(i) != i {
            return self.before_schedule_static(ctx, i);
        }
        let p = self.partner(i);
        if self.update_mode(ctx, self.pair_of[i as usize]) {
            // Colocated: both partners run mixed iterations, each with the decodes it holds
            // (moving decodes to balance the pair cost strict goodput in the simulator: a moved
            // request's next gap spans two instances' iterations).
            return PhaseConstraint::Any;
        }
        if self.role[i as usize] == Role::Prefill {
            if !ctx.instance(i).waiting.is_empty() {
                if self.delay_handover(ctx, i) {
                    self.delayed[i as usize] = true;
                    return PhaseConstraint::DecodeOnly;
                }
                self.delayed[i as usize] = false;
                let stay = self.hand_over(ctx, i);
                return self.prefill_constraint(ctx, i, stay);
            }
            // Prompt queue drained: back to decoding.
            self.set_role(ctx, i, Role::Decode);
            ctx.wake(p);
        }
        if self.cfg.decode_prefill && p != i && self.role[p as usize] == Role::Prefill {
            self.take_late_prompts(ctx, i);
            if !ctx.instance(i).waiting.is_empty() {
                self.last_was_prefill[i as usize] = false;
                return PhaseConstraint::Any;
            }
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
        let reqs = &ctx.s.requests;
        self.moving_in[i as usize]
            .retain(|&id| reqs.try_get(id).is_some_and(|r| r.moving_to() == Some(i)));
        if self.wait_for_handover(ctx, i) {
            // Woken again when the partner's iteration ends (`on_iteration_done`).
            return PhaseConstraint::Idle;
        }
        PhaseConstraint::DecodeOnly
    }

    fn copy_target(
        &mut self,
        ctx: &ClusterCtx<'_>,
        i: InstanceId,
        e: &Entry,
    ) -> Option<InstanceId> {
        let p = self.partner(i);
        if !self.cfg.replication || p == i || !ctx.linked(i, p) {
            return None;
        }
        let r = ctx.request(e.request);
        match e.work {
            // A recompute chunk rebuilds KV the partner (the old primary) already holds.
            Work::Prefill { .. } if r.phase == Phase::Decoding => None,
            // A prompt's replica is built chunk by chunk; once a chunk could not be copied the
            // chain is broken and the request stays without replica.
            // A colocated pair starts replicas only where the partner has room for them.
            Work::Prefill { start: 0, .. } if self.colocated[self.pair_of[i as usize]] => {
                let kv = &ctx.instance(p).kv;
                let wanted = match self.cfg.colocated_replicas {
                    ColocatedReplicas::Never => false,
                    ColocatedReplicas::SeparateCores => !ctx.share_cores(i, p),
                    ColocatedReplicas::Always => true,
                };
                (wanted && 2 * kv.free_blocks() >= kv.num_blocks()).then_some(p)
            }
            Work::Prefill { start, .. } => (start == 0 || r.replica_on() == Some(p)).then_some(p),
            Work::Decode { .. } => (self.cfg.sync == SyncMode::Eager
                && self.cfg.role_switching
                && r.replica_on() == Some(p)
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
        let p = self.partner(i);
        if self.cfg.align_handover
            && self.cfg.role_switching
            && self.role[i as usize] == Role::Prefill
            && !ctx.instance(i).waiting.is_empty()
            && !self.delay_handover(ctx, i)
        {
            // Hand the prompts just completed over now, before the partner plans its next
            // iteration, and remember when their copies land.
            self.expect_until[p as usize] = Self::handover_eta(ctx, i, p);
            self.delayed[i as usize] = false;
            self.hand_over(ctx, i);
        }
        // An idle partner may now hand over, rebalance or prefill.
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
