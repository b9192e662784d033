//! Matrix products: `linear` (x @ W^T + b, the shape of every projection in CLIP) and the
//! strided `gemm_cpu` that attention and convolution build on. CPU: the `gemm` crate
//! (packed, AVX2/AVX-512 microkernels). CUDA: `linear_cuda` with a fused epilogue
//! (bias, activation, residual) over the kernels of kernels/matmul.cu, or cuBLAS as the
//! reference backend (`GemmBackend::Cublas`).

use std::rc::Rc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm as _, GemmConfig};
use cudarc::driver::LaunchConfig;
use gemm::Parallelism;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err, max_rel_err_all, random_vec, CheckRun, GpuCheck, Work,
};
use crate::device::cuda::tensor::CudaBuf;
use crate::device::cuda::{to_i32, CudaTensor, DType, GemmBackend, Gpu, KArg, TensorMapSpec};
use crate::error::{Error, Result};
use crate::ops::activation::{bias_act_cpu, gelu, quick_gelu, relu_cpu};
// The CPU GEMM's store description; `Epilogue` below is the CUDA launcher's activation code.
use crate::ops::gemm_packed::{linear_packed_cpu, packed_gemm_available, Bias, Epilogue as PackedEpilogue, PackedB};

/// A row-major strided matrix view: element (i, j) at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl MatRef {
    pub fn row_major(data: &[f32], cols: usize) -> MatRef {
        MatRef { ptr: data.as_ptr(), rs: cols as isize, cs: 1 }
    }
    /// The transpose of a row-major (rows x cols) matrix, seen as (cols x rows).
    pub fn transposed(data: &[f32], cols: usize) -> MatRef {
        MatRef { ptr: data.as_ptr(), rs: 1, cs: cols as isize }
    }
}

/// C (m x n, row stride `c_rs`) = [C +] A (m x k) @ B (k x n).
///
/// # Safety
/// The views must address valid memory for the given sizes, and `c` must not alias `a`/`b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_cpu(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    c_rs: isize,
    accumulate: bool,
    parallel: bool,
) {
    let par = if parallel { Parallelism::Rayon(rayon::current_num_threads().max(1)) } else { Parallelism::None };
    gemm::gemm(
        m, n, k, c, 1, c_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0f32, 1.0f32, false, false, false, par,
    );
}

/// Adds `bias` (n) to every row of `y` (rows x n).
pub fn add_bias_cpu(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    for row in y.chunks_exact_mut(n) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// y (rows x n) [+]= x (rows x k) @ w^T with w (n x k), plus bias. With `accumulate` the
/// product is added to what `y` holds (the residual add, fused).
pub fn linear_cpu(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], k: usize, accumulate: bool) {
    let n = w.len() / k;
    let rows = x.len() / k;
    debug_assert_eq!(y.len(), rows * n);
    // SAFETY: the views cover exactly x (rows x k), w^T (k x n), y (rows x n).
    unsafe {
        gemm_cpu(
            rows,
            n,
            k,
            MatRef::row_major(x, k),
            MatRef::transposed(w, k),
            y.as_mut_ptr(),
            n as isize,
            accumulate,
            true,
        );
    }
    if let Some(b) = bias {
        add_bias_cpu(y, b);
    }
}

/// A linear layer's weight W (N, K), held the way the CPU multiplies fastest: packed once for
/// the packed GEMM (`ops::gemm_packed`) when the CPU has AVX2 and FMA, else as is for the
/// `gemm` crate.
pub enum LinearWeight {
    Packed(PackedB),
    Plain { w: Vec<f32>, n: usize, k: usize },
}

impl LinearWeight {
    /// w (N, K), row-major.
    pub fn new(w: Vec<f32>, n: usize, k: usize) -> LinearWeight {
        debug_assert_eq!(w.len(), n * k);
        if packed_gemm_available() {
            LinearWeight::Packed(PackedB::from_linear_weight(&w, n, k))
        } else {
            LinearWeight::Plain { w, n, k }
        }
    }

    /// Output features N.
    pub fn n(&self) -> usize {
        match self {
            LinearWeight::Packed(p) => p.n(),
            LinearWeight::Plain { n, .. } => *n,
        }
    }

