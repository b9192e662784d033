//! Which activation (GELU or QuickGELU) a checkpoint without `act` metadata gets: open_clip's
//! `open_clip_config.json` beside the file decides; with nothing beside it, QuickGELU with a
//! warning that names the fix.

mod common;

use std::path::{Path, PathBuf};

use labelfree::models::clip::weights::{load_safetensors, save_safetensors};
use labelfree::models::clip::ClipModel;
use labelfree::ops::activation::Activation;
use labelfree::Tensor;

/// The tiny open_clip fixture `name` without its `act` metadata, as `dir/model.safetensors`.
fn without_act(name: &str, dir: &Path) -> PathBuf {
    let (map, mut meta) = load_safetensors(&common::fixtures().join(format!("models/{name}.safetensors"))).unwrap();
    assert!(meta.remove("act").is_some());
    let pairs: Vec<(&str, &Tensor)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, save_safetensors(&pairs, &meta).unwrap()).unwrap();
    path
}

/// The image embedding error of `model` against the fixture's open_clip output.
fn embedding_err(model: &ClipModel, name: &str) -> f32 {
    let io = common::load_io(&common::fixtures().join(format!("models/{name}.io.safetensors")));
    let got = model.encode_image(&io["pixels"]).unwrap();
    common::rel_err(got.f32s().unwrap(), io["embedding"].f32s().unwrap())
}

#[test]
fn open_clip_config_beside_the_weights_decides_the_activation() {
    let dir = common::TempDir::new("act-openclip");
    let w = without_act("vit_openclip_gelu", dir.path());
    // open_clip writes quick_gelu only when it is true; a GELU model's model_cfg has none.
    let cfg = r#"{"model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2}},
                  "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073]}}"#;
    std::fs::write(dir.path().join("open_clip_config.json"), cfg).unwrap();
    let model = ClipModel::load(&w, None, None).unwrap();
    assert_eq!(model.config.act, Activation::Gelu);
    assert!(model.act_warning.is_none());
    assert!(model.act_source.contains("open_clip_config.json"), "{}", model.act_source);
    assert!(embedding_err(&model, "vit_openclip_gelu") < 1e-4);

    let dir = common::TempDir::new("act-openclip-quick");
    let w = without_act("vit_openclip_quickgelu", dir.path());
    std::fs::write(dir.path().join("open_clip_config.json"), r#"{"model_cfg": {"embed_dim": 32, "quick_gelu": true}}"#)
        .unwrap();
    let model = ClipModel::load(&w, None, None).unwrap();
    assert_eq!(model.config.act, Activation::QuickGelu);
    assert!(model.act_warning.is_none());
    assert!(embedding_err(&model, "vit_openclip_quickgelu") < 1e-4);
}

#[test]
fn weights_alone_assume_quick_gelu_and_warn_with_the_fix() {
    let dir = common::TempDir::new("act-alone");
    let w = without_act("vit_openclip_gelu", dir.path());
    let model = ClipModel::load(&w, None, None).unwrap();
    assert_eq!(model.config.act, Activation::QuickGelu);
    let warning = model.act_warning.as_deref().expect("a warning");
    assert!(warning.contains("--act gelu") && warning.contains("open_clip_config.json"), "{warning}");
    // The guess is wrong for this GELU model, which is why it warns.
    assert!(embedding_err(&model, "vit_openclip_gelu") > 1e-3);
    // The fix it names.
    let fixed = ClipModel::load(&w, Some(Activation::Gelu), None).unwrap();
    assert!(fixed.act_warning.is_none());
    assert!(embedding_err(&fixed, "vit_openclip_gelu") < 1e-4);
}
