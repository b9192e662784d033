//! `labelfree ccd init | relabel | train | predict`: the arguments and the runs over datasets
//! and files. The arithmetic of each stage lives in [`super::init`] and [`super::relabel`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::init::{global_labels, ENTROPY_MAX, FLOOR};
use super::labels::CcdLabels;
use crate::data::datasets::args::{announce, dataset_json, ClassNameArgs, DatasetArgs, SplitUse};
use crate::data::datasets::{ClassNames, Dataset};
use crate::device::cuda::{DType, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{mean_ap, per_class_ap};
use crate::methods::cache::{self, CacheEntry, CacheStatus};
use crate::methods::encode::Skipped;
use crate::methods::report::{json_path, RunReport};
use crate::methods::zeroshot::encode_dataset;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::clip::{ClipModel, VisionEncoder};
use crate::ops::activation::Activation;
use crate::ops::similarity::class_probabilities;
use crate::tensor::Tensor;

#[derive(Args, Clone, Debug)]
pub struct CcdArgs {
    #[command(subcommand)]
    pub command: CcdCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum CcdCommand {
    /// Stage 0: debiased global CLIP labels of a dataset split (safetensors `labels`,
    /// `clip_scores`, `flags`, `bias`; the format `train --labels` reads)
    Init(InitArgs),
    /// The whole schedule on the trainer: stage 0 (or --labels), BCE epochs, stage 2 before
    /// --update-epoch, then BCE plus the consistency loss on a jittered view
    Train(super::train::CcdTrainArgs),
    /// Stage 2: classifier-guided crops scored by CLIP, and the label update
    Relabel(super::relabel_cli::RelabelArgs),
    /// A trained classifier's sigmoid scores over a dataset split (scores CSV), with its mAP
    Predict(super::relabel_cli::PredictArgs),
}

/// The CLIP model of stages 0 and 2.
#[derive(Args, Clone, Debug)]
pub struct ClipArgs {
    /// CLIP weights (.safetensors, OpenAI/open_clip or Hugging Face names), with a text tower
    /// (CCD: RN50x64)
    #[arg(long)]
    pub clip: PathBuf,
    /// Transformer activation when the weights do not record it: quick_gelu or gelu
    #[arg(long)]
    pub act: Option<String>,
    /// The one prompt template, `{}` is the class name
    #[arg(long, default_value = "a photo of the {}")]
    pub template: String,
    /// CLIP's square input side (the image is resized to it, aspect ignored, as CCD)
    #[arg(long, default_value_t = 640)]
    pub clip_size: usize,
    /// Images (stage 0) or crops (stage 2) per CLIP pass
    #[arg(long, default_value_t = 8)]
    pub clip_batch: usize,
    #[command(flatten)]
    pub names: ClassNameArgs,
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub clip: ClipArgs,
    /// Floor of the labels before the bias division (the official 1 / LS_coeff)
    #[arg(long, default_value_t = FLOOR)]
    pub floor: f32,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The labels (safetensors)
    #[arg(long)]
    pub out: PathBuf,
    /// The run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Stage 0's CLIP embedding cache.
#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Do not read or write the CLIP embedding cache
    #[arg(long)]
    pub no_cache: bool,
    /// The cache folder (default $LABELFREE_CACHE, else .labelfree-cache)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    /// The cache folder, None when off.
    pub fn dir(&self) -> Option<PathBuf> {
        (!self.no_cache).then(|| self.cache_dir.clone().unwrap_or_else(cache::default_dir))
    }
}

pub fn run_cli(a: CcdArgs, dev: Device, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<()> {
    match a.command {
        CcdCommand::Init(i) => run_init(&i, dev, gpu, dtype).map(|_| ()),
        CcdCommand::Relabel(r) => super::relabel_cli::run_relabel(&r, dev, gpu, dtype),
        CcdCommand::Predict(p) => {
            if gpu.is_some() {
                return Err(Error::Device("ccd predict runs on the CPU; drop --device".into()));
            }
            super::relabel_cli::run_predict(&p)
        }
        CcdCommand::Train(t) => {
            if gpu.is_some() && dtype != DType::F32 {
                return Err(Error::Device(format!(
                    "ccd train on the GPU runs in f32 (bf16 mixed precision is in `train` and `cdul train`); drop \
                     --dtype {dtype}"
                )));
            }
            super::train::run(&t, dev, gpu).map(|_| ())
        }
    }
}

/// CLIP ready for CCD: the model (its attention pool's resized positional table rounded to
/// fp16 as the official `upsample_pos_emb` does) and the class text embeddings of the
/// dataset's own class names.
pub struct ClipSetup {
    pub model: ClipModel,
    /// (C, D), L2-normalised
    pub text: Tensor,
    pub weights: PathBuf,
    pub template: String,
    pub prompt_classes: Vec<String>,
    /// CLIP's square input side
    pub size: usize,
    /// Images or crops per CLIP pass
    pub clip_batch: usize,
}

fn parse_act(s: &Option<String>) -> Result<Option<Activation>> {
    match s {
        None => Ok(None),
        Some(v) => {
            Activation::parse(v).map(Some).ok_or_else(|| Error::Weights(format!("--act {v}: use quick_gelu or gelu")))
        }
    }
}

pub fn load_clip(a: &ClipArgs, ds: &Dataset, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<ClipSetup> {
    let mut model = ClipModel::load(&a.clip, parse_act(&a.act)?, None)?;
    eprintln!(
        "model: {} from {} (activation {:?}: {})",
        model.arch,
        a.clip.display(),
        model.config.act,
        model.act_source
    );
    if let Some(w) = &model.act_warning {
        eprintln!("warning: {w}");
    }
    let m = model.input_multiple();
    if a.clip_size == 0 || !a.clip_size.is_multiple_of(m) {
        return Err(Error::Shape(format!("--clip-size {}: this model needs a positive multiple of {m}", a.clip_size)));
    }
    if let VisionEncoder::ResNet(r) = &mut model.visual {
        r.pos_f16 = true;
    }
    let style = a.names.style(ClassNames::Natural)?;
    let prompt_classes = ds.class_names(style);
    let text = model.class_embeddings(&ClipTokenizer::new()?, &prompt_classes, &[a.template.as_str()])?;
    if let Some(g) = gpu {
        // The CUDA tower takes the CPU tower's weights and its pos_f16 flag, set above.
        model.attach_cuda(g, dtype)?;
        eprintln!("device: {} ({dtype})", g.name);
    }
    Ok(ClipSetup {
        model,
        text,
        weights: a.clip.clone(),
        template: a.template.clone(),
        prompt_classes,
        size: a.clip_size,
        clip_batch: a.clip_batch.max(1),
    })
}

/// mAP (in [0, 1], over the classes with a positive) of stage 0's scores and labels against
/// the split's annotations: evaluation only.
#[derive(Clone, Debug, Serialize)]
pub struct Stage0Metrics {
    pub images: usize,
    pub classes_with_positives: usize,
    pub map_clip_scores: f64,
    pub map_labels: f64,
}

/// What stage 0 made of a split.
pub struct Stage0Run {
    pub file: CcdLabels,
    /// Images that could not be read: no label row.
    pub skipped: Vec<Skipped>,
    pub cache: CacheStatus,
    pub seconds: f64,
    pub never_top1: Vec<String>,
    pub metrics: Option<Stage0Metrics>,
}

/// Stage 0 over a dataset split: every image encoded once at the CLIP size (or taken from the
/// embedding cache), p = softmax(100 cos) over the classes, then flags, bias and labels.
pub fn stage0(
    clip: &ClipSetup,
    ds: &Dataset,
    clip_size: usize,
    batch: usize,
    floor: f32,
    cache_dir: Option<&Path>,
) -> Result<Stage0Run> {
    let t0 = Instant::now();
    let transform = super::clip_input(clip_size);
    let entry = match cache_dir {
        Some(dir) => {
            let act = format!("{:?},pos_f16", clip.model.config.act);
            let id = cache::weights_fingerprint(&clip.weights)?;
            Some(CacheEntry::new(dir, &id, &act, &ds.name, &ds.split, &transform.describe()))
        }
        None => None,
    };
    let enc = encode_dataset(&clip.model, ds, &transform, batch.max(1), entry.as_ref(), true)?;
    let c = ds.num_classes();
    let scores = if enc.items.is_empty() {
        Vec::new()
    } else {
        class_probabilities(&enc.embeddings, &clip.text, super::CLIP_SCALE)?.into_f32_vec()?
    };
    let g = global_labels(&scores, c, floor, ENTROPY_MAX)?;
    let never_top1: Vec<String> = g.never_top1.iter().map(|&j| ds.classes[j].clone()).collect();
    let truth: Vec<u8> = enc.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
    let metrics = (!enc.items.is_empty()).then(|| {
        let ap_scores = per_class_ap(&truth, &scores, c);
        Stage0Metrics {
            images: enc.items.len(),
            classes_with_positives: ap_scores.iter().flatten().count(),
            map_clip_scores: mean_ap(&ap_scores, false),
            map_labels: mean_ap(&per_class_ap(&truth, &g.labels, c), false),
        }
    });
    let mut meta = HashMap::new();
    for (k, v) in [
        ("stage", "ccd stage 0".to_string()),
        ("template", clip.template.clone()),
        ("clip_size", clip_size.to_string()),
        ("floor", floor.to_string()),
        ("entropy_max", ENTROPY_MAX.to_string()),
        ("arch", clip.model.arch.clone()),
        ("clip", clip.weights.display().to_string()),
        ("dataset", format!("{} {}", ds.name, ds.split)),
        ("never_top1", serde_json::to_string(&never_top1).unwrap_or_default()),
    ] {
        meta.insert(k.to_string(), v);
    }
    let file = CcdLabels {
        paths: enc.items.iter().map(|&i| ds.items[i].rel.clone()).collect(),
        classes: ds.classes.clone(),
        labels: g.labels,
        clip_scores: Some(scores),
        flags: Some(g.flags),
        bias: Some(g.bias),
        meta,
    };
    Ok(Stage0Run {
        file,
        skipped: enc.skipped,
        cache: enc.cache,
        seconds: t0.elapsed().as_secs_f64(),
        never_top1,
        metrics,
    })
}

/// `ccd init`: stage 0 written as a label file, with its report.
pub fn run_init(a: &InitArgs, dev: Device, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<Stage0Run> {
    let ds: Dataset = a.data.load(SplitUse::Train)?;
    announce(&ds);
    let clip = load_clip(&a.clip, &ds, gpu, dtype)?;
    let run = stage0(&clip, &ds, a.clip.clip_size, a.clip.clip_batch, a.floor, a.cache.dir().as_deref())?;
    run.file.write(&a.out)?;
    let jp = json_path(&a.json, &a.out);
    write_stage0_report(&run, &clip, &ds, dev, &[a.out.clone(), jp.clone()], &jp)?;
    Ok(run)
}

/// The stage-0 report: printed, and as JSON at `jp`.
pub fn write_stage0_report(
    run: &Stage0Run,
    clip: &ClipSetup,
    ds: &Dataset,
    dev: Device,
    outputs: &[PathBuf],
    jp: &Path,
) -> Result<()> {
    if !run.never_top1.is_empty() {
        eprintln!(
            "warning: {} classes are no confident image's top-1, their bias is 1 (the official code divides 0 by 0): {}",
            run.never_top1.len(),
            run.never_top1.join(", ")
        );
    }
    let mut skipped = ds.skipped.clone();
    skipped.extend(run.skipped.iter().cloned());
    let ok = run.file.rows();
    let flags = run.file.flags.as_deref().unwrap_or(&[]);
    let report = RunReport {
        command: "ccd init".into(),
        arch: clip.model.arch.clone(),
        weights: Some(clip.weights.display().to_string()),
        random_weights: clip.model.random,
        activation: format!("{:?}", clip.model.config.act),
        device: dev.to_string(),
        threads: rayon::current_num_threads(),
        transform: super::clip_input(run.file.meta.get("clip_size").and_then(|s| s.parse().ok()).unwrap_or(640))
            .describe(),
        images_total: ds.items.len() + ds.skipped.len(),
        images_ok: ok,
        skipped,
        seconds: run.seconds,
        images_per_s: run.cache.encoded as f64 / run.seconds.max(1e-9),
        decoded_images_per_s: 0.0,
        cache: Some(run.cache.clone()),
        outputs: outputs.iter().map(|p| p.display().to_string()).collect(),
        extra: serde_json::json!({
            "dataset": dataset_json(ds),
            "prompt_classes": clip.prompt_classes,
            "template": clip.template,
            "images_unreadable": run.skipped.len(),
            "confident_images": flags.iter().filter(|&&f| f == 1).count(),
            "bias": run.file.bias,
            "never_top1": run.never_top1,
            "metrics": run.metrics,
            "metrics_note": "mAP against the split's annotations: evaluation only, the labels never see them",
        }),
    };
    report.write_json(jp)?;
    report.print();
    let confident = flags.iter().filter(|&&f| f == 1).count();
    eprintln!("confident {confident} of {ok} images (entropy <= {ENTROPY_MAX})");
    match &run.metrics {
        Some(m) => eprintln!(
            "mAP       CLIP scores {:.2} · labels {:.2} ({} images, {} classes with positives)",
            100.0 * m.map_clip_scores,
            100.0 * m.map_labels,
            m.images,
            m.classes_with_positives
        ),
        None => eprintln!("no image could be scored: no metrics"),
    }
    Ok(())
}
