//! accellm-tokenizer (placeholder).
