//! A property-based fuzzer of the HTTP API against a real server on a loopback port (the tiny
//! random-weight model, two instances under the default policies).
//!
//! Each case sends one to four requests at once: arbitrary and near-valid bodies for
//! `/v1/completions` and `/v1/chat/completions`, streaming or not, every parameter alone and in
//! combination (valid, at its bounds, out of range, of the wrong type), random JSON schemas as
//! `response_format`, token-id prompts, odd headers (`x-slo-*`, `x-llm-d-slo-*`,
//! `content-type`), odd methods and paths, bodies cut or corrupted, and streams the client drops
//! after the first chunk. Every answer must be 2xx or 4xx, every 4xx (and every error event of a
//! stream) in OpenAI's shape with no internal text, every 2xx a well-formed completion; after
//! each case the server must be healthy and, once idle, hold no KV block.
//!
//! CI runs [`CI_CASES`] cases with the seed `.ci/run` exports (`PROPTEST_RNG_SEED`);
//! `PROPTEST_CASES=N` runs N cases (the long run in `docs/server.md`).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{json, Map, Value};
use support::{metric_in, start, tiny_config};

/// Cases when `PROPTEST_CASES` is not set: what CI runs (well under a minute in debug).
const CI_CASES: u32 = 160;

/// Body limit of the fuzzed server (small, so that some bodies exceed it).
const MAX_BODY: usize = 32 << 10;

/// Text the server must never show a client: the grammar engine's state, panics, Rust debug
/// output of internal values.
const INTERNAL: &[&str] = &[
    "Parser",
    "NoExtensionBias",
    "Tokens:",
    "panicked",
    "RUST_BACKTRACE",
    "Some(",
    "None)",
    "Ok(",
    "Err(",
    "{ kind",
    "accellm_",
    "src/",
    ".rs:",
];

// ---------------------------------------------------------------- generators
//
// Every parameter has valid values and, in a "dirty" request, also values at or past its
// bounds and of the wrong type (one in four). Three requests in five are clean, so that
// generation, streaming, logprobs, echo, `n`, stop strings and grammars run often; the dirty
// ones probe validation, in every combination.

/// Valid values, or with `dirty` also bad ones (one in four).
fn mix(
    dirty: bool,
    valid: impl Strategy<Value = Value> + 'static,
    bad: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Value> {
    if dirty {
        prop_oneof![3 => valid, 1 => bad].boxed()
    } else {
        valid.boxed()
    }
}

/// Short text: letters, JSON punctuation, multi-byte characters, the model's special tokens;
/// never an [`INTERNAL`] word.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9 .,{}\\[\\]\":\\n\\\\é中😀]{0,20}",
        1 => Just("<|im_start|>user\nhi<|im_end|>".to_string()),
        1 => Just("\u{0}\u{1f}\u{7f}".to_string()),
    ]
}

/// Text past the context, or past the body limit.
fn long_text() -> impl Strategy<Value = String> {
    (100usize..14_000).prop_map(|n| "ab ".repeat(n))
}

/// A value of the wrong type for most parameters.
fn wrong() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("5")),
        Just(json!(true)),
        Just(json!([1, 2])),
        Just(json!({"a": 1})),
        Just(json!(-0.0)),
        Just(json!(1e300)),
    ]
}

/// Integers around the interesting bounds, and some that are not integers.
fn int_edge(lo: i64, hi: i64) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (lo..=hi).prop_map(Value::from),
        1 => Just(json!(-1)),
        1 => Just(json!(0)),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(4_294_967_296_i64)),
        1 => Just(json!(2_147_483_648_i64)),
        1 => Just(json!(1.5)),
        1 => Just(json!(1e30)),
        1 => wrong(),
    ]
}

/// Floats just outside `lo..=hi`, extreme, or not numbers.
fn float_edge(lo: f64, hi: f64) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(lo - 0.5)),
        Just(json!(hi + 0.5)),
        Just(json!(lo)),
        Just(json!(-1e-9)),
        Just(json!(1e39)),
        Just(json!(-1e39)),
        wrong(),
    ]
}

fn floats(lo: f64, hi: f64) -> impl Strategy<Value = Value> {
    (lo..=hi).prop_map(|x| json!(x))
}

