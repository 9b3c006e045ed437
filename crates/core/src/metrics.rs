//! Per-request timestamps turned into the field's latency metrics.
//!
//! Definitions (the same in the simulator and the server):
//! - **TTFT**: first token time minus arrival.
//! - **TBT**: every gap between consecutive tokens of a request (prefill chunks, preemptions and
//!   migrations included).
//! - **JCT**: finish time minus arrival. **Normalized latency**: JCT divided by output tokens.
//! - **Mean TPOT** (time per output token, `vllm bench serve`'s): `(JCT − TTFT) / (output tokens
//!   − 1)`; undefined for a single output token.
//!
//! **SLO attainment and goodput** have one definition, [`SloVerdict::judge`], used by `simulate`,
//! `bench` and `serve` alike, and are always reported under both of its names:
//! - **strict**: the request completed, its TTFT is within `ttft_ms` and *every* gap between its
//!   tokens is within `tbt_ms` (what AccelGen guarantees);
//! - **mean**: the request completed, its TTFT is within `ttft_ms` and its mean TPOT is within
//!   `tbt_ms` (`vllm bench serve`'s goodput; with one output token only TTFT counts).
//!
//! An objective that is not set is met; a request that did not complete (cancelled, rejected,
//! failed, no token) misses both. Strict met implies mean met when the gaps add up to `JCT −
//! TTFT`. **SLO attainment** is the met fraction of the requests that arrived (rejected ones count
//! as missed); **goodput** is met requests per second of the run.

use serde::{Deserialize, Serialize};

use crate::{
    ms_to_us,
    request::{FinishReason, RequestId, RequestSpec, RequestState, Slo},
    scheduler::Recovery,
    stats::{LogHistogram, Percentiles},
    TimeUs,
};

/// The latencies of one completed request that its SLO judges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Longest gap between consecutive tokens, ms (0 with one token).
    pub max_tbt_ms: f64,
    /// Arrival to the last token, ms.
    pub jct_ms: f64,
    /// Output tokens.
    pub output_tokens: u32,
}

impl Latencies {
    /// Mean time per output token after the first, ms: `(JCT − TTFT) / (output tokens − 1)`;
    /// `None` with fewer than two output tokens.
    pub fn mean_tpot_ms(&self) -> Option<f64> {
        (self.output_tokens > 1)
            .then(|| (self.jct_ms - self.ttft_ms) / f64::from(self.output_tokens - 1))
    }
}

/// Whether one request met its SLO, under both definitions (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SloVerdict {
    /// TTFT within target and every gap between tokens within the TBT SLO.
    pub strict: bool,
    /// TTFT within target and mean TPOT within the TBT SLO.
    pub mean: bool,
}

impl SloVerdict {
    /// The one definition of meeting an SLO. `latencies` is `None` for a request that did not
    /// complete, which misses both.
    pub fn judge(slo: &Slo, latencies: Option<&Latencies>) -> Self {
        let Some(l) = latencies else {
            return Self::default();
        };
        let ttft = slo.ttft_ms.is_none_or(|t| l.ttft_ms <= t);
        let every_gap = slo.tbt_ms.is_none_or(|t| l.max_tbt_ms <= t);
        let mean_tpot = slo
            .tbt_ms
            .is_none_or(|t| l.mean_tpot_ms().is_none_or(|m| m <= t));
        Self {
            strict: ttft && every_gap,
            mean: ttft && mean_tpot,
        }
    }
}

/// SLO attainment and goodput under both definitions, named the same in every output (the
/// fields flatten into their parent's JSON, as the CSV columns are named).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SloFigures {
    /// Fraction of the requests that met their SLO strictly (every gap).
    pub slo_attainment_strict: f64,
    /// Fraction of the requests that met their SLO on mean TPOT.
    pub slo_attainment_mean: f64,
    /// Requests per second that met their SLO strictly.
    pub goodput_strict: f64,
    /// Requests per second that met their SLO on mean TPOT.
    pub goodput_mean: f64,
}

/// Requests that met their SLO, counted under both definitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SloCounts {
    /// Met strictly.
    pub strict: u64,
    /// Met on mean TPOT.
    pub mean: u64,
}

impl SloCounts {
    /// Counts `verdicts`.
    pub fn of(verdicts: impl IntoIterator<Item = SloVerdict>) -> Self {
        let mut c = Self::default();
        for v in verdicts {
            c.add(v);
        }
        c
    }

    /// Counts one more request.
    pub fn add(&mut self, v: SloVerdict) {
        self.strict += u64::from(v.strict);
        self.mean += u64::from(v.mean);
    }

