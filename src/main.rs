//! The labelfree CLI: parses, builds a config, calls a method. Thin by design.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use labelfree::device::{self, Device};
use labelfree::methods::encode::{clip_transform, encode_images};
use labelfree::methods::report::RunReport;
use labelfree::methods::write_atomic;
use labelfree::models::clip::prompts;
use labelfree::models::clip::tokenizer::ClipTokenizer;
use labelfree::models::clip::ClipModel;
use labelfree::ops::activation::Activation;
use labelfree::ops::similarity::class_probabilities;

#[derive(Parser)]
#[command(name = "labelfree", version, about = "Annotation-free multi-label image classification with CLIP")]
struct Cli {
    /// cpu, cuda or cuda:N
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// CPU threads (0 = all cores)
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// CLIP weights (.safetensors, OpenAI/open_clip or Hugging Face names)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// open_clip architecture name; with no --weights, a RANDOM-weight model of it is built
    #[arg(long, default_value = "ViT-B-32")]
    arch: String,
    /// Transformer activation when the weights do not record it: quick_gelu (OpenAI) or gelu
    #[arg(long)]
    act: Option<String>,
    /// Seed of a random-weight model
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
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
    /// Zero-shot class probabilities, one CSV row per image
    Zeroshot {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, num_args = 1.., required = true)]
        images: Vec<PathBuf>,
        /// Comma-separated class names
        #[arg(long, conflicts_with = "classes_file")]
        classes: Option<String>,
        /// One class name per line
        #[arg(long)]
        classes_file: Option<PathBuf>,
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
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The architecture read from a weights file
    Info {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        act: Option<String>,
    },
    /// Image-encoder throughput on random weights (images/s)
    Bench {
        #[arg(long, default_value = "ViT-B-16,ViT-B-32,RN50")]
        archs: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Write the results as JSON here
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TagCLIP: training-free multi-label tags (scores CSV, tags CSV, report, maps)
    Tagclip(labelfree::methods::tagclip::cli::TagclipArgs),
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
            let model = ClipModel::load(w, act, None).with_context(|| format!("loading weights {}", w.display()))?;
            eprintln!("model: {} from {} (activation {:?}: {})", model.arch, w.display(), model.config.act, model.act_source);
            Ok(model)
        }
        None => {
            eprintln!("################################################################################");
            eprintln!("# WARNING: no --weights given: using a RANDOM-weight {} (seed {}).", m.arch, m.seed);
            eprintln!("# Its embeddings and scores MEAN NOTHING. See weights/README.md for real weights.");
            eprintln!("################################################################################");
            let mut model = ClipModel::random(&m.arch, m.seed)?;
            if let Some(a) = act {
                if a != model.config.act {
                    bail!("--act applies to loaded weights; for a random model choose the arch (e.g. {}-quickgelu)", m.arch);
                }
            }
            model.act_source = "random".into();
            Ok(model)
        }
    }
}

fn check_device(d: &str) -> Result<Device> {
    let dev: Device = d.parse()?;
    if let Device::Cuda(n) = dev {
        labelfree::device::cuda::check_available(n)?;
    }
    Ok(dev)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
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

#[allow(clippy::too_many_arguments)]
fn report(command: &str, model: &ClipModel, m: &ModelArgs, dev: Device, transform: String, total: usize, enc: &labelfree::methods::encode::Encoded, outputs: Vec<String>, extra: serde_json::Value) -> RunReport {
    let ok = enc.paths.len();
    RunReport {
        command: command.into(),
        arch: model.arch.clone(),
        weights: m.weights.as_ref().map(|w| w.display().to_string()),
        random_weights: model.random,
        activation: format!("{:?}", model.config.act),
        device: dev.to_string(),
        threads: rayon::current_num_threads(),
        transform,
        images_total: total,
        images_ok: ok,
        skipped: enc.skipped.clone(),
        seconds: enc.seconds,
        images_per_s: if enc.seconds > 0.0 { ok as f64 / enc.seconds } else { 0.0 },
        outputs,
        extra,
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
    let dev = check_device(&cli.device)?;
    match cli.command {
        Command::Embed { model: m, images, size, batch, normalize, out, json } => {
            let model = build_model(&m)?;
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
            let rep = report("embed", &model, &m, dev, transform.describe(), paths.len(), &enc, vec![out.display().to_string(), jp.display().to_string()], serde_json::json!({"dim": emb.dim(1), "normalized": normalize}));
            rep.write_json(&jp)?;
            rep.print();
        }
        Command::Zeroshot { model: m, images, classes, classes_file, template, ensemble, size, batch, out, json } => {
            let class_list = read_classes(&classes, &classes_file)?;
            let model = build_model(&m)?;
            let transform = clip_transform(&model, size)?;
            let tok = ClipTokenizer::new()?;
            let ens = prompts::tagclip_templates();
            let templates: Vec<&str> = if ensemble {
                ens
            } else {
                vec![template.as_deref().unwrap_or(prompts::DEFAULT_TEMPLATE)]
            };
            let text = model.class_embeddings(&tok, &class_list, &templates)?;
            let paths = labelfree::data::images::list_images(&images);
            if paths.is_empty() {
                bail!("no images found in {:?}", images);
            }
            let enc = encode_images(&model, &paths, &transform, batch, true)?;
            let probs = class_probabilities(&enc.embeddings, &text, model.logit_multiplier())?;
            let mut csv = String::new();
            csv.push_str("path");
            for c in &class_list {
                csv.push(',');
                csv.push_str(&csv_field(c));
            }
            csv.push('\n');
            for (p, row) in enc.paths.iter().zip(probs.f32s()?.chunks_exact(class_list.len())) {
                csv.push_str(&csv_field(&p.display().to_string()));
                for v in row {
                    csv.push_str(&format!(",{v:.6e}"));
                }
                csv.push('\n');
            }
            write_atomic(&out, csv.as_bytes())?;
            let jp = json_path(&json, &out);
            let extra = serde_json::json!({
                "classes": class_list,
                "templates": templates.len(),
                "logit_scale": model.logit_multiplier(),
            });
            let rep = report("zeroshot", &model, &m, dev, transform.describe(), paths.len(), &enc, vec![out.display().to_string(), jp.display().to_string()], extra);
            rep.write_json(&jp)?;
            rep.print();
        }
        Command::Info { weights, act } => {
            let model = ClipModel::load(&weights, parse_act(&act)?, None)?;
            let info = serde_json::json!({
                "arch": model.arch,
                "config": model.config,
                "activation_source": model.act_source,
                "image_size": model.image_size(),
                "logit_scale": model.logit_multiplier(),
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Command::Bench { archs, batch, size, runs, json } => {
            println!("{:<10} {:>5} {:>5} {:>7} {:>10} {:>10}", "arch", "batch", "size", "threads", "s/batch", "images/s");
            let mut all = Vec::new();
            for arch in archs.split(',') {
                let r = labelfree::bench::encoder_throughput(arch.trim(), batch, size, runs)?;
                println!("{:<10} {:>5} {:>5} {:>7} {:>10.3} {:>10.2}", r.arch, r.batch, r.size, r.threads, r.median_s, r.images_per_s);
                all.push(r);
            }
            if let Some(j) = json {
                write_atomic(&j, serde_json::to_string_pretty(&all)?.as_bytes())?;
            }
        }
        Command::Tagclip(a) => labelfree::methods::tagclip::cli::run_cli(a, dev)?,
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
