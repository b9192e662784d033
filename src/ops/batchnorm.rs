//! 2-D batch norm (NCHW) as torch.nn.BatchNorm2d: in training, batch statistics (biased
//! variance) normalise and the running statistics move by `momentum` towards the batch mean
//! and the unbiased batch variance; in eval, the running statistics normalise. Backward of the
//! training form: dx, dgamma, dbeta.

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{expect_f32, f32_arg_at, grid_stride_config, to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::activation_dtype;

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// Per-channel statistics over (B, H*W), in f64: (mean, biased variance).
fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let n = (b * hw) as f64;
            let mut s = 0.0f64;
            for bi in 0..b {
                s += x[(bi * c + ci) * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>();
            }
            let mean = s / n;
            let mut q = 0.0f64;
            for bi in 0..b {
                q += x[(bi * c + ci) * hw..][..hw].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
            }
            (mean, q / n)
        })
        .collect()
}

/// y = gamma * (x - mean) * rstd + beta, plane by plane.
#[allow(clippy::too_many_arguments)]
fn apply(x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    y.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(p, (yp, xp))| {
        let ci = p % c;
        let (m, s) = (mean[ci], rstd[ci] * gamma[ci]);
        for (o, &v) in yp.iter_mut().zip(xp) {
            *o = (v - m) * s + beta[ci];
        }
    });
}

/// Training forward: y from batch statistics; `mean` and `rstd` (C) are saved for the backward;
/// the running statistics are updated in place (torch: momentum 0.1, unbiased variance).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_cpu(
    x: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let n = b * hw;
    let stats = channel_stats(x, b, c, hw);
    for (ci, &(m, v)) in stats.iter().enumerate() {
        mean[ci] = m as f32;
        rstd[ci] = (1.0 / (v + BN_EPS as f64).sqrt()) as f32;
        let unbiased = if n > 1 { v * n as f64 / (n - 1) as f64 } else { v };
        running_mean[ci] = (1.0 - BN_MOMENTUM) * running_mean[ci] + BN_MOMENTUM * m as f32;
        running_var[ci] = (1.0 - BN_MOMENTUM) * running_var[ci] + BN_MOMENTUM * unbiased as f32;
    }
    apply(x, gamma, beta, mean, rstd, c, hw, y);
}

/// Eval forward: y from the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_cpu(
    x: &[f32],
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) {
    let rstd: Vec<f32> = running_var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    apply(x, gamma, beta, running_mean, &rstd, c, hw, y);
}

/// Backward of the training forward. dx = gamma*rstd/N * (N*dy - sum dy - xhat * sum(dy*xhat));
/// dgamma += sum(dy*xhat), dbeta += sum(dy) (accumulated); dx overwritten.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_cpu(
    x: &[f32],
    dy: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (m, r) = (mean[ci], rstd[ci]);
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for bi in 0..b {
                let off = (bi * c + ci) * hw;
                for (&g, &v) in dy[off..off + hw].iter().zip(&x[off..off + hw]) {
                    sdy += g as f64;
                    sdyx += g as f64 * ((v - m) * r) as f64;
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let n = (b * hw) as f32;
    for (ci, &(sdy, sdyx)) in sums.iter().enumerate() {
        dbeta[ci] += sdy as f32;
        dgamma[ci] += sdyx as f32;
    }
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
        let ci = p % c;
        let (m, r) = (mean[ci], rstd[ci]);
        let (mdy, mdyx) = ((sums[ci].0 / n as f64) as f32, (sums[ci].1 / n as f64) as f32);
        let k = gamma[ci] * r;
        let off = p * hw;
        for ((o, &g), &v) in dxp.iter_mut().zip(&dy[off..off + hw]).zip(&x[off..off + hw]) {
            *o = k * (g - mdy - (v - m) * r * mdyx);
        }
    });
}

/// The CUDA reductions split a channel's N = B*HW values into chunks of this many, one block
/// each (kernels/batchnorm.cu): enough blocks to fill the GPU even on the stem's 64 channels.
const BN_CHUNK: usize = 4096;