    /// Input features K.
    pub fn k(&self) -> usize {
        match self {
            LinearWeight::Packed(p) => p.k(),
            LinearWeight::Plain { k, .. } => *k,
        }
    }

    /// W (N, K) row-major, as `new` took it (unpacked when packed): what a CUDA tower uploads.
    pub fn to_row_major(&self) -> Vec<f32> {
        match self {
            LinearWeight::Packed(p) => p.to_linear_weight(),
            LinearWeight::Plain { w, .. } => w.clone(),
        }
    }

    /// y (rows, N) = epilogue(x (rows, K) @ W^T): bias, activation and residual add fused
    /// into the packed GEMM's store, or as passes after the `gemm` crate's product.
    pub fn forward(&self, x: &[f32], y: &mut [f32], ep: &PackedEpilogue) {
        match self {
            LinearWeight::Packed(p) => linear_packed_cpu(x, p, ep, y),
            LinearWeight::Plain { w, n, k } => {
                linear_cpu(x, w, None, y, *k, ep.accumulate);
                let bias = match ep.bias {
                    Bias::PerColumn(b) => Some(b),
                    // A linear layer's bias is per output feature; a row bias is added here
                    // only for completeness.
                    Bias::PerRow(b) => {
                        for (row, bv) in y.chunks_exact_mut(*n).zip(b) {
                            row.iter_mut().for_each(|v| *v += bv);
                        }
                        None
                    }
                    Bias::None => None,
                };
                match (ep.act, bias) {
                    (Some(act), Some(b)) => bias_act_cpu(y, b, act),
                    (Some(act), None) => bias_act_cpu(y, &vec![0.0; *n], act),
                    (None, Some(b)) => add_bias_cpu(y, b),
                    (None, None) => {}
                }
                if ep.relu {
                    relu_cpu(y);
                }
            }
        }
    }
}

/// What `linear_cuda` applies to `x · w^T + bias` before the residual add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// x * sigmoid(1.702 x) (OpenAI CLIP).
    QuickGelu,
    /// Exact erf GELU (torch.nn.GELU).
    Gelu,
    Relu,
}

impl Epilogue {
    /// The kernels' activation code (LF_ACT_* in kernels/matmul.cu).
    fn code(self) -> i32 {
        match self {
            Epilogue::None => 0,
            Epilogue::QuickGelu => 1,
            Epilogue::Gelu => 2,
            Epilogue::Relu => 3,
        }
    }

    /// The activation on one value, as the CPU reference computes it.
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Epilogue::None => v,
            Epilogue::QuickGelu => quick_gelu(v),
            Epilogue::Gelu => gelu(v),
            Epilogue::Relu => v.max(0.0),
        }
    }
}

/// CPU reference of `linear_cuda`: y (rows x n) = epilogue(x (rows x k) @ w^T + bias) + residual,
/// the activation before the residual add.
pub fn linear_epilogue_cpu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    y: &mut [f32],
    k: usize,
) {
    linear_cpu(x, w, bias, y, k, false);
    if epilogue != Epilogue::None {
        y.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = epilogue.apply(*v)));
    }
    if let Some(r) = residual {
        y.par_chunks_mut(1 << 14).zip(r.par_chunks(1 << 14)).for_each(|(yc, rc)| {
            yc.iter_mut().zip(rc).for_each(|(v, r)| *v += r);
        });
    }
}

/// The sizes of one `linear_cuda` call, checked.
#[derive(Clone, Copy, Debug)]
struct LinearDims {
    m: usize,
    n: usize,
    k: usize,
}

