//! The training loop over a list of (image, soft label): each epoch shuffles the list, decodes
//! and transforms a batch (square resize, ImageNet normalisation, random horizontal flip),
//! runs the loss step and an Adam step; at the end of every epoch it may evaluate the model on
//! a labelled split (mAP), then writes a checkpoint (atomically) and the epoch's metrics (one
//! JSON per epoch, and a line of `metrics.jsonl`).
//!
//! The loss is CCD's (src/train/step.rs): the BCE of the view against the soft labels, and,
//! from epoch `SecondView::from_epoch` on (0-based; CCD: 2), plus `weight` times the BCE of a
//! second view (its own flip, colour jitter) against the first view's detached sigmoid. With
//! no second view it is CDUL's plain BCE.
//!
//! Determinism: the order, the flips and the jitter draws of epoch e come from an RNG seeded
//! by (seed, e) alone, and every op is deterministic, so a run killed mid-epoch and resumed
//! from its last checkpoint ends with the same weights as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::color_jitter::{ColorJitter, JitterDraw};
use crate::data::decode::decode_image_file;
use crate::data::transforms::{hflip, normalize_unit_chw, to_chw_normalized, to_chw_unit, Transform};
use crate::device::cuda::{DType, Gpu};
use crate::error::{Error, Result};
use crate::models::resnet50::ResNet;
use crate::models::resnet50_cuda::{CudaResNet, CudaTrainGraph};
use crate::train::adam::{Adam, ParamGroup};
use crate::train::checkpoint;
use crate::train::evaluate::{evaluate, evaluate_with, EvalResult, EvalSet};
use crate::train::step::forward_backward;

/// Metrics of every finished epoch, one JSON a line.
pub const METRICS_JSONL: &str = "metrics.jsonl";

#[derive(Clone, Debug)]
pub struct Sample {
    pub path: PathBuf,
    /// Soft label in [0, 1], one per class.
    pub target: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Backbone learning rate; the head gets `lr * head_lr_mult` (CCD: 10).
    pub lr: f32,
    pub head_lr_mult: f32,
    /// The input transform (CCD: `Transform::CCD_TRAIN`, 448 square bilinear, ImageNet).
    pub transform: Transform,
    pub hflip: bool,
    /// CCD's second view and consistency loss; None: the BCE alone (CDUL).
    pub second_view: Option<SecondView>,
    pub seed: u64,
    /// Checkpoints and metrics go here.
    pub out: PathBuf,
    pub progress: bool,
    /// For tests: return (as if killed) after this many optimiser steps of this call, without
    /// writing anything for the unfinished epoch.
    pub stop_after_steps: Option<usize>,
    /// Keep each epoch's training-mode outputs (view 1's logits as the batches pass, with their
    /// targets) in `EpochReport::train_outputs`: CCD's ground-truth-free checkpoint choice.
    pub record_train_outputs: bool,
    /// On a device: replay each full batch's step from a CUDA graph captured once
    /// (`CudaResNet::capture_train_step`); false launches every kernel of every step (same
    /// results: the graph holds the same launches).
    pub cuda_graph: bool,
}

/// An epoch's training-mode logits (N, C) of the first view, in the order the images were
/// trained on, and the targets (N, C) they were trained against.
#[derive(Clone, Debug, Default)]
pub struct TrainOutputs {
    pub logits: Vec<f32>,
    pub targets: Vec<f32>,
}

/// CCD's second view: the same image with its own flip and a colour jitter, whose logits are
/// pulled towards the first view's detached sigmoid.
#[derive(Clone, Debug)]
pub struct SecondView {
    /// First epoch (0-based) with the second view (CCD: 2).
    pub from_epoch: usize,
    /// Weight of the consistency loss (CCD: 1).
    pub weight: f32,
    /// Jitter of the second view (CCD: 0.5 each); None: no jitter, only the flip.
    pub jitter: Option<ColorJitter>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    /// Mean of the total loss over the images trained on.
    pub mean_loss: f32,
    /// Its two terms: the BCE against the soft labels, the consistency BCE (0 without a
    /// second view).
    pub mean_bce: f32,
    pub mean_consistency: f32,
    pub second_view: bool,
    /// Backbone and head learning rates.
    pub lr: f32,
    pub head_lr: f32,
    pub images: usize,
    pub skipped: Vec<String>,
    /// A last batch of one image (batch norm cannot train on it) is left out.
    pub left_out_lone: usize,
    /// Training time of the epoch (the evaluation not included).
    pub seconds: f64,
    pub images_per_s: f64,
    /// The evaluation after the epoch, when an evaluation split is given.
    pub eval: Option<EvalResult>,
    /// With `TrainConfig::record_train_outputs`: the epoch's training-mode outputs.
    #[serde(skip)]
    pub train_outputs: Option<TrainOutputs>,
}

