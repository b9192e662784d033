//! `ccd relabel` (stage 2 over a dataset split, from a label file and a classifier) and
//! `ccd predict` (a classifier's sigmoid scores over a split).
//!
//! Stage 2 over a split: the threshold is given or calibrated (the classifier in eval mode over
//! the label rows in a seeded order at the training size, [`calibrate_threshold`]); then the
//! rows go `batch` images at a time through [`relabel_batch`] at the CLIP size: one classifier
//! pass per image, every crop of the batch grouped by size into batched CLIP passes. An image
//! that cannot be read keeps its label row and is named and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use super::cli::{load_clip, ClipArgs, ClipSetup};
use super::labels::CcdLabels;
use super::relabel::{
    calibrate_threshold, load_official_classifier, relabel_batch, relabel_batch_cuda, BoxRule, RelabelBatch,
    RelabelSetup,
};
use super::relabel::{classify, Calibration, CropPlan};
use super::relabel::{RelabelOptions, CALIB_START, CALIB_STEP};
use crate::data::datasets::args::{announce, dataset_json, DatasetArgs, SplitUse};
use crate::data::datasets::Dataset;
use crate::data::loader::{load_one, Loader};
use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use crate::device::cuda::{DType, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{mean_ap, per_class_ap, scores_csv};
use crate::methods::encode::{progress_bar, Skipped};
use crate::methods::report::json_path;
use crate::methods::tagclip::maps::{label_text, ramp, safe_name, text_scale, Canvas};
use crate::methods::tagclip::stages::minmax_normalize;
use crate::methods::write_atomic;
use crate::models::clip::weights::load_safetensors;
use crate::models::resnet50::ResNet;
use crate::models::resnet50_cuda::CudaResNet;
use crate::ops::interpolate::bilinear_resize_cpu;
use crate::train::adam::Adam;
use crate::train::checkpoint::{self, CHECKPOINT_FILE};

#[derive(Args, Clone, Debug)]
pub struct RelabelArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub clip: ClipArgs,
    /// The classifier: a `train`/`ccd train` output folder (its checkpoint.safetensors), a
    /// labelfree checkpoint file, or the official CCD state dict as safetensors
    /// (`feature_extractor.N.*`, `onebyone_conv.*`, `alpha`; tools/convert_weights.py ccd)
    #[arg(long)]
    pub classifier: PathBuf,
    /// The labels to update (ccd init's output: its `bias` divides the local labels; a file
    /// without one divides by 1)
    #[arg(long)]
    pub labels: PathBuf,
    #[command(flatten)]
    pub stage2: Stage2Args,
    /// Images per batch (their crops share CLIP passes)
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The updated labels (safetensors, the format of ccd init)
    #[arg(long)]
    pub out: PathBuf,
    /// Every crop as JSON: image, class, box, crop size, crop score (default: <out>.boxes.json)
    #[arg(long)]
    pub boxes: Option<PathBuf>,
    /// The run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The settings of stage 2 that `ccd relabel` and `ccd train` share.
#[derive(Args, Clone, Debug, Serialize)]
pub struct Stage2Args {
    /// Fix the classifier threshold instead of calibrating it
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Calibration: stop when the mean count of classes at or above the threshold over 100
    /// images lies in (bound, bound + 2)
    #[arg(long, default_value_t = 4.0)]
    pub bound: f32,
    /// Calibration: the classifier's input side (the official code calibrates on its
    /// training loader, 448)
    #[arg(long, default_value_t = 448)]
    pub calib_size: usize,
    /// Calibration: the seed of the image order
    #[arg(long, default_value_t = 0)]
    pub calib_seed: u64,
    /// Box padding in pixels at the CLIP size
    #[arg(long, default_value_t = 80)]
    pub offset: usize,
    /// first-last (the official corners: the first and last pixel above 0.95 in raster
    /// order) or minmax (the true bounding box of those pixels)
    #[arg(long = "box", default_value = "first-last")]
    pub box_rule: String,
    /// Weight of the old label in the update: clamp(ratio old + (1 - ratio) local, 0, 1)
    #[arg(long, default_value_t = 0.2)]
    pub ratio: f32,
    /// Long side of a crop before CLIP (fixed at 640 in the official code, whatever the
    /// image size)
    #[arg(long, default_value_t = 640)]
    pub crop_long: usize,
    /// Write PNGs of the classifier's CAM (a heat map over the CLIP-size image) and the padded
    /// box of every crop of the chosen images into this folder (`<image>_<class>.png`)
    #[arg(long)]
    pub save_boxes: Option<PathBuf>,
    /// The images --save-boxes draws: label-row indices or image paths (relative to the root,
    /// or file names), comma-separated (default: the first 8 rows)
    #[arg(long, value_delimiter = ',')]
    pub save_boxes_images: Vec<String>,
}

impl Stage2Args {
    pub fn options(&self, floor: f32) -> Result<RelabelOptions> {
        let box_rule = match self.box_rule.as_str() {
            "first-last" => BoxRule::FirstLast,
            "minmax" => BoxRule::MinMax,
            b => return Err(Error::Shape(format!("--box {b}: use first-last or minmax"))),
        };
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(Error::Shape(format!("--ratio {} must lie in [0, 1]", self.ratio)));
        }
        if self.crop_long < 32 {
            return Err(Error::Shape(format!("--crop-long {}: CLIP needs at least 32 pixels", self.crop_long)));
        }
        Ok(RelabelOptions {
            offset: self.offset,
            crop_long: self.crop_long,
            ratio: self.ratio,
            floor,
            box_rule,
            ..RelabelOptions::default()
        })
    }
}

