//! Batching, chunked prefill and KV block copies on a tiny random model.

mod support;

use std::sync::Arc;

use accellm_engine::{
    argmax, copy_kv, ForwardBatch, KvPool, KvSpan, Model, SeqInput, WeightFormat,
};
use proptest::prelude::*;
use support::{rel_err, table, write_tiny_model, TinySpec};

const BS: usize = 16;

fn model(format: WeightFormat) -> Model {
    Model::load(write_tiny_model(TinySpec::default()), format).unwrap()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + seed * 17 + 3) % 96)
        .collect()
}

/// Greedy generation of one request alone, prefilled in one shot.
fn alone(model: &Model, p: &[u32], steps: usize) -> Vec<u32> {
    let blocks = table(0, p.len() + steps, BS);
    let pool = KvPool::new(model.config(), blocks.len(), BS).unwrap();
    let mut seq = SeqInput {
        tokens: p.to_vec(),
        start_pos: 0,
        block_table: blocks,
        want_logits: true,
    };
    let mut out = Vec::new();
    for _ in 0..steps {
        let o = model
            .forward(
                &pool,
                &ForwardBatch {
                    seqs: vec![seq.clone()],
                },
            )
            .unwrap();
        let t = argmax(o.logits[0].as_ref().unwrap());
        out.push(t);
        seq.start_pos += seq.tokens.len();
        seq.tokens = vec![t];
    }
    out
}

/// State of one request inside the mixed-batch simulation.
struct Req {
    prompt: Vec<u32>,
    blocks: Vec<u32>,
    prefilled: usize,
    generated: Vec<u32>,
    chunk: usize,
    arrives_at: usize,
}

fn run_mixed(model: &Model, reqs: &mut [Req], steps: usize) {
    let max_block = reqs
        .iter()
        .flat_map(|r| r.blocks.iter())
        .max()
        .copied()
        .unwrap_or(0);
    let pool = KvPool::new(model.config(), max_block as usize + 1, BS).unwrap();
    let mut iter = 0;
    while reqs.iter().any(|r| r.generated.len() < steps) {
        let mut batch = ForwardBatch::default();
        let mut who = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if iter < r.arrives_at || r.generated.len() >= steps {
                continue;
            }
            if r.prefilled < r.prompt.len() {
                let end = (r.prefilled + r.chunk).min(r.prompt.len());
                batch.seqs.push(SeqInput {
                    tokens: r.prompt[r.prefilled..end].to_vec(),
                    start_pos: r.prefilled,
                    block_table: r.blocks.clone(),
                    want_logits: end == r.prompt.len(),
                });
            } else {
                batch.seqs.push(SeqInput {
                    tokens: vec![*r.generated.last().unwrap()],
                    start_pos: r.prompt.len() + r.generated.len() - 1,
                    block_table: r.blocks.clone(),
                    want_logits: true,
                });
            }
            who.push(i);
        }
        let out = model.forward(&pool, &batch).unwrap();
        for (k, &i) in who.iter().enumerate() {
            let r = &mut reqs[i];
            let s = &batch.seqs[k];
            if r.prefilled < r.prompt.len() {
                r.prefilled += s.tokens.len();
            }
            match &out.logits[k] {
                Some(l) => r.generated.push(argmax(l)),
                None => assert!(!s.want_logits),
            }
        }
        iter += 1;
    }
}

#[test]
fn mixed_batch_matches_each_request_alone() {
    let m = model(WeightFormat::F32);
    let steps = 12;
    let specs = [
        (1u32, 37usize, 8usize, 0usize),
        (2, 5, 64, 0),
        (3, 50, 13, 2),
        (4, 20, 3, 5),
        (5, 1, 1, 1),
    ];
    let mut next_block = 0u32;
    let mut reqs: Vec<Req> = specs
        .iter()
        .map(|&(seed, len, chunk, arrives_at)| {
            let p = prompt(seed, len);
            let blocks = table(next_block, len + steps, BS);
            next_block += blocks.len() as u32;
            // Interleave block ids across requests: reverse each table so ids are not in order.
            let blocks: Vec<u32> = blocks.into_iter().rev().collect();
            Req {
                prompt: p,
                blocks,
                prefilled: 0,
                generated: Vec::new(),
                chunk,
                arrives_at,
            }
        })
        .collect();
    run_mixed(&m, &mut reqs, steps);
    for r in &reqs {
        assert_eq!(
            r.generated,
            alone(&m, &r.prompt, steps),
            "prompt {:?}",
            r.prompt
        );
    }
}

