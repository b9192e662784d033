//! 2-D convolution (NCHW) as im2col + GEMM, with the folded-batch-norm bias and ReLU fused
//! into its epilogue; and the ViT patch embedding (a stride = kernel convolution written
//! straight into token layout).

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work, REFERENCE_MAX_WORK,
};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::gemm_packed::{
    gemm_packed_a_cpu, gemm_packed_ab_cpu, packed_b_index, packed_gemm_available, with_packed_b_scratch, Bias,
    Epilogue, PackedA, KC as PACK_KC, NR as PACK_NR,
};
use crate::ops::matmul::{gemm_cpu, LinearWeight, MatRef};

/// Size of one band of the im2col matrix (1 MiB of f32): about an L2 cache.
const IM2COL_BAND_FLOATS: usize = 1 << 18;
/// Shallower filters (the stem's first 3x3 over RGB, depth 27) stay on the `gemm` crate.
const PACKED_MIN_DEPTH: usize = 64;
/// Feature maps with fewer output pixels than this are convolved several images at a time.
const BATCHED_BELOW_COLS: usize = 256;
/// Columns to aim for in one batched GEMM (whole images: 8 x 7 x 7 = 392, 2 x 14 x 14).
const BATCHED_COLS: usize = 384;

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

/// The definition, summed in f64 over every tap (`conv2d_taps`): y = act(residual + conv(x, w) + bias), act the
/// ReLU when `relu`. The fast CPU path below is tested against it, and so are the kernels
/// (directly on check rows up to `REFERENCE_MAX_WORK`, through the fast path on larger ones).
pub fn conv2d_reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    relu: bool,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (ho, wo) = s.out_hw();
    let mut acc = vec![0.0f64; s.batch * s.c_out * ho * wo];
    conv2d_taps(s, |yi, xi, wi| acc[yi] += x[xi] as f64 * w[wi] as f64);
    let plane = ho * wo;
    acc.iter()
        .enumerate()
        .map(|(o, &a)| {
            let co = (o / plane) % s.c_out;
            let v = (a + bias.map_or(0.0, |bias| bias[co] as f64) + residual.map_or(0.0, |r| r[o] as f64)) as f32;
            if relu {
                v.max(0.0)
            } else {
                v
            }
        })
        .collect()
}

