//! `labelfree info`: the architecture read from a weights file, as JSON on stdout.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::model::parse_act;
use crate::models::clip::ClipModel;

#[derive(Args, Clone, Debug)]
pub struct InfoArgs {
    #[arg(long)]
    pub weights: PathBuf,
    #[arg(long)]
    pub act: Option<String>,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let model = ClipModel::load(&a.weights, parse_act(&a.act)?, None)?;
    let info = serde_json::json!({
        "arch": model.arch,
        "config": model.config,
        "activation_source": model.act_source,
        "activation_warning": model.act_warning,
        "image_size": model.image_size(),
        "logit_scale": model.logit_multiplier(),
    });
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
