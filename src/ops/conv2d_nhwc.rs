//! 2-D convolution on channels-last (NHWC) activations: x (B, H, W, C_in), filters
//! (C_out, k, k, C_in), y (B, Ho, Wo, C_out), with conv2d's fused epilogue
//! y = relu?((residual + conv) + bias); and a batch norm folded into a convolution for inference.
//! Its gradients too: backward-data (dx, any stride) and backward-weight (an f32 dw, accumulated).
//! The kernels (kernels/conv2d_nhwc.cu) are multistage cp.async implicit GEMMs on the tensor
//! cores (bf16 / f16); the layout makes 8 consecutive reduction indices (or output columns) 8
//! consecutive channels, one 16-byte load.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work, REFERENCE_MAX_WORK,
};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::conv2d::{conv2d_cpu, conv2d_cuda, conv2d_reference, Conv2dShape};
use crate::ops::conv2d_backward::{
    add_weight_partials, conv2d_backward_data_cuda, conv2d_backward_reference, conv2d_backward_weight_cuda,
};

/// (B, H, W, C) -> (B, C, H, W).
pub fn nhwc_to_nchw(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for bi in 0..b {
        for p in 0..h * w {
            for ci in 0..c {
                out[(bi * c + ci) * h * w + p] = x[(bi * h * w + p) * c + ci];
            }
        }
    }
    out
}

/// (B, C, H, W) -> (B, H, W, C).
pub fn nchw_to_nhwc(x: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..h * w {
                out[(bi * h * w + p) * c + ci] = x[(bi * c + ci) * h * w + p];
            }
        }
    }
    out
}

/// The definition: `conv2d_reference` (f64 over every tap) seen through the layouts. x (B, H, W,
/// C_in), w (C_out, k, k, C_in), residual and the result (B, Ho, Wo, C_out).
pub fn conv2d_nhwc_reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    relu: bool,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (ho, wo) = s.out_hw();
    let x_nchw = nhwc_to_nchw(x, s.batch, s.h, s.w, s.c_in);
    // (C_out, k, k, C_in) is C_out images of k x k pixels with C_in channels.
    let w_oihw = nhwc_to_nchw(w, s.c_out, s.kernel, s.kernel, s.c_in);
    let residual_nchw = residual.map(|r| nhwc_to_nchw(r, s.batch, ho, wo, s.c_out));
    let y = conv2d_reference(&x_nchw, &w_oihw, bias, s, relu, residual_nchw.as_deref());
    nchw_to_nhwc(&y, s.batch, s.c_out, ho, wo)
}

/// The fast CPU path: permuted to NCHW, `conv2d_cpu`, permuted back. y (B, Ho, Wo, C_out) holds
/// the residual on entry when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_nhwc_cpu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    relu: bool,
    accumulate: bool,
    y: &mut [f32],
) {
    let (ho, wo) = s.out_hw();
    let x_nchw = nhwc_to_nchw(x, s.batch, s.h, s.w, s.c_in);
    let w_oihw = nhwc_to_nchw(w, s.c_out, s.kernel, s.kernel, s.c_in);
    let mut y_nchw = if accumulate { nhwc_to_nchw(y, s.batch, ho, wo, s.c_out) } else { vec![0.0; y.len()] };
    conv2d_cpu(&x_nchw, &w_oihw, bias, s, relu, accumulate, &mut y_nchw);
    y.copy_from_slice(&nchw_to_nhwc(&y_nchw, s.batch, s.c_out, ho, wo));
}

/// An inference batch norm over C channels: (x - mean) / sqrt(var + eps) * gamma + beta.
pub struct BatchNormParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f32,
}

/// Folds `bn` into the convolution before it: w' = w * s, b' = (b - mean) * s + beta with
/// s = gamma / sqrt(var + eps) per output channel. `w` is any layout with C_out outermost
/// ((C_out, k, k, C_in) here, (C_out, C_in, k, k) for conv2d); `bias` the conv's own, if any.
pub fn fold_batchnorm(
    w: &[f32],
    bias: Option<&[f32]>,
    bn: &BatchNormParams,
    c_out: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let lens = [bn.gamma.len(), bn.beta.len(), bn.mean.len(), bn.var.len(), bias.map_or(c_out, <[f32]>::len)];
    if c_out == 0 || !w.len().is_multiple_of(c_out) || lens.iter().any(|&l| l != c_out) {
        return Err(Error::Shape(format!(
            "fold_batchnorm: weight of {} values, C_out {c_out}, gamma/beta/mean/var/bias lengths {lens:?}",
            w.len()
        )));
    }
    let per = w.len() / c_out;
    let mut folded = w.to_vec();
    let mut folded_bias = vec![0.0f32; c_out];
    for co in 0..c_out {
        let scale = bn.gamma[co] / (bn.var[co] + bn.eps).sqrt();
        folded[co * per..(co + 1) * per].iter_mut().for_each(|v| *v *= scale);
        folded_bias[co] = (bias.map_or(0.0, |b| b[co]) - bn.mean[co]) * scale + bn.beta[co];
    }
    Ok((folded, folded_bias))
}

/// What the kernel adds after the convolution: y = relu?((residual + conv) + bias).
#[derive(Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// (C_out,) f32.
    pub bias: Option<&'a CudaTensor>,
    /// (B, Ho, Wo, C_out), y's dtype.
    pub residual: Option<&'a CudaTensor>,
    pub relu: bool,
}

/// Output pixels and channels of one block of kernels/conv2d_nhwc.cu, and its threads.
const TILE_PIXELS: usize = 128;
const TILE_CHANNELS: usize = 64;
const THREADS: u32 = 128;

