//! Softmax over the last dimension (max-subtracted, as torch).

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// In place, one row of `cols` at a time.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

pub fn softmax_cpu(x: &mut [f32], cols: usize) {
    x.par_chunks_mut(cols).for_each(softmax_row);
}

/// Threads of a one-block-per-row kernel: 256 cover rows of 768 / 1024 in a few strided steps;
/// fewer (whole warps) for short rows.
pub(crate) fn threads_per_row(cols: usize) -> u32 {
    if cols >= 256 {
        256
    } else {
        32 * cols.div_ceil(32).max(1) as u32
    }
}

/// CUDA launcher: kernels/softmax.cu, one block per row. softmax(scale * x) over the last
/// dimension; `x`, `y` of one shape and float dtype.
pub fn softmax_cuda(gpu: &Gpu, x: &CudaTensor, scale: f32, y: &mut CudaTensor) -> Result<()> {
    let cols = *x.shape().last().unwrap_or(&0);
    if cols == 0 || y.shape() != x.shape() {
        return Err(Error::Shape(format!("softmax_cuda: x {:?}, y {:?}", x.shape(), y.shape())));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("softmax_cuda: x must be a float tensor, found {:?}", x.dtype())));
    }
    y.expect_dtype(x.dtype(), "softmax_cuda output")?;
    let rows = u32::try_from(x.numel() / cols)
        .map_err(|_| Error::Shape(format!("softmax_cuda: too many rows in {:?}", x.shape())))?;
    let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (threads_per_row(cols), 1, 1), shared_mem_bytes: 0 };
    let name = format!("softmax_forward_{}", x.dtype().suffix());
    gpu.launch("softmax", &name, cfg, &[x.arg(gpu), y.arg(gpu), to_i32(cols, "cols")?, scale.into()])
}

/// Kernel checks (see device::cuda::check): CLIP logits (scale 100) over COCO's 80 classes,
/// TagCLIP's patch rows, attention-length rows, a long row and an odd one; every dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(rows, cols, scale) in
        &[(8usize, 80usize, 100.0f32), (2 * 1200, 80, 100.0), (8 * 197, 197, 0.125), (4, 4096, 1.0), (33, 37, 2.0)]
    {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = (rows * cols * 2 * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "softmax_forward",
                format!("rows={rows} cols={cols} scale={scale}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let x = random_vec(rng, rows * cols, 1.0);
                    let xd = CudaTensor::from_f32(gpu, &[rows, cols], &x, dtype)?;
                    // The reference sees the inputs as rounded to the dtype: the check measures the kernel.
                    let mut want: Vec<f32> = xd.to_f32_vec(gpu)?.iter().map(|v| v * scale).collect();
                    softmax_cpu(&mut want, cols);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[rows, cols], dtype)?,
                        move |g, yd| softmax_cuda(g, &xd, scale, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    checks
}
