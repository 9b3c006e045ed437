//! One streaming request to an OpenAI-compatible server, timed token by token.

use std::time::{Duration, Instant};

use accellm_core::{metrics::Latencies, request::Slo};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Which OpenAI API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/completions`: `prompt`, chunks carry `choices[0].text`.
    Completions,
    /// `/v1/chat/completions`: `messages`, chunks carry `choices[0].delta.content`.
    Chat,
}

impl ApiKind {
    /// Chat if the path ends in `chat/completions`, else completions.
    pub fn from_endpoint(path: &str) -> Self {
        if path.trim_end_matches('/').ends_with("chat/completions") {
            ApiKind::Chat
        } else {
            ApiKind::Completions
        }
    }
}

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The model (an answer the server returned).
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its author.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// Position in the workload.
    pub index: usize,
    /// When to send it, seconds from the start of the run (open loop).
    pub arrival_s: f64,
    /// Prompt text (in a conversation, the new user message).
    pub prompt: String,
    /// The conversation before `prompt` (system prompt, earlier user messages and the server's
    /// answers); empty for a single-prompt request.
    pub history: Vec<Message>,
    /// Intended prompt length in tokens.
    pub prompt_tokens: u32,
    /// Requested output length in tokens (`max_tokens`).
    pub output_tokens: u32,
    /// TTFT SLO, ms (sent as `x-slo-ttft-ms`).
    pub ttft_slo_ms: Option<f64>,
    /// TBT/TPOT SLO, ms (sent as `x-slo-tpot-ms`).
    pub tbt_slo_ms: Option<f64>,
    /// Priority (sent as `priority` when `send_priority`).
    pub priority: i32,
    /// Whether to send `priority` in the body.
    pub send_priority: bool,
    /// Workload SLO class index.
    pub class: Option<u16>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// No connection or the connection broke before a response.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Non-2xx status.
    #[error("HTTP {status}: {body}")]
    Http {
        /// Status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// No complete answer within the timeout.
    #[error("timed out after {0:.1} s")]
    Timeout(f64),
    /// The stream ended (or broke) before `data: [DONE]`.
    #[error("stream ended without `data: [DONE]`{0}")]
    Truncated(String),
    /// The server sent an error object in the stream.
    #[error("error in stream: {0}")]
    ServerError(String),
    /// A `data:` line that is not JSON.
    #[error("bad stream data: {0}")]
    Protocol(String),
    /// Not sent: an earlier turn of its conversation failed, so there is no answer to resend.
    #[error("not sent: turn {0} of its conversation failed")]
    Abandoned(usize),
}

impl Failure {
    /// Short category name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Http { .. } => "http",
            Failure::Timeout(_) => "timeout",
            Failure::Truncated(_) => "truncated",
            Failure::ServerError(_) => "server_error",
            Failure::Protocol(_) => "protocol",
            Failure::Abandoned(_) => "abandoned",
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct RequestResult {
    /// Position in the workload.
    pub index: usize,
    /// When it was sent, seconds from the start of the run.
    pub start_s: f64,
    /// Intended prompt tokens.
    pub prompt_tokens: u32,
    /// Prompt tokens as counted by the server (`usage.prompt_tokens`), if reported.
    pub server_prompt_tokens: Option<u32>,
    /// Requested output tokens.
    pub expected_output_tokens: u32,
    /// Output tokens: `usage.completion_tokens` if reported, else the number of non-empty
    /// chunks.
    pub output_tokens: u32,
    /// Time to first token, s (first non-empty chunk).
    pub ttft_s: Option<f64>,
    /// Gaps between successive non-empty chunks, s.
    pub itl_s: Vec<f64>,
    /// Time from sending to `[DONE]` (or to the failure), s.
    pub latency_s: f64,
    /// The generated text, as streamed.
    pub text: String,
    /// The failure, if any.
    pub failure: Option<Failure>,
    /// TTFT SLO, ms.
    pub ttft_slo_ms: Option<f64>,
    /// TBT SLO, ms.
    pub tbt_slo_ms: Option<f64>,
    /// Workload SLO class.
    pub class: Option<u16>,
}

impl RequestResult {
    /// The result of `r`, sent `start_s` into the run, before anything came back.
    pub fn new(r: &PreparedRequest, start_s: f64) -> Self {
        RequestResult {
            index: r.index,
            start_s,
            prompt_tokens: r.prompt_tokens,
            server_prompt_tokens: None,
            expected_output_tokens: r.output_tokens,
            output_tokens: 0,
            ttft_s: None,
            itl_s: Vec::new(),
            latency_s: 0.0,
            text: String::new(),
            failure: None,
            ttft_slo_ms: r.ttft_slo_ms,
            tbt_slo_ms: r.tbt_slo_ms,
            class: r.class,
        }
    }

    /// Whether the request completed.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Time per output token after the first, s (vLLM's TPOT); 0 with one output token.
    pub fn tpot_s(&self) -> f64 {
        match self.ttft_s {
            Some(ttft) if self.output_tokens > 1 => {
                (self.latency_s - ttft) / f64::from(self.output_tokens - 1)
            }
            _ => 0.0,
        }
    }

    /// Its latencies as its SLO judges them (TTFT, longest gap between chunks, time to
    /// `[DONE]`, output tokens); `None` if it failed.
    pub fn latencies(&self) -> Option<Latencies> {
        self.ok().then(|| Latencies {
            ttft_ms: self.ttft_s.unwrap_or(self.latency_s) * 1e3,
            max_tbt_ms: self.itl_s.iter().copied().fold(0.0, f64::max) * 1e3,
            jct_ms: self.latency_s * 1e3,
            output_tokens: self.output_tokens,
        })
    }

    /// Its SLO.
    pub fn slo(&self) -> Slo {
        Slo {
            ttft_ms: self.ttft_slo_ms,
            tbt_ms: self.tbt_slo_ms,
        }
    }
}

/// Request options that are the same for every request.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Full URL of the endpoint (`http://127.0.0.1:8000/v1/completions`).
    pub url: String,
    /// `model` field.
    pub model: String,
    /// Send `ignore_eos: true` and `min_tokens` so the server produces exactly `max_tokens`.
    pub ignore_eos: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Sampling temperature.
    pub temperature: f64,
    /// Fields merged into every body (after the standard ones, so they override them).
    pub extra_body: serde_json::Map<String, Value>,
}

