//! `accellm bench --predict PROFILE`: the simulator's prediction of a live run, side by side
//! with what the run measured.
//!
//! The live server describes its setup at `GET /accellm/config` ([`ServeSetup`]: instances,
//! policies and their knobs, KV blocks, block size, default SLOs). The very requests the bench
//! sent — arrival times, the prompt lengths the server reported, output lengths, SLOs, priorities
//! — are replayed through `accellm-sim` with the measured [`HardwareProfile`] as the hardware. Both
//! sides are then reduced to the same per-request [`Observation`]s and summarised by the same
//! code, so every figure means the same thing on both sides.

use std::collections::HashMap;

use accellm_core::{
    metrics::{Latencies, Metrics, SloCounts, SloFigures, SloVerdict},
    policy::PolicyConfig,
    profile::{HardwareProfile, ServeSetup},
    request::{RequestSpec, Slo},
    TimeUs,
};
use accellm_sim::{config::SimConfig, runner};
use serde::Serialize;

use crate::client::{PreparedRequest, RequestResult};
use crate::metrics::percentile;

/// One completed request as either side saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// When it was sent (s from the start of the run).
    pub arrival_s: f64,
    /// Time to first token (ms).
    pub ttft_ms: f64,
    /// Every gap between consecutive tokens (ms).
    pub gaps_ms: Vec<f64>,
    /// Time to the last token (ms).
    pub e2e_ms: f64,
    /// Prompt tokens processed.
    pub prompt_tokens: u32,
    /// Output tokens produced.
    pub output_tokens: u32,
    /// Its SLOs (the request's own, else the server's defaults).
    pub slo: Slo,
}

impl Observation {
    /// Its latencies as its SLO judges them.
    pub fn latencies(&self) -> Latencies {
        Latencies {
            ttft_ms: self.ttft_ms,
            max_tbt_ms: self.gaps_ms.iter().copied().fold(0.0, f64::max),
            jct_ms: self.e2e_ms,
            output_tokens: self.output_tokens,
        }
    }

    /// Mean time per output token after the first (vLLM's TPOT), if more than one token.
    pub fn tpot_ms(&self) -> Option<f64> {
        self.latencies().mean_tpot_ms()
    }

    /// Whether it met its SLOs, strict and mean (the core's one definition).
    pub fn slo_met(&self) -> SloVerdict {
        SloVerdict::judge(&self.slo, Some(&self.latencies()))
    }
}

/// p50, p90, p99 (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tail {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Tail {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
        }
    }
}

/// One side's summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Side {
    /// Requests sent.
    pub requests: usize,
    /// Requests completed.
    pub completed: usize,
    /// Prompt tokens of completed requests.
    pub prompt_tokens: u64,
    /// Output tokens of completed requests.
    pub output_tokens: u64,
    /// From the start to the last completion (s).
    pub duration_s: f64,
    /// Time to first token (ms).
    pub ttft_ms: Tail,
    /// Time per output token, per request (ms).
    pub tpot_ms: Tail,
    /// Every gap between tokens (ms).
    pub itl_ms: Tail,
    /// End-to-end latency (ms).
    pub e2e_ms: Tail,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// SLO attainment (of requests sent) and goodput, strict and mean.
    #[serde(flatten)]
    pub slo: SloFigures,
}

impl Side {
    /// Summarises `done` (completed requests) out of `requests` sent over `duration_s` (or,
    /// when `None`, until the last one ended).
    pub fn of(done: &[Observation], requests: usize, duration_s: Option<f64>) -> Self {
        let last = done
            .iter()
            .map(|o| o.arrival_s + o.e2e_ms / 1e3)
            .fold(0.0, f64::max);
        let dur = duration_s.unwrap_or(last).max(1e-9);
        let met = SloCounts::of(done.iter().map(Observation::slo_met));
        let output_tokens: u64 = done.iter().map(|o| u64::from(o.output_tokens)).sum();
        Self {
            requests,
            completed: done.len(),
            prompt_tokens: done.iter().map(|o| u64::from(o.prompt_tokens)).sum(),
            output_tokens,
            duration_s: dur,
            ttft_ms: Tail::of(done.iter().map(|o| o.ttft_ms).collect()),
            tpot_ms: Tail::of(done.iter().filter_map(Observation::tpot_ms).collect()),
            itl_ms: Tail::of(
                done.iter()
                    .flat_map(|o| o.gaps_ms.iter().copied())
                    .collect(),
            ),
            e2e_ms: Tail::of(done.iter().map(|o| o.e2e_ms).collect()),
            request_throughput: done.len() as f64 / dur,
            output_throughput: output_tokens as f64 / dur,
            slo: met.figures(requests as u64, dur),
        }
    }
}

