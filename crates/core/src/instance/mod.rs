//! Instance policies: which requests run in an instance's next iteration.
//!
//! A policy implements [`InstancePolicy`] and builds the batch through [`ScheduleCtx`], which does
//! the KV bookkeeping (block reservation, replica eviction, preemption) so that every policy
//! accounts memory the same way. A policy and its knobs are chosen with [`InstanceConfig`].

pub mod accelgen;
pub mod sarathi;
pub mod vllm;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{
    batch::{Batch, Entry, Work},
    cost::CostModel,
    kv::{BlockManager, KvError, Ownership},
    policy::{self, ConfigError, PolicyConfig, UnknownPolicy},
    request::{Phase, RequestId, RequestState},
    scheduler::Requests,
    InstanceId, TimeUs,
};

/// What kinds of work the cluster policy lets an instance run in its next iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhaseConstraint {
    /// Prefill and decode, as the instance policy likes.
    Any,
    /// Prefill chunks only.
    PrefillOnly,
    /// Decodes only.
    DecodeOnly,
    /// Nothing: the instance idles.
    Idle,
}

impl PhaseConstraint {
    /// Whether prefill chunks may run.
    pub fn allows_prefill(self) -> bool {
        matches!(self, Self::Any | Self::PrefillOnly)
    }

    /// Whether decodes may run.
    pub fn allows_decode(self) -> bool {
        matches!(self, Self::Any | Self::DecodeOnly)
    }
}

/// Busy-time accounting of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Iterations run.
    pub iterations: u64,
    /// Time spent in prefill-only iterations (µs).
    pub prefill_us: TimeUs,
    /// Time spent in decode-only iterations (µs).
    pub decode_us: TimeUs,
    /// Time spent in mixed iterations (µs).
    pub mixed_us: TimeUs,
    /// Requests preempted here (KV dropped for recompute).
    pub preemptions: u64,
    /// Time-weighted sum of KV blocks in use (block·µs), for mean utilisation.
    pub kv_block_us: f64,
    /// Highest number of KV blocks in use at once.
    pub kv_peak_blocks: u32,
}

impl InstanceStats {
    /// Total busy time.
    pub fn busy_us(&self) -> TimeUs {
        self.prefill_us + self.decode_us + self.mixed_us
    }
}

/// One instance as the core sees it: queues, KV blocks and the iteration in flight.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its index.
    pub id: InstanceId,
    /// Its KV blocks.
    pub kv: BlockManager,
    /// Requests whose prompt is not fully prefilled, in service order.
    pub waiting: VecDeque<RequestId>,
    /// Requests decoding here (their primary KV lives here).
    pub running: Vec<RequestId>,
    /// The iteration in flight, or the last one.
    pub batch: Batch,
    /// Whether an iteration is in flight.
    pub busy: bool,
    /// When the iteration in flight started.
    pub started_us: TimeUs,
    /// Sequence number of the iteration in flight (or the last one).
    pub iteration: u64,
    /// The constraint the cluster policy set for the current iteration.
    pub constraint: PhaseConstraint,
    /// Accounting.
    pub stats: InstanceStats,
    /// Last time KV usage was integrated into the stats.
    pub kv_since_us: TimeUs,
    /// Outstanding work of the requests whose primary is here (Σ [`RequestState::load`]).
    pub load_tokens: u64,
    /// The partner whose cores the iteration in flight also runs on
    /// ([`crate::SchedulerConfig::share_idle_cores`]).
    pub borrowed: Option<InstanceId>,
    /// The partner whose iteration in flight runs on this instance's cores; this instance starts
    /// nothing until it ends.
    pub lent_to: Option<InstanceId>,
}

impl Instance {
    /// An idle instance with `kv` blocks.
    pub fn new(id: InstanceId, kv: BlockManager) -> Self {
        Self {
            id,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            batch: Batch::default(),
            busy: false,
            started_us: 0,
            iteration: 0,
            constraint: PhaseConstraint::Any,
            stats: InstanceStats::default(),
            kv_since_us: 0,
            load_tokens: 0,
            borrowed: None,
            lent_to: None,
        }
    }

