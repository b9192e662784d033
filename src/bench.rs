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

/// Times the CUDA image encoder of a random-weight `arch` (CUDA events, warm-up, median of
/// `runs`, warm L2: the end-to-end condition) at each batch size.
pub fn cuda_encoder_throughput(
    gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
    arch: &str,
    batches: &[usize],
    size: Option<usize>,
    dtype: crate::device::cuda::CudaDType,
    runs: usize,
) -> Result<Vec<CudaEncoderBench>> {
    use crate::device::cuda::timer::Timer;
    use crate::device::cuda::CudaTensor;
    use crate::models::clip::config::{ClipConfig, VisionConfig};
    use crate::models::clip::vit_cuda::{random_vit_params, CudaVit};
    let config = ClipConfig::named(arch)?;
    use crate::models::clip::resnet_cuda::{random_resnet_params, CudaModifiedResNet};
    // One forward closure and FLOP count per encoder kind.
    type Forward = Box<dyn Fn(&CudaTensor) -> Result<CudaTensor>>;
    let (forward, flops, native): (Forward, Box<dyn Fn(usize) -> f64>, usize) = match &config.vision {
        VisionConfig::Vit(cfg) => {
            let enc = std::sync::Arc::new(CudaVit::load(gpu, &mut random_vit_params(cfg, 0)?, cfg, config.act, dtype)?);
            let e2 = enc.clone();
            (Box::new(move |x| enc.forward(x)), Box::new(move |s| e2.flops_per_image(s, s)), cfg.grid * cfg.patch)
        }
        VisionConfig::ResNet(cfg) => {
            let enc = std::sync::Arc::new(CudaModifiedResNet::load(gpu, &mut random_resnet_params(cfg, 0)?, cfg, dtype)?);
            let e2 = enc.clone();
            (Box::new(move |x| enc.forward(x)), Box::new(move |s| e2.flops_per_image(s, s)), cfg.grid * 32)
        }
    };
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
