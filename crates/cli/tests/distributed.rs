//! `accellm worker` processes driven by an `accellm serve --workers` front, on loopback, with the
//! real default model (skipped with a message when it is absent; `ACCELLM_REQUIRE_MODEL=1` makes
//! that a failure).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{http, metric, model, run, start, Proc};

/// Greedy completions of a few prompts, sent concurrently.
fn completions(addr: &str) -> Vec<String> {
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village,",
        "The three primary colours are",
        "To make a cup of tea, first",
        "Water boils at",
    ];
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (addr, p) = (addr.to_string(), p.to_string());
            std::thread::spawn(move || {
                let body =
                    json!({"prompt": p, "max_tokens": 24, "temperature": 0, "ignore_eos": true});
                let (status, text) = http(&addr, "POST", "/v1/completions", Some(&body));
                assert_eq!(status, 200, "{text}");
                let v: Value = serde_json::from_str(&text).expect("JSON answer");
                v["choices"][0]["text"].as_str().expect("text").to_string()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect()
}

/// Requests that use what the worker returns besides tokens: token and prompt logprobs (echo),
/// and output constrained by a JSON schema (the grammar stays on the front, the worker samples
/// from the tokens it allows). Sent one at a time, so each runs in a batch of its own.
fn api_features(addr: &str) -> Vec<Value> {
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"]
    });
    let requests = [
        (
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0,
                   "logprobs": 2, "echo": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Describe Paris as JSON."}],
                   "max_tokens": 40, "temperature": 0, "logprobs": true, "top_logprobs": 2,
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "city", "schema": schema}}}),
        ),
    ];
    requests
        .iter()
        .map(|(path, body)| {
            let (status, text) = http(addr, "POST", path, Some(body));
            assert_eq!(status, 200, "{path}: {text}");
            let v: Value = serde_json::from_str(&text).expect("JSON answer");
            v["choices"][0].clone()
        })
        .collect()
}

