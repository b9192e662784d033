//! The image pipeline on a tiny CLIP: the loader (order, grouping, bad files) and the batched
//! encode loop built on it.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_sample, write, TempDir};
use labelfree::data::loader::Loader;
use labelfree::data::transforms::Transform;
use labelfree::methods::encode::encode_images;
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
    let paths: Vec<PathBuf> = ["good.png", "tall.png", "empty.jpg", "one.jpg", "good.jpg"].iter().map(|n| root.join("img").join(n)).collect();
    // TagCLIP's transform gives several sizes: groups inside a batch.
    let t = Transform::PatchMultiple { patch: 8, interp: labelfree::data::transforms::Interpolation::Bicubic, norm: labelfree::data::transforms::CLIP_NORM };
    let all = encode_images(&model, &paths, &t, 4, false).unwrap();
    assert_eq!(all.paths, [paths[0].clone(), paths[1].clone(), paths[3].clone(), paths[4].clone()]);
    assert_eq!(all.skipped.len(), 1);
    for (k, p) in all.paths.iter().enumerate() {
        let one = encode_images(&model, std::slice::from_ref(p), &t, 1, false).unwrap();
        common::assert_close(&format!("{}", p.display()), &one.embeddings, &Tensor::from_f32(&[1, 32], all.embeddings.f32s().unwrap()[k * 32..(k + 1) * 32].to_vec()).unwrap(), 1e-5);
    }
}
