//! `labelfree eval`: a scores CSV (`path,<class>,...`, as zeroshot and tagclip write) evaluated
//! against a dataset's labels (mAP, F1; `eval` holds the metrics).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::data::datasets::args::{announce, dataset_json, DatasetArgs, SplitUse};
use crate::eval::{self, scores_csv, MetricArgs};
use crate::methods::write_atomic;

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// The scores CSV
    #[arg(long)]
    pub preds: PathBuf,
    /// Write the metrics as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub metrics: MetricArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let ds = a.data.load(SplitUse::Evaluate)?;
    announce(&ds);
    let table = scores_csv::read(&a.preds)?;
    let matched = scores_csv::match_dataset(&table, &ds)?;
    eprintln!(
        "scores: {} rows in {}, {} matched to the dataset",
        table.paths.len(),
        a.preds.display(),
        matched.items.len()
    );
    for line in matched.describe() {
        eprintln!("{line}");
    }
    if !table.bad_lines.is_empty() {
        eprintln!("{}", scores_csv::count_and_head("unreadable lines (ignored)", &table.bad_lines));
    }
    if matched.items.is_empty() {
        bail!("no row of {} matches an image of {} {}", a.preds.display(), ds.name, ds.split);
    }
    let labels: Vec<u8> = matched.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
    let r = eval::evaluate(&labels, &matched.scores, &ds.classes, &a.metrics.options());
    r.print();
    if let Some(j) = &a.json {
        let v = serde_json::json!({
            "command": "eval",
            "preds": a.preds.display().to_string(),
            "dataset": dataset_json(&ds),
            "rows": table.paths.len(),
            "matched": matched,
            "bad_lines": table.bad_lines,
            "metrics": r,
        });
        write_atomic(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
        eprintln!("wrote     {}", j.display());
    }
    Ok(())
}
