//! accellm-server (placeholder).