fn linear_dims(
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    residual: Option<&CudaTensor>,
    y: &CudaTensor,
) -> Result<LinearDims> {
    let k = *x.shape().last().unwrap_or(&0);
    let n = if w.shape().len() == 2 { w.dim(0) } else { 0 };
    let bad = || {
        Error::Shape(format!(
            "linear_cuda: x {:?}, weight {:?} (want (N, K)), bias {:?} (want (N,)), residual {:?} and y {:?} (want (..., N) with x's rows)",
            x.shape(),
            w.shape(),
            bias.map(|b| b.shape().to_vec()),
            residual.map(|r| r.shape().to_vec()),
            y.shape()
        ))
    };
    if k == 0 || w.shape().len() != 2 || w.dim(1) != k {
        return Err(bad());
    }
    let m = x.numel() / k;
    let out_ok = |t: &CudaTensor| t.shape().last() == Some(&n) && t.numel() == m * n;
    if !out_ok(y) || residual.is_some_and(|r| !out_ok(r)) || bias.is_some_and(|b| b.shape() != [n]) {
        return Err(bad());
    }
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::Device(format!("linear_cuda: x is {dtype:?}; expected f32, bf16 or f16")));
    }
    w.expect_dtype(dtype, "linear_cuda weight")?;
    y.expect_dtype(dtype, "linear_cuda output")?;
    if let Some(r) = residual {
        r.expect_dtype(dtype, "linear_cuda residual")?;
    }
    if let Some(b) = bias {
        b.expect_dtype(DType::F32, "linear_cuda bias")?;
    }
    Ok(LinearDims { m, n, k })
}

/// A 2-D grid of (n_tiles, m_tiles) blocks; the y dimension is limited to 65535.
fn tile_grid(d: LinearDims, tile_m: usize, tile_n: usize) -> Result<(u32, u32, u32)> {
    let (gx, gy) = (d.n.div_ceil(tile_n), d.m.div_ceil(tile_m));
    if gy > 65535 || gx > 65535 {
        return Err(Error::Shape(format!(
            "linear_cuda: M = {}, N = {} needs a {gx} x {gy} grid of {tile_m}x{tile_n} tiles (at most 65535 each way)",
            d.m, d.n
        )));
    }
    Ok((gx as u32, gy as u32, 1))
}

/// Stages of the tensor-core kernels' cp.async pipeline, and their smem row (32 + 8 padding
/// elements of 2 bytes): must match MMA_LDS and the STAGES of kernels/matmul.cu.
const MMA_STAGES: usize = 4;
const MMA_ROW_BYTES: usize = 40 * 2;

/// The Hopper kernel's tile (kernels/matmul.sm90a.cu: H_BM, H_BN, H_BK) and its dynamic shared
/// memory, H_SMEM_BYTES: 4 stages of two 128x64 16-bit tiles, 128 bytes of mbarriers, 1 KB to
/// align the base to the 128-byte swizzle's 1024-byte atom.
const WGMMA_TILE: usize = 128;
const WGMMA_BK: u32 = 64;
const WGMMA_SMEM_BYTES: u32 = 4 * 2 * 128 * 64 * 2 + 128 + 1024;

/// y (M, N) = epilogue(x (M, K) · w (N, K)^T + bias (N,)) + residual (M, N).
///
/// x: any shape (..., K), flattened to M rows; w: (N, K) (PyTorch nn.Linear layout); bias f32;
/// x, w, residual and y share one float dtype (f32, bf16 or f16). The activation is applied
/// before the residual add (ViT: fc -> GELU; out-proj / proj -> + residual).
///
/// Kernels (kernels/matmul.cu): bf16/f16 with K % 8 == 0 on a Hopper device (compute
/// capability 9.0, or the simulator's sm90a mode) on `gemm_wgmma_128x128_*` (kernels/
/// matmul.sm90a.cu: TMA and wgmma), elsewhere on tensor cores (128x128 tiles, or
/// 64x64 for M <= 512, where the big tiles leave SMs idle); f32 on the SIMT `sgemm_128x128_f32`;
/// anything else on `gemm_fallback_*`. With `gpu.gemm == GemmBackend::Cublas`, cuBLAS then
/// `bias_act_residual_*`.
pub fn linear_cuda(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    epilogue: Epilogue,
    residual: Option<&CudaTensor>,
    y: &mut CudaTensor,
) -> Result<()> {
    let d = linear_dims(x, w, bias, residual, y)?;
    if d.m == 0 || d.n == 0 {
        return Ok(());
    }
    match gpu.gemm {
        GemmBackend::Native => linear_native(gpu, x, w, bias, epilogue, residual, y, d),
        GemmBackend::Cublas => linear_cublas(gpu, x, w, bias, epilogue, residual, y, d),
    }
}