/// A pooled HTTP/1 client for one endpoint.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    uri: Uri,
    api: ApiKind,
    cfg: ClientConfig,
}

impl Client {
    /// A client for `cfg.url` (plain `http://` only).
    pub fn new(cfg: ClientConfig) -> anyhow::Result<Self> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("bad URL {}: {e}", cfg.url))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!("only plain http:// URLs are supported, got {}", cfg.url);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(10))));
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client {
            http,
            api: ApiKind::from_endpoint(uri.path()),
            uri,
            cfg,
        })
    }

    /// The JSON body for a request. With a history, chat sends it as `messages`; completions
    /// sends one prompt: the messages in order, each user or system message after the first
    /// preceded by a blank line, each answer appended as it was generated (so the prompt's
    /// tokens continue exactly as the server produced them).
    pub fn body(&self, r: &PreparedRequest) -> Value {
        let user = Message {
            role: Role::User,
            content: r.prompt.clone(),
        };
        let messages = r.history.iter().chain(std::iter::once(&user));
        let mut body = match self.api {
            ApiKind::Completions => {
                let mut prompt = String::new();
                for m in messages {
                    if m.role != Role::Assistant && !prompt.is_empty() {
                        prompt.push_str("\n\n");
                    }
                    prompt.push_str(&m.content);
                }
                json!({ "prompt": prompt })
            }
            ApiKind::Chat => {
                let list: Vec<Value> = messages
                    .map(|m| json!({ "role": m.role.as_str(), "content": m.content }))
                    .collect();
                json!({ "messages": list })
            }
        };
        let o = body.as_object_mut().expect("json! object");
        o.insert("model".into(), json!(self.cfg.model));
        o.insert("max_tokens".into(), json!(r.output_tokens));
        if self.api == ApiKind::Chat {
            o.insert("max_completion_tokens".into(), json!(r.output_tokens));
        }
        o.insert("temperature".into(), json!(self.cfg.temperature));
        o.insert("stream".into(), json!(true));
        o.insert("stream_options".into(), json!({ "include_usage": true }));
        if self.cfg.ignore_eos {
            o.insert("ignore_eos".into(), json!(true));
            o.insert("min_tokens".into(), json!(r.output_tokens));
        }
        if r.send_priority {
            o.insert("priority".into(), json!(r.priority));
        }
        for (k, v) in &self.cfg.extra_body {
            o.insert(k.clone(), v.clone());
        }
        body
    }

    /// Sends one request and times its stream; never takes longer than the timeout.
    pub async fn send(&self, r: &PreparedRequest, run_start: Instant) -> RequestResult {
        let start = Instant::now();
        let mut res = RequestResult::new(r, start.duration_since(run_start).as_secs_f64());
        let outcome = tokio::time::timeout(self.cfg.timeout, self.stream(r, start, &mut res)).await;
        res.latency_s = start.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(f)) => res.failure = Some(f),
            Err(_) => res.failure = Some(Failure::Timeout(self.cfg.timeout.as_secs_f64())),
        }
        res
    }

    async fn stream(
        &self,
        r: &PreparedRequest,
        start: Instant,
        res: &mut RequestResult,
    ) -> Result<(), Failure> {
        let body =
            serde_json::to_vec(&self.body(r)).map_err(|e| Failure::Protocol(e.to_string()))?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("accept", "text/event-stream");
        if let Some(v) = r.ttft_slo_ms {
            builder = builder.header("x-slo-ttft-ms", format_ms(v));
        }
        if let Some(v) = r.tbt_slo_ms {
            builder = builder.header("x-slo-tpot-ms", format_ms(v));
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Protocol(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| Failure::Connect(error_chain(&e)))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let mut text = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    text.extend_from_slice(&d);
                }
                if text.len() > 512 {
                    break;
                }
            }
            let mut s = String::from_utf8_lossy(&text).into_owned();
            s.truncate(300);
            return Err(Failure::Http {
                status: status.as_u16(),
                body: s.trim().to_string(),
            });
        }
        let mut parser = SseParser::default();
        let mut last_token: Option<Instant> = None;
        let mut chunks = 0u32;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    return Err(Failure::Truncated(format!(
                        " (body error: {})",
                        error_chain(&e)
                    )))
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let now = Instant::now();
            for ev in parser.push(&data)? {
                match ev {
                    SseEvent::Token(text) => {
                        res.text.push_str(&text);
                        chunks += 1;
                        match last_token {
                            None => res.ttft_s = Some(now.duration_since(start).as_secs_f64()),
                            Some(prev) => res.itl_s.push(now.duration_since(prev).as_secs_f64()),
                        }
                        last_token = Some(now);
                    }
                    SseEvent::Usage {
                        prompt_tokens,
                        completion_tokens,
                    } => {
                        res.server_prompt_tokens = prompt_tokens.or(res.server_prompt_tokens);
                        if let Some(c) = completion_tokens {
                            res.output_tokens = c;
                        }
                    }
                    SseEvent::Done => {
                        if res.output_tokens == 0 {
                            res.output_tokens = chunks;
                        }
                        return Ok(());
                    }
                }
            }
        }
        if res.output_tokens == 0 {
            res.output_tokens = chunks;
        }
        Err(Failure::Truncated(String::new()))
    }
}

