//! accellm-engine: runs GGUF models (Llama, Qwen2 and Gemma 3 families) on the CPU for accellm.
//!
//! The engine owns model weights ([`Model`], shared by every instance behind an `Arc`) and KV
//! memory ([`KvPool`], one preallocated paged pool per instance), and executes the iterations the
//! scheduling core plans: one [`Model::forward`] call runs one [`ForwardBatch`] — prefill chunks
//! and single decode tokens of many sequences flattened into one activation matrix — and returns
//! logits for the sequences that need a next token. [`copy_kv`] copies the KV of token slots
//! ([`KvSpan`]) between pools layer by layer (AcceLLM's replicas). [`Sampler`] and
//! [`StopMatcher`] turn logits into tokens and text into finished responses. See
//! `docs/engine.md` for measurements.

mod attention;
pub mod batch;
pub mod bench;
mod blocks;
pub mod cli;
pub mod config;
pub mod error;
pub mod kv;
pub mod kv_wire;
pub mod linear;
pub mod model;
mod qdot;
pub mod sampling;
pub mod threads;

pub use batch::{ForwardBatch, ForwardOutput, PhaseTimings, SeqInput};
pub use config::{Activation, ArchParams, Family, ModelConfig, RopeStyle};
pub use error::{EngineError, Result};
pub use half::f16;
pub use kv::{copy_kv, KvPool, KvSpan, DEFAULT_BLOCK_SIZE};
pub use kv_wire::KvValue;
pub use linear::WeightFormat;
pub use model::Model;
pub use sampling::{
    argmax, FinishReason, Sampler, SamplingParams, StopMatcher, StopStatus, TokenLogprob,
};
pub use threads::{inline_candle_matmuls, Threads};

/// Compile-time check that the shared types can cross threads.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Model>();
    is::<KvPool>();
}
