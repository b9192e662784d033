//! TagCLIP's DMAR (dense multi-layer attention refinement) as ops: the attention weights W
//! from a ViT's per-layer head-averaged maps (vote mask times layer mean), and the propagation
//! of patch class probabilities through W, optionally through per-class box masks. The CPU
//! functions are the references (and what src/methods/tagclip/stages.rs runs); the CUDA
//! launchers (kernels/dmar.cu) keep TagCLIP's maps on the device.

use std::ops::Range;

use rayon::prelude::*;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{expect_f32, grid_stride_config, to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::matmul::{gemm_cpu, MatRef};

/// W (N x N) of ONE image from its per-layer head-averaged maps, each (T, T) with T = N + 1
/// (CLS first): the patch-to-patch parts A_l, theta_l = mean(A_l) (summed in f64), the vote
/// mask M(i, j) = [#{l : A_l(i, j) > theta_l} >= vote_min], and W = M * mean of A_l over the
/// layers `refine` (a sequential f32 sum then a division, as torch.mean over stacked layers).
pub fn dmar_weights_cpu(maps: &[&[f32]], t: usize, vote_min: usize, refine: Range<usize>) -> Vec<f32> {
    let n = t - 1;
    let layers = maps.len();
    let patch = |l: usize, i: usize, j: usize| maps[l][(i + 1) * t + j + 1];
    let thetas: Vec<f32> = (0..layers)
        .map(|l| {
            let mut s = 0.0f64;
            for i in 0..n {
                for j in 0..n {
                    s += patch(l, i, j) as f64;
                }
            }
            (s / (n * n) as f64) as f32
        })
        .collect();
    let count = refine.len() as f32;
    let mut w = vec![0.0f32; n * n];
    w.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, out) in row.iter_mut().enumerate() {
            let votes = (0..layers).filter(|&l| patch(l, i, j) > thetas[l]).count();
            if votes >= vote_min {
                let mut s = 0.0f32;
                for l in refine.clone() {
                    s += patch(l, i, j);
                }
                *out = s / count;
            }
        }
    });
    w
}

/// out (N x C) = W (N x N) @ P', P' = P (N x C) with the entries where `mask` is false set to 0
/// (no mask: P itself).
pub fn dmar_propagate_cpu(w: &[f32], p: &[f32], mask: Option<&[bool]>, n: usize, c: usize) -> Vec<f32> {
    assert!(w.len() == n * n && p.len() == n * c && mask.is_none_or(|m| m.len() == n * c));
    let masked: Vec<f32>;
    let src = match mask {
        Some(m) => {
            masked = p.iter().zip(m).map(|(&v, &keep)| if keep { v } else { 0.0 }).collect();
            &masked
        }
        None => p,
    };
    let mut out = vec![0.0f32; n * c];
    // SAFETY: the views cover exactly w (n x n), src (n x c) and out (n x c).
    unsafe {
        gemm_cpu(
            n,
            c,
            n,
            MatRef::row_major(w, n),
            MatRef::row_major(src, c),
            out.as_mut_ptr(),
            c as isize,
            false,
            true,
        );
    }
    out
}

/// CUDA twin of `dmar_weights_cpu` for a batch: maps[l] (B, T, T) f32, one tensor per layer
/// (as the CUDA transformer records them); w (B, N, N) f32 written. Per layer, a block per
/// image takes the mean (f64), then one pass adds that layer's votes and (in `refine`) its
/// values; a last pass divides.
pub fn dmar_weights_cuda(
    gpu: &Gpu,
    maps: &[CudaTensor],
    vote_min: usize,
    refine: Range<usize>,
    w: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "dmar_weights_cuda";
    let Some(first) = maps.first() else {
        return Err(Error::Shape(format!("{WHAT}: no attention maps")));
    };
    let &[b, t, t2] = first.shape() else {
        return Err(Error::Shape(format!("{WHAT}: maps {:?}, expected (B, T, T)", first.shape())));
    };
    if t != t2
        || t < 2
        || maps.iter().any(|m| m.shape() != first.shape())
        || refine.end > maps.len()
        || refine.is_empty()
    {
        return Err(Error::Shape(format!(
            "{WHAT}: {} maps of {:?}, refine layers {refine:?}",
            maps.len(),
            first.shape()
        )));
    }
    let n = t - 1;
    if w.shape() != [b, n, n] {
        return Err(Error::Shape(format!("{WHAT}: w {:?}, expected [{b}, {n}, {n}]", w.shape())));
    }
    let refs: Vec<&CudaTensor> = maps.iter().chain([&*w]).collect();
    expect_f32(WHAT, &refs)?;
    let total = b * n * n;
    let theta = CudaTensor::empty(gpu, &[b], DType::F32)?;
    let votes = CudaTensor::empty(gpu, &[b, n, n], DType::I32)?;
    let sum = CudaTensor::empty(gpu, &[b, n, n], DType::F32)?;
    let ti = to_i32(t, "T")?;
    let mean_cfg =
        cudarc::driver::LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    for (l, map) in maps.iter().enumerate() {
        gpu.launch("dmar", "dmar_layer_mean_f32", mean_cfg, &[map.arg(gpu), theta.arg(gpu), ti])?;
        let args = [
            map.arg(gpu),
            theta.arg(gpu),
            votes.arg(gpu),
            sum.arg(gpu),
            ti,
            (refine.contains(&l) as i32).into(),
            ((l == 0) as i32).into(),
            (total as i64).into(),
        ];
        gpu.launch("dmar", "dmar_vote_accumulate_f32", grid_stride_config(total), &args)?;
    }
    let args = [
        votes.arg(gpu),
        sum.arg(gpu),
        w.arg(gpu),
        to_i32(vote_min, "vote_min")?,
        (refine.len() as f32).into(),
        (total as i64).into(),
    ];
    // theta, votes and sum are freed in stream order, after these launches.
    gpu.launch("dmar", "dmar_weights_finalize_f32", grid_stride_config(total), &args)
}

