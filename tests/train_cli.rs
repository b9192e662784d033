//! `labelfree train` end to end on the coco128 photos: random soft labels matched to the
//! dataset by path (relative, absolute, bare file name; missing and unknown rows counted), a
//! small random ResNet at 64x64, the mAP on a split after every epoch in metrics.jsonl,
//! checkpoints, and a resumed run equal to an uninterrupted one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use labelfree::models::clip::weights::load_safetensors;

fn coco128() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// The COCO class names in category-id order, from the annotation file.
fn coco_classes() -> Vec<String> {
    let text = std::fs::read_to_string(coco128().join("annotations/instances_train2017.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut cats: Vec<(u64, String)> = v["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_u64().unwrap(), c["name"].as_str().unwrap().to_string()))
        .collect();
    cats.sort();
    cats.into_iter().map(|(_, n)| n).collect()
}

/// A soft-label CSV over the coco128 photos, columns in reverse class order. Rows name the
/// images three ways; the first three photos (all labelled) have no row, and two rows name no
/// photo. Returns the path.
fn write_labels(dir: &Path) -> PathBuf {
    let mut classes = coco_classes();
    classes.reverse();
    let mut names: Vec<String> = std::fs::read_dir(coco128().join("train2017"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut csv = format!("path,{}\n", classes.join(","));
    let mut state = 12345u64;
    let mut value = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f64 / (1u64 << 24) as f64
    };
    let labelled_missing = ["000000000009.jpg", "000000000025.jpg", "000000000030.jpg"];
    let extra = ["train2017/not_a_photo.jpg".to_string(), "elsewhere/000000999999.jpg".to_string()];
    for (k, name) in names.iter().enumerate() {
        if labelled_missing.contains(&name.as_str()) {
            continue;
        }
        let path = match k % 3 {
            0 => format!("train2017/{name}"),
            1 => coco128().join("train2017").join(name).display().to_string(),
            _ => name.clone(),
        };
        let row: Vec<String> = (0..classes.len()).map(|_| format!("{:.4}", value())).collect();
        csv.push_str(&format!("{path},{}\n", row.join(",")));
    }
    for path in extra {
        let row: Vec<String> = (0..classes.len()).map(|_| "0.5".to_string()).collect();
        csv.push_str(&format!("{path},{}\n", row.join(",")));
    }
    let p = dir.join("labels.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

fn train_args<'a>(labels: &'a str, root: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "--threads",
        "2",
        "train",
        "--dataset",
        "coco2017",
        "--root",
        root,
        "--split",
        "train2017",
        "--eval-split",
        "train2017",
        "--labels",
        labels,
        "--epochs",
        epochs,
        "--batch",
        "16",
        "--size",
        "64",
        "--width",
        "8",
        "--lr",
        "1e-3",
        "--seed",
        "3",
        "--consistency-from",
        "1",
        "--out",
        out,
    ]
}

#[test]
fn train_on_coco128_writes_metrics_and_checkpoints_and_resumes_exactly() {
    let d = TempDir::new("train-cli");
    let labels = write_labels(d.path());
    let root = coco128();
    let (labels_s, root_s) = (labels.to_str().unwrap(), root.to_str().unwrap());
    let out_a = d.path().join("a");
    let t0 = std::time::Instant::now();
    let (ok, err) = run(&train_args(labels_s, root_s, out_a.to_str().unwrap(), "2"));
    assert!(ok, "train failed: {err}");
    eprintln!("2 epochs in {:.1} s\n{err}", t0.elapsed().as_secs_f64());

    // coco128: 128 photos, 126 with a label; 3 of those have no row, and the 2 unlabelled
    // photos' rows and the 2 made-up rows match nothing.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join("train_report.json")).unwrap()).unwrap();
    let m = &report["label_match"];
    assert_eq!((m["label_rows"].as_u64(), m["matched"].as_u64()), (Some(127), Some(123)), "{m}");
    assert_eq!(m["missing_rows"].as_array().unwrap().len(), 3, "{m}");
    assert_eq!(m["unknown_rows"].as_array().unwrap().len(), 4, "{m}");
    assert!(err.contains("123 matched"), "{err}");

    let jsonl = std::fs::read_to_string(out_a.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(epochs.len(), 2, "{jsonl}");
    for (k, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"].as_u64(), Some(k as u64 + 1));
        let map = e["eval"]["map"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&map), "mAP {map}");
        assert_eq!(e["eval"]["images"].as_u64(), Some(126));
        assert!(e["mean_loss"].as_f64().unwrap().is_finite() && e["images_per_s"].as_f64().unwrap() > 0.0);
        assert!((e["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-9);
        // Epoch 2 (index 1) adds the jittered second view.
        assert_eq!(e["second_view"].as_bool(), Some(k >= 1));
    }
    assert!(err.contains("mAP"), "the log line shows the mAP: {err}");
    assert!(out_a.join("checkpoint.safetensors").exists() && out_a.join("checkpoint.json").exists());

    // One epoch, then --resume to two: the same weights and Adam state as the run above.
    let out_b = d.path().join("b");
    let (ok, err) = run(&train_args(labels_s, root_s, out_b.to_str().unwrap(), "1"));
    assert!(ok, "{err}");
    let mut args = train_args(labels_s, root_s, out_b.to_str().unwrap(), "2");
    args.push("--resume");
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    let (a, _) = load_safetensors(&out_a.join("checkpoint.safetensors")).unwrap();
    let (b, _) = load_safetensors(&out_b.join("checkpoint.safetensors")).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(t.f32s().unwrap(), b[name].f32s().unwrap(), "{name} differs after resume");
    }
    let lines_b = std::fs::read_to_string(out_b.join("metrics.jsonl")).unwrap();
    assert_eq!(lines_b.lines().count(), 2, "{lines_b}");
}

#[test]
fn labels_with_other_classes_are_a_clear_error() {
    let d = TempDir::new("train-cli-classes");
    let labels = d.path().join("labels.csv");
    std::fs::write(&labels, "path,cat,dog\ntrain2017/000000000009.jpg,0.5,0.1\n").unwrap();
    let root = coco128();
    let out = d.path().join("o");
    let (ok, err) = run(&train_args(labels.to_str().unwrap(), root.to_str().unwrap(), out.to_str().unwrap(), "1"));
    assert!(!ok);
    assert!(
        err.contains("classes are not those of coco2017") && err.contains("person") && !err.contains("panicked"),
        "{err}"
    );

    // --eval-split without a dataset.
    let (ok, err) =
        run(&["train", "--labels", labels.to_str().unwrap(), "--eval-split", "val", "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("need --dataset"), "{err}");
}
