//! Max pooling (NCHW) with padding, as torch.nn.MaxPool2d (padding counts as -inf; on ties the
//! first maximum in raster order wins, as torch's CPU kernel). The forward saves the argmax of
//! each window; the backward scatters the gradient to it.

use rayon::prelude::*;

use rand::Rng;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::activation_dtype;

#[derive(Clone, Copy, Debug)]
pub struct MaxPoolShape {
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPoolShape {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.kernel) / self.stride + 1,
            (self.w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
    }
}

/// y (planes, Ho, Wo) = max pool of x (planes, H, W); argmax (planes, Ho, Wo) holds the index
/// inside its input plane of each output's maximum.
pub fn max_pool2d_cpu(x: &[f32], s: &MaxPoolShape, y: &mut [f32], argmax: &mut [u32]) {
    let (ho, wo) = s.out_hw();
    let hw = s.h * s.w;
    y.par_chunks_mut(ho * wo).zip(argmax.par_chunks_mut(ho * wo)).zip(x.par_chunks(hw)).for_each(|((yp, ap), xp)| {
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut best, mut idx) = (f32::NEG_INFINITY, usize::MAX);
                for ky in 0..s.kernel {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    for kx in 0..s.kernel {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        if ix < 0 || ix >= s.w as isize {
                            continue;
                        }
                        let i = iy as usize * s.w + ix as usize;
                        let v = xp[i];
                        if v > best || v.is_nan() || idx == usize::MAX {
                            best = v;
                            idx = i;
                        }
                    }
                }
                yp[oy * wo + ox] = best;
                ap[oy * wo + ox] = idx as u32;
            }
        }
    });
}

/// dx (planes, H, W) = scatter-add of dy (planes, Ho, Wo) to the saved argmax (overwrites dx).
pub fn max_pool2d_backward_cpu(dy: &[f32], argmax: &[u32], s: &MaxPoolShape, dx: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    dx.par_chunks_mut(s.h * s.w).zip(dy.par_chunks(ho * wo)).zip(argmax.par_chunks(ho * wo)).for_each(
        |((dxp, dyp), ap)| {
            dxp.fill(0.0);
            for (&g, &i) in dyp.iter().zip(ap) {
                dxp[i as usize] += g;
            }
        },
    );
}

/// (planes, H, W) of x and the kernel's size arguments, after checking y/argmax (planes, Ho, Wo).
fn pool_args(what: &str, s: &MaxPoolShape, x_shape: &[usize], y_shape: &[usize]) -> Result<Vec<KArg>> {
    // pad < kernel: no window lies wholly in the padding.
    let valid = s.stride > 0 && s.kernel > s.pad && s.h + 2 * s.pad >= s.kernel && s.w + 2 * s.pad >= s.kernel;
    let (ho, wo) = if valid { s.out_hw() } else { (0, 0) };
    let r = x_shape.len();
    let ok = valid
        && r >= 2
        && x_shape[r - 2..] == [s.h, s.w]
        && y_shape.len() == r
        && x_shape[..r - 2] == y_shape[..r - 2]
        && y_shape[r - 2..] == [ho, wo];
    if !ok {
        return Err(Error::Shape(format!("{what}: x {x_shape:?}, output {y_shape:?} for {s:?}")));
    }
    Ok(vec![
        to_i32(s.h, "H")?,
        to_i32(s.w, "W")?,
        to_i32(ho, "Ho")?,
        to_i32(wo, "Wo")?,
        to_i32(s.kernel, "kernel")?,
        to_i32(s.stride, "stride")?,
        to_i32(s.pad, "pad")?,
    ])
}

/// CUDA twin of `max_pool2d_cpu` (kernels/maxpool.cu; f32 or bf16): x (..., H, W); y and argmax (i32,
/// the index inside the input plane) (..., Ho, Wo).
pub fn max_pool2d_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    s: &MaxPoolShape,
    y: &mut CudaTensor,
    argmax: &mut CudaTensor,
) -> Result<()> {
    let mut args = vec![x.arg(gpu), y.arg(gpu), argmax.arg(gpu)];
    args.extend(pool_args("max_pool2d_cuda", s, x.shape(), y.shape())?);
    if argmax.shape() != y.shape() {
        return Err(Error::Shape(format!("max_pool2d_cuda: argmax {:?}, y {:?}", argmax.shape(), y.shape())));
    }
    let dt = activation_dtype("max_pool2d_cuda", &[x, y])?;
    argmax.expect_dtype(DType::I32, "max_pool2d_cuda argmax")?;
    let total = y.numel();
    args.push((total as i64).into());
    gpu.launch("maxpool", &format!("maxpool_forward_{}", dt.suffix()), grid_stride_config(total), &args)
}

/// CUDA twin of `max_pool2d_backward_cpu` (f32 or bf16, dx overwritten): dy, argmax (..., Ho, Wo); dx
/// (..., H, W). A gather over the windows covering each input: deterministic.
pub fn max_pool2d_backward_cuda(
    gpu: &Gpu,
    dy: &CudaTensor,
    argmax: &CudaTensor,
    s: &MaxPoolShape,
    dx: &mut CudaTensor,
) -> Result<()> {
    let mut args = vec![dy.arg(gpu), argmax.arg(gpu), dx.arg(gpu)];
    args.extend(pool_args("max_pool2d_backward_cuda", s, dx.shape(), dy.shape())?);
    if argmax.shape() != dy.shape() {
        return Err(Error::Shape(format!(
            "max_pool2d_backward_cuda: argmax {:?}, dy {:?}",
            argmax.shape(),
            dy.shape()
        )));
    }
    let dt = activation_dtype("max_pool2d_backward_cuda", &[dy, dx])?;
    argmax.expect_dtype(DType::I32, "max_pool2d_backward_cuda argmax")?;
    let total = dx.numel();
    args.push((total as i64).into());
    gpu.launch("maxpool", &format!("maxpool_backward_{}", dt.suffix()), grid_stride_config(total), &args)
}

