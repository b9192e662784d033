//! TagCLIP (Lin et al., AAAI 2024): training-free multi-label tagging with a frozen CLIP ViT.
//! The spec is shared/methods/tagclip.md; the default behaviour is the official code's
//! (github linyq2117/TagCLIP, `classify.py`), quirks included, and each quirk has an option
//! in [`TagclipOptions`] that fixes it.
//!
//! Per batch of images of one size: one native-resolution pass with the last layer's diagonal
//! mask, recording every layer's head-averaged attention; patch probabilities over classes and
//! background words; DMAR (vote mask, layer mean, class boxes from external contours, refined
//! scores); then every CWR crop of the batch in one pass at the native size with per-crop
//! CLS-row masks; fusion; tags at the relative threshold.

pub mod cli;
pub mod cuda;
pub mod maps;
pub mod stages;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::decode::decode_image_file;
use crate::data::transforms::{interpolate_bilinear_chw, Interpolation, Transform, CLIP_NORM};
use crate::error::{Error, Result};
use crate::methods::encode::{progress_bar, Skipped};
use crate::models::clip::prompts;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::clip::vit::{VisionTransformer, VitRequest};
use crate::models::clip::{ClipModel, VisionEncoder};
use crate::ops::attention::AttnMask;
use crate::ops::similarity::l2_normalize_cpu;
use crate::tensor::Tensor;

pub use stages::{CellBox, CwrCrop, CwrPlan};

/// Knobs of the pipeline. `Default` is the official code on VOC / COCO.
#[derive(Clone, Debug, Serialize)]
pub struct TagclipOptions {
    /// Multiplier of the cosine similarities; None = exp(logit_scale) of the model, as the
    /// official code (100 for OpenAI's weights).
    pub logit_scale: Option<f32>,
    /// A patch pair is kept when at least this many layers attend above their mean (4).
    pub vote_min_layers: usize,
    /// Layers averaged into W; None = 8 .. L-1 (official VOC/COCO: `[8:-1]`; COCO-Stuff
    /// uses 0 .. L-1).
    pub refine_layers: Option<Range<usize>>,
    /// Relative threshold of the CWR candidates (0.5; COCO-Stuff 0.1).
    pub cwr_threshold: f32,
    /// Weight of the local score in the fusion (0.5).
    pub fusion: f32,
    /// Relative threshold of the tags (0.5; COCO-Stuff 0.1).
    pub tag_threshold: f32,
    /// Quirk fix: keep the true exclusive end of boxes (the official code clips it to
    /// grid - 1, so a box touching the right or bottom border loses that column / row).
    pub fix_box_clip: bool,
    /// Quirk fix: skip a CWR candidate whose box is empty (the official loop returns there,
    /// leaving every later candidate unfused).
    pub fix_cwr_early_stop: bool,
    /// Quirk fix: keep the resized positional table in f32 (the official `upsample_pos_emb`
    /// casts it to fp16 for every input size other than 224 x 224).
    pub fix_pos_fp16: bool,
    /// Quirk fix: threshold the class maps on the floats (the official `scoremap2bbox`
    /// quantises to u8 first: floor(255 v) > floor(255 mean)).
    pub fix_quantization: bool,
    /// Images per patch pass (images of one size are batched together).
    pub batch: usize,
    /// Crops per CWR pass.
    pub crop_batch: usize,
    /// Keep P_ref and the CWR plan of each image (for maps and debugging).
    pub keep_maps: bool,
}

impl Default for TagclipOptions {
    fn default() -> Self {
        TagclipOptions {
            logit_scale: None,
            vote_min_layers: 4,
            refine_layers: None,
            cwr_threshold: 0.5,
            fusion: 0.5,
            tag_threshold: 0.5,
            fix_box_clip: false,
            fix_cwr_early_stop: false,
            fix_pos_fp16: false,
            fix_quantization: false,
            batch: 4,
            crop_batch: 16,
            keep_maps: false,
        }
    }
}

impl TagclipOptions {
    /// Every quirk fixed.
    pub fn fixed() -> Self {
        TagclipOptions {
            fix_box_clip: true,
            fix_cwr_early_stop: true,
            fix_pos_fp16: true,
            fix_quantization: true,
            ..Self::default()
        }
    }

    pub fn refine_range(&self, layers: usize) -> Range<usize> {
        self.refine_layers.clone().unwrap_or(8.min(layers.saturating_sub(1))..layers.saturating_sub(1))
    }
}

/// The class side: dataset classes followed by background words, one unit row each.
#[derive(Clone, Debug)]
pub struct ClassText {
    /// All names, dataset classes first.
    pub names: Vec<String>,
    /// How many of `names` are dataset classes (the rest are background words).
    pub num_classes: usize,
    /// (names.len(), dim), unit rows.
    pub emb: Vec<f32>,
    pub dim: usize,
}

