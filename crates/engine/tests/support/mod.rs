//! Test support: writes tiny random-weight GGUF files of each supported family. The files carry a
//! small SentencePiece vocabulary (specials, the 256 byte tokens, filler pieces) so llama.cpp
//! can load them too when `vocab >= 300` (see `tests/families.rs`).
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Shape of a tiny test model.
#[derive(Debug, Clone, Copy)]
pub struct TinySpec {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub layers: usize,
    pub seed: u64,
    pub dtype: GgmlDType,
    pub tied: bool,
    /// GGUF architecture: `llama`, `qwen2` or `gemma3`.
    pub arch: &'static str,
    /// Head size when it is not `hidden / heads` (written as `attention.key_length`).
    pub head_dim: Option<usize>,
    /// Llama 3 RoPE frequency factors (`rope_freqs.weight`).
    pub rope_freqs: bool,
    /// Gemma 3 sliding window (every 6th layer global).
    pub sliding_window: Option<usize>,
    /// RoPE base.
    pub rope_theta: f32,
    /// Store `dtype`'s dequantized values as F32: the same weights, for a reference that
    /// multiplies them exactly.
    pub dequantized: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            vocab: 96,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 160,
            layers: 3,
            seed: 7,
            dtype: GgmlDType::F32,
            tied: false,
            arch: "llama",
            head_dim: None,
            rope_freqs: false,
            sliding_window: None,
            rope_theta: 10_000.0,
            dequantized: false,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Writes a tiny random model into a fresh temp file and returns its path.
pub fn write_tiny_model(spec: TinySpec) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "accellm-engine-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    write_tiny_model_to(spec, &path);
    path
}

