//! Turning logits into tokens: greedy, temperature, top-k, top-p, seeded RNG; and stop strings.

/// How one request wants its tokens chosen and when it ends.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` (or below) means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of top tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` means no limit.
    pub top_k: usize,
    /// Seed of the request's random generator; `None` picks one from the OS.
    pub seed: Option<u64>,
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
    /// Generation stops before any of these strings (they are not emitted).
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            ..Self::default()
        }
    }
}

/// Why a sequence stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
}

/// SplitMix64: tiny, fast, and good enough for sampling.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence token chooser with its own deterministic random generator. Serialisable, so a
/// remote worker can sample and hand it back with its random state advanced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    generated: usize,
}

/// Candidates kept before a full sort is needed for top-p.
const TOP_P_PRESELECT: usize = 256;

impl Sampler {
    /// Creates a sampler; the same seed always yields the same tokens for the same logits.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0);
            h.finish()
        });
        Self {
            params,
            rng: Rng(seed),
            generated: 0,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Number of tokens sampled so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Chooses the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        // Saturating: a sampler deserialised from a peer may carry any count.
        self.generated = self.generated.saturating_add(1);
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 || logits.len() <= 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Candidates as (token, unnormalised probability).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .collect();
        let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_prob);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let total: f32 = cand.iter().map(|c| c.1).sum();
            let target = p.top_p.max(0.0) * total;
            // Usually the nucleus is among the few most likely tokens: sort those only, and fall
            // back to a full sort when they do not reach the target mass.
            if cand.len() > TOP_P_PRESELECT {
                let mut head = cand.clone();
                head.select_nth_unstable_by(TOP_P_PRESELECT - 1, by_prob);
                head.truncate(TOP_P_PRESELECT);
                if head.iter().map(|c| c.1).sum::<f32>() >= target {
                    cand = head;
                }
            }
            cand.sort_unstable_by(by_prob);
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for &(tok, w) in &cand {
            r -= w as f64;
            if r < 0.0 {
                return tok;
            }
        }
        cand.last().map_or(0, |c| c.0)
    }

    /// Whether generation must end after `token` was produced: an end-of-sequence token (unless
    /// `ignore_eos`) or the `max_tokens` limit.
    pub fn finish(&self, token: u32, eos: &[u32]) -> Option<FinishReason> {
        if !self.params.ignore_eos && eos.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated >= self.params.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// Log-probability of one chosen token and of the most likely alternatives, from the raw model
/// distribution (log-softmax of the logits before temperature, top-k/top-p, masks: vLLM's
/// default `raw_logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The `n` most likely tokens with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// Log-softmax of `logits` at `token`, with the `top` most likely tokens (ties: lower id
    /// first). Sums in `f64`; a token outside `logits` gets `-inf`.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_z = max as f64 + sum.ln();
        let lp = |l: f32| (l as f64 - log_z) as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() == top && l <= best[top - 1].1 {
                    continue;
                }
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
        Self {
            token,
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |&l| lp(l)),
            top: best.into_iter().map(|(t, l)| (t, lp(l))).collect(),
        }
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStatus {
    /// No stop string yet: emit this text (possibly empty: text that might start a stop string
    /// is held back until it is decided).
    Continue(String),
    /// A stop string appeared: emit this last text (what preceded the stop string) and end.
    Stopped(String),
}

/// Finds stop strings in streamed text, holding back only what could still become one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopStatus {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopStatus::Continue(std::mem::take(&mut self.pending));
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopStatus::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopStatus::Continue(out)
    }

    /// Text held back so far; emit it when the sequence ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(4));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_respects_top_k() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 5,
            seed: Some(42),
            ..SamplingParams::default()
        };
        let mut top5: Vec<usize> = (0..1000).collect();
        top5.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        top5.truncate(5);
        let mut a = Sampler::new(params.clone());
        let mut b = Sampler::new(params);
        let xs: Vec<u32> = (0..50).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..50).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&t| top5.contains(&(t as usize))));
        assert!(xs.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Token 0 holds ~88% of the mass: top_p 0.5 must always choose it.
        let mut logits = vec![0.0f32; 5000];
        logits[0] = 12.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: Some(1),
            ..SamplingParams::default()
        });
        assert!((0..100).all(|_| s.sample(&logits) == 0));
        // With top_p 1.0 other tokens appear.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            ..SamplingParams::default()
        });
        assert!((0..200).any(|_| s.sample(&logits) != 0));
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_top_tokens() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let lp = TokenLogprob::of(&logits, 4, 3);
        assert_eq!(lp.token, 4);
        assert!((lp.logprob as f64 - (0.5 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 0]);
        assert!((lp.top[2].1 as f64 - (1.0 - z.ln())).abs() < 1e-6);
        assert!(TokenLogprob::of(&logits, 0, 0).top.is_empty());
        assert_eq!(TokenLogprob::of(&logits, 9, 1).logprob, f32::NEG_INFINITY);
        // Large logits do not overflow.
        let big = [1000.0f32, 1000.0];
        assert!((TokenLogprob::of(&big, 0, 0).logprob - (-std::f32::consts::LN_2)).abs() < 1e-6);
    }

    #[test]
    fn finish_on_eos_and_length() {
        let mut s = Sampler::new(SamplingParams::greedy(2));
        let t = s.sample(&[1.0, 0.0]);
        assert_eq!(s.finish(t, &[1]), None);
        assert_eq!(s.finish(1, &[1]), Some(FinishReason::Stop));
        s.sample(&[1.0, 0.0]);
        assert_eq!(s.finish(0, &[1]), Some(FinishReason::Length));
    }

    #[test]
    fn stop_matcher_holds_back_partial_matches() {
        let mut m = StopMatcher::new(&["</end>".to_string(), "\n\n".to_string()]);
        assert_eq!(m.push("Hello </"), StopStatus::Continue("Hello ".into()));
        assert_eq!(m.push("e"), StopStatus::Continue(String::new()));
        assert_eq!(m.push("x"), StopStatus::Continue("</ex".into()));
        assert_eq!(m.push(" a\n"), StopStatus::Continue(" a".into()));
        assert_eq!(m.push("\nrest"), StopStatus::Stopped(String::new()));
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("ab</en"), StopStatus::Continue("ab".into()));
        assert_eq!(m.push("d>tail"), StopStatus::Stopped(String::new()));
        let mut m = StopMatcher::new(&["xyz".to_string()]);
        assert_eq!(m.push("a x"), StopStatus::Continue("a ".into()));
        assert_eq!(m.flush(), "x");
    }
}
