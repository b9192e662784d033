//! 2-D convolution (NCHW) as im2col + GEMM, with the folded-batch-norm bias and ReLU fused
//! into its epilogue; and the ViT patch embedding (a stride = kernel convolution written
//! straight into token layout).

use rayon::prelude::*;

use crate::ops::gemm_packed::{gemm_packed_a_cpu, packed_gemm_available, Bias, Epilogue, PackedA};
use crate::ops::matmul::{gemm_cpu, LinearWeight, MatRef};

/// Size of one band of the im2col matrix (1 MiB of f32): about an L2 cache.
const IM2COL_BAND_FLOATS: usize = 1 << 18;

#[derive(Clone, Copy, Debug)]
pub struct Conv2dShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dShape {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.kernel) / self.stride + 1,
            (self.w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
    }
}

/// cols (C_in*k*k, (oy1-oy0)*Wo): the im2col matrix of output rows oy0..oy1 of one image.
pub(crate) fn im2col_rows(x: &[f32], s: &Conv2dShape, oy0: usize, oy1: usize, cols: &mut [f32]) {
    let (_, wo) = s.out_hw();
    let n = (oy1 - oy0) * wo;
    let k = s.kernel;
    for ci in 0..s.c_in {
        let plane = &x[ci * s.h * s.w..(ci + 1) * s.h * s.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * n..][..n];
                for oy in oy0..oy1 {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    let dst = &mut row[(oy - oy0) * wo..(oy - oy0 + 1) * wo];
                    if iy < 0 || iy >= s.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    if s.stride == 1 {
                        // Valid output columns are one contiguous run: copy it, zero the edges.
                        let lo = s.pad.saturating_sub(kx).min(wo);
                        let hi = (s.w + s.pad).saturating_sub(kx).min(wo).max(lo);
                        dst[..lo].fill(0.0);
                        if hi > lo {
                            let start = lo + kx - s.pad;
                            dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                        }
                        dst[hi..].fill(0.0);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            *d = if ix < 0 || ix >= s.w as isize { 0.0 } else { src[ix as usize] };
                        }
                    }
                }
            }
        }
    }
}

/// y (B, C_out, Ho, Wo) = [y +] conv(x (B, C_in, H, W), w (C_out, C_in, k, k)) + bias, then
/// ReLU. With `accumulate` the convolution is added to what y holds: a bottleneck's residual
/// add, fused into the GEMM.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_cpu(x: &[f32], w: &[f32], bias: Option<&[f32]>, s: &Conv2dShape, relu: bool, accumulate: bool, y: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let kk = s.c_in * s.kernel * s.kernel;
    // SAFETY (gemm): w (C_out x kk) @ b (kk x n, row stride b_rs) -> c (C_out x n, row stride
    // Ho*Wo), the views `conv2d_bands` hands over.
    let gemm = |b: *const f32, b_rs: usize, n: usize, c: *mut f32, parallel: bool| unsafe {
        gemm_cpu(s.c_out, n, kk, MatRef::row_major(w, kk), MatRef { ptr: b, rs: b_rs as isize, cs: 1 }, c, (ho * wo) as isize, accumulate, parallel);
    };
    let epilogue = |yb: &mut [f32]| {
        for (co, plane) in yb.chunks_exact_mut(ho * wo).enumerate() {
            let bv = bias.map_or(0.0, |b| b[co]);
            if relu {
                plane.iter_mut().for_each(|v| *v = (*v + bv).max(0.0));
            } else if bv != 0.0 {
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
    };
    conv2d_bands(x, s, y, gemm, epilogue);
}

/// A convolution's filters (C_out, C_in, k, k) held the way the CPU multiplies fastest:
/// packed once for the packed GEMM (`ops::gemm_packed`, bias, ReLU and residual fused into
/// its store) when the CPU has AVX2 and FMA, else as is for `conv2d_cpu`.
pub enum ConvWeight {
    Packed(PackedA),
    Plain(Vec<f32>),
}

impl ConvWeight {
    /// w (C_out, C_in * k * k), row-major.
    pub fn new(w: Vec<f32>, c_out: usize, kk: usize) -> ConvWeight {
        if packed_gemm_available() {
            ConvWeight::Packed(PackedA::from_row_major(&w, c_out, kk))
        } else {
            ConvWeight::Plain(w)
        }
    }
}

/// `conv2d_cpu` with the filters as a `ConvWeight`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_weight_cpu(x: &[f32], w: &ConvWeight, bias: Option<&[f32]>, s: &Conv2dShape, relu: bool, accumulate: bool, y: &mut [f32]) {
    let packed = match w {
        ConvWeight::Plain(w) => return conv2d_cpu(x, w, bias, s, relu, accumulate, y),
        ConvWeight::Packed(p) => p,
    };
    let (ho, wo) = s.out_hw();
    let ep = Epilogue { bias: bias.map_or(Bias::None, Bias::PerRow), accumulate, relu, act: None };
    // SAFETY: as in `conv2d_cpu`; c is a fresh view of y, aliasing neither operand.
    let gemm = |b: *const f32, b_rs: usize, n: usize, c: *mut f32, parallel: bool| unsafe {
        gemm_packed_a_cpu(packed, n, b, b_rs, c, ho * wo, &ep, parallel);
    };
    conv2d_bands(x, s, y, gemm, |_| {});
}

