//! The frames front and workers exchange, and the messages inside them.
//!
//! A frame is a little-endian `u32` length, a one-byte tag and the body:
//! - tag 0: one [`Msg`] as JSON (control: handshake, run this batch, report, transfer, flush);
//! - tag 1 (`f32`) or 2 (`f16`): one layer of KV for some token slots ([`KvFrame`]): `u32`
//!   layer, `u32` span count, the spans as `(dst_block, slot_start, slot_end)` triples, then the
//!   values (little-endian) in [`accellm_engine::KvPool::read_spans`]'s layout.
//!
//! Control messages are small and rare (one per iteration), so JSON costs nothing that shows and
//! keeps the schema readable; KV is raw values, so a layer costs one `memcpy`-like pass (`f16`:
//! narrowed while gathered, widened while scattered, [`KvWire`]).

use std::io::{Read, Write};
use std::path::Path;

use accellm_engine::{f16, KvSpan, KvValue, Sampler, TokenLogprob};
use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 3;

/// How KV values cross a worker-to-worker link (`accellm worker --kv-wire`).
///
/// The pool keeps `f32`; `f16` halves the bytes and rounds every value to half precision
/// (11 significant bits). A link carries `f16` only when both of its workers allow it: the
/// sender names its choice in [`Msg::PeerHello`], the receiver answers the agreed one in
/// [`Msg::PeerWelcome`] and refuses KV frames of the other type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KvWire {
    /// The pool's own values, bit for bit: a replica decodes exactly as the original would
    /// (the default: from f16 KV, greedy output can part from the original's at a near-tie,
    /// within a few tokens with 8-bit activations; docs/distributed.md).
    #[default]
    F32,
    /// Half precision: half the bytes.
    F16,
}

impl KvWire {
    /// What a link between a sender wanting `self` and a receiver wanting `other` carries.
    pub fn agree(self, other: KvWire) -> KvWire {
        if self == KvWire::F16 && other == KvWire::F16 {
            KvWire::F16
        } else {
            KvWire::F32
        }
    }

    /// Bytes of one value.
    pub fn value_bytes(self) -> usize {
        match self {
            KvWire::F32 => 4,
            KvWire::F16 => 2,
        }
    }

    fn tag(self) -> u8 {
        match self {
            KvWire::F32 => 1,
            KvWire::F16 => 2,
        }
    }
}

impl std::fmt::Display for KvWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvWire::F32 => "f32",
            KvWire::F16 => "f16",
        })
    }
}

/// A value type that travels in KV frames, and its [`KvWire`].
pub trait WireValue: KvValue {
    /// Its wire type.
    const WIRE: KvWire;
}

impl WireValue for f32 {
    const WIRE: KvWire = KvWire::F32;
}

impl WireValue for f16 {
    const WIRE: KvWire = KvWire::F16;
}

/// Largest frame accepted (a garbage length must not allocate gigabytes).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// What both sides compare at connect: the program version and the wire protocol.
pub fn version() -> String {
    format!(
        "accellm {} protocol {PROTOCOL_VERSION}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A control message did not parse.
    #[error("bad message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer sent something that is not a frame of this protocol.
    #[error("bad frame: {0}")]
    Frame(String),
}

/// Which model a process serves: file name, size and a hash of its first 4 MiB (the GGUF header,
/// metadata and the first tensors), so two copies of one file match and different files do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    /// File name.
    pub name: String,
    /// File size in bytes.
    pub bytes: u64,
    /// FNV-1a of the first 4 MiB.
    pub fingerprint: u64,
}

impl ModelId {
    /// Identifies the model file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let mut f = std::fs::File::open(path)?;
        let bytes = f.metadata()?.len();
        let mut head = Vec::new();
        (&mut f).take(4 << 20).read_to_end(&mut head)?;
        let fingerprint = head.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Ok(Self {
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            bytes,
            fingerprint,
        })
    }
}

/// A worker's model and KV pool shape, sent in [`Msg::Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Transformer layers.
    pub layers: u32,
    /// KV bytes of one token, all layers.
    pub kv_bytes_per_token: u64,
    /// The model's context length.
    pub context_length: u32,
    /// KV blocks in the worker's pool.
    pub kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
}

/// Token slots to copy, as `(src_block, dst_block, slot_start, slot_end)`.
pub type WireSpan = (u32, u32, u32, u32);

