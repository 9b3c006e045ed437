//! accellm-bench: replays a workload against any OpenAI-compatible endpoint and measures it.
//!
//! The workload comes from `accellm-workload` (the same descriptions the simulator reads);
//! [`prompt`] turns each request's token counts into real text; [`runner`] releases requests
//! open-loop at their arrival times and/or under a concurrency cap, and [`chat`] runs multi-turn
//! conversations closed-loop with the server's own answers; [`client`] streams each
//! completion and timestamps every chunk; [`metrics`] computes TTFT, TPOT, ITL and E2E
//! statistics, throughput, goodput and SLO attainment with `vllm bench serve`'s definitions and
//! JSON field names; [`report`] prints the summary table; [`fidelity`] sets the simulator's
//! prediction of the same run beside it (`--predict`). [`cli`] ties them together as
//! `accellm bench`.
pub mod chat;
pub mod cli;
pub mod client;
pub mod fidelity;
pub mod html;
pub mod metrics;
pub mod prompt;
pub mod report;
pub mod runner;
