//! Prefix caching on the real default model: a follow-up that resends an earlier prompt skips
//! the cached part of its prefill, and its greedy output is the one computed without the cache.
//! Skipped with a message unless the model file exists (ACCELLM_REQUIRE_MODEL=1 makes its
//! absence a failure).

mod support;

use serde_json::json;
use support::{start, Http};

/// A history of about 200 tokens, then a follow-up question on it.
fn prompts() -> (String, String) {
    let history: String = (1..=16)
        .map(|i| {
            format!(
                "Note {i}: the meeting in room {} starts at {} o'clock. ",
                i * 7 % 31,
                8 + i % 9
            )
        })
        .collect();
    let first = format!("{history}\nQuestion: when does the meeting in room 7 start?\nAnswer:");
    let second = format!("{first} It starts at nine.\nQuestion: and the one in room 14?\nAnswer:");
    (first, second)
}

async fn complete(http: &Http, prompt: &str) -> String {
    let r = http
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "seed": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_history_hits_the_cache_and_answers_the_same() {
    let Some(path) = support::real_model() else {
        return;
    };
    let (first, second) = prompts();
    let mut answers = Vec::new();
    for cache in [true, false] {
        let server = start(accellm_server::ServerConfig {
            model: Some(path.clone()),
            port: 0,
            kv_blocks: 256,
            prefix_cache: cache,
            ..accellm_server::ServerConfig::default()
        });
        let http = Http::new(server.addr());
        let a = complete(&http, &first).await;
        let b = complete(&http, &second).await;
        let queries = http.metric("vllm:prefix_cache_queries_total").await;
        let hits = http.metric("vllm:prefix_cache_hits_total").await;
        if cache {
            // The second prompt starts with the first (about 200 tokens): most of it hits.
            assert!(queries > 350.0, "{queries} tokens looked up");
            assert!(hits >= 160.0, "only {hits} of {queries} prompt tokens hit");
        } else {
            assert_eq!(hits, 0.0);
        }
        answers.push((a, b));
        server.shutdown().unwrap();
    }
    assert_eq!(
        answers[0], answers[1],
        "greedy outputs differ with the cache"
    );
}