/// Kernel checks: the ResNet stem's 3x3 stride 2 pad 1 pool at 448 (batch 2) and odd maps; the
/// small ones on a coarse value grid, so that ties happen (first in raster order wins).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for (&(planes, h, w, kernel, stride, pad), dt) in [
        (2 * 64, 224usize, 224usize, 3usize, 2usize, 1usize),
        (3, 5, 7, 3, 2, 1),
        (2, 9, 8, 2, 2, 0),
        (4, 7, 9, 3, 1, 1),
    ]
    .iter()
    .flat_map(|c| [(c, DType::F32), (c, DType::BF16)])
    {
        let s = MaxPoolShape { h, w, kernel, stride, pad };
        let (ho, wo) = s.out_hw();
        let (n_in, n_out) = (planes * h * w, planes * ho * wo);
        let shape = format!("planes={planes} H={h} W={w} k={kernel} s={stride} p={pad}");
        let ties = n_in < 10_000;
        // bf16 rows: the reference pools the inputs as rounded (the max of bf16 values is one of
        // them: exact) and routes the rounded gradients.
        let input = move |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
            if ties {
                (0..n_in).map(|_| rng.gen_range(0..4) as f32).collect()
            } else {
                dt.round(random_vec(rng, n_in, 2.0))
            }
        };
        let (xs, ys) = ([planes, h, w], [planes, ho, wo]);
        let bytes = ((n_in + n_out) * dt.size_in_bytes() + n_out * 4) as f64;
        checks.push(GpuCheck::new("maxpool_forward", shape.clone(), dt, Work::Bytes(bytes), move |gpu, rng| {
            let x = input(rng);
            let (mut y, mut am) = (vec![0.0; n_out], vec![0u32; n_out]);
            max_pool2d_cpu(&x, &s, &mut y, &mut am);
            let am: Vec<f32> = am.iter().map(|&i| i as f32).collect();
            let xd = CudaTensor::from_f32(gpu, &xs, &x, dt)?;
            launch_and_compare(
                gpu,
                (poisoned(gpu, &ys, dt)?, poisoned(gpu, &ys, DType::I32)?),
                move |g, (yd, amd)| max_pool2d_cuda(g, &xd, &s, yd, amd),
                |g, (yd, amd)| max_rel_err_all(g, &[(yd, &y), (amd, &am)]),
            )
        }));
        checks.push(GpuCheck::new("maxpool_backward", shape, dt, Work::Bytes(bytes), move |gpu, rng| {
            let x = input(rng);
            let dy = dt.round(random_vec(rng, n_out, 1.0));
            let (mut y, mut am) = (vec![0.0; n_out], vec![0u32; n_out]);
            max_pool2d_cpu(&x, &s, &mut y, &mut am);
            let mut dx = vec![0.0; n_in];
            max_pool2d_backward_cpu(&dy, &am, &s, &mut dx);
            let am: Vec<i32> = am.iter().map(|&i| i as i32).collect();
            let dyd = CudaTensor::from_f32(gpu, &ys, &dy, dt)?;
            let amd = CudaTensor::from_i32(gpu, &ys, &am)?;
            launch_and_compare(
                gpu,
                poisoned(gpu, &xs, dt)?,
                move |g, dxd| max_pool2d_backward_cuda(g, &dyd, &amd, &s, dxd),
                |g, dxd| max_rel_err_all(g, &[(dxd, &dx)]),
            )
        }));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn max_pool_forward_backward_match_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(h, w) in &[(8usize, 8usize), (7, 9), (5, 4)] {
            let s = MaxPoolShape { h, w, kernel: 3, stride: 2, pad: 1 };
            let planes = 3;
            let (ho, wo) = s.out_hw();
            // Values on a coarse grid so that ties happen; ties go to the first in raster order.
            let x: Vec<f32> = (0..planes * h * w).map(|_| rng.gen_range(0..4) as f32).collect();
            let dy: Vec<f32> = (0..planes * ho * wo).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![f32::NAN; dy.len()];
            let mut am = vec![0u32; dy.len()];
            max_pool2d_cpu(&x, &s, &mut y, &mut am);
            let mut want_dx = vec![0.0f32; x.len()];
            for p in 0..planes {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut best = (f32::NEG_INFINITY, 0);
                        for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(h) {
                            for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(w) {
                                let v = x[p * h * w + iy * w + ix];
                                if v > best.0 {
                                    best = (v, iy * w + ix);
                                }
                            }
                        }
                        let o = p * ho * wo + oy * wo + ox;
                        assert_eq!(y[o], best.0);
                        want_dx[p * h * w + best.1] += dy[o];
                    }
                }
            }
            let mut dx = vec![f32::NAN; x.len()];
            max_pool2d_backward_cpu(&dy, &am, &s, &mut dx);
            assert_eq!(dx, want_dx);
        }
    }
}
