//! The API's breadth on a real server with the tiny random-weight model: logprobs checked
//! against the engine run directly, echo with prompt logprobs, `n` choices, prompt batches and
//! `response_format` (every sample parses and matches its schema).

mod support;

use accellm_engine::{argmax, ForwardBatch, KvPool, Model, SeqInput, TokenLogprob, WeightFormat};
use accellm_server::text::{Message, TextModel};
use serde_json::{json, Value};
use support::{start, tiny_config, tiny_model, Http};

/// Logprobs agree with the reference to this (absolute, in nats). The server prefills in
/// chunks, the reference one token at a time: the same arithmetic up to summation order.
const TOL: f64 = 1e-5;

/// The engine run directly, one token per forward pass: the logits after each position of
/// `tokens`, then `steps` greedy tokens with their logits.
struct Reference {
    model: Model,
}

impl Reference {
    fn new() -> Self {
        Self {
            model: Model::load(tiny_model(), WeightFormat::default()).unwrap(),
        }
    }

    /// Logits after each position of `tokens`, then greedy continuation of `steps` tokens:
    /// returns (logits per position of tokens and generated tokens but the last, generated).
    fn run(&self, tokens: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
        let bs = 16;
        let table: Vec<u32> = (0..(tokens.len() + steps + 1).div_ceil(bs) as u32).collect();
        let pool = KvPool::new(self.model.config(), table.len(), bs).unwrap();
        let mut all = tokens.to_vec();
        let mut logits = Vec::new();
        let mut generated = Vec::new();
        let mut p = 0;
        while p < all.len() {
            let out = self
                .model
                .forward(
                    &pool,
                    &ForwardBatch {
                        seqs: vec![SeqInput {
                            tokens: vec![all[p]],
                            start_pos: p,
                            block_table: table.clone(),
                            want_logits: true,
                        }],
                    },
                )
                .unwrap();
            let l = out.logits[0].clone().unwrap();
            if p + 1 == all.len() && generated.len() < steps {
                let t = argmax(&l);
                generated.push(t);
                all.push(t);
            }
            logits.push(l);
            p += 1;
        }
        logits.pop();
        (logits, generated)
    }
}

fn close(a: &Value, b: f32) -> bool {
    (a.as_f64().unwrap() - b as f64).abs() < TOL
}

