//! `accelgen`: AccelGen's SLO-guaranteed scheduling, Shen and Sen, arXiv 2503.13737.
//!
//! Every request carries a time-between-tokens (TBT) SLO (requests without one get
//! [`AccelGenConfig::default_tbt_ms`]); an iteration is planned so that its predicted time stays
//! within `(1 − margin)` times the tightest TBT SLO among the requests in it that already stream
//! tokens (a fresh prompt's chunks answer to its TTFT deadline, not its TBT SLO; a request that
//! has missed its SLO is held to the looser default, best effort). Four mechanisms:
//!
//! 1. **Budgets from the cost model** ([`BudgetTable`], built once per cost model on the first
//!    `schedule` call): the pivot forward size `S_pf` (smallest token count whose throughput is
//!    within `pivot_tolerance` of the best) and the SLO budget `S_b(s)` (largest token count whose
//!    reference iteration fits `s·(1 − margin)`). An iteration's token cap is
//!    `min(S_b(s_min), κ·S_pf)`; every addition is then checked against the *exact* predicted time
//!    of the batch being built (its decodes with their real contexts plus the candidate chunk at
//!    its real offset) — this exact prediction is what "worst case" means here, the margin covers
//!    the cost model's error.
//! 2. **Dynamic chunking**: decodes go first; prefill chunks then get the largest length that
//!    keeps the batch within the limit, so a long prompt's chunk shrinks while a tight-SLO request
//!    is in the batch and grows when only loose ones are.
//! 3. **SLO-based prioritisation**: decodes are ordered by next-token deadline (last token plus
//!    TBT SLO), prompts by TTFT deadline (arrival plus TTFT SLO, or `default_ttft_ms`): earliest
//!    deadline first. SLOs fall into bins ([`AccelGenConfig::slo_classes_ms`], or geometric bins
//!    of ratio `bin_ratio`). In `edf` mode a decode of a looser bin than the tightest decode
//!    present may skip the iteration while its slack is at least `skip_horizon` iteration limits;
//!    skipped decodes fill whatever budget the prompts leave. In `admission` mode every running
//!    request decodes in every iteration and prioritisation only orders admission and chunking.
//!    Prompts are ordered: overdue ones that already hold KV or were preempted after streaming
//!    tokens first (earliest deadline), then by SLO bin (tighter first) and TTFT deadline;
//!    prompts that missed their TTFT deadline before starting go last (`overdue = "last"`,
//!    default) or first (`"first"`, plain EDF).
//! 4. **Multi-resource batching**: urgent prompts go first in deadline order; among the next
//!    `pack_window` prompts of the tightest SLO bin still waiting the policy
//!    greedily takes the one with the highest `w_compute·(share of the token budget left) +
//!    w_kv·(share of the free KV blocks)` that fits both, until one of them runs out. New prompts
//!    leave `kv_watermark` of the blocks free for the decodes' growth. When a decode runs out of
//!    KV, the victim is the running request (not yet in the batch) with, in order: no earlier
//!    preemption (so one loose request is not preempted over and over), the loosest SLO bin,
//!    the most output tokens left, the cheapest recompute (predicted time of prefilling its
//!    context), the latest arrival ([`VictimKey`]).
//!
//! Knobs: [`AccelGenConfig`] (`[instance.accelgen]`).

mod budget;

use std::cell::{Cell, RefCell};

pub use budget::BudgetTable;

use serde::{Deserialize, Serialize};

use super::{InstancePolicy, ScheduleCtx};
use crate::{
    cost::IterationShape,
    ms_to_us,
    request::{RequestId, RequestState},
    TimeUs,
};

/// How AccelGen's prioritisation acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelGenMode {
    /// Iteration-level selection: loose decodes may skip iterations while their deadline holds.
    #[default]
    Edf,
    /// Every running request decodes every iteration; prioritisation orders admission and chunks.
    Admission,
}

/// Where prompts whose TTFT deadline has passed before they started go in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overdue {
    /// First (plain earliest deadline first).
    First,
    /// Last: they already missed their SLO, so requests that can still meet theirs go ahead
    /// (avoids EDF's domino effect under overload).
    #[default]
    Last,
}

