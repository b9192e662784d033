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
