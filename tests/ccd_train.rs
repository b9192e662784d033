//! `ccd train` end to end on coco128 (CPU): stage 0 with the tiny random CLIP of
//! tests/fixtures/cdul, a small random ResNet at 32 x 32, the update before epoch 2 (of 3).
//! The run is stopped after epoch 1 and resumed; in between, `ccd relabel` with the
//! checkpoint folder as --classifier makes the labels the resumed run's update must make, bit
//! for bit. Then the report, the checkpoints kept and `ccd predict` on the best one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::methods::ccd::labels::CcdLabels;

fn coco128() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// The dataset, CLIP and stage-2 flags both commands share.
fn common_args(clip: &Path) -> Vec<String> {
    let root = coco128();
    let mut v: Vec<String> = ["--dataset", "coco2017", "--split", "train2017"].map(String::from).to_vec();
    for (k, val) in [
        ("--root", root.to_str().unwrap()),
        ("--clip", clip.to_str().unwrap()),
        ("--clip-size", "64"),
        ("--crop-long", "64"),
        ("--offset", "8"),
        ("--calib-size", "32"),
    ] {
        v.extend([k.to_string(), val.to_string()]);
    }
    v
}

fn train(clip: &Path, out: &Path, epochs: &str, resume: bool) -> (bool, String) {
    let mut args: Vec<String> =
        ["--threads", "2", "ccd", "train", "--eval-split", "train2017", "--no-cache"].map(String::from).to_vec();
    args.extend(common_args(clip));
    for (k, v) in [
        ("--epochs", epochs),
        ("--update-epoch", "1"),
        ("--batch", "16"),
        ("--size", "32"),
        ("--width", "4"),
        ("--lr", "1e-3"),
        ("--out", out.to_str().unwrap()),
    ] {
        args.extend([k.to_string(), v.to_string()]);
    }
    if resume {
        args.push("--resume".into());
    }
    run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>())
}

#[test]
fn train_relabels_once_keeps_checkpoints_and_resumes() {
    let tmp = TempDir::new("ccd_train");
    let dir = tmp.path();
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let out = dir.join("run");

    // epoch 1 only: stage 0 computed, no update yet
    let (ok, err) = train(&clip, &out, "1", false);
    assert!(ok, "{err}");
    let stage0 = out.join("labels_stage0.safetensors");
    assert!(stage0.is_file() && out.join("checkpoint.safetensors").is_file());
    assert!(!out.join("labels_epoch001.safetensors").exists());

    // stage 2 by hand from the checkpoint folder, as the resumed run will make it
    let by_hand = dir.join("l2.safetensors");
    let mut args: Vec<String> = ["ccd", "relabel"].map(String::from).to_vec();
    args.extend(common_args(&clip));
    for (k, v) in [
        ("--classifier", out.to_str().unwrap()),
        ("--labels", stage0.to_str().unwrap()),
        ("--out", by_hand.to_str().unwrap()),
    ] {
        args.extend([k.to_string(), v.to_string()]);
    }
    let (ok, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{err}");

    let (ok, err) = train(&clip, &out, "3", true);
    assert!(ok, "{err}");
    let l0 = CcdLabels::read(&stage0).unwrap();
    let l1 = CcdLabels::read(&out.join("labels_epoch001.safetensors")).unwrap();
    let hand = CcdLabels::read(&by_hand).unwrap();
    assert_eq!(l1.paths.len(), 126, "coco128: the 126 images with a label");
    assert_eq!((&l1.paths, &l1.bias), (&l0.paths, &l0.bias));
    assert!(l1.labels.iter().zip(&hand.labels).all(|(a, b)| a.to_bits() == b.to_bits()), "update = ccd relabel");
    assert_eq!(l1.meta["threshold"], hand.meta["threshold"]);
    assert!(l1.labels.iter().zip(&l0.labels).any(|(a, b)| (a - b).abs() > 1e-3), "the update moved the labels");
    let boxes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("boxes_epoch001.json")).unwrap()).unwrap();
    assert!(!boxes.as_array().unwrap().is_empty());

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ccd_train_report.json")).unwrap()).unwrap();
    assert_eq!(report["resumed_from_epoch"], 1);
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 3);
    for (k, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], k + 1);
        // the second view and the consistency loss from the update on
        assert_eq!(e["second_view"].as_bool(), Some(k >= 1), "{e}");
        assert!(e["eval"]["map"].as_f64().unwrap() > 0.0);
        assert!(e["train_map_vs_pseudo"].as_f64().is_some());
    }
    let updates = report["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["before_epoch"], 1);
    // best_eval: the epoch of the highest eval mAP, its checkpoint kept
    let maps: Vec<f64> = epochs.iter().map(|e| e["eval"]["map"].as_f64().unwrap()).collect();
    let best = (0..3).fold(0, |b, k| if maps[k] > maps[b] { k } else { b });
    assert_eq!(report["choices"]["best_eval_epoch"], best + 1);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best_eval/checkpoint.json")).unwrap()).unwrap();
    assert_eq!(kept["epoch"], best + 1);

    // predict with the kept checkpoint: a scores row per image, the mAP the trainer measured
    let scores = dir.join("scores.csv");
    let root = coco128();
    let (ok, err) = run(&[
        "ccd",
        "predict",
        "--dataset",
        "coco2017",
        "--root",
        root.to_str().unwrap(),
        "--split",
        "train2017",
        "--classifier",
        out.join("best_eval").to_str().unwrap(),
        "--size",
        "32",
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&scores).unwrap().lines().count(), 127);
    let pr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.csv.report.json")).unwrap()).unwrap();
    let m = pr["map"].as_f64().unwrap();
    assert!((m - maps[best]).abs() < 1e-6, "predict mAP {m} vs the trainer's {}", maps[best]);
}
