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
    /// Its KV is being moved to instance `to`, where its primary blocks are reserved (a replica
    /// there already holds them); it cannot run until the move lands.
    Moving {
        /// The destination.
        to: InstanceId,
    },
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
    /// Its replica, if any ([`Self::replica`]); changed only with the blocks that hold it.
    replica: Option<Replica>,
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
    /// Layer-wise copies of its KV issued but not yet landed ([`Self::copies_pending`]).
    copies_pending: u32,
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
            replica: None,
            recompute_tokens: 0,
            first_token_us: None,
            last_token_us: None,
            preemptions: 0,
            in_flight: false,
            copies_pending: 0,
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

    /// Its replica: a copy of its KV on another instance, kept current by layer-wise copies.
    pub fn replica(&self) -> Option<Replica> {
        self.replica
    }

    /// The instance holding its replica, if any.
    pub fn replica_on(&self) -> Option<InstanceId> {
        self.replica.map(|r| r.on)
    }

    /// Whether the replica holds all of this request's KV.
    pub fn replica_current(&self) -> bool {
        self.replica.is_some_and(|r| r.tokens >= self.context())
    }

    /// Layer-wise copies of its KV issued with iterations and not landed yet, wherever they go
    /// (also to a replica dropped since: a move waits for all of them).
    pub fn copies_pending(&self) -> u32 {
        self.copies_pending
    }

    /// The instance it is moving to, while [`Phase::Moving`].
    pub fn moving_to(&self) -> Option<InstanceId> {
        match self.phase {
            Phase::Moving { to } => Some(to),
            _ => None,
        }
    }

    /// Records a replica on `on` holding `tokens` tokens, whose blocks the caller has just
    /// reserved there.
    pub(crate) fn set_replica(&mut self, on: InstanceId, tokens: u32) {
        self.replica = Some(Replica { on, tokens });
    }

    /// A copy holding its first `tokens` tokens landed in its replica: returns how many the
    /// replica held before (`None`: it has no replica).
    pub(crate) fn replica_grew(&mut self, tokens: u32) -> Option<u32> {
        let r = self.replica.as_mut()?;
        let before = r.tokens;
        r.tokens = r.tokens.max(tokens);
        Some(before)
    }

    /// Forgets its replica and returns it. Its blocks are the caller's to release: use
    /// `State::drop_replica`, which does both, unless the blocks are already gone (evicted by the
    /// block manager, lost with a failed instance) or now hold its primary (a landed move).
    pub(crate) fn forget_replica(&mut self) -> Option<Replica> {
        self.replica.take()
    }

    /// A copy of its KV was issued.
    pub(crate) fn copy_issued(&mut self) {
        self.copies_pending += 1;
    }

    /// A copy of its KV landed or will never land.
    pub(crate) fn copy_settled(&mut self) {
        self.copies_pending = self.copies_pending.saturating_sub(1);
    }
}

/// A copy of a request's KV on an instance other than the one that runs it, which can take over
/// if the request moves there or its own instance fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The instance holding it.
    pub on: InstanceId,
    /// Tokens of KV it holds (it is current when this reaches the request's context).
    pub tokens: u32,
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