fn token_ids(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..260, len)
}

fn bad_token_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        (260u32..400).prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(4_294_967_296_i64)),
        Just(json!(u32::MAX)),
        Just(json!(2.5)),
        Just(json!("7")),
    ]
}

fn prompt(dirty: bool) -> BoxedStrategy<Value> {
    let valid = prop_oneof![
        6 => text().prop_map(Value::from),
        2 => prop::collection::vec(text(), 1..4).prop_map(|v| json!(v)),
        4 => token_ids(1..40).prop_map(|v| json!(v)),
        2 => prop::collection::vec(token_ids(1..12), 1..4).prop_map(|v| json!(v)),
    ];
    let bad = prop_oneof![
        2 => long_text().prop_map(Value::from),
        2 => (token_ids(0..10), bad_token_id()).prop_map(|(mut v, b)| {
            let mut v: Vec<Value> = v.drain(..).map(Value::from).collect();
            let at = v.len() / 2;
            v.insert(at, b);
            json!(v)
        }),
        1 => (300usize..9000).prop_map(|n| json!(vec![104u32; n])),
        1 => Just(json!("")),
        1 => Just(json!([])),
        1 => Just(json!([[]])),
        1 => Just(json!([[1], []])),
        1 => Just(json!(["a", 1])),
        1 => Just(json!([[1], "a"])),
        1 => wrong(),
    ];
    mix(dirty, valid, bad)
}

fn message(dirty: bool) -> BoxedStrategy<Value> {
    let role = mix(
        dirty,
        prop_oneof![
            6 => Just(json!("user")),
            2 => Just(json!("system")),
            2 => Just(json!("assistant")),
        ],
        prop_oneof![
            Just(json!("tool")),
            Just(json!("developer")),
            Just(json!("")),
            Just(json!("wizard")),
            wrong(),
        ],
    );
    let part = |kind: BoxedStrategy<&'static str>| {
        (kind, prop::option::weighted(0.9, text())).prop_map(|(kind, text)| {
            let mut p = json!({"type": kind});
            if let Some(t) = text {
                p["text"] = json!(t);
            }
            p
        })
    };
    let content = mix(
        dirty,
        prop_oneof![
            8 => text().prop_map(Value::from),
            1 => Just(Value::Null),
            2 => prop::collection::vec(part(Just("text").boxed()), 0..3).prop_map(Value::from),
        ],
        prop_oneof![
            prop::collection::vec(
                part(prop_oneof![Just("image_url"), Just("input_audio"), Just("")].boxed()),
                1..3
            )
            .prop_map(Value::from),
            Just(json!([{"text": "no type"}])),
            long_text().prop_map(Value::from),
            wrong(),
        ],
    );
    let p = if dirty { 0.95 } else { 0.999 };
    (
        prop::option::weighted(p, role),
        prop::option::weighted(p, content),
    )
        .prop_map(|(role, content)| {
            let mut m = Map::new();
            if let Some(r) = role {
                m.insert("role".into(), r);
            }
            if let Some(c) = content {
                m.insert("content".into(), c);
            }
            Value::Object(m)
        })
        .boxed()
}

fn messages(dirty: bool) -> BoxedStrategy<Value> {
    mix(
        dirty,
        prop::collection::vec(message(dirty), 1..4).prop_map(Value::from),
        prop_oneof![
            Just(json!([])),
            Just(json!("hello")),
            Just(json!([{"role": "user", "content": "a"}, 5])),
            wrong(),
        ],
    )
}

fn stop(dirty: bool) -> BoxedStrategy<Value> {
    let s = prop_oneof![
        4 => "[a-z }\\]\":]{1,3}",
        1 => Just(String::new()),
        1 => Just("😀".to_string()),
    ];
    mix(
        dirty,
        prop_oneof![
            s.clone().prop_map(Value::from),
            prop::collection::vec(s.clone(), 0..17).prop_map(Value::from),
        ],
        prop_oneof![
            prop::collection::vec(s, 17..40).prop_map(Value::from),
            Just(json!(["a", 1])),
            wrong(),
        ],
    )
}

/// Small scalars for `enum` and `const`.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("a")),
        Just(json!("b\"c")),
        Just(json!(1)),
        Just(json!(-2.5)),
        Just(json!(true)),
        Just(Value::Null),
        Just(json!([1])),
        Just(json!({"k": "v"})),
    ]
}

