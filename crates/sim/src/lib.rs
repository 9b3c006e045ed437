//! # accellm-sim
//!
//! The trace-driven cluster simulator behind `accellm simulate`. It runs the very same scheduling
//! core as the real server ([`accellm_core::scheduler::Scheduler`]) in virtual time, with
//! iteration times from a roofline model of real hardware:
//!
//! - [`specs`]: device, model and efficiency figures from `data/specs/*.toml` (built in);
//! - [`hardware`]: the roofline [`hardware::HardwareCostModel`], instance links and KV capacity;
//! - [`profile`]: measured hardware profiles (`--hardware-profile`), e.g. the real engine's;
//! - [`validate`]: the cost model against Splitwise's and Vidur's measured profiles;
//! - [`config`]: a simulation described in TOML (cluster, policies, workload, cost overrides);
//! - [`runner`]: builds a scheduler from a config, replays a workload, summarises the run;
//! - [`observer`]: bounded-memory time series (instance timelines, throughput, KV utilisation);
//! - [`output`]: tables, JSON and CSV; [`html_report`]: the `--report` HTML page;
//! - [`cli`]: the `accellm simulate` command (single runs, `--compare`, `--sweep-rate`).
//!
//! ```no_run
//! use accellm_sim::{config::SimConfig, runner};
//!
//! let mut cfg = SimConfig::default();
//! cfg.workload.max_requests = Some(500);
//! let requests = runner::core_requests(&runner::workload(&cfg)?);
//! let report = runner::run(&cfg, &requests, None)?;
//! println!("{:.1} req/s", report.summary.request_throughput);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod hardware;
pub mod html_report;
pub mod observer;
pub mod output;
pub mod profile;
pub mod runner;
pub mod specs;
pub mod validate;
