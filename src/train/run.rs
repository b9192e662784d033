//! A training run as the CLI's `train` calls it: soft labels + backbone in, checkpoints,
//! per-epoch metrics (with the mAP on an evaluation split) and a final report out (`--resume`
//! continues from the checkpoint in the output folder).
//!
//! The images are a dataset split (`--dataset --root --split`, the label rows matched to its
//! images by path) or, without `--dataset`, the label file's paths joined to `--root`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::data::color_jitter::ColorJitter;
use crate::data::datasets::args::{announce, dataset_json, DatasetArgs, SplitUse};
use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use crate::device::cuda::{DType, Gpu};
use crate::error::{Error, Result};
use crate::eval::scores_csv::count_and_head;
use crate::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use crate::train::checkpoint::{write_atomic, CHECKPOINT_FILE};
use crate::train::evaluate::EvalSet;
use crate::train::labels::{match_labels, read_labels, LabelMatch, SoftLabels};
use crate::train::trainer::{EpochReport, SecondView, TrainConfig, Trainer};

#[derive(Clone, Debug)]
pub struct TrainRun {
    pub labels: PathBuf,
    /// The images: a dataset split, or (no `dataset`) the folder `root` (default `.`) the
    /// label file's relative paths start from.
    pub data: DatasetArgs,
    /// Evaluate on this split of the same dataset after every epoch.
    pub eval_split: Option<String>,
    /// torchvision-named ResNet weights (fc ignored); None = a randomly initialised ResNet-50.
    pub backbone: Option<PathBuf>,
    /// Stem width of the randomly initialised ResNet (None: 64, ResNet-50's).
    pub width: Option<usize>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub size: usize,
    pub seed: u64,
    pub head: HeadKind,
    pub alpha: f32,
    /// CCD's jittered second view and consistency loss; None: the BCE alone.
    pub second_view: Option<SecondView>,
    pub resume: bool,
    pub out: PathBuf,
    pub progress: bool,
    /// On a device: f32, or bf16 mixed precision (the CPU trains in f32).
    pub dtype: DType,
    /// On a device: full batches replay a captured step (`TrainConfig::cuda_graph`).
    pub cuda_graph: bool,
}

#[derive(Serialize)]
pub struct TrainSummary {
    pub classes: Vec<String>,
    pub images: usize,
    /// The training split (with `--dataset`).
    pub dataset: Option<serde_json::Value>,
    /// How the label rows met the split's images (with `--dataset`).
    pub label_match: Option<LabelMatch>,
    pub eval_split: Option<serde_json::Value>,
    pub resumed_from_epoch: usize,
    pub epochs: Vec<EpochReport>,
}

/// The classifier and schedule flags `train`, `cdul train` and `ccd train` share.
#[derive(clap::Args, Clone, Debug)]
pub struct ClassifierTrainingArgs {
    /// After every epoch, the mAP on this split of the dataset (eval mode, same resize and
    /// normalisation, no augmentation; ground truth: for the report, and for ccd train's
    /// best_eval checkpoint)
    #[arg(long)]
    pub eval_split: Option<String>,
    /// torchvision ResNet-50 weights as safetensors (tools/convert_weights.py); omitted: random init
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    /// Stem width of a randomly initialised ResNet-50 (default 64, the real one; smaller for
    /// quick tests; not with --backbone, whose weights fix it)
    #[arg(long, conflicts_with = "backbone")]
    pub width: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Backbone learning rate (the head gets 10x)
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// Square input side
    #[arg(long, default_value_t = 448)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// On a device: launch every kernel of every training step instead of replaying the step
    /// captured once as a CUDA graph (the same launches, so the same results; for per-launch
    /// profiles and timelines)
    #[arg(long)]
    pub eager_steps: bool,
}

