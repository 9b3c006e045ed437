//! accellm-engine (placeholder).
