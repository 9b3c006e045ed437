//! accellm-workload: turns a workload description into a list of requests.
//!
//! A [`WorkloadSpec`] names a [`WorkloadSource`] (a shipped trace such as `azure-conv` or
//! `sharegpt`, a trace file, synthetic length distributions, or a weighted mixture of these), an
//! [`Arrivals`] process (the trace's own timestamps, re-timed ones, Poisson or Gamma), limits
//! (request count, duration, model context) and an [`SloPolicy`]. [`WorkloadSpec::generate`]
//! expands it, deterministically for a seed, into a [`Workload`]: [`RequestSpec`]s sorted by
//! arrival plus the [`SloClass`]es they refer to.
//!
//! The simulator and the benchmark client both read workloads through this crate, so the same
//! experiment can run in virtual time and against a real server. It is deliberately light
//! (serde, serde_json, thiserror; its own PRNG in [`rng`]) and independent of the scheduler.
//!
//! ```
//! use accellm_workload::{Arrivals, SloPolicy, WorkloadSpec};
//!
//! let mut spec = WorkloadSpec::new("synthetic:prompt=lognormal(512,0.5),output=128".parse()?);
//! spec.arrivals = Some(Arrivals::Poisson { rate: 4.0 });
//! spec.max_requests = Some(100);
//! spec.slo = SloPolicy::Classes { classes: accellm_workload::SloClass::defaults() };
//! let w = spec.generate()?;
//! assert_eq!(w.requests.len(), 100);
//! # Ok::<(), accellm_workload::WorkloadError>(())
//! ```

pub mod arrivals;
mod error;
pub mod lengths;
pub mod prefix;
pub mod rng;
pub mod shared;
pub mod slo;
pub mod source;
pub mod spec;
pub mod trace;

pub use arrivals::Arrivals;
pub use error::WorkloadError;
pub use lengths::LengthDist;
pub use prefix::Segment;
pub use shared::{ChatSpec, FewShotSpec, SystemPromptSpec};
pub use slo::{SloClass, SloPolicy};
pub use source::{
    data_dirs, find_data_file, BuiltinTrace, MixtureComponent, Sampling, WorkloadSource,
};
pub use spec::{ContextFit, WorkloadSpec};
pub use trace::{TraceFile, TraceRow};

use serde::{Deserialize, Serialize};

/// One request of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// Arrival time, seconds from the start of the workload.
    pub arrival_s: f64,
    /// Prompt (input) length in tokens, at least 1.
    pub prompt_tokens: u32,
    /// Output length in tokens, at least 1.
    pub output_tokens: u32,
    /// Time-to-first-token target, ms.
    pub ttft_slo_ms: Option<f64>,
    /// Time-between-tokens target, ms.
    pub tbt_slo_ms: Option<f64>,
    /// Scheduling priority; lower is more urgent (vLLM's convention), 0 by default.
    pub priority: i32,
    /// Index into [`Workload::classes`], if the request has a class.
    pub class: Option<u16>,
}

/// A generated workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Requests, sorted by arrival.
    pub requests: Vec<RequestSpec>,
    /// SLO classes that [`RequestSpec::class`] refers to.
    pub classes: Vec<SloClass>,
    /// One-line human description (source, arrivals, count, seed).
    pub description: String,
    /// The content of each request as [`Segment`]s (parallel to `requests`), for prefix
    /// caching; empty when the workload has no prefix structure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<Vec<Segment>>,
}

impl Workload {
    /// Time of the last arrival, seconds.
    pub fn duration_s(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.arrival_s)
    }

    /// Mean arrival rate `(n - 1) / (last - first)`; `None` with fewer than two distinct times.
    pub fn mean_rate(&self) -> Option<f64> {
        let n = self.requests.len();
        let span = self.duration_s() - self.requests.first()?.arrival_s;
        (n >= 2 && span > 0.0).then(|| (n - 1) as f64 / span)
    }

    /// Whether requests carry content segments ([`Workload::prefixes`]).
    pub fn has_prefixes(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The class of a request, if any.
    pub fn class_of(&self, r: &RequestSpec) -> Option<&SloClass> {
        r.class.and_then(|c| self.classes.get(c as usize))
    }
}
