//! Encoding speed of a ~10 kB English-and-Unicode text: the SentencePiece path on the tiny test
//! vocabulary (`tests/fixtures/tiny_spm.gguf`), and the byte-level BPE path on the default
//! SmolLM2 model when its file is present.
//!
//! `cargo bench -p accellm-tokenizer --bench tokenize`

use std::path::PathBuf;

use accellm_tokenizer::Tokenizer;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// About 10 kB: prose, runs of spaces, digits, accents and byte-fallback characters.
fn text() -> String {
    let para = "The quick brown fox jumps over the lazy dog; there were 366 days in 2024. \
                Hello, world!  What is the capital of France?   Paris, a city on the Seine. \
                Unicode: café, naïve, déjà vu, Straße — 日本語のテキスト 🚀\n";
    para.repeat(10_000 / para.len() + 1)
}

fn bench(c: &mut Criterion) {
    let text = text();
    let mut g = c.benchmark_group("encode_10kB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    let spm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_spm.gguf");
    let mut models = vec![("spm_tiny", spm)];
    let smollm2 = accellm_tokenizer::default_model_path();
    if smollm2.is_file() {
        models.push(("bpe_smollm2", smollm2));
    }
    for (name, path) in models {
        let Ok(tok) = Tokenizer::from_gguf_file(&path) else {
            continue;
        };
        g.bench_with_input(BenchmarkId::from_parameter(name), &text, |b, t| {
            b.iter(|| tok.encode(t, false).map(|ids| ids.len()).unwrap_or(0))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
