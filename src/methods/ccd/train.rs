//! `ccd train`: CCD's whole schedule on the trainer of src/train.
//!
//! - Stage 0 (`ccd init`'s labels, computed here into `labels_stage0.safetensors` unless
//!   `--labels` gives a file: ccd init's, or any label file `train` reads, such as TagCLIP's
//!   scores CSV; without a stage-0 `bias` stage 2 divides by 1).
//! - Epochs before `--update-epoch` (CCD: 0 and 1): the BCE against the labels, CAM head with
//!   alpha 3 (the official code sets it right after stage 0).
//! - Before each of the `--update-epochs` epochs from `--update-epoch` (the official `inf_num`,
//!   1): stage 2 with the classifier as it stands ([`super::relabel_cli::stage2`]); the first
//!   calibrates the threshold (unless `--threshold`), later ones reuse it, as the official code.
//!   The labels each update makes are saved as `labels_epochNNN.safetensors` (NNN: the epoch
//!   that first trains on them) with their boxes.
//! - From `--update-epoch` on: the BCE plus the consistency loss of a jittered second view. The
//!   official per-sample weight clamp(flag + 1, 0, 1) is 1 for both flag values, so the BCE
//!   is unweighted.
//! - After every epoch: the mAP on `--eval-split` (it uses the ground truth) and the training
//!   mAP against the pseudo-labels (a class's positives: the labels equal to 1; classes
//!   without one count 0, as the official `compute_metrics`), by default (`--train-map
//!   batches`) from the training-mode predictions of view 1 of the augmented batches as they
//!   pass, against the labels they were trained on, as the official code; `--train-map eval`
//!   instead scores the training images in eval mode after the epoch.
//! - Two checkpoints kept: `best_eval/` (the best eval-split mAP: chosen with the ground
//!   truth) and `best_ccd/` (the official ground-truth-free choice: the first epoch where the
//!   gain of the training mAP over the previous epoch's rises).
//!
//! Resuming (`--resume`): the trainer continues from its checkpoint (E epochs done); the labels
//! are those of the last update before epoch E, else stage 0's; an update due before epoch E
//! whose file is missing is made first; the checkpoint choices continue from the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::cli::{load_clip, stage0, write_stage0_report, CacheArgs, ClipArgs, ClipSetup};
use super::init::FLOOR;
use super::labels::CcdLabels;
use super::relabel_cli::{rows_in_split, stage2, Stage2Args};
use crate::data::color_jitter::ColorJitter;
use crate::data::datasets::args::{announce, dataset_json, DatasetArgs, SplitUse};
use crate::data::datasets::Dataset;
use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use crate::device::cuda::{DType, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{mean_ap, per_class_ap};
use crate::methods::write_atomic;
use crate::models::resnet50::HeadKind;
use crate::train::checkpoint::{CHECKPOINT_FILE, CHECKPOINT_JSON};
use crate::train::evaluate::{evaluate, evaluate_with, EvalSet};
use crate::train::run::{eval_set, model_for, ClassifierTrainingArgs, TrainRun};
use crate::train::trainer::{Sample, SecondView, TrainConfig, Trainer};

pub const REPORT_FILE: &str = "ccd_train_report.json";
pub const STAGE0_FILE: &str = "labels_stage0.safetensors";
pub const BEST_EVAL_DIR: &str = "best_eval";
pub const BEST_CCD_DIR: &str = "best_ccd";

#[derive(Args, Clone, Debug)]
pub struct CcdTrainArgs {
    // The training images: --dataset/--root/--split (default: the training split).
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub clip: ClipArgs,
    /// Stage-0 labels from a file (ccd init's, or a label file `train` reads, e.g. TagCLIP's
    /// scores CSV); omitted: computed with --clip
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Floor of the stage-0 labels when computed here
    #[arg(long, default_value_t = FLOOR)]
    pub floor: f32,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub training: ClassifierTrainingArgs,
    /// CAM boost of the positive part
    #[arg(long, default_value_t = 3.0)]
    pub cam_alpha: f32,
    /// Colour jitter of the second view (brightness,contrast,saturation,hue), or `off`
    #[arg(long, default_value = "0.5,0.5,0.5,0.5")]
    pub jitter: ColorJitter,
    /// Weight of the consistency loss
    #[arg(long, default_value_t = 1.0)]
    pub consistency_weight: f32,
    /// The first epoch (0-based) that trains on relabelled labels, with the second view
    #[arg(long, default_value_t = 2)]
    pub update_epoch: usize,
    /// Epochs from --update-epoch preceded by a relabel (the official inf_num)
    #[arg(long, default_value_t = 1)]
    pub update_epochs: usize,
    #[command(flatten)]
    pub stage2: Stage2Args,
    /// Images per stage-2 batch
    #[arg(long, default_value_t = 8)]
    pub relabel_batch: usize,
    /// Where the training mAP behind best_ccd comes from: `batches` (the official code: the
    /// training-mode predictions as the batches pass) or `eval` (an eval-mode pass over the
    /// training images after each epoch)
    #[arg(long, value_enum, default_value_t = TrainMapSource::Batches)]
    pub train_map: TrainMapSource,
    /// Continue from the checkpoint, the labels and the report in --out
    #[arg(long)]
    pub resume: bool,
    /// Output folder
    #[arg(long)]
    pub out: PathBuf,
}

/// Where `ccd train` takes the training mAP of its ground-truth-free checkpoint choice from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainMapSource {
    Batches,
    Eval,
}