/// Every number in `a` within `tol` of the one in `b`, everything else equal.
fn assert_close(a: &Value, b: &Value, tol: f64, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                assert_close(p, q, tol, &format!("{at}[{k}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: keys"
            );
            for (k, p) in x {
                assert_close(p, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn two_worker_processes_answer_like_the_in_process_server() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let worker = [
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--model",
        model,
        "--kv-blocks",
        "128",
    ];
    let (_w0, a0) = start(&worker);
    let (_w1, a1) = start(&worker);
    let workers = format!("{a0},{a1}");
    let (_front, front) = start(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "128",
        "--workers",
        &workers,
    ]);
    let remote = completions(&front);
    let remote_api = api_features(&front);
    // Every prefill's KV went worker to worker (the front only hears the byte count).
    assert!(metric(&front, "accellm_kv_copied_bytes_total{kind=\"replica\"}") > 0.0);

    let (_local, local_addr) = start(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "128",
    ]);
    let local = completions(&local_addr);
    assert_eq!(
        remote, local,
        "greedy outputs differ between workers and in-process instances"
    );
    assert!(remote.iter().all(|t| !t.is_empty()));
    let local_api = api_features(&local_addr);
    assert_close(
        &Value::from(remote_api.clone()),
        &Value::from(local_api),
        1e-4,
        "choices",
    );
    let echo = &remote_api[0]["logprobs"];
    assert!(
        echo["token_logprobs"][0].is_null(),
        "echo: the first prompt token has no logprob"
    );
    assert!(echo["token_logprobs"]
        .as_array()
        .is_some_and(|l| l.len() > 5));
    let city: Value = serde_json::from_str(
        remote_api[1]["message"]["content"]
            .as_str()
            .expect("content"),
    )
    .expect("constrained output over workers is JSON");
    assert!(
        city["city"].is_string() && city["population"].is_i64(),
        "{city}"
    );
    assert!(remote_api[1]["logprobs"]["content"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
}

#[test]
fn a_front_with_another_block_geometry_is_refused() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (_w, addr) = start(&[
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--model",
        model,
        "--kv-blocks",
        "64",
        "--block-size",
        "16",
    ]);
    let (ok, stderr) = run(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "64",
        "--block-size",
        "32",
        "--workers",
        &addr,
    ]);
    assert!(!ok, "the front must refuse to start");
    assert!(stderr.contains("KV geometry mismatch"), "{stderr}");
}

/// `count` greedy completions of `max_tokens` tokens each, sent at once; returns their texts.
fn batch(addr: &str, count: usize, max_tokens: u32) -> Vec<String> {
    let handles: Vec<_> = (0..count)
        .map(|k| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let body = json!({
                    "prompt": format!("Request {k}: list some facts about the number {}.", k * 7 + 3),
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": true,
                });
                let (status, text) = http(&addr, "POST", "/v1/completions", Some(&body));
                assert_eq!(status, 200, "request {k} failed: {text}");
                let v: Value = serde_json::from_str(&text).expect("JSON answer");
                assert_eq!(v["usage"]["completion_tokens"], max_tokens, "request {k}: {text}");
                v["choices"][0]["text"].as_str().expect("text").to_string()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect()
}

/// A worker with a 256-block pool listening on `listen`.
fn small_worker(model: &str, listen: &str) -> (Proc, String) {
    start(&[
        "worker",
        "--listen",
        listen,
        "--model",
        model,
        "--kv-blocks",
        "256",
    ])
}

/// A front scheduling 256 blocks per instance over `workers` (comma-separated addresses).
fn small_front(model: &str, workers: &str) -> (Proc, String) {
    start(&[
        "serve",
        "--port",
        "0",
        "--model",
        model,
        "--kv-blocks",
        "256",
        "--workers",
        workers,
    ])
}

#[test]
fn killing_a_worker_mid_run_loses_no_request_and_a_restarted_one_is_taken_back() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let worker = |listen: &str| small_worker(model, listen);
    let (_w0, a0) = worker("127.0.0.1:0");
    let (w1, a1) = worker("127.0.0.1:0");
    let workers = format!("{a0},{a1}");
    let (_front, front) = small_front(model, &workers);
    let calm = batch(&front, 12, 24);

    let killer = {
        let (mut w1, front) = (w1, front.clone());
        let before = metric(&front, "vllm:generation_tokens_total");
        std::thread::spawn(move || {
            // Once the batch is well under way (a third of its tokens out)...
            while metric(&front, "vllm:generation_tokens_total") < before + 100.0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            // ... SIGKILL: no goodbye on the connection.
            let _ = w1.0.kill();
            let _ = w1.0.wait();
        })
    };
    let disturbed = batch(&front, 12, 24);
    killer.join().expect("killer thread");
    assert_eq!(metric(&front, "accellm_instance_up{instance=\"1\"}"), 0.0);
    let recovered = metric(&front, "accellm_requests_recovered_total{kind=\"replica\"}")
        + metric(
            &front,
            "accellm_requests_recovered_total{kind=\"recompute\"}",
        );
    assert!(recovered > 0.0, "the kill hit requests in flight");
    assert_eq!(disturbed, calm, "greedy outputs changed by the failure");

    // A worker restarted on the same address is taken back into its pair.
    let (_w1b, _) = worker(&a1);
    let t0 = std::time::Instant::now();
    while metric(&front, "accellm_instance_up{instance=\"1\"}") != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "restarted worker not re-admitted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = batch(&front, 4, 16);
    assert!(after.iter().all(|t| !t.is_empty()));
}

/// Sends one completion and reads until the server closes; an error or a cut answer is `Err`.
fn completion_until_closed(addr: &str, max_tokens: u32) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| e.to_string())?;
    let body =
        json!({"prompt": "Tell a long story.", "max_tokens": max_tokens, "ignore_eos": true})
            .to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("cut: {resp:?}")),
    }
}

#[test]
fn a_restarted_front_drives_the_same_workers_again() {
    let Some(model) = model() else { return };
    let model = model.to_str().expect("UTF-8 path");
    let worker = |listen: &str| small_worker(model, listen);
    let (_w0, a0) = worker("127.0.0.1:0");
    let (_w1, a1) = worker("127.0.0.1:0");
    let workers = format!("{a0},{a1}");
    let front = || small_front(model, &workers);
    let (mut first, addr) = front();
    let calm = batch(&addr, 6, 16);

    // A long request is decoding when the front is SIGKILLed: its client sees the connection
    // end (no hang, no made-up answer).
    let before = metric(&addr, "vllm:generation_tokens_total");
    let long = {
        let addr = addr.clone();
        std::thread::spawn(move || completion_until_closed(&addr, 2000))
    };
    while metric(&addr, "vllm:generation_tokens_total") < before + 20.0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = first.0.kill();
    let _ = first.0.wait();
    let cut = long.join().expect("client thread");
    assert!(cut.is_err(), "a request outlived its front: {cut:?}");

    // The workers drop the dead front's session and accept a new front scheduling their whole
    // pool (the handshake refuses more blocks than a pool holds): the same greedy outputs.
    let (_second, addr) = front();
    assert_eq!(metric(&addr, "accellm_instance_up{instance=\"0\"}"), 1.0);
    assert_eq!(metric(&addr, "accellm_instance_up{instance=\"1\"}"), 1.0);
    assert_eq!(batch(&addr, 6, 16), calm);
}
