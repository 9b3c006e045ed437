//! Criterion benchmark of the engine on the real SmolLM2-135M file: prefill of 128 and 512
//! tokens, and decode iterations at batch 1, 4, 16 and 64 (context 128), per weight format.
//!
//! The model is found through `ACCELLM_MODEL` or the model cache; the bench does nothing (and
//! says so) when it is missing. Thread count: `ACCELLM_BENCH_THREADS` (default 2), e.g.
//! `ACCELLM_BENCH_THREADS=1 cargo bench -p accellm-engine`. Formats: `ACCELLM_BENCH_FORMATS`
//! (default: the one `serve` picks on this CPU; e.g. `int8,q8-padded,blocks`).

use std::path::PathBuf;

use accellm_engine::bench::{decode_batch, pool_for, synthetic_tokens};
use accellm_engine::{inline_candle_matmuls, ForwardBatch, Model, SeqInput, Threads, WeightFormat};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("ACCELLM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(accellm_tokenizer::default_model_path);
    p.is_file().then_some(p)
}

fn bench(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!("engine bench skipped: model not found (run scripts/fetch-model.sh)");
        return;
    };
    inline_candle_matmuls().expect("CANDLE_NUM_THREADS unset or 1");
    let n = std::env::var("ACCELLM_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let threads = Threads::new(n, "bench").expect("thread pool");
    let formats: Vec<WeightFormat> = std::env::var("ACCELLM_BENCH_FORMATS")
        .unwrap_or_else(|_| WeightFormat::for_this_cpu().to_string())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    for format in formats {
        let model = Model::load(&path, format).expect("model loads");
        let pool = pool_for(&model, 64 * 160).expect("pool");
        let mut g = c.benchmark_group(format!("{format}/{n}t"));
        g.sample_size(10);
        for len in [128usize, 512] {
            let batch = ForwardBatch {
                seqs: vec![SeqInput {
                    tokens: synthetic_tokens(model.config().vocab, len, 1),
                    start_pos: 0,
                    block_table: (0..len.div_ceil(pool.block_size()) as u32).collect(),
                    want_logits: true,
                }],
            };
            g.throughput(Throughput::Elements(len as u64));
            g.bench_with_input(BenchmarkId::new("prefill", len), &batch, |b, batch| {
                b.iter(|| threads.install(|| model.forward(&pool, batch).expect("forward")))
            });
        }
        for bsz in [1usize, 4, 16, 64] {
            let batch = decode_batch(&model, &pool, bsz, 128, 1);
            g.throughput(Throughput::Elements(bsz as u64));
            g.bench_with_input(BenchmarkId::new("decode", bsz), &batch, |b, batch| {
                b.iter(|| threads.install(|| model.forward(&pool, batch).expect("forward")))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
