//! Max pooling (NCHW) with padding, as torch.nn.MaxPool2d (padding counts as -inf; on ties the
//! first maximum in raster order wins, as torch's CPU kernel). The forward saves the argmax of
//! each window; the backward scatters the gradient to it.

use rayon::prelude::*;

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
        ((self.h + 2 * self.pad - self.kernel) / self.stride + 1, (self.w + 2 * self.pad - self.kernel) / self.stride + 1)
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
    dx.par_chunks_mut(s.h * s.w).zip(dy.par_chunks(ho * wo)).zip(argmax.par_chunks(ho * wo)).for_each(|((dxp, dyp), ap)| {
        dxp.fill(0.0);
        for (&g, &i) in dyp.iter().zip(ap) {
            dxp[i as usize] += g;
        }
    });
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
