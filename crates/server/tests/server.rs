//! End-to-end tests: a real server on a loopback port with a tiny random-weight model.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{metric_in, start, tiny_config, Http, TINY_CONTEXT};

fn completion(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
    })
}

/// Waits until every instance's KV blocks are free and nothing runs; returns the metrics text.
async fn wait_all_free(http: &Http, instances: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = http.get("/metrics").await.body;
        let running = metric_in(&text, "vllm:num_requests_running{").unwrap();
        let waiting = metric_in(&text, "vllm:num_requests_waiting{").unwrap();
        let all_free = (0..instances).all(|i| {
            metric_in(
                &text,
                &format!("accellm_kv_free_blocks{{instance=\"{i}\"}}"),
            ) == metric_in(
                &text,
                &format!("accellm_kv_total_blocks{{instance=\"{i}\"}}"),
            )
        });
        if running == 0.0 && waiting == 0.0 && all_free {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "KV blocks not freed in time:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_have_the_openai_fields() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());

    assert_eq!(http.get("/health").await.status, 200);
    let models = http.get("/v1/models").await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");

    let r = http
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "tiny",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
                "max_tokens": 7,
                "temperature": 0,
                "ignore_eos": true,
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "tiny");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert_eq!(choice["finish_reason"], "length");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 7);
    assert!(
        u["prompt_tokens"].as_u64().unwrap() > 10,
        "chat template applied: {u}"
    );
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 7
    );

    let r = http.post("/v1/completions", &completion("hello", 5)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"]["prompt_tokens"], 4,
        "\"hello\" is h·e merged, l, l, o"
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);

    // A prompt given as token ids is taken as is.
    let r = http
        .post(
            "/v1/completions",
            &json!({"prompt": [104, 105, 33], "max_tokens": 2, "ignore_eos": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["prompt_tokens"], 3);
    server.shutdown().unwrap();
}

fn parse_events(events: &[String]) -> (Vec<Value>, bool) {
    let done = events.last().map(String::as_str) == Some("[DONE]");
    let chunks = events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("bad chunk {e}: {err}")))
        .collect();
    (chunks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chunks_are_well_formed() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "count to ten"}],
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let (status, events) = http.stream("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let (chunks, done) = parse_events(&events);
    assert!(done, "stream ends with [DONE]");
    let id = chunks[0]["id"].as_str().unwrap().to_string();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finishes = 0;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id.as_str());
        assert_eq!(c["model"], "tiny");
        let choices = c["choices"].as_array().unwrap();
        if choices.is_empty() {
            continue;
        }
        assert!(c["usage"].is_null(), "usage is null on content chunks: {c}");
        if let Some(t) = choices[0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !choices[0]["finish_reason"].is_null() {
            finishes += 1;
            assert_eq!(choices[0]["finish_reason"], "length");
        }
    }
    assert_eq!(finishes, 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 12);

    // The same request without streaming yields the same text.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    plain.as_object_mut().unwrap().remove("stream_options");
    let v = http.post("/v1/chat/completions", &plain).await.json();
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        text
    );

    // Completions stream too; without include_usage there is no usage chunk.
    let mut b = completion("abc", 4);
    b["stream"] = json!(true);
    let (status, events) = http.stream("/v1/completions", &b).await;
    assert_eq!(status, 200);
    let (chunks, done) = parse_events(&events);
    assert!(done);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_streams_complete() {
    let server = start(tiny_config());
    let http = std::sync::Arc::new(Http::new(server.addr()));
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let max = 3 + i % 13;
            let mut b = completion(&format!("request number {i} says"), max);
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
            let (status, events) = http.stream("/v1/completions", &b).await;
            assert_eq!(status, 200);
            let (chunks, done) = parse_events(&events);
            assert!(done);
            let usage = &chunks.last().unwrap()["usage"];
            (max, usage["completion_tokens"].as_u64().unwrap())
        }));
    }
    for t in tasks {
        let (want, got) = t.await.unwrap();
        assert_eq!(got, want as u64);
    }
    let text = wait_all_free(&http, 2).await;
    assert!(metric_in(&text, "vllm:generation_tokens_total{").unwrap() >= 32.0 * 3.0);
    assert_eq!(
        metric_in(&text, "vllm:e2e_request_latency_seconds_count{").unwrap(),
        32.0
    );
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_stream_frees_every_block() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let mut b = completion("a long story", 300);
    b["stream"] = json!(true);
    let resp = http.open("/v1/completions", &b).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let mut got = 0;
    while got < 3 {
        let f = body.frame().await.expect("frame").expect("ok");
        if f.data_ref().is_some_and(|d| d.starts_with(b"data: {")) {
            got += 1;
        }
    }
    // Blocks are held while it runs.
    let held = http.get("/metrics").await.body;
    assert_eq!(metric_in(&held, "vllm:num_requests_running{").unwrap(), 1.0);
    drop(body);
    let text = wait_all_free(&http, 2).await;
    assert_eq!(
        metric_in(
            &text,
            "vllm:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}"
        ),
        Some(1.0)
    );
    let generated = metric_in(&text, "vllm:generation_tokens_total{").unwrap();
    assert!(
        generated < 300.0,
        "generation stopped early ({generated} tokens)"
    );
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors() {
    let mut cfg = tiny_config();
    cfg.max_body_bytes = 4096;
    let server = start(cfg);
    let http = Http::new(server.addr());
    let check = |r: &support::Reply, status: u16, needle: &str| {
        assert_eq!(r.status.as_u16(), status, "{}", r.body);
        let v = r.json();
        let e = &v["error"];
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(e["type"].is_string());
        assert!(e.get("param").is_some() && e.get("code").is_some());
        v
    };
    let r = http
        .send("POST", "/v1/chat/completions", b"{not json".to_vec(), &[])
        .await;
    check(&r, 400, "Invalid JSON");
    let r = http
        .post("/v1/chat/completions", &json!({"messages": "hi"}))
        .await;
    check(&r, 400, "Invalid JSON");
    let r = http
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    check(&r, 404, "gpt-9");
    for (body, param) in [
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "logprobs": 21}), "logprobs"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (
            json!({"prompt": "x", "response_format": {"type": "xml"}}),
            "response_format",
        ),
        (json!({"prompt": "x", "temperature": 5}), "temperature"),
        (json!({"prompt": "x", "top_p": 1.5}), "top_p"),
        (json!({"prompt": "x", "max_tokens": -1}), "max_tokens"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": [99999]}), "prompt"),
    ] {
        let r = http.post("/v1/completions", &body).await;
        let v = check(&r, 400, "");
        assert_eq!(v["error"]["param"], param, "{body}");
    }
    let r = http
        .post("/v1/completions", &completion("x", TINY_CONTEXT))
        .await;
    let v = check(
        &r,
        400,
        &format!("maximum context length is {TINY_CONTEXT}"),
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{} tokens", TINY_CONTEXT + 1)),
        "{msg}"
    );
    assert!(msg.contains("1 in the prompt"), "{msg}");
    let big = "x".repeat(8000);
    let r = http.post("/v1/completions", &completion(&big, 4)).await;
    check(&r, 413, "4096 bytes");
    server.shutdown().unwrap();

    // API key.
    let mut cfg = tiny_config();
    cfg.api_key = Some("sesame".into());
    let server = start(cfg);
    let http = Http::new(server.addr());
    let body = serde_json::to_vec(&completion("hi", 2)).unwrap();
    let r = http
        .send("POST", "/v1/completions", body.clone(), &[])
        .await;
    check(&r, 401, "API key");
    let r = http
        .send(
            "POST",
            "/v1/completions",
            body.clone(),
            &[("authorization", "Bearer wrong")],
        )
        .await;
    check(&r, 401, "API key");
    let r = http
        .send(
            "POST",
            "/v1/completions",
            body,
            &[("authorization", "Bearer sesame")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(http.get("/health").await.status, 200);
    server.shutdown().unwrap();

    // Queue full: one waiting request at most, many arriving together.
    let mut cfg = tiny_config();
    cfg.max_waiting = 1;
    let server = start(cfg);
    let http = std::sync::Arc::new(Http::new(server.addr()));
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(6);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (http, p) = (http.clone(), prompt.clone());
            tokio::spawn(async move { http.post("/v1/completions", &completion(&p, 2)).await })
        })
        .collect();
    let mut full = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => {}
            429 => {
                check(&r, 429, "queue is full");
                full += 1;
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    assert!(full > 0, "some of 16 simultaneous requests were refused");
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_greedy_text_is_the_same_on_either_instance() {
    let server = start(tiny_config());
    let http = std::sync::Arc::new(Http::new(server.addr()));
    let mut used = std::collections::BTreeSet::new();
    let mut texts = std::collections::BTreeSet::new();
    for round in 0..3 {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let http = http.clone();
                tokio::spawn(async move {
                    let mut b = completion("once upon a time", 16);
                    b["seed"] = json!(42);
                    http.post("/v1/completions", &b).await
                })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            let inst = r.headers["x-accellm-instances"]
                .to_str()
                .unwrap()
                .to_string();
            for i in inst.split(',') {
                used.insert(i.to_string());
            }
            texts.insert(r.json()["choices"][0]["text"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(used.len(), 2, "both instances served: {used:?}");
    assert_eq!(texts.len(), 1, "one text whatever the instance: {texts:?}");
    if server_policy_replicates() {
        // The engine copies exactly the tokens the core plans to stream: the real-copy counters
        // equal the planned ones. /metrics is published after the scheduler thread handles its
        // events, so give the last iteration's snapshot a moment to land.
        let counters = |m: &str| {
            let get = |name: &str| metric_in(m, name).unwrap_or(-1.0);
            (
                get("accellm_replica_bytes_total "),
                get("accellm_kv_copied_bytes_total{kind=\"replica\"} "),
                get("accellm_transfer_bytes_total "),
                get("accellm_kv_copied_bytes_total{kind=\"transfer\"} "),
            )
        };
        let mut m = http.get("/metrics").await.body;
        for _ in 0..50 {
            let (planned, copied, planned_t, copied_t) = counters(&m);
            if planned == copied && planned_t == copied_t {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            m = http.get("/metrics").await.body;
        }
        let (planned, copied, planned_t, copied_t) = counters(&m);
        assert!(copied > 0.0, "AcceLLM replicas were really copied:\n{m}");
        assert_eq!(copied, planned, "replica bytes copied = planned:\n{m}");
        assert_eq!(copied_t, planned_t, "transfer bytes copied = planned:\n{m}");
    }

    // Sampling with a seed is reproducible too.
    let mut b = completion("once upon a time", 16);
    b["seed"] = json!(7);
    b["temperature"] = json!(1.0);
    let a = http.post("/v1/completions", &b).await.json();
    let c = http.post("/v1/completions", &b).await.json();
    assert_eq!(a["choices"][0]["text"], c["choices"][0]["text"]);
    server.shutdown().unwrap();

    // A single instance that never moves KV says the same: replicated and moved KV is exact.
    let mut cfg = tiny_config();
    cfg.instances = 1;
    cfg.cluster = "round-robin".parse().unwrap();
    cfg.instance = "vllm".parse().unwrap();
    let server = start(cfg);
    let http = Http::new(server.addr());
    let mut b = completion("once upon a time", 16);
    b["seed"] = json!(42);
    let v = http.post("/v1/completions", &b).await.json();
    assert!(texts.contains(v["choices"][0]["text"].as_str().unwrap()));
    server.shutdown().unwrap();
}

/// Whether the default policy (AcceLLM) streams replicas.
fn server_policy_replicates() -> bool {
    matches!(
        tiny_config().cluster,
        accellm_core::cluster::ClusterConfig::Accellm(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_and_eos_end_generation() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    // Find what the model says greedily, then stop on a piece of it.
    let v = http
        .post("/v1/completions", &completion("zz", 24))
        .await
        .json();
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    let Some(pos) = (2..chars.len()).find(|&i| !chars[i].is_whitespace() && chars[i] != '\u{fffd}')
    else {
        return; // a degenerate random model; nothing to check
    };
    let stop: String = chars[pos..=pos].iter().collect();
    let mut b = completion("zz", 24);
    b["stop"] = json!([stop.clone()]);
    let v = http.post("/v1/completions", &b).await.json();
    let got = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(!got.contains(&stop), "{got:?} contains stop {stop:?}");
    assert!(
        text.starts_with(got),
        "{text:?} does not start with {got:?}"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 24);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_policy_serves() {
    for (cluster, instance) in [
        ("round-robin", "vllm"),
        ("least-load", "sarathi"),
        ("splitwise", "vllm"),
        ("accellm", "accelgen"),
    ] {
        if !accellm_core::cluster::NAMES.contains(&cluster)
            || !accellm_core::instance::NAMES.contains(&instance)
        {
            continue;
        }
        let mut cfg = tiny_config();
        cfg.cluster = cluster.parse().unwrap();
        cfg.instance = instance.parse().unwrap();
        let server = start(cfg);
        let http = std::sync::Arc::new(Http::new(server.addr()));
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let http = http.clone();
                tokio::spawn(async move {
                    http.post(
                        "/v1/completions",
                        &completion(&format!("policy test {i}"), 5 + i),
                    )
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{cluster}/{instance}: {}", r.body);
            assert_eq!(r.json()["usage"]["completion_tokens"], 5 + i as u64);
        }
        wait_all_free(&http, 2).await;
        server.shutdown().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_streams_finish() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let mut b = completion("last words", 200);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let resp = http.open("/v1/completions", &b).await;
    assert_eq!(resp.status(), 200);
    // Shut down while the stream runs: it must still complete within the grace period.
    let stopper = tokio::task::spawn_blocking(move || server.shutdown());
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"completion_tokens\":200"), "{text}");
    stopper.await.unwrap().unwrap();
    // New connections are refused once it is down.
    assert!(tokio::net::TcpStream::connect(http.addr()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_headers_are_checked() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let body = serde_json::to_vec(&completion("hi", 2)).unwrap();
    let r = http
        .send(
            "POST",
            "/v1/completions",
            body.clone(),
            &[("x-slo-ttft-ms", "soon")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "x-slo-ttft-ms");
    // The headers llm-d's gateway forwards are read too, and checked the same way.
    let r = http
        .send(
            "POST",
            "/v1/completions",
            body.clone(),
            &[("x-llm-d-slo-tpot-ms", "-3")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "x-llm-d-slo-tpot-ms");
    let r = http
        .send(
            "POST",
            "/v1/completions",
            body,
            &[("x-slo-ttft-ms", "500"), ("x-slo-tpot-ms", "80")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut b = completion("hi", 2);
    b["slo"] = json!({"ttft_ms": 250, "tbt_ms": 50});
    b["priority"] = json!(-1);
    assert_eq!(http.post("/v1/completions", &b).await.status, 200);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_met_counters_follow_the_core_definition() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let body = serde_json::to_vec(&completion("hi", 4)).unwrap();
    for headers in [
        // Loose: met under both definitions.
        &[("x-slo-ttft-ms", "600000"), ("x-slo-tpot-ms", "600000")][..],
        // A TTFT of a microsecond cannot be met: missed under both.
        &[("x-slo-ttft-ms", "0.001"), ("x-slo-tpot-ms", "600000")][..],
        // No SLO: met by completing.
        &[][..],
        // llm-d's gateway headers: the impossible TTFT is missed.
        &[
            ("x-llm-d-slo-ttft-ms", "0.001"),
            ("x-llm-d-slo-tpot-ms", "600000"),
        ][..],
    ] {
        let r = http
            .send("POST", "/v1/completions", body.clone(), headers)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The counters move with the finished count, under one lock: wait for all four.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http.get("/metrics").await.body;
        let finished: f64 = text
            .lines()
            .filter(|l| l.starts_with("vllm:request_success_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if finished >= 4.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "requests not finished:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric_in(&text, "accellm_slo_met_total{kind=\"strict\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_in(&text, "accellm_slo_met_total{kind=\"mean\"}"),
        Some(2.0),
        "{text}"
    );
    // The KV cache configuration a gateway's prefix scorer reads (2 instances × 256 blocks).
    assert!(
        text.lines()
            .any(|l| l.starts_with("vllm:cache_config_info{")
                && l.contains("block_size=\"16\"")
                && l.contains("num_gpu_blocks=\"512\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    server.shutdown().unwrap();
}
