//! `labelfree ccd init` on coco128 photos with the tiny random CLIP of tests/fixtures/cdul
//! (a ModifiedResNet with a text tower): the file it writes holds what the library functions
//! give for the same photos (scores, labels, flags, bias), loads in the trainer's label
//! reader, names and skips an unreadable image, and a second run takes every embedding from
//! the cache and writes the same file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::data::loader::load_one;
use labelfree::methods::ccd::clip_input;
use labelfree::methods::ccd::init::{clip_scores, global_labels, ENTROPY_MAX, FLOOR};
use labelfree::methods::ccd::labels::CcdLabels;
use labelfree::models::clip::tokenizer::ClipTokenizer;
use labelfree::models::clip::{ClipModel, VisionEncoder};
use labelfree::tensor::Tensor;
use labelfree::train::labels::read_label_table;

const CLASSES: [&str; 6] = ["person", "dog", "car", "pizza", "bicycle", "cat"];
const PHOTOS: [&str; 6] = [
    "000000000009.jpg",
    "000000000025.jpg",
    "000000000030.jpg",
    "000000000034.jpg",
    "000000000036.jpg",
    "000000000042.jpg",
];

fn coco128_images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017")
}

pub fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// A csv dataset of six photos and a file that is no image.
fn dataset(dir: &Path) {
    std::fs::write(dir.join("classes.txt"), CLASSES.join("\n")).unwrap();
    let mut csv = String::from("path,labels\n");
    for (k, im) in PHOTOS.iter().enumerate() {
        std::fs::copy(coco128_images().join(im), dir.join(im)).unwrap();
        csv.push_str(&format!("{im},{}\n", CLASSES[k % CLASSES.len()]));
    }
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg at all").unwrap();
    csv.push_str(&format!("broken.jpg,{}\n", CLASSES[1]));
    std::fs::write(dir.join("split.csv"), csv).unwrap();
}

#[test]
fn init_writes_the_library_result_and_reuses_the_cache() {
    let tmp = TempDir::new("ccd_cli_init");
    let dir = tmp.path();
    dataset(dir);
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let out = dir.join("l0.safetensors");
    let cache = dir.join("cache");
    let args = [
        "ccd",
        "init",
        "--dataset",
        "csv",
        "--root",
        dir.to_str().unwrap(),
        "--split",
        "split",
        "--clip",
        clip.to_str().unwrap(),
        "--clip-size",
        "96",
        "--clip-batch",
        "4",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    assert!(err.contains("broken.jpg"), "the unreadable image is named: {err}");
    let file = CcdLabels::read(&out).unwrap();
    assert_eq!(file.paths, PHOTOS);
    assert_eq!(file.classes, CLASSES);

    // the library on the same photos, one image at a time
    let mut model = ClipModel::load(&clip, None, None).unwrap();
    if let VisionEncoder::ResNet(r) = &mut model.visual {
        r.pos_f16 = true;
    }
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let text = model.class_embeddings(&ClipTokenizer::new().unwrap(), &names, &["a photo of the {}"]).unwrap();
    let mut scores = Vec::new();
    for im in PHOTOS {
        let (px, _, _) = load_one(&coco128_images().join(im), &clip_input(96)).unwrap();
        scores.extend(clip_scores(&model, &Tensor::from_f32(&[1, 3, 96, 96], px).unwrap(), &text).unwrap());
    }
    let want = global_labels(&scores, CLASSES.len(), FLOOR, ENTROPY_MAX).unwrap();
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        let e = common::rel_err(a, b);
        assert!(e < 1e-5, "{what}: rel err {e:.2e}");
    };
    close(file.clip_scores.as_ref().unwrap(), &scores, "clip_scores");
    close(&file.labels, &want.labels, "labels");
    close(file.bias.as_ref().unwrap(), &want.bias, "bias");
    assert_eq!(file.flags.as_ref().unwrap(), &want.flags);
    // the labels are no copy of the scores: the floor and the bias moved them
    assert!(file.labels.iter().zip(&scores).any(|(l, s)| (l - s).abs() > 1e-3));

    // the trainer's label reader takes the file
    let table = read_label_table(&out).unwrap();
    assert!(table.named_classes);
    assert_eq!(table.table.paths, PHOTOS);
    assert_eq!(table.table.scores, file.labels);

    // the report: one unreadable image, the mAP against the csv labels
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("l0.safetensors.report.json")).unwrap()).unwrap();
    assert_eq!(report["images_ok"], 6);
    assert_eq!(report["extra"]["images_unreadable"], 1);
    assert!(report["extra"]["metrics"]["map_labels"].as_f64().unwrap() > 0.0);
    assert_eq!(report["cache"]["encoded"], 6);

    // again: every embedding from the cache, the same file
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("l0.safetensors.report.json")).unwrap()).unwrap();
    assert_eq!((report["cache"]["reused"].as_u64(), report["cache"]["encoded"].as_u64()), (Some(6), Some(0)));
    assert_eq!(CcdLabels::read(&out).unwrap(), file);
}