/// `GET base_url + path`: the body of a 2xx answer, within `timeout`.
pub async fn get(base_url: &str, path: &str, timeout: Duration) -> anyhow::Result<Bytes> {
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("bad URL {url}: {e}"))?;
    let http: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(uri).body(Full::new(Bytes::new()))?;
    let fetch = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("HTTP {status}");
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))?
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))
}

/// The first model `GET /v1/models` lists.
pub async fn discover_model(base_url: &str, timeout: Duration) -> anyhow::Result<String> {
    let body = get(base_url, "/v1/models", timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; pass --model"))?;
    let v: Value = serde_json::from_slice(&body)?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("GET /v1/models: no model listed; pass --model"))
}

fn format_ms(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What one SSE `data:` line meant.
#[derive(Debug, Clone, PartialEq)]
pub enum SseEvent {
    /// A chunk with non-empty generated text.
    Token(String),
    /// A usage report.
    Usage {
        /// `usage.prompt_tokens`.
        prompt_tokens: Option<u32>,
        /// `usage.completion_tokens`.
        completion_tokens: Option<u32>,
    },
    /// `data: [DONE]`.
    Done,
}

/// Incremental parser of an OpenAI server-sent-event stream.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the events of every complete line.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<SseEvent>, Failure> {
        self.buf.extend_from_slice(data);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(pos) = self.buf[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[consumed..consumed + pos];
            consumed += pos + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            parse_line(line, &mut events)?;
        }
        self.buf.drain(..consumed);
        Ok(events)
    }
}