/// The convolution loop both weight forms share: per image, the GEMM of the filters with the
/// image (a 1x1 stride-1 convolution) or with its im2col matrix, a band of output rows at a
/// time; then `epilogue` over the image's output.
fn conv2d_bands(
    x: &[f32],
    s: &Conv2dShape,
    y: &mut [f32],
    // (b (kk x n) with row stride b_rs, n, c: output column 0 of the band, parallel)
    gemm: impl Fn(*const f32, usize, usize, *mut f32, bool) + Sync,
    epilogue: impl Fn(&mut [f32]) + Sync,
) {
    let (ho, wo) = s.out_hw();
    let kk = s.c_in * s.kernel * s.kernel;
    let direct = s.kernel == 1 && s.stride == 1 && s.pad == 0;
    // Images in parallel when there are enough of them, else threads inside the GEMM.
    let batch_parallel = s.batch >= rayon::current_num_threads();
    // im2col a band of output rows at a time, so the column matrix stays in cache while the
    // GEMM packs it (a whole-image im2col of an early 3x3 layer is several MB).
    let rows_per_band = (IM2COL_BAND_FLOATS / (kk * wo).max(1)).clamp(1, ho.max(1));
    let one = |(xb, yb): (&[f32], &mut [f32])| {
        if direct {
            gemm(xb.as_ptr(), ho * wo, ho * wo, yb.as_mut_ptr(), !batch_parallel);
        } else {
            let mut cols = vec![0.0f32; kk * rows_per_band * wo];
            let mut oy0 = 0;
            while oy0 < ho {
                let oy1 = (oy0 + rows_per_band).min(ho);
                let n = (oy1 - oy0) * wo;
                im2col_rows(xb, s, oy0, oy1, &mut cols[..kk * n]);
                // SAFETY: column oy0*Wo of yb starts a band of n columns (row stride Ho*Wo).
                gemm(cols.as_ptr(), n, n, unsafe { yb.as_mut_ptr().add(oy0 * wo) }, !batch_parallel);
                oy0 = oy1;
            }
        }
        epilogue(yb);
    };
    let xs = x.chunks_exact(s.c_in * s.h * s.w);
    let ys = y.chunks_exact_mut(s.c_out * ho * wo);
    if batch_parallel {
        xs.zip(ys).par_bridge().for_each(one);
    } else {
        xs.zip(ys).for_each(one);
    }
}

/// tokens (B, gh*gw, C) = patchify(x (B, 3, H, W)) @ w^T, w (C, 3, p, p), no bias.
/// H and W must be multiples of p (the caller resizes first).
pub fn patch_embed_cpu(x: &[f32], b: usize, c_in: usize, h: usize, w_: usize, weight: &[f32], p: usize, out: &mut [f32]) {
    let kk = c_in * p * p;
    let patches = patchify_cpu(x, b, c_in, h, w_, p);
    debug_assert_eq!(out.len(), patches.len() / kk * (weight.len() / kk));
    crate::ops::matmul::linear_cpu(&patches, weight, None, out, kk, false);
}

