//! accellm-bench: replays a workload against any OpenAI-compatible endpoint.
pub mod cli;
