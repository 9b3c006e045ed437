//! The tokenizer of a GGUF model, built from its metadata alone.
//!
//! Two vocabulary kinds (`tokenizer.ggml.model`) are supported:
//!
//! - `gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen, ...). The vocabulary
//!   (`tokenizer.ggml.tokens`), merges (`tokenizer.ggml.merges`) and token types become a
//!   `tokenizers` BPE model. The pre-tokenizer's split regex depends on `tokenizer.ggml.pre` and
//!   must match the one the model was trained with: without it the text still round-trips, but
//!   the ids differ. Decoding maps every token back to its raw bytes (GPT-2's byte-to-unicode
//!   table, inverted), so streaming can cut text at UTF-8 boundaries.
//! - `llama`: SentencePiece with byte fallback (TinyLlama, Llama 2, Mistral v0.1, ...): scored
//!   merges as llama.cpp does them (module `spm`).
//!
//! Both share one API: encode with special tokens parsed, decode to bytes per token, BOS/EOS and
//! the ids that stop generation.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Result, TokenizerError};
use crate::gguf::{GgufMetadata, MetaValue};
use crate::spm::{self, SpmModel, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};

/// Llama 3's pre-tokenizer regex (`tokenizer.ggml.pre` = `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pre-tokenizer regex (`tokenizer.ggml.pre` = `qwen2`): Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end an assistant turn in common chat formats.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
];

/// The vocabulary kinds this crate can tokenize.
const SUPPORTED: &str = "`gpt2` (byte-level BPE) and `llama` (SentencePiece)";

/// A tokenizer for one GGUF model.
pub struct Tokenizer {
    model: Model,
    /// Raw bytes of each token (special tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    /// Whether each token is a control/special token (hidden when decoding with `skip_special`).
    special: Vec<bool>,
    /// Whether encoding restarts the text after each token (special tokens matched as a whole):
    /// with a SentencePiece space prefix, the next piece's leading space is the added prefix.
    restarts_text: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
}

/// The encoder of each vocabulary kind.
enum Model {
    /// Byte-level BPE (`gpt2`), with the name of its pre-tokenizer.
    Bpe(Box<tokenizers::Tokenizer>, String),
    /// SentencePiece (`llama`).
    Spm(Box<SpmModel>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.model {
            Model::Bpe(_, pre) => format!("gpt2 (pre {pre})"),
            Model::Spm(m) => format!("llama (space prefix {})", m.add_space_prefix()),
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("vocab", &self.token_bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// What each vocabulary kind builds before the shared part (special ids, stop ids).
struct Built {
    model: Model,
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    restarts_text: Vec<bool>,
}

/// GPT-2's reversible map from bytes to printable unicode characters.
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    map
}

fn token_types(md: &GgufMetadata, n: usize) -> Vec<u64> {
    match md
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; n],
    }
}

fn floats(md: &GgufMetadata, key: &str) -> Result<Vec<f32>> {
    md.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| TokenizerError::MissingKey(key.into()))?
        .iter()
        .map(|v| match *v {
            MetaValue::Float(x) => Ok(x as f32),
            MetaValue::Int(x) => Ok(x as f32),
            MetaValue::Uint(x) => Ok(x as f32),
            _ => Err(TokenizerError::MissingKey(key.into())),
        })
        .collect()
}

fn strings(md: &GgufMetadata, key: &str) -> Result<Vec<String>> {
    md.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| TokenizerError::MissingKey(key.into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::MissingKey(key.into()))
        })
        .collect()
}

/// Byte-level BPE (`gpt2`) with the `tokenizers` crate.
fn build_bpe(md: &GgufMetadata, tokens: &[String], types: &[u64]) -> Result<Built> {
    let merges = strings(md, "tokenizer.ggml.merges")?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);

    let pre = md
        .get_str("tokenizer.ggml.pre")
        .unwrap_or("default")
        .to_string();
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre.as_str() {
        "llama-bpe" | "llama3" | "llama-v3" | "qwen2" => {
            let regex = if pre == "qwen2" {
                QWEN2_REGEX
            } else {
                LLAMA3_REGEX
            };
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        // Starcoder-style vocabularies (SmolLM, SmolLM2, ...): every digit is its own word,
        // then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "gpt2" | "gpt-2" | "default" => byte_level.into(),
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; using GPT-2's regex"
            );
            byte_level.into()
        }
    };
    inner.with_pre_tokenizer(Some(pre_tok));
    inner.with_decoder(Some(ByteLevelDecoder::default()));

    let to_char = byte_to_char();
    let mut from_char: HashMap<char, u8> = HashMap::with_capacity(256);
    for (b, c) in to_char.iter().enumerate() {
        from_char.insert(*c, b as u8);
    }
    let mut specials = Vec::new();
    let mut special = vec![false; tokens.len()];
    let token_bytes = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ty = types.get(i).copied().unwrap_or(1);
            if ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED {
                special[i] = ty == TYPE_CONTROL;
                specials.push(AddedToken::from(t.clone(), ty == TYPE_CONTROL));
                return t.as_bytes().to_vec();
            }
            let mut bytes = Vec::with_capacity(t.len());
            for c in t.chars() {
                match from_char.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            bytes
        })
        .collect();
    inner
        .add_special_tokens(specials)
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
    Ok(Built {
        model: Model::Bpe(Box::new(inner), pre),
        token_bytes,
        special,
        restarts_text: vec![false; tokens.len()],
    })
}

