//! Requests, their service-level objectives and their progress through prefill and decode.

use serde::{Deserialize, Serialize};

use crate::{
    kv::{BlockKey, BlockKeys},
    scheduler::Recovery,
    InstanceId, TimeUs,
};

/// Identifier of a request inside the core: a dense slot index, reused after the request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u32);

impl RequestId {
    /// The slot index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Per-request service-level objectives. `tbt_ms` is the iteration-time (time between tokens) SLO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time-to-first-token objective in milliseconds.
    pub ttft_ms: Option<f64>,
    /// Time-between-tokens objective in milliseconds (every gap between consecutive tokens).
    pub tbt_ms: Option<f64>,
}

/// A request as submitted to the core.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// When it arrived.
    pub arrival_us: TimeUs,
    /// Prompt length in tokens (at least 1).
    pub prompt_tokens: u32,
    /// Output tokens to generate at most; the request finishes when it has produced this many
    /// (the executor may end it earlier, e.g. on an end-of-sequence token).
    pub max_output_tokens: u32,
    /// Service-level objectives.
    pub slo: Slo,
    /// Priority, vLLM's meaning: lower values are served first. Default 0.
    pub priority: i32,
    /// Workload class index (for per-class reports), if any.
    pub class: Option<u16>,
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Queued on an instance; prompt not (fully) prefilled yet.
    Waiting,
    /// Has produced its first token and is generating.
    Decoding,
    /// Its KV is being moved to another instance; it cannot run until the move lands.
    Moving,
    /// Done (finished, cancelled or rejected); the slot is about to be reused.
    Done,
}

/// The core's view of one live request.
#[derive(Debug, Clone)]
pub struct RequestState {
    /// As submitted.
    pub spec: RequestSpec,
    /// Current phase.
    pub phase: Phase,
    /// The instance that owns the primary KV and runs this request.
    pub instance: InstanceId,
    /// Prompt tokens (plus, after a preemption, previously generated tokens) to prefill in total.
    pub prefill_target: u32,
    /// Of `prefill_target`, how many are already in the KV cache.
    pub prefilled: u32,
    /// Output tokens generated so far.
    pub generated: u32,
    /// Tokens whose KV is in the primary cache (prefilled tokens plus fed-back generated tokens).
    pub kv_tokens: u32,
    /// The instance holding a replica of this request's KV, if any.
    pub replica_on: Option<InstanceId>,
    /// How many tokens of KV the replica holds (it is current when this equals [`Self::context`]).
    pub replica_tokens: u32,
    /// Latest tokens of its context whose KV its primary cache lacks: it moved onto a replica that
    /// was behind, and its next step recomputes them (a recompute chunk) instead of receiving
    /// them over the link. 0 otherwise.
    pub recompute_tokens: u32,
    /// When its first token was produced.
    pub first_token_us: Option<TimeUs>,
    /// When its latest token was produced.
    pub last_token_us: Option<TimeUs>,
    /// How many times it was preempted (its KV dropped to be recomputed).
    pub preemptions: u32,
    /// Whether it is scheduled in the instance's running iteration.
    pub in_flight: bool,
    /// Layer-wise copies of its KV issued but not yet landed.
    pub copies_pending: u32,
    /// The instance it is moving to, while [`Phase::Moving`].
    pub moving_to: Option<InstanceId>,
    /// Cancelled while in flight or moving; ends when that work completes.
    pub cancelled: bool,
    /// Unique submission number (slots are reused; serials are not).
    pub serial: u64,
    /// Longest gap between consecutive tokens so far.
    pub max_tbt_us: TimeUs,
    /// Gaps between consecutive tokens that exceeded the TBT SLO.
    pub tbt_misses: u32,
    /// Content keys of the full blocks of its token stream, as far as the executor knows it
    /// (the prompt, then generated blocks as they fill: `Scheduler::extend_block_keys`; the
    /// simulator's workloads give the output's content up front), for prefix caching. `None`:
    /// not cached.
    pub block_keys: Option<BlockKeys>,
    /// Of [`Self::prefilled`], the tokens found in the prefix cache of its instance.
    pub cached_tokens: u32,
    /// Leading blocks of its primary table already given their keys.
    pub published: u32,
    /// When its instance was declared failed and how it recovers, until its next token.
    pub recovering: Option<(TimeUs, Recovery)>,
}

impl RequestState {
    /// A fresh request queued on `instance`.
    pub fn new(spec: RequestSpec, instance: InstanceId) -> Self {
        Self {
            spec,
            phase: Phase::Waiting,
            instance,
            prefill_target: spec.prompt_tokens.max(1),
            prefilled: 0,
            generated: 0,
            kv_tokens: 0,
            replica_on: None,
            replica_tokens: 0,
            recompute_tokens: 0,
            first_token_us: None,
            last_token_us: None,
            preemptions: 0,
            in_flight: false,
            copies_pending: 0,
            moving_to: None,
            cancelled: false,
            serial: 0,
            max_tbt_us: 0,
            tbt_misses: 0,
            block_keys: None,
            cached_tokens: 0,
            published: 0,
            recovering: None,
        }
    }

    /// Tokens whose KV is in this request's primary cache.
    pub fn context(&self) -> u32 {
        self.kv_tokens
    }

    /// Outstanding work in tokens: prompt still to prefill plus KV context held. Constant during
    /// prefill, one more per decode step.
    pub fn load(&self) -> u64 {
        (self.prefill_target - self.prefilled + self.kv_tokens) as u64
    }

    /// Prompt tokens still to prefill.
    pub fn remaining_prefill(&self) -> u32 {
        self.prefill_target - self.prefilled
    }

    /// Output tokens still to generate (upper bound).
    pub fn remaining_output(&self) -> u32 {
        self.spec.max_output_tokens.saturating_sub(self.generated)
    }

    /// Whether it has already missed its strict SLO: a token gap over its TBT SLO, or a first
    /// token after its TTFT SLO. Such a request can no longer count towards goodput.
    pub fn slo_missed(&self) -> bool {
        self.tbt_misses > 0
            || self.first_token_us.is_some_and(|t| {
                self.spec
                    .slo
                    .ttft_ms
                    .is_some_and(|s| t.saturating_sub(self.spec.arrival_us) > crate::ms_to_us(s))
            })
    }

    /// Drops all its KV progress so that it prefills its prompt and the tokens it generated
    /// again (after a preemption or the loss of its instance).
    pub fn reset_for_recompute(&mut self) {
        self.prefill_target = self.spec.prompt_tokens.max(1) + self.generated;
        self.prefilled = 0;
        self.kv_tokens = 0;
        self.cached_tokens = 0;
        self.published = 0;
        self.recompute_tokens = 0;
        self.phase = Phase::Waiting;
    }

    /// Its block keys (empty when it has none).
    pub fn keys(&self) -> &[BlockKey] {
        self.block_keys.as_deref().unwrap_or(&[])
    }

    /// Forgets its replica (the one way a request stops holding one; its blocks there are the
    /// caller's to release). Returns where it was.
    pub fn forget_replica(&mut self) -> Option<InstanceId> {
        self.replica_tokens = 0;
        self.replica_on.take()
    }

    /// Whether the replica holds all of this request's KV.
    pub fn replica_current(&self) -> bool {
        self.replica_on.is_some() && self.replica_tokens >= self.context()
    }
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// It generated its maximum number of tokens.
    Length,
    /// The executor stopped it (end-of-sequence token or stop string).
    Stop,
    /// The client cancelled it.
    Cancelled,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Prompt plus output can never fit in any instance's KV cache.
    TooLong,
    /// The waiting queue is full.
    QueueFull,
}