/// Iteration counts and mean iteration time (all instances), where the server reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Iterations {
    /// Iterations run.
    pub count: u64,
    /// Mean wall time of one (ms): forward pass, sampling, waiting for copies.
    pub mean_ms: f64,
}

/// Prediction against measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fidelity {
    /// The hardware profile simulated.
    pub profile: String,
    /// The live server's setup.
    pub setup: ServeSetup,
    /// What the simulator predicted.
    pub predicted: Side,
    /// What the live run measured.
    pub measured: Side,
    /// Simulated iterations.
    pub predicted_iterations: Iterations,
    /// The server's iterations during the run (from `/metrics`), if it reports them.
    pub measured_iterations: Option<Iterations>,
}

/// The SLOs the server gives a request: its own, else the server's defaults, field by field.
fn effective_slo(r: &PreparedRequest, defaults: Slo) -> Slo {
    Slo {
        ttft_ms: r.ttft_slo_ms.or(defaults.ttft_ms),
        tbt_ms: r.tbt_slo_ms.or(defaults.tbt_ms),
    }
}

/// The requests as the live server's core saw them: intended arrival times, the prompt lengths
/// the server reported (the intended ones where it reported none), the requested output lengths,
/// the effective SLOs and the priorities actually sent.
pub fn core_requests(
    prepared: &[PreparedRequest],
    results: &[RequestResult],
    setup: &ServeSetup,
) -> Vec<RequestSpec> {
    let reported: HashMap<usize, u32> = results
        .iter()
        .filter_map(|r| r.server_prompt_tokens.map(|p| (r.index, p)))
        .collect();
    let mut out: Vec<RequestSpec> = prepared
        .iter()
        .map(|r| RequestSpec {
            arrival_us: (r.arrival_s.max(0.0) * 1e6).round() as TimeUs,
            prompt_tokens: reported
                .get(&r.index)
                .copied()
                .unwrap_or(r.prompt_tokens)
                .max(1),
            max_output_tokens: r.output_tokens.max(1),
            slo: effective_slo(r, setup.slo),
            priority: if r.send_priority { r.priority } else { 0 },
            class: r.class,
        })
        .collect();
    out.sort_by_key(|r| r.arrival_us);
    out
}

/// The simulation of `setup` on `profile`.
pub fn sim_config(setup: &ServeSetup, profile: &HardwareProfile) -> SimConfig {
    SimConfig {
        instances: setup.instances,
        tp: 1,
        block_size: setup.block_size,
        max_waiting: setup.max_waiting,
        instance: setup.instance.clone(),
        cluster: setup.cluster.clone(),
        profile: Some(profile.clone()),
        kv_blocks: Some(setup.kv_blocks),
        // The server's scheduler predicts with its own configured cost model and link.
        scheduler_cost: Some(setup.cost.clone()),
        scheduler_link: Some(setup.link),
        share_idle_cores: Some(setup.share_idle_cores),
        ..SimConfig::default()
    }
}

/// The live results as observations (completed requests only).
pub fn measured(
    prepared: &[PreparedRequest],
    results: &[RequestResult],
    defaults: Slo,
) -> Vec<Observation> {
    let slo: HashMap<usize, Slo> = prepared
        .iter()
        .map(|r| (r.index, effective_slo(r, defaults)))
        .collect();
    results
        .iter()
        .filter(|r| r.ok())
        .filter_map(|r| {
            Some(Observation {
                arrival_s: r.start_s,
                ttft_ms: r.ttft_s? * 1e3,
                gaps_ms: r.itl_s.iter().map(|g| g * 1e3).collect(),
                e2e_ms: r.latency_s * 1e3,
                prompt_tokens: r.server_prompt_tokens.unwrap_or(r.prompt_tokens),
                output_tokens: r.output_tokens,
                slo: slo.get(&r.index).copied().unwrap_or(defaults),
            })
        })
        .collect()
}