/// AccelGen's knobs. Where the paper gives no value, the default is ours (see docs/accelgen.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccelGenConfig {
    /// Most requests in one iteration.
    pub max_num_seqs: u32,
    /// `edf` (default) or `admission`.
    pub mode: AccelGenMode,
    /// Fraction of the TBT SLO kept free for cost-model error: an iteration aims at `s·(1 − margin)`.
    pub margin: f64,
    /// Throughput tolerance defining the pivot forward size (0.05: within 5% of the best).
    pub pivot_tolerance: f64,
    /// Cap on the token budget as a multiple of the pivot forward size (`κ`).
    pub kappa: f64,
    /// Largest token count in the budget table.
    pub table_max_tokens: u32,
    /// Cached-context length of the budget table's reference chunk.
    pub table_context_tokens: u32,
    /// TBT SLO assumed for requests without one (ms).
    pub default_tbt_ms: f64,
    /// TTFT SLO assumed for requests without one, for deadline ordering (ms).
    pub default_ttft_ms: f64,
    /// Where not-yet-started prompts past their TTFT deadline go: `last` (default) or `first`.
    pub overdue: Overdue,
    /// Upper edges of explicit SLO classes (ms, ascending); empty: geometric bins.
    pub slo_classes_ms: Vec<f64>,
    /// Ratio of the geometric SLO bins (bin `k` holds SLOs in `[r^k, r^(k+1))` ms).
    pub bin_ratio: f64,
    /// A loose decode may skip an iteration while its slack is at least this many iteration limits.
    pub skip_horizon: f64,
    /// How many not-yet-started prompts, in deadline order, the KV/compute packing chooses among.
    pub pack_window: u32,
    /// Weight of the compute (token budget) share in the packing score.
    pub w_compute: f64,
    /// Weight of the KV share in the packing score.
    pub w_kv: f64,
    /// Fraction of the KV blocks a new prompt must leave free while requests are decoding.
    pub kv_watermark: f64,
    /// Overload relief: while prompts wait, an SLO bin whose iteration limit the running decodes
    /// alone fill beyond `1 − relief_share` cannot admit new work; such bins are held, for this
    /// iteration, to the SLO of the tightest bin present that leaves that share for prefill (their
    /// requests may miss a deadline so the queue drains). 0 turns it off.
    pub relief_share: f64,
    /// A request that missed its strict SLO (one gap too long) while its TTFT was on time can
    /// still meet the mean one (mean time per output token within its TBT SLO): its next token
    /// is then due when its mean would reach the SLO (never later than best effort), and it
    /// fills what the prompts leave, as a skipped decode does; it never tightens an iteration's
    /// time limit. Off (default): best effort, at the pace of `default_tbt_ms`.
    pub mean_pace: bool,
}

impl Default for AccelGenConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            mode: AccelGenMode::Edf,
            margin: 0.1,
            pivot_tolerance: 0.05,
            kappa: 1.0,
            table_max_tokens: 16_384,
            table_context_tokens: 0,
            default_tbt_ms: 1_000.0,
            default_ttft_ms: 10_000.0,
            overdue: Overdue::Last,
            slo_classes_ms: Vec::new(),
            bin_ratio: 2.0,
            skip_horizon: 2.0,
            pack_window: 8,
            w_compute: 0.5,
            w_kv: 0.5,
            kv_watermark: 0.01,
            relief_share: 0.0,
            mean_pace: false,
        }
    }
}

impl AccelGenConfig {
    /// The SLO bin of a TBT SLO of `slo_ms` (0 is the tightest).
    pub fn bin(&self, slo_ms: f64) -> u32 {
        if !self.slo_classes_ms.is_empty() {
            return self.slo_classes_ms.iter().filter(|&&c| c < slo_ms).count() as u32;
        }
        let r = if self.bin_ratio > 1.0 {
            self.bin_ratio
        } else {
            2.0
        };
        if slo_ms <= 1.0 {
            0
        } else {
            (slo_ms.ln() / r.ln()).floor() as u32
        }
    }

    /// The time an iteration may take under a TBT SLO of `slo_us`.
    pub fn limit_us(&self, slo_us: TimeUs) -> TimeUs {
        (slo_us as f64 * (1.0 - self.margin.clamp(0.0, 1.0))).floor() as TimeUs
    }
}