/// One label update.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The first epoch (0-based) trained on these labels.
    pub before_epoch: usize,
    pub labels: String,
    pub boxes: String,
    pub threshold: f64,
    pub summary: serde_json::Value,
}

/// The checkpoint choices, carried across a resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Choices {
    /// Best eval-split mAP so far (in [0, 1]) and its epoch (counted from 1).
    pub best_eval_map: f64,
    pub best_eval_epoch: Option<usize>,
    /// The official ground-truth-free rule's state (mAPs x 100, as the official code).
    pub map_train_prev: Option<f64>,
    pub map_train_grad: f64,
    pub map_train_grad_prev: f64,
    pub best_ccd_epoch: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CcdTrainReport {
    pub command: String,
    pub dataset: serde_json::Value,
    pub classes: Vec<String>,
    pub images: usize,
    pub stage0_labels: String,
    pub updates: Vec<UpdateRecord>,
    /// Per epoch: the trainer's report plus `train_map_vs_pseudo` (x 100).
    pub epochs: Vec<serde_json::Value>,
    pub choices: Choices,
    pub best_eval_note: String,
    pub resumed_from_epoch: usize,
}

/// Labels that epoch `e` (0-based) first trains on.
pub fn labels_file(out: &Path, e: usize) -> PathBuf {
    out.join(format!("labels_epoch{e:03}.safetensors"))
}

fn boxes_file(out: &Path, e: usize) -> PathBuf {
    out.join(format!("boxes_epoch{e:03}.json"))
}

fn update_due(a: &CcdTrainArgs, e: usize) -> bool {
    e >= a.update_epoch && e < a.update_epoch + a.update_epochs
}

/// Copies the trainer's checkpoint (and its JSON twin) into `out/dir`, each file through a
/// temporary name and a rename.
fn keep_checkpoint(out: &Path, dir: &str) -> Result<()> {
    let dst = out.join(dir);
    std::fs::create_dir_all(&dst).map_err(|e| Error::Io { path: dst.display().to_string(), source: e })?;
    for f in [CHECKPOINT_FILE, CHECKPOINT_JSON] {
        let tmp = dst.join(format!("{f}.tmp"));
        let io = |e| Error::Io { path: tmp.display().to_string(), source: e };
        std::fs::copy(out.join(f), &tmp).map_err(io)?;
        std::fs::rename(&tmp, dst.join(f)).map_err(io)?;
    }
    Ok(())
}

/// mAP x 100 of scores (N, C) against the pseudo-labels' ones (N, C): a class's positives are
/// the labels equal to 1; classes without one count 0, as the official `compute_metrics`.
fn map_vs_pseudo(scores: &[f32], pseudo: &[f32], c: usize) -> f64 {
    let positives: Vec<u8> = pseudo.iter().map(|&v| (v == 1.0) as u8).collect();
    100.0 * mean_ap(&per_class_ap(&positives, scores, c), true)
}