/// Every (output, input, weight) index triple of the convolution that is not in the padding,
/// in the definition's order: the index space both the forward and the backward references walk.
pub fn conv2d_taps(s: &Conv2dShape, mut tap: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = s.out_hw();
    let k = s.kernel;
    for b in 0..s.batch {
        for co in 0..s.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((b * s.c_out + co) * ho + oy) * wo + ox;
                    for ci in 0..s.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xi = ((b * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize;
                                tap(yi, xi, ((co * s.c_in + ci) * k + ky) * k + kx);
                            }
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
pub fn conv2d_cpu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    relu: bool,
    accumulate: bool,
    y: &mut [f32],
) {
    let (ho, wo) = s.out_hw();
    let kk = s.c_in * s.kernel * s.kernel;
    let plan = BandPlan::new(s);
    for_each_image(x, s, y, |xb, yb, parallel| {
        // SAFETY (both GEMMs): w (C_out x kk) @ b (kk x n) -> n columns of yb, row stride Ho*Wo.
        if plan.direct {
            unsafe {
                gemm_cpu(
                    s.c_out,
                    ho * wo,
                    kk,
                    MatRef::row_major(w, kk),
                    MatRef::row_major(xb, ho * wo),
                    yb.as_mut_ptr(),
                    (ho * wo) as isize,
                    accumulate,
                    parallel,
                );
            }
        } else {
            let mut cols = vec![0.0f32; kk * plan.rows_per_band * wo];
            for (oy0, oy1) in plan.bands() {
                let n = (oy1 - oy0) * wo;
                im2col_rows(xb, s, oy0, oy1, &mut cols[..kk * n]);
                unsafe {
                    gemm_cpu(
                        s.c_out,
                        n,
                        kk,
                        MatRef::row_major(w, kk),
                        MatRef::row_major(&cols, n),
                        yb.as_mut_ptr().add(oy0 * wo),
                        (ho * wo) as isize,
                        accumulate,
                        parallel,
                    );
                }
            }
        }
        for (co, plane) in yb.chunks_exact_mut(ho * wo).enumerate() {
            let bv = bias.map_or(0.0, |b| b[co]);
            if relu {
                plane.iter_mut().for_each(|v| *v = (*v + bv).max(0.0));
            } else if bv != 0.0 {
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
}

/// A convolution's filters (C_out, C_in, k, k) held the way the CPU multiplies fastest:
/// packed once for the packed GEMM (`ops::gemm_packed`, bias, ReLU and residual fused into
/// its store) when the CPU has AVX2 and FMA and the shape is one where it beats the `gemm`
/// crate, else as is for `conv2d_cpu`.
pub enum ConvWeight {
    Packed(PackedA),
    Plain(Vec<f32>),
}

impl ConvWeight {
    /// w (C_out, C_in * k * k), row-major.
    pub fn new(w: Vec<f32>, c_out: usize, kk: usize) -> ConvWeight {
        // Measured on dev-2c (benches/RESULTS.md): the packed GEMM is ahead (3-10 %) on the
        // expanding convolutions (C_out >= C_in k k: a bottleneck's conv3 and downsample) and
        // behind (5-15 %) where the depth dominates (3x3 convs, 1x1 reductions), whose loop
        // order re-reads the output tile once per KC block.
        if packed_gemm_available() && c_out >= kk && kk >= PACKED_MIN_DEPTH {
            ConvWeight::Packed(PackedA::from_row_major(&w, c_out, kk))
        } else {
            ConvWeight::Plain(w)
        }
    }

    /// The filters (C_out, C_in * k * k) row-major, as `new` took them (unpacked when packed):
    /// what a CUDA tower uploads.
    pub fn to_row_major(&self) -> Vec<f32> {
        match self {
            ConvWeight::Packed(p) => p.to_row_major(),
            ConvWeight::Plain(w) => w.clone(),
        }
    }

    /// Packed whatever the shape, when the CPU has AVX2 and FMA (the tests' way in).
    pub fn packed(w: Vec<f32>, c_out: usize, kk: usize) -> ConvWeight {
        if packed_gemm_available() {
            ConvWeight::Packed(PackedA::from_row_major(&w, c_out, kk))
        } else {
            ConvWeight::Plain(w)
        }
    }
}

/// `conv2d_cpu` with the filters as a `ConvWeight`. Packed, the im2col is written straight
/// into the GEMM's packed layout (no column matrix, no second packing pass); small feature
/// maps (the last stages: 14 x 14, 7 x 7) are batched, several images to one GEMM, so that
/// its N is not one or two ragged panels per image.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_weight_cpu(
    x: &[f32],
    w: &ConvWeight,
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    relu: bool,
    accumulate: bool,
    y: &mut [f32],
) {
    let packed = match w {
        ConvWeight::Plain(w) => return conv2d_cpu(x, w, bias, s, relu, accumulate, y),
        ConvWeight::Packed(p) => p,
    };
    let (ho, wo) = s.out_hw();
    let hw = ho * wo;
    let kk = s.c_in * s.kernel * s.kernel;
    let ep = Epilogue { bias: bias.map_or(Bias::None, Bias::PerRow), accumulate, relu, act: None };
    if hw < BATCHED_BELOW_COLS && s.batch > 1 {
        let per_band = BATCHED_COLS.div_ceil(hw).min(s.batch);
        let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * hw);
        for (xs, ys) in x.chunks(per_band * in_img).zip(y.chunks_mut(per_band * out_img)) {
            let images = ys.len() / out_img;
            let n = images * hw;
            // The product is (C_out, images * hw): images side by side, scattered to NCHW after.
            let mut prod = vec![0.0f32; s.c_out * n];
            if accumulate {
                for (img, yi) in ys.chunks_exact(out_img).enumerate() {
                    for (co, plane) in yi.chunks_exact(hw).enumerate() {
                        prod[co * n + img * hw..][..hw].copy_from_slice(plane);
                    }
                }
            }
            with_packed_b_scratch(kk, n, |cols| {
                im2col_packed(xs, images, s, 0, ho, cols, true);
                // SAFETY: prod is (C_out x n), a fresh buffer.
                unsafe { gemm_packed_ab_cpu(packed, n, cols, prod.as_mut_ptr(), n, &ep, true) };
            });
            for (img, yi) in ys.chunks_exact_mut(out_img).enumerate() {
                for (co, plane) in yi.chunks_exact_mut(hw).enumerate() {
                    plane.copy_from_slice(&prod[co * n + img * hw..][..hw]);
                }
            }
        }
        return;
    }
    let plan = BandPlan::new(s);
    for_each_image(x, s, y, |xb, yb, parallel| {
        // SAFETY (both GEMMs): the filters @ b (kk x n) -> n columns of yb (row stride
        // Ho*Wo), a fresh view aliasing neither operand.
        if plan.direct {
            unsafe { gemm_packed_a_cpu(packed, hw, xb.as_ptr(), hw, yb.as_mut_ptr(), hw, &ep, parallel) };
            return;
        }
        for (oy0, oy1) in plan.bands() {
            let n = (oy1 - oy0) * wo;
            with_packed_b_scratch(kk, n, |cols| {
                im2col_packed(xb, 1, s, oy0, oy1, cols, parallel);
                unsafe { gemm_packed_ab_cpu(packed, n, cols, yb.as_mut_ptr().add(oy0 * wo), hw, &ep, parallel) };
            });
        }
    });
}

/// How a convolution's output rows are cut into im2col bands.
struct BandPlan {
    /// A 1x1 stride-1 convolution: the image itself is the GEMM's right operand.
    direct: bool,
    rows_per_band: usize,
    ho: usize,
}

impl BandPlan {
    fn new(s: &Conv2dShape) -> BandPlan {
        let (ho, wo) = s.out_hw();
        let kk = s.c_in * s.kernel * s.kernel;
        // im2col a band of output rows at a time, so the column matrix stays in cache while
        // the GEMM reads it (a whole-image im2col of an early 3x3 layer is several MB).
        let rows_per_band = (IM2COL_BAND_FLOATS / (kk * wo).max(1)).clamp(1, ho.max(1));
        BandPlan { direct: s.kernel == 1 && s.stride == 1 && s.pad == 0, rows_per_band, ho }
    }

    /// (first, end) output rows of each band.
    fn bands(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.ho).step_by(self.rows_per_band).map(|oy0| (oy0, (oy0 + self.rows_per_band).min(self.ho)))
    }
}

/// Calls `per_image(x_b, y_b, parallel)` for every image: images in parallel when there are
/// enough of them (then `parallel` is false), else one at a time with threads inside the GEMM.
fn for_each_image(x: &[f32], s: &Conv2dShape, y: &mut [f32], per_image: impl Fn(&[f32], &mut [f32], bool) + Sync) {
    let (ho, wo) = s.out_hw();
    let batch_parallel = s.batch >= rayon::current_num_threads();
    let xs = x.chunks_exact(s.c_in * s.h * s.w);
    let ys = y.chunks_exact_mut(s.c_out * ho * wo);
    if batch_parallel {
        xs.zip(ys).par_bridge().for_each(|(xb, yb)| per_image(xb, yb, false));
    } else {
        xs.zip(ys).for_each(|(xb, yb)| per_image(xb, yb, true));
    }
}

/// The im2col matrix (C_in*k*k, images * (oy1-oy0) * Wo) of output rows oy0..oy1 of
/// `images` consecutive images of x (columns image-major), written in the packed layout of
/// the GEMM's right operand (`packed_b_index`), padding columns 0. Each KC block of rows is
/// one contiguous slice of `dst`: with `parallel`, blocks go to threads.
pub(crate) fn im2col_packed(
    x: &[f32],
    images: usize,
    s: &Conv2dShape,
    oy0: usize,
    oy1: usize,
    dst: &mut [f32],
    parallel: bool,
) {
    let (_, wo) = s.out_hw();
    let per_image = (oy1 - oy0) * wo;
    let n = images * per_image;
    let k = s.kernel;
    let kk = s.c_in * k * k;
    let n_pad = n.div_ceil(PACK_NR) * PACK_NR;
    debug_assert_eq!(dst.len(), kk * n_pad);
    let fill_block = |(kb, block): (usize, &mut [f32])| {
        let block_start = kb * PACK_KC * n_pad;
        // Row r, columns j.. of the packed matrix: split where a panel ends.
        let mut put = |r: usize, mut j: usize, src: Option<&[f32]>, len: usize| {
            let mut done = 0;
            while done < len {
                let take = (PACK_NR - j % PACK_NR).min(len - done);
                let at = packed_b_index(kk, n, r, j) - block_start;
                match src {
                    Some(v) => block[at..at + take].copy_from_slice(&v[done..done + take]),
                    None => block[at..at + take].fill(0.0),
                }
                j += take;
                done += take;
            }
        };
        let mut gathered = vec![0.0f32; wo];
        for r in kb * PACK_KC..((kb + 1) * PACK_KC).min(kk) {
            let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
            for img in 0..images {
                let plane = &x[(img * s.c_in + ci) * s.h * s.w..][..s.h * s.w];
                for oy in oy0..oy1 {
                    let j0 = img * per_image + (oy - oy0) * wo;
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    if iy < 0 || iy >= s.h as isize {
                        put(r, j0, None, wo);
                        continue;
                    }
                    let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    if s.stride == 1 {
                        // Valid output columns are one contiguous run: copy it, zero the edges.
                        let lo = s.pad.saturating_sub(kx).min(wo);
                        let hi = (s.w + s.pad).saturating_sub(kx).min(wo).max(lo);
                        put(r, j0, None, lo);
                        let start = (lo + kx).saturating_sub(s.pad);
                        put(r, j0 + lo, Some(&src[start.min(s.w)..]), hi - lo);
                        put(r, j0 + hi, None, wo - hi);
                    } else {
                        for (ox, d) in gathered.iter_mut().enumerate() {
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            *d = if ix < 0 || ix >= s.w as isize { 0.0 } else { src[ix as usize] };
                        }
                        put(r, j0, Some(&gathered), wo);
                    }
                }
            }
            put(r, n, None, n_pad - n);
        }
    };
    if parallel {
        dst.par_chunks_mut(PACK_KC * n_pad).enumerate().for_each(fill_block);
    } else {
        dst.chunks_mut(PACK_KC * n_pad).enumerate().for_each(fill_block);
    }
}

/// tokens (B, gh*gw, C) = patchify(x (B, 3, H, W)) @ w^T, w (C, 3, p, p), no bias.
/// H and W must be multiples of p (the caller resizes first).
#[allow(clippy::too_many_arguments)]
pub fn patch_embed_cpu(
    x: &[f32],
    b: usize,
    c_in: usize,
    h: usize,
    w_: usize,
    weight: &[f32],
    p: usize,
    out: &mut [f32],
) {
    let kk = c_in * p * p;
    let patches = patchify_vec(x, b, c_in, h, w_, p);
    debug_assert_eq!(out.len(), patches.len() / kk * (weight.len() / kk));
    crate::ops::matmul::linear_cpu(&patches, weight, None, out, kk, false);
}

/// `patch_embed_cpu` with the filters as a `LinearWeight` (C, 3 * p * p).
#[allow(clippy::too_many_arguments)]
pub fn patch_embed_weight_cpu(
    x: &[f32],
    b: usize,
    c_in: usize,
    h: usize,
    w_: usize,
    weight: &LinearWeight,
    p: usize,
    out: &mut [f32],
) {
    let patches = patchify_vec(x, b, c_in, h, w_, p);
    weight.forward(&patches, out, &Epilogue::default());
}

/// `patchify_cpu` into a new buffer.
fn patchify_vec(x: &[f32], b: usize, c_in: usize, h: usize, w_: usize, p: usize) -> Vec<f32> {
    let mut cols = vec![0.0f32; b * (h / p) * (w_ / p) * c_in * p * p];
    patchify_cpu(x, b, c_in, h, w_, p, &mut cols);
    cols
}

/// cols (B*gh*gw, C_in*p*p) = the im2col of a stride-p, p x p convolution of x (B, C_in, H, W):
/// row (b, py, px), column (ci, ky, kx) — the order of the weight (C, C_in, p, p), so that
/// cols @ weight^T is the patch embedding.
pub fn patchify_cpu(x: &[f32], b: usize, c_in: usize, h: usize, w_: usize, p: usize, cols: &mut [f32]) {
    let (gh, gw) = (h / p, w_ / p);
    let kk = c_in * p * p;
    let n = gh * gw;
    cols[..b * n * kk].par_chunks_mut(kk).enumerate().for_each(|(idx, dst)| {
        let (bi, pi) = (idx / n, idx % n);
        let (py, px) = (pi / gw, pi % gw);
        for ci in 0..c_in {
            for ky in 0..p {
                let src = &x[((bi * c_in + ci) * h + py * p + ky) * w_ + px * p..][..p];
                dst[(ci * p + ky) * p..][..p].copy_from_slice(src);
            }
        }
    });
}

/// CUDA launcher: kernels/conv2d.cu, an implicit GEMM (M = B*Ho*Wo pixels, N = C_out,
/// K = C_in*k*k; the im2col gather happens while tiles are loaded into shared memory).
/// x (B, C_in, H, W), w (C_out, C_in, k, k), residual and y (B, C_out, Ho, Wo), all in one float
/// dtype; bias (C_out,) f32 (batch norm folded into w and bias).
/// y = relu?((residual + conv(x)) + bias), the order of `conv2d_cpu` with `accumulate` (there
/// the residual is what y held; here it is a separate tensor).
/// bf16/f16 run on tensor cores (mma.sync m16n8k16, f32 accumulate); f32 on a SIMT tile.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    s: &Conv2dShape,
    relu: bool,
    residual: Option<&CudaTensor>,
    y: &mut CudaTensor,
) -> Result<()> {
    let bad = |why: &str| {
        Error::Shape(format!(
            "conv2d_cuda: {why}: {s:?}, x {:?}, w {:?}, bias {:?}, residual {:?}, y {:?}",
            x.shape(),
            w.shape(),
            bias.map(|b| b.shape().to_vec()),
            residual.map(|r| r.shape().to_vec()),
            y.shape()
        ))
    };
    if s.kernel == 0 || s.stride == 0 || s.h + 2 * s.pad < s.kernel || s.w + 2 * s.pad < s.kernel {
        return Err(bad("kernel, stride or padding do not fit the input"));
    }
    let (ho, wo) = s.out_hw();
    let out = [s.batch, s.c_out, ho, wo];
    if x.shape() != [s.batch, s.c_in, s.h, s.w]
        || w.shape() != [s.c_out, s.c_in, s.kernel, s.kernel]
        || y.shape() != out
    {
        return Err(bad("shapes"));
    }
    if bias.is_some_and(|b| b.shape() != [s.c_out]) || residual.is_some_and(|r| r.shape() != out) {
        return Err(bad("bias or residual shape"));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("conv2d_cuda: x is {:?}; expected a float dtype", x.dtype())));
    }
    w.expect_dtype(x.dtype(), "conv2d_cuda weight")?;
    y.expect_dtype(x.dtype(), "conv2d_cuda output")?;
    if let Some(b) = bias {
        b.expect_dtype(DType::F32, "conv2d_cuda bias")?;
    }
    if let Some(r) = residual {
        r.expect_dtype(x.dtype(), "conv2d_cuda residual")?;
    }
    let m = s.batch * ho * wo;
    // The kernels index pixels and the reduction in int; element offsets are 64-bit.
    to_i32(m, "conv2d_cuda B*Ho*Wo")?;
    to_i32(s.c_in * s.kernel * s.kernel, "conv2d_cuda C_in*k*k")?;
    if m == 0 || s.c_out == 0 {
        return Ok(());
    }
    let (tile, threads) = if x.dtype() == DType::F32 { (64, 256) } else { (64, 128) };
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(tile) as u32, s.c_out.div_ceil(tile) as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let null = KArg::Ptr(0);
    let name = format!("conv2d_forward_{}", x.dtype().suffix());
    gpu.launch(
        "conv2d",
        &name,
        cfg,
        &[
            x.arg(gpu),
            w.arg(gpu),
            bias.map_or(null, |b| b.arg(gpu)),
            residual.map_or(null, |r| r.arg(gpu)),
            y.arg(gpu),
            to_i32(s.batch, "B")?,
            to_i32(s.c_in, "C_in")?,
            to_i32(s.h, "H")?,
            to_i32(s.w, "W")?,
            to_i32(s.c_out, "C_out")?,
            to_i32(s.kernel, "kernel")?,
            to_i32(s.stride, "stride")?,
            to_i32(s.pad, "pad")?,
            to_i32(ho, "Ho")?,
            to_i32(wo, "Wo")?,
            KArg::I32(relu as i32),
        ],
    )
}

