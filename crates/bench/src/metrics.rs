//! Latency statistics, throughput, goodput and SLO attainment of a finished run.
//!
//! Definitions follow `vllm bench serve`: TTFT is the time to the first non-empty chunk; ITL
//! every gap between successive chunks; TPOT `(E2E - TTFT) / (output tokens - 1)` for requests
//! with more than one output token; E2E the time to `[DONE]`; percentiles interpolate linearly
//! between order statistics (numpy's default); std is the population standard deviation.
//! Failed requests are excluded from latency statistics and throughput, and counted.
//!
//! SLO attainment and goodput use the core's one definition ([`SloVerdict::judge`]), reported
//! under both names: *strict* (TTFT and every gap between chunks within the request's SLO) and
//! *mean* (TTFT and mean TPOT within it). `--goodput` is the mean definition with the given
//! thresholds for every request, plus an optional end-to-end limit (vLLM's `request_goodput`).

use std::collections::BTreeMap;

use accellm_core::{
    metrics::{SloCounts, SloFigures, SloVerdict},
    request::Slo,
};
use accellm_workload::SloClass;
use serde_json::{json, Map, Value};

use crate::client::RequestResult;

/// Thresholds of `--goodput`: a request is good if it meets every one given (vLLM semantics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GoodputConfig {
    /// TTFT limit, ms.
    pub ttft_ms: Option<f64>,
    /// TPOT limit, ms.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency limit, ms.
    pub e2el_ms: Option<f64>,
}

impl GoodputConfig {
    /// Parses `["ttft:500", "tpot:50"]`.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut g = GoodputConfig::default();
        for item in items
            .iter()
            .flat_map(|s| s.split([' ', ',']))
            .filter(|s| !s.is_empty())
        {
            let (k, v) = item
                .split_once(':')
                .ok_or_else(|| format!("bad goodput item `{item}`: expected KEY:MS"))?;
            let v: f64 = v
                .parse()
                .ok()
                .filter(|v: &f64| *v >= 0.0 && v.is_finite())
                .ok_or_else(|| format!("bad goodput value `{v}`"))?;
            match k {
                "ttft" => g.ttft_ms = Some(v),
                "tpot" => g.tpot_ms = Some(v),
                "e2el" => g.e2el_ms = Some(v),
                _ => return Err(format!("unknown goodput metric `{k}` (ttft, tpot, e2el)")),
            }
        }
        Ok(g)
    }

    fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }
}

/// The server's prefix-cache counters over a run: the deltas of vLLM's
/// `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` (prompt tokens looked up / found
/// cached) between two `/metrics` scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixCacheDelta {
    /// Prompt tokens looked up in the cache.
    pub queries: f64,
    /// Of those, tokens found cached.
    pub hits: f64,
}

impl PrefixCacheDelta {
    /// The deltas between two scrapes; `None` if the server exports neither counter.
    pub fn between(before: &str, after: &str) -> Option<Self> {
        // Prometheus clients add `_total` to counters; accept both spellings.
        let counter = |t: &str, name: &str| {
            crate::fidelity::prometheus_sum(t, &format!("{name}_total"))
                .or_else(|| crate::fidelity::prometheus_sum(t, name))
        };
        let delta = |name: &str| Some((counter(after, name)? - counter(before, name)?).max(0.0));
        let queries = delta("vllm:prefix_cache_queries");
        let hits = delta("vllm:prefix_cache_hits");
        (queries.is_some() || hits.is_some()).then(|| PrefixCacheDelta {
            queries: queries.unwrap_or(0.0),
            hits: hits.unwrap_or(0.0),
        })
    }

    /// `hits / queries` (0 without queries).
    pub fn hit_rate(&self) -> f64 {
        if self.queries > 0.0 {
            self.hits / self.queries
        } else {
            0.0
        }
    }
}

