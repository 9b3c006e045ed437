//! KV events as vLLM publishes them (`--kv-events-config`), so llm-d's precise prefix scorer can
//! index which prefixes a front caches.
//!
//! The core decides what is cached ([`accellm_core::kv_events`]); the scheduler thread drains its
//! events after each step, adds the token ids of the stored blocks, and hands them here as one
//! batch. A publisher thread encodes each batch as vLLM does (msgpack, structs as arrays,
//! events tagged by name) and sends it on a ZMQ PUB socket as three frames: the topic, an
//! 8-byte big-endian sequence number, the payload:
//!
//! ```text
//! [ts, [event, ...]]
//! ["BlockStored", [hash, ...], parent_hash | nil, [token_id, ...], block_size, nil, "GPU", nil]
//! ["BlockRemoved", [hash, ...], "GPU"]
//! ["AllBlocksCleared"]
//! ```
//!
//! Hashes are the core's 64-bit chain keys: a block's key covers its tokens and every token
//! before it, so a subscriber that maps them to its own keys through the token ids (as llm-d
//! does) sees one consistent chain. Like vLLM's, the endpoint is bound when it has a wildcard
//! host (`tcp://*:5557`) and connected to otherwise (a central subscriber that binds).
//!
//! The first batch (sequence 0) is an `AllBlocksCleared`: a subscriber that sees it knows the
//! front started with nothing cached. With `replay_endpoint`, a ROUTER socket keeps the latest
//! `buffer_steps` batches, as vLLM's does: a subscriber that finds a gap in the sequence sends
//! `[empty, 8-byte big-endian start]` (a REQ socket's envelope) and gets back every kept batch
//! from that sequence on as `[empty, sequence, payload]`, then `[empty, 0xFF × 8, empty]`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zeromq::{Socket as _, SocketRecv as _, SocketSend as _, ZmqMessage};

/// vLLM's `KVEventsConfig`, as `accellm serve --kv-events-config '<json>'` or `[kv_events]` in
/// the configuration file takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Publish KV events at all.
    pub enable_kv_cache_events: bool,
    /// `zmq` (the only transport), or `null` to publish nothing.
    pub publisher: String,
    /// ZMQ address: bound when its host is a wildcard (`tcp://*:5557`), connected to otherwise.
    pub endpoint: String,
    /// Topic frame of every message; empty for `kv@<pod>@<model>`, the form llm-d parses, with
    /// the pod from `POD_IP` (else `HOSTNAME`, else `localhost`).
    pub topic: String,
    /// ZMQ ROUTER address (always bound, `tcp://*:5558`) where a subscriber that missed
    /// batches asks for them again from a sequence number; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_endpoint: Option<String>,
    /// How many of the latest batches the replay socket keeps.
    pub buffer_steps: usize,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            enable_kv_cache_events: false,
            publisher: "zmq".into(),
            endpoint: "tcp://*:5557".into(),
            topic: String::new(),
            replay_endpoint: None,
            buffer_steps: 10_000,
        }
    }
}

impl KvEventsConfig {
    /// Whether events are published.
    pub fn enabled(&self) -> bool {
        self.enable_kv_cache_events && self.publisher != "null"
    }

    /// Checks the publisher name and the endpoint's form.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.publisher.as_str(), "zmq" | "null") {
            return Err(format!(
                "kv_events.publisher {:?}: only \"zmq\" and \"null\" are supported",
                self.publisher
            ));
        }
        if self.enabled() && !self.endpoint.starts_with("tcp://") {
            return Err(format!(
                "kv_events.endpoint {:?}: only tcp:// endpoints are supported",
                self.endpoint
            ));
        }
        if let Some(r) = self.replay_endpoint.as_deref().filter(|_| self.enabled()) {
            if !r.starts_with("tcp://") {
                return Err(format!(
                    "kv_events.replay_endpoint {r:?}: only tcp:// endpoints are supported"
                ));
            }
            if self.buffer_steps == 0 {
                return Err(
                    "kv_events.buffer_steps must be at least 1 with a replay_endpoint".into(),
                );
            }
        }
        Ok(())
    }

    /// The topic to publish under: the configured one, or `kv@<pod>@<model>`.
    pub fn topic_for(&self, model: &str) -> String {
        if !self.topic.is_empty() {
            return self.topic.clone();
        }
        let pod = ["POD_IP", "HOSTNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "localhost".into());
        format!("kv@{pod}@{model}")
    }
}

/// One event, with the token ids a subscriber needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireEvent {
    /// vLLM's `BlockStored`.
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        token_ids: Vec<u32>,
        block_size: u32,
    },
    /// vLLM's `BlockRemoved`.
    Removed { hashes: Vec<u64> },
    /// vLLM's `AllBlocksCleared`.
    AllCleared,
}