/// f32 elements of the workspace that `batch_norm_train_cuda` and `batch_norm_backward_cuda`
/// need for x of shape (b, c, hw): per-chunk partials and the backward's per-channel means.
pub fn batch_norm_workspace_len(b: usize, c: usize, hw: usize) -> usize {
    c * ((b * hw).div_ceil(BN_CHUNK).max(1) * 3 + 2)
}

/// (B, C, HW) of an NCHW tensor (any number of spatial dims, possibly none).
fn nchw(what: &str, x: &CudaTensor) -> Result<(usize, usize, usize)> {
    if x.shape().len() < 2 || x.numel() == 0 {
        return Err(Error::Shape(format!("{what}: x {:?} is not (B, C, ...)", x.shape())));
    }
    let (b, c) = (x.dim(0), x.dim(1));
    Ok((b, c, x.numel() / (b * c)))
}

/// Errors unless every tensor has `shape`.
fn expect_shape(what: &str, shape: &[usize], tensors: &[(&str, &CudaTensor)]) -> Result<()> {
    for (name, t) in tensors {
        if t.shape() != shape {
            return Err(Error::Shape(format!("{what}: {name} {:?}, expected {shape:?}", t.shape())));
        }
    }
    Ok(())
}

/// The stage-1 grid (C, S) of the split reductions and the chunk length.
fn split_config(c: usize, n: usize) -> (LaunchConfig, usize) {
    let s = n.div_ceil(BN_CHUNK).max(1);
    (LaunchConfig { grid_dim: (c as u32, s as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }, s)
}

fn check_workspace(what: &str, ws: &CudaTensor, b: usize, c: usize, hw: usize) -> Result<()> {
    let need = batch_norm_workspace_len(b, c, hw);
    if ws.numel() < need {
        return Err(Error::Shape(format!(
            "{what}: workspace of {} f32, needs {need} (batch_norm_workspace_len)",
            ws.numel()
        )));
    }
    Ok(())
}

/// CUDA twin of `batch_norm_train_cpu` (kernels/batchnorm.cu): x, y (B, C, ...) in f32 or bf16;
/// gamma, beta, running_mean, running_var, mean, rstd (C); `workspace` at least
/// `batch_norm_workspace_len(B, C, HW)` f32. Statistics and the rest stay f32 for bf16 x.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    gamma: &CudaTensor,
    beta: &CudaTensor,
    running_mean: &mut CudaTensor,
    running_var: &mut CudaTensor,
    y: &mut CudaTensor,
    mean: &mut CudaTensor,
    rstd: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_train_cuda";
    let (b, c, hw) = nchw(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("mean", mean),
            ("rstd", rstd),
        ],
    )?;
    expect_shape(WHAT, x.shape(), &[("y", y)])?;
    let dt = activation_dtype(WHAT, &[x, y])?.suffix();
    expect_f32(WHAT, &[gamma, beta, running_mean, running_var, mean, rstd, workspace])?;
    check_workspace(WHAT, workspace, b, c, hw)?;
    let n = b * hw;
    let (cfg, s) = split_config(c, n);
    let (ci, hwi, ni) = (to_i32(c, "C")?, to_i32(hw, "HW")?, to_i32(n, "B*HW")?);
    gpu.launch(
        "batchnorm",
        &format!("batchnorm_partial_stats_{dt}"),
        cfg,
        &[x.arg(gpu), ci, hwi, ni, to_i32(BN_CHUNK, "chunk")?, workspace.arg(gpu)],
    )?;
    let args = [
        workspace.arg(gpu),
        ci,
        to_i32(s, "S")?,
        BN_MOMENTUM.into(),
        BN_EPS.into(),
        mean.arg(gpu),
        rstd.arg(gpu),
        running_mean.arg(gpu),
        running_var.arg(gpu),
    ];
    gpu.launch("batchnorm", "batchnorm_finalize_stats_f32", grid_stride_config(c), &args)?;
    let total = x.numel();
    let args = [
        x.arg(gpu),
        gamma.arg(gpu),
        beta.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        y.arg(gpu),
        ci,
        hwi,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_apply_{dt}"), grid_stride_config(total), &args)
}

