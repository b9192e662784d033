//! The batched image loop every command shares: decode and transform a batch in parallel,
//! skip (and record) bad images, encode, show progress with images/s.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::decode::decode_image_file;
use crate::data::transforms::Transform;
use crate::error::{Error, Result};
use crate::models::clip::ClipModel;
use crate::tensor::Tensor;

/// An input that was skipped, with the reason.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The images of one run that were encoded, in input order, and those that were not.
pub struct Encoded {
    pub paths: Vec<PathBuf>,
    /// (N, D), unnormalised.
    pub embeddings: Tensor,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{per_sec}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// Decodes and transforms one image; every failure becomes a reason string.
fn load_one(path: &Path, transform: &Transform) -> std::result::Result<(Vec<f32>, usize, usize), String> {
    let img = decode_image_file(path).map_err(|e| match e {
        Error::Image { reason, .. } => reason,
        other => other.to_string(),
    })?;
    Ok(transform.apply(&img))
}

/// Encodes every image with `model`, `batch` at a time. Images whose transformed size differs
/// from the first of their batch are encoded in their own group (any input size works).
pub fn encode_images(model: &ClipModel, paths: &[PathBuf], transform: &Transform, batch: usize, show_progress: bool) -> Result<Encoded> {
    let t0 = Instant::now();
    let pb = if show_progress { progress_bar(paths.len(), "encode") } else { ProgressBar::hidden() };
    let d = model.config.vision.output_dim();
    let mut ok_paths = Vec::new();
    let mut rows: Vec<f32> = Vec::new();
    let mut skipped = Vec::new();
    for chunk in paths.chunks(batch.max(1)) {
        let loaded: Vec<_> = chunk.par_iter().map(|p| (p, load_one(p, transform))).collect();
        // Group by transformed size, keeping input order inside each group.
        let mut groups: Vec<((usize, usize), Vec<(&PathBuf, Vec<f32>)>)> = Vec::new();
        let mut order: Vec<&PathBuf> = Vec::new();
        for (p, r) in loaded {
            match r {
                Ok((data, h, w)) => {
                    order.push(p);
                    match groups.iter_mut().find(|(hw, _)| *hw == (h, w)) {
                        Some((_, g)) => g.push((p, data)),
                        None => groups.push(((h, w), vec![(p, data)])),
                    }
                }
                Err(reason) => skipped.push(Skipped { path: p.display().to_string(), reason }),
            }
        }
        let mut by_path: Vec<(&PathBuf, Vec<f32>)> = Vec::new();
        for ((h, w), items) in groups {
            let n = items.len();
            let mut pixels = Vec::with_capacity(n * 3 * h * w);
            for (_, data) in &items {
                pixels.extend_from_slice(data);
            }
            let emb = model.encode_image(&Tensor::from_f32(&[n, 3, h, w], pixels)?)?;
            for ((p, _), row) in items.iter().zip(emb.f32s()?.chunks_exact(d)) {
                by_path.push((p, row.to_vec()));
            }
        }
        for p in order {
            if let Some(pos) = by_path.iter().position(|(q, _)| *q == p) {
                let (_, row) = by_path.swap_remove(pos);
                ok_paths.push(p.clone());
                rows.extend(row);
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = ok_paths.len();
    Ok(Encoded { paths: ok_paths, embeddings: Tensor::from_f32(&[n, d], rows)?, skipped, seconds: t0.elapsed().as_secs_f64() })
}

/// The transform `embed` and `zeroshot` use: CLIP's own (shorter side, centre crop), at the
/// model's native size unless `size` says otherwise.
pub fn clip_transform(model: &ClipModel, size: Option<usize>) -> Result<Transform> {
    let size = size.unwrap_or_else(|| model.image_size());
    let m = model.input_multiple();
    if size == 0 || size % m != 0 {
        return Err(Error::Shape(format!("--size {size}: this model needs a positive multiple of {m}")));
    }
    Ok(Transform::ClipCenterCrop { size })
}