/// Spans in wire form.
pub fn to_wire(spans: &[KvSpan]) -> Vec<WireSpan> {
    spans
        .iter()
        .map(|s| (s.src_block, s.dst_block, s.slots.start, s.slots.end))
        .collect()
}

/// Spans from wire form.
pub fn from_wire(spans: &[WireSpan]) -> Vec<KvSpan> {
    spans
        .iter()
        .map(|&(src_block, dst_block, a, b)| KvSpan {
            src_block,
            dst_block,
            slots: a..b,
        })
        .collect()
}

/// One sequence of a batch (an engine `SeqInput`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSeq {
    /// Token ids to run.
    pub tokens: Vec<u32>,
    /// Position of the first.
    pub start_pos: usize,
    /// Block table on the worker.
    pub block_table: Vec<u32>,
    /// Whether logits (and so a sampled token) are wanted.
    pub want_logits: bool,
}

/// A row to sample, with the request's sampler (its random state travels with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSample {
    /// Sequence index in the batch.
    pub seq: usize,
    /// The sampler.
    pub sampler: Sampler,
    /// Forbid end-of-sequence tokens.
    pub mask_eos: bool,
    /// Return the token's logprob with this many alternatives.
    #[serde(default)]
    pub logprobs: Option<u8>,
    /// Only these tokens may be sampled (a bitset: bit `t % 32` of word `t / 32`), for output
    /// constrained by a grammar, which stays with the front.
    #[serde(default)]
    pub allowed: Option<Vec<u32>>,
}

/// A row whose logits give the logprob of the prompt token after it (echo).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WirePromptRow {
    /// Sequence index in the batch.
    pub seq: usize,
    /// The prompt token at the next position.
    pub target: u32,
    /// Alternatives wanted.
    pub top: u8,
}

/// A log-probability on the wire: `None` stands for `-inf`, which JSON cannot carry.
pub type WireLp = Option<f32>;

fn lp_to_wire(x: f32) -> WireLp {
    x.is_finite().then_some(x)
}

fn lp_from_wire(x: WireLp) -> f32 {
    x.unwrap_or(f32::NEG_INFINITY)
}

/// A token's logprob and its alternatives ([`TokenLogprob`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: WireLp,
    /// Most likely alternatives.
    pub top: Vec<(u32, WireLp)>,
}

impl From<&TokenLogprob> for WireLogprob {
    fn from(t: &TokenLogprob) -> Self {
        Self {
            token: t.token,
            logprob: lp_to_wire(t.logprob),
            top: t.top.iter().map(|&(k, l)| (k, lp_to_wire(l))).collect(),
        }
    }
}

impl From<WireLogprob> for TokenLogprob {
    fn from(w: WireLogprob) -> Self {
        Self {
            token: w.token,
            logprob: lp_from_wire(w.logprob),
            top: w
                .top
                .into_iter()
                .map(|(k, l)| (k, lp_from_wire(l)))
                .collect(),
        }
    }
}

/// One sampled row of a [`Msg::Report`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSampled {
    /// Sequence index in the batch.
    pub seq: usize,
    /// The token.
    pub token: u32,
    /// The sampler, its random state advanced.
    pub sampler: Sampler,
    /// The token's logprob, when asked for.
    pub logprob: Option<WireLogprob>,
}

