//! TagCLIP against the official code (tools/make_tagclip_fixtures.py tiny): the whole pipeline
//! with a tiny ViT-16 on six small photos, and its stages on synthetic inputs (the official
//! `mask_attn`, `scoremap2bbox` and `cwr` with a stub encoder).

mod common;

use std::collections::BTreeMap;

use labelfree::methods::tagclip::stages::{self, CellBox};
use labelfree::methods::tagclip::{prepare, run_batch, ClassText, TagclipOptions};
use labelfree::models::clip::ClipModel;
use labelfree::Tensor;

fn io() -> BTreeMap<String, Tensor> {
    common::load_io(&common::fixtures().join("tagclip/tiny.io.safetensors"))
}

fn doc() -> serde_json::Value {
    let p = common::fixtures().join("tagclip/tiny.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn f32s<'a>(io: &'a BTreeMap<String, Tensor>, k: &str) -> &'a [f32] {
    io.get(k).unwrap_or_else(|| panic!("fixture tensor {k}")).f32s().unwrap()
}

fn grid(io: &BTreeMap<String, Tensor>, k: &str) -> (usize, usize) {
    let t = &io[k];
    let v = t.to_dtype(labelfree::tensor::DType::F32).unwrap();
    let v = v.f32s().unwrap();
    (v[0] as usize, v[1] as usize)
}

/// Entry-wise relative error |a - b| / |b| (b = 0: absolute).
fn entry_errs(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| if *y == 0.0 { (x - y).abs() } else { ((x - y) / y).abs() }).collect()
}