/// Preemption order: the request with the greatest key is preempted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VictimKey {
    /// Never preempted before (a request already preempted is spared while another can go, so
    /// one loose request is not preempted over and over).
    pub first_time: bool,
    /// SLO bin (looser is greater).
    pub bin: u32,
    /// Output tokens left to generate.
    pub remaining_output: u32,
    /// Negated predicted recompute time (cheaper to restore is greater).
    pub neg_restore_us: i64,
    /// Submission serial (later arrival is greater).
    pub serial: u64,
}

/// The current limits of the batch being built.
#[derive(Debug, Clone, Copy)]
struct Limit {
    time_us: TimeUs,
    tokens: u32,
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    id: RequestId,
    deadline: i64,
    slo_us: TimeUs,
    bin: u32,
    /// Prompt order group: 0 urgent, 1 normal, 2 demoted.
    group: u8,
    /// Held to its mean SLO's pace ([`AccelGenConfig::mean_pace`]): it takes only what the
    /// prompts leave.
    paced: bool,
}

/// Prompt order: urgent prompts by deadline, then by group, SLO bin and deadline.
fn prompt_order(c: &Cand) -> (u8, u32, i64, RequestId) {
    match c.group {
        0 => (0, 0, c.deadline, c.id),
        g => (g, c.bin, c.deadline, c.id),
    }
}

/// The AccelGen policy.
#[derive(Debug)]
pub struct AccelGen {
    cfg: AccelGenConfig,
    max_seqs: u32,
    table: Option<BudgetTable>,
    decodes: Vec<Cand>,
    deferred: Vec<Cand>,
    prefills: Vec<Cand>,
    /// `prefills[..sorted]` is in final order (the rest is sorted only when a scan reaches it).
    sorted: usize,
    tried: Vec<bool>,
    /// The last conversions, reused because most requests share a few SLOs: an SLO in µs to its
    /// iteration limit, a limit to its token budget.
    limit_memo: Cell<Option<(TimeUs, TimeUs)>>,
    budget_memo: Cell<Option<(TimeUs, u32)>>,
    /// SLO bins computed so far, by TBT SLO (workloads use a handful of distinct SLOs).
    bins: RefCell<Vec<(TimeUs, u32)>>,
}

