//! `cdul init` against tools/cdul_reference.py (torch + open_clip, a random-weight CLIP with a
//! ModifiedResNet image tower, tests/fixtures/cdul/tiny_clip.safetensors) on six coco128
//! photos: labels, global, alpha and beta within 1e-3 relative on at least 99% of the entries;
//! the image-to-image variation (small with random weights) within 5%; a too-small and an
//! unreadable image skipped and named; `--from L0 --zeta Z` equal to a full run with --zeta Z.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::methods::cdul::LabelFile;
use labelfree::models::clip::weights::load_safetensors;

fn coco128_images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

struct Reference {
    images: Vec<String>,
    classes: Vec<String>,
    tensors: std::collections::BTreeMap<String, labelfree::Tensor>,
    meta: std::collections::HashMap<String, String>,
}

fn reference(name: &str) -> Reference {
    let (tensors, meta) = load_safetensors(&fixtures().join(format!("cdul/{name}.safetensors"))).unwrap();
    Reference {
        images: serde_json::from_str(&meta["images"]).unwrap(),
        classes: serde_json::from_str(&meta["classes"]).unwrap(),
        tensors,
        meta,
    }
}

/// A csv dataset of the reference's photos plus a 1 x 2 PNG and a file that is no image.
fn dataset(dir: &Path, r: &Reference) {
    std::fs::write(dir.join("classes.txt"), r.classes.join("\n")).unwrap();
    let mut csv = String::from("path,labels\n");
    for (k, im) in r.images.iter().enumerate() {
        std::fs::copy(coco128_images().join(im), dir.join(im)).unwrap();
        csv.push_str(&format!("{im},{}\n", r.classes[k % r.classes.len()]));
    }
    let f = std::fs::File::create(dir.join("tiny.png")).unwrap();
    let mut enc = png::Encoder::new(f, 1, 2);
    enc.set_color(png::ColorType::Rgb);
    enc.write_header().unwrap().write_image_data(&[200; 6]).unwrap();
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg at all").unwrap();
    csv.push_str(&format!("tiny.png,{}\nbroken.jpg,{}\n", r.classes[0], r.classes[1]));
    std::fs::write(dir.join("split.csv"), csv).unwrap();
}

fn init(dir: &Path, out: &str, extra: &[&str]) -> (bool, String) {
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let mut args = vec!["cdul", "init", "--dataset", "csv", "--root", dir.to_str().unwrap(), "--split", "split"];
    args.extend(["--clip", clip.to_str().unwrap(), "--batch", "4"]);
    let out = dir.join(out);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    run(&args)
}

fn compare(r: &Reference, got: &LabelFile) {
    assert_eq!(got.paths, r.images);
    assert_eq!(got.classes, r.classes);
    let s = got.scores.as_ref().expect("init writes global, alpha, beta");
    let c = r.classes.len();
    for (name, ours) in [("labels", &got.labels), ("global", &s.global), ("alpha", &s.alpha), ("beta", &s.beta)] {
        let want = r.tensors[name].f32s().unwrap();
        assert_eq!(ours.len(), want.len(), "{name}");
        let bad = ours.iter().zip(want).filter(|(a, b)| (*a - *b).abs() > 1e-3 * b.abs()).count();
        let worst = ours.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-30)).fold(0.0f32, f32::max);
        eprintln!("{name}: {bad} of {} entries beyond 1e-3 relative (worst {worst:.2e})", want.len());
        assert!(bad * 100 <= want.len(), "{name}: {bad} of {} entries beyond 1e-3 relative", want.len());
        // With random weights the images differ little: the variation across images must match
        // too (a wrong tile or crop would change it, not the mean).
        let dev = |x: &[f32]| -> Vec<f64> {
            let n = x.len() / c;
            let mean: Vec<f64> = (0..c).map(|k| (0..n).map(|i| x[i * c + k] as f64).sum::<f64>() / n as f64).collect();
            x.iter().enumerate().map(|(j, &v)| (v as f64 - mean[j % c]) / mean[j % c].abs().max(1e-30)).collect()
        };
        let (dg, dw) = (dev(ours), dev(want));
        let num: f64 = dg.iter().zip(&dw).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        let den: f64 = dw.iter().map(|b| b * b).sum::<f64>().sqrt();
        eprintln!("{name}: image-to-image variation {den:.2e}, its relative error {:.2e}", num / den);
        assert!(num <= 0.05 * den, "{name}: variation across images off by {:.3} relative", num / den);
    }
}

#[test]
fn init_matches_open_clip_reference_and_recombines_exactly() {
    let r = reference("init");
    let tmp = TempDir::new("cdul_init");
    let dir = tmp.path();
    dataset(dir, &r);
    let (ok, err) = init(dir, "l0.safetensors", &[]);
    assert!(ok, "{err}");
    let l0 = LabelFile::read(&dir.join("l0.safetensors")).unwrap();
    compare(&r, &l0);
    assert_eq!(l0.meta["zeta"], "0.1");
    assert_eq!(l0.meta["grid"], "3");
    // The two bad files: skipped, named, counted.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("l0.safetensors.report.json")).unwrap()).unwrap();
    assert_eq!(report["extra"]["images_skipped_unreadable_or_small"], 2, "{report}");
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains("tiny.png")
            && skipped.contains("smaller than the 3 x 3 grid")
            && skipped.contains("broken.jpg"),
        "{skipped}"
    );
    assert!(report["extra"]["metrics"]["map_labels"].is_number(), "{report}");
    assert!(err.contains("mAP"), "{err}");

    // --from with another zeta equals a full run with it, bit for bit.
    let (ok, err) = init(dir, "full05.safetensors", &["--zeta", "0.5"]);
    assert!(ok, "{err}");
    let from = dir.join("l0.safetensors");
    let out = dir.join("from05.safetensors");
    let (ok, err) =
        run(&["cdul", "init", "--from", from.to_str().unwrap(), "--zeta", "0.5", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (full, rec) = (LabelFile::read(&dir.join("full05.safetensors")).unwrap(), LabelFile::read(&out).unwrap());
    assert_eq!(full.paths, rec.paths);
    assert_eq!(full.scores, rec.scores);
    assert!(full.labels.iter().zip(&rec.labels).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_ne!(full.labels, l0.labels, "zeta 0.5 should change some labels of this fixture");
    assert_eq!(rec.meta["zeta"], "0.5");
}

#[test]
fn init_grid2_overlap_matches_reference() {
    let r = reference("init_g2");
    assert_eq!((r.meta["grid"].as_str(), r.meta["overlap"].as_str(), r.meta["zeta"].as_str()), ("2", "0.25", "0.3"));
    let tmp = TempDir::new("cdul_init_g2");
    let dir = tmp.path();
    dataset(dir, &r);
    let (ok, err) = init(dir, "l.safetensors", &["--grid", "2", "--overlap", "0.25", "--zeta", "0.3"]);
    assert!(ok, "{err}");
    compare(&r, &LabelFile::read(&dir.join("l.safetensors")).unwrap());
}
