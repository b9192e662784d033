//! `labelfree tagclip`: arguments, the run, and its outputs (scores CSV, tags CSV, JSON report,
//! PNG maps). Over `--images` with a class list, or over a `--dataset` split with its classes
//! (then evaluated: mAP and F1 printed, per-class AP in the report).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::{background_words, maps, run, transform_for, ClassText, ImageResult, TagclipOptions};
use crate::data::datasets::args::{announce, dataset_json, ClassNameArgs, DatasetArgs, SplitUse};
use crate::data::datasets::{ClassNames, Dataset, DatasetKind};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{self, scores_csv, MetricArgs};
use crate::methods::report::RunReport;
use crate::methods::write_atomic;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::clip::weights::{load_safetensors, save_safetensors};
use crate::models::clip::ClipModel;
use crate::ops::activation::Activation;
use crate::tensor::Tensor;

#[derive(Args, Clone, Debug)]
pub struct TagclipArgs {
    /// Image files and/or directories, searched recursively for .jpg/.jpeg/.png (instead of
    /// --dataset)
    #[arg(long, num_args = 1.., conflicts_with = "dataset", required_unless_present = "dataset")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub names: ClassNameArgs,
    /// Comma-separated class names, with --images (VOC-style names as TagCLIP writes them,
    /// e.g. tvmonitor)
    #[arg(long, conflicts_with_all = ["classes_file", "preset", "dataset"])]
    pub classes: Option<String>,
    /// TagCLIP's own class list and background words, with --images: coco (80 + 23) or voc
    /// (20 + 25). A --dataset brings its classes (spelled by --names)
    #[arg(long, conflicts_with_all = ["classes_file", "dataset"])]
    pub preset: Option<String>,
    /// Background words appended to the classes: voc (25), coco (23) or none (default: the
    /// preset's or the dataset's (VOC: voc, COCO: coco), else coco)
    #[arg(long)]
    pub background: Option<String>,
    /// CLIP ViT weights (.safetensors, OpenAI/open_clip or Hugging Face names); without them a
    /// RANDOM-weight model of --arch is used
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// open_clip architecture name. With --weights, the weights must be this architecture, and
    /// its open_clip config gives the activation when nothing in or beside the file does
    /// (ViT-B-16: GELU, ViT-B-16-quickgelu: QuickGELU); without --weights, a RANDOM-weight model
    /// of it (default ViT-B-16-quickgelu, the shape of OpenAI's ViT-B/16)
    #[arg(long)]
    pub arch: Option<String>,
    /// Activation when the weights do not record it: quick_gelu (OpenAI) or gelu
    #[arg(long)]
    pub act: Option<String>,
    /// Seed of the random-weight model (no --weights)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-image scores: CSV `path,<class>,...` (default: out/tagclip.csv, or
    /// out/tagclip-<dataset>-<split>.csv with paths relative to the dataset root)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Per-image tags: CSV `path,tags` (class names joined by `;`)
    #[arg(long)]
    pub tags: Option<PathBuf>,
    /// Run report as JSON (default: <out>.report.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the maps here: per tagged class a PNG of the image with the refined class map
    /// blended in, the class name and final score, DMAR's class boxes and the CWR crop, with a
    /// legend; the image itself; and index.html, a contact sheet of them all that opens from disk
    #[arg(long)]
    pub save_maps: Option<PathBuf>,
    /// How many images (the first ones) get maps
    #[arg(long, default_value_t = 8)]
    pub maps_limit: usize,
    /// Cache of the class text embeddings (safetensors; reused when names and weights match)
    #[arg(long)]
    pub text_cache: Option<PathBuf>,
    /// Images per patch pass (equal sizes are batched)
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Crops per CWR pass
    #[arg(long, default_value_t = 16)]
    pub crop_batch: usize,
    /// CWR candidate threshold, relative (official 0.5; 0.1 on COCO-Stuff)
    #[arg(long, default_value_t = 0.5)]
    pub cwr_threshold: f32,
    /// Tag threshold, relative (official 0.5; 0.1 on COCO-Stuff)
    #[arg(long, default_value_t = 0.5)]
    pub tag_threshold: f32,
    /// Fix: keep the true end of boxes touching the right/bottom border
    #[arg(long)]
    pub fix_box_clip: bool,
    /// Fix: skip (not stop at) a CWR candidate with an empty box
    #[arg(long)]
    pub fix_cwr_early_stop: bool,
    /// Fix: keep the resized positional embedding in f32 (no fp16 cast)
    #[arg(long)]
    pub fix_pos_fp16: bool,
    /// Fix: threshold class maps on floats, not on u8-quantised values
    #[arg(long)]
    pub fix_quantization: bool,
    /// All the fixes above
    #[arg(long)]
    pub fix_all: bool,
    #[command(flatten)]
    pub metrics: MetricArgs,
}