/// The simulated requests as observations; `request_overhead_ms` (HTTP, tokenisation) is added
/// to TTFT and end-to-end latency.
pub fn predicted(
    requests: &[RequestSpec],
    metrics: &Metrics,
    request_overhead_ms: f64,
) -> Vec<Observation> {
    // Records carry no request id: find each one's request by arrival time and prompt length.
    let mut by_key: HashMap<(TimeUs, u32), Vec<&RequestSpec>> = HashMap::new();
    for r in requests.iter().rev() {
        by_key
            .entry((r.arrival_us, r.prompt_tokens))
            .or_default()
            .push(r);
    }
    metrics
        .finished
        .iter()
        .zip(&metrics.timelines)
        .filter(|(rec, _)| rec.completed())
        .filter_map(|(rec, times)| {
            let spec = by_key
                .get_mut(&(rec.arrival_us, rec.prompt_tokens))?
                .pop()?;
            let first = *times.first()?;
            let last = *times.last()?;
            let ms = |us: TimeUs| us as f64 / 1e3;
            Some(Observation {
                arrival_s: rec.arrival_us as f64 / 1e6,
                ttft_ms: ms(first.saturating_sub(rec.arrival_us)) + request_overhead_ms,
                gaps_ms: times.windows(2).map(|w| ms(w[1] - w[0])).collect(),
                e2e_ms: ms(last.saturating_sub(rec.arrival_us)) + request_overhead_ms,
                prompt_tokens: rec.prompt_tokens,
                output_tokens: rec.output_tokens,
                slo: spec.slo,
            })
        })
        .collect()
}

/// Simulates `requests` on the server's setup with `profile` as its hardware and returns the
/// predicted side and iteration figures.
pub fn predict(
    setup: &ServeSetup,
    profile: &HardwareProfile,
    requests: &[RequestSpec],
) -> anyhow::Result<(Side, Iterations)> {
    let cfg = sim_config(setup, profile);
    let (report, metrics) = runner::run_with_timelines(&cfg, requests)?;
    let obs = predicted(requests, &metrics, profile.request_overhead_ms);
    let count: u64 = report.instances.iter().map(|i| i.iterations).sum();
    let busy_s: f64 = report
        .instances
        .iter()
        .map(|i| i.busy * report.simulated_s)
        .sum();
    let iterations = Iterations {
        count,
        mean_ms: if count == 0 {
            0.0
        } else {
            busy_s * 1e3 / count as f64
        },
    };
    Ok((Side::of(&obs, requests.len(), None), iterations))
}

/// The whole comparison of a finished live run: `prepared` as sent, `results` as measured over
/// `duration_s`, `scrapes` the server's `/metrics` before and after (for iteration figures).
pub fn compare(
    profile: &HardwareProfile,
    setup: ServeSetup,
    prepared: &[PreparedRequest],
    results: &[RequestResult],
    duration_s: f64,
    scrapes: Option<(bytes::Bytes, bytes::Bytes)>,
) -> anyhow::Result<Fidelity> {
    let requests = core_requests(prepared, results, &setup);
    let (predicted, predicted_iterations) = predict(&setup, profile, &requests)?;
    let measured = Side::of(
        &measured(prepared, results, setup.slo),
        results.len(),
        Some(duration_s),
    );
    let measured_iterations = scrapes.and_then(|(b, a)| {
        iterations_between(&String::from_utf8_lossy(&b), &String::from_utf8_lossy(&a))
    });
    Ok(Fidelity {
        profile: profile.name.clone(),
        setup,
        predicted,
        measured,
        predicted_iterations,
        measured_iterations,
    })
}

