//! Human-readable tables and CSV of run reports (JSON is `serde_json` of [`RunReport`]).

use std::fmt::Write as _;

use accellm_core::stats::Percentiles;

use crate::runner::RunReport;

/// Lays out rows of cells as an aligned text table (first column left-aligned, others right).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    for (k, r) in rows.iter().enumerate() {
        for (i, c) in r.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i == 0 {
                let _ = write!(s, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{c}", " ".repeat(pad));
            }
        }
        s.push('\n');
        if k == 0 {
            let total: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            s.push_str(&"-".repeat(total));
            s.push('\n');
        }
    }
    s
}

fn pct(p: &Percentiles, scale: f64, digits: usize) -> String {
    format!(
        "{:.d$} / {:.d$} / {:.d$} / {:.d$}",
        p.mean * scale,
        p.p50 * scale,
        p.p90 * scale,
        p.p99 * scale,
        d = digits
    )
}

/// A token count, short (`1234567` → `1.23M`).
fn tokens(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// A fraction as a percentage with one decimal (`0.934` → `93.4%`).
pub(crate) fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// The metric rows of reports side by side (one column per report).
pub fn metrics_table(reports: &[RunReport]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_string()];
    header.extend(reports.iter().map(RunReport::label));
    rows.push(header);
    let mut row = |name: &str, f: &dyn Fn(&RunReport) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(reports.iter().map(f));
        rows.push(r);
    };
    row("requests done/arrived", &|r| {
        format!("{}/{}", r.summary.completed, r.summary.arrived)
    });
    row("rejected / unfinished", &|r| {
        format!("{} / {}", r.summary.rejected, r.unfinished)
    });
    row("TTFT ms mean/p50/p90/p99", &|r| {
        pct(&r.summary.ttft_ms, 1.0, 0)
    });
    row("TBT ms mean/p50/p90/p99", &|r| {
        pct(&r.summary.tbt_ms, 1.0, 1)
    });
    row("JCT s mean/p50/p90/p99", &|r| {
        pct(&r.summary.jct_ms, 1e-3, 1)
    });
    row("norm. latency ms/tok mean/p50/p90/p99", &|r| {
        pct(&r.summary.normalized_latency_ms, 1.0, 1)
    });
    row("throughput req/s", &|r| {
        format!("{:.2}", r.summary.request_throughput)
    });
    row("throughput output tok/s", &|r| {
        format!("{:.0}", r.summary.output_throughput)
    });
    row("SLO attainment (strict)", &|r| {
        percent(r.summary.slo.slo_attainment_strict)
    });
    row("SLO attainment (mean)", &|r| {
        percent(r.summary.slo.slo_attainment_mean)
    });
    row("goodput req/s (strict)", &|r| {
        format!("{:.2}", r.summary.slo.goodput_strict)
    });
    row("goodput req/s (mean)", &|r| {
        format!("{:.2}", r.summary.slo.goodput_mean)
    });
    row("busy (prefill/decode/mixed)", &|r| {
        let n = r.instances.len().max(1) as f64;
        let m = |f: fn(&crate::runner::InstanceReport) -> f64| {
            r.instances.iter().map(f).sum::<f64>() / n * 100.0
        };
        format!(
            "{:.0}% ({:.0}/{:.0}/{:.0})",
            r.busy_mean * 100.0,
            m(|i| i.prefill),
            m(|i| i.decode),
            m(|i| i.mixed)
        )
    });
    row("busy min..max instance", &|r| {
        let (lo, hi) = r.instances.iter().fold((f64::MAX, 0.0f64), |(lo, hi), i| {
            (lo.min(i.busy), hi.max(i.busy))
        });
        format!("{:.0}%..{:.0}%", lo.min(hi) * 100.0, hi * 100.0)
    });
    row("KV util mean / peak", &|r| {
        format!("{:.0}% / {:.0}%", r.kv_mean * 100.0, r.kv_peak * 100.0)
    });
    row("preemptions", &|r| r.counters.preemptions.to_string());
    row("KV moved GB (layer-wise copy / transfer)", &|r| {
        format!(
            "{:.1} / {:.1}",
            r.counters.copy_bytes as f64 / 1e9,
            r.counters.transfer_bytes as f64 / 1e9
        )
    });
    row("role switches / replica evictions", &|r| {
        format!(
            "{} / {}",
            r.counters.role_switches, r.counters.replica_evictions
        )
    });
    row("migrations free/transfer", &|r| {
        format!(
            "{}/{}",
            r.counters.migrations_free, r.counters.migrations_transfer
        )
    });
    if reports.iter().any(|r| r.counters.migrations_recompute > 0) {
        row("migrations recompute (tokens recomputed)", &|r| {
            format!(
                "{} ({})",
                r.counters.migrations_recompute, r.counters.recompute_tokens
            )
        });
    }
    if reports.iter().any(|r| r.prefix_cache.is_some()) {
        row("prefix cache hit rate (hit / queried tokens)", &|r| {
            r.prefix_cache.map_or("-".into(), |p| {
                format!(
                    "{} ({} / {})",
                    percent(p.hit_rate),
                    tokens(p.hit_tokens),
                    tokens(p.query_tokens)
                )
            })
        });
        row("prefill tokens saved (of all prompt tokens)", &|r| {
            r.prefix_cache.map_or("-".into(), |p| {
                format!("{} ({})", tokens(p.hit_tokens), percent(p.prefill_saved))
            })
        });
    }
    if reports
        .iter()
        .any(|r| r.counters.recovered_by_replica + r.counters.recovered_by_recompute > 0)
    {
        row("recovered after a failure: replica / recompute", &|r| {
            format!(
                "{} / {}",
                r.counters.recovered_by_replica, r.counters.recovered_by_recompute
            )
        });
        row("recovery p50 · p99 ms: replica / recompute", &|r| {
            r.recovery_ms.map_or("-".into(), |[a, b]| {
                let pp = |p: Percentiles| {
                    if p.count == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.0} · {:.0}", p.p50, p.p99)
                    }
                };
                format!("{} / {}", pp(a), pp(b))
            })
        });
    }
    row("req/s per instance", &|r| {
        format!("{:.3}", r.requests_per_s_per_instance)
    });
    row("output tok per GPU-s", &|r| {
        format!("{:.1}", r.tokens_per_gpu_s)
    });
    row("simulated s / wall s", &|r| {
        format!("{:.0} / {:.2}", r.simulated_s, r.wall_s)
    });
    let mut text = table(&rows);
    let classes = class_table(reports);
    if !classes.is_empty() {
        text.push('\n');
        text.push_str(&classes);
    }
    text
}

