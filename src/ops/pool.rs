//! Pooling: average pooling (kernel = stride, ModifiedResNet's anti-aliased downsampling) and
//! CLIP's attention pooling (one query: the mean token, over the positional-embedded grid).

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::gemm_packed::{Bias, Epilogue};
use crate::ops::matmul::LinearWeight;
use crate::ops::softmax::softmax_row;

/// y (B, C, H/k, W/k) = mean over k x k windows of x (B, C, H, W) (nn.AvgPool2d(k)).
pub fn avg_pool2d_cpu(x: &[f32], bc: usize, h: usize, w: usize, k: usize, y: &mut [f32]) {
    let (ho, wo) = (h / k, w / k);
    let inv = 1.0 / (k * k) as f32;
    y.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut s = 0.0f32;
                for ky in 0..k {
                    let row = &xp[(oy * k + ky) * w + ox * k..][..k];
                    s += row.iter().sum::<f32>();
                }
                yp[oy * wo + ox] = s * inv;
            }
        }
    });
    let _ = bc;
}

/// tokens (B, 1 + HW, C) of an attention pool, before its projections: the mean token, then the
/// grid channels-last, plus the positional embedding pos (1 + HW, C). x (B, C, HW).
pub fn attnpool_tokens_cpu(x: &[f32], b: usize, c: usize, hw: usize, pos: &[f32], tokens: &mut [f32]) {
    let t = hw + 1;
    tokens[..b * t * c].par_chunks_mut(t * c).enumerate().for_each(|(bi, tk)| {
        let xb = &x[bi * c * hw..(bi + 1) * c * hw];
        for ci in 0..c {
            let plane = &xb[ci * hw..(ci + 1) * hw];
            tk[ci] = plane.iter().sum::<f32>() / hw as f32;
            for (p, &v) in plane.iter().enumerate() {
                tk[(p + 1) * c + ci] = v;
            }
        }
        for (v, pv) in tk.iter_mut().zip(pos) {
            *v += pv;
        }
    });
}

/// CUDA launcher: kernels/pool.cu `avg_pool2d`. x (B, C, H, W) -> y (B, C, H/k, W/k), one
/// float dtype, as `avg_pool2d_cpu` (floor mode: trailing rows/columns that do not fill a window
/// are dropped).
pub fn avg_pool2d_cuda(gpu: &Gpu, x: &CudaTensor, k: usize, y: &mut CudaTensor) -> Result<()> {
    let xs = x.shape();
    if xs.len() != 4 || k == 0 || y.shape() != [xs[0], xs[1], xs[2] / k, xs[3] / k] {
        return Err(Error::Shape(format!("avg_pool2d_cuda: x {xs:?}, k = {k}, y {:?}", y.shape())));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("avg_pool2d_cuda: x is {:?}; expected a float dtype", x.dtype())));
    }
    y.expect_dtype(x.dtype(), "avg_pool2d_cuda output")?;
    let total = y.numel();
    if total == 0 {
        return Ok(());
    }
    let threads = 256u32;
    let blocks = u32::try_from(total.div_ceil(threads as usize))
        .map_err(|_| Error::Shape(format!("avg_pool2d_cuda: {total} outputs are too many for one launch")))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let name = format!("avg_pool2d_{}", x.dtype().suffix());
    gpu.launch(
        "pool",
        &name,
        cfg,
        &[x.arg(gpu), y.arg(gpu), KArg::I64(total as i64), to_i32(xs[2], "H")?, to_i32(xs[3], "W")?, to_i32(k, "k")?],
    )
}

