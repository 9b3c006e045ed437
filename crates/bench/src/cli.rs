//! `accellm bench`: replay a workload against an OpenAI-compatible endpoint and report latency,
//! throughput, goodput and SLO attainment.

use std::path::PathBuf;
use std::time::Duration;

use accellm_workload::{Arrivals, ContextFit, SloPolicy, Workload, WorkloadSource, WorkloadSpec};
use anyhow::{bail, Context};

use accellm_core::{policy::PolicyConfig, profile::ServeSetup};

use crate::client::{discover_model, get, Client, ClientConfig, PreparedRequest};
use crate::fidelity;
use crate::metrics::{summarize, to_json, GoodputConfig, PrefixCacheDelta, RunInfo};
use crate::prompt::{CharEstimate, GgufTokenCounter, PromptBuilder, TokenCounter};
use crate::runner::{run as run_requests, RunOptions};

/// Arguments of `accellm bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// API path: /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// Model name to send; default: the first one `GET /v1/models` lists.
    #[arg(long)]
    pub model: Option<String>,
    /// Workload: azure-conv, azure-code, sharegpt, arxiv, synthetic:prompt=..,output=..,
    /// mix:A*w@class+B*w@class, chat:.., system-prompts:.., few-shot:.., or a trace file
    /// (.csv / .jsonl). `chat` conversations run closed-loop: each follow-up is sent after the
    /// previous answer (plus the workload's think time) and carries the server's real answers.
    #[arg(long, default_value = "sharegpt")]
    pub workload: String,
    /// A workload TOML file (accellm-workload's WorkloadSpec); overrides --workload, --slo,
    /// --seed, --max-context; --num-prompts, --rate and --arrivals still apply on top.
    #[arg(long)]
    pub workload_config: Option<PathBuf>,
    /// Number of requests (the workload is cut after this many).
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Only requests arriving in the first this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Request rate (req/s) for new Poisson/Gamma arrivals (or with --retime, the target mean
    /// rate of the trace's own timestamps). Default: the workload's own timing (trace
    /// timestamps; all at once for length-only datasets).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Gamma shape of inter-arrival times with --rate (1 = Poisson, <1 burstier), as in vLLM.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// With --rate: scale the trace's own inter-arrival times to that mean rate instead of
    /// drawing new ones.
    #[arg(long)]
    pub retime: bool,
    /// Arrival process in accellm-workload's short form (trace, retime:R, poisson:R,
    /// gamma:R:CV, all-at-once); overrides --rate/--burstiness/--retime.
    #[arg(long)]
    pub arrivals: Option<String>,
    /// At most this many requests in flight. Without --rate and trace timing this is a closed
    /// loop: a new request starts when one finishes.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// SLO assignment: none, fixed:TTFT_MS:TBT_MS, classes[:NAME=W,...], per-source, file.
    #[arg(long, default_value = "none")]
    pub slo: String,
    /// Seed of every random draw (arrivals, lengths, classes, prompt text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model context length: requests longer than this are fitted (see --context-fit).
    #[arg(long)]
    pub max_context: Option<u32>,
    /// How to fit long requests: cap, scale, scale-all, drop.
    #[arg(long, default_value = "cap")]
    pub context_fit: String,
    /// GGUF file whose tokenizer counts prompt tokens exactly (default: an estimate).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Characters per token of the estimate used without --tokenizer.
    #[arg(long, default_value_t = 4.0)]
    pub chars_per_token: f64,
    /// Percentiles to report.
    #[arg(long, default_value = "50,90,99", value_delimiter = ',')]
    pub percentiles: Vec<f64>,
    /// Goodput thresholds in ms, e.g. `--goodput ttft:500 tpot:50` (also e2el:MS).
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Write the result as JSON (vllm bench serve's field names) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report (latency CDFs, token rate over time) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Do not send `ignore_eos`/`min_tokens` (for servers that reject unknown fields).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Do not send `priority` (vLLM rejects non-zero priorities unless it runs its priority
    /// scheduler).
    #[arg(long)]
    pub no_priority: bool,
    /// JSON object merged into every request body, e.g. `{"logit_bias": {"2": -100}}`.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Also predict this run with the simulator: replay the same requests through
    /// `accellm simulate` configured like the server (read from its `GET /accellm/config`) on
    /// this hardware profile (`accellm calibrate --out`), and print predicted against measured
    /// figures (also under `fidelity` in --json). `server` predicts with the server's own cost
    /// model (its start-up probe or `--cost-model`). See docs/fidelity.md.
    #[arg(long, value_name = "PROFILE")]
    pub predict: Option<PathBuf>,
    /// With --predict: fit a profile to the iterations the server ran during this run (its
    /// `GET /accellm/iterations`, timed from dispatch to report under the run's real contention)
    /// and write it here; geometry, KV copy speed and pool come from the --predict profile.
    #[arg(long, value_name = "FILE", requires = "predict")]
    pub calibrate_out: Option<PathBuf>,
}

impl BenchArgs {
    /// The workload these arguments describe.
    pub fn workload_spec(&self) -> anyhow::Result<WorkloadSpec> {
        let mut spec = match &self.workload_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<WorkloadSpec>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => {
                let source: WorkloadSource = self.workload.parse()?;
                let mut spec = WorkloadSpec::new(source);
                spec.slo = self.slo.parse::<SloPolicy>()?;
                spec.seed = self.seed;
                spec.max_context = self.max_context;
                spec.context_fit = self.context_fit.parse::<ContextFit>()?;
                spec
            }
        };
        spec.max_requests = Some(self.num_prompts);
        if self.duration.is_some() {
            spec.duration_s = self.duration;
        }
        if let Some(a) = &self.arrivals {
            spec.arrivals = Some(a.parse::<Arrivals>()?);
        } else if let Some(rate) = self.rate {
            if rate.is_nan() || rate <= 0.0 {
                bail!("--rate must be positive");
            }
            if !positive(self.burstiness) {
                bail!("--burstiness must be positive");
            }
            spec.arrivals = Some(if self.retime && rate.is_finite() {
                Arrivals::Retime { rate }
            } else {
                Arrivals::with_burstiness(rate, self.burstiness)
            });
        }
        Ok(spec)
    }
}