#[test]
fn mixed_batch_matches_alone_with_q8_padded_weights() {
    let m = model(WeightFormat::Q8Padded);
    let steps = 8;
    let mut reqs: Vec<Req> = [(7u32, 30usize, 7usize), (8, 12, 12), (9, 3, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(seed, len, chunk))| Req {
            prompt: prompt(seed, len),
            blocks: table(i as u32 * 4, len + steps, BS),
            prefilled: 0,
            generated: Vec::new(),
            chunk,
            arrives_at: 0,
        })
        .collect();
    run_mixed(&m, &mut reqs, steps);
    for r in &reqs {
        assert_eq!(r.generated, alone(&m, &r.prompt, steps));
    }
}

fn one_shot_logits(m: &Model, p: &[u32]) -> Vec<f32> {
    let pool = KvPool::new(m.config(), p.len().div_ceil(BS), BS).unwrap();
    let seq = SeqInput {
        tokens: p.to_vec(),
        start_pos: 0,
        block_table: table(0, p.len(), BS),
        want_logits: true,
    };
    m.forward(&pool, &ForwardBatch { seqs: vec![seq] })
        .unwrap()
        .logits[0]
        .clone()
        .unwrap()
}

fn chunked_logits(m: &Model, p: &[u32], cuts: &[usize]) -> Vec<f32> {
    let blocks: Vec<u32> = table(0, p.len(), BS).into_iter().rev().collect();
    let pool = KvPool::new(m.config(), blocks.len(), BS).unwrap();
    let mut start = 0;
    let mut last = None;
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < p.len())
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(p.len());
    for end in bounds {
        let seq = SeqInput {
            tokens: p[start..end].to_vec(),
            start_pos: start,
            block_table: blocks.clone(),
            want_logits: end == p.len(),
        };
        last = m
            .forward(&pool, &ForwardBatch { seqs: vec![seq] })
            .unwrap()
            .logits[0]
            .clone();
        start = end;
    }
    last.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn chunked_prefill_equals_one_shot(len in 1usize..70, cuts in proptest::collection::vec(0usize..70, 0..6)) {
        let m = shared_model();
        let p = prompt(len as u32, len);
        let a = chunked_logits(&m, &p, &cuts);
        let b = one_shot_logits(&m, &p);
        let e = rel_err(&a, &b);
        prop_assert!(e < 1e-3, "relative error {}", e);
    }
}

fn shared_model() -> Arc<Model> {
    use std::sync::OnceLock;
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| Arc::new(model(WeightFormat::F32))).clone()
}

#[test]
fn chunked_prefill_with_q8_padded_weights() {
    let m = model(WeightFormat::Q8Padded);
    let p = prompt(3, 45);
    let e = rel_err(
        &chunked_logits(&m, &p, &[1, 17, 30]),
        &one_shot_logits(&m, &p),
    );
    assert!(e < 1e-3, "relative error {e}");
}

/// Runs one iteration of `seq` on `src`, copying each layer's KV of `positions` to `dst` on
/// another thread as soon as the forward pass reports the layer written. Returns the logits.
fn forward_copying(
    m: &Model,
    src: &Arc<KvPool>,
    dst: &Arc<KvPool>,
    seq: SeqInput,
    dst_table: &[u32],
    positions: std::ops::Range<usize>,
) -> Vec<f32> {
    let spans = KvSpan::for_positions(&seq.block_table, dst_table, positions.clone(), BS).unwrap();
    let expected_bytes =
        (positions.len() * m.config().kv_bytes_per_token / m.config().layers) as u64;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let copier = {
        let (src, dst) = (src.clone(), dst.clone());
        std::thread::spawn(move || {
            for l in rx {
                let bytes = copy_kv(&src, &dst, &spans, l..l + 1).unwrap();
                assert_eq!(bytes, expected_bytes, "one layer of the named tokens");
            }
        })
    };
    let out = m
        .forward_with(src, &ForwardBatch { seqs: vec![seq] }, |l| {
            tx.send(l).unwrap()
        })
        .unwrap();
    drop(tx);
    copier.join().unwrap();
    out.logits[0].clone().unwrap()
}

