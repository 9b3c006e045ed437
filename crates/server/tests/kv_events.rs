//! KV events as vLLM publishes them, read by a real ZMQ subscriber on loopback: the subscriber
//! binds (as llm-d's central indexer does) and the server's PUB socket connects to it. Requests
//! that share a prefix, eviction under memory pressure and a prefix-cache reset must show up as
//! `BlockStored` / `BlockRemoved` / `AllBlocksCleared`, with hashes, parents and token ids that
//! agree with each other and with what the server's own hit counter says is cached.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use accellm_core::kv::chain_keys;
use accellm_server::kv_events::KvEventsConfig;
use rmpv::Value as Mp;
use serde_json::json;
use support::{metric_in, start, tiny_config, Http};
use zeromq::{Socket as _, SocketRecv as _, SocketSend as _};

const BLOCK: usize = 16;
const TOPIC: &str = "kv@test-pod@tiny";

/// What the subscriber has been told the front caches.
#[derive(Default)]
struct Ledger {
    /// Keys cached now.
    cached: BTreeSet<u64>,
    /// Every key ever stored, with the tokens from the start of its stream to its block's end.
    prefixes: HashMap<u64, Vec<u32>>,
    next_seq: u64,
    stored: usize,
    removed: usize,
    cleared: usize,
}

fn uint(v: &Mp) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

impl Ledger {
    /// Applies one message (topic, sequence, payload), checking its form as vLLM's.
    fn apply(&mut self, frames: &[Vec<u8>]) {
        assert_eq!(frames.len(), 3, "topic, sequence, payload");
        assert_eq!(frames[0], TOPIC.as_bytes());
        let seq = u64::from_be_bytes(frames[1].as_slice().try_into().expect("8-byte sequence"));
        assert_eq!(seq, self.next_seq, "a batch was lost or reordered");
        self.next_seq += 1;
        let batch = rmpv::decode::read_value(&mut frames[2].as_slice()).expect("msgpack");
        let batch = batch.as_array().expect("batch is an array");
        assert_eq!(batch.len(), 2, "[ts, events]");
        let ts = batch[0].as_f64().expect("ts is a float");
        assert!(ts > 1.6e9, "ts in seconds since the epoch: {ts}");
        for ev in batch[1].as_array().expect("events") {
            let f = ev.as_array().expect("event is an array");
            match f[0].as_str().expect("tag") {
                "BlockStored" => {
                    assert_eq!(f.len(), 8, "{ev}");
                    let hashes: Vec<u64> = f[1].as_array().unwrap().iter().map(uint).collect();
                    let tokens: Vec<u32> = f[3]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| uint(t) as u32)
                        .collect();
                    assert_eq!(uint(&f[4]), BLOCK as u64, "block_size");
                    assert!(f[5].is_nil(), "lora_id");
                    assert_eq!(f[6].as_str(), Some("GPU"), "medium");
                    assert_eq!(tokens.len(), hashes.len() * BLOCK, "whole blocks of tokens");
                    // The parent's stream followed by these tokens must hash to these keys.
                    let mut stream = if f[2].is_nil() {
                        Vec::new()
                    } else {
                        let parent = uint(&f[2]);
                        self.prefixes
                            .get(&parent)
                            .unwrap_or_else(|| panic!("parent {parent} never stored"))
                            .clone()
                    };
                    let skip = stream.len() / BLOCK;
                    stream.extend(&tokens);
                    let keys = chain_keys(&stream, BLOCK as u32, 0);
                    assert_eq!(&keys[skip..], hashes.as_slice(), "hashes of the token ids");
                    for (i, &h) in hashes.iter().enumerate() {
                        assert!(self.cached.insert(h), "{h} stored twice");
                        self.prefixes
                            .insert(h, stream[..(skip + i + 1) * BLOCK].to_vec());
                    }
                    self.stored += hashes.len();
                }
                "BlockRemoved" => {
                    assert_eq!(f.len(), 3, "{ev}");
                    assert_eq!(f[2].as_str(), Some("GPU"), "medium");
                    for h in f[1].as_array().unwrap().iter().map(uint) {
                        assert!(self.cached.remove(&h), "{h} removed but not cached");
                        self.removed += 1;
                    }
                }
                "AllBlocksCleared" => {
                    assert_eq!(f.len(), 1);
                    self.cached.clear();
                    self.cleared += 1;
                }
                other => panic!("unknown event {other}"),
            }
        }
    }

    /// Tokens of `prompt`'s leading full blocks the front caches, by the events.
    fn cached_prefix_tokens(&self, prompt: &[u32]) -> usize {
        chain_keys(prompt, BLOCK as u32, 0)
            .iter()
            .take_while(|k| self.cached.contains(k))
            .count()
            * BLOCK
    }
}