/// CUDA launcher: kernels/pool.cu `attnpool_tokens`, as `attnpool_tokens_cpu`.
/// x (B, C, H, W) in a float dtype, pos (1 + H*W, C) f32, tokens (B, 1 + H*W, C) in x's dtype.
pub fn attnpool_tokens_cuda(gpu: &Gpu, x: &CudaTensor, pos: &CudaTensor, tokens: &mut CudaTensor) -> Result<()> {
    let xs = x.shape();
    let ok = xs.len() == 4 && xs[2] * xs[3] > 0;
    let (b, c, hw) = if ok { (xs[0], xs[1], xs[2] * xs[3]) } else { (0, 0, 0) };
    if !ok || pos.shape() != [hw + 1, c] || tokens.shape() != [b, hw + 1, c] {
        return Err(Error::Shape(format!(
            "attnpool_tokens_cuda: x {xs:?} (B, C, H, W), pos {:?} (1 + HW, C), tokens {:?} (B, 1 + HW, C)",
            pos.shape(),
            tokens.shape()
        )));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("attnpool_tokens_cuda: x is {:?}; expected a float dtype", x.dtype())));
    }
    pos.expect_dtype(DType::F32, "attnpool_tokens_cuda pos")?;
    tokens.expect_dtype(x.dtype(), "attnpool_tokens_cuda tokens")?;
    if b == 0 || c == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (
            c.div_ceil(32) as u32,
            u32::try_from(b).map_err(|_| Error::Shape(format!("attnpool_tokens_cuda: B = {b}")))?,
            1,
        ),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let name = format!("attnpool_tokens_{}", x.dtype().suffix());
    gpu.launch("pool", &name, cfg, &[x.arg(gpu), pos.arg(gpu), tokens.arg(gpu), to_i32(c, "C")?, to_i32(hw, "HW")?])
}

/// Kernel checks: ModifiedResNet-50's average pools at 224 batch 8 (stem, layer2..4 entries),
/// its attention-pool tokens (7x7 and 14x14 grids, C = 2048) and odd shapes; every dtype.
/// Inputs are rounded to the dtype before the CPU reference.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    // (B, C, H, W, k)
    for &(b, c, h, w, k) in &[
        (8usize, 64usize, 112usize, 112usize, 2usize),
        (8, 256, 56, 56, 2),
        (8, 1024, 14, 14, 2),
        (3, 5, 11, 9, 2),
        (2, 3, 10, 7, 3),
    ] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (ho, wo) = (h / k, w / k);
            let bytes = ((b * c * (h * w + ho * wo)) * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "avg_pool2d",
                format!("B={b} C={c} {h}x{w} k={k}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let xd = CudaTensor::from_f32(gpu, &[b, c, h, w], &random_vec(rng, b * c * h * w, 2.0), dtype)?;
                    let x = xd.to_f32_vec(gpu)?;
                    let mut want = vec![0.0; b * c * ho * wo];
                    avg_pool2d_cpu(&x, b * c, h, w, k, &mut want);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, c, ho, wo], dtype)?,
                        move |g, yd| avg_pool2d_cuda(g, &xd, k, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    // (B, C, H, W)
    for &(b, c, h, w) in &[(8usize, 2048usize, 7usize, 7usize), (8, 2048, 14, 14), (3, 37, 5, 9), (2, 70, 6, 6)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let hw = h * w;
            let bytes = ((b * c * hw + b * (hw + 1) * c) * dtype.size_in_bytes() + (hw + 1) * c * 4) as f64;
            checks.push(GpuCheck::new(
                "attnpool_tokens",
                format!("B={b} C={c} {h}x{w}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    // Offset inputs: the mean token must not be swamped by the positional term.
                    let xv: Vec<f32> = random_vec(rng, b * c * hw, 1.0).iter().map(|v| v + 0.5).collect();
                    let xd = CudaTensor::from_f32(gpu, &[b, c, h, w], &xv, dtype)?;
                    let pos = random_vec(rng, (hw + 1) * c, 0.5);
                    let pd = CudaTensor::from_f32(gpu, &[hw + 1, c], &pos, DType::F32)?;
                    let x = xd.to_f32_vec(gpu)?;
                    let mut want = vec![0.0; b * (hw + 1) * c];
                    attnpool_tokens_cpu(&x, b, c, hw, &pos, &mut want);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, hw + 1, c], dtype)?,
                        move |g, td| attnpool_tokens_cuda(g, &xd, &pd, td),
                        |g, td| max_rel_err_all(g, &[(td, &want)]),
                    )
                },
            ));
        }
    }
    checks
}

