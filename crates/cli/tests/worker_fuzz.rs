//! A real `accellm worker` driven, after a valid handshake, with well-formed `Run` and
//! `Transfer` messages whose fields are random (token ids past the vocabulary, positions and
//! block tables past the pool, samplers with any parameters and state, allowed-token bitsets
//! of any length, prompt rows and copies naming rows and instances that do not exist): every
//! `Run` must be answered with a report (an error in it is fine) and every `Transfer` with its
//! outcome, and the worker must still serve a valid iteration at the end. With the real default
//! model (skipped with a message when it is absent). `ACCELLM_WORKER_FUZZ_RUNS=N` (default 500, about 7 s)
//! and `ACCELLM_WORKER_FUZZ_SEED=S` set the count and seed.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use accellm_server::remote::wire::{
    self, ModelId, Msg, WirePromptRow, WireSample, WireSeq, WireSpan,
};

mod common;
use common::Proc;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn coin(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Mostly below `usual`, sometimes anything.
    fn u32(&mut self, usual: u64) -> u32 {
        if self.coin(8) {
            self.next() as u32
        } else {
            self.below(usual) as u32
        }
    }
    fn usize(&mut self, usual: u64) -> usize {
        match self.below(12) {
            0 => usize::MAX - self.below(4) as usize,
            1 => self.next() as usize,
            _ => self.below(usual) as usize,
        }
    }
    fn f32(&mut self) -> f32 {
        match self.below(8) {
            0 => f32::MAX,
            1 => -1.0,
            2 => 0.0,
            3 => f32::MIN_POSITIVE,
            _ => self.below(2000) as f32 / 1000.0,
        }
    }
}

fn spans(r: &mut Rng) -> Vec<WireSpan> {
    (0..r.below(3))
        .map(|_| {
            let b = r.u32(300);
            (b, b, r.u32(17), r.u32(17))
        })
        .collect()
}

fn run_msg(r: &mut Rng, iteration: u64) -> Msg {
    // Half the batches are sane (they run a forward pass, so the samplers, masks and logprob
    // rows meet real logits); the others carry fields from anywhere.
    let wild = r.coin(2);
    let seqs: Vec<WireSeq> = (0..1 + r.below(3))
        .map(|_| {
            let tokens: Vec<u32> = (0..1 + r.below(8))
                .map(|_| {
                    if wild {
                        r.u32(49_152)
                    } else {
                        r.below(49_152) as u32
                    }
                })
                .collect();
            let start_pos = if wild {
                r.usize(64)
            } else {
                r.below(40) as usize
            };
            let blocks = start_pos.saturating_add(tokens.len()).div_ceil(16) as u64;
            let block_table = if wild {
                (0..r.below(5)).map(|_| r.u32(256)).collect()
            } else {
                (0..blocks + r.below(2))
                    .map(|_| r.below(256) as u32)
                    .collect()
            };
            WireSeq {
                tokens,
                start_pos,
                block_table,
                want_logits: r.coin(2),
            }
        })
        .collect();
    let n = seqs.len() as u64;
    let samples = (0..r.below(3))
        .map(|_| {
            let sampler = serde_json::json!({
                "params": {
                    "temperature": r.f32(), "top_p": r.f32(), "top_k": r.usize(100),
                    "seed": r.next(), "max_tokens": r.usize(100), "stop": [],
                    "ignore_eos": r.coin(2),
                },
                "rng": r.next(),
                "generated": r.usize(10),
            });
            WireSample {
                seq: r.usize(n),
                sampler: serde_json::from_value(sampler).expect("sampler"),
                mask_eos: r.coin(2),
                logprobs: r.coin(2).then(|| r.next() as u8),
                allowed: r
                    .coin(3)
                    .then(|| (0..r.below(2000)).map(|_| r.next() as u32).collect()),
            }
        })
        .collect();
    let prompt_rows = (0..r.below(3))
        .map(|_| WirePromptRow {
            seq: r.usize(n),
            target: r.u32(49_152),
            top: r.next() as u8,
        })
        .collect();
    let copies = (0..r.below(2)).map(|_| (r.usize(3), spans(r))).collect();
    Msg::Run {
        iteration,
        seqs,
        samples,
        prompt_rows,
        copies,
    }
}

