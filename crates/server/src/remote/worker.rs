//! `accellm worker`: one engine instance in its own process — model weights, KV pool, forward
//! passes and the KV links to its peers.
//!
//! Every accepted connection starts with a hello. A **front** (`Msg::Hello`) gets a session: a
//! reader thread takes `Run` and `Transfer` messages, a compute thread runs iterations exactly as
//! an in-process instance does ([`crate::worker::run_one`]), and a link thread sends each layer's
//! new KV straight to the partner worker while later layers compute, then flushes and waits for
//! the partner's ack before the iteration is reported. A **peer** (`Msg::PeerHello`) gets a
//! receiver that writes KV frames into this worker's pool and acks flushes.
//!
//! With `--tls-cert/--tls-key/--tls-ca` every connection, in and out, is mutual TLS with the
//! cluster CA ([`super::tls`]): a peer without a certificate the CA signed is dropped during the
//! TLS handshake, before its hello is read.
//!
//! **Same host.** Every worker also takes KV links on a Unix socket in a directory of its own
//! (mode 0700, so only its user — who can read its TLS key anyway — can connect) and names it
//! in its [`Msg::PeerWelcome`]. A worker opening a KV link to a peer on a loopback address
//! (`--kv-local auto`), or to any peer whose socket it can reach (`always`), moves the link to
//! that socket after the TCP (and TLS) handshake: no TCP stack, no encryption.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accellm_engine::{f16, ForwardBatch, KvPool, KvSpan, Model, SeqInput, Threads, WeightFormat};
use anyhow::Context as _;

use super::tls::{self, LinkReader, LinkWriter, Tls, TlsArgs};
use super::wire::{
    self, Frame, Geometry, KvWire, ModelId, Msg, WireError, WireLogprob, WireSampled,
};
use crate::worker::{run_one, CopyPlan, LinkJob, PromptRow, RunJob, SampleJob};

/// Arguments of `accellm worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Address to accept the front and peer workers on (e.g. 0.0.0.0:7001); with
    /// `--kv-listen`, the front only.
    #[arg(long)]
    pub listen: String,
    /// Accept peer workers' KV links on this address instead (e.g. 0.0.0.0:7002), so that a
    /// network policy can let only fronts reach `--listen` and only workers reach this port;
    /// the front then names the port with `--worker-kv-port`.
    #[arg(long)]
    pub kv_listen: Option<String>,
    /// GGUF model file [default: SmolLM2-135M-Instruct Q4_1, fetched into ~/.cache/accellm/models].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight format after loading: int8, q8-padded, blocks, native, f32 [default: as `serve`,
    /// the format this CPU runs fastest].
    #[arg(long)]
    pub weight_format: Option<WeightFormat>,
    /// Threads of this instance.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// KV blocks in this worker's pool (the front must use the same number).
    #[arg(long, default_value_t = 1024)]
    pub kv_blocks: u32,
    /// Tokens per KV block (the front must use the same).
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Mutual TLS with the cluster CA on every connection, in and out.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Allow listening on a non-loopback address without TLS (logged loudly at start): any
    /// peer that reaches the port can then drive this worker and read or write its KV.
    #[arg(long)]
    pub insecure: bool,
    /// KV values on links to and from peers: f32 sends the pool's values bit for bit (a
    /// replica then decodes exactly as the original); f16 halves the bytes, rounded to half
    /// precision. A link carries f16 only when both its workers ask for it.
    #[arg(long, value_enum, default_value_t = KvWire::default())]
    pub kv_wire: KvWire,
    /// KV links to peers on this host over a Unix socket: `auto` for peers on loopback
    /// addresses, `always` for any peer whose socket this worker can reach, `never`.
    #[arg(long, value_enum, default_value_t = KvLocal::Auto)]
    pub kv_local: KvLocal,
}

/// `--kv-local`: when a KV link moves to the peer's Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvLocal {
    /// Peers on loopback addresses.
    Auto,
    /// Any peer whose socket is reachable (workers of one host on non-loopback addresses).
    Always,
    /// Never: every link stays on TCP (this worker also opens no socket).
    Never,
}

