//! Mutual TLS between `accellm serve --workers` and `accellm worker` processes, and between
//! workers, on loopback with the real default model (skipped with a message when it is absent;
//! `ACCELLM_REQUIRE_MODEL=1` makes that a failure). Certificates are made here with `rcgen`: a
//! cluster CA, and another CA whose certificates must get nowhere.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use accellm_server::remote::tls::{self, Tls, TlsFiles};
use accellm_server::remote::wire::{self, ModelId, Msg, WireSeq};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};

mod common;
use common::{http, metric, model, run, start_logged, Proc};

/// A directory of PEM files: CAs and the certificates they sign.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("accellm-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A CA, its certificate written to `NAME.pem`. Every CA here has the same name, so a
    /// rogue certificate names our CA as its issuer and only the signature tells them apart.
    fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "accellm cluster CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(self.dir.join(format!("{name}.pem")), ca.pem()).expect("write CA");
        ca
    }

    /// A process certificate signed by `ca`, as `NAME.crt` and `NAME.key`; returns the TLS
    /// flags naming them with `trust` (a CA written by [`Pki::ca`]) as the cluster CA.
    fn issue(&self, ca: &CertifiedIssuer<'_, KeyPair>, name: &str, trust: &str) -> Vec<String> {
        let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, ca).expect("signed");
        std::fs::write(self.dir.join(format!("{name}.crt")), cert.pem()).expect("write cert");
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem())
            .expect("write key");
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.crt")),
            "--tls-key".into(),
            self.path(&format!("{name}.key")),
            "--tls-ca".into(),
            self.path(&format!("{trust}.pem")),
        ]
    }

    /// The TLS identity that [`Pki::issue`] wrote as `name`, trusting `trust`.
    fn identity(&self, name: &str, trust: &str) -> Tls {
        Tls::load(&TlsFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
            ca: self.dir.join(format!("{trust}.pem")),
        })
        .expect("TLS material loads")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn with<'a>(base: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    base.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect()
}

/// A worker with a 256-block pool on an ephemeral loopback port, with `extra` flags.
fn worker(model: &str, extra: &[String]) -> (Proc, String) {
    let base = [
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--model",
        model,
        "--kv-blocks",
        "256",
    ];
    let (p, addr, _) = start_logged(&with(&base, extra));
    (p, addr)
}

