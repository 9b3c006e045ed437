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
    /// Return the prompt before the completion (with its logprobs when `logprobs` is set).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Suffix (unsupported).
    #[serde(default)]
    pub suffix: Option<String>,
}

/// A completion prompt: text, token ids, or a batch of either (one choice set per prompt).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A batch of texts.
    Texts(Vec<String>),
    /// A batch of token-id lists.
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
    /// Choices to generate per prompt.
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
    /// Log-probabilities: `true`/`false` on chat, the number of alternatives on completions.
    pub logprobs: Option<serde_json::Value>,
    /// Chat: alternatives per token (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
    /// Output format: `text`, `json_object` or `json_schema`.
    pub response_format: Option<ResponseFormatIn>,
}

/// `response_format` as sent.
#[derive(Debug, Deserialize)]
pub struct ResponseFormatIn {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `json_schema`: `{"name", "schema", "strict"}`.
    pub json_schema: Option<JsonSchemaIn>,
}

/// The `json_schema` member of `response_format`.
#[derive(Debug, Deserialize)]
pub struct JsonSchemaIn {
    /// Name of the schema (required by OpenAI, unused here).
    pub name: Option<String>,
    /// The JSON schema.
    pub schema: Option<serde_json::Value>,
    /// Strict adherence (always the case here).
    pub strict: Option<bool>,
}

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(serde_json::Value),
}

/// Which endpoint a request came to: the fields differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`; `echo` set or not.
    Completion {
        /// The prompt is returned too (then `max_tokens: 0` is allowed).
        echo: bool,
    },
}

/// Most choices one request may ask for.
pub const MAX_CHOICES: u32 = 64;

/// Most alternatives per token (vLLM's default `max_logprobs`).
pub const MAX_TOP_LOGPROBS: u8 = 20;

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
    /// Choices per prompt.
    pub n: u32,
    /// Log-probabilities of each output token with this many alternatives (`None`: none).
    pub logprobs: Option<u8>,
    /// Constrained output, if asked for.
    pub format: Option<OutputFormat>,
}

/// The longest SLO a request may ask for: a day. Longer ones mean nothing to a scheduler and,
/// as microseconds past the arrival time, could overflow its deadlines.
pub const MAX_SLO_MS: f64 = 86_400_000.0;

fn positive_ms(v: Option<f64>, param: &str) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0 && x <= MAX_SLO_MS) => Err(ApiError::invalid(
            format!(
                "`{param}` must be a positive number of milliseconds up to {MAX_SLO_MS} (a day), got {x}"
            ),
            Some(param),
        )),
        _ => Ok(v),
    }
}

impl CommonParams {
    /// Checks every option and normalises them; `max_alias` is `max_completion_tokens`.
    pub fn validate(
        &self,
        max_alias: Option<i64>,
        endpoint: Endpoint,
    ) -> Result<Generation, ApiError> {
        let inv = |m: String, p: &str| Err(ApiError::invalid(m, Some(p)));
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as u32,
            Some(n) => {
                return inv(
                    format!("n must be between 1 and {MAX_CHOICES}, got n={n}."),
                    "n",
                )
            }
        };
        let logprobs = self.logprobs(endpoint)?;
        let echo = endpoint == Endpoint::Completion { echo: true };
        let min_max_tokens = if echo { 0 } else { 1 };
        let max_tokens = match max_alias.or(self.max_tokens) {
            None => None,
            Some(m) if m < min_max_tokens || m > u32::MAX as i64 => {
                return inv(
                    format!("max_tokens must be at least {min_max_tokens}, got {m}."),
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
        let format = match &self.response_format {
            None => None,
            Some(f) => f.validate()?,
        };
        Ok(Generation {
            n,
            logprobs,
            format,
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

impl CommonParams {
    /// `logprobs` and `top_logprobs` in the endpoint's meaning: the number of alternatives per
    /// token when log-probabilities are asked for.
    fn logprobs(&self, endpoint: Endpoint) -> Result<Option<u8>, ApiError> {
        use serde_json::Value;
        let range = |k: i64, param: &str| {
            if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
                Ok(k as u8)
            } else {
                Err(ApiError::invalid(
                    format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
                    Some(param),
                ))
            }
        };
        match endpoint {
            Endpoint::Chat => {
                let on = match &self.logprobs {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                    Some(Value::Bool(true)) => true,
                    Some(v) => {
                        return Err(ApiError::invalid(
                            format!("logprobs must be a boolean on chat completions, got {v}."),
                            Some("logprobs"),
                        ))
                    }
                };
                match (on, self.top_logprobs) {
                    (false, Some(k)) if k > 0 => Err(ApiError::invalid(
                        "top_logprobs requires logprobs to be true.",
                        Some("top_logprobs"),
                    )),
                    (false, _) => Ok(None),
                    (true, k) => Ok(Some(range(k.unwrap_or(0), "top_logprobs")?)),
                }
            }
            Endpoint::Completion { .. } => match &self.logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(k)) if k.as_i64().is_some() => {
                    Ok(Some(range(k.as_i64().unwrap_or(-1), "logprobs")?))
                }
                Some(v) => Err(ApiError::invalid(
                    format!(
                        "logprobs must be an integer (alternatives per token) on completions, got {v}."
                    ),
                    Some("logprobs"),
                )),
            },
        }
    }
}

impl ResponseFormatIn {
    fn validate(&self) -> Result<Option<OutputFormat>, ApiError> {
        let param = Some("response_format");
        match self.kind.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(OutputFormat::JsonObject)),
            "json_schema" => {
                let schema = self
                    .json_schema
                    .as_ref()
                    .and_then(|s| s.schema.clone())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "response_format of type json_schema needs json_schema.schema.",
                            Some("response_format.json_schema"),
                        )
                    })?;
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(ApiError::invalid(
                        "json_schema.schema must be a JSON schema (an object).",
                        Some("response_format.json_schema"),
                    ));
                }
                Ok(Some(OutputFormat::JsonSchema(schema)))
            }
            other => Err(ApiError::invalid(
                format!(
                    "response_format.type must be text, json_object or json_schema, got `{other}`."
                ),
                param,
            )),
        }
    }
}

