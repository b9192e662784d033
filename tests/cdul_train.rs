//! `cdul train` end to end on coco128 (CPU): `cdul init` with the tiny random CLIP fixture,
//! then 3 epochs of a small random ResNet at 32 x 32 with a label update after each; the
//! checkpoint, the labels and scores of every update, the per-epoch mAP and the report are
//! there and agree with each other (each saved update is `cdul update` of the previous labels
//! with its saved scores, bit for bit); a run stopped between a checkpoint and its update
//! resumes with the labels of the last update and redoes the missing one identically.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::methods::cdul::LabelFile;

fn coco128() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn train(labels: &Path, out: &Path, epochs: &str, resume: bool) -> (bool, String) {
    let root = coco128();
    let mut args = vec!["--threads", "2", "cdul", "train", "--dataset", "coco2017", "--root", root.to_str().unwrap()];
    args.extend(["--split", "train2017", "--eval-split", "train2017", "--labels", labels.to_str().unwrap()]);
    args.extend(["--epochs", epochs, "--batch", "16", "--size", "32", "--width", "4", "--lr", "1e-3"]);
    args.extend(["--eta", "2.0", "--out", out.to_str().unwrap()]);
    if resume {
        args.push("--resume");
    }
    run(&args)
}

#[test]
fn train_updates_labels_every_epoch_and_resumes() {
    let tmp = TempDir::new("cdul_train");
    let dir = tmp.path();
    let l0 = dir.join("l0.safetensors");
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let root = coco128();
    let (ok, err) = run(&[
        "cdul",
        "init",
        "--dataset",
        "coco2017",
        "--root",
        root.to_str().unwrap(),
        "--split",
        "train2017",
        "--clip",
        clip.to_str().unwrap(),
        "--out",
        l0.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let out = dir.join("run");
    let (ok, err) = train(&l0, &out, "3", false);
    assert!(ok, "{err}");
    assert!(out.join("checkpoint.safetensors").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cdul_train_report.json")).unwrap()).unwrap();
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let mut prev = l0.clone();
    for (k, e) in epochs.iter().enumerate() {
        let n = k + 1;
        assert_eq!(e["epoch"]["epoch"], n);
        assert!(e["epoch"]["eval"]["map"].as_f64().unwrap() > 0.0, "{e}");
        assert_eq!(e["update"]["after_epoch"], n);
        let labels = out.join(format!("labels_epoch{n:03}.safetensors"));
        let preds = out.join(format!("preds_epoch{n:03}.csv"));
        assert!(e["update"]["change"]["max_abs_change"].as_f64().unwrap() > 0.0, "{e}");
        // The saved update is `cdul update` of the previous labels with the saved scores.
        let again = dir.join(format!("again{n}.safetensors"));
        let (ok, err) = run(&[
            "cdul",
            "update",
            "--labels",
            prev.to_str().unwrap(),
            "--preds",
            preds.to_str().unwrap(),
            "--eta",
            "2.0",
            "--out",
            again.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let (saved, redone) = (LabelFile::read(&labels).unwrap(), LabelFile::read(&again).unwrap());
        assert_eq!(saved.paths.len(), 126, "coco128: the 126 images with a label");
        assert_eq!(saved.paths, redone.paths);
        assert!(saved.labels.iter().zip(&redone.labels).all(|(a, b)| a.to_bits() == b.to_bits()), "update {n}");
        prev = labels;
    }

    // Stopped after the checkpoint of epoch 3 but before its update: resumed, the update is
    // redone from the checkpoint's weights with the labels of update 2, identically.
    let l3 = LabelFile::read(&out.join("labels_epoch003.safetensors")).unwrap();
    std::fs::remove_file(out.join("labels_epoch003.safetensors")).unwrap();
    let (ok, err) = train(&l0, &out, "3", true);
    assert!(ok, "{err}");
    assert!(err.contains("labels_epoch002"), "resumed from the labels of the last update: {err}");
    assert_eq!(LabelFile::read(&out.join("labels_epoch003.safetensors")).unwrap(), l3);
    // One more epoch trains on the labels of update 3.
    let (ok, err) = train(&l0, &out, "4", true);
    assert!(ok, "{err}");
    assert!(err.contains("labels_epoch003"), "{err}");
    assert!(out.join("labels_epoch004.safetensors").is_file());
}