/// Mean, median, std and chosen percentiles of one metric, in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Number of samples.
    pub count: usize,
    /// Mean, ms.
    pub mean: f64,
    /// Median, ms.
    pub median: f64,
    /// Population standard deviation, ms.
    pub std: f64,
    /// (percentile, value ms).
    pub percentiles: Vec<(f64, f64)>,
}

/// Linear-interpolation percentile (numpy's default) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

impl Stats {
    /// Statistics of values given in seconds, reported in ms (zeros when empty, like vLLM).
    pub fn from_seconds(values: &[f64], percentiles: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().map(|s| s * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = if n == 0 {
            0.0
        } else {
            v.iter().sum::<f64>() / n as f64
        };
        let std = if n == 0 {
            0.0
        } else {
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt()
        };
        Stats {
            count: n,
            mean,
            median: percentile(&v, 50.0),
            std,
            percentiles: percentiles
                .iter()
                .map(|&p| (p, percentile(&v, p)))
                .collect(),
        }
    }
}

/// SLO attainment of one group of requests, against their own SLOs.
#[derive(Debug, Clone, PartialEq)]
pub struct Attainment {
    /// Group name (SLO class, or `all`).
    pub name: String,
    /// Requests in the group that have an SLO (failed ones included).
    pub total: u64,
    /// Of those, met strictly and on mean TPOT.
    pub met: SloCounts,
    /// Of those, completed within the TTFT target (or had none).
    pub ttft_met: u64,
    /// Of those, completed with every gap between chunks within the TBT SLO (or had none).
    pub tbt_met: u64,
    /// Of those, completed with mean TPOT within the TBT SLO (or had none).
    pub tpot_met: u64,
}

impl Attainment {
    /// The group's SLO attainment (0 when empty) and goodput over a run of `duration_s`.
    pub fn figures(&self, duration_s: f64) -> SloFigures {
        self.met.figures(self.total, duration_s)
    }
}

/// Everything the report prints.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Wall time of the run, s.
    pub duration_s: f64,
    /// Requests sent.
    pub total: usize,
    /// Completed requests.
    pub completed: usize,
    /// Failed requests.
    pub failed: usize,
    /// Failures by kind (`http`, `timeout`, `truncated`, ...).
    pub failures_by_kind: BTreeMap<&'static str, usize>,
    /// Intended prompt tokens of completed requests.
    pub total_input_tokens: u64,
    /// Output tokens of completed requests.
    pub total_output_tokens: u64,
    /// Server-reported prompt tokens of completed requests, when every one reported them.
    pub server_input_tokens: Option<u64>,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Good requests per second under `--goodput` (None without thresholds).
    pub request_goodput: Option<f64>,
    /// SLO attainment and goodput against the requests' own SLOs, strict and mean (None when
    /// no request has an SLO).
    pub slo: Option<SloFigures>,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// (Input + output) tokens per second.
    pub total_token_throughput: f64,
    /// Time to first token.
    pub ttft: Stats,
    /// Time per output token.
    pub tpot: Stats,
    /// Inter-token latency.
    pub itl: Stats,
    /// End-to-end latency.
    pub e2el: Stats,
    /// Highest output tokens in any 1-second bucket.
    pub max_output_tokens_per_s: f64,
    /// Highest number of requests active in any 1-second bucket.
    pub max_concurrent_requests: usize,
    /// SLO attainment over all requests with SLOs, then per class.
    pub attainment: Vec<Attainment>,
}

