//! A transformer loaded from GGUF (Llama, Qwen2 or Gemma 3 family, see [`Family`]), and its
//! batched forward pass over paged KV.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::attention::{attend_heads, attend_row, silu_mul, AttnShape, RowCtx};
use crate::batch::{ForwardBatch, ForwardOutput, PhaseTimings};
use crate::config::{Activation, Family, ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::kv::KvPool;
use crate::linear::{Linear, WeightFormat};
use std::time::Instant;

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: output `[heads*hd | kv_heads*hd | kv_heads*hd]`.
    qkv: Linear,
    /// Biases of Q, K and V stacked the same way (Qwen2).
    qkv_bias: Option<Vec<f32>>,
    /// RMS-norm weights applied to every Q head and every K head before RoPE (Gemma 3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    o: Linear,
    /// RMS-norm of the attention output before the residual add (Gemma 3).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: output `[ffn | ffn]`.
    gate_up: Linear,
    down: Linear,
    /// RMS-norm of the MLP output before the residual add (Gemma 3).
    post_ffn_norm: Option<Vec<f32>>,
    /// Index of this layer's rotary embedding in `Model::ropes`.
    rope: usize,
    /// Attention window in tokens (`usize::MAX`: the whole context).
    window: usize,
}

/// One rotary embedding: inverse frequencies (`head_dim / 2`) and the position scale.
#[derive(Debug, Clone, PartialEq)]
struct Rope {
    inv_freq: Vec<f32>,
    pos_scale: f32,
}

