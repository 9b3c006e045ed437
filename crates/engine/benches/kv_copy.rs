//! Criterion benchmark of KV copies between two pools of SmolLM2-135M's shape (30 layers, 3 KV
//! heads of 64, blocks of 16 tokens), layer by layer as the server's links copy: one new token
//! of each of 32 decoding sequences (AcceLLM's eager replication), a 128-token prefill chunk,
//! and both directions at once on two threads (an AcceLLM pair replicating both ways).
//! Needs no model file.

use std::hint::black_box;
use std::time::{Duration, Instant};

use accellm_engine::{copy_kv, KvPool, KvSpan, ModelConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BS: usize = 16;
const BLOCKS: usize = 128;

fn smollm2_shape() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        layers: 30,
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        ffn_hidden: 1536,
        vocab: 49152,
        context_length: 8192,
        rms_eps: 1e-5,
        rope_theta: 100000.0,
        kv_bytes_per_token: 2 * 30 * 3 * 64 * 4,
        arch: Default::default(),
    }
}

/// One new token (at slot 5) of each of `n` sequences, one block each.
fn decode_spans(n: u32) -> Vec<KvSpan> {
    (0..n)
        .map(|b| KvSpan {
            src_block: b,
            dst_block: BLOCKS as u32 - 1 - b,
            slots: 5..6,
        })
        .collect()
}

/// `tokens` tokens of one sequence from position 0.
fn chunk_spans(tokens: usize) -> Vec<KvSpan> {
    let table: Vec<u32> = (0..tokens.div_ceil(BS) as u32).collect();
    let dst: Vec<u32> = table.iter().map(|b| b + 64).collect();
    KvSpan::for_positions(&table, &dst, 0..tokens, BS).expect("spans")
}

/// Copies `spans` of every layer, one `copy_kv` call per layer as a link does.
fn layer_by_layer(src: &KvPool, dst: &KvPool, spans: &[KvSpan]) -> u64 {
    (0..src.num_layers())
        .map(|l| copy_kv(src, dst, spans, l..l + 1).expect("copy"))
        .sum()
}

fn bench(c: &mut Criterion) {
    let cfg = smollm2_shape();
    let a = KvPool::new(&cfg, BLOCKS, BS).expect("pool");
    let b = KvPool::new(&cfg, BLOCKS, BS).expect("pool");
    // Touch every page so the first samples do not pay for page faults.
    for s in [&a, &b] {
        let all = KvSpan::for_positions(
            &(0..BLOCKS as u32).collect::<Vec<_>>(),
            &(0..BLOCKS as u32).collect::<Vec<_>>(),
            0..BLOCKS * BS,
            BS,
        )
        .expect("spans");
        copy_kv(s, s, &all, 0..30).expect("copy");
    }
    let mut g = c.benchmark_group("kv_copy");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    for (name, spans) in [
        ("decode-32x1", decode_spans(32)),
        ("chunk-128", chunk_spans(128)),
    ] {
        let tokens: usize = spans.iter().map(KvSpan::len).sum();
        let bytes = (tokens * cfg.kv_bytes_per_token) as u64;
        g.throughput(Throughput::Bytes(bytes));
        g.bench_with_input(BenchmarkId::new("one-way", name), &spans, |bch, spans| {
            bch.iter(|| black_box(layer_by_layer(&a, &b, spans)))
        });
        // Both directions at once on two threads, 20 rounds each per timed iteration.
        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_with_input(BenchmarkId::new("both-ways", name), &spans, |bch, spans| {
            bch.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|s| {
                        s.spawn(|| (0..20).map(|_| layer_by_layer(&a, &b, spans)).sum::<u64>());
                        s.spawn(|| (0..20).map(|_| layer_by_layer(&b, &a, spans)).sum::<u64>());
                    });
                }
                t.elapsed() / 20
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
