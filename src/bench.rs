//! End-to-end encoder throughput on random weights and random inputs: shared by
//! `labelfree bench` and `cargo bench`.

use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use crate::error::Result;
use crate::models::clip::ClipModel;
use crate::tensor::Tensor;

#[derive(Debug, Serialize)]
pub struct EncoderBench {
    pub arch: String,
    pub batch: usize,
    pub size: usize,
    pub threads: usize,
    pub runs: usize,
    /// Median seconds per batch.
    pub median_s: f64,
    pub images_per_s: f64,
}

/// Times `encode_image` on a random-weight `arch` at `size` x `size`: one warm-up pass, then
/// `runs` timed passes; reports the median.
pub fn encoder_throughput(arch: &str, batch: usize, size: Option<usize>, runs: usize) -> Result<EncoderBench> {
    let model = ClipModel::random(arch, 0)?;
    let size = size.unwrap_or_else(|| model.image_size());
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let pixels = Tensor::randn(&[batch, 3, size, size], 1.0, &mut rng);
    model.encode_image(&pixels)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        model.encode_image(&pixels)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median_s = times[times.len() / 2];
    Ok(EncoderBench {
        arch: arch.to_string(),
        batch,
        size,
        threads: rayon::current_num_threads(),
        runs: times.len(),
        median_s,
        images_per_s: batch as f64 / median_s,
    })
}

/// The class text of a TagCLIP run on the CPU: TagCLIP's 80 COCO classes and 23 background
/// words x its 85 templates through a random-weight text tower.
#[derive(Debug, Serialize)]
pub struct TextBench {
    pub arch: String,
    pub prompts: usize,
    pub batch: usize,
    pub threads: usize,
    /// Seconds to tokenise every prompt (77 ids each).
    pub tokenize_s: f64,
    /// Seconds of the trimmed passes over every prompt (one run, after one warm-up batch).
    pub trimmed_s: f64,
    /// Token positions the trimmed passes encode, and what full 77-token rows would encode.
    pub trimmed_positions: usize,
    pub full_positions: usize,
    /// With `full_batches` > 0: seconds of that many batches at the full 77 tokens, and per prompt.
    pub full_batches: usize,
    pub full_s: f64,
    pub full_s_per_prompt: f64,
    /// The prompts, in the order they are tokenised (class-major), for the PyTorch side.
    pub prompt_list: Vec<String>,
}

/// Times [`crate::models::clip::ClipModel::class_embeddings`]'s text passes for TagCLIP's
/// 103 x 85 prompts on `arch`'s text tower (random weights); with `full_batches`, also that
/// many batches at the full context, for the per-prompt cost of untrimmed rows.
pub fn text_throughput(arch: &str, full_batches: usize) -> Result<TextBench> {
    use crate::models::clip::config::ClipConfig;
    use crate::models::clip::text::{trimmed_batches, TextEncoder, TEXT_BATCH};
    use crate::models::clip::{prompts, tokenizer::ClipTokenizer};
    let cfg = ClipConfig::named(arch)?;
    let text_cfg = cfg.text.clone().ok_or_else(|| crate::error::Error::Weights(format!("{arch} has no text tower")))?;
    let text = TextEncoder::random(&text_cfg, cfg.act, &mut rand::rngs::StdRng::seed_from_u64(0));
    let names = crate::methods::tagclip::COCO_CLASSES.iter().chain(prompts::BACKGROUND_COCO.iter());
    let templates = prompts::tagclip_templates();
    let prompt_list: Vec<String> = names.flat_map(|c| templates.iter().map(move |t| prompts::fill(t, c))).collect();
    let t0 = Instant::now();
    let tok = ClipTokenizer::new()?;
    let tokens = tok.encode_batch(&prompt_list, text_cfg.context);
    let tokenize_s = t0.elapsed().as_secs_f64();
    let batches = trimmed_batches(&tokens, text_cfg.context, TEXT_BATCH)?;
    let trimmed_positions = batches.iter().map(|b| b.tokens.shape().iter().product::<usize>()).sum();
    // Warm-up: one batch (first-touch of the packed weights and the thread pool).
    text.forward(&batches[0].tokens)?;
    let t0 = Instant::now();
    text.forward_trimmed(&tokens)?;
    let trimmed_s = t0.elapsed().as_secs_f64();
    let n = prompt_list.len();
    let full_batches = full_batches.min(n.div_ceil(TEXT_BATCH));
    let t0 = Instant::now();
    let mut full_prompts = 0;
    for i in 0..full_batches {
        let rows = TEXT_BATCH.min(n - i * TEXT_BATCH);
        text.forward(&tokens.narrow0(i * TEXT_BATCH, rows)?)?;
        full_prompts += rows;
    }
    let full_s = t0.elapsed().as_secs_f64();
    Ok(TextBench {
        arch: arch.to_string(),
        prompts: n,
        batch: TEXT_BATCH,
        threads: rayon::current_num_threads(),
        tokenize_s,
        trimmed_s,
        trimmed_positions,
        full_positions: n * text_cfg.context,
        full_batches,
        full_s,
        full_s_per_prompt: if full_prompts > 0 { full_s / full_prompts as f64 } else { 0.0 },
        prompt_list,
    })
}

