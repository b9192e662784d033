//! Global average pooling (NCHW -> NC) and its backward (the gradient spread evenly).

use rayon::prelude::*;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, to_i32, warp_per_item_config, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// y (planes) = mean over each plane of x (planes, hw), summed in f64.
pub fn global_avg_pool_cpu(x: &[f32], hw: usize, y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_chunks(hw)).for_each(|(o, p)| {
        *o = (p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
    });
}

/// dx (planes, hw) = dy (planes) / hw broadcast; with `accumulate`, added to dx.
pub fn global_avg_pool_backward_cpu(dy: &[f32], hw: usize, dx: &mut [f32], accumulate: bool) {
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(|(p, &g)| {
        if accumulate {
            p.iter_mut().for_each(|v| *v += g * inv);
        } else {
            p.fill(g * inv);
        }
    });
}

/// planes = y's element count and HW, after checking that x (y's shape, then spatial dims)
/// holds planes * HW f32.
fn gap_dims(what: &str, x: &CudaTensor, y: &CudaTensor) -> Result<(usize, usize)> {
    let planes = y.numel();
    let r = y.shape().len();
    if planes == 0 || x.shape().len() <= r || x.shape()[..r] != *y.shape() {
        return Err(Error::Shape(format!("{what}: x {:?}, pooled {:?}", x.shape(), y.shape())));
    }
    x.expect_dtype(DType::F32, what)?;
    y.expect_dtype(DType::F32, what)?;
    Ok((planes, x.numel() / planes))
}

/// CUDA twin of `global_avg_pool_cpu` (kernels/gap.cu, f32): x (B, C, ...) -> y (B, C); one
/// warp per plane.
pub fn global_avg_pool_cuda(gpu: &Gpu, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    let (planes, hw) = gap_dims("global_avg_pool_cuda", x, y)?;
    let args = [x.arg(gpu), y.arg(gpu), to_i32(hw, "HW")?, to_i32(planes, "planes")?];
    gpu.launch("gap", "gap_forward_f32", warp_per_item_config(planes), &args)
}

/// CUDA twin of `global_avg_pool_backward_cpu` (f32): dx (B, C, ...) = dy (B, C) / HW
/// broadcast, or added to dx with `accumulate`.
pub fn global_avg_pool_backward_cuda(gpu: &Gpu, dy: &CudaTensor, dx: &mut CudaTensor, accumulate: bool) -> Result<()> {
    let (_, hw) = gap_dims("global_avg_pool_backward_cuda", dx, dy)?;
    let total = dx.numel();
    let args = [
        dy.arg(gpu),
        dx.arg(gpu),
        to_i32(hw, "HW")?,
        (1.0 / hw as f32).into(),
        (accumulate as i32).into(),
        (total as i64).into(),
    ];
    gpu.launch("gap", "gap_backward_f32", grid_stride_config(total), &args)
}

/// Kernel checks: the ResNet-50's layer4 map at 448 (batch 2) and at 224 (batch 8), odd maps;
/// backward with and without `accumulate`.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(b, c, h, w) in &[(2usize, 2048usize, 14usize, 14usize), (8, 2048, 7, 7), (3, 5, 5, 7), (2, 3, 56, 56)] {
        let (hw, planes) = (h * w, b * c);
        let (n, xs) = (planes * hw, [b, c, h, w]);
        let shape = format!("B={b} C={c} H={h} W={w}");
        let f32 = DType::F32;
        checks.push(GpuCheck::new(
            "gap_forward",
            shape.clone(),
            f32,
            Work::Bytes(((n + planes) * 4) as f64),
            move |gpu, rng| {
                let x = random_vec(rng, n, 1.0);
                let mut y = vec![0.0; planes];
                global_avg_pool_cpu(&x, hw, &mut y);
                let xd = CudaTensor::from_f32(gpu, &xs, &x, f32)?;
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &[b, c], f32)?,
                    move |g, yd| global_avg_pool_cuda(g, &xd, yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &y)]),
                )
            },
        ));
        for accumulate in [false, true] {
            let bytes = ((n * if accumulate { 2 } else { 1 } + planes) * 4) as f64;
            let shape = format!("{shape} accumulate={accumulate}");
            checks.push(GpuCheck::new("gap_backward", shape, f32, Work::Bytes(bytes), move |gpu, rng| {
                let dy = random_vec(rng, planes, 1.0);
                // accumulate: dx starts from random values; otherwise it is poisoned.
                let mut dx = random_vec(rng, n, 1.0);
                let mut dxd = CudaTensor::from_f32(gpu, &xs, &dx, f32)?;
                if !accumulate {
                    dxd.poison(gpu)?;
                }
                global_avg_pool_backward_cpu(&dy, hw, &mut dx, accumulate);
                let dyd = CudaTensor::from_f32(gpu, &[b, c], &dy, f32)?;
                launch_and_compare(
                    gpu,
                    dxd,
                    move |g, dxd| global_avg_pool_backward_cuda(g, &dyd, dxd, accumulate),
                    |g, dxd| max_rel_err_all(g, &[(dxd, &dx)]),
                )
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_backward() {
        let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; 4];
        global_avg_pool_cpu(&x, 6, &mut y);
        assert_eq!(y, vec![2.5, 8.5, 14.5, 20.5]);
        let mut dx = vec![1.0f32; 24];
        global_avg_pool_backward_cpu(&[6.0, 12.0, 0.0, -6.0], 6, &mut dx, true);
        assert_eq!(&dx[..7], &[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0]);
        global_avg_pool_backward_cpu(&[6.0, 12.0, 0.0, -6.0], 6, &mut dx, false);
        assert_eq!(dx[23], -1.0);
    }
}