/// A profile fitted to the iterations a live server ran between two `GET /accellm/iterations`
/// answers (`before`, `after`), under whatever contention the run had; geometry, KV copy speed
/// and pool come from `base`.
pub fn live_profile(
    base: &HardwareProfile,
    before: &[u8],
    after: &[u8],
    name: String,
) -> anyhow::Result<HardwareProfile> {
    use accellm_core::profile::{Point, WideFit, ENGINE_KNOTS};
    #[derive(serde::Deserialize)]
    struct Log {
        total: u64,
        #[serde(default)]
        scheduler_ms: f64,
        points: Vec<Point>,
        #[serde(default)]
        wide_total: u64,
        #[serde(default)]
        wide_points: Vec<Point>,
    }
    let parse = |b: &[u8]| -> anyhow::Result<Log> {
        serde_json::from_slice(b).map_err(|e| anyhow::anyhow!("GET /accellm/iterations: {e}"))
    };
    let (b, a) = (parse(before)?, parse(after)?);
    let new = |total: u64, before: u64, points: &[Point]| -> Vec<Point> {
        let n = (total.saturating_sub(before) as usize).min(points.len());
        points[points.len() - n..].to_vec()
    };
    let mut p = base.clone();
    p.points = new(a.total, b.total, &a.points);
    let n = p.points.len();
    p.refit(&ENGINE_KNOTS)
        .map_err(|e| anyhow::anyhow!("fitting the run's {n} iterations: {e}"))?;
    // Iterations on a partner's cores too: their own fit, where they determine one (else the
    // base profile's stays).
    let wide = new(a.wide_total, b.wide_total, &a.wide_points);
    let n_wide = wide.len();
    if let Ok(w) = WideFit::from_points(wide, &ENGINE_KNOTS) {
        p.wide = Some(w);
    }
    p.name = name;
    p.clock = "server".into();
    // What the scheduler thread spends per report delays the instance's next iteration.
    p.overhead_ms = if n + n_wide == 0 {
        0.0
    } else {
        (a.scheduler_ms - b.scheduler_ms).max(0.0) / (n + n_wide) as f64
    };
    Ok(p)
}

/// Sums the samples of a Prometheus metric (all label sets) in `/metrics` text.
pub fn prometheus_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

/// The server's iterations between two `/metrics` scrapes.
pub fn iterations_between(before: &str, after: &str) -> Option<Iterations> {
    let it = |t: &str| prometheus_sum(t, "accellm_instance_iterations_total");
    let busy = |t: &str| prometheus_sum(t, "accellm_instance_busy_seconds_total");
    let count = (it(after)? - it(before)?).max(0.0) as u64;
    let busy_s = (busy(after)? - busy(before)?).max(0.0);
    Some(Iterations {
        count,
        mean_ms: if count == 0 {
            0.0
        } else {
            busy_s * 1e3 / count as f64
        },
    })
}

/// `(predicted − measured) / measured`, as a percentage string.
fn rel(p: f64, m: f64) -> String {
    if m == 0.0 {
        if p == 0.0 {
            "0.0%".into()
        } else {
            "—".into()
        }
    } else {
        format!("{:+.1}%", (p - m) / m * 100.0)
    }
}

