//! The OpenAI request bodies the server accepts, and their validation into one normalised
//! [`Generation`] whatever the endpoint.

use accellm_core::request::Slo;
use serde::Deserialize;

use crate::error::ApiError;

/// `POST /v1/chat/completions` body (fields the server does not use are ignored).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Model name.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Shared sampling and streaming options.
    #[serde(flatten)]
    pub common: CommonParams,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
}

/// One chat message as sent.
#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Text, an array of content parts, or null.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or an array of parts (only text parts are supported).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Model name.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Shared options.
    #[serde(flatten)]
    pub common: CommonParams,
    /// Echo the prompt (unsupported when true).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Suffix (unsupported).
    #[serde(default)]
    pub suffix: Option<String>,
}

/// A completion prompt: text, a one-element batch of text, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A batch of texts (only one is supported).
    Texts(Vec<String>),
    /// A batch of token-id lists (only one is supported).
    TokenBatch(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Per-request SLOs in the body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloIn {
    /// Time to first token (ms).
    pub ttft_ms: Option<f64>,
    /// Time between tokens (ms).
    pub tbt_ms: Option<f64>,
}

/// Options both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    /// Output tokens at most.
    pub max_tokens: Option<i64>,
    /// Sampling temperature (0..=2).
    pub temperature: Option<f32>,
    /// Nucleus sampling (0, 1].
    pub top_p: Option<f32>,
    /// Top-k (vLLM extension; -1 or 0 disables).
    pub top_k: Option<i64>,
    /// Seed of the request's sampler.
    pub seed: Option<i64>,
    /// Choices to generate (only 1).
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Keep generating past end-of-sequence (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// Generate at least this many tokens before EOS or a stop string may end (vLLM extension).
    pub min_tokens: Option<i64>,
    /// Scheduling priority, vLLM's meaning: lower is served first.
    pub priority: Option<i64>,
    /// Per-request SLOs (accellm extension).
    pub slo: Option<SloIn>,
    /// Log-probabilities (unsupported when requested).
    pub logprobs: Option<serde_json::Value>,
}

/// A validated generation request, whatever the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Output tokens at most; `None` means "up to the context length".
    pub max_tokens: Option<u32>,
    /// Minimum output tokens.
    pub min_tokens: u32,
    /// Temperature.
    pub temperature: f32,
    /// Top-p.
    pub top_p: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream.
    pub stream: bool,
    /// Send usage at the end of a stream.
    pub include_usage: bool,
    /// Ignore EOS.
    pub ignore_eos: bool,
    /// Priority.
    pub priority: i32,
    /// SLOs from the body (headers and defaults are merged later).
    pub slo: Slo,
}

fn positive_ms(v: Option<f64>, param: &str) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => Err(ApiError::invalid(
            format!("`{param}` must be a positive number of milliseconds, got {x}"),
            Some(param),
        )),
        _ => Ok(v),
    }
}

