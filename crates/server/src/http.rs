//! The HTTP layer: OpenAI routes, API key check, request validation, streaming responses.
//!
//! Handlers run on the tokio runtime, tokenise prompts, and hand a [`Submission`] to the
//! scheduler thread; the request's tokens come back on an unbounded channel and are written out
//! either as one JSON response or as server-sent events. Dropping the response (the client went
//! away) cancels the request in the core.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use accellm_core::request::{RejectReason, Slo};
use accellm_engine::SamplingParams;
use accellm_workload::SloClass;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use crate::api::{
    merge_slo, parse_slo_header, ChatRequest, CompletionRequest, Content, Endpoint, Generation,
    Prompt,
};
use crate::constraint::ConstraintFactory;
use crate::error::ApiError;
use crate::executor::{CancelGuard, Input, IterationLog, Submission, ToClient};
use crate::metrics::Metrics;
use crate::response::{ChoiceSetup, Choices, Format, Kind, SseStream};
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
    /// SLO classes the objective header can name.
    pub slo_classes: Vec<SloClass>,
    /// The setup the simulator needs to replay this server (`GET /accellm/config`).
    pub setup: Value,
    /// The last iterations run (`GET /accellm/iterations`).
    pub iteration_log: Arc<Mutex<IterationLog>>,
    /// Body limit (for the 413 message).
    pub max_body_bytes: usize,
    /// Unix time the server started.
    pub created: u64,
    /// Builds grammars for `response_format`; made on first use (it indexes the vocabulary).
    pub constraints: OnceLock<Result<Arc<ConstraintFactory>, String>>,
}

impl AppState {
    fn sender(&self) -> Result<Sender<Input>, ApiError> {
        self.exec
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ApiError::internal("scheduler channel poisoned"))
    }

    fn constraint_factory(&self) -> Result<Arc<ConstraintFactory>, ApiError> {
        self.constraints
            .get_or_init(|| {
                ConstraintFactory::new(&self.text)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| ApiError::internal(format!("constrained decoding unavailable: {e}")))
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
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(|| async { "" }))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
        })
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

/// `{"total": N, "scheduler_ms": S, "points": [{tokens, sum_context, logit_rows, ms}, ...],
/// "wide_total": W, "wide_points": [...]}`: the iterations run on an instance's own cores
/// (`total` since the start, `points` the most recent ones, oldest first, each timed from
/// dispatch to its report being handled), the same for those that also ran on the idle partner's
/// cores, and the scheduler thread's time handling all their reports.
async fn iterations(State(st): State<Shared>) -> Response {
    match st.iteration_log.lock() {
        Ok(log) => Json(json!({
            "total": log.total,
            "scheduler_ms": log.scheduler_ms,
            "points": log.points,
            "wide_total": log.wide_total,
            "wide_points": log.wide_points
        }))
        .into_response(),
        Err(_) => ApiError::internal("iteration log lock poisoned").into_response(),
    }
}

/// `POST /reset_prefix_cache` (vLLM's): forgets every cached prefix, which KV-event subscribers
/// hear as `AllBlocksCleared`. 409 while requests hold KV blocks.
async fn reset_prefix_cache(State(st): State<Shared>) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = st.sender().and_then(|s| {
        s.send(Input::ResetPrefixCache(tx))
            .map_err(|_| ApiError::unavailable())
    });
    if let Err(e) = sent {
        return e.into_response();
    }
    match rx.await {
        Ok(true) => Json(json!({"reset": true})).into_response(),
        Ok(false) => (
            StatusCode::CONFLICT,
            Json(json!({"reset": false, "reason": "requests hold KV blocks"})),
        )
            .into_response(),
        Err(_) => ApiError::unavailable().into_response(),
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
    crate::api::parse_json(&bytes)
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != st.model_name => Err(ApiError::unknown_model(m)),
        _ => Ok(()),
    }
}

/// The request's SLOs from `x-slo-ttft-ms` / `x-slo-tpot-ms`, or else the headers llm-d's
/// inference gateway forwards (`x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms`).
fn header_slo(headers: &HeaderMap) -> Result<Slo, ApiError> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let either = |ours: &'static str, llmd: &'static str| match get(ours) {
        Some(v) => parse_slo_header(ours, Some(v)),
        None => parse_slo_header(llmd, get(llmd)),
    };
    Ok(Slo {
        ttft_ms: either("x-slo-ttft-ms", "x-llm-d-slo-ttft-ms")?,
        tbt_ms: either("x-slo-tpot-ms", "x-llm-d-slo-tpot-ms")?,
    })
}

