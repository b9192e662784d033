//! LayerNorm over the last dimension (torch.nn.LayerNorm, biased variance).

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// y = (x - mean) / sqrt(var + eps) * w + b, one row of `w.len()` at a time.
/// Mean and variance are accumulated in f64 so long rows stay within the f32 tolerance.
pub fn layer_norm_cpu(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let c = w.len();
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        let (mean, rstd) = (mean as f32, rstd as f32);
        for i in 0..c {
            yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
        }
    });
}

/// CUDA launcher: kernels/layernorm.cu, one block per row. `x`, `y`: (rows, C) in the same
/// float dtype; `w`, `b`: (C,) f32.
pub fn layer_norm_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    b: &CudaTensor,
    eps: f32,
    y: &mut CudaTensor,
) -> Result<()> {
    let c = *x.shape().last().unwrap_or(&0);
    if w.shape() != [c] || b.shape() != [c] || y.shape() != x.shape() || c == 0 {
        return Err(Error::Shape(format!(
            "layer_norm_cuda: x {:?}, weight {:?}, bias {:?}, y {:?}",
            x.shape(),
            w.shape(),
            b.shape(),
            y.shape()
        )));
    }
    w.expect_dtype(DType::F32, "layer_norm_cuda weight")?;
    b.expect_dtype(DType::F32, "layer_norm_cuda bias")?;
    y.expect_dtype(x.dtype(), "layer_norm_cuda output")?;
    let rows = (x.numel() / c) as u32;
    // 256 threads cover C = 768 / 1024 in 3-4 strided steps; fewer for short rows.
    let threads = if c >= 256 { 256 } else { 32 * c.div_ceil(32) as u32 };
    let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let name = format!("layernorm_forward_{}", x.dtype().suffix());
    gpu.launch("layernorm", &name, cfg, &[x.arg(gpu), w.arg(gpu), b.arg(gpu), y.arg(gpu), to_i32(c, "C")?, eps.into()])
}

/// Kernel checks (see device::cuda::check): encoder widths, a short odd row, every dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(rows, c) in &[(8 * 197usize, 768usize), (8 * 50, 768), (77 * 4, 512), (1200, 1024), (33, 37)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = (rows * c * 2 * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "layernorm_forward",
                format!("rows={rows} C={c}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    // Offset rows: LayerNorm must not lose precision to a large mean.
                    let x: Vec<f32> = dtype.round(random_vec(rng, rows * c, 2.0).iter().map(|v| v + 3.0).collect());
                    let w: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                    let b = random_vec(rng, c, 0.5);
                    let mut want = vec![0.0; rows * c];
                    layer_norm_cpu(&x, &w, &b, 1e-5, &mut want);
                    let xd = CudaTensor::from_f32(gpu, &[rows, c], &x, dtype)?;
                    let wd = CudaTensor::from_f32(gpu, &[c], &w, DType::F32)?;
                    let bd = CudaTensor::from_f32(gpu, &[c], &b, DType::F32)?;
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[rows, c], dtype)?,
                        move |g, yd| layer_norm_cuda(g, &xd, &wd, &bd, 1e-5, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn layer_norm_matches_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(rows, c) in &[(3usize, 7usize), (5, 768), (1, 1)] {
            let x: Vec<f32> = (0..rows * c).map(|_| rng.gen_range(-3.0..3.0) + 10.0).collect();
            let w: Vec<f32> = (0..c).map(|_| rng.gen_range(0.5..1.5)).collect();
            let b: Vec<f32> = (0..c).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![f32::NAN; rows * c];
            layer_norm_cpu(&x, &w, &b, 1e-5, &mut y);
            for r in 0..rows {
                let xr = &x[r * c..(r + 1) * c];
                let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                for i in 0..c {
                    let want = (xr[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
                    assert!((y[r * c + i] as f64 - want).abs() < 1e-5, "{} vs {want}", y[r * c + i]);
                }
            }
        }
    }
}