/// `map_vs_pseudo` of the classifier in eval mode over the training images (`--train-map eval`).
fn train_map_vs_pseudo(trainer: &mut Trainer, samples: &[Sample], transform: &Transform, batch: usize) -> Result<f64> {
    let c = trainer.model.cfg.num_classes;
    let set = EvalSet {
        name: "training images vs pseudo-labels".into(),
        paths: samples.iter().map(|s| s.path.clone()).collect(),
        labels: samples.iter().flat_map(|s| s.target.iter().map(|&v| (v == 1.0) as u8)).collect(),
        classes: c,
    };
    let r = match &mut trainer.cuda {
        Some(dev) => {
            let mut logits = |x: &[f32], n: usize, h: usize, w: usize| dev.logits_eval(x, n, h, w);
            evaluate_with(&mut logits, &set, transform, batch, None)?
        }
        None => evaluate(&trainer.model, &set, transform, batch, None)?,
    };
    Ok(100.0 * mean_ap(&r.ap, true))
}

/// Stage 0: from --labels, from a previous run's file in --out, or computed.
fn stage0_labels(a: &CcdTrainArgs, ds: &Dataset, clip: &ClipSetup, dev: Device) -> Result<(CcdLabels, PathBuf)> {
    if let Some(p) = &a.labels {
        return Ok((CcdLabels::read(p)?, p.clone()));
    }
    let p = a.out.join(STAGE0_FILE);
    if a.resume && p.is_file() {
        return Ok((CcdLabels::read(&p)?, p));
    }
    let run = stage0(clip, ds, a.clip.clip_size, a.clip.clip_batch, a.floor, a.cache.dir().as_deref())?;
    run.file.write(&p)?;
    let mut jp = p.as_os_str().to_owned();
    jp.push(".report.json");
    let jp = PathBuf::from(jp);
    write_stage0_report(&run, clip, ds, dev, &[p.clone(), jp.clone()], &jp)?;
    Ok((run.file, p))
}

/// The update before epoch `e`: stage 2 with the trainer's current weights; the samples get
/// the new labels.
#[allow(clippy::too_many_arguments)]
fn update_before(
    a: &CcdTrainArgs,
    e: usize,
    clip: &ClipSetup,
    trainer: &Trainer,
    ds: &Dataset,
    labels: &mut CcdLabels,
    rows: &[usize],
    samples: &mut [Sample],
    threshold: Option<f64>,
    gpu: Option<&Arc<Gpu>>,
) -> Result<UpdateRecord> {
    eprintln!("stage 2 before epoch {}", e + 1);
    let s2 = Stage2Args { threshold: threshold.or(a.stage2.threshold), ..a.stage2.clone() };
    let (new, boxes, summary) = stage2(clip, &trainer.model, gpu, ds, labels, rows, &s2, a.relabel_batch)?;
    let (lp, bp) = (labels_file(&a.out, e), boxes_file(&a.out, e));
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    write_atomic(&bp, serde_json::to_string_pretty(&boxes).map_err(json)?.as_bytes())?;
    new.write(&lp)?;
    let c = new.classes.len();
    for (s, row) in samples.iter_mut().zip(new.labels.chunks_exact(c)) {
        s.target.copy_from_slice(row);
    }
    eprintln!(
        "labels updated: threshold {:.3}, {} crops, mean |change| {:.3e} -> {}",
        summary.threshold,
        summary.crops,
        summary.mean_abs_change,
        lp.display()
    );
    *labels = new;
    Ok(UpdateRecord {
        before_epoch: e,
        labels: lp.display().to_string(),
        boxes: bp.display().to_string(),
        threshold: summary.threshold,
        summary: serde_json::to_value(&summary).map_err(json)?,
    })
}