#[allow(clippy::too_many_arguments)]
fn linear_native(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    epilogue: Epilogue,
    residual: Option<&CudaTensor>,
    y: &mut CudaTensor,
    d: LinearDims,
) -> Result<()> {
    let dtype = x.dtype();
    let args = |extra: Option<KArg>| -> Result<Vec<KArg>> {
        let mut a = vec![
            x.arg(gpu),
            w.arg(gpu),
            bias.map_or(KArg::Ptr(0), |b| b.arg(gpu)),
            residual.map_or(KArg::Ptr(0), |r| r.arg(gpu)),
            y.arg(gpu),
            to_i32(d.m, "M")?,
            to_i32(d.n, "N")?,
            to_i32(d.k, "K")?,
            KArg::I32(epilogue.code()),
        ];
        a.extend(extra);
        Ok(a)
    };
    // Every row starts 16-byte aligned when the base is and a row is a multiple of 16 bytes.
    let aligned16 = x.ptr(gpu).is_multiple_of(16) && w.ptr(gpu).is_multiple_of(16);
    let row_bytes = d.k * dtype.size_in_bytes();
    match dtype {
        DType::F32 => {
            let vec4 = aligned16 && row_bytes.is_multiple_of(16);
            let cfg = LaunchConfig { grid_dim: tile_grid(d, 128, 128)?, block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            gpu.launch("matmul", "sgemm_128x128_f32", cfg, &args(Some(KArg::I32(vec4 as i32)))?)
        }
        DType::BF16 | DType::F16 if gpu.is_hopper() && aligned16 && row_bytes.is_multiple_of(16) => {
            // TMA maps of x (M, K) and w (N, K) in 128x64 boxes, 128-byte swizzled (a 64-element
            // row of 16-bit values is one swizzle row); boxes past M, N or K read zeros.
            let map = |t: &CudaTensor, rows: usize| {
                gpu.tensor_map_2d(&TensorMapSpec {
                    base: t.ptr(gpu),
                    dtype,
                    rows,
                    cols: d.k,
                    row_stride: d.k,
                    box_rows: WGMMA_TILE as u32,
                    box_cols: WGMMA_BK,
                    swizzle_128b: true,
                })
            };
            let (map_x, map_w) = (map(x, d.m)?, map(w, d.n)?);
            let mut a = args(None)?;
            a[0] = map_x.arg(gpu);
            a[1] = map_w.arg(gpu);
            let cfg = LaunchConfig {
                grid_dim: tile_grid(d, WGMMA_TILE, WGMMA_TILE)?,
                block_dim: (384, 1, 1),
                shared_mem_bytes: WGMMA_SMEM_BYTES,
            };
            // The maps live until the launch has run: launches are synchronous on the
            // simulator, and on a GPU the stream orders the maps' free after the kernel.
            gpu.launch("matmul", &format!("gemm_wgmma_128x128_{}", dtype.suffix()), cfg, &a)
        }
        DType::BF16 | DType::F16 if aligned16 && row_bytes.is_multiple_of(16) => {
            let (variant, tile, threads) = if d.m <= 512 { ("64x64", 64, 128) } else { ("128x128", 128, 256) };
            let cfg = LaunchConfig {
                grid_dim: tile_grid(d, tile, tile)?,
                block_dim: (threads, 1, 1),
                shared_mem_bytes: (MMA_STAGES * 2 * tile * MMA_ROW_BYTES) as u32,
            };
            gpu.launch("matmul", &format!("gemm_mma_{variant}_{}", dtype.suffix()), cfg, &args(None)?)
        }
        _ => {
            let cfg = LaunchConfig { grid_dim: tile_grid(d, 16, 16)?, block_dim: (16, 16, 1), shared_mem_bytes: 0 };
            gpu.launch("matmul", &format!("gemm_fallback_{}", dtype.suffix()), cfg, &args(None)?)
        }
    }
}

/// cuBLAS, column-major: row-major Y (M, N) = X W^T is column-major Y^T (N x M, ld N) =
/// W · X^T, where W's row-major (N, K) storage is the column-major (K x N, ld K) matrix W^T
/// (so op A = transpose) and X's is the column-major (K x M, ld K) matrix X^T (op B = none).
/// cudarc's f32 `Gemm` is plain cublasSgemm and sets no math mode, so it is true f32 (no TF32)
/// unless NVIDIA_TF32_OVERRIDE says otherwise; bf16/f16 accumulate in f32 (CUBLAS_COMPUTE_32F).
/// The GEMM output is rounded to the dtype before the epilogue kernel adds bias and residual.
#[allow(clippy::too_many_arguments)]
fn linear_cublas(
    gpu: &Gpu,
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    epilogue: Epilogue,
    residual: Option<&CudaTensor>,
    y: &mut CudaTensor,
    d: LinearDims,
) -> Result<()> {
    let blas = gpu.cublas()?;
    // cuBLAS takes 32-bit sizes: refuse what does not fit rather than wrap.
    let as_i32 = |v: usize, what: &str| {
        i32::try_from(v)
            .map_err(|_| Error::Shape(format!("linear_cuda (cuBLAS): {what} = {v} does not fit a 32-bit int")))
    };
    let (m, n, k) = (as_i32(d.m, "M")?, as_i32(d.n, "N")?, as_i32(d.k, "K")?);
    fn cfg<T>(m: i32, n: i32, k: i32, alpha: T, beta: T) -> GemmConfig<T> {
        GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n,
            n: m,
            k,
            alpha,
            lda: k,
            ldb: k,
            beta,
            ldc: n,
        }
    }
    // SAFETY: linear_dims checked that w holds N x K, x M x K and y M x N elements.
    let done = unsafe {
        match (w.buf()?, x.buf()?, y.buf_mut()?) {
            (CudaBuf::F32(a), CudaBuf::F32(b), CudaBuf::F32(c)) => blas.gemm(cfg(m, n, k, 1.0f32, 0.0f32), a, b, c),
            (CudaBuf::BF16(a), CudaBuf::BF16(b), CudaBuf::BF16(c)) => {
                blas.gemm(cfg(m, n, k, bf16::ONE, bf16::ZERO), a, b, c)
            }
            (CudaBuf::F16(a), CudaBuf::F16(b), CudaBuf::F16(c)) => {
                blas.gemm(cfg(m, n, k, f16::ONE, f16::ZERO), a, b, c)
            }
            _ => return Err(Error::Device(format!("linear_cuda (cuBLAS): dtype {:?}", x.dtype()))),
        }
    };
    done.map_err(|e| Error::Device(format!("cuBLAS gemm (M={}, N={}, K={}): {e:?}", d.m, d.n, d.k)))?;
    if epilogue == Epilogue::None && bias.is_none() && residual.is_none() {
        return Ok(());
    }
    bias_act_residual_cuda(gpu, y, bias, epilogue, residual, d.m, d.n)
}

