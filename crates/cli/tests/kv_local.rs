//! Workers of one host: KV links on a Unix socket only the workers' user can reach, in f16 when
//! both workers ask for it.

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, metric, model, start, Proc};
use serde_json::{json, Value};

/// A fresh directory under the target's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-kv-local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Starts a worker on a loopback port with its runtime directory (where its socket goes) in
/// `dir` and its info log in `dir/log`; returns it and its address.
fn worker(model: &str, dir: &Path, extra: &[&str]) -> (Proc, String) {
    let log = dir.join("log");
    let child = Command::new(env!("CARGO_BIN_EXE_accellm"))
        .args(["worker", "--listen", "127.0.0.1:0", "--model", model])
        .args(["--kv-blocks", "256"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("log file"))
        .spawn()
        .expect("worker starts");
    let proc = Proc(child);
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text.split("listening on ").nth(1) {
            let addr = addr.split_whitespace().next().unwrap_or("").to_string();
            return (proc, addr);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "worker did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The worker's socket directories under `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("accellm-kv-"))
        })
        .collect()
}

/// `text` without its ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn complete(front: &str, k: usize) -> String {
    let body = json!({
        "prompt": format!("Request {k}: a few words about the number {}.", k * 3 + 1),
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": true,
    });
    let (status, text) = http(front, "POST", "/v1/completions", Some(&body));
    assert_eq!(status, 200, "request {k}: {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON answer");
    assert_eq!(v["usage"]["completion_tokens"], 8, "request {k}: {text}");
    text
}

#[test]
fn workers_on_one_host_copy_kv_over_a_private_unix_socket_in_f16() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (d0, d1) = (scratch("w0"), scratch("w1"));
    // What a killed worker leaves: a socket nothing listens on (the next worker removes it).
    let stale = d0.join("accellm-kv-1-dead");
    std::fs::create_dir(&stale).expect("stale dir");
    drop(std::os::unix::net::UnixListener::bind(stale.join("kv.sock")).expect("bind"));
    let (_w0, a0) = worker(model, &d0, &["--kv-wire", "f16"]);
    assert!(!stale.exists(), "the stale socket directory is still there");
    let (_w1, a1) = worker(model, &d1, &["--kv-wire", "f16"]);
    // Each worker made one socket, in a directory only its user may enter.
    for d in [&d0, &d1] {
        let s = sockets(d);
        assert_eq!(s.len(), 1, "{s:?}");
        let mode = std::fs::metadata(&s[0])
            .expect("socket dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}", s[0].display());
        assert!(s[0].join("kv.sock").exists());
    }
    // The replicas went over a peer's Unix socket, in f16 (the peers are on loopback).
    for line in links_opened(model, &[a0, a1], [&d0, &d1]) {
        assert!(
            line.contains("transport=\"unix\"") && line.contains("kv_wire=f16"),
            "{line}"
        );
    }
}

#[test]
fn a_worker_asked_for_f32_or_kept_on_tcp_gets_its_way() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (d0, d1) = (scratch("n0"), scratch("n1"));
    // Worker 0 wants f16 over a socket; worker 1 wants f32 and no socket of its own.
    let (_w0, a0) = worker(model, &d0, &["--kv-wire", "f16"]);
    let (_w1, a1) = worker(model, &d1, &["--kv-wire", "f32", "--kv-local", "never"]);
    assert!(sockets(&d1).is_empty(), "--kv-local never opened a socket");
    // Worker 1 never moves its links, worker 0 has no socket to move to; both directions
    // agreed on f32 (f16 only when both ends ask for it).
    for line in links_opened(model, &[a0, a1], [&d0, &d1]) {
        assert!(
            line.contains("transport=\"tcp\"") && line.contains("kv_wire=f32"),
            "{line}"
        );
    }
}

/// Serves six requests through a front over `workers` (their logs in `dirs`), checks replicas
/// were copied, and returns the workers' "KV link open" log lines (at least one).
fn links_opened(model: &str, workers: &[String; 2], dirs: [&Path; 2]) -> Vec<String> {
    let workers = workers.join(",");
    let (_front, front) = start(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "256",
        "--workers",
        &workers,
    ]);
    let handles: Vec<_> = (0..6)
        .map(|k| {
            let front = front.clone();
            std::thread::spawn(move || complete(&front, k))
        })
        .collect();
    for h in handles {
        h.join().expect("request thread");
    }
    assert!(metric(&front, "accellm_kv_copied_bytes_total{kind=\"replica\"}") > 0.0);
    let logs = dirs.map(|d| plain(&std::fs::read_to_string(d.join("log")).unwrap_or_default()));
    let opened: Vec<String> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("KV link open"))
        .map(str::to_string)
        .collect();
    assert!(!opened.is_empty(), "no KV link opened: {logs:?}");
    opened
}