#[test]
fn copied_blocks_decode_identically() {
    let m = shared_model();
    let p = prompt(9, 40);
    let steps = 20;
    let src_blocks = table(0, p.len() + steps + 1, BS);
    let src = Arc::new(KvPool::new(m.config(), 8, BS).unwrap());
    let dst = Arc::new(KvPool::new(m.config(), 12, BS).unwrap());
    let dst_blocks: Vec<u32> = vec![9, 4, 7, 2];
    // Fill the replica's blocks with another sequence's KV first, so every token the decode
    // reads from them must have been copied.
    m.forward(
        &dst,
        &ForwardBatch {
            seqs: vec![SeqInput {
                tokens: prompt(5, 64),
                start_pos: 0,
                block_table: dst_blocks.clone(),
                want_logits: false,
            }],
        },
    )
    .unwrap();
    // The prompt's KV goes over in one copy per layer (40 tokens: 2.5 blocks)...
    let seq = SeqInput {
        tokens: p.clone(),
        start_pos: 0,
        block_table: src_blocks.clone(),
        want_logits: true,
    };
    let mut next = argmax(&forward_copying(
        &m,
        &src,
        &dst,
        seq,
        &dst_blocks,
        0..p.len(),
    ));
    // ...then every decode step's one new token, as AcceLLM's eager replication does.
    for step in 0..steps {
        let pos = p.len() + step;
        let seq = SeqInput {
            tokens: vec![next],
            start_pos: pos,
            block_table: src_blocks.clone(),
            want_logits: true,
        };
        next = argmax(&forward_copying(
            &m,
            &src,
            &dst,
            seq,
            &dst_blocks,
            pos..pos + 1,
        ));
    }
    let pos = p.len() + steps;
    let step = |pool: &KvPool, blocks: &[u32]| {
        let s = SeqInput {
            tokens: vec![next],
            start_pos: pos,
            block_table: blocks.to_vec(),
            want_logits: true,
        };
        m.forward(pool, &ForwardBatch { seqs: vec![s] })
            .unwrap()
            .logits[0]
            .clone()
            .unwrap()
    };
    let a = step(&src, &src_blocks);
    let b = step(&dst, &dst_blocks);
    assert_eq!(
        a, b,
        "decoding from the copy must give bit-identical logits"
    );
    // And the copies really are needed: an empty pool gives different logits.
    let empty = KvPool::new(m.config(), 12, BS).unwrap();
    assert_ne!(step(&empty, &dst_blocks), a);
}

#[test]
fn copy_kv_rejects_bad_input() {
    let m = shared_model();
    let a = KvPool::new(m.config(), 4, BS).unwrap();
    let b = KvPool::new(m.config(), 2, BS).unwrap();
    let span = |s: u32, d: u32, slots: std::ops::Range<u32>| KvSpan {
        src_block: s,
        dst_block: d,
        slots,
    };
    assert!(copy_kv(&a, &b, &[span(0, 2, 0..16)], 0..1).is_err());
    assert!(copy_kv(&a, &b, &[span(0, 1, 0..16)], 0..99).is_err());
    let e = copy_kv(&a, &b, &[span(0, 1, 4..17)], 0..1).unwrap_err();
    assert!(e.to_string().contains("slot range"), "{e}");
    let c = KvPool::new(m.config(), 4, 8).unwrap();
    assert!(copy_kv(&a, &c, &[span(0, 1, 0..8)], 0..1).is_err());
    // A table too short for the positions.
    assert!(KvSpan::for_positions(&[0, 1], &[2], 10..20, BS).is_err());
    // Copy within the same pool works.
    copy_kv(&a, &a, &[span(0, 3, 0..16)], 0..m.config().layers).unwrap();
}

#[test]
fn forward_rejects_invalid_batches() {
    let m = shared_model();
    let pool = KvPool::new(m.config(), 2, BS).unwrap();
    // An out-of-vocabulary token, a block table too short for the tokens, a block outside the pool.
    for (tokens, block_table) in [
        (vec![1000], vec![0]),
        (vec![1; 20], vec![0]),
        (vec![1], vec![5]),
    ] {
        let seq = SeqInput {
            tokens: tokens.clone(),
            start_pos: 0,
            block_table: block_table.clone(),
            want_logits: true,
        };
        let batch = ForwardBatch { seqs: vec![seq] };
        assert!(
            m.forward(&pool, &batch).is_err(),
            "tokens {tokens:?} on blocks {block_table:?} were accepted"
        );
    }
    let none = m.forward(&pool, &ForwardBatch::default()).unwrap();
    assert!(none.logits.is_empty());
}

#[test]
fn per_instance_thread_pools_give_identical_results() {
    let m = shared_model();
    let p = prompt(4, 33);
    let one = accellm_engine::Threads::new(1, "t1").unwrap();
    let two = accellm_engine::Threads::new(2, "t2").unwrap();
    let a = one.install(|| one_shot_logits(&m, &p));
    let b = two.install(|| one_shot_logits(&m, &p));
    assert_eq!(a, b);
}

/// `engine-bench`'s decode timing advances every sequence `steps` positions past its context:
/// the batch has blocks for all of them, however many steps cross a block boundary.
#[test]
fn decode_timing_runs_steps_past_a_block_boundary() {
    let m = model(WeightFormat::F32);
    let (batch, context, steps) = (3, 128, 40);
    let pool = accellm_engine::bench::pool_for(&m, batch * (context + steps + 16)).unwrap();
    let t = accellm_engine::bench::time_decode(&m, &pool, batch, context, steps).unwrap();
    assert!(t.total_ms > 0.0);
    let b = accellm_engine::bench::decode_batch(&m, &pool, batch, context, steps);
    assert!(b
        .seqs
        .iter()
        .all(|s| s.block_table.len() * BS >= context + steps));
}