/// JSON schemas: satisfiable ones, contradictory ones, `$ref` cycles, broken ones.
fn schema() -> impl Strategy<Value = Value> {
    let pattern = prop_oneof![
        Just("^[a-c]{1,3}$"),
        Just("\\d{2,4}"),
        Just("(a|b)*c"),
        Just("^(a+)+$"),
        Just("["),
        Just("(?<=a)b"),
        Just(""),
    ];
    let leaf = prop_oneof![
        4 => (
            prop::option::of(0u32..8),
            prop::option::of(0u32..8),
            prop::option::weighted(0.3, pattern),
        )
            .prop_map(|(min, max, pat)| {
                let mut s = json!({"type": "string"});
                if let Some(m) = min {
                    s["minLength"] = json!(m);
                }
                if let Some(m) = max {
                    s["maxLength"] = json!(m);
                }
                if let Some(p) = pat {
                    s["pattern"] = json!(p);
                }
                s
            }),
        3 => (prop::option::of(-50i64..50), prop::option::of(-50i64..50)).prop_map(|(lo, hi)| {
            let mut s = json!({"type": "integer"});
            if let Some(x) = lo {
                s["minimum"] = json!(x);
            }
            if let Some(x) = hi {
                s["maximum"] = json!(x);
            }
            s
        }),
        1 => Just(json!({"type": "number"})),
        2 => Just(json!({"type": "boolean"})),
        1 => Just(json!({"type": "null"})),
        1 => Just(json!({"type": ["string", "null"]})),
        2 => prop::collection::vec(scalar(), 0..4).prop_map(|v| json!({"enum": v})),
        1 => scalar().prop_map(|v| json!({"const": v})),
        1 => Just(json!({"type": "nonsense"})),
        1 => Just(json!({"type": 5})),
        1 => Just(json!({"type": "string", "format": "date-time"})),
        1 => Just(json!({"$ref": "#/$defs/missing"})),
        1 => Just(json!({"$ref": "#"})),
        1 => Just(json!({"$ref": "http://example.com/s.json"})),
        1 => Just(json!(true)),
        1 => Just(json!(false)),
        1 => Just(json!({})),
        1 => Just(json!({"not": {}})),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            4 => (
                prop::collection::btree_map("[a-d]{1,2}", inner.clone(), 0..4),
                prop::collection::vec("[a-e]{1,2}", 0..3),
                prop::option::of(prop_oneof![
                    Just(json!(false)),
                    Just(json!(true)),
                    inner.clone()
                ]),
            )
                .prop_map(|(props, required, additional)| {
                    let mut s =
                        json!({"type": "object", "properties": props, "required": required});
                    if let Some(a) = additional {
                        s["additionalProperties"] = a;
                    }
                    s
                }),
            2 => (inner.clone(), 0u32..3, prop::option::of(0u32..4)).prop_map(
                |(items, min, max)| {
                    let mut s = json!({"type": "array", "items": items, "minItems": min});
                    if let Some(m) = max {
                        s["maxItems"] = json!(m);
                    }
                    s
                }
            ),
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"anyOf": v})),
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"oneOf": v})),
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"allOf": v})),
            1 => inner
                .clone()
                .prop_map(|d| json!({"$ref": "#/$defs/a", "$defs": {"a": d}})),
            // A cycle with a way out, and a cycle without one behind a required property (the
            // grammar dead-ends while decoding).
            1 => inner.clone().prop_map(|d| json!({
                "type": "object",
                "properties": {"x": {"$ref": "#/$defs/a"}, "y": d},
                "required": ["x"],
                "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
            })),
            1 => inner.prop_map(|d| json!({
                "type": "object",
                "properties": {"y": d, "x": {"$ref": "#/$defs/a"}},
                "required": ["y", "x"],
                "additionalProperties": false,
                "$defs": {"a": {"$ref": "#/$defs/a"}},
            })),
        ]
    })
}

