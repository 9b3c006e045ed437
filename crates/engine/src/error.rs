//! Errors of the engine.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or running a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The GGUF file is malformed or uses something candle cannot read.
    #[error("invalid GGUF model {path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The underlying candle error.
        source: candle_core::Error,
    },
    /// A metadata key the engine needs is missing or has the wrong type.
    #[error("GGUF metadata key `{key}` is missing or invalid: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The model architecture or one of its tensors is not supported.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The batch handed to `forward` is inconsistent with the model or the KV pool.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A KV block operation referred to blocks or layers that do not exist.
    #[error("invalid KV block operation: {0}")]
    InvalidBlocks(String),
    /// A thread pool could not be created.
    #[error("cannot create thread pool: {0}")]
    Threads(String),
    /// A lock was poisoned because another thread panicked while holding it.
    #[error("KV pool lock poisoned (a thread panicked during a forward pass or copy)")]
    Poisoned,
}

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
