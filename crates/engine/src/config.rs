//! Model hyper-parameters read from GGUF metadata.

use candle_core::quantized::gguf_file;

use crate::error::{EngineError, Result};

/// Shape of a Llama-family model, as read from its GGUF metadata.
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
    /// Size of one attention head.
    pub head_dim: usize,
    /// Inner size of the MLP.
    pub ffn_hidden: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base.
    pub rope_theta: f32,
    /// Bytes of KV cache per token when stored as f32 (the engine's KV storage type).
    pub kv_bytes_per_token: usize,
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
        if !matches!(architecture.as_str(), "llama" | "mistral") {
            return Err(EngineError::Unsupported(format!(
                "architecture `{architecture}` (only the Llama family is supported)"
            )));
        }
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
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(EngineError::Unsupported(format!(
                "head layout hidden={hidden} heads={heads} kv_heads={kv_heads}"
            )));
        }
        let head_dim = hidden / heads;
        if let Ok(rope_dim) = get_u("rope.dimension_count") {
            if rope_dim != head_dim {
                return Err(EngineError::Unsupported(format!(
                    "partial rotary embeddings (rope dim {rope_dim} != head dim {head_dim})"
                )));
            }
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
        })
    }

    /// Number of values one token's K (or V) occupies in one layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
