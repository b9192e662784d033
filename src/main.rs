//! The labelfree CLI: parses the flags, opens the device once, and hands each command to its
//! module's `run` (src/cli/ for embed, zeroshot, eval, info, bench; methods/*/cli.rs for
//! tagclip, cdul, ccd; train/run.rs for train; gpu_check.rs for gpu-check). Thin by design.

use anyhow::{bail, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use labelfree::cli::{self, Session};
use labelfree::device::cuda::{DType, GemmBackend};
use labelfree::device::sim::{SimArch, SimOptions};
use labelfree::device::{self, Device};

#[derive(Parser)]
#[command(name = "labelfree", version, about = "Annotation-free multi-label image classification with CLIP")]
struct Cli {
    /// cpu, cuda, cuda:N, or sim: the PTX simulator runs the CUDA kernels on the CPU (slow,
    /// sanitized; for checking and profiling kernels without a GPU)
    #[arg(long, global = true, default_value = "cpu", value_parser = clap::value_parser!(Device))]
    device: Device,
    /// With --device sim: skip the sanitizer (races, out-of-bounds, uninitialised shared
    /// memory, misaligned accesses, barrier deadlocks), about 2-5x faster
    #[arg(long, global = true)]
    no_sanitize: bool,
    /// With --device sim: count every launch (instructions, FLOPs, sectors, bank conflicts) and
    /// print the per-kernel counts; gpu-check also writes them, with occupancy from ptxas and a
    /// lower bound of the time on an H100, to its --json
    #[arg(long, global = true)]
    profile: bool,
    /// With --device sim: the architecture simulated, sm80 (default) or sm90a (also loads the
    /// kernels/*.sm90a.cu modules and reports compute capability 9.0, so Hopper paths run)
    #[arg(long, global = true, default_value = "sm80")]
    sim_arch: SimArch,
    /// CPU threads (0 = all cores)
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Element type of activations and weights on CUDA: f32, bf16 or f16 (the CPU path is f32)
    // The doc lines name the values, so help hides clap's list; a bad value's error shows it.
    #[arg(long, global = true, default_value = "f32", hide_possible_values = true,
          value_parser = PossibleValuesParser::new(["f32", "bf16", "f16"]).try_map(|s| s.parse::<DType>()))]
    dtype: DType,
    /// GEMM of the CUDA linear layers: native (labelfree's kernels) or cublas (reference)
    #[arg(long, global = true, default_value = "native", hide_possible_values = true,
          value_parser = PossibleValuesParser::new(["native", "cublas"]).try_map(|s| s.parse::<GemmBackend>()))]
    gemm: GemmBackend,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Image embeddings to a safetensors file (tensor `embeddings`, metadata `paths`)
    Embed(cli::embed::EmbedArgs),
    /// Zero-shot class probabilities (softmax over the classes), one CSV row per image: of the
    /// given --images, or of a whole --dataset split, then evaluated (mAP, F1)
    Zeroshot(cli::zeroshot::ZeroshotArgs),
    /// Evaluates a scores CSV (`path,<class>,...`, as zeroshot writes) against a dataset's labels
    Eval(cli::eval::EvalArgs),
    /// The architecture read from a weights file
    Info(cli::info::InfoArgs),
    /// Distil soft labels into a ResNet-50 with a CAM head (CCD/CDUL's classifier), on the CPU
    /// (or the GPU with --device cuda)
    Train(labelfree::train::run::TrainArgs),
    /// Image-encoder throughput on random weights (images/s); with --text, the class text of a
    /// TagCLIP run (103 names x 85 templates) through a text tower
    Bench(cli::bench::BenchArgs),
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

impl Command {
    /// Whether the command can run on `--device cuda` / `sim`. Every command answers here (no
    /// wildcard), so a new one has to say.
    fn has_cuda_path(&self) -> bool {
        match self {
            Command::Embed(_)
            | Command::Zeroshot(_)
            | Command::Train(_)
            | Command::Bench(_)
            | Command::GpuCheck(_)
            | Command::Tagclip(_)
            | Command::Cdul(_)
            | Command::Ccd(_) => true,
            Command::Eval(_) | Command::Info(_) => false,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    device::set_cpu_threads(cli.threads);
    let dev = cli.device;
    if dev.runs_kernels() && !cli.command.has_cuda_path() {
        bail!(
            "--device {dev}: eval and info launch no kernels (every other command has a CUDA path); use --device cpu"
        );
    }
    if (cli.no_sanitize || cli.profile || cli.sim_arch != SimArch::Sm80) && dev != Device::Sim {
        bail!("--no-sanitize, --profile and --sim-arch are options of the PTX simulator: add --device sim");
    }
    // gpu-check runs kernels whatever --device says (GPU 0 by default), so its --dtype counts.
    if cli.dtype != DType::F32 && dev == Device::Cpu && !matches!(cli.command, Command::GpuCheck(_)) {
        bail!("--dtype {} is for --device cuda or sim: the CPU path computes in f32", cli.dtype);
    }
    let sim_options = SimOptions { sanitize: !cli.no_sanitize, profile: cli.profile, arch: cli.sim_arch };
    let session = Session::open(dev, sim_options, cli.dtype, cli.gemm)?;
    let gpu = session.gpu.as_ref();
    match cli.command {
        Command::Embed(a) => cli::embed::run(a, &session)?,
        Command::Zeroshot(a) => cli::zeroshot::run(a, &session)?,
        Command::Eval(a) => cli::eval::run(a)?,
        Command::Info(a) => cli::info::run(a)?,
        Command::Train(a) => cli::train(&a, &session)?,
        Command::Bench(a) => cli::bench::run(a, &session)?,
        Command::Tagclip(a) => labelfree::methods::tagclip::cli::run_cli(a, dev, gpu, cli.dtype, cli.gemm)?,
        Command::Cdul(a) => labelfree::methods::cdul::cli::run_cli(a, dev, gpu, cli.dtype)?,
        Command::Ccd(a) => labelfree::methods::ccd::cli::run_cli(a, dev, gpu, cli.dtype)?,
        // gpu-check always runs kernels (on GPU 0 unless --device says cuda:N or sim) and
        // reports the simulator's findings itself.
        Command::GpuCheck(a) => return Ok(labelfree::gpu_check::run_cli(&a, &session.gpu_or_first()?)?),
    }
    if let Some(sim) = gpu.and_then(|g| g.sim()) {
        labelfree::gpu_check::report_sim_run(sim)?;
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
