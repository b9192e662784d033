//! Stage 2: classifier-guided local views and the label update. For each image (at the CLIP
//! size) and each class whose sigmoid is at or above the threshold: the class's CAM upsampled
//! to the image, min-max normalised, a box around its pixels above 0.95, padded and clipped,
//! the crop resized so its long side is 640 and scored by CLIP; the image's local label is the
//! max over its crops, floored and divided by the stage-0 bias; the new label is
//! clamp(ratio y_old + (1 - ratio) y_local, 0, 1). The threshold comes from a calibration over
//! the training images ([`calibrate_threshold`]) or is given.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::device::cuda::{CudaTensor, DType};
use crate::error::{Error, Result};
use crate::models::clip::weights::load_safetensors;
use crate::models::clip::ClipModel;
use crate::models::resnet50::{HeadKind, ResNet};
use crate::models::resnet50_cuda::CudaResNet;
pub use crate::ops::cam_box::{cam_box, cam_box_cuda, BoxRule, BoxSearch};
use crate::ops::crop_resize_planes::{crop_resize_plane_cpu, crop_resize_planes_cuda, CropDest, PlaneCrop};
use crate::ops::similarity::class_probabilities;
use crate::tensor::Tensor;

use super::init::{clip_scores, debias_row};

/// Settings of stage 2 (the official values by default).
#[derive(Clone, Debug, Serialize)]
pub struct RelabelOptions {
    /// Box padding in pixels at the CLIP size (80).
    pub offset: usize,
    /// Long side of a crop before CLIP (640, fixed in the official `cropping_box`).
    pub crop_long: usize,
    /// CAM level a pixel must exceed after min-max normalisation (0.95).
    pub cam_level: f32,
    /// Weight of the old label in the update (the official `ratio`, 0.2).
    pub ratio: f32,
    /// Floor of the local label (1/20).
    pub floor: f32,
    /// `BoxRule::FirstLast` as the original, or the true bounding box.
    pub box_rule: BoxRule,
}

impl Default for RelabelOptions {
    fn default() -> Self {
        RelabelOptions {
            offset: 80,
            crop_long: 640,
            cam_level: 0.95,
            ratio: 0.2,
            floor: super::init::FLOOR,
            box_rule: BoxRule::FirstLast,
        }
    }
}

/// A crop of one image for one class, in pixels of the CLIP-size image: [x0, x1) x [y0, y1),
/// and its size after the resize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CropPlan {
    pub class: usize,
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    /// (height, width) after the resize to the long side.
    pub out_hw: (usize, usize),
}

// ---------------------------------------------------------------------------------------------
// Threshold calibration
// ---------------------------------------------------------------------------------------------

/// The official calibration's first threshold (with its label smoothing on) and its step.
pub const CALIB_START: f64 = 0.05;
pub const CALIB_STEP: f64 = 0.001;

/// What the calibration did.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub threshold: f64,
    /// Windows checked, with their average counts.
    pub windows: Vec<f32>,
    /// False when the images ran out before a window's average fell inside the bound.
    pub stopped: bool,
}

/// The official calibration over sigmoid scores (rows of C, in the order the images are
/// visited): from `start`, every 100 images (the first window also counts image 0, so it holds
/// 101: the official `idx % 100 == 0 and idx != 0`) the f32 sum of count/100 is compared with
/// (bound, bound + 2); inside, stop; else the threshold goes up by `step` (a float64 sum, as
/// the Python float) and the count restarts. Scores are compared with the threshold in f32.
pub fn calibrate_threshold(probs: &[f32], c: usize, start: f64, step: f64, bound: f32) -> Calibration {
    let mut m = start;
    let mut avg = 0.0f32;
    let mut windows = Vec::new();
    for (idx, row) in probs.chunks_exact(c.max(1)).enumerate() {
        let count = row.iter().filter(|&&p| p >= m as f32).count() as f32;
        avg += count / 100.0;
        if idx % 100 == 0 && idx != 0 {
            windows.push(avg);
            if bound < avg && avg < bound + 2.0 {
                return Calibration { threshold: m, windows, stopped: true };
            }
            m += step;
            avg = 0.0;
        }
    }
    Calibration { threshold: m, windows, stopped: false }
}

// ---------------------------------------------------------------------------------------------
// CAM -> box -> crop size
// ---------------------------------------------------------------------------------------------

