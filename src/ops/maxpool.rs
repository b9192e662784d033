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

// ---- Channels-last (NHWC) ----

/// y (B, Ho, Wo, C) = max pool of x (B, H, W, C); argmax (B, Ho, Wo, C) holds the index iy * W
/// + ix inside the image of each output's maximum, as `max_pool2d_cpu` per channel plane.
pub fn max_pool2d_nhwc_cpu(x: &[f32], c: usize, s: &MaxPoolShape, y: &mut [f32], argmax: &mut [u32]) {
    let (ho, wo) = s.out_hw();
    let image = s.h * s.w * c;
    y.par_chunks_mut(c).zip(argmax.par_chunks_mut(c)).enumerate().for_each(|(pix, (yp, ap))| {
        let (b, oy, ox) = (pix / (ho * wo), pix / wo % ho, pix % wo);
        let xb = &x[b * image..][..image];
        for ch in 0..c {
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
                    let v = xb[i * c + ch];
                    if v > best || v.is_nan() || idx == usize::MAX {
                        best = v;
                        idx = i;
                    }
                }
            }
            yp[ch] = best;
            ap[ch] = idx as u32;
        }
    });
}

/// dx (B, H, W, C) = scatter-add of dy (B, Ho, Wo, C) to the saved argmax, outputs in raster
/// order (overwrites dx).
pub fn max_pool2d_backward_nhwc_cpu(dy: &[f32], argmax: &[u32], c: usize, s: &MaxPoolShape, dx: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let out_image = ho * wo * c;
    dx.par_chunks_mut(s.h * s.w * c).zip(dy.par_chunks(out_image)).zip(argmax.par_chunks(out_image)).for_each(
        |((dxb, dyb), ab)| {
            dxb.fill(0.0);
            for (o, (&g, &i)) in dyb.iter().zip(ab).enumerate() {
                dxb[i as usize * c + o % c] += g;
            }
        },
    );
}

/// (C, H, W, Ho, Wo, kernel, stride, pad) arguments of the NHWC kernels, after checking x (B, H,
/// W, C) against y (B, Ho, Wo, C).
fn pool_nhwc_args(what: &str, s: &MaxPoolShape, x_shape: &[usize], y_shape: &[usize]) -> Result<Vec<KArg>> {
    let valid = s.stride > 0 && s.kernel > s.pad && s.h + 2 * s.pad >= s.kernel && s.w + 2 * s.pad >= s.kernel;
    let (ho, wo) = if valid { s.out_hw() } else { (0, 0) };
    let ok = valid
        && x_shape.len() == 4
        && y_shape.len() == 4
        && x_shape[1..3] == [s.h, s.w]
        && y_shape[1..3] == [ho, wo]
        && x_shape[0] == y_shape[0]
        && x_shape[3] == y_shape[3]
        && x_shape[3] > 0;
    if !ok {
        return Err(Error::Shape(format!("{what}: x {x_shape:?}, output {y_shape:?} for {s:?} (B, H, W, C)")));
    }
    Ok(vec![
        to_i32(x_shape[3], "C")?,
        to_i32(s.h, "H")?,
        to_i32(s.w, "W")?,
        to_i32(ho, "Ho")?,
        to_i32(wo, "Wo")?,
        to_i32(s.kernel, "kernel")?,
        to_i32(s.stride, "stride")?,
        to_i32(s.pad, "pad")?,
    ])
}

/// CUDA twin of `max_pool2d_nhwc_cpu` (kernels/maxpool.cu; f32 or bf16): x (B, H, W, C); y and
/// argmax (i32, the index iy * W + ix inside the image) (B, Ho, Wo, C).
pub fn max_pool2d_nhwc_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    s: &MaxPoolShape,
    y: &mut CudaTensor,
    argmax: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "max_pool2d_nhwc_cuda";
    let mut args = vec![x.arg(gpu), y.arg(gpu), argmax.arg(gpu)];
    args.extend(pool_nhwc_args(WHAT, s, x.shape(), y.shape())?);
    if argmax.shape() != y.shape() {
        return Err(Error::Shape(format!("{WHAT}: argmax {:?}, y {:?}", argmax.shape(), y.shape())));
    }
    let dt = activation_dtype(WHAT, &[x, y])?;
    argmax.expect_dtype(DType::I32, "max_pool2d_nhwc_cuda argmax")?;
    let total = y.numel();
    args.push((total as i64).into());
    gpu.launch("maxpool", &format!("maxpool_forward_nhwc_{}", dt.suffix()), grid_stride_config(total), &args)
}

/// CUDA twin of `max_pool2d_backward_nhwc_cpu` (f32 or bf16, dx overwritten): dy, argmax (B, Ho,
/// Wo, C); dx (B, H, W, C). A gather over the windows covering each input: deterministic.
pub fn max_pool2d_backward_nhwc_cuda(
    gpu: &Gpu,
    dy: &CudaTensor,
    argmax: &CudaTensor,
    s: &MaxPoolShape,
    dx: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "max_pool2d_backward_nhwc_cuda";
    let mut args = vec![dy.arg(gpu), argmax.arg(gpu), dx.arg(gpu)];
    args.extend(pool_nhwc_args(WHAT, s, dx.shape(), dy.shape())?);
    if argmax.shape() != dy.shape() {
        return Err(Error::Shape(format!("{WHAT}: argmax {:?}, dy {:?}", argmax.shape(), dy.shape())));
    }
    let dt = activation_dtype(WHAT, &[dy, dx])?;
    argmax.expect_dtype(DType::I32, "max_pool2d_backward_nhwc_cuda argmax")?;
    let total = dx.numel();
    args.push((total as i64).into());
    gpu.launch("maxpool", &format!("maxpool_backward_nhwc_{}", dt.suffix()), grid_stride_config(total), &args)
}

