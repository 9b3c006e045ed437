//! Prefix-cache holes a chat user meets at once, through a real server with the default
//! policies (an AcceLLM pair of instances, AccelGen batches): a client that drops its stream
//! after the first token leaves the prompt cached, and a follow-up that resends the model's own
//! answer finds that answer cached too, not only the first prompt.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{metric_in, start, tiny_config, Http};

const BLOCK: u32 = 16;

/// `(queries, hits)`: the server's prefix-cache counters, in tokens.
async fn cache_counters(http: &Http) -> (f64, f64) {
    let text = http.get("/metrics").await.body;
    let q = metric_in(&text, "vllm:prefix_cache_queries_total").unwrap_or(0.0);
    let h = metric_in(&text, "vllm:prefix_cache_hits_total").unwrap_or(0.0);
    (q, h)
}

/// Waits until nothing runs or waits and `aborted` requests have ended as aborts.
async fn settle(http: &Http, aborted: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http.get("/metrics").await.body;
        let running = metric_in(&text, "vllm:num_requests_running{").unwrap_or(1.0);
        let waiting = metric_in(&text, "vllm:num_requests_waiting{").unwrap_or(1.0);
        let aborts = metric_in(
            &text,
            "vllm:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}",
        )
        .unwrap_or(0.0);
        if running == 0.0 && waiting == 0.0 && aborts >= aborted {
            return;
        }
        assert!(Instant::now() < deadline, "requests did not end:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A system prompt of `bytes` bytes that the tiny byte-level tokenizer keeps one token per byte
/// (it has a single merge, `h e`).
fn system_prompt(bytes: usize) -> String {
    let words = [
        "alpha", "bravo", "delta", "golf", "kilo", "lima", "oscar", "papa",
    ];
    let mut s = String::from("You are a terse assistant. Rules: ");
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(&format!("{} {i}; ", words[i % words.len()]));
        i += 1;
    }
    s.truncate(bytes);
    assert!(!s.contains("he"));
    s
}

/// Whether an SSE payload carries a chat token with text.
fn has_token(payload: &str) -> bool {
    serde_json::from_str::<Value>(payload).is_ok_and(|v| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    })
}

/// Opens a streaming chat request and reads it up to its first token; returns the unread rest.
async fn first_token(http: &Http, body: &Value) -> hyper::body::Incoming {
    let resp = http.open("/v1/chat/completions", body).await;
    if resp.status() != 200 {
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        panic!("{status}: {}", String::from_utf8_lossy(&body));
    }
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut events = 0;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("a frame within 60 s")
            .expect("stream open")
            .expect("frame ok");
        if let Some(d) = frame.data_ref() {
            buf.push_str(&String::from_utf8_lossy(d));
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let payload = event.trim().trim_start_matches("data: ");
            events += 1;
            if has_token(payload) || events >= 3 {
                return body;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_after_its_first_token_leaves_the_system_prompt_cached() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let system = system_prompt(256);
    let chat = |user: &str, max_tokens: u32, stream: bool| {
        json!({
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
            "stream": stream,
        })
    };
    // The client reads up to the first token, then goes away (closes the connection).
    let body = first_token(&http, &chat("Tell me a story.", 40, true)).await;
    drop(body);
    settle(&http, 1.0).await;
    // The next one with the same system prompt streams on, its client not reading (an
    // abandoned `openai` stream keeps its connection open); one more arrives meanwhile. Each
    // must find the system prompt cached, on whichever partner prefills it.
    let prefix_tokens = f64::from(system.len() as u32 / BLOCK * BLOCK);
    let mut held = Vec::new();
    for user in ["What time is it?", "Name a colour."] {
        let (_, h0) = cache_counters(&http).await;
        held.push(first_token(&http, &chat(user, 40, true)).await);
        let (_, h1) = cache_counters(&http).await;
        assert!(
            h1 - h0 >= 0.9 * prefix_tokens,
            "a request after a dropped stream hit {} tokens of a {}-token system prompt \
             ({prefix_tokens} tokens in full blocks)",
            h1 - h0,
            system.len()
        );
    }
    drop(held);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_that_resends_the_answer_hits_the_answer_too() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    // A prompt of 100 byte tokens, and an answer that a schema keeps to ASCII without the
    // tokenizer's one merge (`h e`): one token per byte, so the follow-up can resend exactly
    // the tokens the model generated.
    let prompt: Vec<u32> = (0..100u32).map(|i| 97 + i % 26).collect();
    let schema = json!({"type": "string", "pattern": "^[A-D]{58}$"});
    let r = http
        .post(
            "/v1/completions",
            &json!({
                "prompt": prompt, "max_tokens": 80, "temperature": 0,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "a", "schema": schema}},
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let answer = v["choices"][0]["text"].as_str().unwrap().to_string();
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as u32;
    assert!(answer.is_ascii() && !answer.contains("he"), "{answer:?}");
    assert_eq!(answer.len() as u32, n, "one token per byte: {answer:?}");
    settle(&http, 0.0).await;
    let mut follow_up = prompt.clone();
    follow_up.extend(answer.bytes().map(u32::from));
    follow_up.extend((0..40u32).map(|i| 48 + i % 10));
    let (q0, h0) = cache_counters(&http).await;
    let r = http
        .post(
            "/v1/completions",
            &json!({"prompt": follow_up, "max_tokens": 1, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (q1, h1) = cache_counters(&http).await;
    assert_eq!(q1 - q0, follow_up.len() as f64);
    // All but the last answer token had their KV computed: 99 + n tokens, in full blocks of 16,
    // of which the prompt alone fills 6 (96 tokens).
    let computed = (99 + n) / BLOCK * BLOCK;
    assert!(computed >= 144, "a {n}-token answer is too short to tell");
    assert!(
        h1 - h0 >= f64::from(computed),
        "the follow-up hit {} tokens; the prompt alone has 96, prompt and answer {computed}",
        h1 - h0
    );
    server.shutdown().unwrap();
}
