//! Stage 0: CLIP's global scores over the training images and the debiased labels made from
//! them. Per image p = softmax(100 cos(image, text)); the entropy H = -sum p ln(p + 1e-10)
//! flags the image uncertain when H > 2; the confident images' top-1 scores give a class bias
//! (their mean per class); the label is max(p, floor) / bias, clamped to [0, 1].

use crate::error::{Error, Result};
use crate::models::clip::ClipModel;
use crate::ops::similarity::class_probabilities;
use crate::tensor::Tensor;

/// The official entropy bound: above it an image is uncertain (flag 0).
pub const ENTROPY_MAX: f32 = 2.0;
/// The official floor: `LS_coeff` 20 in the shipped script, so 1/20.
pub const FLOOR: f32 = 1.0 / 20.0;

/// Stage 0's result for N images and C classes.
#[derive(Clone, Debug)]
pub struct GlobalLabels {
    /// (N, C) in [0, 1]
    pub labels: Vec<f32>,
    /// (N): 1 confident, 0 uncertain
    pub flags: Vec<u8>,
    /// (C): the mean top-1 score of the confident images whose top-1 the class is
    pub bias: Vec<f32>,
    /// Classes that are no confident image's top-1: the official code divides 0 by 0 there
    /// (NaN labels); they get bias 1.
    pub never_top1: Vec<usize>,
}

/// CLIP scores (B, C) of normalised pixels (B, 3, H, W): softmax over classes of 100 x the
/// cosine with the class embeddings (C, D), as the official code (its scale is 100, not
/// exp(logit_scale)).
pub fn clip_scores(model: &ClipModel, pixels: &Tensor, class_embeddings: &Tensor) -> Result<Vec<f32>> {
    let emb = model.encode_image(pixels)?;
    class_probabilities(&emb, class_embeddings, super::CLIP_SCALE)?.into_f32_vec()
}

/// The entropy of one score row as the official code: -sum p ln(p + 1e-10), in f32.
pub fn entropy(p: &[f32]) -> f32 {
    -p.iter().map(|&v| v * (v + 1e-10).ln()).sum::<f32>()
}

/// Labels, flags and bias from the scores (N, C), in image order (the bias sums in that
/// order, as the official loop).
pub fn global_labels(scores: &[f32], c: usize, floor: f32, entropy_max: f32) -> Result<GlobalLabels> {
    if c == 0 || !scores.len().is_multiple_of(c) {
        return Err(Error::Shape(format!("stage 0: {} scores are no whole rows of {c} classes", scores.len())));
    }
    let n = scores.len() / c;
    let mut sum = vec![0.0f32; c];
    let mut count = vec![0.0f32; c];
    let mut flags = vec![0u8; n];
    for (row, flag) in scores.chunks_exact(c).zip(flags.iter_mut()) {
        if entropy(row) > entropy_max {
            continue;
        }
        *flag = 1;
        // topk(1): the first of equal maxima
        let top = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
        sum[top] += row[top];
        count[top] += 1.0;
    }
    let mut never_top1 = Vec::new();
    let bias: Vec<f32> = (0..c)
        .map(|j| {
            if count[j] > 0.0 {
                sum[j] / count[j]
            } else {
                never_top1.push(j);
                1.0
            }
        })
        .collect();
    let labels = scores.chunks_exact(c).flat_map(|row| debias_row(row, &bias, floor, true)).collect();
    Ok(GlobalLabels { labels, flags, bias, never_top1 })
}

/// max(p, floor) / bias, clamped to [0, 1] when `clamp` (stage 0 clamps, stage 2's local
/// label does not).
pub fn debias_row(row: &[f32], bias: &[f32], floor: f32, clamp: bool) -> Vec<f32> {
    row.iter()
        .zip(bias)
        .map(|(&p, &b)| {
            let y = (if p >= floor { p } else { floor }) / b;
            if clamp {
                y.clamp(0.0, 1.0)
            } else {
                y
            }
        })
        .collect()
}
