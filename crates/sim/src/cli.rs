//! `accellm simulate`: one run, several policies side by side (`--compare`), or metrics against
//! arrival rate (`--sweep-rate`, in parallel on all cores).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use accellm_core::{
    cluster::{self, ClusterConfig},
    instance::{self, InstanceConfig},
    kv::BlockKey,
    policy::{ConfigError, PolicyConfig},
    request::RequestSpec,
};
use accellm_workload::{
    Arrivals, BuiltinTrace, SloClass, SloPolicy, Workload, WorkloadError, WorkloadSource,
};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    config::SimConfig,
    output,
    runner::{self, RunReport, Watch},
    specs::Specs,
    validate,
};

/// Arguments of `accellm simulate`.
#[derive(Debug, Default, clap::Args)]
pub struct SimulateArgs {
    /// TOML config (see `accellm_sim::config`); flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Model (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b, mistral-7b, qwen2.5-7b, ...).
    #[arg(long)]
    pub model: Option<String>,
    /// Accelerator or alias (h100, a100, h200, ascend-910b2, ...).
    #[arg(long)]
    pub hardware: Option<String>,
    /// Number of instances (model replicas).
    #[arg(long)]
    pub instances: Option<u32>,
    /// Tensor parallelism (devices per instance).
    #[arg(long)]
    pub tp: Option<u32>,
    /// Cluster policy (round-robin, least-load, splitwise, ...).
    #[arg(long)]
    pub cluster_policy: Option<String>,
    /// Instance policy (vllm, sarathi, ...).
    #[arg(long)]
    pub instance_policy: Option<String>,
    /// Sarathi token budget per iteration.
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// vLLM: most tokens per iteration.
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Most requests per iteration.
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Splitwise: instances in the prefill pool.
    #[arg(long)]
    pub prefill_instances: Option<u32>,
    /// AcceLLM: how replicas follow decoding primaries (eager, lazy, recompute).
    #[arg(long)]
    pub sync: Option<String>,
    /// AcceLLM: which replica is evicted first when a primary needs room (lru, largest-first).
    #[arg(long)]
    pub eviction: Option<String>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Reuse cached KV of shared prompt prefixes (on, off), for workloads with prefix structure
    /// (chat, system-prompts, few-shot, Mooncake traces with hash_ids). Default: on.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub prefix_cache: Option<bool>,
    /// Instances 2k and 2k+1 lend each other cores while one has nothing to run, as `accellm
    /// serve` does (on, off). Default: on when the hardware profile has a [wide] fit.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub share_idle_cores: Option<bool>,
    /// Cache-aware routing: weight of a candidate's expected prefix hit against its load
    /// (0: routing ignores cached prefixes).
    #[arg(long, value_name = "W")]
    pub prefix_weight: Option<f64>,
    /// Simulate the engine measured in this profile (`accellm calibrate --out FILE`) instead of
    /// --model on --hardware; KV blocks and block size default to the profile's.
    #[arg(long, value_name = "FILE")]
    pub hardware_profile: Option<PathBuf>,
    /// KV blocks per instance (default: the profile's, or what fits in device memory).
    #[arg(long)]
    pub kv_blocks: Option<u32>,
    /// Link between instances: auto, nvlink, pcie, inter-node or NUMgbps.
    #[arg(long)]
    pub link: Option<String>,
    /// Fail an instance during the run: INSTANCE@SECONDS (repeatable). Its requests go on from
    /// their partner's replica or are prefilled again elsewhere, as in the live server.
    #[arg(long, value_name = "INSTANCE@SECONDS", value_parser = parse_failure)]
    pub fail: Vec<(u32, f64)>,
    /// Cut the link between two instances for a while: A-B@START..END in seconds (repeatable).
    /// Both keep serving their own requests, unpaired, and pair again when it is back, as in
    /// the live server.
    #[arg(long, value_name = "A-B@START..END", value_parser = parse_partition)]
    pub partition: Vec<(u32, u32, f64, f64)>,
    /// Workload: azure-conv, azure-code, sharegpt, arxiv, a trace file (CSV/JSONL),
    /// synthetic:prompt=DIST,output=DIST, mix:A*w@class+B*w@class, or one with shared
    /// prefixes: chat[:turns=DIST,user=DIST,...], system-prompts[:...], few-shot[:...].
    /// Default: azure-conv.
    #[arg(long)]
    pub workload: Option<String>,
    /// Arrival rate (req/s): re-times a timed trace, else Poisson (Gamma with --burstiness).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Gamma arrivals with this burstiness (shape; 1 = Poisson, smaller is burstier).
    #[arg(long)]
    pub burstiness: Option<f64>,
    /// Most requests.
    #[arg(long)]
    pub num_requests: Option<usize>,
    /// Only requests arriving in the first this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed of the workload's random draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// TTFT SLO (ms) for every request.
    #[arg(long)]
    pub ttft_slo_ms: Option<f64>,
    /// TBT SLO (ms) for every request.
    #[arg(long)]
    pub tbt_slo_ms: Option<f64>,
    /// SLO classes: `default` (chat/code/summarisation/batch), `classes:chat=0.5,batch=0.5`, or
    /// another SLO policy (`file`: per-request columns of the trace, `fixed:TTFT_MS:TBT_MS`).
    #[arg(long)]
    pub slo_classes: Option<String>,
    /// Multiply every TTFT and TBT target (of `--slo-classes`, `--ttft-slo-ms`/`--tbt-slo-ms` or
    /// the config's SLO policy) by this factor: the classes fitted to slower or faster hardware.
    #[arg(long)]
    pub slo_scale: Option<f64>,
    /// Run these policies (cluster or instance names, or cluster/instance) on the identical
    /// request sequence and print them side by side.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Print metrics against these arrival rates (req/s), per policy, in parallel.
    #[arg(long, value_delimiter = ',')]
    pub sweep_rate: Vec<f64>,
    /// Threads for sweeps and comparisons (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print JSON instead of tables.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of tables.
    #[arg(long)]
    pub csv: bool,
    /// Also write an HTML report (latency CDFs, time series, instance timelines) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Also write every finished request of every run to this file, one JSON object per line
    /// (policy, rate, arrival, class, tokens, TTFT, longest gap, SLO verdicts).
    #[arg(long, value_name = "FILE")]
    pub requests_out: Option<PathBuf>,
    /// Compare the cost model with the measured profiles and print the error table.
    #[arg(long)]
    pub validate_cost_model: bool,
}