    /// Predicted time of the iteration in flight, on the cores it runs on.
    pub fn iteration_us(&self, cost: &dyn CostModel) -> TimeUs {
        let width = if self.borrowed.is_some() { 2 } else { 1 };
        cost.iteration_us_on(&self.batch.shape, width)
    }

    /// Integrates KV usage up to `now` into the stats.
    pub fn account_kv(&mut self, now: TimeUs) {
        let used = self.kv.num_blocks() - self.kv.free_blocks();
        // Often called again at the same instant; adding nothing is skipped.
        if now > self.kv_since_us {
            self.stats.kv_block_us += used as f64 * (now - self.kv_since_us) as f64;
        }
        self.stats.kv_peak_blocks = self.stats.kv_peak_blocks.max(used);
        self.kv_since_us = now;
    }
}

/// What an instance policy sees and does while it builds one batch.
pub struct ScheduleCtx<'a> {
    pub(crate) now: TimeUs,
    pub(crate) inst: &'a mut Instance,
    pub(crate) requests: &'a mut Requests,
    pub(crate) cost: &'a dyn CostModel,
    pub(crate) constraint: PhaseConstraint,
    pub(crate) evicted: Vec<RequestId>,
    /// Requests preempted while building this batch.
    pub(crate) preempted: u32,
    /// Prompt tokens looked up in the prefix cache by prefills that started in this batch.
    pub(crate) prefix_query_tokens: u64,
    /// Of those, tokens found cached.
    pub(crate) prefix_hit_tokens: u64,
}

impl<'a> ScheduleCtx<'a> {
    /// The current time.
    pub fn now(&self) -> TimeUs {
        self.now
    }

    /// The instance being scheduled.
    pub fn instance(&self) -> InstanceId {
        self.inst.id
    }

    /// What the cluster policy allows in this iteration.
    pub fn constraint(&self) -> PhaseConstraint {
        self.constraint
    }

    /// Requests waiting for (more) prefill here, in service order.
    pub fn waiting(&self) -> &VecDeque<RequestId> {
        &self.inst.waiting
    }

    /// Requests decoding here.
    pub fn running(&self) -> &[RequestId] {
        &self.inst.running
    }

    /// A live request.
    pub fn request(&self, id: RequestId) -> &RequestState {
        self.requests.get(id)
    }

    /// The KV blocks of this instance.
    pub fn kv(&self) -> &BlockManager {
        &self.inst.kv
    }

    /// The batch built so far.
    pub fn batch(&self) -> &Batch {
        &self.inst.batch
    }

    /// The cost model, for predictions.
    pub fn cost(&self) -> &dyn CostModel {
        self.cost
    }

    /// Whether `id` is already in the batch.
    pub fn is_scheduled(&self, id: RequestId) -> bool {
        self.requests.get(id).in_flight
    }

    /// Whether `id` can decode here now: decoding, primary here, not moving, not scheduled yet.
    pub fn can_decode(&self, id: RequestId) -> bool {
        let r = self.requests.get(id);
        r.phase == Phase::Decoding && r.instance == self.inst.id && !r.in_flight
    }

    /// Adds one decode step of `id` to the batch, reserving the KV block it may need (evicting
    /// replicas if necessary). If its cache here lacks its latest `k` tokens
    /// ([`RequestState::recompute_tokens`]), the step is a recompute chunk instead: a prefill
    /// chunk of `k + 1` tokens over the positions it lacks plus its latest token, whose last row
    /// yields the next token (what a real engine runs to rebuild the KV), costed as such.
    #[inline]
    pub fn add_decode(&mut self, id: RequestId) -> Result<(), KvError> {
        debug_assert!(self.can_decode(id));
        let r = self.requests.get_mut(id);
        let (context, missing) = (r.kv_tokens + 1, r.recompute_tokens.min(r.kv_tokens));
        // Most decode steps fit in the last block held: only the LRU clock moves, as in
        // `BlockManager::reserve` when nothing is needed.
        let kv = &mut self.inst.kv;
        if context as u64 <= kv.held(id) as u64 * kv.block_size() as u64 {
            kv.touch(id);
            r.in_flight = true;
        } else {
            self.reserve_blocks(id, context)?;
            self.requests.get_mut(id).in_flight = true;
        }
        let batch = &mut self.inst.batch;
        let work = if missing > 0 {
            let (start, len) = (context - 1 - missing, missing + 1);
            batch.shape.add_prefill(start, len, true);
            Work::Prefill {
                start,
                len,
                last: true,
            }
        } else {
            batch.shape.add_decode(context);
            Work::Decode { context }
        };
        batch.entries.push(Entry {
            request: id,
            work,
            copy_to: None,
            copy_from: 0,
        });
        Ok(())
    }

