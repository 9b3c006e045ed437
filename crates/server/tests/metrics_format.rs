//! `/metrics` of a real server under the Prometheus text exposition format's strict rules, and
//! every family, type and label that llm-d's endpoint picker reads through its vLLM mapping
//! (the Gateway API Inference Extension's model server protocol); and the objective header the
//! gateway forwards, mapped onto the server's SLO classes.
//!
//! The checker is written here rather than taken from a crate: the Rust parsers of this format
//! (`prometheus-parse` and kin) are lenient by design (they accept samples without HELP or TYPE,
//! duplicate series and unordered buckets), which is exactly what this test must refuse.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::{start, tiny_config, Http};

/// The served model name: a quote and a backslash, which label values must escape.
const SERVED: &str = r#"acme/tiny "v1\x""#;

/// Label pairs in the order written.
type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One metric family: its TYPE and its samples, in order.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

/// A sample value or bucket bound as Go's `strconv.ParseFloat` reads it in this format.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse().map_err(|e| format!("value `{s}`: {e}"))
        }
        _ => Err(format!("value `{s}` is not a number")),
    }
}

/// `{a="x",b="y"} rest` → labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s
        .strip_prefix('{')
        .ok_or_else(|| format!("expected `{{` in `{s}`"))?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without `=` in `{s}`"))?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name `{name}`"));
        }
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label `{name}` twice in `{s}`"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{name}`'s value is not quoted in `{s}`"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in `{s}`")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in `{s}`")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in a label value: `{s}`")),
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!(
                "expected `,` or `}}` after label `{name}` in `{s}`"
            ));
        }
    }
}

/// The family a sample name belongs to, given the family declared last.
fn belongs(sample: &str, family: &str, kind: &str) -> bool {
    match kind {
        "histogram" => [
            format!("{family}_bucket"),
            format!("{family}_sum"),
            format!("{family}_count"),
        ]
        .contains(&sample.to_string()),
        "summary" => {
            sample == family
                || sample == format!("{family}_sum")
                || sample == format!("{family}_count")
        }
        _ => sample == family,
    }
}