/// Per SLO class, the reports side by side: attainment and goodput, TTFT, and each request's
/// worst gap between tokens (what its TBT SLO judges). Empty when no report has classes.
pub fn class_table(reports: &[RunReport]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for c in reports.iter().flat_map(|r| &r.classes) {
        if !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
    }
    if names.is_empty() {
        return String::new();
    }
    let mut header = vec!["per SLO class".to_string()];
    header.extend(reports.iter().map(RunReport::label));
    let mut rows = vec![header];
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for name in names {
        let of = |r: &RunReport| r.classes.iter().find(|c| c.name == name).cloned();
        let slo = reports.iter().find_map(of).map_or(String::new(), |c| {
            format!(
                " (TTFT {} / TBT {} ms)",
                ms(c.ttft_slo_ms),
                ms(c.tbt_slo_ms)
            )
        });
        let mut row = |label: String, f: &dyn Fn(&crate::runner::ClassReport) -> String| {
            let mut cells = vec![label];
            cells.extend(reports.iter().map(|r| of(r).map_or("-".into(), |c| f(&c))));
            rows.push(cells);
        };
        row(format!("{name}{slo}: requests done/arrived"), &|c| {
            format!("{}/{}", c.completed, c.arrived)
        });
        row("  SLO attainment / goodput req/s (strict)".into(), &|c| {
            format!(
                "{} / {:.2}",
                percent(c.slo.slo_attainment_strict),
                c.slo.goodput_strict
            )
        });
        row("  SLO attainment / goodput req/s (mean)".into(), &|c| {
            format!(
                "{} / {:.2}",
                percent(c.slo.slo_attainment_mean),
                c.slo.goodput_mean
            )
        });
        row("  TTFT ms p50 / p99".into(), &|c| {
            format!("{:.0} / {:.0}", c.ttft_ms.p50, c.ttft_ms.p99)
        });
        row("  worst TBT per request ms p50 / p99".into(), &|c| {
            format!("{:.1} / {:.1}", c.worst_tbt_ms.p50, c.worst_tbt_ms.p99)
        });
    }
    table(&rows)
}