    /// Attainment as the met fraction of `requests` (0 when there are none), goodput as met
    /// requests per second over `secs`.
    pub fn figures(&self, requests: u64, secs: f64) -> SloFigures {
        let frac = |met: u64| {
            if requests == 0 {
                0.0
            } else {
                met as f64 / requests as f64
            }
        };
        let secs = secs.max(1e-9);
        SloFigures {
            slo_attainment_strict: frac(self.strict),
            slo_attainment_mean: frac(self.mean),
            goodput_strict: self.strict as f64 / secs,
            goodput_mean: self.mean as f64 / secs,
        }
    }
}

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
    /// Whether it met its SLO, strictly and on mean TPOT ([`SloVerdict::judge`]).
    pub slo_met: SloVerdict,
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

    /// Its latencies, if it completed.
    pub fn latencies(&self) -> Option<Latencies> {
        let ms = |us: TimeUs| us as f64 / 1e3;
        self.completed().then(|| Latencies {
            ttft_ms: ms(self.ttft_us),
            max_tbt_ms: ms(self.max_tbt_us),
            jct_ms: ms(self.jct_us),
            output_tokens: self.output_tokens,
        })
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
    /// Recovery times (µs), failure declared to the request's next token: by replica, by
    /// recompute.
    pub recovery_us: [Vec<TimeUs>; 2],
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
                // Live count for policies; the verdict at the end judges `max_tbt_us`.
                if r.spec.slo.tbt_ms.is_some_and(|s| gap > ms_to_us(s)) {
                    r.tbt_misses += 1;
                }
            }
        }
        r.last_token_us = Some(now);
        if let Some((since, kind)) = r.recovering.take() {
            let k = usize::from(kind == Recovery::Recompute);
            self.recovery_us[k].push(now.saturating_sub(since));
        }
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
        let mut record = RequestRecord {
            arrival_us: arrival,
            ttft_us: r.first_token_us.map_or(0, |t| t.saturating_sub(arrival)),
            jct_us: now.saturating_sub(arrival),
            prompt_tokens: r.spec.prompt_tokens,
            output_tokens: r.generated,
            max_tbt_us: r.max_tbt_us,
            slo_met: SloVerdict::default(),
            class: r.spec.class,
            preemptions: r.preemptions,
            reason,
        };
        record.slo_met = SloVerdict::judge(&r.spec.slo, record.latencies().as_ref());
        self.finished.push(record);
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
        let met = SloCounts::of(done.iter().map(|r| r.slo_met));
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
            slo: met.figures(self.arrived, secs),
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
    /// SLO attainment (of arrived requests) and goodput, strict and mean.
    #[serde(flatten)]
    pub slo: SloFigures,
    /// Preemptions.
    pub preemptions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Slo = Slo {
        ttft_ms: Some(100.0),
        tbt_ms: Some(50.0),
    };

    fn lat(ttft_ms: f64, gaps_ms: &[f64]) -> Latencies {
        Latencies {
            ttft_ms,
            max_tbt_ms: gaps_ms.iter().copied().fold(0.0, f64::max),
            jct_ms: ttft_ms + gaps_ms.iter().sum::<f64>(),
            output_tokens: gaps_ms.len() as u32 + 1,
        }
    }

    fn verdict(strict: bool, mean: bool) -> SloVerdict {
        SloVerdict { strict, mean }
    }

    #[test]
    fn one_long_gap_misses_strict_but_not_mean() {
        let l = lat(80.0, &[10.0, 10.0, 10.0, 70.0]);
        assert_eq!(l.mean_tpot_ms(), Some(25.0));
        assert_eq!(SloVerdict::judge(&SLO, Some(&l)), verdict(false, true));
        assert_eq!(
            SloVerdict::judge(&SLO, Some(&lat(80.0, &[40.0, 50.0]))),
            verdict(true, true),
            "gaps at the SLO meet it"
        );
        assert_eq!(
            SloVerdict::judge(&SLO, Some(&lat(80.0, &[60.0, 60.0]))),
            verdict(false, false)
        );
    }

    #[test]
    fn ttft_and_completion_gate_both() {
        assert_eq!(
            SloVerdict::judge(&SLO, Some(&lat(101.0, &[1.0]))),
            verdict(false, false)
        );
        assert_eq!(SloVerdict::judge(&SLO, None), verdict(false, false));
        assert_eq!(
            SloVerdict::judge(&Slo::default(), Some(&lat(1e9, &[1e9]))),
            verdict(true, true),
            "no objectives: completing meets them"
        );
        // One output token: no TPOT, so TTFT alone decides.
        let one = lat(90.0, &[]);
        assert_eq!(one.mean_tpot_ms(), None);
        assert_eq!(SloVerdict::judge(&SLO, Some(&one)), verdict(true, true));
    }

    /// Runs one request through the metrics: tokens at `times_us`, finished at the last one.
    fn run(m: &mut Metrics, id: u32, times_us: &[TimeUs], reason: FinishReason) {
        let spec = RequestSpec {
            arrival_us: 0,
            prompt_tokens: 8,
            max_output_tokens: times_us.len() as u32,
            slo: SLO,
            priority: 0,
            class: None,
        };
        let id = RequestId(id);
        let mut r = RequestState::new(spec, 0);
        m.on_arrival(id, &spec);
        for &t in times_us {
            m.on_token(id, &mut r, t);
            r.generated += 1;
        }
        let end = times_us.last().copied().unwrap_or(0);
        m.on_finish(&r, id, end, reason);
    }

    #[test]
    fn summary_reports_strict_and_mean() {
        let mut m = Metrics::new(false);
        // Met both: gaps of 20 ms.
        run(&mut m, 0, &[50_000, 70_000, 90_000], FinishReason::Length);
        // Mean TPOT 30 ms, one gap of 70 ms: mean met, strict missed.
        run(
            &mut m,
            1,
            &[50_000, 60_000, 70_000, 80_000, 150_000],
            FinishReason::Length,
        );
        // Cancelled after a good start: misses both.
        run(&mut m, 2, &[50_000], FinishReason::Cancelled);
        m.on_reject();
        let recs: Vec<SloVerdict> = m.finished.iter().map(|r| r.slo_met).collect();
        assert_eq!(
            recs,
            [
                verdict(true, true),
                verdict(false, true),
                verdict(false, false)
            ]
        );
        let s = m.summary(2_000_000);
        assert_eq!(s.arrived, 4);
        assert_eq!(
            s.slo,
            SloFigures {
                slo_attainment_strict: 0.25,
                slo_attainment_mean: 0.5,
                goodput_strict: 0.5,
                goodput_mean: 1.0,
            }
        );
    }
}
