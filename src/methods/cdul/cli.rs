//! `labelfree cdul init | update | train`: the arguments and the runs.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::update::{self, UpdateParams};
use super::LabelFile;
use crate::device::cuda::{DType, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::scores_csv;
use crate::methods::report::json_path;
use crate::methods::write_atomic;

#[derive(Args, Clone, Debug)]
pub struct CdulArgs {
    #[command(subcommand)]
    pub command: CdulCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum CdulCommand {
    /// Initial soft labels of a dataset split from CLIP: global and g x g snippet scores,
    /// aggregated (safetensors `labels`, `global`, `alpha`, `beta`); or, with --from, the
    /// aggregation of a previous run's scores redone with another --zeta (no CLIP)
    Init(super::init::InitArgs),
    /// One gradient-alignment step of soft labels towards a classifier's sigmoid scores
    Update(UpdateArgs),
    /// The classifier trained on the soft labels (BCE), each epoch followed by a label update
    Train(super::train::CdulTrainArgs),
}

#[derive(Args, Clone, Debug)]
pub struct UpdateArgs {
    /// Soft labels (safetensors `labels`, metadata `paths`, `classes`: what init writes)
    #[arg(long)]
    pub labels: PathBuf,
    /// The classifier's sigmoid scores: CSV `path,<class>,...` with a row for every label path
    #[arg(long)]
    pub preds: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Step size on the label logits
    #[arg(long, default_value_t = 0.25)]
    pub eta: f32,
    /// Width of the Gaussian weight psi centred at 0.5
    #[arg(long, default_value_t = 0.2)]
    pub sigma: f32,
    /// The report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_cli(a: CdulArgs, dev: Device, gpu: Option<&Arc<Gpu>>, dtype: DType) -> Result<()> {
    match a.command {
        CdulCommand::Init(i) => super::init::run_cli(&i, dev, gpu, dtype),
        CdulCommand::Update(u) => run_update(&u),
        CdulCommand::Train(t) => {
            if gpu.is_some() && !matches!(dtype, DType::F32 | DType::BF16) {
                return Err(Error::Device(format!(
                    "cdul train on the GPU runs in f32 or bf16 (mixed precision); drop --dtype {dtype}"
                )));
            }
            super::train::run(&t, gpu, dtype).map(|_| ())
        }
    }
}

fn run_update(a: &UpdateArgs) -> Result<()> {
    let mut file = LabelFile::read(&a.labels)?;
    let table = scores_csv::read(&a.preds)?;
    if let Some(first) = table.bad_lines.first() {
        return Err(Error::Dataset(format!(
            "{}: {first} ({} unreadable lines)",
            a.preds.display(),
            table.bad_lines.len()
        )));
    }
    let what = format!("scores `{}`", a.preds.display());
    let scores = update::align_scores(&table, &file.paths, &file.classes, &what)?;
    let params = UpdateParams { eta: a.eta, sigma: a.sigma };
    let new = update::step(&file.labels, &scores, params)?;
    let stats = update::stats(&file.labels, &new, file.classes.len());
    file.labels = new;
    // The init scores describe the labels before the update: they are not carried over.
    file.scores = None;
    let json = |e: serde_json::Error| Error::Internal(e.to_string());
    let provenance = serde_json::json!({
        "from": a.labels.display().to_string(),
        "preds": a.preds.display().to_string(),
        "eta": a.eta,
        "sigma": a.sigma,
    });
    file.meta.insert("update".into(), serde_json::to_string(&provenance).map_err(json)?);
    file.write(&a.out)?;
    let report = serde_json::json!({
        "command": "cdul update",
        "labels": a.labels.display().to_string(),
        "preds": a.preds.display().to_string(),
        "preds_rows_unused": table.paths.len().saturating_sub(file.paths.len()),
        "params": params,
        "change": stats,
        "out": a.out.display().to_string(),
    });
    let jp = json_path(&a.json, &a.out);
    write_atomic(&jp, serde_json::to_string_pretty(&report).map_err(json)?.as_bytes())?;
    eprintln!(
        "cdul update: {} rows x {} classes, eta {} sigma {}: mean |change| {:.3e}, max {:.3e}",
        stats.rows, stats.classes, a.eta, a.sigma, stats.mean_abs_change, stats.max_abs_change
    );
    eprintln!("wrote     {}", a.out.display());
    eprintln!("wrote     {}", jp.display());
    Ok(())
}
