//! Sends a workload's requests open-loop at their arrival times and/or closed-loop under a
//! concurrency cap, and collects the results (chat conversations: [`crate::chat`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use crate::client::{Client, PreparedRequest, RequestResult};

/// How requests are released.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Send each request at its `arrival_s` (open loop). When false, all are released at once
    /// and `max_concurrency` alone paces them (closed loop).
    pub open_loop: bool,
    /// At most this many requests in flight.
    pub max_concurrency: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Results of a run, in workload order, and its wall time (s).
#[derive(Debug)]
pub struct RunResult {
    /// One result per request, in workload order.
    pub results: Vec<RequestResult>,
    /// From the first release to the last completion, s.
    pub duration_s: f64,
}

/// A progress bar over `n` requests on stderr, or a hidden one.
pub(crate) fn progress_bar(n: usize, show: bool) -> ProgressBar {
    let pb = if show {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} requests [{elapsed_precise}<{eta_precise}] {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// Runs every request and waits for all of them (each is bounded by the client's timeout).
pub async fn run(client: Client, requests: Vec<PreparedRequest>, opts: &RunOptions) -> RunResult {
    let pb = progress_bar(requests.len(), opts.progress);
    let semaphore = opts
        .max_concurrency
        .map(|n| Arc::new(Semaphore::new(n.max(1))));
    let client = Arc::new(client);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(requests.len());
    for req in requests {
        if opts.open_loop && req.arrival_s > 0.0 {
            let at = start + Duration::from_secs_f64(req.arrival_s);
            tokio::time::sleep_until(at.into()).await;
        }
        let client = client.clone();
        let semaphore = semaphore.clone();
        let pb = pb.clone();
        handles.push(tokio::spawn(async move {
            let _permit = match &semaphore {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let res = client.send(&req, start).await;
            if let Some(f) = &res.failure {
                tracing::debug!(index = req.index, "request failed: {f}");
            }
            pb.inc(1);
            res
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!("request task panicked: {e}"),
        }
    }
    finish(results, start, &pb)
}

/// Ends a run started at `start`: clears the progress bar and orders the results by request.
pub(crate) fn finish(
    mut results: Vec<RequestResult>,
    start: Instant,
    pb: &ProgressBar,
) -> RunResult {
    let duration_s = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    results.sort_by_key(|r| r.index);
    RunResult {
        results,
        duration_s,
    }
}
