//! Prometheus metrics: vLLM's names for the usual serving figures, plus accellm's own (roles,
//! replicas, migrations, KV blocks per instance, requests that met their SLO). The scheduler
//! thread updates them; `GET /metrics` renders them in the text exposition format.
//!
//! `accellm_slo_met_total{kind="strict"|"mean"}` counts finished requests that met their SLO by
//! the core's one definition ([`SloVerdict::judge`]): *strict*, TTFT and every gap between tokens
//! within target; *mean*, TTFT and mean TPOT within target. A request without an SLO meets it by
//! completing; a cancelled or failed one misses both. Its rate is goodput; divided by finished
//! plus rejected requests, SLO attainment.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use accellm_core::metrics::{Latencies, SloCounts, SloVerdict};
use accellm_core::request::Slo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
    /// Requests that completed with their last token sampled here.
    pub completed: u64,
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
    /// Per pair of partners `(a, b)`, whether they reach each other (false while a partition
    /// keeps them apart and both serve unpaired).
    pub pairs_linked: Vec<((usize, usize), bool)>,
}

impl Metrics {
    /// Empty metrics for `instances` instances serving `model`.
    pub fn new(model: &str, instances: usize, policies: (String, String)) -> Self {
        Self {
            model: model.to_string(),
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
            pairs_linked: (0..instances / 2)
                .map(|k| ((2 * k, 2 * k + 1), true))
                .collect(),
        }
    }

    /// Records how long a request recovering from a failed instance waited for its next token.
    pub fn observe_recovery(&mut self, by_replica: bool, seconds: f64) {
        self.recovery[usize::from(!by_replica)].observe(seconds);
    }

