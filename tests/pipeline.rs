//! The dataset pipeline end to end on a tiny CLIP: the loader (order, grouping, bad files),
//! zero-shot over a dataset folder full of bad images, the embedding cache, and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_sample, write, TempDir};
use labelfree::data::datasets::{self, DatasetKind, LoadOptions};
use labelfree::data::loader::Loader;
use labelfree::data::transforms::Transform;
use labelfree::methods::cache::CacheEntry;
use labelfree::methods::encode::{clip_transform, encode_images};
use labelfree::methods::zeroshot;
use labelfree::Tensor;

/// A CSV dataset with good images and every kind of bad one. Returns the good paths' rels.
fn messy_tree(root: &Path) -> Vec<&'static str> {
    write(&root.join("classes.txt"), "cat\ndog\nbird\n");
    common::write_png(&root.join("img/good.png"), 40, 30, 1);
    common::write_png(&root.join("img/tall.png"), 9, 50, 2);
    copy_sample("jpeg_420.jpg", &root.join("img/good.jpg"));
    copy_sample("jpeg_cmyk.jpg", &root.join("img/cmyk.jpg"));
    copy_sample("png_rgb16.png", &root.join("img/rgb16.png"));
    copy_sample("png_1x1.png", &root.join("img/one.png"));
    copy_sample("jpeg_1x1.jpg", &root.join("img/one.jpg"));
    copy_sample("bad_truncated_half.jpg", &root.join("img/truncated.jpg"));
    write(&root.join("img/empty.jpg"), "");
    write(
        &root.join("all.csv"),
        "path,labels\n\
         img/good.png,cat\n\
         img/truncated.jpg,dog\n\
         img/tall.png,dog;bird\n\
         img/good.jpg,bird\n\
         img/empty.jpg,cat\n\
         img/cmyk.jpg,cat;dog\n\
         img/missing.jpg,dog\n\
         img/rgb16.png,bird\n\
         img/one.png,cat\n\
         img/one.jpg,dog\n",
    );
    vec!["img/good.png", "img/tall.png", "img/good.jpg", "img/cmyk.jpg", "img/rgb16.png", "img/one.png", "img/one.jpg"]
}

#[test]
fn loader_keeps_order_groups_sizes_and_reports_failures() {
    let tmp = TempDir::new("loader");
    let root = tmp.path();
    messy_tree(root);
    let names = ["good.png", "empty.jpg", "tall.png", "missing.jpg", "one.png", "truncated.jpg", "good.jpg"];
    let paths: Vec<PathBuf> = names.iter().map(|n| root.join("img").join(n)).collect();
    // Variable output sizes (TagCLIP's transform): each batch grouped by size.
    let mut loader = Loader::spawn(paths.clone(), Transform::TAGCLIP, 3, 1);
    let (mut seen, mut failed, mut covered) = (Vec::new(), Vec::new(), 0);
    while let Some(b) = loader.next_batch() {
        assert_eq!(b.start, covered);
        covered += b.len;
        for g in &b.groups {
            assert_eq!(g.pixels.len(), g.indices.len() * 3 * g.height * g.width);
            assert_eq!(g.height % 16, 0);
            seen.extend(g.indices.iter().copied());
        }
        failed.extend(b.failed);
        for g in b.groups {
            loader.recycle(g.pixels);
        }
    }
    let stats = loader.finish().unwrap();
    assert_eq!(covered, names.len());
    seen.sort();
    assert_eq!(seen, [0, 2, 4, 6]);
    let failed_idx: Vec<usize> = failed.iter().map(|f| f.0).collect();
    assert_eq!(failed_idx, [1, 3, 5]);
    assert!(failed[0].1.contains("0 bytes"), "{}", failed[0].1);
    assert!(failed[1].1.contains("cannot read file"), "{}", failed[1].1);
    assert!(failed[2].1.contains("truncated") || failed[2].1.contains("premature"), "{}", failed[2].1);
    assert_eq!((stats.decoded, stats.failed), (4, 3));

    // Fixed-size transform: decoded in place; the pixels equal the transform applied alone.
    let t = Transform::ClipCenterCrop { size: 32 };
    let mut loader = Loader::spawn(paths.clone(), t.clone(), 4, 2);
    let mut by_index = Vec::new();
    while let Some(b) = loader.next_batch() {
        for g in b.groups {
            for (k, &i) in g.indices.iter().enumerate() {
                by_index.push((i, g.pixels[k * 3 * 32 * 32..(k + 1) * 3 * 32 * 32].to_vec()));
            }
        }
    }
    loader.finish().unwrap();
    assert_eq!(by_index.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 2, 4, 6]);
    for (i, px) in by_index {
        let img = labelfree::data::decode::decode_image_file(&paths[i]).unwrap();
        assert_eq!(t.apply(&img).0, px, "{}", names[i]);
    }
}