fn response_format(dirty: bool) -> BoxedStrategy<Value> {
    mix(
        dirty,
        prop_oneof![
            1 => Just(json!({"type": "text"})),
            2 => Just(json!({"type": "json_object"})),
            8 => (schema(), prop::option::of(any::<bool>())).prop_map(|(s, strict)| {
                let mut js = json!({"name": "fuzz", "schema": s});
                if let Some(b) = strict {
                    js["strict"] = json!(b);
                }
                json!({"type": "json_schema", "json_schema": js})
            }),
        ],
        prop_oneof![
            Just(json!({"type": "json_schema"})),
            Just(json!({"type": "json_schema", "json_schema": {"schema": "not a schema"}})),
            Just(json!({"type": "json_schema", "json_schema": {"name": "no schema"}})),
            Just(json!({"type": "xml"})),
            Just(json!({})),
            wrong(),
        ],
    )
}

/// One field of a body, present with probability `p`.
fn field(
    name: &'static str,
    p: f64,
    s: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<(&'static str, Value)>> {
    let s = s.prop_map(move |v| (name, v));
    if p >= 1.0 {
        s.prop_map(Some).boxed()
    } else if p <= 0.0 {
        Just(None).boxed()
    } else {
        prop::option::weighted(p, s).boxed()
    }
}

type Fields = Vec<Option<(&'static str, Value)>>;

/// Parameters both endpoints share.
fn common(dirty: bool) -> BoxedStrategy<Fields> {
    let d = dirty;
    let b = || any::<bool>().prop_map(Value::from);
    (
        (
            field(
                "model",
                0.6,
                mix(
                    d,
                    Just(json!("tiny")),
                    prop_oneof![Just(json!("")), Just(json!("gpt-4o")), wrong(),],
                ),
            ),
            // Mostly present and small, so that cases stay quick.
            field(
                "max_tokens",
                0.93,
                mix(
                    d,
                    prop_oneof![
                        12 => (1i64..12).prop_map(Value::from),
                        1 => (12i64..40).prop_map(Value::from),
                    ],
                    prop_oneof![
                        Just(json!(1_000_000_000)),
                        Just(json!(384)),
                        int_edge(-2, 2),
                    ],
                ),
            ),
            field(
                "temperature",
                0.3,
                mix(d, floats(0.0, 2.0), float_edge(0.0, 2.0)),
            ),
            field(
                "top_p",
                0.2,
                mix(d, floats(0.05, 1.0), float_edge(0.0, 1.0)),
            ),
            field(
                "top_k",
                0.15,
                mix(
                    d,
                    prop_oneof![
                        Just(json!(-1)),
                        Just(json!(0)),
                        (1i64..300).prop_map(Value::from),
                    ],
                    int_edge(-5, -2),
                ),
            ),
            field(
                "seed",
                0.3,
                mix(d, (-5i64..1000).prop_map(Value::from), int_edge(0, 0)),
            ),
            field(
                "n",
                0.25,
                mix(d, (1i64..5).prop_map(Value::from), int_edge(64, 66)),
            ),
            field("stop", 0.2, stop(d)),
        ),
        (
            field("stream", 0.45, mix(d, b(), wrong())),
            field(
                "stream_options",
                0.1,
                mix(
                    d,
                    b().prop_map(|b| json!({"include_usage": b})),
                    prop_oneof![Just(json!({"include_usage": "yes"})), wrong()],
                ),
            ),
            field("ignore_eos", 0.15, mix(d, b(), wrong())),
            field(
                "min_tokens",
                0.12,
                mix(d, (0i64..3).prop_map(Value::from), int_edge(3, 50)),
            ),
            field(
                "priority",
                0.1,
                mix(d, (-10i64..10).prop_map(Value::from), int_edge(0, 0)),
            ),
            field(
                "slo",
                0.1,
                mix(
                    d,
                    (floats(1.0, 5000.0), floats(1.0, 500.0))
                        .prop_map(|(t, b)| json!({"ttft_ms": t, "tbt_ms": b})),
                    prop_oneof![
                        (float_edge(1.0, 5000.0), floats(1.0, 500.0))
                            .prop_map(|(t, b)| json!({"ttft_ms": t, "tbt_ms": b})),
                        Just(json!({"ttft_ms": 100, "deadline": 5})),
                        wrong(),
                    ],
                ),
            ),
            field("response_format", 0.3, response_format(d)),
            field("user", 0.05, text().prop_map(Value::from)),
        ),
    )
        .prop_map(|(a, b)| {
            vec![
                a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, b.0, b.1, b.2, b.3, b.4, b.5, b.6, b.7,
            ]
        })
        .boxed()
}

fn object(fields: Fields) -> Value {
    let mut body: Map<String, Value> = fields
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.into(), v))
        .collect();
    if body.contains_key("stream_options") && body.get("stream") != Some(&json!(true)) {
        // stream_options without streaming is a 400; mostly send them together.
        if !body.len().is_multiple_of(4) {
            body.insert("stream".into(), json!(true));
        }
    }
    Value::Object(body)
}

