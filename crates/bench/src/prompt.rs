//! Prompts of real English text with a requested token length.
//!
//! The text is the license texts shipped with the repository's traces (Creative Commons
//! Attribution 4.0, Apache-2.0, MIT), compiled into the binary, so prompts need no data
//! directory. Each prompt starts at a different word (chosen from the request index and the
//! seed) so that servers with prefix caching do not get identical prompts.
//!
//! Token counts come from a [`TokenCounter`]: a characters-per-token estimate by default, or an
//! exact tokenizer. With an exact counter, prompts are trimmed word by word to the target.
//!
//! Workloads with shared prefixes ([`accellm_workload::Workload::prefixes`]) get text per
//! segment instead ([`PromptBuilder::segments_text`]): a content stream is the corpus read from
//! a start word chosen by `splitmix64(stream)`, and token `k` of the stream sits at word
//! `round(k * words per token)`, so the text of a stream's first `n` tokens is a textual prefix
//! of its first `m > n`: requests sharing segments share text, and a server with prefix caching
//! can hit.

use accellm_workload::prefix::{truncate, Segment};
use accellm_workload::rng::splitmix64;

/// The corpus: license texts already in the repository (public licenses, redistributable).
const CORPUS: [&str; 3] = [
    include_str!("../../../data/traces/azure-llm-2023/LICENSE-CC-BY-4.0.txt"),
    include_str!("../../../data/traces/sharegpt-lengths/LICENSE.txt"),
    include_str!("../../../data/traces/arxiv-summarization-lengths/LICENSE.txt"),
];

/// Counts the tokens of a text.
pub trait TokenCounter: Send + Sync {
    /// Number of tokens `text` encodes to (without special tokens).
    fn count(&self, text: &str) -> usize;
    /// Whether counts are exact (a real tokenizer) rather than estimated.
    fn is_exact(&self) -> bool;
    /// A short description for reports.
    fn describe(&self) -> String;
}

/// Estimates tokens as characters divided by a constant.
#[derive(Debug, Clone, Copy)]
pub struct CharEstimate {
    /// Average characters per token (about 4 for English with BPE vocabularies).
    pub chars_per_token: f64,
}

impl TokenCounter for CharEstimate {
    fn count(&self, text: &str) -> usize {
        (text.chars().count() as f64 / self.chars_per_token).round() as usize
    }

    fn is_exact(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("estimate, {} chars/token", self.chars_per_token)
    }
}

/// Exact counts with the tokenizer stored in a GGUF model file (`accellm-tokenizer`).
pub struct GgufTokenCounter {
    tokenizer: accellm_tokenizer::Tokenizer,
    path: String,
}

impl GgufTokenCounter {
    /// Loads the tokenizer of a GGUF file.
    pub fn open(path: &std::path::Path) -> Result<Self, accellm_tokenizer::TokenizerError> {
        Ok(GgufTokenCounter {
            tokenizer: accellm_tokenizer::Tokenizer::from_gguf_file(path)?,
            path: path.display().to_string(),
        })
    }
}

impl TokenCounter for GgufTokenCounter {
    fn count(&self, text: &str) -> usize {
        match self.tokenizer.encode(text, false) {
            Ok(ids) => ids.len(),
            Err(e) => {
                tracing::warn!("tokenizer failed ({e}); estimating");
                text.len() / 4
            }
        }
    }

    fn is_exact(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("exact, tokenizer of {}", self.path)
    }
}

/// Builds prompts from the corpus.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    words: Vec<&'static str>,
    seed: u64,
}

impl PromptBuilder {
    /// A builder over the built-in corpus; `seed` picks the start words.
    pub fn new(seed: u64) -> Self {
        let words = CORPUS
            .iter()
            .flat_map(|t| t.split_whitespace())
            .map(|w| w.trim_start_matches('\u{feff}'))
            .filter(|w| w.chars().any(|c| c.is_alphanumeric()))
            .collect();
        PromptBuilder { words, seed }
    }

    /// Number of words in the corpus.
    pub fn corpus_words(&self) -> usize {
        self.words.len()
    }

