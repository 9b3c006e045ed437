//! What a request's tokens are, as far as prefix caching cares: a list of [`Segment`]s, runs of
//! tokens of named content streams.
//!
//! Two requests share a prefix exactly when their segment lists describe the same tokens from
//! the start: `[(s, 0, 100)]` and `[(s, 0, 60), (s, 60, 40)]` are the same 100 tokens, and both
//! share their first 60 with `[(s, 0, 60), (t, 0, 10)]`. The simulator turns segments into block
//! keys (`accellm_core::kv::run_keys`); the benchmark turns them into real text
//! (`accellm_bench::prompt`) so that a live server sees the same sharing.
//!
//! A request's segments cover its prompt and may go on over its output: a multi-turn
//! conversation's stream continues through the answer, so the next turn, which resends that
//! answer, matches those blocks too.

use serde::{Deserialize, Serialize};

use crate::rng::splitmix64;

/// `tokens` tokens of content stream `stream`, starting at position `offset` of that stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// Which content (a system prompt, a conversation, a Mooncake block hash, ...).
    pub stream: u64,
    /// First position within the stream.
    pub offset: u32,
    /// Number of tokens.
    pub tokens: u32,
}

impl Segment {
    /// The first `tokens` tokens of `stream`.
    pub fn start(stream: u64, tokens: u32) -> Self {
        Segment {
            stream,
            offset: 0,
            tokens,
        }
    }

    /// As `(stream, offset, tokens)`, the form `accellm_core::kv::run_keys` takes.
    pub fn run(&self) -> (u64, u32, u32) {
        (self.stream, self.offset, self.tokens)
    }
}

/// Tokens covered by `segments`.
pub fn covered(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.tokens)).sum()
}

/// The segments of the first `n` tokens of `segments` (all of them if they cover fewer).
pub fn truncate(segments: &[Segment], n: u32) -> Vec<Segment> {
    let mut left = n;
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        if left == 0 {
            break;
        }
        let take = s.tokens.min(left);
        out.push(Segment { tokens: take, ..*s });
        left -= take;
    }
    out
}

/// Kinds of generated content; each has its own stream ids.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StreamKind {
    /// A shared system prompt.
    System = 1,
    /// A conversation's history (user messages and answers).
    Conversation = 2,
    /// A request's own text after a shared prefix.
    Unique = 3,
    /// A few-shot task's instruction.
    Instruction = 4,
    /// A few-shot template's examples.
    Shots = 5,
    /// A block of a Mooncake trace, by its hash id.
    TraceBlock = 6,
}

/// A stream id for content `index` of `kind`, for workload part `part` under `seed`: equal
/// arguments give equal ids, different ones (practically) different ids.
pub(crate) fn stream_id(kind: StreamKind, seed: u64, part: u64, index: u64) -> u64 {
    let mut s = (kind as u64).wrapping_mul(0xA076_1D64_78BD_642F) ^ seed;
    let a = splitmix64(&mut s);
    let mut s = a ^ part.wrapping_mul(0xE703_7ED1_A0B4_28DB);
    let b = splitmix64(&mut s);
    let mut s = b ^ index;
    splitmix64(&mut s)
}

/// The stream of request `index`'s own content in a workload with seed `seed` (requests of
/// sources without prefix structure).
pub(crate) fn own_stream(seed: u64, index: u64) -> u64 {
    stream_id(StreamKind::Unique, seed, u64::MAX - 1, index)
}

/// Tokens per `hash_ids` entry of a Mooncake trace.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// The segments of a Mooncake row's prompt: one per hash id, [`MOONCAKE_BLOCK_TOKENS`] tokens
/// each (the last one the remainder); a prompt longer than its hash ids cover ends in a stream
/// of its own (`row` names it). Equal hash ids mean equal content, as in the trace.
pub fn mooncake_segments(hash_ids: &[u64], prompt_tokens: u32, row: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(hash_ids.len() + 1);
    let mut left = prompt_tokens;
    for &h in hash_ids {
        if left == 0 {
            break;
        }
        let take = left.min(MOONCAKE_BLOCK_TOKENS);
        out.push(Segment::start(
            stream_id(StreamKind::TraceBlock, 0, 0, h),
            take,
        ));
        left -= take;
    }
    if left > 0 {
        out.push(Segment::start(
            stream_id(StreamKind::Unique, 0, u64::MAX, row),
            left,
        ));
    }
    out
}

/// Tokens shared by the starts of `a` and `b` (the longest common prefix of the token streams
/// they describe).
pub fn common_prefix(a: &[Segment], b: &[Segment]) -> u64 {
    let (mut i, mut j) = (0, 0);
    let (mut ia, mut jb) = (0u32, 0u32); // tokens already consumed of a[i], b[j]
    let mut n = 0u64;
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        if x.stream != y.stream || x.offset + ia != y.offset + jb {
            break;
        }
        let take = (x.tokens - ia).min(y.tokens - jb);
        n += u64::from(take);
        ia += take;
        jb += take;
        if ia == x.tokens {
            i += 1;
            ia = 0;
        }
        if jb == y.tokens {
            j += 1;
            jb = 0;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(stream: u64, offset: u32, tokens: u32) -> Segment {
        Segment {
            stream,
            offset,
            tokens,
        }
    }

    #[test]
    fn truncate_and_cover() {
        let s = [seg(1, 0, 10), seg(2, 5, 10)];
        assert_eq!(covered(&s), 20);
        assert_eq!(truncate(&s, 12), vec![seg(1, 0, 10), seg(2, 5, 2)]);
        assert_eq!(truncate(&s, 10), vec![seg(1, 0, 10)]);
        assert_eq!(truncate(&s, 99), s.to_vec());
        assert!(truncate(&s, 0).is_empty());
    }

    #[test]
    fn common_prefix_follows_content_not_cuts() {
        let a = [seg(1, 0, 100)];
        let b = [seg(1, 0, 60), seg(1, 60, 40), seg(3, 0, 5)];
        assert_eq!(common_prefix(&a, &b), 100);
        assert_eq!(common_prefix(&a, &[seg(1, 0, 60), seg(2, 0, 40)]), 60);
        assert_eq!(common_prefix(&a, &[seg(1, 1, 60)]), 0);
        assert_eq!(common_prefix(&a, &[]), 0);
    }

    #[test]
    fn stream_ids_differ_by_every_argument() {
        let base = stream_id(StreamKind::System, 1, 0, 0);
        assert_eq!(base, stream_id(StreamKind::System, 1, 0, 0));
        for other in [
            stream_id(StreamKind::Conversation, 1, 0, 0),
            stream_id(StreamKind::System, 2, 0, 0),
            stream_id(StreamKind::System, 1, 1, 0),
            stream_id(StreamKind::System, 1, 0, 1),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn mooncake_blocks_and_remainder() {
        let s = mooncake_segments(&[7, 8, 9], 1100, 0);
        let tokens: Vec<u32> = s.iter().map(|s| s.tokens).collect();
        assert_eq!(tokens, vec![512, 512, 76]);
        // Same leading hash ids, same leading content.
        let t = mooncake_segments(&[7, 8, 10], 1536, 1);
        assert_eq!(common_prefix(&s, &t), 1024);
        // Hash ids covering less than the prompt: the rest is the row's own.
        let u = mooncake_segments(&[7], 600, 2);
        assert_eq!(covered(&u), 600);
        assert_eq!(common_prefix(&u, &s), 512);
        assert_eq!(common_prefix(&u, &mooncake_segments(&[7], 600, 3)), 512);
    }
}
