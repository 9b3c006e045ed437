//! Batching, chunked prefill and KV block copies on a tiny random model.

mod support;

use std::sync::Arc;

use accellm_engine::{argmax, copy_blocks, ForwardBatch, KvPool, Model, SeqInput, WeightFormat};
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

#[test]
fn copied_blocks_decode_identically() {
    let m = shared_model();
    let p = prompt(9, 40);
    let src_blocks = table(0, p.len() + 1, BS);
    let src = Arc::new(KvPool::new(m.config(), 8, BS).unwrap());
    let dst = Arc::new(KvPool::new(m.config(), 12, BS).unwrap());
    let seq = SeqInput {
        tokens: p.clone(),
        start_pos: 0,
        block_table: src_blocks.clone(),
        want_logits: true,
    };
    // Copy each layer on another thread as soon as the forward pass reports it written.
    let dst_blocks: Vec<u32> = vec![9, 4, 7];
    let pairs: Vec<(u32, u32)> = src_blocks
        .iter()
        .copied()
        .zip(dst_blocks.iter().copied())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let copier = {
        let (src, dst, pairs) = (src.clone(), dst.clone(), pairs.clone());
        std::thread::spawn(move || {
            for l in rx {
                copy_blocks(&src, &dst, &pairs, l..l + 1).unwrap();
            }
        })
    };
    let out = m
        .forward_with(&src, &ForwardBatch { seqs: vec![seq] }, |l| {
            tx.send(l).unwrap()
        })
        .unwrap();
    drop(tx);
    copier.join().unwrap();
    let next = argmax(out.logits[0].as_ref().unwrap());
    let step = |pool: &KvPool, blocks: &[u32]| {
        let s = SeqInput {
            tokens: vec![next],
            start_pos: p.len(),
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
    // And the copy really is needed: an empty pool gives different logits.
    let empty = KvPool::new(m.config(), 12, BS).unwrap();
    assert_ne!(step(&empty, &dst_blocks), a);
}

#[test]
fn copy_blocks_rejects_bad_input() {
    let m = shared_model();
    let a = KvPool::new(m.config(), 4, BS).unwrap();
    let b = KvPool::new(m.config(), 2, BS).unwrap();
    assert!(copy_blocks(&a, &b, &[(0, 2)], 0..1).is_err());
    assert!(copy_blocks(&a, &b, &[(0, 1)], 0..99).is_err());
    let c = KvPool::new(m.config(), 4, 8).unwrap();
    assert!(copy_blocks(&a, &c, &[(0, 1)], 0..1).is_err());
    // Copy within the same pool works.
    copy_blocks(&a, &a, &[(0, 3)], 0..m.config().layers).unwrap();
}

#[test]
fn forward_rejects_invalid_batches() {
    let m = shared_model();
    let pool = KvPool::new(m.config(), 2, BS).unwrap();
    let bad_token = SeqInput {
        tokens: vec![1000],
        start_pos: 0,
        block_table: vec![0],
        want_logits: true,
    };
    assert!(m
        .forward(
            &pool,
            &ForwardBatch {
                seqs: vec![bad_token]
            }
        )
        .is_err());
    let short_table = SeqInput {
        tokens: vec![1; 20],
        start_pos: 0,
        block_table: vec![0],
        want_logits: true,
    };
    assert!(m
        .forward(
            &pool,
            &ForwardBatch {
                seqs: vec![short_table]
            }
        )
        .is_err());
    let bad_block = SeqInput {
        tokens: vec![1],
        start_pos: 0,
        block_table: vec![5],
        want_logits: true,
    };
    assert!(m
        .forward(
            &pool,
            &ForwardBatch {
                seqs: vec![bad_block]
            }
        )
        .is_err());
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