impl AccelGen {
    /// With the knobs in `cfg`.
    pub fn new(cfg: &AccelGenConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            max_seqs: cfg.max_num_seqs.max(1),
            table: None,
            decodes: Vec::new(),
            deferred: Vec::new(),
            prefills: Vec::new(),
            sorted: 0,
            tried: Vec::new(),
            limit_memo: Cell::new(None),
            budget_memo: Cell::new(None),
            bins: Default::default(),
        }
    }

    /// The budget table, once the first `schedule` call has built it.
    pub fn table(&self) -> Option<&BudgetTable> {
        self.table.as_ref()
    }

    /// The SLO bin of a TBT SLO of `slo_us`, memoised (the hot path sees few distinct SLOs).
    fn bin_us(&self, slo_us: TimeUs) -> u32 {
        let mut bins = self.bins.borrow_mut();
        if let Some(&(_, b)) = bins.iter().find(|&&(s, _)| s == slo_us) {
            return b;
        }
        let b = self.cfg.bin(slo_us as f64 / 1000.0);
        if bins.len() < 64 {
            bins.push((slo_us, b));
        }
        b
    }

    fn tbt_slo_us(&self, r: &RequestState) -> TimeUs {
        ms_to_us(r.spec.slo.tbt_ms.unwrap_or(self.cfg.default_tbt_ms)).max(1)
    }

    /// The TBT SLO the policy holds `r` to, and its bin: its own, or, once it has missed its SLO
    /// ([`RequestState::slo_missed`]) and can no longer count towards goodput, the looser of its
    /// own and `default_tbt_ms`, so it is served best effort and does not hold back requests that
    /// still can meet theirs.
    fn slo_and_bin(&self, r: &RequestState) -> (TimeUs, u32) {
        let mut slo_us = self.tbt_slo_us(r);
        if r.slo_missed() {
            slo_us = slo_us.max(ms_to_us(self.cfg.default_tbt_ms));
        }
        (slo_us, self.bin_us(slo_us))
    }

    /// When the next token of `r` is due to keep its mean time per output token within its TBT
    /// SLO ([`AccelGenConfig::mean_pace`]): only for a request that missed its strict SLO, whose
    /// first token was on time, and that is at most one gap behind that pace.
    fn mean_pace_due(&self, r: &RequestState, now: TimeUs) -> Option<TimeUs> {
        if !self.cfg.mean_pace || !r.slo_missed() || r.generated == 0 {
            return None;
        }
        let tbt = ms_to_us(r.spec.slo.tbt_ms?).max(1);
        let first = r.first_token_us?;
        let ttft = first.saturating_sub(r.spec.arrival_us);
        if r.spec.slo.ttft_ms.is_some_and(|s| ttft > ms_to_us(s)) {
            return None;
        }
        // The mean after the next token, (t − first) / generated, stays within the SLO.
        let due = first.saturating_add(u64::from(r.generated).saturating_mul(tbt));
        (due.saturating_add(tbt) >= now).then_some(due)
    }

    fn cand(&self, id: RequestId, r: &RequestState, now: TimeUs, decode: bool) -> Cand {
        let (slo_us, bin) = self.slo_and_bin(r);
        let pace = r.last_token_us.and(self.mean_pace_due(r, now));
        let deadline = match r.last_token_us {
            // Decoding, or recomputing after a preemption: the next token is due.
            // A paced request is never due later than best effort would have it (a request
            // ahead of its mean's pace is not left waiting for it to catch up).
            Some(t) => pace.map_or(t + slo_us, |p| p.min(t + slo_us)),
            None if decode => now + slo_us,
            None => {
                r.spec.arrival_us + ms_to_us(r.spec.slo.ttft_ms.unwrap_or(self.cfg.default_ttft_ms))
            }
        };
        Cand {
            id,
            deadline: deadline as i64,
            slo_us,
            bin,
            group: 1,
            paced: pace.is_some(),
        }
    }

    fn tighten(&self, lim: Limit, slo_us: TimeUs) -> Limit {
        let limit_us = match self.limit_memo.get() {
            Some((s, l)) if s == slo_us => l,
            _ => {
                let l = self.cfg.limit_us(slo_us);
                self.limit_memo.set(Some((slo_us, l)));
                l
            }
        };
        let time_us = lim.time_us.min(limit_us);
        let table = match (self.table.as_ref(), self.budget_memo.get()) {
            (None, _) => u32::MAX,
            (Some(_), Some((t, b))) if t == time_us => b,
            (Some(t), _) => {
                let b = t.slo_budget(time_us);
                self.budget_memo.set(Some((time_us, b)));
                b
            }
        };
        Limit {
            time_us,
            tokens: lim.tokens.min(table),
        }
    }

    fn fits(ctx: &ScheduleCtx<'_>, shape: &IterationShape, lim: Limit) -> bool {
        shape.tokens() <= lim.tokens && ctx.cost().iteration_us(shape) <= lim.time_us
    }

    fn full(&self, ctx: &ScheduleCtx<'_>) -> bool {
        ctx.batch().entries.len() as u32 >= self.max_seqs
    }

    /// The preemption key of running request `id`.
    fn victim_key(&self, ctx: &ScheduleCtx<'_>, id: RequestId) -> VictimKey {
        let r = ctx.request(id);
        let mut shape = IterationShape::default();
        shape.add_prefill(0, r.kv_tokens.max(1), true);
        VictimKey {
            first_time: r.preemptions == 0,
            bin: self.slo_and_bin(r).1,
            remaining_output: r.remaining_output(),
            neg_restore_us: -(ctx.cost().iteration_us(&shape) as i64),
            serial: r.serial,
        }
    }

    /// Adds a decode of `id`, preempting victims by [`VictimKey`] while KV runs out. Returns
    /// whether the decode was scheduled (false if `id` itself was preempted or nothing could go).
    fn decode_or_preempt(&self, ctx: &mut ScheduleCtx<'_>, id: RequestId) -> bool {
        loop {
            if ctx.add_decode(id).is_ok() {
                return true;
            }
            let victim = ctx
                .running()
                .iter()
                .copied()
                .filter(|&r| ctx.can_decode(r))
                .max_by_key(|&r| self.victim_key(ctx, r));
            let Some(victim) = victim else {
                return false;
            };
            ctx.preempt(victim);
            if victim == id {
                return false;
            }
        }
    }

    /// The largest chunk of prompt `c` that keeps the batch within `lim` tightened by `c`'s SLO,
    /// with the tightened limit and the KV blocks it needs; `None` if nothing fits.
    /// `watermark` keeps `kv_watermark` of the blocks free while requests decode.
    fn chunk_for(
        &self,
        ctx: &ScheduleCtx<'_>,
        c: &Cand,
        lim: Limit,
        watermark: bool,
    ) -> Option<(u32, Limit, u32)> {
        let r = ctx.request(c.id);
        let (start, target) = (r.prefilled, r.prefill_target);
        let need = ctx.extra_blocks(c.id, target);
        if need > 0 {
            let kv = ctx.kv();
            let reserve = if !watermark || ctx.running().is_empty() {
                0
            } else {
                (kv.num_blocks() as f64 * self.cfg.kv_watermark).ceil() as u32
            };
            if need + reserve > kv.available_for_primary() {
                return None;
            }
        }
        // A TBT SLO bounds the iterations that produce a token for a request already streaming:
        // a fresh prompt's chunks answer to its TTFT deadline, so only a request that has streamed
        // tokens (recomputing after a preemption) tightens the limit with its own SLO.
        let lim = if r.last_token_us.is_some() {
            self.tighten(lim, c.slo_us)
        } else {
            lim
        };
        let base = ctx.batch().shape;
        if self.cfg.mode == AccelGenMode::Admission && start == 0 {
            // Admission control: the request's longest decode must fit next to today's batch.
            let mut s = base;
            s.add_decode(target + r.remaining_output());
            if ctx.cost().iteration_us(&s) > lim.time_us {
                return None;
            }
        }
        let max_len = r
            .remaining_prefill()
            .min(lim.tokens.saturating_sub(base.tokens()));
        let fits_len = |len: u32| {
            let mut s = base;
            s.add_prefill(start, len, start + len == target);
            Self::fits(ctx, &s, lim)
        };
        let (mut lo, mut hi) = (0, max_len);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits_len(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        (lo > 0).then_some((lo, lim, need))
    }

    /// Fills the batch with prefill chunks (urgent prompts first, then packing).
    fn fill_prefills(&mut self, ctx: &mut ScheduleCtx<'_>, lim: &mut Limit) {
        self.tried.clear();
        self.tried.resize(self.prefills.len(), false);
        while !self.full(ctx) && ctx.batch().shape.tokens() < lim.tokens {
            let mut best: Option<(usize, u32, Limit, f64)> = None;
            let (mut window, mut group) = (0, None);
            for k in 0..self.prefills.len() {
                if k == self.sorted {
                    self.sort_rest();
                }
                let c = &self.prefills[k];
                if self.tried[k] || ctx.is_scheduled(c.id) {
                    continue;
                }
                let urgent = c.group == 0;
                if !urgent {
                    // Pack within the tightest SLO bin still waiting, up to `pack_window` prompts.
                    let key = *group.get_or_insert((c.group, c.bin));
                    if key != (c.group, c.bin) || window >= self.cfg.pack_window.max(1) {
                        break;
                    }
                    window += 1;
                }
                let Some((len, l, need)) = self.chunk_for(ctx, c, *lim, true) else {
                    self.tried[k] = true;
                    continue;
                };
                if urgent {
                    best = Some((k, len, l, f64::INFINITY));
                    break;
                }
                let left = l.tokens.saturating_sub(ctx.batch().shape.tokens()).max(1);
                let free = ctx.kv().available_for_primary().max(1);
                let score = self.cfg.w_compute * len as f64 / left as f64
                    + self.cfg.w_kv * need as f64 / free as f64;
                if !best.is_some_and(|b| b.3 >= score) {
                    best = Some((k, len, l, score));
                }
            }
            let Some((k, len, l, _)) = best else {
                break;
            };
            self.tried[k] = true;
            if ctx.add_prefill(self.prefills[k].id, len).is_ok() {
                *lim = l;
            }
        }
    }

    /// Makes sure an instance with work never idles: the most urgent item runs alone if nothing
    /// fitted its limit (possible only when a single token exceeds the SLO).
    fn ensure_progress(&self, ctx: &mut ScheduleCtx<'_>) {
        if !ctx.batch().is_empty() {
            return;
        }
        if let Some(c) = self
            .decodes
            .iter()
            .chain(&self.deferred)
            .min_by_key(|c| c.deadline)
        {
            if ctx.can_decode(c.id) && self.decode_or_preempt(ctx, c.id) {
                return;
            }
        }
        let initial = self.initial_limit();
        for c in &self.prefills {
            let r = ctx.request(c.id);
            if ctx.extra_blocks(c.id, r.prefill_target) > ctx.kv().available_for_primary() {
                continue;
            }
            let len = self
                .chunk_for(ctx, c, initial, false)
                .map_or(1, |(len, _, _)| len);
            if ctx.add_prefill(c.id, len).is_ok() {
                return;
            }
        }
    }

    /// Overload relief ([`AccelGenConfig::relief_share`]): raises the SLO that bins too tight to
    /// admit work are held to in this iteration, up to the tightest bin present that is not.
    fn relieve(&self, ctx: &ScheduleCtx<'_>, decodes: &mut [Cand], prefills: &mut [Cand]) {
        let mut shape = IterationShape::default();
        for c in decodes.iter() {
            shape.add_decode(ctx.request(c.id).kv_tokens + 1);
        }
        let decode_us = ctx.cost().iteration_us(&shape) as f64;
        let feasible = |slo_us: TimeUs| {
            let lim = self.cfg.limit_us(slo_us) as f64;
            lim - decode_us >= self.cfg.relief_share * lim
        };
        let tightest = decodes
            .iter()
            .chain(prefills.iter())
            .map(|c| c.slo_us)
            .min();
        if tightest.is_none_or(feasible) {
            return;
        }
        let Some(held_to) = decodes
            .iter()
            .chain(prefills.iter())
            .map(|c| c.slo_us)
            .filter(|&s| feasible(s))
            .min()
        else {
            return;
        };
        for c in decodes.iter_mut().chain(prefills.iter_mut()) {
            c.slo_us = c.slo_us.max(held_to);
        }
    }

    /// Puts the not-yet-ordered tail of the prompt list in order.
    fn sort_rest(&mut self) {
        if self.sorted < self.prefills.len() {
            self.prefills[self.sorted..].sort_unstable_by_key(prompt_order);
            self.sorted = self.prefills.len();
        }
    }

    /// The limits of an empty batch: no time limit yet, `κ·S_pf` tokens.
    fn initial_limit(&self) -> Limit {
        let pivot = self.table.as_ref().map_or(u32::MAX, BudgetTable::pivot);
        Limit {
            time_us: TimeUs::MAX,
            tokens: ((pivot as f64 * self.cfg.kappa).round() as u32).max(1),
        }
    }
}

