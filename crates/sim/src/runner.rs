//! Builds a scheduler from a [`SimConfig`], replays a workload through it in virtual time and
//! summarises the run.

use std::sync::Arc;
use std::time::Instant;

use accellm_core::{
    cost::{CostModel, Link},
    kv::{run_keys, BlockKey},
    metrics::{RequestRecord, SloCounts, SloFigures, Summary},
    replay::{self, Observer},
    request::{RequestSpec, Slo},
    scheduler::{Action, ClusterCounters, Scheduler, SchedulerConfig},
    stats::Percentiles,
    TimeUs,
};
use accellm_workload::{SloClass, Workload};
use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    config::SimConfig,
    hardware::{instance_link, kv_blocks, HardwareCostModel, LinkKind},
    observer::{TimeSeries, TimeSeriesObserver},
    specs::Specs,
};

/// Generates the configured workload; prompts plus outputs are fitted to the model's context
/// unless the workload sets `max_context` itself.
pub fn workload(cfg: &SimConfig) -> anyhow::Result<Workload> {
    let mut cfg = cfg.clone();
    cfg.load_profile()?;
    let context = match &cfg.profile {
        Some(p) => p.geometry.context_length,
        None => Specs::builtin()?.model(&cfg.model)?.max_position_embeddings,
    };
    let mut spec = cfg.workload.clone();
    spec.max_context.get_or_insert(context);
    Ok(spec.generate()?)
}

/// The workload's requests as the core sees them.
pub fn core_requests(w: &Workload) -> Vec<RequestSpec> {
    w.requests
        .iter()
        .map(|r| RequestSpec {
            arrival_us: (r.arrival_s * 1e6).round().max(0.0) as TimeUs,
            prompt_tokens: r.prompt_tokens.max(1),
            max_output_tokens: r.output_tokens.max(1),
            slo: Slo {
                ttft_ms: r.ttft_slo_ms,
                tbt_ms: r.tbt_slo_ms,
            },
            priority: r.priority,
            class: r.class,
        })
        .collect()
}

/// The block keys of each request's content for prefix caching, for blocks of `block_size`
/// tokens (parallel to [`core_requests`]); empty when the workload has no prefix structure.
pub fn core_keys(w: &Workload, block_size: u32) -> Vec<Option<Arc<[BlockKey]>>> {
    let mut runs = Vec::new();
    w.prefixes
        .iter()
        .map(|segments| {
            runs.clear();
            runs.extend(segments.iter().map(|s| s.run()));
            let keys = run_keys(&runs, block_size);
            (!keys.is_empty()).then(|| Arc::from(keys))
        })
        .collect()
}

/// What the configuration resolves to on the hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Model.
    pub model: String,
    /// Canonical device name.
    pub hardware: String,
    /// Instances.
    pub instances: u32,
    /// Devices per instance.
    pub tp: u32,
    /// KV blocks per instance.
    pub kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// Link between instances, GB/s per direction.
    pub link_gbps: f64,
}

/// Builds the scheduler (and its cost model) that `cfg` describes.
pub fn build(cfg: &SimConfig) -> anyhow::Result<(Scheduler, ClusterInfo)> {
    build_with(cfg, false)
}