    /// The Prometheus text exposition (format 0.0.4, as vLLM's `prometheus_client` writes it:
    /// counter families named with their `_total`), written by `prometheus-client` from a
    /// snapshot of these values.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding /metrics");
        }
        out
    }

    /// Every family, in exposition order.
    fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let model = [("model_name", self.model.as_str())];
        gauge(
            enc,
            "vllm:num_requests_running",
            "Requests being prefilled or decoded.",
            &model,
            self.running,
        )?;
        gauge(
            enc,
            "vllm:num_requests_waiting",
            "Requests waiting for prefill.",
            &model,
            self.waiting,
        )?;
        gauge(
            enc,
            "vllm:kv_cache_usage_perc",
            "Fraction of KV blocks in use (1 = full).",
            &model,
            self.kv_usage,
        )?;
        gauge(
            enc,
            "vllm:gpu_cache_usage_perc",
            "Fraction of KV blocks in use (1 = full); same as vllm:kv_cache_usage_perc.",
            &model,
            self.kv_usage,
        )?;
        // vLLM's info gauge: the configuration in labels, value 1 (gateways read the block size).
        let (block_size, blocks) = (self.block_size.to_string(), self.kv_blocks.to_string());
        enc.encode_descriptor(
            "vllm:cache_config",
            "Information of the KV cache configuration.",
            None,
            MetricType::Info,
        )?
        .encode_info(&[
            ("model_name", self.model.as_str()),
            ("block_size", &block_size),
            ("num_gpu_blocks", &blocks),
        ])?;
        // vLLM's LoRA gauge, which the endpoint picker reads by default (it logs an error at every
        // scrape when the family is missing): no adapters are served, so none run or wait and
        // none fit. The value is the wall-clock time, as vLLM's (the picker keeps the latest).
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge(
            enc,
            "vllm:lora_requests_info",
            "LoRA adapters running and waiting, and the most that fit (accellm serves none).",
            &[
                ("max_lora", "0"),
                ("running_lora_adapters", ""),
                ("waiting_lora_adapters", ""),
            ],
            now_s,
        )?;
        counter(
            enc,
            "vllm:prompt_tokens",
            "Prompt tokens of admitted requests.",
            &model,
            self.prompt_tokens,
        )?;
        counter(
            enc,
            "vllm:generation_tokens",
            "Generated tokens.",
            &model,
            self.generation_tokens,
        )?;
        counter(
            enc,
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache when their prefill started.",
            &model,
            self.counters.prefix_query_tokens,
        )?;
        counter(
            enc,
            "vllm:prefix_cache_hits",
            "Of those, tokens found cached (prefill skipped).",
            &model,
            self.counters.prefix_hit_tokens,
        )?;
        let mut m = enc.encode_descriptor(
            "vllm:request_success",
            "Finished requests by reason.",
            None,
            MetricType::Counter,
        )?;
        for (r, v) in ["stop", "length", "abort"].iter().zip(self.finished) {
            let labels = [("model_name", self.model.as_str()), ("finished_reason", r)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        histogram(
            enc,
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            &[(&model[..], &self.ttft)],
        )?;
        histogram(
            enc,
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output tokens.",
            &[(&model[..], &self.itl)],
        )?;
        histogram(
            enc,
            "vllm:time_per_output_token_seconds",
            "Time between consecutive output tokens (older name).",
            &[(&model[..], &self.itl)],
        )?;
        histogram(
            enc,
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            &[(&model[..], &self.e2e)],
        )?;
        by_kind(
            enc,
            "accellm_slo_met",
            "Finished requests that met their SLO (strict: TTFT and every gap between tokens; mean: TTFT and mean TPOT).",
            "kind",
            &[("strict", self.slo_met.strict), ("mean", self.slo_met.mean)],
        )?;
        by_kind(
            enc,
            "accellm_requests_rejected",
            "Requests refused at admission by reason.",
            "reason",
            &[
                ("queue_full", self.rejected[0]),
                ("too_long", self.rejected[1]),
                ("shutting_down", self.rejected[2]),
            ],
        )?;
        enc.encode_descriptor("accellm", "Policies in use.", None, MetricType::Info)?
            .encode_info(&[
                ("model_name", self.model.as_str()),
                ("cluster_policy", &self.policies.0),
                ("instance_policy", &self.policies.1),
            ])?;
        let mut m = enc.encode_descriptor(
            "accellm_instance_role",
            "Role of each instance in its current iteration (1 for the role it plays).",
            None,
            MetricType::Gauge,
        )?;
        for (i, g) in self.instances.iter().enumerate() {
            let i = i.to_string();
            for r in Role::ALL {
                let labels = [("instance", i.as_str()), ("role", r.name())];
                m.encode_family(&labels)?
                    .encode_gauge(&u32::from(g.role == r))?;
            }
        }
        let instances = &self.instances;
        per_instance(
            enc,
            "accellm_kv_free_blocks",
            MetricType::Gauge,
            "Free KV blocks per instance.",
            instances,
            |g| g.free_blocks.into(),
        )?;
        per_instance(
            enc,
            "accellm_kv_primary_blocks",
            MetricType::Gauge,
            "KV blocks held by primaries per instance.",
            instances,
            |g| g.primary_blocks.into(),
        )?;
        per_instance(
            enc,
            "accellm_kv_replica_blocks",
            MetricType::Gauge,
            "KV blocks held by replicas per instance.",
            instances,
            |g| g.replica_blocks.into(),
        )?;
        per_instance(
            enc,
            "accellm_kv_total_blocks",
            MetricType::Gauge,
            "KV blocks in each instance's pool.",
            instances,
            |g| g.total_blocks.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_waiting",
            MetricType::Gauge,
            "Requests waiting for prefill per instance.",
            instances,
            |g| g.waiting.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_running",
            MetricType::Gauge,
            "Requests decoding per instance.",
            instances,
            |g| g.running.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_iterations",
            MetricType::Counter,
            "Iterations run per instance.",
            instances,
            |g| g.iterations.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_borrowed_iterations",
            MetricType::Counter,
            "Iterations run per instance on its own cores and its idle partner's (--share-idle-cores).",
            instances,
            |g| g.wide_iterations.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_busy_seconds",
            MetricType::Counter,
            "Seconds spent running iterations per instance.",
            instances,
            |g| g.busy_s.into(),
        )?;
        let c = &self.counters;
        plain_counter(
            enc,
            "accellm_role_switches",
            "Role switches decided by the cluster policy.",
            c.role_switches,
        )?;
        plain_counter(
            enc,
            "accellm_replica_bytes",
            "KV bytes streamed layer by layer to replicas (as planned by the core).",
            c.copy_bytes,
        )?;
        plain_counter(
            enc,
            "accellm_transfer_bytes",
            "KV bytes moved by explicit transfers (as planned by the core).",
            c.transfer_bytes,
        )?;
        by_kind(
            enc,
            "accellm_kv_copied_bytes",
            "KV bytes really copied between instance pools.",
            "kind",
            &[
                ("replica", self.copied_replica_bytes),
                ("transfer", self.copied_transfer_bytes),
            ],
        )?;
        by_kind(
            enc,
            "accellm_migrations",
            "Decodes moved between instances, by how.",
            "kind",
            &[
                ("free", c.migrations_free),
                ("transfer", c.migrations_transfer),
            ],
        )?;
        plain_counter(
            enc,
            "accellm_replica_evictions",
            "Replicas evicted to make room for primaries.",
            c.replica_evictions,
        )?;
        per_instance(
            enc,
            "accellm_instance_requests_completed",
            MetricType::Counter,
            "Requests that completed with their last token sampled on each instance.",
            instances,
            |g| g.completed.into(),
        )?;
        per_instance(
            enc,
            "accellm_instance_up",
            MetricType::Gauge,
            "Whether each instance is up (0: a failed remote worker).",
            instances,
            |g| u32::from(!g.down).into(),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "accellm_pair_linked",
                "Whether the partners of each pair reach each other (0: a partition keeps them apart and both serve unpaired).",
                None,
                MetricType::Gauge,
            )?;
            for &((a, b), linked) in &self.pairs_linked {
                let pair = format!("{a}-{b}");
                let labels = [("pair", pair.as_str())];
                m.encode_family(&labels)?.encode_gauge(&i64::from(linked))?;
            }
        }
        by_kind(
            enc,
            "accellm_requests_recovered",
            "Requests of failed instances that went on, by how (replica: decoding on the partner's current replica; recompute: prefilled again).",
            "kind",
            &[
                ("replica", c.recovered_by_replica),
                ("recompute", c.recovered_by_recompute),
            ],
        )?;
        histogram(
            enc,
            "accellm_recovery_seconds",
            "Failure detected to the next token of each recovered request.",
            &[
                (&[("kind", "replica")][..], &self.recovery[0]),
                (&[("kind", "recompute")][..], &self.recovery[1]),
            ],
        )?;
        plain_counter(
            enc,
            "accellm_preemptions",
            "Requests preempted (KV dropped, recomputed later).",
            c.preemptions,
        )
    }
}

