//! Losses with their gradients, fused: BCE-with-logits against soft targets with per-sample
//! weights (mean over B x C, as torch's `BCEWithLogitsLoss(reduction='none')` times w, then
//! `.mean()`), and CCD's consistency loss (BCE of one view's logits against the other view's
//! detached sigmoid).

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{max_rel_err, max_rel_err_all, random_vec, CheckRun, GpuCheck, Work};
use crate::device::cuda::{expect_f32, to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};

/// log(1 + exp(-|x|)) + max(x, 0) - x*y: torch's stable form, per element.
#[inline]
fn bce_elem(x: f32, y: f32) -> f64 {
    let (x, y) = (x as f64, y as f64);
    (1.0 + (-x.abs()).exp()).ln() + x.max(0.0) - x * y
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// loss = mean_{i,c} w_i * BCE(logits_ic, targets_ic); dlogits (B, C) gets the gradient of
/// `scale * loss` added (so several losses can sum into one buffer). `weights` None = all ones.
pub fn bce_with_logits_cpu(
    logits: &[f32],
    targets: &[f32],
    weights: Option<&[f32]>,
    c: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> f32 {
    let n = logits.len();
    let mut total = 0.0f64;
    for (i, ((&x, &y), d)) in logits.iter().zip(targets).zip(dlogits.iter_mut()).enumerate() {
        let w = weights.map_or(1.0, |w| w[i / c]);
        total += w as f64 * bce_elem(x, y);
        *d += scale * w * (sigmoid(x) - y) / n as f32;
    }
    (total / n as f64) as f32
}

/// CCD's consistency loss: mean BCE(logits_b, sigmoid(logits_a)) with logits_a detached; the
/// gradient of `scale * loss` is added to dlogits_b only.
pub fn consistency_bce_cpu(logits_a: &[f32], logits_b: &[f32], c: usize, scale: f32, dlogits_b: &mut [f32]) -> f32 {
    let targets: Vec<f32> = logits_a.iter().map(|&x| sigmoid(x)).collect();
    bce_with_logits_cpu(logits_b, &targets, None, c, scale, dlogits_b)
}

/// f32 elements of the workspace the CUDA losses need: one partial sum per block of the first
/// pass (kernels/bce.cu), at most this many blocks.
pub const LOSS_WORKSPACE_LEN: usize = 64;

/// Shared launcher of the two losses: `targets` are probabilities, or logits whose sigmoid is
/// the target (`targets_are_logits`, the consistency loss).
#[allow(clippy::too_many_arguments)]
fn bce_launch(
    what: &str,
    gpu: &Gpu,
    logits: &CudaTensor,
    targets: &CudaTensor,
    targets_are_logits: bool,
    weights: Option<&CudaTensor>,
    scale: f32,
    dlogits: &mut CudaTensor,
    loss: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    let s = logits.shape();
    let weights_ok = s.len() == 2 && weights.is_none_or(|w| w.shape() == [s[0]]);
    if s.len() != 2
        || logits.numel() == 0
        || targets.shape() != s
        || dlogits.shape() != s
        || loss.numel() != 1
        || !weights_ok
    {
        return Err(Error::Shape(format!(
            "{what}: logits {s:?}, targets {:?}, weights {:?}, dlogits {:?}, loss {:?} (expected (B, C), (B, C), (B), (B, C), (1))",
            targets.shape(),
            weights.map(|w| w.shape().to_vec()),
            dlogits.shape(),
            loss.shape()
        )));
    }
    if workspace.numel() < LOSS_WORKSPACE_LEN {
        return Err(Error::Shape(format!(
            "{what}: workspace of {} f32, needs {LOSS_WORKSPACE_LEN}",
            workspace.numel()
        )));
    }
    expect_f32(what, &[logits, targets, dlogits, loss, workspace])?;
    if let Some(w) = weights {
        expect_f32(what, &[w])?;
    }
    let n = logits.numel();
    // A fixed grid for a given n: the partials, and so the loss, are the same on every run.
    let blocks = n.div_ceil(256).min(LOSS_WORKSPACE_LEN);
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let args = [
        logits.arg(gpu),
        targets.arg(gpu),
        weights.map_or(KArg::Ptr(0), |w| w.arg(gpu)),
        (targets_are_logits as i32).into(),
        to_i32(n, "B*C")?,
        to_i32(s[1], "C")?,
        scale.into(),
        dlogits.arg(gpu),
        workspace.arg(gpu),
    ];
    gpu.launch("bce", "bce_with_logits_partial_f32", cfg, &args)?;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (64, 1, 1), shared_mem_bytes: 0 };
    let args = [workspace.arg(gpu), to_i32(blocks, "blocks")?, (1.0f32 / n as f32).into(), loss.arg(gpu)];
    gpu.launch("bce", "loss_finalize_f32", cfg, &args)
}

/// CUDA twin of `bce_with_logits_cpu` (kernels/bce.cu, f32): logits, targets, dlogits (B, C),
/// weights (B) or None; loss (1,) written on the device (no host sync), dlogits += the
/// gradient of `scale * loss`. `workspace`: at least LOSS_WORKSPACE_LEN f32.
#[allow(clippy::too_many_arguments)]
pub fn bce_with_logits_cuda(
    gpu: &Gpu,
    logits: &CudaTensor,
    targets: &CudaTensor,
    weights: Option<&CudaTensor>,
    scale: f32,
    dlogits: &mut CudaTensor,
    loss: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    bce_launch("bce_with_logits_cuda", gpu, logits, targets, false, weights, scale, dlogits, loss, workspace)
}

/// CUDA twin of `consistency_bce_cpu` (f32): BCE of logits_b against sigmoid(logits_a), the
/// gradient of `scale * loss` added to dlogits_b; loss (1,) written.
pub fn consistency_bce_cuda(
    gpu: &Gpu,
    logits_a: &CudaTensor,
    logits_b: &CudaTensor,
    scale: f32,
    dlogits_b: &mut CudaTensor,
    loss: &mut CudaTensor,
    workspace: &mut CudaTensor,
) -> Result<()> {
    bce_launch("consistency_bce_cuda", gpu, logits_b, logits_a, true, None, scale, dlogits_b, loss, workspace)
}

/// Kernel checks: the trainer's batch (64 x 80 COCO classes, 64 x 20 VOC), a large batch that
/// needs every partial block, and an odd small one; weighted, unweighted and consistency.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(b, c) in &[(64usize, 80usize), (64, 20), (1024, 80), (3, 7)] {
        let n = b * c;
        let f32 = DType::F32;
        for (variant, weighted) in [("bce_with_logits", true), ("bce_with_logits", false), ("consistency_bce", false)] {
            let shape = format!("B={b} C={c}{}", if weighted { " weighted" } else { "" });
            let op: &'static str = variant;
            checks.push(GpuCheck::new(op, shape, f32, Work::Bytes((n * 16) as f64), move |gpu, rng| {
                let logits = random_vec(rng, n, 6.0);
                let consistency = op == "consistency_bce";
                // Soft targets in [0, 1], or the other view's logits.
                let targets: Vec<f32> = if consistency {
                    random_vec(rng, n, 6.0)
                } else {
                    random_vec(rng, n, 0.5).iter().map(|v| v + 0.5).collect()
                };
                let weights: Vec<f32> = random_vec(rng, b, 0.5).iter().map(|v| v + 1.0).collect();
                // Gradient already in dlogits, of the size of this loss's own (scale / n).
                let d0 = random_vec(rng, n, 1.0 / n as f32);
                let (scale, mut d) = (1.5f32, d0.clone());
                let loss = if consistency {
                    consistency_bce_cpu(&targets, &logits, c, scale, &mut d)
                } else {
                    bce_with_logits_cpu(&logits, &targets, weighted.then_some(&weights[..]), c, scale, &mut d)
                };
                let up = |v: &[f32], s: &[usize]| CudaTensor::from_f32(gpu, s, v, f32);
                let (ld, td, wd, mut dd) =
                    (up(&logits, &[b, c])?, up(&targets, &[b, c])?, up(&weights, &[b])?, up(&d0, &[b, c])?);
                let mut lossd = CudaTensor::empty(gpu, &[1], f32)?;
                let mut ws = CudaTensor::empty(gpu, &[LOSS_WORKSPACE_LEN], f32)?;
                lossd.poison(gpu)?;
                ws.poison(gpu)?;
                let g = gpu.clone();
                let launch = move |dd: &mut CudaTensor, lossd: &mut CudaTensor, ws: &mut CudaTensor| {
                    if consistency {
                        consistency_bce_cuda(&g, &td, &ld, scale, dd, lossd, ws)
                    } else {
                        bce_with_logits_cuda(&g, &ld, &td, weighted.then_some(&wd), scale, dd, lossd, ws)
                    }
                };
                launch(&mut dd, &mut lossd, &mut ws)?;
                let err = max_rel_err_all(gpu, &[(&dd, &d)])?.max(max_rel_err(&lossd.to_f32_vec(gpu)?, &[loss]));
                Ok(CheckRun {
                    max_rel_err: err,
                    launch: Box::new(move || launch(&mut dd, &mut lossd, &mut ws)),
                    cublas: None,
                })
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_value_and_gradient() {
        let logits = [0.3f32, -2.0, 5.0, -40.0, 1.5, 0.0];
        let targets = [0.2f32, 0.9, 1.0, 0.0, 0.5, 0.7];
        let weights = [0.5f32, 2.0];
        let c = 3;
        // The definition: -(y log s + (1-y) log(1-s)), weighted, averaged over 6 elements.
        let mut want = 0.0f64;
        for i in 0..6 {
            let s = 1.0 / (1.0 + (-(logits[i] as f64)).exp());
            let y = targets[i] as f64;
            let l = -(y * s.ln() + (1.0 - y) * (1.0 - s).max(1e-300).ln());
            want += weights[i / c] as f64 * l;
        }
        want /= 6.0;
        let mut d = [1.0f32; 6];
        let got = bce_with_logits_cpu(&logits, &targets, Some(&weights), c, 2.0, &mut d);
        assert!((got as f64 - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
        for i in 0..6 {
            let s = 1.0 / (1.0 + (-(logits[i] as f64)).exp());
            let g = 1.0 + 2.0 * weights[i / c] as f64 * (s - targets[i] as f64) / 6.0;
            assert!((d[i] as f64 - g).abs() < 1e-6, "d[{i}] {} vs {g}", d[i]);
        }
        // Consistency: the target is the other view's sigmoid.
        let a = [0.0f32, 1.0, -1.0];
        let b = [0.0f32, 1.0, -1.0];
        let mut db = [0.0f32; 3];
        consistency_bce_cpu(&a, &b, 3, 1.0, &mut db);
        assert!(db.iter().all(|g| g.abs() < 1e-7), "same logits: zero gradient");
    }
}