/// How one sample is loaded this epoch.
struct ViewPlan {
    flip: bool,
    /// The second view's flip and jitter draw, when there is one.
    second: Option<(bool, Option<JitterDraw>)>,
}

/// One decoded sample: view 1 and maybe view 2, each (3, H, W) normalised.
type LoadedViews = (Vec<f32>, Option<Vec<f32>>);

pub struct Trainer {
    /// The model; with `cuda`, a copy refreshed from the device at the end of every epoch
    /// (for the checkpoint), not during it.
    pub model: ResNet,
    pub opt: Adam,
    /// Epochs completed.
    pub epoch: usize,
    /// Train on the GPU (`attach_cuda`): steps, evaluation and Adam on the device.
    pub cuda: Option<CudaResNet>,
    /// The captured step for the batches of one shape (`TrainConfig::cuda_graph`).
    step_graph: Option<CudaTrainGraph>,
}

/// The RNG of one epoch: a function of (seed, epoch) only.
fn epoch_rng(seed: u64, epoch: usize) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (epoch as u64).wrapping_add(1))
}

impl Trainer {
    /// A fresh run: Adam with two groups, backbone `lr`, head `lr * head_lr_mult`.
    pub fn new(model: ResNet, cfg: &TrainConfig) -> Trainer {
        let n = model.params.len();
        let groups = vec![
            ParamGroup { range: 0..model.head_start, lr: cfg.lr },
            ParamGroup { range: model.head_start..n, lr: cfg.lr * cfg.head_lr_mult },
        ];
        Trainer { opt: Adam::new(n, groups), model, epoch: 0, cuda: None, step_graph: None }
    }

    /// Resumes from `dir/checkpoint.safetensors`; the seed must be the run's.
    pub fn resume(dir: &Path, cfg: &TrainConfig) -> Result<Trainer> {
        let (model, opt, meta) = checkpoint::load(&dir.join(checkpoint::CHECKPOINT_FILE))?;
        if meta.seed != cfg.seed {
            return Err(Error::Weights(format!("checkpoint was made with seed {}, not {}", meta.seed, cfg.seed)));
        }
        Ok(Trainer { model, opt, epoch: meta.epoch, cuda: None, step_graph: None })
    }

    /// The captured training step the last full batch replayed, if any (`TrainConfig::cuda_graph`).
    pub fn step_graph(&self) -> Option<&CudaTrainGraph> {
        self.step_graph.as_ref()
    }

    /// Moves training to the GPU: the model and the optimiser state are copied to the device
    /// (after `new` or `resume`), and copied back at the end of every epoch. `dtype`: f32, or
    /// bf16 mixed precision (f32 master weights, Adam and statistics; `CudaResNet::upload_mixed`).
    pub fn attach_cuda(&mut self, gpu: &Arc<Gpu>, dtype: DType) -> Result<()> {
        self.step_graph = None;
        self.cuda = Some(CudaResNet::upload_mixed(gpu, &self.model, &self.opt, dtype)?);
        Ok(())
    }

    /// Decodes and resizes one image once, then makes its views: view 1 (maybe flipped) and,
    /// when planned, view 2 (its own flip, then the jitter on the [0, 1] image, as CCD jitters
    /// before normalising; flipping commutes with the jitter). None if it cannot be read.
    fn load_views(sample: &Sample, transform: &Transform, plan: &ViewPlan) -> Option<LoadedViews> {
        let img = decode_image_file(&sample.path).ok()?;
        let img = transform.apply_u8(&img);
        let norm = transform.normalize();
        let view1 = if plan.flip { to_chw_normalized(&hflip(&img), norm) } else { to_chw_normalized(&img, norm) };
        let view2 = plan.second.as_ref().map(|(flip, draw)| match draw {
            None if *flip => to_chw_normalized(&hflip(&img), norm),
            None => to_chw_normalized(&img, norm),
            Some(d) => {
                let mut x = if *flip { to_chw_unit(&hflip(&img)) } else { to_chw_unit(&img) };
                d.apply(&mut x, img.height, img.width);
                normalize_unit_chw(&mut x, norm);
                x
            }
        });
        Some((view1, view2))
    }