/// CUDA launcher: kernels/conv2d_nhwc.cu. x (B, H, W, C_in), w (C_out, k, k, C_in), y (B, Ho, Wo,
/// C_out), all bf16 or all f16; bias f32. Any C_in (multiples of 8 take the 16-byte cp.async
/// path) and any C_out (multiples of 8 store 16 bytes at a time).
pub fn conv2d_nhwc_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    s: &Conv2dShape,
    ep: &ConvEpilogue,
    y: &mut CudaTensor,
) -> Result<()> {
    let bad = |why: &str| {
        Error::Shape(format!(
            "conv2d_nhwc_cuda: {why}: {s:?}, x {:?}, w {:?}, bias {:?}, residual {:?}, y {:?}",
            x.shape(),
            w.shape(),
            ep.bias.map(|b| b.shape().to_vec()),
            ep.residual.map(|r| r.shape().to_vec()),
            y.shape()
        ))
    };
    if s.kernel == 0 || s.stride == 0 || s.h + 2 * s.pad < s.kernel || s.w + 2 * s.pad < s.kernel {
        return Err(bad("kernel, stride or padding do not fit the input"));
    }
    let (ho, wo) = s.out_hw();
    let out = [s.batch, ho, wo, s.c_out];
    if x.shape() != [s.batch, s.h, s.w, s.c_in]
        || w.shape() != [s.c_out, s.kernel, s.kernel, s.c_in]
        || y.shape() != out
    {
        return Err(bad("shapes"));
    }
    if ep.bias.is_some_and(|b| b.shape() != [s.c_out]) || ep.residual.is_some_and(|r| r.shape() != out) {
        return Err(bad("bias or residual shape"));
    }
    if !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::Device(format!(
            "conv2d_nhwc_cuda: x is {:?}; the tensor-core kernel takes bf16 or f16 (f32 convolutions: conv2d_cuda)",
            x.dtype()
        )));
    }
    w.expect_dtype(x.dtype(), "conv2d_nhwc_cuda weight")?;
    y.expect_dtype(x.dtype(), "conv2d_nhwc_cuda output")?;
    if let Some(b) = ep.bias {
        b.expect_dtype(DType::F32, "conv2d_nhwc_cuda bias")?;
    }
    if let Some(r) = ep.residual {
        r.expect_dtype(x.dtype(), "conv2d_nhwc_cuda residual")?;
    }
    let m = s.batch * ho * wo;
    // The kernel indexes pixels, the reduction and one image in int; tensor offsets are 64-bit.
    to_i32(m, "conv2d_nhwc_cuda B*Ho*Wo")?;
    to_i32(s.c_in * s.kernel * s.kernel, "conv2d_nhwc_cuda k*k*C_in")?;
    to_i32(s.h * s.w * s.c_in, "conv2d_nhwc_cuda H*W*C_in")?;
    if m == 0 || s.c_out == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(TILE_PIXELS) as u32, s.c_out.div_ceil(TILE_CHANNELS) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let null = KArg::Ptr(0);
    let name = format!("conv2d_nhwc_forward_{}", x.dtype().suffix());
    gpu.launch(
        "conv2d_nhwc",
        &name,
        cfg,
        &[
            &[
                x.arg(gpu),
                w.arg(gpu),
                ep.bias.map_or(null, |b| b.arg(gpu)),
                ep.residual.map_or(null, |r| r.arg(gpu)),
                y.arg(gpu),
            ][..],
            &nhwc_dims_args(s, ho, wo)?,
            &[KArg::I32(ep.relu as i32)],
        ]
        .concat(),
    )
}

/// The definition of backward-data: dx (B, H, W, C_in) of y = conv(x, w) for dy (B, Ho, Wo,
/// C_out), w (C_out, k, k, C_in): `conv2d_backward_reference` (f64) seen through the layouts.
pub fn conv2d_nhwc_backward_data_reference(w: &[f32], dy: &[f32], s: &Conv2dShape) -> Vec<f32> {
    let (ho, wo) = s.out_hw();
    let w_oihw = nhwc_to_nchw(w, s.c_out, s.kernel, s.kernel, s.c_in);
    let dy_nchw = nhwc_to_nchw(dy, s.batch, ho, wo, s.c_out);
    // x only feeds dw, which is not wanted here.
    let x_unused = vec![0.0f32; s.batch * s.c_in * s.h * s.w];
    let (_, dx) = conv2d_backward_reference(&x_unused, &w_oihw, &dy_nchw, s);
    let dx: Vec<f32> = dx.iter().map(|&v| v as f32).collect();
    nchw_to_nhwc(&dx, s.batch, s.c_in, s.h, s.w)
}

/// The definition of backward-weight: dw (C_out, k, k, C_in) of y = conv(x, w) for x (B, H, W,
/// C_in), dy (B, Ho, Wo, C_out): `conv2d_backward_reference` (f64) seen through the layouts.
pub fn conv2d_nhwc_backward_weight_reference(x: &[f32], dy: &[f32], s: &Conv2dShape) -> Vec<f64> {
    let (ho, wo) = s.out_hw();
    let x_nchw = nhwc_to_nchw(x, s.batch, s.h, s.w, s.c_in);
    let dy_nchw = nhwc_to_nchw(dy, s.batch, ho, wo, s.c_out);
    // w only feeds dx, which is not wanted here.
    let w_unused = vec![0.0f32; s.c_out * s.c_in * s.kernel * s.kernel];
    let (dw, _) = conv2d_backward_reference(&x_nchw, &w_unused, &dy_nchw, s);
    // (C_out, C_in, k, k) -> (C_out, k, k, C_in), in f64.
    let k = s.kernel;
    let mut out = vec![0.0f64; dw.len()];
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for t in 0..k * k {
                out[(co * k * k + t) * s.c_in + ci] = dw[(co * s.c_in + ci) * k * k + t];
            }
        }
    }
    out
}