/// [`build`], optionally recording every token time of every request (for per-gap latencies).
pub fn build_with(cfg: &SimConfig, timelines: bool) -> anyhow::Result<(Scheduler, ClusterInfo)> {
    anyhow::ensure!(cfg.instances > 0, "--instances must be at least 1");
    anyhow::ensure!(cfg.tp > 0, "--tp must be at least 1");
    anyhow::ensure!(cfg.block_size > 0, "--block-size must be at least 1");
    let mut cfg = cfg.clone();
    cfg.load_profile()?;
    if let Some(p) = &cfg.profile {
        let cost = Arc::new(match cfg.scheduler_cost.clone() {
            Some(c) => c,
            None => p.cost_model()?,
        });
        let link = cfg.scheduler_link.unwrap_or_else(|| p.link());
        let blocks = cfg.kv_blocks.unwrap_or(p.instance.kv_blocks);
        anyhow::ensure!(blocks > 0, "--kv-blocks must be at least 1");
        let info = ClusterInfo {
            model: p.model.clone(),
            hardware: p.name.clone(),
            instances: cfg.instances,
            tp: cfg.tp,
            kv_blocks: blocks,
            block_size: cfg.block_size,
            link_gbps: link.bytes_per_s / 1e9,
        };
        return scheduler(&cfg, blocks, link, cost, timelines).map(|s| (s, info));
    }
    let cfg = &cfg;
    let specs = Specs::builtin()?;
    let model = specs.model(&cfg.model)?;
    let (canon, device) = specs.device(&cfg.hardware)?;
    let eff = specs.efficiency(&canon).with(&cfg.cost);
    let cost = Arc::new(HardwareCostModel::new(model, device, &canon, cfg.tp, &eff)?);
    let blocks = kv_blocks(model, device, &eff, cfg.tp, cfg.block_size);
    anyhow::ensure!(
        blocks > 0,
        "{} does not fit on {} x {}: weights {:.1} GB, memory {:.1} GB (less {:.0}% reserve)",
        cfg.model,
        cfg.tp,
        canon,
        model.weights_bytes_fp16 as f64 / 1e9,
        device.memory_bytes() as f64 * cfg.tp as f64 / 1e9,
        eff.memory_reserve * 100.0
    );
    let blocks = cfg.kv_blocks.unwrap_or(blocks);
    let kind: LinkKind = cfg.link.parse().map_err(anyhow::Error::msg)?;
    let link = instance_link(kind, device, &eff, cfg.tp, cfg.instances);
    let info = ClusterInfo {
        model: cfg.model.clone(),
        hardware: canon,
        instances: cfg.instances,
        tp: cfg.tp,
        kv_blocks: blocks,
        block_size: cfg.block_size,
        link_gbps: link.bytes_per_s / 1e9,
    };
    Ok((scheduler(cfg, blocks, link, cost, timelines)?, info))
}

fn scheduler(
    cfg: &SimConfig,
    kv_blocks: u32,
    link: Link,
    cost: Arc<dyn CostModel>,
    record_timelines: bool,
) -> anyhow::Result<Scheduler> {
    let sched_cfg = SchedulerConfig {
        kv_blocks,
        block_size: cfg.block_size,
        link,
        max_waiting: cfg.max_waiting,
        record_timelines,
        prefix_cache: cfg.prefix_cache,
        share_idle_cores: cfg.shares_idle_cores(),
    };
    Ok(Scheduler::build(
        &sched_cfg,
        cfg.instances,
        &cfg.cluster,
        &cfg.instance,
        cost,
    )?)
}

/// Per-instance figures of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Fraction of the run spent in iterations.
    pub busy: f64,
    /// Fraction in prefill-only iterations.
    pub prefill: f64,
    /// Fraction in decode-only iterations.
    pub decode: f64,
    /// Fraction in mixed iterations.
    pub mixed: f64,
    /// Time-averaged KV utilisation.
    pub kv_mean: f64,
    /// Peak KV utilisation.
    pub kv_peak: f64,
    /// Iterations run.
    pub iterations: u64,
    /// Preemptions here.
    pub preemptions: u64,
}