/// Metrics against rate, one row per (policy, rate).
pub fn sweep_table(reports: &[RunReport]) -> String {
    let mut rows = vec![[
        "policy",
        "rate",
        "req/s",
        "tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TBT p50 ms",
        "TBT p99 ms",
        "SLO (strict)",
        "SLO (mean)",
        "goodput (strict)",
        "goodput (mean)",
        "busy",
        "KV mean",
        "preempt",
        "unfinished",
    ]
    .map(String::from)
    .to_vec()];
    let prefixes = reports.iter().any(|r| r.prefix_cache.is_some());
    if prefixes {
        rows[0].push("prefix hit".into());
    }
    for r in reports {
        let s = &r.summary;
        rows.push(vec![
            r.label(),
            r.rate.map_or("-".into(), |x| format!("{x}")),
            format!("{:.2}", s.request_throughput),
            format!("{:.0}", s.output_throughput),
            format!("{:.0}", s.ttft_ms.p50),
            format!("{:.0}", s.ttft_ms.p99),
            format!("{:.1}", s.tbt_ms.p50),
            format!("{:.1}", s.tbt_ms.p99),
            percent(s.slo.slo_attainment_strict),
            percent(s.slo.slo_attainment_mean),
            format!("{:.2}", s.slo.goodput_strict),
            format!("{:.2}", s.slo.goodput_mean),
            format!("{:.0}%", r.busy_mean * 100.0),
            format!("{:.0}%", r.kv_mean * 100.0),
            r.counters.preemptions.to_string(),
            r.unfinished.to_string(),
        ]);
        if prefixes {
            let cell = r.prefix_cache.map_or("-".into(), |p| percent(p.hit_rate));
            if let Some(last) = rows.last_mut() {
                last.push(cell);
            }
        }
    }
    table(&rows)
}

/// One CSV line per report, with a header.
pub fn csv(reports: &[RunReport]) -> String {
    let mut s = String::from(
        "cluster_policy,instance_policy,rate,model,hardware,instances,tp,arrived,completed,rejected,unfinished,\
ttft_ms_mean,ttft_ms_p50,ttft_ms_p90,ttft_ms_p99,tbt_ms_mean,tbt_ms_p50,tbt_ms_p90,tbt_ms_p99,\
jct_ms_mean,jct_ms_p50,jct_ms_p90,jct_ms_p99,norm_ms_mean,norm_ms_p50,norm_ms_p90,norm_ms_p99,\
request_throughput,output_throughput,slo_attainment_strict,goodput_strict,slo_attainment_mean,goodput_mean,busy_mean,prefill_frac,decode_frac,mixed_frac,\
kv_mean,kv_peak,preemptions,kv_bytes_moved,migrations_free,migrations_transfer,\
requests_per_s_per_instance,tokens_per_gpu_s,simulated_s,wall_s,prefix_query_tokens,prefix_hit_tokens\n",
    );
    for r in reports {
        let s_ = &r.summary;
        let n = r.instances.len().max(1) as f64;
        let mean = |f: fn(&crate::runner::InstanceReport) -> f64| {
            r.instances.iter().map(f).sum::<f64>() / n
        };
        let p = |p: &Percentiles| format!("{},{},{},{}", p.mean, p.p50, p.p90, p.p99);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.cluster_policy,
            r.instance_policy,
            r.rate.map_or(String::new(), |x| x.to_string()),
            r.cluster.model,
            r.cluster.hardware,
            r.cluster.instances,
            r.cluster.tp,
            s_.arrived,
            s_.completed,
            s_.rejected,
            r.unfinished,
            p(&s_.ttft_ms),
            p(&s_.tbt_ms),
            p(&s_.jct_ms),
            p(&s_.normalized_latency_ms),
            s_.request_throughput,
            s_.output_throughput,
            s_.slo.slo_attainment_strict,
            s_.slo.goodput_strict,
            s_.slo.slo_attainment_mean,
            s_.slo.goodput_mean,
            r.busy_mean,
            mean(|i| i.prefill),
            mean(|i| i.decode),
            mean(|i| i.mixed),
            r.kv_mean,
            r.kv_peak,
            r.counters.preemptions,
            r.kv_bytes_moved,
            r.counters.migrations_free,
            r.counters.migrations_transfer,
            r.requests_per_s_per_instance,
            r.tokens_per_gpu_s,
            r.simulated_s,
            r.wall_s,
            r.counters.prefix_query_tokens,
            r.counters.prefix_hit_tokens
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a    bb");
        assert_eq!(lines[1], "-------");
        assert_eq!(lines[2], "ccc   d");
    }
}

/// One line of `simulate --requests-out`: a finished request of one run.
#[derive(serde::Serialize)]
struct RequestLine<'a> {
    policy: String,
    rate: Option<f64>,
    #[serde(flatten)]
    record: &'a accellm_core::metrics::RequestRecord,
}

/// Writes every finished request of every run to `path`, one JSON object per line.
pub fn write_requests(path: &std::path::Path, reports: &[RunReport]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for r in reports {
        let policy = format!("{}/{}", r.cluster_policy, r.instance_policy);
        for record in &r.requests {
            let line = RequestLine {
                policy: policy.clone(),
                rate: r.rate,
                record,
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