/// A classifier from a checkpoint folder, a labelfree checkpoint file or an official CCD
/// state dict; it must have `classes` outputs and CCD's CAM head.
pub fn load_classifier(path: &Path, classes: usize) -> Result<ResNet> {
    let file = if path.is_dir() { path.join(CHECKPOINT_FILE) } else { path.to_path_buf() };
    let (_, meta) = load_safetensors(&file)?;
    let model = if meta.contains_key("labelfree_checkpoint") {
        let (model, _, _) = checkpoint::load(&file)?;
        if model.cfg.num_classes != classes {
            return Err(Error::WeightShape {
                name: format!("head.bias of `{}`", file.display()),
                expected: vec![classes],
                found: vec![model.cfg.num_classes],
            });
        }
        model
    } else {
        load_official_classifier(&file, classes)?
    };
    Ok(model)
}

/// The label rows' images in the split: for each row, the index of its image. A row whose
/// path is no image of the split, or classes other than the split's, stop it.
pub fn rows_in_split(labels: &CcdLabels, ds: &Dataset, what: &Path) -> Result<Vec<usize>> {
    if labels.classes != ds.classes {
        let missing: Vec<&String> = ds.classes.iter().filter(|c| !labels.classes.contains(c)).collect();
        let extra: Vec<&String> = labels.classes.iter().filter(|c| !ds.classes.contains(c)).collect();
        return Err(Error::Dataset(format!(
            "labels `{}`: its classes are not those of {} {} in their order (missing: {missing:?}; not in the \
             dataset: {extra:?}; the dataset's: {})",
            what.display(),
            ds.name,
            ds.split,
            ds.classes.join(", ")
        )));
    }
    let index: HashMap<&str, usize> = ds.items.iter().enumerate().map(|(i, it)| (it.rel.as_str(), i)).collect();
    let mut rows = Vec::with_capacity(labels.rows());
    let mut unknown = Vec::new();
    for (r, p) in labels.paths.iter().enumerate() {
        match index.get(p.as_str()) {
            Some(&i) => rows.push(i),
            None => unknown.push(format!("row {r} `{p}`")),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::Dataset(format!(
            "labels `{}`: {} rows name no image of {} {} at {}: {}{}",
            what.display(),
            unknown.len(),
            ds.name,
            ds.split,
            ds.root.display(),
            unknown.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if unknown.len() > 5 { ", ..." } else { "" }
        )));
    }
    Ok(rows)
}

