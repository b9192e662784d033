//! CDUL's training (`cdul train`): the trainer of src/train with the BCE alone (no second
//! view), alternating with gradient-alignment updates of the labels. After epoch e (counted
//! from 1) an update is due when e >= `update_from` and (e - update_from) is a multiple of
//! `update_every`: the classifier's sigmoid scores over the training images (eval mode, the
//! training resize without augmentation) move the labels one step ([`super::update`]), and
//! the next epoch trains on them.
//!
//! Files in `--out`, besides the trainer's (checkpoint, metrics.jsonl, metrics_epochNNN.json):
//! `labels_epochNNN.safetensors` (the labels after the update of epoch NNN; the format of
//! `train --labels`), `preds_epochNNN.csv` (the scores that update used: `cdul update --labels
//! <previous> --preds preds_epochNNN.csv` gives the same labels), `cdul_train_report.json`.
//!
//! Resuming: the trainer continues from its checkpoint (E epochs done); the labels are those of
//! the last update at or before E, else `--labels`. When the run stopped between the
//! checkpoint of E and the update due after E, that update is made first (from the
//! checkpoint's weights, so the outcome is the same).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::update::{self, UpdateParams, UpdateStats};
use super::LabelFile;
use crate::data::datasets::args::{announce, dataset_json, DatasetArgs, SplitUse};
use crate::data::datasets::Dataset;
use crate::data::loader::{Loader, Skipped};
use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use crate::device::cuda::{DType, Gpu};
use crate::error::{Error, Result};
use crate::eval::scores_csv;
use crate::methods::write_atomic;
use crate::models::resnet50::HeadKind;
use crate::train::labels::match_labels;
use crate::train::run::{eval_set, model_for, ClassifierTrainingArgs, TrainRun};
use crate::train::trainer::{EpochReport, Sample, TrainConfig, Trainer};

#[derive(Args, Clone, Debug)]
pub struct CdulTrainArgs {
    /// Initial soft labels (cdul init's output, or any label file `train` reads)
    #[arg(long)]
    pub labels: PathBuf,
    // The training images: --dataset/--root/--split (default: the training split); the
    // label rows are matched to its images by path.
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub training: ClassifierTrainingArgs,
    /// Classifier head: linear (a plain ResNet classifier) or cam (CCD's CAM head)
    #[arg(long, default_value = "linear")]
    pub head: String,
    /// CAM boost of the positive part (with --head cam)
    #[arg(long, default_value_t = 3.0)]
    pub cam_alpha: f32,
    /// Label update step size on the logits
    #[arg(long, default_value_t = 0.25)]
    pub eta: f32,
    /// Width of the Gaussian weight psi centred at 0.5
    #[arg(long, default_value_t = 0.2)]
    pub sigma: f32,
    /// Update the labels every this many epochs
    #[arg(long, default_value_t = 1)]
    pub update_every: usize,
    /// First epoch (counted from 1) after which the labels are updated
    #[arg(long, default_value_t = 1)]
    pub update_from: usize,
    /// Continue from the checkpoint and the last label update in --out
    #[arg(long)]
    pub resume: bool,
    /// Output folder
    #[arg(long)]
    pub out: PathBuf,
}

