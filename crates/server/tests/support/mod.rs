//! Test support: a tiny random-weight Llama GGUF with a byte-level tokenizer, a server on a
//! loopback port, and a small HTTP client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use accellm_server::{Server, ServerConfig};
use bytes::Bytes;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Context length written into the tiny model.
pub const TINY_CONTEXT: u32 = 384;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// GPT-2's printable stand-in for every byte.
fn byte_chars() -> Vec<char> {
    let mut n = 0u32;
    (0..=255u32)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

fn write_tiny_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-chat.gguf");
    // 256 byte tokens, one merge, three special tokens.
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    tokens.push("he".into()); // 256
    tokens.push("<|endoftext|>".into()); // 257
    tokens.push("<|im_start|>".into()); // 258
    tokens.push("<|im_end|>".into()); // 259
    let vocab = tokens.len();
    let mut types = vec![1i32; 257];
    types.extend([3, 3, 3]);
    let (hidden, heads, kv_heads, ffn, layers) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let hd = hidden / heads;
    let mut rng = Rng(11);
    let dev = Device::Cpu;
    let mut mat = |rows: usize, cols: usize, scale: f32| -> QTensor {
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
        QTensor::quantize(
            &Tensor::from_vec(data, (rows, cols), &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let ones = |n: usize| -> QTensor {
        QTensor::quantize(
            &Tensor::from_vec(vec![1f32; n], n, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let w = 1.7 / (hidden as f32).sqrt();
    let mut t: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), mat(vocab, hidden, 1.0)),
        ("output_norm.weight".into(), ones(hidden)),
        ("output.weight".into(), mat(vocab, hidden, w)),
    ];
    for l in 0..layers {
        let p = format!("blk.{l}");
        t.push((format!("{p}.attn_q.weight"), mat(hidden, hidden, w)));
        t.push((format!("{p}.attn_k.weight"), mat(kv_heads * hd, hidden, w)));
        t.push((format!("{p}.attn_v.weight"), mat(kv_heads * hd, hidden, w)));
        t.push((format!("{p}.attn_output.weight"), mat(hidden, hidden, w)));
        t.push((format!("{p}.ffn_gate.weight"), mat(ffn, hidden, w)));
        t.push((format!("{p}.ffn_up.weight"), mat(ffn, hidden, w)));
        t.push((
            format!("{p}.ffn_down.weight"),
            mat(hidden, ffn, 1.7 / (ffn as f32).sqrt()),
        ));
        t.push((format!("{p}.attn_norm.weight"), ones(hidden)));
        t.push((format!("{p}.ffn_norm.weight"), ones(hidden)));
    }
    use gguf_file::Value as V;
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(layers as u32)),
        ("llama.embedding_length", V::U32(hidden as u32)),
        ("llama.feed_forward_length", V::U32(ffn as u32)),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv_heads as u32)),
        ("llama.rope.dimension_count", V::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(10_000.0)),
        ("llama.context_length", V::U32(TINY_CONTEXT)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.pre", V::String("default".into())),
        (
            "tokenizer.ggml.tokens",
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            V::Array(types.into_iter().map(V::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            V::Array(vec![V::String("h e".into())]),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(258)),
        ("tokenizer.ggml.eos_token_id", V::U32(259)),
        ("tokenizer.ggml.add_bos_token", V::Bool(false)),
    ];
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    path
}

/// The real default model (SmolLM2-135M-Instruct), or `None` with a message when it is absent;
/// its absence fails the test when `ACCELLM_REQUIRE_MODEL` is set.
#[allow(dead_code)] // not every test binary uses the real model
pub fn real_model() -> Option<PathBuf> {
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

/// The tiny model, written once per test process.
pub fn tiny_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(write_tiny_model).clone()
}

/// A configuration for the tiny model on a free loopback port.
pub fn tiny_config() -> ServerConfig {
    ServerConfig {
        model: Some(tiny_model()),
        served_model_name: Some("tiny".into()),
        port: 0,
        kv_blocks: 256,
        block_size: 16,
        shutdown_grace_s: 5.0,
        ..ServerConfig::default()
    }
}

/// Starts a server with `cfg`.
pub fn start(cfg: ServerConfig) -> Server {
    accellm_engine::inline_candle_matmuls().expect("CANDLE_NUM_THREADS unset or 1");
    Server::start(cfg).expect("server starts")
}

/// A minimal HTTP client.
pub struct Http {
    addr: std::net::SocketAddr,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response read in full.
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Http {
    /// A client for the server at `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let resp = tokio::time::timeout(
            Duration::from_secs(120),
            self.client
                .request(self.request(method, path, body, headers)),
        )
        .await
        .expect("response within 120 s")
        .expect("request succeeds");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// POSTs JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, serde_json::to_vec(body).unwrap(), &[])
            .await
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Vec::new(), &[]).await
    }

    /// Opens a streaming POST and returns the response (body unread).
    pub async fn open(&self, path: &str, body: &Value) -> hyper::Response<hyper::body::Incoming> {
        self.client
            .request(self.request("POST", path, serde_json::to_vec(body).unwrap(), &[]))
            .await
            .expect("request succeeds")
    }

    /// POSTs a streaming request and returns the `data:` payloads in order.
    pub async fn stream(&self, path: &str, body: &Value) -> (StatusCode, Vec<String>) {
        let r = self.post(path, body).await;
        let events = r
            .body
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without `data: `: {e:?}"))
                    .to_string()
            })
            .collect();
        (r.status, events)
    }

    /// One metric's value (first sample whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.get("/metrics").await.body;
        metric_in(&text, prefix).unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
    }
}

/// The value of the first sample line starting with `prefix` in a Prometheus text.
pub fn metric_in(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