fn chat_body(dirty: bool) -> BoxedStrategy<Value> {
    let d = dirty;
    (
        field("messages", if d { 0.97 } else { 1.0 }, messages(d)),
        field(
            "max_completion_tokens",
            0.05,
            mix(d, (1i64..8).prop_map(Value::from), int_edge(-1, 0)),
        ),
        field(
            "logprobs",
            0.25,
            mix(d, any::<bool>().prop_map(Value::from), int_edge(0, 5)),
        ),
        field(
            "top_logprobs",
            0.2,
            mix(d, (0i64..=20).prop_map(Value::from), int_edge(21, 1000)),
        ),
        common(d),
    )
        .prop_map(move |(m, mct, lp, tlp, mut rest)| {
            rest.extend([m, mct, lp, tlp]);
            let mut body = object(rest);
            if !d && body.get("top_logprobs").is_some() {
                // Clean requests ask for alternatives the valid way.
                body["logprobs"] = json!(true);
            }
            body
        })
        .boxed()
}

fn completion_body(dirty: bool) -> BoxedStrategy<Value> {
    let d = dirty;
    (
        field("prompt", if d { 0.97 } else { 1.0 }, prompt(d)),
        field(
            "echo",
            0.25,
            mix(d, any::<bool>().prop_map(Value::from), wrong()),
        ),
        field(
            "logprobs",
            0.25,
            mix(
                d,
                (0i64..=20).prop_map(Value::from),
                prop_oneof![int_edge(21, 1000), any::<bool>().prop_map(Value::from),],
            ),
        ),
        field(
            "suffix",
            if d { 0.04 } else { 0.0 },
            prop_oneof![Just(json!("")), Just(json!("s")), wrong()],
        ),
        common(d),
    )
        .prop_map(|(p, echo, lp, suffix, mut rest)| {
            rest.extend([p, echo, lp, suffix]);
            object(rest)
        })
        .boxed()
}

/// How the serialised body is damaged, if at all.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    /// Cut at this fraction of its length.
    Truncate(f64),
    /// Replace the byte at this fraction with another.
    Flip(f64, u8),
    /// Insert text at this fraction.
    Insert(f64, &'static str),
    /// Repeat a field (`"n": 2` appended).
    Duplicate,
    /// Something else entirely.
    Replace(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        12 => Just(Mutation::None),
        1 => (0.0..1.0f64).prop_map(Mutation::Truncate),
        1 => (0.0..1.0f64, any::<u8>()).prop_map(|(f, b)| Mutation::Flip(f, b)),
        1 => (0.0..1.0f64, prop_oneof![
            Just(","),
            Just("\""),
            Just("}"),
            Just("\\u12"),
            Just("[{"),
            Just("\u{feff}"),
        ]).prop_map(|(f, s)| Mutation::Insert(f, s)),
        1 => Just(Mutation::Duplicate),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(b"null".to_vec()),
            Just(b"[]".to_vec()),
            Just(b"{}".to_vec()),
            Just(b"\"str\"".to_vec()),
            Just(b"{\"prompt\": \"x\", \"max_tokens\": 1, \"prompt\": 2}".to_vec()),
            Just(vec![b'['; 100_000]),
        ].prop_map(Mutation::Replace),
    ]
}

