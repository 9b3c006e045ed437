//! How long rendering takes for big runs: a 1 000 000-sample CDF, a 1 000 000-point line and a
//! 4-lane timeline of 100 000 segments per lane.
//!
//! `cargo bench -p accellm-report --bench render`

use accellm_report::{Cdf, Lines, Report, Section, Segment, Timeline};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn cdf_report() -> Report {
    // A deterministic, unsorted, long-tailed sample set.
    let samples: Vec<f64> = (0..1_000_000u64)
        .map(|i| {
            let u =
                ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            -100.0 * u.ln()
        })
        .collect();
    Report::new("cdf").section(
        Section::new("s").chart(
            Cdf::new("TTFT", "TTFT (ms)")
                .log_x(true)
                .series("a", samples),
        ),
    )
}

fn lines_report() -> Report {
    let pts: Vec<(f64, f64)> = (0..1_000_000)
        .map(|i| (i as f64 * 1e-3, ((i * 7919) % 1000) as f64))
        .collect();
    Report::new("lines").section(
        Section::new("s").chart(Lines::new("tok/s", "time (s)", "tokens/s").series("a", pts)),
    )
}

fn timeline_report() -> Report {
    let segs: Vec<Segment> = (0..100_000)
        .map(|i| Segment {
            start: i as f64 * 0.01,
            end: i as f64 * 0.01 + 0.008,
            kind: i % 3,
        })
        .collect();
    let mut t = Timeline::with_standard_kinds("instances", "time (s)");
    for lane in 0..4 {
        t = t.lane(format!("instance {lane}"), segs.clone());
    }
    Report::new("timeline").section(Section::new("s").chart(t))
}

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("to_html");
    g.sample_size(10);
    for (name, report) in [
        ("cdf_1m", cdf_report()),
        ("lines_1m", lines_report()),
        ("timeline_4x100k", timeline_report()),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(report.to_html()).len()));
    }
    g.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