/// CUDA launcher: kernels/conv2d.cu `patchify`. x (B, C_in, H, W) -> cols (B*gh*gw, C_in*p*p)
/// in x's dtype, as `patchify_cpu`; H and W must be multiples of p. `linear(cols, weight
/// reshaped (C, C_in*p*p))` is then the ViT patch embedding.
pub fn patchify_cuda(gpu: &Gpu, x: &CudaTensor, p: usize, cols: &mut CudaTensor) -> Result<()> {
    let xs = x.shape();
    if xs.len() != 4 || p == 0 || !xs[2].is_multiple_of(p) || !xs[3].is_multiple_of(p) {
        return Err(Error::Shape(format!(
            "patchify_cuda: x {xs:?} must be (B, C, H, W) with H, W multiples of p = {p}"
        )));
    }
    let (b, c_in, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let rows = b * (h / p) * (w / p);
    let kk = c_in * p * p;
    if cols.shape() != [rows, kk] {
        return Err(Error::Shape(format!(
            "patchify_cuda: cols {:?}, expected [{rows}, {kk}] for x {xs:?}, p = {p}",
            cols.shape()
        )));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("patchify_cuda: x is {:?}; expected a float dtype", x.dtype())));
    }
    cols.expect_dtype(x.dtype(), "patchify_cuda cols")?;
    let total = rows * kk;
    if total == 0 {
        return Ok(());
    }
    to_i32(x.numel(), "patchify_cuda x elements")?;
    let cfg = LaunchConfig::for_num_elems(total as u32);
    let name = format!("patchify_{}", x.dtype().suffix());
    gpu.launch(
        "conv2d",
        &name,
        cfg,
        &[
            x.arg(gpu),
            cols.arg(gpu),
            to_i32(b, "B")?,
            to_i32(c_in, "C_in")?,
            to_i32(h, "H")?,
            to_i32(w, "W")?,
            to_i32(p, "p")?,
        ],
    )
}

