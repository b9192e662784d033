//! `labelfree tagclip` as a user runs it: over a dataset split (coco128), its printed and JSON
//! metrics equal `labelfree eval` on the scores CSV it wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn coco128() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128")
}

/// Runs the CLI; (success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// The metric lines of a printed run: `mAP ...` and the two `F1 ...` lines.
fn metric_lines(stderr: &str) -> Vec<String> {
    stderr.lines().filter(|l| l.starts_with("mAP ") || l.starts_with("F1 ")).map(str::to_string).collect()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn tagclip_over_coco128_prints_the_metrics_eval_computes() {
    let dir = common::TempDir::new("tagclip-cli");
    let d = dir.path();
    let weights = common::tiny_tagclip_weights(d);
    let root = coco128();
    let (scores, report) = (d.join("s.csv"), d.join("s.json"));
    let dataset = ["--dataset", "coco2017", "--root", root.to_str().unwrap(), "--split", "train2017"];
    let mut args = vec!["tagclip", "--weights", weights.to_str().unwrap()];
    args.extend(dataset);
    args.extend(["--out", scores.to_str().unwrap(), "--json", report.to_str().unwrap(), "--top-k", "2"]);
    let (ok, err) = run(&args);
    assert!(ok, "tagclip failed: {err}");

    let mut args = vec!["eval"];
    args.extend(dataset);
    let eval_json = d.join("eval.json");
    args.extend(["--preds", scores.to_str().unwrap(), "--json", eval_json.to_str().unwrap(), "--top-k", "2"]);
    let (ok, eval_err) = run(&args);
    assert!(ok, "eval failed: {eval_err}");

    // Printed: the same mAP and F1 lines (126 labelled photos; top-2 as asked).
    let (printed, want) = (metric_lines(&err), metric_lines(&eval_err));
    assert_eq!(printed.len(), 3, "tagclip printed no metrics: {err}");
    assert!(printed[0].contains("126 images"), "{}", printed[0]);
    assert!(printed[2].contains("top-2"), "{}", printed[2]);
    assert_eq!(printed, want);

    // JSON: the same metrics, per-class AP included, and the dataset's classes as columns.
    let rep = read_json(&report);
    let (got, want) = (&rep["extra"]["metrics"], &read_json(&eval_json)["metrics"]);
    assert_eq!(got, want);
    let ap = got["ap"].as_array().unwrap();
    assert_eq!(ap.len(), 80);
    assert!(ap.iter().filter(|v| v.is_f64()).count() > 30, "per-class AP: {ap:?}");
    assert_eq!(rep["extra"]["dataset"]["images"], 126);
    assert_eq!(rep["extra"]["prompt_classes"][4], "aeroplane", "TagCLIP's spelling in the prompts");
    assert_eq!(rep["extra"]["classes"][4], "airplane", "the annotations' spelling in the CSV");
    let csv = std::fs::read_to_string(&scores).unwrap();
    assert!(csv.lines().next().unwrap().starts_with("path,person,bicycle,car,motorcycle,airplane,"));
    assert_eq!(csv.lines().count(), 127);
    assert!(csv.lines().nth(1).unwrap().starts_with("train2017/"), "rows keyed by the path under --root");
}

#[test]
fn tagclip_flags_that_do_not_fit_stop_with_a_message() {
    let root = coco128();
    let (ok, err) = run(&["tagclip", "--dataset", "coco2017", "--root", root.to_str().unwrap(), "--preset", "voc"]);
    assert!(!ok && err.contains("--preset") && err.contains("--dataset"), "{err}");
    let (ok, err) = run(&["tagclip", "--images", root.to_str().unwrap(), "--preset", "coco", "--names", "raw"]);
    assert!(!ok && err.contains("--names"), "{err}");
}