/// Model weights, shared read-only by every instance (wrap it in an `Arc`).
pub struct Model {
    config: ModelConfig,
    format: WeightFormat,
    /// Token embeddings in their stored format; rows are dequantized on lookup.
    embed: QTensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    /// The distinct rotary embeddings of the layers (one, or global and sliding-window).
    ropes: Vec<Rope>,
    /// With [`WeightFormat::Native`]: a projection stored in a type candle multiplies with
    /// scalar code ([`crate::linear::scalar_in_candle`]).
    scalar_native: Option<GgmlDType>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

fn vec_of(t: &QTensor) -> Result<Vec<f32>> {
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl Model {
    /// Loads a GGUF file of a supported family, converting the projection weights to `format`.
    pub fn load(path: impl AsRef<Path>, format: WeightFormat) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let gguf_err = |source| EngineError::Gguf {
            path: path.to_path_buf(),
            source,
        };
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| unsupported_dtype(e, path))?;
        let config = ModelConfig::from_gguf(&content)?;
        let family = config.arch.family;
        let started = std::time::Instant::now();
        let dev = Device::Cpu;
        let has = |name: &str| content.tensor_infos.contains_key(name);
        if has("blk.0.attn_qkv.weight") && !has("blk.0.attn_q.weight") {
            return Err(EngineError::Unsupported(
                "fused `attn_qkv` projection tensors (separate attn_q/attn_k/attn_v expected)"
                    .into(),
            ));
        }
        let mut get = |name: &str| -> Result<QTensor> {
            if !content.tensor_infos.contains_key(name) {
                return Err(EngineError::Unsupported(format!(
                    "missing tensor `{name}` (for the {family:?} family)"
                )));
            }
            content.tensor(&mut file, name, &dev).map_err(gguf_err)
        };
        let embed = get("token_embd.weight")?;
        let norm = vec_of(&get("output_norm.weight")?)?;
        let hd = config.head_dim;
        let mut ropes: Vec<Rope> = Vec::new();
        // Llama 3's RoPE scaling: one divisor per frequency.
        let freq_factors = if has("rope_freqs.weight") {
            let f = vec_of(&get("rope_freqs.weight")?)?;
            if f.len() != hd / 2 {
                return Err(EngineError::Unsupported(format!(
                    "rope_freqs.weight has {} values, expected {}",
                    f.len(),
                    hd / 2
                )));
            }
            Some(f)
        } else {
            None
        };
        let scalar_native = (format == WeightFormat::Native)
            .then(|| {
                content
                    .tensor_infos
                    .iter()
                    .filter(|(name, _)| {
                        name.starts_with("blk.") || name.as_str() == "output.weight"
                    })
                    .map(|(_, info)| info.ggml_dtype)
                    .find(|&d| crate::linear::scalar_in_candle(d))
            })
            .flatten();
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = format!("blk.{l}");
            let qkv = Linear::new(
                vec![
                    get(&format!("{p}.attn_q.weight"))?,
                    get(&format!("{p}.attn_k.weight"))?,
                    get(&format!("{p}.attn_v.weight"))?,
                ],
                format,
            )?;
            let o = Linear::new(vec![get(&format!("{p}.attn_output.weight"))?], format)?;
            let gate_up = Linear::new(
                vec![
                    get(&format!("{p}.ffn_gate.weight"))?,
                    get(&format!("{p}.ffn_up.weight"))?,
                ],
                format,
            )?;
            let down = Linear::new(vec![get(&format!("{p}.ffn_down.weight"))?], format)?;
            let expect_qkv = (config.heads + 2 * config.kv_heads) * config.head_dim;
            if qkv.out_dim() != expect_qkv
                || gate_up.out_dim() != 2 * config.ffn_hidden
                || o.out_dim() != config.hidden
                || down.out_dim() != config.hidden
            {
                return Err(EngineError::Unsupported(format!(
                    "layer {l} tensor shapes do not match the metadata"
                )));
            }
            let bias_names = ["attn_q", "attn_k", "attn_v"].map(|n| format!("{p}.{n}.bias"));
            let qkv_bias = if bias_names.iter().any(|n| has(n)) {
                let mut b = Vec::with_capacity(expect_qkv);
                for n in &bias_names {
                    b.extend(vec_of(&get(n)?)?);
                }
                if b.len() != expect_qkv {
                    return Err(EngineError::Unsupported(format!(
                        "layer {l} Q/K/V bias sizes do not match the metadata"
                    )));
                }
                Some(b)
            } else if family == Family::Qwen2 {
                return Err(EngineError::Unsupported(format!(
                    "missing tensor `{p}.attn_q.bias` (Qwen2 has Q/K/V biases)"
                )));
            } else {
                None
            };
            let gemma = family == Family::Gemma3;
            let mut opt_norm = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if !gemma {
                    return Ok(None);
                }
                let w = vec_of(&get(&format!("{p}.{name}.weight"))?)?;
                if w.len() != len {
                    return Err(EngineError::Unsupported(format!(
                        "{p}.{name}.weight has {} values, expected {len}",
                        w.len()
                    )));
                }
                Ok(Some(w))
            };
            let q_norm = opt_norm("attn_q_norm", hd)?;
            let k_norm = opt_norm("attn_k_norm", hd)?;
            let post_attn_norm = opt_norm("post_attention_norm", config.hidden)?;
            let post_ffn_norm = opt_norm("post_ffw_norm", config.hidden)?;
            let (theta, pos_scale) = config.rope_of_layer(l);
            let sliding = config.is_sliding(l);
            let rope = Rope {
                inv_freq: (0..hd / 2)
                    .map(|j| {
                        let f = 1f32 / theta.powf((2 * j) as f32 / hd as f32);
                        match &freq_factors {
                            // Llama 3's factors; only global layers would carry them.
                            Some(ff) if !sliding => f / ff[j],
                            _ => f,
                        }
                    })
                    .collect(),
                pos_scale,
            };
            let rope = match ropes.iter().position(|r| *r == rope) {
                Some(i) => i,
                None => {
                    ropes.push(rope);
                    ropes.len() - 1
                }
            };
            layers.push(Layer {
                attn_norm: vec_of(&get(&format!("{p}.attn_norm.weight"))?)?,
                qkv,
                qkv_bias,
                qk_norm: q_norm.zip(k_norm),
                o,
                post_attn_norm,
                ffn_norm: vec_of(&get(&format!("{p}.ffn_norm.weight"))?)?,
                gate_up,
                down,
                post_ffn_norm,
                rope,
                window: config.window(l).unwrap_or(usize::MAX),
            });
        }
        let lm_head = if content.tensor_infos.contains_key("output.weight") {
            Linear::new(vec![get("output.weight")?], format)?
        } else {
            // Tied embeddings: the output projection reuses the embedding table.
            let data = embed.data()?.into_owned();
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Owned(data),
                &dev,
                embed.dtype(),
            )?;
            Linear::new(vec![QTensor::new(storage, embed.shape().clone())?], format)?
        };
        tracing::info!(
            path = %path.display(),
            architecture = %config.architecture,
            format = %format,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Self {
            config,
            format,
            embed,
            layers,
            norm,
            lm_head,
            ropes,
            scalar_native,
        })
    }

    /// Refuses to serve a [`WeightFormat::Native`] model whose projections candle multiplies with
    /// scalar code: measured on an AVX-512 EPYC, SmolLM2's Q4_1 runs 21 tokens/s in decode and in
    /// prefill (one thread) against 121 and 414 with `blocks`; 12–13 tokens/s decode on AVX2.
    pub fn check_servable(&self) -> Result<()> {
        match self.scalar_native {
            Some(d) => Err(EngineError::Unsupported(format!(
                "--weight-format native keeps this model's {d:?} projections, which candle \
                 multiplies with scalar code (about 20 tokens/s): serve it with \
                 --weight-format {} (this CPU's default) or q8-padded",
                WeightFormat::for_this_cpu()
            ))),
            None => Ok(()),
        }
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weight format chosen at load.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of projection weights (what one decode step streams from memory), lm head included.
    pub fn weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.o.weight_bytes()
                    + l.gate_up.weight_bytes()
                    + l.down.weight_bytes()
            })
            .sum::<usize>()
            + self.lm_head.weight_bytes()
    }

    /// Multiply-accumulates of the projections per token, lm head excluded (it runs only for
    /// rows that need logits).
    pub fn macs_per_token(&self) -> usize {
        let c = &self.config;
        c.layers
            * (c.hidden * (c.heads + 2 * c.kv_heads) * c.head_dim
                + c.q_dim() * c.hidden
                + 3 * c.hidden * c.ffn_hidden)
    }

    /// Runs one iteration; see [`Model::forward_with`].
    pub fn forward(&self, pool: &KvPool, batch: &ForwardBatch) -> Result<ForwardOutput> {
        self.forward_with(pool, batch, |_| {})
    }

    /// Runs one iteration over every token of `batch`, storing their K and V in `pool` at the
    /// positions given by each sequence's block table, and returns logits for the sequences that
    /// want them. `on_layer_done(l)` is called as soon as layer `l`'s K/V of this batch are in
    /// the pool and its lock is released (so a copy of layer `l` may start).
    ///
    /// Parallel work runs on the current rayon pool (use [`crate::Threads::install`]).
    pub fn forward_with(
        &self,
        pool: &KvPool,
        batch: &ForwardBatch,
        mut on_layer_done: impl FnMut(usize),
    ) -> Result<ForwardOutput> {
        let c = &self.config;
        let started = Instant::now();
        let (mut mm, mut at) = (0f64, 0f64);
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        self.validate(pool, batch)?;
        let t = batch.num_tokens();
        if t == 0 {
            for l in 0..c.layers {
                on_layer_done(l);
            }
            return Ok(ForwardOutput {
                logits: vec![None; batch.seqs.len()],
                timings: PhaseTimings::default(),
            });
        }
        let hidden = c.hidden;
        let hd = c.head_dim;
        let q_dim = c.q_dim();
        let kv_dim = c.kv_heads * hd;
        let qkv_dim = q_dim + 2 * kv_dim;
        let family = c.arch.family;

        let mut rows: Vec<RowCtx<'_>> = Vec::with_capacity(t);
        let mut ids: Vec<u32> = Vec::with_capacity(t);
        for s in &batch.seqs {
            for (i, &tok) in s.tokens.iter().enumerate() {
                rows.push(RowCtx {
                    pos: s.start_pos + i,
                    table: &s.block_table,
                });
                ids.push(tok);
            }
        }
        // Token embeddings.
        let ids_t = Tensor::from_vec(ids, t, &Device::Cpu)?;
        let mut h = self
            .embed
            .embedding(&ids_t)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if family == Family::Gemma3 {
            let scale = (hidden as f32).sqrt();
            h.iter_mut().for_each(|x| *x *= scale);
        }

        // RoPE tables for every row, one set per distinct rotary embedding.
        let half = hd / 2;
        let tables: Vec<(Vec<f32>, Vec<f32>)> = self
            .ropes
            .iter()
            .map(|rope| {
                let mut cos = vec![0f32; t * half];
                let mut sin = vec![0f32; t * half];
                for (r, row) in rows.iter().enumerate() {
                    let p = row.pos as f32 * rope.pos_scale;
                    for (j, f) in rope.inv_freq.iter().enumerate() {
                        let a = p * f;
                        cos[r * half + j] = a.cos();
                        sin[r * half + j] = a.sin();
                    }
                }
                (cos, sin)
            })
            .collect();
        let rope_style = family.rope_style();

        let bs = pool.block_size();
        let mut xn = vec![0f32; t * hidden];
        let mut attn = vec![0f32; t * q_dim];
        for (l, layer) in self.layers.iter().enumerate() {
            let base = AttnShape::of(pool, c.heads);
            let shape = AttnShape {
                scale: c.arch.attention_scale.unwrap_or(base.scale),
                window: layer.window,
                ..base
            };
            rms_norm(&h, &layer.attn_norm, c.rms_eps, &mut xn);
            let t0 = Instant::now();
            let mut qkv = layer.qkv.forward(&xn, t)?;
            mm += ms(t0);
            let (cos, sin) = &tables[layer.rope];
            for (r, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                if let Some(b) = &layer.qkv_bias {
                    add_in_place(row, b);
                }
                if let Some((qn, kn)) = &layer.qk_norm {
                    let (q, rest) = row.split_at_mut(q_dim);
                    q.chunks_exact_mut(hd)
                        .for_each(|head| rms_norm_in_place(head, qn, c.rms_eps));
                    rest[..kv_dim]
                        .chunks_exact_mut(hd)
                        .for_each(|head| rms_norm_in_place(head, kn, c.rms_eps));
                }
                let (cs, sn) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    match rope_style {
                        RopeStyle::Interleaved => rope_interleaved(head, cs, sn),
                        RopeStyle::Neox => rope_neox(head, cs, sn),
                    }
                }
            }
            let t0 = Instant::now();
            {
                let mut kv = pool.write_layer(l)?;
                let kv = &mut *kv;
                for (row, vals) in rows.iter().zip(qkv.chunks_exact(qkv_dim)) {
                    let blk = row.table[row.pos / bs] as usize;
                    let slot = row.pos % bs;
                    for kvh in 0..c.kv_heads {
                        let o = pool.offset(blk, kvh, slot);
                        let src = q_dim + kvh * hd;
                        kv.k[o..o + hd].copy_from_slice(&vals[src..src + hd]);
                        kv.v[o..o + hd].copy_from_slice(&vals[src + kv_dim..src + kv_dim + hd]);
                    }
                }
                let kv = &*kv;
                let qkv = &qkv;
                if t < rayon::current_num_threads() {
                    // Fewer rows than threads (a lone decode step): one work item per head.
                    let heads = c.heads;
                    attn.par_chunks_mut(hd).enumerate().for_each_init(
                        Vec::new,
                        |scores, (i, out)| {
                            let (r, h) = (i / heads, i % heads);
                            let q = &qkv[r * qkv_dim + h * hd..r * qkv_dim + (h + 1) * hd];
                            attend_heads(&shape, kv, rows[r], h..h + 1, q, out, scores);
                        },
                    );
                } else {
                    attn.par_chunks_mut(q_dim)
                        .zip(rows.par_iter())
                        .enumerate()
                        .for_each_init(Vec::new, |scores, (r, (out, row))| {
                            let q = &qkv[r * qkv_dim..r * qkv_dim + q_dim];
                            attend_row(&shape, kv, *row, q, out, scores);
                        });
                }
            }
            at += ms(t0);
            on_layer_done(l);
            let t0 = Instant::now();
            let mut o = layer.o.forward(&attn, t)?;
            mm += ms(t0);
            if let Some(w) = &layer.post_attn_norm {
                o.chunks_exact_mut(hidden)
                    .for_each(|row| rms_norm_in_place(row, w, c.rms_eps));
            }
            add_in_place(&mut h, &o);
            rms_norm(&h, &layer.ffn_norm, c.rms_eps, &mut xn);
            let t0 = Instant::now();
            let gu = layer.gate_up.forward(&xn, t)?;
            mm += ms(t0);
            let ff = c.ffn_hidden;
            let mut act = vec![0f32; t * ff];
            for (a, g) in act.chunks_exact_mut(ff).zip(gu.chunks_exact(2 * ff)) {
                let (gate, up) = g.split_at(ff);
                match family.activation() {
                    Activation::Silu => silu_mul(gate, up, a),
                    Activation::GeluTanh => gelu_tanh_mul(gate, up, a),
                }
            }
            let t0 = Instant::now();
            let mut d = layer.down.forward(&act, t)?;
            mm += ms(t0);
            if let Some(w) = &layer.post_ffn_norm {
                d.chunks_exact_mut(hidden)
                    .for_each(|row| rms_norm_in_place(row, w, c.rms_eps));
            }
            add_in_place(&mut h, &d);
        }

        // Logits only for the last row of each sequence that wants them.
        let mut picked = Vec::new();
        let mut which = Vec::new();
        let mut row = 0;
        for (i, s) in batch.seqs.iter().enumerate() {
            row += s.tokens.len();
            if s.want_logits && !s.tokens.is_empty() {
                picked.extend_from_slice(&h[(row - 1) * hidden..row * hidden]);
                which.push(i);
            }
        }
        let mut logits = vec![None; batch.seqs.len()];
        if !which.is_empty() {
            let n = which.len();
            let mut hn = vec![0f32; n * hidden];
            rms_norm(&picked, &self.norm, c.rms_eps, &mut hn);
            let t0 = Instant::now();
            let mut out = self.lm_head.forward(&hn, n)?;
            mm += ms(t0);
            let vocab = self.lm_head.out_dim();
            if let Some(cap) = c.arch.final_logit_softcap {
                out.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
            }
            for (k, &i) in which.iter().enumerate() {
                logits[i] = Some(out[k * vocab..(k + 1) * vocab].to_vec());
            }
        }
        let timings = PhaseTimings {
            matmul_ms: mm,
            attention_ms: at,
            total_ms: ms(started),
        };
        Ok(ForwardOutput { logits, timings })
    }

    fn validate(&self, pool: &KvPool, batch: &ForwardBatch) -> Result<()> {
        let c = &self.config;
        if !pool.fits(c) {
            return Err(EngineError::InvalidBatch(format!(
                "KV pool {pool:?} does not match the model ({} layers, {} kv heads, head dim {})",
                c.layers, c.kv_heads, c.head_dim
            )));
        }
        let bs = pool.block_size();
        for (i, s) in batch.seqs.iter().enumerate() {
            if let Some(&tok) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::InvalidBatch(format!(
                    "sequence {i}: token id {tok} outside the vocabulary ({})",
                    c.vocab
                )));
            }
            // Checked: a batch from a remote front carries any position.
            let end = s.start_pos.checked_add(s.tokens.len()).ok_or_else(|| {
                EngineError::InvalidBatch(format!(
                    "sequence {i}: start position {} overflows",
                    s.start_pos
                ))
            })?;
            if s.block_table.len().saturating_mul(bs) < end {
                return Err(EngineError::InvalidBatch(format!(
                    "sequence {i}: block table of {} blocks cannot hold {end} tokens",
                    s.block_table.len()
                )));
            }
            let needed = end.div_ceil(bs);
            if let Some(&b) = s.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= pool.num_blocks())
            {
                return Err(EngineError::InvalidBatch(format!(
                    "sequence {i}: block id {b} outside the pool ({} blocks)",
                    pool.num_blocks()
                )));
            }
        }
        Ok(())
    }
}

