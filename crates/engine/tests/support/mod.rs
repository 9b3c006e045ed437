//! Test support: writes tiny random-weight Llama GGUF files.
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

/// Writes a tiny random Llama model into a fresh temp file and returns its path.
pub fn write_tiny_model(spec: TinySpec) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "accellm-engine-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let mut rng = Rng(spec.seed);
    let hd = spec.hidden / spec.heads;
    let dev = Device::Cpu;
    let mut mat = |rows: usize, cols: usize, scale: f32| -> Tensor {
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
        Tensor::from_vec(data, (rows, cols), &dev).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let q = |t: &Tensor, dt: GgmlDType| QTensor::quantize(t, dt).unwrap();
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
            q(&mat(spec.hidden, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            q(&mat(spec.kv_heads * hd, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            q(&mat(spec.kv_heads * hd, spec.hidden, w), spec.dtype),
        ));
        tensors.push((
            format!("{p}.attn_output.weight"),
            q(&mat(spec.hidden, spec.hidden, w), spec.dtype),
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
    }
    use gguf_file::Value as V;
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(spec.layers as u32)),
        ("llama.embedding_length", V::U32(spec.hidden as u32)),
        ("llama.feed_forward_length", V::U32(spec.ffn as u32)),
        ("llama.attention.head_count", V::U32(spec.heads as u32)),
        (
            "llama.attention.head_count_kv",
            V::U32(spec.kv_heads as u32),
        ),
        ("llama.rope.dimension_count", V::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(10_000.0)),
        ("llama.context_length", V::U32(2048)),
    ];
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    path
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