/// The label rows `--save-boxes-images` names: indices, paths relative to the root, or file
/// names; the first 8 rows when none is given. A name that matches no row stops the run.
pub fn rows_to_draw(labels: &CcdLabels, chosen: &[String]) -> Result<Vec<usize>> {
    if chosen.is_empty() {
        return Ok((0..labels.rows().min(8)).collect());
    }
    let mut rows = Vec::new();
    for name in chosen {
        let name = name.trim();
        let found = match name.parse::<usize>() {
            Ok(i) => (i < labels.rows()).then_some(i),
            Err(_) => labels
                .paths
                .iter()
                .position(|p| p == name || Path::new(p).file_name().is_some_and(|f| f.to_string_lossy() == name)),
        };
        match found {
            Some(r) if !rows.contains(&r) => rows.push(r),
            Some(_) => {}
            None => {
                return Err(Error::Dataset(format!(
                    "--save-boxes-images {name}: no label row has that index or path ({} rows)",
                    labels.rows()
                )))
            }
        }
    }
    Ok(rows)
}

/// One PNG per crop of an image (`<stem>_<class>.png`, size x size): the image (normalised
/// pixels (3, size, size) with ImageNet statistics, undone) half-blended with its class's CAM
/// (upsampled bilinearly, min-max normalised, the blue-to-red ramp of the TagCLIP maps), the
/// padded crop box outlined in white and the class name with the crop's CLIP score. The CAMs
/// (C, h, w) are the CPU classifier's. Returns the files written.
#[allow(clippy::too_many_arguments)]
fn draw_boxes(
    dir: &Path,
    stem: &str,
    pixels: &[f32],
    size: usize,
    cams: &[f32],
    h: usize,
    w: usize,
    crops: &[CropPlan],
    crop_scores: &[f32],
    classes: &[String],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    let (norm, plane, c) = (IMAGENET_NORM_NUMPY, size * size, classes.len());
    let mut written = Vec::new();
    for (crop, scores) in crops.iter().zip(crop_scores.chunks_exact(c)) {
        let mut up = vec![0.0f32; plane];
        bilinear_resize_cpu(&cams[crop.class * h * w..][..h * w], 1, h, w, size, size, false, &mut up);
        let heat = minmax_normalize(&up);
        let mut rgb = vec![0u8; plane * 3];
        for (p, px) in rgb.chunks_exact_mut(3).enumerate() {
            let hot = ramp(if heat[p].is_finite() { heat[p] } else { 0.0 });
            for ch in 0..3 {
                let v = (pixels[ch * plane + p] as f64 * norm.std[ch] + norm.mean[ch]) * 255.0;
                px[ch] = ((v.clamp(0.0, 255.0) as u16 + hot[ch] as u16).div_ceil(2)) as u8;
            }
        }
        let mut cv = Canvas { width: size, height: size, rgb };
        let scale = text_scale(size);
        cv.outline(crop.x0, crop.y0, crop.x1, crop.y1, scale + 1, [255, 255, 255]);
        cv.label(0, 0, &label_text(&classes[crop.class], scores[crop.class]), scale);
        let out = dir.join(format!("{stem}_{}.png", safe_name(&classes[crop.class])));
        write_atomic(&out, &cv.png()?)?;
        written.push(out);
    }
    Ok(written)
}

/// One crop of stage 2, for the boxes JSON.
#[derive(Clone, Debug, Serialize)]
pub struct BoxRecord {
    pub image: String,
    pub class: String,
    /// [x0, y0, x1, y1) at the CLIP size
    pub box_xyxy: [usize; 4],
    /// (height, width) of the crop CLIP scored
    pub crop_hw: [usize; 2],
    /// The crop's CLIP score of its own class
    pub crop_score: f32,
}

