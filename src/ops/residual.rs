//! The residual add of a bottleneck, y += identity, and its backward: the gradient of the sum
//! flows unchanged into both branches, so the backward adds the branch gradients (dx += d).

use rayon::prelude::*;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::activation_dtype;
use crate::ops::relu::ELEMENTWISE_CHECK_SHAPES;

const CHUNK: usize = 1 << 14;

/// y += x elementwise (forward: main branch plus identity; backward: dx_main + dx_identity).
pub fn add_inplace_cpu(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, b)| {
        for (u, v) in a.iter_mut().zip(b) {
            *u += v;
        }
    });
}

/// CUDA twin of `add_inplace_cpu` (kernels/residual.cu; f32 or bf16, four elements a
/// thread): y += x.
pub fn add_inplace_cuda(gpu: &Gpu, y: &mut CudaTensor, x: &CudaTensor) -> Result<()> {
    if y.shape() != x.shape() {
        return Err(Error::Shape(format!("add_inplace_cuda: y {:?}, x {:?}", y.shape(), x.shape())));
    }
    let dt = activation_dtype("add_inplace_cuda", &[y, x])?;
    let n = y.numel();
    gpu.launch(
        "residual",
        &format!("add_inplace_{}", dt.suffix()),
        grid_stride_config(n.div_ceil(4)),
        &[y.arg(gpu), x.arg(gpu), (n as i64).into()],
    )
}

/// Kernel checks: the residual add on the bottleneck outputs (and an odd length), in f32 and
/// bf16 (the reference adds the bf16 inputs as rounded; the kernel rounds the sum once).
pub fn gpu_checks() -> Vec<GpuCheck> {
    ELEMENTWISE_CHECK_SHAPES
        .iter()
        .flat_map(|s| [(s, DType::F32), (s, DType::BF16)])
        .map(|(&shape, dt)| {
            let n: usize = shape.iter().product();
            GpuCheck::new(
                "add_inplace",
                format!("{shape:?}"),
                dt,
                Work::Bytes((n * 3 * dt.size_in_bytes()) as f64),
                move |gpu, rng| {
                    let (mut y, x) = (dt.round(random_vec(rng, n, 1.0)), dt.round(random_vec(rng, n, 1.0)));
                    let yd = CudaTensor::from_f32(gpu, shape, &y, dt)?;
                    let xd = CudaTensor::from_f32(gpu, shape, &x, dt)?;
                    add_inplace_cpu(&mut y, &x);
                    launch_and_compare(
                        gpu,
                        yd,
                        move |g, yd| add_inplace_cuda(g, yd, &xd),
                        |g, yd| max_rel_err_all(g, &[(yd, &y)]),
                    )
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_inplace_adds() {
        let mut y: Vec<f32> = (0..50000).map(|i| i as f32 * 0.5).collect();
        let x: Vec<f32> = (0..50000).map(|i| -(i as f32) * 0.25 + 1.0).collect();
        add_inplace_cpu(&mut y, &x);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, i as f32 * 0.25 + 1.0);
        }
    }
}
