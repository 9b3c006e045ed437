//! The HTTP layer: OpenAI routes, API key check, request validation, streaming responses.
//!
//! Handlers run on the tokio runtime, tokenise prompts, and hand a [`Submission`] to the
//! scheduler thread; the request's tokens come back on an unbounded channel and are written out
//! either as one JSON response or as server-sent events. Dropping the response (the client went
//! away) cancels the request in the core.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use accellm_core::request::{RejectReason, Slo};
use accellm_engine::SamplingParams;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{
    merge_slo, parse_slo_header, ChatRequest, CompletionRequest, Content, Generation, Prompt,
};
use crate::error::ApiError;
use crate::executor::{CancelGuard, Finish, Input, IterationLog, Submission, ToClient};
use crate::metrics::Metrics;
use crate::text::{Message, TextModel};

/// What every handler shares.
pub(crate) struct AppState {
    /// The scheduler thread.
    pub exec: Mutex<Sender<Input>>,
    /// Tokenizer and chat template.
    pub text: Arc<TextModel>,
    /// Name the model is served under.
    pub model_name: String,
    /// Context length of the model.
    pub context_len: u32,
    /// Tokens one request may hold in one instance's KV pool.
    pub kv_tokens: u32,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// Metrics.
    pub metrics: Arc<Mutex<Metrics>>,
    /// Next request handle.
    pub next_handle: AtomicU64,
    /// Default SLOs.
    pub default_slo: Slo,
    /// The setup the simulator needs to replay this server (`GET /accellm/config`).
    pub setup: Value,
    /// The last iterations run (`GET /accellm/iterations`).
    pub iteration_log: Arc<Mutex<IterationLog>>,
    /// Body limit (for the 413 message).
    pub max_body_bytes: usize,
    /// Unix time the server started.
    pub created: u64,
}

impl AppState {
    fn sender(&self) -> Result<Sender<Input>, ApiError> {
        self.exec
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ApiError::internal("scheduler channel poisoned"))
    }
}

type Shared = Arc<AppState>;

/// The router with every route.
pub(crate) fn router(state: Shared) -> Router {
    let limit = state.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route(
            "/accellm/config",
            get(|State(st): State<Shared>| async move { Json(st.setup.clone()) }),
        )
        .route("/accellm/iterations", get(iterations))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(|| async { "" }))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v.trim() == key);
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// `{"total": N, "scheduler_ms": S, "points": [{tokens, sum_context, logit_rows, ms}, ...]}`:
/// the iterations run (`total` since the start, `points` the most recent ones, oldest first, each
/// timed from dispatch to its report being handled) and the scheduler thread's time handling
/// their reports.
async fn iterations(State(st): State<Shared>) -> Response {
    match st.iteration_log.lock() {
        Ok(log) => Json(json!({
            "total": log.total,
            "scheduler_ms": log.scheduler_ms,
            "points": log.points
        }))
        .into_response(),
        Err(_) => ApiError::internal("iteration log lock poisoned").into_response(),
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    let text = match st.metrics.lock() {
        Ok(m) => m.render(),
        Err(_) => return ApiError::internal("metrics lock poisoned").into_response(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "accellm",
            "max_model_len": st.context_len,
        }]
    }))
}