/// Runs `ccd train` on the CPU, or with `gpu` on the device (the trainer and CLIP there; the
/// stage-2 classifier passes on the CPU).
pub fn run(a: &CcdTrainArgs, dev: Device, gpu: Option<&Arc<Gpu>>) -> Result<CcdTrainReport> {
    if a.update_epochs == 0 {
        return Err(Error::Shape("--update-epochs must be at least 1".into()));
    }
    let ds: Dataset = a.data.load(SplitUse::Train)?;
    announce(&ds);
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Io { path: a.out.display().to_string(), source: e })?;
    let clip = load_clip(&a.clip, &ds, gpu, DType::F32)?;
    let (mut labels, stage0_path) = stage0_labels(a, &ds, &clip, dev)?;
    let rows = rows_in_split(&labels, &ds, &stage0_path)?;
    if rows.len() < ds.items.len() {
        eprintln!(
            "note: {} images of the split have no stage-0 label row and are left out",
            ds.items.len() - rows.len()
        );
    }
    let transform =
        Transform::SquareResize { size: a.training.size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY };
    let second_view = (a.consistency_weight != 0.0).then(|| SecondView {
        from_epoch: a.update_epoch,
        weight: a.consistency_weight,
        jitter: (!a.jitter.is_identity()).then_some(a.jitter),
    });
    let cfg = TrainConfig {
        epochs: a.training.epochs,
        batch: a.training.batch,
        lr: a.training.lr,
        head_lr_mult: 10.0,
        transform: transform.clone(),
        hflip: true,
        second_view: second_view.clone(),
        seed: a.training.seed,
        out: a.out.clone(),
        progress: true,
        stop_after_steps: None,
        record_train_outputs: a.train_map == TrainMapSource::Batches,
        cuda_graph: !a.training.eager_steps,
    };
    let train_run = TrainRun {
        labels: stage0_path.clone(),
        data: a.data.clone(),
        eval_split: a.training.eval_split.clone(),
        backbone: a.training.backbone.clone(),
        width: a.training.width,
        epochs: a.training.epochs,
        batch: a.training.batch,
        lr: a.training.lr,
        size: a.training.size,
        seed: a.training.seed,
        head: HeadKind::Cam,
        alpha: a.cam_alpha,
        second_view,
        resume: a.resume,
        out: a.out.clone(),
        progress: true,
        dtype: DType::F32,
        cuda_graph: !a.training.eager_steps,
    };
    let mut trainer = model_for(&train_run, &cfg, ds.num_classes())?;
    let resumed_from_epoch = trainer.epoch;
    let eval = eval_set(&train_run, &ds.classes)?;
    if let Some(g) = gpu {
        trainer.attach_cuda(g, DType::F32)?;
        eprintln!("device: {} (f32 training)", g.name);
    }
    let mut report = CcdTrainReport {
        command: "ccd train".into(),
        dataset: dataset_json(&ds),
        classes: ds.classes.clone(),
        images: rows.len(),
        stage0_labels: stage0_path.display().to_string(),
        updates: Vec::new(),
        epochs: Vec::new(),
        choices: Choices { map_train_grad: 100.0, map_train_grad_prev: 100.0, ..Choices::default() },
        best_eval_note: "best_eval is chosen with the eval split's ground truth; best_ccd (the official \
                         ground-truth-free rule) is not"
            .into(),
        resumed_from_epoch,
    };
    let rp = a.out.join(REPORT_FILE);
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    if a.resume && trainer.epoch > 0 {
        match std::fs::read_to_string(&rp).ok().and_then(|t| serde_json::from_str::<CcdTrainReport>(&t).ok()) {
            Some(prev) => {
                report.updates = prev.updates.into_iter().filter(|u| u.before_epoch <= trainer.epoch).collect();
                report.epochs = prev.epochs.into_iter().take(trainer.epoch).collect();
                report.choices = prev.choices;
            }
            None => eprintln!(
                "warning: no readable {} in the output folder: the checkpoint choices start over",
                REPORT_FILE
            ),
        }
        if report.epochs.len() < trainer.epoch {
            eprintln!(
                "warning: the report records {} of the {} epochs of the checkpoint: the checkpoint choices miss the rest",
                report.epochs.len(),
                trainer.epoch
            );
        }
        // the labels of the last update before the checkpoint's epoch
        if let Some(e) = (0..trainer.epoch).rev().find(|&e| update_due(a, e) && labels_file(&a.out, e).is_file()) {
            labels = CcdLabels::read(&labels_file(&a.out, e))?;
            eprintln!("resumed with the labels of {}", labels_file(&a.out, e).display());
        }
    }
    let mut samples: Vec<Sample> = rows
        .iter()
        .zip(labels.labels.chunks_exact(ds.num_classes()))
        .map(|(&i, row)| Sample { path: ds.items[i].path.clone(), target: row.to_vec() })
        .collect();
    while trainer.epoch < a.training.epochs {
        let e = trainer.epoch;
        let made = report.updates.iter().any(|u| u.before_epoch == e) && labels_file(&a.out, e).is_file();
        if update_due(a, e) && a.resume && made {
            // stopped after this update, before its epoch's checkpoint: its labels stand
            labels = CcdLabels::read(&labels_file(&a.out, e))?;
            let c = labels.classes.len();
            for (s, row) in samples.iter_mut().zip(labels.labels.chunks_exact(c)) {
                s.target.copy_from_slice(row);
            }
            eprintln!("resumed with the labels of {}", labels_file(&a.out, e).display());
        } else if update_due(a, e) {
            // later updates reuse the first one's threshold, as the official code
            let threshold = report.updates.iter().find(|u| u.before_epoch < e).map(|u| u.threshold);
            let rec = update_before(a, e, &clip, &trainer, &ds, &mut labels, &rows, &mut samples, threshold, gpu)?;
            report.updates.retain(|u| u.before_epoch != e);
            report.updates.push(rec);
            write_atomic(&rp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
        }
        let one = TrainConfig { epochs: e + 1, ..cfg.clone() };
        let mut reports = trainer.train(&samples, eval.as_ref().map(|(s, _)| s), &one)?;
        let epoch = reports.pop().ok_or_else(|| Error::Internal("the trainer returned no epoch".into()))?;
        let map_train = match &epoch.train_outputs {
            Some(o) => map_vs_pseudo(&o.logits, &o.targets, ds.num_classes()),
            None => train_map_vs_pseudo(&mut trainer, &samples, &transform, a.training.batch)?,
        };
        let ch = &mut report.choices;
        // the official rules, epoch by epoch (e 0-based)
        if let Some(prev) = ch.map_train_prev.filter(|_| e >= 1) {
            ch.map_train_grad = map_train - prev;
        }
        ch.map_train_prev = Some(map_train);
        let mut saved = Vec::new();
        if let Some(ev) = &epoch.eval {
            if ch.best_eval_map < ev.map {
                ch.best_eval_map = ev.map;
                ch.best_eval_epoch = Some(e + 1);
                keep_checkpoint(&a.out, BEST_EVAL_DIR)?;
                saved.push(BEST_EVAL_DIR);
            }
        }
        if ch.map_train_grad - ch.map_train_grad_prev > 0.0 && ch.best_ccd_epoch.is_none() {
            ch.best_ccd_epoch = Some(e + 1);
            keep_checkpoint(&a.out, BEST_CCD_DIR)?;
            saved.push(BEST_CCD_DIR);
        }
        ch.map_train_grad_prev = ch.map_train_grad;
        eprintln!(
            "epoch {}: train mAP vs pseudo-labels {map_train:.2}{}",
            e + 1,
            if saved.is_empty() { String::new() } else { format!(" · kept as {}", saved.join(", ")) }
        );
        let mut v = serde_json::to_value(&epoch).map_err(json)?;
        v["train_map_vs_pseudo"] = serde_json::json!(map_train);
        v["kept_as"] = serde_json::json!(saved);
        report.epochs.push(v);
        write_atomic(&rp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    }
    write_atomic(&rp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    let ch = &report.choices;
    match ch.best_eval_epoch {
        Some(e) => {
            eprintln!("best_eval: epoch {e}, mAP {:.2} (chosen with the ground truth)", 100.0 * ch.best_eval_map)
        }
        None => eprintln!("best_eval: none (no --eval-split)"),
    }
    match ch.best_ccd_epoch {
        Some(e) => eprintln!("best_ccd:  epoch {e} (the official ground-truth-free choice)"),
        None => eprintln!("best_ccd:  none (the training-mAP gain never rose)"),
    }
    eprintln!("wrote     {}", rp.display());
    Ok(report)
}
