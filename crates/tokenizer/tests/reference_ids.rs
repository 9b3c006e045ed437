//! Token ids against a fixture produced by llama.cpp on the real SmolLM2 GGUF file
//! (see `fixtures/make_reference_ids.py` for how it was made).
//!
//! Skips with a message when the model file is absent, unless `ACCELLM_REQUIRE_MODEL` is set.

use std::path::PathBuf;

use accellm_tokenizer::{ChatMessage, ChatTemplate, GgufMetadata, IncrementalDecoder, Tokenizer};

fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("ACCELLM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(accellm_tokenizer::default_model_path);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("ACCELLM_REQUIRE_MODEL").is_some() {
        panic!(
            "ACCELLM_REQUIRE_MODEL is set but {} is missing",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: model file {} not found (run scripts/fetch-model.sh)",
        path.display()
    );
    None
}

#[derive(serde::Deserialize)]
struct Fixture {
    model: String,
    source: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn ids_match_llama_cpp() {
    let Some(path) = model_path() else { return };
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/smollm2_reference_ids.json")).unwrap();
    assert!(path.ends_with(&fixture.model) || std::env::var_os("ACCELLM_MODEL").is_some());
    eprintln!("reference: {}", fixture.source);
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    for case in &fixture.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "text {:?}", case.text);
        // Decoding gives the text back, also when streamed token by token.
        assert_eq!(tok.decode(&ids, false), case.text);
        let mut dec = IncrementalDecoder::new(false);
        let mut s: String = ids.iter().map(|&i| dec.push(&tok, i)).collect();
        s.push_str(&dec.finish());
        assert_eq!(s, case.text);
    }
}

#[test]
fn smollm2_metadata_and_chat_template() {
    let Some(path) = model_path() else { return };
    let md = GgufMetadata::read_file(&path).unwrap();
    let tok = Tokenizer::from_gguf_metadata(&md).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.stop_ids().contains(&im_end));
    let t = ChatTemplate::from_gguf_metadata(&md).unwrap();
    let text = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert!(text.starts_with("<|im_start|>system\n"), "{text:?}");
    assert!(
        text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{text:?}"
    );
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert!(ids.contains(&im_end));
}
