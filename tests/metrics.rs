//! src/eval against scikit-learn (tests/fixtures/metrics.json, made by
//! tools/make_metric_fixtures.py): AP, mAP both ways, P/R/F1 at a threshold and at top-k,
//! micro, macro and per class, on random cases, ties and classes without positives; 1e-6.

mod common;

use labelfree::eval::{self, EvalOptions, Prf, PrfReport};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{what}: {got} vs sklearn {want}");
}

fn check_prf(case: &str, got: &PrfReport, want: &Value) {
    let triple = |v: &Value| -> [f64; 3] { [v[0].as_f64().unwrap(), v[1].as_f64().unwrap(), v[2].as_f64().unwrap()] };
    let m = triple(&want["micro"]);
    close(&format!("{case} {} micro P", got.rule), got.micro.precision, m[0]);
    close(&format!("{case} {} micro R", got.rule), got.micro.recall, m[1]);
    close(&format!("{case} {} micro F1", got.rule), got.micro.f1, m[2]);
    let m = triple(&want["macro"]);
    close(&format!("{case} {} macro P", got.rule), got.macro_precision, m[0]);
    close(&format!("{case} {} macro R", got.rule), got.macro_recall, m[1]);
    close(&format!("{case} {} macro F1", got.rule), got.macro_f1, m[2]);
    let per = want["per_class"].as_array().unwrap();
    assert_eq!(per.len(), got.per_class.len());
    for (c, (g, w)) in got.per_class.iter().zip(per).enumerate() {
        let w = triple(w);
        let Prf { precision, recall, f1, .. } = *g;
        close(&format!("{case} {} class {c} P", got.rule), precision, w[0]);
        close(&format!("{case} {} class {c} R", got.rule), recall, w[1]);
        close(&format!("{case} {} class {c} F1", got.rule), f1, w[2]);
    }
}

#[test]
fn metrics_match_sklearn() {
    let text = std::fs::read_to_string(common::fixtures().join("metrics.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows = case["labels"].as_array().unwrap();
        let c = rows[0].as_array().unwrap().len();
        let labels: Vec<u8> =
            rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8)).collect();
        let scores: Vec<f32> = case["scores"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect();
        let classes: Vec<String> = (0..c).map(|k| format!("c{k}")).collect();
        let opts = EvalOptions {
            threshold: case["threshold"].as_f64().unwrap() as f32,
            top_k: case["k"].as_u64().unwrap() as usize,
            empty_classes_as_zero: false,
        };
        let r = eval::evaluate(&labels, &scores, &classes, &opts);
        for (k, (g, w)) in r.ap.iter().zip(case["ap"].as_array().unwrap()).enumerate() {
            match (g, w.as_f64()) {
                (Some(g), Some(w)) => close(&format!("{name} AP[{k}]"), *g, w),
                (None, None) => {}
                other => panic!("{name} AP[{k}]: {other:?}"),
            }
        }
        close(&format!("{name} mAP"), r.map, case["map"].as_f64().unwrap());
        let zero = eval::evaluate(&labels, &scores, &classes, &EvalOptions { empty_classes_as_zero: true, ..opts });
        close(&format!("{name} mAP (empty as 0)"), zero.map, case["map_empty_as_zero"].as_f64().unwrap());
        check_prf(name, &r.at_threshold, &case["at_threshold"]);
        check_prf(name, &r.at_top_k, &case["at_top_k"]);
    }
}