    /// Adds a prefill chunk of up to `len` tokens of `id` to the batch (clamped to what remains).
    /// The first chunk reserves KV blocks for the whole prompt (as vLLM does), so a started
    /// prefill never waits for memory. Returns the chunk length scheduled.
    pub fn add_prefill(&mut self, id: RequestId, len: u32) -> Result<u32, KvError> {
        let r = self.requests.get(id);
        debug_assert!(r.phase == Phase::Waiting && !r.in_flight);
        if r.prefilled == 0 && r.block_keys.is_some() && self.inst.kv.held(id) == 0 {
            self.start_after_cached_prefix(id);
        }
        let r = self.requests.get(id);
        let start = r.prefilled;
        let len = len.min(r.remaining_prefill());
        if len == 0 {
            return Ok(0);
        }
        let (last, target) = (start + len == r.prefill_target, r.prefill_target);
        self.reserve_blocks(id, target)?;
        self.inst.batch.shape.add_prefill(start, len, last);
        self.push(id, Work::Prefill { start, len, last });
        Ok(len)
    }

    /// A prefill that starts: its table begins with the blocks of its prompt's prefix already
    /// cached here, and it is prefilled that far. At least the last prompt token is computed (its
    /// logits give the first output token), so the block holding it is never shared.
    fn start_after_cached_prefix(&mut self, id: RequestId) {
        let r = self.requests.get_mut(id);
        let Some(keys) = r.block_keys.as_deref() else {
            return;
        };
        let kv = &mut self.inst.kv;
        let bs = kv.block_size();
        let max = (r.prefill_target - 1) / bs;
        let hit = kv.attach_prefix(id, Ownership::Primary, keys, max) * bs;
        self.prefix_query_tokens += r.prefill_target as u64;
        self.prefix_hit_tokens += hit as u64;
        r.prefilled = hit;
        r.kv_tokens = hit;
        r.cached_tokens = hit;
        r.published = hit / bs;
    }

    /// Blocks `id` would need beyond what it holds to cache `tokens` tokens here.
    pub fn extra_blocks(&self, id: RequestId, tokens: u32) -> u32 {
        self.inst.kv.extra_for(id, tokens)
    }

    fn reserve_blocks(&mut self, id: RequestId, tokens: u32) -> Result<(), KvError> {
        let before = self.evicted.len();
        self.inst
            .kv
            .reserve(id, Ownership::Primary, tokens, &mut self.evicted)?;
        self.requests.replicas_evicted(&self.evicted[before..]);
        Ok(())
    }

    #[inline]
    fn push(&mut self, id: RequestId, work: Work) {
        self.requests.get_mut(id).in_flight = true;
        self.inst.batch.entries.push(Entry {
            request: id,
            work,
            copy_to: None,
            copy_from: 0,
        });
    }

    /// Preempts `id` by recompute: drops its KV here (and its replica), and queues it ahead of
    /// every waiting request that has not started (behind started prefills, which hold their
    /// blocks and can always finish) to prefill its prompt and generated tokens again.
    pub fn preempt(&mut self, id: RequestId) {
        debug_assert!(!self.requests.get(id).in_flight);
        self.inst.kv.release(id);
        self.inst.running.retain(|&r| r != id);
        self.inst.waiting.retain(|&r| r != id);
        let reqs = &*self.requests;
        let pos = self
            .inst
            .waiting
            .iter()
            .position(|&w| reqs.get(w).prefilled == 0)
            .unwrap_or(self.inst.waiting.len());
        self.inst.waiting.insert(pos, id);
        self.inst.stats.preemptions += 1;
        self.preempted += 1;
        let r = self.requests.get_mut(id);
        self.inst.load_tokens -= r.load();
        r.reset_for_recompute();
        r.preemptions += 1;
        self.inst.load_tokens += r.load();
    }
}