/// What every session of this worker shares.
struct WorkerState {
    model: Arc<Model>,
    pools: Arc<Vec<KvPool>>,
    id: ModelId,
    geometry: Geometry,
    threads: usize,
    /// Mutual TLS on every link, when configured.
    tls: Option<Arc<Tls>>,
    /// The KV value type this worker sends and accepts.
    kv_wire: KvWire,
    /// When links to peers move to their Unix socket.
    kv_local: KvLocal,
    /// This worker's Unix socket for KV links from its host.
    local: Option<String>,
}

/// Runs `accellm worker` until killed.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    accellm_engine::inline_candle_matmuls()?;
    // Security first: a worker that would start open to the network, or with TLS material it
    // cannot use, fails before loading anything.
    let tls = match args.tls.files()? {
        Some(files) => Some(Arc::new(Tls::load(&files)?)),
        None => {
            tls::check_plaintext_listen(&args.listen, args.insecure)?;
            if let Some(kv) = &args.kv_listen {
                tls::check_plaintext_listen(kv, args.insecure)?;
            }
            None
        }
    };
    // Bind first: a busy port fails at once, not after loading the model.
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let kv_listener = match &args.kv_listen {
        Some(a) => Some(TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))?),
        None => None,
    };
    let local = match args.kv_local {
        KvLocal::Never => None,
        _ => Some(bind_local().context("cannot open the KV Unix socket")?),
    };
    let path = match &args.model {
        Some(p) => p.clone(),
        None => accellm_tokenizer::ensure_default_model()
            .context("cannot obtain the default model (pass --model FILE.gguf)")?,
    };
    let model = Model::load(&path, args.weight_format.unwrap_or_default())
        .with_context(|| format!("loading model {}", path.display()))?;
    model.check_servable()?;
    let mc = model.config().clone();
    let pool = KvPool::new(&mc, args.kv_blocks as usize, args.block_size as usize)
        .context("allocating the KV pool")?;
    let state = Arc::new(WorkerState {
        model: Arc::new(model),
        pools: Arc::new(vec![pool]),
        id: ModelId::of(&path).with_context(|| format!("reading {}", path.display()))?,
        geometry: Geometry {
            layers: mc.layers as u32,
            kv_bytes_per_token: mc.kv_bytes_per_token as u64,
            context_length: mc.context_length as u32,
            kv_blocks: args.kv_blocks,
            block_size: args.block_size,
        },
        threads: args.threads,
        tls,
        kv_wire: args.kv_wire,
        kv_local: args.kv_local,
        local: local.as_ref().map(|(_, p)| p.display().to_string()),
    });
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        model = %path.display(),
        kv_blocks = args.kv_blocks,
        tls = state.tls.is_some(),
        "worker ready"
    );
    let accepts = match kv_listener {
        Some(kv) => {
            let kv_addr = kv.local_addr()?;
            tracing::info!(%kv_addr, "KV links on their own port");
            eprintln!("accellm worker: KV links from peers on {kv_addr}");
            let state = state.clone();
            std::thread::Builder::new()
                .name("accellm-kv-accept".into())
                .spawn(move || accept_loop(&kv, &state, Accepts::Peers))?;
            Accepts::Fronts
        }
        None => Accepts::Both,
    };
    if let Some((l, path)) = local {
        tracing::info!(path = %path.display(), "KV links from this host on a Unix socket");
        let state = state.clone();
        std::thread::Builder::new()
            .name("accellm-kv-local".into())
            .spawn(move || local_accept_loop(&l, &state))?;
    }
    eprintln!("accellm worker: listening on {addr}");
    accept_loop(&listener, &state, accepts);
    Ok(())
}