#[test]
fn encode_images_batched_equals_one_by_one() {
    let tmp = TempDir::new("encode");
    let root = tmp.path();
    messy_tree(root);
    let model = common::tiny_clip(1);
    let paths: Vec<PathBuf> =
        ["good.png", "tall.png", "empty.jpg", "one.jpg", "good.jpg"].iter().map(|n| root.join("img").join(n)).collect();
    // TagCLIP's transform gives several sizes: groups inside a batch.
    let t = Transform::PatchMultiple {
        patch: 8,
        interp: labelfree::data::transforms::Interpolation::Bicubic,
        norm: labelfree::data::transforms::CLIP_NORM,
    };
    let all = encode_images(&model, &paths, &t, 4, false).unwrap();
    assert_eq!(all.paths, [paths[0].clone(), paths[1].clone(), paths[3].clone(), paths[4].clone()]);
    assert_eq!(all.skipped.len(), 1);
    for (k, p) in all.paths.iter().enumerate() {
        let one = encode_images(&model, std::slice::from_ref(p), &t, 1, false).unwrap();
        common::assert_close(
            &format!("{}", p.display()),
            &one.embeddings,
            &Tensor::from_f32(&[1, 32], all.embeddings.f32s().unwrap()[k * 32..(k + 1) * 32].to_vec()).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn zeroshot_over_a_folder_of_bad_images_scores_every_good_one() {
    let tmp = TempDir::new("messy");
    let root = tmp.path().join("data");
    let good = messy_tree(&root);
    let ds = datasets::load(DatasetKind::Csv, &root, "all", &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 10);
    let model = common::tiny_clip(7);
    let transform = clip_transform(&model, None).unwrap();
    let tok = labelfree::models::clip::tokenizer::ClipTokenizer::new().unwrap();
    let text = model.class_embeddings(&tok, &ds.classes, &["a photo of a {}."]).unwrap();
    let enc = zeroshot::encode_dataset(&model, &ds, &transform, 3, None, false).unwrap();
    let scored: Vec<&str> = enc.items.iter().map(|&i| ds.items[i].rel.as_str()).collect();
    assert_eq!(scored, good);
    let reasons: Vec<(&str, &str)> =
        enc.skipped.iter().map(|s| (s.path.rsplit('/').next().unwrap(), s.reason.as_str())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, "truncated.jpg");
    assert_eq!(reasons[1], ("empty.jpg", "empty file (0 bytes)"));
    assert_eq!(reasons[2].0, "missing.jpg");
    assert!(reasons[2].1.contains("cannot read file"));
    let scores = zeroshot::scores(&enc, &text, model.logit_multiplier()).unwrap();
    assert_eq!(scores.len(), good.len() * 3);
    for row in scores.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5 && row.iter().all(|v| v.is_finite()));
    }
    assert!(!enc.cache.enabled);
}

#[test]
fn embedding_cache_reuses_and_notices_changed_files() {
    let tmp = TempDir::new("cache");
    let root = tmp.path().join("data");
    let good = messy_tree(&root);
    let ds = datasets::load(DatasetKind::Csv, &root, "all", &LoadOptions::default()).unwrap();
    let model = common::tiny_clip(3);
    let transform = clip_transform(&model, None).unwrap();
    let entry = CacheEntry::new(
        &tmp.path().join("cache"),
        "random:tiny:seed=3",
        "QuickGelu",
        &ds.name,
        &ds.split,
        &transform.describe(),
    );
    let first = zeroshot::encode_dataset(&model, &ds, &transform, 4, Some(&entry), false).unwrap();
    assert_eq!((first.cache.reused, first.cache.encoded, first.cache.outcome()), (0, good.len(), "miss"));
    assert!(entry.file.is_file());
    let second = zeroshot::encode_dataset(&model, &ds, &transform, 4, Some(&entry), false).unwrap();
    assert_eq!((second.cache.reused, second.cache.encoded, second.cache.outcome()), (good.len(), 0, "hit"));
    assert_eq!(second.items, first.items);
    assert_eq!(second.embeddings.f32s().unwrap(), first.embeddings.f32s().unwrap());
    assert_eq!(second.skipped.len(), 3, "failures are retried, not cached");
    // A changed file is encoded again (its size changes).
    common::write_png(&root.join("img/good.png"), 41, 30, 9);
    let third = zeroshot::encode_dataset(&model, &ds, &transform, 4, Some(&entry), false).unwrap();
    assert_eq!((third.cache.reused, third.cache.encoded, third.cache.outcome()), (good.len() - 1, 1, "partial"));
    // Another key (e.g. another transform) is another file.
    let other =
        CacheEntry::new(&tmp.path().join("cache"), "random:tiny:seed=3", "QuickGelu", &ds.name, &ds.split, "other");
    assert_ne!(other.file, entry.file);
    assert!(other.load().rows.is_empty());
}

#[test]
fn weights_fingerprint_sees_changes() {
    let tmp = TempDir::new("fp");
    let src = common::fixtures().join("models/vit_openclip_gelu.safetensors");
    let a = labelfree::methods::cache::weights_fingerprint(&src).unwrap();
    assert!(a.starts_with("size="));
    let bytes = std::fs::read(&src).unwrap();
    let p = tmp.path().join("w.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(labelfree::methods::cache::weights_fingerprint(&p).unwrap(), a);
    // The last byte (in the last sampled block), a byte of the header, and the size.
    let changed = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        std::fs::write(&p, &b).unwrap();
        labelfree::methods::cache::weights_fingerprint(&p).unwrap()
    };
    assert_ne!(changed(&|b| *b.last_mut().unwrap() ^= 1), a);
    assert_ne!(changed(&|b| b[20] ^= 1), a);
    assert_ne!(changed(&|b| b.push(0)), a);
}

fn labelfree(args: &[&str], cache: &Path) -> (String, std::process::ExitStatus) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).env("LABELFREE_CACHE", cache).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (text, out.status)
}