/// The events of one scheduler step, stamped with the wall clock.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    ts: f64,
    events: Vec<WireEvent>,
}

impl Batch {
    pub(crate) fn now(events: Vec<WireEvent>) -> Self {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self { ts, events }
    }

    /// vLLM's msgpack encoding of a `KVEventBatch` (array-like structs, tagged events).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, std::io::Error> {
        use rmp::encode::{write_array_len, write_f64, write_nil, write_str, write_uint};
        let mut b = Vec::with_capacity(64);
        write_array_len(&mut b, 2)?;
        write_f64(&mut b, self.ts)?;
        write_array_len(&mut b, self.events.len() as u32)?;
        for e in &self.events {
            match e {
                WireEvent::Stored {
                    hashes,
                    parent,
                    token_ids,
                    block_size,
                } => {
                    write_array_len(&mut b, 8)?;
                    write_str(&mut b, "BlockStored")?;
                    write_array_len(&mut b, hashes.len() as u32)?;
                    for &h in hashes {
                        write_uint(&mut b, h)?;
                    }
                    match parent {
                        Some(p) => write_uint(&mut b, *p).map(drop)?,
                        None => write_nil(&mut b)?,
                    }
                    write_array_len(&mut b, token_ids.len() as u32)?;
                    for &t in token_ids {
                        write_uint(&mut b, u64::from(t))?;
                    }
                    write_uint(&mut b, u64::from(*block_size))?;
                    write_nil(&mut b)?; // lora_id
                    write_str(&mut b, "GPU")?; // medium: the accelerator's KV pool
                    write_nil(&mut b)?; // lora_name
                }
                WireEvent::Removed { hashes } => {
                    write_array_len(&mut b, 3)?;
                    write_str(&mut b, "BlockRemoved")?;
                    write_array_len(&mut b, hashes.len() as u32)?;
                    for &h in hashes {
                        write_uint(&mut b, h)?;
                    }
                    write_str(&mut b, "GPU")?;
                }
                WireEvent::AllCleared => {
                    write_array_len(&mut b, 1)?;
                    write_str(&mut b, "AllBlocksCleared")?;
                }
            }
        }
        Ok(b)
    }
}

/// The sending side: batches go to the publisher thread, which stops when this is dropped.
pub(crate) struct Publisher {
    tx: tokio::sync::mpsc::UnboundedSender<Batch>,
}

impl Publisher {
    /// Hands a batch to the publisher thread (dropped if that thread is gone).
    pub(crate) fn publish(&self, batch: Batch) {
        if self.tx.send(batch).is_err() {
            tracing::warn!("KV event publisher stopped; events dropped");
        }
    }
}

/// The latest published batches, for replay.
#[derive(Debug)]
struct ReplayBuffer {
    batches: std::collections::VecDeque<(u64, Bytes)>,
    cap: usize,
}