/// Errors, naming the tensor and its wanted shape, unless the convolution is not empty and every
/// tensor has its shape.
fn expect_shapes(what: &str, s: &Conv2dShape, tensors: &[(&str, &CudaTensor, [usize; 4])]) -> Result<()> {
    if s.batch == 0 || s.c_in == 0 || s.c_out == 0 {
        return Err(Error::Shape(format!("{what}: an empty convolution: {s:?}")));
    }
    for (name, t, want) in tensors {
        if t.shape() != want {
            return Err(Error::Shape(format!("{what}: {name} is {:?}, wanted {want:?} for {s:?}", t.shape())));
        }
    }
    Ok(())
}

/// CUDA launcher of backward-data, any stride: dx (B, H, W, C_in), overwritten, from dy (B, Ho,
/// Wo, C_out) and w (C_out, k, k, C_in), all bf16 or all f16. kernels/conv2d_nhwc.cu
/// `conv2d_nhwc_backward_data`: an implicit GEMM over dx pixels x C_in with K = (tap, C_out), one
/// grid z per stride phase (the pixels (ph + s i, pw + s j) share their taps, so no k step is
/// spent on taps the stride skips). Multiples of 8 for C_in and C_out take the 16-byte cp.async
/// path, other counts an element gather (and scalar stores of dx when C_in % 8 != 0).
pub fn conv2d_nhwc_backward_data_cuda(
    gpu: &Gpu,
    dy: &CudaTensor,
    w: &CudaTensor,
    s: &Conv2dShape,
    dx: &mut CudaTensor,
) -> Result<()> {
    let what = "conv2d_nhwc_backward_data_cuda";
    let (ho, wo) = s_out_or_err(what, s)?;
    expect_shapes(
        what,
        s,
        &[
            ("dy", dy, [s.batch, ho, wo, s.c_out]),
            ("w", w, [s.c_out, s.kernel, s.kernel, s.c_in]),
            ("dx", dx, [s.batch, s.h, s.w, s.c_in]),
        ],
    )?;
    if !matches!(dy.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::Device(format!("{what}: dy is {:?}; the tensor-core kernel takes bf16 or f16", dy.dtype())));
    }
    w.expect_dtype(dy.dtype(), &format!("{what} weight"))?;
    dx.expect_dtype(dy.dtype(), &format!("{what} dx"))?;
    // The kernel indexes pixels (of dx and of dy) and the reduction in int; tensor offsets are
    // 64-bit.
    let phase_pixels = s.batch * s.h.div_ceil(s.stride) * s.w.div_ceil(s.stride);
    to_i32(s.batch * s.h * s.w, &format!("{what} B*H*W"))?;
    to_i32(s.batch * ho * wo, &format!("{what} B*Ho*Wo"))?;
    to_i32(s.kernel * s.kernel * s.c_out, &format!("{what} k*k*C_out"))?;
    to_i32(s.stride * s.stride, &format!("{what} stride phases"))?;
    let cfg = LaunchConfig {
        grid_dim: (
            phase_pixels.div_ceil(TILE_PIXELS) as u32,
            s.c_in.div_ceil(TILE_CHANNELS) as u32,
            (s.stride * s.stride) as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    gpu.launch(
        "conv2d_nhwc",
        &format!("conv2d_nhwc_backward_data_{}", dy.dtype().suffix()),
        cfg,
        &[&[dy.arg(gpu), w.arg(gpu), dx.arg(gpu)][..], &nhwc_dims_args(s, ho, wo)?].concat(),
    )
}

/// Output channels of a backward-weight block (its GEMM's m): 64 when C_out <= 64 (the `_m64`
/// entry points, whose tile is not half empty on 64-channel layers), else 128.
fn weight_tile_channels(c_out: usize) -> usize {
    if c_out <= 64 {
        64
    } else {
        128
    }
}
/// Taps x channels (n) of a backward-weight block and pixels per k tile.
const WEIGHT_TILE_TAPS: usize = 64;
const WEIGHT_TILE_PIXELS: usize = 32;
/// Split-K: about this many blocks in all (two waves of 132 SMs at 1 block each), but no split
/// shorter than WEIGHT_MIN_TILES pixel tiles (the 4-stage pipeline's fill is 3 tiles).
const WEIGHT_TARGET_BLOCKS: usize = 264;
const WEIGHT_MIN_TILES: usize = 16;

/// (splits, pixel tiles per split) of the weight gradient: every split non-empty.
fn weight_split(s: &Conv2dShape, ho: usize, wo: usize) -> (usize, usize) {
    let tiles =
        s.c_out.div_ceil(weight_tile_channels(s.c_out)) * (s.kernel * s.kernel * s.c_in).div_ceil(WEIGHT_TILE_TAPS);
    let steps = (s.batch * ho * wo).div_ceil(WEIGHT_TILE_PIXELS);
    let wanted = WEIGHT_TARGET_BLOCKS.div_ceil(tiles).min(steps.div_ceil(WEIGHT_MIN_TILES)).max(1);
    let per_split = steps.div_ceil(wanted);
    (steps.div_ceil(per_split), per_split)
}

/// CUDA launcher of backward-weight: dw (C_out, k, k, C_in) f32 += the gradient from x (B, H, W,
/// C_in) and dy (B, Ho, Wo, C_out), both bf16 or both f16 (the f32 master gradient of the bf16
/// training step); accumulates like `conv2d_backward_weight_cuda`. kernels/conv2d_nhwc.cu
/// `conv2d_nhwc_backward_weight` (`_m64` for C_out <= 64: a 64-channel block tile instead of 128,
/// which would be half empty): a GEMM C_out x (k, k, C_in) over the B*Ho*Wo pixels, split
/// along the pixels; with more than one split the f32 partials go to a scratch buffer and
/// `conv2d_backward_weight_reduce` (kernels/conv2d_backward.cu, the NCHW op's second pass, same
/// contract) adds them to dw in split order: no atomics, the same bits on every run.
pub fn conv2d_nhwc_backward_weight_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    dy: &CudaTensor,
    s: &Conv2dShape,
    dw: &mut CudaTensor,
) -> Result<()> {
    let what = "conv2d_nhwc_backward_weight_cuda";
    let (ho, wo) = s_out_or_err(what, s)?;
    expect_shapes(
        what,
        s,
        &[
            ("x", x, [s.batch, s.h, s.w, s.c_in]),
            ("dy", dy, [s.batch, ho, wo, s.c_out]),
            ("dw", dw, [s.c_out, s.kernel, s.kernel, s.c_in]),
        ],
    )?;
    if !matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::Device(format!("{what}: x is {:?}; the tensor-core kernel takes bf16 or f16", x.dtype())));
    }
    dy.expect_dtype(x.dtype(), &format!("{what} dy"))?;
    dw.expect_dtype(DType::F32, &format!("{what} dw (an f32 gradient)"))?;
    let (m, n) = (s.c_out, s.kernel * s.kernel * s.c_in);
    to_i32(s.batch * ho * wo, &format!("{what} B*Ho*Wo"))?;
    to_i32(s.h * s.w * s.c_in, &format!("{what} H*W*C_in"))?;
    to_i32(m * n, &format!("{what} dw elements"))?;
    let (splits, per_split) = weight_split(s, ho, wo);
    to_i32(splits * m * n, &format!("{what} split-K partial elements"))?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(WEIGHT_TILE_TAPS) as u32, m.div_ceil(weight_tile_channels(m)) as u32, splits as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let variant = if weight_tile_channels(m) == 64 { "_m64" } else { "" };
    let name = format!("conv2d_nhwc_backward_weight{variant}_{}", x.dtype().suffix());
    let launch = |out: &CudaTensor, accumulate: i32| -> Result<()> {
        gpu.launch(
            "conv2d_nhwc",
            &name,
            cfg,
            &[
                &[x.arg(gpu), dy.arg(gpu), out.arg(gpu)][..],
                &nhwc_dims_args(s, ho, wo)?,
                &[to_i32(per_split, "pixel tiles per split")?, KArg::I32(accumulate)],
            ]
            .concat(),
        )
    };
    if splits == 1 {
        return launch(dw, 1);
    }
    // (splits, C_out, k*k*C_in); freed in stream order after the reduction.
    let partial = CudaTensor::empty(gpu, &[splits, m, n], DType::F32)?;
    launch(&partial, 0)?;
    add_weight_partials(gpu, &partial, dw, splits, m * n)
}

