//! # accellm-server
//!
//! An OpenAI-compatible HTTP server over several engine instances, scheduled live by
//! accellm-core. `accellm serve` with no arguments serves the default model on two instances that
//! form one AcceLLM pair.
//!
//! Threads (see `docs/server.md`):
//! - the **HTTP runtime** (tokio): parses and validates requests, tokenises prompts, streams
//!   answers ([`http`]);
//! - the **scheduler thread**: owns the core's `Scheduler`, feeds it arrivals, iteration and copy
//!   completions, transfers and cancellations with the wall clock, and turns its actions into
//!   work ([`executor`]);
//! - per instance, a **worker** (forward passes on its own thread pool, sampling) and a **link**
//!   (KV block copies to other instances' pools, layer by layer) ([`worker`]).
//!
//! [`Server::start`] runs it all in the background (tests use it); [`serve`] runs it until a
//! shutdown signal.

pub mod api;
pub mod cli;
pub mod config;
pub(crate) mod constraint;
pub mod error;
pub(crate) mod executor;
pub(crate) mod http;
pub(crate) mod https;
pub mod kv_events;
pub mod metrics;
pub mod remote;
pub(crate) mod response;
pub mod text;
pub(crate) mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use accellm_core::policy::PolicyConfig;
use accellm_core::profile::ServeSetup;
use accellm_core::scheduler::{Scheduler, SchedulerConfig};
use accellm_engine::{KvPool, Model};
use anyhow::Context as _;

use config::CostConfig;
pub use config::ServerConfig;

use crate::executor::{Executor, Input, IterationLog};
use crate::metrics::Metrics;
use crate::text::TextModel;
use crate::worker::{Engine, LinkCounters};

/// Where the instances run.
enum Backend {
    /// Threads of this process over a model loaded here.
    Local(Engine),
    /// `accellm worker` processes, connected and checked.
    Remote(Vec<remote::front::Connected>),
}

/// Everything loaded and started before the HTTP listener opens.
struct Prepared {
    state: Arc<http::AppState>,
    exec_tx: mpsc::Sender<Input>,
    exec_join: std::thread::JoinHandle<()>,
    listener: tokio::net::TcpListener,
    grace: Duration,
}

/// Resolves the model path: the configured one, or the default model (fetched if missing).
pub fn model_path(cfg: &ServerConfig) -> anyhow::Result<PathBuf> {
    match &cfg.model {
        Some(p) => Ok(p.clone()),
        None => accellm_tokenizer::ensure_default_model()
            .context("cannot obtain the default model (pass --model FILE.gguf)"),
    }
}

