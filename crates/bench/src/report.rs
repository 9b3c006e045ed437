//! The human-readable summary table (laid out like `vllm bench serve`'s).

use std::fmt::Write;

use crate::metrics::{percentile_key, PrefixCacheDelta, Stats, Summary};

fn rule(out: &mut String, title: &str, fill: char) {
    let n = 50usize.saturating_sub(title.chars().count());
    let left = n / 2;
    let _ = writeln!(
        out,
        "{}{}{}",
        fill.to_string().repeat(left),
        title,
        fill.to_string().repeat(n - left)
    );
}

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<40} {:<10}", label, value);
}

fn stats(out: &mut String, header: &str, short: &str, s: &Stats) {
    rule(out, header, '-');
    row(
        out,
        &format!("Mean {short} (ms):"),
        format!("{:.2}", s.mean),
    );
    row(
        out,
        &format!("Median {short} (ms):"),
        format!("{:.2}", s.median),
    );
    for (p, v) in &s.percentiles {
        let key = percentile_key(*p).replacen('p', "P", 1);
        row(out, &format!("{key} {short} (ms):"), format!("{v:.2}"));
    }
}

/// Renders the summary table.
pub fn render(s: &Summary, rate: Option<f64>, max_concurrency: Option<usize>) -> String {
    let mut out = String::new();
    rule(&mut out, " Serving Benchmark Result ", '=');
    row(&mut out, "Successful requests:", s.completed);
    row(&mut out, "Failed requests:", s.failed);
    for (kind, n) in &s.failures_by_kind {
        row(&mut out, &format!("  {kind}:"), n);
    }
    if let Some(c) = max_concurrency {
        row(&mut out, "Maximum request concurrency:", c);
    }
    if let Some(r) = rate {
        row(
            &mut out,
            "Request rate configured (RPS):",
            format!("{r:.2}"),
        );
    }
    row(
        &mut out,
        "Benchmark duration (s):",
        format!("{:.2}", s.duration_s),
    );
    row(&mut out, "Total input tokens:", s.total_input_tokens);
    if let Some(n) = s.server_input_tokens {
        row(&mut out, "Total input tokens (server count):", n);
    }
    row(&mut out, "Total generated tokens:", s.total_output_tokens);
    row(
        &mut out,
        "Request throughput (req/s):",
        format!("{:.2}", s.request_throughput),
    );
    if let Some(g) = s.request_goodput {
        row(&mut out, "Request goodput (req/s):", format!("{g:.2}"));
    }
    if let Some(f) = s.slo {
        row(
            &mut out,
            "Goodput req/s (strict):",
            format!("{:.2}", f.goodput_strict),
        );
        row(
            &mut out,
            "Goodput req/s (mean):",
            format!("{:.2}", f.goodput_mean),
        );
    }
    row(
        &mut out,
        "Output token throughput (tok/s):",
        format!("{:.2}", s.output_throughput),
    );
    row(
        &mut out,
        "Peak output token throughput (tok/s):",
        format!("{:.2}", s.max_output_tokens_per_s),
    );
    row(
        &mut out,
        "Peak concurrent requests:",
        s.max_concurrent_requests,
    );
    row(
        &mut out,
        "Total Token throughput (tok/s):",
        format!("{:.2}", s.total_token_throughput),
    );
    stats(&mut out, "Time to First Token", "TTFT", &s.ttft);
    stats(
        &mut out,
        "Time per Output Token (excl. 1st token)",
        "TPOT",
        &s.tpot,
    );
    stats(&mut out, "Inter-token Latency", "ITL", &s.itl);
    stats(&mut out, "End-to-end Latency", "E2EL", &s.e2el);
    let with_slo: Vec<_> = s.attainment.iter().filter(|a| a.total > 0).collect();
    if !with_slo.is_empty() {
        rule(&mut out, "SLO Attainment (own SLOs)", '-');
        let pct = |n: u64, total: u64| format!("{:.1}%", 100.0 * n as f64 / total as f64);
        for a in with_slo {
            for (kind, met, gaps, gap_met) in [
                ("strict", a.met.strict, "every gap", a.tbt_met),
                ("mean", a.met.mean, "mean TPOT", a.tpot_met),
            ] {
                row(
                    &mut out,
                    &format!("{} ({} requests), {kind}:", a.name, a.total),
                    format!(
                        "{} (TTFT {}, {gaps} {})",
                        pct(met, a.total),
                        pct(a.ttft_met, a.total),
                        pct(gap_met, a.total)
                    ),
                );
            }
        }
    }
    rule(&mut out, "", '=');
    out
}

/// The server's prefix-cache counters over the run, in the same layout.
pub fn render_prefix_cache(d: &PrefixCacheDelta) -> String {
    let mut out = String::new();
    rule(&mut out, " Prefix Cache (server counters) ", '=');
    row(
        &mut out,
        "Prompt tokens queried:",
        format!("{:.0}", d.queries),
    );
    row(
        &mut out,
        "Prompt tokens hit (prefill saved):",
        format!("{:.0}", d.hits),
    );
    row(
        &mut out,
        "Prefix cache hit rate:",
        format!("{:.1}%", d.hit_rate() * 100.0),
    );
    rule(&mut out, "", '=');
    out
}