/// The official `cropping_box`: the two points (y1, x1), (y2, x2) padded by `offset` and
/// clipped to the image, and the resized size. Its arithmetic is kept: a side both of whose
/// ends were clipped is a Python int, any other a torch int64 tensor, so the scale 640 / long
/// is a float64 when the long side is an int and a float32 otherwise, and int(side * scale)
/// is float64 only when both are ints; torch computes `640 / tensor` as reciprocal(tensor) * 640,
/// so the long side itself can come out as 639 (61 -> 639).
pub fn crop_plan(class: usize, pts: [usize; 4], ih: usize, iw: usize, offset: usize, crop_long: usize) -> CropPlan {
    let [y1, x1, y2, x2] = pts.map(|v| v as i64);
    let off = offset as i64;
    let axis = |a: i64, b: i64, n: usize| -> (usize, usize, bool) {
        let (lo, hi) = if a > b { (b - off, a + off) } else { (a - off, b + off) };
        let (lo_clip, hi_clip) = (lo < 0, hi > n as i64);
        (lo.max(0) as usize, hi.min(n as i64) as usize, lo_clip && hi_clip)
    };
    let (y0, y1c, y_int) = axis(y1, y2, ih);
    let (x0, x1c, x_int) = axis(x1, x2, iw);
    let (cy, cx) = (y1c - y0, x1c - x0);
    let (long, long_int) = if cx > cy { (cx, x_int) } else { (cy, y_int) };
    let scaled = |side: usize, side_int: bool| -> usize {
        if long_int {
            let s = crop_long as f64 / long as f64;
            if side_int {
                (side as f64 * s) as usize
            } else {
                (side as f32 * s as f32) as usize
            }
        } else {
            // torch's `640 / tensor` is reciprocal(tensor) * 640, in f32
            let s = (1.0 / long as f32) * crop_long as f32;
            (side as f32 * s) as usize
        }
    };
    CropPlan { class, x0, y0, x1: x1c, y1: y1c, out_hw: (scaled(cy, y_int), scaled(cx, x_int)) }
}

/// The crop of a normalised (3, H, W) image resized bilinearly (align_corners false, no
/// antialias: torch's F.interpolate) to `plan.out_hw`: (3, oh, ow).
pub fn crop_pixels(image: &[f32], ih: usize, iw: usize, plan: &CropPlan) -> Vec<f32> {
    crop_resize_plane_cpu(image, ih, iw, &plan.plane_crop(0))
}