impl TagclipArgs {
    pub fn options(&self) -> TagclipOptions {
        TagclipOptions {
            cwr_threshold: self.cwr_threshold,
            tag_threshold: self.tag_threshold,
            fix_box_clip: self.fix_box_clip || self.fix_all,
            fix_cwr_early_stop: self.fix_cwr_early_stop || self.fix_all,
            fix_pos_fp16: self.fix_pos_fp16 || self.fix_all,
            fix_quantization: self.fix_quantization || self.fix_all,
            batch: self.batch.max(1),
            crop_batch: self.crop_batch.max(1),
            keep_maps: self.save_maps.is_some(),
            ..TagclipOptions::default()
        }
    }
}

fn read_classes(classes: &Option<String>, file: &Option<PathBuf>) -> Result<Vec<String>> {
    let list: Vec<String> = match (classes, file) {
        (Some(c), _) => c.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::Io { path: f.display().to_string(), source: e })?
            .lines()
            .map(|s| s.trim().to_string())
            .collect(),
        (None, None) => return Err(Error::Shape("give the classes with --classes a,b,c or --classes-file F".into())),
    };
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    if list.is_empty() {
        return Err(Error::Shape("the class list is empty".into()));
    }
    Ok(list)
}

fn build_model(a: &TagclipArgs) -> Result<ClipModel> {
    let act = match &a.act {
        None => None,
        Some(v) => {
            Some(Activation::parse(v).ok_or_else(|| Error::Weights(format!("--act {v}: use quick_gelu or gelu")))?)
        }
    };
    match &a.weights {
        Some(w) => {
            let m = ClipModel::load(w, act, a.arch.as_deref())?;
            eprintln!("model: {} from {} (activation {:?}: {})", m.arch, w.display(), m.config.act, m.act_source);
            if let Some(warning) = &m.act_warning {
                eprintln!("warning: {warning}");
            }
            Ok(m)
        }
        None => {
            eprintln!("################################################################################");
            let arch = a.arch.as_deref().unwrap_or("ViT-B-16-quickgelu");
            eprintln!("# WARNING: no --weights given: using a RANDOM-weight {arch} (seed {}).", a.seed);
            eprintln!("# Its scores and tags MEAN NOTHING. See weights/README.md for real weights.");
            eprintln!("################################################################################");
            if a.act.is_some() {
                return Err(Error::Weights(format!(
                    "--act applies to loaded weights; for a random model choose the arch (e.g. {arch})"
                )));
            }
            ClipModel::random(arch, a.seed)
        }
    }
}

/// Class text, from the cache when its names and weights match, else encoded (and cached).
fn class_text(
    model: &ClipModel,
    a: &TagclipArgs,
    classes: &[String],
    background: &[String],
) -> Result<(ClassText, f64, bool)> {
    let t0 = Instant::now();
    let mut names = classes.to_vec();
    names.extend(background.iter().cloned());
    let key = serde_json::json!({
        "names": names,
        "weights": a.weights.as_ref().map(|w| w.display().to_string()),
        "seed": if a.weights.is_none() { Some(a.seed) } else { None },
        "arch": model.arch,
        "act": format!("{:?}", model.config.act),
        "templates": "tagclip85",
    })
    .to_string();
    if let Some(cache) = &a.text_cache {
        if cache.exists() {
            let (tensors, meta) = load_safetensors(cache)?;
            if meta.get("key") == Some(&key) {
                if let Some(t) = tensors.get("text") {
                    let dim = t.dim(1);
                    let ct = ClassText::from_embeddings(names, classes.len(), t.f32s()?.to_vec(), dim)?;
                    return Ok((ct, t0.elapsed().as_secs_f64(), true));
                }
            }
            eprintln!("text cache {} is for other classes or weights: encoding again", cache.display());
        }
    }
    let tok = ClipTokenizer::new()?;
    let ct = ClassText::encode(model, &tok, classes, background)?;
    if let Some(cache) = &a.text_cache {
        let mut meta = std::collections::HashMap::new();
        meta.insert("key".to_string(), key);
        let t = Tensor::from_f32(&[ct.len(), ct.dim], ct.emb.clone())?;
        write_atomic(cache, &save_safetensors(&[("text", &t)], &meta)?)?;
    }
    Ok((ct, t0.elapsed().as_secs_f64(), false))
}

