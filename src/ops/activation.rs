//! Activations: QuickGELU (OpenAI CLIP), exact GELU (open_clip's non-OpenAI configs), ReLU.

use cudarc::driver::LaunchConfig;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x * sigmoid(1.702 x): the OpenAI checkpoints and open_clip's `-quickgelu` models.
    QuickGelu,
    /// 0.5 x (1 + erf(x / sqrt 2)): torch.nn.GELU, open_clip's plain configs.
    Gelu,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Activation> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "quick_gelu" | "quickgelu" => Some(Activation::QuickGelu),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }

    /// The activation of one value (the CPU definition the kernels are checked against).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => quick_gelu(x),
            Activation::Gelu => gelu(x),
        }
    }

    /// The `act` code of kernels/activation.cu (ACT_QUICK_GELU, ACT_GELU).
    fn kernel_code(self) -> i32 {
        match self {
            Activation::QuickGelu => 0,
            Activation::Gelu => 1,
        }
    }
}

#[inline]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// erf in f32 by a rational approximation on [-4, 4] (beyond, erf is +-1 in f32): a few ulp,
/// branch-free so the MLP epilogue vectorises (plain multiply-adds: `mul_add` without
/// a compile-time FMA target becomes a libm call).
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_5e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_3e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// y = act(y + bias) in place over rows of `bias.len()`: the epilogue of an MLP's first GEMM.
pub fn bias_act_cpu(y: &mut [f32], bias: &[f32], act: Activation) {
    let n = bias.len();
    y.par_chunks_mut(n * 64).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = act.apply(*v + b);
            }
        }
    });
}

pub fn relu_cpu(y: &mut [f32]) {
    y.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// y = act(x), elementwise.
pub fn activation_cpu(x: &[f32], act: Activation, y: &mut [f32]) {
    y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(yc, xc)| {
        for (v, &xi) in yc.iter_mut().zip(xc) {
            *v = act.apply(xi);
        }
    });
}

/// CUDA launcher: kernels/activation.cu. y = act(x) elementwise; `x`, `y` of one shape and
/// float dtype.
pub fn activation_cuda(gpu: &Gpu, x: &CudaTensor, act: Activation, y: &mut CudaTensor) -> Result<()> {
    if y.shape() != x.shape() {
        return Err(Error::Shape(format!("activation_cuda: x {:?}, y {:?}", x.shape(), y.shape())));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("activation_cuda: x must be a float tensor, found {:?}", x.dtype())));
    }
    y.expect_dtype(x.dtype(), "activation_cuda output")?;
    let n = x.numel();
    // One thread per 4-element vector, 256 per block; a grid-stride loop covers the rest.
    let blocks = n.div_ceil(4 * 256).clamp(1, 65535) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let name = format!("activation_forward_{}", x.dtype().suffix());
    gpu.launch(
        "activation",
        &name,
        cfg,
        &[x.arg(gpu), y.arg(gpu), to_i32(n, "elements")?, KArg::I32(act.kernel_code())],
    )
}

/// Kernel checks (see device::cuda::check): the MLP hidden activations of ViT-B/16 and B/32
/// (3072 wide), the text encoder (2048), and an odd size (a scalar tail); both activations,
/// every dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(rows, cols) in &[(8 * 197usize, 3072usize), (8 * 50, 3072), (4 * 77, 2048), (33, 37)] {
        for act in [Activation::QuickGelu, Activation::Gelu] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let n = rows * cols;
                let bytes = (n * 2 * dtype.size_in_bytes()) as f64;
                checks.push(GpuCheck::new(
                    "activation_forward",
                    format!("{act:?} rows={rows} cols={cols}"),
                    dtype,
                    Work::Bytes(bytes),
                    move |gpu, rng| {
                        let x = random_vec(rng, n, 5.0);
                        let xd = CudaTensor::from_f32(gpu, &[rows, cols], &x, dtype)?;
                        // The reference sees the inputs as rounded to the dtype: the check measures the kernel.
                        let mut want = vec![0.0; n];
                        activation_cpu(&xd.to_f32_vec(gpu)?, act, &mut want);
                        launch_and_compare(
                            gpu,
                            poisoned(gpu, &[rows, cols], dtype)?,
                            move |g, yd| activation_cuda(g, &xd, act, yd),
                            |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                        )
                    },
                ));
            }
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_cpu_matches_definition() {
        let x: Vec<f32> = (-700..=700).map(|i| i as f32 * 0.01).collect();
        for act in [Activation::QuickGelu, Activation::Gelu] {
            let mut y = vec![f32::NAN; x.len()];
            activation_cpu(&x, act, &mut y);
            for (&xi, &yi) in x.iter().zip(&y) {
                let xd = xi as f64;
                let want = match act {
                    Activation::QuickGelu => xd / (1.0 + (-1.702 * xd).exp()),
                    Activation::Gelu => 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2)),
                };
                assert!((yi as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{act:?}({xi}) = {yi}, want {want}");
            }
        }
    }

    #[test]
    fn erf_f32_matches_libm() {
        let mut worst = 0.0f64;
        for i in -60000..=60000 {
            let x = i as f64 * 1e-4;
            let e = (erf_f32(x as f32) as f64 - libm::erf(x)).abs();
            worst = worst.max(e);
        }
        assert!(worst < 5e-7, "erf max abs error {worst:e}");
    }
}
