//! Which weight formats a model may be served in.

mod support;

use accellm_engine::{Model, WeightFormat};
use candle_core::quantized::GgmlDType;
use support::{write_tiny_model, TinySpec};

#[test]
fn native_is_refused_where_candle_multiplies_with_scalar_code() {
    let q4_1 = write_tiny_model(TinySpec {
        dtype: GgmlDType::Q4_1,
        ..TinySpec::default()
    });
    let err = Model::load(&q4_1, WeightFormat::Native)
        .unwrap()
        .check_servable()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Q4_1") && err.contains("--weight-format"),
        "{err}"
    );
    // The same file in the converted formats, and a Q8_0 file kept native, serve.
    for format in [
        WeightFormat::Blocks,
        WeightFormat::Q8Padded,
        WeightFormat::F32,
    ] {
        Model::load(&q4_1, format)
            .unwrap()
            .check_servable()
            .unwrap();
    }
    let q8_0 = write_tiny_model(TinySpec {
        dtype: GgmlDType::Q8_0,
        ..TinySpec::default()
    });
    Model::load(&q8_0, WeightFormat::Native)
        .unwrap()
        .check_servable()
        .unwrap();
}
