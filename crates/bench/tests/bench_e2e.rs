//! `accellm bench` end to end against a local test server with known latencies and failure
//! modes (axum on 127.0.0.1, port 0).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accellm_bench::cli::{run, BenchArgs};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};

const TTFT: Duration = Duration::from_millis(50);
const ITL: Duration = Duration::from_millis(10);
/// The one extra gap of model `stall`.
const STALL: Duration = Duration::from_millis(300);

/// What the server saw: (x-slo-ttft-ms, x-slo-tpot-ms, body).
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Value)>>>;

/// Each request's exchange, in the order they came: its answer, when it came and when its
/// stream ended.
type Log = Arc<Mutex<Vec<Exchange>>>;

#[derive(Debug, Clone)]
struct Exchange {
    body: Value,
    answer: String,
    received: Instant,
    done: Option<Instant>,
}

#[derive(Clone)]
struct Server {
    seen: Seen,
    log: Log,
}

fn chunk(chat: bool, text: &str) -> Bytes {
    let v = if chat {
        json!({"choices": [{"index": 0, "delta": {"content": text}}]})
    } else {
        json!({"choices": [{"index": 0, "text": text}]})
    };
    Bytes::from(format!("data: {v}\n\n"))
}

async fn generate(
    State(s): State<Server>,
    headers: HeaderMap,
    body: Json<Value>,
    chat: bool,
) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    s.seen
        .lock()
        .unwrap()
        .push((h("x-slo-ttft-ms"), h("x-slo-tpot-ms"), body.0.clone()));
    let model = body["model"].as_str().unwrap_or("").to_string();
    let n = body["max_tokens"].as_u64().unwrap_or(1);
    // Every answer is text of its own: word i of request j is `wJxI`.
    let (j, log) = {
        let mut log = s.log.lock().unwrap();
        log.push(Exchange {
            body: body.0.clone(),
            answer: String::new(),
            received: Instant::now(),
            done: None,
        });
        (log.len() - 1, s.log.clone())
    };
    if model == "error500" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if model == "hang" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(TTFT).await;
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(ITL).await;
            }
            let word = format!("w{j}x{i} ");
            log.lock().unwrap()[j].answer.push_str(&word);
            if tx.send(chunk(chat, &word)).await.is_err() {
                return;
            }
            if model == "truncate" && i == 2 {
                return; // ends the body without [DONE]
            }
            if model == "stall" && i == 2 {
                tokio::time::sleep(STALL).await; // one long gap between tokens
            }
        }
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n}});
        let _ = tx.send(Bytes::from(format!("data: {usage}\n\n"))).await;
        log.lock().unwrap()[j].done = Some(Instant::now());
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// vLLM's prefix-cache counters as a server caching every prompt and answer would count them, in
/// words: each prompt queries all its words and hits its longest common word prefix with an
/// earlier prompt followed by that prompt's answer.
async fn prefix_metrics(State(s): State<Server>) -> String {
    let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let log = s.log.lock().unwrap();
    let exchanges: Vec<(Vec<String>, Vec<String>)> = log
        .iter()
        .filter_map(|e| {
            let p = e.body["prompt"].as_str()?;
            Some((words(p), words(&format!("{p}{}", e.answer))))
        })
        .collect();
    let (mut queries, mut hits) = (0usize, 0usize);
    for (i, (p, _)) in exchanges.iter().enumerate() {
        queries += p.len();
        hits += exchanges[..i]
            .iter()
            .map(|(_, q)| q.iter().zip(p).take_while(|(a, b)| a == b).count())
            .max()
            .unwrap_or(0);
    }
    format!(
        "# TYPE vllm:prefix_cache_queries counter\n\
         vllm:prefix_cache_queries_total{{model_name=\"m\"}} {queries}\n\
         vllm:prefix_cache_hits_total{{model_name=\"m\"}} {hits}\n"
    )
}

/// Starts the test server on its own runtime thread; returns its address and request log.
fn start_server() -> (SocketAddr, Seen) {
    let (addr, seen, _) = start_logged_server();
    (addr, seen)
}