/// In place on y (M, N): y = act(y + bias) + residual, the epilogue of the cuBLAS path
/// (`bias_act_residual_*` in kernels/matmul.cu; bias f32 (N), residual (M, N) in y's dtype).
fn bias_act_residual_cuda(
    gpu: &Gpu,
    y: &mut CudaTensor,
    bias: Option<&CudaTensor>,
    epilogue: Epilogue,
    residual: Option<&CudaTensor>,
    m: usize,
    n: usize,
) -> Result<()> {
    // Grid-stride loop: enough blocks to fill any GPU, capped so huge outputs loop.
    let blocks = (m * n).div_ceil(256).min(1 << 16) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let args = [
        y.arg(gpu),
        bias.map_or(KArg::Ptr(0), |b| b.arg(gpu)),
        residual.map_or(KArg::Ptr(0), |r| r.arg(gpu)),
        to_i32(m, "M")?,
        to_i32(n, "N")?,
        KArg::I32(epilogue.code()),
    ];
    gpu.launch("matmul", &format!("bias_act_residual_{}", y.dtype().suffix()), cfg, &args)
}

/// The cuBLAS path's epilogue alone (on the simulator, where cuBLAS rows skip, this is the
/// only row that runs `bias_act_residual_*`): y = act(y + b) + r against the CPU.
fn run_bias_act_residual_check(
    gpu: &std::sync::Arc<Gpu>,
    rng: &mut StdRng,
    (m, n): (usize, usize),
    epilogue: Epilogue,
    dtype: DType,
) -> Result<CheckRun> {
    let y = dtype.round(random_vec(rng, m * n, 2.0));
    let b = random_vec(rng, n, 0.5);
    let r = dtype.round(random_vec(rng, m * n, 1.0));
    // The kernel reads y, adds b and applies act in f32, adds r, and rounds once to the dtype.
    let want: Vec<f32> = (0..m * n).map(|i| epilogue.apply(y[i] + b[i % n]) + r[i]).collect();
    let bd = CudaTensor::from_f32(gpu, &[n], &b, DType::F32)?;
    let rd = CudaTensor::from_f32(gpu, &[m, n], &r, dtype)?;
    let yd = CudaTensor::from_f32(gpu, &[m, n], &y, dtype)?;
    launch_and_compare(
        gpu,
        yd,
        move |g, yd| bias_act_residual_cuda(g, yd, Some(&bd), epilogue, Some(&rd), m, n),
        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
    )
}

