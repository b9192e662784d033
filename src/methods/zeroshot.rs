//! Global CLIP zero-shot over a dataset: every image encoded once (or taken from the embedding
//! cache), scored against the class prompts with CLIP's softmax, and evaluated.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::ProgressBar;

use crate::data::datasets::Dataset;
use crate::data::loader::LoaderStats;
use crate::data::transforms::Transform;
use crate::error::Result;
use crate::methods::cache::{file_stamp, CacheEntry, CacheStatus};
use crate::methods::encode::{encode_with_progress, progress_bar, Skipped};
use crate::models::clip::ClipModel;
use crate::ops::similarity::class_probabilities;
use crate::tensor::Tensor;

/// The image embeddings of a dataset split.
pub struct EncodedDataset {
    /// Index into the dataset's items of each encoded image, in dataset order.
    pub items: Vec<usize>,
    /// (items, D), unnormalised.
    pub embeddings: Tensor,
    /// Images that could not be loaded, with the reason.
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    pub loader: LoaderStats,
    pub cache: CacheStatus,
}

/// Encodes every image of `ds`, reusing the cached embeddings of unchanged files when `cache`
/// is given and adding the new ones to it.
pub fn encode_dataset(
    model: &ClipModel,
    ds: &Dataset,
    transform: &Transform,
    batch: usize,
    cache: Option<&CacheEntry>,
    show_progress: bool,
) -> Result<EncodedDataset> {
    let t0 = Instant::now();
    let d = model.config.vision.output_dim();
    let mut cached = cache.map(|c| c.load()).unwrap_or_default();
    if cached.dim != d {
        cached.rows.clear();
        cached.dim = d;
    }
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; ds.items.len()];
    let mut stamps = Vec::with_capacity(ds.items.len());
    let mut todo = Vec::new();
    for (i, it) in ds.items.iter().enumerate() {
        let stamp = file_stamp(&it.path);
        match (cached.rows.get(&it.rel), stamp) {
            (Some((st, row)), Some(now)) if *st == now => rows[i] = Some(row.clone()),
            _ => todo.push(i),
        }
        stamps.push(stamp);
    }
    let mut status = CacheStatus {
        enabled: cache.is_some(),
        file: cache.map(|c| c.file.display().to_string()),
        reused: ds.items.len() - todo.len(),
        encoded: 0,
    };
    let paths: Vec<PathBuf> = todo.iter().map(|&i| ds.items[i].path.clone()).collect();
    let pb = if show_progress { progress_bar(paths.len(), "encode") } else { ProgressBar::hidden() };
    if status.reused > 0 && show_progress {
        pb.println(format!(
            "cache: {} of {} embeddings reused from {}",
            status.reused,
            ds.items.len(),
            status.file.as_deref().unwrap_or("")
        ));
    }
    let enc = encode_with_progress(model, &paths, transform, batch, &pb)?;
    pb.finish_and_clear();
    // The encoded paths are `paths` in order, less the skipped ones.
    let emb = enc.embeddings.f32s()?;
    let mut next = 0;
    for (&i, p) in todo.iter().zip(&paths) {
        if enc.paths.get(next) == Some(p) {
            let row = emb[next * d..(next + 1) * d].to_vec();
            if let (Some(st), true) = (stamps[i], cache.is_some()) {
                cached.rows.insert(ds.items[i].rel.clone(), (st, row.clone()));
            }
            rows[i] = Some(row);
            next += 1;
        }
    }
    status.encoded = next;
    if let (Some(c), true) = (cache, next > 0) {
        c.store(&cached)?;
    }
    let items: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_some()).collect();
    let data: Vec<f32> = rows.into_iter().flatten().flatten().collect();
    Ok(EncodedDataset {
        embeddings: Tensor::from_f32(&[items.len(), d], data)?,
        items,
        skipped: enc.skipped,
        seconds: t0.elapsed().as_secs_f64(),
        loader: enc.loader,
        cache: status,
    })
}

/// CLIP's zero-shot probabilities: softmax over the classes of scale * cos(image, class), (N, C).
pub fn scores(enc: &EncodedDataset, class_embeddings: &Tensor, scale: f32) -> Result<Vec<f32>> {
    if enc.items.is_empty() {
        return Ok(Vec::new());
    }
    class_probabilities(&enc.embeddings, class_embeddings, scale)?.into_f32_vec()
}