impl CropPlan {
    /// This crop of image `image` for the crop kernels.
    pub fn plane_crop(&self, image: usize) -> PlaneCrop {
        PlaneCrop {
            image,
            y0: self.y0,
            x0: self.x0,
            h: self.y1 - self.y0,
            w: self.x1 - self.x0,
            oh: self.out_hw.0,
            ow: self.out_hw.1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The classifier
// ---------------------------------------------------------------------------------------------

/// The official CCD model's state dict (`feature_extractor.N.*`, `onebyone_conv.*`, `alpha`)
/// in torchvision names (`conv1`, `bn1`, `layer1`-`layer4`, `head.*`) and its alpha, which
/// must be one value for every class.
pub fn official_to_torchvision(map: &BTreeMap<String, Tensor>) -> Result<(BTreeMap<String, Tensor>, f32)> {
    let mut out = BTreeMap::new();
    let mut alpha = None;
    for (name, t) in map {
        if name == "alpha" {
            let a = t.to_f32()?.into_f32_vec()?;
            let first = *a.first().ok_or_else(|| Error::Weights("`alpha` is empty".into()))?;
            if a.iter().any(|&v| v != first) {
                return Err(Error::Weights(format!(
                    "`alpha` differs between classes ({a:?}); the engine's CAM head has one alpha"
                )));
            }
            alpha = Some(first);
            continue;
        }
        let renamed = if let Some(rest) = name.strip_prefix("onebyone_conv.") {
            format!("head.{rest}")
        } else if let Some(rest) = name.strip_prefix("feature_extractor.") {
            let (idx, tail) =
                rest.split_once('.').ok_or_else(|| Error::Weights(format!("unexpected tensor `{name}`")))?;
            let module = match idx {
                "0" => "conv1",
                "1" => "bn1",
                "4" => "layer1",
                "5" => "layer2",
                "6" => "layer3",
                "7" => "layer4",
                _ => {
                    return Err(Error::Weights(format!(
                        "unexpected tensor `{name}` (feature_extractor.{idx} has no weights in torchvision's ResNet)"
                    )))
                }
            };
            format!("{module}.{tail}")
        } else {
            return Err(Error::Weights(format!("unexpected tensor `{name}` in a CCD state dict")));
        };
        out.insert(renamed, t.clone());
    }
    Ok((out, alpha.ok_or_else(|| Error::WeightMissing("alpha".into()))?))
}

/// A CCD classifier from a safetensors file in the official names (tools/convert_weights.py
/// converts the `.pt`). The class count comes from `onebyone_conv.bias`; it must be
/// `num_classes`.
pub fn load_official_classifier(path: &Path, num_classes: usize) -> Result<ResNet> {
    let (map, _) = load_safetensors(path)?;
    let (map, alpha) = official_to_torchvision(&map)?;
    let bias = map.get("head.bias").ok_or_else(|| Error::WeightMissing("onebyone_conv.bias".into()))?;
    if bias.shape() != [num_classes] {
        return Err(Error::WeightShape {
            name: "onebyone_conv.bias".into(),
            expected: vec![num_classes],
            found: bias.shape().to_vec(),
        });
    }
    let cfg = ResNet::config_from_names(&map, num_classes, HeadKind::Cam, alpha)?;
    let mut model = ResNet::new(cfg, 0);
    model.load_map(&map)?;
    Ok(model)
}

/// Eval-mode sigmoid scores (B, C) and boosted CAMs (B, C, h, w) of normalised pixels
/// (B, 3, H, W), with the CAM's (h, w).
pub fn classify(
    model: &ResNet,
    pixels: &[f32],
    b: usize,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, Vec<f32>, usize, usize)> {
    if model.cfg.head != HeadKind::Cam {
        return Err(Error::Weights("stage 2 needs a classifier with CCD's CAM head, not a linear head".into()));
    }
    let acts = model.forward_eval(pixels, b, h, w)?;
    let (_, fh, fw) = acts.features();
    let probs = acts.logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
    Ok((probs, acts.head, fh, fw))
}

// ---------------------------------------------------------------------------------------------
// One image
// ---------------------------------------------------------------------------------------------

/// Stage 2 of one image: its crops, their CLIP scores and the updated label row.
#[derive(Clone, Debug, Serialize)]
pub struct ImageUpdate {
    pub crops: Vec<CropPlan>,
    /// (crops, C)
    pub crop_scores: Vec<f32>,
    /// Crops CLIP could not take (a side under 32 pixels after the resize), left out.
    pub too_small: usize,
    pub label: Vec<f32>,
}

/// The crops of one image (3, ih, iw) from its CAMs (C, h, w) and sigmoid scores (C).
#[allow(clippy::too_many_arguments)]
pub fn plan_crops(
    cams: &[f32],
    probs: &[f32],
    h: usize,
    w: usize,
    ih: usize,
    iw: usize,
    threshold: f64,
    opt: &RelabelOptions,
) -> Vec<CropPlan> {
    let c = probs.len();
    (0..c)
        .filter(|&j| probs[j] >= threshold as f32)
        .filter_map(|j| {
            let pts = cam_box(&cams[j * h * w..(j + 1) * h * w], h, w, ih, iw, opt.cam_level, opt.box_rule)?;
            Some(crop_plan(j, pts, ih, iw, opt.offset, opt.crop_long))
        })
        .collect()
}

/// The updated label of one image from its crops' CLIP scores (crops, C): the max per class
/// over the crops (0 without crops), floored, divided by the bias (no clamp), then
/// clamp(ratio old + (1 - ratio) local, 0, 1).
pub fn update_label(old: &[f32], crop_scores: &[f32], bias: &[f32], opt: &RelabelOptions) -> Vec<f32> {
    let c = old.len();
    let mut local = vec![0.0f32; c];
    for row in crop_scores.chunks_exact(c) {
        for (l, &v) in local.iter_mut().zip(row) {
            *l = l.max(v);
        }
    }
    let local = debias_row(&local, bias, opt.floor, false);
    let keep = 1.0 - opt.ratio as f64;
    old.iter().zip(&local).map(|(&o, &l)| (opt.ratio * o + keep as f32 * l).clamp(0.0, 1.0)).collect()
}

/// The crops of a batch CLIP can take, grouped by output size: (image, crop) per group in
/// order; and per image the count of crops with a side under 32 pixels, left out.
type CropGroups = BTreeMap<(usize, usize), Vec<(usize, usize)>>;

fn group_crops(plans: &[Vec<CropPlan>]) -> (CropGroups, Vec<usize>) {
    let mut groups: CropGroups = BTreeMap::new();
    let mut too_small = vec![0usize; plans.len()];
    for (i, p) in plans.iter().enumerate() {
        for (k, plan) in p.iter().enumerate() {
            if plan.out_hw.0 < 32 || plan.out_hw.1 < 32 {
                too_small[i] += 1;
            } else {
                groups.entry(plan.out_hw).or_default().push((i, k));
            }
        }
    }
    (groups, too_small)
}

/// The updates of a batch from its plans and each crop's CLIP scores (None: left out).
fn assemble(
    plans: Vec<Vec<CropPlan>>,
    scores: Vec<Vec<Option<Vec<f32>>>>,
    too_small: &[usize],
    old: &[Vec<f32>],
    bias: &[f32],
    opt: &RelabelOptions,
) -> Vec<ImageUpdate> {
    plans
        .into_iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (crops, sc))| {
            let crop_scores: Vec<f32> = sc.into_iter().flatten().flatten().collect();
            let label = update_label(&old[i], &crop_scores, bias, opt);
            let crops = crops.into_iter().filter(|p| p.out_hw.0 >= 32 && p.out_hw.1 >= 32).collect();
            ImageUpdate { crops, crop_scores, too_small: too_small[i], label }
        })
        .collect()
}

/// What stage 2 holds fixed over a run's batches.
#[derive(Clone, Copy)]
pub struct RelabelSetup<'a> {
    pub clip: &'a ClipModel,
    /// The classes' text embeddings, (C, D).
    pub text: &'a Tensor,
    /// Stage 0's per-class bias (C,), the local labels' divisor.
    pub bias: &'a [f32],
    /// Classes whose sigmoid score reaches this get a crop.
    pub threshold: f64,
    /// Crops per CLIP pass.
    pub clip_batch: usize,
    pub opt: &'a RelabelOptions,
}

