//! Prometheus metrics: vLLM's names for the usual serving figures, plus accellm's own (roles,
//! replicas, migrations, KV blocks per instance, requests that met their SLO). The scheduler
//! thread updates them; `GET /metrics` renders them in the text exposition format.
//!
//! `accellm_slo_met_total{kind="strict"|"mean"}` counts finished requests that met their SLO by
//! the core's one definition ([`SloVerdict::judge`]): *strict*, TTFT and every gap between tokens
//! within target; *mean*, TTFT and mean TPOT within target. A request without an SLO meets it by
//! completing; a cancelled or failed one misses both. Its rate is goodput; divided by finished
//! plus rejected requests, SLO attainment.

use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use accellm_core::metrics::{Latencies, SloCounts, SloVerdict};
use accellm_core::request::Slo;

/// What a new token of a request measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenLatency {
    /// The first token: time since arrival.
    First(Duration),
    /// A later token: the gap since the previous one.
    Gap(Duration),
}

/// When one request arrived and produced its tokens: its TTFT, TBT and SLO verdict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenTimes {
    arrival: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    max_gap: Duration,
}

impl TokenTimes {
    /// A request that arrived at `arrival`.
    pub(crate) fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            first: None,
            last: None,
            max_gap: Duration::ZERO,
        }
    }

    /// Records a token at `now`.
    pub(crate) fn token(&mut self, now: Instant) -> TokenLatency {
        let latency = match self.last {
            None => {
                self.first = Some(now);
                TokenLatency::First(self.since_arrival(now))
            }
            Some(last) => {
                let gap = now.saturating_duration_since(last);
                self.max_gap = self.max_gap.max(gap);
                TokenLatency::Gap(gap)
            }
        };
        self.last = Some(now);
        latency
    }

    /// Time since arrival.
    pub(crate) fn since_arrival(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.arrival)
    }

    /// The verdict on a request that ended at `now` with `tokens` output tokens; `completed` is
    /// false for one cancelled or failed.
    pub(crate) fn verdict(
        &self,
        slo: &Slo,
        completed: bool,
        now: Instant,
        tokens: u32,
    ) -> SloVerdict {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let latencies = self.first.filter(|_| completed).map(|first| Latencies {
            ttft_ms: ms(first.saturating_duration_since(self.arrival)),
            max_tbt_ms: ms(self.max_gap),
            jct_ms: ms(self.since_arrival(now)),
            output_tokens: tokens,
        });
        SloVerdict::judge(slo, latencies.as_ref())
    }
}

/// A label value as the text format writes it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A cumulative histogram with fixed upper bounds (seconds, or tokens).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (ascending; `+Inf` is implicit).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, labels);
    }

    /// The series without the family's HELP and TYPE lines (a second label set).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

const RECOVERY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// The role an instance plays in its current (or last) iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Prefill and decode allowed.
    #[default]
    Mixed,
    /// Prefill only.
    Prefill,
    /// Decode only.
    Decode,
    /// Told to idle.
    Idle,
}

impl Role {
    const ALL: [Role; 4] = [Role::Mixed, Role::Prefill, Role::Decode, Role::Idle];

    fn name(self) -> &'static str {
        match self {
            Role::Mixed => "mixed",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
            Role::Idle => "idle",
        }
    }
}

/// Gauges of one instance.
#[derive(Debug, Clone, Default)]
pub struct InstanceGauges {
    /// Role of the current iteration.
    pub role: Role,
    /// Free KV blocks.
    pub free_blocks: u32,
    /// Blocks held by primaries.
    pub primary_blocks: u32,
    /// Blocks held by replicas.
    pub replica_blocks: u32,
    /// Blocks in the pool.
    pub total_blocks: u32,
    /// Requests waiting here.
    pub waiting: u32,
    /// Requests decoding here.
    pub running: u32,
    /// Iterations run.
    pub iterations: u64,
    /// Of those, iterations that also ran on the idle partner's cores.
    pub wide_iterations: u64,
    /// Seconds spent running iterations.
    pub busy_s: f64,
    /// Declared down (a remote worker that failed).
    pub down: bool,
}