fn text_model() -> TextModel {
    TextModel::load(&tiny_model()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_match_the_engine() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let text = text_model();
    let prompt = text
        .encode_chat(&[Message {
            role: "user".into(),
            content: "hello there, how are you".into(),
        }])
        .unwrap();
    let steps = 8;
    let (logits, greedy) = Reference::new().run(&prompt, steps);
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello there, how are you"}],
        "max_tokens": steps,
        "temperature": 0,
        "ignore_eos": true,
        "logprobs": true,
        "top_logprobs": 3,
    });
    let r = http.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), steps);
    let mut worst = 0f64;
    for (k, entry) in content.iter().enumerate() {
        let l = &logits[prompt.len() - 1 + k];
        let want = TokenLogprob::of(l, greedy[k], 3);
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, text.token_bytes(greedy[k]), "token {k}");
        assert_eq!(entry["token"], text.token_str(greedy[k]));
        worst = worst.max((entry["logprob"].as_f64().unwrap() - want.logprob as f64).abs());
        assert!(
            close(&entry["logprob"], want.logprob),
            "{entry} vs {want:?}"
        );
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for (t, (id, lp)) in top.iter().zip(&want.top) {
            assert_eq!(t["token"], text.token_str(*id));
            assert!(close(&t["logprob"], *lp), "{t} vs {lp}");
        }
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["logprob"], entry["logprob"]);
    }
    eprintln!("chat logprobs: worst difference from the engine {worst:.2e}");

    // Streamed: one entry per token chunk, the same values.
    let mut s = body.clone();
    s["stream"] = json!(true);
    let (status, events) = http.stream("/v1/chat/completions", &s).await;
    assert_eq!(status, 200);
    let streamed: Vec<Value> = events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&streamed, content);

    // Without logprobs the field is null.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("logprobs");
    plain.as_object_mut().unwrap().remove("top_logprobs");
    let v = http.post("/v1/chat/completions", &plain).await.json();
    assert!(v["choices"][0]["logprobs"].is_null());
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_prompt_logprobs_like_the_engine() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let text = text_model();
    // Long enough to be prefilled in several chunks by some policies.
    let prompt_text = "the quick brown fox jumps over the lazy dog, then he sleeps";
    let prompt = text.encode(prompt_text).unwrap();
    let steps = 3;
    let (logits, greedy) = Reference::new().run(&prompt, steps);

    // lm-evaluation-harness's loglikelihood request: echo, max_tokens 0, logprobs N.
    let body = json!({
        "model": "tiny",
        "prompt": prompt_text,
        "max_tokens": 0,
        "echo": true,
        "logprobs": 2,
        "temperature": 0,
    });
    let r = http.post("/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt_text);
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(tokens.len(), prompt.len());
    assert_eq!(
        (token_lps.len(), tops.len(), offsets.len()),
        (prompt.len(), prompt.len(), prompt.len())
    );
    assert!(token_lps[0].is_null() && tops[0].is_null());
    assert_eq!(offsets[0], 0);
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, prompt_text);
    let mut worst = 0f64;
    for p in 1..prompt.len() {
        let want = TokenLogprob::of(&logits[p - 1], prompt[p], 2);
        assert!(
            token_lps[p].is_number(),
            "position {p} of {}: {lp}",
            prompt.len()
        );
        worst = worst.max((token_lps[p].as_f64().unwrap() - want.logprob as f64).abs());
        assert!(close(&token_lps[p], want.logprob), "position {p}");
        let top = tops[p].as_object().unwrap();
        // The two most likely tokens and the prompt's own, keyed by text (tokens that share a
        // text, such as lone non-UTF-8 bytes, keep the higher value).
        let mut expected = std::collections::BTreeMap::<String, f32>::new();
        for &(id, l) in want.top.iter().chain([(prompt[p], want.logprob)].iter()) {
            let e = expected.entry(text.token_str(id)).or_insert(l);
            *e = e.max(l);
        }
        assert_eq!(top.len(), expected.len(), "{top:?}");
        for (k, l) in &expected {
            assert!(close(&top[k], *l), "{k}: {} vs {l}", top[k]);
        }
        assert!(offsets[p].as_u64() > offsets[p - 1].as_u64());
    }
    eprintln!("prompt logprobs: worst difference from the engine {worst:.2e}");

    // Echo with a completion: prompt entries, then the generated tokens'.
    let mut more = body.clone();
    more["max_tokens"] = json!(steps);
    more["ignore_eos"] = json!(true);
    let v = http.post("/v1/completions", &more).await.json();
    let c = &v["choices"][0];
    let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), prompt.len() + steps);
    assert!(c["text"].as_str().unwrap().starts_with(prompt_text));
    for k in 0..steps {
        let want = TokenLogprob::of(&logits[prompt.len() - 1 + k], greedy[k], 2);
        assert!(close(&lps[prompt.len() + k], want.logprob), "generated {k}");
    }
    assert!(close(
        &lps[1],
        TokenLogprob::of(&logits[0], prompt[1], 0).logprob
    ));

    // Streamed: the echo chunk carries the prompt's logprobs, then one chunk per token.
    let mut s = more.clone();
    s["stream"] = json!(true);
    let (status, events) = http.stream("/v1/completions", &s).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["text"], prompt_text);
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(&streamed, lps);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, c["text"].as_str().unwrap());

    // max_tokens 0 needs echo.
    let mut bad = body.clone();
    bad["echo"] = json!(false);
    let r = http.post("/v1/completions", &bad).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    server.shutdown().unwrap();
}

