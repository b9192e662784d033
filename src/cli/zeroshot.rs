//! `labelfree zeroshot`: CLIP's zero-shot class probabilities (softmax over the classes), one
//! CSV row per image, of the given --images or of a whole --dataset split, then evaluated (mAP,
//! F1); the encoding and scoring are `methods::zeroshot`'s.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::model::{ModelArgs, ReportParts, RunStats};
use super::Session;
use crate::data::datasets::args::{announce, dataset_json, ClassNameArgs, DatasetArgs, SplitUse};
use crate::data::datasets::ClassNames;
use crate::data::images::list_images;
use crate::eval::{self, scores_csv, MetricArgs};
use crate::methods::cache::{self, CacheEntry};
use crate::methods::encode::{clip_transform, encode_images};
use crate::methods::report::json_path;
use crate::methods::write_atomic;
use crate::methods::zeroshot;
use crate::models::clip::prompts;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::clip::ClipModel;
use crate::ops::similarity::class_probabilities;

#[derive(Args, Clone, Debug)]
pub struct ZeroshotArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files and/or directories (instead of --dataset)
    #[arg(long, num_args = 1.., conflicts_with = "dataset", required_unless_present = "dataset")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Comma-separated class names (with --images)
    #[arg(long, conflicts_with = "classes_file")]
    pub classes: Option<String>,
    #[command(flatten)]
    pub names: ClassNameArgs,
    /// Prompt template, `{}` is the class name
    #[arg(long, conflicts_with = "ensemble")]
    pub template: Option<String>,
    /// TagCLIP's 85-template ensemble (normalise each, average, normalise)
    #[arg(long)]
    pub ensemble: bool,
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// The scores CSV (default: out/zeroshot.csv, or out/zeroshot-<dataset>-<split>.csv)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not read or write the image-embedding cache
    #[arg(long)]
    pub no_cache: bool,
    /// The cache folder (default: $LABELFREE_CACHE, else .labelfree-cache)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub metrics: MetricArgs,
}

impl ZeroshotArgs {
    fn templates(&self) -> Vec<&str> {
        if self.ensemble {
            prompts::tagclip_templates()
        } else {
            vec![self.template.as_deref().unwrap_or(prompts::DEFAULT_TEMPLATE)]
        }
    }
}

pub fn run(a: ZeroshotArgs, s: &Session) -> Result<()> {
    if a.data.dataset.is_some() {
        run_dataset(a, s)
    } else {
        run_images(a, s)
    }
}

/// The cache key of a model: its weights file's fingerprint, or its random draw.
fn model_cache_id(model: &ClipModel, m: &ModelArgs) -> Result<String> {
    Ok(match &m.weights {
        Some(w) => cache::weights_fingerprint(w).with_context(|| format!("fingerprinting {}", w.display()))?,
        None => format!("random:{}:seed={}", model.arch, m.seed),
    })
}