/// Every control message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Front → worker, first message: who the front is and what it expects.
    Hello {
        /// [`version`] of the front.
        version: String,
        /// The model the front tokenises for.
        model: ModelId,
        /// Tokens per KV block the scheduler assumes.
        block_size: u32,
        /// KV blocks per instance the scheduler hands out.
        kv_blocks: u32,
        /// This worker's instance index.
        instance: usize,
        /// Every worker's address, by instance index (where KV copies go).
        peers: Vec<String>,
        /// End-of-sequence token ids (masked while `min_tokens` is not reached).
        eos: Vec<u32>,
    },
    /// Worker → front: accepted.
    Welcome {
        /// [`version`] of the worker.
        version: String,
        /// Its model.
        model: ModelId,
        /// Its model and pool shape.
        geometry: Geometry,
    },
    /// Either way: the handshake failed, and why.
    Refused {
        /// A sentence for the operator.
        reason: String,
    },
    /// Front → worker: run one iteration.
    Run {
        /// The core's iteration number.
        iteration: u64,
        /// The batch.
        seqs: Vec<WireSeq>,
        /// Rows to sample.
        samples: Vec<WireSample>,
        /// Rows whose logits give prompt logprobs.
        #[serde(default)]
        prompt_rows: Vec<WirePromptRow>,
        /// Layer-wise copies of new KV: `(destination instance, spans)`.
        copies: Vec<(usize, Vec<WireSpan>)>,
    },
    /// Worker → front: the iteration ran (its copies have landed).
    Report {
        /// Which iteration.
        iteration: u64,
        /// One per sampled row.
        tokens: Vec<WireSampled>,
        /// The logprobs of the run's prompt rows, in order.
        #[serde(default)]
        prompt_logprobs: Vec<WireLogprob>,
        /// The forward pass failed.
        error: Option<String>,
        /// A layer-wise copy to a partner failed.
        #[serde(default)]
        copy_error: Option<String>,
        /// Wall time on the worker.
        elapsed_s: f64,
        /// KV bytes sent to partners by this iteration's copies.
        copied_bytes: u64,
    },
    /// Front → worker: copy every layer of these slots to instance `to`.
    Transfer {
        /// Transfer id.
        id: u32,
        /// Destination instance.
        to: usize,
        /// Slots.
        spans: Vec<WireSpan>,
    },
    /// Worker → front: a transfer landed (or failed).
    TransferDone {
        /// Transfer id.
        id: u32,
        /// Why it failed.
        error: Option<String>,
        /// KV bytes sent.
        bytes: u64,
    },
    /// Worker → worker, first message on a KV link.
    PeerHello {
        /// [`version`] of the sender.
        version: String,
        /// Its model.
        model: ModelId,
        /// Its instance index.
        from: usize,
        /// The KV value type the sender would send.
        kv_wire: KvWire,
    },
    /// Worker → worker: the KV link is open.
    PeerWelcome {
        /// [`version`] of the receiver.
        version: String,
        /// The KV value type the link carries (see [`KvWire`]).
        kv_wire: KvWire,
        /// The receiver's Unix socket for KV links from this host (see
        /// `super::worker`), when it has one.
        local: Option<String>,
    },
    /// Worker → worker: reply with [`Msg::Ack`] once every earlier KV frame is written.
    Flush {
        /// Echoed in the ack.
        seq: u64,
    },
    /// Worker → worker: everything before flush `seq` is in the pool.
    Ack {
        /// The flush answered.
        seq: u64,
        /// The first write error since the last ack.
        error: Option<String>,
    },
}

/// KV values as they crossed the link.
#[derive(Debug, Clone, PartialEq)]
pub enum KvData {
    /// Full precision.
    F32(Vec<f32>),
    /// Half precision.
    F16(Vec<f16>),
}