impl InstancePolicy for AccelGen {
    fn name(&self) -> &'static str {
        "accelgen"
    }

    fn schedule(&mut self, ctx: &mut ScheduleCtx<'_>) {
        if !self.table.as_ref().is_some_and(|t| t.is_for(ctx.cost())) {
            self.table = Some(BudgetTable::new(
                ctx.cost(),
                self.cfg.table_max_tokens,
                self.cfg.table_context_tokens,
                self.cfg.pivot_tolerance,
            ));
            self.budget_memo.set(None);
        }
        let now = ctx.now();
        let (mut decodes, mut deferred, mut prefills) = (
            std::mem::take(&mut self.decodes),
            std::mem::take(&mut self.deferred),
            std::mem::take(&mut self.prefills),
        );
        decodes.clear();
        deferred.clear();
        prefills.clear();
        if ctx.constraint().allows_decode() {
            for &id in ctx.running() {
                if ctx.can_decode(id) {
                    decodes.push(self.cand(id, ctx.request(id), now, true));
                }
            }
        }
        if ctx.constraint().allows_prefill() {
            for &id in ctx.waiting() {
                if !ctx.is_scheduled(id) {
                    prefills.push(self.cand(id, ctx.request(id), now, false));
                }
            }
        }
        // Keys end with the request id, so they are unique and an unstable sort is exact.
        decodes.sort_unstable_by_key(|c| (c.deadline, c.id));
        // Overdue prompts that hold KV first (earliest deadline); then tighter SLO bins, then TTFT
        // deadline; overdue prompts that have not started go first or last as configured.
        let t = now as i64;
        for c in &mut prefills {
            // A preempted request has streamed tokens already: it is owed its next one, so it
            // is never demoted behind prompts that have not started.
            let r = ctx.request(c.id);
            let started = r.prefilled > 0 || r.last_token_us.is_some();
            c.group = match (c.deadline < t, started, self.cfg.overdue) {
                (false, _, _) => 1,
                (true, true, _) | (true, false, Overdue::First) => 0,
                (true, false, Overdue::Last) => 2,
            };
        }
        // Scans rarely go past the urgent prompts and a few packing windows: order that head
        // now, the rest only if a scan reaches it. Keys are unique (they end with the id), so
        // the result is the full sort's.
        let urgent = prefills.iter().filter(|c| c.group == 0).count();
        let head = urgent + 4 * self.cfg.pack_window.max(1) as usize + 32;
        if head < prefills.len() {
            prefills.select_nth_unstable_by_key(head, prompt_order);
            prefills[..head].sort_unstable_by_key(prompt_order);
            self.sorted = head;
        } else {
            prefills.sort_unstable_by_key(prompt_order);
            self.sorted = prefills.len();
        }

        if self.cfg.relief_share > 0.0 && !prefills.is_empty() {
            self.relieve(ctx, &mut decodes, &mut prefills);
        }

        // The tightest SLO among the decodes sets the expected iteration length (a fresh prompt's
        // chunks do not shorten it); looser decodes with enough slack may skip this iteration.
        if self.cfg.mode == AccelGenMode::Edf {
            if let Some(tight) = decodes.iter().min_by_key(|c| c.slo_us) {
                let (bin, est) = (tight.bin, self.cfg.limit_us(tight.slo_us) as f64);
                let horizon = self.cfg.skip_horizon * est;
                let now = now as i64;
                decodes.retain(|c| {
                    let skip = c.paced || (c.bin > bin && (c.deadline - now) as f64 >= horizon);
                    if skip {
                        deferred.push(*c);
                    }
                    !skip
                });
            }
        }

        let mut lim = self.initial_limit();
        for c in &decodes {
            lim = self.tighten(lim, c.slo_us);
        }
        for c in &decodes {
            if self.full(ctx) {
                break;
            }
            if !ctx.can_decode(c.id) {
                continue; // preempted as a victim
            }
            if self.cfg.mode == AccelGenMode::Edf && !ctx.batch().is_empty() {
                let mut s = ctx.batch().shape;
                s.add_decode(ctx.request(c.id).kv_tokens + 1);
                if !Self::fits(ctx, &s, lim) {
                    continue;
                }
            }
            self.decode_or_preempt(ctx, c.id);
        }

        self.prefills = prefills;
        self.fill_prefills(ctx, &mut lim);

        for c in &deferred {
            if self.full(ctx) {
                break;
            }
            if !ctx.can_decode(c.id) {
                continue;
            }
            let l = self.tighten(lim, c.slo_us);
            let mut s = ctx.batch().shape;
            s.add_decode(ctx.request(c.id).kv_tokens + 1);
            if Self::fits(ctx, &s, l) && ctx.add_decode(c.id).is_ok() {
                lim = l;
            }
        }
        self.decodes = decodes;
        self.deferred = deferred;
        if ctx.batch().is_empty() {
            self.sort_rest();
        }
        self.ensure_progress(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_bins_and_classes() {
        let c = AccelGenConfig::default();
        assert_eq!(c.bin(50.0), 5);
        assert_eq!(c.bin(100.0), 6);
        assert_eq!(c.bin(250.0), 7);
        assert!(c.bin(60.0) == c.bin(50.0));
        let c = AccelGenConfig {
            slo_classes_ms: vec![60.0, 150.0],
            ..Default::default()
        };
        assert_eq!(
            (c.bin(50.0), c.bin(60.0), c.bin(100.0), c.bin(250.0)),
            (0, 0, 1, 2)
        );
    }

    #[test]
    fn victim_order_is_loosest_then_longest_then_cheapest() {
        let k = |bin, remaining_output, restore: i64, serial| VictimKey {
            first_time: true,
            bin,
            remaining_output,
            neg_restore_us: -restore,
            serial,
        };
        // Looser SLO wins over everything else.
        assert!(k(7, 1, 9_000, 0) > k(5, 500, 10, 9));
        // Same bin: more work left wins.
        assert!(k(7, 400, 9_000, 0) > k(7, 300, 10, 9));
        // Same bin and work: cheaper recompute wins.
        assert!(k(7, 400, 10, 0) > k(7, 400, 9_000, 9));
        // Full tie: the later arrival.
        assert!(k(7, 400, 10, 9) > k(7, 400, 10, 0));
        // A request preempted before is spared while another can go.
        let again = VictimKey {
            first_time: false,
            ..k(9, 900, 10, 9)
        };
        assert!(k(0, 1, 9_000, 0) > again);
    }

    #[test]
    fn a_request_that_missed_one_gap_is_paced_to_its_mean_slo() {
        let ms = |v: u64| v * 1_000;
        let spec = crate::request::RequestSpec {
            arrival_us: 0,
            prompt_tokens: 100,
            max_output_tokens: 100,
            slo: crate::request::Slo {
                ttft_ms: Some(1_000.0),
                tbt_ms: Some(50.0),
            },
            priority: 0,
            class: None,
        };
        // First token on time at 500 ms, 10 tokens by 900 ms, one gap over 50 ms.
        let mut r = RequestState::new(spec, 0);
        (r.first_token_us, r.last_token_us, r.generated, r.tbt_misses) =
            (Some(ms(500)), Some(ms(900)), 10, 1);
        let paced = AccelGen::new(&AccelGenConfig {
            mean_pace: true,
            ..AccelGenConfig::default()
        });
        let due = |p: &AccelGen, r: &RequestState, now| p.cand(RequestId(0), r, now, true).deadline;
        // Mean after the 11th token within 50 ms: due at 500 + 10 × 50 ms, not at 900 + 1,000.
        assert_eq!(due(&paced, &r, ms(900)), ms(1_000) as i64);
        assert!(paced.cand(RequestId(0), &r, ms(900), true).paced);
        let best_effort = AccelGen::new(&AccelGenConfig::default());
        assert_eq!(due(&best_effort, &r, ms(900)), ms(1_900) as i64);
        // Far ahead of its pace (200 tokens by 900 ms): never due later than best effort.
        r.generated = 200;
        assert_eq!(due(&paced, &r, ms(900)), ms(1_900) as i64);
        r.generated = 10;
        // More than one gap behind its pace, or its first token late: best effort.
        assert_eq!(due(&paced, &r, ms(1_051)), ms(1_900) as i64);
        r.first_token_us = Some(ms(1_200));
        assert_eq!(due(&paced, &r, ms(900)), ms(1_900) as i64);
        // Not missed yet: its own SLO from the last token.
        (r.first_token_us, r.tbt_misses) = (Some(ms(500)), 0);
        assert_eq!(due(&paced, &r, ms(900)), ms(950) as i64);
    }

    #[test]
    fn margin_shrinks_the_limit() {
        let c = AccelGenConfig::default();
        assert_eq!(c.limit_us(50_000), 45_000);
    }

    #[test]
    fn config_parses_with_defaults() {
        let c: AccelGenConfig = serde_json_like();
        assert_eq!(c.mode, AccelGenMode::Admission);
        assert_eq!(c.margin, 0.1);
    }

    fn serde_json_like() -> AccelGenConfig {
        // No serde format crate in the core: build through the derived Deserialize on a value.
        use serde::de::{value::MapDeserializer, IntoDeserializer};
        let map = vec![("mode", "admission")];
        let de: MapDeserializer<'_, _, serde::de::value::Error> =
            MapDeserializer::new(map.into_iter().map(|(k, v)| (k, v.into_deserializer())));
        AccelGenConfig::deserialize(de).unwrap()
    }
}
