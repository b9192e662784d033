//! Matrix products: `linear` (x @ W^T + b, the shape of every projection in CLIP) and the
//! strided `gemm_cpu` that attention and convolution build on. CPU: the `gemm` crate
//! (packed, AVX2/AVX-512 microkernels).

use gemm::Parallelism;

use crate::error::{Error, Result};
use crate::ops::activation::{bias_act_cpu, relu_cpu};
use crate::ops::gemm_packed::{linear_packed_cpu, packed_gemm_available, Bias, Epilogue, PackedB};
use crate::ops::require_cpu;
use crate::tensor::Tensor;

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
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads().max(1))
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m, n, k, c, 1, c_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0f32, 1.0f32,
        false, false, false, par,
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

    /// y (rows, N) = epilogue(x (rows, K) @ W^T): bias, activation and residual add fused
    /// into the packed GEMM's store, or as passes after the `gemm` crate's product.
    pub fn forward(&self, x: &[f32], y: &mut [f32], ep: &Epilogue) {
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

/// x (..., K) @ W^T (W: N x K) + b (N) -> (..., N).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    require_cpu("linear", &[x, w])?;
    let k = *x.shape().last().ok_or_else(|| Error::Shape("linear of a scalar".into()))?;
    if w.rank() != 2 || w.dim(1) != k {
        return Err(Error::Shape(format!("linear: x {:?} with weight {:?}", x.shape(), w.shape())));
    }
    let n = w.dim(0);
    if let Some(b) = b {
        if b.shape() != [n] {
            return Err(Error::Shape(format!("linear: bias {:?} for {n} outputs", b.shape())));
        }
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = n;
    let mut y = vec![0.0f32; crate::tensor::numel(&shape)];
    let bias = match b {
        Some(b) => Some(b.f32s()?),
        None => None,
    };
    linear_cpu(x.f32s()?, w.f32s()?, bias, &mut y, k, false);
    Tensor::from_f32(&shape, y)
}

/// a (M x K) @ b (K x N) for plain row-major matrices.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    require_cpu("matmul", &[a, b])?;
    if a.rank() != 2 || b.rank() != 2 || a.dim(1) != b.dim(0) {
        return Err(Error::Shape(format!("matmul {:?} @ {:?}", a.shape(), b.shape())));
    }
    let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
    let mut c = vec![0.0f32; m * n];
    // SAFETY: sizes checked above.
    unsafe {
        gemm_cpu(
            m,
            n,
            k,
            MatRef::row_major(a.f32s()?, k),
            MatRef::row_major(b.f32s()?, n),
            c.as_mut_ptr(),
            n as isize,
            false,
            true,
        );
    }
    Tensor::from_f32(&[m, n], c)
}
