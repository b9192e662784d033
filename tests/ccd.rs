//! CCD stages 0 and 2 against the official code's own lines (tools/ccd_reference.py, run on a
//! tiny random CLIP ModifiedResNet and a tiny random classifier, tests/fixtures/ccd).

mod common;

use std::path::PathBuf;

use labelfree::data::loader::load_one;
use labelfree::methods::ccd::clip_input;
use labelfree::methods::ccd::init::{clip_scores, global_labels, ENTROPY_MAX, FLOOR};
use labelfree::methods::ccd::relabel::{
    calibrate_threshold, classify, load_official_classifier, relabel_batch, RelabelBatch, RelabelOptions, RelabelSetup,
};
use labelfree::models::clip::{ClipModel, VisionEncoder};
use labelfree::ops::activation::Activation;
use labelfree::tensor::Tensor;

/// tests/fixtures/ccd, or LABELFREE_CCD_DIR (fixtures of other seeds made by the same script).
fn dir() -> PathBuf {
    std::env::var_os("LABELFREE_CCD_DIR").map(PathBuf::from).unwrap_or_else(|| common::fixtures().join("ccd"))
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("ccd.json")).unwrap()).unwrap()
}

fn coco() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017")
}

fn clip() -> ClipModel {
    let mut m = ClipModel::load(&dir().join("clip_rn.safetensors"), Some(Activation::QuickGelu), None).unwrap();
    match &mut m.visual {
        VisionEncoder::ResNet(r) => r.pos_f16 = true,
        VisionEncoder::Vit(_) => panic!("the fixture is a ModifiedResNet"),
    }
    m
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Normalised pixels of the named photos at `size` (CCD's square resize, ImageNet statistics).
fn pixels(names: &[String], size: usize) -> Vec<Vec<f32>> {
    names.iter().map(|n| load_one(&coco().join(n), &clip_input(size)).unwrap().0).collect()
}

fn f32s(io: &std::collections::BTreeMap<String, Tensor>, k: &str) -> Vec<f32> {
    io[k].to_f32().unwrap().into_f32_vec().unwrap()
}

/// Share of entries within `tol` relative (against max(|b|, 1e-6)).
fn share_close(a: &[f32], b: &[f32], tol: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let ok = a.iter().zip(b).filter(|(x, y)| (*x - *y).abs() <= tol * y.abs().max(1e-6)).count();
    ok as f32 / a.len() as f32
}

#[test]
fn stage0_matches_the_official_lines() {
    let io = common::load_io(&dir().join("io.safetensors"));
    let m = meta();
    let imgs = names(&m["stage0"]["images"]);
    let size = m["stage0"]["size"].as_u64().unwrap() as usize;
    let text = io["text_weights"].to_f32().unwrap();
    let c = text.dim(0);
    let model = clip();
    let px: Vec<f32> = pixels(&imgs, size).concat();
    let scores = clip_scores(&model, &Tensor::from_f32(&[imgs.len(), 3, size, size], px).unwrap(), &text).unwrap();
    let want = f32s(&io, "stage0.scores");
    let s = share_close(&scores, &want, 1e-4);
    assert!(s >= 0.999, "scores: {:.4} of entries within 1e-4 (max rel {:.2e})", s, common::rel_err(&scores, &want));

    let got = global_labels(&scores, c, FLOOR, ENTROPY_MAX).unwrap();
    let flags: Vec<u8> = f32s(&io, "stage0.flags").iter().map(|&v| v as u8).collect();
    assert_eq!(got.flags, flags, "flags");
    assert!(flags.contains(&0) && flags.contains(&1), "the fixture has confident and uncertain images");
    let bias = f32s(&io, "stage0.bias");
    let labels = f32s(&io, "stage0.labels");
    // the official bias is NaN (stored -1) for a class no confident image has as top-1
    let nan_cols: Vec<usize> = (0..c).filter(|&j| bias[j] < 0.0).collect();
    assert_eq!(got.never_top1, nan_cols);
    for &j in &nan_cols {
        assert_eq!(got.bias[j], 1.0);
        for i in 0..imgs.len() {
            assert_eq!(got.labels[i * c + j], scores[i * c + j].clamp(FLOOR, 1.0));
        }
    }
    let keep: Vec<usize> = (0..c).filter(|j| !nan_cols.contains(j)).collect();
    assert!(keep.len() >= c / 2);
    let (gb, wb): (Vec<f32>, Vec<f32>) = keep.iter().map(|&j| (got.bias[j], bias[j])).unzip();
    assert!(share_close(&gb, &wb, 1e-4) >= 0.999, "bias {gb:?} vs {wb:?}");
    let (gl, wl): (Vec<f32>, Vec<f32>) =
        (0..imgs.len()).flat_map(|i| keep.iter().map(move |&j| i * c + j)).map(|k| (got.labels[k], labels[k])).unzip();
    let s = share_close(&gl, &wl, 1e-4);
    assert!(s >= 0.999, "labels: {s:.4} within 1e-4 (max rel {:.2e})", common::rel_err(&gl, &wl));
}

#[test]
fn stage2_matches_the_official_loop_body() {
    let io = common::load_io(&dir().join("io.safetensors"));
    let m = meta();
    let st = &m["stage2"];
    let imgs = names(&st["images"]);
    let size = st["size"].as_u64().unwrap() as usize;
    let text = io["text_weights"].to_f32().unwrap();
    let c = text.dim(0);
    let classifier = load_official_classifier(&dir().join("classifier.safetensors"), c).unwrap();
    assert_eq!(classifier.cfg.alpha, 3.0);
    let px = pixels(&imgs, size);

    // the classifier's scores
    let want_probs = f32s(&io, "stage2.probs");
    for (i, p) in px.iter().enumerate() {
        let (probs, _, _, _) = classify(&classifier, p, 1, size, size).unwrap();
        let e = common::rel_err(&probs, &want_probs[i * c..(i + 1) * c]);
        assert!(e < 1e-4, "image {i}: sigmoid scores off by {e:.2e}");
    }

    let bias_official = f32s(&io, "stage2.bias");
    let bias: Vec<f32> = bias_official.iter().map(|&b| if b < 0.0 { 1.0 } else { b }).collect();
    let old_all = f32s(&io, "stage2.labels_in");
    let old: Vec<Vec<f32>> = old_all.chunks(c).map(|r| r.iter().map(|&v| v.max(0.0)).collect()).collect();
    let opt = RelabelOptions { offset: st["offset"].as_u64().unwrap() as usize, ..RelabelOptions::default() };
    let threshold = st["threshold"].as_f64().unwrap();
    let clip = clip();
    let setup = RelabelSetup { clip: &clip, text: &text, bias: &bias, threshold, clip_batch: 8, opt: &opt };
    let up = relabel_batch(&setup, &classifier, &RelabelBatch { images: &px, ih: size, iw: size, old: &old }).unwrap();

    // boxes: the same (image, class) pairs, the same corners and resized sizes
    let want_boxes = st["boxes"].as_array().unwrap();
    let got_boxes: Vec<(usize, usize, [usize; 4], [usize; 2])> = up
        .iter()
        .enumerate()
        .flat_map(|(i, u)| {
            u.crops.iter().map(move |p| (i, p.class, [p.x0, p.y0, p.x1, p.y1], [p.out_hw.0, p.out_hw.1]))
        })
        .collect();
    assert_eq!(got_boxes.len(), want_boxes.len(), "crops");
    let same = want_boxes
        .iter()
        .filter(|b| {
            let key = (b["image"].as_u64().unwrap() as usize, b["class"].as_u64().unwrap() as usize);
            let bx: Vec<usize> = b["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let hw: Vec<usize> =
                b["crop_hw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            got_boxes
                .iter()
                .any(|g| (g.0, g.1) == key && g.2.as_slice() == bx.as_slice() && g.3.as_slice() == hw.as_slice())
        })
        .count();
    let share = same as f32 / want_boxes.len() as f32;
    if same < want_boxes.len() {
        eprintln!("official boxes: {want_boxes:?}\nengine boxes: {got_boxes:?}");
    }
    assert!(share >= 0.98, "boxes: {same} of {} the same", want_boxes.len());

    // labels, where the official bias is finite
    let want = f32s(&io, "stage2.labels_out");
    let keep: Vec<usize> = (0..imgs.len() * c).filter(|&k| bias_official[k % c] >= 0.0).collect();
    let gl: Vec<f32> = keep.iter().map(|&k| up[k / c].label[k % c]).collect();
    let wl: Vec<f32> = keep.iter().map(|&k| want[k]).collect();
    let s = share_close(&gl, &wl, 1e-3);
    assert!(s >= 0.99, "labels: {s:.4} within 1e-3 (max rel {:.2e})", common::rel_err(&gl, &wl));
    // the update moved the labels (the crops matter)
    let moved = keep.iter().filter(|&&k| (want[k] - old_all[k]).abs() > 1e-3).count();
    assert!(moved * 2 > keep.len(), "only {moved} of {} labels changed", keep.len());
}

#[test]
fn calibration_matches_the_official_loop() {
    let io = common::load_io(&dir().join("io.safetensors"));
    let m = meta();
    let cal = &m["calib"];
    let imgs = names(&cal["images"]);
    let size = cal["size"].as_u64().unwrap() as usize;
    let c = io["text_weights"].dim(0);
    let classifier = load_official_classifier(&dir().join("classifier.safetensors"), c).unwrap();
    let probs: Vec<f32> =
        pixels(&imgs, size).iter().flat_map(|p| classify(&classifier, p, 1, size, size).unwrap().0).collect();
    let want = f32s(&io, "calib.probs");
    assert!(common::rel_err(&probs, &want) < 1e-4);
    let order: Vec<usize> =
        io["calib.order"].to_f32().unwrap().into_f32_vec().unwrap().iter().map(|&v| v as usize).collect();
    let visited: Vec<f32> = order.iter().flat_map(|&i| probs[i * c..(i + 1) * c].to_vec()).collect();
    let got = calibrate_threshold(&visited, c, 0.05, 0.001, 4.0);
    let want_t = cal["threshold"].as_f64().unwrap();
    assert_eq!(got.threshold, want_t, "windows {:?}", got.windows);
}