/// Every metric the server exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    model: String,
    /// Requests being processed (prefilling or decoding).
    pub running: u64,
    /// Requests waiting for prefill.
    pub waiting: u64,
    /// Fraction of KV blocks a new request cannot have across instances (0..=1): blocks of
    /// primaries and of pinned replicas; replicas that would be evicted for it count as free.
    pub kv_usage: f64,
    /// Tokens per KV block (`vllm:cache_config_info`).
    pub block_size: u32,
    /// KV blocks of all instances (`vllm:cache_config_info`'s `num_gpu_blocks`).
    pub kv_blocks: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub generation_tokens: u64,
    /// Finished requests by reason (`stop`, `length`, `abort`).
    pub finished: [u64; 3],
    /// Requests refused by reason (`queue_full`, `too_long`, `shutting_down`).
    pub rejected: [u64; 3],
    /// Time to first token.
    pub ttft: Histogram,
    /// Inter-token latency.
    pub itl: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    /// Per instance.
    pub instances: Vec<InstanceGauges>,
    /// Cluster counters of the core.
    pub counters: accellm_core::scheduler::ClusterCounters,
    /// KV bytes really copied between pools alongside iterations (replicas).
    pub copied_replica_bytes: u64,
    /// KV bytes really copied by explicit transfers.
    pub copied_transfer_bytes: u64,
    /// Cluster and instance policy names.
    pub policies: (String, String),
    /// Finished requests that met their SLO, strict and mean.
    pub slo_met: SloCounts,
    /// Failure to next token of requests recovered from a failed instance: by replica, by
    /// recompute.
    pub recovery: [Histogram; 2],
}

impl Metrics {
    /// Empty metrics for `instances` instances serving `model`.
    pub fn new(model: &str, instances: usize, policies: (String, String)) -> Self {
        Self {
            model: escape_label(model),
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            block_size: 0,
            kv_blocks: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            finished: [0; 3],
            rejected: [0; 3],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            instances: vec![InstanceGauges::default(); instances],
            counters: Default::default(),
            copied_replica_bytes: 0,
            copied_transfer_bytes: 0,
            policies,
            slo_met: SloCounts::default(),
            recovery: [
                Histogram::new(RECOVERY_BUCKETS),
                Histogram::new(RECOVERY_BUCKETS),
            ],
        }
    }

