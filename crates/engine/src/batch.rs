//! The input and output of one iteration (one forward pass).

/// One sequence's part of an iteration: a prefill chunk, or the single token of a decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqInput {
    /// Tokens to run, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Position of the first token (= number of tokens of this sequence already in the KV cache).
    pub start_pos: usize,
    /// Block ids of the sequence, in order; must cover positions up to the last token.
    pub block_table: Vec<u32>,
    /// Whether the iteration should return logits for the last token of this chunk.
    pub want_logits: bool,
}

/// Everything one iteration runs: all sequences' tokens are flattened into one activation matrix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardBatch {
    /// The sequences of the iteration.
    pub seqs: Vec<SeqInput>,
}

impl ForwardBatch {
    /// Total number of tokens in the iteration.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// Sum over tokens of the number of keys each token attends to (its position + 1).
    pub fn sum_context(&self) -> usize {
        self.seqs
            .iter()
            .map(|s| {
                let n = s.tokens.len();
                n * s.start_pos + n * (n + 1) / 2
            })
            .sum()
    }

    /// Number of sequences that want logits.
    pub fn logit_rows(&self) -> usize {
        self.seqs.iter().filter(|s| s.want_logits).count()
    }
}

/// The result of one iteration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwardOutput {
    /// One entry per sequence of the batch, in order: the logits of its last token if it asked
    /// for them (`vocab` floats), else `None`.
    pub logits: Vec<Option<Vec<f32>>>,
    /// Where the iteration's wall time went.
    pub timings: PhaseTimings,
}

/// Wall time of one iteration split by phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseTimings {
    /// Projection matmuls (QKV, output, gate/up, down) and the logits head.
    pub matmul_ms: f64,
    /// Storing K/V and attention over the paged cache.
    pub attention_ms: f64,
    /// The whole forward pass.
    pub total_ms: f64,
}