/// One GEMM check: sizes and which parts of the epilogue are on.
#[derive(Clone, Copy, Debug)]
struct LinearCase {
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    epilogue: Epilogue,
    residual: bool,
}

impl LinearCase {
    fn label(&self) -> String {
        let mut s = format!("M={} N={} K={}", self.m, self.n, self.k);
        if self.bias {
            s.push_str(" +bias");
        }
        if self.epilogue != Epilogue::None {
            s.push_str(&format!(" {:?}", self.epilogue));
        }
        if self.residual {
            s.push_str(" +residual");
        }
        s
    }
}

/// The rows the CPU reference recomputes: all of a small problem; for the ViT-B/16 batch
/// sizes, every 61st row plus the last (the CPU would otherwise spend minutes per check).
fn checked_rows(m: usize) -> Vec<usize> {
    if m <= 4096 {
        (0..m).collect()
    } else {
        let mut r: Vec<usize> = (0..m).step_by(61).collect();
        if r.last() != Some(&(m - 1)) {
            r.push(m - 1);
        }
        r
    }
}

fn gather_rows(v: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| v[r * cols..(r + 1) * cols].iter().copied()).collect()
}

/// Runs one case on `gpu` (whose backend it uses) against the CPU, and returns the launch;
/// with `with_cublas`, also the same work through cuBLAS for the "% of cuBLAS" column.
fn run_linear_check(
    gpu: &std::sync::Arc<Gpu>,
    rng: &mut StdRng,
    c: LinearCase,
    dtype: DType,
    with_cublas: bool,
) -> Result<CheckRun> {
    let LinearCase { m, n, k, .. } = c;
    // w scaled by 1/sqrt(K) keeps outputs O(1), where GELU / QuickGELU are curved.
    let x = dtype.round(random_vec(rng, m * k, 1.0));
    let w = dtype.round(random_vec(rng, n * k, 2.0 / (k as f32).sqrt()));
    let b = random_vec(rng, n, 0.5);
    let r = dtype.round(random_vec(rng, m * n, 1.0));
    let rows = checked_rows(m);
    let mut want = vec![0.0f32; rows.len() * n];
    let r_rows = gather_rows(&r, n, &rows);
    linear_epilogue_cpu(
        &gather_rows(&x, k, &rows),
        &w,
        c.bias.then_some(&b[..]),
        c.epilogue,
        c.residual.then_some(&r_rows[..]),
        &mut want,
        k,
    );
    let xd = Rc::new(CudaTensor::from_f32(gpu, &[m, k], &x, dtype)?);
    let wd = Rc::new(CudaTensor::from_f32(gpu, &[n, k], &w, dtype)?);
    let bd = if c.bias { Some(Rc::new(CudaTensor::from_f32(gpu, &[n], &b, DType::F32)?)) } else { None };
    let rd = if c.residual { Some(Rc::new(CudaTensor::from_f32(gpu, &[m, n], &r, dtype)?)) } else { None };
    drop((x, r));
    let mut yd = CudaTensor::empty(gpu, &[m, n], dtype)?;
    yd.poison(gpu)?;
    linear_cuda(gpu, &xd, &wd, bd.as_deref(), c.epilogue, rd.as_deref(), &mut yd)?;
    let got = gather_rows(&yd.to_f32_vec(gpu)?, n, &rows);
    let err = max_rel_err(&got, &want);
    let launcher = |g: std::sync::Arc<Gpu>, mut y: CudaTensor| -> crate::device::cuda::check::Launch {
        let (xd, wd, bd, rd) = (xd.clone(), wd.clone(), bd.clone(), rd.clone());
        Box::new(move || linear_cuda(&g, &xd, &wd, bd.as_deref(), c.epilogue, rd.as_deref(), &mut y))
    };
    let cublas = if with_cublas {
        Some(launcher(gpu.with_gemm(GemmBackend::Cublas), CudaTensor::empty(gpu, &[m, n], dtype)?))
    } else {
        None
    };
    Ok(CheckRun { max_rel_err: err, launch: launcher(gpu.clone(), yd), cublas })
}

