//! The trimmed text passes (each batch of prompts encoded only up to its longest prompt's end
//! token) against the full 77-token pass: the same features within 1e-6 relative.

mod common;

use labelfree::models::clip::config::TextConfig;
use labelfree::models::clip::prompts;
use labelfree::models::clip::text::{trimmed_batches, TextEncoder, TEXT_BATCH};
use labelfree::models::clip::tokenizer::ClipTokenizer;
use labelfree::ops::activation::Activation;
use labelfree::Tensor;
use rand::SeedableRng;

/// TagCLIP's 85 templates filled with a few class names (long and short ones).
fn tagclip_prompts(classes: &[&str]) -> Vec<String> {
    classes.iter().flat_map(|c| prompts::tagclip_templates().into_iter().map(move |t| prompts::fill(t, c))).collect()
}

fn tower(width: usize, layers: usize, act: Activation, seed: u64) -> TextEncoder {
    let cfg = TextConfig { width, layers, heads: width / 32, context: 77, vocab: 49408, output_dim: 32 };
    TextEncoder::random(&cfg, act, &mut rand::rngs::StdRng::seed_from_u64(seed))
}

#[test]
fn trimmed_batches_cut_after_the_longest_end_token() {
    let tok = ClipTokenizer::new().unwrap();
    let prompts = tagclip_prompts(&["cat", "baseball glove", "tvmonitor", "hair drier"]);
    let tokens = tok.encode_batch(&prompts, 77);
    let batches = trimmed_batches(&tokens, 77, 100).unwrap();
    assert_eq!(batches.len(), 4, "340 prompts, 100 at a time");
    let mut seen = vec![false; prompts.len()];
    let mut last_len = 0;
    for b in &batches {
        let t = b.tokens.shape()[1];
        assert!(t >= last_len && t < 30, "batches sorted by length, all far below 77: {t}");
        last_len = t;
        let ids = match b.tokens.storage() {
            labelfree::tensor::Storage::I32(v) => v,
            _ => panic!("i32 ids"),
        };
        // Every row still holds its end token (49407), and the longest one ends the batch.
        assert!(ids.chunks_exact(t).all(|r| r.contains(&49407)));
        assert!(ids.chunks_exact(t).any(|r| r[t - 1] == 49407));
        for &r in &b.rows {
            assert!(!seen[r], "row {r} twice");
            seen[r] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
}

/// The trimmed pass against the full-context pass on the same tower, over more prompts than a
/// batch (rows come back from several passes of different lengths). Not bit-identical: the
/// batch of the shortest prompts (T = 11) differs in the last bits (the attention products go
/// through the `gemm` crate, whose small-matrix kernels presumably sum over the keys in
/// another order; the masked keys only add exact zeros).
fn assert_trimmed_equals_full(enc: &TextEncoder, prompts: &[String]) {
    let tok = ClipTokenizer::new().unwrap();
    let tokens = tok.encode_batch(prompts, 77);
    let full = enc.forward(&tokens).unwrap();
    let trimmed = enc.forward_trimmed(&tokens).unwrap();
    let rows = common::row_rel_err(trimmed.f32s().unwrap(), full.f32s().unwrap(), 32);
    eprintln!("{} prompts: worst row ||a - b|| / ||b|| {rows:.2e}", prompts.len());
    common::assert_close("trimmed vs full", &trimmed, &full, 1e-6);
}

#[test]
fn trimmed_pass_equals_the_full_77_token_pass() {
    let prompts = tagclip_prompts(&["person", "fire hydrant", "tvmonitor", "baseball glove"]);
    assert!(prompts.len() > TEXT_BATCH);
    assert_trimmed_equals_full(&tower(64, 2, Activation::QuickGelu, 3), &prompts);
    // A CLIP-wide layer (512, 16 heads of 32), GELU: other GEMM blockings, other head split.
    assert_trimmed_equals_full(&tower(512, 1, Activation::Gelu, 4), &prompts[..90]);
}

#[test]
fn class_embeddings_equal_the_per_class_full_passes() {
    use labelfree::models::clip::config::VitConfig;
    use labelfree::models::clip::{ClipConfig, ClipModel, VisionConfig};
    let config = ClipConfig {
        vision: VisionConfig::Vit(VitConfig { width: 64, layers: 1, heads: 2, patch: 8, grid: 4, output_dim: 32 }),
        text: Some(TextConfig { width: 64, layers: 2, heads: 2, context: 77, vocab: 49408, output_dim: 32 }),
        act: Activation::QuickGelu,
    };
    let model = ClipModel::random_from_config(config, 11);
    let tok = ClipTokenizer::new().unwrap();
    let classes: Vec<String> = ["dog", "dining table", "ground", "teddy bear"].iter().map(|s| s.to_string()).collect();
    let templates = prompts::tagclip_templates();
    let got = model.class_embeddings(&tok, &classes, &templates).unwrap();
    // The official loop: per class, all templates at 77 tokens, normalise, mean, normalise.
    let mut want = Vec::new();
    for c in &classes {
        let p: Vec<String> = templates.iter().map(|t| prompts::fill(t, c)).collect();
        let mut e = model.encode_text(&tok.encode_batch(&p, 77)).unwrap().into_f32_vec().unwrap();
        labelfree::ops::similarity::l2_normalize_cpu(&mut e, 32);
        let mut mean = vec![0.0f32; 32];
        for row in e.chunks_exact(32) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / templates.len() as f32);
        }
        labelfree::ops::similarity::l2_normalize_cpu(&mut mean, 32);
        want.extend(mean);
    }
    common::assert_close("class embeddings", &got, &Tensor::from_f32(&[4, 32], want).unwrap(), 1e-6);
}