    /// Records how long a request recovering from a failed instance waited for its next token.
    pub fn observe_recovery(&mut self, by_replica: bool, seconds: f64) {
        self.recovery[usize::from(!by_replica)].observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let m = format!("model_name=\"{}\"", self.model);
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{m}}} {v}"
            );
        };
        gauge(
            &mut o,
            "vllm:num_requests_running",
            "Requests being prefilled or decoded.",
            self.running as f64,
        );
        gauge(
            &mut o,
            "vllm:num_requests_waiting",
            "Requests waiting for prefill.",
            self.waiting as f64,
        );
        gauge(
            &mut o,
            "vllm:kv_cache_usage_perc",
            "Fraction of KV blocks in use (1 = full).",
            self.kv_usage,
        );
        gauge(
            &mut o,
            "vllm:gpu_cache_usage_perc",
            "Fraction of KV blocks in use (1 = full); same as vllm:kv_cache_usage_perc.",
            self.kv_usage,
        );
        // vLLM's info gauge: the configuration in labels, value 1 (gateways read the block size).
        let _ = writeln!(
            o,
            "# HELP vllm:cache_config_info Information of the KV cache configuration.\n\
             # TYPE vllm:cache_config_info gauge\n\
             vllm:cache_config_info{{{m},block_size=\"{}\",num_gpu_blocks=\"{}\"}} 1",
            self.block_size, self.kv_blocks
        );
        // vLLM's LoRA gauge, which the endpoint picker reads by default (it logs an error at every
        // scrape when the family is missing): no adapters are served, so none run or wait and
        // none fit. The value is the wall-clock time, as vLLM's (the picker keeps the latest).
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            o,
            "# HELP vllm:lora_requests_info LoRA adapters running and waiting, and the most that fit (accellm serves none).\n\
             # TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}} {now_s}"
        );
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{m}}} {v}"
            );
        };
        counter(
            &mut o,
            "vllm:prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            self.prompt_tokens,
        );
        counter(
            &mut o,
            "vllm:generation_tokens_total",
            "Generated tokens.",
            self.generation_tokens,
        );
        counter(
            &mut o,
            "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache when their prefill started.",
            self.counters.prefix_query_tokens,
        );
        counter(
            &mut o,
            "vllm:prefix_cache_hits_total",
            "Of those, tokens found cached (prefill skipped).",
            self.counters.prefix_hit_tokens,
        );
        let _ = writeln!(
            o,
            "# HELP vllm:request_success_total Finished requests by reason.\n# TYPE vllm:request_success_total counter"
        );
        for (i, r) in ["stop", "length", "abort"].iter().enumerate() {
            let _ = writeln!(
                o,
                "vllm:request_success_total{{{m},finished_reason=\"{r}\"}} {}",
                self.finished[i]
            );
        }
        self.ttft.render(
            &mut o,
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            &m,
        );
        self.itl.render(
            &mut o,
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output tokens.",
            &m,
        );
        self.itl.render(
            &mut o,
            "vllm:time_per_output_token_seconds",
            "Time between consecutive output tokens (older name).",
            &m,
        );
        self.e2e.render(
            &mut o,
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            &m,
        );
        let _ = writeln!(
            o,
            "# HELP accellm_slo_met_total Finished requests that met their SLO (strict: TTFT and every gap between tokens; mean: TTFT and mean TPOT).\n# TYPE accellm_slo_met_total counter\naccellm_slo_met_total{{kind=\"strict\"}} {}\naccellm_slo_met_total{{kind=\"mean\"}} {}",
            self.slo_met.strict, self.slo_met.mean
        );
        let _ = writeln!(
            o,
            "# HELP accellm_requests_rejected_total Requests refused at admission by reason.\n# TYPE accellm_requests_rejected_total counter"
        );
        for (i, r) in ["queue_full", "too_long", "shutting_down"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                o,
                "accellm_requests_rejected_total{{reason=\"{r}\"}} {}",
                self.rejected[i]
            );
        }
        let _ = writeln!(
            o,
            "# HELP accellm_info Policies in use.\n# TYPE accellm_info gauge\naccellm_info{{{m},cluster_policy=\"{}\",instance_policy=\"{}\"}} 1",
            escape_label(&self.policies.0),
            escape_label(&self.policies.1)
        );
        let per_instance = |o: &mut String,
                            name: &str,
                            kind: &str,
                            help: &str,
                            f: &dyn Fn(&InstanceGauges) -> f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, g) in self.instances.iter().enumerate() {
                let _ = writeln!(o, "{name}{{instance=\"{i}\"}} {}", f(g));
            }
        };
        let _ = writeln!(
            o,
            "# HELP accellm_instance_role Role of each instance in its current iteration (1 for the role it plays).\n# TYPE accellm_instance_role gauge"
        );
        for (i, g) in self.instances.iter().enumerate() {
            for r in Role::ALL {
                let _ = writeln!(
                    o,
                    "accellm_instance_role{{instance=\"{i}\",role=\"{}\"}} {}",
                    r.name(),
                    (g.role == r) as u8
                );
            }
        }
        per_instance(
            &mut o,
            "accellm_kv_free_blocks",
            "gauge",
            "Free KV blocks per instance.",
            &|g| g.free_blocks as f64,
        );
        per_instance(
            &mut o,
            "accellm_kv_primary_blocks",
            "gauge",
            "KV blocks held by primaries per instance.",
            &|g| g.primary_blocks as f64,
        );
        per_instance(
            &mut o,
            "accellm_kv_replica_blocks",
            "gauge",
            "KV blocks held by replicas per instance.",
            &|g| g.replica_blocks as f64,
        );
        per_instance(
            &mut o,
            "accellm_kv_total_blocks",
            "gauge",
            "KV blocks in each instance's pool.",
            &|g| g.total_blocks as f64,
        );
        per_instance(
            &mut o,
            "accellm_instance_waiting",
            "gauge",
            "Requests waiting for prefill per instance.",
            &|g| g.waiting as f64,
        );
        per_instance(
            &mut o,
            "accellm_instance_running",
            "gauge",
            "Requests decoding per instance.",
            &|g| g.running as f64,
        );
        per_instance(
            &mut o,
            "accellm_instance_iterations_total",
            "counter",
            "Iterations run per instance.",
            &|g| g.iterations as f64,
        );
        per_instance(
            &mut o,
            "accellm_instance_borrowed_iterations_total",
            "counter",
            "Iterations run per instance on its own cores and its idle partner's (--share-idle-cores).",
            &|g| g.wide_iterations as f64,
        );
        per_instance(
            &mut o,
            "accellm_instance_busy_seconds_total",
            "counter",
            "Seconds spent running iterations per instance.",
            &|g| g.busy_s,
        );
        let c = &self.counters;
        let plain = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        plain(
            &mut o,
            "accellm_role_switches_total",
            "Role switches decided by the cluster policy.",
            c.role_switches,
        );
        plain(
            &mut o,
            "accellm_replica_bytes_total",
            "KV bytes streamed layer by layer to replicas (as planned by the core).",
            c.copy_bytes,
        );
        plain(
            &mut o,
            "accellm_transfer_bytes_total",
            "KV bytes moved by explicit transfers (as planned by the core).",
            c.transfer_bytes,
        );
        let _ = writeln!(
            o,
            "# HELP accellm_kv_copied_bytes_total KV bytes really copied between instance pools.\n# TYPE accellm_kv_copied_bytes_total counter"
        );
        let _ = writeln!(
            o,
            "accellm_kv_copied_bytes_total{{kind=\"replica\"}} {}\naccellm_kv_copied_bytes_total{{kind=\"transfer\"}} {}",
            self.copied_replica_bytes, self.copied_transfer_bytes
        );
        let _ = writeln!(
            o,
            "# HELP accellm_migrations_total Decodes moved between instances, by how.\n# TYPE accellm_migrations_total counter\naccellm_migrations_total{{kind=\"free\"}} {}\naccellm_migrations_total{{kind=\"transfer\"}} {}",
            c.migrations_free, c.migrations_transfer
        );
        plain(
            &mut o,
            "accellm_replica_evictions_total",
            "Replicas evicted to make room for primaries.",
            c.replica_evictions,
        );
        let _ = writeln!(
            o,
            "# HELP accellm_instance_up Whether each instance is up (0: a failed remote worker).\n# TYPE accellm_instance_up gauge"
        );
        for (i, g) in self.instances.iter().enumerate() {
            let _ = writeln!(
                o,
                "accellm_instance_up{{instance=\"{i}\"}} {}",
                u8::from(!g.down)
            );
        }
        let _ = writeln!(
            o,
            "# HELP accellm_requests_recovered_total Requests of failed instances that went on, by how (replica: decoding on the partner's current replica; recompute: prefilled again).\n# TYPE accellm_requests_recovered_total counter\naccellm_requests_recovered_total{{kind=\"replica\"}} {}\naccellm_requests_recovered_total{{kind=\"recompute\"}} {}",
            c.recovered_by_replica, c.recovered_by_recompute
        );
        self.recovery[0].render(
            &mut o,
            "accellm_recovery_seconds",
            "Failure detected to the next token of each recovered request.",
            "kind=\"replica\"",
        );
        self.recovery[1].render_series(&mut o, "accellm_recovery_seconds", "kind=\"recompute\"");
        plain(
            &mut o,
            "accellm_preemptions_total",
            "Requests preempted (KV dropped, recomputed later).",
            c.preemptions,
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"2\"} 2"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"));
        assert!(s.contains("x_count{a=\"b\"} 3"));
    }

    #[test]
    fn render_names_every_family_once() {
        let m = Metrics::new("m", 2, ("accellm".into(), "vllm".into()));
        let text = m.render();
        for name in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:cache_config_info",
            "vllm:lora_requests_info",
            "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:e2e_request_latency_seconds",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "accellm_instance_role",
            "accellm_kv_free_blocks",
            "accellm_slo_met_total",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(text.contains("accellm_kv_free_blocks{instance=\"1\"} 0"));
        assert!(text.contains("accellm_slo_met_total{kind=\"mean\"} 0"));
    }

    #[test]
    fn label_values_are_escaped_not_mangled() {
        let m = Metrics::new("org/a\"b\\c\nd", 1, ("x\"y".into(), "vllm".into()));
        let text = m.render();
        assert!(
            text.contains(r#"vllm:num_requests_running{model_name="org/a\"b\\c\nd"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"cluster_policy="x\"y""#), "{text}");
    }

    #[test]
    fn one_long_gap_misses_the_strict_slo_but_not_the_mean() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = TokenTimes::new(t0);
        let ms = Duration::from_millis;
        assert_eq!(t.token(at(50)), TokenLatency::First(ms(50)));
        for k in [60, 70, 80] {
            assert_eq!(t.token(at(k)), TokenLatency::Gap(ms(10)));
        }
        assert_eq!(t.token(at(150)), TokenLatency::Gap(ms(70)));
        let slo = Slo {
            ttft_ms: Some(100.0),
            tbt_ms: Some(50.0),
        };
        // Mean TPOT (150 - 50) / 4 = 25 ms; the 70 ms gap breaks the strict SLO.
        let v = t.verdict(&slo, true, at(150), 5);
        assert_eq!((v.strict, v.mean), (false, true));
        assert_eq!(t.verdict(&slo, false, at(150), 5), SloVerdict::default());
        let loose = Slo {
            ttft_ms: Some(100.0),
            tbt_ms: Some(70.0),
        };
        let v = t.verdict(&loose, true, at(150), 5);
        assert_eq!((v.strict, v.mean), (true, true));
        // No token: not completed, whatever the caller says.
        let none = TokenTimes::new(t0).verdict(&Slo::default(), true, at(1), 0);
        assert_eq!(none, SloVerdict::default());
    }
}