impl KvData {
    /// The values' wire type.
    pub fn wire(&self) -> KvWire {
        match self {
            KvData::F32(_) => KvWire::F32,
            KvData::F16(_) => KvWire::F16,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            KvData::F32(d) => d.len(),
            KvData::F16(d) => d.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            KvData::F32(d) => d.clone(),
            KvData::F16(d) => d.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// One layer of KV for some token slots (slots named by their destination blocks).
#[derive(Debug, Clone, PartialEq)]
pub struct KvFrame {
    /// Layer.
    pub layer: u32,
    /// Destination slots (`src_block` equals `dst_block`).
    pub spans: Vec<KvSpan>,
    /// K and V values in `read_spans` layout.
    pub data: KvData,
}

impl KvFrame {
    /// Writes the values into `pool` (widened to its `f32`).
    pub fn write_into(&self, pool: &accellm_engine::KvPool) -> accellm_engine::Result<()> {
        let layer = self.layer as usize;
        match &self.data {
            KvData::F32(d) => pool.write_spans(layer, &self.spans, d),
            KvData::F16(d) => pool.write_spans(layer, &self.spans, d),
        }
    }
}

/// A frame read off a connection.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A control message.
    Msg(Msg),
    /// KV.
    Kv(KvFrame),
}

/// Writes a control message.
pub fn write_msg(w: &mut impl Write, m: &Msg) -> Result<(), WireError> {
    let body = serde_json::to_vec(m)?;
    let mut buf = Vec::with_capacity(body.len() + 5);
    buf.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    buf.push(0);
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Writes one layer of KV for `spans` (their destination blocks are sent), as `T`.
pub fn write_kv<T: WireValue>(
    w: &mut impl Write,
    layer: u32,
    spans: &[KvSpan],
    data: &[T],
) -> Result<(), WireError> {
    let len = 1 + 8 + 12 * spans.len() + std::mem::size_of_val(data);
    if len > MAX_FRAME_BYTES {
        return Err(WireError::Frame(format!(
            "KV frame of {len} bytes is too large"
        )));
    }
    let mut head = Vec::with_capacity(13 + 12 * spans.len());
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.push(T::WIRE.tag());
    head.extend_from_slice(&layer.to_le_bytes());
    head.extend_from_slice(&(spans.len() as u32).to_le_bytes());
    for s in spans {
        for x in [s.dst_block, s.slots.start, s.slots.end] {
            head.extend_from_slice(&x.to_le_bytes());
        }
    }
    w.write_all(&head)?;
    // Layers are megabytes: send the values as they lie in memory (little-endian hosts only,
    // see the compile-time check below).
    w.write_all(bytemuck::cast_slice(data))?;
    Ok(())
}

// KV values cross the wire as they lie in memory, which is little-endian on every target this
// builds for; a big-endian port would need byte swaps in `write_kv` and `read_values`.
#[cfg(target_endian = "big")]
compile_error!("the KV wire format assumes a little-endian host");

fn u32_at(b: &[u8], at: usize) -> Result<u32, WireError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| WireError::Frame("truncated KV frame".into()))
}

/// Reads exactly `n` bytes, growing the buffer as they arrive: a length announced by a peer is
/// never allocated before the bytes are there (a lying header costs nothing).
fn read_bytes(r: &mut impl Read, n: usize) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::new();
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() < n {
        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(buf)
}

/// Reads `n` little-endian values straight into their buffer (see `write_kv`), growing it by
/// doubling from 8 Ki values as they arrive, for the reason [`read_bytes`] gives.
fn read_values<T: bytemuck::Pod>(r: &mut impl Read, n: usize) -> Result<Vec<T>, WireError> {
    let mut data: Vec<T> = Vec::new();
    while data.len() < n {
        let at = data.len();
        let step = at.max(8 << 10).min(n - at);
        data.resize(at + step, T::zeroed());
        r.read_exact(bytemuck::cast_slice_mut(&mut data[at..]))?;
    }
    Ok(data)
}

/// Reads the next frame.
///
/// Never panics, whatever the bytes; allocates in proportion to the bytes received, never more
/// than twice the frame's length (`tests/wire_fuzz.rs` checks both).
pub fn read_frame(r: &mut impl Read) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(WireError::Frame(format!("frame length {len}")));
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    match tag[0] {
        0 => {
            let body = read_bytes(r, len - 1)?;
            Ok(Frame::Msg(serde_json::from_slice(&body)?))
        }
        tag @ (1 | 2) => {
            let wire = if tag == 1 { KvWire::F32 } else { KvWire::F16 };
            let size = wire.value_bytes();
            let mut head = [0u8; 8];
            if len < 9 {
                return Err(WireError::Frame("truncated KV frame".into()));
            }
            r.read_exact(&mut head)?;
            let layer = u32_at(&head, 0)?;
            let n = u32_at(&head, 4)? as usize;
            let data_at = n
                .checked_mul(12)
                .and_then(|b| b.checked_add(9))
                .filter(|&d| d <= len && (len - d).is_multiple_of(size))
                .ok_or_else(|| WireError::Frame("KV frame with a bad length".into()))?;
            let raw = read_bytes(r, 12 * n)?;
            let spans = raw
                .chunks_exact(12)
                .map(|c| {
                    let b = u32_at(c, 0)?;
                    Ok(KvSpan {
                        src_block: b,
                        dst_block: b,
                        slots: u32_at(c, 4)?..u32_at(c, 8)?,
                    })
                })
                .collect::<Result<Vec<_>, WireError>>()?;
            let n = (len - data_at) / size;
            let data = match wire {
                KvWire::F32 => KvData::F32(read_values(r, n)?),
                KvWire::F16 => KvData::F16(read_values(r, n)?),
            };
            Ok(Frame::Kv(KvFrame { layer, spans, data }))
        }
        t => Err(WireError::Frame(format!("unknown frame tag {t}"))),
    }
}