/// Parses a request body; an error names the parameter at fault (`messages[0].content`) and
/// the types a client knows (`an integer`, `a string, an array of strings, ...`), not this
/// crate's Rust types.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        if known_path(&e) {
            return json_error(&e);
        }
        // The options both endpoints share are flattened into the request, where serde loses
        // the field's name; parsed alone (other fields ignored) they give it back.
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, CommonParams>(de) {
            Err(c) if known_path(&c) => json_error(&c),
            _ => json_error(&e),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::malformed(format!("Invalid JSON body: {e}")))?;
    Ok(parsed)
}

/// Whether serde could tell where in the body the error is.
fn known_path(e: &serde_path_to_error::Error<serde_json::Error>) -> bool {
    let path = e.path().to_string();
    path != "." && !path.contains('?')
}

/// A 400 `invalid_json` naming the parameter at fault when the path is known.
fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let message = plain_serde_message(&e.inner().to_string());
    let mut param = known_path(e).then(|| e.path().to_string());
    // A missing field is at fault itself, not the object that lacks it.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next());
    if let Some(field) = missing {
        param = Some(match param {
            Some(p) => format!("{p}.{field}"),
            None => field.to_string(),
        });
    }
    let at = param
        .as_deref()
        .map(|p| format!(" at `{p}`"))
        .unwrap_or_default();
    ApiError {
        code: Some("invalid_json"),
        ..ApiError::invalid(
            format!("Invalid JSON body{at}: {message}"),
            param.as_deref(),
        )
    }
}