/// The integer arguments every conv2d_nhwc kernel takes after its pointers:
/// B, H, W, C_in, C_out, k, stride, pad, Ho, Wo (the NHWC order; `conv_dims_args` is NCHW's).
fn nhwc_dims_args(s: &Conv2dShape, ho: usize, wo: usize) -> Result<Vec<KArg>> {
    [
        (s.batch, "B"),
        (s.h, "H"),
        (s.w, "W"),
        (s.c_in, "C_in"),
        (s.c_out, "C_out"),
        (s.kernel, "kernel"),
        (s.stride, "stride"),
        (s.pad, "pad"),
        (ho, "Ho"),
        (wo, "Wo"),
    ]
    .iter()
    .map(|&(v, what)| to_i32(v, what))
    .collect()
}

/// The output size of a convolution that fits its input, or a typed error (`out_hw` would
/// underflow otherwise).
fn s_out_or_err(what: &str, s: &Conv2dShape) -> Result<(usize, usize)> {
    if s.kernel == 0 || s.stride == 0 || s.h + 2 * s.pad < s.kernel || s.w + 2 * s.pad < s.kernel {
        return Err(Error::Shape(format!("{what}: kernel, stride or padding do not fit the input: {s:?}")));
    }
    Ok(s.out_hw())
}

/// One check row's convolution: shape, epilogue, and a name for the table.
#[derive(Clone, Copy)]
struct Case {
    what: &'static str,
    s: Conv2dShape,
    bias: bool,
    residual: bool,
    relu: bool,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    what: &'static str,
    batch: usize,
    c_in: usize,
    hw: (usize, usize),
    c_out: usize,
    kernel: usize,
    stride: usize,
    epilogue: (bool, bool, bool),
) -> Case {
    let s = Conv2dShape { batch, c_in, h: hw.0, w: hw.1, c_out, kernel, stride, pad: kernel / 2 };
    Case { what, s, bias: epilogue.0, residual: epilogue.1, relu: epilogue.2 }
}

/// ResNet-50's convolution kinds (torchvision's channel counts; spatial sizes cut so that a row
/// stays within the simulator's default work cap), then odd shapes: C_in not a multiple of 8
/// (the gather path), C_out not a multiple of 8 (scalar stores) or of the 64-channel tile, H, W
/// not multiples of anything, K not a multiple of the 32-deep k tile. (bias, residual, relu).
const CASES: &[Case] = &[
    case("stem 7x7/2", 1, 3, (64, 64), 64, 7, 2, (true, false, true)),
    case("layer1 1x1", 2, 64, (28, 28), 64, 1, 1, (true, false, true)),
    case("layer1 3x3/1", 1, 64, (28, 28), 64, 3, 1, (true, false, true)),
    case("layer1 1x1 onto identity", 1, 64, (28, 28), 256, 1, 1, (true, true, true)),
    case("layer2 3x3/2", 1, 128, (28, 28), 128, 3, 2, (true, false, true)),
    case("layer2 downsample 1x1/2", 1, 256, (28, 28), 512, 1, 2, (true, false, false)),
    case("layer4 1x1 2048->512", 1, 2048, (7, 7), 512, 1, 1, (true, false, true)),
    case("odd", 2, 16, (13, 11), 70, 3, 1, (true, true, true)),
    case("odd", 1, 24, (9, 10), 40, 3, 2, (false, false, false)),
    case("odd", 2, 5, (11, 11), 7, 3, 2, (true, true, true)),
    case("odd stem", 1, 3, (17, 19), 9, 7, 2, (false, false, false)),
    case("odd", 3, 8, (7, 7), 13, 1, 1, (false, true, false)),
    case("odd", 1, 40, (5, 6), 136, 1, 1, (true, false, true)),
];

