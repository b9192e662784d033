//! CDUL's initial pseudo-labels (`cdul init`): CLIP scores of the whole image and of its
//! snippets, aggregated per class.
//!
//! For every image of the split, decoded at full resolution (H x W):
//! - global: S_global = softmax(s * cos(image, text)) over the classes, the image
//!   CLIP-preprocessed (shorter side resized to the input size with PIL's bicubic, centre
//!   crop, CLIP mean/std: [`Transform::ClipCenterCrop`]);
//! - snippets: a g x g grid; tile (i, j) covers rows [i*H/g, (i+1)*H/g) and columns
//!   [j*W/g, (j+1)*W/g) (integer division, so the last row and column reach the border); with
//!   an overlap F, each side moves out by floor(F * the tile's extent along that axis), clipped
//!   to the image. Each tile is cut from the decoded image (PIL's `crop`) and gets the same
//!   CLIP preprocessing; S_local[m] = softmax(s * cos(tile_m, text));
//! - aggregation per class c: alpha_c = max_m S_local[m, c], beta_c = min_m S_local[m, c],
//!   S_ag_c = alpha_c if alpha_c >= zeta else beta_c, y0 = (S_global + S_ag) / 2.
//!
//! The global view and the g^2 tiles of every image of a batch are preprocessed in parallel
//! and go through the image encoder as one batch. An image with a side shorter than g pixels,
//! or one that cannot be decoded, is skipped, named and counted.
//!
//! With `--device cuda` (or `sim`) the image tower runs on the GPU, one pass per batch of
//! views; the crops are still made on the CPU. The batched crop-resize kernel
//! (src/ops/crop_resize.rs) is not used here: it resamples as torch's `F.interpolate` (bicubic
//! A = -0.75, no antialiasing), while CDUL's snippets are defined with PIL's antialiased
//! bicubic (A = -0.5, u8 rounding between passes); on downscaled photos the two differ by far
//! more than the 1e-3 the reference test allows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use rayon::prelude::*;
use serde::Serialize;