/// Reads the next frame, which must be a control message.
pub fn read_msg(r: &mut impl Read) -> Result<Msg, WireError> {
    match read_frame(r)? {
        Frame::Msg(m) => Ok(m),
        Frame::Kv(_) => Err(WireError::Frame(
            "expected a control message, got KV".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &Msg::Flush { seq: 7 }).unwrap();
        let spans = vec![KvSpan {
            src_block: 3,
            dst_block: 5,
            slots: 1..4,
        }];
        write_kv(&mut buf, 2, &spans, &[1.5f32, -2.0, 3.25]).unwrap();
        write_kv(
            &mut buf,
            3,
            &spans,
            &[f16::from_f32(1.5), f16::from_f32(-2.0)],
        )
        .unwrap();
        let mut r = &buf[..];
        assert!(matches!(read_msg(&mut r).unwrap(), Msg::Flush { seq: 7 }));
        match read_frame(&mut r).unwrap() {
            Frame::Kv(k) => {
                assert_eq!(k.layer, 2);
                assert_eq!(k.spans[0].dst_block, 5);
                assert_eq!(k.spans[0].slots, 1..4);
                assert_eq!(k.data, KvData::F32(vec![1.5, -2.0, 3.25]));
            }
            Frame::Msg(m) => panic!("expected KV, got {m:?}"),
        }
        match read_frame(&mut r).unwrap() {
            Frame::Kv(k) => {
                assert_eq!(k.layer, 3);
                assert_eq!(k.data.to_f32(), vec![1.5, -2.0]);
                assert_eq!(k.data.wire(), KvWire::F16);
            }
            Frame::Msg(m) => panic!("expected KV, got {m:?}"),
        }
        assert!(read_frame(&mut r).is_err(), "end of stream is an error");
    }

    #[test]
    fn a_link_carries_f16_only_when_both_ends_allow_it() {
        assert_eq!(KvWire::F16.agree(KvWire::F16), KvWire::F16);
        assert_eq!(KvWire::F16.agree(KvWire::F32), KvWire::F32);
        assert_eq!(KvWire::F32.agree(KvWire::F16), KvWire::F32);
        // An f16 frame has half the bytes of an f32 one, and a body of odd length is refused.
        let spans = [KvSpan {
            src_block: 0,
            dst_block: 0,
            slots: 0..1,
        }];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_kv(&mut a, 0, &spans, &[0.0f32; 64]).unwrap();
        write_kv(&mut b, 0, &spans, &[f16::ZERO; 64]).unwrap();
        assert_eq!(a.len() - b.len(), 128);
        let mut odd = b.clone();
        odd[0] += 1;
        odd.push(0);
        assert!(matches!(
            read_frame(&mut &odd[..]),
            Err(WireError::Frame(_))
        ));
    }

    #[test]
    fn garbage_is_refused() {
        let mut r: &[u8] = &[5, 0, 0, 0, 9, 1, 2, 3, 4];
        assert!(matches!(read_frame(&mut r), Err(WireError::Frame(_))));
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn samplers_travel_with_their_state() {
        let mut s = Sampler::new(accellm_engine::SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            ..Default::default()
        });
        let logits = [0.1f32, 0.2, 0.3, 0.4];
        s.sample(&logits);
        let mut buf = Vec::new();
        let m = Msg::Report {
            iteration: 1,
            tokens: vec![WireSampled {
                seq: 0,
                token: 1,
                sampler: s.clone(),
                logprob: Some(WireLogprob::from(&TokenLogprob {
                    token: 1,
                    logprob: f32::NEG_INFINITY,
                    top: vec![(2, -0.5)],
                })),
            }],
            prompt_logprobs: Vec::new(),
            error: None,
            copy_error: None,
            elapsed_s: 0.0,
            copied_bytes: 0,
        };
        write_msg(&mut buf, &m).unwrap();
        let Msg::Report { mut tokens, .. } = read_msg(&mut &buf[..]).unwrap() else {
            panic!("not a report");
        };
        let row = tokens.remove(0);
        let lp = TokenLogprob::from(row.logprob.expect("logprob sent"));
        assert_eq!(lp.logprob, f32::NEG_INFINITY, "-inf survives JSON");
        assert_eq!(lp.top, vec![(2, -0.5)]);
        let mut back = row.sampler;
        let a: Vec<u32> = (0..20).map(|_| s.sample(&logits)).collect();
        let b: Vec<u32> = (0..20).map(|_| back.sample(&logits)).collect();
        assert_eq!(a, b);
        assert_eq!(s.generated(), back.generated());
    }
}