/// CUDA twin of `dmar_propagate_cpu` for a batch: w (B, N, N); p (B, R, C) f32 whose rows
/// `p_row0 .. p_row0 + N` are the patches (TagCLIP's probabilities of all T tokens: R = T,
/// p_row0 = 1); mask (B, N, C) u8 (0 = drop) or None; out (B, N, C) f32 written.
pub fn dmar_propagate_cuda(
    gpu: &Gpu,
    w: &CudaTensor,
    p: &CudaTensor,
    p_row0: usize,
    mask: Option<&CudaTensor>,
    out: &mut CudaTensor,
) -> Result<()> {
    const WHAT: &str = "dmar_propagate_cuda";
    let (&[b, n, n2], &[pb, rows, c]) = (w.shape(), p.shape()) else {
        return Err(Error::Shape(format!("{WHAT}: w {:?}, p {:?}", w.shape(), p.shape())));
    };
    if n != n2
        || pb != b
        || p_row0 + n > rows
        || out.shape() != [b, n, c]
        || mask.is_some_and(|m| m.shape() != [b, n, c])
    {
        return Err(Error::Shape(format!(
            "{WHAT}: w {:?}, p {:?} from row {p_row0}, mask {:?}, out {:?}",
            w.shape(),
            p.shape(),
            mask.map(|m| m.shape().to_vec()),
            out.shape()
        )));
    }
    expect_f32(WHAT, &[w, p, out])?;
    if let Some(m) = mask {
        m.expect_dtype(DType::U8, &format!("{WHAT} mask"))?;
    }
    const TILE: usize = 32;
    let cfg = cudarc::driver::LaunchConfig {
        grid_dim: (c.div_ceil(TILE) as u32, n.div_ceil(TILE) as u32, b as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        w.arg(gpu),
        p.arg(gpu),
        mask.map_or(crate::device::cuda::KArg::Ptr(0), |m| m.arg(gpu)),
        out.arg(gpu),
        to_i32(n, "N")?,
        to_i32(c, "C")?,
        to_i32(rows, "rows")?,
        to_i32(p_row0, "first row")?,
    ];
    gpu.launch("dmar", "dmar_propagate_f32", cfg, &args)
}

/// Random head-averaged attention maps: rows of softmax(scale * noise), (T, T) each.
pub fn random_attention_maps(rng: &mut rand::rngs::StdRng, layers: usize, b: usize, t: usize) -> Vec<Vec<f32>> {
    (0..layers)
        .map(|_| {
            let mut m = random_vec(rng, b * t * t, 4.0);
            m.chunks_mut(t).for_each(crate::ops::softmax::softmax_row);
            m
        })
        .collect()
}

/// Kernel checks: W for ViT-B/16 at 224 (T = 197) and at a COCO photo's 480 x 640 (T = 1201),
/// batch 2, 12 layers, vote_min 4 over layers 0..12 (the official setting) and an odd range;
/// the propagation with and without a mask over 80 + 23 classes, and odd sizes.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let f32 = DType::F32;
    let mut checks = Vec::new();
    for &(b, t, vote_min, r0, r1) in
        &[(2usize, 197usize, 4usize, 0usize, 12usize), (2, 1201, 4, 0, 12), (3, 37, 7, 3, 11)]
    {
        let (n, layers) = (t - 1, 12usize);
        let shape = format!("B={b} T={t} L={layers} vote_min={vote_min} refine={r0}..{r1}");
        let bytes = (layers * b * t * t * 4 * 3 + b * n * n * 4) as f64;
        checks.push(GpuCheck::new("dmar_weights", shape, f32, Work::Bytes(bytes), move |gpu, rng| {
            let maps = random_attention_maps(rng, layers, b, t);
            let mut want = Vec::with_capacity(b * n * n);
            for bi in 0..b {
                let per: Vec<&[f32]> = maps.iter().map(|m| &m[bi * t * t..(bi + 1) * t * t]).collect();
                want.extend(dmar_weights_cpu(&per, t, vote_min, r0..r1));
            }
            let dmaps =
                maps.iter().map(|m| CudaTensor::from_f32(gpu, &[b, t, t], m, f32)).collect::<Result<Vec<_>>>()?;
            launch_and_compare(
                gpu,
                poisoned(gpu, &[b, n, n], f32)?,
                move |g, w| dmar_weights_cuda(g, &dmaps, vote_min, r0..r1, w),
                |g, w| max_rel_err_all(g, &[(w, &want)]),
            )
        }));
    }
    for &(b, n, c, masked) in
        &[(2usize, 1200usize, 103usize, false), (2, 1200, 103, true), (4, 196, 103, true), (3, 45, 7, true)]
    {
        let shape = format!("B={b} N={n} C={c} mask={masked}");
        let flops = (2 * b * n * n * c) as f64;
        checks.push(GpuCheck::new("dmar_propagate", shape, f32, Work::Flops(flops), move |gpu, rng| {
            let t = n + 1;
            let w = random_vec(rng, b * n * n, 1.0);
            let p = random_vec(rng, b * t * c, 1.0);
            let mask: Vec<bool> = random_vec(rng, b * n * c, 1.0).iter().map(|&v| v > 0.0).collect();
            let mut want = Vec::with_capacity(b * n * c);
            for bi in 0..b {
                let pp = &p[(bi * t + 1) * c..(bi + 1) * t * c];
                let m = masked.then(|| &mask[bi * n * c..(bi + 1) * n * c]);
                want.extend(dmar_propagate_cpu(&w[bi * n * n..(bi + 1) * n * n], pp, m, n, c));
            }
            let wd = CudaTensor::from_f32(gpu, &[b, n, n], &w, f32)?;
            let pd = CudaTensor::from_f32(gpu, &[b, t, c], &p, f32)?;
            let md = if masked {
                Some(CudaTensor::from_u8(gpu, &[b, n, c], &mask.iter().map(|&k| k as u8).collect::<Vec<_>>())?)
            } else {
                None
            };
            launch_and_compare(
                gpu,
                poisoned(gpu, &[b, n, c], f32)?,
                move |g, out| dmar_propagate_cuda(g, &wd, &pd, 1, md.as_ref(), out),
                |g, out| max_rel_err_all(g, &[(out, &want)]),
            )
        }));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W against its definition written out on a 3-patch image with two layers.
    #[test]
    fn weights_follow_the_definition() {
        let t = 4;
        let a: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        let bm: Vec<f32> = (0..16).map(|i| (i as f32 * 0.91).cos().abs()).collect();
        let w = dmar_weights_cpu(&[&a, &bm], t, 2, 0..2);
        let patch = |m: &[f32], i: usize, j: usize| m[(i + 1) * t + j + 1];
        let mean = |m: &[f32]| {
            (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).map(|(i, j)| patch(m, i, j) as f64).sum::<f64>() as f32
                / 9.0
        };
        let (ta, tb) = (mean(&a), mean(&bm));
        for i in 0..3 {
            for j in 0..3 {
                let both = patch(&a, i, j) > ta && patch(&bm, i, j) > tb;
                let want = if both { (patch(&a, i, j) + patch(&bm, i, j)) / 2.0 } else { 0.0 };
                assert!((w[i * 3 + j] - want).abs() < 1e-7, "({i}, {j}): {} vs {want}", w[i * 3 + j]);
            }
        }
    }

    #[test]
    fn propagate_masks_then_multiplies() {
        let w = [1.0, 2.0, 0.5, -1.0];
        let p = [1.0, 10.0, 3.0, 30.0];
        let out = dmar_propagate_cpu(&w, &p, Some(&[true, false, true, true]), 2, 2);
        assert_eq!(out, vec![1.0 + 6.0, 60.0, 0.5 - 3.0, -30.0]);
        assert_eq!(dmar_propagate_cpu(&w, &p, None, 2, 2), vec![7.0, 70.0, -2.5, -25.0]);
    }
}