/// `patch_embed_cpu` with the filters as a `LinearWeight` (C, 3 * p * p).
pub fn patch_embed_weight_cpu(x: &[f32], b: usize, c_in: usize, h: usize, w_: usize, weight: &LinearWeight, p: usize, out: &mut [f32]) {
    let patches = patchify_cpu(x, b, c_in, h, w_, p);
    weight.forward(&patches, out, &Epilogue::default());
}

/// patches (B * gh * gw, C_in * p * p): every p x p patch of x (B, C_in, H, W) as a row, in
/// the order of the filters' (C_in, p, p).
fn patchify_cpu(x: &[f32], b: usize, c_in: usize, h: usize, w_: usize, p: usize) -> Vec<f32> {
    let (gh, gw) = (h / p, w_ / p);
    let kk = c_in * p * p;
    let n = gh * gw;
    let mut patches = vec![0.0f32; b * n * kk];
    patches.par_chunks_mut(kk).enumerate().for_each(|(idx, dst)| {
        let (bi, pi) = (idx / n, idx % n);
        let (py, px) = (pi / gw, pi % gw);
        for ci in 0..c_in {
            for ky in 0..p {
                let src = &x[((bi * c_in + ci) * h + py * p + ky) * w_ + px * p..][..p];
                dst[(ci * p + ky) * p..][..p].copy_from_slice(src);
            }
        }
    });
    patches
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition, one output at a time.
    fn conv_naive(x: &[f32], w: &[f32], bias: &[f32], s: &Conv2dShape, relu: bool) -> Vec<f32> {
        let (ho, wo) = s.out_hw();
        let k = s.kernel;
        let mut y = vec![0.0f32; s.batch * s.c_out * ho * wo];
        for b in 0..s.batch {
            for co in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[co] as f64;
                        for ci in 0..s.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize];
                                    acc += xv as f64 * w[((co * s.c_in + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        let v = acc as f32;
                        y[((b * s.c_out + co) * ho + oy) * wo + ox] = if relu { v.max(0.0) } else { v };
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv2d_matches_definition_on_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &(batch, c_in, h, w, c_out, kernel, stride, pad, relu) in &[
            (1, 3, 7, 5, 4, 3, 2, 1, true),
            (3, 5, 9, 11, 6, 3, 1, 1, false),
            (2, 4, 6, 6, 8, 1, 1, 0, true),
            (2, 3, 5, 4, 2, 5, 1, 2, false),
            (1, 2, 3, 3, 3, 3, 1, 1, true),
            // Large enough that the im2col is done in several bands of rows.
            (1, 64, 20, 60, 8, 3, 1, 1, true),
            (2, 32, 19, 70, 5, 3, 2, 1, false),
        ] {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let x: Vec<f32> = (0..batch * c_in * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let wt: Vec<f32> = (0..c_out * c_in * kernel * kernel).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (ho, wo) = s.out_hw();
            let mut y = vec![f32::NAN; batch * c_out * ho * wo];
            conv2d_cpu(&x, &wt, Some(&bias), &s, relu, false, &mut y);
            let want = conv_naive(&x, &wt, &bias, &s, relu);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?}: {a} vs {b}");
            }
            // Accumulating onto a residual: relu(residual + conv + bias).
            let residual: Vec<f32> = (0..y.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = residual.clone();
            conv2d_cpu(&x, &wt, Some(&bias), &s, relu, true, &mut y);
            let plain = conv_naive(&x, &wt, &bias, &s, false);
            for ((a, p), r) in y.iter().zip(&plain).zip(&residual) {
                let b = if relu { (p + r).max(0.0) } else { p + r };
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} accumulate: {a} vs {b}");
            }
            // The same through the weight as the encoders hold it (packed where AVX2 is).
            let held = ConvWeight::new(wt.clone(), c_out, c_in * kernel * kernel);
            let mut y = vec![f32::NAN; batch * c_out * ho * wo];
            conv2d_weight_cpu(&x, &held, Some(&bias), &s, relu, false, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} held weight: {a} vs {b}");
            }
            let mut y = residual.clone();
            conv2d_weight_cpu(&x, &held, Some(&bias), &s, relu, true, &mut y);
            for ((a, p), r) in y.iter().zip(&plain).zip(&residual) {
                let b = if relu { (p + r).max(0.0) } else { p + r };
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} held weight accumulate: {a} vs {b}");
            }
        }
    }
}
