//! The colour jitter's four adjustments (and fixed sequences of them) against torchvision's
//! tensor definitions: tests/fixtures/trainer/jitter.safetensors, made by
//! tools/make_jitter_fixtures.py.

mod common;

use labelfree::data::color_jitter::Adjustment;
use labelfree::models::clip::weights::load_safetensors;

#[derive(serde::Deserialize)]
struct Case {
    input: String,
    output: String,
    ops: Vec<(String, f64)>,
}

#[test]
fn adjustments_match_torchvision() {
    let path = common::fixtures().join("trainer/jitter.safetensors");
    let (tensors, meta) = load_safetensors(&path).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&meta["cases"]).unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut worst = (0.0f32, String::new());
    for case in &cases {
        let x = &tensors[&case.input];
        let (h, w) = (x.dim(1), x.dim(2));
        let mut img = x.f32s().unwrap().to_vec();
        for (name, factor) in &case.ops {
            let adj: Adjustment = name.parse().unwrap();
            // The fixture's factors are python floats; torch rounds them to f32 for the
            // scalar-tensor products, the adjustments take that f32.
            adj.apply(&mut img, h, w, *factor as f32);
        }
        let want = tensors[&case.output].f32s().unwrap();
        let err = img.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if err > worst.0 {
            worst = (err, format!("{} {:?}", case.input, case.ops));
        }
        assert!(err <= 1e-5, "{} {:?}: max abs error {err:.3e}", case.input, case.ops);
    }
    eprintln!("{} cases, worst max abs error {:.3e} ({})", cases.len(), worst.0, worst.1);
}