/// Everything measured in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Cluster policy.
    pub cluster_policy: String,
    /// Instance policy.
    pub instance_policy: String,
    /// Arrival rate asked for, if any (sweeps).
    pub rate: Option<f64>,
    /// Resolved cluster.
    pub cluster: ClusterInfo,
    /// Latency and throughput.
    pub summary: Summary,
    /// Requests still live when the run ended (not finished, not rejected).
    pub unfinished: u64,
    /// Of those, still waiting for their prefill.
    pub unfinished_waiting: u64,
    /// Cluster counters (bytes moved, migrations, preemptions, ...).
    pub counters: ClusterCounters,
    /// KV bytes moved between instances (layer-wise copies plus transfers).
    pub kv_bytes_moved: u64,
    /// Per instance.
    pub instances: Vec<InstanceReport>,
    /// Per SLO class of the workload (empty when requests carry no class).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassReport>,
    /// Prefix-cache figures, when the workload has prefix structure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<PrefixCacheReport>,
    /// After `--fail`: recovery time (ms, failure to the request's next token) of the requests
    /// recovered by replica and by recompute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<[Percentiles; 2]>,
    /// Mean busy fraction over instances.
    pub busy_mean: f64,
    /// Mean KV utilisation over instances and time.
    pub kv_mean: f64,
    /// Highest KV utilisation of any instance.
    pub kv_peak: f64,
    /// Completed requests per second per instance.
    pub requests_per_s_per_instance: f64,
    /// Output tokens per GPU-second.
    pub tokens_per_gpu_s: f64,
    /// Simulated time (s).
    pub simulated_s: f64,
    /// Wall time of the replay (s).
    pub wall_s: f64,
    /// Events handled.
    pub events: u64,
    /// Time series, if recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeseries: Option<TimeSeries>,
    /// Per-request latencies for distributions, if recorded (with the time series).
    #[serde(skip)]
    pub samples: Option<LatencySamples>,
    /// Every finished request, in finishing order, if kept ([`Watch::requests`], `simulate
    /// --requests-out`).
    #[serde(skip)]
    pub requests: Vec<RequestRecord>,
}

/// How much prefill the prefix cache saved in a run (vLLM's `prefix_cache_queries` and
/// `prefix_cache_hits`, in tokens).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrefixCacheReport {
    /// Whether the cache was on.
    pub enabled: bool,
    /// Prompt tokens looked up when prefills started.
    pub query_tokens: u64,
    /// Of those, tokens found cached: prefill tokens saved.
    pub hit_tokens: u64,
    /// `hit_tokens / query_tokens` (0 without queries).
    pub hit_rate: f64,
    /// Prompt tokens of all completed requests.
    pub prompt_tokens: u64,
    /// `hit_tokens / prompt_tokens`: the share of prefill work saved.
    pub prefill_saved: f64,
}

impl PrefixCacheReport {
    fn of(enabled: bool, counters: &ClusterCounters, prompt_tokens: u64) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        PrefixCacheReport {
            enabled,
            query_tokens: counters.prefix_query_tokens,
            hit_tokens: counters.prefix_hit_tokens,
            hit_rate: ratio(counters.prefix_hit_tokens, counters.prefix_query_tokens),
            prompt_tokens,
            prefill_saved: ratio(counters.prefix_hit_tokens, prompt_tokens),
        }
    }
}

/// The figures of one SLO class of the workload in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Class name (from the workload's SLO policy; `class K` if it has none).
    pub name: String,
    /// The class's TTFT SLO (ms), as its requests carry it.
    pub ttft_slo_ms: Option<f64>,
    /// The class's TBT SLO (ms), as its requests carry it.
    pub tbt_slo_ms: Option<f64>,
    /// Requests of the class that arrived (rejected and unfinished ones included).
    pub arrived: u64,
    /// Of those, completed.
    pub completed: u64,
    /// SLO attainment (of arrived requests) and goodput, strict and mean, as the run's.
    #[serde(flatten)]
    pub slo: SloFigures,
    /// TTFT of completed requests (ms).
    pub ttft_ms: Percentiles,
    /// Each completed request's longest gap between tokens (ms): the gap its TBT SLO judges.
    pub worst_tbt_ms: Percentiles,
    /// JCT of completed requests (ms).
    pub jct_ms: Percentiles,
}

