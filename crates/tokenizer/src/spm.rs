//! SentencePiece-style tokenization of `llama` GGUF vocabularies (TinyLlama, Llama 2, Mistral
//! v0.1, ...), with the behaviour of llama.cpp's SPM tokenizer:
//!
//! 1. special tokens written in the text (control, user-defined, unknown) are cut out first
//!    ([`crate::partition`]);
//! 2. each remaining piece of text gets one leading space if `add_space_prefix` is on and it
//!    starts the text or follows a special token, and every space becomes `▁` (U+2581);
//! 3. the piece is split into UTF-8 characters, then the adjacent pair whose concatenation is a
//!    vocabulary token with the highest score is merged, again and again (ties: leftmost pair),
//!    using a priority queue over the pairs;
//! 4. every resulting symbol is its token, or, if it is not in the vocabulary, the byte tokens
//!    `<0xXX>` of its UTF-8 bytes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Result, TokenizerError};
use crate::partition::{Fragment, SpecialMatcher};

/// GGUF token types (`tokenizer.ggml.token_type`).
pub(crate) const TYPE_NORMAL: u64 = 1;
pub(crate) const TYPE_UNKNOWN: u64 = 2;
pub(crate) const TYPE_CONTROL: u64 = 3;
pub(crate) const TYPE_USER_DEFINED: u64 = 4;
pub(crate) const TYPE_BYTE: u64 = 6;

/// The escaped space of SentencePiece vocabularies.
const SPACE: char = '\u{2581}';

/// A fast multiply-rotate hash (FxHash's) for the piece lookups of the merge loop. The table is
/// the model's fixed vocabulary, so user text cannot grow its collision chains.
#[derive(Debug, Default, Clone, Copy)]
struct PieceHasher(u64);

impl Hasher for PieceHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type PieceMap = HashMap<String, u32, BuildHasherDefault<PieceHasher>>;

/// The encoding side of a SentencePiece vocabulary.
#[derive(Debug)]
pub(crate) struct SpmModel {
    token_to_id: PieceMap,
    /// Byte length of the longest token: longer pairs need no lookup.
    max_token_len: usize,
    scores: Vec<f32>,
    /// Token of each byte for the byte fallback.
    byte_ids: [Option<u32>; 256],
    add_space_prefix: bool,
    specials: SpecialMatcher,
}

/// One symbol of the text being merged: a byte range of the normalised text, linked to its
/// neighbours by index (`NONE`: none). A merged-away symbol has `len == 0`. Indices and offsets
/// are `u32` to keep the symbols and the queue small.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

