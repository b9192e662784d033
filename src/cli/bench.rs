//! `labelfree bench`: image-encoder throughput on random weights (CPU images/s, CUDA per batch
//! size, or the simulator's counts and H100 bound), or with --text the class text of a TagCLIP
//! run through a text tower. The timed work is `crate::bench`'s, shared with `cargo bench`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::Session;
use crate::bench;
use crate::device::cuda::Gpu;
use crate::gpu_check::format_profile_table;
use crate::methods::write_atomic;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "ViT-B-16,ViT-B-32,RN50")]
    pub archs: String,
    /// Time the text tower of this architecture (e.g. ViT-B-16) on TagCLIP's 103 x 85
    /// prompts instead of the image encoders (CPU; trimmed batches, as every command encodes)
    #[arg(long)]
    pub text: Option<String>,
    /// With --text: also time this many batches at the full 77 tokens (per prompt)
    #[arg(long, default_value_t = 0)]
    pub text_full_batches: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Batch sizes on CUDA (comma-separated; --batch is the CPU's)
    #[arg(long, default_value = "1,8,32,64,128,256,512")]
    pub batches: String,
    /// CUDA ViT: time the forward captured once as a graph and replayed against the eager
    /// forward (on the simulator: the launches per forward, from the capture alone)
    #[arg(long)]
    pub graph: bool,
    /// Write the results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    fn batch_sizes(&self) -> Result<Vec<usize>> {
        self.batches
            .split(',')
            .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batches: `{s}` is not a number")))
            .collect()
    }

    fn write_json(&self, results: &impl serde::Serialize) -> Result<()> {
        if let Some(j) = &self.json {
            write_atomic(j, serde_json::to_string_pretty(results)?.as_bytes())?;
        }
        Ok(())
    }
}

pub fn run(a: BenchArgs, s: &Session) -> Result<()> {
    match (&a.text, &s.gpu) {
        (Some(arch), _) => text(&a, arch),
        (None, Some(gpu)) if a.graph => graph(&a, gpu, s),
        (None, Some(gpu)) if gpu.sim().is_some() => simulated(&a, gpu, s),
        (None, Some(gpu)) => cuda(&a, gpu, s),
        (None, None) => cpu(&a),
    }
}

/// The text tower on the CPU (tokenising and encoding TagCLIP's prompts).
fn text(a: &BenchArgs, arch: &str) -> Result<()> {
    let r = bench::text_throughput(arch, a.text_full_batches)?;
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
    a.write_json(&r)
}

/// On the simulator: one forward per batch size, counted (a bound from counts, not a time).
fn simulated(a: &BenchArgs, gpu: &Arc<Gpu>, s: &Session) -> Result<()> {
    let batches = a.batch_sizes()?;
    let mut all = Vec::new();
    for arch in a.archs.split(',') {
        for r in bench::sim_encoder_profile(gpu, arch.trim(), &batches, a.size, s.dtype)? {
            println!(
                "{} {} batch {} at {}: {} launches, {:.2} GFLOP counted ({:.2} by the model's count), H100 bound {:.3} ms = at most {:.0} images/s (a bound from counts, not a time); simulated in {:.1} s\n",
                r.arch, r.dtype, r.batch, r.size, r.launches, r.gflop_counted, r.gflop_model, r.h100_bound_ms, r.h100_images_per_s_bound, r.seconds_simulated
            );
            println!("{}", format_profile_table(&r.kernels));
            all.push(r);
        }
    }
    a.write_json(&all)
}

/// On a GPU: timed forwards per batch size (at least 5 runs each).
fn cuda(a: &BenchArgs, gpu: &Arc<Gpu>, s: &Session) -> Result<()> {
    let batches = a.batch_sizes()?;
    println!(
        "{:<10} {:>6} {:>5} {:>6} {:>8} {:>10} {:>10} {:>8}",
        "arch", "dtype", "batch", "size", "gemm", "ms/batch", "images/s", "TFLOP/s"
    );
    let mut all = Vec::new();
    for arch in a.archs.split(',') {
        for r in bench::cuda_encoder_throughput(gpu, arch.trim(), &batches, a.size, s.dtype, a.runs.max(5))? {
            println!(
                "{:<10} {:>6} {:>5} {:>6} {:>8} {:>10.3} {:>10.1} {:>8.1}",
                r.arch, r.dtype, r.batch, r.size, r.gemm, r.median_ms, r.images_per_s, r.tflops
            );
            all.push(r);
        }
    }
    a.write_json(&all)
}

/// `--graph`: per ViT and batch size, the launches of one forward and, on a GPU, eager
/// against replayed ms per batch.
fn graph(a: &BenchArgs, gpu: &Arc<Gpu>, s: &Session) -> Result<()> {
    let batches = a.batch_sizes()?;
    println!(
        "{:<10} {:>6} {:>5} {:>6} {:>9} {:>10} {:>10} {:>8}",
        "arch", "dtype", "batch", "size", "launches", "eager ms", "graph ms", "speedup"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut all = Vec::new();
    for arch in a.archs.split(',') {
        for r in bench::cuda_vit_graph_throughput(gpu, arch.trim(), &batches, a.size, s.dtype, a.runs.max(5))? {
            let speedup = match (r.eager_ms, r.replay_ms) {
                (Some(e), Some(g)) if g > 0.0 => format!("{:.2}x", e / g),
                _ => "-".to_string(),
            };
            println!(
                "{:<10} {:>6} {:>5} {:>6} {:>9} {:>10} {:>10} {:>8}",
                r.arch,
                r.dtype,
                r.batch,
                r.size,
                r.launches,
                ms(r.eager_ms),
                ms(r.replay_ms),
                speedup
            );
            all.push(r);
        }
    }
    if gpu.is_sim() {
        println!("(the simulator times nothing: launches come from the capture, which runs no kernel)");
    }
    a.write_json(&all)
}

/// On the CPU: median seconds per batch of --batch images.
fn cpu(a: &BenchArgs) -> Result<()> {
    println!("{:<10} {:>5} {:>5} {:>7} {:>10} {:>10}", "arch", "batch", "size", "threads", "s/batch", "images/s");
    let mut all = Vec::new();
    for arch in a.archs.split(',') {
        let r = bench::encoder_throughput(arch.trim(), a.batch, a.size, a.runs)?;
        println!(
            "{:<10} {:>5} {:>5} {:>7} {:>10.3} {:>10.2}",
            r.arch, r.batch, r.size, r.threads, r.median_s, r.images_per_s
        );
        all.push(r);
    }
    a.write_json(&all)
}
