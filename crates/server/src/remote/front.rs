//! The front's side of remote workers: connect and handshake, then stand in for an instance's
//! worker and link threads ([`InstanceThreads`]) so the scheduler thread drives a remote worker
//! exactly as it drives a local one.
//!
//! Per worker, a writer thread turns each `RunJob` into a `Run` message (and a link thread each
//! transfer into a `Transfer` message), and a reader thread turns `Report` and `TransferDone`
//! back into the scheduler's inputs. If the connection drops, or an iteration is not reported
//! within the deadline (a watchdog then closes the connection), the scheduler hears
//! `InstanceDown`; its core recovers the worker's requests, and [`Reconnect`] keeps trying the
//! worker's address until a restarted worker accepts the front again (`InstanceUp`).
//!
//! With TLS configured every connection is mutual TLS with the cluster CA ([`super::tls`]): a
//! worker whose certificate the CA did not sign is refused before the hello is sent.

use std::io::BufReader;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::tls::{self, Link, LinkReader, Tls};
use super::wire::{self, Geometry, ModelId, Msg, WirePromptRow, WireSample, WireSeq};
use crate::constraint::Constraint;
use crate::executor::Input;
use crate::worker::{InstanceThreads, LinkCounters, LinkJob, RunJob, RunReport, Sampled};

/// A worker that accepted the front's hello.
pub(crate) struct Connected {
    addr: String,
    link: Link,
    /// The worker's model and pool shape.
    pub geometry: Geometry,
}

/// What the front tells each worker at connect.
pub(crate) struct HelloSpec<'a> {
    pub model: &'a ModelId,
    pub block_size: u32,
    pub kv_blocks: u32,
    pub eos: &'a [u32],
    /// Mutual TLS, when configured.
    pub tls: Option<&'a Tls>,
    /// The port workers take KV links on (`--worker-kv-port`), when not their front port.
    pub kv_port: Option<u16>,
}

/// The addresses peers reach each worker's KV link on: the workers' own, or the same hosts on
/// `kv_port`.
fn peer_addrs(addrs: &[String], kv_port: Option<u16>) -> Vec<String> {
    match kv_port {
        None => addrs.to_vec(),
        Some(p) => addrs
            .iter()
            .map(|a| format!("{}:{p}", a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h)))
            .collect(),
    }
}

/// Connects to every worker (retrying refused connections until `wait` has passed, since
/// workers may still be starting) and checks each one's version, model and block geometry.
pub(crate) fn connect(
    addrs: &[String],
    spec: &HelloSpec<'_>,
    wait: Duration,
) -> anyhow::Result<Vec<Connected>> {
    (0..addrs.len())
        .map(|i| connect_one(addrs, i, spec, wait))
        .collect()
}

