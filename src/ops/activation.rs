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

#[inline]
pub fn gelu(x: f32) -> f32 {
    (0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2))) as f32
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
