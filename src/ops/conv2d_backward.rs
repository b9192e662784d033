//! 2-D convolution backward (NCHW, no bias): the weight gradient dW = dY @ im2col(X)^T and the
//! data gradient dX = col2im(W^T @ dY), image by image, each a GEMM. On the GPU both are
//! implicit GEMMs (kernels/conv2d_backward.cu) that gather im2col tiles on the fly.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Launch, Work, REFERENCE_MAX_WORK,
};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::conv2d::{conv2d_taps, im2col_rows, Conv2dShape};
use crate::ops::matmul::{gemm_cpu, MatRef};

/// The definition: (dw, dx) as sums over every output, in f64, of dy (B, C_out, Ho, Wo) against
/// x (B, C_in, H, W) and w (C_out, C_in, k, k). The fast CPU path below and the kernels are
/// checked against it (kernels directly on check rows up to `REFERENCE_MAX_WORK`).
pub fn conv2d_backward_reference(x: &[f32], w: &[f32], dy: &[f32], s: &Conv2dShape) -> (Vec<f64>, Vec<f64>) {
    let mut dw = vec![0.0f64; w.len()];
    let mut dx = vec![0.0f64; x.len()];
    conv2d_taps(s, |yi, xi, wi| {
        dw[wi] += dy[yi] as f64 * x[xi] as f64;
        dx[xi] += dy[yi] as f64 * w[wi] as f64;
    });
    (dw, dx)
}

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
pub fn conv2d_backward_cpu(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    s: &Conv2dShape,
    dw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
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
            gemm_cpu(
                s.c_out,
                kk,
                n,
                MatRef::row_major(dyb, n),
                MatRef::transposed(xcols, n),
                dw.as_mut_ptr(),
                kk as isize,
                true,
                true,
            );
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dxb = &mut dx[b * s.c_in * s.h * s.w..][..s.c_in * s.h * s.w];
            if direct {
                // SAFETY: W^T (C_in x C_out) @ dY_b (C_out x n) -> dx_b (C_in x n).
                unsafe {
                    gemm_cpu(
                        kk,
                        n,
                        s.c_out,
                        MatRef::transposed(w, kk),
                        MatRef::row_major(dyb, n),
                        dxb.as_mut_ptr(),
                        n as isize,
                        false,
                        true,
                    );
                }
            } else {
                // SAFETY: W^T (kk x C_out) @ dY_b (C_out x n) -> cols (kk x n).
                unsafe {
                    gemm_cpu(
                        kk,
                        n,
                        s.c_out,
                        MatRef::transposed(w, kk),
                        MatRef::row_major(dyb, n),
                        cols.as_mut_ptr(),
                        n as isize,
                        false,
                        true,
                    );
                }
                col2im_add(&cols, s, dxb);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CUDA: kernels/conv2d_backward.cu

/// Output tile of both kernels (rows and columns) and their K step; must match CBW_BM / CBW_BN /
/// CBW_BK / CBW_THREADS in kernels/conv2d_backward.cu.
const CBW_TILE: usize = 64;
const CBW_TILE_K: usize = 16;
const CBW_THREADS: u32 = 256;
/// Split K until the weight-gradient grid has about this many blocks (a few waves on the
/// largest GPUs) ...
const SPLIT_K_TARGET_BLOCKS: usize = 512;
/// ... but keep every split at least this many K steps long (512 output pixels), so the
/// partial tiles and their reduction stay small next to the GEMM.
const SPLIT_K_MIN_STEPS: usize = 32;

/// (Ho, Wo) of `s`, or an error naming `what` when `s` is not a valid convolution.
fn checked_out_hw(s: &Conv2dShape, what: &str) -> Result<(usize, usize)> {
    let empty = s.batch == 0 || s.c_in == 0 || s.c_out == 0 || s.kernel == 0 || s.stride == 0;
    if empty || s.h + 2 * s.pad < s.kernel || s.w + 2 * s.pad < s.kernel {
        return Err(Error::Shape(format!("{what}: not a valid convolution: {s:?}")));
    }
    Ok(s.out_hw())
}

/// Errors, naming each tensor's wanted and found shape, unless every tensor has its shape.
fn expect_shapes(what: &str, s: &Conv2dShape, tensors: &[(&str, &CudaTensor, [usize; 4])]) -> Result<()> {
    if tensors.iter().all(|(_, t, want)| t.shape() == want) {
        return Ok(());
    }
    let list: Vec<String> =
        tensors.iter().map(|(name, t, want)| format!("{name} {want:?} (got {:?})", t.shape())).collect();
    Err(Error::Shape(format!("{what}: {s:?} wants {}", list.join(", "))))
}

/// The integer arguments that both kernels take after their pointers:
/// B, Cin, H, W, Cout, k, stride, pad, Ho, Wo.
fn conv_dims_args(s: &Conv2dShape, ho: usize, wo: usize) -> Result<Vec<crate::device::cuda::KArg>> {
    [
        (s.batch, "batch"),
        (s.c_in, "C_in"),
        (s.h, "H"),
        (s.w, "W"),
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

/// How the weight gradient's K = B*Ho*Wo is split: (splits, K steps per split).
fn split_k(s: &Conv2dShape, ho: usize, wo: usize) -> (usize, usize) {
    let tiles = s.c_out.div_ceil(CBW_TILE) * (s.c_in * s.kernel * s.kernel).div_ceil(CBW_TILE);
    let steps = (s.batch * ho * wo).div_ceil(CBW_TILE_K);
    let wanted = SPLIT_K_TARGET_BLOCKS.div_ceil(tiles).min(steps.div_ceil(SPLIT_K_MIN_STEPS)).max(1);
    let per_split = steps.div_ceil(wanted);
    (steps.div_ceil(per_split), per_split)
}

/// How the kernels multiply a staged tile: f32 FMAs, or mma.sync tensor cores (bf16 / f16
/// inputs, f32 accumulation). The launchers use tensor cores for bf16 / f16 and SIMT for f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvBackwardKernel {
    Simt,
    TensorCore,
}

impl ConvBackwardKernel {
    pub fn default_for(dtype: DType) -> ConvBackwardKernel {
        if dtype == DType::F32 {
            ConvBackwardKernel::Simt
        } else {
            ConvBackwardKernel::TensorCore
        }
    }

    /// The entry point of kernel family `op` for `dtype` (`conv2d_backward_weight_tc_bf16`).
    fn entry(self, op: &str, dtype: DType, what: &str) -> Result<String> {
        match self {
            ConvBackwardKernel::Simt => Ok(format!("{op}_{}", dtype.suffix())),
            ConvBackwardKernel::TensorCore if dtype == DType::F32 => {
                Err(Error::Device(format!("{what}: the tensor-core kernels take bf16 or f16, not f32")))
            }
            ConvBackwardKernel::TensorCore => Ok(format!("{op}_tc_{}", dtype.suffix())),
        }
    }
}

/// CUDA launcher of the weight gradient: `dw` (C_out, C_in, k, k) f32 += the gradient from
/// `x` (B, C_in, H, W) and `dy` (B, C_out, Ho, Wo), both in one float dtype. Accumulates like
/// `conv2d_backward_cpu`. An implicit GEMM split along K = B*Ho*Wo; when there is more than
/// one split, the partial tiles go to a scratch buffer and a second kernel adds them to `dw`
/// in a fixed order, so the result does not change from run to run.
pub fn conv2d_backward_weight_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    dy: &CudaTensor,
    s: &Conv2dShape,
    dw: &mut CudaTensor,
) -> Result<()> {
    conv2d_backward_weight_cuda_with(gpu, x, dy, s, dw, ConvBackwardKernel::default_for(x.dtype()))
}

/// `conv2d_backward_weight_cuda` with a chosen kernel.
pub fn conv2d_backward_weight_cuda_with(
    gpu: &Gpu,
    x: &CudaTensor,
    dy: &CudaTensor,
    s: &Conv2dShape,
    dw: &mut CudaTensor,
    kernel: ConvBackwardKernel,
) -> Result<()> {
    let what = "conv2d_backward_weight_cuda";
    let (ho, wo) = checked_out_hw(s, what)?;
    let k = s.kernel;
    expect_shapes(
        what,
        s,
        &[
            ("x", x, [s.batch, s.c_in, s.h, s.w]),
            ("dy", dy, [s.batch, s.c_out, ho, wo]),
            ("dw", dw, [s.c_out, s.c_in, k, k]),
        ],
    )?;
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("{what}: x must be f32, bf16 or f16, found {:?}", x.dtype())));
    }
    dy.expect_dtype(x.dtype(), &format!("{what} dy"))?;
    dw.expect_dtype(DType::F32, &format!("{what} dw (an f32 gradient)"))?;
    to_i32(x.numel(), "x elements")?;
    to_i32(dy.numel(), "dy elements")?;
    let (m, n) = (s.c_out, s.c_in * k * k);
    let (splits, per_split) = split_k(s, ho, wo);
    to_i32(m * n, "dw elements")?;
    to_i32(splits * m * n, "split-K partial elements")?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(CBW_TILE) as u32, m.div_ceil(CBW_TILE) as u32, splits as u32),
        block_dim: (CBW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = kernel.entry("conv2d_backward_weight", x.dtype(), what)?;
    let dims = conv_dims_args(s, ho, wo)?;
    let launch = |out: &CudaTensor, accumulate: i32| {
        let mut args = vec![x.arg(gpu), dy.arg(gpu), out.arg(gpu)];
        args.extend_from_slice(&dims);
        args.extend([to_i32(per_split, "K steps per split")?, accumulate.into()]);
        gpu.launch("conv2d_backward", &name, cfg, &args)
    };
    if splits == 1 {
        return launch(dw, 1);
    }
    // (splits, C_out, C_in*k*k); freed in stream order after the reduction.
    let partial = CudaTensor::empty(gpu, &[splits, m, n], DType::F32)?;
    launch(&partial, 0)?;
    add_weight_partials(gpu, &partial, dw, splits, m * n)
}