/// Binds this worker's Unix socket for same-host KV links, in a new directory only this user
/// can enter (created with mode 0700; creation fails rather than reuse a directory someone
/// else made), named by the process id and a random number so that workers of one host, in
/// any network namespace, never collide.
fn bind_local() -> std::io::Result<(UnixListener, PathBuf)> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let dir = base.join(format!(
        "accellm-kv-{}-{:016x}",
        std::process::id(),
        h.finish()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("kv.sock");
    let listener = UnixListener::bind(&path)?;
    remove_stale_sockets(&base, &dir);
    Ok((listener, path))
}

/// Removes the socket directories that workers killed earlier left in `base` (a worker runs
/// until killed, so it never removes its own): those of this user whose socket refuses
/// connections, i.e. nothing listens on it any more.
fn remove_stale_sockets(base: &Path, mine: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(mine).map(|m| m.uid()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for dir in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("accellm-kv-"))
            && dir != mine
            && std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let dead = || {
            matches!(
                UnixStream::connect(dir.join("kv.sock")),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        };
        if ours && dead() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Serves peers' KV links on this worker's Unix socket (no TLS: see the module doc).
fn local_accept_loop(listener: &UnixListener, state: &Arc<WorkerState>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let state = state.clone();
        let _ = std::thread::Builder::new()
            .name("accellm-conn".into())
            .spawn(move || {
                let session = tls::unix(&stream)
                    .map_err(WireError::from)
                    .and_then(|(r, w)| hello(&state, BufReader::new(r), w, Accepts::Peers));
                if let Err(e) = session {
                    tracing::info!(error = %e, "local connection ended");
                }
            });
    }
}

/// Which hellos a listening port takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepts {
    /// Fronts and peer workers (no `--kv-listen`).
    Both,
    /// Fronts only (`--listen` beside a `--kv-listen`).
    Fronts,
    /// Peer workers' KV links only (`--kv-listen`).
    Peers,
}

/// Serves every connection to `listener` on a thread of its own.
fn accept_loop(listener: &TcpListener, state: &Arc<WorkerState>, accepts: Accepts) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let state = state.clone();
        let _ = std::thread::Builder::new()
            .name("accellm-conn".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Err(e) = connection(&state, stream, accepts) {
                    tracing::info!(%peer, error = %e, "connection ended");
                }
            });
    }
}

/// Why a hello is refused, if it is.
fn check_hello(state: &WorkerState, version: &str, model: &ModelId) -> Option<String> {
    if version != wire::version() {
        return Some(format!(
            "version mismatch: worker runs `{}`, peer runs `{version}`",
            wire::version()
        ));
    }
    if *model != state.id {
        return Some(format!(
            "model mismatch: worker serves {} ({} bytes, fingerprint {:016x}), peer expects {} ({} bytes, fingerprint {:016x})",
            state.id.name, state.id.bytes, state.id.fingerprint, model.name, model.bytes, model.fingerprint
        ));
    }
    None
}

fn connection(
    state: &Arc<WorkerState>,
    stream: TcpStream,
    accepts: Accepts,
) -> Result<(), WireError> {
    stream.set_nodelay(true)?;
    // With TLS, a peer the cluster CA did not vouch for ends here.
    let (reader, writer) = tls::accept(stream, state.tls.as_deref())?.split();
    hello(state, BufReader::new(reader), writer, accepts)
}

/// Reads a connection's hello and serves it.
fn hello(
    state: &Arc<WorkerState>,
    mut reader: BufReader<LinkReader>,
    mut writer: LinkWriter,
    accepts: Accepts,
) -> Result<(), WireError> {
    match wire::read_msg(&mut reader)? {
        Msg::Hello {
            version,
            model,
            block_size,
            kv_blocks,
            instance,
            peers,
            eos,
        } => {
            let g = state.geometry;
            let wrong_port = (accepts == Accepts::Peers).then(|| {
                "this is the worker's KV port (--kv-listen): fronts connect to its --listen address"
                    .to_string()
            });
            let refusal = wrong_port.or_else(|| check_hello(state, &version, &model)).or_else(|| {
                (block_size != g.block_size || kv_blocks > g.kv_blocks).then(|| {
                    format!(
                        "KV geometry mismatch: worker has {} blocks of {} tokens, front schedules {kv_blocks} blocks of {block_size}",
                        g.kv_blocks, g.block_size
                    )
                })
            });
            if let Some(reason) = refusal {
                tracing::warn!(%reason, "front refused");
                wire::write_msg(&mut writer, &Msg::Refused { reason })?;
                return Ok(());
            }
            wire::write_msg(
                &mut writer,
                &Msg::Welcome {
                    version: wire::version(),
                    model: state.id.clone(),
                    geometry: g,
                },
            )?;
            tracing::info!(instance, peers = ?peers, "front connected");
            front_session(state, reader, writer, instance, peers, eos)
        }
        Msg::PeerHello {
            version,
            model,
            from,
            kv_wire,
        } => {
            let wrong_port = (accepts == Accepts::Fronts).then(|| {
                "KV links go to this worker's --kv-listen port (the front's --worker-kv-port)"
                    .to_string()
            });
            if let Some(reason) = wrong_port.or_else(|| check_hello(state, &version, &model)) {
                wire::write_msg(&mut writer, &Msg::Refused { reason })?;
                return Ok(());
            }
            let kv_wire = kv_wire.agree(state.kv_wire);
            wire::write_msg(
                &mut writer,
                &Msg::PeerWelcome {
                    version: wire::version(),
                    kv_wire,
                    local: state.local.clone(),
                },
            )?;
            tracing::debug!(from, %kv_wire, "peer link opened");
            serve_kv_link(&state.pools[0], kv_wire, reader, writer)
        }
        other => Err(WireError::Frame(format!("expected a hello, got {other:?}"))),
    }
}