/// Per-class figures of a run: `requests` as submitted, `finished` as recorded by the core,
/// `names` the workload's classes (indexed by [`RequestSpec::class`]), over `duration_s`.
pub fn class_reports(
    requests: &[RequestSpec],
    finished: &[RequestRecord],
    names: &[SloClass],
    duration_s: f64,
) -> Vec<ClassReport> {
    let n = requests
        .iter()
        .filter_map(|r| r.class)
        .map(|c| c as usize + 1)
        .max()
        .unwrap_or(0);
    let mut out: Vec<ClassReport> = (0..n)
        .map(|k| ClassReport {
            name: names
                .get(k)
                .map_or_else(|| format!("class {k}"), |c| c.name.clone()),
            ttft_slo_ms: None,
            tbt_slo_ms: None,
            arrived: 0,
            completed: 0,
            slo: SloFigures::default(),
            ttft_ms: Percentiles::default(),
            worst_tbt_ms: Percentiles::default(),
            jct_ms: Percentiles::default(),
        })
        .collect();
    for r in requests {
        if let Some(c) = r.class.and_then(|c| out.get_mut(c as usize)) {
            c.arrived += 1;
            c.ttft_slo_ms = c.ttft_slo_ms.or(r.slo.ttft_ms);
            c.tbt_slo_ms = c.tbt_slo_ms.or(r.slo.tbt_ms);
        }
    }
    for (k, c) in out.iter_mut().enumerate() {
        let done: Vec<&RequestRecord> = finished
            .iter()
            .filter(|r| r.class == Some(k as u16) && r.completed())
            .collect();
        let ms = |f: fn(&RequestRecord) -> TimeUs| {
            let mut v: Vec<f64> = done.iter().map(|r| f(r) as f64 / 1e3).collect();
            Percentiles::of(&mut v)
        };
        let met = SloCounts::of(done.iter().map(|r| r.slo_met));
        c.completed = done.len() as u64;
        c.slo = met.figures(c.arrived, duration_s);
        c.ttft_ms = ms(|r| r.ttft_us);
        c.worst_tbt_ms = ms(|r| r.max_tbt_us);
        c.jct_ms = ms(|r| r.jct_us);
    }
    out.retain(|c| c.arrived > 0);
    out
}

/// Latency samples of a run, for CDFs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySamples {
    /// TTFT of each completed request (ms).
    pub ttft_ms: Vec<f64>,
    /// JCT of each completed request (ms).
    pub jct_ms: Vec<f64>,
    /// JCT per output token of each completed request (ms).
    pub normalized_ms: Vec<f64>,
    /// TBT at 1,000 evenly spaced quantiles of every gap (ms): an equivalent sample.
    pub tbt_ms: Vec<f64>,
}

impl LatencySamples {
    fn of(m: &accellm_core::metrics::Metrics) -> Self {
        let done = m.finished.iter().filter(|r| r.completed());
        let mut s = Self::default();
        for r in done {
            s.ttft_ms.push(r.ttft_us as f64 / 1e3);
            s.jct_ms.push(r.jct_us as f64 / 1e3);
            s.normalized_ms
                .push(r.jct_us as f64 / 1e3 / r.output_tokens.max(1) as f64);
        }
        if m.tbt_us.count() > 0 {
            s.tbt_ms = (0..1000)
                .map(|k| m.tbt_us.quantile((k as f64 + 0.5) / 1000.0) / 1e3)
                .collect();
        }
        s
    }
}

impl RunReport {
    /// `cluster/instance`, the run's label.
    pub fn label(&self) -> String {
        format!("{}/{}", self.cluster_policy, self.instance_policy)
    }
}

/// Hooks to watch a run.
pub struct Watch<'a> {
    /// Called with the number of requests that ended (finished or rejected) since the last call.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Record time series.
    pub timeseries: bool,
    /// Keep every finished request in [`RunReport::requests`].
    pub requests: bool,
}

struct RunObserver<'a> {
    ts: Option<TimeSeriesObserver>,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    ended: u64,
}