/// Computes the summary of a run.
pub fn summarize(
    results: &[RequestResult],
    duration_s: f64,
    percentiles: &[f64],
    goodput: &GoodputConfig,
    classes: &[SloClass],
) -> Summary {
    let dur = duration_s.max(1e-9);
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok()).collect();
    let mut failures_by_kind = BTreeMap::new();
    for r in results {
        if let Some(f) = &r.failure {
            *failures_by_kind.entry(f.kind()).or_insert(0) += 1;
        }
    }
    let total_input: u64 = ok.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let total_output: u64 = ok.iter().map(|r| u64::from(r.output_tokens)).sum();
    let server_input = ok
        .iter()
        .map(|r| r.server_prompt_tokens.map(u64::from))
        .sum::<Option<u64>>()
        .filter(|_| !ok.is_empty());

    let ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_tokens > 1 && r.ttft_s.is_some())
        .map(|r| r.tpot_s())
        .collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|r| r.latency_s).collect();

    let request_goodput = (!goodput.is_empty()).then(|| {
        let thresholds = Slo {
            ttft_ms: goodput.ttft_ms,
            tbt_ms: goodput.tpot_ms,
        };
        let good = ok
            .iter()
            .filter(|r| {
                SloVerdict::judge(&thresholds, r.latencies().as_ref()).mean
                    && goodput.e2el_ms.is_none_or(|l| r.latency_s * 1000.0 <= l)
            })
            .count();
        good as f64 / dur
    });
    let attainment = attainment(results, classes);

    let (max_output_tokens_per_s, max_concurrent_requests) = peaks(&ok);

    Summary {
        duration_s,
        total: results.len(),
        completed: ok.len(),
        failed: results.len() - ok.len(),
        failures_by_kind,
        total_input_tokens: total_input,
        total_output_tokens: total_output,
        server_input_tokens: server_input,
        request_throughput: ok.len() as f64 / dur,
        request_goodput,
        slo: (attainment[0].total > 0).then(|| attainment[0].figures(dur)),
        output_throughput: total_output as f64 / dur,
        total_token_throughput: (total_input + total_output) as f64 / dur,
        ttft: Stats::from_seconds(&ttfts, percentiles),
        tpot: Stats::from_seconds(&tpots, percentiles),
        itl: Stats::from_seconds(&itls, percentiles),
        e2el: Stats::from_seconds(&e2els, percentiles),
        max_output_tokens_per_s,
        max_concurrent_requests,
        attainment,
    }
}

/// Peak output tokens in a 1-second bucket and peak requests active in one (vLLM's buckets).
fn peaks(ok: &[&RequestResult]) -> (f64, usize) {
    let Some(t0) = ok.iter().map(|r| r.start_s).min_by(f64::total_cmp) else {
        return (0.0, 0);
    };
    let end = ok
        .iter()
        .map(|r| r.start_s + r.latency_s)
        .fold(t0, f64::max);
    let buckets = (end - t0).ceil() as usize + 1;
    let mut tokens = vec![0u64; buckets];
    let mut active = vec![0usize; buckets];
    for r in ok {
        if let Some(ttft) = r.ttft_s {
            let mut t = r.start_s + ttft;
            let mut bump = |tt: f64| {
                let b = (tt - t0) as usize;
                if b < buckets {
                    tokens[b] += 1;
                }
            };
            bump(t);
            for g in &r.itl_s {
                t += g;
                bump(t);
            }
        }
        let first = (r.start_s - t0) as usize;
        let last = ((r.start_s + r.latency_s - t0) as usize).min(buckets - 1);
        for a in &mut active[first..=last.max(first)] {
            *a += 1;
        }
    }
    (
        tokens.iter().copied().max().unwrap_or(0) as f64,
        active.iter().copied().max().unwrap_or(0),
    )
}

/// SLO attainment of every request with an SLO (`all`, first), then of each class.
fn attainment(results: &[RequestResult], classes: &[SloClass]) -> Vec<Attainment> {
    let mut groups: Vec<Attainment> = std::iter::once("all".to_string())
        .chain(classes.iter().map(|c| c.name.clone()))
        .map(|name| Attainment {
            name,
            total: 0,
            met: SloCounts::default(),
            ttft_met: 0,
            tbt_met: 0,
            tpot_met: 0,
        })
        .collect();
    for r in results {
        let slo = r.slo();
        if slo == Slo::default() {
            continue;
        }
        let latencies = r.latencies();
        let judge = |slo: Slo| SloVerdict::judge(&slo, latencies.as_ref());
        let both = judge(slo);
        let ttft = judge(Slo {
            tbt_ms: None,
            ..slo
        });
        let tbt = judge(Slo {
            ttft_ms: None,
            ..slo
        });
        let add = |g: &mut Attainment| {
            g.total += 1;
            g.met.add(both);
            g.ttft_met += u64::from(ttft.strict);
            g.tbt_met += u64::from(tbt.strict);
            g.tpot_met += u64::from(tbt.mean);
        };
        add(&mut groups[0]);
        if let Some(g) = r.class.and_then(|c| groups.get_mut(c as usize + 1)) {
            add(g);
        }
    }
    groups
}