/// The receiving end of a worker-to-worker KV link after its handshake: writes every KV frame
/// of the agreed value type `kv_wire` into `pool`, widened to its `f32` (a frame naming slots
/// outside the pool, or of the other type, is refused and reported at the next flush), answers
/// each flush with an ack, and returns on the first frame that is not one of these or when the
/// connection ends.
pub fn serve_kv_link(
    pool: &KvPool,
    kv_wire: KvWire,
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<(), WireError> {
    let mut error: Option<String> = None;
    loop {
        match wire::read_frame(&mut reader)? {
            Frame::Kv(k) if k.data.wire() != kv_wire => {
                error.get_or_insert(format!(
                    "a KV frame in {} on a link agreed on {kv_wire}",
                    k.data.wire()
                ));
            }
            Frame::Kv(k) => {
                if let Err(e) = k.write_into(pool) {
                    error.get_or_insert(e.to_string());
                }
            }
            Frame::Msg(Msg::Flush { seq }) => {
                let error = error.take();
                wire::write_msg(&mut writer, &Msg::Ack { seq, error })?;
            }
            Frame::Msg(m) => {
                return Err(WireError::Frame(format!("unexpected {m:?} on a KV link")))
            }
        }
    }
}

/// Serves one front until it disconnects.
fn front_session(
    state: &Arc<WorkerState>,
    mut reader: BufReader<LinkReader>,
    writer: LinkWriter,
    instance: usize,
    peers: Vec<String>,
    eos: Vec<u32>,
) -> Result<(), WireError> {
    let writer = Arc::new(Mutex::new(writer));
    let copied = Arc::new(AtomicU64::new(0));
    let (link_tx, link_rx) = mpsc::channel::<LinkJob>();
    let (run_tx, run_rx) = mpsc::channel::<RunJob>();
    {
        let (state, writer, copied) = (state.clone(), writer.clone(), copied.clone());
        std::thread::Builder::new()
            .name("accellm-link".into())
            .spawn(move || link_loop(&state, instance, &peers, link_rx, &writer, &copied))?;
    }
    {
        let (state, writer, link) = (state.clone(), writer.clone(), link_tx.clone());
        let threads = Threads::new(state.threads, &format!("accellm-w{instance}"))
            .map_err(|e| WireError::Frame(format!("cannot start threads: {e}")))?;
        std::thread::Builder::new()
            .name("accellm-compute".into())
            .spawn(move || {
                for job in run_rx {
                    let r = run_one(0, &state.model, &state.pools, &threads, &eos, &link, job);
                    let msg = Msg::Report {
                        iteration: r.iteration,
                        tokens: r
                            .tokens
                            .into_iter()
                            .map(|t| WireSampled {
                                seq: t.seq,
                                token: t.token,
                                sampler: *t.sampler,
                                logprob: t.logprob.as_deref().map(WireLogprob::from),
                            })
                            .collect(),
                        prompt_logprobs: r.prompt_logprobs.iter().map(WireLogprob::from).collect(),
                        error: r.error,
                        copy_error: r.copy_error,
                        elapsed_s: r.elapsed_s,
                        copied_bytes: copied.swap(0, Ordering::Relaxed),
                    };
                    let sent = writer
                        .lock()
                        .map_err(|_| WireError::Frame("poisoned".into()))
                        .and_then(|mut w| wire::write_msg(&mut *w, &msg));
                    if sent.is_err() {
                        break;
                    }
                }
            })?;
    }
    loop {
        match wire::read_msg(&mut reader)? {
            Msg::Run {
                iteration,
                seqs,
                samples,
                prompt_rows,
                copies,
            } => {
                let job = RunJob {
                    iteration,
                    batch: ForwardBatch {
                        seqs: seqs
                            .into_iter()
                            .map(|s| SeqInput {
                                tokens: s.tokens,
                                start_pos: s.start_pos,
                                block_table: s.block_table,
                                want_logits: s.want_logits,
                            })
                            .collect(),
                    },
                    samples: samples
                        .into_iter()
                        .map(|s| SampleJob {
                            seq: s.seq,
                            sampler: Box::new(s.sampler),
                            mask_eos: s.mask_eos,
                            logprobs: s.logprobs,
                            constraint: None,
                            allowed: s.allowed,
                        })
                        .collect(),
                    prompt_rows: prompt_rows
                        .into_iter()
                        .map(|r| PromptRow {
                            seq: r.seq,
                            target: r.target,
                            top: r.top,
                        })
                        .collect(),
                    copies: copies
                        .into_iter()
                        .map(|(to, spans)| CopyPlan {
                            to,
                            spans: Arc::new(wire::from_wire(&spans)),
                        })
                        .collect(),
                    // The front keeps the deadline.
                    predicted_s: 0.0,
                    // Iterations on a remote worker never borrow a partner's cores.
                    wide: false,
                };
                if run_tx.send(job).is_err() {
                    return Err(WireError::Frame("compute thread stopped".into()));
                }
            }
            Msg::Transfer { id, to, spans } => {
                let spans = wire::from_wire(&spans);
                if link_tx.send(LinkJob::Transfer { id, to, spans }).is_err() {
                    return Err(WireError::Frame("link thread stopped".into()));
                }
            }
            other => {
                return Err(WireError::Frame(format!(
                    "unexpected {other:?} from the front"
                )))
            }
        }
    }
}

/// Send buffer asked for on a Unix-socket KV link (see [`PeerLink::open_local`]).
const LOCAL_SEND_BUFFER: usize = 4 << 20;

/// An open KV link to one peer worker.
struct PeerLink {
    writer: LinkWriter,
    reader: BufReader<LinkReader>,
    next_flush: u64,
    /// The value type agreed.
    kv_wire: KvWire,
    /// `tcp` or `unix`.
    transport: &'static str,
}

impl PeerLink {
    /// Opens a KV link to the peer at `addr`, moved to its Unix socket when `--kv-local` says
    /// so and the socket answers (else it stays on TCP).
    fn open(state: &WorkerState, from: usize, addr: &str) -> Result<Self, WireError> {
        let (link, local) = Self::open_tcp(state, from, addr)?;
        let wanted = match state.kv_local {
            KvLocal::Never => false,
            KvLocal::Auto => tls::is_loopback(addr),
            KvLocal::Always => true,
        };
        let link = match local.filter(|_| wanted) {
            None => link,
            Some(path) => match Self::open_local(state, from, Path::new(&path)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(peer = %addr, %path, error = %e, "the peer's Unix socket failed: KV stays on TCP");
                    link
                }
            },
        };
        tracing::info!(peer = %addr, transport = link.transport, kv_wire = %link.kv_wire, "KV link open");
        Ok(link)
    }

    /// Says hello on an open link; returns it and the peer's Unix socket.
    fn handshake(
        state: &WorkerState,
        from: usize,
        reader: LinkReader,
        mut writer: LinkWriter,
        peer: &str,
    ) -> Result<(Self, Option<String>), WireError> {
        let mut reader = BufReader::new(reader);
        wire::write_msg(
            &mut writer,
            &Msg::PeerHello {
                version: wire::version(),
                model: state.id.clone(),
                from,
                kv_wire: state.kv_wire,
            },
        )?;
        match wire::read_msg(&mut reader)? {
            Msg::PeerWelcome { kv_wire, local, .. } => Ok((
                Self {
                    writer,
                    reader,
                    next_flush: 0,
                    kv_wire: kv_wire.agree(state.kv_wire),
                    transport: "tcp",
                },
                local,
            )),
            Msg::Refused { reason } => {
                Err(WireError::Frame(format!("peer {peer} refused: {reason}")))
            }
            m => Err(WireError::Frame(format!("peer {peer} answered {m:?}"))),
        }
    }

    fn open_local(state: &WorkerState, from: usize, path: &Path) -> Result<Self, WireError> {
        let socket = UnixStream::connect(path)?;
        // A Unix socket's send buffer is `net.core.wmem_default` (about 200 KB), where loopback
        // TCP grows to megabytes: a layer of KV then crosses in dozens of hand-offs between
        // the two processes, each waiting for the receiver to be scheduled — on a busy host,
        // slower than TCP. Ask for a whole layer's worth (the kernel caps it at wmem_max).
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(LOCAL_SEND_BUFFER);
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        socket.set_write_timeout(Some(Duration::from_secs(10)))?;
        let (reader, writer) = tls::unix(&socket)?;
        let (link, _) = Self::handshake(state, from, reader, writer, &path.display().to_string())?;
        Ok(Self {
            transport: "unix",
            ..link
        })
    }

    fn open_tcp(
        state: &WorkerState,
        from: usize,
        addr: &str,
    ) -> Result<(Self, Option<String>), WireError> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| WireError::Frame(format!("{addr} resolves to no address")))?;
        let socket = TcpStream::connect_timeout(&sock, Duration::from_secs(10))?;
        socket.set_nodelay(true)?;
        // A partitioned peer must not hang this worker's iterations forever: neither waiting
        // for an ack nor writing a layer once the socket's send buffer is full (without the
        // write timeout, a partition during a prefill's copy blocked here for TCP's whole
        // retransmission time).
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        socket.set_write_timeout(Some(Duration::from_secs(10)))?;
        // A link dropped after a failed copy resets at once and discards what it had not sent:
        // otherwise the kernel would go on retransmitting it, and once a partition heals, stale
        // KV would land in the peer's blocks, reused since the core dropped that replica.
        socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        // With TLS, a peer whose certificate the cluster CA did not sign gets no KV.
        let (reader, writer) = tls::connect(socket, state.tls.as_deref(), addr)
            .map_err(|e| WireError::Frame(format!("TLS with peer {addr}: {e}")))?
            .split();
        Self::handshake(state, from, reader, writer, addr)
    }

    /// Sends layer `layer` of `spans` from `pool` in the agreed value type; returns the bytes.
    fn send(&mut self, pool: &KvPool, layer: usize, spans: &[KvSpan]) -> Result<u64, WireError> {
        let bad = |e: accellm_engine::EngineError| WireError::Frame(e.to_string());
        let n = match self.kv_wire {
            KvWire::F32 => {
                let data = pool.read_spans::<f32>(layer, spans).map_err(bad)?;
                wire::write_kv(&mut self.writer, layer as u32, spans, &data)?;
                data.len()
            }
            KvWire::F16 => {
                let data = pool.read_spans::<f16>(layer, spans).map_err(bad)?;
                wire::write_kv(&mut self.writer, layer as u32, spans, &data)?;
                data.len()
            }
        };
        Ok((n * self.kv_wire.value_bytes()) as u64)
    }

    /// Waits until everything sent so far is in the peer's pool.
    fn flush(&mut self) -> Result<(), WireError> {
        self.next_flush += 1;
        let seq = self.next_flush;
        wire::write_msg(&mut self.writer, &Msg::Flush { seq })?;
        match wire::read_msg(&mut self.reader)? {
            Msg::Ack {
                seq: s,
                error: None,
            } if s == seq => Ok(()),
            Msg::Ack { error: Some(e), .. } => {
                Err(WireError::Frame(format!("peer failed to store KV: {e}")))
            }
            m => Err(WireError::Frame(format!("expected ack {seq}, got {m:?}"))),
        }
    }
}

