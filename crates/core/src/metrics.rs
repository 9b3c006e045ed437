//! Per-request timestamps turned into the field's latency metrics.
//!
//! Definitions (the same in the simulator and the server):
//! - **TTFT**: first token time minus arrival.
//! - **TBT**: every gap between consecutive tokens of a request (prefill chunks, preemptions and
//!   migrations included).
//! - **JCT**: finish time minus arrival. **Normalized latency**: JCT divided by output tokens.
//! - **SLO attainment**: a request meets its SLO when its TTFT is within `ttft_ms` (if set) and
//!   *every* TBT gap is within `tbt_ms` (if set), and it completed; a request without SLOs meets
//!   it by completing. Attainment is the met fraction of requests that arrived (rejected ones count as missed).
//! - **Goodput**: requests per second that met their SLO.

use serde::{Deserialize, Serialize};

use crate::{
    ms_to_us,
    request::{FinishReason, RequestId, RequestSpec, RequestState},
    stats::{LogHistogram, Percentiles},
    TimeUs,
};

/// What is kept of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival time.
    pub arrival_us: TimeUs,
    /// Time to first token (0 if it produced none).
    pub ttft_us: TimeUs,
    /// Job completion time.
    pub jct_us: TimeUs,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Output tokens produced.
    pub output_tokens: u32,
    /// Longest gap between tokens.
    pub max_tbt_us: TimeUs,
    /// Whether it met its SLOs (see the module doc).
    pub slo_met: bool,
    /// Workload class.
    pub class: Option<u16>,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Why it ended.
    pub reason: FinishReason,
}

impl RequestRecord {
    /// Whether it counts as completed: not cancelled, and it produced output.
    pub fn completed(&self) -> bool {
        self.reason != FinishReason::Cancelled && self.output_tokens > 0
    }
}

/// Metrics collected while the scheduler runs.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    record_timelines: bool,
    /// Every finished request, in finishing order.
    pub finished: Vec<RequestRecord>,
    /// Every inter-token gap (µs).
    pub tbt_us: LogHistogram,
    /// Token times per request slot while live (only with timelines on).
    live_timelines: Vec<Vec<TimeUs>>,
    /// Finished requests' token times, in finishing order (only with timelines on).
    pub timelines: Vec<Vec<TimeUs>>,
    /// Requests submitted (accepted or not).
    pub arrived: u64,
    /// Requests rejected at submission.
    pub rejected: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Output tokens produced so far (also by requests still running).
    pub tokens_out: u64,
}

impl Metrics {
    /// Empty metrics; `record_timelines` keeps every token time of every request.
    pub fn new(record_timelines: bool) -> Self {
        Self {
            record_timelines,
            ..Self::default()
        }
    }

    pub(crate) fn on_arrival(&mut self, id: RequestId, _spec: &RequestSpec) {
        self.arrived += 1;
        if self.record_timelines {
            let i = id.index();
            if self.live_timelines.len() <= i {
                self.live_timelines.resize_with(i + 1, Vec::new);
            }
            self.live_timelines[i].clear();
        }
    }

    pub(crate) fn on_reject(&mut self) {
        self.arrived += 1;
        self.rejected += 1;
    }

    #[inline(always)]
    pub(crate) fn on_token(&mut self, id: RequestId, r: &mut RequestState, now: TimeUs) {
        self.tokens_out += 1;
        match r.last_token_us {
            None => r.first_token_us = Some(now),
            Some(last) => {
                let gap = now.saturating_sub(last);
                self.tbt_us.record_whole(gap);
                r.max_tbt_us = r.max_tbt_us.max(gap);
                if r.spec.slo.tbt_ms.is_some_and(|s| gap > ms_to_us(s)) {
                    r.tbt_misses += 1;
                }
            }
        }
        r.last_token_us = Some(now);
        if self.record_timelines {
            if let Some(t) = self.live_timelines.get_mut(id.index()) {
                t.push(now);
            }
        }
    }

    pub(crate) fn on_finish(
        &mut self,
        r: &RequestState,
        id: RequestId,
        now: TimeUs,
        reason: FinishReason,
    ) {
        let arrival = r.spec.arrival_us;
        let ttft = r.first_token_us.map_or(0, |t| t.saturating_sub(arrival));
        let completed = reason != FinishReason::Cancelled && r.first_token_us.is_some();
        let ttft_ok = r.spec.slo.ttft_ms.is_none_or(|s| ttft <= ms_to_us(s));
        self.finished.push(RequestRecord {
            arrival_us: arrival,
            ttft_us: ttft,
            jct_us: now.saturating_sub(arrival),
            prompt_tokens: r.spec.prompt_tokens,
            output_tokens: r.generated,
            max_tbt_us: r.max_tbt_us,
            slo_met: completed && ttft_ok && r.tbt_misses == 0,
            class: r.spec.class,
            preemptions: r.preemptions,
            reason,
        });
        if self.record_timelines {
            let t = self
                .live_timelines
                .get_mut(id.index())
                .map(std::mem::take)
                .unwrap_or_default();
            self.timelines.push(t);
        }
    }

    /// Summarises the requests finished so far over a run of `duration_us`.
    pub fn summary(&self, duration_us: TimeUs) -> Summary {
        let secs = (duration_us as f64 / 1e6).max(1e-9);
        let done: Vec<&RequestRecord> = self.finished.iter().filter(|r| r.completed()).collect();
        let ms = |f: fn(&RequestRecord) -> f64| {
            let mut v: Vec<f64> = done.iter().map(|r| f(r)).collect();
            Percentiles::of(&mut v)
        };
        let met = done.iter().filter(|r| r.slo_met).count() as u64;
        let out: u64 = done.iter().map(|r| r.output_tokens as u64).sum();
        let inp: u64 = done.iter().map(|r| r.prompt_tokens as u64).sum();
        Summary {
            arrived: self.arrived,
            completed: done.len() as u64,
            rejected: self.rejected,
            cancelled: self
                .finished
                .iter()
                .filter(|r| r.reason == FinishReason::Cancelled)
                .count() as u64,
            duration_s: secs,
            ttft_ms: ms(|r| r.ttft_us as f64 / 1e3),
            tbt_ms: self.tbt_us.percentiles(1e-3),
            jct_ms: ms(|r| r.jct_us as f64 / 1e3),
            normalized_latency_ms: ms(|r| r.jct_us as f64 / 1e3 / r.output_tokens.max(1) as f64),
            request_throughput: done.len() as f64 / secs,
            output_throughput: out as f64 / secs,
            input_throughput: inp as f64 / secs,
            slo_attainment: if self.arrived == 0 {
                0.0
            } else {
                met as f64 / self.arrived as f64
            },
            goodput: met as f64 / secs,
            preemptions: self.preemptions,
        }
    }
}

/// Latency and throughput of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests submitted.
    pub arrived: u64,
    /// Requests that produced all their output (or stopped) — cancelled ones excluded.
    pub completed: u64,
    /// Requests refused at submission.
    pub rejected: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Length of the run in seconds.
    pub duration_s: f64,
    /// Time to first token (ms).
    pub ttft_ms: Percentiles,
    /// Time between tokens (ms), over every gap.
    pub tbt_ms: Percentiles,
    /// Job completion time (ms).
    pub jct_ms: Percentiles,
    /// JCT per output token (ms).
    pub normalized_latency_ms: Percentiles,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Prompt tokens per second.
    pub input_throughput: f64,
    /// Fraction of arrived requests that met their SLOs.
    pub slo_attainment: f64,
    /// Requests per second that met their SLOs.
    pub goodput: f64,
    /// Preemptions.
    pub preemptions: u64,
}
