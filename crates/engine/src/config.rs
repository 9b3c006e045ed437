//! Model hyper-parameters read from GGUF metadata, and what differs between model families.

use candle_core::quantized::gguf_file;

use crate::error::{EngineError, Result};

/// The model families the engine runs (`general.architecture` in the GGUF file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// Llama 1-3.x, Mistral, SmolLM2, TinyLlama: SwiGLU, interleaved RoPE (llama.cpp's converter
    /// permutes Q/K for it), optional Llama 3 RoPE frequency factors (`rope_freqs.weight`).
    #[default]
    Llama,
    /// Qwen2 / Qwen2.5: Llama's shape plus biases on Q, K and V, and NeoX-style RoPE.
    Qwen2,
    /// Gemma 3: embeddings scaled by √hidden, RMS-norm on each Q and K head, norms after attention
    /// and after the MLP, GELU (tanh) gating, NeoX RoPE, and sliding-window attention on five of
    /// every six layers (with their own RoPE base).
    Gemma3,
}

impl Family {
    /// The architecture names (GGUF `general.architecture`) the engine accepts.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, gemma3";

    /// The family of a GGUF architecture name, if supported.
    pub fn from_architecture(arch: &str) -> Option<Self> {
        match arch {
            "llama" | "mistral" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// How RoPE pairs the dimensions of a head.
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Self::Llama => RopeStyle::Interleaved,
            Self::Qwen2 | Self::Gemma3 => RopeStyle::Neox,
        }
    }

    /// The MLP's gate activation.
    pub fn activation(self) -> Activation {
        match self {
            Self::Llama | Self::Qwen2 => Activation::Silu,
            Self::Gemma3 => Activation::GeluTanh,
        }
    }
}

/// How rotary embeddings pair the values of one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2j], x[2j+1])` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`).
    Interleaved,
    /// Pairs `(x[j], x[j + d/2])` (GPT-NeoX; llama.cpp's `LLAMA_ROPE_TYPE_NEOX`).
    Neox,
}

/// The gate activation of the MLP: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GeGLU).
    GeluTanh,
}

/// Shape of a model, as read from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture name from `general.architecture` (the metadata key prefix).
    pub architecture: String,
    /// Number of transformer layers (blocks).
    pub layers: usize,
    /// Hidden (embedding) size.
    pub hidden: usize,
    /// Number of query heads.
    pub heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `heads`).
    pub kv_heads: usize,
    /// Size of one attention head (`attention.key_length`, else `hidden / heads`).
    pub head_dim: usize,
    /// Inner size of the MLP.
    pub ffn_hidden: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base (of the global-attention layers).
    pub rope_theta: f32,
    /// Bytes of KV cache per token when stored as f32 (the engine's KV storage type).
    pub kv_bytes_per_token: usize,
    /// What differs between families; `Default` is Llama's behaviour.
    pub arch: ArchParams,
}

/// The family-specific parameters of a [`ModelConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArchParams {
    /// The model family.
    pub family: Family,
    /// Linear RoPE scaling of positions (`1 / rope.scaling.factor`; 1 when unscaled).
    pub rope_freq_scale: f32,
    /// Sliding attention window in tokens (a token sees itself and the `window - 1` before it),
    /// for the layers [`ModelConfig::is_sliding`] picks; `None` when every layer is global.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer (`l % n == n - 1`) is global when there is a sliding window.
    pub sliding_window_pattern: usize,
    /// RoPE base of the sliding-window layers.
    pub rope_theta_sliding: f32,
    /// Multiplier of `q · k` when it is not 1/√head_dim (Gemma 3 27B).
    pub attention_scale: Option<f32>,
    /// `cap · tanh(logit / cap)` on the final logits, if set.
    pub final_logit_softcap: Option<f32>,
}

impl Default for ArchParams {
    fn default() -> Self {
        Self {
            family: Family::Llama,
            rope_freq_scale: 1.0,
            sliding_window: None,
            sliding_window_pattern: 1,
            rope_theta_sliding: 10_000.0,
            attention_scale: None,
            final_logit_softcap: None,
        }
    }
}

