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
use labelfree::methods::ccd::relabel::{
    load_official_classifier, relabel_batch, RelabelBatch, RelabelOptions, RelabelSetup,
};
use labelfree::methods::ccd::relabel_cli::load_classifier;
use labelfree::models::clip::tokenizer::ClipTokenizer;
use labelfree::models::clip::{ClipModel, VisionEncoder};
use labelfree::tensor::Tensor;
use labelfree::train::labels::read_label_table;

/// The classes of the fixture classifier (tests/fixtures/ccd).
const CLASSES: [&str; 10] = ["person", "bicycle", "car", "dog", "cat", "bus", "train", "boat", "bird", "horse"];
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

fn run(args: &[&str]) -> (bool, String) {
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

fn tiny_clip() -> PathBuf {
    fixtures().join("cdul/tiny_clip.safetensors")
}

/// `ccd init` of the csv dataset in `dir` at CLIP size 96, with its cache in `dir/cache`.
fn init_args(dir: &Path, out: &Path) -> Vec<String> {
    let clip = tiny_clip();
    let cache = dir.join("cache");
    let mut args: Vec<String> = ["ccd", "init", "--dataset", "csv", "--split", "split"].map(String::from).to_vec();
    for (k, v) in [
        ("--root", dir.to_str().unwrap()),
        ("--clip", clip.to_str().unwrap()),
        ("--clip-size", "96"),
        ("--clip-batch", "4"),
        ("--cache-dir", cache.to_str().unwrap()),
        ("--out", out.to_str().unwrap()),
    ] {
        args.extend([k.to_string(), v.to_string()]);
    }
    args
}

/// The CLIP fixture as CCD runs it, and its text embeddings of CLASSES.
fn library_clip() -> (ClipModel, Tensor) {
    let mut model = ClipModel::load(&tiny_clip(), None, None).unwrap();
    if let VisionEncoder::ResNet(r) = &mut model.visual {
        r.pos_f16 = true;
    }
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let text = model.class_embeddings(&ClipTokenizer::new().unwrap(), &names, &["a photo of the {}"]).unwrap();
    (model, text)
}

#[test]
fn init_writes_the_library_result_and_reuses_the_cache() {
    let tmp = TempDir::new("ccd_cli_init");
    let dir = tmp.path();
    dataset(dir);
    let out = dir.join("l0.safetensors");
    let args = init_args(dir, &out);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    assert!(err.contains("broken.jpg"), "the unreadable image is named: {err}");
    let file = CcdLabels::read(&out).unwrap();
    assert_eq!(file.paths, PHOTOS);
    assert_eq!(file.classes, CLASSES);

    // the library on the same photos, one image at a time
    let (model, text) = library_clip();
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

#[test]
fn relabel_writes_the_library_result_keeps_unreadable_rows_and_names_mismatches() {
    let tmp = TempDir::new("ccd_cli_relabel");
    let dir = tmp.path();
    dataset(dir);
    let l0 = dir.join("l0.safetensors");
    let args = init_args(dir, &l0);
    let (ok, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let stage0 = CcdLabels::read(&l0).unwrap();
    // the last photo becomes unreadable after stage 0: its row must stay as it was
    let lost = PHOTOS[5];
    std::fs::write(dir.join(lost), b"truncated").unwrap();

    let classifier = fixtures().join("ccd/classifier.safetensors");
    let l2 = dir.join("l2.safetensors");
    let (clip, root) = (tiny_clip(), dir.to_str().unwrap().to_string());
    let relabel = |labels: &Path, out: &Path| {
        run(&[
            "ccd",
            "relabel",
            "--dataset",
            "csv",
            "--root",
            &root,
            "--split",
            "split",
            "--clip",
            clip.to_str().unwrap(),
            "--clip-size",
            "96",
            "--classifier",
            classifier.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--threshold",
            "0.3",
            "--offset",
            "12",
            "--batch",
            "3",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, err) = relabel(&l0, &l2);
    assert!(ok, "{err}");
    assert!(err.contains(lost), "the unreadable image is named: {err}");
    let got = CcdLabels::read(&l2).unwrap();
    assert_eq!((&got.paths, &got.classes, &got.bias), (&stage0.paths, &stage0.classes, &stage0.bias));

    // the library on the five readable photos
    let (model, text) = library_clip();
    let net = load_official_classifier(&classifier, CLASSES.len()).unwrap();
    let c = CLASSES.len();
    let images: Vec<Vec<f32>> =
        PHOTOS[..5].iter().map(|im| load_one(&coco128_images().join(im), &clip_input(96)).unwrap().0).collect();
    let old: Vec<Vec<f32>> = (0..5).map(|i| stage0.labels[i * c..(i + 1) * c].to_vec()).collect();
    let opt = RelabelOptions { offset: 12, ..RelabelOptions::default() };
    let bias = stage0.bias.clone().unwrap();
    let setup = RelabelSetup { clip: &model, text: &text, bias: &bias, threshold: 0.3, clip_batch: 8, opt: &opt };
    let want = relabel_batch(&setup, &net, &RelabelBatch { images: &images, ih: 96, iw: 96, old: &old }).unwrap();
    let want_labels: Vec<f32> = want.iter().flat_map(|u| u.label.clone()).collect();
    let e = common::rel_err(&got.labels[..5 * c], &want_labels);
    assert!(e < 1e-5, "labels: rel err {e:.2e}");
    assert_eq!(&got.labels[5 * c..], &stage0.labels[5 * c..], "the unreadable image's row is kept");
    assert!(got.labels[..5 * c].iter().zip(&stage0.labels).any(|(a, b)| (a - b).abs() > 1e-3), "labels moved");

    // the boxes JSON: every crop of the library, in order
    let boxes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("l2.safetensors.boxes.json")).unwrap()).unwrap();
    let want_boxes: Vec<(String, String, [usize; 4])> = want
        .iter()
        .enumerate()
        .flat_map(|(i, u)| {
            u.crops.iter().map(move |p| (PHOTOS[i].to_string(), CLASSES[p.class].to_string(), [p.x0, p.y0, p.x1, p.y1]))
        })
        .collect();
    let got_boxes: Vec<(String, String, [usize; 4])> = boxes
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let xy: Vec<usize> =
                b["box_xyxy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            (b["image"].as_str().unwrap().into(), b["class"].as_str().unwrap().into(), [xy[0], xy[1], xy[2], xy[3]])
        })
        .collect();
    assert!(!want_boxes.is_empty());
    assert_eq!(got_boxes, want_boxes);

    // a label file whose classes are not the split's: stopped, the classes named
    let mut renamed = stage0.clone();
    renamed.classes[3] = "wolf".into();
    let bad = dir.join("renamed.safetensors");
    renamed.write(&bad).unwrap();
    let (ok, err) = relabel(&bad, &dir.join("never.safetensors"));
    assert!(!ok && err.contains("wolf") && err.contains("dog"), "{err}");
    // a row that is no image of the split: named
    let mut stray = stage0.clone();
    stray.paths[2] = "elsewhere.jpg".into();
    stray.write(&bad).unwrap();
    let (ok, err) = relabel(&bad, &dir.join("never.safetensors"));
    assert!(!ok && err.contains("row 2 `elsewhere.jpg`"), "{err}");
    // a classifier of another class count: the tensor and both shapes named
    let Err(e) = load_classifier(&classifier, 6) else { panic!("a 10-class classifier taken for 6 classes") };
    let e = e.to_string();
    assert!(e.contains("onebyone_conv.bias") && e.contains("[6]") && e.contains("[10]"), "{e}");
}

#[test]
fn relabel_saves_box_maps_of_the_chosen_images() {
    let tmp = TempDir::new("ccd_cli_boxes");
    let dir = tmp.path();
    dataset(dir);
    std::fs::remove_file(dir.join("broken.jpg")).unwrap();
    let csv = std::fs::read_to_string(dir.join("split.csv")).unwrap();
    std::fs::write(
        dir.join("split.csv"),
        csv.lines().filter(|l| !l.starts_with("broken")).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let l0 = dir.join("l0.safetensors");
    let args = init_args(dir, &l0);
    let (ok, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let (clip, classifier) = (tiny_clip(), fixtures().join("ccd/classifier.safetensors"));
    let (maps, l2) = (dir.join("maps"), dir.join("l2.safetensors"));
    let relabel = |chosen: &str| {
        run(&[
            "ccd",
            "relabel",
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
            "--classifier",
            classifier.to_str().unwrap(),
            "--labels",
            l0.to_str().unwrap(),
            "--threshold",
            "0.3",
            "--offset",
            "12",
            "--out",
            l2.to_str().unwrap(),
            "--save-boxes",
            maps.to_str().unwrap(),
            "--save-boxes-images",
            chosen,
        ])
    };
    // a row index and a file name
    let (ok, err) = relabel(&format!("1,{}", PHOTOS[3]));
    assert!(ok, "{err}");
    let boxes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("l2.safetensors.boxes.json")).unwrap()).unwrap();
    let want: Vec<String> = boxes
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| [PHOTOS[1], PHOTOS[3]].contains(&b["image"].as_str().unwrap()))
        .map(|b| {
            let stem = b["image"].as_str().unwrap().trim_end_matches(".jpg").to_string();
            format!("{stem}_{}.png", b["class"].as_str().unwrap())
        })
        .collect();
    assert!(!want.is_empty(), "no crop in the chosen images at threshold 0.3: nothing would be drawn");
    let mut got: Vec<String> =
        std::fs::read_dir(&maps).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "one PNG per crop of the chosen images, none of the others");
    for f in &got {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(maps.join(f)).unwrap()));
        let reader = dec.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (96, 96), "{f}");
    }
    // a name that is no row: a clear error naming it
    let (ok, err) = relabel("nothere.jpg");
    assert!(!ok && err.contains("nothere.jpg"), "{err}");
}

