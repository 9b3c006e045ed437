//! Builds a report from synthetic data and writes it to the path given as the first argument
//! (default `report-demo.html`):
//!
//! ```text
//! cargo run -p accellm-report --example demo -- out.html
//! ```
//!
//! The numbers are made up (seeded pseudo-random draws); the example shows what each chart
//! looks like, it does not measure anything.

use accellm_report::{Cdf, Lines, Move, Report, Section, Segment, Table, Timeline};

/// A tiny deterministic generator (SplitMix64) so the example needs no dependencies.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Log-normal with the given median and shape.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// Policies compared in the example, with a made-up latency scale for each.
const POLICIES: [(&str, f64); 3] = [("vllm", 1.6), ("splitwise", 1.2), ("accellm", 1.0)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "report-demo.html".into());
    let mut rng = Rng(42);
    let requests = 5_000;

    let mut ttft = Cdf::new("Time to first token", "TTFT (ms)").log_x(true);
    let mut ttft_tail = Cdf::new("Time to first token, tail", "TTFT (ms)")
        .log_x(true)
        .tail(true);
    let mut tbt = Cdf::new("Time between tokens", "TBT (ms)");
    let mut jct = Cdf::new("Job completion time", "JCT (s)").log_x(true);
    let mut summary = Table::new(
        "Per policy (synthetic)",
        [
            "policy",
            "requests",
            "p50 TTFT (ms)",
            "p99 TTFT (ms)",
            "p99 TBT (ms)",
            "SLO attainment",
        ],
    );
    for (name, scale) in POLICIES {
        let t: Vec<f64> = (0..requests)
            .map(|_| rng.lognormal(180.0 * scale, 0.7))
            .collect();
        let b: Vec<f64> = (0..requests)
            .map(|_| rng.lognormal(28.0 * scale, 0.25))
            .collect();
        let j: Vec<f64> = (0..requests)
            .map(|_| rng.lognormal(9.0 * scale, 0.6))
            .collect();
        let mut sorted = t.clone();
        sorted.sort_by(f64::total_cmp);
        let mut sorted_b = b.clone();
        sorted_b.sort_by(f64::total_cmp);
        let met = t
            .iter()
            .zip(&b)
            .filter(|&(&t, &b)| t < 500.0 && b < 50.0)
            .count();
        summary = summary.row([
            name.to_string(),
            requests.to_string(),
            format!("{:.0}", sorted[requests / 2]),
            format!("{:.0}", sorted[requests * 99 / 100]),
            format!("{:.1}", sorted_b[requests * 99 / 100]),
            format!("{:.1}%", 100.0 * met as f64 / requests as f64),
        ]);
        ttft_tail = ttft_tail.series(name, t.clone());
        ttft = ttft.series(name, t);
        tbt = tbt.series(name, b);
        jct = jct.series(name, j);
    }

    let rates: Vec<f64> = (1..=12).map(|r| r as f64 * 0.5).collect();
    let mut p99_ttft = Lines::new(
        "p99 TTFT vs request rate",
        "request rate (req/s)",
        "p99 TTFT (ms)",
    )
    .log_y(true);
    let mut goodput = Lines::new(
        "Goodput vs request rate",
        "request rate (req/s)",
        "goodput (req/s)",
    );
    let mut slo = Lines::new(
        "SLO attainment vs request rate",
        "request rate (req/s)",
        "SLO attainment (%)",
    )
    .y_range(0.0, 100.0);
    for (name, scale) in POLICIES {
        let knee = 5.5 / scale;
        let lat = |r: f64| 150.0 * scale * (1.0 + ((r - knee) * 1.8).exp());
        let att = |r: f64| 100.0 / (1.0 + ((r - knee) * 2.5).exp());
        p99_ttft = p99_ttft.series(name, rates.iter().map(|&r| (r, lat(r))).collect::<Vec<_>>());
        goodput = goodput.series(
            name,
            rates
                .iter()
                .map(|&r| (r, r * att(r) / 100.0))
                .collect::<Vec<_>>(),
        );
        slo = slo.series(name, rates.iter().map(|&r| (r, att(r))).collect::<Vec<_>>());
    }
    // A policy that was not run in this sweep: shown as "no data".
    slo = slo.series("round-robin", Vec::new());

    let seconds = 600.0;
    let mut throughput = Lines::new("Throughput over time", "time (s)", "output tokens/s");
    let mut kv = Lines::new(
        "KV-cache utilisation over time",
        "time (s)",
        "KV blocks in use (%)",
    )
    .y_range(0.0, 100.0);
    for (name, scale) in POLICIES {
        let tp: Vec<(f64, f64)> = (0..6000)
            .map(|i| {
                let t = i as f64 * 0.1;
                (
                    t,
                    2400.0 / scale * (1.0 + 0.15 * (t / 40.0).sin()) + rng.lognormal(20.0, 0.8),
                )
            })
            .collect();
        let k: Vec<(f64, f64)> = (0..6000)
            .map(|i| {
                let t = i as f64 * 0.1;
                (
                    t,
                    (55.0 * scale + 20.0 * (t / 90.0).sin() + rng.uniform() * 1.5).min(100.0),
                )
            })
            .collect();
        throughput = throughput.series(name, tp);
        kv = kv.series(name, k);
    }

    let timeline = accellm_timeline(&mut rng, seconds);

    let report = Report::new("accellm simulate — demo report")
        .subtitle(
            "Synthetic data from `cargo run -p accellm-report --example demo`; no measurement.",
        )
        .config("model", "llama-2-70b (synthetic)")
        .config("hardware", "4 × H100 (synthetic)")
        .config("trace", "synthetic, Poisson arrivals")
        .config("requests per policy", requests)
        .config("SLOs", "TTFT < 500 ms, TBT < 50 ms")
        .table(summary)
        .section(
            Section::new("Latency distributions")
                .chart(ttft)
                .chart(ttft_tail)
                .chart(tbt)
                .chart(jct),
        )
        .section(
            Section::new("Rate sweep")
                .chart(p99_ttft)
                .chart(goodput)
                .chart(slo),
        )
        .section(
            Section::new("Over time (accellm)")
                .chart(throughput)
                .chart(kv),
        )
        .section(Section::new("Instance timelines (accellm)").chart(timeline));
    report.write(&out)?;
    println!("wrote {out}");
    Ok(())
}

