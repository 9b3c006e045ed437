//! accellm-bench (placeholder).
