//! A Llama-family transformer loaded from GGUF, and its batched forward pass over paged KV.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::attention::{attend_row, silu_mul, AttnShape, RowCtx};
use crate::batch::{ForwardBatch, ForwardOutput, PhaseTimings};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::KvPool;
use crate::linear::{Linear, WeightFormat};
use std::time::Instant;

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: output `[heads*hd | kv_heads*hd | kv_heads*hd]`.
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: output `[ffn | ffn]`.
    gate_up: Linear,
    down: Linear,
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
    /// RoPE inverse frequencies, `head_dim / 2` of them.
    inv_freq: Vec<f32>,
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
    /// Loads a Llama-family GGUF file, converting the projection weights to `format`.
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
        let content = gguf_file::Content::read(&mut file).map_err(gguf_err)?;
        let config = ModelConfig::from_gguf(&content)?;
        let started = std::time::Instant::now();
        let dev = Device::Cpu;
        let mut get = |name: &str| -> Result<QTensor> {
            if !content.tensor_infos.contains_key(name) {
                return Err(EngineError::Unsupported(format!("missing tensor `{name}`")));
            }
            content.tensor(&mut file, name, &dev).map_err(gguf_err)
        };
        let embed = get("token_embd.weight")?;
        let norm = vec_of(&get("output_norm.weight")?)?;
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
            layers.push(Layer {
                attn_norm: vec_of(&get(&format!("{p}.attn_norm.weight"))?)?,
                qkv,
                o,
                ffn_norm: vec_of(&get(&format!("{p}.ffn_norm.weight"))?)?,
                gate_up,
                down,
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
        let hd = config.head_dim;
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1f32 / config.rope_theta.powf(i as f32 / hd as f32))
            .collect();
        tracing::info!(
            path = %path.display(),
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
            inv_freq,
        })
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
                + c.hidden * c.hidden
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
        let q_dim = c.heads * hd;
        let kv_dim = c.kv_heads * hd;
        let qkv_dim = q_dim + 2 * kv_dim;

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

        // RoPE tables for every row.
        let half = hd / 2;
        let mut cos = vec![0f32; t * half];
        let mut sin = vec![0f32; t * half];
        for (r, row) in rows.iter().enumerate() {
            let p = row.pos as f32;
            for (j, f) in self.inv_freq.iter().enumerate() {
                let a = p * f;
                cos[r * half + j] = a.cos();
                sin[r * half + j] = a.sin();
            }
        }

        let shape = AttnShape::of(pool, c.heads);
        let bs = pool.block_size();
        let mut xn = vec![0f32; t * hidden];
        let mut attn = vec![0f32; t * hidden];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&h, &layer.attn_norm, c.rms_eps, &mut xn);
            let t0 = Instant::now();
            let mut qkv = layer.qkv.forward(&xn, t)?;
            mm += ms(t0);
            for (r, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let (cs, sn) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    rope_interleaved(head, cs, sn);
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
                attn.par_chunks_mut(hidden)
                    .zip(rows.par_iter())
                    .enumerate()
                    .for_each_init(Vec::new, |scores, (r, (out, row))| {
                        let q = &qkv[r * qkv_dim..r * qkv_dim + q_dim];
                        attend_row(&shape, kv, *row, q, out, scores);
                    });
            }
            at += ms(t0);
            on_layer_done(l);
            let t0 = Instant::now();
            let o = layer.o.forward(&attn, t)?;
            mm += ms(t0);
            add_in_place(&mut h, &o);
            rms_norm(&h, &layer.ffn_norm, c.rms_eps, &mut xn);
            let t0 = Instant::now();
            let gu = layer.gate_up.forward(&xn, t)?;
            mm += ms(t0);
            let ff = c.ffn_hidden;
            let mut act = vec![0f32; t * ff];
            for (a, g) in act.chunks_exact_mut(ff).zip(gu.chunks_exact(2 * ff)) {
                let (gate, up) = g.split_at(ff);
                silu_mul(gate, up, a);
            }
            let t0 = Instant::now();
            let d = layer.down.forward(&act, t)?;
            mm += ms(t0);
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
            let out = self.lm_head.forward(&hn, n)?;
            mm += ms(t0);
            let vocab = self.lm_head.out_dim();
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
            let end = s.start_pos + s.tokens.len();
            if s.block_table.len() * bs < end {
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