/// dw (f32, `mn` values) += the `splits` split-K partial weight gradients in `partial`
/// (splits, mn), added in split order (`conv2d_backward_weight_reduce`): no atomics, the same
/// bits on every run. Shared by the NCHW and the NHWC (`conv2d_nhwc`) backward-weight.
pub(crate) fn add_weight_partials(
    gpu: &Gpu,
    partial: &CudaTensor,
    dw: &mut CudaTensor,
    splits: usize,
    mn: usize,
) -> Result<()> {
    let reduce =
        LaunchConfig { grid_dim: (mn.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    gpu.launch(
        "conv2d_backward",
        "conv2d_backward_weight_reduce",
        reduce,
        &[partial.arg(gpu), dw.arg(gpu), to_i32(mn, "dw elements")?, to_i32(splits, "splits")?],
    )
}

/// CUDA launcher of the data gradient: `dx` (B, C_in, H, W) = the transposed convolution of
/// `dy` (B, C_out, Ho, Wo) with `w` (C_out, C_in, k, k), all three in one float dtype.
/// Overwrites `dx`, like `conv2d_backward_cpu`. An implicit GEMM over input pixels x C_in with
/// K = C_out*k*k taps, each gathered from dy where the tap lands on an output pixel.
pub fn conv2d_backward_data_cuda(
    gpu: &Gpu,
    dy: &CudaTensor,
    w: &CudaTensor,
    s: &Conv2dShape,
    dx: &mut CudaTensor,
) -> Result<()> {
    conv2d_backward_data_cuda_with(gpu, dy, w, s, dx, ConvBackwardKernel::default_for(dy.dtype()))
}

/// `conv2d_backward_data_cuda` with a chosen kernel.
pub fn conv2d_backward_data_cuda_with(
    gpu: &Gpu,
    dy: &CudaTensor,
    w: &CudaTensor,
    s: &Conv2dShape,
    dx: &mut CudaTensor,
    kernel: ConvBackwardKernel,
) -> Result<()> {
    let what = "conv2d_backward_data_cuda";
    let (ho, wo) = checked_out_hw(s, what)?;
    let k = s.kernel;
    expect_shapes(
        what,
        s,
        &[
            ("dy", dy, [s.batch, s.c_out, ho, wo]),
            ("w", w, [s.c_out, s.c_in, k, k]),
            ("dx", dx, [s.batch, s.c_in, s.h, s.w]),
        ],
    )?;
    if !dy.dtype().is_float() {
        return Err(Error::Device(format!("{what}: dy must be f32, bf16 or f16, found {:?}", dy.dtype())));
    }
    w.expect_dtype(dy.dtype(), &format!("{what} w"))?;
    dx.expect_dtype(dy.dtype(), &format!("{what} dx"))?;
    to_i32(dx.numel(), "dx elements")?;
    to_i32(dy.numel(), "dy elements")?;
    to_i32(w.numel(), "w elements")?;
    let pixels = s.batch * s.h * s.w;
    let grid_y = s.c_in.div_ceil(CBW_TILE);
    if grid_y > 65535 {
        return Err(Error::Shape(format!("{what}: C_in = {} is too many channels", s.c_in)));
    }
    let cfg = LaunchConfig {
        grid_dim: (pixels.div_ceil(CBW_TILE) as u32, grid_y as u32, 1),
        block_dim: (CBW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = kernel.entry("conv2d_backward_data", dy.dtype(), what)?;
    let mut args = vec![dy.arg(gpu), w.arg(gpu), dx.arg(gpu)];
    args.extend(conv_dims_args(s, ho, wo)?);
    gpu.launch("conv2d_backward", &name, cfg, &args)
}

/// One row-major f32 GEMM through cuBLAS on device addresses: c (m x n) = a @ b + beta * c,
/// with `a` given as (m x k) or, `a_t`, as its transpose (k x m); `b` likewise (`b_t`).
#[allow(clippy::too_many_arguments)]
fn cublas_sgemm_rm(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    a_t: bool,
    b: u64,
    b_t: bool,
    beta: f32,
    c: u64,
) -> Result<()> {
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let blas = gpu.cublas()?;
    let int = |v: usize| i32::try_from(v).map_err(|_| Error::Shape(format!("cuBLAS size {v} does not fit an int")));
    // Row-major c = a @ b is column-major c^T = b^T @ a^T: swap the operands.
    let (lda, ldb) = (if a_t { m } else { k }, if b_t { k } else { n });
    // SAFETY: the callers pass device addresses of buffers of these sizes, on the handle's stream.
    unsafe {
        cudarc::cublas::result::sgemm(
            *blas.handle(),
            if b_t { CUBLAS_OP_T } else { CUBLAS_OP_N },
            if a_t { CUBLAS_OP_T } else { CUBLAS_OP_N },
            int(n)?,
            int(m)?,
            int(k)?,
            &1.0,
            b as *const f32,
            int(ldb)?,
            a as *const f32,
            int(lda)?,
            &beta,
            c as *mut f32,
            int(n)?,
        )
    }
    .map_err(|e| Error::Device(format!("cublasSgemm: {e:?}")))
}

/// The checks' shapes: ResNet-50 (torchvision v1.5: stride on the 3x3) at input 448, batch 2,
/// and odd small ones (partial tiles, stride-2 taps that miss, a ragged last split of K).
fn check_shapes() -> Vec<(&'static str, Conv2dShape)> {
    let c =
        |batch, c_in, h, w, c_out, kernel, stride, pad| Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
    vec![
        ("stem 7x7 s2", c(2, 3, 448, 448, 64, 7, 2, 3)),
        ("layer1 1x1", c(2, 64, 112, 112, 64, 1, 1, 0)),
        ("layer1 3x3", c(2, 64, 112, 112, 64, 3, 1, 1)),
        ("layer2 3x3 s2", c(2, 128, 112, 112, 128, 3, 2, 1)),
        ("layer4 downsample 1x1 s2", c(2, 1024, 28, 28, 2048, 1, 2, 0)),
        ("layer4 3x3", c(2, 512, 14, 14, 512, 3, 1, 1)),
        ("odd 3x3 s2", c(3, 5, 9, 11, 7, 3, 2, 1)),
        ("odd 1x1", c(3, 5, 9, 11, 7, 1, 1, 0)),
        ("odd 3x3 s2 split-K", c(3, 5, 57, 61, 7, 3, 2, 1)),
        ("odd 3x3 two tiles", c(2, 70, 13, 10, 67, 3, 1, 1)),
    ]
}

/// Kernel checks (see device::cuda::check): both gradients on ResNet-50's and odd shapes, every
/// dtype, each kernel variant. The weight gradient accumulates onto random values (so an unwritten element shows);
/// the data gradient's output is poisoned. cuBLAS times the same GEMMs for the 1x1 stride-1
/// shapes in f32 (other shapes have no im2col-free cuBLAS equivalent).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for (label, s) in check_shapes() {
        let (ho, wo) = s.out_hw();
        let k = s.kernel;
        let flops = 2.0 * (s.batch * s.c_out * ho * wo * s.c_in * k * k) as f64;
        let desc =
            format!("{label}: B={} {}->{} {}x{} k={k} s={} p={}", s.batch, s.c_in, s.c_out, s.h, s.w, s.stride, s.pad);
        let (x_shape, dy_shape, w_shape) =
            ([s.batch, s.c_in, s.h, s.w], [s.batch, s.c_out, ho, wo], [s.c_out, s.c_in, k, k]);
        let (nx, ndy, nw) =
            (x_shape.iter().product::<usize>(), dy_shape.iter().product::<usize>(), w_shape.iter().product::<usize>());
        let plain_1x1 = k == 1 && s.stride == 1 && s.pad == 0;
        // The launchers' kernel for every dtype and, for bf16 / f16, the SIMT kernels as well.
        let variants = [
            (DType::F32, ConvBackwardKernel::Simt, "conv2d_backward_weight", "conv2d_backward_data"),
            (DType::BF16, ConvBackwardKernel::TensorCore, "conv2d_backward_weight", "conv2d_backward_data"),
            (DType::F16, ConvBackwardKernel::TensorCore, "conv2d_backward_weight", "conv2d_backward_data"),
            (DType::BF16, ConvBackwardKernel::Simt, "conv2d_backward_weight_simt", "conv2d_backward_data_simt"),
            (DType::F16, ConvBackwardKernel::Simt, "conv2d_backward_weight_simt", "conv2d_backward_data_simt"),
        ];
        for (dtype, kernel, weight_op, data_op) in variants {
            checks.push(GpuCheck::new(weight_op, desc.clone(), dtype, Work::Flops(flops), move |gpu, rng| {
                let x = dtype.round(random_vec(rng, nx, 1.0));
                let dy = dtype.round(random_vec(rng, ndy, 1.0));
                let dw0 = random_vec(rng, nw, 1.0);
                let mut want = dw0.clone();
                if flops <= REFERENCE_MAX_WORK {
                    let (dw, _) = conv2d_backward_reference(&x, &vec![0.0; nw], &dy, &s);
                    want.iter_mut().zip(&dw).for_each(|(a, d)| *a = (*a as f64 + d) as f32);
                } else {
                    // w only feeds dx, which is not asked for here.
                    conv2d_backward_cpu(&x, &vec![0.0; nw], &dy, &s, &mut want, None);
                }
                let xd = CudaTensor::from_f32(gpu, &x_shape, &x, dtype)?;
                let dyd = CudaTensor::from_f32(gpu, &dy_shape, &dy, dtype)?;
                let mut run = launch_and_compare(
                    gpu,
                    CudaTensor::from_f32(gpu, &w_shape, &dw0, DType::F32)?,
                    move |g, dwd| conv2d_backward_weight_cuda_with(g, &xd, &dyd, &s, dwd, kernel),
                    |g, dwd| max_rel_err_all(g, &[(dwd, &want)]),
                )?;
                let cublas: Option<Launch> = if plain_1x1 && dtype == DType::F32 {
                    let g = gpu.clone();
                    let xc = CudaTensor::from_f32(gpu, &x_shape, &x, dtype)?;
                    let dyc = CudaTensor::from_f32(gpu, &dy_shape, &dy, dtype)?;
                    let dwc = CudaTensor::from_f32(gpu, &w_shape, &dw0, DType::F32)?;
                    Some(Box::new(move || {
                        let p = s.h * s.w;
                        for b in 0..s.batch {
                            // dw (C_out x C_in) += dy_b (C_out x P) @ x_b^T, x_b (C_in x P).
                            let (xb, dyb) =
                                (xc.ptr(&g) + (b * s.c_in * p * 4) as u64, dyc.ptr(&g) + (b * s.c_out * p * 4) as u64);
                            cublas_sgemm_rm(&g, s.c_out, s.c_in, p, dyb, false, xb, true, 1.0, dwc.ptr(&g))?;
                        }
                        Ok(())
                    }))
                } else {
                    None
                };
                run.cublas = cublas;
                Ok(run)
            }));
            checks.push(GpuCheck::new(data_op, desc.clone(), dtype, Work::Flops(flops), move |gpu, rng| {
                let dy = dtype.round(random_vec(rng, ndy, 1.0));
                let w = dtype.round(random_vec(rng, nw, 1.0));
                let want = if flops <= REFERENCE_MAX_WORK {
                    let (_, dx) = conv2d_backward_reference(&vec![0.0; nx], &w, &dy, &s);
                    dx.iter().map(|&v| v as f32).collect()
                } else {
                    let mut want = vec![0.0; nx];
                    // x only feeds dw, which is thrown away here.
                    conv2d_backward_cpu(&vec![0.0; nx], &w, &dy, &s, &mut vec![0.0; nw], Some(&mut want));
                    want
                };
                let dyd = CudaTensor::from_f32(gpu, &dy_shape, &dy, dtype)?;
                let wd = CudaTensor::from_f32(gpu, &w_shape, &w, dtype)?;
                let mut run = launch_and_compare(
                    gpu,
                    poisoned(gpu, &x_shape, dtype)?,
                    move |g, dxd| conv2d_backward_data_cuda_with(g, &dyd, &wd, &s, dxd, kernel),
                    |g, dxd| max_rel_err_all(g, &[(dxd, &want)]),
                )?;
                let cublas: Option<Launch> = if plain_1x1 && dtype == DType::F32 {
                    let g = gpu.clone();
                    let dyc = CudaTensor::from_f32(gpu, &dy_shape, &dy, dtype)?;
                    let wc = CudaTensor::from_f32(gpu, &w_shape, &w, dtype)?;
                    let dxc = CudaTensor::empty(gpu, &x_shape, dtype)?;
                    Some(Box::new(move || {
                        let p = s.h * s.w;
                        for b in 0..s.batch {
                            // dx_b (C_in x P) = w^T (C_in x C_out) @ dy_b (C_out x P).
                            let (dyb, dxb) =
                                (dyc.ptr(&g) + (b * s.c_out * p * 4) as u64, dxc.ptr(&g) + (b * s.c_in * p * 4) as u64);
                            cublas_sgemm_rm(&g, s.c_in, p, s.c_out, wc.ptr(&g), true, dyb, false, 0.0, dxb)?;
                        }
                        Ok(())
                    }))
                } else {
                    None
                };
                run.cublas = cublas;
                Ok(run)
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::conv2d_cpu;
    use rand::{Rng, SeedableRng};

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
            let (want_dw, want_dx) = conv2d_backward_reference(&x, &wt, &dy, &s);
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

    #[test]
    fn split_k_covers_k_without_empty_splits() {
        for (label, s) in check_shapes() {
            let (ho, wo) = s.out_hw();
            let steps = (s.batch * ho * wo).div_ceil(CBW_TILE_K);
            let (splits, per_split) = split_k(&s, ho, wo);
            // Every K step is in one split, and the last split starts before the end.
            assert!(
                splits * per_split >= steps && (splits - 1) * per_split < steps,
                "{label}: {splits} x {per_split} for {steps}"
            );
            assert!(splits <= SPLIT_K_TARGET_BLOCKS, "{label}: {splits} splits");
        }
        // The stem's 2*224*224 pixels are split; the small layer-4 GEMM's 392 are not.
        let shapes = check_shapes();
        assert!(split_k(&shapes[0].1, 224, 224).0 > 1);
        assert_eq!(split_k(&shapes[5].1, 14, 14).0, 1);
    }

    /// The data kernel's gather, written out on the CPU: input pixel (h, w) takes tap (ky, kx)
    /// from output ((h + pad - ky) / stride, ...) when the division is exact and in range.
    #[test]
    fn data_gradient_gather_matches_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(batch, c_in, h, w, c_out, kernel, stride, pad) in
            &[(3, 5, 9, 11, 7, 3, 2, 1), (2, 3, 10, 9, 4, 7, 2, 3), (2, 4, 7, 6, 3, 1, 2, 0)]
        {
            let s = Conv2dShape { batch, c_in, h, w, c_out, kernel, stride, pad };
            let (ho, wo) = s.out_hw();
            let x = vec![0.0f32; batch * c_in * h * w];
            let wt: Vec<f32> = (0..c_out * c_in * kernel * kernel).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let dy: Vec<f32> = (0..batch * c_out * ho * wo).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (_, want) = conv2d_backward_reference(&x, &wt, &dy, &s);
            let (k, st, p) = (kernel as i64, stride as i64, pad as i64);
            for b in 0..batch {
                for ci in 0..c_in {
                    for iy in 0..h as i64 {
                        for ix in 0..w as i64 {
                            let mut acc = 0.0f64;
                            for co in 0..c_out {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (ty, tx) = (iy + p - ky, ix + p - kx);
                                        let (oy, ox) = (ty / st, tx / st);
                                        if ty < 0
                                            || tx < 0
                                            || oy * st != ty
                                            || ox * st != tx
                                            || oy >= ho as i64
                                            || ox >= wo as i64
                                        {
                                            continue;
                                        }
                                        let g = dy[((b * c_out + co) * ho + oy as usize) * wo + ox as usize] as f64;
                                        acc += g * wt[((co * c_in + ci) * kernel + ky as usize) * kernel + kx as usize]
                                            as f64;
                                    }
                                }
                            }
                            let got = want[((b * c_in + ci) * h + iy as usize) * w + ix as usize];
                            assert!((acc - got).abs() <= 1e-9 * (1.0 + got.abs()), "{s:?}: {acc} vs {got}");
                        }
                    }
                }
            }
        }
    }
}