/// CUDA twin of `batch_norm_eval_cpu`: x, y (B, C, ...) in f32 or bf16; the rest (C), f32.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    gamma: &CudaTensor,
    beta: &CudaTensor,
    running_mean: &CudaTensor,
    running_var: &CudaTensor,
    y: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_eval_cuda";
    let (_, c, hw) = nchw(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)],
    )?;
    expect_shape(WHAT, x.shape(), &[("y", y)])?;
    let dt = activation_dtype(WHAT, &[x, y])?.suffix();
    expect_f32(WHAT, &[gamma, beta, running_mean, running_var])?;
    let total = x.numel();
    let args = [
        x.arg(gpu),
        gamma.arg(gpu),
        beta.arg(gpu),
        running_mean.arg(gpu),
        running_var.arg(gpu),
        BN_EPS.into(),
        y.arg(gpu),
        to_i32(c, "C")?,
        to_i32(hw, "HW")?,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_eval_{dt}"), grid_stride_config(total), &args)
}

/// CUDA twin of `batch_norm_backward_cpu`: dx overwritten, dgamma and dbeta accumulated.
/// x, dy, dx (B, C, ...) in f32 or bf16; gamma, mean, rstd, dgamma, dbeta (C), f32.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    dy: &CudaTensor,
    gamma: &CudaTensor,
    mean: &CudaTensor,
    rstd: &CudaTensor,
    dx: &mut CudaTensor,
    dgamma: &mut CudaTensor,
    dbeta: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_backward_cuda";
    let (b, c, hw) = nchw(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[("gamma", gamma), ("mean", mean), ("rstd", rstd), ("dgamma", dgamma), ("dbeta", dbeta)],
    )?;
    expect_shape(WHAT, x.shape(), &[("dy", dy), ("dx", dx)])?;
    let dt = activation_dtype(WHAT, &[x, dy, dx])?.suffix();
    expect_f32(WHAT, &[gamma, mean, rstd, dgamma, dbeta, workspace])?;
    check_workspace(WHAT, workspace, b, c, hw)?;
    let n = b * hw;
    let (cfg, s) = split_config(c, n);
    let (ci, hwi, ni) = (to_i32(c, "C")?, to_i32(hw, "HW")?, to_i32(n, "B*HW")?);
    // Workspace: partials (C, S, 2) at 0, per-channel means (C, 2) after C*S*3.
    let means = f32_arg_at(gpu, workspace, c * s * 3);
    let args = [
        x.arg(gpu),
        dy.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        ci,
        hwi,
        ni,
        to_i32(BN_CHUNK, "chunk")?,
        workspace.arg(gpu),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_backward_partial_{dt}"), cfg, &args)?;
    let args = [workspace.arg(gpu), ci, to_i32(s, "S")?, ni, dgamma.arg(gpu), dbeta.arg(gpu), means];
    gpu.launch("batchnorm", "batchnorm_backward_finalize_f32", grid_stride_config(c), &args)?;
    let total = x.numel();
    let args = [
        x.arg(gpu),
        dy.arg(gpu),
        gamma.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        means,
        dx.arg(gpu),
        ci,
        hwi,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_backward_dx_{dt}"), grid_stride_config(total), &args)
}

// ---- Channels-last (NHWC) ----
//
// x (B, H, W, C) is N = B*H*W rows of C channels. Element (row j, channel c) of NHWC sits where
// NCHW with B = N and HW = 1 puts it, so the NCHW definitions with (N, C, 1) are the NHWC ones,
// and so are the NCHW elementwise kernels (channel = index mod C) and the per-channel finalize
// kernels; only the two reductions over rows have NHWC kernels of their own (a warp reads 32
// consecutive channels of a row, kernels/batchnorm.cu).

/// Training forward on x (N rows, C) channels-last; as `batch_norm_train_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_nhwc_cpu(
    x: &[f32],
    rows: usize,
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    batch_norm_train_cpu(x, rows, c, 1, gamma, beta, running_mean, running_var, y, mean, rstd);
}