/// A serde message in the API's words: the request types' Rust names replaced by what they
/// accept.
fn plain_serde_message(m: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        (
            "data did not match any variant of untagged enum Prompt",
            "prompt must be a string, an array of strings, an array of token ids or an array of token-id arrays",
        ),
        (
            "data did not match any variant of untagged enum Content",
            "content must be a string, an array of content parts or null",
        ),
        (
            "data did not match any variant of untagged enum Stop",
            "stop must be a string or an array of strings",
        ),
        ("struct ChatRequest", "a chat completion request (a JSON object)"),
        ("struct CompletionRequest", "a completion request (a JSON object)"),
        ("struct ChatMessageIn", "a message ({\"role\", \"content\"})"),
        ("struct ContentPart", "a content part ({\"type\", \"text\"})"),
        ("struct StreamOptions", "an object"),
        ("struct SloIn", "an object"),
        ("struct ResponseFormatIn", "an object"),
        ("struct JsonSchemaIn", "an object"),
        ("expected i64", "expected an integer"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
    ];
    WORDS
        .iter()
        .fold(m.to_string(), |m, (rust, plain)| m.replace(rust, plain))
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
        let g = common("{}").validate(None, Endpoint::Chat).unwrap();
        assert_eq!((g.n, g.logprobs, g.format.clone()), (1, None, None));
        assert_eq!(g.temperature, 1.0);
        assert_eq!(g.top_p, 1.0);
        assert_eq!(g.max_tokens, None);
        assert!(!g.stream);
    }

    #[test]
    fn invalid_values_name_their_parameter() {
        for (body, param) in [
            (r#"{"n": 0}"#, "n"),
            (r#"{"n": 65}"#, "n"),
            (r#"{"logprobs": 3}"#, "logprobs"),
            (r#"{"logprobs": true, "top_logprobs": 21}"#, "top_logprobs"),
            (r#"{"top_logprobs": 2}"#, "top_logprobs"),
            (r#"{"response_format": {"type": "xml"}}"#, "response_format"),
            (
                r#"{"response_format": {"type": "json_schema"}}"#,
                "response_format.json_schema",
            ),
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"top_k": -5}"#, "top_k"),
            (r#"{"min_tokens": 9, "max_tokens": 3}"#, "min_tokens"),
            (r#"{"slo": {"ttft_ms": -1}}"#, "slo.ttft_ms"),
            // Past a day: as µs after the arrival, 1e39 ms overflowed the scheduler's deadline.
            (r#"{"slo": {"ttft_ms": 1e39}}"#, "slo.ttft_ms"),
            (r#"{"slo": {"tbt_ms": 86400001}}"#, "slo.tbt_ms"),
            (
                r#"{"stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
        ] {
            let e = common(body).validate(None, Endpoint::Chat).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let plain = Endpoint::Completion { echo: false };
        for (body, param) in [
            (r#"{"logprobs": true}"#, "logprobs"),
            (r#"{"logprobs": 21}"#, "logprobs"),
            (r#"{"logprobs": -1}"#, "logprobs"),
        ] {
            let e = common(body).validate(None, plain).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn logprobs_per_endpoint_and_echo_allows_zero_tokens() {
        let chat = common(r#"{"logprobs": true, "top_logprobs": 3, "n": 4}"#)
            .validate(None, Endpoint::Chat)
            .unwrap();
        assert_eq!((chat.logprobs, chat.n), (Some(3), 4));
        let off = common(r#"{"logprobs": false, "top_logprobs": 0}"#)
            .validate(None, Endpoint::Chat)
            .unwrap();
        assert_eq!(off.logprobs, None);
        let echo = Endpoint::Completion { echo: true };
        let c = common(r#"{"logprobs": 5, "max_tokens": 0}"#)
            .validate(None, echo)
            .unwrap();
        assert_eq!((c.logprobs, c.max_tokens), (Some(5), Some(0)));
        let plain = Endpoint::Completion { echo: false };
        let e = common(r#"{"max_tokens": 0}"#)
            .validate(None, plain)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let f = common(r#"{"response_format": {"type": "json_object"}}"#)
            .validate(None, plain)
            .unwrap();
        assert_eq!(f.format, Some(OutputFormat::JsonObject));
    }

    #[test]
    fn max_completion_tokens_wins() {
        let g = common(r#"{"max_tokens": 5}"#)
            .validate(Some(7), Endpoint::Chat)
            .unwrap();
        assert_eq!(g.max_tokens, Some(7));
    }

    #[test]
    fn json_errors_name_the_parameter_in_api_words() {
        let cases = [
            (
                r#"{"messages": 5}"#,
                Some("messages"),
                "expected a sequence",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                Some("messages[0].content"),
                "content must be a string",
            ),
            (r#"{"messages": [7]}"#, Some("messages[0]"), "a message"),
            (
                r#"{"model": "m"}"#,
                Some("messages"),
                "missing field `messages`",
            ),
            (
                r#"{"messages": [{"content": "x"}]}"#,
                Some("messages[0].role"),
                "missing field `role`",
            ),
            (r#"[]"#, None, "a chat completion request"),
            (r#"{"messages": []} x"#, None, "trailing characters"),
        ];
        for (body, param, words) in cases {
            let e = parse_json::<ChatRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            assert!(e.message.contains(words), "{body}: {}", e.message);
            assert!(!e.message.contains("struct "), "{}", e.message);
            assert!(!e.message.contains("enum "), "{}", e.message);
            assert_eq!(e.code, Some("invalid_json"));
        }
        let e = parse_json::<CompletionRequest>(br#"{"prompt": {"a": 1}}"#).unwrap_err();
        assert!(
            e.message.contains("prompt must be a string"),
            "{}",
            e.message
        );
        assert_eq!(e.param.as_deref(), Some("prompt"));
        // Shared options are flattened into the request; their errors still name them.
        let e = parse_json::<CompletionRequest>(br#"{"prompt": "x", "n": 1.5}"#).unwrap_err();
        assert!(e.message.contains("an integer"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("n"), "{}", e.message);
        let e = parse_json::<ChatRequest>(br#"{"messages": [], "stop": [1]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"), "{}", e.message);
        let e = parse_json::<ChatRequest>(br#"{"messages": [], "slo": {"ttft": 1}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("slo.ttft"), "{}", e.message);
        let e =
            parse_json::<ChatRequest>(br#"{"messages": [], "response_format": {}}"#).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.type"),
            "{}",
            e.message
        );
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
        assert!(parse_slo_header("x-llm-d-slo-ttft-ms", Some("1e300")).is_err());
        assert_eq!(
            parse_slo_header("x-slo-ttft-ms", Some(" 250 ")).unwrap(),
            Some(250.0)
        );
    }
}
