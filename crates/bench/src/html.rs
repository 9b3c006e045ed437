//! `accellm bench --report`: the run as a self-contained HTML page (accellm-report).

use accellm_core::metrics::SloFigures;
use accellm_report::{Cdf, Lines, Report, Section, Table};

use crate::{client::RequestResult, metrics::Summary};

/// Builds the HTML report of one run: configuration, summary table, latency CDFs and the output
/// token rate over time. `config` lists the run's settings as (name, value).
pub fn build(config: &[(String, String)], summary: &Summary, results: &[RequestResult]) -> Report {
    let mut report =
        Report::new("accellm bench").subtitle("OpenAI-compatible endpoint, replayed workload");
    for (k, v) in config {
        report = report.config(k.as_str(), v);
    }
    let mut table = Table::new("Summary", ["metric", "mean", "median", "p90", "p99"]);
    for (name, st) in [
        ("TTFT (ms)", &summary.ttft),
        ("TPOT (ms)", &summary.tpot),
        ("ITL (ms)", &summary.itl),
        ("E2E latency (ms)", &summary.e2el),
    ] {
        let pct = |p: f64| {
            st.percentiles
                .iter()
                .find(|(q, _)| (*q - p).abs() < 1e-9)
                .map_or("—".to_string(), |(_, v)| format!("{v:.1}"))
        };
        table = table.row(vec![
            name.to_string(),
            format!("{:.1}", st.mean),
            format!("{:.1}", st.median),
            pct(90.0),
            pct(99.0),
        ]);
    }
    report = report.table(table);
    let slo = |show: &dyn Fn(&SloFigures) -> String| summary.slo.as_ref().map_or("—".into(), show);
    let mut totals = Table::new("Throughput", ["metric", "value"]);
    for (k, v) in [
        (
            "requests completed / sent",
            format!("{} / {}", summary.completed, summary.total),
        ),
        ("failed", summary.failed.to_string()),
        (
            "request throughput (req/s)",
            format!("{:.2}", summary.request_throughput),
        ),
        (
            "output throughput (tok/s)",
            format!("{:.1}", summary.output_throughput),
        ),
        (
            "request goodput req/s (--goodput)",
            summary
                .request_goodput
                .map_or("—".into(), |g| format!("{g:.2}")),
        ),
        (
            "goodput req/s (strict)",
            slo(&|f| format!("{:.2}", f.goodput_strict)),
        ),
        (
            "goodput req/s (mean)",
            slo(&|f| format!("{:.2}", f.goodput_mean)),
        ),
        (
            "SLO attainment (strict)",
            slo(&|f| format!("{:.1}%", f.slo_attainment_strict * 100.0)),
        ),
        (
            "SLO attainment (mean)",
            slo(&|f| format!("{:.1}%", f.slo_attainment_mean * 100.0)),
        ),
        ("duration (s)", format!("{:.1}", summary.duration_s)),
    ] {
        totals = totals.row(vec![k.to_string(), v]);
    }
    report = report.table(totals);

    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.failure.is_none()).collect();
    let ms = |v: f64| v * 1e3;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).map(ms).collect();
    let itl: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.itl_s.iter().copied().map(ms))
        .collect();
    let e2e: Vec<f64> = ok.iter().map(|r| ms(r.latency_s)).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_tokens > 1)
        .filter_map(|r| {
            let t = r.ttft_s?;
            Some(ms((r.latency_s - t) / (r.output_tokens - 1) as f64))
        })
        .collect();
    let cdf = |title: &str, v: Vec<f64>| {
        Cdf::new(title, "latency (ms)")
            .log_x(true)
            .series("this run", v)
    };
    report = report.section(
        Section::new("Latency distributions")
            .chart(cdf("Time to first token", ttft))
            .chart(cdf("Time per output token", tpot))
            .chart(cdf("Inter-token latency", itl))
            .chart(cdf("End-to-end latency", e2e)),
    );

    // Output tokens per second, in 1-second buckets of wall time since the start of the run.
    let mut per_s: Vec<f64> = Vec::new();
    for r in &ok {
        let Some(t0) = r.ttft_s else { continue };
        let mut t = r.start_s + t0;
        let mut add = |t: f64| {
            let b = t.max(0.0) as usize;
            if per_s.len() <= b {
                per_s.resize(b + 1, 0.0);
            }
            per_s[b] += 1.0;
        };
        add(t);
        for gap in &r.itl_s {
            t += gap;
            add(t);
        }
    }
    let points: Vec<(f64, f64)> = per_s
        .iter()
        .enumerate()
        .map(|(s, &n)| (s as f64, n))
        .collect();
    report.section(
        Section::new("Over time").chart(
            Lines::new(
                "Output token rate",
                "time since start (s)",
                "output tokens per second",
            )
            .series("tokens/s", points),
        ),
    )
}
