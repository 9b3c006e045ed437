//! The run plan: one iteration as the core hands it to an executor.
//!
//! A [`RunPlan`] is the whole boundary between the core and whatever runs its decisions (vLLM's
//! `SchedulerOutput`): per entry the request, its token range, whether it samples and its block
//! table; per layer-wise copy the destination, the token range and the block spans. It is built
//! once, in the core, when the iteration is scheduled; an executor needs nothing else of the core
//! to carry it out. The simulator reads the shape, the prediction and the copies' token counts;
//! the server also reads the block ids ([`crate::scheduler::Scheduler::set_block_plans`]).

use serde::{Deserialize, Serialize};

use crate::{
    batch::{BatchKind, Work},
    cost::{CostModel, IterationShape},
    kv::BlockId,
    request::RequestId,
    InstanceId, TimeUs,
};

/// One request's part of a [`RunPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// The request.
    pub request: RequestId,
    /// What it does (as the instance policy scheduled it).
    pub work: Work,
    /// First token position fed.
    pub start: u32,
    /// Positions `start..end` are fed; their KV is written.
    pub end: u32,
    /// Whether the entry's last position samples a token (a prompt's last chunk, a decode, a
    /// recompute chunk ending in the latest token).
    pub sample: bool,
    /// `blocks[at..at + len]` of the plan is this entry's block table.
    blocks_at: u32,
    blocks_len: u32,
}

impl PlanEntry {
    /// Tokens fed.
    pub fn tokens(&self) -> u32 {
        self.end - self.start
    }
}

/// Slots `slot_start..slot_end` of block `src_block` on the source go to the same slots of block
/// `dst_block` on the destination (a position has the same slot in every table of one block
/// size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpan {
    /// Block on the source instance.
    pub src_block: BlockId,
    /// Block on the destination instance.
    pub dst_block: BlockId,
    /// First slot.
    pub slot_start: u32,
    /// One past the last slot.
    pub slot_end: u32,
}

impl BlockSpan {
    /// The spans copying positions `from..end` between two tables of blocks of `block_size`
    /// tokens, appended to `out`. Positions either table has no block for are left out (the core
    /// reserves both tables before it plans a copy, so that does not happen).
    pub fn for_positions(
        src: &[BlockId],
        dst: &[BlockId],
        from: u32,
        end: u32,
        block_size: u32,
        out: &mut Vec<BlockSpan>,
    ) {
        let have = src.len().min(dst.len()) as u32 * block_size;
        debug_assert!(
            end <= have,
            "copy of positions {from}..{end} beyond the tables"
        );
        let end = end.min(have);
        let mut p = from;
        while p < end {
            let b = p / block_size;
            let stop = end.min((b + 1) * block_size);
            out.push(BlockSpan {
                src_block: src[b as usize],
                dst_block: dst[b as usize],
                slot_start: p - b * block_size,
                slot_end: stop - b * block_size,
            });
            p = stop;
        }
    }

    /// Token slots covered.
    pub fn slots(&self) -> u32 {
        self.slot_end - self.slot_start
    }
}

/// One request's KV streamed layer by layer to another instance while the iteration computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCopy {
    /// Destination instance.
    pub to: InstanceId,
    /// Whose KV.
    pub request: RequestId,
    /// First position copied: the entry's own new tokens start at or after it (a replica that
    /// lacks earlier ones, e.g. a prefix cached on the source only, receives them too).
    pub from: u32,
    /// One past the last position copied (the entry's end).
    pub end: u32,
    spans_at: u32,
    spans_len: u32,
}

impl PlanCopy {
    /// Tokens copied.
    pub fn tokens(&self) -> u32 {
        self.end - self.from
    }
}

/// One iteration on one instance: everything an executor needs to run it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// Where.
    pub instance: InstanceId,
    /// The iteration's sequence number on that instance; [`crate::scheduler::Scheduler::copy_done`]
    /// names it.
    pub iteration: u64,
    /// The idle partner whose cores this iteration borrows, if any.
    pub borrowed: Option<InstanceId>,
    /// Aggregated shape, for cost predictions and logs.
    pub shape: IterationShape,
    /// The core's prediction of its duration, on the cores it runs on.
    pub predicted_us: TimeUs,
    /// The entries, in batch order.
    pub entries: Vec<PlanEntry>,
    /// The layer-wise copies, in entry order.
    pub copies: Vec<PlanCopy>,
    /// Whether block ids and spans are filled in.
    pub with_blocks: bool,
    blocks: Vec<BlockId>,
    spans: Vec<BlockSpan>,
}

impl RunPlan {
    /// Empties the plan for reuse, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.copies.clear();
        self.blocks.clear();
        self.spans.clear();
    }

    /// Adds an entry whose block table is `table` (ignored without block ids).
    pub(crate) fn push_entry(&mut self, request: RequestId, work: Work, table: &[BlockId]) {
        let (start, end, sample) = match work {
            Work::Prefill { start, len, last } => (start, start + len, last),
            Work::Decode { context } => (context - 1, context, true),
        };
        let blocks_at = self.blocks.len() as u32;
        if self.with_blocks {
            self.blocks.extend_from_slice(table);
        }
        self.entries.push(PlanEntry {
            request,
            work,
            start,
            end,
            sample,
            blocks_at,
            blocks_len: self.blocks.len() as u32 - blocks_at,
        });
    }

    /// Adds a copy of `request`'s positions `from..end` between tables `src` and `dst` (block
    /// spans only with block ids).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_copy(
        &mut self,
        to: InstanceId,
        request: RequestId,
        from: u32,
        end: u32,
        src: &[BlockId],
        dst: &[BlockId],
        block_size: u32,
    ) {
        let spans_at = self.spans.len() as u32;
        if self.with_blocks {
            BlockSpan::for_positions(src, dst, from, end, block_size, &mut self.spans);
        }
        self.copies.push(PlanCopy {
            to,
            request,
            from,
            end,
            spans_at,
            spans_len: self.spans.len() as u32 - spans_at,
        });
    }

    /// `e`'s block table on [`Self::instance`] (empty without block ids).
    pub fn blocks(&self, e: &PlanEntry) -> &[BlockId] {
        &self.blocks[e.blocks_at as usize..(e.blocks_at + e.blocks_len) as usize]
    }

    /// `c`'s block spans (empty without block ids).
    pub fn spans(&self, c: &PlanCopy) -> &[BlockSpan] {
        &self.spans[c.spans_at as usize..(c.spans_at + c.spans_len) as usize]
    }

    /// Which kinds of work it holds.
    pub fn kind(&self) -> BatchKind {
        BatchKind::of(&self.shape)
    }

    /// Its duration predicted by `cost` (another model than the core's, e.g. measured hardware).
    pub fn iteration_us(&self, cost: &dyn CostModel) -> TimeUs {
        let width = if self.borrowed.is_some() { 2 } else { 1 };
        cost.iteration_us_on(&self.shape, width)
    }

    /// The copies' destinations, each once, in order of first appearance.
    pub fn destinations(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.copies
            .iter()
            .enumerate()
            .filter(|&(k, c)| !self.copies[..k].iter().any(|o| o.to == c.to))
            .map(|(_, c)| c.to)
    }

    /// Tokens copied to `to`.
    pub fn copy_tokens_to(&self, to: InstanceId) -> u64 {
        self.copies
            .iter()
            .filter(|c| c.to == to)
            .map(|c| c.tokens() as u64)
            .sum()
    }
}
