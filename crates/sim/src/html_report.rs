//! `--report out.html`: the runs of one `accellm simulate` as a self-contained HTML page
//! (summary table, per-SLO-class table, latency CDFs, throughput and KV utilisation over time, instance timelines,
//! metrics against rate for sweeps), drawn by `accellm-report`.

use accellm_report::{Cdf, Lines, Report, Section, Segment, Table, Timeline};

use crate::observer::SegmentKind;
use crate::output::percent;
use crate::runner::RunReport;

/// Most instances drawn on a timeline (the first ones).
const MAX_LANES: usize = 32;

/// Builds the report of `runs`; `title_line` describes the workload and cluster.
pub fn build(runs: &[RunReport], title_line: &str, sweep: bool) -> Report {
    let mut report = Report::new("accellm simulate").subtitle(title_line);
    if let Some(first) = runs.first() {
        let c = &first.cluster;
        report = report
            .config("model", &c.model)
            .config("hardware", &c.hardware)
            .config("instances × TP", format!("{} × {}", c.instances, c.tp))
            .config(
                "KV blocks per instance",
                format!("{} × {} tokens", c.kv_blocks, c.block_size),
            )
            .config("link between instances", format!("{:.0} GB/s", c.link_gbps));
    }
    let mut table = Table::new(
        "Summary",
        [
            "policy",
            "rate (req/s)",
            "done/arrived",
            "unfinished",
            "TTFT p50/p99 (ms)",
            "TBT p50/p99 (ms)",
            "JCT p50/p99 (s)",
            "req/s",
            "tok/s",
            "SLO attainment (strict)",
            "SLO attainment (mean)",
            "goodput req/s (strict)",
            "goodput req/s (mean)",
            "busy",
            "KV mean/peak",
            "preempt",
            "KV moved (GB)",
        ],
    );
    for r in runs {
        let s = &r.summary;
        table = table.row([
            r.label(),
            r.rate.map_or("trace".into(), |x| format!("{x}")),
            format!("{}/{}", s.completed, s.arrived),
            r.unfinished.to_string(),
            format!("{:.0} / {:.0}", s.ttft_ms.p50, s.ttft_ms.p99),
            format!("{:.1} / {:.1}", s.tbt_ms.p50, s.tbt_ms.p99),
            format!("{:.1} / {:.1}", s.jct_ms.p50 / 1e3, s.jct_ms.p99 / 1e3),
            format!("{:.2}", s.request_throughput),
            format!("{:.0}", s.output_throughput),
            percent(s.slo.slo_attainment_strict),
            percent(s.slo.slo_attainment_mean),
            format!("{:.2}", s.slo.goodput_strict),
            format!("{:.2}", s.slo.goodput_mean),
            format!("{:.0}%", r.busy_mean * 100.0),
            format!("{:.0}% / {:.0}%", r.kv_mean * 100.0, r.kv_peak * 100.0),
            r.counters.preemptions.to_string(),
            format!("{:.1}", r.kv_bytes_moved as f64 / 1e9),
        ]);
    }
    report = report.table(table);
    if runs.iter().any(|r| r.prefix_cache.is_some()) {
        let mut prefix = Table::new(
            "Prefix cache",
            [
                "policy",
                "rate (req/s)",
                "cache",
                "hit rate (hit / queried tokens)",
                "prefill tokens saved",
                "of all prompt tokens",
            ],
        );
        for r in runs {
            if let Some(p) = r.prefix_cache {
                prefix = prefix.row([
                    r.label(),
                    r.rate.map_or("trace".into(), |x| format!("{x}")),
                    (if p.enabled { "on" } else { "off" }).to_string(),
                    format!(
                        "{} ({} / {})",
                        percent(p.hit_rate),
                        p.hit_tokens,
                        p.query_tokens
                    ),
                    p.hit_tokens.to_string(),
                    percent(p.prefill_saved),
                ]);
            }
        }
        report = report.table(prefix);
    }
    if runs.iter().any(|r| !r.classes.is_empty()) {
        let mut classes = Table::new(
            "Per SLO class",
            [
                "policy",
                "rate (req/s)",
                "class",
                "SLO TTFT / TBT (ms)",
                "done/arrived",
                "SLO attainment (strict)",
                "SLO attainment (mean)",
                "goodput req/s (strict)",
                "goodput req/s (mean)",
                "TTFT p50/p99 (ms)",
                "worst TBT per request p50/p99 (ms)",
            ],
        );
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        for r in runs {
            for c in &r.classes {
                classes = classes.row([
                    r.label(),
                    r.rate.map_or("trace".into(), |x| format!("{x}")),
                    c.name.clone(),
                    format!("{} / {}", ms(c.ttft_slo_ms), ms(c.tbt_slo_ms)),
                    format!("{}/{}", c.completed, c.arrived),
                    percent(c.slo.slo_attainment_strict),
                    percent(c.slo.slo_attainment_mean),
                    format!("{:.2}", c.slo.goodput_strict),
                    format!("{:.2}", c.slo.goodput_mean),
                    format!("{:.0} / {:.0}", c.ttft_ms.p50, c.ttft_ms.p99),
                    format!("{:.1} / {:.1}", c.worst_tbt_ms.p50, c.worst_tbt_ms.p99),
                ]);
            }
        }
        report = report.table(classes);
    }
    let name = |r: &RunReport| match r.rate {
        Some(x) if sweep => format!("{} @ {x}", r.label()),
        _ => r.label(),
    };
    // Latency distributions (for sweeps, only the highest rate of each policy keeps it readable).
    let shown: Vec<&RunReport> = if sweep {
        let mut v: Vec<&RunReport> = Vec::new();
        for r in runs {
            match v.iter_mut().find(|x| x.label() == r.label()) {
                Some(x) if x.rate < r.rate => *x = r,
                Some(_) => {}
                None => v.push(r),
            }
        }
        v
    } else {
        runs.iter().collect()
    };
    let mut ttft = Cdf::new("Time to first token", "TTFT (ms)").log_x(true);
    let mut tbt = Cdf::new("Time between tokens", "TBT (ms)")
        .log_x(true)
        .tail(true);
    let mut jct = Cdf::new("Job completion time", "JCT (s)").log_x(true);
    let mut norm = Cdf::new("Normalized latency", "JCT per output token (ms)").log_x(true);
    for r in &shown {
        if let Some(s) = &r.samples {
            ttft = ttft.series(name(r), s.ttft_ms.clone());
            tbt = tbt.series(name(r), s.tbt_ms.clone());
            jct = jct.series(
                name(r),
                s.jct_ms.iter().map(|x| x / 1e3).collect::<Vec<_>>(),
            );
            norm = norm.series(name(r), s.normalized_ms.clone());
        }
    }
    report = report.section(
        Section::new("Latency")
            .chart(ttft)
            .chart(tbt)
            .chart(jct)
            .chart(norm),
    );
    if sweep {
        let mut sec = Section::new("Against arrival rate");
        type Metric = (&'static str, &'static str, fn(&RunReport) -> f64);
        let metrics: [Metric; 7] = [
            ("p99 TTFT", "p99 TTFT (ms)", |r| r.summary.ttft_ms.p99),
            ("p99 TBT", "p99 TBT (ms)", |r| r.summary.tbt_ms.p99),
            ("Goodput (strict)", "goodput req/s (strict)", |r| {
                r.summary.slo.goodput_strict
            }),
            ("Goodput (mean)", "goodput req/s (mean)", |r| {
                r.summary.slo.goodput_mean
            }),
            (
                "SLO attainment (strict)",
                "SLO attainment (strict, %)",
                |r| r.summary.slo.slo_attainment_strict * 100.0,
            ),
            ("SLO attainment (mean)", "SLO attainment (mean, %)", |r| {
                r.summary.slo.slo_attainment_mean * 100.0
            }),
            ("Throughput", "output tokens/s", |r| {
                r.summary.output_throughput
            }),
        ];
        for (title, y, f) in metrics {
            let mut chart = Lines::new(title, "arrival rate (req/s)", y);
            for p in &shown {
                let pts: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| r.label() == p.label())
                    .filter_map(|r| r.rate.map(|x| (x, f(r))))
                    .collect();
                chart = chart.series(p.label(), pts);
            }
            sec = sec.chart(chart);
        }
        report = report.section(sec);
    } else {
        let mut rps = Lines::new("Throughput over time", "time (s)", "output tokens/s");
        let mut kv = Lines::new(
            "KV utilisation over time",
            "time (s)",
            "KV blocks in use (%)",
        );
        let mut queue = Lines::new(
            "Queue over time",
            "time (s)",
            "requests waiting for prefill",
        );
        for r in runs {
            if let Some(ts) = &r.timeseries {
                rps = rps.series(
                    r.label(),
                    ts.throughput()
                        .iter()
                        .map(|&(t, _, tok)| (t, tok))
                        .collect::<Vec<_>>(),
                );
                kv = kv.series(
                    r.label(),
                    ts.samples
                        .iter()
                        .map(|s| (s.t_us as f64 / 1e6, s.kv_utilization * 100.0))
                        .collect::<Vec<_>>(),
                );
                queue = queue.series(
                    r.label(),
                    ts.samples
                        .iter()
                        .map(|s| (s.t_us as f64 / 1e6, s.waiting as f64))
                        .collect::<Vec<_>>(),
                );
            }
        }
        report = report.section(Section::new("Over time").chart(rps).chart(kv).chart(queue));
        let mut sec = Section::new("What each instance runs");
        for r in runs {
            let Some(ts) = &r.timeseries else { continue };
            let mut tl = Timeline::with_standard_kinds(r.label(), "time (s)");
            for (i, segs) in ts.segments.iter().enumerate().take(MAX_LANES) {
                let segs: Vec<Segment> = segs
                    .iter()
                    .map(|s| Segment {
                        start: s.start_us as f64 / 1e6,
                        end: s.end_us as f64 / 1e6,
                        kind: match s.kind {
                            SegmentKind::Prefill => Timeline::PREFILL,
                            SegmentKind::Decode => Timeline::DECODE,
                            SegmentKind::Mixed => Timeline::MIXED,
                        },
                    })
                    .collect();
                tl = tl.lane(format!("instance {i}"), segs);
            }
            sec = sec.chart(tl);
        }
        report = report.section(sec);
    }
    report
}