impl CommonParams {
    /// Checks every option and normalises them; `max_alias` is `max_completion_tokens`.
    pub fn validate(&self, max_alias: Option<i64>) -> Result<Generation, ApiError> {
        let inv = |m: String, p: &str| Err(ApiError::invalid(m, Some(p)));
        if let Some(n) = self.n {
            if n != 1 {
                return inv(format!("Only n=1 is supported, got n={n}."), "n");
            }
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !(v.is_null() || v == &serde_json::Value::Bool(false)))
        {
            return inv("logprobs are not supported.".into(), "logprobs");
        }
        let max_tokens = match max_alias.or(self.max_tokens) {
            None => None,
            Some(m) if m < 1 || m > u32::MAX as i64 => {
                return inv(
                    format!("max_tokens must be at least 1, got {m}."),
                    "max_tokens",
                )
            }
            Some(m) => Some(m as u32),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return inv(
                format!("temperature must be between 0 and 2, got {temperature}."),
                "temperature",
            );
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return inv(format!("top_p must be in (0, 1], got {top_p}."), "top_p");
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return inv(
                    format!("top_k must be -1 (disabled) or at least 1, got {k}."),
                    "top_k",
                )
            }
        };
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m < 0 || m > u32::MAX as i64 => {
                return inv(
                    format!("min_tokens must be at least 0, got {m}."),
                    "min_tokens",
                )
            }
            Some(m) => m as u32,
        };
        if let Some(max) = max_tokens {
            if min_tokens > max {
                return inv(
                    format!("min_tokens ({min_tokens}) must not exceed max_tokens ({max})."),
                    "min_tokens",
                );
            }
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 16 {
            return inv("At most 16 stop strings are supported.".into(), "stop");
        }
        let priority = match self.priority {
            None => 0,
            Some(p) if p < i32::MIN as i64 || p > i32::MAX as i64 => {
                return inv(format!("priority {p} is out of range."), "priority")
            }
            Some(p) => p as i32,
        };
        let slo = match &self.slo {
            None => Slo::default(),
            Some(s) => Slo {
                ttft_ms: positive_ms(s.ttft_ms, "slo.ttft_ms")?,
                tbt_ms: positive_ms(s.tbt_ms, "slo.tbt_ms")?,
            },
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return inv(
                "stream_options is only allowed when stream is true.".into(),
                "stream_options",
            );
        }
        Ok(Generation {
            max_tokens,
            min_tokens,
            temperature,
            top_p,
            top_k,
            seed: self.seed.map(|s| s as u64),
            stop,
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            priority,
            slo,
        })
    }
}

/// Merges SLOs: the body wins over headers, headers over the server defaults.
pub fn merge_slo(body: Slo, headers: Slo, defaults: Slo) -> Slo {
    Slo {
        ttft_ms: body.ttft_ms.or(headers.ttft_ms).or(defaults.ttft_ms),
        tbt_ms: body.tbt_ms.or(headers.tbt_ms).or(defaults.tbt_ms),
    }
}

/// Parses an SLO header value in milliseconds.
pub fn parse_slo_header(name: &str, value: Option<&str>) -> Result<Option<f64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let x: f64 = v.trim().parse().map_err(|_| {
        ApiError::invalid(
            format!("header {name} must be a number of milliseconds, got `{v}`"),
            Some(name),
        )
    })?;
    positive_ms(Some(x), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: &str) -> CommonParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_follow_openai() {
        let g = common("{}").validate(None).unwrap();
        assert_eq!(g.temperature, 1.0);
        assert_eq!(g.top_p, 1.0);
        assert_eq!(g.max_tokens, None);
        assert!(!g.stream);
    }

    #[test]
    fn invalid_values_name_their_parameter() {
        for (body, param) in [
            (r#"{"n": 2}"#, "n"),
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"top_k": -5}"#, "top_k"),
            (r#"{"min_tokens": 9, "max_tokens": 3}"#, "min_tokens"),
            (r#"{"slo": {"ttft_ms": -1}}"#, "slo.ttft_ms"),
            (
                r#"{"stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
        ] {
            let e = common(body).validate(None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn max_completion_tokens_wins() {
        let g = common(r#"{"max_tokens": 5}"#).validate(Some(7)).unwrap();
        assert_eq!(g.max_tokens, Some(7));
    }

    #[test]
    fn slo_precedence() {
        let body = Slo {
            ttft_ms: Some(1.0),
            tbt_ms: None,
        };
        let hdr = Slo {
            ttft_ms: Some(2.0),
            tbt_ms: Some(3.0),
        };
        let def = Slo {
            ttft_ms: Some(4.0),
            tbt_ms: Some(5.0),
        };
        let m = merge_slo(body, hdr, def);
        assert_eq!((m.ttft_ms, m.tbt_ms), (Some(1.0), Some(3.0)));
        assert!(parse_slo_header("x-slo-ttft-ms", Some("abc")).is_err());
        assert_eq!(
            parse_slo_header("x-slo-ttft-ms", Some(" 250 ")).unwrap(),
            Some(250.0)
        );
    }
}
