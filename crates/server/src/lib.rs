//! accellm-server: OpenAI-compatible HTTP server over engine instances, scheduled by the core.
pub mod cli;
