//! OpenAI's response shapes: whole answers and streamed chunks of one or more choices, with
//! log-probabilities in the chat shape (`logprobs.content[]`) or the legacy completions shape
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use accellm_engine::TokenLogprob;
use axum::body::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::executor::{CancelGuard, Finish, ToClient};
use crate::text::TextModel;

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// Log-probabilities below this are reported as it (JSON has no `-Infinity`; vLLM does the
/// same).
const MIN_LOGPROB: f32 = -9999.0;

fn logprob_value(x: f32) -> Value {
    json!(x.max(MIN_LOGPROB))
}

/// Response framing shared by full and streamed answers.
pub(crate) struct Format {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// For token strings and bytes.
    pub text: Arc<TextModel>,
    /// Alternatives per token when logprobs were asked for.
    pub logprobs: Option<u8>,
}

/// What one choice needs to know about its prompt.
pub(crate) struct ChoiceSetup {
    /// Prompt length.
    pub prompt_tokens: u32,
    /// The first choice of its prompt counts the prompt in `usage`.
    pub counts_prompt: bool,
    /// Text returned before the completion (`echo`).
    pub echo: Option<String>,
    /// Prompt token ids, kept when echo returns their logprobs.
    pub echo_tokens: Vec<u32>,
}

/// One choice's answer as it arrives.
struct ChoiceAcc {
    setup: ChoiceSetup,
    text: String,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    finish: Option<Finish>,
    /// Why the output's grammar ended it (its `finish_reason` is then `error`).
    grammar_error: Option<String>,
    completion_tokens: u32,
    instances: u64,
}

/// Every choice of one request.
pub(crate) struct Choices {
    acc: Vec<ChoiceAcc>,
}

impl Choices {
    pub fn new(setups: Vec<ChoiceSetup>) -> Self {
        Self {
            acc: setups
                .into_iter()
                .map(|setup| ChoiceAcc {
                    setup,
                    text: String::new(),
                    logprobs: Vec::new(),
                    prompt_logprobs: None,
                    finish: None,
                    grammar_error: None,
                    completion_tokens: 0,
                    instances: 0,
                })
                .collect(),
        }
    }

    /// Records an event of choice `c`.
    pub fn apply(&mut self, c: usize, ev: ToClient) {
        let Some(a) = self.acc.get_mut(c) else {
            return;
        };
        match ev {
            ToClient::Token { text, logprob } => {
                a.text.push_str(&text);
                if let Some(lp) = logprob {
                    a.logprobs.push(*lp);
                }
            }
            ToClient::PromptLogprobs(v) => a.prompt_logprobs = Some(v),
            ToClient::GrammarFailed(msg) => a.grammar_error = Some(msg),
            ToClient::Done {
                finish,
                completion_tokens,
                instances,
                ..
            } => {
                a.finish = Some(finish);
                a.completion_tokens = completion_tokens;
                a.instances = instances;
            }
            ToClient::Accepted
            | ToClient::Rejected(_)
            | ToClient::ShuttingDown
            | ToClient::Failed(_) => {}
        }
    }

    pub fn is_done(&self, c: usize) -> bool {
        self.acc.get(c).is_none_or(|a| a.finish.is_some())
    }

    pub fn all_done(&self) -> bool {
        self.acc.iter().all(|a| a.finish.is_some())
    }

    /// Instances that ran any choice (bit mask).
    pub fn instances(&self) -> u64 {
        self.acc.iter().fold(0, |m, a| m | a.instances)
    }

    /// `(prompt, completion)` tokens: each prompt once, every choice's output.
    fn usage(&self) -> (u32, u32) {
        self.acc.iter().fold((0, 0), |(p, c), a| {
            (
                p + if a.setup.counts_prompt {
                    a.setup.prompt_tokens
                } else {
                    0
                },
                c + a.completion_tokens,
            )
        })
    }
}

/// `finish_reason` of a choice ended by its grammar (vLLM's word for a request that failed).
const GRAMMAR_FINISH: &str = "error";

/// A choice's `finish_reason`, and the OpenAI-shaped `error` a choice ended by its grammar
/// carries beside it.
fn finish_of(a: &ChoiceAcc) -> (Option<&'static str>, Option<Value>) {
    match (&a.grammar_error, a.finish) {
        (Some(msg), Some(_)) => {
            let mut e = ApiError::invalid(msg.as_str(), Some("response_format"));
            e.code = Some("grammar_dead_end");
            (Some(GRAMMAR_FINISH), Some(e.body()["error"].take()))
        }
        (_, finish) => (finish.map(Finish::as_str), None),
    }
}