impl ReplayBuffer {
    fn new(cap: usize) -> Self {
        Self {
            batches: std::collections::VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn push(&mut self, seq: u64, payload: Bytes) {
        if self.batches.len() == self.cap {
            self.batches.pop_front();
        }
        self.batches.push_back((seq, payload));
    }

    /// The kept batches from sequence `start` on.
    fn from(&self, start: u64) -> impl Iterator<Item = &(u64, Bytes)> {
        self.batches.iter().filter(move |(seq, _)| *seq >= start)
    }
}

/// The sequence number that ends a replay (vLLM's `-1` as 8 big-endian bytes).
const END_OF_REPLAY: [u8; 8] = [0xFF; 8];

/// The next replay request, or never without a replay socket.
async fn next_request(router: &mut Option<zeromq::RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match router {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Answers one replay request `[identity, empty, start]` with every kept batch from `start` on,
/// then the end marker.
async fn serve_replay(
    router: &mut zeromq::RouterSocket,
    buffer: &ReplayBuffer,
    request: ZmqMessage,
) -> anyhow::Result<()> {
    let frames = request.into_vec();
    let [id, empty, start] = frames.as_slice() else {
        anyhow::bail!("replay request of {} frames, expected 3", frames.len());
    };
    let start: [u8; 8] = start[..]
        .try_into()
        .map_err(|_| anyhow::anyhow!("replay start of {} bytes, expected 8", start.len()))?;
    anyhow::ensure!(
        empty.is_empty(),
        "replay request without an empty delimiter"
    );
    let reply = |seq: Bytes, payload: Bytes| {
        ZmqMessage::try_from(vec![id.clone(), Bytes::new(), seq, payload])
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    for (seq, payload) in buffer.from(u64::from_be_bytes(start)) {
        let m = reply(Bytes::copy_from_slice(&seq.to_be_bytes()), payload.clone())?;
        router.send(m).await?;
    }
    router
        .send(reply(Bytes::from_static(&END_OF_REPLAY), Bytes::new())?)
        .await?;
    Ok(())
}

/// `tcp://*:p` as an address to bind (`*` is every interface), or `None` for one to connect to.
fn bind_address(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    if let Some(port) = rest.strip_prefix("*:") {
        return Some(format!("tcp://0.0.0.0:{port}"));
    }
    rest.contains("::").then(|| endpoint.to_string())
}

/// Starts the publisher thread: binds (or connects) the PUB socket and binds the replay socket,
/// sends `AllBlocksCleared`, then each batch with the next sequence number, and answers replay
/// requests between them. Returns the sender and the endpoint as bound (its port resolved) or
/// connected to.
pub(crate) fn start(cfg: &KvEventsConfig, topic: String) -> anyhow::Result<(Publisher, String)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let endpoint = cfg.endpoint.clone();
    let replay_endpoint = cfg.replay_endpoint.clone();
    let mut buffer = ReplayBuffer::new(cfg.buffer_steps);
    std::thread::Builder::new()
        .name("accellm-kv-events".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let mut router = None;
                if let Some(r) = &replay_endpoint {
                    let addr = bind_address(r).unwrap_or_else(|| r.clone());
                    let mut socket = zeromq::RouterSocket::new();
                    match socket.bind(&addr).await {
                        Ok(bound) => {
                            tracing::info!(endpoint = %bound, "KV event replay socket bound");
                            router = Some(socket);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding {r}: {e}")));
                            return;
                        }
                    }
                }
                let mut socket = zeromq::PubSocket::new();
                match bind_address(&endpoint) {
                    Some(addr) => match socket.bind(&addr).await {
                        Ok(bound) => {
                            let _ = ready_tx.send(Ok(bound.to_string()));
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding {endpoint}: {e}")));
                            return;
                        }
                    },
                    None => {
                        // A subscriber that binds: connect in the background, retrying, so the
                        // server starts whether or not it is up yet.
                        let _ = ready_tx.send(Ok(endpoint.clone()));
                        let mut tries = 0u32;
                        while let Err(e) = socket.connect(&endpoint).await {
                            if tries.is_multiple_of(30) {
                                tracing::warn!(%endpoint, error = %e, "KV event subscriber not reachable; retrying");
                            }
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
                let topic = Bytes::from(topic.into_bytes());
                let mut seq: u64 = 0;
                let mut first = Some(Batch::now(vec![WireEvent::AllCleared]));
                loop {
                    let batch = match first.take() {
                        Some(b) => b,
                        None => tokio::select! {
                            b = rx.recv() => match b {
                                Some(b) => b,
                                None => break,
                            },
                            request = next_request(&mut router) => {
                                if let (Ok(m), Some(r)) = (request, router.as_mut()) {
                                    if let Err(e) = serve_replay(r, &buffer, m).await {
                                        tracing::warn!(error = %e, "KV event replay");
                                    }
                                }
                                continue;
                            }
                        },
                    };
                    let payload = match batch.encode() {
                        Ok(p) => Bytes::from(p),
                        Err(e) => {
                            tracing::error!(error = %e, "encoding KV events");
                            continue;
                        }
                    };
                    if router.is_some() {
                        buffer.push(seq, payload.clone());
                    }
                    let frames = vec![
                        topic.clone(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        payload,
                    ];
                    seq += 1;
                    let msg = match ZmqMessage::try_from(frames) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::error!(error = %e, "building a KV event message");
                            continue;
                        }
                    };
                    if let Err(e) = socket.send(msg).await {
                        tracing::warn!(error = %e, "sending KV events");
                    }
                }
                let _ = socket.close().await;
                if let Some(r) = router {
                    let _ = r.close().await;
                }
            });
        })
        .context("starting the KV event publisher thread")?;
    let at = ready_rx
        .recv()
        .context("KV event publisher thread ended before starting")?
        .map_err(|e| anyhow::anyhow!("KV event publisher: {e}"))?;
    Ok((Publisher { tx }, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_bind_and_named_hosts_connect() {
        assert_eq!(
            bind_address("tcp://*:5557").as_deref(),
            Some("tcp://0.0.0.0:5557")
        );
        assert_eq!(bind_address("tcp://epp.svc:5557"), None);
        assert_eq!(bind_address("tcp://10.0.0.1:5557"), None);
    }

    #[test]
    fn vllm_json_configures_it_and_unsupported_fields_are_refused() {
        let c: KvEventsConfig = serde_json::from_str(
            r#"{"enable_kv_cache_events": true, "publisher": "zmq",
                "endpoint": "tcp://*:5557", "topic": "kv@10.0.0.7@m"}"#,
        )
        .unwrap();
        assert!(c.enabled());
        c.validate().unwrap();
        assert_eq!(c.topic_for("other"), "kv@10.0.0.7@m");
        let off: KvEventsConfig =
            serde_json::from_str(r#"{"enable_kv_cache_events": true, "publisher": "null"}"#)
                .unwrap();
        assert!(!off.enabled());
        assert!(!KvEventsConfig::default().enabled());
        // vLLM's replay socket and its buffer size; other fields of vLLM's are refused.
        let replay: KvEventsConfig = serde_json::from_str(
            r#"{"enable_kv_cache_events": true, "replay_endpoint": "tcp://*:5558",
                "buffer_steps": 100}"#,
        )
        .unwrap();
        assert_eq!(replay.replay_endpoint.as_deref(), Some("tcp://*:5558"));
        assert_eq!(replay.buffer_steps, 100);
        replay.validate().unwrap();
        let no_buffer = KvEventsConfig {
            buffer_steps: 0,
            ..replay.clone()
        };
        assert!(no_buffer.validate().is_err());
        let ipc_replay = KvEventsConfig {
            replay_endpoint: Some("ipc:///tmp/r".into()),
            ..replay
        };
        assert!(ipc_replay.validate().is_err());
        let hwm = r#"{"enable_kv_cache_events": true, "hwm": 10}"#;
        assert!(serde_json::from_str::<KvEventsConfig>(hwm).is_err());
        let kafka = KvEventsConfig {
            publisher: "kafka".into(),
            ..Default::default()
        };
        assert!(kafka.validate().is_err());
        let ipc = KvEventsConfig {
            enable_kv_cache_events: true,
            endpoint: "ipc:///tmp/kv".into(),
            ..Default::default()
        };
        assert!(ipc.validate().is_err());
        // An empty topic is llm-d's form, with the model name last.
        let t = KvEventsConfig::default().topic_for("tiny");
        assert!(t.starts_with("kv@") && t.ends_with("@tiny"), "{t}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wildcard_endpoint_is_bound_and_subscribers_connect() {
        use zeromq::SocketRecv as _;
        let cfg = KvEventsConfig {
            enable_kv_cache_events: true,
            endpoint: "tcp://*:0".into(),
            ..Default::default()
        };
        let (publisher, at) = start(&cfg, "kv@pod@m".into()).unwrap();
        let port = at.rsplit(':').next().unwrap().to_string();
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&format!("tcp://127.0.0.1:{port}"))
            .await
            .unwrap();
        sub.subscribe("kv@").await.unwrap();
        // PUB drops what it sends before the subscription arrives: send until one lands.
        let mut got = None;
        for _ in 0..100 {
            publisher.publish(Batch::now(vec![WireEvent::AllCleared]));
            let wait = std::time::Duration::from_millis(50);
            if let Ok(Ok(m)) = tokio::time::timeout(wait, sub.recv()).await {
                got = Some(m);
                break;
            }
        }
        let frames = got.expect("a message within 5 s").into_vec();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"kv@pod@m");
        assert_eq!(frames[1].len(), 8);
        // [ts, [["AllBlocksCleared"]]]
        assert_eq!(frames[2][0], 0x92);
        assert!(frames[2].ends_with(b"\x91\x91\xb0AllBlocksCleared"));
    }

    #[test]
    fn the_replay_buffer_keeps_the_latest_batches() {
        let mut b = ReplayBuffer::new(3);
        for seq in 0..5u64 {
            b.push(seq, Bytes::from(vec![seq as u8]));
        }
        let seqs = |start| b.from(start).map(|(s, _)| *s).collect::<Vec<_>>();
        assert_eq!(seqs(0), [2, 3, 4]);
        assert_eq!(seqs(3), [3, 4]);
        assert!(seqs(5).is_empty());
        assert_eq!(b.from(4).next().map(|(_, p)| p[0]), Some(4));
    }

    #[test]
    fn a_batch_encodes_as_vllm_arrays() {
        let b = Batch {
            ts: 1.5,
            events: vec![
                WireEvent::Stored {
                    hashes: vec![u64::MAX, 7],
                    parent: None,
                    token_ids: vec![1, 2],
                    block_size: 1,
                },
                WireEvent::Removed { hashes: vec![7] },
                WireEvent::AllCleared,
            ],
        };
        let bytes = b.encode().unwrap();
        // fixarray(2), float64 1.5, fixarray(3), fixarray(8), fixstr "BlockStored", ...
        assert_eq!(&bytes[..3], &[0x92, 0xcb, 0x3f]);
        assert_eq!(bytes[10], 0x93);
        assert_eq!(bytes[11], 0x98);
        assert_eq!(&bytes[12..24], b"\xabBlockStored");
        // The hash u64::MAX stays unsigned (uint64 marker).
        assert_eq!(&bytes[24..26], &[0x92, 0xcf]);
    }
}
