//! Helpers shared by the tests that run `accellm` processes: a child killed when dropped, the
//! real model (or a skip), starting a server and waiting for its address, plain HTTP and
//! `/metrics` reads.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real default model, or `None` (with a message) when it is absent; a failure when
/// `ACCELLM_REQUIRE_MODEL` is set.
pub fn model() -> Option<PathBuf> {
    let path = accellm_tokenizer::default_model_path();
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("ACCELLM_REQUIRE_MODEL").is_none(),
        "ACCELLM_REQUIRE_MODEL is set but {} is missing",
        path.display()
    );
    eprintln!(
        "skipped: {} not present (run `accellm serve` once to fetch it)",
        path.display()
    );
    None
}

/// Starts `accellm ARGS` and waits (at most 120 s) for the line announcing its address on
/// stderr; returns the process, the address and the lines printed before it.
pub fn start_logged(args: &[&str]) -> (Proc, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_accellm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("accellm starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut before = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let addr = addr
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(Ok((addr, std::mem::take(&mut before))));
            } else if line.contains("Error") {
                let _ = tx.send(Err(line));
            } else {
                before.push(line);
            }
        }
    });
    let proc = Proc(child);
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok((addr, before))) => (proc, addr, before),
        Ok(Err(line)) => panic!("accellm {args:?} failed: {line}"),
        Err(_) => panic!("accellm {args:?} did not start listening"),
    }
}

/// [`start_logged`] without the lines.
pub fn start(args: &[&str]) -> (Proc, String) {
    let (p, addr, _) = start_logged(args);
    (p, addr)
}

/// Runs `accellm ARGS` to completion (killed after 120 s); returns its exit success and stderr.
pub fn run(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_accellm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("accellm runs");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("accellm {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().expect("stderr reader"))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The first sample of metric `name` on `addr`'s `/metrics`.
pub fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", None);
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}