/// Connects to worker `i` of `addrs` and shakes hands.
fn connect_one(
    addrs: &[String],
    i: usize,
    spec: &HelloSpec<'_>,
    wait: Duration,
) -> anyhow::Result<Connected> {
    let deadline = Instant::now() + wait;
    let addr = &addrs[i];
    let stream = loop {
        let tried = addr
            .to_socket_addrs()
            .map_err(anyhow::Error::from)
            .and_then(|mut a| a.next().context("resolves to no address"))
            .and_then(|a| Ok(TcpStream::connect_timeout(&a, Duration::from_secs(5))?));
        match tried {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(worker = %addr, error = %e, "worker not reachable yet; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.context(format!("cannot reach worker {addr}"))),
        }
    };
    stream.set_nodelay(true)?;
    // A worker still loading its model answers once it accepts the connection.
    stream.set_read_timeout(Some(wait.max(Duration::from_secs(1))))?;
    let mut link = tls::connect(stream, spec.tls, addr)
        .with_context(|| format!("TLS handshake with worker {addr}"))?;
    let (mut reader, mut writer) = link.parts();
    wire::write_msg(
        &mut writer,
        &Msg::Hello {
            version: wire::version(),
            model: spec.model.clone(),
            block_size: spec.block_size,
            kv_blocks: spec.kv_blocks,
            instance: i,
            peers: peer_addrs(addrs, spec.kv_port),
            eos: spec.eos.to_vec(),
        },
    )
    .with_context(|| format!("handshake with worker {addr}"))?;
    let reply =
        wire::read_msg(&mut reader).with_context(|| format!("handshake with worker {addr}"))?;
    let (version, model, geometry) = match reply {
        Msg::Welcome {
            version,
            model,
            geometry,
        } => (version, model, geometry),
        Msg::Refused { reason } => bail!("worker {addr} refused the front: {reason}"),
        m => bail!("worker {addr} answered the hello with {m:?}"),
    };
    if version != wire::version() {
        bail!(
            "worker {addr} runs `{version}`, the front `{}`",
            wire::version()
        );
    }
    if model != *spec.model {
        bail!(
            "worker {addr} serves {} ({} bytes), the front tokenises for {} ({} bytes)",
            model.name,
            model.bytes,
            spec.model.name,
            spec.model.bytes
        );
    }
    link.socket().set_read_timeout(None)?;
    tracing::info!(worker = %addr, instance = i, tls = link.is_tls(), "worker connected");
    Ok(Connected {
        addr: addr.clone(),
        link,
        geometry,
    })
}

/// Brings failed workers back: retries their address until a worker accepts the front.
pub(crate) struct Reconnect {
    pub addrs: Vec<String>,
    pub model: ModelId,
    pub block_size: u32,
    pub kv_blocks: u32,
    pub eos: Vec<u32>,
    pub tls: Option<Arc<Tls>>,
    pub kv_port: Option<u16>,
    pub out: Sender<Input>,
    pub counters: Arc<LinkCounters>,
    pub deadline: Duration,
    /// Set when the front stops: retry threads end.
    pub stop: Arc<AtomicBool>,
}

impl Reconnect {
    /// Starts retrying worker `i` in the background: it is taken back as soon as it answers.
    /// Only a worker the front itself lost is retried (its connection dropped or its deadline
    /// passed); one that only its partner cannot reach stays in service, unpaired
    /// (`executor::partition`), so a restarted worker is back whichever side noticed first.
    pub(crate) fn start(&self, i: usize) {
        let addrs = self.addrs.clone();
        let (model, eos) = (self.model.clone(), self.eos.clone());
        let (block_size, kv_blocks) = (self.block_size, self.kv_blocks);
        let (out, stop) = (self.out.clone(), self.stop.clone());
        let (tls, kv_port) = (self.tls.clone(), self.kv_port);
        let _ = std::thread::Builder::new()
            .name(format!("accellm-reconnect{i}"))
            .spawn(move || {
                let spec = HelloSpec {
                    model: &model,
                    block_size,
                    kv_blocks,
                    eos: &eos,
                    tls: tls.as_deref(),
                    kv_port,
                };
                while !stop.load(Ordering::Relaxed) {
                    match connect_one(&addrs, i, &spec, Duration::ZERO) {
                        Ok(c) => {
                            let _ = out.send(Input::InstanceUp(i, Box::new(c)));
                            return;
                        }
                        Err(e) => tracing::debug!(instance = i, error = %e, "worker still down"),
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
    }

    /// Drives a reconnected worker as instance `i`.
    pub(crate) fn spawn(&self, i: usize, c: Connected) -> std::io::Result<InstanceThreads> {
        spawn_remote(i, c, self.out.clone(), self.counters.clone(), self.deadline)
    }
}

impl Drop for Reconnect {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Grammar states of an iteration's constrained rows, by sequence, or why the allowed tokens
/// could not be computed.
type Grammars = Vec<(usize, Result<Box<Constraint>, String>)>;

/// What the reader and writers agree on about the connection.
#[derive(Default)]
struct Shared {
    /// The connection failed; nothing more will be answered.
    dead: bool,
    /// The iteration sent and not yet reported, when it was sent, and how long it may take.
    inflight: Option<(u64, Instant, Duration)>,
    /// That iteration's grammar states (the worker only gets the allowed tokens; the grammar
    /// advances here when the token comes back).
    grammars: Grammars,
}

/// Marks the connection dead; returns whether this call did (so the scheduler hears it once).
fn mark_dead(shared: &Mutex<Shared>) -> bool {
    match shared.lock() {
        Ok(mut s) => !std::mem::replace(&mut s.dead, true),
        Err(_) => false,
    }
}

/// How many times its predicted time an iteration may take beyond the fixed deadline: the
/// prediction comes from a cost model that may be fitted to a faster weight format or an idle
/// machine (docs/fidelity.md measured it up to 3× off), and a slow iteration is not a dead worker.
const PREDICTION_MARGIN: f64 = 10.0;

/// Starts the threads that drive worker `c` as instance `i`; an iteration not reported within
/// `deadline` plus [`PREDICTION_MARGIN`] times its predicted time declares the worker down.
pub(crate) fn spawn_remote(
    i: usize,
    c: Connected,
    out: Sender<Input>,
    counters: Arc<LinkCounters>,
    deadline: Duration,
) -> std::io::Result<InstanceThreads> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let closer = c.link.socket().try_clone()?;
    let (reader, writer) = c.link.split();
    let writer = Arc::new(Mutex::new(writer));
    let reader = BufReader::new(reader);
    let (run_tx, run_rx) = mpsc::channel::<RunJob>();
    let (link_tx, link_rx) = mpsc::channel::<LinkJob>();
    let addr = c.addr;

    let run = {
        let (shared, writer, out) = (shared.clone(), writer.clone(), out.clone());
        std::thread::Builder::new()
            .name(format!("accellm-remote{i}"))
            .spawn(move || {
                for job in run_rx {
                    let iteration = job.iteration;
                    let allowed = deadline
                        + Duration::from_secs_f64(
                            PREDICTION_MARGIN * job.predicted_s.clamp(0.0, 1e6),
                        );
                    let (msg, grammars) = run_msg(job);
                    match shared.lock() {
                        Ok(mut s) if !s.dead => {
                            s.inflight = Some((iteration, Instant::now(), allowed));
                            s.grammars = grammars;
                        }
                        _ => continue,
                    }
                    let sent = writer
                        .lock()
                        .ok()
                        .is_some_and(|mut w| wire::write_msg(&mut *w, &msg).is_ok());
                    if !sent && mark_dead(&shared) {
                        let _ = out.send(Input::InstanceDown(i));
                    }
                }
            })?
    };
    let link = {
        let (shared, writer, out) = (shared.clone(), writer.clone(), out.clone());
        std::thread::Builder::new()
            .name(format!("accellm-rlink{i}"))
            .spawn(move || {
                for job in link_rx {
                    let LinkJob::Transfer { id, to, spans } = job else {
                        continue;
                    };
                    let msg = Msg::Transfer {
                        id,
                        to,
                        spans: wire::to_wire(&spans),
                    };
                    if shared.lock().map_or(true, |s| s.dead) {
                        // The core abandoned transfers from a failed instance.
                        continue;
                    }
                    let sent = writer
                        .lock()
                        .ok()
                        .is_some_and(|mut w| wire::write_msg(&mut *w, &msg).is_ok());
                    if !sent && mark_dead(&shared) {
                        let _ = out.send(Input::InstanceDown(i));
                    }
                }
            })?
    };
    let watchdog = {
        let (shared, closer) = (shared.clone(), closer.try_clone()?);
        std::thread::Builder::new()
            .name(format!("accellm-watch{i}"))
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                let Ok(s) = shared.lock() else { return };
                if s.dead {
                    return;
                }
                if s.inflight
                    .is_some_and(|(_, t, allowed)| t.elapsed() > allowed)
                {
                    drop(s);
                    tracing::error!(instance = i, "iteration not reported within the deadline");
                    // The reader then fails and declares the worker down.
                    let _ = closer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            })?
    };
    let why = format!("worker {addr} (instance {i}) lost");
    let read = std::thread::Builder::new()
        .name(format!("accellm-rread{i}"))
        .spawn(move || read_loop(i, reader, &shared, &out, &counters, &why))?;
    Ok(InstanceThreads {
        run: run_tx,
        link: link_tx,
        joins: vec![run, link, read, watchdog],
        conn: Some(closer),
    })
}

/// The `Run` message of a job, and the grammar states it leaves behind on the front.
fn run_msg(job: RunJob) -> (Msg, Grammars) {
    let mut grammars = Vec::new();
    let samples = job
        .samples
        .into_iter()
        .map(|s| {
            let allowed = s.constraint.map(|mut c| {
                let bits = c.allowed();
                let bits = match bits {
                    Ok(b) => Some(b),
                    Err(e) => {
                        grammars.push((s.seq, Err(e.to_string())));
                        return None;
                    }
                };
                grammars.push((s.seq, Ok(c)));
                bits
            });
            WireSample {
                seq: s.seq,
                sampler: *s.sampler,
                mask_eos: s.mask_eos,
                logprobs: s.logprobs,
                allowed: allowed.flatten(),
            }
        })
        .collect();
    let msg = Msg::Run {
        iteration: job.iteration,
        seqs: job
            .batch
            .seqs
            .into_iter()
            .map(|s| WireSeq {
                tokens: s.tokens,
                start_pos: s.start_pos,
                block_table: s.block_table,
                want_logits: s.want_logits,
            })
            .collect(),
        samples,
        prompt_rows: job
            .prompt_rows
            .iter()
            .map(|r| WirePromptRow {
                seq: r.seq,
                target: r.target,
                top: r.top,
            })
            .collect(),
        copies: job
            .copies
            .into_iter()
            .map(|c| (c.to, wire::to_wire(&c.spans)))
            .collect(),
    };
    (msg, grammars)
}

/// A sampled row as the executor expects it: a constrained row's grammar advances past the
/// token here.
fn sampled(w: wire::WireSampled, grammars: &mut Grammars) -> Sampled {
    let mut out = Sampled {
        seq: w.seq,
        token: w.token,
        sampler: Box::new(w.sampler),
        logprob: w.logprob.map(|l| Box::new(l.into())),
        constraint: None,
        grammar_done: false,
        error: None,
    };
    if let Some(k) = grammars.iter().position(|(q, _)| *q == w.seq) {
        match grammars.swap_remove(k).1 {
            Ok(mut c) => {
                match c.commit(w.token) {
                    Ok(done) => out.grammar_done = done,
                    Err(e) => out.error = Some(e.to_string()),
                }
                out.constraint = Some(c);
            }
            Err(e) => out.error = Some(e),
        }
    }
    out
}

fn read_loop(
    i: usize,
    mut reader: BufReader<LinkReader>,
    shared: &Mutex<Shared>,
    out: &Sender<Input>,
    counters: &LinkCounters,
    why: &str,
) {
    loop {
        match wire::read_msg(&mut reader) {
            Ok(Msg::Report {
                iteration,
                tokens,
                prompt_logprobs,
                error,
                copy_error,
                elapsed_s,
                copied_bytes,
            }) => {
                let mut grammars = Vec::new();
                if let Ok(mut s) = shared.lock() {
                    s.inflight = None;
                    grammars = std::mem::take(&mut s.grammars);
                }
                counters
                    .replica_bytes
                    .fetch_add(copied_bytes, Ordering::Relaxed);
                let report = RunReport {
                    instance: i,
                    iteration,
                    tokens: tokens
                        .into_iter()
                        .map(|t| sampled(t, &mut grammars))
                        .collect(),
                    prompt_logprobs: prompt_logprobs.into_iter().map(Into::into).collect(),
                    error,
                    copy_error,
                    elapsed_s,
                };
                if out.send(Input::Worker(Box::new(report))).is_err() {
                    return;
                }
            }
            Ok(Msg::TransferDone { id, error, bytes }) => {
                counters.transfer_bytes.fetch_add(bytes, Ordering::Relaxed);
                if out.send(Input::TransferDone { id, error }).is_err() {
                    return;
                }
            }
            Ok(m) => tracing::warn!(instance = i, "unexpected message from worker: {m:?}"),
            Err(e) => {
                if mark_dead(shared) {
                    tracing::error!(instance = i, error = %e, "{why}");
                    let _ = out.send(Input::InstanceDown(i));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;

    #[test]
    fn peers_reach_kv_links_on_the_kv_port_when_there_is_one() {
        let addrs = ["w-0.svc:7001".to_string(), "[::1]:7001".to_string()];
        assert_eq!(peer_addrs(&addrs, None), addrs);
        assert_eq!(
            peer_addrs(&addrs, Some(7002)),
            ["w-0.svc:7002", "[::1]:7002"]
        );
    }

    /// A fake worker on `listener` that welcomes every front's hello (and shrugs off probes).
    fn fake_worker(listener: std::net::TcpListener, model: ModelId) {
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let model = model.clone();
                std::thread::spawn(move || {
                    if let Ok(Msg::Hello { .. }) = wire::read_msg(&mut s) {
                        let welcome = Msg::Welcome {
                            version: wire::version(),
                            model,
                            geometry: Geometry {
                                layers: 1,
                                kv_bytes_per_token: 8,
                                context_length: 64,
                                kv_blocks: 8,
                                block_size: 16,
                            },
                        };
                        let _ = wire::write_msg(&mut s, &welcome);
                        std::thread::sleep(Duration::from_secs(30));
                    }
                });
            }
        });
    }

    fn reconnect(addr: &str, model: &ModelId, out: Sender<Input>) -> Reconnect {
        Reconnect {
            addrs: vec![addr.to_string()],
            model: model.clone(),
            block_size: 16,
            kv_blocks: 8,
            eos: Vec::new(),
            tls: None,
            kv_port: None,
            out,
            counters: Default::default(),
            deadline: Duration::from_secs(30),
            stop: Default::default(),
        }
    }

    #[test]
    fn a_restarted_worker_is_taken_back_as_soon_as_it_answers() {
        let model = ModelId {
            name: "m.gguf".into(),
            bytes: 1,
            fingerprint: 2,
        };
        // The worker was killed: nothing listens on its address.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let (tx, rx) = mpsc::channel();
        let r = reconnect(&addr, &model, tx);
        r.start(0);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(rx.try_recv().is_err(), "nothing answered yet");
        // It restarts on the same address: back within a second or two.
        fake_worker(std::net::TcpListener::bind(&addr).expect("rebind"), model);
        let up = rx.recv_timeout(Duration::from_secs(3));
        assert!(
            matches!(up, Ok(Input::InstanceUp(0, _))),
            "not taken back within 3 s"
        );
    }
}