/// The 80 COCO classes as TagCLIP names them (VOC spellings: motorbike, aeroplane, sofa,
/// pottedplant, diningtable, tvmonitor), in COCO's category order.
pub const COCO_CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorbike",
    "aeroplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "sofa",
    "pottedplant",
    "bed",
    "diningtable",
    "toilet",
    "tvmonitor",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// The 20 VOC classes as TagCLIP names them.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Background word list by name: voc, coco or none.
pub fn background_words(name: &str) -> Result<Vec<String>> {
    let list: &[&str] = match name {
        "voc" => &prompts::BACKGROUND_VOC,
        "coco" => &prompts::BACKGROUND_COCO,
        "none" => &[],
        other => return Err(Error::Shape(format!("--background {other}: use voc, coco or none"))),
    };
    Ok(list.iter().map(|s| s.to_string()).collect())
}

impl ClassText {
    /// The official text side: 85 templates per name, each normalised, averaged, normalised,
    /// and the stacked matrix normalised once more.
    pub fn encode(
        model: &ClipModel,
        tok: &ClipTokenizer,
        classes: &[String],
        background: &[String],
    ) -> Result<ClassText> {
        let mut names = classes.to_vec();
        names.extend(background.iter().cloned());
        let emb = model.class_embeddings(tok, &names, &prompts::tagclip_templates())?;
        let dim = emb.dim(1);
        ClassText::from_embeddings(names, classes.len(), emb.into_f32_vec()?, dim)
    }