fn apply(m: &Mutation, mut body: Vec<u8>) -> Vec<u8> {
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    match m {
        Mutation::None => {}
        Mutation::Truncate(f) => body.truncate(at(*f, body.len())),
        Mutation::Flip(f, b) => {
            let i = at(*f, body.len());
            if let Some(x) = body.get_mut(i) {
                *x = *b;
            }
        }
        Mutation::Insert(f, s) => {
            let i = at(*f, body.len());
            body.splice(i..i, s.bytes());
        }
        Mutation::Duplicate => {
            if body.last() == Some(&b'}') && body.len() > 2 {
                body.pop();
                body.extend_from_slice(b",\"n\":2}");
            }
        }
        Mutation::Replace(b) => body = b.clone(),
    }
    body
}

/// One request of a case.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    body: Value,
    mutation: Mutation,
    headers: Vec<(&'static str, &'static str)>,
    content_type: Option<&'static str>,
    /// Drop a streamed answer after its first chunk.
    disconnect: bool,
}

fn headers(dirty: bool) -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    let name = prop_oneof![
        Just("x-slo-ttft-ms"),
        Just("x-slo-tpot-ms"),
        Just("x-llm-d-slo-ttft-ms"),
        Just("x-llm-d-slo-tpot-ms"),
        Just("authorization"),
        Just("accept"),
        Just("x-request-id"),
    ];
    let good = prop_oneof![Just("100"), Just("2500.5"), Just(" 50 ")];
    let value = if dirty {
        prop_oneof![
            2 => good,
            1 => prop_oneof![
                Just("0"),
                Just("-5"),
                Just("abc"),
                Just("1e309"),
                Just("1e300"),
                Just(""),
                Just("NaN"),
                Just("inf"),
                Just("18446744073709551616"),
                Just("Bearer x"),
                Just("text/event-stream"),
            ],
        ]
        .boxed()
    } else {
        good.boxed()
    };
    prop::collection::vec((name, value), 0..3)
}

fn request(dirty: bool) -> BoxedStrategy<Req> {
    let target = if dirty {
        prop_oneof![
            10 => Just(("POST", "/v1/completions")),
            10 => Just(("POST", "/v1/chat/completions")),
            1 => Just(("GET", "/v1/completions")),
            1 => Just(("PUT", "/v1/chat/completions")),
            1 => Just(("POST", "/v1/chat/completions/")),
            1 => Just(("POST", "/v1/embeddings")),
            1 => Just(("POST", "/v1/models")),
        ]
        .boxed()
    } else {
        prop_oneof![
            Just(("POST", "/v1/completions")),
            Just(("POST", "/v1/chat/completions")),
        ]
        .boxed()
    };
    let content_type = prop_oneof![
        12 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("multipart/form-data; boundary=x")),
    ];
    let mutation = if dirty {
        mutation().boxed()
    } else {
        Just(Mutation::None).boxed()
    };
    (
        target,
        // A body for the other endpoint, now and then.
        prop::bool::weighted(if dirty { 0.1 } else { 0.001 }),
        chat_body(dirty),
        completion_body(dirty),
        mutation,
        headers(dirty),
        content_type,
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |((method, path), other, chat, completion, mutation, headers, ct, disconnect)| {
                let body = if path.contains("chat") != other {
                    chat
                } else {
                    completion
                };
                Req {
                    method,
                    path,
                    body,
                    mutation,
                    headers,
                    content_type: ct,
                    disconnect,
                }
            },
        )
        .boxed()
}

/// One to four requests sent at once; three in five clean.
fn case() -> impl Strategy<Value = Vec<Req>> {
    prop::collection::vec(prop_oneof![3 => request(false), 2 => request(true)], 1..=4)
}

// ---------------------------------------------------------------- checks

/// Tallies for the summary line.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    completions: AtomicU64,
    chats: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    streamed: AtomicU64,
    dropped: AtomicU64,
    grammar_errors: AtomicU64,
    idle_checks: AtomicU64,
}

fn fail(why: impl AsRef<str>, req: &Req, sent: &[u8], body: &str) -> TestCaseError {
    let shown: String = body.chars().take(1500).collect();
    TestCaseError::fail(format!(
        "{}\n  request: {} {} headers {:?} content-type {:?}\n  body: {}\n  answer: {shown}",
        why.as_ref(),
        req.method,
        req.path,
        req.headers,
        req.content_type,
        String::from_utf8_lossy(sent)
            .chars()
            .take(3000)
            .collect::<String>(),
    ))
}