use super::{InitScores, LabelFile};
use crate::data::datasets::args::{announce, dataset_json, ClassNameArgs, DatasetArgs, SplitUse};
use crate::data::datasets::{ClassNames, Dataset};
use crate::data::decode::{decode_image_file, RgbImage};
use crate::data::loader::Skipped;
use crate::data::transforms::{crop, to_chw_normalized_into, Transform};
use crate::device::cuda::{DType, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{mean_ap, per_class_ap};
use crate::methods::encode::{clip_transform, progress_bar};
use crate::methods::report::json_path;
use crate::methods::report::RunReport;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::clip::ClipModel;
use crate::ops::activation::Activation;
use crate::ops::similarity::class_probabilities;
use crate::tensor::Tensor;

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub names: ClassNameArgs,
    /// CLIP weights (.safetensors, OpenAI/open_clip or Hugging Face names), with a text tower
    #[arg(long, required_unless_present = "from")]
    pub clip: Option<PathBuf>,
    /// Transformer activation when the weights do not record it: quick_gelu or gelu
    #[arg(long)]
    pub act: Option<String>,
    /// Input side of CLIP (default: the model's native size)
    #[arg(long)]
    pub size: Option<usize>,
    /// Prompt template, `{}` is the class name
    #[arg(long, default_value = "a photo of a {}")]
    pub template: String,
    /// Multiplier of the cosine similarities before the softmax (CLIP's exp(logit_scale))
    #[arg(long, default_value_t = 100.0)]
    pub scale: f32,
    /// Snippets: a grid x grid grid of the full-resolution image
    #[arg(long, default_value_t = 3)]
    pub grid: usize,
    /// Each tile enlarged by this fraction of its size on every side, clipped to the image
    #[arg(long, default_value_t = 0.0)]
    pub overlap: f32,
    /// Aggregator threshold: alpha_c if alpha_c >= zeta, else beta_c
    #[arg(long, default_value_t = 0.1)]
    pub zeta: f32,
    /// Images per batch (each brings 1 + grid^2 crops to one CLIP pass)
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Recombine the global/alpha/beta scores of this init output with --zeta (no CLIP, no
    /// dataset needed)
    #[arg(long, conflicts_with_all = ["clip", "dataset"])]
    pub from: Option<PathBuf>,
    /// The labels (safetensors)
    #[arg(long)]
    pub out: PathBuf,
    /// The run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The constants of an init run.
#[derive(Clone, Debug, Serialize)]
pub struct InitConfig {
    pub size: usize,
    pub grid: usize,
    pub overlap: f32,
    pub scale: f32,
    pub batch: usize,
}

/// Tile boxes of a width x height image, row-major (tile m = i * grid + j), each
/// [x0, y0, x1, y1) in pixels (see the module docs). Needs `grid <= min(width, height)`.
pub fn tile_boxes(width: usize, height: usize, grid: usize, overlap: f32) -> Vec<[usize; 4]> {
    let edge = |k: usize, n: usize| k * n / grid;
    let grow = |lo: usize, hi: usize, n: usize| {
        let d = (overlap as f64 * (hi - lo) as f64).floor().max(0.0) as usize;
        (lo.saturating_sub(d), (hi + d).min(n))
    };
    let mut out = Vec::with_capacity(grid * grid);
    for i in 0..grid {
        let (y0, y1) = grow(edge(i, height), edge(i + 1, height), height);
        for j in 0..grid {
            let (x0, x1) = grow(edge(j, width), edge(j + 1, width), width);
            out.push([x0, y0, x1, y1]);
        }
    }
    out
}

/// S_ag and y0 from the scores (both (N, C)): alpha where alpha >= zeta, else beta; then
/// the mean with S_global. The same f32 arithmetic for a full run and a recombination.
pub fn aggregate(s: &InitScores, zeta: f32) -> (Vec<f32>, Vec<f32>) {
    let s_ag: Vec<f32> = s.alpha.iter().zip(&s.beta).map(|(&a, &b)| if a >= zeta { a } else { b }).collect();
    let y0 = s.global.iter().zip(&s_ag).map(|(&g, &a)| (g + a) / 2.0).collect();
    (s_ag, y0)
}

/// What `init_scores` made of a list of images.
pub struct InitOutput {
    /// Index into the input list of every image scored, in input order.
    pub items: Vec<usize>,
    pub scores: InitScores,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// One decoded image, or why not.
fn decode_checked(path: &std::path::Path, grid: usize) -> std::result::Result<RgbImage, String> {
    let img = decode_image_file(path).map_err(|e| e.to_string())?;
    if img.width < grid || img.height < grid {
        return Err(format!("{} x {} pixels: smaller than the {grid} x {grid} grid", img.width, img.height));
    }
    Ok(img)
}

/// The (1 + grid^2) CLIP inputs of each image, (n * (1 + grid^2), 3, size, size): per image
/// the whole image, then its tiles row-major. Every crop is made in parallel.
pub fn preprocess_views(images: &[RgbImage], cfg: &InitConfig) -> Result<Tensor> {
    let views = 1 + cfg.grid * cfg.grid;
    let s = cfg.size;
    let transform = Transform::ClipCenterCrop { size: s };
    let norm = transform.normalize();
    let boxes: Vec<Vec<[usize; 4]>> =
        images.iter().map(|im| tile_boxes(im.width, im.height, cfg.grid, cfg.overlap)).collect();
    let mut data = vec![0.0f32; images.len() * views * 3 * s * s];
    data.par_chunks_mut(3 * s * s).enumerate().for_each(|(k, out)| {
        let (im, v) = (&images[k / views], k % views);
        let view = if v == 0 {
            transform.apply_u8(im)
        } else {
            let [x0, y0, x1, y1] = boxes[k / views][v - 1];
            transform.apply_u8(&crop(im, x0 as i64, y0 as i64, x1 - x0, y1 - y0))
        };
        to_chw_normalized_into(&view, norm, out);
    });
    Tensor::from_f32(&[images.len() * views, 3, s, s], data)
}

/// Splits (n * (1 + grid^2), C) view probabilities into S_global, alpha and beta, (n, C) each.
pub fn reduce_views(probs: &[f32], n: usize, views: usize, c: usize, out: &mut InitScores) {
    for i in 0..n {
        let img = &probs[i * views * c..(i + 1) * views * c];
        out.global.extend_from_slice(&img[..c]);
        let tiles = &img[c..];
        for k in 0..c {
            let (mut hi, mut lo) = (f32::NEG_INFINITY, f32::INFINITY);
            for t in tiles.chunks_exact(c) {
                hi = hi.max(t[k]);
                lo = lo.min(t[k]);
            }
            out.alpha.push(hi);
            out.beta.push(lo);
        }
    }
}

/// Global and snippet scores of every image of `paths` against the normalised class text
/// embeddings `text` (C, D), `cfg.batch` images per CLIP pass.
pub fn init_scores(
    model: &ClipModel,
    text: &Tensor,
    paths: &[PathBuf],
    cfg: &InitConfig,
    show_progress: bool,
) -> Result<InitOutput> {
    if cfg.grid == 0 {
        return Err(Error::Shape("--grid must be at least 1".into()));
    }
    if cfg.overlap.is_nan() || cfg.overlap < 0.0 {
        return Err(Error::Shape(format!("--overlap {} must be a fraction >= 0", cfg.overlap)));
    }
    let t0 = Instant::now();
    let c = text.dim(0);
    let views = 1 + cfg.grid * cfg.grid;
    let pb = if show_progress { progress_bar(paths.len(), "cdul init") } else { indicatif::ProgressBar::hidden() };
    let mut scores = InitScores { global: Vec::new(), alpha: Vec::new(), beta: Vec::new() };
    let (mut items, mut skipped) = (Vec::new(), Vec::new());
    for (b, chunk) in paths.chunks(cfg.batch.max(1)).enumerate() {
        let decoded: Vec<std::result::Result<RgbImage, String>> =
            chunk.par_iter().map(|p| decode_checked(p, cfg.grid)).collect();
        let mut images = Vec::with_capacity(chunk.len());
        for (k, d) in decoded.into_iter().enumerate() {
            match d {
                Ok(img) => {
                    items.push(b * cfg.batch.max(1) + k);
                    images.push(img);
                }
                Err(reason) => skipped.push(Skipped { path: chunk[k].display().to_string(), reason }),
            }
        }
        if !images.is_empty() {
            let pixels = preprocess_views(&images, cfg)?;
            drop(images);
            let emb = model.encode_image(&pixels)?;
            let probs = class_probabilities(&emb, text, cfg.scale)?;
            reduce_views(probs.f32s()?, probs.dim(0) / views, views, c, &mut scores);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(InitOutput { items, scores, skipped, seconds: t0.elapsed().as_secs_f64() })
}

/// mAP (in [0, 1]) of S_global, S_ag and y0 against the split's annotations.
#[derive(Clone, Debug, Serialize)]
pub struct InitMetrics {
    pub images: usize,
    pub classes_with_positives: usize,
    pub map_global: f64,
    pub map_aggregated: f64,
    pub map_labels: f64,
}

pub fn metrics(labels: &[u8], s: &InitScores, s_ag: &[f32], y0: &[f32], c: usize) -> InitMetrics {
    let map = |x: &[f32]| mean_ap(&per_class_ap(labels, x, c), false);
    InitMetrics {
        images: labels.len() / c.max(1),
        classes_with_positives: per_class_ap(labels, &s.global, c).iter().flatten().count(),
        map_global: map(&s.global),
        map_aggregated: map(s_ag),
        map_labels: map(y0),
    }
}

fn parse_act(s: &Option<String>) -> Result<Option<Activation>> {
    match s {
        None => Ok(None),
        Some(v) => {
            Activation::parse(v).map(Some).ok_or_else(|| Error::Weights(format!("--act {v}: use quick_gelu or gelu")))
        }
    }
}

fn recombine(a: &InitArgs, from: &std::path::Path) -> Result<()> {
    let mut file = LabelFile::read(from)?;
    let scores = file.scores.as_ref().ok_or_else(|| {
        Error::Weights(format!(
            "`{}` has no `global`, `alpha` and `beta` tensors (only cdul init writes them)",
            from.display()
        ))
    })?;
    let (_, y0) = aggregate(scores, a.zeta);
    file.labels = y0;
    file.meta.insert("zeta".into(), a.zeta.to_string());
    file.meta.insert("recombined_from".into(), from.display().to_string());
    file.write(&a.out)?;
    eprintln!(
        "cdul init: {} rows x {} classes of {} recombined with zeta {}",
        file.rows(),
        file.classes.len(),
        from.display(),
        a.zeta
    );
    eprintln!("wrote     {}", a.out.display());
    Ok(())
}

pub fn run_cli(a: &InitArgs, dev: Device, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<()> {
    if let Some(from) = &a.from {
        return recombine(a, from);
    }
    let weights = a.clip.as_ref().ok_or_else(|| Error::Weights("give the CLIP weights with --clip".into()))?;
    let ds: Dataset = a.data.load(SplitUse::Train)?;
    announce(&ds);
    let style = a.names.style(ClassNames::Natural)?;
    let mut model = ClipModel::load(weights, parse_act(&a.act)?, None)?;
    eprintln!(
        "model: {} from {} (activation {:?}: {})",
        model.arch,
        weights.display(),
        model.config.act,
        model.act_source
    );
    if let Some(w) = &model.act_warning {
        eprintln!("warning: {w}");
    }
    let transform = clip_transform(&model, a.size)?;
    let Transform::ClipCenterCrop { size } = transform else {
        return Err(Error::Internal("clip_transform is a centre crop".into()));
    };
    let cfg = InitConfig { size, grid: a.grid, overlap: a.overlap, scale: a.scale, batch: a.batch };
    let prompt_names = ds.class_names(style);
    let text = model.class_embeddings(&ClipTokenizer::new()?, &prompt_names, &[a.template.as_str()])?;
    let paths: Vec<PathBuf> = ds.items.iter().map(|it| it.path.clone()).collect();
    let out = match gpu {
        Some(g) => {
            model.attach_cuda(g, dtype)?;
            eprintln!("device: {} ({dtype})", g.name);
            init_scores(&model, &text, &paths, &cfg, true)?
        }
        None => init_scores(&model, &text, &paths, &cfg, true)?,
    };
    let c = ds.num_classes();
    let (s_ag, y0) = aggregate(&out.scores, a.zeta);
    let labels: Vec<u8> = out.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
    let m = (!out.items.is_empty()).then(|| metrics(&labels, &out.scores, &s_ag, &y0, c));
    let mut meta = HashMap::new();
    for (k, v) in [
        ("zeta", a.zeta.to_string()),
        ("grid", a.grid.to_string()),
        ("overlap", a.overlap.to_string()),
        ("scale", a.scale.to_string()),
        ("size", size.to_string()),
        ("template", a.template.clone()),
        ("arch", model.arch.clone()),
        ("clip", weights.display().to_string()),
        ("dataset", format!("{} {}", ds.name, ds.split)),
    ] {
        meta.insert(k.to_string(), v);
    }
    let file = LabelFile {
        paths: out.items.iter().map(|&i| ds.items[i].rel.clone()).collect(),
        classes: ds.classes.clone(),
        labels: y0,
        scores: Some(out.scores),
        meta,
    };
    file.write(&a.out)?;
    let jp = json_path(&a.json, &a.out);
    let mut skipped = ds.skipped.clone();
    skipped.extend(out.skipped.iter().cloned());
    let report = RunReport {
        command: "cdul init".into(),
        arch: model.arch.clone(),
        weights: Some(weights.display().to_string()),
        random_weights: model.random,
        activation: format!("{:?}", model.config.act),
        device: dev.to_string(),
        threads: rayon::current_num_threads(),
        transform: transform.describe(),
        images_total: ds.items.len() + ds.skipped.len(),
        images_ok: out.items.len(),
        skipped,
        seconds: out.seconds,
        images_per_s: out.items.len() as f64 / out.seconds.max(1e-9),
        decoded_images_per_s: 0.0,
        cache: None,
        outputs: vec![a.out.display().to_string(), jp.display().to_string()],
        extra: serde_json::json!({
            "dataset": dataset_json(&ds),
            "prompt_classes": prompt_names,
            "config": cfg,
            "zeta": a.zeta,
            "template": a.template,
            "images_skipped_unreadable_or_small": out.skipped.len(),
            "metrics": m,
        }),
    };
    report.write_json(&jp)?;
    report.print();
    match &m {
        Some(m) => eprintln!(
            "mAP       S_global {:.2} · S_ag {:.2} · y0 {:.2} ({} images, {} classes with positives)",
            100.0 * m.map_global,
            100.0 * m.map_aggregated,
            100.0 * m.map_labels,
            m.images,
            m.classes_with_positives
        ),
        None => eprintln!("no image could be scored: no metrics"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_and_reach_the_border() {
        let b = tile_boxes(10, 7, 3, 0.0);
        assert_eq!(b.len(), 9);
        // Rows [0, 2), [2, 4), [4, 7); columns [0, 3), [3, 6), [6, 10).
        assert_eq!(b[0], [0, 0, 3, 2]);
        assert_eq!(b[4], [3, 2, 6, 4]);
        assert_eq!(b[8], [6, 4, 10, 7]);
        // Overlap 0.5: floor(0.5 * extent) on each side, clipped.
        let o = tile_boxes(10, 7, 3, 0.5);
        assert_eq!(o[4], [2, 1, 7, 5]);
        assert_eq!(o[0], [0, 0, 4, 3]);
        assert_eq!(o[8], [4, 3, 10, 7]);
    }

    #[test]
    fn aggregate_picks_alpha_at_or_above_zeta() {
        let s = InitScores { global: vec![0.2, 0.4], alpha: vec![0.1, 0.05], beta: vec![0.01, 0.02] };
        let (ag, y) = aggregate(&s, 0.1);
        assert_eq!(ag, vec![0.1, 0.02]);
        assert_eq!(y, vec![(0.2 + 0.1) / 2.0, (0.4 + 0.02) / 2.0]);
    }
}
