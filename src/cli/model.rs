//! What the CLIP commands (embed, zeroshot) share: the model flags, building the model from
//! them (real or random weights) and putting its image tower on the session's device, and the
//! run report they end with.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::Session;
use crate::data::loader::LoaderStats;
use crate::methods::cache::CacheStatus;
use crate::methods::encode::{Encoded, Skipped};
use crate::methods::report::RunReport;
use crate::models::clip::ClipModel;
use crate::ops::activation::Activation;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// CLIP weights (.safetensors, OpenAI/open_clip or Hugging Face names)
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// open_clip architecture name (default ViT-B-32). With --weights, the weights must be this
    /// architecture, and its open_clip config gives the activation when the file does not
    /// record one; with no --weights, a RANDOM-weight model of it is built
    #[arg(long)]
    pub arch: Option<String>,
    /// Transformer activation when the weights do not record it: quick_gelu (OpenAI) or gelu
    #[arg(long)]
    pub act: Option<String>,
    /// Seed of a random-weight model
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn parse_act(s: &Option<String>) -> Result<Option<Activation>> {
    match s {
        None => Ok(None),
        Some(v) => Activation::parse(v).map(Some).with_context(|| format!("--act {v}: use quick_gelu or gelu")),
    }
}

impl ModelArgs {
    /// The model these flags name, announced on stderr (a random one with a loud warning).
    pub fn build(&self) -> Result<ClipModel> {
        let act = parse_act(&self.act)?;
        match &self.weights {
            Some(w) => {
                let model = ClipModel::load(w, act, self.arch.as_deref())
                    .with_context(|| format!("loading weights {}", w.display()))?;
                eprintln!(
                    "model: {} from {} (activation {:?}: {})",
                    model.arch,
                    w.display(),
                    model.config.act,
                    model.act_source
                );
                if let Some(warning) = &model.act_warning {
                    eprintln!("warning: {warning}");
                }
                Ok(model)
            }
            None => {
                let arch = self.arch.as_deref().unwrap_or("ViT-B-32");
                eprintln!("################################################################################");
                eprintln!("# WARNING: no --weights given: using a RANDOM-weight {} (seed {}).", arch, self.seed);
                eprintln!("# Its embeddings and scores MEAN NOTHING. See weights/README.md for real weights.");
                eprintln!("################################################################################");
                let mut model = ClipModel::random(arch, self.seed)?;
                if let Some(a) = act {
                    if a != model.config.act {
                        bail!(
                            "--act applies to loaded weights; for a random model choose the arch (e.g. {arch}-quickgelu)"
                        );
                    }
                }
                model.act_source = "random".into();
                Ok(model)
            }
        }
    }

    /// The model, with its image tower on the session's GPU when there is one (text stays on
    /// the CPU: it is encoded once per class list).
    pub fn build_on(&self, s: &Session) -> Result<ClipModel> {
        let mut model = self.build()?;
        if let Some(gpu) = &s.gpu {
            model.attach_cuda(gpu, s.dtype).context("loading the image tower onto the GPU")?;
            eprintln!("device: {} ({}, {} GEMM)", gpu.name, s.dtype, s.gemm);
        }
        Ok(model)
    }
}

/// What a run did with its images, for the report.
pub struct RunStats {
    pub total: usize,
    pub ok: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    pub loader: LoaderStats,
    pub cache: Option<CacheStatus>,
}

impl RunStats {
    /// Of a run over `total` listed images, encoded (or skipped) by `encode_images`.
    pub fn of_images(total: usize, enc: &Encoded) -> RunStats {
        RunStats {
            total,
            ok: enc.paths.len(),
            skipped: enc.skipped.clone(),
            seconds: enc.seconds,
            loader: enc.loader,
            cache: None,
        }
    }
}

/// The run report of a CLIP command: the model and device, what happened to the images, the
/// files written and the command's own results (`extra`).
pub struct ReportParts<'a> {
    pub command: &'a str,
    pub model: &'a ClipModel,
    pub args: &'a ModelArgs,
    pub session: &'a Session,
    pub transform: String,
    pub run: RunStats,
    pub outputs: Vec<String>,
    pub extra: serde_json::Value,
}

impl ReportParts<'_> {
    /// Writes the report as JSON to `json` and prints it.
    pub fn write_and_print(self, json: &Path) -> Result<()> {
        let rep = self.report();
        rep.write_json(json)?;
        rep.print();
        Ok(())
    }

    pub fn report(self) -> RunReport {
        let run = self.run;
        RunReport {
            command: self.command.into(),
            arch: self.model.arch.clone(),
            weights: self.args.weights.as_ref().map(|w| w.display().to_string()),
            random_weights: self.model.random,
            activation: format!("{:?}", self.model.config.act),
            device: self.session.device.to_string(),
            threads: rayon::current_num_threads(),
            transform: self.transform,
            images_total: run.total,
            images_ok: run.ok,
            skipped: run.skipped,
            seconds: run.seconds,
            images_per_s: match (&run.cache, run.seconds > 0.0) {
                (_, false) => 0.0,
                (Some(c), true) => c.encoded as f64 / run.seconds,
                (None, true) => run.ok as f64 / run.seconds,
            },
            decoded_images_per_s: run.loader.images_per_s(),
            cache: run.cache,
            outputs: self.outputs,
            extra: self.extra,
        }
    }
}
