//! KV over a worker-to-worker link on one host — loopback TCP, plain or with mutual TLS, or a
//! Unix socket — in f32 or f16: the sending side as a worker's link thread does it
//! (`read_spans`, one `write_kv` frame per layer, a flush and its ack per copy), the receiving
//! side as a worker's peer session ([`serve_kv_link`] into a pool).
//!
//! `kv_lands_intact_*` run in CI. `kv_link_throughput` is the measurement quoted in
//! docs/distributed.md ("Security"); run it optimised:
//! `cargo test --release -p accellm-server --test kv_link_tls -- --ignored --nocapture`.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accellm_engine::{f16, ArchParams, KvPool, KvSpan, ModelConfig};
use accellm_server::remote::tls::{self, LinkReader, LinkWriter, Tls};
use accellm_server::remote::wire::{self, KvWire, Msg};
use accellm_server::remote::worker::serve_kv_link;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::RootCertStore;

/// SmolLM2-135M's KV shape: 30 layers, 3 KV heads of 64 (46 KB per token in f32).
fn pool(blocks: usize) -> KvPool {
    let c = ModelConfig {
        architecture: "llama".into(),
        layers: 30,
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        ffn_hidden: 1536,
        vocab: 49152,
        context_length: 8192,
        rms_eps: 1e-5,
        rope_theta: 100_000.0,
        kv_bytes_per_token: 2 * 30 * 3 * 64 * 4,
        arch: ArchParams::default(),
    };
    KvPool::new(&c, blocks, 16).expect("pool")
}

/// Two identities signed by one fresh CA (the sender's and the receiver's).
fn identities() -> (Tls, Tls) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    let one = |name: &str| {
        let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("signed");
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("CA parses");
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
        Tls::new(vec![cert.der().clone()], key, roots).expect("TLS")
    };
    (one("worker-0"), one("worker-1"))
}

/// CPU time of the calling thread (Linux: `/proc/thread-self/schedstat`), 0 where unknown.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// How the two ends are connected.
enum Transport {
    /// Loopback TCP, plain or with mutual TLS.
    Tcp(Option<(Tls, Tls)>),
    /// A Unix socket pair.
    Unix,
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Tcp(None) => "TCP",
            Transport::Tcp(Some(_)) => "TCP+TLS",
            Transport::Unix => "Unix",
        }
    }
}

/// Sends `copies` copies of the KV of `spans` (every layer) from `src` into `dst` over one link
/// carrying `kv_wire`; returns the bytes on the wire, the time from the first layer to the last
/// ack, and the CPU time the sending and the receiving thread spent after the handshake.
fn stream(
    src: &KvPool,
    dst: Arc<KvPool>,
    spans: &[KvSpan],
    copies: usize,
    transport: Transport,
    kv_wire: KvWire,
) -> (u64, Duration, Duration) {
    type End = Box<dyn FnOnce() -> (LinkReader, LinkWriter) + Send>;
    let (tx, rx): (End, End) = match transport {
        Transport::Tcp(tls) => {
            let (tx_tls, rx_tls) = match tls {
                Some((a, b)) => (Some(a), Some(b)),
                None => (None, None),
            };
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            (
                Box::new(move || {
                    let s = TcpStream::connect(&addr).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    tls::connect(s, tx_tls.as_ref(), &addr)
                        .expect("sender handshake")
                        .split()
                }),
                Box::new(move || {
                    let (s, _) = listener.accept().expect("accept");
                    s.set_nodelay(true).expect("nodelay");
                    tls::accept(s, rx_tls.as_ref())
                        .expect("receiver handshake")
                        .split()
                }),
            )
        }
        Transport::Unix => {
            let (a, b) = UnixStream::pair().expect("socket pair");
            // As a worker's link does (remote/worker.rs, `PeerLink::open_local`).
            socket2::SockRef::from(&a)
                .set_send_buffer_size(4 << 20)
                .expect("send buffer");
            (
                Box::new(move || tls::unix(&a).expect("sender")),
                Box::new(move || tls::unix(&b).expect("receiver")),
            )
        }
    };
    let receiver = std::thread::spawn(move || {
        let (r, w) = rx();
        let cpu = thread_cpu();
        // Ends when the sender closes the link.
        let _ = serve_kv_link(&dst, kv_wire, BufReader::new(r), w);
        thread_cpu().saturating_sub(cpu)
    });
    let (r, mut w) = tx();
    let mut r = BufReader::new(r);
    let mut bytes = 0u64;
    let (t0, cpu) = (Instant::now(), thread_cpu());
    for seq in 0..copies as u64 {
        for layer in 0..src.num_layers() {
            let n = match kv_wire {
                KvWire::F32 => {
                    let data = src.read_spans::<f32>(layer, spans).expect("read");
                    wire::write_kv(&mut w, layer as u32, spans, &data).expect("send");
                    data.len()
                }
                KvWire::F16 => {
                    let data = src.read_spans::<f16>(layer, spans).expect("read");
                    wire::write_kv(&mut w, layer as u32, spans, &data).expect("send");
                    data.len()
                }
            };
            bytes += (n * kv_wire.value_bytes()) as u64;
        }
        wire::write_msg(&mut w, &Msg::Flush { seq }).expect("flush");
        match wire::read_msg(&mut r) {
            Ok(Msg::Ack {
                seq: s,
                error: None,
            }) if s == seq => {}
            other => panic!("expected ack {seq}, got {other:?}"),
        }
    }
    let (took, cpu) = (t0.elapsed(), thread_cpu().saturating_sub(cpu));
    drop(w);
    drop(r);
    let rx_cpu = receiver.join().expect("receiver");
    (bytes, took, cpu + rx_cpu)
}

