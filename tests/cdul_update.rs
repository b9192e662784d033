//! `cdul update` against torch autograd (tests/fixtures/cdul/update.safetensors, made by
//! tools/cdul_reference.py update): the step on random labels and scores, edge values
//! included, to 1e-6; and the CLI on files (rows and columns in another order, mismatches
//! named).

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{fixtures, load_io, TempDir};
use labelfree::eval::scores_csv;
use labelfree::methods::cdul::update::{step, UpdateParams};
use labelfree::methods::cdul::LabelFile;
use labelfree::models::clip::weights::load_safetensors;

fn cases() -> Vec<UpdateParams> {
    let (_, meta) = load_safetensors(&fixtures().join("cdul/update.safetensors")).unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&meta["cases"]).unwrap();
    v.iter()
        .map(|c| UpdateParams { eta: c["eta"].as_f64().unwrap() as f32, sigma: c["sigma"].as_f64().unwrap() as f32 })
        .collect()
}

#[test]
fn step_matches_torch_autograd() {
    let io = load_io(&fixtures().join("cdul/update.safetensors"));
    let y = io["labels"].f32s().unwrap();
    let p = io["scores"].f32s().unwrap();
    let cases = cases();
    assert_eq!(cases.len(), 3);
    for (k, u) in cases.into_iter().enumerate() {
        let want = io[&format!("expected{k}")].f32s().unwrap();
        let got = step(y, p, u).unwrap();
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "case {k} (eta {}, sigma {}): max abs diff {worst:e}", u.eta, u.sigma);
        // The step moves the labels (a test that cannot pass by returning its input).
        let moved = got.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-3, "case {k}: labels did not move");
    }
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn cli_reads_files_in_any_row_and_column_order() {
    let io = load_io(&fixtures().join("cdul/update.safetensors"));
    let (n, c) = (io["labels"].dim(0), io["labels"].dim(1));
    let y = io["labels"].f32s().unwrap();
    let p = io["scores"].f32s().unwrap();
    let paths: Vec<String> = (0..n).map(|i| format!("img{i}.jpg")).collect();
    let classes: Vec<String> = (0..c).map(|k| format!("class {k}")).collect();
    let dir = TempDir::new("cdul_update_cli");
    let labels = dir.path().join("l.safetensors");
    LabelFile {
        paths: paths.clone(),
        classes: classes.clone(),
        labels: y.to_vec(),
        scores: None,
        meta: HashMap::new(),
    }
    .write(&labels)
    .unwrap();
    // Scores CSV: rows reversed, columns reversed, one extra row.
    let rpaths: Vec<String> = paths.iter().rev().cloned().chain(["other.jpg".to_string()]).collect();
    let rclasses: Vec<String> = classes.iter().rev().cloned().collect();
    let mut rscores = Vec::new();
    for i in (0..n).rev() {
        rscores.extend((0..c).rev().map(|k| p[i * c + k]));
    }
    rscores.extend(std::iter::repeat_n(0.5, c));
    let preds = dir.path().join("p.csv");
    std::fs::write(&preds, scores_csv::to_csv(&rpaths, &rclasses, &rscores)).unwrap();
    let out = dir.path().join("l2.safetensors");
    let (ok, err) = run(&[
        "cdul",
        "update",
        "--labels",
        labels.to_str().unwrap(),
        "--preds",
        preds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let got = LabelFile::read(&out).unwrap();
    assert_eq!((got.paths.clone(), got.classes.clone()), (paths.clone(), classes.clone()));
    let want = io["expected0"].f32s().unwrap();
    let worst = got.labels.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "CLI update: max abs diff {worst:e}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("l2.safetensors.report.json")).unwrap()).unwrap();
    assert_eq!(report["preds_rows_unused"], 1);

    // A label row without a score row, and a class without a column: stopped, named.
    let short = dir.path().join("short.csv");
    std::fs::write(&short, scores_csv::to_csv(&rpaths[1..], &rclasses, &rscores[c..])).unwrap();
    let (ok, err) = run(&[
        "cdul",
        "update",
        "--labels",
        labels.to_str().unwrap(),
        "--preds",
        short.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains(&paths[n - 1]), "{err}");
    let mut renamed = rclasses.clone();
    renamed[0] = "zebra".into();
    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, scores_csv::to_csv(&rpaths, &renamed, &rscores)).unwrap();
    let (ok, err) = run(&[
        "cdul",
        "update",
        "--labels",
        labels.to_str().unwrap(),
        "--preds",
        wrong.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains(&classes[c - 1]) && err.contains("zebra"), "{err}");
}
