//! # accellm-core
//!
//! The scheduling core of accellm: a pure, deterministic state machine. It is given events
//! (a request arrived, an iteration ended, a transfer landed, a client cancelled) together with the
//! current time, and answers with actions (run this batch on that instance, copy these KV blocks,
//! this request finished). It does no I/O, spawns no threads and reads no clock, so the very same
//! code schedules the simulator (virtual time) and the real server (wall-clock time).
//!
//! The pieces:
//! - [`request`]: requests, their SLOs and per-request progress;
//! - [`kv`]: the paged KV block manager of one instance (primary and replica blocks);
//! - [`cost`]: the cost-model trait that predicts iteration, layer and transfer times;
//! - [`batch`]: one iteration's batch plan;
//! - [`instance`]: instance policies (who runs in the next iteration): `vllm`, `sarathi`, ...;
//! - [`cluster`]: cluster policies (where requests go, what each instance does): `round-robin`,
//!   `least-load`, `splitwise`, ...;
//! - [`policy`]: a policy of either level chosen by name with its knobs, as config files
//!   write it;
//! - [`scheduler`]: the state machine tying them together ([`scheduler::Scheduler::build`]);
//! - [`profile`]: measured hardware profiles (what `accellm calibrate` writes, what the simulator
//!   replays to predict the real server);
//! - [`metrics`]: per-request timestamps turned into TTFT, TBT, JCT, SLO attainment and goodput;
//! - [`replay`]: a discrete-event executor in virtual time that carries out the actions with the
//!   scheduler's own cost model (the simulator's engine, and the test bench of every policy).

pub mod batch;
pub mod cluster;
pub mod cost;
pub mod instance;
pub mod kv;
pub mod kv_events;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod replay;
pub mod request;
pub mod scheduler;
pub mod stats;

/// A point in time or a duration, in microseconds. Virtual in the simulator, wall-clock in the server.
pub type TimeUs = u64;

/// Index of an instance (one model replica, possibly spanning several GPUs with tensor parallelism).
pub type InstanceId = u32;

/// Converts milliseconds to [`TimeUs`], rounding to the nearest microsecond.
pub fn ms_to_us(ms: f64) -> TimeUs {
    (ms * 1000.0).round().max(0.0) as TimeUs
}

/// Converts [`TimeUs`] to milliseconds.
pub fn us_to_ms(us: TimeUs) -> f64 {
    us as f64 / 1000.0
}