/// Spans of `tokens` tokens from block 0 on.
fn spans(tokens: u32) -> Vec<KvSpan> {
    (0..tokens.div_ceil(16))
        .map(|b| KvSpan {
            src_block: b,
            dst_block: b,
            slots: 0..(tokens - 16 * b).min(16),
        })
        .collect()
}

fn filled(blocks: usize) -> KvPool {
    let p = pool(blocks);
    let all = spans(16 * blocks as u32);
    for layer in 0..p.num_layers() {
        let n = p.span_floats(&all);
        let data: Vec<f32> = (0..n).map(|i| (i * 31 + layer) as f32 * 0.25).collect();
        p.write_spans(layer, &all, &data).expect("write");
    }
    p
}

#[test]
fn kv_lands_intact_through_tls() {
    let src = filled(8);
    let dst = Arc::new(pool(8));
    let s = spans(100);
    let tls = Transport::Tcp(Some(identities()));
    let (bytes, _, _) = stream(&src, dst.clone(), &s, 3, tls, KvWire::F32);
    assert_eq!(bytes, 3 * 100 * 30 * 2 * 3 * 64 * 4);
    for layer in 0..src.num_layers() {
        assert_eq!(
            src.read_spans::<f32>(layer, &s).expect("read"),
            dst.read_spans::<f32>(layer, &s).expect("read"),
            "layer {layer}"
        );
    }
}

#[test]
fn kv_lands_intact_in_f16_through_a_unix_socket() {
    let src = filled(8);
    let dst = Arc::new(pool(8));
    let s = spans(100);
    let (bytes, _, _) = stream(&src, dst.clone(), &s, 2, Transport::Unix, KvWire::F16);
    // Half the bytes of f32.
    assert_eq!(bytes, 2 * 100 * 30 * 2 * 3 * 64 * 2);
    for layer in 0..src.num_layers() {
        let sent: Vec<f32> = src
            .read_spans::<f16>(layer, &s)
            .expect("read")
            .iter()
            .map(|x| x.to_f32())
            .collect();
        assert_eq!(
            sent,
            dst.read_spans::<f32>(layer, &s).expect("read"),
            "layer {layer}"
        );
    }
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn kv_link_throughput() {
    let tokens = 512;
    let copies = 40;
    let src = filled(32);
    let dst = Arc::new(pool(32));
    let s = spans(tokens);
    // The KV moved per copy, in the pool's f32 (the figures are per MB of it, whatever the wire
    // carries, so that f16 and f32 compare).
    let kv_mb = (tokens as usize * 30 * 2 * 3 * 64 * 4) as f64 / 1e6;
    let kinds = || {
        [KvWire::F32, KvWire::F16]
            .into_iter()
            .flat_map(|w| [0, 1, 2].into_iter().map(move |t| (t, w)))
    };
    let transport = |t: usize| match t {
        0 => Transport::Tcp(None),
        1 => Transport::Tcp(Some(identities())),
        _ => Transport::Unix,
    };
    // Per kind and run: ms per copy, and CPU ms (sender + receiver) per MB of KV.
    let mut per_copy: Vec<Vec<f64>> = vec![Vec::new(); 6];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); 6];
    // Alternated, five of each, after one warm-up of each.
    for round in 0..6 {
        for (k, (t, w)) in kinds().enumerate() {
            let (_, took, used) = stream(&src, dst.clone(), &s, copies, transport(t), w);
            if round > 0 {
                per_copy[k].push(took.as_secs_f64() * 1e3 / copies as f64);
                cpu[k].push(used.as_secs_f64() * 1e3 / (kv_mb * copies as f64));
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    eprintln!("{copies} copies of {tokens} tokens ({kv_mb:.1} MB of f32 KV each), 5 runs per kind");
    eprintln!(
        "| link | wire | ms per copy, median (min, max) | CPU ms per MB of KV, sender + receiver |"
    );
    eprintln!("|---|---|---|---|");
    for (k, (t, w)) in kinds().enumerate() {
        let (r, r_min, r_max) = median(&mut per_copy[k]);
        let (c, c_min, c_max) = median(&mut cpu[k]);
        eprintln!(
            "| {} | {w} | {r:.2} ({r_min:.2}, {r_max:.2}) | {c:.3} ({c_min:.3}, {c_max:.3}) |",
            transport(t).name(),
        );
    }
}