    /// From precomputed embeddings (normalised here).
    pub fn from_embeddings(names: Vec<String>, num_classes: usize, mut emb: Vec<f32>, dim: usize) -> Result<ClassText> {
        if emb.len() != names.len() * dim || num_classes > names.len() || num_classes == 0 {
            return Err(Error::Shape(format!(
                "class text: {} values for {} names x {dim}, {num_classes} classes",
                emb.len(),
                names.len()
            )));
        }
        l2_normalize_cpu(&mut emb, dim);
        Ok(ClassText { names, num_classes, emb, dim })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The result for one image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageResult {
    /// Input size of the patch pass (resized to multiples of the patch).
    pub height: usize,
    pub width: usize,
    /// Final scores, one per dataset class.
    pub scores: Vec<f32>,
    /// Local scores (max of P_ref) before CWR.
    pub local: Vec<f32>,
    /// Classes above the relative threshold (or the argmax).
    pub tags: Vec<usize>,
    pub cwr: CwrPlan,
    /// P_ref (N x C'), kept with `keep_maps`.
    #[serde(skip)]
    pub refined: Option<Vec<f32>>,
    /// P_hat (N x C'), DMAR's first propagation (its class boxes come from it), kept with
    /// `keep_maps`.
    #[serde(skip)]
    pub hat: Option<Vec<f32>>,
}

/// One image ready for the patch pass: normalised CHW pixels at a multiple of the patch.
pub struct Prepared {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

fn vit_of(model: &ClipModel) -> Result<&VisionTransformer> {
    match &model.visual {
        VisionEncoder::Vit(v) => Ok(v),
        VisionEncoder::ResNet(_) => {
            Err(Error::Weights("TagCLIP needs a ViT image encoder; these weights hold a ResNet".into()))
        }
    }
}

/// TagCLIP's preprocessing for a model: PIL bicubic resize up to multiples of the patch, CLIP
/// statistics, no crop.
pub fn transform_for(model: &ClipModel) -> Result<Transform> {
    let v = vit_of(model)?;
    Ok(Transform::PatchMultiple { patch: v.cfg.patch, interp: Interpolation::Bicubic, norm: CLIP_NORM })
}

fn scale_of(model: &ClipModel, opts: &TagclipOptions) -> f32 {
    opts.logit_scale.unwrap_or_else(|| model.logit_multiplier())
}

/// The positional table of the patch pass, as the official `upsample_pos_emb`: for a grid
/// other than the native one, the patch grid resized bilinearly (align_corners = false) with
/// torch's f32 arithmetic, the class position kept, and the whole table cast to fp16 (unless
/// `fix_pos_fp16`). None at the native grid (the official code uses the table as it is).
pub fn pos_table(vit: &VisionTransformer, gh: usize, gw: usize, opts: &TagclipOptions) -> Result<Option<Vec<f32>>> {
    let g = vit.cfg.grid;
    if (gh, gw) == (g, g) {
        return Ok(None);
    }
    let c = vit.cfg.width;
    let native = vit.positional_embedding(g, g);
    let mut chw = vec![0.0f32; c * g * g];
    for p in 0..g * g {
        for ci in 0..c {
            chw[ci * g * g + p] = native[(p + 1) * c + ci];
        }
    }
    let resized = interpolate_bilinear_chw(&chw, c, g, g, gh, gw)?;
    let mut out = Vec::with_capacity((gh * gw + 1) * c);
    out.extend_from_slice(&native[..c]);
    for p in 0..gh * gw {
        for ci in 0..c {
            out.push(resized[ci * gh * gw + p]);
        }
    }
    if !opts.fix_pos_fp16 {
        for v in out.iter_mut() {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    Ok(Some(out))
}

/// Runs TagCLIP on images that all have the same size (a batch of the patch pass).
/// One ViT pass on the model's GPU tower when it has one (`ClipModel::attach_cuda`), else on the CPU.
fn vit_forward(
    model: &ClipModel,
    vit: &VisionTransformer,
    pixels: &Tensor,
    req: &VitRequest,
) -> Result<crate::models::clip::vit::VitOutput> {
    match &model.cuda_visual {
        Some(crate::models::clip::CudaVisual::Vit(cv)) => cv.forward_request(pixels, req),
        _ => vit.forward(pixels, req),
    }
}

pub fn run_batch(
    model: &ClipModel,
    images: &[&Prepared],
    text: &ClassText,
    opts: &TagclipOptions,
) -> Result<Vec<ImageResult>> {
    let vit = vit_of(model)?;
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let (h, w) = (images[0].height, images[0].width);
    if images.iter().any(|im| im.height != h || im.width != w) {
        return Err(Error::Shape("run_batch: images of one batch must share their size".into()));
    }
    if text.dim != vit.cfg.output_dim {
        return Err(Error::Shape(format!(
            "class text of dim {} for an image encoder of dim {}",
            text.dim, vit.cfg.output_dim
        )));
    }
    let p = vit.cfg.patch;
    let (gh, gw) = (h / p, w / p);
    let (n, t, b) = (gh * gw, gh * gw + 1, images.len());
    let (d, c, k) = (vit.cfg.output_dim, text.len(), text.num_classes);
    let layers = vit.cfg.layers;
    let scale = scale_of(model, opts);

    // 1. Patch pass: diagonal mask in the last layer, all tokens, all attention maps.
    let mut pixels = Vec::with_capacity(b * 3 * h * w);
    for im in images {
        pixels.extend_from_slice(&im.pixels);
    }
    let diag = stages::diagonal_mask(t);
    let mut masks = vec![AttnMask::default(); layers];
    masks[layers - 1] = AttnMask { shared: Some(&diag), ..Default::default() };
    let pos = pos_table(vit, gh, gw, opts)?;
    let req = VitRequest { tokens: true, attn_probs: true, probs_before_mask: true, masks, pos_table: pos.as_deref() };
    let pixels = Tensor::from_f32(&[b, 3, h, w], pixels)?;
    // 2. Per image: P_coarse, DMAR (P_ref), then the CWR plan. On the GPU the maps stay there.
    // (P_hat, P_ref) per image.
    let refined_maps: Vec<(Vec<f32>, Vec<f32>)> = match &model.cuda_visual {
        Some(crate::models::clip::CudaVisual::Vit(cv)) => {
            cuda::patch_stage_cuda(cv, &pixels, &req, &text.emb, c, scale, gh, gw, opts)?
                .into_iter()
                .map(|s| (s.hat, s.refined))
                .collect()
        }
        _ => {
            let out = vit.forward(&pixels, &req)?;
            let tokens = out.tokens.ok_or_else(|| Error::Shape("ViT returned no tokens".into()))?;
            let tokens = tokens.f32s()?;
            let attn: Vec<&[f32]> = out.attn.iter().map(|a| a.f32s()).collect::<Result<_>>()?;
            (0..b)
                .map(|bi| {
                    let patch_tokens = &tokens[(bi * t + 1) * d..(bi + 1) * t * d];
                    let coarse = stages::class_softmax(patch_tokens, &text.emb, d, scale);
                    let maps: Vec<&[f32]> = attn.iter().map(|a| &a[bi * t * t..(bi + 1) * t * t]).collect();
                    let wmat = stages::dmar_weights(&maps, t, opts);
                    stages::dmar_refine(&wmat, &coarse, gh, gw, c, opts)
                })
                .collect()
        }
    };
    let mut results = Vec::with_capacity(b);
    for (hat, refined) in refined_maps {
        let local = stages::column_max(&refined, c, k);
        let plan = stages::cwr_plan(&refined, &local, gh, gw, c, opts);
        debug_assert_eq!(refined.len(), n * c);
        results.push(ImageResult {
            height: h,
            width: w,
            scores: local.clone(),
            local,
            tags: Vec::new(),
            cwr: plan,
            refined: opts.keep_maps.then_some(refined),
            hat: opts.keep_maps.then_some(hat),
        });
    }

    // 3. CWR: every crop of the batch, crop_batch at a time, at the native size.
    let size = vit.cfg.grid * p;
    let tc = vit.cfg.grid * vit.cfg.grid + 1;
    let jobs: Vec<(usize, usize)> =
        results.iter().enumerate().flat_map(|(bi, r)| (0..r.cwr.crops.len()).map(move |ci| (bi, ci))).collect();
    let mut features = vec![Vec::new(); b];
    for chunk in jobs.chunks(opts.crop_batch.max(1)) {
        let inputs: Vec<(Vec<f32>, Vec<f32>)> = chunk
            .par_iter()
            .map(|&(bi, ci)| stages::crop_inputs(&images[bi].pixels, h, w, &results[bi].cwr.crops[ci], p, size))
            .collect::<Result<_>>()?;
        let nb = inputs.len();
        let mut px = Vec::with_capacity(nb * 3 * size * size);
        let mut rows = Vec::with_capacity(nb * tc);
        for (a, r) in &inputs {
            px.extend_from_slice(a);
            rows.extend_from_slice(r);
        }
        let masks = vec![AttnMask { cls_row: Some(&rows), ..Default::default() }; layers];
        let req = VitRequest { masks, ..Default::default() };
        let pooled = vit_forward(model, vit, &Tensor::from_f32(&[nb, 3, size, size], px)?, &req)?.pooled;
        for (&(bi, _), f) in chunk.iter().zip(pooled.f32s()?.chunks_exact(d)) {
            features[bi].extend_from_slice(f);
        }
    }
    for (r, f) in results.iter_mut().zip(&features) {
        r.scores = stages::fuse(&r.local, &r.cwr.crops, f, &text.emb, d, scale, opts.fusion);
        r.tags = stages::tags_of(&r.scores, opts.tag_threshold);
    }
    Ok(results)
}

/// Decodes and transforms one image file.
pub fn prepare(path: &Path, transform: &Transform) -> std::result::Result<Prepared, String> {
    let img = decode_image_file(path).map_err(|e| match e {
        Error::Image { reason, .. } => reason,
        other => other.to_string(),
    })?;
    let (pixels, height, width) = transform.apply(&img);
    Ok(Prepared { pixels, height, width })
}

/// The results of a run, in input order; images that could not be read are listed apart.
pub struct TagclipRun {
    pub paths: Vec<PathBuf>,
    pub results: Vec<ImageResult>,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// Images of one size: (height, width) and (input index, image).
type SizeGroup = ((usize, usize), Vec<(usize, Prepared)>);

/// TagCLIP over image files: decode in parallel, group by size, `opts.batch` images per patch
/// pass, progress bar with images/s.
pub fn run(
    model: &ClipModel,
    images: &[PathBuf],
    text: &ClassText,
    opts: &TagclipOptions,
    show_progress: bool,
) -> Result<TagclipRun> {
    let t0 = Instant::now();
    let transform = transform_for(model)?;
    let pb = if show_progress { progress_bar(images.len(), "tagclip") } else { ProgressBar::hidden() };
    let mut slots: Vec<Option<ImageResult>> = vec![None; images.len()];
    let mut skipped = Vec::new();
    // Decode a window of images at a time, then batch those of equal size.
    let window = opts.batch.max(1) * 8;
    for (w0, chunk) in images.chunks(window).enumerate() {
        let loaded: Vec<_> = chunk.par_iter().map(|p| prepare(p, &transform)).collect();
        let mut groups: Vec<SizeGroup> = Vec::new();
        for (i, r) in loaded.into_iter().enumerate() {
            let idx = w0 * window + i;
            match r {
                Ok(pr) => match groups.iter_mut().find(|(hw, _)| *hw == (pr.height, pr.width)) {
                    Some((_, g)) => g.push((idx, pr)),
                    None => groups.push(((pr.height, pr.width), vec![(idx, pr)])),
                },
                Err(reason) => {
                    skipped.push(Skipped { path: images[idx].display().to_string(), reason });
                    pb.inc(1);
                }
            }
        }
        for (_, items) in groups {
            for part in items.chunks(opts.batch.max(1)) {
                let refs: Vec<&Prepared> = part.iter().map(|(_, p)| p).collect();
                let res = run_batch(model, &refs, text, opts)?;
                for ((idx, _), r) in part.iter().zip(res) {
                    slots[*idx] = Some(r);
                }
                pb.inc(part.len() as u64);
            }
        }
    }
    pb.finish_and_clear();
    let mut paths = Vec::new();
    let mut results = Vec::new();
    for (p, r) in images.iter().zip(slots) {
        if let Some(r) = r {
            paths.push(p.clone());
            results.push(r);
        }
    }
    Ok(TagclipRun { paths, results, skipped, seconds: t0.elapsed().as_secs_f64() })
}