/// Runs `accellm simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.validate_cost_model {
        return validate_cost_model(args.json);
    }
    let cfg = config(&args)?;
    let policies = resolve_policies(&cfg, &args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let record = args.report.is_some();
    let keep = args.requests_out.is_some();
    let mut title = String::new();
    let reports = if args.sweep_rate.is_empty() {
        let w = workload(&cfg, args.rate, args.burstiness)?;
        let requests = runner::core_requests(&w);
        title = describe(&cfg, &w, &policies);
        if !args.json && !args.csv {
            emit(&title)?;
            emit("\n")?;
        }
        let jobs: Vec<(SimConfig, Option<f64>)> =
            policies.iter().map(|p| (p.clone(), args.rate)).collect();
        run_jobs(&jobs, threads, record, keep, |(c, _)| {
            Ok((requests.clone(), runner::core_keys(&w, c.block_size)))
        })?
    } else {
        for &r in &args.sweep_rate {
            anyhow::ensure!(
                r > 0.0 && r.is_finite(),
                "--sweep-rate values must be positive, got {r}"
            );
        }
        let jobs: Vec<(SimConfig, Option<f64>)> = policies
            .iter()
            .flat_map(|p| args.sweep_rate.iter().map(move |&r| (p.clone(), Some(r))))
            .collect();
        let burst = args.burstiness;
        run_jobs(&jobs, threads, record, keep, |(c, rate)| {
            let w = workload(c, *rate, burst)?;
            Ok((
                runner::core_requests(&w),
                runner::core_keys(&w, c.block_size),
            ))
        })?
    };
    let text = if args.json {
        let mut t = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        };
        t.push('\n');
        t
    } else if args.csv {
        output::csv(&reports)
    } else if args.sweep_rate.is_empty() {
        output::metrics_table(&reports)
    } else {
        output::sweep_table(&reports)
    };
    emit(&text)?;
    if let Some(path) = &args.requests_out {
        output::write_requests(path, &reports)?;
    }
    if let Some(path) = &args.report {
        if title.is_empty() {
            title = format!(
                "{} x {} TP{} ({}), sweep over {:?} req/s",
                cfg.instances, cfg.model, cfg.tp, cfg.hardware, args.sweep_rate
            );
        }
        crate::html_report::build(&reports, title.trim(), !args.sweep_rate.is_empty())
            .write(path)?;
        tracing::info!("report written to {}", path.display());
    }
    for r in &reports {
        if r.unfinished > 0 {
            tracing::warn!(
                "{}: {} requests unfinished at the end ({} never started prefill)",
                r.label(),
                r.unfinished,
                r.unfinished_waiting
            );
        }
    }
    Ok(())
}

