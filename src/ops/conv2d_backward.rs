//! 2-D convolution backward (NCHW, no bias): the weight gradient dW = dY @ im2col(X)^T and the
//! data gradient dX = col2im(W^T @ dY), image by image, each a GEMM.

use crate::ops::conv2d::{im2col_rows, Conv2dShape};
use crate::ops::matmul::{gemm_cpu, MatRef};

/// dx (C_in, H, W) += col2im(cols (C_in*k*k, Ho*Wo)): the adjoint of `im2col_rows` over all rows.
fn col2im_add(cols: &[f32], s: &Conv2dShape, dx: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let k = s.kernel;
    let n = ho * wo;
    for ci in 0..s.c_in {
        let plane = &mut dx[ci * s.h * s.w..(ci + 1) * s.h * s.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * n..][..n];
                for oy in 0..ho {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * s.w..][..s.w];
                    for (ox, &g) in row[oy * wo..(oy + 1) * wo].iter().enumerate() {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        if ix >= 0 && ix < s.w as isize {
                            dst[ix as usize] += g;
                        }
                    }
                }
            }
        }
    }
}

/// Backward of y = conv(x, w) (no bias). `dw` (C_out, C_in, k, k) is accumulated into (so
/// two forward passes may share one gradient buffer); `dx` (B, C_in, H, W), when wanted, is
/// overwritten.
pub fn conv2d_backward_cpu(x: &[f32], w: &[f32], dy: &[f32], s: &Conv2dShape, dw: &mut [f32], mut dx: Option<&mut [f32]>) {
    let (ho, wo) = s.out_hw();
    let n = ho * wo;
    let kk = s.c_in * s.kernel * s.kernel;
    let direct = s.kernel == 1 && s.stride == 1 && s.pad == 0;
    let mut cols = if direct { Vec::new() } else { vec![0.0f32; kk * n] };
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(0.0);
    }
    for b in 0..s.batch {
        let xb = &x[b * s.c_in * s.h * s.w..][..s.c_in * s.h * s.w];
        let dyb = &dy[b * s.c_out * n..][..s.c_out * n];
        let xcols: &[f32] = if direct {
            xb
        } else {
            im2col_rows(xb, s, 0, s.out_hw().0, &mut cols);
            &cols
        };
        // SAFETY: dY_b (C_out x n) @ cols^T (n x kk) -> dw (C_out x kk), accumulated.
        unsafe {
            gemm_cpu(s.c_out, kk, n, MatRef::row_major(dyb, n), MatRef::transposed(xcols, n), dw.as_mut_ptr(), kk as isize, true, true);
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dxb = &mut dx[b * s.c_in * s.h * s.w..][..s.c_in * s.h * s.w];
            if direct {
                // SAFETY: W^T (C_in x C_out) @ dY_b (C_out x n) -> dx_b (C_in x n).
                unsafe {
                    gemm_cpu(kk, n, s.c_out, MatRef::transposed(w, kk), MatRef::row_major(dyb, n), dxb.as_mut_ptr(), n as isize, false, true);
                }
            } else {
                // SAFETY: W^T (kk x C_out) @ dY_b (C_out x n) -> cols (kk x n).
                unsafe {
                    gemm_cpu(kk, n, s.c_out, MatRef::transposed(w, kk), MatRef::row_major(dyb, n), cols.as_mut_ptr(), n as isize, false, true);
                }
                col2im_add(&cols, s, dxb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::conv2d_cpu;
    use rand::{Rng, SeedableRng};

    /// The definition: dw and dx as sums over every output, in f64.
    fn naive(x: &[f32], w: &[f32], dy: &[f32], s: &Conv2dShape) -> (Vec<f64>, Vec<f64>) {
        let (ho, wo) = s.out_hw();
        let k = s.kernel;
        let mut dw = vec![0.0f64; w.len()];
        let mut dx = vec![0.0f64; x.len()];
        for b in 0..s.batch {
            for co in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let g = dy[((b * s.c_out + co) * ho + oy) * wo + ox] as f64;
                        for ci in 0..s.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                        continue;
                                    }
                                    let xi = ((b * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize;
                                    let wi = ((co * s.c_in + ci) * k + ky) * k + kx;
                                    dw[wi] += g * x[xi] as f64;
                                    dx[xi] += g * w[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (dw, dx)
    }

    #[test]
    fn conv2d_backward_matches_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(batch, c_in, h, w, c_out, kernel, stride, pad) in &[
            (2, 3, 9, 7, 4, 7, 2, 3),
            (3, 5, 8, 8, 6, 3, 1, 1),
            (2, 4, 9, 9, 5, 3, 2, 1),
            (2, 6, 5, 5, 3, 1, 1, 0),
            (2, 6, 7, 6, 3, 1, 2, 0),
        ] {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let (ho, wo) = s.out_hw();
            let x: Vec<f32> = (0..batch * c_in * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let wt: Vec<f32> = (0..c_out * c_in * kernel * kernel).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let dy: Vec<f32> = (0..batch * c_out * ho * wo).map(|_| rng.gen_range(-1.0..1.0)).collect();
            // The forward still agrees with the shape (sanity of the test's shapes).
            let mut y = vec![f32::NAN; dy.len()];
            conv2d_cpu(&x, &wt, None, &s, false, false, &mut y);
            assert!(y.iter().all(|v| v.is_finite()));
            let (want_dw, want_dx) = naive(&x, &wt, &dy, &s);
            let mut dw = vec![0.5f32; wt.len()];
            let mut dx = vec![f32::NAN; x.len()];
            conv2d_backward_cpu(&x, &wt, &dy, &s, &mut dw, Some(&mut dx));
            for (a, b) in dw.iter().zip(&want_dw) {
                let b = b + 0.5; // accumulated onto what dw held
                assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} dw: {a} vs {b}");
            }
            for (a, b) in dx.iter().zip(&want_dx) {
                assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} dx: {a} vs {b}");
            }
        }
    }
}