fn parse_body<T: serde::de::DeserializeOwned>(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(st.max_body_bytes)
        } else {
            ApiError::malformed(format!("Cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::malformed(format!("Invalid JSON body: {e}")))
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != st.model_name => Err(ApiError::unknown_model(m)),
        _ => Ok(()),
    }
}

fn header_slo(headers: &HeaderMap) -> Result<Slo, ApiError> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    Ok(Slo {
        ttft_ms: parse_slo_header("x-slo-ttft-ms", get("x-slo-ttft-ms"))?,
        tbt_ms: parse_slo_header("x-slo-tpot-ms", get("x-slo-tpot-ms"))?,
    })
}

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req: ChatRequest = parse_body(&st, body)?;
        check_model(&st, req.model.as_deref())?;
        let gen = req.common.validate(req.max_completion_tokens)?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must contain at least one message.",
                Some("messages"),
            ));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(
                                format!(
                                    "Unsupported content part type `{}`; only text is supported.",
                                    p.kind
                                ),
                                Some(&format!("messages[{i}].content")),
                            ));
                        }
                        s.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    s
                }
            };
            messages.push(Message {
                role: m.role,
                content,
            });
        }
        let prompt = st
            .text
            .encode_chat(&messages)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        generate(&st, &headers, Kind::Chat, prompt, gen).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req: CompletionRequest = parse_body(&st, body)?;
        check_model(&st, req.model.as_deref())?;
        let gen = req.common.validate(None)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported.", Some("echo")));
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix is not supported.",
                Some("suffix"),
            ));
        }
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    format!("Exactly one prompt is supported, got {n}."),
                    Some("prompt"),
                ))
            }
        };
        let prompt = match req.prompt {
            Prompt::Text(t) => st
                .text
                .encode(&t)
                .map_err(|e| ApiError::internal(e.to_string()))?,
            Prompt::Texts(v) => {
                one(v.len())?;
                st.text
                    .encode(&v[0])
                    .map_err(|e| ApiError::internal(e.to_string()))?
            }
            Prompt::Tokens(t) => t,
            Prompt::TokenBatch(mut v) => {
                one(v.len())?;
                v.swap_remove(0)
            }
        };
        generate(&st, &headers, Kind::Completion, prompt, gen).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    st: &Shared,
    headers: &HeaderMap,
    kind: Kind,
    prompt: Vec<u32>,
    gen: Generation,
) -> Result<Response, ApiError> {
    let slo = merge_slo(gen.slo, header_slo(headers)?, st.default_slo);
    let n_prompt = prompt.len() as u32;
    if n_prompt == 0 {
        return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
    }
    let vocab = st.text.vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("Token id {bad} is out of vocabulary (size {vocab})."),
            Some("prompt"),
        ));
    }
    let param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    let limit = st.context_len.min(st.kv_tokens);
    let max_tokens = match gen.max_tokens {
        Some(m) => m,
        None => limit.saturating_sub(n_prompt),
    };
    if max_tokens == 0 || n_prompt as u64 + max_tokens as u64 > limit as u64 {
        return Err(ApiError::context_length(format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). Please reduce the length of the prompt or the completion.",
            n_prompt as u64 + max_tokens as u64
        ), param));
    }
    let params = SamplingParams {
        temperature: gen.temperature,
        top_p: gen.top_p,
        top_k: gen.top_k,
        seed: gen.seed,
        max_tokens: max_tokens as usize,
        stop: gen.stop.clone(),
        ignore_eos: gen.ignore_eos,
    };
    let handle = st.next_handle.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = unbounded_channel();
    let exec = st.sender()?;
    exec.send(Input::Submit(Box::new(Submission {
        handle,
        prompt,
        max_tokens,
        min_tokens: gen.min_tokens.min(max_tokens),
        params,
        slo,
        priority: gen.priority,
        starts_text: kind == Kind::Chat,
        events: tx,
    })))
    .map_err(|_| ApiError::unavailable())?;
    let mut guard = CancelGuard {
        handle,
        tx: exec,
        done: false,
    };
    match rx.recv().await {
        Some(ToClient::Accepted) => {}
        Some(ToClient::Rejected(RejectReason::QueueFull)) => {
            guard.done = true;
            return Err(ApiError::queue_full());
        }
        Some(ToClient::Rejected(RejectReason::TooLong)) => {
            guard.done = true;
            return Err(ApiError::context_length(format!(
                "The request needs {} tokens of KV cache ({n_prompt} prompt + {max_tokens} completion) but an instance holds at most {}.",
                n_prompt + max_tokens,
                st.kv_tokens
            ), param));
        }
        Some(ToClient::ShuttingDown) | None => {
            guard.done = true;
            return Err(ApiError::unavailable());
        }
        Some(other) => {
            return Err(ApiError::internal(format!(
                "unexpected first event {other:?}"
            )))
        }
    }
    let id = format!(
        "{}-{handle:016x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fmt = Format {
        kind,
        id,
        created,
        model: st.model_name.clone(),
    };
    if gen.stream {
        let stream = SseStream {
            rx,
            guard,
            fmt,
            include_usage: gen.include_usage,
            sent_role: false,
            state: StreamState::Open,
        };
        return Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            ToClient::Token(t) => text.push_str(&t),
            ToClient::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                instances,
            } => {
                guard.done = true;
                let mut resp =
                    Json(fmt.full(&text, finish, prompt_tokens, completion_tokens)).into_response();
                if let Ok(v) = instances_header(instances).parse() {
                    resp.headers_mut().insert("x-accellm-instances", v);
                }
                return Ok(resp);
            }
            ToClient::Failed(msg) => {
                guard.done = true;
                return Err(ApiError::internal(msg));
            }
            ToClient::Accepted | ToClient::Rejected(_) | ToClient::ShuttingDown => {}
        }
    }
    guard.done = true;
    Err(ApiError::unavailable())
}