impl Observer for RunObserver<'_> {
    fn on_action(&mut self, now: TimeUs, action: &Action, sched: &Scheduler) {
        if let Some(ts) = &mut self.ts {
            ts.on_action(now, action, sched);
        }
        if matches!(action, Action::Finished { .. } | Action::Rejected { .. }) {
            self.ended += 1;
            if self.ended == 4096 {
                if let Some(p) = self.progress {
                    p(self.ended);
                }
                self.ended = 0;
            }
        }
    }

    fn after_event(&mut self, now: TimeUs, sched: &Scheduler) {
        if let Some(ts) = &mut self.ts {
            ts.after_event(now, sched);
        }
    }
}

/// Replays `requests` (sorted by arrival) on the cluster `cfg` describes.
pub fn run(
    cfg: &SimConfig,
    requests: &[RequestSpec],
    watch: Option<Watch<'_>>,
) -> anyhow::Result<RunReport> {
    run_keeping(cfg, requests, &[], watch, false).map(|(r, _)| r)
}

/// [`run`] with each request's block keys ([`core_keys`]; parallel to `requests`, or empty) for
/// prefix caching; the report then has [`RunReport::prefix_cache`].
pub fn run_keyed(
    cfg: &SimConfig,
    requests: &[RequestSpec],
    keys: &[Option<Arc<[BlockKey]>>],
    watch: Option<Watch<'_>>,
) -> anyhow::Result<RunReport> {
    run_keeping(cfg, requests, keys, watch, false).map(|(r, _)| r)
}

/// [`run`], also returning the core's metrics with every request's token times
/// (`Metrics::timelines`, parallel to `Metrics::finished`).
pub fn run_with_timelines(
    cfg: &SimConfig,
    requests: &[RequestSpec],
) -> anyhow::Result<(RunReport, accellm_core::metrics::Metrics)> {
    run_keeping(cfg, requests, &[], None, true)
}

fn run_keeping(
    cfg: &SimConfig,
    requests: &[RequestSpec],
    keys: &[Option<Arc<[BlockKey]>>],
    watch: Option<Watch<'_>>,
    timelines: bool,
) -> anyhow::Result<(RunReport, accellm_core::metrics::Metrics)> {
    let mut cfg = cfg.clone();
    cfg.load_profile()?;
    let cfg = &cfg;
    let (mut sched, info) = build_with(cfg, timelines).context("building the simulated cluster")?;
    // A profile whose scheduler predicts with other figures: the profile times the iterations.
    let hardware = match &cfg.profile {
        Some(p) if cfg.scheduler_cost.is_some() || cfg.scheduler_link.is_some() => {
            Some((p.cost_model()?, p.link()))
        }
        _ => None,
    };
    let last_arrival = requests.last().map_or(0, |r| r.arrival_us);
    let interval = if cfg.sample_interval_ms > 0.0 {
        (cfg.sample_interval_ms * 1e3) as TimeUs
    } else {
        (last_arrival / 500).max(100_000)
    };
    let (progress, want_ts, want_requests) = watch.map_or((None, false, false), |w| {
        (w.progress, w.timeseries, w.requests)
    });
    let mut obs = RunObserver {
        ts: want_ts
            .then(|| TimeSeriesObserver::new(cfg.instances as usize, interval, 20_000, 2_000)),
        progress,
        ended: 0,
    };
    let t0 = Instant::now();
    let hw = hardware
        .as_ref()
        .map(|(cost, link)| replay::Hardware { cost, link: *link });
    anyhow::ensure!(
        keys.is_empty() || keys.len() == requests.len(),
        "{} block-key lists for {} requests",
        keys.len(),
        requests.len()
    );
    let failures: Vec<(u32, TimeUs)> = cfg
        .failures
        .iter()
        .map(|&(i, s)| (i, (s * 1e6) as TimeUs))
        .collect();
    let partitions: Vec<replay::Partition> = cfg
        .partitions
        .iter()
        .map(|&(a, b, from, to)| replay::Partition {
            a,
            b,
            from_us: (from * 1e6) as TimeUs,
            to_us: (to * 1e6) as TimeUs,
        })
        .collect();
    let end = replay::run_partitioned(
        &mut sched,
        requests,
        keys,
        &mut obs,
        hw,
        &failures,
        &partitions,
    );
    let wall_s = t0.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p(obs.ended);
    }
    let timeseries = obs.ts.map(|t| t.finish());
    let mut rep = report(
        cfg, &sched, info, end.end_us, end.events, wall_s, timeseries,
    );
    rep.classes = class_reports(
        requests,
        &sched.metrics().finished,
        cfg.workload.slo.classes(),
        rep.summary.duration_s,
    );
    if !keys.is_empty() {
        let prompt_tokens = sched
            .metrics()
            .finished
            .iter()
            .filter(|r| r.completed())
            .map(|r| u64::from(r.prompt_tokens))
            .sum();
        rep.prefix_cache = Some(PrefixCacheReport::of(
            cfg.prefix_cache,
            &rep.counters,
            prompt_tokens,
        ));
    }
    if want_ts {
        rep.samples = Some(LatencySamples::of(sched.metrics()));
    }
    if want_requests {
        rep.requests = sched.metrics().finished.clone();
    }
    let metrics = if timelines {
        sched.metrics().clone()
    } else {
        accellm_core::metrics::Metrics::default()
    };
    Ok((rep, metrics))
}

