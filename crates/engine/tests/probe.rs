//! The start-up probe `accellm serve` scales its built-in cost model with, on a tiny model.

mod support;

use accellm_core::profile::HardwareProfile;
use accellm_engine::{cli::probed_profile, Model, WeightFormat};
use support::{write_tiny_model, TinySpec};

#[test]
fn the_probe_scales_the_built_in_model_to_this_engine() {
    let model = Model::load(write_tiny_model(TinySpec::default()), WeightFormat::Blocks).unwrap();
    let (p, scale) = probed_profile(&model, WeightFormat::Blocks, 1, 0).unwrap();
    // The tiny model runs far faster than SmolLM2, which the built-in model describes.
    assert!(scale.is_finite() && scale > 0.0 && scale < 0.5, "{scale}");
    let reference: HardwareProfile =
        toml::from_str(include_str!("../calibration/reference-blocks.toml")).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let (got, want) = (p.coefficients().unwrap(), reference.coefficients().unwrap());
    for (g, w) in got.iter().zip(want) {
        assert!(close(*g, w * scale), "{got:?} vs {want:?} × {scale}");
    }
    assert_eq!(p.knots.len(), reference.knots.len());
    for (g, w) in p.knots.iter().zip(&reference.knots) {
        assert_eq!(g.tokens, w.tokens);
        assert!(close(g.ms_per_token, w.ms_per_token * scale));
    }
    // The probe's own shapes are kept, and the scale is the least-relative-error one: nudging it
    // either way fits them worse.
    assert_eq!(p.points.len(), 5);
    let err = |s: f64| -> f64 {
        p.points
            .iter()
            .map(|q| {
                let pred = reference.predict_ms(q).unwrap() * s;
                ((pred - q.ms) / q.ms).powi(2)
            })
            .sum()
    };
    assert!(err(scale) <= err(scale * 1.05) && err(scale) <= err(scale * 0.95));
}
