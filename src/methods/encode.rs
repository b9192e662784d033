//! The batched image loop every command shares: the loader decodes and transforms the next
//! batches in the background (skipping and recording bad images) while the model encodes the
//! current one; progress is shown with images/s.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::data::loader::{Loader, LoaderStats};
use crate::data::transforms::Transform;
use crate::error::{Error, Result};
use crate::models::clip::ClipModel;
use crate::tensor::Tensor;

pub use crate::data::loader::Skipped;

/// Batches the loader keeps ready ahead of the model.
pub const PREFETCH_BATCHES: usize = 2;

/// The images of one run that were encoded, in input order, and those that were not.
pub struct Encoded {
    pub paths: Vec<PathBuf>,
    /// (N, D), unnormalised.
    pub embeddings: Tensor,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    pub loader: LoaderStats,
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

/// Encodes every image with `model`, `batch` at a time. Images whose transformed size differs
/// from others of their batch are encoded in their own group (any input size works).
pub fn encode_images(
    model: &ClipModel,
    paths: &[PathBuf],
    transform: &Transform,
    batch: usize,
    show_progress: bool,
) -> Result<Encoded> {
    let pb = if show_progress { progress_bar(paths.len(), "encode") } else { ProgressBar::hidden() };
    let out = encode_with_progress(model, paths, transform, batch, &pb);
    pb.finish_and_clear();
    out
}

/// [`encode_images`] advancing a progress bar the caller owns (one step per input).
pub fn encode_with_progress(
    model: &ClipModel,
    paths: &[PathBuf],
    transform: &Transform,
    batch: usize,
    pb: &ProgressBar,
) -> Result<Encoded> {
    let t0 = Instant::now();
    let d = model.config.vision.output_dim();
    let mut loader = Loader::spawn(paths.to_vec(), transform.clone(), batch, PREFETCH_BATCHES);
    let mut ok_paths = Vec::new();
    let mut rows: Vec<f32> = Vec::new();
    let mut skipped = Vec::new();
    let mut covered = 0;
    while let Some(b) = loader.next_batch() {
        let mut done: Vec<(usize, Vec<f32>)> = Vec::new();
        for g in b.groups {
            let n = g.indices.len();
            let pixels = Tensor::from_f32(&[n, 3, g.height, g.width], g.pixels)?;
            let emb = model.encode_image(&pixels)?;
            for (&i, row) in g.indices.iter().zip(emb.f32s()?.chunks_exact(d)) {
                done.push((i, row.to_vec()));
            }
            loader.recycle(pixels.into_f32_vec()?);
        }
        done.sort_by_key(|(i, _)| *i);
        for (i, row) in done {
            ok_paths.push(paths[i].clone());
            rows.extend(row);
        }
        for (i, reason) in b.failed {
            skipped.push(Skipped { path: paths[i].display().to_string(), reason });
        }
        covered += b.len;
        pb.inc(b.len as u64);
    }
    let stats = loader.finish()?;
    if covered != paths.len() {
        return Err(Error::Internal(format!("the loader delivered {covered} of {} images", paths.len())));
    }
    let n = ok_paths.len();
    Ok(Encoded {
        paths: ok_paths,
        embeddings: Tensor::from_f32(&[n, d], rows)?,
        skipped,
        seconds: t0.elapsed().as_secs_f64(),
        loader: stats,
    })
}

/// The transform `embed` and `zeroshot` use: CLIP's own (shorter side, centre crop), at the
/// model's native size unless `size` says otherwise.
pub fn clip_transform(model: &ClipModel, size: Option<usize>) -> Result<Transform> {
    let size = size.unwrap_or_else(|| model.image_size());
    let m = model.input_multiple();
    if size == 0 || !size.is_multiple_of(m) {
        return Err(Error::Shape(format!("--size {size}: this model needs a positive multiple of {m}")));
    }
    Ok(Transform::ClipCenterCrop { size })
}