#[test]
fn predict_images_scores_files_as_the_dataset_run_does() {
    let tmp = TempDir::new("ccd_cli_predict_images");
    let dir = tmp.path();
    dataset(dir);
    let classifier = fixtures().join("ccd/classifier.safetensors");
    let (root, cls) = (dir.to_str().unwrap(), classifier.to_str().unwrap());
    let (by_ds, by_files) = (dir.join("ds.csv"), dir.join("files.csv"));
    let common = ["ccd", "predict", "--classifier", cls, "--size", "64"];
    let mut a: Vec<&str> = common.to_vec();
    a.extend(["--dataset", "csv", "--root", root, "--split", "split", "--out", by_ds.to_str().unwrap()]);
    let (ok, err) = run(&a);
    assert!(ok, "{err}");
    let names = CLASSES.join(",");
    let photos: Vec<String> = PHOTOS[..3].iter().map(|p| dir.join(p).display().to_string()).collect();
    let mut b: Vec<&str> = common.to_vec();
    b.push("--images");
    b.extend(photos.iter().map(|s| s.as_str()));
    b.extend(["--classes", &names, "--out", by_files.to_str().unwrap()]);
    let (ok, err) = run(&b);
    assert!(ok, "{err}");
    let read = |p: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| l.split(',').map(String::from).collect()).collect()
    };
    let (ds_rows, file_rows) = (read(&by_ds), read(&by_files));
    assert_eq!(file_rows[0], ds_rows[0], "the same header: path and the classes");
    assert_eq!(file_rows.len(), 4);
    for row in &file_rows[1..] {
        let name = Path::new(&row[0]).file_name().unwrap().to_str().unwrap().to_string();
        let twin = ds_rows.iter().find(|r| r[0] == name).unwrap();
        assert_eq!(&row[1..], &twin[1..], "{name}: the same scores as the dataset run");
    }
    // without class names: a clear error; with the wrong count: the tensor named
    let mut c: Vec<&str> = common.to_vec();
    c.extend(["--images", &photos[0], "--out", by_files.to_str().unwrap()]);
    let (ok, err) = run(&c);
    assert!(!ok && err.contains("--classes"), "{err}");
    c.extend(["--classes", "person,dog"]);
    let (ok, err) = run(&c);
    assert!(!ok && err.contains("onebyone_conv.bias"), "{err}");
}

