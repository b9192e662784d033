//! A training run as the CLI's `train` calls it: soft labels + backbone in, checkpoints,
//! per-epoch metrics and a final report out (`--resume` continues from the checkpoint in the
//! output folder).

use std::path::PathBuf;

use serde::Serialize;

use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use crate::error::{Error, Result};
use crate::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use crate::train::checkpoint::{write_atomic, CHECKPOINT_FILE};
use crate::train::labels::read_labels;
use crate::train::trainer::{EpochReport, TrainConfig, Trainer};

#[derive(Clone, Debug)]
pub struct TrainRun {
    pub labels: PathBuf,
    pub root: PathBuf,
    /// torchvision-named ResNet weights (fc ignored); None = a randomly initialised ResNet-50.
    pub backbone: Option<PathBuf>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub size: usize,
    pub seed: u64,
    pub head: HeadKind,
    pub alpha: f32,
    pub resume: bool,
    pub out: PathBuf,
    pub progress: bool,
}

#[derive(Serialize)]
pub struct TrainSummary {
    pub classes: Vec<String>,
    pub images: usize,
    pub resumed_from_epoch: usize,
    pub epochs: Vec<EpochReport>,
}

/// The `labelfree train` arguments (the CLI flattens these into its subcommand).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Soft labels: CSV `path,<class>,...` or safetensors (`labels` (N, C), metadata `paths`)
    #[arg(long)]
    pub labels: PathBuf,
    /// Folder the label file's relative image paths start from
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// torchvision ResNet-50 weights as safetensors (tools/convert_weights.py); omitted: random init
    #[arg(long)]
    pub backbone: Option<PathBuf>,
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
    /// Plain linear head instead of CCD's CAM head
    #[arg(long)]
    pub linear_head: bool,
    /// CAM boost of the positive part (CCD: 3)
    #[arg(long, default_value_t = 3.0)]
    pub alpha: f32,
    /// Continue from the checkpoint in --out
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub out: PathBuf,
}

impl TrainArgs {
    pub fn to_run(&self) -> TrainRun {
        TrainRun {
            labels: self.labels.clone(),
            root: self.root.clone(),
            backbone: self.backbone.clone(),
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            size: self.size,
            seed: self.seed,
            head: if self.linear_head { HeadKind::Linear } else { HeadKind::Cam },
            alpha: self.alpha,
            resume: self.resume,
            out: self.out.clone(),
            progress: true,
        }
    }
}

pub fn run(r: &TrainRun) -> Result<TrainSummary> {
    let labels = read_labels(&r.labels, &r.root)?;
    let c = labels.classes.len();
    let cfg = TrainConfig {
        epochs: r.epochs,
        batch: r.batch,
        lr: r.lr,
        head_lr_mult: 10.0,
        transform: Transform::SquareResize { size: r.size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY },
        hflip: true,
        seed: r.seed,
        out: r.out.clone(),
        progress: r.progress,
        stop_after_steps: None,
    };
    let mut trainer = if r.resume && r.out.join(CHECKPOINT_FILE).exists() {
        let t = Trainer::resume(&r.out, &cfg)?;
        if t.model.cfg.num_classes != c {
            return Err(Error::Shape(format!("checkpoint has {} classes, the labels {c}", t.model.cfg.num_classes)));
        }
        t
    } else {
        let model = match &r.backbone {
            Some(p) => ResNet::load(p, c, r.head, r.alpha, r.seed)?,
            None => ResNet::new(ResNetConfig { num_classes: c, head: r.head, alpha: r.alpha, ..ResNetConfig::resnet50(c) }, r.seed),
        };
        Trainer::new(model, &cfg)
    };
    let resumed_from_epoch = trainer.epoch;
    let epochs = trainer.train(&labels.samples, &cfg)?;
    let summary = TrainSummary { classes: labels.classes, images: labels.samples.len(), resumed_from_epoch, epochs };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Weights(e.to_string()))?;
    write_atomic(&r.out.join("train_report.json"), json.as_bytes())?;
    Ok(summary)
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
        assert_eq!((a.epochs, a.batch, a.lr, a.size, a.head, a.alpha, a.resume), (10, 16, 1e-5, 448, HeadKind::Cam, 3.0, true));
    }
}