/// A candidate merge of two adjacent symbols.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    /// Byte length of the merged text, to detect stale entries.
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; on equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmModel {
    /// Builds the model. `types` has one GGUF token type per token, `scores` one score each.
    pub(crate) fn new(
        tokens: &[String],
        scores: &[f32],
        types: &[u64],
        add_space_prefix: bool,
        unk: Option<u32>,
    ) -> Result<Self> {
        if scores.len() < tokens.len() {
            return Err(TokenizerError::MissingKey(format!(
                "tokenizer.ggml.scores (has {} scores for {} tokens)",
                scores.len(),
                tokens.len()
            )));
        }
        let mut token_to_id = PieceMap::with_capacity_and_hasher(tokens.len(), Default::default());
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.entry(t.clone()).or_insert(i as u32);
        }
        // -0.0 and 0.0 must tie, as they do in llama.cpp; NaN sorts last.
        let scores = scores[..tokens.len()]
            .iter()
            .map(|&s| if s.is_nan() { f32::MIN } else { s + 0.0 })
            .collect();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = token_to_id
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or_else(|| {
                    char::from_u32(b as u32)
                        .filter(|_| b < 0x80)
                        .and_then(|c| token_to_id.get(c.encode_utf8(&mut [0; 4]) as &str))
                        .copied()
                })
                .or(unk);
        }
        let specials = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                matches!(
                    types.get(*i),
                    Some(&(TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
                )
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Ok(Self {
            max_token_len: tokens.iter().map(String::len).max().unwrap_or(0),
            token_to_id,
            scores,
            byte_ids,
            add_space_prefix,
            specials: SpecialMatcher::new(specials),
        })
    }

    /// Whether text starting a sequence or following a special token gets a leading space.
    pub(crate) fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Appends the ids of `text` to `out` (special tokens in the text become their ids).
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut work = Work::default();
        let mut after_special = true;
        for frag in self.specials.partition(text) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(start, end) => {
                    work.normalise(&text[start..end], self.add_space_prefix && after_special);
                    self.encode_normalised(&mut work, out)?;
                    after_special = false;
                }
            }
        }
        Ok(())
    }

    fn try_add_bigram(&self, work: &mut Work, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (work.symbols[left as usize], work.symbols[right as usize]);
        let size = l.len + r.len;
        if size as usize > self.max_token_len {
            return;
        }
        let text = &work.text[l.start as usize..(l.start + size) as usize];
        if let Some(&id) = self.token_to_id.get(text) {
            work.queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }

    fn encode_normalised(&self, work: &mut Work, out: &mut Vec<u32>) -> Result<()> {
        work.symbols.clear();
        work.queue.clear();
        if work.text.len() >= NONE as usize {
            return Err(TokenizerError::Unsupported(
                "a text of 4 GiB or more between special tokens".into(),
            ));
        }
        for (start, c) in work.text.char_indices() {
            let i = work.symbols.len() as u32;
            work.symbols.push(Symbol {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: i.checked_sub(1).unwrap_or(NONE),
                next: i + 1,
            });
        }
        let Some(last) = work.symbols.last_mut() else {
            return Ok(());
        };
        last.next = NONE;
        for i in 1..work.symbols.len() as u32 {
            self.try_add_bigram(work, i - 1, i);
        }
        while let Some(b) = work.queue.pop() {
            let (l, r) = (
                work.symbols[b.left as usize],
                work.symbols[b.right as usize],
            );
            // Skip pairs made stale by an earlier merge.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            work.symbols[b.left as usize].len = b.size;
            work.symbols[b.left as usize].next = r.next;
            work.symbols[b.right as usize].len = 0;
            if r.next != NONE {
                work.symbols[r.next as usize].prev = b.left;
            }
            self.try_add_bigram(work, l.prev, b.left);
            self.try_add_bigram(work, b.left, r.next);
        }
        // Every merged symbol is a vocabulary token; single characters may not be.
        let mut i = 0;
        while i != NONE {
            let s = work.symbols[i as usize];
            let piece = &work.text[s.start as usize..(s.start + s.len) as usize];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        out.push(
                            self.byte_ids[byte as usize]
                                .ok_or(TokenizerError::MissingByteToken(byte))?,
                        );
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }
}

/// Buffers reused across the pieces of one text.
#[derive(Debug, Default)]
struct Work {
    text: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Work {
    /// Stores `raw` with spaces escaped as `▁`, after one `▁` if `prefix`.
    fn normalise(&mut self, raw: &str, prefix: bool) {
        self.text.clear();
        if prefix {
            self.text.push(SPACE);
        }
        let mut parts = raw.split(' ');
        if let Some(first) = parts.next() {
            self.text.push_str(first);
        }
        for part in parts {
            self.text.push(SPACE);
            self.text.push_str(part);
        }
    }
}

/// The bytes a token stands for in decoded text: `▁` becomes a space, byte tokens their byte,
/// special tokens their text; unused and undefined tokens nothing.
pub(crate) fn piece_bytes(text: &str, ty: u64) -> Vec<u8> {
    match ty {
        TYPE_NORMAL => text.replace(SPACE, " ").into_bytes(),
        TYPE_BYTE => parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
        TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN => text.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// The byte of a `<0xXX>` token.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pieces: &[(&str, f32)], prefix: bool) -> (SpmModel, Vec<String>) {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
        let mut scores = vec![0.0; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
            scores.push(0.0);
        }
        for (p, s) in pieces {
            tokens.push((*p).into());
            types.push(TYPE_NORMAL);
            scores.push(*s);
        }
        let m = SpmModel::new(&tokens, &scores, &types, prefix, Some(0)).unwrap();
        (m, tokens)
    }

    fn pieces(m: &SpmModel, tokens: &[String], text: &str) -> Vec<String> {
        let mut ids = Vec::new();
        m.encode(text, &mut ids).unwrap();
        ids.iter().map(|&i| tokens[i as usize].clone()).collect()
    }

    #[test]
    fn highest_score_merges_first() {
        let (m, t) = model(
            &[
                ("▁", -10.0),
                ("a", -10.0),
                ("b", -10.0),
                ("c", -10.0),
                ("ab", -2.0),
                ("bc", -1.0),
                ("▁a", -5.0),
            ],
            true,
        );
        // "bc" (score -1) beats "ab" (-2), then "▁a" joins.
        assert_eq!(pieces(&m, &t, "abc"), ["▁a", "bc"]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let (m, t) = model(&[("a", -10.0), ("aa", -1.0)], false);
        assert_eq!(pieces(&m, &t, "aaa"), ["aa", "a"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let (m, t) = model(&[("▁", -1.0), ("x", -1.0)], true);
        assert_eq!(
            pieces(&m, &t, "xé"),
            ["▁", "x", "<0xC3>", "<0xA9>"],
            "é is two UTF-8 bytes"
        );
    }

    #[test]
    fn space_prefix_after_special_tokens_only_when_enabled() {
        let (m, t) = model(&[("▁", -1.0), ("x", -1.0), ("▁x", -0.5)], true);
        assert_eq!(pieces(&m, &t, "x<s>x x"), ["▁x", "<s>", "▁x", "▁x"]);
        let (m, t) = model(&[("▁", -1.0), ("x", -1.0), ("▁x", -0.5)], false);
        assert_eq!(pieces(&m, &t, "x<s>x x"), ["x", "<s>", "x", "▁x"]);
        assert!(pieces(&m, &t, "").is_empty());
    }

    #[test]
    fn piece_bytes_unescape_and_bytes() {
        assert_eq!(piece_bytes("▁Hello", TYPE_NORMAL), b" Hello");
        assert_eq!(piece_bytes("<0x0A>", TYPE_BYTE), b"\n");
        assert_eq!(piece_bytes("<0xE2>", TYPE_BYTE), [0xE2]);
        assert_eq!(piece_bytes("</s>", TYPE_CONTROL), b"</s>");
        assert!(piece_bytes("<unused0>", 5).is_empty());
    }

    #[test]
    fn short_scores_are_an_error() {
        let tokens = vec!["a".to_string(), "b".to_string()];
        let err = SpmModel::new(&tokens, &[0.0], &[1, 1], true, None).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.scores"), "{err}");
    }
}