/// Eval forward on x (N rows, C) channels-last; as `batch_norm_eval_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_nhwc_cpu(
    x: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) {
    batch_norm_eval_cpu(x, c, 1, gamma, beta, running_mean, running_var, y);
}

/// Backward on x, dy (N rows, C) channels-last; as `batch_norm_backward_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_nhwc_cpu(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    c: usize,
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    batch_norm_backward_cpu(x, dy, rows, c, 1, gamma, mean, rstd, dx, dgamma, dbeta);
}

/// The NHWC reductions give each block this many rows of 32 channels (16384 values, 4 times
/// the NCHW chunk: the block reads 32 channels at once), 64 rows per thread.
const BN_NHWC_CHUNK: usize = 512;

/// f32 elements of the workspace that `batch_norm_train_nhwc_cuda` and
/// `batch_norm_backward_nhwc_cuda` need for x of `rows` = B*H*W rows of `c` channels.
pub fn batch_norm_nhwc_workspace_len(rows: usize, c: usize) -> usize {
    c * (rows.div_ceil(BN_NHWC_CHUNK).max(1) * 3 + 2)
}

/// (N rows, C) of a channels-last tensor (..., C): C the last dimension.
fn nhwc(what: &str, x: &CudaTensor) -> Result<(usize, usize)> {
    let c = x.shape().last().copied().unwrap_or(0);
    if x.shape().len() < 2 || x.numel() == 0 {
        return Err(Error::Shape(format!("{what}: x {:?} is not (B, ..., C)", x.shape())));
    }
    Ok((x.numel() / c, c))
}

/// The NHWC reductions' grid (ceil(C / 32), S) of (32, 8) blocks and S.
fn nhwc_split_config(what: &str, rows: usize, c: usize) -> Result<(LaunchConfig, usize)> {
    let s = rows.div_ceil(BN_NHWC_CHUNK).max(1);
    if s > 65535 {
        return Err(Error::Shape(format!("{what}: {rows} rows exceed the grid ({BN_NHWC_CHUNK} rows a block)")));
    }
    let cfg =
        LaunchConfig { grid_dim: (c.div_ceil(32) as u32, s as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
    Ok((cfg, s))
}

fn check_nhwc_workspace(what: &str, ws: &CudaTensor, rows: usize, c: usize) -> Result<()> {
    let need = batch_norm_nhwc_workspace_len(rows, c);
    if ws.numel() < need {
        return Err(Error::Shape(format!(
            "{what}: workspace of {} f32, needs {need} (batch_norm_nhwc_workspace_len)",
            ws.numel()
        )));
    }
    Ok(())
}

/// CUDA twin of `batch_norm_train_nhwc_cpu`: x, y (B, H, W, C) (any (..., C)) in f32 or bf16;
/// gamma, beta, running_mean, running_var, mean, rstd (C) f32; `workspace` at least
/// `batch_norm_nhwc_workspace_len(B*H*W, C)` f32. The contract of `batch_norm_train_cuda`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_nhwc_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    gamma: &CudaTensor,
    beta: &CudaTensor,
    running_mean: &mut CudaTensor,
    running_var: &mut CudaTensor,
    y: &mut CudaTensor,
    mean: &mut CudaTensor,
    rstd: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_train_nhwc_cuda";
    let (rows, c) = nhwc(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("mean", mean),
            ("rstd", rstd),
        ],
    )?;
    expect_shape(WHAT, x.shape(), &[("y", y)])?;
    let dt = activation_dtype(WHAT, &[x, y])?.suffix();
    expect_f32(WHAT, &[gamma, beta, running_mean, running_var, mean, rstd, workspace])?;
    check_nhwc_workspace(WHAT, workspace, rows, c)?;
    let (cfg, s) = nhwc_split_config(WHAT, rows, c)?;
    let (ci, ni) = (to_i32(c, "C")?, to_i32(rows, "B*H*W")?);
    gpu.launch(
        "batchnorm",
        &format!("batchnorm_partial_stats_nhwc_{dt}"),
        cfg,
        &[x.arg(gpu), ci, ni, to_i32(BN_NHWC_CHUNK, "chunk")?, workspace.arg(gpu)],
    )?;
    let args = [
        workspace.arg(gpu),
        ci,
        to_i32(s, "S")?,
        BN_MOMENTUM.into(),
        BN_EPS.into(),
        mean.arg(gpu),
        rstd.arg(gpu),
        running_mean.arg(gpu),
        running_var.arg(gpu),
    ];
    gpu.launch("batchnorm", "batchnorm_finalize_stats_f32", grid_stride_config(c), &args)?;
    // The NCHW elementwise kernel with HW = 1: channel = index mod C.
    let total = x.numel();
    let one = to_i32(1, "HW")?;
    let args = [
        x.arg(gpu),
        gamma.arg(gpu),
        beta.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        y.arg(gpu),
        ci,
        one,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_apply_{dt}"), grid_stride_config(total), &args)
}

/// CUDA twin of `batch_norm_eval_nhwc_cpu`: x, y (..., C) in f32 or bf16; the rest (C), f32.
pub fn batch_norm_eval_nhwc_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    gamma: &CudaTensor,
    beta: &CudaTensor,
    running_mean: &CudaTensor,
    running_var: &CudaTensor,
    y: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_eval_nhwc_cuda";
    let (_, c) = nhwc(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)],
    )?;
    expect_shape(WHAT, x.shape(), &[("y", y)])?;
    let dt = activation_dtype(WHAT, &[x, y])?.suffix();
    expect_f32(WHAT, &[gamma, beta, running_mean, running_var])?;
    let total = x.numel();
    let args = [
        x.arg(gpu),
        gamma.arg(gpu),
        beta.arg(gpu),
        running_mean.arg(gpu),
        running_var.arg(gpu),
        BN_EPS.into(),
        y.arg(gpu),
        to_i32(c, "C")?,
        to_i32(1, "HW")?,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_eval_{dt}"), grid_stride_config(total), &args)
}