#[derive(Debug, Serialize)]
pub struct CudaEncoderBench {
    pub arch: String,
    pub device: String,
    pub dtype: String,
    pub gemm: String,
    pub batch: usize,
    pub size: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub images_per_s: f64,
    /// Achieved TFLOP/s from the model's FLOP count.
    pub tflops: f64,
}

/// One forward of a CUDA image encoder, its FLOPs per image at a side, and its native side.
type CudaEncoder = (
    Box<dyn Fn(&crate::device::cuda::CudaTensor) -> Result<crate::device::cuda::CudaTensor>>,
    Box<dyn Fn(usize) -> f64>,
    usize,
);

/// The CUDA image encoder of a random-weight `arch`.
fn cuda_encoder(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    dtype: crate::device::cuda::DType,
) -> Result<CudaEncoder> {
    use crate::models::clip::config::{ClipConfig, VisionConfig};
    use crate::models::clip::resnet::{random_resnet_params, ModifiedResNet};
    use crate::models::clip::resnet_cuda::CudaModifiedResNet;
    use crate::models::clip::vit::{random_vit_params, VisionTransformer};
    use crate::models::clip::vit_cuda::CudaVit;
    let config = ClipConfig::named(arch)?;
    // The CPU tower is the loader; it is dropped once its weights are on the device.
    Ok(match &config.vision {
        VisionConfig::Vit(cfg) => {
            let cpu = VisionTransformer::load(&mut random_vit_params(cfg, 0)?, cfg, config.act)?;
            let enc = std::sync::Arc::new(CudaVit::from_cpu(gpu, &cpu, dtype)?);
            drop(cpu);
            let e2 = enc.clone();
            (Box::new(move |x| enc.forward(x)), Box::new(move |s| e2.flops_per_image(s, s)), cfg.grid * cfg.patch)
        }
        VisionConfig::ResNet(cfg) => {
            let cpu = ModifiedResNet::load(&mut random_resnet_params(cfg, 0)?, cfg)?;
            let enc = std::sync::Arc::new(CudaModifiedResNet::from_cpu(gpu, &cpu, dtype)?);
            drop(cpu);
            let e2 = enc.clone();
            (Box::new(move |x| enc.forward(x)), Box::new(move |s| e2.flops_per_image(s, s)), cfg.grid * 32)
        }
    })
}