fn flops(s: &Conv2dShape) -> f64 {
    let (ho, wo) = s.out_hw();
    2.0 * (s.batch * ho * wo) as f64 * s.c_out as f64 * (s.c_in * s.kernel * s.kernel) as f64
}

fn label(c: &Case, layout: &str) -> String {
    let s = &c.s;
    format!(
        "{} {layout} B={} Cin={} {}x{} Cout={} k={} s={} bias={} residual={} relu={}",
        c.what, s.batch, s.c_in, s.h, s.w, s.c_out, s.kernel, s.stride, c.bias, c.residual, c.relu
    )
}

/// A check case's inputs on the device, in either layout, and the values the kernel sees (read
/// back after rounding to the dtype) for the CPU side.
struct CaseInputs {
    xd: CudaTensor,
    wd: CudaTensor,
    bd: Option<CudaTensor>,
    rd: Option<CudaTensor>,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    residual: Option<Vec<f32>>,
}

/// Random inputs of `c` with x, w and the output (the residual's shape) in the given shapes.
fn case_inputs(
    gpu: &Gpu,
    rng: &mut rand::rngs::StdRng,
    c: &Case,
    dtype: DType,
    shapes: [[usize; 4]; 3],
) -> Result<CaseInputs> {
    let [x_shape, w_shape, out] = shapes;
    let s = &c.s;
    let kk = s.c_in * s.kernel * s.kernel;
    let numel = |shape: [usize; 4]| shape.iter().product::<usize>();
    let xd = CudaTensor::from_f32(gpu, &x_shape, &random_vec(rng, numel(x_shape), 1.0), dtype)?;
    let wd = CudaTensor::from_f32(gpu, &w_shape, &random_vec(rng, numel(w_shape), 2.0 / (kk as f32).sqrt()), dtype)?;
    let bias = c.bias.then(|| random_vec(rng, s.c_out, 0.5));
    let bd = bias.as_ref().map(|b| CudaTensor::from_f32(gpu, &[s.c_out], b, DType::F32)).transpose()?;
    let rd =
        c.residual.then(|| CudaTensor::from_f32(gpu, &out, &random_vec(rng, numel(out), 1.0), dtype)).transpose()?;
    let (x, w) = (xd.to_f32_vec(gpu)?, wd.to_f32_vec(gpu)?);
    let residual = rd.as_ref().map(|r| r.to_f32_vec(gpu)).transpose()?;
    Ok(CaseInputs { xd, wd, bd, rd, x, w, bias, residual })
}