/// Adds the fields of `fields` (a JSON object) to `m`.
fn extend(m: &mut Map<String, Value>, fields: Value) {
    if let Value::Object(f) = fields {
        m.extend(f);
    }
}

/// vLLM's key for a percentile: `99` → `p99`, `99.9` → `p99.9`.
pub fn percentile_key(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("p{}", p as i64)
    } else {
        format!("p{p}")
    }
}

/// Run parameters written into the JSON result.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `date` (UTC, `YYYYMMDD-HHMMSS`).
    pub date: String,
    /// Endpoint path.
    pub endpoint: String,
    /// Model name sent.
    pub model_id: String,
    /// Tokenizer description.
    pub tokenizer_id: String,
    /// Requests in the workload.
    pub num_prompts: usize,
    /// Configured rate (None = workload timing / infinite).
    pub request_rate: Option<f64>,
    /// Gamma burstiness.
    pub burstiness: f64,
    /// Concurrency cap.
    pub max_concurrency: Option<usize>,
    /// Workload description.
    pub workload: String,
}

/// The JSON result with `vllm bench serve`'s field names plus accellm extras
/// (`failures_by_kind`, `goodput` and `slo_attainment` against the requests' own SLOs, strict
/// and mean, `workload`, `server_input_lens`, `e2els`, `start_times`).
pub fn to_json(info: &RunInfo, s: &Summary, results: &[RequestResult]) -> Value {
    let mut m = Map::new();
    m.insert("date".into(), json!(info.date));
    m.insert("endpoint_type".into(), json!("openai"));
    m.insert("backend".into(), json!("openai"));
    m.insert("label".into(), Value::Null);
    m.insert("endpoint".into(), json!(info.endpoint));
    m.insert("model_id".into(), json!(info.model_id));
    m.insert("tokenizer_id".into(), json!(info.tokenizer_id));
    m.insert("num_prompts".into(), json!(info.num_prompts));
    m.insert(
        "request_rate".into(),
        match info.request_rate {
            Some(r) => json!(r),
            None => json!("inf"),
        },
    );
    m.insert("burstiness".into(), json!(info.burstiness));
    m.insert("max_concurrency".into(), json!(info.max_concurrency));
    m.insert("workload".into(), json!(info.workload));
    m.insert("duration".into(), json!(s.duration_s));
    m.insert("completed".into(), json!(s.completed));
    m.insert("failed".into(), json!(s.failed));
    m.insert("total_input_tokens".into(), json!(s.total_input_tokens));
    m.insert("total_output_tokens".into(), json!(s.total_output_tokens));
    m.insert("request_throughput".into(), json!(s.request_throughput));
    m.insert("request_goodput".into(), json!(s.request_goodput));
    if let Some(f) = s.slo {
        extend(&mut m, json!(f));
    }
    m.insert("output_throughput".into(), json!(s.output_throughput));
    m.insert(
        "total_token_throughput".into(),
        json!(s.total_token_throughput),
    );
    m.insert(
        "input_lens".into(),
        json!(results.iter().map(|r| r.prompt_tokens).collect::<Vec<_>>()),
    );
    m.insert(
        "server_input_lens".into(),
        json!(results
            .iter()
            .map(|r| r.server_prompt_tokens)
            .collect::<Vec<_>>()),
    );
    m.insert(
        "output_lens".into(),
        json!(results
            .iter()
            .map(|r| if r.ok() { r.output_tokens } else { 0 })
            .collect::<Vec<_>>()),
    );
    m.insert(
        "ttfts".into(),
        json!(results
            .iter()
            .map(|r| r.ttft_s.unwrap_or(0.0))
            .collect::<Vec<_>>()),
    );
    m.insert(
        "itls".into(),
        json!(results.iter().map(|r| &r.itl_s).collect::<Vec<_>>()),
    );
    m.insert(
        "e2els".into(),
        json!(results.iter().map(|r| r.latency_s).collect::<Vec<_>>()),
    );
    m.insert(
        "start_times".into(),
        json!(results.iter().map(|r| r.start_s).collect::<Vec<_>>()),
    );
    m.insert(
        "errors".into(),
        json!(results
            .iter()
            .map(|r| r
                .failure
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_default())
            .collect::<Vec<_>>()),
    );
    m.insert("failures_by_kind".into(), json!(s.failures_by_kind));
    m.insert(
        "max_output_tokens_per_s".into(),
        json!(s.max_output_tokens_per_s),
    );
    m.insert(
        "max_concurrent_requests".into(),
        json!(s.max_concurrent_requests),
    );
    for (name, st) in [
        ("ttft", &s.ttft),
        ("tpot", &s.tpot),
        ("itl", &s.itl),
        ("e2el", &s.e2el),
    ] {
        m.insert(format!("mean_{name}_ms"), json!(st.mean));
        m.insert(format!("median_{name}_ms"), json!(st.median));
        m.insert(format!("std_{name}_ms"), json!(st.std));
        for (p, v) in &st.percentiles {
            m.insert(format!("{}_{name}_ms", percentile_key(*p)), json!(v));
        }
    }
    m.insert(
        "slo_attainment".into(),
        Value::Array(
            s.attainment
                .iter()
                .map(|a| {
                    let mut o = Map::new();
                    extend(
                        &mut o,
                        json!({
                            "class": a.name, "requests": a.total,
                            "met_strict": a.met.strict, "met_mean": a.met.mean,
                            "ttft_met": a.ttft_met, "tbt_met": a.tbt_met, "tpot_met": a.tpot_met,
                        }),
                    );
                    extend(&mut o, json!(a.figures(s.duration_s)));
                    Value::Object(o)
                })
                .collect(),
        ),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ttft: f64, itl: &[f64], ok: bool) -> RequestResult {
        let latency = ttft + itl.iter().sum::<f64>();
        RequestResult {
            index: 0,
            start_s: 0.0,
            prompt_tokens: 10,
            server_prompt_tokens: None,
            expected_output_tokens: itl.len() as u32 + 1,
            output_tokens: itl.len() as u32 + 1,
            ttft_s: Some(ttft),
            itl_s: itl.to_vec(),
            latency_s: latency,
            text: String::new(),
            failure: (!ok).then(|| crate::client::Failure::Truncated(String::new())),
            ttft_slo_ms: Some(100.0),
            tbt_slo_ms: Some(20.0),
            class: Some(0),
        }
    }

    #[test]
    fn prefix_cache_deltas_from_two_scrapes() {
        let before = "# TYPE vllm:prefix_cache_queries counter\n\
                      vllm:prefix_cache_queries_total{model_name=\"m\"} 100\n\
                      vllm:prefix_cache_hits_total{model_name=\"m\"} 10\n";
        let after = "vllm:prefix_cache_queries_total{model_name=\"m\"} 1100\n\
                     vllm:prefix_cache_hits_total{model_name=\"m\"} 610\n";
        let d = PrefixCacheDelta::between(before, after).unwrap();
        assert_eq!((d.queries, d.hits), (1000.0, 600.0));
        assert!((d.hit_rate() - 0.6).abs() < 1e-12);
        let bare = PrefixCacheDelta::between(
            "vllm:prefix_cache_queries 5\nvllm:prefix_cache_hits 1\n",
            "vllm:prefix_cache_queries 9\nvllm:prefix_cache_hits 3\n",
        )
        .unwrap();
        assert_eq!((bare.queries, bare.hits), (4.0, 2.0));
        assert_eq!(PrefixCacheDelta::between("other 1\n", "other 2\n"), None);
        let text = crate::report::render_prefix_cache(&d);
        assert!(text.contains("60.0%") && text.contains("1000"), "{text}");
    }

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile_key(99.0), "p99");
        assert_eq!(percentile_key(99.9), "p99.9");
    }

    #[test]
    fn summary_goodput_and_attainment() {
        let rs = vec![
            result(0.05, &[0.01, 0.01, 0.01], true), // ttft 50, tpot 10: good
            result(0.20, &[0.01, 0.01], true),       // ttft 200: misses TTFT
            result(0.05, &[0.03, 0.03], true),       // tpot 30: misses TPOT
            result(0.05, &[0.01], false),            // failed
            result(0.05, &[0.01, 0.01, 0.01, 0.04], true), // tpot 17.5, one 40 ms gap
        ];
        let classes = accellm_workload::SloClass::defaults();
        let g = GoodputConfig::parse(&["ttft:100 tpot:20".to_string()]).unwrap();
        let s = summarize(&rs, 2.0, &[50.0, 99.0], &g, &classes);
        assert_eq!((s.completed, s.failed), (4, 1));
        assert_eq!(s.failures_by_kind.get("truncated"), Some(&1));
        assert_eq!(s.total_output_tokens, 4 + 3 + 3 + 5);
        // vLLM's --goodput judges mean TPOT: the request with one long gap is good.
        assert_eq!(s.request_goodput, Some(1.0));
        assert!((s.ttft.mean - 87.5).abs() < 1e-9);
        assert!((s.ttft.median - 50.0).abs() < 1e-9);
        assert!((s.tpot.median - 13.75).abs() < 1e-9);
        assert_eq!(s.itl.count, 3 + 2 + 2 + 4);
        let all = &s.attainment[0];
        assert_eq!(all.total, 5);
        assert_eq!(all.met, SloCounts { strict: 1, mean: 2 });
        assert_eq!((all.ttft_met, all.tbt_met, all.tpot_met), (3, 2, 3));
        assert_eq!(
            s.slo,
            Some(SloFigures {
                slo_attainment_strict: 0.2,
                slo_attainment_mean: 0.4,
                goodput_strict: 0.5,
                goodput_mean: 1.0,
            })
        );
        assert_eq!(s.attainment[1].name, "chat");
        assert_eq!(s.attainment[1].total, 5);
        let text = crate::report::render(&s, None, None);
        assert!(text.contains("Goodput req/s (strict):"), "{text}");
        assert!(text.contains("all (5 requests), mean:"), "{text}");
        let j = to_json(
            &RunInfo {
                date: "d".into(),
                endpoint: "/v1/completions".into(),
                model_id: "m".into(),
                tokenizer_id: "t".into(),
                num_prompts: 5,
                request_rate: None,
                burstiness: 1.0,
                max_concurrency: None,
                workload: "w".into(),
            },
            &s,
            &rs,
        );
        assert_eq!(j["completed"], 4);
        assert_eq!(j["request_rate"], "inf");
        assert!(j["p99_ttft_ms"].as_f64().unwrap() > 190.0);
        assert_eq!(j["itls"].as_array().unwrap().len(), 5);
        assert_eq!(j["output_lens"][3], 0);
        assert_eq!(j["goodput_strict"], 0.5);
        assert_eq!(j["slo_attainment_mean"], 0.4);
        assert_eq!(j["slo_attainment"][0]["met_mean"], 2);
        assert_eq!(j["slo_attainment"][0]["slo_attainment_strict"], 0.2);
        assert_eq!(j["slo_attainment"][1]["goodput_mean"], 1.0);
        assert!(GoodputConfig::parse(&["ttfx:1".to_string()]).is_err());
    }
}
