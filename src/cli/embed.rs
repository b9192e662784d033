//! `labelfree embed`: image embeddings to a safetensors file (tensor `embeddings`, metadata
//! `paths`, `skipped`, the model and the transform), and a run report.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::model::{ModelArgs, ReportParts, RunStats};
use super::Session;
use crate::data::images::list_images;
use crate::methods::encode::{clip_transform, encode_images};
use crate::methods::report::json_path;
use crate::methods::write_atomic;
use crate::models::clip::weights::save_safetensors;
use crate::ops::similarity::l2_normalize;

#[derive(Args, Clone, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files and/or directories (searched recursively for .jpg/.jpeg/.png)
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Input side in pixels (default: the model's native size)
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// L2-normalise each embedding before writing
    #[arg(long)]
    pub normalize: bool,
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the run report as JSON here (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: EmbedArgs, s: &Session) -> Result<()> {
    let model = a.model.build_on(s)?;
    let transform = clip_transform(&model, a.size)?;
    let paths = list_images(&a.images);
    if paths.is_empty() {
        bail!("no images found in {:?}", a.images);
    }
    let enc = encode_images(&model, &paths, &transform, a.batch, true)?;
    let mut emb = enc.embeddings.clone();
    if a.normalize {
        emb = l2_normalize(&emb)?;
    }
    let path_list: Vec<String> = enc.paths.iter().map(|p| p.display().to_string()).collect();
    let mut meta = HashMap::new();
    meta.insert("paths".to_string(), serde_json::to_string(&path_list)?);
    meta.insert("skipped".to_string(), serde_json::to_string(&enc.skipped)?);
    meta.insert("arch".to_string(), model.arch.clone());
    meta.insert("random_weights".to_string(), model.random.to_string());
    meta.insert("normalized".to_string(), a.normalize.to_string());
    meta.insert("transform".to_string(), transform.describe());
    let bytes = save_safetensors(&[("embeddings", &emb)], &meta)?;
    write_atomic(&a.out, &bytes)?;
    let jp = json_path(&a.json, &a.out);
    let run = RunStats::of_images(paths.len(), &enc);
    ReportParts {
        command: "embed",
        model: &model,
        args: &a.model,
        session: s,
        transform: transform.describe(),
        run,
        outputs: vec![a.out.display().to_string(), jp.display().to_string()],
        extra: serde_json::json!({"dim": emb.dim(1), "normalized": a.normalize}),
    }
    .write_and_print(&jp)?;
    Ok(())
}