/// Writes a tiny random model to `path` (byte-identical for the same spec).
pub fn write_tiny_model_to(spec: TinySpec, path: &std::path::Path) {
    let mut rng = Rng(spec.seed);
    let hd = spec.head_dim.unwrap_or(spec.hidden / spec.heads);
    let q_dim = spec.heads * hd;
    let gemma = spec.arch == "gemma3";
    let dev = Device::Cpu;
    let mut mat = |rows: usize, cols: usize, scale: f32| -> Tensor {
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
        Tensor::from_vec(data, (rows, cols), &dev).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let q = |t: &Tensor, dt: GgmlDType| {
        let stored = QTensor::quantize(t, dt).unwrap();
        if spec.dequantized {
            QTensor::quantize(&stored.dequantize(&Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
        } else {
            stored
        }
    };
    let w = 1.0 / (spec.hidden as f32).sqrt() * 1.7;
    tensors.push((
        "token_embd.weight".into(),
        q(&mat(spec.vocab, spec.hidden, 1.0), spec.dtype),
    ));
    let norm = |n: usize, rng: &mut Rng| -> Tensor {
        let data: Vec<f32> = (0..n).map(|_| 1.0 + 0.2 * rng.next()).collect();
        Tensor::from_vec(data, n, &Device::Cpu).unwrap()
    };
    let mut rng2 = Rng(spec.seed ^ 0xABCDEF);
    tensors.push((
        "output_norm.weight".into(),
        q(&norm(spec.hidden, &mut rng2), GgmlDType::F32),
    ));
    if !spec.tied {
        tensors.push((
            "output.weight".into(),
            q(&mat(spec.vocab, spec.hidden, w), spec.dtype),
        ));
    }
    for l in 0..spec.layers {
        let p = format!("blk.{l}");
        tensors.push((
            format!("{p}.attn_q.weight"),
            q(&mat(q_dim, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            q(&mat(spec.kv_heads * hd, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            q(&mat(spec.kv_heads * hd, spec.hidden, w), spec.dtype),
        ));
        let wo = 1.0 / (q_dim as f32).sqrt() * 1.7;
        tensors.push((
            format!("{p}.attn_output.weight"),
            q(&mat(spec.hidden, q_dim, wo), spec.dtype),
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            q(&mat(spec.ffn, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.ffn_up.weight"),
            q(&mat(spec.ffn, spec.hidden, w), spec.dtype),
        ));
        let wd = 1.0 / (spec.ffn as f32).sqrt() * 1.7;
        tensors.push((
            format!("{p}.ffn_down.weight"),
            q(&mat(spec.hidden, spec.ffn, wd), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_norm.weight"),
            q(&norm(spec.hidden, &mut rng2), GgmlDType::F32),
        ));
        tensors.push((
            format!("{p}.ffn_norm.weight"),
            q(&norm(spec.hidden, &mut rng2), GgmlDType::F32),
        ));
        if spec.arch == "qwen2" {
            for (name, n) in [("attn_q", q_dim), ("attn_k", spec.kv_heads * hd)] {
                let b = mat(1, n, 0.5).flatten_all().unwrap();
                tensors.push((format!("{p}.{name}.bias"), q(&b, GgmlDType::F32)));
            }
            let b = mat(1, spec.kv_heads * hd, 0.5).flatten_all().unwrap();
            tensors.push((format!("{p}.attn_v.bias"), q(&b, GgmlDType::F32)));
        }
        if gemma {
            for (name, n) in [
                ("attn_q_norm", hd),
                ("attn_k_norm", hd),
                ("post_attention_norm", spec.hidden),
                ("post_ffw_norm", spec.hidden),
            ] {
                tensors.push((
                    format!("{p}.{name}.weight"),
                    q(&norm(n, &mut rng2), GgmlDType::F32),
                ));
            }
        }
    }
    if spec.rope_freqs {
        // Llama 3's factors: 1 for high frequencies, up to 8 for low ones.
        let f: Vec<f32> = (0..hd / 2)
            .map(|j| 1.0 + 7.0 * (j as f32 / (hd / 2 - 1).max(1) as f32).powi(2))
            .collect();
        let t = Tensor::from_vec(f, hd / 2, &dev).unwrap();
        tensors.push(("rope_freqs.weight".into(), q(&t, GgmlDType::F32)));
    }
    use gguf_file::Value as V;
    let a = spec.arch;
    let k = |key: &str| format!("{a}.{key}");
    let mut md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        (k("block_count"), V::U32(spec.layers as u32)),
        (k("embedding_length"), V::U32(spec.hidden as u32)),
        (k("feed_forward_length"), V::U32(spec.ffn as u32)),
        (k("attention.head_count"), V::U32(spec.heads as u32)),
        (k("attention.head_count_kv"), V::U32(spec.kv_heads as u32)),
        (k("rope.dimension_count"), V::U32(hd as u32)),
        (k("attention.layer_norm_rms_epsilon"), V::F32(1e-5)),
        (k("rope.freq_base"), V::F32(spec.rope_theta)),
        (k("context_length"), V::U32(2048)),
    ];
    if spec.head_dim.is_some() || gemma {
        md.push((k("attention.key_length"), V::U32(hd as u32)));
        md.push((k("attention.value_length"), V::U32(hd as u32)));
    }
    if let Some(w) = spec.sliding_window {
        md.push((k("attention.sliding_window"), V::U32(w as u32)));
    }
    if spec.vocab >= 300 {
        md.extend(tiny_vocab(spec.vocab));
    }
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// A SentencePiece vocabulary of `n >= 300` tokens llama.cpp accepts: `<unk>`, `<s>`, `</s>`,
/// the 256 byte tokens, then filler pieces.
fn tiny_vocab(n: usize) -> Vec<(String, gguf_file::Value)> {
    use gguf_file::Value as V;
    assert!(n >= 300, "tiny vocabularies need at least 300 tokens");
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for i in tokens.len()..n {
        tokens.push(format!("\u{2581}t{i}"));
        types.push(1);
    }
    let scores: Vec<V> = (0..n).map(|i| V::F32(-(i as f32))).collect();
    vec![
        ("tokenizer.ggml.model".into(), V::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        ("tokenizer.ggml.scores".into(), V::Array(scores)),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(types.into_iter().map(V::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(0)),
    ]
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Maximum absolute difference between two slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `max|a-b| / max|b|`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-12);
    max_abs_diff(a, b) / scale
}

/// Block table with consecutive ids starting at `first`, long enough for `tokens` tokens.
pub fn table(first: u32, tokens: usize, block_size: usize) -> Vec<u32> {
    (0..tokens.div_ceil(block_size) as u32)
        .map(|i| first + i)
        .collect()
}