/// The weights of an attention pool.
pub struct AttnPoolWeights<'a> {
    /// (HW + 1, C): row 0 for the mean token.
    pub pos: &'a [f32],
    /// (C, C)
    pub q_w: &'a LinearWeight,
    pub q_b: &'a [f32],
    /// (C, C)
    pub k_w: &'a LinearWeight,
    pub k_b: &'a [f32],
    /// (C, C)
    pub v_w: &'a LinearWeight,
    pub v_b: &'a [f32],
    /// (D_out, C)
    pub c_w: &'a LinearWeight,
    pub c_b: &'a [f32],
    pub heads: usize,
}

/// out (B, D_out) = attention pool of x (B, C, HW) (NCHW features, flattened spatially).
pub fn attention_pool2d_cpu(x: &[f32], b: usize, c: usize, hw: usize, wt: &AttnPoolWeights, out: &mut [f32]) {
    let t = hw + 1;
    let mut tokens = vec![0.0f32; b * t * c];
    attnpool_tokens_cpu(x, b, c, hw, wt.pos, &mut tokens);
    let mut k = vec![0.0f32; b * t * c];
    let mut v = vec![0.0f32; b * t * c];
    let with_bias = |bias| Epilogue { bias: Bias::PerColumn(bias), ..Default::default() };
    wt.k_w.forward(&tokens, &mut k, &with_bias(wt.k_b));
    wt.v_w.forward(&tokens, &mut v, &with_bias(wt.v_b));
    let mean_tokens: Vec<f32> = tokens.chunks_exact(t * c).flat_map(|tk| tk[..c].to_vec()).collect();
    let mut q = vec![0.0f32; b * c];
    wt.q_w.forward(&mean_tokens, &mut q, &with_bias(wt.q_b));
    let dh = c / wt.heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut attended = vec![0.0f32; b * c];
    attended.par_chunks_mut(c).enumerate().for_each(|(bi, ab)| {
        let mut s = vec![0.0f32; t];
        for h in 0..wt.heads {
            let qh = &q[bi * c + h * dh..][..dh];
            for (j, sj) in s.iter_mut().enumerate() {
                let kj = &k[(bi * t + j) * c + h * dh..][..dh];
                *sj = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            softmax_row(&mut s);
            let dst = &mut ab[h * dh..(h + 1) * dh];
            dst.fill(0.0);
            for (j, &p) in s.iter().enumerate() {
                let vj = &v[(bi * t + j) * c + h * dh..][..dh];
                for (d, vv) in dst.iter_mut().zip(vj) {
                    *d += p * vv;
                }
            }
        }
    });
    wt.c_w.forward(&attended, out, &with_bias(wt.c_b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_pool_means_windows() {
        let x: Vec<f32> = (0..2 * 4 * 6).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; 2 * 2 * 3];
        avg_pool2d_cpu(&x, 2, 4, 6, 2, &mut y);
        // plane 0, window (0,0): 0, 1, 6, 7
        assert_eq!(y[0], 3.5);
        // plane 1, window (1,2): 24 + {16, 17, 22, 23}
        assert_eq!(y[11], 24.0 + 19.5);
    }

    #[test]
    fn attnpool_tokens_are_mean_then_grid_plus_pos() {
        let (b, c, hw) = (2usize, 3usize, 4usize);
        let x: Vec<f32> = (0..b * c * hw).map(|i| i as f32 * 0.25 - 2.0).collect();
        let pos: Vec<f32> = (0..(hw + 1) * c).map(|i| i as f32 * 0.1).collect();
        let mut t = vec![f32::NAN; b * (hw + 1) * c];
        attnpool_tokens_cpu(&x, b, c, hw, &pos, &mut t);
        for bi in 0..b {
            for ci in 0..c {
                let plane = &x[(bi * c + ci) * hw..][..hw];
                let mean = plane.iter().sum::<f32>() / hw as f32;
                assert!((t[bi * (hw + 1) * c + ci] - (mean + pos[ci])).abs() < 1e-6);
                for p in 0..hw {
                    assert_eq!(t[(bi * (hw + 1) + 1 + p) * c + ci], plane[p] + pos[(1 + p) * c + ci]);
                }
            }
        }
    }
}