/// CUDA twin of `batch_norm_backward_nhwc_cpu`: dx overwritten, dgamma and dbeta accumulated.
/// x, dy, dx (..., C) in f32 or bf16; gamma, mean, rstd, dgamma, dbeta (C), f32; `workspace` at
/// least `batch_norm_nhwc_workspace_len(B*H*W, C)` f32.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_nhwc_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    dy: &CudaTensor,
    gamma: &CudaTensor,
    mean: &CudaTensor,
    rstd: &CudaTensor,
    dx: &mut CudaTensor,
    dgamma: &mut CudaTensor,
    dbeta: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "batch_norm_backward_nhwc_cuda";
    let (rows, c) = nhwc(WHAT, x)?;
    expect_shape(
        WHAT,
        &[c],
        &[("gamma", gamma), ("mean", mean), ("rstd", rstd), ("dgamma", dgamma), ("dbeta", dbeta)],
    )?;
    expect_shape(WHAT, x.shape(), &[("dy", dy), ("dx", dx)])?;
    let dt = activation_dtype(WHAT, &[x, dy, dx])?.suffix();
    expect_f32(WHAT, &[gamma, mean, rstd, dgamma, dbeta, workspace])?;
    check_nhwc_workspace(WHAT, workspace, rows, c)?;
    let (cfg, s) = nhwc_split_config(WHAT, rows, c)?;
    let (ci, ni) = (to_i32(c, "C")?, to_i32(rows, "B*H*W")?);
    // Workspace: partials (C, S, 2) at 0, per-channel means (C, 2) after C*S*3.
    let means = f32_arg_at(gpu, workspace, c * s * 3);
    let args = [
        x.arg(gpu),
        dy.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        ci,
        ni,
        to_i32(BN_NHWC_CHUNK, "chunk")?,
        workspace.arg(gpu),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_backward_partial_nhwc_{dt}"), cfg, &args)?;
    let args = [workspace.arg(gpu), ci, to_i32(s, "S")?, ni, dgamma.arg(gpu), dbeta.arg(gpu), means];
    gpu.launch("batchnorm", "batchnorm_backward_finalize_f32", grid_stride_config(c), &args)?;
    let total = x.numel();
    let args = [
        x.arg(gpu),
        dy.arg(gpu),
        gamma.arg(gpu),
        mean.arg(gpu),
        rstd.arg(gpu),
        means,
        dx.arg(gpu),
        ci,
        to_i32(1, "HW")?,
        (total as i64).into(),
    ];
    gpu.launch("batchnorm", &format!("batchnorm_backward_dx_{dt}"), grid_stride_config(total), &args)
}

