//! The CPU engine against tiny random-weight models made by open_clip and transformers
//! (tests/fixtures/models, made by tools/make_fixtures.py; see its README). Every output the
//! methods use is compared at relative error <= 1e-4.

mod common;

use labelfree::models::clip::{ClipModel, VisionEncoder, VitRequest};
use labelfree::ops::attention::AttnMask;
use labelfree::tensor::Storage;
use labelfree::Tensor;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> (ClipModel, std::collections::BTreeMap<String, Tensor>) {
    let dir = common::fixtures().join("models");
    let model =
        ClipModel::load(&dir.join(format!("{name}.safetensors")), None, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, common::load_io(&dir.join(format!("{name}.io.safetensors"))))
}

fn ids(t: &Tensor) -> Tensor {
    let v: Vec<i32> = t.f32s().unwrap().iter().map(|&x| x as i32).collect();
    Tensor::new(t.shape(), Storage::I32(v)).unwrap()
}

/// Layer `l` of an (L, B, T, T) stack.
fn layer(t: &Tensor, l: usize) -> Tensor {
    t.narrow0(l, l + 1).unwrap().reshape(&t.shape()[1..]).unwrap()
}

fn check_vit(name: &str) {
    let (model, io) = fixture(name);
    let VisionEncoder::Vit(vit) = &model.visual else { panic!("{name} is not a ViT") };
    let layers = vit.cfg.layers;

    let full = VitRequest { tokens: true, attn_probs: true, ..Default::default() };
    let out = vit.forward(&io["pixels"], &full).unwrap();
    common::assert_close(&format!("{name} embedding"), &out.pooled, &io["embedding"], TOL);
    common::assert_close(&format!("{name} tokens"), out.tokens.as_ref().unwrap(), &io["tokens"], TOL);
    assert_eq!(out.attn.len(), layers);
    for l in 0..layers {
        common::assert_close(&format!("{name} attn[{l}]"), &out.attn[l], &layer(&io["attn"], l), TOL);
    }
    // encode_image is the pooled output of the plain pass.
    common::assert_close(
        &format!("{name} encode_image"),
        &model.encode_image(&io["pixels"]).unwrap(),
        &io["embedding"],
        TOL,
    );

    // TagCLIP's last-layer diagonal mask; probabilities recorded before the mask.
    let diag = io["mask_diag_last"].f32s().unwrap();
    let mut masks = vec![AttnMask::default(); layers];
    masks[layers - 1].shared = Some(diag);
    let req = VitRequest { tokens: true, attn_probs: true, probs_before_mask: true, masks, ..Default::default() };
    let out = vit.forward(&io["pixels"], &req).unwrap();
    common::assert_close(&format!("{name} embedding_diag"), &out.pooled, &io["embedding_diag"], TOL);
    common::assert_close(&format!("{name} tokens_diag"), out.tokens.as_ref().unwrap(), &io["tokens_diag"], TOL);
    for l in 0..layers {
        common::assert_close(&format!("{name} attn_diag[{l}]"), &out.attn[l], &layer(&io["attn_diag"], l), TOL);
    }

    // Per-sample mask on the CLS query row, every layer (TagCLIP's CWR).
    let cls = io["mask_cls_row"].f32s().unwrap();
    let masks = vec![AttnMask { cls_row: Some(cls), ..Default::default() }; layers];
    let out = vit.forward(&io["pixels"], &VitRequest { tokens: true, masks, ..Default::default() }).unwrap();
    common::assert_close(&format!("{name} embedding_clsrow"), &out.pooled, &io["embedding_clsrow"], TOL);
    common::assert_close(&format!("{name} tokens_clsrow"), out.tokens.as_ref().unwrap(), &io["tokens_clsrow"], TOL);

    // Another input size: the positional grid is resized bilinearly.
    let out = vit.forward(&io["pixels_big"], &VitRequest { tokens: true, ..Default::default() }).unwrap();
    common::assert_close(&format!("{name} embedding_big"), &out.pooled, &io["embedding_big"], TOL);
    common::assert_close(&format!("{name} tokens_big"), out.tokens.as_ref().unwrap(), &io["tokens_big"], TOL);

    check_text(name, &model, &io);
}

fn check_text(name: &str, model: &ClipModel, io: &std::collections::BTreeMap<String, Tensor>) {
    let te = model.encode_text(&ids(&io["text_tokens"])).unwrap();
    common::assert_close(&format!("{name} text_embedding"), &te, &io["text_embedding"], TOL);
    let ls = io["logit_scale"].f32s().unwrap()[0];
    assert!((model.logit_scale - ls).abs() <= 1e-6 * ls.abs().max(1.0), "{name} logit_scale");
}

#[test]
fn vit_openclip_quickgelu_matches_open_clip() {
    check_vit("vit_openclip_quickgelu");
}

#[test]
fn vit_openclip_gelu_matches_open_clip() {
    check_vit("vit_openclip_gelu");
}

#[test]
fn vit_hf_matches_transformers() {
    check_vit("vit_hf");
}

#[test]
fn modified_resnet_matches_open_clip() {
    let name = "rn_openclip";
    let (model, io) = fixture(name);
    let VisionEncoder::ResNet(rn) = &model.visual else { panic!("not a ResNet") };
    let out = rn.forward(&io["pixels"], true).unwrap();
    common::assert_close("rn features", out.features.as_ref().unwrap(), &io["features"], TOL);
    common::assert_close("rn embedding", &out.pooled, &io["embedding"], TOL);
    let out = rn.forward(&io["pixels_big"], true).unwrap();
    common::assert_close("rn features_big", out.features.as_ref().unwrap(), &io["features_big"], TOL);
    common::assert_close("rn embedding_big", &out.pooled, &io["embedding_big"], TOL);
    check_text(name, &model, &io);
}
