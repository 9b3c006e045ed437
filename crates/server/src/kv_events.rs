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

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zeromq::{Socket as _, SocketSend as _};

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
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            enable_kv_cache_events: false,
            publisher: "zmq".into(),
            endpoint: "tcp://*:5557".into(),
            topic: String::new(),
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

/// `tcp://*:p` as an address to bind (`*` is every interface), or `None` for one to connect to.
fn bind_address(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    if let Some(port) = rest.strip_prefix("*:") {
        return Some(format!("tcp://0.0.0.0:{port}"));
    }
    rest.contains("::").then(|| endpoint.to_string())
}

/// Starts the publisher thread: binds (or connects) the PUB socket, then sends each batch with
/// the next sequence number. Returns the sender and the endpoint as bound (its port resolved)
/// or connected to.
pub(crate) fn start(cfg: &KvEventsConfig, topic: String) -> anyhow::Result<(Publisher, String)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let endpoint = cfg.endpoint.clone();
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
                while let Some(batch) = rx.recv().await {
                    let payload = match batch.encode() {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "encoding KV events");
                            continue;
                        }
                    };
                    let frames = vec![
                        topic.clone(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        Bytes::from(payload),
                    ];
                    seq += 1;
                    let msg = match zeromq::ZmqMessage::try_from(frames) {
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
        // vLLM's replay socket is not supported: an error, not silence.
        let replay = r#"{"enable_kv_cache_events": true, "replay_endpoint": "tcp://*:5558"}"#;
        assert!(serde_json::from_str::<KvEventsConfig>(replay).is_err());
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