/// The config of `args`: the `--config` file (or defaults) with flags applied.
/// Parses `--fail INSTANCE@SECONDS`.
fn parse_failure(s: &str) -> Result<(u32, f64), String> {
    let (i, t) = s
        .split_once('@')
        .ok_or_else(|| format!("`{s}`: expected INSTANCE@SECONDS, e.g. 1@30"))?;
    let i = i
        .trim()
        .parse()
        .map_err(|_| format!("`{i}` is not an instance index"))?;
    let t: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("`{t}` is not a number of seconds"))?;
    if !(t.is_finite() && t >= 0.0) {
        return Err(format!("`{t}`: seconds must be a non-negative number"));
    }
    Ok((i, t))
}

/// Parses `--partition A-B@START..END`.
fn parse_partition(s: &str) -> Result<(u32, u32, f64, f64), String> {
    let err = || format!("`{s}`: expected A-B@START..END, e.g. 0-1@10..70");
    let (pair, span) = s.split_once('@').ok_or_else(err)?;
    let (a, b) = pair.split_once('-').ok_or_else(err)?;
    let (from, to) = span.split_once("..").ok_or_else(err)?;
    let inst = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{x}` is not an instance index"))
    };
    let secs = |x: &str| match x.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("`{x}`: seconds must be a non-negative number")),
    };
    let (a, b, from, to) = (inst(a)?, inst(b)?, secs(from)?, secs(to)?);
    if a == b {
        return Err(format!("`{s}`: a link joins two different instances"));
    }
    if to < from {
        return Err(format!("`{s}`: the link comes back before it goes down"));
    }
    Ok((a, b, from, to))
}

pub fn config(args: &SimulateArgs) -> anyhow::Result<SimConfig> {
    let mut c = match &args.config {
        Some(p) => SimConfig::load(p)?,
        None => SimConfig::default(),
    };
    macro_rules! set {
        ($($flag:ident => $($field:ident).+),* $(,)?) => {
            $(if let Some(v) = &args.$flag { c.$($field).+ = v.clone(); })*
        };
    }
    set!(
        model => model,
        hardware => hardware,
        instances => instances,
        tp => tp,
        block_size => block_size,
        link => link,
        seed => workload.seed,
        prefix_cache => prefix_cache,
    );
    if let Some(p) = &args.cluster_policy {
        c.cluster = c.cluster.select(p)?;
    }
    if let Some(p) = &args.instance_policy {
        c.instance = c.instance.select(p)?;
    }
    // Every knob flag's value is checked, whichever policy it applies to.
    knob_flags_given(args)?;
    apply_knob_flags(args, &mut c)?;
    if !args.fail.is_empty() {
        c.failures = args.fail.clone();
    }
    if !args.partition.is_empty() {
        c.partitions = args.partition.clone();
    }
    if args.share_idle_cores.is_some() {
        c.share_idle_cores = args.share_idle_cores;
    }
    if let Some(p) = &args.hardware_profile {
        c.hardware_profile = Some(p.clone());
        c.profile = None;
    }
    if args.kv_blocks.is_some() {
        c.kv_blocks = args.kv_blocks;
    }
    c.load_profile()?;
    if let Some(p) = &c.profile {
        // The profile describes one instance of the real engine: its pool, no tensor parallelism.
        if args.block_size.is_none() {
            c.block_size = p.instance.block_size;
        }
        if args.tp.is_none() {
            c.tp = 1;
        }
    }
    if let Some(w) = &args.workload {
        c.workload.source = w.parse::<WorkloadSource>()?;
    }
    if let Some(n) = args.num_requests {
        c.workload.max_requests = Some(n);
    }
    if let Some(d) = args.duration {
        c.workload.duration_s = Some(d);
    }
    if args.ttft_slo_ms.is_some() || args.tbt_slo_ms.is_some() {
        anyhow::ensure!(
            args.slo_classes.is_none(),
            "give either --ttft-slo-ms/--tbt-slo-ms or --slo-classes"
        );
        c.workload.slo = SloPolicy::Fixed {
            ttft_ms: args.ttft_slo_ms,
            tbt_ms: args.tbt_slo_ms,
            priority: 0,
        };
    }
    if let Some(s) = &args.slo_classes {
        c.workload.slo = match s.trim() {
            "default" | "defaults" => SloPolicy::Classes {
                classes: SloClass::defaults(),
            },
            other => other.parse()?,
        };
    }
    if let Some(k) = args.slo_scale {
        c.workload.slo = c.workload.slo.scaled(k).context("--slo-scale")?;
    }
    if args.burstiness.is_some() && args.rate.is_none() && args.sweep_rate.is_empty() {
        bail!("--burstiness needs --rate (or --sweep-rate)");
    }
    // Fail early on names and shapes nobody knows.
    anyhow::ensure!(c.instances > 0, "--instances must be at least 1");
    anyhow::ensure!(c.tp > 0, "--tp must be at least 1");
    anyhow::ensure!(c.block_size > 0, "--block-size must be at least 1");
    c.link
        .parse::<crate::hardware::LinkKind>()
        .map_err(anyhow::Error::msg)?;
    if c.profile.is_none() {
        let specs = Specs::builtin()?;
        specs.model(&c.model)?;
        specs.device(&c.hardware)?;
    }
    c.cluster.validate()?;
    c.instance.validate()?;
    Ok(c)
}

/// Parses `on`/`off` (also true/false, yes/no, 1/0).
fn on_off(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

/// Reads a kebab-case knob value, if given, as the config file would; an unknown name lists the
/// valid ones.
fn parsed<T: serde::de::DeserializeOwned>(
    flag: &str,
    value: &Option<String>,
) -> anyhow::Result<Option<T>> {
    let Some(v) = value else { return Ok(None) };
    let t = serde_json::from_value(serde_json::Value::String(v.trim().to_string()))
        .with_context(|| format!("{flag} {v}"))?;
    Ok(Some(t))
}

/// Generates `cfg`'s workload, with `rate` (re-timed trace, or Poisson/Gamma) if given.
pub fn workload(
    cfg: &SimConfig,
    rate: Option<f64>,
    burstiness: Option<f64>,
) -> anyhow::Result<Workload> {
    let Some(rate) = rate else {
        return runner::workload(cfg).context("generating the workload");
    };
    anyhow::ensure!(rate > 0.0, "--rate must be positive, got {rate}");
    let generated = Arrivals::with_burstiness(rate, burstiness.unwrap_or(1.0));
    let retime = burstiness.is_none()
        && match &cfg.workload.source {
            WorkloadSource::Builtin { name, .. } => {
                matches!(name, BuiltinTrace::AzureConv | BuiltinTrace::AzureCode)
            }
            WorkloadSource::File { .. } => true,
            _ => false,
        };
    let mut c = cfg.clone();
    if retime {
        c.workload.arrivals = Some(Arrivals::Retime { rate });
        match runner::workload(&c) {
            Ok(w) => return Ok(w),
            // An untimed file: generate arrivals instead.
            Err(e)
                if matches!(
                    e.downcast_ref::<WorkloadError>(),
                    Some(WorkloadError::Invalid(_))
                ) => {}
            Err(e) => return Err(e.context("generating the workload")),
        }
    }
    c.workload.arrivals = Some(generated);
    runner::workload(&c).context("generating the workload")
}

/// One config per policy to run: the config itself, or one per `--compare` name (a cluster
/// policy, an instance policy, or `cluster/instance`), each with the knob flags that apply to
/// its policies. A knob flag, or config knobs, that no run's policy takes is an error.
pub fn resolve_policies(cfg: &SimConfig, args: &SimulateArgs) -> anyhow::Result<Vec<SimConfig>> {
    let mut out = Vec::new();
    for name in args
        .compare
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        let (cl, inst) = match name.split_once('/') {
            Some((cl, inst)) => (cl, inst),
            None if cluster::NAMES.contains(&name) => (name, cfg.instance.name()),
            None if instance::NAMES.contains(&name) => (cfg.cluster.name(), name),
            None => bail!(
                "unknown policy `{name}`; cluster policies: {}; instance policies: {}",
                cluster::NAMES.join(", "),
                instance::NAMES.join(", ")
            ),
        };
        let mut c = cfg.clone();
        c.cluster = cfg.cluster.for_policy(cl)?;
        c.instance = cfg.instance.for_policy(inst)?;
        out.push(c);
    }
    if args.compare.is_empty() {
        out.push(cfg.clone());
    }
    anyhow::ensure!(!out.is_empty(), "--compare needs at least one policy name");
    let mut applied = Vec::new();
    for c in &mut out {
        applied.extend(apply_knob_flags(args, c)?);
        c.cluster.validate()?;
        c.instance.validate()?;
    }
    for (flag, level, policies) in knob_flags_given(args)? {
        if applied.contains(&flag) {
            continue;
        }
        let mut ran: Vec<&str> = Vec::new();
        for c in &out {
            let name = match level {
                "cluster" => c.cluster.name(),
                _ => c.instance.name(),
            };
            if !ran.contains(&name) {
                ran.push(name);
            }
        }
        bail!(
            "`{flag}` applies to `--{level}-policy {}`, not `{}`",
            policies.join("` or `"),
            ran.join("`, `")
        );
    }
    // Knobs the config file gave for a policy no run uses (a `--compare` of others).
    let unused = |level, configured: &'static str, has: bool, ran: Vec<&str>| {
        if has && !ran.contains(&configured) {
            return Err(ConfigError::KnobsElsewhere {
                level,
                configured,
                chosen: ran.join("`, `"),
            });
        }
        Ok(())
    };
    unused(
        "cluster",
        cfg.cluster.name(),
        cfg.cluster.has_knobs(),
        out.iter().map(|c| c.cluster.name()).collect(),
    )?;
    unused(
        "instance",
        cfg.instance.name(),
        cfg.instance.has_knobs(),
        out.iter().map(|c| c.instance.name()).collect(),
    )?;
    Ok(out)
}

/// Writes the knob flags that apply to `c`'s policies into it; returns those flags.
fn apply_knob_flags(args: &SimulateArgs, c: &mut SimConfig) -> anyhow::Result<Vec<&'static str>> {
    let mut applied = cluster_knob_flags(args, &mut c.cluster)?;
    applied
        .0
        .extend(instance_knob_flags(args, &mut c.instance).0);
    Ok(applied.0)
}

/// The knob flags written into a config.
#[derive(Default)]
struct Applied(Vec<&'static str>);

impl Applied {
    /// Sets `slot` to `flag`'s value `v`, if given, and notes the flag.
    fn set<T: Clone>(&mut self, flag: &'static str, v: &Option<T>, slot: &mut T) {
        if let Some(v) = v {
            *slot = v.clone();
            self.0.push(flag);
        }
    }
}

/// The cluster-policy knob flags that apply to `c`, written into it.
fn cluster_knob_flags(args: &SimulateArgs, c: &mut ClusterConfig) -> anyhow::Result<Applied> {
    let mut a = Applied::default();
    match c {
        ClusterConfig::RoundRobin => {}
        ClusterConfig::LeastLoad(k) => {
            a.set("--prefix-weight", &args.prefix_weight, &mut k.prefix_weight);
        }
        ClusterConfig::Splitwise(k) => {
            let flag = "--prefill-instances";
            a.set(flag, &args.prefill_instances, &mut k.prefill_instances);
        }
        ClusterConfig::Accellm(k) => {
            a.set("--prefix-weight", &args.prefix_weight, &mut k.prefix_weight);
            a.set("--sync", &parsed("--sync", &args.sync)?, &mut k.sync);
            a.set(
                "--eviction",
                &parsed("--eviction", &args.eviction)?,
                &mut k.eviction,
            );
        }
    }
    Ok(a)
}

/// The instance-policy knob flags that apply to `c`, written into it.
fn instance_knob_flags(args: &SimulateArgs, c: &mut InstanceConfig) -> Applied {
    let mut a = Applied::default();
    let seqs = &args.max_num_seqs;
    match c {
        InstanceConfig::Vllm(k) => {
            a.set("--max-num-seqs", seqs, &mut k.max_num_seqs);
            let tokens = &args.max_num_batched_tokens;
            a.set(
                "--max-num-batched-tokens",
                tokens,
                &mut k.max_num_batched_tokens,
            );
        }
        InstanceConfig::Sarathi(k) => {
            a.set("--max-num-seqs", seqs, &mut k.max_num_seqs);
            a.set("--chunk-size", &args.chunk_size, &mut k.chunk_size);
        }
        InstanceConfig::Accelgen(k) => a.set("--max-num-seqs", seqs, &mut k.max_num_seqs),
    }
    a
}

/// The knob flags given, each with its level and the policies it applies to (found by applying
/// it to each policy's defaults, which also checks its value).
fn knob_flags_given(
    args: &SimulateArgs,
) -> anyhow::Result<Vec<(&'static str, &'static str, Vec<&'static str>)>> {
    let mut given: Vec<(&'static str, &'static str, Vec<&'static str>)> = Vec::new();
    let mut note = |flags: Vec<&'static str>, level, policy| {
        for f in flags {
            match given.iter_mut().find(|g| g.0 == f) {
                Some(g) => g.2.push(policy),
                None => given.push((f, level, vec![policy])),
            }
        }
    };
    for &name in cluster::NAMES {
        let mut c = ClusterConfig::named(name)?;
        note(cluster_knob_flags(args, &mut c)?.0, "cluster", name);
    }
    for &name in instance::NAMES {
        let mut c = InstanceConfig::named(name)?;
        note(instance_knob_flags(args, &mut c).0, "instance", name);
    }
    Ok(given)
}

fn describe(cfg: &SimConfig, w: &Workload, policies: &[SimConfig]) -> String {
    let names: Vec<String> = policies
        .iter()
        .map(|p| format!("{}/{}", p.cluster.name(), p.instance.name()))
        .collect();
    if let Some(p) = &cfg.profile {
        return format!(
            "{} x profile `{}`, {}: {}\n",
            cfg.instances,
            p.name,
            names.join(", "),
            w.description
        );
    }
    format!(
        "{} x {} TP{} ({}), {}: {}\n",
        cfg.instances,
        cfg.model,
        cfg.tp,
        Specs::builtin()
            .ok()
            .and_then(|s| s.device_name(&cfg.hardware).ok())
            .unwrap_or_else(|| cfg.hardware.clone()),
        names.join(", "),
        w.description
    )
}

/// A job's requests and their block keys (parallel, or empty without prefix structure).
type JobRequests = (Vec<RequestSpec>, Vec<Option<Arc<[BlockKey]>>>);

/// Runs every job (a config and its rate) on up to `threads` threads, recording time series if
/// `record` and keeping every finished request if `keep_requests`; `requests` produces each
/// job's requests and block keys. Reports come back in job order.
fn run_jobs(
    jobs: &[(SimConfig, Option<f64>)],
    threads: usize,
    record: bool,
    keep_requests: bool,
    requests: impl Fn(&(SimConfig, Option<f64>)) -> anyhow::Result<JobRequests> + Sync,
) -> anyhow::Result<Vec<RunReport>> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos} requests simulated ({per_sec}) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let tick = |n: u64| bar.inc(n);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<RunReport>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let work = || loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(k) else { break };
        let r = requests(job).and_then(|(reqs, keys)| {
            let watch = Watch {
                progress: Some(&tick),
                timeseries: record,
                requests: keep_requests,
            };
            runner::run_keyed(&job.0, &reqs, &keys, Some(watch)).map(|mut rep| {
                rep.rate = job.1;
                rep
            })
        });
        if let Ok(mut g) = results.lock() {
            g[k] = Some(r);
        }
    };
    let n = threads.min(jobs.len()).max(1);
    if n == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..n {
                s.spawn(work);
            }
        });
    }
    bar.finish_and_clear();
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a simulation thread panicked"))?;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a simulation did not run"))))
        .collect()
}

fn validate_cost_model(json: bool) -> anyhow::Result<()> {
    let specs = Specs::builtin()?;
    let dir = validate::profiles_dir()?;
    let v = validate::validate(&specs, &dir)?;
    if json {
        emit(&serde_json::to_string_pretty(&v)?)?;
        emit("\n")
    } else {
        emit(&format!(
            "Cost model against measured profiles ({})\n\n{}",
            dir.display(),
            v.to_markdown()
        ))
    }
}

/// Writes a command's output to stdout; a closed pipe (`| head`) ends quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
