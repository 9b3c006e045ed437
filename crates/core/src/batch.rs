//! One iteration's batch plan: which requests run, and what each does.

use serde::{Deserialize, Serialize};

use crate::{cost::IterationShape, request::RequestId, InstanceId};

/// What one request does in an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// Prefill `len` prompt tokens after `start` already-cached ones; `last` when this chunk
    /// completes the prompt, so it yields the first output token. For a request already decoding
    /// it is a *recompute chunk*: positions `start..start + len` of its prompt and output (the last
    /// one its latest token) whose KV the instance lacks after a move; it yields the next token.
    Prefill {
        /// Tokens already in the cache.
        start: u32,
        /// Tokens in this chunk.
        len: u32,
        /// Completes the prompt.
        last: bool,
    },
    /// Feed the latest token and produce the next one; attention spans `context` tokens
    /// (the new one included).
    Decode {
        /// Tokens attended to.
        context: u32,
    },
}

/// One request's part in an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The request.
    pub request: RequestId,
    /// What it does.
    pub work: Work,
    /// Instance to which this entry's new KV is streamed layer by layer as it is computed
    /// (a replica or the destination of a disaggregated prefill), if any.
    pub copy_to: Option<InstanceId>,
    /// With `copy_to`: the first token position the copy carries (before this entry's own new
    /// tokens when the destination lacks earlier ones, e.g. a prompt prefix found in the source's
    /// cache but not in the destination's).
    pub copy_from: u32,
}

impl Entry {
    /// Positions after this entry's work: its new tokens end there.
    pub fn end(&self) -> u32 {
        match self.work {
            Work::Prefill { start, len, .. } => start + len,
            Work::Decode { context } => context,
        }
    }

    /// Tokens its copy carries (0 without `copy_to`).
    pub fn copy_tokens(&self) -> u32 {
        if self.copy_to.is_some() {
            self.end().saturating_sub(self.copy_from)
        } else {
            0
        }
    }
}

/// Which kinds of work an iteration holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchKind {
    /// Nothing scheduled.
    Empty,
    /// Only prefill chunks.
    Prefill,
    /// Only decodes.
    Decode,
    /// Both (chunked prefill piggy-backed on decodes, or vLLM-style mixed steps).
    Mixed,
}

impl BatchKind {
    /// Which kinds of work an iteration of shape `shape` holds.
    pub fn of(shape: &IterationShape) -> Self {
        match (shape.prefill_seqs > 0, shape.decode_seqs > 0) {
            (false, false) => BatchKind::Empty,
            (true, false) => BatchKind::Prefill,
            (false, true) => BatchKind::Decode,
            (true, true) => BatchKind::Mixed,
        }
    }
}

/// An iteration's plan: the entries and their aggregated shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The scheduled work, decodes and prefill chunks in scheduling order.
    pub entries: Vec<Entry>,
    /// Aggregated shape, for cost predictions.
    pub shape: IterationShape,
}

impl Batch {
    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.shape = IterationShape::default();
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Which kinds of work the batch holds.
    pub fn kind(&self) -> BatchKind {
        BatchKind::of(&self.shape)
    }

    /// Bytes streamed to `to` by this iteration's copies, given the KV size of one token.
    pub fn copy_bytes_to(&self, to: InstanceId, kv_bytes_per_token: u64) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.copy_to == Some(to))
            .map(|e| e.copy_tokens() as u64)
            .sum::<u64>()
            * kv_bytes_per_token
    }
}