/// The headers that name a request's objective: llm-d's, then the Gateway API Inference
/// Extension's older name for it.
const OBJECTIVE_HEADERS: [&str; 2] = [
    "x-llm-d-inference-objective",
    "x-gateway-inference-objective",
];

/// The SLO class the request's objective header names, if it names one of `classes`. An
/// objective the server has no class for is ignored: the gateway's objectives are the cluster
/// operator's names, and they also steer the picker's own queueing.
fn objective_class<'a>(classes: &'a [SloClass], headers: &HeaderMap) -> Option<&'a SloClass> {
    let value = OBJECTIVE_HEADERS.iter().find_map(|h| headers.get(*h))?;
    let name = value.to_str().ok()?.trim();
    let class = classes.iter().find(|c| c.name == name);
    if class.is_none() {
        tracing::debug!(objective = name, "objective names no SLO class; ignored");
    }
    class
}

/// A request's SLO and priority. Each target, most specific first: the body's `slo`, the
/// `x-slo-*` headers, llm-d's `x-llm-d-slo-*` headers, the class the objective header names,
/// the server's defaults. The priority: the body's, else the class's, else 0.
fn request_slo(
    default_slo: Slo,
    classes: &[SloClass],
    headers: &HeaderMap,
    gen: &Generation,
    body_priority: bool,
) -> Result<(Slo, i32), ApiError> {
    let class = objective_class(classes, headers);
    let class_slo = class.map_or(Slo::default(), |c| Slo {
        ttft_ms: c.ttft_ms,
        tbt_ms: c.tbt_ms,
    });
    let below_headers = merge_slo(class_slo, Slo::default(), default_slo);
    let slo = merge_slo(gen.slo, header_slo(headers)?, below_headers);
    let priority = match class {
        Some(c) if !body_priority => c.priority,
        _ => gen.priority,
    };
    Ok((slo, priority))
}

async fn chat(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let req: ChatRequest = parse_body(&st, body)?;
        check_model(&st, req.model.as_deref())?;
        let body_priority = req.common.priority.is_some();
        let gen = req
            .common
            .validate(req.max_completion_tokens, Endpoint::Chat)?;
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
        let prompts = vec![PromptIn {
            tokens: prompt,
            echo: None,
        }];
        generate(&st, &headers, Kind::Chat, prompts, gen, body_priority).await
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
        let body_priority = req.common.priority.is_some();
        let echo = req.echo == Some(true);
        let gen = req.common.validate(None, Endpoint::Completion { echo })?;
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix is not supported.",
                Some("suffix"),
            ));
        }
        let encode = |t: &str| {
            st.text
                .encode(t)
                .map_err(|e| ApiError::internal(e.to_string()))
        };
        let text_prompt = |t: String| -> Result<PromptIn, ApiError> {
            Ok(PromptIn {
                tokens: encode(&t)?,
                echo: echo.then_some(t),
            })
        };
        let token_prompt = |t: Vec<u32>| PromptIn {
            echo: echo.then(|| st.text.decode(&t)),
            tokens: t,
        };
        let prompts = match req.prompt {
            Prompt::Text(t) => vec![text_prompt(t)?],
            Prompt::Texts(v) => v.into_iter().map(text_prompt).collect::<Result<_, _>>()?,
            Prompt::Tokens(t) => vec![token_prompt(t)],
            Prompt::TokenBatch(v) => v.into_iter().map(token_prompt).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
        }
        if prompts.len() * gen.n as usize > crate::api::MAX_CHOICES as usize {
            return Err(ApiError::invalid(
                format!(
                    "At most {} choices per request (prompts × n), got {} × {}.",
                    crate::api::MAX_CHOICES,
                    prompts.len(),
                    gen.n
                ),
                Some("prompt"),
            ));
        }
        generate(&st, &headers, Kind::Completion, prompts, gen, body_priority).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// One prompt of a request: its tokens, and the text `echo` returns (`None` without echo).
pub(crate) struct PromptIn {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Echoed text.
    pub echo: Option<String>,
}