/// Turns workload requests into HTTP requests with real prompt text: shared text for shared
/// segments when the workload has prefix structure (a multi-turn follow-up is the whole
/// conversation so far, as one completions prompt), else text of its own for each request.
pub fn prepare(
    workload: &Workload,
    prompts: &PromptBuilder,
    counter: &dyn TokenCounter,
) -> Vec<PreparedRequest> {
    let words_per_token = workload
        .has_prefixes()
        .then(|| prompts.words_per_token(counter));
    workload
        .requests
        .iter()
        .enumerate()
        .map(|(index, r)| PreparedRequest {
            index,
            arrival_s: r.arrival_s,
            history: Vec::new(),
            prompt: match (words_per_token, workload.prefixes.get(index)) {
                (Some(wpt), Some(segments)) => {
                    prompts.segments_text(segments, r.prompt_tokens, wpt)
                }
                _ => prompts.build(index, r.prompt_tokens, counter),
            },
            prompt_tokens: r.prompt_tokens,
            output_tokens: r.output_tokens,
            ttft_slo_ms: r.ttft_slo_ms,
            tbt_slo_ms: r.tbt_slo_ms,
            priority: r.priority,
            send_priority: r.class.is_some() || r.priority != 0,
            class: r.class,
        })
        .collect()
}

fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs `accellm bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !positive(args.timeout) {
        bail!("--timeout must be positive");
    }
    if args.percentiles.iter().any(|p| !(0.0..=100.0).contains(p)) {
        bail!("--percentiles must be within 0..100");
    }
    let goodput = GoodputConfig::parse(&args.goodput).map_err(anyhow::Error::msg)?;
    let spec = args.workload_spec()?;
    let workload = spec.generate().context("building the workload")?;
    if workload.requests.is_empty() {
        bail!("the workload has no requests");
    }
    let counter: Box<dyn TokenCounter> = match &args.tokenizer {
        Some(path) => Box::new(
            GgufTokenCounter::open(path)
                .with_context(|| format!("loading the tokenizer of {}", path.display()))?,
        ),
        None => {
            if !positive(args.chars_per_token) {
                bail!("--chars-per-token must be positive");
            }
            Box::new(CharEstimate {
                chars_per_token: args.chars_per_token,
            })
        }
    };
    let prompts = PromptBuilder::new(spec.seed);
    let mut requests = prepare(&workload, &prompts, counter.as_ref());
    if args.no_priority {
        requests.iter_mut().for_each(|r| r.send_priority = false);
    }
    let open_loop = requests.iter().any(|r| r.arrival_s > 0.0);
    eprintln!(
        "workload: {}\nprompt tokens: {}",
        workload.description,
        counter.describe()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let base_url = args.base_url.trim_end_matches('/').to_string();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => rt.block_on(discover_model(
            &base_url,
            timeout.min(Duration::from_secs(30)),
        ))?,
    };
    let endpoint = if args.endpoint.starts_with('/') {
        args.endpoint.clone()
    } else {
        format!("/{}", args.endpoint)
    };
    let extra_body = match &args.extra_body {
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => bail!("--extra-body must be a JSON object"),
            Err(e) => bail!("--extra-body: {e}"),
        },
        None => serde_json::Map::new(),
    };
    let client = Client::new(ClientConfig {
        extra_body,
        url: format!("{base_url}{endpoint}"),
        model: model.clone(),
        ignore_eos: !args.no_ignore_eos,
        timeout,
        temperature: args.temperature,
    })?;
    let predict = match &args.predict {
        Some(path) => {
            let profile = match path.to_str() {
                Some("server") if !path.exists() => None,
                _ => Some(accellm_sim::profile::load(path)?),
            };
            let wait = timeout.min(Duration::from_secs(30));
            let setup = rt
                .block_on(get(&base_url, "/accellm/config", wait))
                .context(
                    "reading the server's setup (an accellm server is needed for --predict)",
                )?;
            let setup: ServeSetup = serde_json::from_slice(&setup)
                .context("parsing the server's GET /accellm/config")?;
            let profile = profile.unwrap_or_else(|| setup.as_profile());
            let metrics = rt.block_on(get(&base_url, "/metrics", wait)).ok();
            let log = match &args.calibrate_out {
                Some(_) => Some(rt.block_on(get(&base_url, "/accellm/iterations", wait))?),
                None => None,
            };
            Some((profile, setup, metrics, log, requests.clone(), wait))
        }
        None => None,
    };
    let opts = RunOptions {
        open_loop,
        max_concurrency: args.max_concurrency,
        progress: !args.no_progress,
    };
    let n = requests.len();
    let conversations_ran = matches!(spec.source, WorkloadSource::Chat(_));
    let (requests, conversations) = match &spec.source {
        WorkloadSource::Chat(chat) => {
            let c =
                crate::chat::conversations(&workload, chat, requests, &prompts, counter.as_ref());
            eprintln!(
                "{} conversations, closed loop: each follow-up carries the server's answers",
                c.len()
            );
            (Vec::new(), Some(c))
        }
        _ => (requests, None),
    };
    // The server's prefix-cache counters around the run, if it exports them.
    let scrape_wait = timeout.min(Duration::from_secs(10));
    let scrape = || rt.block_on(get(&base_url, "/metrics", scrape_wait)).ok();
    let metrics_before = scrape();
    let result = match conversations {
        Some(c) => rt.block_on(crate::chat::run(client, c, &opts)),
        None => rt.block_on(run_requests(client, requests, &opts)),
    };
    let metrics_after = metrics_before.as_ref().and_then(|_| scrape());
    let prefix_cache = match (&metrics_before, &metrics_after) {
        (Some(a), Some(b)) => {
            PrefixCacheDelta::between(&String::from_utf8_lossy(a), &String::from_utf8_lossy(b))
        }
        _ => None,
    };
    let summary = summarize(
        &result.results,
        result.duration_s,
        &args.percentiles,
        &goodput,
        &workload.classes,
    );
    let configured_rate = match spec.arrivals {
        Some(Arrivals::Poisson { rate })
        | Some(Arrivals::Gamma { rate, .. })
        | Some(Arrivals::Retime { rate }) => Some(rate),
        _ => None,
    };
    print!(
        "{}",
        crate::report::render(&summary, configured_rate, args.max_concurrency)
    );
    if let Some(d) = &prefix_cache {
        print!("{}", crate::report::render_prefix_cache(d));
    }
    let fidelity = match predict {
        Some((profile, setup, before, log, mut prepared, wait)) => {
            if conversations_ran {
                // Follow-ups went when their answers came: predict with the times they went.
                let sent: std::collections::HashMap<usize, f64> = result
                    .results
                    .iter()
                    .map(|r| (r.index, r.start_s))
                    .collect();
                for r in &mut prepared {
                    r.arrival_s = sent.get(&r.index).copied().unwrap_or(r.arrival_s);
                }
            }
            let after = rt.block_on(get(&base_url, "/metrics", wait)).ok();
            if let (Some(path), Some(log)) = (&args.calibrate_out, log) {
                let now = rt.block_on(get(&base_url, "/accellm/iterations", wait))?;
                let name = format!(
                    "iterations of {}/{} serving {} at {}",
                    setup.cluster.name(),
                    setup.instance.name(),
                    workload.description,
                    utc_stamp()
                );
                let live = fidelity::live_profile(&profile, &log, &now, name)?;
                let text = format!(
                    "# accellm hardware profile fitted to a live run by `accellm bench --calibrate-out`\n{}",
                    toml::to_string(&live)?
                );
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {} ({} iterations)", path.display(), live.samples);
            }
            let f = fidelity::compare(
                &profile,
                setup,
                &prepared,
                &result.results,
                result.duration_s,
                before.zip(after),
            )?;
            print!("{}", f.render());
            Some(f)
        }
        None => None,
    };
    if let Some(first) = result.results.iter().find_map(|r| r.failure.as_ref()) {
        eprintln!("first failure: {first}");
    }
    if let Some(path) = &args.report {
        let mut config = vec![
            ("endpoint".to_string(), endpoint.clone()),
            ("model".to_string(), model.clone()),
            ("workload".to_string(), workload.description.clone()),
            ("requests".to_string(), n.to_string()),
        ];
        if let Some(rate) = configured_rate {
            config.push(("request rate (req/s)".to_string(), format!("{rate}")));
        }
        if let Some(c) = args.max_concurrency {
            config.push(("max concurrency".to_string(), c.to_string()));
        }
        crate::html::build(&config, &summary, &result.results)
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        let info = RunInfo {
            date: utc_stamp(),
            endpoint,
            model_id: model,
            tokenizer_id: counter.describe(),
            num_prompts: n,
            request_rate: configured_rate,
            burstiness: args.burstiness,
            max_concurrency: args.max_concurrency,
            workload: workload.description.clone(),
        };
        let mut json = to_json(&info, &summary, &result.results);
        if let (Some(f), Some(obj)) = (&fidelity, json.as_object_mut()) {
            obj.insert("fidelity".into(), serde_json::to_value(f)?);
        }
        if let (Some(d), Some(obj)) = (&prefix_cache, json.as_object_mut()) {
            obj.insert("prefix_cache_queries".into(), d.queries.into());
            obj.insert("prefix_cache_hits".into(), d.hits.into());
            obj.insert("prefix_cache_hit_rate".into(), d.hit_rate().into());
        }
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