#[test]
fn train_takes_a_tagclip_scores_csv_and_names_a_mismatch() {
    let tmp = TempDir::new("ccd_cli_train_csv");
    let dir = tmp.path();
    dataset(dir);
    std::fs::remove_file(dir.join("broken.jpg")).unwrap();
    let csv = std::fs::read_to_string(dir.join("split.csv")).unwrap();
    std::fs::write(
        dir.join("split.csv"),
        csv.lines().filter(|l| !l.starts_with("broken")).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    // `labelfree tagclip --out scores.csv`'s format: path, then one score column per class
    let scores_csv = |classes: &[&str], paths: &[&str]| {
        let mut s = format!("path,{}\n", classes.join(","));
        for (i, p) in paths.iter().enumerate() {
            let row: Vec<String> =
                (0..classes.len()).map(|j| format!("{:.3}", ((i * 7 + j * 3) % 10) as f32 / 10.0)).collect();
            s.push_str(&format!("{p},{}\n", row.join(",")));
        }
        s
    };
    let good = dir.join("tagclip.csv");
    std::fs::write(&good, scores_csv(&CLASSES, &PHOTOS)).unwrap();
    let clip = tiny_clip();
    let train = |labels: &Path, out: &Path| {
        let mut args: Vec<String> =
            ["--threads", "2", "ccd", "train", "--dataset", "csv", "--split", "split"].map(String::from).to_vec();
        for (k, v) in [
            ("--root", dir.to_str().unwrap()),
            ("--eval-split", "split"),
            ("--clip", clip.to_str().unwrap()),
            ("--clip-size", "64"),
            ("--labels", labels.to_str().unwrap()),
            ("--epochs", "1"),
            ("--update-epoch", "5"),
            ("--batch", "4"),
            ("--size", "32"),
            ("--width", "4"),
            ("--out", out.to_str().unwrap()),
        ] {
            args.extend([k.to_string(), v.to_string()]);
        }
        run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    };
    let out = dir.join("run");
    let (ok, err) = train(&good, &out);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ccd_train_report.json")).unwrap()).unwrap();
    assert_eq!(report["stage0_labels"].as_str().unwrap(), good.to_str().unwrap());
    assert!(out.join("checkpoint.safetensors").is_file());

    // classes of another dataset: named; a path that is no image of the split: named
    let other = dir.join("other.csv");
    let mut renamed = CLASSES;
    renamed[2] = "automobile";
    std::fs::write(&other, scores_csv(&renamed, &PHOTOS)).unwrap();
    let (ok, err) = train(&other, &dir.join("run2"));
    assert!(!ok && err.contains("automobile") && err.contains("car"), "{err}");
    let stray = dir.join("stray.csv");
    std::fs::write(&stray, scores_csv(&CLASSES, &[PHOTOS[0], "elsewhere/img.jpg"])).unwrap();
    let (ok, err) = train(&stray, &dir.join("run3"));
    assert!(!ok && err.contains("elsewhere/img.jpg"), "{err}");
}