/// Checks a prompt against the vocabulary and the context; returns the output tokens the core
/// runs (at least one: with `max_tokens: 0` the one token is dropped).
fn check_prompt(
    st: &AppState,
    param: &str,
    prompt: &[u32],
    max_tokens: Option<u32>,
) -> Result<u32, ApiError> {
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
    let limit = st.context_len.min(st.kv_tokens);
    let max_tokens = match max_tokens {
        Some(m) => m.max(1),
        None => limit.saturating_sub(n_prompt),
    };
    if max_tokens == 0 || n_prompt as u64 + max_tokens as u64 > limit as u64 {
        return Err(ApiError::context_length(format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). Please reduce the length of the prompt or the completion.",
            n_prompt as u64 + max_tokens as u64
        ), param));
    }
    Ok(max_tokens)
}

async fn generate(
    st: &Shared,
    headers: &HeaderMap,
    kind: Kind,
    prompts: Vec<PromptIn>,
    gen: Generation,
    body_priority: bool,
) -> Result<Response, ApiError> {
    let (slo, priority) = request_slo(
        st.default_slo,
        &st.slo_classes,
        headers,
        &gen,
        body_priority,
    )?;
    let param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    let mut runs = Vec::with_capacity(prompts.len());
    for p in &prompts {
        runs.push(check_prompt(st, param, &p.tokens, gen.max_tokens)?);
    }
    let discard_output = gen.max_tokens == Some(0);
    let constraint = match &gen.format {
        None => None,
        Some(format) => {
            let factory = st.constraint_factory()?;
            let format = format.clone();
            let built = tokio::task::spawn_blocking(move || factory.build(&format))
                .await
                .map_err(|_| ApiError::internal("grammar builder panicked"))?;
            Some(built.map_err(|e| ApiError::invalid(e.to_string(), Some("response_format")))?)
        }
    };
    let echo = prompts.iter().any(|p| p.echo.is_some());
    let prompt_logprobs = if echo { gen.logprobs } else { None };
    let exec = st.sender()?;
    let (tx, mut rx) = unbounded_channel();
    let n = gen.n;
    let mut guards = Vec::new();
    let mut setups = Vec::new();
    for (p, (prompt, &max_tokens)) in prompts.into_iter().zip(&runs).enumerate() {
        for i in 0..n {
            let choice = p as u32 * n + i;
            let handle = st.next_handle.fetch_add(1, Ordering::Relaxed);
            let params = SamplingParams {
                temperature: gen.temperature,
                top_p: gen.top_p,
                top_k: gen.top_k,
                // Choice i of a prompt samples with seed + i.
                seed: gen.seed.map(|s| s.wrapping_add(i as u64)),
                max_tokens: max_tokens as usize,
                stop: gen.stop.clone(),
                ignore_eos: gen.ignore_eos,
            };
            setups.push(ChoiceSetup {
                prompt_tokens: prompt.tokens.len() as u32,
                counts_prompt: i == 0,
                echo: prompt.echo.clone(),
                echo_tokens: if prompt_logprobs.is_some() {
                    prompt.tokens.clone()
                } else {
                    Vec::new()
                },
            });
            exec.send(Input::Submit(Box::new(Submission {
                handle,
                prompt: prompt.tokens.clone(),
                max_tokens,
                min_tokens: gen.min_tokens.min(max_tokens),
                params,
                slo,
                priority,
                starts_text: kind == Kind::Chat,
                choice,
                logprobs: gen.logprobs,
                prompt_logprobs,
                discard_output,
                constraint: constraint.clone(),
                events: tx.clone(),
            })))
            .map_err(|_| ApiError::unavailable())?;
            guards.push(CancelGuard {
                handle,
                tx: exec.clone(),
                done: false,
            });
        }
    }
    drop(tx);
    // Every choice is admitted or the request fails (dropping the guards cancels the others).
    let mut early = VecDeque::new();
    let mut admitted = 0;
    while admitted < guards.len() {
        let Some((c, ev)) = rx.recv().await else {
            return Err(ApiError::unavailable());
        };
        let c = c as usize;
        match ev {
            ToClient::Accepted => admitted += 1,
            ToClient::Rejected(RejectReason::QueueFull) => {
                guards[c].done = true;
                return Err(ApiError::queue_full());
            }
            ToClient::Rejected(RejectReason::TooLong) => {
                guards[c].done = true;
                let (np, mt) = (setups[c].prompt_tokens, runs[c / n as usize]);
                return Err(ApiError::context_length(format!(
                    "The request needs {} tokens of KV cache ({np} prompt + {mt} completion) but an instance holds at most {}.",
                    np + mt,
                    st.kv_tokens
                ), param));
            }
            ToClient::ShuttingDown => {
                guards[c].done = true;
                return Err(ApiError::unavailable());
            }
            other => early.push_back((c as u32, other)),
        }
    }
    let id = format!(
        "{}-{:016x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        guards.first().map_or(0, |g| g.handle)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fmt = Format {
        kind,
        id,
        created,
        model: st.model_name.clone(),
        text: st.text.clone(),
        logprobs: gen.logprobs,
    };
    let choices = Choices::new(setups);
    if gen.stream {
        let stream = SseStream::new(rx, early, guards, fmt, choices, gen.include_usage);
        return Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let mut choices = choices;
    loop {
        let (c, ev) = match early.pop_front() {
            Some(e) => e,
            None => match rx.recv().await {
                Some(e) => e,
                None => return Err(ApiError::unavailable()),
            },
        };
        let c = c as usize;
        match ev {
            ToClient::Failed(msg) => {
                guards[c].done = true;
                return Err(ApiError::internal(msg));
            }
            ToClient::Done { .. } => guards[c].done = true,
            _ => {}
        }
        choices.apply(c, ev);
        if choices.all_done() {
            let mut resp = Json(fmt.full(&choices)).into_response();
            if let Ok(v) = instances_header(choices.instances()).parse() {
                resp.headers_mut().insert("x-accellm-instances", v);
            }
            return Ok(resp);
        }
    }
}

fn instances_header(mask: u64) -> String {
    (0..64)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CommonParams;

    fn gen(body: &str) -> (Generation, bool) {
        let p: CommonParams = serde_json::from_str(body).expect("valid body");
        let explicit = p.priority.is_some();
        (
            p.validate(None, Endpoint::Chat).expect("valid params"),
            explicit,
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn the_objective_header_selects_a_class_below_explicit_targets() {
        let classes = SloClass::defaults();
        let defaults = Slo {
            ttft_ms: Some(9_000.0),
            tbt_ms: Some(900.0),
        };
        let run = |body: &str, h: &[(&'static str, &'static str)]| {
            let (g, explicit) = gen(body);
            request_slo(defaults, &classes, &headers(h), &g, explicit).expect("valid")
        };
        let slo = |ttft: f64, tbt: f64| Slo {
            ttft_ms: Some(ttft),
            tbt_ms: Some(tbt),
        };
        // No objective: the server's defaults, priority 0.
        assert_eq!(run("{}", &[]), (defaults, 0));
        // llm-d's header, and the extension's older name, pick the class's targets and priority.
        let batch = (slo(30_000.0, 1_000.0), 3);
        assert_eq!(
            run("{}", &[("x-llm-d-inference-objective", "batch")]),
            batch
        );
        assert_eq!(
            run("{}", &[("x-gateway-inference-objective", "batch")]),
            batch
        );
        // llm-d's name wins over the older one.
        assert_eq!(
            run(
                "{}",
                &[
                    ("x-llm-d-inference-objective", "code"),
                    ("x-gateway-inference-objective", "batch"),
                ]
            ),
            (slo(2_000.0, 100.0), 1)
        );
        // An objective with no class of ours changes nothing.
        assert_eq!(
            run("{}", &[("x-llm-d-inference-objective", "premium")]),
            (defaults, 0)
        );
        // Per target, the body and every SLO header are more specific than the class.
        let objective = ("x-llm-d-inference-objective", "chat");
        assert_eq!(
            run(r#"{"slo": {"ttft_ms": 123}}"#, &[objective]),
            (slo(123.0, 50.0), 0)
        );
        assert_eq!(
            run("{}", &[objective, ("x-llm-d-slo-tpot-ms", "77")]),
            (slo(1_000.0, 77.0), 0)
        );
        assert_eq!(
            run("{}", &[objective, ("x-slo-ttft-ms", "55")]),
            (slo(55.0, 50.0), 0)
        );
        // The body's priority, even 0, wins over the class's.
        let batch_objective = ("x-llm-d-inference-objective", "batch");
        assert_eq!(run(r#"{"priority": 0}"#, &[batch_objective]).1, 0);
        assert_eq!(run(r#"{"priority": -2}"#, &[batch_objective]).1, -2);
        // A malformed SLO header is still an error with an objective present.
        let (g, explicit) = gen("{}");
        let bad = headers(&[objective, ("x-llm-d-slo-ttft-ms", "soon")]);
        assert!(request_slo(defaults, &classes, &bad, &g, explicit).is_err());
    }
}
