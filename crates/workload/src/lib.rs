//! accellm-workload (placeholder).
