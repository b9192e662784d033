//! ReLU for training: in place forward, and the backward that masks the gradient with the
//! saved output (y > 0), as torch's threshold_backward.

use rayon::prelude::*;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::activation_dtype;

const CHUNK: usize = 1 << 14;

/// x = max(x, 0) in place.
pub fn relu_inplace_cpu(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// dy *= (y > 0) in place, y the ReLU's output.
pub fn relu_backward_inplace_cpu(y: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(d, y)| {
        for (g, &v) in d.iter_mut().zip(y) {
            if v <= 0.0 {
                *g = 0.0;
            }
        }
    });
}

/// CUDA twin of `relu_inplace_cpu` (kernels/relu.cu; f32 or bf16, four elements a thread).
pub fn relu_inplace_cuda(gpu: &Gpu, x: &mut CudaTensor) -> Result<()> {
    let name = format!("relu_inplace_{}", activation_dtype("relu_inplace_cuda", &[x])?.suffix());
    let n = x.numel();
    gpu.launch("relu", &name, grid_stride_config(n.div_ceil(4)), &[x.arg(gpu), (n as i64).into()])
}

/// CUDA twin of `relu_backward_inplace_cpu` (f32 or bf16): dy *= (y > 0), y the ReLU's output.
pub fn relu_backward_inplace_cuda(gpu: &Gpu, y: &CudaTensor, dy: &mut CudaTensor) -> Result<()> {
    if y.shape() != dy.shape() {
        return Err(Error::Shape(format!("relu_backward_inplace_cuda: y {:?}, dy {:?}", y.shape(), dy.shape())));
    }
    let dt = activation_dtype("relu_backward_inplace_cuda", &[y, dy])?;
    let n = y.numel();
    gpu.launch(
        "relu",
        &format!("relu_backward_inplace_{}", dt.suffix()),
        grid_stride_config(n.div_ceil(4)),
        &[y.arg(gpu), dy.arg(gpu), (n as i64).into()],
    )
}

/// Elementwise training shapes: ResNet-50 at 448, batch 2 (stem output, layer1, layer4) and an
/// odd length (float4 body plus a scalar tail).
pub const ELEMENTWISE_CHECK_SHAPES: &[&[usize]] =
    &[&[2, 64, 224, 224], &[2, 256, 112, 112], &[2, 2048, 14, 14], &[3, 5, 7, 11]];

/// Kernel checks: ReLU forward in place and backward, in f32 and bf16 (the reference sees the
/// bf16 inputs as rounded). Each launch of the timed closure redoes the in-place op on its own
/// output (idempotent for ReLU, harmless for timing).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for (&shape, dt) in ELEMENTWISE_CHECK_SHAPES.iter().flat_map(|s| [(s, DType::F32), (s, DType::BF16)]) {
        let n: usize = shape.iter().product();
        let bytes = (n * dt.size_in_bytes()) as f64;
        checks.push(GpuCheck::new(
            "relu_inplace",
            format!("{shape:?}"),
            dt,
            Work::Bytes(2.0 * bytes),
            move |gpu, rng| {
                let mut x = dt.round(random_vec(rng, n, 1.0));
                let xd = CudaTensor::from_f32(gpu, shape, &x, dt)?;
                relu_inplace_cpu(&mut x);
                launch_and_compare(gpu, xd, relu_inplace_cuda, |g, xd| max_rel_err_all(g, &[(xd, &x)]))
            },
        ));
        checks.push(GpuCheck::new(
            "relu_backward_inplace",
            format!("{shape:?}"),
            dt,
            Work::Bytes(3.0 * bytes),
            move |gpu, rng| {
                let mut y = dt.round(random_vec(rng, n, 1.0));
                relu_inplace_cpu(&mut y);
                let mut dy = dt.round(random_vec(rng, n, 1.0));
                let yd = CudaTensor::from_f32(gpu, shape, &y, dt)?;
                let dyd = CudaTensor::from_f32(gpu, shape, &dy, dt)?;
                relu_backward_inplace_cpu(&y, &mut dy);
                launch_and_compare(
                    gpu,
                    dyd,
                    move |g, dyd| relu_backward_inplace_cuda(g, &yd, dyd),
                    |g, dyd| max_rel_err_all(g, &[(dyd, &dy)]),
                )
            },
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_and_its_backward() {
        let mut x: Vec<f32> = (0..40000).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let orig = x.clone();
        relu_inplace_cpu(&mut x);
        let mut g: Vec<f32> = (0..x.len()).map(|i| i as f32 + 1.0).collect();
        relu_backward_inplace_cpu(&x, &mut g);
        for i in 0..x.len() {
            assert_eq!(x[i], orig[i].max(0.0));
            assert_eq!(g[i], if orig[i] > 0.0 { i as f32 + 1.0 } else { 0.0 });
        }
    }
}