/// One batch of stage 2's input.
#[derive(Clone, Copy)]
pub struct RelabelBatch<'a> {
    /// Each (3, ih, iw), normalised, at CLIP's size.
    pub images: &'a [Vec<f32>],
    pub ih: usize,
    pub iw: usize,
    /// The images' labels so far, (C,) each.
    pub old: &'a [Vec<f32>],
}

/// Stage 2 over a batch of images (each (3, ih, iw), normalised, CLIP size): one classifier
/// pass per image, then every crop of the batch, grouped by size, through CLIP in batched
/// passes of at most `clip_batch` crops.
pub fn relabel_batch(setup: &RelabelSetup, classifier: &ResNet, batch: &RelabelBatch) -> Result<Vec<ImageUpdate>> {
    let RelabelSetup { clip, text, bias, threshold, clip_batch, opt } = *setup;
    let RelabelBatch { images, ih, iw, old } = *batch;
    let c = bias.len();
    let mut plans = Vec::with_capacity(images.len());
    for img in images {
        let (probs, cams, h, w) = classify(classifier, img, 1, ih, iw)?;
        plans.push(plan_crops(&cams, &probs, h, w, ih, iw, threshold, opt));
    }
    let (groups, too_small) = group_crops(&plans);
    let mut scores: Vec<Vec<Option<Vec<f32>>>> = plans.iter().map(|p| vec![None; p.len()]).collect();
    for ((oh, ow), members) in &groups {
        for chunk in members.chunks(clip_batch.max(1)) {
            let mut px = Vec::with_capacity(chunk.len() * 3 * oh * ow);
            for &(i, k) in chunk {
                px.extend(crop_pixels(&images[i], ih, iw, &plans[i][k]));
            }
            let s = clip_scores(clip, &Tensor::from_f32(&[chunk.len(), 3, *oh, *ow], px)?, text)?;
            for (&(i, k), row) in chunk.iter().zip(s.chunks_exact(c)) {
                scores[i][k] = Some(row.to_vec());
            }
        }
    }
    Ok(assemble(plans, scores, &too_small, old, bias, opt))
}

