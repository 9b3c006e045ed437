//! accellm-core (placeholder).