/// Kernel checks: every case in bf16 and f16 against the definition (the fast CPU path above
/// `REFERENCE_MAX_WORK`), inputs rounded to the dtype first; and, as the baseline of
/// benches/RESULTS.md, the NCHW kernel (`conv2d_cuda`) on the ResNet-50 cases in bf16.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &c in CASES {
        for dtype in [DType::BF16, DType::F16] {
            checks.push(GpuCheck::new(
                "conv2d_nhwc_forward",
                label(&c, "NHWC"),
                dtype,
                Work::Flops(flops(&c.s)),
                move |gpu, rng| {
                    let s = c.s;
                    let (ho, wo) = s.out_hw();
                    let out = [s.batch, ho, wo, s.c_out];
                    let shapes = [[s.batch, s.h, s.w, s.c_in], [s.c_out, s.kernel, s.kernel, s.c_in], out];
                    let CaseInputs { xd, wd, bd, rd, x, w, bias, residual } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                    let want = if flops(&s) <= REFERENCE_MAX_WORK {
                        conv2d_nhwc_reference(&x, &w, bias.as_deref(), &s, c.relu, residual.as_deref())
                    } else {
                        let mut y = residual.unwrap_or_else(|| vec![0.0; out.iter().product()]);
                        conv2d_nhwc_cpu(&x, &w, bias.as_deref(), &s, c.relu, c.residual, &mut y);
                        y
                    };
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &out, dtype)?,
                        move |g, yd| {
                            let ep = ConvEpilogue { bias: bd.as_ref(), residual: rd.as_ref(), relu: c.relu };
                            conv2d_nhwc_cuda(g, &xd, &wd, &s, &ep, yd)
                        },
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    // Backward-data: ResNet-50's kinds at small spatial sizes, strides 1 and 2 (the stem with its
    // 3 channels, gathered, and padded to 8), then odd shapes: C_in not a multiple of 8 (scalar
    // stores of dx), C_out not a multiple of 8 (the gather over dy's channels), a 5x5/2 whose
    // phases have 3 and 2 taps per axis, H, W not multiples of the stride.
    let backward_data: &[Case] = &[
        case("bwd-data layer1 3x3", 1, 64, (14, 14), 64, 3, 1, (false, false, false)),
        case("bwd-data layer1 1x1 64->256", 1, 64, (14, 14), 256, 1, 1, (false, false, false)),
        case("bwd-data layer2 3x3/2", 1, 128, (14, 14), 128, 3, 2, (false, false, false)),
        case("bwd-data layer2 downsample 1x1/2", 1, 256, (14, 14), 512, 1, 2, (false, false, false)),
        case("bwd-data stem 7x7/2", 1, 3, (32, 32), 64, 7, 2, (false, false, false)),
        case("bwd-data stem 7x7/2 padded to 8", 1, 8, (32, 32), 64, 7, 2, (false, false, false)),
        case("bwd-data odd", 2, 16, (9, 7), 24, 3, 1, (false, false, false)),
        case("bwd-data odd", 1, 5, (6, 5), 16, 3, 1, (false, false, false)),
        case("bwd-data odd", 2, 24, (5, 7), 7, 3, 1, (false, false, false)),
        case("bwd-data odd", 2, 16, (9, 7), 24, 3, 2, (false, false, false)),
        case("bwd-data odd", 1, 5, (11, 11), 7, 3, 2, (false, false, false)),
        case("bwd-data odd", 2, 24, (10, 9), 40, 5, 2, (false, false, false)),
    ];
    for &c in backward_data {
        for dtype in [DType::BF16, DType::F16] {
            checks.push(GpuCheck::new(
                "conv2d_nhwc_backward_data",
                label(&c, "NHWC"),
                dtype,
                Work::Flops(flops(&c.s)),
                move |gpu, rng| {
                    let s = c.s;
                    let (ho, wo) = s.out_hw();
                    // dy in x's place: case_inputs draws the first shape as the input.
                    let shapes = [
                        [s.batch, ho, wo, s.c_out],
                        [s.c_out, s.kernel, s.kernel, s.c_in],
                        [s.batch, s.h, s.w, s.c_in],
                    ];
                    let CaseInputs { xd: dyd, wd, x: dy, w, .. } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                    let want = conv2d_nhwc_backward_data_reference(&w, &dy, &s);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[s.batch, s.h, s.w, s.c_in], dtype)?,
                        move |g, dx| conv2d_nhwc_backward_data_cuda(g, &dyd, &wd, &s, dx),
                        |g, dx| max_rel_err_all(g, &[(dx, &want)]),
                    )
                },
            ));
        }
    }
    // Backward-weight: the same kinds; the 1x1 at B=2 28x28 and the stem at 64x64 have enough
    // pixels to be split (4 and 2 splits, through the reduce kernel), the others run one split
    // accumulating straight into dw. Rows with C_out <= 64 take the 64-channel tile (`_m64`), the
    // others the 128. dw starts random: the kernel must add, and an unwritten element shows.
    let backward_weight: &[Case] = &[
        case("bwd-weight layer1 3x3", 1, 64, (14, 14), 64, 3, 1, (false, false, false)),
        case("bwd-weight layer1 1x1 64->256", 1, 64, (14, 14), 256, 1, 1, (false, false, false)),
        case("bwd-weight layer1 1x1 split", 2, 64, (28, 28), 64, 1, 1, (false, false, false)),
        case("bwd-weight layer2 3x3/2", 1, 128, (14, 14), 128, 3, 2, (false, false, false)),
        case("bwd-weight layer2 downsample 1x1/2", 1, 256, (14, 14), 512, 1, 2, (false, false, false)),
        case("bwd-weight stem 7x7/2", 1, 3, (64, 64), 64, 7, 2, (false, false, false)),
        case("bwd-weight stem 7x7/2 padded to 8", 1, 8, (32, 32), 64, 7, 2, (false, false, false)),
        case("bwd-weight odd", 2, 16, (9, 7), 24, 3, 1, (false, false, false)),
        case("bwd-weight odd", 1, 5, (11, 11), 7, 3, 2, (false, false, false)),
        case("bwd-weight odd", 2, 24, (10, 9), 40, 5, 2, (false, false, false)),
        case("bwd-weight odd", 3, 8, (7, 7), 13, 1, 1, (false, false, false)),
    ];
    for &c in backward_weight {
        for dtype in [DType::BF16, DType::F16] {
            checks.push(GpuCheck::new(
                "conv2d_nhwc_backward_weight",
                label(&c, "NHWC"),
                dtype,
                Work::Flops(flops(&c.s)),
                move |gpu, rng| {
                    let s = c.s;
                    let (ho, wo) = s.out_hw();
                    let w_shape = [s.c_out, s.kernel, s.kernel, s.c_in];
                    let shapes = [[s.batch, s.h, s.w, s.c_in], w_shape, [s.batch, ho, wo, s.c_out]];
                    let CaseInputs { xd, x, .. } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                    let dy_shape = [s.batch, ho, wo, s.c_out];
                    let dyd =
                        CudaTensor::from_f32(gpu, &dy_shape, &random_vec(rng, dy_shape.iter().product(), 1.0), dtype)?;
                    let dy = dyd.to_f32_vec(gpu)?;
                    let dw0 = random_vec(rng, w_shape.iter().product(), 1.0);
                    let grad = conv2d_nhwc_backward_weight_reference(&x, &dy, &s);
                    let want: Vec<f32> = dw0.iter().zip(&grad).map(|(&a, &d)| (a as f64 + d) as f32).collect();
                    launch_and_compare(
                        gpu,
                        CudaTensor::from_f32(gpu, &w_shape, &dw0, DType::F32)?,
                        move |g, dw| conv2d_nhwc_backward_weight_cuda(g, &xd, &dyd, &s, dw),
                        |g, dw| max_rel_err_all(g, &[(dw, &want)]),
                    )
                },
            ));
        }
    }
    // The NCHW tensor-core backward kernels (conv2d_backward_{data,weight}_tc_bf16) on the same
    // ResNet-50 shapes in bf16: the baseline the profile compares.
    let resnet = |cases: &[Case]| -> Vec<Case> { cases.iter().filter(|c| !c.what.contains("odd")).copied().collect() };
    for c in resnet(backward_data) {
        let dtype = DType::BF16;
        checks.push(GpuCheck::new(
            "conv2d_nchw_backward_data_baseline",
            label(&c, "NCHW"),
            dtype,
            Work::Flops(flops(&c.s)),
            move |gpu, rng| {
                let s = c.s;
                let (ho, wo) = s.out_hw();
                let dx_shape = [s.batch, s.c_in, s.h, s.w];
                let shapes = [[s.batch, s.c_out, ho, wo], [s.c_out, s.c_in, s.kernel, s.kernel], dx_shape];
                let CaseInputs { xd: dyd, wd, x: dy, w, .. } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                let x_unused = vec![0.0f32; dx_shape.iter().product()];
                let (_, dx) = conv2d_backward_reference(&x_unused, &w, &dy, &s);
                let want: Vec<f32> = dx.iter().map(|&v| v as f32).collect();
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &dx_shape, dtype)?,
                    move |g, dx| conv2d_backward_data_cuda(g, &dyd, &wd, &s, dx),
                    |g, dx| max_rel_err_all(g, &[(dx, &want)]),
                )
            },
        ));
    }
    for c in resnet(backward_weight) {
        let dtype = DType::BF16;
        checks.push(GpuCheck::new(
            "conv2d_nchw_backward_weight_baseline",
            label(&c, "NCHW"),
            dtype,
            Work::Flops(flops(&c.s)),
            move |gpu, rng| {
                let s = c.s;
                let (ho, wo) = s.out_hw();
                let w_shape = [s.c_out, s.c_in, s.kernel, s.kernel];
                let shapes = [[s.batch, s.c_in, s.h, s.w], w_shape, [s.batch, s.c_out, ho, wo]];
                let CaseInputs { xd, x, .. } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                let dy_shape = [s.batch, s.c_out, ho, wo];
                let dyd =
                    CudaTensor::from_f32(gpu, &dy_shape, &random_vec(rng, dy_shape.iter().product(), 1.0), dtype)?;
                let dy = dyd.to_f32_vec(gpu)?;
                let dw0 = random_vec(rng, w_shape.iter().product(), 1.0);
                let (grad, _) = conv2d_backward_reference(&x, &vec![0.0; dw0.len()], &dy, &s);
                let want: Vec<f32> = dw0.iter().zip(&grad).map(|(&a, &d)| (a as f64 + d) as f32).collect();
                launch_and_compare(
                    gpu,
                    CudaTensor::from_f32(gpu, &w_shape, &dw0, DType::F32)?,
                    move |g, dw| conv2d_backward_weight_cuda(g, &xd, &dyd, &s, dw),
                    |g, dw| max_rel_err_all(g, &[(dw, &want)]),
                )
            },
        ));
    }
    // The NCHW kernel on the same ResNet-50 convolutions: the baseline the profile compares.
    for &c in CASES.iter().filter(|c| !c.what.starts_with("odd")) {
        let dtype = DType::BF16;
        checks.push(GpuCheck::new(
            "conv2d_nchw_baseline",
            label(&c, "NCHW"),
            dtype,
            Work::Flops(flops(&c.s)),
            move |gpu, rng| {
                let s = c.s;
                let (ho, wo) = s.out_hw();
                let out = [s.batch, s.c_out, ho, wo];
                let shapes = [[s.batch, s.c_in, s.h, s.w], [s.c_out, s.c_in, s.kernel, s.kernel], out];
                let CaseInputs { xd, wd, bd, rd, x, w, bias, residual } = case_inputs(gpu, rng, &c, dtype, shapes)?;
                let mut want = residual.unwrap_or_else(|| vec![0.0; out.iter().product()]);
                conv2d_cpu(&x, &w, bias.as_deref(), &s, c.relu, c.residual, &mut want);
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &out, dtype)?,
                    move |g, yd| conv2d_cuda(g, &xd, &wd, bd.as_ref(), &s, c.relu, rd.as_ref(), yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &want)]),
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

    fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    #[test]
    fn nhwc_paths_match_the_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(batch, c_in, h, w, c_out, kernel, stride, pad, relu) in
            &[(1, 3, 9, 7, 5, 7, 2, 3, true), (2, 8, 6, 5, 4, 3, 1, 1, false), (2, 5, 7, 7, 6, 1, 2, 0, true)]
        {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let (ho, wo) = s.out_hw();
            let x = rand_vec(&mut rng, batch * h * w * c_in);
            let wt = rand_vec(&mut rng, c_out * kernel * kernel * c_in);
            let bias = rand_vec(&mut rng, c_out);
            let residual = rand_vec(&mut rng, batch * ho * wo * c_out);
            let want = conv2d_nhwc_reference(&x, &wt, Some(&bias), &s, relu, Some(&residual));
            // The definition, by hand in NHWC indices, for one output in every few.
            for (o, &got) in want.iter().enumerate().step_by(7) {
                let co = o % c_out;
                let ox = (o / c_out) % wo;
                let oy = (o / c_out / wo) % ho;
                let b = o / c_out / wo / ho;
                let mut acc = residual[o] as f64 + bias[co] as f64;
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ci in 0..c_in {
                            let xi = ((b * h + iy as usize) * w + ix as usize) * c_in + ci;
                            acc += x[xi] as f64 * wt[((co * kernel + ky) * kernel + kx) * c_in + ci] as f64;
                        }
                    }
                }
                let v = if relu { acc.max(0.0) } else { acc } as f32;
                assert!((got - v).abs() <= 1e-5 * (1.0 + v.abs()), "{s:?} output {o}: {got} vs {v}");
            }
            let mut y = residual.clone();
            conv2d_nhwc_cpu(&x, &wt, Some(&bias), &s, relu, true, &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} fast path: {a} vs {b}");
            }
        }
    }

    #[test]
    fn backward_weight_reference_is_the_definition() {
        // dw[co, ky, kx, ci] = sum over (b, oy, ox) of dy[b, oy, ox, co] * x[b, iy, ix, ci], by
        // hand in NHWC indices, strided and padded.
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for &(batch, c_in, h, w, c_out, kernel, stride, pad) in &[(2, 3, 7, 6, 5, 3, 2, 1), (1, 4, 5, 5, 2, 1, 1, 0)] {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let (ho, wo) = s.out_hw();
            let x = rand_vec(&mut rng, batch * h * w * c_in);
            let dy = rand_vec(&mut rng, batch * ho * wo * c_out);
            let got = conv2d_nhwc_backward_weight_reference(&x, &dy, &s);
            assert_eq!(got.len(), c_out * kernel * kernel * c_in);
            for (o, &g) in got.iter().enumerate() {
                let ci = o % c_in;
                let kx = (o / c_in) % kernel;
                let ky = (o / c_in / kernel) % kernel;
                let co = o / c_in / kernel / kernel;
                let mut acc = 0.0f64;
                for b in 0..batch {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xi = ((b * h + iy as usize) * w + ix as usize) * c_in + ci;
                            acc += dy[((b * ho + oy) * wo + ox) * c_out + co] as f64 * x[xi] as f64;
                        }
                    }
                }
                assert!((g - acc).abs() <= 1e-9 * (1.0 + acc.abs()), "{s:?} dw {o}: {g} vs {acc}");
            }
        }
    }

    #[test]
    fn backward_launchers_refuse_bad_inputs_and_pick_their_kernels() {
        // On the launch recorder (nothing runs): typed errors for wrong dtypes and shapes, and the
        // entry points each shape takes.
        if !crate::device::cuda::has_kernels() {
            return;
        }
        let gpu = Gpu::launch_recorder().unwrap();
        let t = |shape: &[usize], dtype| CudaTensor::empty(&gpu, shape, dtype).unwrap();
        let s = Conv2dShape { batch: 1, c_in: 16, h: 9, w: 9, c_out: 64, kernel: 3, stride: 2, pad: 1 };
        let (ho, wo) = s.out_hw();
        let (x, dy, w) =
            (t(&[1, 9, 9, 16], DType::BF16), t(&[1, ho, wo, 64], DType::BF16), t(&[64, 3, 3, 16], DType::BF16));
        let mut dx = t(&[1, 9, 9, 16], DType::BF16);
        let mut dw = t(&[64, 3, 3, 16], DType::F32);
        conv2d_nhwc_backward_data_cuda(&gpu, &dy, &w, &s, &mut dx).unwrap();
        conv2d_nhwc_backward_weight_cuda(&gpu, &x, &dy, &s, &mut dw).unwrap();
        // C_out 128: the 128-channel weight tile; B=4 32x32 at stride 1: enough pixels to split.
        let big = Conv2dShape { batch: 4, c_in: 8, h: 32, w: 32, c_out: 128, kernel: 1, stride: 1, pad: 0 };
        let mut dw_big = t(&[128, 1, 1, 8], DType::F32);
        conv2d_nhwc_backward_weight_cuda(
            &gpu,
            &t(&[4, 32, 32, 8], DType::F16),
            &t(&[4, 32, 32, 128], DType::F16),
            &big,
            &mut dw_big,
        )
        .unwrap();
        let names: Vec<String> = gpu.recorded_launches().iter().map(|l| l.function.clone()).collect();
        assert_eq!(
            names,
            [
                "conv2d_nhwc_backward_data_bf16",
                "conv2d_nhwc_backward_weight_m64_bf16",
                "conv2d_nhwc_backward_weight_f16",
                "conv2d_backward_weight_reduce"
            ]
        );
        assert!(gpu.recorded_launches().iter().all(|l| l.mismatch.is_none()));
        // dw must be f32; f32 activations are not the tensor-core kernels'; shapes must match.
        let mut dw_bf16 = t(&[64, 3, 3, 16], DType::BF16);
        assert!(conv2d_nhwc_backward_weight_cuda(&gpu, &x, &dy, &s, &mut dw_bf16).is_err());
        let (dy32, w32) = (t(&[1, ho, wo, 64], DType::F32), t(&[64, 3, 3, 16], DType::F32));
        let mut dx32 = t(&[1, 9, 9, 16], DType::F32);
        assert!(conv2d_nhwc_backward_data_cuda(&gpu, &dy32, &w32, &s, &mut dx32).is_err());
        assert!(conv2d_nhwc_backward_data_cuda(&gpu, &dy, &w32, &s, &mut dx).is_err());
        let wrong = Conv2dShape { c_in: 8, ..s };
        assert!(conv2d_nhwc_backward_data_cuda(&gpu, &dy, &w, &wrong, &mut dx).is_err());
        assert!(conv2d_nhwc_backward_weight_cuda(&gpu, &x, &dy, &wrong, &mut dw).is_err());
        let too_small = Conv2dShape { kernel: 13, ..s };
        assert!(conv2d_nhwc_backward_data_cuda(&gpu, &dy, &w, &too_small, &mut dx).is_err());
    }

    #[test]
    fn folded_batchnorm_is_conv_then_batchnorm() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let s = Conv2dShape { batch: 2, c_in: 6, h: 7, w: 5, c_out: 4, kernel: 3, stride: 1, pad: 1 };
        let (ho, wo) = s.out_hw();
        let x = rand_vec(&mut rng, s.batch * s.h * s.w * s.c_in);
        let wt = rand_vec(&mut rng, s.c_out * 9 * s.c_in);
        let conv_bias = rand_vec(&mut rng, s.c_out);
        let gamma = rand_vec(&mut rng, s.c_out);
        let beta = rand_vec(&mut rng, s.c_out);
        let mean = rand_vec(&mut rng, s.c_out);
        let var: Vec<f32> = (0..s.c_out).map(|_| rng.gen_range(0.1..2.0)).collect();
        let bn = BatchNormParams { gamma: &gamma, beta: &beta, mean: &mean, var: &var, eps: 1e-5 };
        let (fw, fb) = fold_batchnorm(&wt, Some(&conv_bias), &bn, s.c_out).unwrap();
        let folded = conv2d_nhwc_reference(&x, &fw, Some(&fb), &s, false, None);
        // Conv, then the batch norm on its output (channels last: channel = index % C_out).
        let conv = conv2d_nhwc_reference(&x, &wt, Some(&conv_bias), &s, false, None);
        assert_eq!(conv.len(), s.batch * ho * wo * s.c_out);
        for (o, (&c, &f)) in conv.iter().zip(&folded).enumerate() {
            let co = o % s.c_out;
            let want = (c - mean[co]) / (var[co] + bn.eps).sqrt() * gamma[co] + beta[co];
            assert!((f - want).abs() <= 1e-5 * (1.0 + want.abs()), "output {o}: folded {f} vs conv+bn {want}");
        }
        // Mismatched lengths are an error, not a panic.
        assert!(fold_batchnorm(&wt, None, &bn, s.c_out + 1).is_err());
    }
}