/// Loads the model, builds the scheduler, starts the threads and binds the listener.
async fn prepare(cfg: &ServerConfig) -> anyhow::Result<Prepared> {
    cfg.validate()?;
    // Bind first: a busy port fails at once, not after loading the model.
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let path = model_path(cfg)?;
    let text = Arc::new(
        TextModel::load(&path)
            .with_context(|| format!("loading tokenizer of {}", path.display()))?,
    );
    let eos = Arc::new(text.eos());
    // Without `--cost-model`, a local server scales the engine's built-in cost model to this
    // machine by a start-up probe (remote workers keep the default fit).
    let mut probed = None;
    // Mutual TLS with the workers: loaded before anything else so bad material fails at once.
    let tls = match &cfg.tls {
        Some(files) if !cfg.workers.is_empty() => Some(Arc::new(
            remote::tls::Tls::load(files).context("loading the TLS material for worker links")?,
        )),
        Some(_) => {
            tracing::warn!("--tls-* secure the links to `accellm worker` processes; without --workers they have no effect");
            None
        }
        None => {
            if let Some(w) = cfg.workers.iter().find(|w| !remote::tls::is_loopback(w)) {
                tracing::warn!(
                    worker = %w,
                    "INSECURE: prompts, generated text and KV cross the network to {w} unencrypted and unauthenticated; give --tls-cert, --tls-key and --tls-ca (docs/distributed.md, \"Security\")"
                );
            }
            None
        }
    };
    let (backend, geometry) = if cfg.workers.is_empty() {
        let model = {
            let (p, format) = (path.clone(), cfg.weight_format);
            tokio::task::spawn_blocking(move || Model::load(&p, format))
                .await
                .context("model loader panicked")?
                .with_context(|| format!("loading model {}", path.display()))?
        };
        model.check_servable()?;
        let model = Arc::new(model);
        if cfg.cost.is_none() {
            let (m, format) = (model.clone(), cfg.weight_format);
            let (threads, background) = (cfg.threads_per_instance, (cfg.instances > 1) as usize);
            let probe = tokio::task::spawn_blocking(move || {
                accellm_engine::cli::probed_profile(&m, format, threads, background)
            })
            .await
            .context("cost probe panicked")?
            .and_then(|(profile, scale)| Ok((CostConfig::from_profile(&profile)?, scale)));
            match probe {
                Ok((mut c, scale)) => {
                    tracing::info!(
                        scale,
                        "cost model: the built-in {format} profile scaled to this machine by a start-up probe"
                    );
                    // The probe times iterations, not copies: the link keeps the default.
                    c.kv_copy = None;
                    probed = Some(c);
                }
                // A model the probe's shapes do not fit still serves, on the fixed default fit.
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "cost probe failed; using the default cost model (pass --cost-model for a calibrated one)"
                ),
            }
        }
        let mc = model.config().clone();
        let pools = (0..cfg.instances)
            .map(|_| KvPool::new(&mc, cfg.kv_blocks as usize, cfg.block_size as usize))
            .collect::<Result<Vec<_>, _>>()
            .context("allocating KV pools")?;
        let engine = Engine {
            model,
            pools: Arc::new(pools),
            eos: eos.clone(),
        };
        let g = (
            mc.layers as u32,
            mc.kv_bytes_per_token as u64,
            mc.context_length as u32,
        );
        (Backend::Local(engine), g)
    } else {
        let id = remote::wire::ModelId::of(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let (addrs, eos2, block_size, kv_blocks) = (
            cfg.workers.clone(),
            eos.clone(),
            cfg.block_size,
            cfg.kv_blocks,
        );
        let wait = Duration::from_secs_f64(cfg.worker_connect_timeout_s);
        let (tls, kv_port) = (tls.clone(), cfg.worker_kv_port);
        let conns = tokio::task::spawn_blocking(move || {
            let spec = remote::front::HelloSpec {
                model: &id,
                block_size,
                kv_blocks,
                eos: &eos2,
                tls: tls.as_deref(),
                kv_port,
            };
            remote::front::connect(&addrs, &spec, wait)
        })
        .await
        .context("worker connector panicked")??;
        let g = conns[0].geometry;
        (
            Backend::Remote(conns),
            (g.layers, g.kv_bytes_per_token, g.context_length),
        )
    };
    let (layers, kv_bytes_per_token, context_length) = geometry;
    let cost_config = probed.unwrap_or_else(|| cfg.cost_config());
    let cost = cost_config.to_model(layers, kv_bytes_per_token);
    // Instances in this process lend each other cores; remote workers are separate machines.
    let sharing = cfg.share_idle_cores && cfg.workers.is_empty() && cfg.instances >= 2;
    if sharing && cost.wide.is_none() {
        tracing::warn!(
            "the cost model has no [wide] fit: iterations on an idle partner's cores are predicted \
             at one instance's speed (recalibrate with `accellm calibrate` for a [wide] fit)"
        );
    }
    let link = cost_config.link();
    let mut sched = Scheduler::build(
        &SchedulerConfig {
            kv_blocks: cfg.kv_blocks,
            block_size: cfg.block_size,
            // Copies between pools in the same process: measured, or memory bandwidth with a
            // small fixed cost.
            link,
            max_waiting: cfg.max_waiting,
            record_timelines: false,
            prefix_cache: cfg.prefix_cache,
            share_idle_cores: sharing,
        },
        cfg.instances,
        &cfg.cluster,
        &cfg.instance,
        Arc::new(cost.clone()),
    )?;
    // The core notes what its prefix caches store and evict only when someone listens.
    sched.set_kv_events(cfg.kv_events.enabled());
    let name = cfg.served_model_name.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| "model".into())
    });
    let setup = ServeSetup {
        instances: cfg.instances,
        threads_per_instance: cfg.threads_per_instance,
        kv_blocks: cfg.kv_blocks,
        block_size: cfg.block_size,
        max_waiting: cfg.max_waiting,
        share_idle_cores: sharing,
        slo: cfg.slo,
        cost,
        link,
        instance: cfg.instance.clone(),
        cluster: cfg.cluster.clone(),
        model: name.clone(),
    };
    let mut m = Metrics::new(
        &name,
        cfg.instances as usize,
        (
            cfg.cluster.name().to_string(),
            cfg.instance.name().to_string(),
        ),
    );
    m.block_size = cfg.block_size;
    m.kv_blocks = cfg.kv_blocks as u64 * cfg.instances as u64;
    let metrics = Arc::new(Mutex::new(m));
    let (exec_tx, exec_rx) = mpsc::channel();
    let counters = Arc::new(LinkCounters::default());
    let mut threads = Vec::new();
    let mut reconnect = None;
    match backend {
        Backend::Local(engine) => {
            let per = cfg.threads_per_instance;
            let cpus = accellm_engine::threads::allowed_cpus();
            let pin = cfg.pin_threads && cfg.instances as usize * per <= cpus.len();
            if pin {
                tracing::info!(
                    ?cpus,
                    "instance threads pinned: instance i on CPUs i·threads.."
                );
            }
            let n = cfg.instances as usize;
            let cpus_of = |i: usize| {
                if pin {
                    cpus[i * per..(i + 1) * per].to_vec()
                } else {
                    Vec::new()
                }
            };
            for i in 0..n {
                // With core sharing, a second pool over this instance's CPUs and its partner's.
                let wide = (sharing && (i ^ 1) < n).then(|| [cpus_of(i), cpus_of(i ^ 1)].concat());
                let cores = worker::Cores {
                    own: cpus_of(i),
                    wide,
                    threads: per,
                };
                threads.push(
                    worker::spawn_instance(i, &engine, cores, exec_tx.clone(), counters.clone())
                        .context("starting instance threads")?,
                );
            }
        }
        Backend::Remote(conns) => {
            let deadline = Duration::from_secs_f64(cfg.worker_deadline_s);
            for (i, c) in conns.into_iter().enumerate() {
                threads.push(
                    remote::front::spawn_remote(i, c, exec_tx.clone(), counters.clone(), deadline)
                        .context("starting remote worker threads")?,
                );
            }
            reconnect = Some(remote::front::Reconnect {
                addrs: cfg.workers.clone(),
                model: remote::wire::ModelId::of(&path)?,
                block_size: cfg.block_size,
                kv_blocks: cfg.kv_blocks,
                eos: eos.to_vec(),
                tls: tls.clone(),
                kv_port: cfg.worker_kv_port,
                out: exec_tx.clone(),
                counters: counters.clone(),
                deadline,
                stop: Default::default(),
            });
        }
    }
    let iteration_log = Arc::new(Mutex::new(IterationLog::default()));
    let mut executor = Executor::new(
        sched,
        text.clone(),
        eos,
        threads,
        metrics.clone(),
        counters,
        iteration_log.clone(),
    );
    if let Some(r) = reconnect {
        executor = executor.with_reconnect(r);
    }
    if cfg.kv_events.enabled() {
        let topic = cfg.kv_events.topic_for(&name);
        let (publisher, at) = kv_events::start(&cfg.kv_events, topic.clone())?;
        tracing::info!(endpoint = %at, %topic, "publishing KV events");
        executor = executor.with_kv_events(publisher);
    }
    let exec_join = std::thread::Builder::new()
        .name("accellm-sched".into())
        .spawn(move || executor.run(exec_rx))
        .context("starting the scheduler thread")?;
    let kv_tokens = cfg.kv_blocks.saturating_mul(cfg.block_size);
    let api_key = cfg
        .api_key
        .clone()
        .or_else(|| std::env::var("ACCELLM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let state = Arc::new(http::AppState {
        exec: Mutex::new(exec_tx.clone()),
        text,
        model_name: name,
        context_len: context_length,
        kv_tokens,
        api_key,
        metrics,
        next_handle: AtomicU64::new(1),
        default_slo: cfg.slo,
        slo_classes: cfg.slo_classes.clone(),
        setup: serde_json::to_value(&setup).context("describing the server setup")?,
        iteration_log,
        max_body_bytes: cfg.max_body_bytes,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        constraints: std::sync::OnceLock::new(),
    });
    tracing::info!(
        model = %path.display(),
        instances = cfg.instances,
        threads_per_instance = cfg.threads_per_instance,
        cluster_policy = cfg.cluster.name(),
        instance_policy = cfg.instance.name(),
        kv_blocks = cfg.kv_blocks,
        "server ready"
    );
    Ok(Prepared {
        state,
        exec_tx,
        exec_join,
        listener,
        grace: Duration::from_secs_f64(cfg.shutdown_grace_s),
    })
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish for
/// the configured grace period, cancels the rest, and stops every thread. `on_ready` receives
/// the bound address.
pub async fn serve(
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    // HTTPS material first: a bad file fails at once, not after loading the model.
    let https = match (&cfg.ssl_certfile, &cfg.ssl_keyfile) {
        (Some(cert), Some(key)) => Some(remote::tls::https_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--ssl-certfile and --ssl-keyfile go together"),
    };
    let p = prepare(cfg).await?;
    let addr = p.listener.local_addr()?;
    on_ready(addr);
    let app = http::router(p.state.clone());
    let exec_tx = p.exec_tx.clone();
    let grace = p.grace;
    let signalled = async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: no new connections"
        );
        // After the grace period, cancel whatever is still running so connections close.
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = exec_tx.send(Input::Shutdown);
        });
    };
    match https {
        Some(tls) => {
            let listener = https::TlsListener::new(p.listener, tls)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(signalled)
                .await
        }
        None => {
            axum::serve(p.listener, app)
                .with_graceful_shutdown(signalled)
                .await
        }
    }
    .context("HTTP server failed")?;
    let _ = p.exec_tx.send(Input::Shutdown);
    drop(p.state);
    let join = p.exec_join;
    tokio::task::spawn_blocking(move || join.join())
        .await
        .ok()
        .and_then(Result::ok)
        .context("scheduler thread panicked")?;
    tracing::info!("server stopped");
    Ok(())
}

/// A server running in the background (for tests and embedding).
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts a server on its own runtime thread and waits until it listens.
    pub fn start(cfg: ServerConfig) -> anyhow::Result<Server> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let err_tx = ready_tx.clone();
        let join = std::thread::Builder::new()
            .name("accellm-http".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                let r = rt.block_on(serve(
                    &cfg,
                    async move {
                        let _ = stop_rx.await;
                    },
                    move |addr| {
                        let _ = ready_tx.send(Ok(addr));
                    },
                ));
                if let Err(e) = &r {
                    let _ = err_tx.send(Err(format!("{e:#}")));
                }
                r
            })?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok(Server {
                addr,
                stop: Some(stop_tx),
                join: Some(join),
            }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(anyhow::anyhow!(e))
            }
            Err(_) => match join.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("server thread ended before listening")),
            },
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts down gracefully and waits for every thread.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.join.take() {
            Some(j) => j
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