#[test]
fn a_worker_survives_random_iterations_and_transfers_after_the_handshake() {
    let model = accellm_tokenizer::default_model_path();
    if !model.exists() {
        assert!(
            std::env::var_os("ACCELLM_REQUIRE_MODEL").is_none(),
            "ACCELLM_REQUIRE_MODEL is set but {} is missing",
            model.display()
        );
        eprintln!("skipped: {} not present", model.display());
        return;
    }
    let runs: u64 = std::env::var("ACCELLM_WORKER_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = std::env::var("ACCELLM_WORKER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_207);
    let mut child = Command::new(env!("CARGO_BIN_EXE_accellm"))
        .args(["worker", "--listen", "127.0.0.1:0", "--kv-blocks", "256"])
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let _w = Proc(child);
    let addr = loop {
        let line = lines.next().expect("worker output").expect("a line");
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().to_string();
        }
    };
    // Keep draining the worker's stderr (a panic message would show in the test's output).
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("worker: {l}");
        }
    });
    let s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    wire::write_msg(
        &mut w,
        &Msg::Hello {
            version: wire::version(),
            model: ModelId::of(&model).expect("model id"),
            block_size: 16,
            kv_blocks: 256,
            instance: 0,
            // Instance 1 is a port nobody listens on; 2 does not exist.
            peers: vec![addr.clone(), "127.0.0.1:1".into()],
            eos: vec![2],
        },
    )
    .expect("hello");
    assert!(matches!(wire::read_msg(&mut r), Ok(Msg::Welcome { .. })));

    let mut rng = Rng(seed);
    let (mut errors, mut transfers) = (0, 0);
    for k in 0..runs {
        if rng.coin(5) {
            let id = k as u32;
            let msg = Msg::Transfer {
                id,
                to: rng.usize(3),
                spans: spans(&mut rng),
            };
            wire::write_msg(&mut w, &msg).expect("send transfer");
            match wire::read_msg(&mut r) {
                Ok(Msg::TransferDone { id: got, .. }) => assert_eq!(got, id),
                other => panic!("seed {seed} message {k}: {msg:?} got {other:?}"),
            }
            transfers += 1;
            continue;
        }
        let msg = run_msg(&mut rng, k);
        wire::write_msg(&mut w, &msg).expect("send run");
        match wire::read_msg(&mut r) {
            Ok(Msg::Report {
                iteration, error, ..
            }) => {
                assert_eq!(iteration, k, "seed {seed}");
                errors += usize::from(error.is_some());
            }
            other => panic!("seed {seed} message {k}: {msg:?} got {other:?}"),
        }
    }
    // Still serving: a valid prefill of 4 tokens with a greedy sample.
    let sampler = serde_json::json!({
        "params": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 1, "max_tokens": 8,
                   "stop": [], "ignore_eos": false},
        "rng": 1, "generated": 0,
    });
    let valid = Msg::Run {
        iteration: runs,
        seqs: vec![WireSeq {
            tokens: vec![1, 2, 3, 4],
            start_pos: 0,
            block_table: vec![0],
            want_logits: true,
        }],
        samples: vec![WireSample {
            seq: 0,
            sampler: serde_json::from_value(sampler).expect("sampler"),
            mask_eos: false,
            logprobs: None,
            allowed: None,
        }],
        prompt_rows: Vec::new(),
        copies: Vec::new(),
    };
    wire::write_msg(&mut w, &valid).expect("send");
    match wire::read_msg(&mut r) {
        Ok(Msg::Report {
            error: None,
            tokens,
            ..
        }) => assert_eq!(tokens.len(), 1),
        other => panic!("the worker no longer serves: {other:?}"),
    }
    eprintln!(
        "worker fuzz: {runs} messages (seed {seed}): {transfers} transfers, {} runs ({errors} refused with an error), 0 crashes",
        runs - transfers
    );
}
