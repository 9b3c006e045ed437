//! An iteration on more threads (an instance borrowing its idle partner's cores) computes exactly
//! what it computes on one: the parallel matmul paths (weight-row slices for small batches, split
//! activation rows for large ones, the blocks kernel's columns) take the same kernels on the same
//! rows, so seeded sampling and logprobs do not depend on whether a partner was idle.

mod support;

use accellm_engine::{ForwardBatch, KvPool, Model, SeqInput, Threads, WeightFormat};
use candle_core::quantized::GgmlDType;
use support::{rel_err, table, write_tiny_model, TinySpec};

const BS: usize = 16;

/// Big enough that every matrix is cut into several slices (outputs ≥ 256 rows), with a
/// vocabulary that is not whole 16-row kernel tiles (candle runs another kernel for it).
fn spec(dtype: GgmlDType) -> TinySpec {
    TinySpec {
        vocab: 500,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        layers: 2,
        dtype,
        ..TinySpec::default()
    }
}

/// Every sequence's logits for a batch of `decodes` one-token steps (context 20) beside a prompt
/// chunk of `chunk` tokens, run on `threads` threads with fresh KV.
fn logits(model: &Model, threads: &Threads, chunk: usize, decodes: usize) -> Vec<Vec<f32>> {
    let n = decodes + 1;
    let pool = KvPool::new(model.config(), n * 4, BS).unwrap();
    let tokens = |seed: usize, len: usize| -> Vec<u32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 500) as u32)
            .collect()
    };
    // Fill the decodes' context first (one prefill each), then the measured batch.
    let mut seqs = Vec::new();
    for d in 0..decodes {
        let t = table((d * 4) as u32, 64, BS);
        threads
            .install(|| {
                model.forward(
                    &pool,
                    &ForwardBatch {
                        seqs: vec![SeqInput {
                            tokens: tokens(d, 19),
                            start_pos: 0,
                            block_table: t.clone(),
                            want_logits: false,
                        }],
                    },
                )
            })
            .unwrap();
        seqs.push(SeqInput {
            tokens: tokens(d + 100, 1),
            start_pos: 19,
            block_table: t,
            want_logits: true,
        });
    }
    if chunk > 0 {
        seqs.push(SeqInput {
            tokens: tokens(7, chunk),
            start_pos: 0,
            block_table: table((decodes * 4) as u32, 64, BS),
            want_logits: true,
        });
    }
    let out = threads
        .install(|| model.forward(&pool, &ForwardBatch { seqs }))
        .unwrap();
    out.logits.into_iter().map(|l| l.unwrap()).collect()
}

#[test]
fn two_threads_compute_what_one_does() {
    accellm_engine::inline_candle_matmuls().unwrap();
    let (one, two) = (
        Threads::new(1, "one").unwrap(),
        Threads::new(2, "two").unwrap(),
    );
    for (format, dtype) in [
        (WeightFormat::Q8Padded, GgmlDType::Q4_1),
        (WeightFormat::Int8, GgmlDType::Q4_1),
        (WeightFormat::Int8, GgmlDType::Q8_0),
        (WeightFormat::Blocks, GgmlDType::Q4_1),
        (WeightFormat::Native, GgmlDType::Q8_0),
        (WeightFormat::F32, GgmlDType::Q4_1),
    ] {
        let model = Model::load(write_tiny_model(spec(dtype)), format).unwrap();
        // Decode steps alone (weight-row slices), a few rows, and a 40-token chunk beside
        // decodes (activation rows split; the blocks format's dense path).
        for (chunk, decodes) in [(0, 1), (0, 3), (5, 2), (40, 2)] {
            let a = logits(&model, &one, chunk, decodes);
            let b = logits(&model, &two, chunk, decodes);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                let e = rel_err(x, y);
                assert!(
                    e == 0.0,
                    "{format}: chunk {chunk}, {decodes} decodes: rel err {e}"
                );
            }
        }
    }
}