#[test]
fn tiny_pipeline_matches_official() {
    let io = io();
    let doc = doc();
    let dir = common::fixtures().join("tagclip");
    let model = ClipModel::load(&dir.join("tiny.safetensors"), None, None).unwrap();
    assert!((model.logit_multiplier() - 50.0).abs() < 1e-3, "fixture logit scale is 50");
    let classes: Vec<String> =
        doc["classes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let bg: Vec<String> =
        doc["background"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let mut names = classes.clone();
    names.extend(bg);
    let text_t = &io["text_features"];
    let text =
        ClassText::from_embeddings(names, classes.len(), text_t.f32s().unwrap().to_vec(), text_t.dim(1)).unwrap();
    let transform = labelfree::methods::tagclip::transform_for(&model).unwrap();
    let opts = TagclipOptions::default();
    let mut worst = 0.0f32;
    for (i, im) in doc["images"].as_array().unwrap().iter().enumerate() {
        let prep = prepare(&dir.join(im["file"].as_str().unwrap()), &transform).unwrap();
        assert_eq!((prep.height as u64, prep.width as u64), (im["h"].as_u64().unwrap(), im["w"].as_u64().unwrap()));
        let r = run_batch(&model, &[&prep], &text, &opts).unwrap().remove(0);
        let name = im["name"].as_str().unwrap();
        let local = entry_errs(&r.local, f32s(&io, &format!("image{i}.local")));
        let scores = entry_errs(&r.scores, f32s(&io, &format!("image{i}.scores")));
        let lw = local.iter().fold(0.0f32, |m, v| m.max(*v));
        let sw = scores.iter().fold(0.0f32, |m, v| m.max(*v));
        eprintln!(
            "{name}: {}x{} crops {} (official {}), local max rel err {lw:.2e}, scores {sw:.2e}, tags {:?}",
            r.height,
            r.width,
            r.cwr.crops.len(),
            im["crops"],
            r.tags
        );
        let want_tags: Vec<usize> =
            im["tags"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(r.tags, want_tags, "{name}: tags");
        assert_eq!(r.cwr.crops.len() as u64, im["crops"].as_u64().unwrap(), "{name}: number of CWR crops");
        worst = worst.max(sw).max(lw);
    }
    // The smallest probabilities (down to 1e-14) carry the largest relative error: exp of a
    // logit 50 * cos whose cosine is off by ~1e-6. Typical entries agree to ~1e-6.
    assert!(worst < 2e-4, "worst entry relative error {worst:.3e}");
}

#[test]
fn dmar_matches_official_mask_attn() {
    let io = io();
    let n_cases = doc()["dmar_cases"].as_u64().unwrap();
    let opts = TagclipOptions::default();
    for i in 0..n_cases {
        let (gh, gw) = grid(&io, &format!("dmar{i}.grid"));
        let w = f32s(&io, &format!("dmar{i}.attn"));
        let coarse = f32s(&io, &format!("dmar{i}.coarse"));
        let want = f32s(&io, &format!("dmar{i}.refined"));
        let c = coarse.len() / (gh * gw);
        let (_, refined) = stages::dmar_refine(w, coarse, gh, gw, c, &opts);
        let e = common::rel_err(&refined, want);
        eprintln!("dmar case {i} ({gh}x{gw}, {c} classes): rel err {e:.2e}");
        assert!(e < 1e-5, "case {i}: {e}");
    }
}

#[test]
fn scoremap_boxes_match_official() {
    let io = io();
    let n_cases = doc()["bbox_cases"].as_u64().unwrap();
    for i in 0..n_cases {
        let (gh, gw) = grid(&io, &format!("bbox{i}.grid"));
        let map = f32s(&io, &format!("bbox{i}.map"));
        let want_t = io[&format!("bbox{i}.boxes")].to_dtype(labelfree::tensor::DType::F32).unwrap();
        let mut want: Vec<[usize; 4]> = want_t
            .f32s()
            .unwrap()
            .chunks(4)
            .map(|b| [b[0] as usize, b[1] as usize, b[2] as usize, b[3] as usize])
            .collect();
        let mean = (map.iter().map(|&v| v as f64).sum::<f64>() / map.len() as f64) as f32;
        let mut got: Vec<[usize; 4]> = stages::scoremap_boxes(map, gh, gw, mean, false, false)
            .iter()
            .map(|b: &CellBox| [b.x0, b.y0, b.x1, b.y1])
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "bbox case {i} ({gh}x{gw})");
    }
}

/// tools/make_tagclip_fixtures.py's StubEncoder: per-channel means over the kept 16 x 16 cells
/// of the 224 x 224 crop, the kept fraction, 1.
fn stub_features(pixels: &[f32], cls_row: &[f32]) -> Vec<f32> {
    let keep: Vec<bool> = cls_row[1..].iter().map(|&v| v == 0.0).collect();
    let nk = keep.iter().filter(|&&k| k).count();
    let mut f = Vec::new();
    for c in 0..3 {
        let mut s = 0.0f32;
        for (cell, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
            let (cy, cx) = (cell / 14, cell % 14);
            let mut m = 0.0f32;
            for y in 0..16 {
                for x in 0..16 {
                    m += pixels[c * 224 * 224 + (cy * 16 + y) * 224 + cx * 16 + x];
                }
            }
            s += m / 256.0;
        }
        f.push(s / nk.max(1) as f32);
    }
    f.push(nk as f32 / 196.0);
    f.push(1.0);
    f
}

#[test]
fn cwr_matches_official_with_stub_encoder() {
    let io = io();
    let n_cases = doc()["cwr_cases"].as_u64().unwrap();
    let opts = TagclipOptions::default();
    let mut stops = 0;
    for i in 0..n_cases {
        let (gh, gw) = grid(&io, &format!("cwr{i}.grid"));
        let refined = f32s(&io, &format!("cwr{i}.refined"));
        let image = f32s(&io, &format!("cwr{i}.image"));
        let text = f32s(&io, &format!("cwr{i}.text"));
        let local = f32s(&io, &format!("cwr{i}.local"));
        let want = f32s(&io, &format!("cwr{i}.final"));
        let c = refined.len() / (gh * gw);
        let plan = stages::cwr_plan(refined, local, gh, gw, c, &opts);
        stops += plan.stopped_at.is_some() as usize;
        let mut feats = Vec::new();
        for crop in &plan.crops {
            let (px, row) = stages::crop_inputs(image, gh * 16, gw * 16, crop, 16, 224).unwrap();
            feats.extend(stub_features(&px, &row));
        }
        let got = stages::fuse(local, &plan.crops, &feats, text, 5, 20.0, 0.5);
        let e = common::rel_err(&got, want);
        eprintln!(
            "cwr case {i} ({gh}x{gw}): candidates {:?}, crops {}, stop {:?}, rel err {e:.2e}",
            plan.candidates,
            plan.crops.len(),
            plan.stopped_at
        );
        assert!(e < 1e-5, "case {i}: got {got:?}, official {want:?}");
    }
    assert!(stops >= 2, "the fixture has cases that end in the early stop");
}