/// The request lm-evaluation-harness's `local-completions` model sends for a multiple-choice
/// item (scripts/lm-eval.sh), read the way it reads it: token ids (context + continuation, a
/// batch of one list per choice), `echo`, `logprobs: 1`, `max_tokens: 1`, `temperature: 0`;
/// the continuation's log-likelihood is the sum of `token_logprobs[ctxlen..len-1]` (the last
/// entry is the generated token) and it is greedy when each of those equals the largest value
/// of its `top_logprobs` entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_eval_loglikelihood_request_reads_the_continuation() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let text = text_model();
    let reference = Reference::new();
    let context = "Question: what colour is the sky on a clear day?\nAnswer:";
    let choices = [" blue", " green and brown", " the quick fox"];
    // lm-eval's split: encode the whole text, the context's length from encoding it alone.
    let ctx = text.encode(context).unwrap();
    let ctxlen = ctx.len();
    let mut wholes: Vec<Vec<u32>> = choices
        .iter()
        .map(|c| text.encode(&format!("{context}{c}")).unwrap())
        .collect();
    // And a continuation that is greedy by construction: the model's own next two tokens.
    let (_, greedy2) = reference.run(&ctx, 2);
    wholes.push([ctx, greedy2].concat());
    let body = json!({
        "model": "tiny",
        "prompt": wholes,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": true,
    });
    let r = http.post("/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let out = v["choices"].as_array().unwrap();
    assert_eq!(out.len(), wholes.len());
    for (k, whole) in wholes.iter().enumerate() {
        assert!(whole.len() > ctxlen, "choice {k} adds tokens");
        let (logits, greedy) = reference.run(whole, 1);
        let c = &out[k];
        assert_eq!(c["index"], k);
        let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
        let tops = c["logprobs"]["top_logprobs"].as_array().unwrap();
        // Every prompt token, then the one generated token (also when it is EOS).
        assert_eq!((lps.len(), tops.len()), (whole.len() + 1, whole.len() + 1));
        let last = TokenLogprob::of(&logits[whole.len() - 1], greedy[0], 1);
        assert!(close(&lps[whole.len()], last.logprob), "generated token");

        let (mut got, mut want) = (0f64, 0f64);
        let (mut got_greedy, mut want_greedy) = (true, true);
        for p in ctxlen..whole.len() {
            let lp = lps[p].as_f64().unwrap();
            got += lp;
            want += TokenLogprob::of(&logits[p - 1], whole[p], 1).logprob as f64;
            let top = tops[p].as_object().unwrap();
            assert!(
                top.len() <= 2,
                "logprobs 1: the best and the prompt's own: {top:?}"
            );
            let best = top
                .values()
                .map(|x| x.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            got_greedy &= lp == best;
            want_greedy &= argmax(&logits[p - 1]) == whole[p];
        }
        assert!(
            (got - want).abs() < TOL * whole.len() as f64,
            "choice {k}: {got} vs {want}"
        );
        assert_eq!(got_greedy, want_greedy, "choice {k}: is_greedy");
        if k == choices.len() {
            assert!(got_greedy, "the model's own continuation is greedy");
        }
    }
    server.shutdown().unwrap();
}

fn texts(v: &Value) -> Vec<String> {
    let choices = v["choices"].as_array().unwrap();
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    choices
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_are_distinct_seeded_and_reproducible() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let body = json!({
        "model": "tiny",
        "prompt": "once upon a time",
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 7,
        "n": 4,
        "ignore_eos": true,
    });
    let r = http.post("/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let a = texts(&v);
    assert_eq!(a.len(), 4);
    let distinct: std::collections::HashSet<&String> = a.iter().collect();
    assert_eq!(distinct.len(), 4, "{a:?}");
    assert_eq!(v["usage"]["completion_tokens"], 48);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        v["usage"]["total_tokens"].as_u64().unwrap() - 48
    );
    // Reproducible, and choice i is the request with seed 7 + i.
    assert_eq!(texts(&http.post("/v1/completions", &body).await.json()), a);
    let mut one = body.clone();
    one["n"] = json!(1);
    one["seed"] = json!(9);
    assert_eq!(
        texts(&http.post("/v1/completions", &one).await.json()),
        [a[2].clone()]
    );

    // Streamed: chunks of every index, each index's text the same as above.
    let mut s = body.clone();
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let (status, events) = http.stream("/v1/completions", &s).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut got = vec![String::new(); 4];
    let mut finishes = 0;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(ch) = c["choices"].as_array().unwrap().first() {
            let i = ch["index"].as_u64().unwrap() as usize;
            got[i].push_str(ch["text"].as_str().unwrap());
            finishes += ch["finish_reason"].is_string() as usize;
        } else {
            assert_eq!(c["usage"]["completion_tokens"], 48);
        }
    }
    assert_eq!(got, a);
    assert_eq!(finishes, 4);

    // Chat with n: indexed messages.
    let v = http
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 6, "n": 3, "seed": 1, "temperature": 1.0, "ignore_eos": true}),
        )
        .await
        .json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
    }

    // A batch of prompts: choices in prompt order, n per prompt.
    let v = http
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": ["once upon a time", "hello"], "max_tokens": 12,
                    "temperature": 1.0, "seed": 7, "n": 2, "ignore_eos": true}),
        )
        .await
        .json();
    let b = texts(&v);
    assert_eq!(b.len(), 4);
    assert_eq!(b[..2], a[..2]);
    let r = http
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "max_tokens": 2, "n": 65}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
    server.shutdown().unwrap();
}