/// Decides which requests run in an instance's next iteration.
pub trait InstancePolicy: Send {
    /// The policy's name, as given on the command line.
    fn name(&self) -> &'static str;

    /// Builds the next batch through `ctx`; an empty batch means the instance idles.
    fn schedule(&mut self, ctx: &mut ScheduleCtx<'_>);
}

/// Which instance policy runs, with its knobs ([`crate::policy`]): in TOML `instance = "vllm"`,
/// or `[instance.sarathi]` with knobs under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceConfig {
    /// `vllm`.
    Vllm(vllm::VllmConfig),
    /// `sarathi`.
    Sarathi(sarathi::SarathiConfig),
    /// `accelgen`.
    Accelgen(accelgen::AccelGenConfig),
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self::Vllm(Default::default())
    }
}

/// Names of the instance policies.
pub const NAMES: &[&str] = &["vllm", "sarathi", "accelgen"];

impl PolicyConfig for InstanceConfig {
    const LEVEL: &'static str = "instance";
    const NAMES: &'static [&'static str] = NAMES;

    fn name(&self) -> &'static str {
        match self {
            Self::Vllm(_) => "vllm",
            Self::Sarathi(_) => "sarathi",
            Self::Accelgen(_) => "accelgen",
        }
    }

    fn named(name: &str) -> Result<Self, UnknownPolicy> {
        match name {
            "vllm" => Ok(Self::Vllm(Default::default())),
            "sarathi" => Ok(Self::Sarathi(Default::default())),
            "accelgen" => Ok(Self::Accelgen(Default::default())),
            _ => Err(policy::unknown::<Self>(name)),
        }
    }

    fn knobs<'de, D: serde::Deserializer<'de>>(name: &str, de: D) -> Result<Self, D::Error> {
        match name {
            "vllm" => Deserialize::deserialize(de).map(Self::Vllm),
            "sarathi" => Deserialize::deserialize(de).map(Self::Sarathi),
            "accelgen" => Deserialize::deserialize(de).map(Self::Accelgen),
            _ => Err(serde::de::Error::custom(policy::unknown::<Self>(name))),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl<'de> Deserialize<'de> for InstanceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        policy::deserialize(de)
    }
}

impl std::str::FromStr for InstanceConfig {
    type Err = UnknownPolicy;

    /// The policy called `s`, with default knobs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::named(s)
    }
}

impl InstanceConfig {
    /// The policy object of one instance.
    pub fn build(&self) -> Box<dyn InstancePolicy> {
        match self {
            Self::Vllm(c) => Box::new(vllm::Vllm::new(c)),
            Self::Sarathi(c) => Box::new(sarathi::Sarathi::new(c)),
            Self::Accelgen(c) => Box::new(accelgen::AccelGen::new(c)),
        }
    }
}

/// Schedules every running request's decode step in order, preempting the most recently
/// queued running requests (recompute) when KV runs out. Shared by policies that always decode
/// everything (vLLM, Sarathi). `scratch` is reused to avoid allocation.
pub fn decode_all_or_preempt(
    ctx: &mut ScheduleCtx<'_>,
    max_seqs: u32,
    scratch: &mut Vec<RequestId>,
) {
    scratch.clear();
    scratch.reserve(ctx.running().len());
    for &r in ctx.running() {
        if ctx.can_decode(r) {
            scratch.push(r);
        }
    }
    let mut end = scratch.len();
    let mut i = 0;
    while i < end {
        if ctx.batch().entries.len() as u32 >= max_seqs {
            break;
        }
        let id = scratch[i];
        match ctx.add_decode(id) {
            Ok(()) => i += 1,
            Err(_) => {
                // Preempt from the back (latest in service order) and retry; if that is the
                // request itself, it is preempted.
                end -= 1;
                let victim = scratch[end];
                ctx.preempt(victim);
                if victim == id {
                    break;
                }
            }
        }
    }
}
