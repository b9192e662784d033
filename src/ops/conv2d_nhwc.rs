//! 2-D convolution on channels-last (NHWC) activations: x (B, H, W, C_in), filters
//! (C_out, k, k, C_in), y (B, Ho, Wo, C_out), with conv2d's fused epilogue
//! y = relu?((residual + conv) + bias); and a batch norm folded into a convolution for inference.
//! The kernel (kernels/conv2d_nhwc.cu) is a multistage cp.async implicit GEMM on the tensor
//! cores (bf16 / f16); the layout makes 8 consecutive reduction indices 8 consecutive channels,
//! one 16-byte load.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work, REFERENCE_MAX_WORK,
};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::conv2d::{conv2d_cpu, conv2d_cuda, conv2d_reference, Conv2dShape};
use crate::ops::conv2d_backward::conv2d_backward_reference;

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
            x.arg(gpu),
            w.arg(gpu),
            ep.bias.map_or(null, |b| b.arg(gpu)),
            ep.residual.map_or(null, |r| r.arg(gpu)),
            y.arg(gpu),
            to_i32(s.batch, "B")?,
            to_i32(s.h, "H")?,
            to_i32(s.w, "W")?,
            to_i32(s.c_in, "C_in")?,
            to_i32(s.c_out, "C_out")?,
            to_i32(s.kernel, "kernel")?,
            to_i32(s.stride, "stride")?,
            to_i32(s.pad, "pad")?,
            to_i32(ho, "Ho")?,
            to_i32(wo, "Wo")?,
            KArg::I32(ep.relu as i32),
        ],
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

/// CUDA launcher, backward-data of a stride-1 convolution: dx (B, H, W, C_in) from dy (B, Ho, Wo,
/// C_out) and w (C_out, k, k, C_in), overwritten. It is the forward kernel run on dy with the
/// filters flipped and transposed (kernels/conv2d_nhwc.cu `conv2d_nhwc_flip_weight`, into a
/// (C_in, k, k, C_out) buffer allocated here) and padding k - 1 - pad: the same pipeline.
/// Strided convolutions are refused (their backward-data is a gather this path does not do).
pub fn conv2d_nhwc_backward_data_cuda(
    gpu: &Gpu,
    dy: &CudaTensor,
    w: &CudaTensor,
    s: &Conv2dShape,
    dx: &mut CudaTensor,
) -> Result<()> {
    let (ho, wo) = s.out_hw();
    if s.stride != 1 || s.kernel == 0 || s.pad >= s.kernel || s.h + 2 * s.pad < s.kernel || s.w + 2 * s.pad < s.kernel {
        return Err(Error::Shape(format!(
            "conv2d_nhwc_backward_data_cuda: {s:?}: stride 1 and pad < kernel only (strided backward-data is not on this path)"
        )));
    }
    if dy.shape() != [s.batch, ho, wo, s.c_out] || w.shape() != [s.c_out, s.kernel, s.kernel, s.c_in] {
        return Err(Error::Shape(format!(
            "conv2d_nhwc_backward_data_cuda: {s:?}, dy {:?}, w {:?}",
            dy.shape(),
            w.shape()
        )));
    }
    w.expect_dtype(dy.dtype(), "conv2d_nhwc_backward_data_cuda weight")?;
    let flipped = CudaTensor::empty(gpu, &[s.c_in, s.kernel, s.kernel, s.c_out], dy.dtype())?;
    let total = flipped.numel();
    if total > 0 {
        to_i32(total, "conv2d_nhwc_backward_data_cuda filter elements")?;
        gpu.launch(
            "conv2d_nhwc",
            &format!("conv2d_nhwc_flip_weight_{}", dy.dtype().suffix()),
            LaunchConfig::for_num_elems(total as u32),
            &[
                w.arg(gpu),
                flipped.arg(gpu),
                to_i32(s.c_out, "C_out")?,
                to_i32(s.kernel, "kernel")?,
                to_i32(s.c_in, "C_in")?,
            ],
        )?;
    }
    let transposed = Conv2dShape {
        batch: s.batch,
        c_in: s.c_out,
        h: ho,
        w: wo,
        c_out: s.c_in,
        kernel: s.kernel,
        stride: 1,
        pad: s.kernel - 1 - s.pad,
    };
    conv2d_nhwc_cuda(gpu, dy, &flipped, &transposed, &ConvEpilogue::default(), dx)
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
    // Backward-data (stride 1): a ResNet-50 3x3 and 1x1, odd shapes (C_in = 5: scalar stores of
    // dx; C_out = 7: the gather path over dy's channels).
    let backward: &[Case] = &[
        case("bwd-data layer1 3x3", 1, 64, (14, 14), 64, 3, 1, (false, false, false)),
        case("bwd-data layer1 1x1 64->256", 1, 64, (14, 14), 256, 1, 1, (false, false, false)),
        case("bwd-data odd", 2, 16, (9, 7), 24, 3, 1, (false, false, false)),
        case("bwd-data odd", 1, 5, (6, 5), 16, 3, 1, (false, false, false)),
        case("bwd-data odd", 2, 24, (5, 7), 7, 3, 1, (false, false, false)),
    ];
    for &c in backward {
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
    fn backward_data_is_the_forward_with_flipped_filters() {
        // The identity conv2d_nhwc_backward_data_cuda relies on, on the CPU: dx of a stride-1
        // convolution = the forward convolution of dy with wt[ci, ky, kx, co] =
        // w[co, k-1-ky, k-1-kx, ci] and padding k - 1 - pad.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for &(batch, c_in, h, w, c_out, kernel, pad) in
            &[(2, 5, 6, 7, 3, 3, 1), (1, 4, 5, 5, 6, 1, 0), (1, 2, 7, 6, 3, 5, 2)]
        {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride: 1, pad };
            let (ho, wo) = s.out_hw();
            let wt = rand_vec(&mut rng, c_out * kernel * kernel * c_in);
            let dy = rand_vec(&mut rng, batch * ho * wo * c_out);
            let k = kernel;
            let mut flipped = vec![0.0f32; wt.len()];
            for ci in 0..c_in {
                for ky in 0..k {
                    for kx in 0..k {
                        for co in 0..c_out {
                            flipped[((ci * k + ky) * k + kx) * c_out + co] =
                                wt[((co * k + (k - 1 - ky)) * k + (k - 1 - kx)) * c_in + ci];
                        }
                    }
                }
            }
            let t = Conv2dShape { batch, c_in: c_out, h: ho, w: wo, c_out: c_in, kernel, stride: 1, pad: k - 1 - pad };
            let forward = conv2d_nhwc_reference(&dy, &flipped, None, &t, false, None);
            let dx = conv2d_nhwc_backward_data_reference(&wt, &dy, &s);
            assert_eq!(dx.len(), batch * h * w * c_in);
            for (a, b) in forward.iter().zip(&dx) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?}: {a} vs {b}");
            }
        }
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