/// Scores CSV: `path,<class>,...` (each score in the shortest form that reads back to the same
/// f32, as zeroshot writes it).
pub fn scores_csv(rows: &[String], results: &[ImageResult], classes: &[String]) -> String {
    let scores: Vec<f32> = results.iter().flat_map(|r| r.scores.iter().copied()).collect();
    scores_csv::to_csv(rows, classes, &scores)
}

/// Tags CSV: `path,tags` with the class names joined by `;` (a field is quoted when it holds
/// `,`, `"`, CR or LF, the csv crate's default).
pub fn tags_csv(rows: &[String], results: &[ImageResult], classes: &[String]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let write = "writing CSV to memory cannot fail";
    w.write_record(["path", "tags"]).expect(write);
    for (p, r) in rows.iter().zip(results) {
        let names: Vec<&str> = r.tags.iter().map(|&t| classes[t].as_str()).collect();
        w.write_record([p.as_str(), &names.join(";")]).expect(write);
    }
    String::from_utf8(w.into_inner().expect(write)).expect("the fields are UTF-8")
}

/// What a run reads: image files with a class list, or a dataset split.
struct Input {
    paths: Vec<PathBuf>,
    /// The names in the prompts, one per class.
    prompt_classes: Vec<String>,
    /// The scores CSV's column names (a dataset's: as annotated).
    columns: Vec<String>,
    background: String,
    dataset: Option<(Dataset, ClassNames)>,
}

fn read_input(a: &TagclipArgs) -> Result<Input> {
    if a.data.dataset.is_some() {
        let ds = a.data.load(SplitUse::Evaluate)?;
        announce(&ds);
        let style = a.names.style(ClassNames::Tagclip)?;
        let background = match ds.kind() {
            DatasetKind::Voc2007 | DatasetKind::Voc2012 => "voc",
            _ => "coco",
        };
        return Ok(Input {
            paths: ds.items.iter().map(|it| it.path.clone()).collect(),
            prompt_classes: ds.class_names(style),
            columns: ds.classes.clone(),
            background: a.background.clone().unwrap_or_else(|| background.to_string()),
            dataset: Some((ds, style)),
        });
    }
    if a.names.names.is_some() {
        return Err(Error::Dataset("--names spells a --dataset's classes; with --images give them as written".into()));
    }
    let (classes, preset_bg): (Vec<String>, &str) = match a.preset.as_deref() {
        Some("coco") => (super::COCO_CLASSES.iter().map(|s| s.to_string()).collect(), "coco"),
        Some("voc") => (super::VOC_CLASSES.iter().map(|s| s.to_string()).collect(), "voc"),
        Some(other) => return Err(Error::Shape(format!("--preset {other}: use coco or voc"))),
        None => (read_classes(&a.classes, &a.data.classes_file)?, "coco"),
    };
    let paths = crate::data::images::list_images(&a.images);
    if paths.is_empty() {
        return Err(Error::Shape(format!("no images found in {:?}", a.images)));
    }
    Ok(Input {
        paths,
        prompt_classes: classes.clone(),
        columns: classes,
        background: a.background.clone().unwrap_or_else(|| preset_bg.to_string()),
        dataset: None,
    })
}