/// Parses `text` under the strict rules and returns its families by name.
fn parse_strict(text: &str) -> Result<BTreeMap<String, Family>, String> {
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    // The family whose TYPE line came last: samples must follow it, one block per family.
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, Labels)> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: `{line}`", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (Some(word), Some(name)) = (parts.next(), parts.next()) else {
                continue; // a plain comment
            };
            let rest = parts.next().unwrap_or("");
            match word {
                "HELP" => {
                    if !valid_metric_name(name) {
                        return Err(at(format!("invalid metric name `{name}`")));
                    }
                    let mut chars = rest.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(at("bad escape in HELP".into()));
                        }
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if f.help.replace(rest.to_string()).is_some() {
                        return Err(at(format!("second HELP for `{name}`")));
                    }
                    if !f.samples.is_empty() {
                        return Err(at(format!("HELP for `{name}` after its samples")));
                    }
                }
                "TYPE" => {
                    if !valid_metric_name(name) {
                        return Err(at(format!("invalid metric name `{name}`")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest) {
                        return Err(at(format!("unknown type `{rest}`")));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if !f.kind.is_empty() {
                        return Err(at(format!("second TYPE for `{name}`")));
                    }
                    if !f.samples.is_empty() {
                        return Err(at(format!("TYPE for `{name}` after its samples")));
                    }
                    f.kind = rest.to_string();
                    if let Some(prev) = current.replace(name.to_string()) {
                        closed.insert(prev);
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("a sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("invalid metric name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("timestamp `{ts}` is not an integer")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = current
            .clone()
            .ok_or_else(|| at("sample before any TYPE line".into()))?;
        let f = families
            .get_mut(&family)
            .ok_or_else(|| at("no family".into()))?;
        if !belongs(name, &family, &f.kind) {
            let named = families.get(name).map(|f| f.kind.clone());
            return Err(at(match named {
                Some(_) if closed.contains(name) => {
                    format!("sample of `{name}` outside its family's block")
                }
                _ => format!(
                    "sample `{name}` does not belong to `{family}`, the family declared last \
                     (no TYPE/HELP of its own before it)"
                ),
            }));
        }
        if f.help.is_none() {
            return Err(at(format!(
                "family `{family}` has no HELP before its samples"
            )));
        }
        let mut key = labels.clone();
        key.sort();
        if !series.insert((name.to_string(), key)) {
            return Err(at("duplicate series".into()));
        }
        f.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("family `{name}` has HELP but no TYPE"));
        }
        if f.samples.is_empty() {
            return Err(format!("family `{name}` has no samples"));
        }
        check_family(name, f)?;
    }
    Ok(families)
}

/// Per-type rules: counters, histograms.
fn check_family(name: &str, f: &Family) -> Result<(), String> {
    match f.kind.as_str() {
        "counter" => {
            // OpenMetrics: a counter's samples end in `_total` (the 0.0.4 family is named so).
            if !name.ends_with("_total") {
                return Err(format!("counter `{name}` does not end in `_total`"));
            }
            for s in &f.samples {
                if s.value.is_nan() || s.value < 0.0 {
                    return Err(format!("counter `{name}` has value {}", s.value));
                }
            }
        }
        "gauge" | "untyped" => {}
        "histogram" => {
            // Group by the labels other than `le`, keeping the order the series came in.
            let mut groups: Vec<(Labels, Vec<&Sample>)> = Vec::new();
            for s in &f.samples {
                let mut key: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                key.sort();
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(s),
                    None => groups.push((key, vec![s])),
                }
            }
            for (key, samples) in groups {
                let what = format!("histogram `{name}` {key:?}");
                let mut bounds = Vec::new();
                let mut counts = Vec::new();
                let (mut sum, mut count) = (None, None);
                for s in samples {
                    match s.name.strip_prefix(name) {
                        Some("_bucket") => {
                            let le = s
                                .label("le")
                                .ok_or_else(|| format!("{what}: a bucket without `le`"))?;
                            bounds.push(parse_value(le).map_err(|e| format!("{what}: le {e}"))?);
                            counts.push(s.value);
                        }
                        Some(suffix) => {
                            if s.label("le").is_some() {
                                return Err(format!("{what}: `le` on {suffix}"));
                            }
                            if suffix == "_sum" {
                                sum = Some(s.value);
                            } else {
                                count = Some(s.value);
                            }
                        }
                        None => unreachable!("checked by `belongs`"),
                    }
                }
                if bounds.last() != Some(&f64::INFINITY) {
                    return Err(format!("{what}: the last bucket is not le=\"+Inf\""));
                }
                if bounds.windows(2).any(|w| w[0].is_nan() || w[0] >= w[1]) {
                    return Err(format!("{what}: bucket bounds not ascending: {bounds:?}"));
                }
                if counts.iter().any(|c| *c < 0.0 || c.fract() != 0.0)
                    || counts.windows(2).any(|w| w[0] > w[1])
                {
                    return Err(format!("{what}: bucket counts not cumulative: {counts:?}"));
                }
                let count = count.ok_or_else(|| format!("{what}: no _count"))?;
                sum.ok_or_else(|| format!("{what}: no _sum"))?;
                if counts.last() != Some(&count) {
                    return Err(format!(
                        "{what}: _count {count} ≠ the +Inf bucket {counts:?}"
                    ));
                }
            }
        }
        other => return Err(format!("`{name}`: type {other} not expected here")),
    }
    Ok(())
}

/// The one sample of a family the picker reads (it takes the latest series; we expose one).
fn only<'a>(families: &'a BTreeMap<String, Family>, name: &str, kind: &str) -> &'a Sample {
    let f = families
        .get(name)
        .unwrap_or_else(|| panic!("the picker reads `{name}`, which is missing"));
    assert_eq!(f.kind, kind, "`{name}` must be a {kind}");
    assert_eq!(f.samples.len(), 1, "`{name}`: one series expected");
    &f.samples[0]
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Checks what the endpoint picker's vLLM mapping reads: queue, running, KV usage (current and
/// legacy names), the cache configuration's labels and the LoRA info gauge.
fn check_picker_view(families: &BTreeMap<String, Family>, blocks: u64) {
    let model = Some(SERVED);
    for name in ["vllm:num_requests_waiting", "vllm:num_requests_running"] {
        let s = only(families, name, "gauge");
        assert!(
            s.value >= 0.0 && s.value.fract() == 0.0,
            "{name} = {}",
            s.value
        );
        assert_eq!(s.label("model_name"), model, "{name}");
    }
    for name in ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"] {
        let s = only(families, name, "gauge");
        assert!((0.0..=1.0).contains(&s.value), "{name} = {}", s.value);
    }
    // The picker reads these labels with Go's strconv.Atoi.
    let cache = only(families, "vllm:cache_config_info", "gauge");
    assert_eq!(cache.value, 1.0);
    assert_eq!(cache.label("block_size"), Some("16"));
    assert_eq!(
        cache
            .label("num_gpu_blocks")
            .and_then(|v| v.parse::<u64>().ok()),
        Some(blocks)
    );
    // The LoRA gauge: the latest series (its value is a wall-clock time) names the adapters
    // running and waiting and the most that fit; without it the picker logs an error per scrape.
    let lora = only(families, "vllm:lora_requests_info", "gauge");
    assert_eq!(lora.label("running_lora_adapters"), Some(""));
    assert_eq!(lora.label("waiting_lora_adapters"), Some(""));
    assert!(
        lora.label("max_lora")
            .and_then(|v| v.parse::<i64>().ok())
            .is_some(),
        "max_lora must be an integer: {lora:?}"
    );
    assert!(
        (lora.value - unix_now()).abs() < 60.0,
        "vllm:lora_requests_info's value must be the current Unix time, got {}",
        lora.value
    );
    // The counters the picker's and llm-d's dashboards use for prefix reuse.
    for name in [
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ] {
        let s = only(families, name, "counter");
        assert_eq!(s.label("model_name"), model, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_and_carry_what_the_endpoint_picker_reads() {
    let mut cfg = tiny_config();
    cfg.served_model_name = Some(SERVED.into());
    let blocks = cfg.kv_blocks as u64 * cfg.instances as u64;
    let server = start(cfg);
    let http = Http::new(server.addr());

    // Before any request, then after some (histograms and counters filled).
    let before = http.get("/metrics").await;
    assert_eq!(before.status, 200);
    let content_type = before
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let families = parse_strict(&before.body).unwrap_or_else(|e| panic!("{e}\n{}", before.body));
    check_picker_view(&families, blocks);

    for i in 0..3 {
        let body = json!({
            "model": SERVED,
            "prompt": format!("request {i} shares this prefix with the others"),
            "max_tokens": 4,
            "temperature": 0,
            "ignore_eos": true,
            "stream": i == 1,
        });
        let r = http.post("/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // /metrics is published by the scheduler thread; give it a moment to count the last one.
    let mut text = String::new();
    for _ in 0..100 {
        text = http.get("/metrics").await.body;
        if support::metric_in(&text, "vllm:e2e_request_latency_seconds_count{") == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let families = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    check_picker_view(&families, blocks);
    let e2e = &families["vllm:e2e_request_latency_seconds"];
    assert_eq!(e2e.kind, "histogram");
    let count = e2e
        .samples
        .iter()
        .find(|s| s.name.ends_with("_count"))
        .map(|s| s.value);
    assert_eq!(count, Some(3.0), "{text}");
    let generated = only(&families, "vllm:generation_tokens_total", "counter").value;
    assert_eq!(generated, 12.0);
    // Every family of ours or vLLM's is typed as its name says.
    let kinds: HashMap<&str, &str> = families
        .iter()
        .map(|(k, f)| (k.as_str(), f.kind.as_str()))
        .collect();
    for (name, kind) in &kinds {
        if name.ends_with("_seconds") {
            assert_eq!(*kind, "histogram", "{name}");
        }
    }
}

#[test]
fn the_checker_refuses_what_the_format_forbids() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
    assert!(parse_strict(ok).is_ok());
    let bad = [
        // No HELP, no TYPE, a TYPE after the sample.
        "a_total 3\n",
        "# TYPE a_total counter\na_total 3\n",
        "# HELP a_total A.\na_total 3\n# TYPE a_total counter\n",
        // Two TYPE lines, a duplicate series, an interleaved family.
        "# HELP a_total A.\n# TYPE a_total counter\n# TYPE a_total counter\na_total 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{x=\"1\"} 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# HELP b B.\n# TYPE b gauge\nb 1\na_total 2\n",
        // A counter without `_total`, a bad label, a bad value, a missing final newline.
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a A.\n# TYPE a gauge\na{__x=\"1\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\\t\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a gauge\na 1",
        // Histograms: no +Inf, unordered bounds, count ≠ +Inf, no _sum.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ];
    for b in bad {
        assert!(parse_strict(b).is_err(), "accepted:\n{b}");
    }
}

/// llm-d's objective header puts a request in one of the server's SLO classes; the request's
/// own SLO headers are more specific, and an objective without a class changes nothing. Seen
/// through `accellm_slo_met_total`: a class whose TTFT no request can meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objective_header_puts_a_request_in_its_slo_class() {
    let mut cfg = tiny_config();
    cfg.slo_classes = vec![accellm_workload::SloClass {
        name: "instant".into(),
        weight: 1.0,
        ttft_ms: Some(0.001),
        tbt_ms: None,
        priority: 0,
    }];
    let server = start(cfg);
    let http = Http::new(server.addr());
    let body = serde_json::to_vec(&json!({
        "model": "tiny",
        "prompt": "objective",
        "max_tokens": 2,
        "ignore_eos": true,
    }))
    .expect("JSON");
    let cases: [(&[(&str, &str)], bool); 5] = [
        (&[("x-llm-d-inference-objective", "instant")], false),
        (&[("x-gateway-inference-objective", "instant")], false),
        (&[], true),
        (
            &[
                ("x-llm-d-inference-objective", "instant"),
                ("x-llm-d-slo-ttft-ms", "600000"),
            ],
            true,
        ),
        (&[("x-llm-d-inference-objective", "premium")], true),
    ];
    let mut met = 0.0;
    for (i, (headers, meets)) in cases.iter().enumerate() {
        let r = http
            .send("POST", "/v1/completions", body.clone(), headers)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        met += f64::from(u8::from(*meets));
        // The verdict is counted when the scheduler thread publishes the request's end.
        let mut seen = None;
        for _ in 0..100 {
            let text = http.get("/metrics").await.body;
            let done = support::metric_in(&text, "vllm:e2e_request_latency_seconds_count{");
            if done == Some(i as f64 + 1.0) {
                seen = support::metric_in(&text, "accellm_slo_met_total{kind=\"strict\"}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, Some(met), "case {i}: {headers:?}");
    }
}
