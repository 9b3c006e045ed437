//! Workloads shared by `accellm engine-bench`, `accellm calibrate` and the criterion bench.
//!
//! Timing does not depend on what the KV cache holds, so decode workloads at a given context
//! length run their decode steps at positions `context..` over KV blocks that were not prefilled
//! (this keeps a batch-64 measurement from spending minutes on prefill). Prefill workloads run
//! real prompts from position 0.

use std::time::Instant;

use crate::batch::{ForwardBatch, PhaseTimings, SeqInput};
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::Model;

/// Deterministic pseudo-random token ids inside the vocabulary.
pub fn synthetic_tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab.max(1) as u64) as u32
        })
        .collect()
}

/// Blocks needed for `tokens` tokens.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// Times one iteration: a prefill of `len` tokens from position 0.
pub fn time_prefill(model: &Model, pool: &KvPool, len: usize) -> Result<PhaseTimings> {
    let bs = pool.block_size();
    let seq = SeqInput {
        tokens: synthetic_tokens(model.config().vocab, len, len as u64),
        start_pos: 0,
        block_table: (0..blocks_for(len, bs) as u32).collect(),
        want_logits: true,
    };
    let batch = ForwardBatch { seqs: vec![seq] };
    let t = Instant::now();
    let out = model.forward(pool, &batch)?;
    Ok(PhaseTimings {
        total_ms: t.elapsed().as_secs_f64() * 1e3,
        ..out.timings
    })
}

/// A batch of `batch` single-token decodes, each at position `context` of its own sequence,
/// with blocks for `steps` decode steps (positions `context..context + steps`).
pub fn decode_batch(
    model: &Model,
    pool: &KvPool,
    batch: usize,
    context: usize,
    steps: usize,
) -> ForwardBatch {
    let bs = pool.block_size();
    let per = blocks_for(context + steps.max(1), bs);
    ForwardBatch {
        seqs: (0..batch)
            .map(|i| SeqInput {
                tokens: synthetic_tokens(model.config().vocab, 1, i as u64 + 7),
                start_pos: context,
                block_table: ((i * per) as u32..((i + 1) * per) as u32).collect(),
                want_logits: true,
            })
            .collect(),
    }
}

/// Times `steps` decode iterations of `batch` sequences at context `context`..; returns
/// milliseconds per iteration (median).
pub fn time_decode(
    model: &Model,
    pool: &KvPool,
    batch: usize,
    context: usize,
    steps: usize,
) -> Result<PhaseTimings> {
    let mut b = decode_batch(model, pool, batch, context, steps);
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        let out = model.forward(pool, &b)?;
        times.push(PhaseTimings {
            total_ms: t.elapsed().as_secs_f64() * 1e3,
            ..out.timings
        });
        for (s, l) in b.seqs.iter_mut().zip(&out.logits) {
            s.start_pos += 1;
            if let Some(l) = l {
                s.tokens = vec![crate::sampling::argmax(l)];
            }
        }
    }
    Ok(median_timing(&mut times))
}

/// The iteration with the median total time (default if empty).
pub fn median_timing(xs: &mut [PhaseTimings]) -> PhaseTimings {
    if xs.is_empty() {
        return PhaseTimings::default();
    }
    xs.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    xs[xs.len() / 2]
}

/// CPU time consumed by the whole process so far, in milliseconds. Under a loaded machine the
/// CPU time of a one-thread run is a better estimate of its idle-machine wall time than the wall
/// time itself.
pub fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant libc knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Median of a slice (0 if empty).
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A pool large enough for `tokens` tokens.
pub fn pool_for(model: &Model, tokens: usize) -> Result<KvPool> {
    let bs = crate::kv::DEFAULT_BLOCK_SIZE;
    KvPool::new(model.config(), blocks_for(tokens, bs).max(1), bs)
}

pub use accellm_core::profile::least_squares;

/// Measures read bandwidth (GB/s) by summing a `mib`-MiB buffer on the current rayon pool;
/// the best of `reps` passes.
pub fn read_bandwidth_gbs(mib: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let n = mib * 1024 * 1024 / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0f32, |a, &b| a + b))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / secs / 1e9);
    }
    best
}