/// GGML tensor types candle cannot read, by type id (ggml.h), for a clear error.
const GGML_TYPE_NAMES: &[(u32, &str)] = &[
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The weight formats the engine reads (every one is converted to the chosen [`WeightFormat`]).
pub const SUPPORTED_TENSOR_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// Turns candle's "unknown dtype for tensor N" into an error naming the GGML type.
fn unsupported_dtype(e: candle_core::Error, path: &Path) -> EngineError {
    let msg = e.to_string();
    if let Some(id) = msg
        .split("unknown dtype for tensor ")
        .nth(1)
        // Only the leading digits: with RUST_BACKTRACE set, a backtrace follows the number.
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
    {
        let name = GGML_TYPE_NAMES
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("type {id}"), |(_, n)| n.to_string());
        return EngineError::Unsupported(format!(
            "tensor format {name} in {} (supported: {SUPPORTED_TENSOR_TYPES})",
            path.display()
        ));
    }
    EngineError::Gguf {
        path: path.to_path_buf(),
        source: e,
    }
}

/// `out = x / rms(x) * w`, row by row (rows of `w.len()` values).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (o, x) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let sum2: f32 = x.iter().map(|v| v * v).sum();
        let m = (sum2 / dim as f32 + eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x / m * w;
        }
    }
}

/// RMS-norm of one row in place (`w.len() == x.len()`).
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sum2 / x.len() as f32 + eps).sqrt();
    for (x, &w) in x.iter_mut().zip(w) {
        *x *= inv * w;
    }
}

/// `out[i] = gelu(gate[i]) * up[i]` with GELU's tanh approximation (Gemma's GeGLU).
fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let inner = SQRT_2_OVER_PI * g * (1.0 + 0.044_715 * g * g);
        *o = 0.5 * g * (1.0 + inner.tanh()) * u;
    }
}

/// NeoX-style rotary embedding of one head: pairs `(x[j], x[j + d/2])` rotate by angle `j`.
fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    for ((a, b), (&c, &s)) in lo.iter_mut().zip(hi.iter_mut()).zip(cos.iter().zip(sin)) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// Interleaved rotary embedding of one head: pairs `(x[2j], x[2j+1])` rotate by angle `j`.
fn rope_interleaved(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

fn add_in_place(h: &mut [f32], d: &[f32]) {
    for (h, d) in h.iter_mut().zip(d) {
        *h += d;
    }
}