#[test]
fn cli_zeroshot_dataset_cache_and_eval() {
    let tmp = TempDir::new("cli");
    let root = tmp.path().join("data");
    let good = messy_tree(&root);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("preds.csv");
    let json = tmp.path().join("report.json");
    let (out_s, json_s, root_s) = (out.to_str().unwrap(), json.to_str().unwrap(), root.to_str().unwrap());
    let weights = common::tiny_full_vocab_weights(tmp.path());
    let w = weights.to_str().unwrap();
    let args = [
        "--threads",
        "2",
        "zeroshot",
        "--weights",
        w,
        "--dataset",
        "csv",
        "--root",
        root_s,
        "--split",
        "all",
        "--out",
        out_s,
        "--json",
        json_s,
    ];
    let (log, status) = labelfree(&args, &cache);
    assert!(status.success(), "{log}");
    assert!(log.contains("mAP"), "{log}");
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rep["images_total"], 10);
    assert_eq!(rep["images_ok"], good.len());
    assert_eq!(rep["cache"]["encoded"], good.len());
    let skipped: Vec<String> =
        rep["skipped"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(skipped.len(), 3);
    for bad in ["truncated.jpg", "empty.jpg", "missing.jpg"] {
        assert!(skipped.iter().any(|s| s.ends_with(bad)), "{bad} not in {skipped:?}");
    }
    let metrics = &rep["extra"]["metrics"];
    assert_eq!(metrics["ap"].as_array().unwrap().len(), 3);
    let preds = std::fs::read_to_string(&out).unwrap();
    assert_eq!(preds.lines().next().unwrap(), "path,cat,dog,bird");
    assert_eq!(preds.lines().count(), 1 + good.len());
    assert!(preds.lines().nth(1).unwrap().starts_with("img/good.png,"));

    // The second run takes every embedding from the cache.
    let (log, status) = labelfree(&args, &cache);
    assert!(status.success(), "{log}");
    let rep2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rep2["cache"]["reused"], good.len());
    assert_eq!(rep2["cache"]["encoded"], 0);
    assert!(log.contains("cache     hit"), "{log}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), preds);
    let mut no_cache = args.to_vec();
    no_cache.push("--no-cache");
    let (log, status) = labelfree(&no_cache, &cache);
    assert!(status.success() && log.contains("cache     off"), "{log}");

    // eval on the written scores gives the same metrics; a row for an unknown image and a
    // missing one are reported.
    let mut edited: Vec<String> = preds.lines().map(str::to_string).collect();
    edited.push("img/nothere.png,0.1,0.2,0.7".into());
    std::fs::write(&out, edited.join("\n")).unwrap();
    let ej = tmp.path().join("eval.json");
    let (log, status) = labelfree(
        &[
            "eval",
            "--dataset",
            "csv",
            "--root",
            root_s,
            "--split",
            "all",
            "--preds",
            out_s,
            "--json",
            ej.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(status.success(), "{log}");
    let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ej).unwrap()).unwrap();
    assert_eq!(ev["metrics"]["map"], metrics["map"]);
    assert_eq!(ev["metrics"]["ap"], metrics["ap"]);
    assert_eq!(ev["metrics"]["at_top_k"]["micro"], metrics["at_top_k"]["micro"]);
    assert_eq!(ev["matched"]["unknown_rows"], serde_json::json!(["img/nothere.png"]));
    assert_eq!(ev["matched"]["missing_rows"].as_array().unwrap().len(), 3);

    // The cache is keyed by the weights file: other bytes, another entry.
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let (log, status) = labelfree(&args, &cache);
    assert!(status.success() && log.contains("cache     miss"), "{log}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);

    // Input errors end with a message, not a panic.
    let (log, status) = labelfree(&["zeroshot", "--weights", w, "--dataset", "voc2007", "--root", root_s], &cache);
    assert!(!status.success() && log.contains("VOC2007") && !log.contains("panicked"), "{log}");
    let (log, status) = labelfree(
        &[
            "eval",
            "--dataset",
            "csv",
            "--root",
            root_s,
            "--split",
            "all",
            "--preds",
            root.join("classes.txt").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(!status.success() && log.contains("header") && !log.contains("panicked"), "{log}");
}