/// Applies every message that arrives until none has for 400 ms.
async fn catch_up(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<Vec<u8>>>, l: &mut Ledger) {
    while let Ok(Some(frames)) = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await {
        l.apply(&frames);
    }
}

async fn hits(http: &Http) -> f64 {
    let text = http.get("/metrics").await.body;
    metric_in(&text, "vllm:prefix_cache_hits_total").unwrap_or(0.0)
}

/// Waits until nothing runs or waits.
async fn settle(http: &Http) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http.get("/metrics").await.body;
        let running = metric_in(&text, "vllm:num_requests_running{").unwrap_or(1.0);
        let waiting = metric_in(&text, "vllm:num_requests_waiting{").unwrap_or(1.0);
        if running == 0.0 && waiting == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "requests did not end:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a completion of `prompt` (token ids) to its end; returns the prompt tokens it hit.
async fn complete(http: &Http, prompt: &[u32], max_tokens: u32) -> f64 {
    let h0 = hits(http).await;
    let r = http
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    settle(http).await;
    hits(http).await - h0
}

/// `n` token ids of stream `s` (distinct streams share no block).
fn tokens(s: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (s * 37 + i * 11) % 250 + 3).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmq_subscriber_sees_what_the_prefix_cache_stores_evicts_and_clears() {
    // The subscriber binds on loopback and collects every message.
    let mut sub = zeromq::SubSocket::new();
    let at = sub.bind("tcp://127.0.0.1:0").await.expect("bind");
    sub.subscribe("kv@").await.expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(m) = sub.recv().await {
            let frames: Vec<Vec<u8>> = m.into_vec().into_iter().map(|b| b.to_vec()).collect();
            if tx.send(frames).is_err() {
                break;
            }
        }
    });
    let mut cfg = tiny_config();
    // Two instances (an AcceLLM pair) of 24 blocks each: a few long prompts evict the rest.
    cfg.kv_blocks = 24;
    cfg.kv_events = KvEventsConfig {
        enable_kv_cache_events: true,
        publisher: "zmq".into(),
        endpoint: at.to_string(),
        topic: TOPIC.into(),
        ..KvEventsConfig::default()
    };
    let server = start(cfg);
    let http = Http::new(server.addr());
    // The server's PUB socket connects in the background, and PUB drops what it sends before a
    // subscription reaches it: reset the (empty) cache until an `AllBlocksCleared` arrives. The
    // ledger follows the sequence from there, so no later batch can go missing unnoticed.
    let mut l = Ledger::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.post("/reset_prefix_cache", &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if let Ok(Some(frames)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            l.next_seq = u64::from_be_bytes(frames[1].as_slice().try_into().expect("sequence"));
            l.apply(&frames);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no KV events reached the subscriber"
        );
    }
    catch_up(&mut rx, &mut l).await;
    let cleared = l.cleared;
    assert!(cleared >= 1 && l.stored == 0);

    // A 96-token shared prefix (6 blocks) and two questions after it.
    let prefix = tokens(1, 96);
    let ask = |q: u32| [prefix.clone(), tokens(100 + q, 20)].concat();
    let first = ask(1);
    assert_eq!(complete(&http, &first, 8).await, 0.0, "nothing cached yet");
    catch_up(&mut rx, &mut l).await;
    // The prompt's 7 full blocks are stored (the generated tokens fill no further block).
    assert!(l.stored >= 7, "stored {}", l.stored);
    assert_eq!(l.cached_prefix_tokens(&first), 112);
    // The second question hits at most what the events say is cached, and here all of the
    // shared prefix: both partners hold it (primary and replica).
    let second = ask(2);
    let predicted = l.cached_prefix_tokens(&second);
    assert_eq!(predicted, 96);
    let hit = complete(&http, &second, 8).await;
    assert!(
        hit >= 96.0 && hit as usize <= predicted,
        "hit {hit}, events say {predicted}"
    );
    catch_up(&mut rx, &mut l).await;

    // Memory pressure: long prompts of other streams reclaim the cached blocks.
    for s in 0..6 {
        let other = tokens(200 + s, 300);
        complete(&http, &other, 4).await;
    }
    catch_up(&mut rx, &mut l).await;
    assert!(l.removed > 0, "nothing evicted");
    let predicted = l.cached_prefix_tokens(&ask(3));
    assert_eq!(predicted, 0, "the events say the prefix is still cached");
    let hit = complete(&http, &ask(3), 4).await;
    assert_eq!(
        hit, 0.0,
        "the server hit a prefix the events said was evicted"
    );
    catch_up(&mut rx, &mut l).await;
    assert_eq!(l.cached_prefix_tokens(&ask(4)), 96, "stored again");

    // A reset forgets everything: one AllBlocksCleared, and the next request misses.
    let r = http.post("/reset_prefix_cache", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    catch_up(&mut rx, &mut l).await;
    assert_eq!(l.cleared, cleared + 1);
    assert!(l.cached.is_empty());
    assert_eq!(complete(&http, &ask(4), 4).await, 0.0);
    catch_up(&mut rx, &mut l).await;
    assert_eq!(l.cached_prefix_tokens(&ask(5)), 96);

    server.shutdown().unwrap();
    reader.abort();
}

