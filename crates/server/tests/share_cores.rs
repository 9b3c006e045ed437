//! `serve --share-idle-cores`: a lone request runs on both instances' cores, and gets the same
//! tokens as without.

mod support;

use serde_json::{json, Value};
use support::{start, tiny_config, Http};

/// Σ over instances of one per-instance counter.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The greedy completion of a lone request, and the server's (borrowed, all) iterations.
async fn lone_request(share: bool) -> (String, f64, f64) {
    let mut cfg = tiny_config();
    cfg.share_idle_cores = share;
    let server = start(cfg);
    let http = Http::new(server.addr());
    let r = http
        .post(
            "/v1/completions",
            &json!({
                "model": "tiny",
                "prompt": "one lone request with the machine to itself",
                "max_tokens": 12,
                "temperature": 0,
                "ignore_eos": true,
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = r.json();
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let m = http.get("/metrics").await.body;
    (
        text,
        total(&m, "accellm_instance_borrowed_iterations_total"),
        total(&m, "accellm_instance_iterations_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_borrows_the_idle_partners_cores_and_gets_the_same_tokens() {
    let (text_on, borrowed_on, all_on) = lone_request(true).await;
    let (text_off, borrowed_off, all_off) = lone_request(false).await;
    // 12 tokens: a prefill and 11 decode steps, each with the partner idle.
    assert!(all_on >= 12.0 && all_off >= 12.0, "{all_on} {all_off}");
    assert_eq!(
        borrowed_on, all_on,
        "every iteration of a lone request borrows"
    );
    assert_eq!(borrowed_off, 0.0);
    assert_eq!(text_on, text_off, "two threads compute what one does");
}
