//! The classifier heads on the final feature map F (B, K, HW).
//!
//! CAM head (CCD): cam = W (C x K) @ F_b + b, a 1x1 convolution with bias; the positive part
//! is multiplied by alpha; logits = global average pool of the CAM.
//! Linear head: logits = W @ mean_hw(F_b) + b.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{expect_f32, grid_stride_config, to_i32, warp_per_item_config, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::gap::{global_avg_pool_backward_cpu, global_avg_pool_cpu, global_avg_pool_cuda};
use crate::ops::matmul::{gemm_cpu, linear_cpu, MatRef};

/// cam (B, C, HW) holds the boosted CAM; logits (B, C) its spatial means.
#[allow(clippy::too_many_arguments)]
pub fn cam_head_cpu(
    f: &[f32],
    b: usize,
    k: usize,
    hw: usize,
    w: &[f32],
    bias: &[f32],
    alpha: f32,
    cam: &mut [f32],
    logits: &mut [f32],
) {
    let c = bias.len();
    for bi in 0..b {
        let camb = &mut cam[bi * c * hw..][..c * hw];
        // SAFETY: W (C x K) @ F_b (K x HW) -> cam_b (C x HW).
        unsafe {
            gemm_cpu(
                c,
                hw,
                k,
                MatRef::row_major(w, k),
                MatRef::row_major(&f[bi * k * hw..][..k * hw], hw),
                camb.as_mut_ptr(),
                hw as isize,
                false,
                true,
            );
        }
        for (ci, plane) in camb.chunks_exact_mut(hw).enumerate() {
            for v in plane.iter_mut() {
                *v += bias[ci];
                if *v > 0.0 {
                    *v *= alpha;
                }
            }
        }
    }
    global_avg_pool_cpu(cam, hw, logits);
}

/// Backward of `cam_head_cpu` from dlogits (B, C): dw (C, K) and dbias (C) accumulated, df
/// (B, K, HW) overwritten. `cam` is the saved forward output (its sign is the pre-boost sign).
#[allow(clippy::too_many_arguments)]
pub fn cam_head_backward_cpu(
    f: &[f32],
    b: usize,
    k: usize,
    hw: usize,
    w: &[f32],
    alpha: f32,
    cam: &[f32],
    dlogits: &[f32],
    dw: &mut [f32],
    dbias: &mut [f32],
    df: &mut [f32],
) {
    let c = dbias.len();
    let mut dcam = vec![0.0f32; c * hw];
    for bi in 0..b {
        global_avg_pool_backward_cpu(&dlogits[bi * c..][..c], hw, &mut dcam, false);
        for (d, &v) in dcam.iter_mut().zip(&cam[bi * c * hw..][..c * hw]) {
            if v > 0.0 {
                *d *= alpha;
            }
        }
        for (ci, plane) in dcam.chunks_exact(hw).enumerate() {
            dbias[ci] += plane.iter().map(|&v| v as f64).sum::<f64>() as f32;
        }
        let fb = &f[bi * k * hw..][..k * hw];
        // SAFETY: dcam (C x HW) @ F_b^T (HW x K) -> dw (C x K), accumulated; W^T (K x C) @
        // dcam (C x HW) -> df_b (K x HW).
        unsafe {
            gemm_cpu(
                c,
                k,
                hw,
                MatRef::row_major(&dcam, hw),
                MatRef::transposed(fb, hw),
                dw.as_mut_ptr(),
                k as isize,
                true,
                true,
            );
            gemm_cpu(
                k,
                hw,
                c,
                MatRef::transposed(w, k),
                MatRef::row_major(&dcam, hw),
                df[bi * k * hw..].as_mut_ptr(),
                hw as isize,
                false,
                true,
            );
        }
    }
}

/// Linear head: pooled (B, K) = mean_hw F, logits (B, C) = pooled @ W^T + b.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_cpu(
    f: &[f32],
    b: usize,
    k: usize,
    hw: usize,
    w: &[f32],
    bias: &[f32],
    pooled: &mut [f32],
    logits: &mut [f32],
) {
    debug_assert_eq!(pooled.len(), b * k);
    global_avg_pool_cpu(f, hw, pooled);
    linear_cpu(pooled, w, Some(bias), logits, k, false);
}