/// Times the CUDA image encoder of a random-weight `arch` (CUDA events, warm-up, median of
/// `runs`, warm L2: the end-to-end condition) at each batch size.
pub fn cuda_encoder_throughput(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    batches: &[usize],
    size: Option<usize>,
    dtype: crate::device::cuda::DType,
    runs: usize,
) -> Result<Vec<CudaEncoderBench>> {
    use crate::device::cuda::timer::Timer;
    use crate::device::cuda::CudaTensor;
    let (forward, flops, native) = cuda_encoder(gpu, arch, dtype)?;
    let size = size.unwrap_or(native);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    let mut timer = Timer::new(gpu, false)?;
    for &batch in batches {
        let pixels = Tensor::randn(&[batch, 3, size, size], 1.0, &mut rng);
        let x = CudaTensor::from_tensor(gpu, &pixels, dtype)?;
        let t = timer.time(gpu, 2, runs, || forward(&x).map(|_| ()))?;
        let images_per_s = batch as f64 / (t.median_ms / 1e3);
        out.push(CudaEncoderBench {
            arch: arch.to_string(),
            device: gpu.name.clone(),
            dtype: dtype.suffix().to_string(),
            gemm: format!("{:?}", gpu.gemm).to_lowercase(),
            batch,
            size,
            runs: t.runs,
            median_ms: t.median_ms,
            images_per_s,
            tflops: images_per_s * flops(size) / 1e12,
        });
    }
    Ok(out)
}

/// One simulated forward of a CUDA image encoder: the simulator's counts per kernel and the
/// lower bound of its time on an H100 that they give (never a measured time).
#[derive(Debug, Serialize)]
pub struct SimEncoderProfile {
    pub arch: String,
    pub dtype: String,
    pub batch: usize,
    pub size: usize,
    pub launches: usize,
    pub gflop_counted: f64,
    pub gflop_model: f64,
    /// Sum over launches of each launch's lower bound on an H100 SXM.
    pub h100_bound_ms: f64,
    /// batch / h100_bound_ms: an upper bound of images/s on an H100 from counts.
    pub h100_images_per_s_bound: f64,
    pub seconds_simulated: f64,
    pub kernels: Vec<crate::gpu_check::KernelProfile>,
}

/// Runs one forward of the CUDA encoder of a random-weight `arch` on the simulator (profiling
/// on) per batch size and sums what it counted.
pub fn sim_encoder_profile(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    batches: &[usize],
    size: Option<usize>,
    dtype: crate::device::cuda::DType,
) -> Result<Vec<SimEncoderProfile>> {
    use crate::device::cuda::resources::{time_bound, H100_SXM};
    use crate::device::cuda::CudaTensor;
    use crate::error::Error;
    let sim = gpu.sim().ok_or_else(|| Error::Device("sim_encoder_profile runs on the simulator".into()))?;
    if !sim.options().profile {
        return Err(Error::Device("bench --device sim counts instructions: add --profile".into()));
    }
    let (forward, flops, native) = cuda_encoder(gpu, arch, dtype)?;
    let size = size.unwrap_or(native);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    for &batch in batches {
        let pixels = Tensor::randn(&[batch, 3, size, size], 1.0, &mut rng);
        let x = CudaTensor::from_tensor(gpu, &pixels, dtype)?;
        sim.take_profiles();
        let t0 = Instant::now();
        forward(&x)?;
        let seconds_simulated = t0.elapsed().as_secs_f64();
        let launches = sim.take_profiles();
        let bound_s: f64 = launches.iter().map(|p| time_bound(p, &H100_SXM).bound_us / 1e6).sum();
        let counted: u64 = launches.iter().map(|p| p.flops).sum();
        out.push(SimEncoderProfile {
            arch: arch.to_string(),
            dtype: dtype.suffix().to_string(),
            batch,
            size,
            launches: launches.len(),
            gflop_counted: counted as f64 / 1e9,
            gflop_model: flops(size) * batch as f64 / 1e9,
            h100_bound_ms: bound_s * 1e3,
            h100_images_per_s_bound: batch as f64 / bound_s.max(1e-12),
            seconds_simulated,
            kernels: crate::gpu_check::per_kernel(&launches),
        });
    }
    Ok(out)
}