/// Over a dataset split: scores of every image, evaluated against its labels.
fn run_dataset(a: ZeroshotArgs, s: &Session) -> Result<()> {
    if a.classes.is_some() {
        bail!("--classes is for --images; a --dataset brings its classes (csv: --classes-file)");
    }
    let ds = a.data.load(SplitUse::Evaluate)?;
    announce(&ds);
    let style = a.names.style(ClassNames::Natural)?;
    let model = a.model.build_on(s)?;
    let transform = clip_transform(&model, a.size)?;
    let templates = a.templates();
    let prompt_names = ds.class_names(style);
    let text = model.class_embeddings(&ClipTokenizer::new()?, &prompt_names, &templates)?;
    let entry = if a.no_cache {
        None
    } else {
        let dir = a.cache_dir.clone().unwrap_or_else(cache::default_dir);
        let act = format!("{:?}", model.config.act);
        Some(CacheEntry::new(
            &dir,
            &model_cache_id(&model, &a.model)?,
            &act,
            &ds.name,
            &ds.split,
            &transform.describe(),
        ))
    };
    let enc = zeroshot::encode_dataset(&model, &ds, &transform, a.batch, entry.as_ref(), true)?;
    let scores = zeroshot::scores(&enc, &text, model.logit_multiplier())?;
    let rels: Vec<String> = enc.items.iter().map(|&i| ds.items[i].rel.clone()).collect();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("out/zeroshot-{}-{}.csv", ds.name, ds.split.replace(['/', '\\'], "_")))
    });
    write_atomic(&out, scores_csv::to_csv(&rels, &ds.classes, &scores).as_bytes())?;
    let labels: Vec<u8> = enc.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
    let metrics = (!enc.items.is_empty()).then(|| eval::evaluate(&labels, &scores, &ds.classes, &a.metrics.options()));
    let jp = json_path(&a.json, &out);
    let extra = serde_json::json!({
        "dataset": dataset_json(&ds),
        "class_names": style,
        "prompt_classes": prompt_names,
        "templates": templates.len(),
        "logit_scale": model.logit_multiplier(),
        "metrics": metrics,
    });
    let mut skipped = ds.skipped.clone();
    skipped.extend(enc.skipped.iter().cloned());
    let run = RunStats {
        total: ds.items.len() + ds.skipped.len(),
        ok: enc.items.len(),
        skipped,
        seconds: enc.seconds,
        loader: enc.loader,
        cache: Some(enc.cache.clone()),
    };
    ReportParts {
        command: "zeroshot",
        model: &model,
        args: &a.model,
        session: s,
        transform: transform.describe(),
        run,
        outputs: vec![out.display().to_string(), jp.display().to_string()],
        extra,
    }
    .write_and_print(&jp)?;
    match &metrics {
        Some(r) => r.print(),
        None => eprintln!("no image could be scored: no metrics"),
    }
    Ok(())
}

/// The class list of --classes or --classes-file, trimmed, without empty names.
fn read_classes(classes: &Option<String>, file: &Option<PathBuf>) -> Result<Vec<String>> {
    let list: Vec<String> = match (classes, file) {
        (Some(c), _) => c.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading classes file {}", f.display()))?
            .lines()
            .map(|s| s.trim().to_string())
            .collect(),
        (None, None) => bail!("give the classes with --classes a,b,c or --classes-file F"),
    };
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    if list.is_empty() {
        bail!("the class list is empty");
    }
    Ok(list)
}

/// Over --images with a class list: scores only (no labels to evaluate against).
fn run_images(a: ZeroshotArgs, s: &Session) -> Result<()> {
    if a.names.names.is_some() {
        bail!("--names spells a --dataset's classes; with --images the classes are given as written");
    }
    let class_list = read_classes(&a.classes, &a.data.classes_file)?;
    let model = a.model.build_on(s)?;
    let transform = clip_transform(&model, a.size)?;
    let tok = ClipTokenizer::new()?;
    let templates = a.templates();
    let text = model.class_embeddings(&tok, &class_list, &templates)?;
    let paths = list_images(&a.images);
    if paths.is_empty() {
        bail!("no images found in {:?}", a.images);
    }
    let enc = encode_images(&model, &paths, &transform, a.batch, true)?;
    let probs = class_probabilities(&enc.embeddings, &text, model.logit_multiplier())?;
    let rows: Vec<String> = enc.paths.iter().map(|p| p.display().to_string()).collect();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("out/zeroshot.csv"));
    write_atomic(&out, scores_csv::to_csv(&rows, &class_list, probs.f32s()?).as_bytes())?;
    let jp = json_path(&a.json, &out);
    let extra = serde_json::json!({
        "classes": class_list,
        "templates": templates.len(),
        "logit_scale": model.logit_multiplier(),
    });
    let run = RunStats::of_images(paths.len(), &enc);
    ReportParts {
        command: "zeroshot",
        model: &model,
        args: &a.model,
        session: s,
        transform: transform.describe(),
        run,
        outputs: vec![out.display().to_string(), jp.display().to_string()],
        extra,
    }
    .write_and_print(&jp)?;
    Ok(())
}
