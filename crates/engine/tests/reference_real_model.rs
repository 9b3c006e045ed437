//! The F32 path against candle-transformers' quantized llama on the real SmolLM2 file, with the
//! reference told to dequantize every weight (`CANDLE_DEQUANTIZE_ALL`), so both sides compute
//! with the same f32 weights. In its own test binary because that switch is process-wide.
//! Skips when the model file is absent, unless `ACCELLM_REQUIRE_MODEL` is set.

use std::path::PathBuf;

use accellm_engine::{argmax, ForwardBatch, KvPool, Model, SeqInput, WeightFormat};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

#[test]
fn real_model_f32_matches_reference() {
    let path = std::env::var_os("ACCELLM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(accellm_tokenizer::default_model_path);
    if !path.is_file() {
        assert!(
            std::env::var_os("ACCELLM_REQUIRE_MODEL").is_none(),
            "ACCELLM_REQUIRE_MODEL is set but {} is missing",
            path.display()
        );
        eprintln!("SKIPPED: {} not found", path.display());
        return;
    }
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut oracle = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let model = Model::load(&path, WeightFormat::F32).unwrap();

    // A ChatML-shaped prompt whose user turn is "What is the capital of France?" (the ids
    // of that text are the ones in the tokenizer fixture).
    let prompt: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 2, 198, 1, 4093, 198,
        1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
    ];
    let steps = 16;
    let table: Vec<u32> = (0..(prompt.len() + steps).div_ceil(16) as u32).collect();
    let pool = KvPool::new(model.config(), table.len(), 16).unwrap();
    let mut seq = SeqInput {
        tokens: prompt.clone(),
        start_pos: 0,
        block_table: table,
        want_logits: true,
    };
    let mut ref_in = prompt.clone();
    let mut ref_pos = 0;
    let mut worst = 0f32;
    for step in 0..steps {
        let ours = model
            .forward(
                &pool,
                &ForwardBatch {
                    seqs: vec![seq.clone()],
                },
            )
            .unwrap()
            .logits[0]
            .clone()
            .unwrap();
        let x = Tensor::new(ref_in.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs = oracle
            .forward(&x, ref_pos)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(d);
        assert!(d < 1e-3, "step {step}: max |logit difference| {d}");
        let (a, b) = (argmax(&ours), argmax(&theirs));
        assert_eq!(a, b, "step {step}: greedy tokens differ");
        ref_pos += ref_in.len();
        ref_in = vec![b];
        seq.start_pos += seq.tokens.len();
        seq.tokens = vec![a];
    }
    eprintln!("real model, f32 weights: max |logit difference| vs reference over {steps} steps = {worst:e}");
}
