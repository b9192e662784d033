//! Wrong, mismatched or truncated weights stop with a message that names the problem; they
//! never panic.

mod common;

use std::collections::HashMap;

use labelfree::models::clip::weights::{load_safetensors, save_safetensors};
use labelfree::models::clip::ClipModel;
use labelfree::Tensor;

fn fixture_path() -> std::path::PathBuf {
    common::fixtures().join("models/vit_openclip_quickgelu.safetensors")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("labelfree-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Rewrites the fixture with `edit` applied to its tensors.
fn edited(name: &str, edit: impl FnOnce(&mut std::collections::BTreeMap<String, Tensor>)) -> std::path::PathBuf {
    let (mut map, meta) = load_safetensors(&fixture_path()).unwrap();
    edit(&mut map);
    let pairs: Vec<(&str, &Tensor)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = save_safetensors(&pairs, &meta.into_iter().collect::<HashMap<_, _>>()).unwrap();
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_err(p: &std::path::Path) -> String {
    match ClipModel::load(p, None, None) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_file_is_reported() {
    let bytes = std::fs::read(fixture_path()).unwrap();
    for cut in [bytes.len() / 2, 100, 7, 0] {
        let p = tmp(&format!("truncated_{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = load_err(&p);
        assert!(msg.contains("truncated or corrupt"), "cut {cut}: {msg}");
    }
}

#[test]
fn missing_file_is_reported() {
    let msg = load_err(std::path::Path::new("/nonexistent/weights.safetensors"));
    assert!(msg.contains("/nonexistent/weights.safetensors"), "{msg}");
}

#[test]
fn mis_shaped_tensor_names_tensor_and_shapes() {
    let p = edited("misshaped.safetensors", |m| {
        m.insert("visual.ln_post.weight".into(), Tensor::from_f32(&[63], vec![1.0; 63]).unwrap());
    });
    let msg = load_err(&p);
    assert!(msg.contains("visual.ln_post.weight") && msg.contains("[64]") && msg.contains("[63]"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let p = edited("missing.safetensors", |m| {
        m.remove("visual.transformer.resblocks.1.mlp.c_fc.bias");
    });
    let msg = load_err(&p);
    assert!(msg.contains("visual.transformer.resblocks.1.mlp.c_fc.bias") && msg.contains("missing"), "{msg}");
}

#[test]
fn extra_tensor_is_named() {
    let p = edited("extra.safetensors", |m| {
        m.insert("visual.surprise".into(), Tensor::from_f32(&[2], vec![0.0; 2]).unwrap());
    });
    let msg = load_err(&p);
    assert!(msg.contains("visual.surprise") && msg.contains("unexpected"), "{msg}");
}

#[test]
fn wrong_architecture_is_reported() {
    let msg = match ClipModel::load(&fixture_path(), None, Some("ViT-B-16")) {
        Ok(_) => panic!("loaded as ViT-B-16"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("--arch ViT-B-16"), "{msg}");
    // A ResNet checkpoint with a ViT's class embedding is no consistent model either.
    let p = edited("mixed.safetensors", |m| {
        m.remove("visual.class_embedding");
    });
    let msg = load_err(&p);
    assert!(msg.contains("no image tower") || msg.contains("missing"), "{msg}");
}

#[test]
fn not_a_safetensors_file() {
    let p = tmp("garbage.safetensors");
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let msg = load_err(&p);
    assert!(msg.contains("not a readable safetensors file"), "{msg}");
}