/// SentencePiece (`llama`): needs the scores; `add_space_prefix` defaults to true.
fn build_spm(md: &GgufMetadata, tokens: &[String], types: &[u64]) -> Result<Built> {
    let scores = floats(md, "tokenizer.ggml.scores")?;
    let add_space_prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(MetaValue::as_bool)
        .unwrap_or(true);
    let unk = md
        .get_u64("tokenizer.ggml.unknown_token_id")
        .map(|v| v as u32)
        .or_else(|| {
            types
                .iter()
                .position(|&t| t == TYPE_UNKNOWN)
                .map(|i| i as u32)
        })
        .filter(|&v| (v as usize) < tokens.len());
    let model = SpmModel::new(tokens, &scores, types, add_space_prefix, unk)?;
    let ty = |i: usize| types.get(i).copied().unwrap_or(1);
    let token_bytes = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| spm::piece_bytes(t, ty(i)))
        .collect();
    let special = (0..tokens.len())
        .map(|i| matches!(ty(i), TYPE_CONTROL | TYPE_UNKNOWN))
        .collect();
    let restarts_text = (0..tokens.len())
        .map(|i| {
            add_space_prefix && matches!(ty(i), TYPE_CONTROL | TYPE_UNKNOWN | TYPE_USER_DEFINED)
        })
        .collect();
    Ok(Built {
        model: Model::Spm(Box::new(model)),
        token_bytes,
        special,
        restarts_text,
    })
}

impl Tokenizer {
    /// Reads the tokenizer of the GGUF file at `path`.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf_metadata(&GgufMetadata::read_file(path)?)
    }

    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf_metadata(md: &GgufMetadata) -> Result<Self> {
        let kind = md.get_str("tokenizer.ggml.model").unwrap_or("gpt2");
        let tokens = strings(md, "tokenizer.ggml.tokens")?;
        let types = token_types(md, tokens.len());
        let spm = kind == "llama";
        let built = match kind {
            "gpt2" => build_bpe(md, &tokens, &types)?,
            "llama" => build_spm(md, &tokens, &types)?,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer model `{other}` (supported: {SUPPORTED})"
                )))
            }
        };
        let Built {
            model,
            token_bytes,
            special,
            restarts_text,
        } = built;

        let id = |k: &str| {
            md.get_u64(k)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        // llama.cpp's defaults for SentencePiece vocabularies: <s> = 1, </s> = 2, BOS added.
        let default_id = |v: u32| Some(v).filter(|&v| spm && (v as usize) < tokens.len());
        let bos = id("tokenizer.ggml.bos_token_id").or_else(|| default_id(1));
        let eos = id("tokenizer.ggml.eos_token_id").or_else(|| default_id(2));
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(spm);
        let mut stop_ids: Vec<u32> = [eos, id("tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        for t in END_OF_TURN_TOKENS {
            if let Some(i) = tokens.iter().position(|x| x == t) {
                if special[i] && !stop_ids.contains(&(i as u32)) {
                    stop_ids.push(i as u32);
                }
            }
        }
        Ok(Self {
            model,
            token_bytes,
            special,
            restarts_text,
            bos,
            eos,
            add_bos,
            stop_ids,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encodes `text`; special tokens written in the text (e.g. `<|im_start|>`) become their ids.
    /// Prepends the BOS token if `add_bos` and the model has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        match &self.model {
            Model::Bpe(inner, _) => {
                let enc = inner
                    .encode_fast(text, false)
                    .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Model::Spm(m) => m.encode(text, &mut ids)?,
        }
        Ok(ids)
    }

    /// Raw bytes of one token (special tokens: their text); empty for unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control (special) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Decodes `ids` to text (invalid UTF-8 replaced); special tokens are dropped if
    /// `skip_special`. The ids are read as a whole sequence: with a SentencePiece space prefix,
    /// the space that encoding added at the start and after each special token is removed, so
    /// `decode(encode(text)) == text`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        let mut strip_space = self.adds_space_prefix();
        for &id in ids {
            self.push_piece(id, skip_special, &mut strip_space, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the bytes of token `id` to `out` (nothing for a special token if
    /// `skip_special`). `strip_space` says whether one leading space of this token is the
    /// prefix encoding added; it is updated for the next token.
    pub fn push_piece(
        &self,
        id: u32,
        skip_special: bool,
        strip_space: &mut bool,
        out: &mut Vec<u8>,
    ) {
        let strip = std::mem::replace(
            strip_space,
            self.restarts_text
                .get(id as usize)
                .copied()
                .unwrap_or(false),
        );
        if skip_special && self.is_special(id) {
            return;
        }
        let bytes = self.token_bytes(id);
        out.extend_from_slice(match bytes {
            [b' ', rest @ ..] if strip => rest,
            _ => bytes,
        });
    }

    /// Whether encoding puts a space before text that starts the input or follows a special
    /// token (SentencePiece's `add_space_prefix`, on by default for `llama` vocabularies).
    pub fn adds_space_prefix(&self) -> bool {
        match &self.model {
            Model::Bpe(..) => false,
            Model::Spm(m) => m.add_space_prefix(),
        }
    }

    /// Beginning-of-sequence token id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model wants a BOS token before the prompt (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos_by_default(&self) -> bool {
        self.add_bos
    }

    /// Token ids that end generation: EOS, EOT and the special end-of-turn tokens of common chat
    /// formats present in the vocabulary.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Text of a token as stored in the vocabulary file would be decoded (lossy).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    /// Id of a token given its exact (decoded) text, if it is a single token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_bytes
            .iter()
            .position(|b| b.as_slice() == text.as_bytes())
            .map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let m = byte_to_char();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
    }
}