fn instances_header(mask: u64) -> String {
    (0..64)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Response framing shared by full and streamed answers.
struct Format {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

impl Format {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn full(&self, text: &str, finish: Finish, prompt: u32, completion: u32) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(prompt, completion),
        })
    }

    /// One streamed chunk carrying `text` (and `role` on the first chat chunk) or a finish reason.
    fn chunk(&self, text: &str, role: bool, finish: Option<Finish>, with_usage: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish.map(Finish::as_str),
                })
            }
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.map(Finish::as_str),
            }),
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, prompt: u32, completion: u32) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt, completion),
        })
    }
}

fn sse(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    Closed,
}

/// The SSE body of a streamed answer; dropping it early cancels the request.
struct SseStream {
    rx: UnboundedReceiver<ToClient>,
    guard: CancelGuard,
    fmt: Format,
    include_usage: bool,
    sent_role: bool,
    state: StreamState,
}

impl futures_core::Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.state == StreamState::Closed {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        // Send whatever is ready in one write; wait only when nothing is.
        loop {
            let ev = match this.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => {
                    this.state = StreamState::Closed;
                    this.guard.done = true;
                    let e = ApiError::unavailable();
                    sse(&e.body(), &mut out);
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    break;
                }
                Poll::Pending => break,
            };
            match ev {
                ToClient::Token(t) => {
                    if t.is_empty() && this.sent_role {
                        continue;
                    }
                    let role = this.fmt.kind == Kind::Chat && !this.sent_role;
                    this.sent_role = true;
                    sse(
                        &this.fmt.chunk(&t, role, None, this.include_usage),
                        &mut out,
                    );
                    // One chunk per token: flush it now so clients time every token.
                    break;
                }
                ToClient::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    this.state = StreamState::Closed;
                    this.guard.done = true;
                    let role = this.fmt.kind == Kind::Chat && !this.sent_role;
                    sse(
                        &this.fmt.chunk("", role, Some(finish), this.include_usage),
                        &mut out,
                    );
                    if this.include_usage {
                        sse(
                            &this.fmt.usage_chunk(prompt_tokens, completion_tokens),
                            &mut out,
                        );
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    break;
                }
                ToClient::Failed(msg) => {
                    this.state = StreamState::Closed;
                    this.guard.done = true;
                    sse(&ApiError::internal(msg).body(), &mut out);
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    break;
                }
                ToClient::Accepted | ToClient::Rejected(_) | ToClient::ShuttingDown => {}
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        }
    }
}