fn usage_value((prompt, completion): (u32, u32)) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Builds the legacy completions `logprobs` object token by token.
#[derive(Default)]
struct CompletionLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl CompletionLogprobs {
    /// Adds `token` at character offset `*offset` (advanced past its text); `lp` is `None` for
    /// the first prompt token, which has no logprob.
    fn push(&mut self, fmt: &Format, token: u32, lp: Option<&TokenLogprob>, offset: &mut usize) {
        let text = fmt.text.token_str(token);
        self.text_offset.push(json!(*offset));
        *offset += text.chars().count();
        self.tokens.push(json!(text));
        match lp {
            None => {
                self.token_logprobs.push(Value::Null);
                self.top_logprobs.push(Value::Null);
            }
            Some(lp) => {
                self.token_logprobs.push(logprob_value(lp.logprob));
                // The top alternatives and always the chosen token (up to N+1 entries, as
                // OpenAI and vLLM answer); tokens with the same text keep the higher value.
                let mut top = Map::new();
                for &(t, l) in lp.top.iter().chain([(lp.token, lp.logprob)].iter()) {
                    let key = fmt.text.token_str(t);
                    let better = top
                        .get(&key)
                        .and_then(Value::as_f64)
                        .is_none_or(|old| old < l.max(MIN_LOGPROB) as f64);
                    if better {
                        top.insert(key, logprob_value(l));
                    }
                }
                self.top_logprobs.push(Value::Object(top));
            }
        }
    }

    fn value(self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

impl Format {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// One entry of a chat `logprobs.content` (or of its `top_logprobs`).
    fn chat_entry(&self, token: u32, logprob: f32, top: Option<&[(u32, f32)]>) -> Value {
        let mut v = json!({
            "token": self.text.token_str(token),
            "logprob": logprob_value(logprob),
            "bytes": self.text.token_bytes(token),
        });
        if let Some(top) = top {
            v["top_logprobs"] = top
                .iter()
                .map(|&(t, l)| self.chat_entry(t, l, None))
                .collect();
        }
        v
    }

    fn chat_logprobs(&self, lps: &[TokenLogprob]) -> Value {
        if self.logprobs.is_none() {
            return Value::Null;
        }
        let content: Vec<Value> = lps
            .iter()
            .map(|lp| self.chat_entry(lp.token, lp.logprob, Some(&lp.top)))
            .collect();
        json!({"content": content, "refusal": null})
    }

    /// Logprobs of the echoed prompt (first token has none) into `out`.
    fn push_prompt_logprobs(
        &self,
        out: &mut CompletionLogprobs,
        prompt: &[u32],
        lps: &[Option<TokenLogprob>],
        offset: &mut usize,
    ) {
        for (k, &t) in prompt.iter().enumerate() {
            let lp = k
                .checked_sub(1)
                .and_then(|j| lps.get(j))
                .and_then(Option::as_ref);
            out.push(self, t, lp, offset);
        }
    }

    /// The whole answer.
    pub fn full(&self, choices: &Choices) -> Value {
        let list: Vec<Value> = choices
            .acc
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (finish, error) = finish_of(a);
                let mut choice = match self.kind {
                    Kind::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": a.text},
                        "logprobs": self.chat_logprobs(&a.logprobs),
                        "finish_reason": finish,
                    }),
                    Kind::Completion => {
                        let echo = a.setup.echo.as_deref().unwrap_or("");
                        let logprobs = self.logprobs.map(|_| {
                            let mut out = CompletionLogprobs::default();
                            let mut offset = 0;
                            if a.setup.echo.is_some() {
                                let lps = a.prompt_logprobs.as_deref().unwrap_or(&[]);
                                self.push_prompt_logprobs(
                                    &mut out,
                                    &a.setup.echo_tokens,
                                    lps,
                                    &mut offset,
                                );
                            }
                            for lp in &a.logprobs {
                                out.push(self, lp.token, Some(lp), &mut offset);
                            }
                            out.value()
                        });
                        json!({
                            "index": i,
                            "text": format!("{echo}{}", a.text),
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        })
                    }
                };
                if let Some(e) = error {
                    choice["error"] = e;
                }
                choice
            })
            .collect();
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": list,
            "usage": usage_value(choices.usage()),
        })
    }

    /// One streamed chunk of choice `index`: `text` (and `role` on a choice's first chat
    /// chunk) or a finish reason, with `logprobs` already shaped.
    fn chunk(
        &self,
        index: usize,
        text: &str,
        role: bool,
        finish: Option<&str>,
        logprobs: Value,
        with_usage: bool,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                })
            }
            Kind::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish,
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

    fn usage_chunk(&self, choices: &Choices) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_value(choices.usage()),
        })
    }
}