/// Asks the replay socket for every kept batch from `start`; returns them as (topic, sequence,
/// payload) frames, as the PUB socket sent them.
async fn replay(sock: &mut zeromq::DealerSocket, start: u64) -> Vec<Vec<Vec<u8>>> {
    let request = vec![
        bytes::Bytes::new(),
        bytes::Bytes::copy_from_slice(&start.to_be_bytes()),
    ];
    sock.send(zeromq::ZmqMessage::try_from(request).unwrap())
        .await
        .expect("replay request");
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sock.recv())
            .await
            .expect("a replay reply within 10 s")
            .expect("replay reply");
        let f: Vec<Vec<u8>> = m.into_vec().into_iter().map(|b| b.to_vec()).collect();
        assert_eq!(f.len(), 3, "[empty, sequence, payload]");
        assert!(f[0].is_empty(), "the REQ envelope's empty delimiter");
        if f[1] == [0xFF; 8] {
            assert!(f[2].is_empty(), "the end marker has no payload");
            return out;
        }
        out.push(vec![TOPIC.as_bytes().to_vec(), f[1].clone(), f[2].clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_missed_every_batch_replays_them_from_the_clear_at_start() {
    // No subscriber reads the PUB socket at all: everything it knows comes from the replay
    // socket (vLLM's ROUTER; a DEALER here, sending a REQ socket's envelope).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let replay_at = format!("tcp://127.0.0.1:{}", free.local_addr().unwrap().port());
    drop(free);
    let mut cfg = tiny_config();
    cfg.kv_events = KvEventsConfig {
        enable_kv_cache_events: true,
        endpoint: "tcp://*:0".into(),
        topic: TOPIC.into(),
        replay_endpoint: Some(replay_at.clone()),
        ..KvEventsConfig::default()
    };
    let server = start(cfg);
    let http = Http::new(server.addr());
    let prefix = tokens(7, 96);
    let first = [prefix.clone(), tokens(300, 20)].concat();
    assert_eq!(complete(&http, &first, 8).await, 0.0);

    let mut sock = zeromq::DealerSocket::new();
    sock.connect(&replay_at).await.expect("connect to replay");
    let all = replay(&mut sock, 0).await;
    // Sequence 0 is the AllBlocksCleared of the start; then every batch in order, which
    // rebuild what the front caches.
    let mut l = Ledger::default();
    for frames in &all {
        l.apply(frames);
    }
    assert_eq!(&all[0][1], &0u64.to_be_bytes());
    assert_eq!(l.cleared, 1, "one AllBlocksCleared, at the start");
    assert_eq!(l.cached_prefix_tokens(&first), 112);
    let second = [prefix.clone(), tokens(301, 20)].concat();
    assert_eq!(l.cached_prefix_tokens(&second), 96);
    assert_eq!(
        complete(&http, &second, 8).await,
        96.0,
        "what the replay said"
    );

    // From a later sequence: only the batches from there on, now with the second request's
    // new block (its batch may still be on its way to the publisher: ask until it is there).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let later = replay(&mut sock, 1).await;
        assert_eq!(&later[0][1], &1u64.to_be_bytes());
        assert_eq!(later[..all.len() - 1], all[1..]);
        let mut l = Ledger::default();
        l.apply(&all[0]);
        for frames in &later {
            l.apply(frames);
        }
        if l.cached_prefix_tokens(&second) == 112 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second request's block was never replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().unwrap();
}
