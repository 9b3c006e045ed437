//! accellm-sim (placeholder).
