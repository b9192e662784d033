//! The training loop over a list of (image, soft label): each epoch shuffles the list, decodes
//! and transforms a batch (square resize, ImageNet normalisation, random horizontal flip),
//! runs the loss step (mean weighted BCE against the soft labels) and an Adam step; at the end
//! of every epoch it writes a checkpoint (atomically) and the epoch's metrics as JSON.
//!
//! Determinism: the order and the flips of epoch e come from an RNG seeded by (seed, e) alone,
//! and every op is deterministic, so a run killed mid-epoch and resumed from its last
//! checkpoint ends with the same weights as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::data::decode::decode_image_file;
use crate::data::transforms::{hflip, to_chw_normalized, Transform};
use crate::error::{Error, Result};
use crate::models::resnet50::ResNet;
use crate::train::adam::{Adam, ParamGroup};
use crate::train::checkpoint;
use crate::train::step::forward_backward;

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
    pub seed: u64,
    /// Checkpoints and metrics go here.
    pub out: PathBuf,
    pub progress: bool,
    /// For tests: return (as if killed) after this many optimiser steps of this call, without
    /// writing anything for the unfinished epoch.
    pub stop_after_steps: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f32,
    pub images: usize,
    pub skipped: Vec<String>,
    /// A last batch of one image (batch norm cannot train on it) is left out.
    pub left_out_lone: usize,
    pub seconds: f64,
    pub images_per_s: f64,
}

pub struct Trainer {
    pub model: ResNet,
    pub opt: Adam,
    /// Epochs completed.
    pub epoch: usize,
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
        Trainer { opt: Adam::new(n, groups), model, epoch: 0 }
    }

    /// Resumes from `dir/checkpoint.safetensors`; the seed must be the run's.
    pub fn resume(dir: &Path, cfg: &TrainConfig) -> Result<Trainer> {
        let (model, opt, meta) = checkpoint::load(&dir.join(checkpoint::CHECKPOINT_FILE))?;
        if meta.seed != cfg.seed {
            return Err(Error::Weights(format!("checkpoint was made with seed {}, not {}", meta.seed, cfg.seed)));
        }
        Ok(Trainer { model, opt, epoch: meta.epoch })
    }

    /// Decodes, transforms and (maybe) flips one image; None if it cannot be read.
    fn load_one(sample: &Sample, transform: &Transform, flip: bool) -> Option<Vec<f32>> {
        let img = decode_image_file(&sample.path).ok()?;
        let img = transform.apply_u8(&img);
        let img = if flip { hflip(&img) } else { img };
        Some(to_chw_normalized(&img, transform.normalize()))
    }

    /// Trains up to `cfg.epochs` epochs in all; returns the reports of the epochs it finished.
    pub fn train(&mut self, samples: &[Sample], cfg: &TrainConfig) -> Result<Vec<EpochReport>> {
        let c = self.model.cfg.num_classes;
        if let Some(bad) = samples.iter().find(|s| s.target.len() != c) {
            return Err(Error::Shape(format!("`{}`: {} label values for {c} classes", bad.path.display(), bad.target.len())));
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
            let (mut loss_sum, mut images, mut skipped) = (0.0f64, 0usize, Vec::new());
            // Decoded images wait here until a full batch is ready (an unreadable image is
            // replaced by the next ones, so batches keep their size).
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let per_image = 3 * h * w;
            let nchunks = order.len().div_ceil(cfg.batch.max(1));
            for (ci, (chunk, fl)) in order.chunks(cfg.batch.max(1)).zip(flips.chunks(cfg.batch.max(1))).enumerate() {
                let loaded: Vec<Option<Vec<f32>>> =
                    chunk.par_iter().zip(fl).map(|(&i, &f)| Self::load_one(&samples[i], &cfg.transform, f)).collect();
                for (&i, img) in chunk.iter().zip(loaded) {
                    match img {
                        Some(v) => {
                            x.extend_from_slice(&v);
                            y.extend_from_slice(&samples[i].target);
                        }
                        None => skipped.push(samples[i].path.display().to_string()),
                    }
                }
                let last = ci + 1 == nchunks;
                while y.len() / c >= cfg.batch.max(1) || (last && !y.is_empty()) {
                    let b = (y.len() / c).min(cfg.batch.max(1));
                    let bx: Vec<f32> = x.drain(..b * per_image).collect();
                    let by: Vec<f32> = y.drain(..b * c).collect();
                    // Batch norm needs more than one value per channel: a lone last image is
                    // left out (and counted).
                    if b < 2 {
                        lone += 1;
                        continue;
                    }
                    self.model.zero_grad();
                    let out = forward_backward(&mut self.model, &bx, None, b, h, w, &by, None, 0.0)?;
                    let grads = std::mem::take(&mut self.model.grads);
                    self.opt.step(&mut self.model.params, &grads);
                    self.model.grads = grads;
                    loss_sum += out.bce as f64 * b as f64;
                    images += b;
                    steps += 1;
                    if cfg.stop_after_steps.is_some_and(|n| steps >= n) {
                        return Ok(reports);
                    }
                }
                if let Some(pb) = &bar {
                    pb.inc(chunk.len() as u64);
                    let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
                    pb.set_message(format!("loss {:.4} {rate:.1} img/s", loss_sum / images.max(1) as f64));
                }
            }
            if let Some(pb) = bar {
                pb.finish();
            }
            self.epoch += 1;
            let seconds = start.elapsed().as_secs_f64();
            let report = EpochReport {
                epoch: self.epoch,
                mean_loss: (loss_sum / images.max(1) as f64) as f32,
                images,
                skipped,
                left_out_lone: lone,
                seconds,
                images_per_s: images as f64 / seconds.max(1e-9),
            };
            checkpoint::save(&cfg.out, &self.model, &self.opt, self.epoch, cfg.seed)?;
            let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Weights(e.to_string()))?;
            checkpoint::write_atomic(&cfg.out.join(format!("metrics_epoch{:03}.json", self.epoch)), json.as_bytes())?;
            reports.push(report);
        }
        Ok(reports)
    }
}
