//! accellm-engine: GGUF Llama-family models on CPU with a paged KV cache.
pub mod cli;