fn sse(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// Streaming state of one choice.
#[derive(Default)]
struct StreamChoice {
    sent_role: bool,
    /// Characters streamed so far (completions' `text_offset`).
    offset: usize,
    echo_sent: bool,
}

/// The SSE body of a streamed answer; dropping it early cancels every choice still running.
pub(crate) struct SseStream {
    rx: UnboundedReceiver<(u32, ToClient)>,
    /// Events that arrived while the request was being admitted.
    early: VecDeque<(u32, ToClient)>,
    guards: Vec<CancelGuard>,
    fmt: Format,
    choices: Choices,
    state: Vec<StreamChoice>,
    include_usage: bool,
    started: bool,
    closed: bool,
}

impl SseStream {
    pub fn new(
        rx: UnboundedReceiver<(u32, ToClient)>,
        early: VecDeque<(u32, ToClient)>,
        guards: Vec<CancelGuard>,
        fmt: Format,
        choices: Choices,
        include_usage: bool,
    ) -> Self {
        let state = choices
            .acc
            .iter()
            .map(|_| StreamChoice::default())
            .collect();
        Self {
            rx,
            early,
            guards,
            fmt,
            choices,
            state,
            include_usage,
            started: false,
            closed: false,
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.guards.iter_mut().for_each(|g| g.done = true);
    }

    /// The echo chunk of choice `c` (prompt text, and its logprobs when asked for).
    fn echo_chunk(&mut self, c: usize, prompt_lps: Option<&[Option<TokenLogprob>]>) -> Value {
        let fmt = &self.fmt;
        let a = &self.choices.acc[c];
        let st = &mut self.state[c];
        st.echo_sent = true;
        let logprobs = match (fmt.logprobs, prompt_lps) {
            (Some(_), Some(lps)) => {
                let mut out = CompletionLogprobs::default();
                fmt.push_prompt_logprobs(&mut out, &a.setup.echo_tokens, lps, &mut st.offset);
                out.value()
            }
            _ => Value::Null,
        };
        let text = a.setup.echo.as_deref().unwrap_or("");
        fmt.chunk(c, text, false, None, logprobs, self.include_usage)
    }

    /// Handles one event into `out`; returns whether to flush now.
    fn on_event(&mut self, c: usize, ev: ToClient, out: &mut Vec<u8>) -> bool {
        if c >= self.state.len() {
            return false;
        }
        match ev {
            ToClient::Token { text, logprob } => {
                if text.is_empty() && logprob.is_none() && self.state[c].sent_role {
                    return false;
                }
                let fmt = &self.fmt;
                let st = &mut self.state[c];
                let role = fmt.kind == Kind::Chat && !st.sent_role;
                st.sent_role = true;
                let logprobs = match (fmt.kind, fmt.logprobs, &logprob) {
                    (_, None, _) => Value::Null,
                    (Kind::Chat, Some(_), lp) => {
                        let lps: Vec<TokenLogprob> = lp.iter().map(|b| (**b).clone()).collect();
                        fmt.chat_logprobs(&lps)
                    }
                    (Kind::Completion, Some(_), lp) => {
                        let mut o = CompletionLogprobs::default();
                        if let Some(lp) = lp {
                            o.push(fmt, lp.token, Some(lp), &mut st.offset);
                        }
                        o.value()
                    }
                };
                sse(
                    &fmt.chunk(c, &text, role, None, logprobs, self.include_usage),
                    out,
                );
                // One chunk per token: flush it now so clients time every token.
                true
            }
            ToClient::PromptLogprobs(lps) => {
                if self.fmt.kind == Kind::Completion
                    && self.choices.acc[c].setup.echo.is_some()
                    && !self.state[c].echo_sent
                {
                    let v = self.echo_chunk(c, Some(&lps));
                    sse(&v, out);
                }
                false
            }
            ev @ ToClient::Done { .. } => {
                if let Some(g) = self.guards.get_mut(c) {
                    g.done = true;
                }
                self.choices.apply(c, ev);
                let (finish, error) = finish_of(&self.choices.acc[c]);
                let role = self.fmt.kind == Kind::Chat && !self.state[c].sent_role;
                let mut chunk =
                    self.fmt
                        .chunk(c, "", role, finish, Value::Null, self.include_usage);
                if let Some(e) = error {
                    chunk["choices"][0]["error"] = e;
                }
                sse(&chunk, out);
                if self.choices.all_done() {
                    self.close();
                    if self.include_usage {
                        sse(&self.fmt.usage_chunk(&self.choices), out);
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    return true;
                }
                false
            }
            ToClient::Failed(msg) => {
                self.close();
                sse(&ApiError::internal(msg).body(), out);
                out.extend_from_slice(b"data: [DONE]\n\n");
                true
            }
            ev @ ToClient::GrammarFailed(_) => {
                self.choices.apply(c, ev);
                false
            }
            ToClient::Accepted | ToClient::Rejected(_) | ToClient::ShuttingDown => false,
        }
    }
}

impl futures_core::Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if !this.started {
            this.started = true;
            // Echo without logprobs needs nothing from the engine: send it first.
            if this.fmt.kind == Kind::Completion && this.fmt.logprobs.is_none() {
                for c in 0..this.state.len() {
                    if this.choices.acc[c].setup.echo.is_some() {
                        let v = this.echo_chunk(c, None);
                        sse(&v, &mut out);
                    }
                }
            }
        }
        // Send whatever is ready in one write; wait only when nothing is.
        loop {
            let (c, ev) = match this.early.pop_front() {
                Some(e) => e,
                None => match this.rx.poll_recv(cx) {
                    Poll::Ready(Some(e)) => e,
                    Poll::Ready(None) => {
                        this.close();
                        sse(&ApiError::unavailable().body(), &mut out);
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            if this.choices.is_done(c as usize) {
                continue;
            }
            if this.on_event(c as usize, ev, &mut out) {
                break;
            }
        }
        if !out.is_empty() {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        } else if this.closed {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