impl Fidelity {
    /// The comparison table.
    pub fn render(&self) -> String {
        let (p, m) = (&self.predicted, &self.measured);
        let s = &self.setup;
        let mut out = format!(
            "\nPrediction (profile `{}`) against measurement: {} x {}/{}, {} KV blocks of {} tokens\n",
            self.profile,
            s.instances,
            s.cluster.name(),
            s.instance.name(),
            s.kv_blocks,
            s.block_size
        );
        out.push_str(&format!(
            "{:<28} {:>12} {:>12} {:>9}\n{}\n",
            "metric",
            "predicted",
            "measured",
            "error",
            "-".repeat(64)
        ));
        let mut row = |name: &str, pv: f64, mv: f64, prec: usize| {
            out.push_str(&format!(
                "{name:<28} {pv:>12.prec$} {mv:>12.prec$} {:>9}\n",
                rel(pv, mv)
            ));
        };
        row(
            "requests completed",
            p.completed as f64,
            m.completed as f64,
            0,
        );
        row(
            "prompt tokens",
            p.prompt_tokens as f64,
            m.prompt_tokens as f64,
            0,
        );
        row(
            "output tokens",
            p.output_tokens as f64,
            m.output_tokens as f64,
            0,
        );
        for (name, pt, mt) in [
            ("TTFT", p.ttft_ms, m.ttft_ms),
            ("TPOT", p.tpot_ms, m.tpot_ms),
            ("ITL (every gap)", p.itl_ms, m.itl_ms),
            ("E2E", p.e2e_ms, m.e2e_ms),
        ] {
            row(&format!("{name} p50 ms"), pt.p50, mt.p50, 1);
            row(&format!("{name} p90 ms"), pt.p90, mt.p90, 1);
            row(&format!("{name} p99 ms"), pt.p99, mt.p99, 1);
        }
        row("duration s", p.duration_s, m.duration_s, 2);
        row(
            "throughput req/s",
            p.request_throughput,
            m.request_throughput,
            3,
        );
        row(
            "throughput output tok/s",
            p.output_throughput,
            m.output_throughput,
            1,
        );
        let (ps, ms) = (p.slo, m.slo);
        row(
            "goodput req/s (strict)",
            ps.goodput_strict,
            ms.goodput_strict,
            3,
        );
        row("goodput req/s (mean)", ps.goodput_mean, ms.goodput_mean, 3);
        let (pa, ma) = (ps.slo_attainment_strict, ms.slo_attainment_strict);
        row("SLO attainment (strict)", pa, ma, 3);
        let (pa, ma) = (ps.slo_attainment_mean, ms.slo_attainment_mean);
        row("SLO attainment (mean)", pa, ma, 3);
        if let Some(mi) = self.measured_iterations {
            let pi = self.predicted_iterations;
            row("iterations", pi.count as f64, mi.count as f64, 0);
            row("mean iteration ms", pi.mean_ms, mi.mean_ms, 2);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(ttft: f64, gaps: &[f64], slo: Slo) -> Observation {
        Observation {
            arrival_s: 0.0,
            ttft_ms: ttft,
            gaps_ms: gaps.to_vec(),
            e2e_ms: ttft + gaps.iter().sum::<f64>(),
            prompt_tokens: 10,
            output_tokens: gaps.len() as u32 + 1,
            slo,
        }
    }

    #[test]
    fn both_sides_are_judged_strict_and_mean() {
        let slo = Slo {
            ttft_ms: Some(100.0),
            tbt_ms: Some(50.0),
        };
        let met = |o: Observation| {
            let v = o.slo_met();
            (v.strict, v.mean)
        };
        assert_eq!(met(obs(100.0, &[10.0, 50.0], slo)), (true, true));
        assert_eq!(met(obs(100.0, &[10.0, 51.0], slo)), (false, true));
        assert_eq!(met(obs(101.0, &[10.0], slo)), (false, false));
        assert_eq!(met(obs(1e9, &[1e9], Slo::default())), (true, true));
        let o = obs(100.0, &[10.0, 30.0], slo);
        assert_eq!(o.tpot_ms(), Some(20.0));
        let long_gap = obs(100.0, &[10.0, 60.0], slo);
        let s = Side::of(&[o, obs(300.0, &[], slo), long_gap], 4, Some(2.0));
        assert_eq!((s.completed, s.output_tokens), (3, 7));
        assert_eq!(
            s.slo,
            SloFigures {
                slo_attainment_strict: 0.25,
                slo_attainment_mean: 0.5,
                goodput_strict: 0.5,
                goodput_mean: 1.0,
            }
        );
        assert_eq!(s.tpot_ms.p50, 27.5);
    }

    #[test]
    fn prometheus_sums_every_label_set() {
        let t = "# HELP x\naccellm_instance_iterations_total{instance=\"0\"} 5\n\
                 accellm_instance_iterations_total{instance=\"1\"} 7\n\
                 accellm_instance_iterations_total_other 100\n\
                 accellm_instance_busy_seconds_total{instance=\"0\"} 0.5\n\
                 accellm_instance_busy_seconds_total{instance=\"1\"} 0.7\n";
        assert_eq!(
            prometheus_sum(t, "accellm_instance_iterations_total"),
            Some(12.0)
        );
        assert_eq!(prometheus_sum(t, "nope"), None);
        let zero = "accellm_instance_iterations_total 0\naccellm_instance_busy_seconds_total 0\n";
        let it = iterations_between(zero, t).unwrap();
        assert_eq!(it.count, 12);
        assert!((it.mean_ms - 100.0).abs() < 1e-9);
    }
}