/// Kernel checks: ModifiedResNet-50 layers at 224, batch 8 (stem, layer1 1x1 / 3x3 / 1x1 with
/// the residual, layer4 3x3, a downsample 1x1 without ReLU) and an odd strided shape, with and
/// without residual and ReLU; the ViT patchify at B/16 and B/32 and an odd shape. Inputs are
/// rounded to the dtype before the CPU reference (the checks measure the kernel, not the
/// rounding of its inputs).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    // (B, C_in, H = W, C_out, k, stride, relu, residual)
    type ConvCase = (usize, usize, usize, usize, usize, usize, bool, bool);
    let convs: &[ConvCase] = &[
        (8, 3, 224, 32, 3, 2, true, false),     // stem conv1
        (8, 32, 112, 32, 3, 1, true, false),    // stem conv2
        (8, 64, 56, 64, 1, 1, true, false),     // layer1 conv1
        (8, 64, 56, 64, 3, 1, true, false),     // layer1 conv2
        (8, 64, 56, 256, 1, 1, true, true),     // layer1 conv3 onto the identity
        (8, 1024, 7, 2048, 1, 1, false, false), // layer4 downsample (after the average pool)
        (8, 512, 7, 512, 3, 1, true, false),    // layer4 conv2
        (2, 5, 11, 7, 3, 2, true, true),
        (2, 5, 11, 7, 3, 2, false, false),
        (3, 9, 13, 70, 3, 1, false, true),
        (1, 17, 9, 65, 1, 2, true, false),
    ];
    for &(batch, c_in, hw, c_out, kernel, stride, relu, with_residual) in convs {
        let s = Conv2dShape { batch, c_in, h: hw, w: hw, c_out, kernel, stride, pad: kernel / 2 };
        let (ho, wo) = s.out_hw();
        let flops = 2.0 * (batch * ho * wo) as f64 * c_out as f64 * (c_in * kernel * kernel) as f64;
        let label = format!(
            "B={batch} Cin={c_in} H=W={hw} Cout={c_out} k={kernel} s={stride} relu={relu} residual={with_residual}"
        );
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            checks.push(GpuCheck::new("conv2d_forward", label.clone(), dtype, Work::Flops(flops), move |gpu, rng| {
                let out = [batch, c_out, ho, wo];
                let kk = c_in * kernel * kernel;
                let wscale = 1.0 / (kk as f32).sqrt();
                let xd = CudaTensor::from_f32(
                    gpu,
                    &[batch, c_in, hw, hw],
                    &random_vec(rng, batch * c_in * hw * hw, 1.0),
                    dtype,
                )?;
                let wd = CudaTensor::from_f32(
                    gpu,
                    &[c_out, c_in, kernel, kernel],
                    &random_vec(rng, c_out * kk, 2.0 * wscale),
                    dtype,
                )?;
                let bias = random_vec(rng, c_out, 0.5);
                let bd = CudaTensor::from_f32(gpu, &[c_out], &bias, DType::F32)?;
                let rd = if with_residual {
                    Some(CudaTensor::from_f32(gpu, &out, &random_vec(rng, batch * c_out * ho * wo, 1.0), dtype)?)
                } else {
                    None
                };
                // The CPU reference sees the values the kernel sees.
                let (x, w) = (xd.to_f32_vec(gpu)?, wd.to_f32_vec(gpu)?);
                let residual = rd.as_ref().map(|r| r.to_f32_vec(gpu)).transpose()?;
                let want = if flops <= REFERENCE_MAX_WORK {
                    conv2d_reference(&x, &w, Some(&bias), &s, relu, residual.as_deref())
                } else {
                    let mut y = residual.unwrap_or_else(|| vec![0.0; batch * c_out * ho * wo]);
                    conv2d_cpu(&x, &w, Some(&bias), &s, relu, with_residual, &mut y);
                    y
                };
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &out, dtype)?,
                    move |g, yd| conv2d_cuda(g, &xd, &wd, Some(&bd), &s, relu, rd.as_ref(), yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                )
            }));
        }
    }
    // The stem without bias: the null-pointer path.
    for dtype in [DType::F32, DType::BF16] {
        let s = Conv2dShape { batch: 2, c_in: 3, h: 33, w: 37, c_out: 9, kernel: 3, stride: 2, pad: 1 };
        let (ho, wo) = s.out_hw();
        let flops = 2.0 * (2 * ho * wo) as f64 * 9.0 * 27.0;
        checks.push(GpuCheck::new(
            "conv2d_forward",
            "no bias B=2 Cin=3 33x37 Cout=9 k=3 s=2",
            dtype,
            Work::Flops(flops),
            move |gpu, rng| {
                let xd = CudaTensor::from_f32(gpu, &[2, 3, 33, 37], &random_vec(rng, 2 * 3 * 33 * 37, 1.0), dtype)?;
                let wd = CudaTensor::from_f32(gpu, &[9, 3, 3, 3], &random_vec(rng, 9 * 27, 0.4), dtype)?;
                let (x, w) = (xd.to_f32_vec(gpu)?, wd.to_f32_vec(gpu)?);
                let want = conv2d_reference(&x, &w, None, &s, false, None);
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &[2, 9, ho, wo], dtype)?,
                    move |g, yd| conv2d_cuda(g, &xd, &wd, None, &s, false, None, yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                )
            },
        ));
    }
    // (B, H, W, p): ViT-B/16 and B/32 at 224, B/16 at 256 (TagCLIP's crops), an odd grid.
    for &(b, h, w, p) in &[(8usize, 224usize, 224usize, 16usize), (8, 224, 224, 32), (8, 256, 256, 16), (3, 48, 80, 16)]
    {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let rows = b * (h / p) * (w / p);
            let bytes = (2 * b * 3 * h * w * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "patchify",
                format!("B={b} {h}x{w} p={p}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let xd = CudaTensor::from_f32(gpu, &[b, 3, h, w], &random_vec(rng, b * 3 * h * w, 2.0), dtype)?;
                    let x = xd.to_f32_vec(gpu)?;
                    let mut want = vec![0.0; rows * 3 * p * p];
                    patchify_cpu(&x, b, 3, h, w, p, &mut want);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[rows, 3 * p * p], dtype)?,
                        move |g, cols| patchify_cuda(g, &xd, p, cols),
                        |g, cols| max_rel_err_all(g, &[(cols, &want)]),
                    )
                },
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn patchify_is_the_patch_embedding_im2col() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (b, c_in, h, w, p, c) = (2usize, 3usize, 8usize, 12usize, 4usize, 5usize);
        let x: Vec<f32> = (0..b * c_in * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let weight: Vec<f32> = (0..c * c_in * p * p).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (gh, gw) = (h / p, w / p);
        let kk = c_in * p * p;
        let mut cols = vec![f32::NAN; b * gh * gw * kk];
        patchify_cpu(&x, b, c_in, h, w, p, &mut cols);
        // The definition: row (b, py, px), column (ci, ky, kx).
        for bi in 0..b {
            for py in 0..gh {
                for px in 0..gw {
                    for ci in 0..c_in {
                        for ky in 0..p {
                            for kx in 0..p {
                                let row = (bi * gh + py) * gw + px;
                                let got = cols[row * kk + (ci * p + ky) * p + kx];
                                assert_eq!(got, x[((bi * c_in + ci) * h + py * p + ky) * w + px * p + kx]);
                            }
                        }
                    }
                }
            }
        }
        // cols @ weight^T is the patch embedding, i.e. the stride-p convolution.
        let mut tokens = vec![f32::NAN; b * gh * gw * c];
        patch_embed_cpu(&x, b, c_in, h, w, &weight, p, &mut tokens);
        let s = Conv2dShape { batch: b, c_in, h, w, c_out: c, kernel: p, stride: p, pad: 0 };
        let conv = conv2d_reference(&x, &weight, None, &s, false, None);
        for bi in 0..b {
            for pi in 0..gh * gw {
                for co in 0..c {
                    let want = conv[(bi * c + co) * gh * gw + pi];
                    let got = tokens[(bi * gh * gw + pi) * c + co];
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
                }
            }
        }
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
            // Small maps are convolved several images per GEMM: 4 + 1 images here, and K
            // beyond one packed block.
            (5, 40, 10, 10, 7, 3, 1, 1, true),
            (3, 300, 4, 4, 9, 1, 1, 0, false),
        ] {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let x: Vec<f32> = (0..batch * c_in * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let wt: Vec<f32> = (0..c_out * c_in * kernel * kernel).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (ho, wo) = s.out_hw();
            let mut y = vec![f32::NAN; batch * c_out * ho * wo];
            conv2d_cpu(&x, &wt, Some(&bias), &s, relu, false, &mut y);
            let want = conv2d_reference(&x, &wt, Some(&bias), &s, relu, None);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?}: {a} vs {b}");
            }
            // Accumulating onto a residual: relu(residual + conv + bias).
            let residual: Vec<f32> = (0..y.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = residual.clone();
            conv2d_cpu(&x, &wt, Some(&bias), &s, relu, true, &mut y);
            let plain = conv2d_reference(&x, &wt, Some(&bias), &s, false, None);
            for ((a, p), r) in y.iter().zip(&plain).zip(&residual) {
                let b = if relu { (p + r).max(0.0) } else { p + r };
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} accumulate: {a} vs {b}");
            }
            // The same through the weight as the encoders hold it, and packed (where AVX2 is).
            let kk = c_in * kernel * kernel;
            for held in [ConvWeight::new(wt.clone(), c_out, kk), ConvWeight::packed(wt.clone(), c_out, kk)] {
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
}