/// What stage 2 did.
#[derive(Clone, Debug, Serialize)]
pub struct Stage2Summary {
    pub threshold: f64,
    /// None when the threshold was given.
    pub calibration: Option<Calibration>,
    pub images: usize,
    pub images_updated: usize,
    pub crops: usize,
    /// Crops left out because a side was under 32 pixels after the resize.
    pub crops_too_small: usize,
    /// Images that could not be read: their label rows are kept as they were.
    pub skipped: Vec<Skipped>,
    pub mean_abs_change: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// The classifier's sigmoid scores (rows, C) at `size`, eval mode, of the given images;
/// unreadable ones are None.
fn classifier_probs(
    model: &ResNet,
    mut device: Option<&mut CudaResNet>,
    paths: &[PathBuf],
    size: usize,
    batch: usize,
) -> Result<Vec<Option<Vec<f32>>>> {
    let transform = Transform::SquareResize { size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY };
    let pb = progress_bar(paths.len(), "calibrate");
    let mut loader = Loader::spawn(paths.to_vec(), transform, batch.max(1), 2);
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
    while let Some(b) = loader.next_batch() {
        for g in b.groups {
            let n = g.indices.len();
            let logits = match device.as_deref_mut() {
                Some(d) => d.logits_eval(&g.pixels, n, g.height, g.width)?,
                None => model.forward_eval(&g.pixels, n, g.height, g.width)?.logits,
            };
            let c = logits.len() / n.max(1);
            for (&i, row) in g.indices.iter().zip(logits.chunks_exact(c.max(1))) {
                rows[i] = Some(row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect());
            }
            loader.recycle(g.pixels);
        }
        pb.inc(b.len as u64);
    }
    pb.finish_and_clear();
    loader.finish()?;
    Ok(rows)
}

/// The official threshold calibration over the rows' images in a seeded order (unreadable
/// images are not counted), with the classifier on the device when `device` is given.
pub fn calibrate(
    model: &ResNet,
    device: Option<&mut CudaResNet>,
    paths: &[PathBuf],
    a: &Stage2Args,
    batch: usize,
) -> Result<Calibration> {
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(a.calib_seed));
    let visited: Vec<PathBuf> = order.iter().map(|&i| paths[i].clone()).collect();
    let probs: Vec<f32> =
        classifier_probs(model, device, &visited, a.calib_size, batch)?.into_iter().flatten().flatten().collect();
    let c = model.cfg.num_classes;
    Ok(calibrate_threshold(&probs, c, CALIB_START, CALIB_STEP, a.bound))
}