/// The linear check on a Hopper device, which must take the wgmma kernel: skipped elsewhere;
/// on the simulator, an error unless `gemm_wgmma_128x128_*` ran.
fn run_linear_wgmma_check(
    gpu: &std::sync::Arc<Gpu>,
    rng: &mut StdRng,
    c: LinearCase,
    dtype: DType,
) -> Result<CheckRun> {
    if !gpu.is_hopper() {
        return Err(Error::Skipped(
            "the wgmma GEMM needs compute capability 9.0 (an H100, or --device sim --sim-arch sm90a)".into(),
        ));
    }
    let kernel = format!("gemm_wgmma_128x128_{}", dtype.suffix());
    let key = ("matmul".to_string(), kernel.clone());
    let launches = |g: &Gpu| g.sim().map(|s| s.launch_counts().get(&key).copied().unwrap_or(0));
    let before = launches(gpu);
    let run = run_linear_check(gpu, rng, c, dtype, true)?;
    if let (Some(b), Some(a)) = (before, launches(gpu)) {
        if a == b {
            return Err(Error::Device(format!("linear_cuda did not launch {kernel} on a Hopper device")));
        }
    }
    Ok(run)
}

/// Kernel checks (see device::cuda::check): the ViT-B/16 (batch 256) and ViT-B/32 (batch 8)
/// projections, odd sizes for the tile edges, K % 8 != 0 for the fallback; every dtype; every
/// epilogue. `linear_cublas` rows check the cuBLAS backend itself on the small shapes.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let case = |m, n, k, bias, epilogue, residual| LinearCase { m, n, k, bias, epilogue, residual };
    let vit = [
        case(50432, 2304, 768, true, Epilogue::None, false), // qkv
        case(50432, 768, 768, true, Epilogue::None, true),   // attention out-proj + residual
        case(50432, 3072, 768, true, Epilogue::Gelu, false), // MLP fc + GELU
        case(50432, 768, 3072, true, Epilogue::None, true),  // MLP proj + residual
        case(400, 2304, 768, true, Epilogue::None, false),   // ViT-B/32 batch 8 qkv
    ];
    let odd = [
        case(33, 37, 40, true, Epilogue::QuickGelu, true),
        case(130, 70, 72, false, Epilogue::Relu, false),
        case(1, 512, 768, true, Epilogue::Gelu, true),
        case(777, 200, 136, true, Epilogue::QuickGelu, true), // 128x128 tiles, ragged edges, K % 32 != 0
        case(65, 33, 45, true, Epilogue::QuickGelu, true),    // K % 8 != 0: the fallback kernel
        case(520, 24, 40, true, Epilogue::None, true),        // the smallest M on 128x128 tiles
    ];
    let mut checks = Vec::new();
    for (cases, backend) in
        [(&vit[..], GemmBackend::Native), (&odd[..], GemmBackend::Native), (&odd[..], GemmBackend::Cublas)]
    {
        for &c in cases {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let op = if backend == GemmBackend::Cublas { "linear_cublas" } else { "linear" };
                let work = Work::Flops(2.0 * (c.m * c.n * c.k) as f64);
                checks.push(GpuCheck::new(op, c.label(), dtype, work, move |gpu, rng| match backend {
                    GemmBackend::Native => run_linear_check(gpu, rng, c, dtype, true),
                    GemmBackend::Cublas => run_linear_check(&gpu.with_gemm(GemmBackend::Cublas), rng, c, dtype, false),
                }));
            }
        }
    }
    for (m, n, epilogue) in [(33, 37, Epilogue::QuickGelu), (130, 70, Epilogue::Gelu), (5, 300, Epilogue::Relu)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let work = Work::Bytes((m * n * 3 * dtype.size_in_bytes()) as f64);
            checks.push(GpuCheck::new(
                "bias_act_residual",
                format!("M={m} N={n} {epilogue:?}"),
                dtype,
                work,
                move |gpu, rng| run_bias_act_residual_check(gpu, rng, (m, n), epilogue, dtype),
            ));
        }
    }
    checks
}

