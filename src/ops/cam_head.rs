//! The classifier heads on the final feature map F (B, K, HW).
//!
//! CAM head (CCD): cam = W (C x K) @ F_b + b, a 1x1 convolution with bias; the positive part
//! is multiplied by alpha; logits = global average pool of the CAM.
//! Linear head: logits = W @ mean_hw(F_b) + b.

use crate::ops::gap::{global_avg_pool_backward_cpu, global_avg_pool_cpu};
use crate::ops::matmul::{gemm_cpu, linear_cpu, MatRef};

/// cam (B, C, HW) holds the boosted CAM; logits (B, C) its spatial means.
#[allow(clippy::too_many_arguments)]
pub fn cam_head_cpu(f: &[f32], b: usize, k: usize, hw: usize, w: &[f32], bias: &[f32], alpha: f32, cam: &mut [f32], logits: &mut [f32]) {
    let c = bias.len();
    for bi in 0..b {
        let camb = &mut cam[bi * c * hw..][..c * hw];
        // SAFETY: W (C x K) @ F_b (K x HW) -> cam_b (C x HW).
        unsafe {
            gemm_cpu(c, hw, k, MatRef::row_major(w, k), MatRef::row_major(&f[bi * k * hw..][..k * hw], hw), camb.as_mut_ptr(), hw as isize, false, true);
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
            gemm_cpu(c, k, hw, MatRef::row_major(&dcam, hw), MatRef::transposed(fb, hw), dw.as_mut_ptr(), k as isize, true, true);
            gemm_cpu(k, hw, c, MatRef::transposed(w, k), MatRef::row_major(&dcam, hw), df[bi * k * hw..].as_mut_ptr(), hw as isize, false, true);
        }
    }
}

/// Linear head: pooled (B, K) = mean_hw F, logits (B, C) = pooled @ W^T + b.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_cpu(f: &[f32], b: usize, k: usize, hw: usize, w: &[f32], bias: &[f32], pooled: &mut [f32], logits: &mut [f32]) {
    debug_assert_eq!(pooled.len(), b * k);
    global_avg_pool_cpu(f, hw, pooled);
    linear_cpu(pooled, w, Some(bias), logits, k, false);
}

/// Backward of `linear_head_cpu`: dw, dbias accumulated, df overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_head_backward_cpu(pooled: &[f32], b: usize, k: usize, hw: usize, w: &[f32], dlogits: &[f32], dw: &mut [f32], dbias: &mut [f32], df: &mut [f32]) {
    let c = dbias.len();
    let mut dpooled = vec![0.0f32; b * k];
    // SAFETY: dlogits^T (C x B) @ pooled (B x K) -> dw (C x K), accumulated; dlogits (B x C) @
    // W (C x K) -> dpooled (B x K).
    unsafe {
        gemm_cpu(c, k, b, MatRef::transposed(dlogits, c), MatRef::row_major(pooled, k), dw.as_mut_ptr(), k as isize, true, true);
        gemm_cpu(b, k, c, MatRef::row_major(dlogits, c), MatRef::row_major(w, k), dpooled.as_mut_ptr(), k as isize, false, true);
    }
    for row in dlogits.chunks_exact(c) {
        for (d, &g) in dbias.iter_mut().zip(row) {
            *d += g;
        }
    }
    global_avg_pool_backward_cpu(&dpooled, hw, df, false);
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
            let (fd, wd, bd): (Vec<f64>, Vec<f64>, Vec<f64>) =
                (f.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect(), bias.iter().map(|&v| v as f64).collect());
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
                    assert!((got[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name}[{i}] cam={cam_head}: {} vs {want}", got[i]);
                }
            };
            check("df", &df, &fd, 0);
            check("dw", &dw, &wd, 1);
            check("dbias", &db, &bd, 2);
        }
    }
}