/// [`start_server`], also returning every exchange.
fn start_logged_server() -> (SocketAddr, Seen, Log) {
    let seen: Seen = Arc::default();
    let log: Log = Arc::default();
    let state = Server {
        seen: seen.clone(),
        log: log.clone(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/v1/completions", post(|s, h, b| generate(s, h, b, false)))
                .route(
                    "/v1/chat/completions",
                    post(|s, h, b| generate(s, h, b, true)),
                )
                .route("/metrics", get(prefix_metrics))
                .route(
                    "/v1/models",
                    get(|| async { Json(json!({"data": [{"id": "listed-model"}]})) }),
                )
                .with_state(state);
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (addr, seen, log)
}

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: BenchArgs,
}

fn temp_json(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `accellm bench` with these flags (plus --base-url, --json, --no-progress) and returns
/// the JSON result.
fn bench(addr: SocketAddr, name: &str, flags: &[&str]) -> Value {
    let out = temp_json(name);
    let base = format!("http://{addr}");
    let mut argv = vec!["bench", "--base-url", &base, "--no-progress", "--json"];
    let out_s = out.to_str().unwrap().to_string();
    argv.push(&out_s);
    argv.extend_from_slice(flags);
    let cmd = Cmd::try_parse_from(argv).unwrap();
    run(cmd.args).unwrap();
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn metrics_match_known_latencies() {
    let (addr, seen) = start_server();
    let j = bench(
        addr,
        "known.json",
        &[
            "--model",
            "ok",
            "--workload",
            "synthetic:prompt=32,output=20",
            "--num-prompts",
            "8",
            "--max-concurrency",
            "4",
            "--slo",
            "fixed:200:30",
            "--goodput",
            "ttft:1000",
            "tpot:100",
        ],
    );
    assert_eq!(j["completed"], 8);
    assert_eq!(j["failed"], 0);
    assert_eq!(j["total_output_tokens"], 160);
    assert_eq!(j["total_input_tokens"], 256);
    assert!(j["output_lens"].as_array().unwrap().iter().all(|v| v == 20));
    assert_eq!(j["server_input_lens"][0], 7);
    assert_eq!(j["itls"][0].as_array().unwrap().len(), 19);

    // Lower bounds are the server's sleeps; upper bounds leave room for a loaded CI machine.
    let ttft = f(&j, "median_ttft_ms");
    assert!((50.0..150.0).contains(&ttft), "median TTFT {ttft}");
    assert!(f(&j, "p99_ttft_ms") >= ttft);
    let itl = f(&j, "mean_itl_ms");
    assert!((9.5..25.0).contains(&itl), "mean ITL {itl}");
    let tpot = f(&j, "mean_tpot_ms");
    assert!((9.5..25.0).contains(&tpot), "mean TPOT {tpot}");
    let e2el = f(&j, "mean_e2el_ms");
    assert!((240.0..600.0).contains(&e2el), "mean E2EL {e2el}");
    // Closed loop of 8 requests at concurrency 4: two waves of ~240 ms.
    let dur = f(&j, "duration");
    assert!((0.48..3.0).contains(&dur), "duration {dur}");
    assert!(j["max_concurrent_requests"].as_u64().unwrap() <= 8);
    assert!((f(&j, "request_throughput") - 8.0 / dur).abs() < 1e-9);
    assert!((f(&j, "request_goodput") - 8.0 / dur).abs() < 1e-9);
    let att = &j["slo_attainment"][0];
    assert_eq!(att["requests"], 8);
    // Mean TPOT ~10 ms against a 30 ms SLO; single gaps may stretch on a loaded machine.
    assert_eq!(att["met_mean"], 8);
    assert!(att["met_strict"].as_u64().unwrap() <= 8);
    assert!((f(&j, "goodput_mean") - 8.0 / dur).abs() < 1e-9);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 8);
    for (ttft, tpot, body) in seen.iter() {
        assert_eq!(ttft.as_deref(), Some("200"));
        assert_eq!(tpot.as_deref(), Some("30"));
        assert_eq!(body["max_tokens"], 20);
        assert_eq!(body["min_tokens"], 20);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "ok");
        let words = body["prompt"].as_str().unwrap().split_whitespace().count();
        assert!(
            (10..40).contains(&words),
            "prompt of {words} words for 32 tokens"
        );
    }
}

#[test]
fn tight_goodput_and_slo_are_missed() {
    let (addr, seen) = start_server();
    let j = bench(
        addr,
        "tight.json",
        &[
            "--model",
            "ok",
            "--workload",
            "synthetic:prompt=8,output=5",
            "--num-prompts",
            "4",
            "--slo",
            "fixed:10:30",
            "--goodput",
            "ttft:10",
            "--no-ignore-eos",
            "--extra-body",
            r#"{"logit_bias": {"2": -100}, "temperature": 0.5}"#,
        ],
    );
    for (_, _, body) in seen.lock().unwrap().iter() {
        assert_eq!(body["logit_bias"]["2"], -100);
        assert_eq!(body["temperature"], 0.5);
        assert!(body.get("ignore_eos").is_none() && body.get("min_tokens").is_none());
    }
    assert_eq!(j["completed"], 4);
    assert_eq!(f(&j, "request_goodput"), 0.0);
    let att = &j["slo_attainment"][0];
    assert_eq!(
        (&att["met_strict"], &att["met_mean"]),
        (&0.into(), &0.into())
    );
    assert_eq!(att["tpot_met"], 4);
}

#[test]
fn one_long_gap_misses_the_strict_slo_but_not_the_mean() {
    let (addr, _) = start_server();
    let j = bench(
        addr,
        "stall.json",
        &[
            "--model",
            "stall",
            "--workload",
            "synthetic:prompt=8,output=40",
            "--num-prompts",
            "4",
            "--slo",
            "fixed:5000:100",
            "--goodput",
            "ttft:5000 tpot:100",
        ],
    );
    assert_eq!(j["completed"], 4);
    // Mean TPOT ~18 ms: within 100 ms, as vLLM's --goodput sees it; one gap of 300+ ms is not.
    let att = &j["slo_attainment"][0];
    assert_eq!(att["met_strict"], 0);
    assert_eq!(att["met_mean"], 4);
    assert_eq!((&att["tbt_met"], &att["tpot_met"]), (&0.into(), &4.into()));
    assert_eq!(f(&j, "goodput_strict"), 0.0);
    let dur = f(&j, "duration");
    assert!((f(&j, "goodput_mean") - 4.0 / dur).abs() < 1e-9);
    assert!((f(&j, "request_goodput") - 4.0 / dur).abs() < 1e-9);
}

#[test]
fn open_loop_follows_arrival_times() {
    let (addr, _) = start_server();
    let j = bench(
        addr,
        "open.json",
        &[
            "--model",
            "ok",
            "--workload",
            "synthetic:prompt=8,output=2",
            "--num-prompts",
            "12",
            "--rate",
            "20",
            "--seed",
            "3",
        ],
    );
    assert_eq!(j["completed"], 12);
    // Same arrivals as the workload crate generates for this seed.
    let mut spec =
        accellm_workload::WorkloadSpec::new("synthetic:prompt=8,output=2".parse().unwrap());
    spec.arrivals = Some(accellm_workload::Arrivals::Poisson { rate: 20.0 });
    spec.max_requests = Some(12);
    spec.seed = 3;
    let w = spec.generate().unwrap();
    let starts = j["start_times"].as_array().unwrap();
    for (r, s) in w.requests.iter().zip(starts) {
        let s = s.as_f64().unwrap();
        assert!(
            s >= r.arrival_s - 1e-3 && s < r.arrival_s + 0.25,
            "sent at {s}, due {}",
            r.arrival_s
        );
    }
    assert_eq!(j["request_rate"], 20.0);
}

#[test]
fn chat_endpoint_with_slo_classes_and_model_discovery() {
    let (addr, seen) = start_server();
    let j = bench(
        addr,
        "chat.json",
        &[
            "--endpoint",
            "/v1/chat/completions",
            "--workload",
            "mix:synthetic:prompt=16,output=3*1@chat+synthetic:prompt=64,output=3*1@batch",
            "--slo",
            "per-source",
            "--num-prompts",
            "10",
        ],
    );
    assert_eq!(j["completed"], 10);
    assert_eq!(j["model_id"], "listed-model");
    let seen = seen.lock().unwrap();
    for (ttft, tpot, body) in seen.iter() {
        assert_eq!(body["model"], "listed-model");
        assert!(body["messages"][0]["content"].is_string());
        match body["priority"].as_i64() {
            Some(0) => assert_eq!(
                (ttft.as_deref(), tpot.as_deref()),
                (Some("1000"), Some("50"))
            ),
            Some(3) => assert_eq!(
                (ttft.as_deref(), tpot.as_deref()),
                (Some("30000"), Some("1000"))
            ),
            other => panic!("unexpected priority {other:?}"),
        }
    }
    let classes: Vec<&str> = j["slo_attainment"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["requests"].as_u64().unwrap() > 0)
        .map(|a| a["class"].as_str().unwrap())
        .collect();
    assert!(classes.contains(&"all") && classes.contains(&"chat") && classes.contains(&"batch"));
}

#[test]
fn failures_are_counted_and_never_hang() {
    let (addr, _) = start_server();
    let t = Instant::now();
    let j = bench(
        addr,
        "e500.json",
        &[
            "--model",
            "error500",
            "--workload",
            "synthetic:prompt=8,output=4",
            "--num-prompts",
            "3",
        ],
    );
    assert_eq!(
        (j["completed"].as_u64(), j["failed"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(j["failures_by_kind"]["http"], 3);
    assert!(j["errors"][0].as_str().unwrap().contains("500"));

    let j = bench(
        addr,
        "trunc.json",
        &[
            "--model",
            "truncate",
            "--workload",
            "synthetic:prompt=8,output=10",
            "--num-prompts",
            "3",
        ],
    );
    assert_eq!(j["failed"], 3);
    assert_eq!(j["failures_by_kind"]["truncated"], 3);
    assert_eq!(j["output_lens"][0], 0);

    let j = bench(
        addr,
        "hang.json",
        &[
            "--model",
            "hang",
            "--workload",
            "synthetic:prompt=8,output=4",
            "--num-prompts",
            "3",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(j["failures_by_kind"]["timeout"], 3);

    // Nothing listening: connection refused, quickly.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let j = bench(
        dead,
        "dead.json",
        &[
            "--model",
            "m",
            "--workload",
            "synthetic:prompt=8,output=4",
            "--num-prompts",
            "2",
            "--timeout",
            "2",
        ],
    );
    assert_eq!(j["failures_by_kind"]["connect"], 2);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn html_report_has_every_chart_with_data() {
    let (addr, _seen) = start_server();
    let html_path = temp_json("report.html");
    let html_s = html_path.to_str().unwrap().to_string();
    let j = bench(
        addr,
        "report.json",
        &[
            "--model",
            "ok",
            "--workload",
            "synthetic:prompt=16,output=6",
            "--num-prompts",
            "4",
            "--max-concurrency",
            "2",
            "--report",
            &html_s,
        ],
    );
    assert_eq!(j["completed"], 4);
    let html = std::fs::read_to_string(&html_path).unwrap();
    for title in [
        "Time to first token",
        "Time per output token",
        "Inter-token latency",
        "End-to-end latency",
        "Output token rate",
    ] {
        assert!(html.contains(title), "chart {title} missing");
    }
    assert_eq!(html.matches("<svg").count(), 5, "one SVG per chart");
    assert!(!html.contains("no data"), "a chart came out empty");
    assert!(html.contains(&format!("http://{addr}")) || html.contains("/v1/"));
}

#[test]
fn chat_follow_ups_carry_the_servers_answers_after_they_arrive() {
    let (addr, _, log) = start_logged_server();
    let j = bench(
        addr,
        "chat.json",
        &[
            "--model",
            "ok",
            "--workload",
            "chat:turns=3,user=40,output=8,think_ms=200,tpot_ms=1",
            "--num-prompts",
            "12",
        ],
    );
    assert_eq!(j["completed"], 12);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 12);
    let prompt = |e: &Exchange| e.body["prompt"].as_str().unwrap().to_string();
    // Four conversations of three turns, started at once: every follow-up is an earlier prompt,
    // the text the server answered to it, a blank line and a new user message; and it came only
    // after that answer's stream ended plus the 200 ms think time (the workload's own timing
    // would have sent it 208 ms after the earlier turn, before the answer's 120 ms plus the
    // think time had passed).
    let mut follow_ups = 0;
    for (i, e) in log.iter().enumerate() {
        let p = prompt(e);
        let earlier = log[..i].iter().rev().find(|q| {
            p.starts_with(&format!("{}{}\n\n", prompt(q), q.answer)) && !q.answer.is_empty()
        });
        if let Some(q) = earlier {
            follow_ups += 1;
            let done = q.done.expect("the earlier answer ended");
            let gap = e.received.duration_since(done);
            assert!(
                gap >= Duration::from_millis(195),
                "{gap:?} after the answer"
            );
            assert!(gap < Duration::from_secs(5), "{gap:?}");
            let user = &p[prompt(q).len() + q.answer.len() + 2..];
            assert!(!user.is_empty() && !user.contains('\n'), "{user}");
        } else {
            assert!(!p.contains("x0 w"), "a first turn carries no answer: {p}");
        }
    }
    assert_eq!(follow_ups, 8);
    // A server caching prompts and answers hits every follow-up's history: per conversation
    // 0 + (40 + 8) + (88 + 8) of 40 + 88 + 136 tokens (counted in words by the test server).
    let rate = f(&j, "prefix_cache_hit_rate");
    assert!((0.45..0.65).contains(&rate), "hit rate {rate}");
    assert!(f(&j, "prefix_cache_queries") > f(&j, "prefix_cache_hits"));
}

#[test]
fn chat_conversations_send_messages_and_end_at_a_failed_turn() {
    let (addr, _, log) = start_logged_server();
    let j = bench(
        addr,
        "chat-messages.json",
        &[
            "--model",
            "ok",
            "--endpoint",
            "/v1/chat/completions",
            "--workload",
            "chat:turns=2,user=20,output=4,think_ms=10,tpot_ms=1,system=30",
            "--num-prompts",
            "4",
        ],
    );
    assert_eq!(j["completed"], 4);
    let log = log.lock().unwrap().clone();
    let follow_ups: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.body["messages"].as_array().unwrap().len() > 2)
        .collect();
    assert_eq!(follow_ups.len(), 2);
    for e in follow_ups {
        let m = e.body["messages"].as_array().unwrap();
        let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        // The assistant message is exactly what the server streamed for the first turn.
        let first = log
            .iter()
            .find(|q| q.body["messages"].as_array().unwrap()[..2] == m[..2])
            .unwrap();
        assert_eq!(m[2]["content"].as_str().unwrap(), first.answer);
    }

    // A turn that fails ends its conversation: the next is not sent and counts as failed.
    let (addr, _, log) = start_logged_server();
    let out = temp_json("chat-fail.json");
    let base = format!("http://{addr}");
    let cmd = Cmd::try_parse_from([
        "bench",
        "--base-url",
        &base,
        "--no-progress",
        "--json",
        out.to_str().unwrap(),
        "--model",
        "error500",
        "--workload",
        "chat:turns=3,user=20,output=4,think_ms=10,tpot_ms=1",
        "--num-prompts",
        "6",
    ])
    .unwrap();
    run(cmd.args).unwrap();
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(j["completed"], 0);
    assert_eq!(
        log.lock().unwrap().len(),
        2,
        "only the two first turns went"
    );
    assert_eq!(
        j["failures_by_kind"]["abandoned"], 4,
        "{}",
        j["failures_by_kind"]
    );
    assert_eq!(j["failures_by_kind"]["http"], 2);
}