/// Recovery-time percentiles (ms) by kind; `None` when nothing recovered.
fn recovery_ms(us: &[Vec<TimeUs>; 2]) -> Option<[Percentiles; 2]> {
    if us.iter().all(Vec::is_empty) {
        return None;
    }
    Some(us.each_ref().map(|v| {
        let mut ms: Vec<f64> = v.iter().map(|&t| t as f64 / 1e3).collect();
        Percentiles::of(&mut ms)
    }))
}

fn report(
    cfg: &SimConfig,
    sched: &Scheduler,
    info: ClusterInfo,
    end_us: TimeUs,
    events: u64,
    wall_s: f64,
    timeseries: Option<TimeSeries>,
) -> RunReport {
    let summary = sched.metrics().summary(end_us);
    let span = end_us.max(1) as f64;
    let instances: Vec<InstanceReport> = sched
        .instances()
        .iter()
        .map(|i| {
            let s = &i.stats;
            let blocks = i.kv.num_blocks().max(1) as f64;
            InstanceReport {
                busy: s.busy_us() as f64 / span,
                prefill: s.prefill_us as f64 / span,
                decode: s.decode_us as f64 / span,
                mixed: s.mixed_us as f64 / span,
                kv_mean: s.kv_block_us / span / blocks,
                kv_peak: s.kv_peak_blocks as f64 / blocks,
                iterations: s.iterations,
                preemptions: s.preemptions,
            }
        })
        .collect();
    let n = instances.len().max(1) as f64;
    let counters = *sched.counters();
    let unfinished_waiting = sched.waiting_requests() as u64;
    let secs = summary.duration_s;
    RunReport {
        cluster_policy: sched.cluster_policy().to_string(),
        instance_policy: sched.instance_policy().to_string(),
        rate: None,
        busy_mean: instances.iter().map(|i| i.busy).sum::<f64>() / n,
        kv_mean: instances.iter().map(|i| i.kv_mean).sum::<f64>() / n,
        kv_peak: instances.iter().fold(0.0, |m, i| m.max(i.kv_peak)),
        requests_per_s_per_instance: summary.request_throughput / n,
        tokens_per_gpu_s: summary.output_throughput / cfg.gpus().max(1) as f64,
        kv_bytes_moved: counters.copy_bytes + counters.transfer_bytes,
        unfinished: sched.live_requests() as u64,
        unfinished_waiting,
        counters,
        instances,
        classes: Vec::new(),
        prefix_cache: None,
        recovery_ms: recovery_ms(&sched.metrics().recovery_us),
        cluster: info,
        summary,
        simulated_s: secs,
        wall_s,
        events,
        timeseries,
        samples: None,
        requests: Vec::new(),
    }
}
