//! Activations: QuickGELU (OpenAI CLIP), exact GELU (open_clip's non-OpenAI configs), ReLU.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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

/// y = act(y + bias) in place over rows of `bias.len()`: the epilogue of an MLP's first GEMM.
pub fn bias_act_cpu(y: &mut [f32], bias: &[f32], act: Activation) {
    let n = bias.len();
    y.par_chunks_mut(n * 64).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                let t = *v + b;
                *v = match act {
                    Activation::QuickGelu => quick_gelu(t),
                    Activation::Gelu => gelu(t),
                };
            }
        }
    });
}

pub fn relu_cpu(y: &mut [f32]) {
    y.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}