/// Backward of `linear_head_cpu`: dw, dbias accumulated, df overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_backward_cpu(
    pooled: &[f32],
    b: usize,
    k: usize,
    hw: usize,
    w: &[f32],
    dlogits: &[f32],
    dw: &mut [f32],
    dbias: &mut [f32],
    df: &mut [f32],
) {
    let c = dbias.len();
    let mut dpooled = vec![0.0f32; b * k];
    // SAFETY: dlogits^T (C x B) @ pooled (B x K) -> dw (C x K), accumulated; dlogits (B x C) @
    // W (C x K) -> dpooled (B x K).
    unsafe {
        gemm_cpu(
            c,
            k,
            b,
            MatRef::transposed(dlogits, c),
            MatRef::row_major(pooled, k),
            dw.as_mut_ptr(),
            k as isize,
            true,
            true,
        );
        gemm_cpu(
            b,
            k,
            c,
            MatRef::row_major(dlogits, c),
            MatRef::row_major(w, k),
            dpooled.as_mut_ptr(),
            k as isize,
            false,
            true,
        );
    }
    for row in dlogits.chunks_exact(c) {
        for (d, &g) in dbias.iter_mut().zip(row) {
            *d += g;
        }
    }
    global_avg_pool_backward_cpu(&dpooled, hw, df, false);
}

/// The heads' sizes from the feature map f (B, K, ...) and the weight w (C, K): (B, K, HW, C).
fn head_dims(what: &str, f: &CudaTensor, w: &CudaTensor) -> Result<(usize, usize, usize, usize)> {
    if f.shape().len() < 2 || f.numel() == 0 || w.shape().len() != 2 || w.dim(1) != f.dim(1) || w.dim(0) == 0 {
        return Err(Error::Shape(format!(
            "{what}: features {:?}, weight {:?} (expected (B, K, ...) and (C, K))",
            f.shape(),
            w.shape()
        )));
    }
    let (b, k) = (f.dim(0), f.dim(1));
    Ok((b, k, f.numel() / (b * k), w.dim(0)))
}

/// Errors unless `t` has exactly `shape`.
fn expect_shape(what: &str, name: &str, t: &CudaTensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::Shape(format!("{what}: {name} {:?}, expected {shape:?}", t.shape())));
    }
    Ok(())
}

/// (B, C, spatial...) for the CAM of features (B, K, spatial...).
fn cam_shape(f: &CudaTensor, c: usize) -> Vec<usize> {
    let mut s = f.shape().to_vec();
    s[1] = c;
    s
}

