//! The CLI end to end on real coco128 photos mixed with bad files: every good image is
//! encoded, every bad one is skipped and named in the report with its reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use labelfree::models::clip::weights::load_safetensors;
use labelfree::Tensor;

fn coco() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("labelfree-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two real photos, a 0-byte file, a truncated JPEG and garbage bytes with an image name.
fn mixed_folder(name: &str) -> PathBuf {
    let d = temp_dir(name);
    let photos = ["000000000009.jpg", "000000000025.jpg"];
    for p in photos {
        std::fs::copy(coco().join(p), d.join(p)).expect("coco128 photo (../shared/data/coco128)");
    }
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    let jpeg = std::fs::read(coco().join("000000000030.jpg")).unwrap();
    std::fs::write(d.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(d.join("garbage.png"), b"definitely not a png").unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn embed_skips_bad_images_and_reports_them() {
    let d = mixed_folder("embed");
    let weights = common::fixtures().join("models/rn_openclip.safetensors");
    let out = d.join("out/emb.safetensors");
    let missing = d.join("does_not_exist.jpg");
    let (ok, err) = run(&[
        "embed",
        "--weights",
        weights.to_str().unwrap(),
        "--images",
        d.to_str().unwrap(),
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "3",
    ]);
    assert!(ok, "embed failed: {err}");
    let (tensors, meta) = load_safetensors(&out).unwrap();
    let emb = &tensors["embeddings"];
    assert_eq!(emb.shape(), &[2, 32]);
    let paths: Vec<String> = serde_json::from_str(&meta["paths"]).unwrap();
    assert!(paths[0].ends_with("000000000009.jpg") && paths[1].ends_with("000000000025.jpg"), "{paths:?}");

    // The rows are the model's embeddings of those photos.
    let model = labelfree::models::clip::ClipModel::load(&weights, None, None).unwrap();
    let t = labelfree::methods::encode::clip_transform(&model, None).unwrap();
    let img = labelfree::data::decode::decode_image_file(Path::new(&paths[1])).unwrap();
    let (px, h, w) = t.apply(&img);
    let want = model.encode_image(&Tensor::from_f32(&[1, 3, h, w], px).unwrap()).unwrap();
    let got = emb.narrow0(1, 2).unwrap();
    common::assert_close("embed row", &got, &want, 1e-6);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/emb.safetensors.report.json")).unwrap()).unwrap();
    assert_eq!(report["images_total"], 6);
    assert_eq!(report["images_ok"], 2);
    let skipped = report["skipped"].as_array().unwrap();
    let names: Vec<String> = skipped.iter().map(|s| s["path"].as_str().unwrap().to_string()).collect();
    for bad in ["empty.jpg", "truncated.jpg", "garbage.png", "does_not_exist.jpg"] {
        assert!(names.iter().any(|n| n.ends_with(bad)), "{bad} not reported: {names:?}");
    }
    for s in skipped {
        assert!(!s["reason"].as_str().unwrap().is_empty());
    }
    assert!(err.contains("skipped"), "the printed report lists the skipped images: {err}");
}

#[test]
fn zeroshot_writes_csv_of_softmax_scores() {
    let d = mixed_folder("zeroshot");
    // The tiny fixture's text tower has 1000 tokens; give it CLIP's full vocabulary so real
    // prompts tokenise.
    let weights = common::tiny_full_vocab_weights(&d);
    let out = d.join("scores.csv");
    let classes = d.join("classes.txt");
    std::fs::write(&classes, "person\ndog\nodd, name\n\ngiraffe\n").unwrap();
    let (ok, err) = run(&[
        "zeroshot",
        "--weights",
        weights.to_str().unwrap(),
        "--images",
        d.to_str().unwrap(),
        "--classes-file",
        classes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "zeroshot failed: {err}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], "path,person,dog,\"odd, name\",giraffe");
    for l in &lines[1..] {
        let vals: Vec<f64> = l.rsplitn(5, ',').take(4).map(|v| v.parse().unwrap()).collect();
        let sum: f64 = vals.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "softmax row sums to {sum}: {l}");
    }
}

#[test]
fn bad_weights_stop_with_a_message() {
    let d = temp_dir("badweights");
    let w = d.join("w.safetensors");
    std::fs::write(&w, b"short").unwrap();
    let (ok, err) = run(&[
        "embed",
        "--weights",
        w.to_str().unwrap(),
        "--images",
        coco().to_str().unwrap(),
        "--out",
        d.join("o.safetensors").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("truncated or corrupt") && !err.contains("panicked"), "{err}");
}

#[test]
fn a_dtype_without_a_device_is_an_error_not_a_silent_f32_run() {
    let d = temp_dir("dtypecpu");
    let (ok, err) = run(&[
        "--dtype",
        "bf16",
        "embed",
        "--images",
        coco().to_str().unwrap(),
        "--out",
        d.join("o.safetensors").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--dtype bf16 is for --device cuda or sim"), "{err}");
    assert!(!d.join("o.safetensors").exists(), "nothing is written");
}
