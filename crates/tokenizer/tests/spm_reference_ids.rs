//! SentencePiece (`tokenizer.ggml.model = "llama"`) token ids against llama.cpp, on two tiny
//! vocab-only GGUF files committed in `fixtures/` (made by `fixtures/make_spm_fixture.py`, which
//! also asked llama.cpp for the reference ids). No model download needed.

use std::path::PathBuf;

use accellm_tokenizer::{GgufMetadata, IncrementalDecoder, MetaValue, Tokenizer, TokenizerError};

#[derive(serde::Deserialize)]
struct Fixture {
    source: String,
    models: Vec<Model>,
}

#[derive(serde::Deserialize)]
struct Model {
    file: String,
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    add_bos: bool,
    ids: Vec<u32>,
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/spm_reference_ids.json")).unwrap()
}

/// Streams `ids` through an [`IncrementalDecoder`], checking every piece is clean UTF-8 text.
fn stream(tok: &Tokenizer, ids: &[u32], mut dec: IncrementalDecoder) -> String {
    let mut out = String::new();
    for &id in ids {
        let piece = dec.push(tok, id);
        assert!(!piece.contains('\u{FFFD}'), "replacement char in {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    out
}

#[test]
fn ids_match_llama_cpp_and_text_round_trips() {
    let fixture = fixture();
    eprintln!("reference: {}", fixture.source);
    assert_eq!(fixture.models.len(), 2);
    for model in &fixture.models {
        let tok = Tokenizer::from_gguf_file(fixture_path(&model.file)).unwrap();
        assert_eq!(tok.vocab_size(), model.vocab_size);
        assert!(model.cases.len() >= 20);
        for case in &model.cases {
            // llama.cpp's `add_bos` means "add the special tokens the model asks for", which is
            // how the server calls `encode`.
            let ids = tok
                .encode(&case.text, case.add_bos && tok.add_bos_by_default())
                .unwrap();
            assert_eq!(ids, case.ids, "{}: text {:?}", model.file, case.text);
            if case.add_bos {
                continue;
            }
            assert_eq!(tok.decode(&ids, false), case.text, "{}", model.file);
            let streamed = stream(&tok, &ids, IncrementalDecoder::from_start(false));
            assert_eq!(streamed, case.text, "{}", model.file);
        }
    }
}

#[test]
fn defaults_and_special_ids_of_an_spm_vocabulary() {
    let tok = Tokenizer::from_gguf_file(fixture_path("tiny_spm.gguf")).unwrap();
    // add_space_prefix and add_bos_token are absent: SentencePiece defaults (both on).
    assert!(tok.adds_space_prefix());
    assert!(tok.add_bos_by_default());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.token_text(1), "<s>");
    // </s> and the control token <|end|> end generation; the user-defined <|user|> does not.
    let end = tok.token_id("<|end|>").unwrap();
    let user = tok.token_id("<|user|>").unwrap();
    assert!(tok.stop_ids().contains(&2) && tok.stop_ids().contains(&end));
    assert!(!tok.stop_ids().contains(&user));
    assert!(tok.is_special(1) && tok.is_special(0) && !tok.is_special(user));

    let no_prefix = Tokenizer::from_gguf_file(fixture_path("tiny_spm_no_prefix.gguf")).unwrap();
    assert!(!no_prefix.adds_space_prefix());
    assert!(!no_prefix.add_bos_by_default());
}

#[test]
fn decoding_maps_spaces_bytes_and_special_tokens() {
    let tok = Tokenizer::from_gguf_file(fixture_path("tiny_spm.gguf")).unwrap();
    let ids = tok.encode("Hello €", true).unwrap();
    // BOS, then "▁Hello"-ish pieces, then "▁" and the three byte tokens of "€".
    assert_eq!(ids[0], 1);
    let tail = &ids[ids.len() - 3..];
    let bytes: Vec<u8> = tail
        .iter()
        .flat_map(|&i| tok.token_bytes(i).to_vec())
        .collect();
    assert_eq!(bytes, "€".as_bytes());
    assert_eq!(tok.decode(&ids, true), "Hello €");
    assert_eq!(tok.decode(&ids, false), "<s>Hello €");
    // Generated tokens continue a text: their leading space is kept.
    let cont = stream(&tok, &ids[1..], IncrementalDecoder::new(true));
    assert_eq!(cont, " Hello €");
}

#[test]
fn streaming_holds_back_a_character_split_across_byte_tokens() {
    let md = GgufMetadata::read_file(fixture_path("tiny_spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf_metadata(&md).unwrap();
    let vocab = md.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    let byte_token = |b: u8| {
        let text = format!("<0x{b:02X}>");
        vocab
            .iter()
            .position(|t| t.as_str() == Some(&text))
            .unwrap() as u32
    };
    let ids = tok.encode("a🚀b", false).unwrap();
    let rocket: Vec<u32> = "🚀".bytes().map(byte_token).collect();
    // The rocket is four byte tokens in a row in the encoding.
    assert!(ids.windows(4).any(|w| w == rocket.as_slice()), "{ids:?}");
    let mut dec = IncrementalDecoder::from_start(true);
    let pieces: Vec<String> = ids.iter().map(|&id| dec.push(&tok, id)).collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // The three first bytes emit nothing; the fourth completes the character.
    let pos = ids.windows(4).position(|w| w == rocket.as_slice()).unwrap();
    assert_eq!(pieces[pos..pos + 3], ["", "", ""]);
    assert_eq!(pieces[pos + 3], "🚀");
    assert_eq!(pieces.concat() + &dec.finish(), "a🚀b");
}

#[test]
fn missing_scores_and_unknown_models_are_clear_errors() {
    let md = GgufMetadata::read_file(fixture_path("tiny_spm.gguf")).unwrap();
    let mut no_scores = md.clone();
    no_scores.kv.remove("tokenizer.ggml.scores");
    let err = Tokenizer::from_gguf_metadata(&no_scores).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::MissingKey(k) if k == "tokenizer.ggml.scores"),
        "{err}"
    );
    for kind in ["bert", "t5", "rwkv"] {
        let mut other = md.clone();
        other.kv.insert(
            "tokenizer.ggml.model".into(),
            MetaValue::String(kind.into()),
        );
        let msg = Tokenizer::from_gguf_metadata(&other)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(kind) && msg.contains("`gpt2`") && msg.contains("`llama`"),
            "{msg}"
        );
    }
}
