//! Fuzzing the worker link's decoder and what a worker does with decoded frames, with a seeded
//! generator (same inputs on every run for one seed; a failure prints the seed and the input).
//!
//! Inputs, in turn: arbitrary bytes; frame-shaped bytes (a plausible length and tag, then random
//! or missing bodies, including lengths announced and never sent); valid frames with bytes
//! flipped, truncated or re-lengthed; well-formed control messages with random fields (must
//! decode to themselves); well-formed KV frames with random fields fed to a worker's KV link
//! after its handshake ([`serve_kv_link`] on a real pool: in-pool writes land, anything outside
//! the pool is refused and reported in the ack); and the samplers and logprobs a peer hands a
//! worker (random parameters and state, random logits).
//!
//! Checked for every input: no panic; the largest single allocation made while decoding stays
//! proportional to the bytes actually received (never the length a header announces, never
//! beyond the frame limit).
//!
//! `ACCELLM_WIRE_FUZZ_INPUTS=N` sets the number of inputs (default 1,000,000: about 10 s in a
//! debug build); `ACCELLM_WIRE_FUZZ_SEED=S` the seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use accellm_engine::{f16, ArchParams, KvPool, KvSpan, ModelConfig, Sampler, TokenLogprob};
use accellm_server::remote::wire::{
    self, Frame, Geometry, KvWire, ModelId, Msg, WireError, WireLogprob, WirePromptRow, WireSample,
    WireSampled, WireSeq, MAX_FRAME_BYTES,
};
use accellm_server::remote::worker::serve_kv_link;

/// Passes every allocation to the system allocator, noting the largest one requested on this
/// thread while tracking is on.
struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with allocation tracking on; returns its result and the largest allocation.
fn tracked<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let out = f();
    TRACK.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