/// An error object in OpenAI's shape: `{"message": str, "type": str, "param": str|null,
/// "code": str|null}` and nothing internal in its message.
fn check_error_object(e: &Value) -> Result<(), String> {
    let obj = e.as_object().ok_or("error is not an object")?;
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .ok_or("error.message is not a string")?;
    if message.is_empty() {
        return Err("error.message is empty".into());
    }
    if !obj.get("type").is_some_and(Value::is_string) {
        return Err("error.type is not a string".into());
    }
    for k in ["param", "code"] {
        match obj.get(k) {
            Some(Value::String(_)) | Some(Value::Null) => {}
            _ => return Err(format!("error.{k} is missing or not a string or null")),
        }
    }
    if let Some(bad) = INTERNAL.iter().find(|w| message.contains(*w)) {
        return Err(format!("internal text `{bad}` in error message: {message}"));
    }
    if e["type"] == "server_error" {
        return Err(format!("server_error: {message}"));
    }
    Ok(())
}

/// A whole answer's (or a chunk's) choices: each with a known `finish_reason` (a chunk's may be
/// null), a choice ended by its grammar with an OpenAI-shaped `error`.
fn check_choices(v: &Value, chunk: bool, tally: &Tally) -> Result<(), String> {
    let choices = v["choices"].as_array().ok_or("no choices array")?;
    for c in choices {
        match c["finish_reason"].as_str() {
            Some("stop" | "length") => {}
            Some("error") => {
                tally.grammar_errors.fetch_add(1, Ordering::Relaxed);
                check_error_object(&c["error"])?;
            }
            None if chunk && c["finish_reason"].is_null() => {}
            _ => return Err(format!("finish_reason {}", c["finish_reason"])),
        }
    }
    Ok(())
}

async fn check_one(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    req: Req,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    let sent = apply(
        &req.mutation,
        serde_json::to_vec(&req.body).unwrap_or_default(),
    );
    let mut b = Request::builder()
        .method(req.method)
        .uri(format!("{base}{}", req.path));
    if let Some(ct) = req.content_type {
        b = b.header("content-type", ct);
    }
    for (k, v) in &req.headers {
        b = b.header(*k, *v);
    }
    let http_req = b
        .body(Full::new(Bytes::from(sent.clone())))
        .map_err(|e| TestCaseError::fail(format!("cannot build the request: {e}")))?;
    tally.requests.fetch_add(1, Ordering::Relaxed);
    if req.path.contains("chat") {
        tally.chats.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.completions.fetch_add(1, Ordering::Relaxed);
    }
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(http_req))
        .await
        .map_err(|_| fail("no answer within 120 s", &req, &sent, ""))?
        .map_err(|e| fail(format!("connection failed: {e:?}"), &req, &sent, ""))?;
    let status = resp.status();
    let streaming = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if streaming && req.disconnect {
        // Read one chunk and go away: the request is cancelled, its blocks freed.
        let mut body = resp.into_body();
        let _ = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
        tally.dropped.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let bytes = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect())
        .await
        .map_err(|_| fail("body not complete within 120 s", &req, &sent, ""))?
        .map_err(|e| fail(format!("body read failed: {e}"), &req, &sent, ""))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let bad = |why: String| fail(format!("{status}: {why}"), &req, &sent, &text);
    if status.is_server_error() {
        return Err(bad("a 5xx".into()));
    }
    if status.is_client_error() {
        tally.client_errors.fetch_add(1, Ordering::Relaxed);
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("4xx not JSON: {e}")))?;
        let keys: Vec<&String> = v
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys != ["error"] {
            return Err(bad(format!("4xx body keys {keys:?}, want [\"error\"]")));
        }
        if std::env::var_os("FUZZ_API_SHOW_ERRORS").is_some() {
            eprintln!("{} {}", status.as_u16(), v["error"]);
        }
        return check_error_object(&v["error"]).map_err(bad);
    }
    if !status.is_success() {
        return Err(bad("neither 2xx nor 4xx".into()));
    }
    tally.ok.fetch_add(1, Ordering::Relaxed);
    if streaming {
        tally.streamed.fetch_add(1, Ordering::Relaxed);
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .collect();
        if events.last() != Some(&"data: [DONE]") {
            return Err(bad("stream does not end with [DONE]".into()));
        }
        for e in &events[..events.len() - 1] {
            let data = e
                .strip_prefix("data: ")
                .ok_or_else(|| bad(format!("event without `data: `: {e:?}")))?;
            let v: Value =
                serde_json::from_str(data).map_err(|err| bad(format!("event not JSON ({err})")))?;
            if v.get("error").is_some() {
                check_error_object(&v["error"]).map_err(|m| bad(format!("stream error: {m}")))?;
                continue;
            }
            check_choices(&v, true, tally).map_err(&bad)?;
        }
    } else {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("2xx not JSON: {e}")))?;
        if !v["usage"]["total_tokens"].is_u64() {
            return Err(bad("no usage".into()));
        }
        check_choices(&v, false, tally).map_err(bad)?;
    }
    Ok(())
}