/// Seconds the simulator takes for one encoder forward of `batch` images at `size` (after a
/// first forward that parses the modules), and, when it profiles, the thread instructions that
/// forward executed. benches/sim.rs turns the two into the simulator's speed.
pub fn sim_encoder_forward(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    batch: usize,
    size: usize,
    dtype: crate::device::cuda::DType,
) -> Result<(f64, u64)> {
    use crate::device::cuda::CudaTensor;
    use crate::error::Error;
    let sim = gpu.sim().ok_or_else(|| Error::Device("sim_encoder_forward runs on the simulator".into()))?;
    let (forward, _, _) = cuda_encoder(gpu, arch, dtype)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let pixels = Tensor::randn(&[batch, 3, size, size], 1.0, &mut rng);
    let x = CudaTensor::from_tensor(gpu, &pixels, dtype)?;
    forward(&x)?;
    sim.take_profiles();
    let t0 = Instant::now();
    forward(&x)?;
    let seconds = t0.elapsed().as_secs_f64();
    let thread_instructions = sim.take_profiles().iter().map(|p| p.thread_instructions).sum();
    Ok((seconds, thread_instructions))
}

/// The CUDA ViT forward at one batch size, eager and as a replayed graph (`--graph`).
#[derive(Debug, Serialize)]
pub struct GraphBench {
    pub arch: String,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub size: usize,
    /// Kernel launches in one forward (the graph's launches, the same as the eager forward's).
    pub launches: usize,
    /// Median ms per batch, eager and replayed; None where nothing was timed (the simulator).
    pub eager_ms: Option<f64>,
    pub replay_ms: Option<f64>,
    pub runs: usize,
}

/// Captures the CUDA ViT forward of a random-weight `arch` once per batch size and, on a GPU,
/// times eager forwards against replays of the graph (CUDA events, warm L2, median of `runs`).
/// On the simulator nothing is timed (its figures are counts): the launch count per forward
/// comes from the capture alone, which runs nothing.
pub fn cuda_vit_graph_throughput(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    batches: &[usize],
    size: Option<usize>,
    dtype: crate::device::cuda::DType,
    runs: usize,
) -> Result<Vec<GraphBench>> {
    use crate::device::cuda::timer::Timer;
    use crate::device::cuda::CudaTensor;
    use crate::error::Error;
    use crate::models::clip::config::{ClipConfig, VisionConfig};
    use crate::models::clip::vit::{random_vit_params, VisionTransformer};
    use crate::models::clip::vit_cuda::CudaVit;
    let config = ClipConfig::named(arch)?;
    let VisionConfig::Vit(cfg) = &config.vision else {
        return Err(Error::Device(format!("bench --graph: {arch} is not a ViT (graphs cover the ViT forward)")));
    };
    let cpu = VisionTransformer::load(&mut random_vit_params(cfg, 0)?, cfg, config.act)?;
    let vit = std::sync::Arc::new(CudaVit::from_cpu(gpu, &cpu, dtype)?);
    drop(cpu);
    let size = size.unwrap_or(cfg.grid * cfg.patch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    for &batch in batches {
        let pixels = Tensor::randn(&[batch, 3, size, size], 1.0, &mut rng);
        let mut graph = vit.capture_forward(batch, size, size)?;
        let (mut eager_ms, mut replay_ms, mut timed) = (None, None, 0);
        if !gpu.is_sim() {
            let x = CudaTensor::from_tensor(gpu, &pixels, dtype)?;
            graph.set_pixels(pixels.f32s()?)?;
            let mut timer = Timer::new(gpu, false)?;
            let eager = timer.time(gpu, 2, runs, || vit.forward(&x).map(|_| ()))?;
            let replay = timer.time(gpu, 2, runs, || graph.replay().map(|_| ()))?;
            (eager_ms, replay_ms, timed) = (Some(eager.median_ms), Some(replay.median_ms), eager.runs);
        }
        out.push(GraphBench {
            arch: arch.to_string(),
            device: gpu.name.clone(),
            dtype: dtype.suffix().to_string(),
            batch,
            size,
            launches: graph.launches().len(),
            eager_ms,
            replay_ms,
            runs: timed,
        });
    }
    Ok(out)
}