    /// `n` words starting at word `start` (wrapping around the corpus), space-separated.
    fn text(&self, start: usize, n: usize) -> String {
        let mut s = String::with_capacity(n * 7);
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(self.words[(start + i) % self.words.len()]);
        }
        s
    }

    /// Corpus words per token of `counter` (measured on the first 4,000 words), to place
    /// segment boundaries in [`PromptBuilder::segments_text`].
    pub fn words_per_token(&self, counter: &dyn TokenCounter) -> f64 {
        let n = self.words.len().min(4000);
        let tokens = counter.count(&self.text(0, n)).max(1);
        n as f64 / tokens as f64
    }

    /// The text of the first `tokens` tokens that `segments` describe, at `words_per_token`
    /// ([`PromptBuilder::words_per_token`]); at least one word.
    pub fn segments_text(&self, segments: &[Segment], tokens: u32, words_per_token: f64) -> String {
        let word = |t: u32| (f64::from(t) * words_per_token).round() as usize;
        let mut out = String::new();
        for s in truncate(segments, tokens) {
            let mut state = s.stream;
            let start = (splitmix64(&mut state) % self.words.len() as u64) as usize;
            let (a, b) = (word(s.offset), word(s.offset.saturating_add(s.tokens)));
            if b > a {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&self.text(start + a, b - a));
            }
        }
        if out.is_empty() {
            let mut state = segments.first().map_or(self.seed, |s| s.stream);
            let start = (splitmix64(&mut state) % self.words.len() as u64) as usize;
            out = self.text(start, 1);
        }
        out
    }

    /// A prompt of about `tokens` tokens for request `index`: exactly `tokens` (or the closest
    /// count below, never above, unless one word is already too long) with an exact counter.
    pub fn build(&self, index: usize, tokens: u32, counter: &dyn TokenCounter) -> String {
        let mut state = self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let start = (splitmix64(&mut state) % self.words.len() as u64) as usize;
        let target = tokens.max(1) as usize;
        // Start from the corpus's own words-per-token ratio, then correct.
        let mut n = (target as f64 * 0.75).ceil().max(1.0) as usize;
        let mut counted = counter.count(&self.text(start, n));
        for _ in 0..4 {
            if counted == target || counted == 0 {
                break;
            }
            let next = ((n as f64 * target as f64 / counted as f64).round() as usize).max(1);
            if next == n {
                break;
            }
            n = next;
            counted = counter.count(&self.text(start, n));
        }
        if counter.is_exact() {
            while counted > target && n > 1 {
                n -= 1;
                counted = counter.count(&self.text(start, n));
            }
            while counted < target {
                let c = counter.count(&self.text(start, n + 1));
                if c > target {
                    break;
                }
                n += 1;
                counted = c;
            }
        }
        self.text(start, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exact counter for tests: one token per word.
    struct Words;
    impl TokenCounter for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
        fn is_exact(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "words".into()
        }
    }

    #[test]
    fn estimate_gets_close_and_exact_hits_target() {
        let b = PromptBuilder::new(1);
        assert!(b.corpus_words() > 3000);
        let est = CharEstimate {
            chars_per_token: 4.0,
        };
        for &t in &[1u32, 17, 256, 5000, 20_000] {
            let p = b.build(3, t, &est);
            let c = est.count(&p) as f64;
            assert!(
                (c - t as f64).abs() <= (t as f64 * 0.02).max(3.0),
                "{t}: {c}"
            );
            assert_eq!(Words.count(&b.build(3, t, &Words)), t as usize);
        }
    }

    /// With the real SmolLM2 tokenizer (skipped when the model file is not downloaded, unless
    /// `ACCELLM_REQUIRE_MODEL` is set).
    #[test]
    fn gguf_tokenizer_hits_exact_lengths() {
        let path = accellm_tokenizer::default_model_path();
        if !path.is_file() {
            assert!(
                std::env::var_os("ACCELLM_REQUIRE_MODEL").is_none(),
                "ACCELLM_REQUIRE_MODEL is set but {} is missing",
                path.display()
            );
            eprintln!("skipping: {} not present", path.display());
            return;
        }
        let counter = GgufTokenCounter::open(&path).unwrap();
        let b = PromptBuilder::new(0);
        for &(i, t) in &[(0usize, 1u32), (1, 64), (2, 1000), (3, 4000)] {
            let p = b.build(i, t, &counter);
            assert_eq!(counter.count(&p), t as usize, "request {i}, {t} tokens");
        }
    }

    fn seg(stream: u64, offset: u32, tokens: u32) -> Segment {
        Segment {
            stream,
            offset,
            tokens,
        }
    }

    #[test]
    fn segment_text_is_prefix_closed_and_content_addressed() {
        let b = PromptBuilder::new(0);
        let est = CharEstimate {
            chars_per_token: 4.0,
        };
        let wpt = b.words_per_token(&est);
        assert!((0.5..1.2).contains(&wpt), "{wpt}");
        let short = b.segments_text(&[seg(9, 0, 300)], 300, wpt);
        let long = b.segments_text(&[seg(9, 0, 100), seg(9, 100, 900)], 1000, wpt);
        assert!(long.starts_with(&short) && long.len() > short.len());
        assert!(long[short.len()..].starts_with(' '));
        // Tokens by the same estimate land near the target.
        let n = est.count(&long) as f64;
        assert!((n - 1000.0).abs() < 100.0, "{n}");
        // Only the first `tokens` tokens of segments that go on over the output.
        assert_eq!(b.segments_text(&[seg(9, 0, 5000)], 300, wpt), short);
        // Another stream, other text; a shared first segment, a shared start.
        let other = b.segments_text(&[seg(10, 0, 300)], 300, wpt);
        assert_ne!(other, short);
        let a = b.segments_text(&[seg(1, 0, 200), seg(2, 0, 50)], 250, wpt);
        let c = b.segments_text(&[seg(1, 0, 200), seg(3, 0, 50)], 250, wpt);
        let head = b.segments_text(&[seg(1, 0, 200)], 200, wpt);
        assert!(a.starts_with(&head) && c.starts_with(&head) && a != c);
        assert!(!b.segments_text(&[seg(1, 0, 1)], 0, wpt).is_empty());
    }

    #[test]
    fn prompts_differ_by_index_and_are_deterministic() {
        let b = PromptBuilder::new(7);
        let est = CharEstimate {
            chars_per_token: 4.0,
        };
        assert_eq!(b.build(1, 100, &est), b.build(1, 100, &est));
        assert_ne!(b.build(1, 100, &est), b.build(2, 100, &est));
        assert!(!b.build(1, 100, &est).contains("=="));
    }
}
