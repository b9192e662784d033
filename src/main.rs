//! The labelfree CLI: parses, builds a config, calls a method. Thin by design.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use labelfree::data::datasets::args::{announce, dataset_json, ClassNameArgs, DatasetArgs, SplitUse};
use labelfree::data::datasets::{ClassNames, Dataset};
use labelfree::data::loader::LoaderStats;
use labelfree::device::cuda::Gpu;
use labelfree::device::sim::SimOptions;
use labelfree::device::{self, Device};
use labelfree::eval::{self, scores_csv, MetricArgs};
use labelfree::methods::cache::{self, CacheEntry, CacheStatus};
use labelfree::methods::encode::{clip_transform, encode_images, Skipped};
use labelfree::methods::report::RunReport;
use labelfree::methods::write_atomic;
use labelfree::methods::zeroshot;
use labelfree::models::clip::prompts;
use labelfree::models::clip::tokenizer::ClipTokenizer;
use labelfree::models::clip::ClipModel;
use labelfree::ops::activation::Activation;
use labelfree::ops::similarity::class_probabilities;

#[derive(Parser)]
#[command(name = "labelfree", version, about = "Annotation-free multi-label image classification with CLIP")]
struct Cli {
    /// cpu, cuda, cuda:N, or sim: the PTX simulator runs the CUDA kernels on the CPU (slow,
    /// sanitized; for checking and profiling kernels without a GPU)
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// With --device sim: skip the sanitizer (races, out-of-bounds, uninitialised shared
    /// memory, misaligned accesses, barrier deadlocks), about 2-5x faster
    #[arg(long, global = true)]
    no_sanitize: bool,
    /// With --device sim: count every launch (instructions, FLOPs, sectors, bank conflicts) and
    /// print the per-kernel counts; gpu-check also writes them, with occupancy from ptxas and a
    /// lower bound of the time on an H100, to its --json
    #[arg(long, global = true)]
    profile: bool,
    /// CPU threads (0 = all cores)
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Element type of activations and weights on CUDA: f32, bf16 or f16 (the CPU path is f32)
    #[arg(long, global = true, default_value = "f32")]
    dtype: String,
    /// GEMM of the CUDA linear layers: native (labelfree's kernels) or cublas (reference)
    #[arg(long, global = true, default_value = "native")]
    gemm: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// CLIP weights (.safetensors, OpenAI/open_clip or Hugging Face names)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// open_clip architecture name (default ViT-B-32). With --weights, the weights must be this
    /// architecture, and its open_clip config gives the activation when the file does not
    /// record one; with no --weights, a RANDOM-weight model of it is built
    #[arg(long)]
    arch: Option<String>,
    /// Transformer activation when the weights do not record it: quick_gelu (OpenAI) or gelu
    #[arg(long)]
    act: Option<String>,
    /// Seed of a random-weight model
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Image embeddings to a safetensors file (tensor `embeddings`, metadata `paths`)
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// Image files and/or directories (searched recursively for .jpg/.jpeg/.png)
        #[arg(long, num_args = 1.., required = true)]
        images: Vec<PathBuf>,
        /// Input side in pixels (default: the model's native size)
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// L2-normalise each embedding before writing
        #[arg(long)]
        normalize: bool,
        #[arg(long)]
        out: PathBuf,
        /// Also write the run report as JSON here (default: <out>.report.json)
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Zero-shot class probabilities (softmax over the classes), one CSV row per image: of the
    /// given --images, or of a whole --dataset split, then evaluated (mAP, F1)
    Zeroshot {
        #[command(flatten)]
        model: ModelArgs,
        /// Image files and/or directories (instead of --dataset)
        #[arg(long, num_args = 1.., conflicts_with = "dataset", required_unless_present = "dataset")]
        images: Vec<PathBuf>,
        #[command(flatten)]
        data: DatasetArgs,
        /// Comma-separated class names (with --images)
        #[arg(long, conflicts_with = "classes_file")]
        classes: Option<String>,
        #[command(flatten)]
        names: ClassNameArgs,
        /// Prompt template, `{}` is the class name
        #[arg(long, conflicts_with = "ensemble")]
        template: Option<String>,
        /// TagCLIP's 85-template ensemble (normalise each, average, normalise)
        #[arg(long)]
        ensemble: bool,
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// The scores CSV (default: out/zeroshot.csv, or out/zeroshot-<dataset>-<split>.csv)
        #[arg(long)]
        out: Option<PathBuf>,
        /// The run report as JSON (default: <out>.report.json)
        #[arg(long)]
        json: Option<PathBuf>,
        /// Do not read or write the image-embedding cache
        #[arg(long)]
        no_cache: bool,
        /// The cache folder (default: $LABELFREE_CACHE, else .labelfree-cache)
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[command(flatten)]
        metrics: MetricArgs,
    },
    /// Evaluates a scores CSV (`path,<class>,...`, as zeroshot writes) against a dataset's labels
    Eval {
        #[command(flatten)]
        data: DatasetArgs,
        /// The scores CSV
        #[arg(long)]
        preds: PathBuf,
        /// Write the metrics as JSON here
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        metrics: MetricArgs,
    },
    /// The architecture read from a weights file
    Info {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        act: Option<String>,
    },
    /// Distil soft labels into a ResNet-50 with a CAM head (CCD/CDUL's classifier), on the CPU
    /// (or the GPU with --device cuda)
    Train(labelfree::train::run::TrainArgs),
    /// Image-encoder throughput on random weights (images/s); with --text, the class text of a
    /// TagCLIP run (103 names x 85 templates) through a text tower
    Bench {
        #[arg(long, default_value = "ViT-B-16,ViT-B-32,RN50")]
        archs: String,
        /// Time the text tower of this architecture (e.g. ViT-B-16) on TagCLIP's 103 x 85
        /// prompts instead of the image encoders (CPU; trimmed batches, as every command encodes)
        #[arg(long)]
        text: Option<String>,
        /// With --text: also time this many batches at the full 77 tokens (per prompt)
        #[arg(long, default_value_t = 0)]
        text_full_batches: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Batch sizes on CUDA (comma-separated; --batch is the CPU's)
        #[arg(long, default_value = "1,8,32,64,128,256,512")]
        batches: String,
        /// Write the results as JSON here
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Every CUDA kernel against its CPU reference on random inputs; with --bench, timed
    /// (CUDA events, warm-up, median, cold L2). Prints a markdown table; non-zero exit on a failure.
    GpuCheck(labelfree::gpu_check::GpuCheckArgs),
    /// TagCLIP: training-free multi-label tags of --images or a --dataset split (scores CSV, tags
    /// CSV, report, maps; over a split also mAP and F1)
    Tagclip(labelfree::methods::tagclip::cli::TagclipArgs),
    /// CDUL: CLIP global-local pseudo-labels (init), their gradient-alignment update, and the
    /// classifier trained on them with an update after each epoch (train)
    Cdul(labelfree::methods::cdul::cli::CdulArgs),
    /// CCD: debiased CLIP labels (init), classifier-guided crops and the label update
    /// (relabel), the whole training schedule (train) and the classifier's scores (predict)
    Ccd(labelfree::methods::ccd::cli::CcdArgs),
}

fn parse_act(s: &Option<String>) -> Result<Option<Activation>> {
    match s {
        None => Ok(None),
        Some(v) => Activation::parse(v).map(Some).with_context(|| format!("--act {v}: use quick_gelu or gelu")),
    }
}

fn build_model(m: &ModelArgs) -> Result<ClipModel> {
    let act = parse_act(&m.act)?;
    match &m.weights {
        Some(w) => {
            let model = ClipModel::load(w, act, m.arch.as_deref())
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
            let arch = m.arch.as_deref().unwrap_or("ViT-B-32");
            eprintln!("################################################################################");
            eprintln!("# WARNING: no --weights given: using a RANDOM-weight {} (seed {}).", arch, m.seed);
            eprintln!("# Its embeddings and scores MEAN NOTHING. See weights/README.md for real weights.");
            eprintln!("################################################################################");
            let mut model = ClipModel::random(arch, m.seed)?;
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

/// With `--device cuda`, loads the image tower onto the GPU (text stays on the CPU: it is
/// encoded once per class list).
fn attach_device(model: &mut ClipModel, gpu: Option<&Arc<Gpu>>, m: &ModelArgs, dtype: &str, gemm: &str) -> Result<()> {
    if let Some(gpu) = gpu {
        if m.weights.is_none() {
            eprintln!("note: the random model's CUDA image tower is its own random draw (not the CPU tower's weights)");
        }
        model.attach_cuda(gpu, m.weights.as_deref(), dtype.parse()?).context("loading the image tower onto the GPU")?;
        eprintln!("device: {} ({dtype}, {gemm} GEMM)", gpu.name);
    }
    Ok(())
}

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

/// What a run did with its images, for the report.
struct RunStats {
    total: usize,
    ok: usize,
    skipped: Vec<Skipped>,
    seconds: f64,
    loader: LoaderStats,
    cache: Option<CacheStatus>,
}

#[allow(clippy::too_many_arguments)]
fn report(
    command: &str,
    model: &ClipModel,
    m: &ModelArgs,
    dev: Device,
    transform: String,
    run: RunStats,
    outputs: Vec<String>,
    extra: serde_json::Value,
) -> RunReport {
    RunReport {
        command: command.into(),
        arch: model.arch.clone(),
        weights: m.weights.as_ref().map(|w| w.display().to_string()),
        random_weights: model.random,
        activation: format!("{:?}", model.config.act),
        device: dev.to_string(),
        threads: rayon::current_num_threads(),
        transform,
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
        outputs,
        extra,
    }
}

fn load_dataset(d: &DatasetArgs) -> Result<Dataset> {
    let ds = d.load(SplitUse::Evaluate)?;
    announce(&ds);
    Ok(ds)
}

fn model_cache_id(model: &ClipModel, m: &ModelArgs) -> Result<String> {
    Ok(match &m.weights {
        Some(w) => cache::weights_fingerprint(w).with_context(|| format!("fingerprinting {}", w.display()))?,
        None => format!("random:{}:seed={}", model.arch, m.seed),
    })
}

fn templates_for(template: &Option<String>, ensemble: bool) -> Vec<&str> {
    if ensemble {
        prompts::tagclip_templates()
    } else {
        vec![template.as_deref().unwrap_or(prompts::DEFAULT_TEMPLATE)]
    }
}

fn json_path(json: &Option<PathBuf>, out: &Path) -> PathBuf {
    json.clone().unwrap_or_else(|| {
        let mut s = out.as_os_str().to_owned();
        s.push(".report.json");
        PathBuf::from(s)
    })
}

fn run(cli: Cli) -> Result<()> {
    device::set_cpu_threads(cli.threads);
    let dev: Device = cli.device.parse()?;
    let (cli_dtype, cli_gemm) = (cli.dtype.clone(), cli.gemm.clone());
    cli_dtype.parse::<labelfree::device::cuda::CudaDType>()?;
    let gemm: labelfree::device::cuda::GemmBackend = cli_gemm.parse()?;
    if dev.runs_kernels()
        && !matches!(
            cli.command,
            Command::Bench { .. }
                | Command::GpuCheck(_)
                | Command::Embed { .. }
                | Command::Zeroshot { .. }
                | Command::Tagclip(_)
                | Command::Train(_)
                | Command::Cdul(_)
                | Command::Ccd(_)
        )
    {
        bail!(
                "--device {dev}: this command has no CUDA path yet (embed, zeroshot, tagclip, train, bench and gpu-check have one); \
                 use --device cpu"
            );
    }
    if (cli.no_sanitize || cli.profile) && dev != Device::Sim {
        bail!("--no-sanitize and --profile are options of the PTX simulator: add --device sim");
    }
    // Opened once: creating the context loads (and JIT-compiles) every kernel module.
    let gpu: Option<Arc<Gpu>> = match dev {
        Device::Cuda(n) => Some(Gpu::new(n)?.with_gemm(gemm)),
        Device::Sim => {
            Some(Gpu::simulator(SimOptions { sanitize: !cli.no_sanitize, profile: cli.profile })?.with_gemm(gemm))
        }
        Device::Cpu => None,
    };
    let sim = gpu.as_ref().and_then(|g| g.sim().cloned());
    match cli.command {
        Command::Embed { model: m, images, size, batch, normalize, out, json } => {
            let mut model = build_model(&m)?;
            attach_device(&mut model, gpu.as_ref(), &m, &cli_dtype, &cli_gemm)?;
            let transform = clip_transform(&model, size)?;
            let paths = labelfree::data::images::list_images(&images);
            if paths.is_empty() {
                bail!("no images found in {:?}", images);
            }
            let enc = encode_images(&model, &paths, &transform, batch, true)?;
            let mut emb = enc.embeddings.clone();
            if normalize {
                emb = labelfree::ops::similarity::l2_normalize(&emb)?;
            }
            let path_list: Vec<String> = enc.paths.iter().map(|p| p.display().to_string()).collect();
            let mut meta = std::collections::HashMap::new();
            meta.insert("paths".to_string(), serde_json::to_string(&path_list)?);
            meta.insert("skipped".to_string(), serde_json::to_string(&enc.skipped)?);
            meta.insert("arch".to_string(), model.arch.clone());
            meta.insert("random_weights".to_string(), model.random.to_string());
            meta.insert("normalized".to_string(), normalize.to_string());
            meta.insert("transform".to_string(), transform.describe());
            let bytes = labelfree::models::clip::weights::save_safetensors(&[("embeddings", &emb)], &meta)?;
            write_atomic(&out, &bytes)?;
            let jp = json_path(&json, &out);
            let run = RunStats {
                total: paths.len(),
                ok: enc.paths.len(),
                skipped: enc.skipped.clone(),
                seconds: enc.seconds,
                loader: enc.loader,
                cache: None,
            };
            let rep = report(
                "embed",
                &model,
                &m,
                dev,
                transform.describe(),
                run,
                vec![out.display().to_string(), jp.display().to_string()],
                serde_json::json!({"dim": emb.dim(1), "normalized": normalize}),
            );
            rep.write_json(&jp)?;
            rep.print();
        }
        Command::Zeroshot {
            model: m,
            images,
            data,
            classes,
            names,
            template,
            ensemble,
            size,
            batch,
            out,
            json,
            no_cache,
            cache_dir,
            metrics,
        } => {
            if data.dataset.is_some() {
                if classes.is_some() {
                    bail!("--classes is for --images; a --dataset brings its classes (csv: --classes-file)");
                }
                let ds = load_dataset(&data)?;
                let style = names.style(ClassNames::Natural)?;
                let mut model = build_model(&m)?;
                attach_device(&mut model, gpu.as_ref(), &m, &cli_dtype, &cli_gemm)?;
                let transform = clip_transform(&model, size)?;
                let templates = templates_for(&template, ensemble);
                let prompt_names = ds.class_names(style);
                let text = model.class_embeddings(&ClipTokenizer::new()?, &prompt_names, &templates)?;
                let entry = if no_cache {
                    None
                } else {
                    let dir = cache_dir.clone().unwrap_or_else(cache::default_dir);
                    let act = format!("{:?}", model.config.act);
                    Some(CacheEntry::new(
                        &dir,
                        &model_cache_id(&model, &m)?,
                        &act,
                        &ds.name,
                        &ds.split,
                        &transform.describe(),
                    ))
                };
                let enc = zeroshot::encode_dataset(&model, &ds, &transform, batch, entry.as_ref(), true)?;
                let scores = zeroshot::scores(&enc, &text, model.logit_multiplier())?;
                let rels: Vec<String> = enc.items.iter().map(|&i| ds.items[i].rel.clone()).collect();
                let out = out.unwrap_or_else(|| {
                    PathBuf::from(format!("out/zeroshot-{}-{}.csv", ds.name, ds.split.replace(['/', '\\'], "_")))
                });
                write_atomic(&out, scores_csv::to_csv(&rels, &ds.classes, &scores).as_bytes())?;
                let labels: Vec<u8> = enc.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
                let metrics =
                    (!enc.items.is_empty()).then(|| eval::evaluate(&labels, &scores, &ds.classes, &metrics.options()));
                let jp = json_path(&json, &out);
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
                let rep = report(
                    "zeroshot",
                    &model,
                    &m,
                    dev,
                    transform.describe(),
                    run,
                    vec![out.display().to_string(), jp.display().to_string()],
                    extra,
                );
                rep.write_json(&jp)?;
                rep.print();
                match &metrics {
                    Some(r) => r.print(),
                    None => eprintln!("no image could be scored: no metrics"),
                }
                return Ok(());
            }
            if names.names.is_some() {
                bail!("--names spells a --dataset's classes; with --images the classes are given as written");
            }
            let class_list = read_classes(&classes, &data.classes_file)?;
            let mut model = build_model(&m)?;
            attach_device(&mut model, gpu.as_ref(), &m, &cli_dtype, &cli_gemm)?;
            let transform = clip_transform(&model, size)?;
            let tok = ClipTokenizer::new()?;
            let templates = templates_for(&template, ensemble);
            let text = model.class_embeddings(&tok, &class_list, &templates)?;
            let paths = labelfree::data::images::list_images(&images);
            if paths.is_empty() {
                bail!("no images found in {:?}", images);
            }
            let enc = encode_images(&model, &paths, &transform, batch, true)?;
            let probs = class_probabilities(&enc.embeddings, &text, model.logit_multiplier())?;
            let rows: Vec<String> = enc.paths.iter().map(|p| p.display().to_string()).collect();
            let out = out.unwrap_or_else(|| PathBuf::from("out/zeroshot.csv"));
            write_atomic(&out, scores_csv::to_csv(&rows, &class_list, probs.f32s()?).as_bytes())?;
            let jp = json_path(&json, &out);
            let extra = serde_json::json!({
                "classes": class_list,
                "templates": templates.len(),
                "logit_scale": model.logit_multiplier(),
            });
            let run = RunStats {
                total: paths.len(),
                ok: enc.paths.len(),
                skipped: enc.skipped.clone(),
                seconds: enc.seconds,
                loader: enc.loader,
                cache: None,
            };
            let rep = report(
                "zeroshot",
                &model,
                &m,
                dev,
                transform.describe(),
                run,
                vec![out.display().to_string(), jp.display().to_string()],
                extra,
            );
            rep.write_json(&jp)?;
            rep.print();
        }
        Command::Eval { data, preds, json, metrics } => {
            let ds = load_dataset(&data)?;
            let table = scores_csv::read(&preds)?;
            let matched = scores_csv::match_dataset(&table, &ds)?;
            eprintln!(
                "scores: {} rows in {}, {} matched to the dataset",
                table.paths.len(),
                preds.display(),
                matched.items.len()
            );
            for line in matched.describe() {
                eprintln!("{line}");
            }
            if !table.bad_lines.is_empty() {
                eprintln!("{}", scores_csv::count_and_head("unreadable lines (ignored)", &table.bad_lines));
            }
            if matched.items.is_empty() {
                bail!("no row of {} matches an image of {} {}", preds.display(), ds.name, ds.split);
            }
            let labels: Vec<u8> = matched.items.iter().flat_map(|&i| ds.items[i].labels.iter().copied()).collect();
            let r = eval::evaluate(&labels, &matched.scores, &ds.classes, &metrics.options());
            r.print();
            if let Some(j) = json {
                let v = serde_json::json!({
                    "command": "eval",
                    "preds": preds.display().to_string(),
                    "dataset": dataset_json(&ds),
                    "rows": table.paths.len(),
                    "matched": matched,
                    "bad_lines": table.bad_lines,
                    "metrics": r,
                });
                write_atomic(&j, serde_json::to_string_pretty(&v)?.as_bytes())?;
                eprintln!("wrote     {}", j.display());
            }
        }
        Command::Info { weights, act } => {
            let model = ClipModel::load(&weights, parse_act(&act)?, None)?;
            let info = serde_json::json!({
                "arch": model.arch,
                "config": model.config,
                "activation_source": model.act_source,
                "activation_warning": model.act_warning,
                "image_size": model.image_size(),
                "logit_scale": model.logit_multiplier(),
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Command::Train(a) => {
            if gpu.is_some() && cli_dtype != "f32" {
                bail!("train --device cuda runs in f32 (the precision of the CPU reference it is checked against); drop --dtype {cli_dtype}");
            }
            labelfree::train::run::run(&a.to_run(), gpu.as_ref())?;
        }
        Command::Bench { text: Some(arch), text_full_batches, json, .. } => {
            let r = labelfree::bench::text_throughput(&arch, text_full_batches)?;
            println!(
                "{} text tower, {} prompts, batches of {}, {} threads: tokenise {:.2} s, encode {:.2} s ({} of {} token positions: {:.1}%, {:.2} ms/prompt)",
                r.arch,
                r.prompts,
                r.batch,
                r.threads,
                r.tokenize_s,
                r.trimmed_s,
                r.trimmed_positions,
                r.full_positions,
                100.0 * r.trimmed_positions as f64 / r.full_positions as f64,
                1e3 * r.trimmed_s / r.prompts as f64
            );
            if r.full_batches > 0 {
                println!(
                    "full 77 tokens: {} batches in {:.2} s ({:.2} ms/prompt)",
                    r.full_batches,
                    r.full_s,
                    1e3 * r.full_s_per_prompt
                );
            }
            if let Some(j) = json {
                write_atomic(&j, serde_json::to_string_pretty(&r)?.as_bytes())?;
            }
        }
        Command::Bench { archs, size, json, batches, .. } if sim.is_some() => {
            let gpu = gpu.as_ref().ok_or_else(|| anyhow::anyhow!("no simulator"))?;
            let dtype: labelfree::device::cuda::CudaDType = cli_dtype.parse()?;
            let batches: Vec<usize> = batches
                .split(',')
                .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batches: `{s}` is not a number")))
                .collect::<Result<_>>()?;
            let mut all = Vec::new();
            for arch in archs.split(',') {
                for r in labelfree::bench::sim_encoder_profile(gpu, arch.trim(), &batches, size, dtype)? {
                    println!(
                        "{} {} batch {} at {}: {} launches, {:.2} GFLOP counted ({:.2} by the model's count), H100 bound {:.3} ms = at most {:.0} images/s (a bound from counts, not a time); simulated in {:.1} s\n",
                        r.arch, r.dtype, r.batch, r.size, r.launches, r.gflop_counted, r.gflop_model, r.h100_bound_ms, r.h100_images_per_s_bound, r.seconds_simulated
                    );
                    println!("{}", labelfree::gpu_check::format_profile_table(&r.kernels));
                    all.push(r);
                }
            }
            if let Some(j) = json {
                write_atomic(&j, serde_json::to_string_pretty(&all)?.as_bytes())?;
            }
        }
        Command::Bench { archs, size, runs, json, batches, .. } if gpu.is_some() => {
            let gpu = gpu.as_ref().ok_or_else(|| anyhow::anyhow!("no GPU"))?;
            let dtype: labelfree::device::cuda::CudaDType = cli_dtype.parse()?;
            let batches: Vec<usize> = batches
                .split(',')
                .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batches: `{s}` is not a number")))
                .collect::<Result<_>>()?;
            println!(
                "{:<10} {:>6} {:>5} {:>6} {:>8} {:>10} {:>10} {:>8}",
                "arch", "dtype", "batch", "size", "gemm", "ms/batch", "images/s", "TFLOP/s"
            );
            let mut all = Vec::new();
            for arch in archs.split(',') {
                for r in
                    labelfree::bench::cuda_encoder_throughput(gpu, arch.trim(), &batches, size, dtype, runs.max(5))?
                {
                    println!(
                        "{:<10} {:>6} {:>5} {:>6} {:>8} {:>10.3} {:>10.1} {:>8.1}",
                        r.arch, r.dtype, r.batch, r.size, r.gemm, r.median_ms, r.images_per_s, r.tflops
                    );
                    all.push(r);
                }
            }
            if let Some(j) = json {
                write_atomic(&j, serde_json::to_string_pretty(&all)?.as_bytes())?;
            }
        }
        Command::Bench { archs, batch, size, runs, json, .. } => {
            println!(
                "{:<10} {:>5} {:>5} {:>7} {:>10} {:>10}",
                "arch", "batch", "size", "threads", "s/batch", "images/s"
            );
            let mut all = Vec::new();
            for arch in archs.split(',') {
                let r = labelfree::bench::encoder_throughput(arch.trim(), batch, size, runs)?;
                println!(
                    "{:<10} {:>5} {:>5} {:>7} {:>10.3} {:>10.2}",
                    r.arch, r.batch, r.size, r.threads, r.median_s, r.images_per_s
                );
                all.push(r);
            }
            if let Some(j) = json {
                write_atomic(&j, serde_json::to_string_pretty(&all)?.as_bytes())?;
            }
        }
        Command::Tagclip(a) => labelfree::methods::tagclip::cli::run_cli(a, dev, gpu.as_ref(), &cli_dtype, &cli_gemm)?,
        Command::Cdul(a) => labelfree::methods::cdul::cli::run_cli(a, dev, gpu.as_ref(), &cli_dtype)?,
        Command::Ccd(a) => labelfree::methods::ccd::cli::run_cli(a, dev, gpu.as_ref(), &cli_dtype)?,
        Command::GpuCheck(a) => {
            // gpu-check always runs kernels: on device 0 unless --device says cuda:N or sim.
            let gpu = match gpu {
                Some(g) => g,
                None => Gpu::new(0)?.with_gemm(gemm),
            };
            labelfree::gpu_check::run_cli(&a, &gpu)?;
            return Ok(());
        }
    }
    if let Some(sim) = sim {
        labelfree::gpu_check::report_sim_run(&sim)?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