/// Training shapes of the ResNet-50 at 448, batch 2 (stem, layer1, layer4) and odd small ones,
/// NCHW only (the first three are slow on the simulator).
const BN_CHECK_SHAPES: &[(usize, usize, usize, usize)] =
    &[(2, 64, 224, 224), (2, 256, 112, 112), (2, 2048, 14, 14), (2, 3, 5, 7), (1, 5, 1, 3)];

/// Shapes checked in both layouts (NCHW and channels-last), so the simulator's profiles compare:
/// ResNet-50 channel counts on small maps, C not a multiple of 8, 1x1 maps.
const BN_BOTH_LAYOUT_SHAPES: &[(usize, usize, usize, usize)] =
    &[(2, 64, 56, 56), (2, 256, 14, 14), (2, 2048, 7, 7), (2, 37, 5, 7), (3, 20, 1, 1)];

/// Kernel checks: training forward (y, saved mean/rstd, running statistics), eval forward,
/// backward (dx, accumulated dgamma/dbeta); activations in f32 and in bf16.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    let layouts = BN_CHECK_SHAPES
        .iter()
        .map(|s| (s, false))
        .chain(BN_BOTH_LAYOUT_SHAPES.iter().flat_map(|s| [(s, false), (s, true)]));
    for ((&(b, c, h, w), nhwc), dt) in layouts.flat_map(|s| [(s, DType::F32), (s, DType::BF16)]) {
        let (hw, shape) = (h * w, format!("B={b} C={c} H={h} W={w}"));
        let n = b * c * hw;
        // Channels-last: the CPU definitions see (B*H*W, C, 1), the tensors are (B, H, W, C).
        let (cb, chw, xs) = if nhwc { (b * hw, 1, [b, h, w, c]) } else { (b, hw, [b, c, h, w]) };
        let ws_len = if nhwc { batch_norm_nhwc_workspace_len(b * hw, c) } else { batch_norm_workspace_len(b, c, hw) };
        let op = |name: &'static str, nhwc_name: &'static str| if nhwc { nhwc_name } else { name };
        let f32 = DType::F32;
        // Activations (x, y, dy, dx) in `dt`; parameters and statistics f32. The reference
        // sees the activations as rounded to `dt`, so a check measures the kernel.
        let bytes = (n * dt.size_in_bytes()) as f64;
        checks.push(GpuCheck::new(
            op("batchnorm_train_forward", "batchnorm_nhwc_train_forward"),
            shape.clone(),
            dt,
            Work::Bytes(2.0 * bytes),
            move |gpu, rng| {
                // Offset values: the statistics must not lose precision to a large mean.
                let x: Vec<f32> = dt.round(random_vec(rng, n, 2.0).iter().map(|v| v + 3.0).collect());
                let gamma: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                let beta = random_vec(rng, c, 0.5);
                let rm0 = random_vec(rng, c, 1.0);
                let rv0: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
                let (mut y, mut mean, mut rstd) = (vec![0.0; n], vec![0.0; c], vec![0.0; c]);
                batch_norm_train_cpu(&x, cb, c, chw, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let xd = CudaTensor::from_f32(gpu, &xs, &x, dt)?;
                let (gd, bd) = (up(&gamma, &[c])?, up(&beta, &[c])?);
                let (rmd, rvd) = (up(&rm0, &[c])?, up(&rv0, &[c])?);
                let outputs = (
                    rmd,
                    rvd,
                    poisoned(gpu, &xs, dt)?,
                    poisoned(gpu, &[c], f32)?,
                    poisoned(gpu, &[c], f32)?,
                    poisoned(gpu, &[ws_len], f32)?,
                );
                launch_and_compare(
                    gpu,
                    outputs,
                    move |g, (rmd, rvd, yd, meand, rstdd, ws)| {
                        if nhwc {
                            batch_norm_train_nhwc_cuda(g, &xd, &gd, &bd, rmd, rvd, yd, meand, rstdd, ws)
                        } else {
                            batch_norm_train_cuda(g, &xd, &gd, &bd, rmd, rvd, yd, meand, rstdd, ws)
                        }
                    },
                    |g, (rmd, rvd, yd, meand, rstdd, _)| {
                        max_rel_err_all(g, &[(yd, &y), (meand, &mean), (rstdd, &rstd), (rmd, &rm), (rvd, &rv)])
                    },
                )
            },
        ));
        checks.push(GpuCheck::new(
            op("batchnorm_eval_forward", "batchnorm_nhwc_eval_forward"),
            shape.clone(),
            dt,
            Work::Bytes(2.0 * bytes),
            move |gpu, rng| {
                let x = dt.round(random_vec(rng, n, 2.0));
                let gamma: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                let (beta, rm) = (random_vec(rng, c, 0.5), random_vec(rng, c, 1.0));
                let rv: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                let mut y = vec![0.0; n];
                batch_norm_eval_cpu(&x, c, chw, &gamma, &beta, &rm, &rv, &mut y);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let xd = CudaTensor::from_f32(gpu, &xs, &x, dt)?;
                let (gd, bd, rmd, rvd) = (up(&gamma, &[c])?, up(&beta, &[c])?, up(&rm, &[c])?, up(&rv, &[c])?);
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &xs, dt)?,
                    move |g, yd| {
                        if nhwc {
                            batch_norm_eval_nhwc_cuda(g, &xd, &gd, &bd, &rmd, &rvd, yd)
                        } else {
                            batch_norm_eval_cuda(g, &xd, &gd, &bd, &rmd, &rvd, yd)
                        }
                    },
                    |g, yd| max_rel_err_all(g, &[(yd, &y)]),
                )
            },
        ));
        checks.push(GpuCheck::new(
            op("batchnorm_backward", "batchnorm_nhwc_backward"),
            shape,
            dt,
            Work::Bytes(3.0 * bytes),
            move |gpu, rng| {
                let x: Vec<f32> = dt.round(random_vec(rng, n, 2.0).iter().map(|v| v + 1.0).collect());
                let dy = dt.round(random_vec(rng, n, 1.0));
                let gamma: Vec<f32> = random_vec(rng, c, 0.5).iter().map(|v| v + 1.0).collect();
                let (dg0, db0) = (random_vec(rng, c, 1.0), random_vec(rng, c, 1.0));
                // mean and rstd as the training forward saves them.
                let (mut rm, mut rv, mut y) = (vec![0.0; c], vec![1.0; c], vec![0.0; n]);
                let (mut mean, mut rstd) = (vec![0.0; c], vec![0.0; c]);
                batch_norm_train_cpu(&x, cb, c, chw, &gamma, &gamma, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd);
                let (mut dx, mut dg, mut db) = (vec![0.0; n], dg0.clone(), db0.clone());
                batch_norm_backward_cpu(&x, &dy, cb, c, chw, &gamma, &mean, &rstd, &mut dx, &mut dg, &mut db);
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let (xd, dyd, gd, md, rd) = (
                    CudaTensor::from_f32(gpu, &xs, &x, dt)?,
                    CudaTensor::from_f32(gpu, &xs, &dy, dt)?,
                    up(&gamma, &[c])?,
                    up(&mean, &[c])?,
                    up(&rstd, &[c])?,
                );
                let outputs =
                    (poisoned(gpu, &xs, dt)?, up(&dg0, &[c])?, up(&db0, &[c])?, poisoned(gpu, &[ws_len], f32)?);
                launch_and_compare(
                    gpu,
                    outputs,
                    move |g, (dxd, dgd, dbd, ws)| {
                        if nhwc {
                            batch_norm_backward_nhwc_cuda(g, &xd, &dyd, &gd, &md, &rd, dxd, dgd, dbd, ws)
                        } else {
                            batch_norm_backward_cuda(g, &xd, &dyd, &gd, &md, &rd, dxd, dgd, dbd, ws)
                        }
                    },
                    |g, (dxd, dgd, dbd, _)| max_rel_err_all(g, &[(dxd, &dx), (dgd, &dg), (dbd, &db)]),
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

    /// Loss L = sum(y * r) for a fixed random r: dL/dy = r. The analytic gradients against
    /// central finite differences in f64 of the definition.
    #[test]
    fn batch_norm_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (b, c, hw) = (3, 4, 5);
        let x: Vec<f32> = (0..b * c * hw).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let gamma: Vec<f32> = (0..c).map(|_| rng.gen_range(0.5..1.5)).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let r: Vec<f32> = (0..b * c * hw).map(|_| rng.gen_range(-1.0..1.0)).collect();
        // The definition in f64.
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
            let mut l = 0.0;
            for ci in 0..c {
                let vals: Vec<f64> = (0..b).flat_map(|bi| x[(bi * c + ci) * hw..][..hw].to_vec()).collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|t| (t - m).powi(2)).sum::<f64>() / vals.len() as f64;
                for bi in 0..b {
                    for i in 0..hw {
                        let idx = (bi * c + ci) * hw + i;
                        l += r[idx] as f64 * (gamma[ci] * (x[idx] - m) / (v + BN_EPS as f64).sqrt() + beta[ci]);
                    }
                }
            }
            l
        };
        let (xd, gd, bd): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| v as f64).collect(),
            gamma.iter().map(|&v| v as f64).collect(),
            beta.iter().map(|&v| v as f64).collect(),
        );
        let h = 1e-6;
        let fd = |f: &dyn Fn(usize, f64) -> f64, i: usize| (f(i, h) - f(i, -h)) / (2.0 * h);

        let (mut rm, mut rv) = (vec![0.3f32; c], vec![2.0f32; c]);
        let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_train_cpu(&x, b, c, hw, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd);
        let (mut dx, mut dg, mut db) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_backward_cpu(&x, &r, b, c, hw, &gamma, &mean, &rstd, &mut dx, &mut dg, &mut db);

        for (i, &g) in dx.iter().enumerate() {
            let want = fd(
                &|j, e| {
                    let mut t = xd.clone();
                    t[j] += e;
                    loss(&t, &gd, &bd)
                },
                i,
            );
            assert!((g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dx[{i}] {g} vs {want}");
        }
        for i in 0..c {
            let want = fd(
                &|j, e| {
                    let mut t = gd.clone();
                    t[j] += e;
                    loss(&xd, &t, &bd)
                },
                i,
            );
            assert!((dg[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dgamma[{i}]");
            let want = fd(
                &|j, e| {
                    let mut t = bd.clone();
                    t[j] += e;
                    loss(&xd, &gd, &t)
                },
                i,
            );
            assert!((db[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dbeta[{i}]");
        }
        // Running statistics as torch: momentum 0.1 towards mean and unbiased variance.
        let n = (b * hw) as f64;
        for ci in 0..c {
            let vals: Vec<f64> = (0..b).flat_map(|bi| xd[(bi * c + ci) * hw..][..hw].to_vec()).collect();
            let m = vals.iter().sum::<f64>() / n;
            let v = vals.iter().map(|t| (t - m).powi(2)).sum::<f64>() / (n - 1.0);
            assert!((rm[ci] as f64 - (0.9 * 0.3 + 0.1 * m)).abs() < 1e-6);
            assert!((rv[ci] as f64 - (0.9 * 2.0 + 0.1 * v)).abs() < 1e-5);
        }
        // Eval with running stats equal to the batch's biased stats reproduces the train output.
        let var_b: Vec<f32> = rstd.iter().map(|r| 1.0 / (r * r) - BN_EPS).collect();
        let mut ye = vec![f32::NAN; x.len()];
        batch_norm_eval_cpu(&x, c, hw, &gamma, &beta, &mean, &var_b, &mut ye);
        for (a, b) in ye.iter().zip(&y) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