#[test]
fn a_worker_off_loopback_without_tls_refuses_to_start_unless_insecure() {
    // Refused before the model is even looked for.
    let (ok, stderr) = run(&[
        "worker",
        "--listen",
        "0.0.0.0:0",
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert!(!ok, "a plaintext worker on 0.0.0.0 started");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{stderr}"
    );
    // Half of the TLS flags is refused by the argument parser.
    let (ok, stderr) = run(&["worker", "--listen", "127.0.0.1:0", "--tls-cert", "a.crt"]);
    assert!(!ok && stderr.contains("--tls-key"), "{stderr}");

    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (_w, _, before) = start_logged(&[
        "worker",
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--model",
        model,
        "--kv-blocks",
        "16",
    ]);
    assert!(
        before.iter().any(|l| l.contains("WARNING: --insecure")),
        "no loud warning: {before:?}"
    );
}

/// A port free on both 127.0.0.2 and 127.0.0.3 (two "hosts" with the same KV port).
fn kv_port() -> u16 {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.2:0").expect("bind");
        let port = a.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[test]
fn tls_front_and_workers_serve_and_stream_kv_between_workers() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let pki = Pki::new("serve");
    let ca = pki.ca("ca");
    // Two "hosts" on loopback, each worker taking fronts on one port and KV links on another.
    let kv = kv_port().to_string();
    let host = |listen: &str, ip: &str, name: &str| {
        let (w, addr, _) = start_logged(&with(
            &[
                "worker",
                "--listen",
                listen,
                "--kv-listen",
                &format!("{ip}:{kv}"),
                "--model",
                model,
                "--kv-blocks",
                "256",
                // On one host the KV link would move to a Unix socket: keep it on TLS.
                "--kv-local",
                "never",
            ],
            &pki.issue(&ca, name, "ca"),
        ));
        (w, addr)
    };
    let (_w0, a0) = host("127.0.0.2:0", "127.0.0.2", "worker-0");
    let (w1, a1) = host("127.0.0.3:0", "127.0.0.3", "worker-1");
    let workers = format!("{a0},{a1}");
    let front_tls = pki.issue(&ca, "front", "ca");
    let base = [
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "256",
        "--workers",
        &workers,
        "--worker-kv-port",
        &kv,
    ];
    let (_front, front, _) = start_logged(&with(&base, &front_tls));
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let front = front.clone();
            std::thread::spawn(move || {
                let body = json!({
                    "prompt": format!("Request {k}: tell me about the number {}.", k * 5 + 2),
                    "max_tokens": 12,
                    "temperature": 0,
                    "ignore_eos": true,
                });
                let (status, text) = http(&front, "POST", "/v1/completions", Some(&body));
                assert_eq!(status, 200, "request {k}: {text}");
                let v: Value = serde_json::from_str(&text).expect("JSON answer");
                assert_eq!(v["usage"]["completion_tokens"], 12, "request {k}: {text}");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("request thread");
    }
    // Replicas went worker to worker, through the workers' own TLS link.
    let copied = metric(&front, "accellm_kv_copied_bytes_total{kind=\"replica\"}");
    assert!(copied > 0.0, "no KV crossed the worker-to-worker link");

    // Each port takes its own kind of peer only.
    let model_path = Path::new(model);
    let me = pki.identity("front", "ca");
    match peer_hello(&a0, Some(&me), model_path) {
        Ok(Msg::Refused { reason }) => assert!(reason.contains("--kv-listen"), "{reason}"),
        other => panic!("a KV link on the front port got {other:?}"),
    }
    let kv0 = format!("127.0.0.2:{kv}");
    let (r, mut w) = dial(&kv0, Some(&me)).expect("KV port").split();
    wire::write_msg(
        &mut w,
        &Msg::Hello {
            version: wire::version(),
            model: ModelId::of(model_path).expect("model id"),
            block_size: 16,
            kv_blocks: 256,
            instance: 0,
            peers: Vec::new(),
            eos: Vec::new(),
        },
    )
    .expect("hello");
    match wire::read_msg(&mut BufReader::new(r)) {
        Ok(Msg::Refused { reason }) => assert!(reason.contains("KV port"), "{reason}"),
        other => panic!("a front on the KV port got {other:?}"),
    }

    // A worker killed and restarted on the same addresses, with a new certificate from the same
    // CA, is taken back over TLS (the front's reconnect shakes hands like its first connect).
    let up = "accellm_instance_up{instance=\"1\"}";
    drop(w1);
    wait_for(&front, up, 0.0);
    let (_w1b, _) = host(&a1, "127.0.0.3", "worker-1");
    wait_for(&front, up, 1.0);
    let body = json!({"prompt": "After the restart:", "max_tokens": 4, "temperature": 0});
    let (status, text) = http(&front, "POST", "/v1/completions", Some(&body));
    assert_eq!(status, 200, "{text}");
}

/// Waits (at most 60 s) until the front's metric `name` reads `value`.
fn wait_for(front: &str, name: &str, value: f64) {
    let t0 = std::time::Instant::now();
    while metric(front, name) != value {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name} did not become {value}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A connection to `addr`, TLS with `tls` or plain.
fn dial(addr: &str, tls: Option<&Tls>) -> std::io::Result<tls::Link> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    tls::connect(s, tls, addr)
}

/// Sends a worker-to-worker hello on a fresh connection; returns the answer.
fn peer_hello(addr: &str, tls: Option<&Tls>, model: &Path) -> Result<Msg, String> {
    let link = dial(addr, tls).map_err(|e| format!("connect: {e}"))?;
    let (r, mut w) = link.split();
    let hello = Msg::PeerHello {
        version: wire::version(),
        model: ModelId::of(model).expect("model id"),
        from: 7,
        kv_wire: wire::KvWire::F16,
    };
    wire::write_msg(&mut w, &hello).map_err(|e| format!("send: {e}"))?;
    wire::read_msg(&mut BufReader::new(r)).map_err(|e| format!("read: {e}"))
}

#[test]
fn peers_without_a_certificate_from_the_cluster_ca_get_nothing() {
    let Some(model_path) = model() else { return };
    let model = model_path.to_str().expect("UTF-8 path");
    let pki = Pki::new("refuse");
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    let (_w, addr) = worker(model, &pki.issue(&ca, "worker-0", "ca"));
    pki.issue(&ca, "good", "ca");
    let rogue_flags = pki.issue(&other, "rogue", "ca");

    // Control: a cluster certificate is welcome.
    let good = pki.identity("good", "ca");
    let answer = peer_hello(&addr, Some(&good), &model_path);
    assert!(matches!(answer, Ok(Msg::PeerWelcome { .. })), "{answer:?}");

    // A certificate from another CA (its holder trusts ours): no answer at all.
    let answer = peer_hello(&addr, Some(&pki.identity("rogue", "ca")), &model_path);
    assert!(answer.is_err(), "another CA's certificate got {answer:?}");
    // No TLS at all: the hello is never read as one.
    let answer = peer_hello(&addr, None, &model_path);
    assert!(answer.is_err(), "a plaintext peer got {answer:?}");

    // A front with another CA's certificate, or none, cannot drive the worker.
    let base = [
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "256",
        "--workers",
        &addr,
    ];
    let (ok, stderr) = run(&with(&base, &rogue_flags));
    assert!(!ok, "a front with another CA's certificate started");
    assert!(
        stderr.contains("handshake with worker") && stderr.contains("alert"),
        "{stderr}"
    );
    let (ok, stderr) = run(&base);
    assert!(!ok, "a plaintext front drove a TLS worker: {stderr}");

    // Worker to worker: a "peer" whose certificate another CA signed gets no KV. The test
    // drives the worker as a front and names a rogue listener as its partner.
    let rogue = TcpListener::bind("127.0.0.1:0").expect("bind");
    let rogue_addr = rogue.local_addr().expect("addr").to_string();
    let rogue_tls = pki.identity("rogue", "other");
    let rogue_side = std::thread::spawn(move || -> Result<Msg, String> {
        let (s, _) = rogue.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let (r, _w) = tls::accept(s, Some(&rogue_tls))
            .map_err(|e| format!("handshake: {e}"))?
            .split();
        wire::read_msg(&mut BufReader::new(r)).map_err(|e| format!("read: {e}"))
    });
    let (r, mut w) = dial(&addr, Some(&good)).expect("front link").split();
    let mut r = BufReader::new(r);
    wire::write_msg(
        &mut w,
        &Msg::Hello {
            version: wire::version(),
            model: ModelId::of(&model_path).expect("model id"),
            block_size: 16,
            kv_blocks: 256,
            instance: 0,
            peers: vec![addr.clone(), rogue_addr],
            eos: Vec::new(),
        },
    )
    .expect("hello");
    assert!(matches!(wire::read_msg(&mut r), Ok(Msg::Welcome { .. })));
    wire::write_msg(
        &mut w,
        &Msg::Run {
            iteration: 1,
            seqs: vec![WireSeq {
                tokens: vec![1, 2, 3, 4, 5],
                start_pos: 0,
                block_table: vec![0],
                want_logits: false,
            }],
            samples: Vec::new(),
            prompt_rows: Vec::new(),
            copies: vec![(1, vec![(0, 0, 0, 5)])],
        },
    )
    .expect("run");
    match wire::read_msg(&mut r) {
        Ok(Msg::Report {
            copy_error: Some(e),
            copied_bytes,
            ..
        }) => {
            assert!(e.contains("certificate"), "{e}");
            assert_eq!(copied_bytes, 0);
        }
        other => panic!("expected a failed copy, got {other:?}"),
    }
    let rogue_got = rogue_side.join().expect("rogue thread");
    assert!(rogue_got.is_err(), "the rogue peer received {rogue_got:?}");

    // The worker is still up for its cluster.
    let answer = peer_hello(&addr, Some(&good), &model_path);
    assert!(matches!(answer, Ok(Msg::PeerWelcome { .. })), "{answer:?}");
}

/// One HTTP/1.1 request over TLS trusting `ca` (server name `name`); returns the raw answer.
#[allow(deprecated)] // ring's provider (see crates/server/src/remote/tls.rs)
fn https(addr: &str, ca: &Path, name: &str, request: &str) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(std::io::Error::other)? {
        roots
            .add(c.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server that closes without close_notify still answered.
        Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn the_api_serves_https_with_ssl_certfile_and_keyfile() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let pki = Pki::new("https");
    let ca = pki.ca("ca");
    pki.issue(&ca, "api.accellm.test", "ca");
    let (cert, key) = (
        pki.path("api.accellm.test.crt"),
        pki.path("api.accellm.test.key"),
    );
    let (_front, addr, _) = start_logged(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--instances",
        "1",
        "--kv-blocks",
        "64",
        "--ssl-certfile",
        &cert,
        "--ssl-keyfile",
        &key,
    ]);
    let ca_pem = pki.dir.join("ca.pem");
    let health = https(
        &addr,
        &ca_pem,
        "api.accellm.test",
        "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .expect("HTTPS health check");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = json!({"prompt": "Over HTTPS:", "max_tokens": 4, "temperature": 0}).to_string();
    let answer = https(
        &addr,
        &ca_pem,
        "api.accellm.test",
        &format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("HTTPS completion");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"completion_tokens\":4"), "{answer}");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP answered on the HTTPS port"
    );

    // Half of the pair is refused by the argument parser.
    let (ok, stderr) = run(&["serve", "--port", "0", "--ssl-certfile", &cert]);
    assert!(!ok && stderr.contains("--ssl-keyfile"), "{stderr}");
}
