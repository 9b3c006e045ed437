//! End-to-end test on the real default model (SmolLM2-135M-Instruct), when it is present.
//! Skipped with a message unless the file exists; set ACCELLM_REQUIRE_MODEL=1 to make its
//! absence a failure.

mod support;

use serde_json::json;
use support::{start, Http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_over_an_accellm_pair() {
    let Some(path) = support::real_model() else {
        return;
    };
    let cfg = accellm_server::ServerConfig {
        model: Some(path),
        port: 0,
        kv_blocks: 128,
        ..accellm_server::ServerConfig::default()
    };
    let server = start(cfg);
    let http = Http::new(server.addr());
    let models = http.get("/v1/models").await.json();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let body = json!({
        "model": name,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12,
        "temperature": 0,
        "seed": 1,
    });
    let r = http.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Paris"), "{text:?}");
    // Streaming gives the same greedy text.
    let mut s = body.clone();
    s["stream"] = json!(true);
    let (status, events) = http.stream("/v1/chat/completions", &s).await;
    assert_eq!(status, 200);
    let streamed: String = events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| {
            let c: serde_json::Value = serde_json::from_str(e).unwrap();
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text);
    server.shutdown().unwrap();
}