fn parse_line(line: &[u8], events: &mut Vec<SseEvent>) -> Result<(), Failure> {
    let Some(payload) = line.strip_prefix(b"data:") else {
        return Ok(()); // comments, `event:`, `id:`, blank separators
    };
    let payload = payload.trim_ascii();
    if payload == b"[DONE]" {
        events.push(SseEvent::Done);
        return Ok(());
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| {
        let mut s = String::from_utf8_lossy(payload).into_owned();
        s.truncate(120);
        Failure::Protocol(format!("{e}: {s}"))
    })?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(Failure::ServerError(msg));
    }
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        let text = choice
            .get("text")
            .and_then(Value::as_str)
            .or_else(|| choice.pointer("/delta/content").and_then(Value::as_str))
            .or_else(|| {
                choice
                    .pointer("/delta/reasoning_content")
                    .and_then(Value::as_str)
            });
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            events.push(SseEvent::Token(t.to_string()));
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let field = |k: &str| {
            u.get(k)
                .and_then(Value::as_u64)
                .map(|n| n.min(u32::MAX as u64) as u32)
        };
        events.push(SseEvent::Usage {
            prompt_tokens: field("prompt_tokens"),
            completion_tokens: field("completion_tokens"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_split_across_frames() {
        let mut p = SseParser::default();
        assert!(p
            .push(b"data: {\"choices\":[{\"text\":\"he")
            .unwrap()
            .is_empty());
        assert_eq!(
            p.push(b"llo\"}]}\n\n").unwrap(),
            vec![SseEvent::Token("hello".into())]
        );
        let ev = p
            .push(b": keep-alive\r\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(
            ev,
            vec![
                SseEvent::Token("x".into()),
                SseEvent::Usage {
                    prompt_tokens: Some(5),
                    completion_tokens: Some(2)
                },
                SseEvent::Done
            ]
        );
    }

    #[test]
    fn sse_errors() {
        let mut p = SseParser::default();
        assert!(matches!(
            p.push(b"data: {\"error\":{\"message\":\"boom\"}}\n"),
            Err(Failure::ServerError(m)) if m == "boom"
        ));
        let mut p = SseParser::default();
        assert!(matches!(
            p.push(b"data: {nope\n"),
            Err(Failure::Protocol(_))
        ));
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"data: {\"choices\":[{\"text\":\"\"}]}\n").unwrap(),
            vec![]
        );
    }

    #[test]
    fn endpoint_kind() {
        assert_eq!(
            ApiKind::from_endpoint("/v1/chat/completions"),
            ApiKind::Chat
        );
        assert_eq!(
            ApiKind::from_endpoint("/v1/completions"),
            ApiKind::Completions
        );
    }
}
