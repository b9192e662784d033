//! Pooling: average pooling (kernel = stride, ModifiedResNet's anti-aliased downsampling) and
//! CLIP's attention pooling (one query: the mean token, over the positional-embedded grid).

use rayon::prelude::*;

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
    // tokens (B, T, C): the mean token then the grid, plus the positional embedding.
    let mut tokens = vec![0.0f32; b * t * c];
    tokens.par_chunks_mut(t * c).enumerate().for_each(|(bi, tk)| {
        let xb = &x[bi * c * hw..(bi + 1) * c * hw];
        for ci in 0..c {
            let plane = &xb[ci * hw..(ci + 1) * hw];
            tk[ci] = plane.iter().sum::<f32>() / hw as f32;
            for (p, &v) in plane.iter().enumerate() {
                tk[(p + 1) * c + ci] = v;
            }
        }
        for (v, pv) in tk.iter_mut().zip(wt.pos) {
            *v += pv;
        }
    });
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
}