    /// Trains up to `cfg.epochs` epochs in all, evaluating on `eval` after each; returns the
    /// reports of the epochs it finished.
    pub fn train(&mut self, samples: &[Sample], eval: Option<&EvalSet>, cfg: &TrainConfig) -> Result<Vec<EpochReport>> {
        let c = self.model.cfg.num_classes;
        if let Some(bad) = samples.iter().find(|s| s.target.len() != c) {
            return Err(Error::Shape(format!(
                "`{}`: {} label values for {c} classes",
                bad.path.display(),
                bad.target.len()
            )));
        }
        let (h, w) = cfg.transform.output_hw(1, 1);
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::Io { path: cfg.out.display().to_string(), source: e })?;
        let mut reports = Vec::new();
        let mut steps = 0usize;
        while self.epoch < cfg.epochs {
            let mut rng = epoch_rng(cfg.seed, self.epoch);
            let mut order: Vec<usize> = (0..samples.len()).collect();
            order.shuffle(&mut rng);
            let flips: Vec<bool> = order.iter().map(|_| cfg.hflip && rng.gen::<bool>()).collect();
            // The second view's draws come after the first view's, so that they leave those
            // (and runs without a second view) unchanged.
            let second = cfg.second_view.as_ref().filter(|v| self.epoch >= v.from_epoch);
            let plans: Vec<ViewPlan> = flips
                .iter()
                .map(|&flip| ViewPlan {
                    flip,
                    second: second.map(|v| (cfg.hflip && rng.gen::<bool>(), v.jitter.map(|j| j.draw(&mut rng)))),
                })
                .collect();
            let consistency_weight = second.map_or(0.0, |v| v.weight);
            let start = Instant::now();
            let mut lone = 0usize;
            let bar = cfg.progress.then(|| {
                let pb = indicatif::ProgressBar::new(samples.len() as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                pb.set_prefix(format!("{}/{}", self.epoch + 1, cfg.epochs));
                pb
            });
            let (mut bce_sum, mut cons_sum, mut images, mut skipped) = (0.0f64, 0.0f64, 0usize, Vec::new());
            // Decoded images wait here until a full batch is ready (an unreadable image is
            // replaced by the next ones, so batches keep their size).
            let (mut x, mut x2, mut y) = (Vec::new(), Vec::new(), Vec::new());
            let mut outputs = cfg.record_train_outputs.then(TrainOutputs::default);
            let per_image = 3 * h * w;
            let nchunks = order.len().div_ceil(cfg.batch.max(1));
            for (ci, (chunk, pl)) in order.chunks(cfg.batch.max(1)).zip(plans.chunks(cfg.batch.max(1))).enumerate() {
                let loaded: Vec<Option<LoadedViews>> =
                    chunk.par_iter().zip(pl).map(|(&i, p)| Self::load_views(&samples[i], &cfg.transform, p)).collect();
                for (&i, img) in chunk.iter().zip(loaded) {
                    match img {
                        Some((v1, v2)) => {
                            x.extend_from_slice(&v1);
                            if let Some(v2) = v2 {
                                x2.extend_from_slice(&v2);
                            }
                            y.extend_from_slice(&samples[i].target);
                        }
                        None => skipped.push(samples[i].path.display().to_string()),
                    }
                }
                let last = ci + 1 == nchunks;
                while y.len() / c >= cfg.batch.max(1) || (last && !y.is_empty()) {
                    let b = (y.len() / c).min(cfg.batch.max(1));
                    let bx: Vec<f32> = x.drain(..b * per_image).collect();
                    let bx2: Option<Vec<f32>> = second.map(|_| x2.drain(..b * per_image).collect());
                    let by: Vec<f32> = y.drain(..b * c).collect();
                    // Batch norm needs more than one value per channel: a lone last image is
                    // left out (and counted).
                    if b < 2 {
                        lone += 1;
                        continue;
                    }
                    let (bce, consistency, logits) = match &mut self.cuda {
                        Some(dev) => {
                            let (two, cw) = (bx2.is_some(), consistency_weight);
                            // Full batches replay one captured step; a short last batch (another
                            // shape) launches its kernels one by one.
                            if cfg.cuda_graph
                                && b == cfg.batch
                                && !self.step_graph.as_ref().is_some_and(|g| g.fits(b, h, w, two, cw))
                            {
                                self.step_graph = None;
                                let g = dev.capture_train_step(&self.opt, (b, h, w), two, cw)?;
                                if cfg.progress {
                                    let mb = g.pool().map_or(0.0, |p| p.bytes as f64 / 1e6);
                                    eprintln!(
                                        "training step captured as a graph: {} launches, {mb:.1} MB of temporaries \
                                         (batch {b}, {} view(s))",
                                        g.launches(),
                                        1 + two as usize
                                    );
                                }
                                self.step_graph = Some(g);
                            }
                            let want = outputs.is_some();
                            let out = match self.step_graph.as_mut().filter(|g| g.fits(b, h, w, two, cw)) {
                                Some(g) => dev.train_step_graph(g, &mut self.opt, &bx, bx2.as_deref(), &by, want)?,
                                None => dev.train_step(&mut self.opt, &bx, bx2.as_deref(), b, h, w, &by, cw)?,
                            };
                            (out.bce, out.consistency, out.logits.unwrap_or_default())
                        }
                        None => {
                            self.model.zero_grad();
                            let out = forward_backward(
                                &mut self.model,
                                &bx,
                                bx2.as_deref(),
                                b,
                                h,
                                w,
                                &by,
                                None,
                                consistency_weight,
                            )?;
                            let grads = std::mem::take(&mut self.model.grads);
                            self.opt.step(&mut self.model.params, &grads);
                            self.model.grads = grads;
                            (out.bce, out.consistency, out.logits1)
                        }
                    };
                    if let Some(o) = outputs.as_mut() {
                        o.logits.extend_from_slice(&logits);
                        o.targets.extend_from_slice(&by);
                    }
                    bce_sum += bce as f64 * b as f64;
                    cons_sum += consistency as f64 * b as f64;
                    images += b;
                    steps += 1;
                    if cfg.stop_after_steps.is_some_and(|n| steps >= n) {
                        return Ok(reports);
                    }
                }
                if let Some(pb) = &bar {
                    pb.inc(chunk.len() as u64);
                    let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
                    let loss = (bce_sum + consistency_weight as f64 * cons_sum) / images.max(1) as f64;
                    pb.set_message(format!("loss {loss:.4} {rate:.1} img/s"));
                }
            }
            if let Some(pb) = &bar {
                pb.finish_and_clear();
            }
            self.epoch += 1;
            if let Some(dev) = &self.cuda {
                // Waits for the epoch's last step: the time below is the device's too.
                dev.download_into(&mut self.model, &mut self.opt)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            let eval = match eval {
                Some(set) => {
                    let pb = cfg.progress.then(|| {
                        let pb = indicatif::ProgressBar::new(set.paths.len() as u64);
                        pb.set_style(
                            indicatif::ProgressStyle::with_template("eval {prefix} {bar:30} {pos}/{len} {per_sec}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                        pb.set_prefix(set.name.clone());
                        pb
                    });
                    let r = match &mut self.cuda {
                        Some(dev) => {
                            let mut logits = |x: &[f32], n: usize, h: usize, w: usize| dev.logits_eval(x, n, h, w);
                            evaluate_with(&mut logits, set, &cfg.transform, cfg.batch, pb.as_ref())?
                        }
                        None => evaluate(&self.model, set, &cfg.transform, cfg.batch, pb.as_ref())?,
                    };
                    if let Some(pb) = pb {
                        pb.finish_and_clear();
                    }
                    Some(r)
                }
                None => None,
            };
            let n = images.max(1) as f64;
            let report = EpochReport {
                epoch: self.epoch,
                mean_loss: ((bce_sum + consistency_weight as f64 * cons_sum) / n) as f32,
                mean_bce: (bce_sum / n) as f32,
                mean_consistency: (cons_sum / n) as f32,
                second_view: second.is_some(),
                lr: self.opt.groups.first().map_or(0.0, |g| g.lr),
                head_lr: self.opt.groups.last().map_or(0.0, |g| g.lr),
                images,
                skipped,
                left_out_lone: lone,
                seconds,
                images_per_s: images as f64 / seconds.max(1e-9),
                eval,
                train_outputs: outputs,
            };
            if cfg.progress {
                eprintln!("{}", report.line(cfg.epochs));
            }
            checkpoint::save(&cfg.out, &self.model, &self.opt, self.epoch, cfg.seed)?;
            let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
            checkpoint::write_atomic(&cfg.out.join(format!("metrics_epoch{:03}.json", self.epoch)), json.as_bytes())?;
            append_metrics(&cfg.out.join(METRICS_JSONL), &report)?;
            reports.push(report);
        }
        Ok(reports)
    }
}

impl EpochReport {
    /// The epoch's log line: loss, speed, time, learning rate, mAP.
    pub fn line(&self, epochs: usize) -> String {
        let mut s = format!(
            "epoch {}/{epochs}: loss {:.4} (bce {:.4}{}) · {:.1} img/s · {:.1} s · lr {:.1e}",
            self.epoch,
            self.mean_loss,
            self.mean_bce,
            if self.second_view { format!(", consistency {:.4}", self.mean_consistency) } else { String::new() },
            self.images_per_s,
            self.seconds,
            self.lr,
        );
        if let Some(e) = &self.eval {
            s.push_str(&format!(
                " · mAP {:.2} on {} ({} images, {:.1} img/s)",
                100.0 * e.map,
                e.split,
                e.images,
                e.images_per_s
            ));
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!(" · {} unreadable images skipped", self.skipped.len()));
        }
        s
    }
}

/// Rewrites `path` with the lines of the epochs before `report`'s and `report` as the last
/// line: a resumed run replaces what a killed one may have left for its unfinished epochs.
fn append_metrics(path: &Path, report: &EpochReport) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                .is_some_and(|e| (e as usize) < report.epoch)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&serde_json::to_string(report).map_err(|e| Error::Internal(e.to_string()))?);
    text.push('\n');
    checkpoint::write_atomic(path, text.as_bytes())
}