/// Stage 2 over the label rows of a split (`rows[r]` is row r's image in `ds`): the threshold,
/// the crops, the updated labels (returned in a copy of `labels`) and every crop's record.
/// With `gpu` the classifier is copied to the device and every step runs there
/// ([`relabel_batch_cuda`]; CLIP must be attached to the same device).
#[allow(clippy::too_many_arguments)]
pub fn stage2(
    clip: &ClipSetup,
    classifier: &ResNet,
    gpu: Option<&Arc<Gpu>>,
    ds: &Dataset,
    labels: &CcdLabels,
    rows: &[usize],
    a: &Stage2Args,
    batch: usize,
) -> Result<(CcdLabels, Vec<BoxRecord>, Stage2Summary)> {
    let t0 = Instant::now();
    // eval mode only: the optimiser's moments are uploaded empty and never used
    let mut device = match gpu {
        Some(g) => Some(CudaResNet::upload(g, classifier, &Adam::new(classifier.params.len(), Vec::new()))?),
        None => None,
    };
    let c = labels.classes.len();
    let floor = labels.meta.get("floor").and_then(|f| f.parse().ok()).unwrap_or(super::init::FLOOR);
    let opt = a.options(floor)?;
    let paths: Vec<PathBuf> = rows.iter().map(|&i| ds.items[i].path.clone()).collect();
    let (threshold, calibration) = match a.threshold {
        Some(t) => (t, None),
        None => {
            let cal = calibrate(classifier, device.as_mut(), &paths, a, batch)?;
            if !cal.stopped {
                eprintln!(
                    "warning: the calibration ran out of images before a window's mean count fell in ({}, {}); \
                     threshold {:.3}",
                    a.bound,
                    a.bound + 2.0,
                    cal.threshold
                );
            }
            (cal.threshold, Some(cal))
        }
    };
    eprintln!("stage 2: threshold {threshold:.3}");
    let bias = labels.bias_or_ones();
    if labels.bias.is_none() {
        eprintln!("note: the labels have no stage-0 `bias`: the local labels are divided by 1");
    }
    let draw: Vec<usize> = match &a.save_boxes {
        Some(_) => rows_to_draw(labels, &a.save_boxes_images)?,
        None => Vec::new(),
    };
    let mut drawn = Vec::new();
    let size = clip.size;
    let mut out = labels.clone();
    let (mut boxes, mut skipped) = (Vec::new(), Vec::new());
    let (mut crops, mut too_small, mut updated) = (0, 0, 0);
    let pb = progress_bar(rows.len(), "relabel");
    let input = super::clip_input(size);
    for chunk in (0..rows.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let decoded: Vec<std::result::Result<Vec<f32>, String>> =
            chunk.par_iter().map(|&r| load_one(&paths[r], &input).map(|(px, _, _)| px)).collect();
        let (mut ok_rows, mut images) = (Vec::new(), Vec::new());
        for (&r, d) in chunk.iter().zip(decoded) {
            match d {
                Ok(px) => {
                    ok_rows.push(r);
                    images.push(px);
                }
                Err(reason) => skipped.push(Skipped { path: paths[r].display().to_string(), reason }),
            }
        }
        if !images.is_empty() {
            let old: Vec<Vec<f32>> = ok_rows.iter().map(|&r| labels.labels[r * c..(r + 1) * c].to_vec()).collect();
            let setup = RelabelSetup {
                clip: &clip.model,
                text: &clip.text,
                bias: &bias,
                threshold,
                clip_batch: clip.clip_batch,
                opt: &opt,
            };
            let batch = RelabelBatch { images: &images, ih: size, iw: size, old: &old };
            let ups = match device.as_mut() {
                Some(d) => relabel_batch_cuda(&setup, d, &batch)?,
                None => relabel_batch(&setup, classifier, &batch)?,
            };
            for ((&r, u), px) in ok_rows.iter().zip(ups).zip(&images) {
                if let (Some(dir), true) = (&a.save_boxes, draw.contains(&r)) {
                    let (_, cams, h, w) = classify(classifier, px, 1, size, size)?;
                    let stem = safe_name(labels.paths[r].rsplit_once('.').map_or(&labels.paths[r][..], |(s, _)| s));
                    drawn.extend(draw_boxes(
                        dir,
                        &stem,
                        px,
                        size,
                        &cams,
                        h,
                        w,
                        &u.crops,
                        &u.crop_scores,
                        &labels.classes,
                    )?);
                }
                out.labels[r * c..(r + 1) * c].copy_from_slice(&u.label);
                for (p, s) in u.crops.iter().zip(u.crop_scores.chunks_exact(c)) {
                    boxes.push(BoxRecord {
                        image: labels.paths[r].clone(),
                        class: labels.classes[p.class].clone(),
                        box_xyxy: [p.x0, p.y0, p.x1, p.y1],
                        crop_hw: [p.out_hw.0, p.out_hw.1],
                        crop_score: s[p.class],
                    });
                }
                crops += u.crops.len();
                too_small += u.too_small;
                updated += 1;
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let change = out.labels.iter().zip(&labels.labels).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
        / out.labels.len().max(1) as f64;
    if let Some(dir) = &a.save_boxes {
        eprintln!("box maps  {} PNGs of {} images in {}", drawn.len(), draw.len(), dir.display());
    }
    out.meta.insert("stage".into(), "ccd stage 2".into());
    out.meta.insert("threshold".into(), threshold.to_string());
    out.meta.insert("stage2".into(), serde_json::to_string(a).unwrap_or_default());
    let seconds = t0.elapsed().as_secs_f64();
    let summary = Stage2Summary {
        threshold,
        calibration,
        images: rows.len(),
        images_updated: updated,
        crops,
        crops_too_small: too_small,
        skipped,
        mean_abs_change: change,
        seconds,
        images_per_s: updated as f64 / seconds.max(1e-9),
    };
    Ok((out, boxes, summary))
}

pub fn run_relabel(a: &RelabelArgs, dev: Device, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<()> {
    let ds = a.data.load(SplitUse::Train)?;
    announce(&ds);
    let labels = CcdLabels::read(&a.labels)?;
    let rows = rows_in_split(&labels, &ds, &a.labels)?;
    if rows.len() < ds.items.len() {
        eprintln!("note: {} images of the split have no label row and are left out", ds.items.len() - rows.len());
    }
    let classifier = load_classifier(&a.classifier, ds.num_classes())?;
    eprintln!("classifier: {} (alpha {})", a.classifier.display(), classifier.cfg.alpha);
    let clip = load_clip(&a.clip, &ds, gpu, dtype)?;
    let (out, boxes, summary) = stage2(&clip, &classifier, gpu, &ds, &labels, &rows, &a.stage2, a.batch)?;
    out.write(&a.out)?;
    let boxes_path = a.boxes.clone().unwrap_or_else(|| {
        let mut s = a.out.as_os_str().to_owned();
        s.push(".boxes.json");
        PathBuf::from(s)
    });
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    write_atomic(&boxes_path, serde_json::to_string_pretty(&boxes).map_err(json)?.as_bytes())?;
    let jp = json_path(&a.json, &a.out);
    let report = serde_json::json!({
        "command": "ccd relabel",
        "dataset": dataset_json(&ds),
        "device": dev.to_string(),
        "clip": a.clip.clip.display().to_string(),
        "clip_size": a.clip.clip_size,
        "classifier": a.classifier.display().to_string(),
        "labels": a.labels.display().to_string(),
        "settings": a.stage2,
        "summary": summary,
        "outputs": [a.out.display().to_string(), boxes_path.display().to_string(), jp.display().to_string()],
    });
    write_atomic(&jp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    eprintln!(
        "ccd relabel: {} of {} images updated, {} crops ({} too small), threshold {:.3}, mean |change| {:.3e}, {:.2} \
         images/s",
        summary.images_updated,
        summary.images,
        summary.crops,
        summary.crops_too_small,
        summary.threshold,
        summary.mean_abs_change,
        summary.images_per_s
    );
    if !summary.skipped.is_empty() {
        eprintln!("skipped   {} (their labels kept):", summary.skipped.len());
        for s in &summary.skipped {
            eprintln!("  {}: {}", s.path, s.reason);
        }
    }
    for p in [&a.out, &boxes_path, &jp] {
        eprintln!("wrote     {}", p.display());
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct PredictArgs {
    /// The images and their classes: --dataset/--root/--split (default: the evaluation split)
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Image files and/or folders (searched recursively for .jpg/.jpeg/.png) instead of
    /// --dataset; no mAP
    #[arg(long, num_args = 1.., conflicts_with = "dataset")]
    pub images: Vec<PathBuf>,
    /// The classifier's class names with --images, comma-separated, in its output order
    /// (default: --classes-file, else the `classes` of the ccd train report beside the
    /// classifier)
    #[arg(long, conflicts_with = "dataset")]
    pub classes: Option<String>,
    /// A `ccd train` output folder (or one of its best_* folders), a checkpoint file or the
    /// official CCD state dict as safetensors
    #[arg(long)]
    pub classifier: PathBuf,
    /// Square input side (CCD: 448)
    #[arg(long, default_value_t = 448)]
    pub size: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// The scores CSV (`path,<class>,...`)
    #[arg(long)]
    pub out: PathBuf,
    /// The run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The class names of `ccd predict --images`: --classes, else --classes-file, else the
/// `classes` of a ccd train report in the classifier's folder or the one above it (a best_*
/// folder).
fn predict_classes(a: &PredictArgs) -> Result<Vec<String>> {
    let split = |list: Vec<String>| -> Vec<String> {
        list.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if let Some(c) = &a.classes {
        return Ok(split(c.split(',').map(String::from).collect()));
    }
    if let Some(f) = &a.data.classes_file {
        let text = std::fs::read_to_string(f).map_err(|e| Error::Io { path: f.display().to_string(), source: e })?;
        return Ok(split(text.lines().map(String::from).collect()));
    }
    let folder = if a.classifier.is_dir() { a.classifier.clone() } else { a.classifier.with_file_name("") };
    for dir in [Some(folder.as_path()), folder.parent()].into_iter().flatten() {
        let report = dir.join(super::train::REPORT_FILE);
        if let Ok(text) = std::fs::read_to_string(&report) {
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Dataset(format!("{}: {e}", report.display())))?;
            if let Some(list) = json.get("classes").and_then(|c| c.as_array()) {
                return Ok(list.iter().filter_map(|v| v.as_str().map(String::from)).collect());
            }
        }
    }
    Err(Error::Dataset(format!(
        "ccd predict --images: the class names are needed (--classes a,b,c or --classes-file F); `{}` has no ccd \
         train report ({}) beside it",
        a.classifier.display(),
        super::train::REPORT_FILE
    )))
}

pub fn run_predict(a: &PredictArgs) -> Result<()> {
    let t0 = Instant::now();
    if !a.images.is_empty() {
        return predict_images(a, t0);
    }
    let ds = a.data.load(SplitUse::Evaluate)?;
    announce(&ds);
    let model = load_classifier(&a.classifier, ds.num_classes())?;
    let paths: Vec<PathBuf> = ds.items.iter().map(|it| it.path.clone()).collect();
    let rows = classifier_probs(&model, None, &paths, a.size, a.batch)?;
    let c = ds.num_classes();
    let (mut rels, mut scores, mut truth, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        match row {
            Some(p) => {
                rels.push(ds.items[i].rel.clone());
                scores.extend_from_slice(p);
                truth.extend_from_slice(&ds.items[i].labels);
            }
            None => skipped.push(ds.items[i].rel.clone()),
        }
    }
    write_atomic(&a.out, scores_csv::to_csv(&rels, &ds.classes, &scores).as_bytes())?;
    let ap = if rels.is_empty() { vec![None; c] } else { per_class_ap(&truth, &scores, c) };
    let map = (ap.iter().flatten().count() > 0).then(|| mean_ap(&ap, false));
    let seconds = t0.elapsed().as_secs_f64();
    let jp = json_path(&a.json, &a.out);
    let report = serde_json::json!({
        "command": "ccd predict",
        "dataset": dataset_json(&ds),
        "classifier": a.classifier.display().to_string(),
        "size": a.size,
        "images": rels.len(),
        "skipped": skipped,
        "map": map,
        "ap": ap,
        "seconds": seconds,
        "images_per_s": rels.len() as f64 / seconds.max(1e-9),
        "outputs": [a.out.display().to_string(), jp.display().to_string()],
    });
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    write_atomic(&jp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    eprintln!("ccd predict: {} of {} images scored in {seconds:.1} s", rels.len(), ds.items.len());
    if !skipped.is_empty() {
        eprintln!("skipped   {} unreadable: {}", skipped.len(), skipped.join(", "));
    }
    if let Some(m) = map {
        eprintln!("mAP       {:.2} ({} classes with positives)", 100.0 * m, ap.iter().flatten().count());
    }
    eprintln!("wrote     {}", a.out.display());
    eprintln!("wrote     {}", jp.display());
    Ok(())
}

/// `ccd predict --images`: the scores CSV of image files, named as given (folders expanded).
fn predict_images(a: &PredictArgs, t0: Instant) -> Result<()> {
    let classes = predict_classes(a)?;
    if classes.is_empty() {
        return Err(Error::Dataset("ccd predict --images: the class list is empty".into()));
    }
    let model = load_classifier(&a.classifier, classes.len())?;
    let paths = crate::data::images::list_images(&a.images);
    if paths.is_empty() {
        return Err(Error::Dataset(format!("ccd predict: no images found in {:?}", a.images)));
    }
    let rows = classifier_probs(&model, None, &paths, a.size, a.batch)?;
    let (mut names, mut scores, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (p, row) in paths.iter().zip(&rows) {
        match row {
            Some(r) => {
                names.push(p.display().to_string());
                scores.extend_from_slice(r);
            }
            None => skipped.push(p.display().to_string()),
        }
    }
    write_atomic(&a.out, scores_csv::to_csv(&names, &classes, &scores).as_bytes())?;
    let seconds = t0.elapsed().as_secs_f64();
    let jp = json_path(&a.json, &a.out);
    let report = serde_json::json!({
        "command": "ccd predict",
        "images_from": a.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "classes": classes,
        "classifier": a.classifier.display().to_string(),
        "size": a.size,
        "images": names.len(),
        "skipped": skipped,
        "seconds": seconds,
        "images_per_s": names.len() as f64 / seconds.max(1e-9),
        "outputs": [a.out.display().to_string(), jp.display().to_string()],
    });
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    write_atomic(&jp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    eprintln!("ccd predict: {} of {} images scored in {seconds:.1} s", names.len(), paths.len());
    if !skipped.is_empty() {
        eprintln!("skipped   {} unreadable: {}", skipped.len(), skipped.join(", "));
    }
    eprintln!("wrote     {}", a.out.display());
    eprintln!("wrote     {}", jp.display());
    Ok(())
}