/// The metrics as one scrape sees them, handed to `prometheus-client`'s encoder.
#[derive(Debug)]
struct Snapshot(Metrics);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut enc)
    }
}

/// A label set of `(name, value)` pairs, in the order written.
type Labels<'a> = [(&'a str, &'a str)];

/// One gauge family with one series.
fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    v: V,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_family(&labels)?
        .encode_gauge(&v)
}

/// One counter family (`name` without `_total`, which the encoder adds) with one series.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    v: u64,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One counter family without labels.
fn plain_counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// A counter family with one series per value of the label `label`.
fn by_kind(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in series {
        m.encode_family(&[(label, *value)])?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

/// A value per instance: whole numbers stay whole in the exposition.
enum PerInstance {
    Whole(u64),
    Real(f64),
}

impl From<u32> for PerInstance {
    fn from(v: u32) -> Self {
        Self::Whole(v.into())
    }
}

impl From<u64> for PerInstance {
    fn from(v: u64) -> Self {
        Self::Whole(v)
    }
}

impl From<f64> for PerInstance {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}

/// A gauge or counter family with one series per instance (`instance="i"`).
fn per_instance(
    enc: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    instances: &[InstanceGauges],
    f: impl Fn(&InstanceGauges) -> PerInstance,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (i, g) in instances.iter().enumerate() {
        let i = i.to_string();
        let labels = [("instance", i.as_str())];
        let mut s = m.encode_family(&labels)?;
        match (f(g), kind) {
            (PerInstance::Whole(v), MetricType::Counter) => {
                s.encode_counter::<NoLabelSet, _, u64>(&v, None)?
            }
            (PerInstance::Real(v), MetricType::Counter) => {
                s.encode_counter::<NoLabelSet, _, u64>(&v, None)?
            }
            (PerInstance::Whole(v), _) => s.encode_gauge(&v)?,
            (PerInstance::Real(v), _) => s.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// A histogram family with one series per label set.
fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&Labels, &Histogram)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .zip(h.counts.iter().copied())
            .collect();
        m.encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = Metrics::new("b", 1, ("accellm".into(), "vllm".into()));
        for v in [0.0005, 0.003, 9999.0] {
            m.ttft.observe(v);
        }
        let text = m.render();
        let name = "vllm:time_to_first_token_seconds";
        for line in [
            format!("{name}_bucket{{model_name=\"b\",le=\"0.001\"}} 1"),
            format!("{name}_bucket{{model_name=\"b\",le=\"0.005\"}} 2"),
            format!("{name}_bucket{{model_name=\"b\",le=\"2560\"}} 2"),
            format!("{name}_bucket{{model_name=\"b\",le=\"+Inf\"}} 3"),
            format!("{name}_count{{model_name=\"b\"}} 3"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
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
            "accellm_pair_linked",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(text.contains("accellm_kv_free_blocks{instance=\"1\"} 0"));
        assert!(text.contains("accellm_pair_linked{pair=\"0-1\"} 1"));
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