/// The `tagclip` command.
///
/// With `--device cuda` the two encoder passes (the native-resolution patch pass and the 224
/// crop passes) run on the GPU in `dtype`, and the patch stage's maps stay there; the contour
/// boxes and CWR's planning run on the CPU.
pub fn run_cli(
    a: TagclipArgs,
    dev: Device,
    gpu: Option<&std::sync::Arc<crate::device::cuda::Gpu>>,
    dtype: crate::device::cuda::DType,
    gemm: crate::device::cuda::GemmBackend,
) -> Result<()> {
    let input = read_input(&a)?;
    let classes = &input.prompt_classes;
    let background = background_words(&input.background)?;
    let mut model = build_model(&a)?;
    if let Some(gpu) = gpu {
        model.attach_cuda(gpu, dtype)?;
        eprintln!(
            "device: {} ({dtype}, {gemm} GEMM): encoder passes on the GPU, DMAR and CWR planning on the CPU",
            gpu.name
        );
    }
    let opts = a.options();
    let (text, text_s, cached) = class_text(&model, &a, classes, &background)?;
    eprintln!(
        "class text: {} classes + {} background words ({:.1} s{})",
        classes.len(),
        background.len(),
        text_s,
        if cached { ", cached" } else { "" }
    );
    let res = run(&model, &input.paths, &text, &opts, true)?;
    // Row keys: a dataset's relative paths (what eval and train match), else the paths as given.
    let rows: Vec<String> = match &input.dataset {
        Some((ds, _)) => {
            let rel: std::collections::HashMap<&Path, &str> =
                ds.items.iter().map(|it| (it.path.as_path(), it.rel.as_str())).collect();
            res.paths
                .iter()
                .map(|p| rel.get(p.as_path()).map_or_else(|| p.display().to_string(), |r| r.to_string()))
                .collect()
        }
        None => res.paths.iter().map(|p| p.display().to_string()).collect(),
    };
    let out = a.out.clone().unwrap_or_else(|| match &input.dataset {
        Some((ds, _)) => PathBuf::from(format!("out/tagclip-{}-{}.csv", ds.name, ds.split.replace(['/', '\\'], "_"))),
        None => PathBuf::from("out/tagclip.csv"),
    });
    write_atomic(&out, scores_csv(&rows, &res.results, &input.columns).as_bytes())?;
    let mut outputs = vec![out.display().to_string()];
    if let Some(t) = &a.tags {
        write_atomic(t, tags_csv(&rows, &res.results, &input.columns).as_bytes())?;
        outputs.push(t.display().to_string());
    }
    if let Some(dir) = &a.save_maps {
        let mut written = Vec::new();
        let mut stems = std::collections::HashSet::new();
        let source = maps::MapSource { model: &model, text: &text, names: &input.columns, opts: &opts };
        for (i, (p, r)) in res.paths.iter().zip(&res.results).take(a.maps_limit).enumerate() {
            // Photos of one name in different folders get the index to tell them apart.
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
            let stem = if stems.insert(stem.clone()) { stem } else { format!("{stem}-{i}") };
            if let Some(m) = maps::save_maps(dir, &stem, p, r, &source)? {
                written.push(m);
            }
        }
        let title = format!(
            "labelfree tagclip: {} ({}){}",
            model.arch,
            a.weights
                .as_ref()
                .map_or_else(|| "RANDOM weights: the maps mean nothing".to_string(), |w| w.display().to_string()),
            input.dataset.as_ref().map_or_else(String::new, |(ds, _)| format!(", {} {}", ds.name, ds.split))
        );
        let index = maps::write_index(dir, &title, &written)?;
        let n: usize = written.iter().map(|m| m.maps.len()).sum();
        outputs.push(format!("{} ({n} maps of {} images)", index.display(), written.len()));
    }
    let jp = a.json.clone().unwrap_or_else(|| {
        let mut s = out.as_os_str().to_owned();
        s.push(".report.json");
        PathBuf::from(s)
    });
    outputs.push(jp.display().to_string());
    // With a dataset, the scored images' labels in the order of the rows.
    let metrics = match &input.dataset {
        Some((ds, _)) if !res.results.is_empty() => {
            let index: std::collections::HashMap<&Path, usize> =
                ds.items.iter().enumerate().map(|(i, it)| (it.path.as_path(), i)).collect();
            let mut labels = Vec::with_capacity(res.results.len() * ds.classes.len());
            for p in &res.paths {
                let i = index
                    .get(p.as_path())
                    .ok_or_else(|| Error::Dataset(format!("{} is not an image of the split", p.display())))?;
                labels.extend_from_slice(&ds.items[*i].labels);
            }
            let scores: Vec<f32> = res.results.iter().flat_map(|r| r.scores.iter().copied()).collect();
            Some(eval::evaluate(&labels, &scores, &ds.classes, &a.metrics.options()))
        }
        _ => None,
    };
    let ok = res.paths.len();
    let crops: usize = res.results.iter().map(|r| r.cwr.crops.len()).sum();
    let stops = res.results.iter().filter(|r| r.cwr.stopped_at.is_some()).count();
    let images: Vec<serde_json::Value> = rows
        .iter()
        .zip(&res.results)
        .map(|(p, r)| {
            serde_json::json!({
                "path": p,
                "size": [r.height, r.width],
                "tags": r.tags.iter().map(|&t| &input.columns[t]).collect::<Vec<_>>(),
                "candidates": r.cwr.candidates,
                "crops": r.cwr.crops.iter().map(|c| serde_json::json!({"class": c.class, "cells": c.cells})).collect::<Vec<_>>(),
                "stopped_at": r.cwr.stopped_at,
            })
        })
        .collect();
    let mut skipped = Vec::new();
    let mut total = input.paths.len();
    if let Some((ds, _)) = &input.dataset {
        skipped.extend(ds.skipped.iter().cloned());
        total += ds.skipped.len();
    }
    skipped.extend(res.skipped.iter().cloned());
    let rep = RunReport {
        command: "tagclip".into(),
        arch: model.arch.clone(),
        weights: a.weights.as_ref().map(|w| w.display().to_string()),
        random_weights: model.random,
        activation: format!("{:?}", model.config.act),
        device: dev.to_string(),
        threads: rayon::current_num_threads(),
        transform: transform_for(&model)?.describe(),
        images_total: total,
        images_ok: ok,
        skipped,
        seconds: res.seconds,
        images_per_s: if res.seconds > 0.0 { ok as f64 / res.seconds } else { 0.0 },
        // TagCLIP decodes inside its own pipeline; no separate loader figure, no embedding cache.
        decoded_images_per_s: 0.0,
        cache: None,
        outputs,
        extra: serde_json::json!({
            "dataset": input.dataset.as_ref().map(|(ds, _)| dataset_json(ds)),
            "class_names": input.dataset.as_ref().map(|(_, style)| style),
            "classes": input.columns,
            "prompt_classes": classes,
            "background": background,
            "options": opts,
            "logit_scale": opts.logit_scale.unwrap_or_else(|| model.logit_multiplier()),
            "text_seconds": text_s,
            "text_cached": cached,
            "seconds_per_image": if ok > 0 { res.seconds / ok as f64 } else { 0.0 },
            "cwr_crops": crops,
            "cwr_early_stops": stops,
            "metrics": metrics,
            "images": images,
        }),
    };
    rep.write_json(&jp)?;
    rep.print();
    eprintln!(
        "cwr       {crops} crops, {stops} early stops, {:.2} s/image",
        if ok > 0 { res.seconds / ok as f64 } else { 0.0 }
    );
    match (&input.dataset, &metrics) {
        (Some(_), Some(r)) => r.print(),
        (Some(_), None) => eprintln!("no image could be scored: no metrics"),
        (None, _) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_csv_quotes_only_what_needs_it() {
        let result = |tags: Vec<usize>| ImageResult {
            height: 224,
            width: 224,
            scores: Vec::new(),
            local: Vec::new(),
            tags,
            cwr: Default::default(),
            refined: None,
            hat: None,
        };
        let classes = ["cat", "say \"hi\"", "x,y", "dog"].map(String::from);
        let rows = ["a.jpg", "dir/b, c.jpg", "line\rbreak.jpg", "\"q\".jpg"].map(String::from);
        let results = [result(vec![0, 3]), result(vec![1]), result(vec![]), result(vec![2, 0])];
        // The bytes the hand-written writer produced before the csv crate took over.
        assert_eq!(
            tags_csv(&rows, &results, &classes),
            "path,tags\na.jpg,cat;dog\n\"dir/b, c.jpg\",\"say \"\"hi\"\"\"\n\"line\rbreak.jpg\",\n\"\"\"q\"\".jpg\",\"x,y;cat\"\n"
        );
    }
}