/// One epoch of a `cdul train` run.
#[derive(Clone, Debug, Serialize)]
pub struct CdulEpoch {
    pub epoch: EpochReport,
    /// The label update after the epoch, when one was due.
    pub update: Option<LabelUpdate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabelUpdate {
    pub after_epoch: usize,
    pub labels: String,
    pub preds: String,
    pub change: UpdateStats,
    /// Images whose scores could not be computed (unreadable): their labels stay.
    pub unscored: Vec<Skipped>,
}

#[derive(Serialize)]
pub struct CdulTrainReport {
    pub command: String,
    pub dataset: serde_json::Value,
    pub classes: Vec<String>,
    pub images: usize,
    pub initial_labels: String,
    /// The label file the run (re)started from.
    pub started_from_labels: String,
    pub resumed_from_epoch: usize,
    pub params: UpdateParams,
    pub update_every: usize,
    pub update_from: usize,
    pub epochs: Vec<CdulEpoch>,
}

/// Labels after the update of epoch `e`.
pub fn labels_file(out: &Path, e: usize) -> PathBuf {
    out.join(format!("labels_epoch{e:03}.safetensors"))
}

/// Scores the update of epoch `e` used.
pub fn preds_file(out: &Path, e: usize) -> PathBuf {
    out.join(format!("preds_epoch{e:03}.csv"))
}

fn update_due(a: &CdulTrainArgs, e: usize) -> bool {
    e >= a.update_from && (e - a.update_from).is_multiple_of(a.update_every.max(1))
}

/// The latest update at or before epoch `e` whose labels are in `out`.
fn last_update(a: &CdulTrainArgs, e: usize) -> Option<(usize, PathBuf)> {
    (1..=e).rev().filter(|&k| update_due(a, k)).map(|k| (k, labels_file(&a.out, k))).find(|(_, p)| p.is_file())
}

/// One row of sigmoid scores per sample (None: the image could not be read), and the
/// unreadable images.
type Predictions = (Vec<Option<Vec<f32>>>, Vec<Skipped>);

/// The classifier's sigmoid scores of every sample, in eval mode, (samples, C); the rows of
/// unreadable images are None.
fn predict(trainer: &mut Trainer, samples: &[Sample], transform: &Transform, batch: usize) -> Result<Predictions> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let pb = crate::methods::encode::progress_bar(paths.len(), "scores");
    let mut loader = Loader::spawn(paths.clone(), transform.clone(), batch.max(1), 2);
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; samples.len()];
    let mut failed = Vec::new();
    while let Some(b) = loader.next_batch() {
        for (i, reason) in b.failed {
            failed.push(Skipped { path: paths[i].display().to_string(), reason });
        }
        for g in b.groups {
            let n = g.indices.len();
            // (n, 3, H, W) -> (n, C) logits.
            let logits = match &mut trainer.cuda {
                Some(dev) => dev.logits_eval(&g.pixels, n, g.height, g.width)?,
                None => trainer.model.forward_eval(&g.pixels, n, g.height, g.width)?.logits,
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
    Ok((rows, failed))
}

/// The update after epoch `e`: scores, one step, labels and scores written, samples updated.
#[allow(clippy::too_many_arguments)]
fn update_after(
    a: &CdulTrainArgs,
    e: usize,
    trainer: &mut Trainer,
    samples: &mut [Sample],
    rels: &[String],
    classes: &[String],
    transform: &Transform,
    params: UpdateParams,
) -> Result<LabelUpdate> {
    let (rows, unscored) = predict(trainer, samples, transform, a.training.batch)?;
    let c = classes.len();
    let before: Vec<f32> = samples.iter().flat_map(|s| s.target.iter().copied()).collect();
    let mut after = before.clone();
    let (mut p_rels, mut p_scores) = (Vec::new(), Vec::new());
    for (k, row) in rows.iter().enumerate() {
        if let Some(p) = row {
            let new = update::step(&before[k * c..(k + 1) * c], p, params)?;
            after[k * c..(k + 1) * c].copy_from_slice(&new);
            p_rels.push(rels[k].clone());
            p_scores.extend_from_slice(p);
        }
    }
    let preds = preds_file(&a.out, e);
    write_atomic(&preds, scores_csv::to_csv(&p_rels, classes, &p_scores).as_bytes())?;
    let mut meta = HashMap::new();
    let provenance = serde_json::json!({"after_epoch": e, "preds": preds.display().to_string(), "eta": params.eta, "sigma": params.sigma});
    meta.insert("update".to_string(), provenance.to_string());
    let file = LabelFile { paths: rels.to_vec(), classes: classes.to_vec(), labels: after.clone(), scores: None, meta };
    let labels = labels_file(&a.out, e);
    file.write(&labels)?;
    for (s, row) in samples.iter_mut().zip(after.chunks_exact(c)) {
        s.target.copy_from_slice(row);
    }
    let change = update::stats(&before, &after, c);
    eprintln!(
        "labels updated after epoch {e}: mean |change| {:.3e}, max {:.3e} -> {}",
        change.mean_abs_change,
        change.max_abs_change,
        labels.display()
    );
    Ok(LabelUpdate {
        after_epoch: e,
        labels: labels.display().to_string(),
        preds: preds.display().to_string(),
        change,
        unscored,
    })
}

/// Runs `cdul train` on the CPU, or with `gpu` on the device.
pub fn run(a: &CdulTrainArgs, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<CdulTrainReport> {
    let head = match a.head.as_str() {
        "linear" => HeadKind::Linear,
        "cam" => HeadKind::Cam,
        h => return Err(Error::Shape(format!("--head {h}: use linear or cam"))),
    };
    let params = UpdateParams { eta: a.eta, sigma: a.sigma };
    let ds: Dataset = a.data.load(SplitUse::Train)?;
    announce(&ds);
    let run = TrainRun {
        labels: a.labels.clone(),
        data: a.data.clone(),
        eval_split: a.training.eval_split.clone(),
        backbone: a.training.backbone.clone(),
        width: a.training.width,
        epochs: a.training.epochs,
        batch: a.training.batch,
        lr: a.training.lr,
        size: a.training.size,
        seed: a.training.seed,
        head,
        alpha: a.cam_alpha,
        second_view: None,
        resume: a.resume,
        out: a.out.clone(),
        progress: true,
        dtype,
        cuda_graph: !a.training.eager_steps,
    };
    let transform =
        Transform::SquareResize { size: a.training.size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY };
    let cfg = TrainConfig {
        epochs: a.training.epochs,
        batch: a.training.batch,
        lr: a.training.lr,
        head_lr_mult: 10.0,
        transform: transform.clone(),
        hflip: true,
        second_view: None,
        seed: a.training.seed,
        out: a.out.clone(),
        progress: true,
        stop_after_steps: None,
        record_train_outputs: false,
        cuda_graph: !a.training.eager_steps,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Io { path: a.out.display().to_string(), source: e })?;
    let mut trainer = model_for(&run, &cfg, ds.num_classes())?;
    let resumed_from_epoch = trainer.epoch;
    let start_labels = match last_update(a, trainer.epoch) {
        Some((_, p)) if a.resume => p,
        _ => a.labels.clone(),
    };
    let (labels, m) = match_labels(&start_labels, &ds)?;
    eprintln!(
        "labels: {} rows in {}, {} matched to the {} images of {} {}",
        m.label_rows,
        start_labels.display(),
        m.matched,
        ds.items.len(),
        ds.name,
        ds.split
    );
    for line in m.detail.describe() {
        eprintln!("  {line}");
    }
    let rels: Vec<String> = m.detail.items.iter().map(|&i| ds.items[i].rel.clone()).collect();
    let mut samples = labels.samples;
    let eval = eval_set(&run, &labels.classes)?;
    if let Some(g) = gpu {
        trainer.attach_cuda(g, dtype)?;
        eprintln!("device: {} ({})", g.name, crate::train::run::training_precision(dtype));
    }
    let mut epochs = Vec::new();
    // Stopped after a checkpoint but before its update: make that update first.
    let e = trainer.epoch;
    if e > 0 && update_due(a, e) && !labels_file(&a.out, e).is_file() {
        update_after(a, e, &mut trainer, &mut samples, &rels, &ds.classes, &transform, params)?;
    }
    while trainer.epoch < a.training.epochs {
        let one = TrainConfig { epochs: trainer.epoch + 1, ..cfg.clone() };
        let mut reports = trainer.train(&samples, eval.as_ref().map(|(s, _)| s), &one)?;
        let report = reports.pop().ok_or_else(|| Error::Internal("the trainer returned no epoch".into()))?;
        let e = trainer.epoch;
        let update = if update_due(a, e) {
            Some(update_after(a, e, &mut trainer, &mut samples, &rels, &ds.classes, &transform, params)?)
        } else {
            None
        };
        epochs.push(CdulEpoch { epoch: report, update });
    }
    let report = CdulTrainReport {
        command: "cdul train".into(),
        dataset: dataset_json(&ds),
        classes: ds.classes.clone(),
        images: samples.len(),
        initial_labels: a.labels.display().to_string(),
        started_from_labels: start_labels.display().to_string(),
        resumed_from_epoch,
        params,
        update_every: a.update_every,
        update_from: a.update_from,
        epochs,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&a.out.join("cdul_train_report.json"), json.as_bytes())?;
    eprintln!("wrote     {}", a.out.join("cdul_train_report.json").display());
    Ok(report)
}