/// Sends this worker's KV to peers: one frame per layer and destination as the forward pass
/// finishes the layer; a barrier flushes every link used since the last one.
fn link_loop(
    state: &WorkerState,
    instance: usize,
    peers: &[String],
    rx: Receiver<LinkJob>,
    front: &Mutex<LinkWriter>,
    copied: &AtomicU64,
) {
    let pool = &state.pools[0];
    let mut links: HashMap<usize, PeerLink> = HashMap::new();
    let mut touched: Vec<usize> = Vec::new();
    let mut first_error: Option<String> = None;
    // Destinations whose copy failed in the current iteration: their remaining layers are
    // skipped (each would otherwise retry the connection and wait out its timeout again).
    let mut failed: Vec<usize> = Vec::new();
    // The current iteration's copies: when the first layer was sent and the bytes sent; and the
    // last layer's own copy (bytes, and ms from its send to the partner's ack).
    let mut batch: Option<(std::time::Instant, u64)> = None;
    let mut last_layer: Option<(u64, f64)> = None;
    let send = |links: &mut HashMap<usize, PeerLink>,
                to: usize,
                layer: usize,
                spans: &[accellm_engine::KvSpan]|
     -> Result<u64, WireError> {
        let link = match links.entry(to) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let addr = peers
                    .get(to)
                    .ok_or_else(|| WireError::Frame(format!("no address for instance {to}")))?;
                v.insert(PeerLink::open(state, instance, addr)?)
            }
        };
        link.send(pool, layer, spans)
    };
    for job in rx {
        match job {
            LinkJob::Layer { to, layer, spans } => {
                if failed.contains(&to) {
                    continue;
                }
                if !touched.contains(&to) {
                    touched.push(to);
                }
                let now = std::time::Instant::now();
                let started = batch.get_or_insert((now, 0));
                match send(&mut links, to, layer, &spans) {
                    Ok(b) => {
                        started.1 += b;
                        copied.fetch_add(b, Ordering::Relaxed);
                        if layer + 1 == pool.num_layers() {
                            // Flush the last layer at once: the ack times its copy alone (the
                            // earlier layers went while later ones computed), which is what
                            // docs/distributed.md compares with the link model; the barrier
                            // then has nothing left to wait for on this link.
                            let flushed = links.get_mut(&to).map(PeerLink::flush);
                            match flushed {
                                Some(Err(e)) => {
                                    links.remove(&to);
                                    failed.push(to);
                                    first_error.get_or_insert(e.to_string());
                                }
                                _ => {
                                    last_layer = Some((b, now.elapsed().as_secs_f64() * 1e3));
                                    touched.retain(|&t| t != to);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        links.remove(&to);
                        failed.push(to);
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            LinkJob::Barrier(reply) => {
                failed.clear();
                for to in touched.drain(..) {
                    if let Some(link) = links.get_mut(&to) {
                        if let Err(e) = link.flush() {
                            links.remove(&to);
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                if let Some((t, bytes)) = batch.take() {
                    // First layer sent to the partner's ack (overlapped with the forward pass),
                    // and the last layer's own copy time, sent to ack: what
                    // docs/distributed.md compares with the simulator's link model.
                    let (last_bytes, tail_ms) = last_layer.take().unwrap_or((0, 0.0));
                    tracing::info!(
                        bytes,
                        ms = t.elapsed().as_secs_f64() * 1e3,
                        last_layer_bytes = last_bytes,
                        last_layer_ms = tail_ms,
                        "replica copy"
                    );
                }
                let _ = reply.send(first_error.take());
            }
            LinkJob::Transfer { id, to, spans } => {
                let mut bytes = 0;
                let mut error = None;
                for layer in 0..pool.num_layers() {
                    match send(&mut links, to, layer, &spans) {
                        Ok(b) => bytes += b,
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    }
                }
                if error.is_none() {
                    if let Some(link) = links.get_mut(&to) {
                        error = link.flush().err().map(|e| e.to_string());
                    }
                }
                if error.is_some() {
                    links.remove(&to);
                }
                let msg = Msg::TransferDone { id, error, bytes };
                let ok = front
                    .lock()
                    .map_err(|_| WireError::Frame("poisoned".into()))
                    .and_then(|mut w| wire::write_msg(&mut *w, &msg));
                if ok.is_err() {
                    break;
                }
            }
        }
    }
}
