//! The classifier evaluated on a labelled split, as CCD infers: eval mode (batch norm from the
//! running statistics), the training input transform without augmentation (square resize,
//! ImageNet normalisation), scores sigmoid(logits), per-class AP as scikit-learn and their mean
//! over the classes with a positive (src/eval).

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::data::datasets::Dataset;
use crate::data::loader::{Loader, Skipped};
use crate::data::transforms::Transform;
use crate::error::Result;
use crate::eval::{mean_ap, per_class_ap};
use crate::models::resnet50::ResNet;

/// A labelled split to evaluate on.
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// e.g. `coco2017 val2017`.
    pub name: String,
    pub paths: Vec<PathBuf>,
    /// (paths, classes) multi-hot.
    pub labels: Vec<u8>,
    pub classes: usize,
}

impl EvalSet {
    pub fn from_dataset(ds: &Dataset) -> EvalSet {
        EvalSet {
            name: format!("{} {}", ds.name, ds.split),
            paths: ds.items.iter().map(|it| it.path.clone()).collect(),
            labels: ds.label_matrix(),
            classes: ds.num_classes(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub split: String,
    /// Images scored (the unreadable ones are left out of the mAP).
    pub images: usize,
    pub skipped: Vec<Skipped>,
    /// Mean AP in [0, 1] over the classes with at least one positive among the images scored.
    pub map: f64,
    pub map_classes: usize,
    pub ap: Vec<Option<f64>>,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// Scores every image of `set` with `model` in eval mode, `batch` at a time.
pub fn evaluate(
    model: &ResNet,
    set: &EvalSet,
    transform: &Transform,
    batch: usize,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<EvalResult> {
    let mut logits = |x: &[f32], n: usize, h: usize, w: usize| Ok(model.forward_eval(x, n, h, w)?.logits);
    evaluate_with(&mut logits, set, transform, batch, bar)
}

/// Eval-mode logits (n, C) of n images (n, 3, H, W): the CPU model's or the GPU's.
pub type LogitsFn<'a> = dyn FnMut(&[f32], usize, usize, usize) -> Result<Vec<f32>> + 'a;

/// `evaluate` with the model given as its eval-mode logits function.
pub fn evaluate_with(
    logits_of: &mut LogitsFn<'_>,
    set: &EvalSet,
    transform: &Transform,
    batch: usize,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<EvalResult> {
    let start = Instant::now();
    let c = set.classes;
    let mut loader = Loader::spawn(set.paths.clone(), transform.clone(), batch.max(1), 2);
    let (mut scores, mut labels, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(b) = loader.next_batch() {
        for (i, reason) in &b.failed {
            skipped.push(Skipped { path: set.paths[*i].display().to_string(), reason: reason.clone() });
        }
        for g in b.groups {
            let n = g.indices.len();
            // (n, 3, H, W) in, (n, C) logits out.
            let logits = logits_of(&g.pixels, n, g.height, g.width)?;
            scores.extend(logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())));
            for &i in &g.indices {
                labels.extend_from_slice(&set.labels[i * c..(i + 1) * c]);
            }
            loader.recycle(g.pixels);
        }
        if let Some(pb) = bar {
            pb.inc(b.len as u64);
        }
    }
    loader.finish()?;
    let images = scores.len() / c.max(1);
    let ap = if images > 0 { per_class_ap(&labels, &scores, c) } else { vec![None; c] };
    let seconds = start.elapsed().as_secs_f64();
    Ok(EvalResult {
        split: set.name.clone(),
        images,
        skipped,
        map: mean_ap(&ap, false),
        map_classes: ap.iter().flatten().count(),
        ap,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
    })
}