/// Checks `v` against the subset of JSON schema the tests use.
fn validate(v: &Value, schema: &Value) -> Result<(), String> {
    if let Some(options) = schema["enum"].as_array() {
        return options
            .contains(v)
            .then_some(())
            .ok_or(format!("{v} not in {options:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let o = v.as_object().ok_or(format!("{v} is not an object"))?;
            let props = schema["properties"].as_object();
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !o.contains_key(r) {
                    return Err(format!("{v} lacks {r}"));
                }
            }
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(x, s)?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return Err(format!("unexpected property {k}"))
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{v} is not an array"))?;
            if let Some(max) = schema["maxItems"].as_u64() {
                if a.len() as u64 > max {
                    return Err(format!("{v} has more than {max} items"));
                }
            }
            a.iter().try_for_each(|x| validate(x, &schema["items"]))
        }
        Some("string") => {
            let s = v.as_str().ok_or(format!("{v} is not a string"))?;
            match schema["maxLength"].as_u64() {
                Some(m) if s.chars().count() as u64 > m => Err(format!("{v} too long")),
                _ => Ok(()),
            }
        }
        Some("integer") => v
            .as_i64()
            .map(|_| ())
            .ok_or(format!("{v} is not an integer")),
        Some("boolean") => v
            .as_bool()
            .map(|_| ())
            .ok_or(format!("{v} is not a boolean")),
        Some(t) => Err(format!("type {t} not handled by the test")),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_output_parses_and_validates_on_every_seed() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    // Bounded so that even random weights finish within max_tokens.
    let schema = json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        },
        "required": ["ok", "color", "tags"],
        "additionalProperties": false,
    });
    for seed in 0..6 {
        for stream in [false, true] {
            let body = json!({
                "model": "tiny",
                "messages": [{"role": "user", "content": "give me json"}],
                "max_tokens": 120,
                "temperature": 1.0,
                "seed": seed,
                "stream": stream,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "t", "schema": schema, "strict": true}},
            });
            let text = if stream {
                let (status, events) = http.stream("/v1/chat/completions", &body).await;
                assert_eq!(status, 200);
                events
                    .iter()
                    .filter(|e| e.as_str() != "[DONE]")
                    .filter_map(|e| {
                        let c: Value = serde_json::from_str(e).unwrap();
                        c["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .collect::<String>()
            } else {
                let r = http.post("/v1/chat/completions", &body).await;
                assert_eq!(r.status, 200, "{}", r.body);
                let v = r.json();
                assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            let parsed: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {text:?}"));
            validate(&parsed, &schema).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        }
    }
    // json_object on completions, with n.
    let v = http
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "{", "max_tokens": 60, "n": 3, "seed": 3,
                    "temperature": 0.7, "response_format": {"type": "json_object"}}),
        )
        .await
        .json();
    for c in v["choices"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        // Random weights may run out of tokens inside an object; what is there is still JSON.
        if c["finish_reason"] == "stop" {
            let parsed: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:?}"));
            assert!(parsed.is_object(), "{t}");
        } else {
            assert!(t.starts_with('{'), "{t:?}");
        }
    }
    // A schema llguidance rejects is a 400 naming response_format.
    let r = http
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "response_format");
    // A schema that no value satisfies (a reference to itself) is refused before admission,
    // streaming or not, with a message a user can act on and nothing of the grammar engine's
    // internals; the server stays healthy.
    let cyclic = json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}});
    for stream in [false, true] {
        let r = http
            .post(
                "/v1/chat/completions",
                &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                        "stream": stream,
                        "response_format": {"type": "json_schema",
                                            "json_schema": {"name": "cyclic", "schema": cyclic}}}),
            )
            .await;
        assert_eq!(r.status, 400, "stream {stream}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["param"], "response_format", "{e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("schema"), "{msg}");
        for internal in ["Parser", "Tokens:", "NoExtension", "{\""] {
            assert!(!msg.contains(internal), "{internal} in {msg}");
        }
        assert!(msg.len() < 400, "{msg}");
    }
    let ok = http
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_computes_every_prompt_position_with_the_prefix_cache_on() {
    let mut cfg = tiny_config();
    cfg.prefix_cache = true;
    let server = start(cfg);
    let http = Http::new(server.addr());
    // Several full blocks (16 tokens each) of a prompt a first request leaves in the cache.
    let prompt = "the quick brown fox jumps over the lazy dog and the cat sleeps all day long";
    let warm = json!({"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0});
    assert_eq!(http.post("/v1/completions", &warm).await.status, 200);
    let echo = json!({"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": true,
                      "logprobs": 1});
    for _ in 0..2 {
        let v = http.post("/v1/completions", &echo).await.json();
        let lps = v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .clone();
        assert!(lps.len() > 48, "{}", lps.len());
        assert!(lps[0].is_null());
        assert!(lps[1..].iter().all(Value::is_number), "{lps:?}");
    }
    server.shutdown().unwrap();
}

/// A schema whose first token is fine but which dead-ends later (a required property whose
/// value refers only to itself): the grammar fails during decoding. The request ends with
/// `finish_reason: "error"` and a message a user can act on, its KV freed, never a 5xx nor
/// the grammar engine's internals; streaming ends with a final chunk and `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammar_failure_while_decoding_finishes_the_choice_with_an_error() {
    let server = start(tiny_config());
    let http = Http::new(server.addr());
    let dead_end = json!({
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/x"}},
        "required": ["a"],
        "additionalProperties": false,
        "$defs": {"x": {"$ref": "#/$defs/x"}},
    });
    let internal = ["Parser", "Tokens:", "NoExtension", "panicked", "{\""];
    for (path, stream, n) in [
        ("/v1/chat/completions", false, 1),
        ("/v1/chat/completions", true, 1),
        ("/v1/completions", false, 2),
        ("/v1/completions", true, 2),
    ] {
        let mut body = json!({
            "model": "tiny", "max_tokens": 40, "stream": stream, "n": n, "seed": 1,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "dead_end", "schema": dead_end}},
        });
        if path.contains("chat") {
            body["messages"] = json!([{"role": "user", "content": "x"}]);
        } else {
            body["prompt"] = json!("x");
        }
        let r = http.post(path, &body).await;
        assert_eq!(r.status, 200, "{path} stream {stream}: {}", r.body);
        let mut finishes = Vec::new();
        let mut messages = Vec::new();
        if stream {
            assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
            for e in r.body.split("\n\n").filter(|e| !e.trim().is_empty()) {
                let data = e.strip_prefix("data: ").expect("SSE data");
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).expect("JSON event");
                assert!(v.get("error").is_none(), "{v}");
                for c in v["choices"].as_array().expect("choices") {
                    if let Some(f) = c["finish_reason"].as_str() {
                        finishes.push(f.to_string());
                        messages.push(c["error"]["message"].as_str().unwrap_or("").to_string());
                    }
                }
            }
        } else {
            let v = r.json();
            for c in v["choices"].as_array().expect("choices") {
                // The output up to the dead end is kept.
                let text = c["text"].as_str().or(c["message"]["content"].as_str());
                assert_eq!(text, Some("{\"a\":"), "{v}");
                assert_eq!(c["error"]["param"], "response_format", "{v}");
                finishes.push(c["finish_reason"].as_str().unwrap_or("").to_string());
                messages.push(c["error"]["message"].as_str().unwrap_or("").to_string());
            }
            assert_eq!(v["choices"].as_array().unwrap().len(), n, "{v}");
        }
        assert_eq!(finishes, vec!["error".to_string(); n], "{}", r.body);
        for m in &messages {
            assert!(m.contains("response_format"), "{m:?}");
            for i in internal {
                assert!(!m.contains(i), "{i} in {m}");
            }
        }
        for i in internal.iter().take(4) {
            assert!(!r.body.contains(i), "{i} in {}", r.body);
        }
    }
    // Every block is free again and the server still answers.
    let used = http.metric("vllm:kv_cache_usage_perc").await;
    assert_eq!(used, 0.0);
    let ok = http
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    server.shutdown().unwrap();
}