/// Checks of the Hopper kernel (kernels/matmul.sm90a.cu), `linear_wgmma`: ViT-B/16's
/// projections at one image of ViT-B/32 tokens (M = 50), and odd shapes for the M, N and K edges
/// of its 128x128x64 tiles; bf16 and f16. They run on a compute capability 9.0 device (an H100,
/// or `--device sim --sim-arch sm90a`) and are skipped elsewhere. A group of their own, listed
/// last in gpu-check, so the rows before them keep their seeds (a row's seed is its index).
pub fn wgmma_gpu_checks() -> Vec<GpuCheck> {
    let case = |m, n, k, bias, epilogue, residual| LinearCase { m, n, k, bias, epilogue, residual };
    let mut checks = Vec::new();
    let hopper = [
        case(50, 2304, 768, true, Epilogue::None, false), // qkv
        case(50, 768, 768, true, Epilogue::None, true),   // attention out-proj + residual
        case(50, 3072, 768, true, Epilogue::Gelu, false), // MLP fc + GELU
        case(50, 768, 3072, true, Epilogue::None, true),  // MLP proj + residual
        case(33, 37, 40, true, Epilogue::QuickGelu, true),
        case(130, 70, 72, false, Epilogue::Relu, false),
        case(1, 136, 200, true, Epilogue::Gelu, true),
    ];
    for &c in &hopper {
        for dtype in [DType::BF16, DType::F16] {
            let work = Work::Flops(2.0 * (c.m * c.n * c.k) as f64);
            checks.push(GpuCheck::new("linear_wgmma", c.label(), dtype, work, move |gpu, rng| {
                run_linear_wgmma_check(gpu, rng, c, dtype)
            }));
        }
    }
    checks
}

#[cfg(test)]
mod epilogue_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// linear_epilogue_cpu (what the GPU checks compare with) is act(x w^T + b) + residual, in
    /// that order, against a naive triple loop in f64.
    #[test]
    fn linear_epilogue_applies_the_activation_before_the_residual() {
        let mut rng = StdRng::seed_from_u64(7);
        let (m, n, k) = (5usize, 7usize, 13usize);
        let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let r: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        for epilogue in [Epilogue::None, Epilogue::QuickGelu, Epilogue::Gelu, Epilogue::Relu] {
            for (bias, residual) in
                [(None, None), (Some(&b[..]), None), (Some(&b[..]), Some(&r[..])), (None, Some(&r[..]))]
            {
                let mut y = vec![f32::NAN; m * n];
                linear_epilogue_cpu(&x, &w, bias, epilogue, residual, &mut y, k);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                        let pre = dot + bias.map_or(0.0, |b| b[j] as f64);
                        let act = match epilogue {
                            Epilogue::None => pre,
                            Epilogue::QuickGelu => pre / (1.0 + (-1.702 * pre).exp()),
                            Epilogue::Gelu => 0.5 * pre * (1.0 + libm::erf(pre / std::f64::consts::SQRT_2)),
                            Epilogue::Relu => pre.max(0.0),
                        };
                        let want = act + residual.map_or(0.0, |r| r[i * n + j] as f64);
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{epilogue:?} bias {} residual {} ({i},{j}): {got} vs {want}",
                            bias.is_some(),
                            residual.is_some()
                        );
                    }
                }
            }
        }
        // The order matters: with the residual inside the activation the result differs.
        let mut y = vec![0.0; m * n];
        linear_epilogue_cpu(&x, &w, Some(&b), Epilogue::Relu, Some(&r), &mut y, k);
        let mut inside = vec![0.0; m * n];
        linear_cpu(&x, &w, Some(&b), &mut inside, k, false);
        inside.iter_mut().zip(&r).for_each(|(v, r)| *v = (*v + r).max(0.0));
        assert!(y.iter().zip(&inside).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