/// The `labelfree train` arguments (the CLI flattens these into its subcommand).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Soft labels: the scores CSV of zeroshot/tagclip (`path,<class>,...`, values in [0, 1])
    /// or safetensors (`labels` (N, C), metadata `paths`, `classes`)
    #[arg(long)]
    pub labels: PathBuf,
    // The training images: --dataset/--root/--split as for zeroshot (the label rows are
    // matched to the split's images by path: relative, absolute, or the file name when
    // unique). Without --dataset, --root is the folder the label file's paths start from.
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub training: ClassifierTrainingArgs,
    /// Plain linear head instead of CCD's CAM head
    #[arg(long)]
    pub linear_head: bool,
    /// CAM boost of the positive part (CCD: 3)
    #[arg(long, default_value_t = 3.0)]
    pub alpha: f32,
    /// Colour jitter of CCD's second view, `brightness,contrast,saturation,hue` as
    /// torchvision's ColorJitter (CCD: 0.5 each), or `off` (the second view is then only
    /// flipped)
    #[arg(long, default_value = "0.5,0.5,0.5,0.5")]
    pub jitter: ColorJitter,
    /// First epoch (0-based) with CCD's second view and consistency loss
    #[arg(long, default_value_t = 2)]
    pub consistency_from: usize,
    /// Weight of the consistency loss (CCD: 1; 0 = no second view, CDUL's plain BCE)
    #[arg(long, default_value_t = 1.0)]
    pub consistency_weight: f32,
    /// Continue from the checkpoint in --out
    #[arg(long)]
    pub resume: bool,
    /// Output folder: checkpoint.safetensors/.json, metrics.jsonl, train_report.json
    #[arg(long)]
    pub out: PathBuf,
}

impl TrainArgs {
    pub fn to_run(&self) -> TrainRun {
        let second_view = (self.consistency_weight != 0.0).then(|| SecondView {
            from_epoch: self.consistency_from,
            weight: self.consistency_weight,
            jitter: (!self.jitter.is_identity()).then_some(self.jitter),
        });
        TrainRun {
            labels: self.labels.clone(),
            data: self.data.clone(),
            eval_split: self.training.eval_split.clone(),
            backbone: self.training.backbone.clone(),
            width: self.training.width,
            epochs: self.training.epochs,
            batch: self.training.batch,
            lr: self.training.lr,
            size: self.training.size,
            seed: self.training.seed,
            head: if self.linear_head { HeadKind::Linear } else { HeadKind::Cam },
            alpha: self.alpha,
            second_view,
            resume: self.resume,
            out: self.out.clone(),
            progress: true,
            dtype: DType::F32,
            cuda_graph: !self.training.eager_steps,
        }
    }
}

/// How a device trains in `dtype`, for the run's log.
pub fn training_precision(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        "bf16 mixed-precision training: f32 master weights, Adam and batch-norm statistics"
    } else {
        "f32 training"
    }
}

/// The training samples, and what the report says about where they came from.
fn training_labels(r: &TrainRun) -> Result<(SoftLabels, Option<serde_json::Value>, Option<LabelMatch>)> {
    if r.data.dataset.is_none() {
        if r.data.split.is_some() || r.eval_split.is_some() {
            return Err(Error::Dataset("--split and --eval-split need --dataset".into()));
        }
        let root = r.data.root.clone().unwrap_or_else(|| PathBuf::from("."));
        return Ok((read_labels(&r.labels, &root)?, None, None));
    }
    let ds = r.data.load(SplitUse::Train)?;
    announce(&ds);
    let (labels, m) = match_labels(&r.labels, &ds)?;
    eprintln!(
        "labels: {} rows in {}, {} matched to the {} images of {} {}",
        m.label_rows,
        r.labels.display(),
        m.matched,
        ds.items.len(),
        ds.name,
        ds.split
    );
    for line in m.detail.describe() {
        eprintln!("  {line}");
    }
    Ok((labels, Some(dataset_json(&ds)), Some(m)))
}

/// The evaluation split, checked against the training classes.
pub(crate) fn eval_set(r: &TrainRun, classes: &[String]) -> Result<Option<(EvalSet, serde_json::Value)>> {
    let Some(split) = &r.eval_split else { return Ok(None) };
    let ds = r.data.load_split(split)?;
    announce(&ds);
    if ds.classes != classes {
        return Err(Error::Dataset(format!("{} {} has other classes than the training split", ds.name, ds.split)));
    }
    if !ds.skipped.is_empty() {
        eprintln!(
            "  {}",
            count_and_head(
                "images left out for their annotations",
                &ds.skipped.iter().map(|s| s.path.clone()).collect::<Vec<_>>()
            )
        );
    }
    Ok(Some((EvalSet::from_dataset(&ds), dataset_json(&ds))))
}

