//! Constrained decoding for `response_format` (`json_object`, `json_schema`) through
//! [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! Why llguidance rather than outlines-core: it is the grammar engine behind Microsoft's
//! guidance and the structured-output backend of vLLM, SGLang and llama.cpp; it computes each
//! token mask lazily from an Earley parser over a token trie (tens of microseconds per token
//! for JSON), so a schema costs nothing up front, while outlines-core compiles a schema's regex
//! into a token index over the whole vocabulary before the first token (seconds for large
//! schemas) and cannot express `json_object` (arbitrary nesting is not regular). Built with
//! default features off it pulls no HTTP, tokenizer or Python code (build cost in
//! `docs/server.md`).
//!
//! One [`ConstraintFactory`] per server (it indexes the vocabulary once, on first use); one
//! [`Constraint`] per choice, which travels with the request's sampler to the worker: the
//! worker masks the logits with it before sampling and commits the sampled token.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::api::OutputFormat;
use crate::text::TextModel;

/// Errors of constrained decoding.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The vocabulary cannot be indexed (e.g. no end-of-sequence token).
    #[error("cannot index the vocabulary for constrained decoding: {0}")]
    Vocabulary(String),
    /// The schema is not one llguidance accepts.
    #[error("invalid response_format schema: {0}")]
    Schema(String),
    /// The grammar could not go on (should not happen with masked sampling).
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

/// Builds a [`Constraint`] per request from the model's vocabulary.
pub struct ConstraintFactory {
    factory: ParserFactory,
}

impl ConstraintFactory {
    /// Indexes the vocabulary: token bytes as the tokenizer has them, control tokens marked so
    /// that no grammar text can match them; the end-of-sequence token ends the output.
    pub fn new(text: &TextModel) -> Result<Self, ConstraintError> {
        let n = text.vocab_size();
        let eos = text
            .eos_id()
            .ok_or_else(|| ConstraintError::Vocabulary("the model has no EOS token".into()))?;
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let b = text.token_bytes(id);
                if text.is_special(id) {
                    let mut w = Vec::with_capacity(b.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(b);
                    w
                } else {
                    b.to_vec()
                }
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(n as u32, eos), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh constraint for `format`. JSON is generated compactly (`{"a": 1, "b": [2, 3]}`:
    /// no free whitespace, which small models otherwise repeat until `max_tokens`).
    pub fn build(&self, format: &OutputFormat) -> Result<Box<Constraint>, ConstraintError> {
        let mut schema = match format {
            OutputFormat::JsonObject => json!({"type": "object"}),
            OutputFormat::JsonSchema(s) => s.clone(),
        };
        if let Value::Object(m) = &mut schema {
            m.entry("x-guidance")
                .or_insert_with(|| json!({"whitespace_flexible": false}));
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Schema(first_line(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Schema(first_line(&e)));
        }
        // A schema no value satisfies (say, a `$ref` cycle with nothing else) compiles but
        // allows no first token: found here, at validation, it is the client's error (400)
        // instead of a failure of an admitted request.
        let mut probe = matcher.clone();
        match probe.compute_mask_or_eos() {
            Ok(mask) if mask.as_slice().iter().any(|&w| w != 0) => {}
            Ok(_) => return Err(ConstraintError::Schema(UNSATISFIABLE.into())),
            Err(e) => {
                tracing::debug!(error = %e, "schema allows no first token");
                return Err(ConstraintError::Schema(UNSATISFIABLE.into()));
            }
        }
        Ok(Box::new(Constraint { matcher }))
    }
}

/// What a client hears of a schema that admits no value.
const UNSATISFIABLE: &str = "the JSON schema admits no value (for example a $ref that only \
    refers to itself), so nothing can be generated; check its $ref, enum and type constraints";

/// The first line of an error of the grammar engine, at most 200 characters: its later lines
/// dump the parser's internal state, which is no use to a client.
fn first_line(e: &str) -> String {
    e.lines().next().unwrap_or("").chars().take(200).collect()
}

/// A failure of the grammar while decoding, as a client reads it; the details go to the log.
fn matcher_error(e: impl std::fmt::Display) -> ConstraintError {
    tracing::warn!(error = %e, "constrained decoding stopped");
    ConstraintError::Matcher(
        "the response_format schema allows no continuation of the output here".into(),
    )
}

/// The grammar state of one choice.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Sets the logits of tokens the grammar forbids next to `-inf`.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        mask_with_bits(&self.allowed()?, logits);
        Ok(())
    }

    /// The tokens the grammar allows next, as a bitset (bit `t % 32` of word `t / 32`): what a
    /// remote worker needs to sample while the grammar itself stays with the front.
    pub fn allowed(&mut self) -> Result<Vec<u32>, ConstraintError> {
        let mask = self.matcher.compute_mask_or_eos().map_err(matcher_error)?;
        Ok(mask.as_slice().to_vec())
    }

    /// Advances past `token`; returns whether the output is complete (nothing may follow).
    pub fn commit(&mut self, token: u32) -> Result<bool, ConstraintError> {
        self.matcher.consume_token(token).map_err(matcher_error)?;
        Ok(self.matcher.is_stopped())
    }
}

/// Sets the logits of tokens not in `bits` (see [`Constraint::allowed`]) to `-inf`.
pub fn mask_with_bits(bits: &[u32], logits: &mut [f32]) {
    for (id, l) in logits.iter_mut().enumerate() {
        let allowed = bits.get(id / 32).is_some_and(|w| w & (1 << (id % 32)) != 0);
        if !allowed {
            *l = f32::NEG_INFINITY;
        }
    }
}
