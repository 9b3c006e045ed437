//! Errors of the tokenizer crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading metadata, tokenizing, templating or fetching.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The GGUF metadata is malformed.
    #[error("invalid GGUF metadata: {0}")]
    Gguf(String),
    /// A tokenizer key is missing or has the wrong type.
    #[error("GGUF tokenizer metadata key `{0}` is missing or invalid")]
    MissingKey(String),
    /// The tokenizer kind is not supported.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// A character is not in a SentencePiece vocabulary, and neither is one of its bytes.
    #[error("no token for byte 0x{0:02X}: the vocabulary has no `<0x{0:02X}>` byte token and no unknown token")]
    MissingByteToken(u8),
    /// The `tokenizers` library failed.
    #[error("tokenizer error: {0}")]
    Tokenizers(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template error: {0}")]
    Template(#[from] minijinja::Error),
    /// The default model could not be fetched.
    #[error("{0}")]
    Fetch(String),
}

/// Result type of the tokenizer crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