/// The tiled-GEMM kernels' launch (kernels/cam_head.cu): 32x32 output tiles of an M x N result,
/// `batch` of them along z; 256 threads.
fn gemm_tiles(m: usize, n: usize, batch: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(32) as u32, m.div_ceil(32) as u32, batch as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// CUDA twin of `cam_head_cpu` (kernels/cam_head.cu, f32): f (B, K, ...), w (C, K), bias (C);
/// cam (B, C, ...) and logits (B, C) written.
#[allow(clippy::too_many_arguments)]
pub fn cam_head_cuda(
    gpu: &Gpu,
    f: &CudaTensor,
    w: &CudaTensor,
    bias: &CudaTensor,
    alpha: f32,
    cam: &mut CudaTensor,
    logits: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "cam_head_cuda";
    let (b, k, hw, c) = head_dims(WHAT, f, w)?;
    expect_shape(WHAT, "bias", bias, &[c])?;
    expect_shape(WHAT, "cam", cam, &cam_shape(f, c))?;
    expect_shape(WHAT, "logits", logits, &[b, c])?;
    expect_f32(WHAT, &[f, w, bias, cam, logits])?;
    let args = [
        f.arg(gpu),
        w.arg(gpu),
        bias.arg(gpu),
        alpha.into(),
        cam.arg(gpu),
        to_i32(k, "K")?,
        to_i32(hw, "HW")?,
        to_i32(c, "C")?,
    ];
    gpu.launch("cam_head", "cam_head_forward_f32", gemm_tiles(c, hw, b), &args)?;
    global_avg_pool_cuda(gpu, cam, logits)
}

/// CUDA twin of `cam_head_backward_cpu` (f32): from dlogits (B, C) and the saved cam (B, C, ...),
/// dw (C, K) and dbias (C) accumulated, df (B, K, ...) overwritten.
#[allow(clippy::too_many_arguments)]
pub fn cam_head_backward_cuda(
    gpu: &Gpu,
    f: &CudaTensor,
    w: &CudaTensor,
    alpha: f32,
    cam: &CudaTensor,
    dlogits: &CudaTensor,
    dw: &mut CudaTensor,
    dbias: &mut CudaTensor,
    df: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "cam_head_backward_cuda";
    let (b, k, hw, c) = head_dims(WHAT, f, w)?;
    expect_shape(WHAT, "cam", cam, &cam_shape(f, c))?;
    expect_shape(WHAT, "dlogits", dlogits, &[b, c])?;
    expect_shape(WHAT, "dw", dw, &[c, k])?;
    expect_shape(WHAT, "dbias", dbias, &[c])?;
    expect_shape(WHAT, "df", df, f.shape())?;
    expect_f32(WHAT, &[f, w, cam, dlogits, dw, dbias, df])?;
    let (bi, ki, hwi, ci) = (to_i32(b, "B")?, to_i32(k, "K")?, to_i32(hw, "HW")?, to_i32(c, "C")?);
    to_i32(b * hw, "B*HW")?;
    let args = [f.arg(gpu), cam.arg(gpu), dlogits.arg(gpu), alpha.into(), dw.arg(gpu), bi, ki, hwi, ci];
    gpu.launch("cam_head", "cam_head_backward_w_f32", gemm_tiles(c, k, 1), &args)?;
    let args = [w.arg(gpu), cam.arg(gpu), dlogits.arg(gpu), alpha.into(), df.arg(gpu), ki, hwi, ci];
    gpu.launch("cam_head", "cam_head_backward_f_f32", gemm_tiles(k, hw, b), &args)?;
    let args = [cam.arg(gpu), dlogits.arg(gpu), alpha.into(), dbias.arg(gpu), bi, hwi, ci];
    gpu.launch("cam_head", "cam_head_backward_bias_f32", warp_per_item_config(c), &args)
}

/// CUDA twin of `linear_head_cpu` (f32): f (B, K, ...), w (C, K), bias (C); pooled (B, K) and
/// logits (B, C) written.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_cuda(
    gpu: &Gpu,
    f: &CudaTensor,
    w: &CudaTensor,
    bias: &CudaTensor,
    pooled: &mut CudaTensor,
    logits: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "linear_head_cuda";
    let (b, k, _, c) = head_dims(WHAT, f, w)?;
    expect_shape(WHAT, "bias", bias, &[c])?;
    expect_shape(WHAT, "pooled", pooled, &[b, k])?;
    expect_shape(WHAT, "logits", logits, &[b, c])?;
    expect_f32(WHAT, &[f, w, bias, pooled, logits])?;
    global_avg_pool_cuda(gpu, f, pooled)?;
    let args = [
        pooled.arg(gpu),
        w.arg(gpu),
        bias.arg(gpu),
        logits.arg(gpu),
        to_i32(b, "B")?,
        to_i32(k, "K")?,
        to_i32(c, "C")?,
    ];
    gpu.launch("cam_head", "linear_head_logits_f32", warp_per_item_config(b * c), &args)
}