impl ModelConfig {
    /// Reads the configuration from the metadata of a GGUF file.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let architecture = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".to_string());
        let family = Family::from_architecture(&architecture).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "architecture `{architecture}` (supported: {})",
                Family::SUPPORTED
            ))
        })?;
        let key = |k: &str| format!("{architecture}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            let name = key(k);
            let v = md.get(&name).ok_or_else(|| EngineError::Metadata {
                key: name.clone(),
                reason: "missing".into(),
            })?;
            let n = v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                .map_err(|e| EngineError::Metadata {
                    key: name.clone(),
                    reason: e.to_string(),
                })?;
            Ok(n as usize)
        };
        let get_f = |k: &str, default: Option<f32>| -> Result<f32> {
            let name = key(k);
            match md.get(&name) {
                Some(v) => v
                    .to_f32()
                    .or_else(|_| v.to_f64().map(|x| x as f32))
                    .map_err(|e| EngineError::Metadata {
                        key: name,
                        reason: e.to_string(),
                    }),
                None => default.ok_or(EngineError::Metadata {
                    key: name,
                    reason: "missing".into(),
                }),
            }
        };
        let layers = get_u("block_count")?;
        let hidden = get_u("embedding_length")?;
        let heads = get_u("attention.head_count")?;
        let kv_heads = get_u("attention.head_count_kv").unwrap_or(heads);
        let ffn_hidden = get_u("feed_forward_length")?;
        let context_length = get_u("context_length").unwrap_or(2048);
        let rms_eps = get_f("attention.layer_norm_rms_epsilon", Some(1e-5))?;
        let rope_theta = get_f("rope.freq_base", Some(10_000.0))?;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(EngineError::Unsupported(format!(
                "head layout heads={heads} kv_heads={kv_heads}"
            )));
        }
        let head_dim = match get_u("attention.key_length") {
            Ok(d) => d,
            Err(_) if hidden % heads == 0 => hidden / heads,
            Err(_) => {
                return Err(EngineError::Unsupported(format!(
                    "head layout hidden={hidden} heads={heads} without attention.key_length"
                )))
            }
        };
        if let Ok(v) = get_u("attention.value_length") {
            if v != head_dim {
                return Err(EngineError::Unsupported(format!(
                    "value head size {v} different from key head size {head_dim}"
                )));
            }
        }
        if head_dim % 2 != 0 {
            return Err(EngineError::Unsupported(format!(
                "odd head size {head_dim}"
            )));
        }
        if let Ok(rope_dim) = get_u("rope.dimension_count") {
            if rope_dim != head_dim {
                return Err(EngineError::Unsupported(format!(
                    "partial rotary embeddings (rope dim {rope_dim} != head dim {head_dim})"
                )));
            }
        }
        let rope_freq_scale = rope_scaling(md, &architecture)?;
        let mut arch = ArchParams {
            family,
            rope_freq_scale,
            ..ArchParams::default()
        };
        if family == Family::Gemma3 {
            if let Ok(w) = get_u("attention.sliding_window") {
                if w > 0 {
                    arch.sliding_window = Some(w);
                    arch.sliding_window_pattern = get_u("attention.sliding_window_pattern")
                        .unwrap_or(6)
                        .max(1);
                    arch.rope_theta_sliding = get_f("rope.freq_base_swa", Some(10_000.0))?;
                }
            }
            if layers == 62 {
                // Gemma 3 27B scales queries by 1/√(hidden/heads) (llama.cpp, gemma_pytorch).
                arch.attention_scale = Some(1.0 / ((hidden / heads) as f32).sqrt());
            }
            arch.final_logit_softcap = get_f("final_logit_softcapping", Some(0.0))
                .ok()
                .filter(|&c| c > 0.0);
        }
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| EngineError::Unsupported("no token_embd.weight tensor".into()))?;
        Ok(Self {
            architecture,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn_hidden,
            vocab,
            context_length,
            rms_eps,
            rope_theta,
            kv_bytes_per_token: 2 * layers * kv_heads * head_dim * std::mem::size_of::<f32>(),
            arch,
        })
    }

    /// Number of values one token's K (or V) occupies in one layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Number of values of all query heads of one token (the attention output's width).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Whether layer `l` attends through the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        let n = self.arch.sliding_window_pattern;
        self.arch.sliding_window.is_some() && l % n < n - 1
    }

    /// The attention window of layer `l` in tokens (`None`: the whole context).
    pub fn window(&self, l: usize) -> Option<usize> {
        self.arch.sliding_window.filter(|_| self.is_sliding(l))
    }

    /// RoPE base and position scale of layer `l`.
    pub fn rope_of_layer(&self, l: usize) -> (f32, f32) {
        if self.is_sliding(l) {
            (self.arch.rope_theta_sliding, 1.0)
        } else {
            (self.rope_theta, self.arch.rope_freq_scale)
        }
    }
}

/// Reads `rope.scaling.*`: linear scaling becomes a position scale; Llama 3's scaling is carried
/// by the `rope_freqs.weight` tensor (read by the model); YaRN and others are refused.
fn rope_scaling(
    md: &std::collections::HashMap<String, gguf_file::Value>,
    arch: &str,
) -> Result<f32> {
    let kind = md
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("none");
    let factor = md
        .get(&format!("{arch}.rope.scaling.factor"))
        .and_then(|v| v.to_f32().ok())
        .filter(|&f| f > 0.0);
    match (kind, factor) {
        ("none", _) | (_, None) | (_, Some(1.0)) => Ok(1.0),
        ("linear", Some(f)) => Ok(1.0 / f),
        (other, Some(f)) => Err(EngineError::Unsupported(format!(
            "RoPE scaling `{other}` (factor {f}); supported: none, linear, and Llama 3's \
             frequency factors"
        ))),
    }
}