/// The allocation an input of `n` bytes may cause: JSON arrays of one-digit numbers become
/// 4-byte values (2 bytes each in the input) in vectors that grow by doubling, so 8 per byte,
/// plus a constant for the decoder's fixed buffers.
fn allowed_alloc(n: usize) -> usize {
    8 * n + (64 << 10)
}

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
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn coin(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// A u32 that is often small, sometimes at the edges.
    fn u32(&mut self) -> u32 {
        match self.below(8) {
            0 => u32::MAX - self.below(3) as u32,
            1 => self.next() as u32,
            _ => self.below(40) as u32,
        }
    }
    fn usize(&mut self) -> usize {
        match self.below(8) {
            0 => usize::MAX - self.below(3) as usize,
            1 => self.next() as usize,
            _ => self.below(40) as usize,
        }
    }
    fn f32(&mut self) -> f32 {
        match self.below(10) {
            0 => f32::MAX,
            1 => -f32::MAX,
            2 => f32::MIN_POSITIVE,
            3 => 0.0,
            4 => f32::from_bits(self.next() as u32 & 0x7f7f_ffff), // finite
            _ => (self.next() % 20_000) as f32 / 1000.0 - 10.0,
        }
    }
    /// Any f32, NaN and infinities included.
    fn any_f32(&mut self) -> f32 {
        match self.below(12) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => f32::from_bits(self.next() as u32),
            _ => self.f32(),
        }
    }
    fn string(&mut self) -> String {
        let n = self.below(12) as usize;
        (0..n)
            .map(|_| match self.below(6) {
                0 => '"',
                1 => '\\',
                2 => 'é',
                3 => '\u{1F600}',
                4 => '\0',
                _ => (b'a' + self.below(26) as u8) as char,
            })
            .collect()
    }
    fn vec<T>(&mut self, max: u64, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.below(max + 1);
        (0..n).map(|_| f(self)).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn sampler(r: &mut Rng) -> Sampler {
    let params = serde_json::json!({
        "temperature": r.f32(),
        "top_p": r.f32(),
        "top_k": r.usize(),
        "seed": if r.coin(2) { Some(r.next()) } else { None },
        "max_tokens": r.usize(),
        "stop": r.vec(2, Rng::string),
        "ignore_eos": r.coin(2),
    });
    let v = serde_json::json!({ "params": params, "rng": r.next(), "generated": r.usize() });
    serde_json::from_value(v).expect("a sampler with any field values deserialises")
}

fn logprob(r: &mut Rng) -> WireLogprob {
    let lp = |r: &mut Rng| r.coin(3).then(|| r.f32());
    WireLogprob {
        token: r.u32(),
        logprob: lp(r),
        top: r.vec(4, |r| (r.u32(), lp(r))),
    }
}

fn spans(r: &mut Rng) -> Vec<(u32, u32, u32, u32)> {
    r.vec(4, |r| (r.u32(), r.u32(), r.u32(), r.u32()))
}

fn model_id(r: &mut Rng) -> ModelId {
    ModelId {
        name: r.string(),
        bytes: r.next(),
        fingerprint: r.next(),
    }
}

/// A well-formed control message with random fields (finite numbers: JSON has no NaN).
fn message(r: &mut Rng) -> Msg {
    match r.below(11) {
        0 => Msg::Hello {
            version: r.string(),
            model: model_id(r),
            block_size: r.u32(),
            kv_blocks: r.u32(),
            instance: r.usize(),
            peers: r.vec(3, Rng::string),
            eos: r.vec(3, Rng::u32),
        },
        1 => Msg::Welcome {
            version: r.string(),
            model: model_id(r),
            geometry: Geometry {
                layers: r.u32(),
                kv_bytes_per_token: r.next(),
                context_length: r.u32(),
                kv_blocks: r.u32(),
                block_size: r.u32(),
            },
        },
        2 => Msg::Refused { reason: r.string() },
        3 => Msg::Run {
            iteration: r.next(),
            seqs: r.vec(3, |r| WireSeq {
                tokens: r.vec(6, Rng::u32),
                start_pos: r.usize(),
                block_table: r.vec(4, Rng::u32),
                want_logits: r.coin(2),
            }),
            samples: r.vec(2, |r| WireSample {
                seq: r.usize(),
                sampler: sampler(r),
                mask_eos: r.coin(2),
                logprobs: r.coin(2).then(|| r.next() as u8),
                allowed: r.coin(2).then(|| r.vec(4, Rng::u32)),
            }),
            prompt_rows: r.vec(2, |r| WirePromptRow {
                seq: r.usize(),
                target: r.u32(),
                top: r.next() as u8,
            }),
            copies: r.vec(2, |r| (r.usize(), spans(r))),
        },
        4 => Msg::Report {
            iteration: r.next(),
            tokens: r.vec(2, |r| WireSampled {
                seq: r.usize(),
                token: r.u32(),
                sampler: sampler(r),
                logprob: r.coin(2).then(|| logprob(r)),
            }),
            prompt_logprobs: r.vec(2, logprob),
            error: r.coin(2).then(|| r.string()),
            copy_error: r.coin(2).then(|| r.string()),
            elapsed_s: f64::from(r.f32()),
            copied_bytes: r.next(),
        },
        5 => Msg::Transfer {
            id: r.u32(),
            to: r.usize(),
            spans: spans(r),
        },
        6 => Msg::TransferDone {
            id: r.u32(),
            error: r.coin(2).then(|| r.string()),
            bytes: r.next(),
        },
        7 => Msg::PeerHello {
            version: r.string(),
            model: model_id(r),
            from: r.usize(),
            kv_wire: kv_wire(r),
        },
        10 => Msg::PeerWelcome {
            version: r.string(),
            kv_wire: kv_wire(r),
            local: r.coin(2).then(|| r.string()),
        },
        8 => Msg::Flush { seq: r.next() },
        _ => Msg::Ack {
            seq: r.next(),
            error: r.coin(2).then(|| r.string()),
        },
    }
}

fn kv_wire(r: &mut Rng) -> KvWire {
    if r.coin(2) {
        KvWire::F16
    } else {
        KvWire::F32
    }
}

/// Encodes a KV frame with `data` as `wire`'s values.
fn write_kv(out: &mut Vec<u8>, wire: KvWire, layer: u32, spans: &[KvSpan], data: &[f32]) {
    match wire {
        KvWire::F32 => wire::write_kv(out, layer, spans, data),
        KvWire::F16 => {
            let half: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
            wire::write_kv(out, layer, spans, &half)
        }
    }
    .expect("encodes");
}

/// The pool a fuzzed KV link writes into: 2 layers, 2 KV heads of 4 values, 8 blocks of 4.
const LAYERS: usize = 2;
const HEADS: usize = 2;
const HEAD_DIM: usize = 4;
const BLOCKS: u32 = 8;
const BLOCK: u32 = 4;

fn pool() -> KvPool {
    let c = ModelConfig {
        architecture: "llama".into(),
        layers: LAYERS,
        hidden: HEADS * HEAD_DIM,
        heads: HEADS,
        kv_heads: HEADS,
        head_dim: HEAD_DIM,
        ffn_hidden: 16,
        vocab: 32,
        context_length: 64,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        kv_bytes_per_token: 2 * LAYERS * HEADS * HEAD_DIM * 4,
        arch: ArchParams::default(),
    };
    KvPool::new(&c, BLOCKS as usize, BLOCK as usize).expect("pool")
}

/// A KV frame with random fields, mostly inside the pool, sometimes not; and whether the pool
/// must accept it.
fn kv_frame(r: &mut Rng) -> (u32, Vec<KvSpan>, Vec<f32>, bool) {
    let layer = if r.coin(8) {
        r.u32()
    } else {
        r.below(LAYERS as u64) as u32
    };
    let spans: Vec<KvSpan> = r.vec(3, |r| {
        let block = if r.coin(8) {
            r.u32()
        } else {
            r.below(u64::from(BLOCKS)) as u32
        };
        let (a, b) = if r.coin(8) {
            (r.u32(), r.u32())
        } else {
            let a = r.below(u64::from(BLOCK)) as u32;
            (a, a + 1 + r.below(u64::from(BLOCK - a)) as u32)
        };
        KvSpan {
            src_block: block,
            dst_block: block,
            slots: a..b,
        }
    });
    let in_pool = (layer as usize) < LAYERS
        && spans
            .iter()
            .all(|s| s.dst_block < BLOCKS && s.slots.start < s.slots.end && s.slots.end <= BLOCK);
    let floats: usize = if in_pool {
        spans.iter().map(|s| s.slots.len()).sum::<usize>() * 2 * HEADS * HEAD_DIM
    } else {
        r.below(64) as usize
    };
    let n = if r.coin(8) {
        r.below(64) as usize
    } else {
        floats
    };
    let data = (0..n).map(|_| r.any_f32()).collect();
    (layer, spans, data, in_pool && n == floats)
}

fn hex(b: &[u8]) -> String {
    b.iter().take(256).map(|x| format!("{x:02x}")).collect()
}

/// Decodes `input` as a stream of frames until it fails or ends; checks the allocation bound.
fn decode_all(input: &[u8], seed: u64, k: usize) -> Vec<Result<Frame, String>> {
    let (frames, largest) = tracked(|| {
        let mut cur = Cursor::new(input);
        let mut out = Vec::new();
        loop {
            match wire::read_frame(&mut cur) {
                Ok(f) => out.push(Ok(f)),
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    });
    assert!(
        largest <= allowed_alloc(input.len()).min(2 * MAX_FRAME_BYTES),
        "seed {seed} input {k}: {largest} bytes allocated for {} bytes of input {}",
        input.len(),
        hex(input)
    );
    frames
}

/// Equal JSON, numbers within a relative 1e-15: serde_json's default float parsing may miss
/// the last bit of an f64 (`elapsed_s`); f32 fields come back exact.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-15
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn frame_bytes(m: &Msg) -> Vec<u8> {
    let mut b = Vec::new();
    wire::write_msg(&mut b, m).expect("encodes");
    b
}

#[derive(Default, Debug)]
struct Counts {
    raw: usize,
    shaped: usize,
    mutated: usize,
    messages: usize,
    kv: usize,
    samplers: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.raw + self.shaped + self.mutated + self.messages + self.kv + self.samplers
    }
}

fn one(r: &mut Rng, pool: &KvPool, seed: u64, k: usize, c: &mut Counts) {
    match k % 8 {
        // Arbitrary bytes.
        0 => {
            let n = r.below(48) as usize;
            let input = r.bytes(n);
            decode_all(&input, seed, k);
            c.raw += 1;
        }
        // Frame-shaped: a length (often a lie), a tag, some body.
        1 | 2 => {
            let len: u32 = match r.below(4) {
                0 => r.next() as u32,
                1 => (MAX_FRAME_BYTES as u32).wrapping_add(r.below(3) as u32),
                _ => r.below(200) as u32,
            };
            let mut input = len.to_le_bytes().to_vec();
            input.push(r.below(4) as u8);
            if r.coin(2) {
                // A KV head: layer, span count (often huge), then some of the rest.
                input.extend_from_slice(&r.u32().to_le_bytes());
                input.extend_from_slice(&r.u32().to_le_bytes());
            }
            let n = r.below(64) as usize;
            input.extend(r.bytes(n));
            decode_all(&input, seed, k);
            c.shaped += 1;
        }
        // A valid frame, damaged.
        3 => {
            let mut input = if r.coin(2) {
                frame_bytes(&message(r))
            } else {
                let (layer, spans, data, _) = kv_frame(r);
                let mut b = Vec::new();
                write_kv(&mut b, kv_wire(r), layer, &spans, &data);
                b
            };
            match r.below(3) {
                0 => {
                    for _ in 0..1 + r.below(4) {
                        let at = r.below(input.len() as u64) as usize;
                        input[at] ^= 1 << r.below(8);
                    }
                }
                1 => {
                    let keep = r.below(input.len() as u64) as usize;
                    input.truncate(keep);
                }
                _ => {
                    let len = r.next() as u32 % (input.len() as u32 + 16);
                    input[..4].copy_from_slice(&len.to_le_bytes());
                }
            }
            decode_all(&input, seed, k);
            c.mutated += 1;
        }
        // A well-formed message decodes to itself.
        4 | 5 => {
            let m = message(r);
            let input = frame_bytes(&m);
            let frames = decode_all(&input, seed, k);
            match frames.as_slice() {
                [Ok(Frame::Msg(back))] => {
                    let (a, b) = (
                        serde_json::to_value(back).expect("re-encodes"),
                        serde_json::to_value(&m).expect("encodes"),
                    );
                    assert!(same(&a, &b), "seed {seed} input {k}: {a} != {b}");
                }
                other => panic!("seed {seed} input {k}: {m:?} decoded as {other:?}"),
            }
            c.messages += 1;
        }
        // A KV link after its handshake: one frame, then a flush.
        6 => {
            let (layer, spans, data, fits) = kv_frame(r);
            // The frame's value type, and the link's (a frame of the other type is refused).
            let (sent, agreed) = (kv_wire(r), if r.coin(8) { kv_wire(r) } else { KvWire::F16 });
            let agreed = if r.coin(8) { agreed } else { sent };
            let accept = fits && sent == agreed;
            let mut input = Vec::new();
            write_kv(&mut input, sent, layer, &spans, &data);
            let seq = r.next();
            wire::write_msg(&mut input, &Msg::Flush { seq }).expect("encodes");
            let mut acks = Vec::new();
            let (ended, largest) =
                tracked(|| serve_kv_link(pool, agreed, Cursor::new(&input[..]), &mut acks));
            assert!(
                largest <= allowed_alloc(input.len()),
                "seed {seed} input {k}: {largest} bytes allocated for a {}-byte KV frame",
                input.len()
            );
            assert!(ended.is_err(), "the link ends with its input");
            match wire::read_msg(&mut &acks[..]) {
                Ok(Msg::Ack { seq: s, error }) => {
                    assert_eq!(s, seq);
                    assert_eq!(
                        error.is_none(),
                        accept,
                        "seed {seed} input {k}: layer {layer}, spans {spans:?}, {} floats: {error:?}",
                        data.len()
                    );
                }
                other => panic!("seed {seed} input {k}: answered {other:?}"),
            }
            // Spans that do not overlap land exactly as sent.
            let overlap = spans.iter().enumerate().any(|(i, a)| {
                spans[..i].iter().any(|b| {
                    a.dst_block == b.dst_block
                        && a.slots.start < b.slots.end
                        && b.slots.start < a.slots.end
                })
            });
            if accept && !overlap {
                let back = pool
                    .read_spans::<f32>(layer as usize, &spans)
                    .expect("reads");
                // f32 lands bit for bit; f16 as its value widened back.
                let want = |x: f32| match sent {
                    KvWire::F32 => x,
                    KvWire::F16 => f16::from_f32(x).to_f32(),
                };
                let same = back
                    .iter()
                    .zip(&data)
                    .all(|(a, &b)| a.to_bits() == want(b).to_bits());
                assert!(same && back.len() == data.len(), "seed {seed} input {k}");
            }
            c.kv += 1;
        }
        // What a worker does with a peer's sampler, allowed tokens and logprob request.
        _ => {
            let mut s = sampler(r);
            let logits: Vec<f32> = r.vec(70, Rng::any_f32);
            let t = s.sample(&logits);
            assert!(
                logits.len() <= 1 || (t as usize) < logits.len(),
                "seed {seed} input {k}: token {t} of {}",
                logits.len()
            );
            let lp = TokenLogprob::of(&logits, r.u32(), r.next() as u8 as usize);
            let _ = TokenLogprob::from(WireLogprob::from(&lp));
            let _ = TokenLogprob::from(logprob(r));
            c.samplers += 1;
        }
    }
}

#[test]
fn the_wire_decoder_survives_arbitrary_and_malicious_frames() {
    let inputs: usize = std::env::var("ACCELLM_WIRE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("ACCELLM_WIRE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    let pool = pool();
    let mut r = Rng(seed);
    let mut counts = Counts::default();
    let t0 = std::time::Instant::now();
    for k in 0..inputs {
        one(&mut r, &pool, seed, k, &mut counts);
    }
    assert_eq!(counts.total(), inputs);
    eprintln!(
        "wire fuzz: {inputs} inputs (seed {seed}), 0 panics, in {:.1} s: {counts:?}",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn a_length_announced_and_never_sent_allocates_nothing_large() {
    for tag in [0u8, 1] {
        let mut input = (MAX_FRAME_BYTES as u32).to_le_bytes().to_vec();
        input.push(tag);
        // A KV head announcing the largest span table the length allows.
        input.extend_from_slice(&0u32.to_le_bytes());
        input.extend_from_slice(&((MAX_FRAME_BYTES as u32 - 9) / 12).to_le_bytes());
        input.extend_from_slice(&[0; 24]);
        let (r, largest) = tracked(|| wire::read_frame(&mut Cursor::new(&input[..])));
        assert!(r.is_err());
        assert!(
            largest < 1 << 20,
            "tag {tag}: {largest} bytes allocated for a frame that never came"
        );
    }
}