/// Waits until the server is idle and every KV block of every instance is free again.
async fn check_idle(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    instances: usize,
) -> Result<(), TestCaseError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let get = |path: &str| {
            let r = Request::get(format!("{base}{path}"))
                .body(Full::new(Bytes::new()))
                .map(|r| client.request(r));
            async move {
                let resp = r
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((
                    status,
                    String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                ))
            }
        };
        let (status, _) = get("/health").await.map_err(TestCaseError::fail)?;
        if status != 200 {
            return Err(TestCaseError::fail(format!("/health answered {status}")));
        }
        let (_, text) = get("/metrics").await.map_err(TestCaseError::fail)?;
        let running = metric_in(&text, "vllm:num_requests_running{");
        let waiting = metric_in(&text, "vllm:num_requests_waiting{");
        let all_free = (0..instances).all(|i| {
            let free = metric_in(
                &text,
                &format!("accellm_kv_free_blocks{{instance=\"{i}\"}}"),
            );
            let total = metric_in(
                &text,
                &format!("accellm_kv_total_blocks{{instance=\"{i}\"}}"),
            );
            free.is_some() && free == total
        });
        if running == Some(0.0) && waiting == Some(0.0) && all_free {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TestCaseError::fail(format!(
                "KV blocks not all free 20 s after the case:\n{text}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn fuzzed_requests_get_2xx_or_openai_shaped_4xx_and_leak_no_blocks() {
    // The generators' nested types need more stack than a test thread has in a debug build.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(fuzz)
        .expect("fuzz thread")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn fuzz() {
    let mut cfg = tiny_config();
    cfg.max_body_bytes = MAX_BODY;
    let instances = cfg.instances as usize;
    let server = start(cfg);
    let base = format!("http://{}", server.addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // A connection per request: a pooled connection the server closed after its last answer
    // would fail the next request, which is no fault of the server.
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new());
    let tally = Arc::new(Tally::default());

    let mut config = Config {
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CI_CASES;
    }
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(&case(), |reqs| {
        rt.block_on(async {
            let mut tasks = Vec::new();
            for r in reqs {
                let (client, base, tally) = (client.clone(), base.clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    check_one(&client, &base, r, &tally).await
                }));
            }
            for t in tasks {
                t.await
                    .map_err(|e| TestCaseError::fail(format!("client task failed: {e}")))??;
            }
            tally.idle_checks.fetch_add(1, Ordering::Relaxed);
            check_idle(&client, &base, instances).await
        })
    });
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "fuzz_api: {cases} cases, {} requests ({} completions, {} chat) in {:.1} s: {} 2xx \
         ({} streamed, {} streams dropped after the first chunk, {} choices ended by their \
         grammar), {} 4xx; {} idle checks; {}",
        t(&tally.requests),
        t(&tally.completions),
        t(&tally.chats),
        started.elapsed().as_secs_f64(),
        t(&tally.ok) + t(&tally.dropped),
        t(&tally.streamed),
        t(&tally.dropped),
        t(&tally.grammar_errors),
        t(&tally.client_errors),
        t(&tally.idle_checks),
        if result.is_ok() {
            "0 5xx, 0 answers not in OpenAI's shape, 0 leaked blocks"
        } else {
            "FAILED"
        },
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, reqs)) => panic!("{why}\nminimal case: {reqs:#?}"),
        Err(e) => panic!("{e}"),
    }
    server.shutdown().expect("clean shutdown");
}