/// CUDA twin of `linear_head_backward_cpu` (f32): pooled (B, K), w (C, K), dlogits (B, C); dw
/// (C, K) and dbias (C) accumulated, df (B, K, ...) overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_backward_cuda(
    gpu: &Gpu,
    pooled: &CudaTensor,
    w: &CudaTensor,
    dlogits: &CudaTensor,
    dw: &mut CudaTensor,
    dbias: &mut CudaTensor,
    df: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "linear_head_backward_cuda";
    let (b, k, hw, c) = head_dims(WHAT, df, w)?;
    expect_shape(WHAT, "pooled", pooled, &[b, k])?;
    expect_shape(WHAT, "dlogits", dlogits, &[b, c])?;
    expect_shape(WHAT, "dw", dw, &[c, k])?;
    expect_shape(WHAT, "dbias", dbias, &[c])?;
    expect_f32(WHAT, &[pooled, w, dlogits, dw, dbias, df])?;
    let (bi, ki, ci): (KArg, KArg, KArg) = (to_i32(b, "B")?, to_i32(k, "K")?, to_i32(c, "C")?);
    to_i32(c * k, "C*K")?;
    let args = [pooled.arg(gpu), dlogits.arg(gpu), dw.arg(gpu), dbias.arg(gpu), bi, ki, ci];
    gpu.launch("cam_head", "linear_head_backward_w_f32", grid_stride_config(c * k), &args)?;
    let cfg =
        LaunchConfig { grid_dim: (k.div_ceil(32) as u32, b as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let args = [w.arg(gpu), dlogits.arg(gpu), df.arg(gpu), ki, to_i32(hw, "HW")?, ci];
    gpu.launch("cam_head", "linear_head_backward_f_f32", cfg, &args)
}

/// Kernel checks, both heads, forward and backward: the ResNet-50 head at 448 (B=2, K=2048,
/// 14x14) with COCO's 80 and VOC's 20 classes, and an odd small one (C=3, 5x7, K=37).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(b, k, h, w, c) in &[(2usize, 2048usize, 14usize, 14usize, 80usize), (2, 2048, 14, 14, 20), (3, 37, 5, 7, 3)] {
        let hw = h * w;
        let (fs, nf) = ([b, k, h, w], b * k * hw);
        let shape = format!("B={b} K={k} H={h} W={w} C={c}");
        let f32 = DType::F32;
        let alpha = 3.0f32;
        let gemm_flops = (2 * b * c * k * hw) as f64;
        // Inputs shared by the four checks: features after a ReLU (non-negative, as in the model).
        let inputs = move |rng: &mut rand::rngs::StdRng| {
            let f: Vec<f32> = random_vec(rng, nf, 1.0).iter().map(|v| v.max(0.0) + 0.01).collect();
            (f, random_vec(rng, c * k, 0.05), random_vec(rng, c, 0.5), random_vec(rng, b * c, 1.0))
        };
        checks.push(GpuCheck::new("cam_head_forward", shape.clone(), f32, Work::Flops(gemm_flops), move |gpu, rng| {
            let (f, wt, bias, _) = inputs(rng);
            let (mut cam, mut logits) = (vec![0.0; b * c * hw], vec![0.0; b * c]);
            cam_head_cpu(&f, b, k, hw, &wt, &bias, alpha, &mut cam, &mut logits);
            let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
            let (fd, wd, bd) = (up(&f, &fs)?, up(&wt, &[c, k])?, up(&bias, &[c])?);
            launch_and_compare(
                gpu,
                (poisoned(gpu, &[b, c, h, w], f32)?, poisoned(gpu, &[b, c], f32)?),
                move |g, (camd, ld)| cam_head_cuda(g, &fd, &wd, &bd, alpha, camd, ld),
                |g, (camd, ld)| max_rel_err_all(g, &[(camd, &cam), (ld, &logits)]),
            )
        }));
        checks.push(GpuCheck::new(
            "cam_head_backward",
            shape.clone(),
            f32,
            Work::Flops(2.0 * gemm_flops),
            move |gpu, rng| {
                let (f, wt, bias, dlogits) = inputs(rng);
                let (mut cam, mut logits) = (vec![0.0; b * c * hw], vec![0.0; b * c]);
                cam_head_cpu(&f, b, k, hw, &wt, &bias, alpha, &mut cam, &mut logits);
                let (dw0, db0) = (random_vec(rng, c * k, 0.1), random_vec(rng, c, 0.1));
                let (mut dw, mut db, mut df) = (dw0.clone(), db0.clone(), vec![0.0; nf]);
                cam_head_backward_cpu(&f, b, k, hw, &wt, alpha, &cam, &dlogits, &mut dw, &mut db, &mut df);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let (fd, wd, camd, dld) =
                    (up(&f, &fs)?, up(&wt, &[c, k])?, up(&cam, &[b, c, h, w])?, up(&dlogits, &[b, c])?);
                launch_and_compare(
                    gpu,
                    (up(&dw0, &[c, k])?, up(&db0, &[c])?, poisoned(gpu, &fs, f32)?),
                    move |g, (dwd, dbd, dfd)| cam_head_backward_cuda(g, &fd, &wd, alpha, &camd, &dld, dwd, dbd, dfd),
                    |g, (dwd, dbd, dfd)| max_rel_err_all(g, &[(dwd, &dw), (dbd, &db), (dfd, &df)]),
                )
            },
        ));
        let head_bytes = ((nf + 2 * c * k) * 4) as f64;
        checks.push(GpuCheck::new(
            "linear_head_forward",
            shape.clone(),
            f32,
            Work::Bytes(head_bytes),
            move |gpu, rng| {
                let (f, wt, bias, _) = inputs(rng);
                let (mut pooled, mut logits) = (vec![0.0; b * k], vec![0.0; b * c]);
                linear_head_cpu(&f, b, k, hw, &wt, &bias, &mut pooled, &mut logits);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let (fd, wd, bd) = (up(&f, &fs)?, up(&wt, &[c, k])?, up(&bias, &[c])?);
                launch_and_compare(
                    gpu,
                    (poisoned(gpu, &[b, k], f32)?, poisoned(gpu, &[b, c], f32)?),
                    move |g, (pd, ld)| linear_head_cuda(g, &fd, &wd, &bd, pd, ld),
                    |g, (pd, ld)| max_rel_err_all(g, &[(pd, &pooled), (ld, &logits)]),
                )
            },
        ));
        checks.push(GpuCheck::new(
            "linear_head_backward",
            shape,
            f32,
            Work::Bytes(head_bytes + (c * k * 4) as f64),
            move |gpu, rng| {
                let (f, wt, _, dlogits) = inputs(rng);
                let mut pooled = vec![0.0; b * k];
                global_avg_pool_cpu(&f, hw, &mut pooled);
                let (dw0, db0) = (random_vec(rng, c * k, 0.1), random_vec(rng, c, 0.1));
                let (mut dw, mut db, mut df) = (dw0.clone(), db0.clone(), vec![0.0; nf]);
                linear_head_backward_cpu(&pooled, b, k, hw, &wt, &dlogits, &mut dw, &mut db, &mut df);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let (pd, wd, dld) = (up(&pooled, &[b, k])?, up(&wt, &[c, k])?, up(&dlogits, &[b, c])?);
                launch_and_compare(
                    gpu,
                    (up(&dw0, &[c, k])?, up(&db0, &[c])?, poisoned(gpu, &fs, f32)?),
                    move |g, (dwd, dbd, dfd)| linear_head_backward_cuda(g, &pd, &wd, &dld, dwd, dbd, dfd),
                    |g, (dwd, dbd, dfd)| max_rel_err_all(g, &[(dwd, &dw), (dbd, &db), (dfd, &df)]),
                )
            },
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// L = sum(logits * r): the analytic gradients against central differences in f64.
    #[test]
    fn heads_backward_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (b, k, hw, c, alpha) = (2, 5, 6, 3, 3.0f32);
        let f: Vec<f32> = (0..b * k * hw).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..c * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let bias: Vec<f32> = (0..c).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let r: Vec<f32> = (0..b * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
        for cam_head in [true, false] {
            let loss = |f: &[f64], w: &[f64], bias: &[f64]| -> f64 {
                let mut l = 0.0;
                for bi in 0..b {
                    for ci in 0..c {
                        let mut logit = 0.0;
                        for p in 0..hw {
                            let mut v = bias[ci];
                            for ki in 0..k {
                                v += w[ci * k + ki] * f[(bi * k + ki) * hw + p];
                            }
                            if cam_head && v > 0.0 {
                                v *= alpha as f64;
                            }
                            logit += v / hw as f64;
                        }
                        l += logit * r[bi * c + ci] as f64;
                    }
                }
                l
            };
            let (fd, wd, bd): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                f.iter().map(|&v| v as f64).collect(),
                w.iter().map(|&v| v as f64).collect(),
                bias.iter().map(|&v| v as f64).collect(),
            );
            let mut logits = vec![f32::NAN; b * c];
            let (mut dw, mut db, mut df) = (vec![0.0f32; c * k], vec![0.0f32; c], vec![f32::NAN; f.len()]);
            if cam_head {
                let mut cam = vec![f32::NAN; b * c * hw];
                cam_head_cpu(&f, b, k, hw, &w, &bias, alpha, &mut cam, &mut logits);
                cam_head_backward_cpu(&f, b, k, hw, &w, alpha, &cam, &r, &mut dw, &mut db, &mut df);
            } else {
                let mut pooled = vec![f32::NAN; b * k];
                linear_head_cpu(&f, b, k, hw, &w, &bias, &mut pooled, &mut logits);
                linear_head_backward_cpu(&pooled, b, k, hw, &w, &r, &mut dw, &mut db, &mut df);
            }
            let l0: f64 = logits.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((l0 - loss(&fd, &wd, &bd)).abs() < 1e-5);
            let h = 1e-6;
            let check = |name: &str, got: &[f32], base: &[f64], which: usize| {
                for i in 0..base.len() {
                    let mut p = base.to_vec();
                    let mut m = base.to_vec();
                    p[i] += h;
                    m[i] -= h;
                    let (lp, lm) = match which {
                        0 => (loss(&p, &wd, &bd), loss(&m, &wd, &bd)),
                        1 => (loss(&fd, &p, &bd), loss(&fd, &m, &bd)),
                        _ => (loss(&fd, &wd, &p), loss(&fd, &wd, &m)),
                    };
                    let want = (lp - lm) / (2.0 * h);
                    assert!(
                        (got[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{name}[{i}] cam={cam_head}: {} vs {want}",
                        got[i]
                    );
                }
            };
            check("df", &df, &fd, 0);
            check("dw", &dw, &wd, 1);
            check("dbias", &db, &bd, 2);
        }
    }
}