/// Four instances in two pairs; each alternates prefill and decode roles, with decodes
/// moving to the partner at role switches. About 100 000 segments in all.
fn accellm_timeline(rng: &mut Rng, seconds: f64) -> Timeline {
    let mut t = Timeline::with_standard_kinds("What each instance runs", "time (s)");
    let mut moves = Vec::new();
    for lane in 0..4 {
        let mut segs = Vec::new();
        let mut now = 0.0;
        let partner = lane ^ 1;
        let mut prefill_role = lane % 2 == 0;
        let mut next_switch = rng.lognormal(40.0, 0.5);
        // Some prefill periods run mixed batches (chunked prefill piggybacking decodes).
        let mut mixed_period = false;
        while now < seconds {
            let (kind, dur) = if rng.uniform() < 0.02 {
                (Timeline::IDLE, rng.lognormal(0.05, 0.5))
            } else if prefill_role {
                (
                    if mixed_period {
                        Timeline::MIXED
                    } else {
                        Timeline::PREFILL
                    },
                    rng.lognormal(0.02, 0.4),
                )
            } else {
                (Timeline::DECODE, rng.lognormal(0.025, 0.2))
            };
            segs.push(Segment {
                start: now,
                end: now + dur,
                kind,
            });
            now += dur;
            if now >= next_switch {
                if prefill_role {
                    moves.push(Move {
                        from_lane: lane,
                        to_lane: partner,
                        start: now,
                        end: now + 0.4,
                    });
                }
                prefill_role = !prefill_role;
                mixed_period = prefill_role && rng.uniform() < 0.3;
                next_switch = now + rng.lognormal(40.0, 0.5);
            }
        }
        t = t.lane(format!("instance {lane} (pair {})", lane / 2), segs);
    }
    for m in moves {
        t = t.add_move(m);
    }
    t
}