/// [`relabel_batch`] on the device: the images go up once as one (B, 3, ih, iw) tensor; one
/// eval-mode classifier pass over the batch gives the sigmoid scores (read back, B x C, for the
/// threshold) and the CAMs, which stay on the device; one `cam_box` launch finds the box of
/// every (image, class) pair at or above the threshold (the boxes come back, 4 ints a pair, for
/// the official crop arithmetic on the host); one `crop_resize_planes` launch cuts and resizes
/// every crop of the batch straight into the CLIP batch tensors of its size (chunks of at
/// most `clip_batch`); CLIP's image tower runs on each, and only the embeddings come back.
/// CLIP must be attached to the same device (`ClipModel::attach_cuda`).
pub fn relabel_batch_cuda(
    setup: &RelabelSetup,
    classifier: &mut CudaResNet,
    batch: &RelabelBatch,
) -> Result<Vec<ImageUpdate>> {
    let RelabelSetup { clip, text, bias, threshold, clip_batch, opt } = *setup;
    let RelabelBatch { images, ih, iw, old } = *batch;
    let Some(visual) = &clip.cuda_visual else {
        return Err(Error::Device("stage 2 on the device needs CLIP's image tower there (attach_cuda)".into()));
    };
    let clip_dtype = visual.dtype();
    if classifier.cfg.head != HeadKind::Cam {
        return Err(Error::Weights("stage 2 needs a classifier with CCD's CAM head, not a linear head".into()));
    }
    let gpu = classifier.gpu.clone();
    let (b, c) = (images.len(), bias.len());
    if b == 0 {
        return Ok(Vec::new());
    }
    // (B, 3, ih, iw)
    let flat: Vec<f32> = images.iter().flat_map(|im| im.iter().copied()).collect();
    let x = CudaTensor::from_f32(&gpu, &[b, 3, ih, iw], &flat, DType::F32)?;
    let acts = classifier.forward(&x, false)?;
    let probs: Vec<f32> = acts.logits.to_f32_vec(&gpu)?.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
    let cams = acts.cam().ok_or_else(|| Error::Internal("a CAM-head forward without CAMs".into()))?;
    let pairs: Vec<(usize, usize)> = (0..b)
        .flat_map(|i| (0..c).map(move |j| (i, j)))
        .filter(|&(i, j)| probs[i * c + j] >= threshold as f32)
        .collect();
    let mut plans: Vec<Vec<CropPlan>> = vec![Vec::new(); b];
    if !pairs.is_empty() {
        let flat_pairs: Vec<i32> = pairs.iter().flat_map(|&(i, j)| [i as i32, j as i32]).collect();
        let pd = CudaTensor::from_i32(&gpu, &[pairs.len(), 2], &flat_pairs)?;
        let mut bd = CudaTensor::empty(&gpu, &[pairs.len(), 4], DType::I32)?;
        let search = BoxSearch { image_h: ih, image_w: iw, level: opt.cam_level, rule: opt.box_rule };
        cam_box_cuda(&gpu, cams, &pd, search, &mut bd)?;
        let boxes = bd.to_f32_vec(&gpu)?;
        for (&(i, j), bx) in pairs.iter().zip(boxes.chunks_exact(4)) {
            if bx[0] >= 0.0 {
                let pts = [bx[0] as usize, bx[1] as usize, bx[2] as usize, bx[3] as usize];
                plans[i].push(crop_plan(j, pts, ih, iw, opt.offset, opt.crop_long));
            }
        }
    }
    drop(acts);
    let (groups, too_small) = group_crops(&plans);
    // one CLIP batch tensor per chunk of a size group; every crop into its slot in one launch
    let mut outs = Vec::new();
    let mut members = Vec::new();
    let (mut crops, mut dest) = (Vec::new(), Vec::new());
    for ((oh, ow), group) in &groups {
        for chunk in group.chunks(clip_batch.max(1)) {
            for (slot, &(i, k)) in chunk.iter().enumerate() {
                crops.push(plans[i][k].plane_crop(i));
                dest.push(CropDest { tensor: outs.len(), slot });
            }
            outs.push(CudaTensor::empty(&gpu, &[chunk.len(), 3, *oh, *ow], clip_dtype)?);
            members.push(chunk);
        }
    }
    crop_resize_planes_cuda(&gpu, &x, &crops, &dest, &mut outs)?;
    drop(x);
    let mut scores: Vec<Vec<Option<Vec<f32>>>> = plans.iter().map(|p| vec![None; p.len()]).collect();
    for (t, chunk) in outs.iter().zip(members) {
        let emb = visual.forward(t)?.to_tensor(&gpu)?;
        let s = class_probabilities(&emb, text, super::CLIP_SCALE)?.into_f32_vec()?;
        for (&(i, k), row) in chunk.iter().zip(s.chunks_exact(c)) {
            scores[i][k] = Some(row.to_vec());
        }
    }
    Ok(assemble(plans, scores, &too_small, old, bias, opt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_sizes_keep_the_official_float_arithmetic() {
        // 35..96 on both axes of a 96 image: clipped at one end only (tensors), long side 61:
        // torch's reciprocal(61) * 640 in f32 times 61 gives 639.99994 -> 639
        let p = crop_plan(0, [47, 47, 80, 80], 96, 96, 12, 640);
        assert_eq!((p.x0, p.y0, p.x1, p.y1), (35, 35, 92, 92));
        let p = crop_plan(0, [47, 47, 90, 90], 96, 96, 12, 640);
        assert_eq!((p.x0, p.x1, p.out_hw), (35, 96, (639, 639)));
        // both ends clipped on both axes: Python ints, float64: exactly 640
        let p = crop_plan(3, [5, 5, 90, 90], 96, 96, 12, 640);
        assert_eq!((p.class, p.x0, p.x1, p.out_hw), (3, 0, 96, (640, 640)));
        // the first point right of the last: x extent from those two only, swapped
        let p = crop_plan(0, [10, 60, 40, 20], 200, 200, 5, 640);
        assert_eq!((p.x0, p.y0, p.x1, p.y1), (15, 5, 65, 45));
        // torch gives (511, 639) here too: 640 / 50 as reciprocal(50) * 640 in f32
        assert_eq!(p.out_hw, (511, 639));
    }

    #[test]
    fn calibration_windows_are_101_then_100_images() {
        // 5 classes above 0.05 and 6 above 0.051 would stop at once; the first window holds
        // 101 images of count 4: 4.04 is inside (4, 6)
        let row = [0.9f32, 0.8, 0.7, 0.6, 0.01];
        let probs: Vec<f32> = (0..101).flat_map(|_| row).collect();
        let cal = calibrate_threshold(&probs, 5, 0.05, 0.001, 4.0);
        assert!(cal.stopped);
        assert_eq!(cal.windows, vec![(0..101).fold(0.0f32, |a, _| a + 4.0 / 100.0)]);
        // 100 images of count 4 make exactly 4: outside, the threshold steps up
        let cal = calibrate_threshold(&probs[..100 * 5], 5, 0.05, 0.001, 4.0);
        assert!(!cal.stopped && cal.windows.is_empty() && cal.threshold == 0.05);
        let probs2: Vec<f32> = (0..201).flat_map(|_| row).collect();
        let cal = calibrate_threshold(&probs2, 5, 0.05, 0.001, 4.0);
        assert!(cal.stopped && cal.threshold == 0.05);
    }

    #[test]
    fn update_floors_divides_and_mixes() {
        let opt = RelabelOptions::default();
        let old = [0.5f32, 1.0, 0.0];
        let crops = [0.9f32, 0.02, 0.08, 0.3, 0.01, 0.69];
        let bias = [0.5f32, 1.0, 0.2];
        let y = update_label(&old, &crops, &bias, &opt);
        // local: max (0.9, 0.02 -> floor 0.05, 0.69) / bias = (1.8, 0.05, 3.45), no clamp
        let want = [(0.2f32 * 0.5 + 0.8 * 1.8).min(1.0), 0.2 * 1.0 + 0.8 * 0.05, (0.8f32 * 3.45).min(1.0)];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        // no crop: the local label is the floor over the bias
        let y = update_label(&old, &[], &bias, &opt);
        assert!((y[0] - (0.1 + 0.8 * 0.1)).abs() < 1e-6);
    }
}