/// Kernel checks: the ResNet stem's 3x3 stride 2 pad 1 pool at 448 (batch 2) and odd maps; the
/// small ones on a coarse value grid, so that ties happen (first in raster order wins).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    // (B, C, H, W, kernel, stride, pad, also channels-last): the NCHW rows see B*C planes.
    let cases = [
        (2, 64, 224usize, 224usize, 3usize, 2usize, 1usize, false),
        (1, 3, 5, 7, 3, 2, 1, true),
        (1, 2, 9, 8, 2, 2, 0, true),
        (1, 4, 7, 9, 3, 1, 1, true),
        (2, 64, 56, 56, 3, 2, 1, true),
        (2, 37, 9, 8, 3, 2, 1, true),
        (2, 20, 1, 1, 3, 2, 1, true),
    ];
    let layouts = cases.iter().flat_map(|&c| [(c, false), (c, true)]).filter(|&(c, nhwc)| !nhwc || c.7);
    for ((b, c, h, w, kernel, stride, pad, _), nhwc) in layouts {
        for dt in [DType::F32, DType::BF16] {
            let planes = b * c;
            let s = MaxPoolShape { h, w, kernel, stride, pad };
            let (ho, wo) = s.out_hw();
            let (n_in, n_out) = (planes * h * w, planes * ho * wo);
            let shape = if nhwc {
                format!("B={b} C={c} H={h} W={w} k={kernel} s={stride} p={pad}")
            } else {
                format!("planes={planes} H={h} W={w} k={kernel} s={stride} p={pad}")
            };
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
            let (xs, ys) =
                if nhwc { (vec![b, h, w, c], vec![b, ho, wo, c]) } else { (vec![planes, h, w], vec![planes, ho, wo]) };
            let (xs2, ys2) = (xs.clone(), ys.clone());
            let fwd_op = if nhwc { "maxpool_nhwc_forward" } else { "maxpool_forward" };
            let bwd_op = if nhwc { "maxpool_nhwc_backward" } else { "maxpool_backward" };
            let bytes = ((n_in + n_out) * dt.size_in_bytes() + n_out * 4) as f64;
            checks.push(GpuCheck::new(fwd_op, shape.clone(), dt, Work::Bytes(bytes), move |gpu, rng| {
                let x = input(rng);
                let (mut y, mut am) = (vec![0.0; n_out], vec![0u32; n_out]);
                if nhwc {
                    max_pool2d_nhwc_cpu(&x, c, &s, &mut y, &mut am);
                } else {
                    max_pool2d_cpu(&x, &s, &mut y, &mut am);
                }
                let am: Vec<f32> = am.iter().map(|&i| i as f32).collect();
                let xd = CudaTensor::from_f32(gpu, &xs, &x, dt)?;
                launch_and_compare(
                    gpu,
                    (poisoned(gpu, &ys, dt)?, poisoned(gpu, &ys, DType::I32)?),
                    move |g, (yd, amd)| {
                        if nhwc {
                            max_pool2d_nhwc_cuda(g, &xd, &s, yd, amd)
                        } else {
                            max_pool2d_cuda(g, &xd, &s, yd, amd)
                        }
                    },
                    |g, (yd, amd)| max_rel_err_all(g, &[(yd, &y), (amd, &am)]),
                )
            }));
            checks.push(GpuCheck::new(bwd_op, shape, dt, Work::Bytes(bytes), move |gpu, rng| {
                let x = input(rng);
                let dy = dt.round(random_vec(rng, n_out, 1.0));
                let (mut y, mut am) = (vec![0.0; n_out], vec![0u32; n_out]);
                let mut dx = vec![0.0; n_in];
                if nhwc {
                    max_pool2d_nhwc_cpu(&x, c, &s, &mut y, &mut am);
                    max_pool2d_backward_nhwc_cpu(&dy, &am, c, &s, &mut dx);
                } else {
                    max_pool2d_cpu(&x, &s, &mut y, &mut am);
                    max_pool2d_backward_cpu(&dy, &am, &s, &mut dx);
                }
                let am: Vec<i32> = am.iter().map(|&i| i as i32).collect();
                let dyd = CudaTensor::from_f32(gpu, &ys2, &dy, dt)?;
                let amd = CudaTensor::from_i32(gpu, &ys2, &am)?;
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &xs2, dt)?,
                    move |g, dxd| {
                        if nhwc {
                            max_pool2d_backward_nhwc_cuda(g, &dyd, &amd, &s, dxd)
                        } else {
                            max_pool2d_backward_cuda(g, &dyd, &amd, &s, dxd)
                        }
                    },
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