pub(crate) fn model_for(r: &TrainRun, cfg: &TrainConfig, classes: usize) -> Result<Trainer> {
    if r.resume && r.out.join(CHECKPOINT_FILE).exists() {
        let t = Trainer::resume(&r.out, cfg)?;
        if t.model.cfg.num_classes != classes {
            return Err(Error::Shape(format!(
                "checkpoint has {} classes, the labels {classes}",
                t.model.cfg.num_classes
            )));
        }
        return Ok(t);
    }
    let model = match (&r.backbone, r.width) {
        (Some(_), Some(_)) => {
            return Err(Error::Weights("--width is for a random init; the --backbone weights fix the width".into()))
        }
        (Some(p), None) => ResNet::load(p, classes, r.head, r.alpha, r.seed)?,
        (None, width) => {
            let base = ResNetConfig::resnet50(classes);
            let width = width.unwrap_or(base.width);
            if width == 0 {
                return Err(Error::Shape("--width must be at least 1".into()));
            }
            ResNet::new(ResNetConfig { width, head: r.head, alpha: r.alpha, ..base }, r.seed)
        }
    };
    Ok(Trainer::new(model, cfg))
}

/// Trains on the CPU, or with `gpu` on the device (steps, Adam and the evaluation there; the
/// images are decoded and augmented on the CPU).
pub fn run(r: &TrainRun, gpu: Option<&Arc<Gpu>>) -> Result<TrainSummary> {
    let (labels, dataset, label_match) = training_labels(r)?;
    let eval = eval_set(r, &labels.classes)?;
    let cfg = TrainConfig {
        epochs: r.epochs,
        batch: r.batch,
        lr: r.lr,
        head_lr_mult: 10.0,
        transform: Transform::SquareResize { size: r.size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY },
        hflip: true,
        second_view: r.second_view.clone(),
        seed: r.seed,
        out: r.out.clone(),
        progress: r.progress,
        stop_after_steps: None,
        record_train_outputs: false,
        cuda_graph: r.cuda_graph,
    };
    let mut trainer = model_for(r, &cfg, labels.classes.len())?;
    if let Some(gpu) = gpu {
        trainer.attach_cuda(gpu, r.dtype)?;
        eprintln!("device: {} ({})", gpu.name, training_precision(r.dtype));
    }
    let resumed_from_epoch = trainer.epoch;
    let epochs = trainer.train(&labels.samples, eval.as_ref().map(|(set, _)| set), &cfg)?;
    let summary = TrainSummary {
        classes: labels.classes,
        images: labels.samples.len(),
        dataset,
        label_match,
        eval_split: eval.map(|(_, json)| json),
        resumed_from_epoch,
        epochs,
    };
    write_report(&r.out, &summary)?;
    Ok(summary)
}

fn write_report(out: &Path, summary: &TrainSummary) -> Result<()> {
    let json = serde_json::to_string_pretty(summary).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&out.join("train_report.json"), json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[test]
    fn train_args_parse_with_ccd_defaults() {
        let a = Cli::parse_from(["x", "--labels", "l.csv", "--out", "o", "--resume"]).train.to_run();
        assert_eq!(
            (a.epochs, a.batch, a.lr, a.size, a.head, a.alpha, a.resume),
            (10, 16, 1e-5, 448, HeadKind::Cam, 3.0, true)
        );
        let v = a.second_view.unwrap();
        assert_eq!((v.from_epoch, v.weight, v.jitter), (2, 1.0, Some(ColorJitter::CCD)));
        let a = Cli::parse_from(["x", "--labels", "l", "--out", "o", "--consistency-weight", "0"]).train.to_run();
        assert!(a.second_view.is_none());
        assert!(Cli::try_parse_from(["x", "--labels", "l", "--out", "o", "--jitter", "1,2"]).is_err());
    }
}
