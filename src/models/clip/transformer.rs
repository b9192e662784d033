//! The pre-norm residual attention block stack shared by CLIP's ViT and text encoder
//! (OpenAI's `Transformer` of `ResidualAttentionBlock`s).

use rand::Rng;

use crate::error::Result;
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;
use crate::ops::attention::{attention_forward_cpu, AttnMask, ProbsRecord};
use crate::ops::gemm_packed::{Bias, Epilogue};
use crate::ops::layernorm::layer_norm_cpu;
use crate::ops::matmul::LinearWeight;
use crate::tensor::Tensor;

pub const LN_EPS: f32 = 1e-5;

pub struct Block {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    /// (3C, C): q, k, v stacked.
    in_w: LinearWeight,
    in_b: Vec<f32>,
    /// (C, C)
    out_w: LinearWeight,
    out_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    /// (4C, C)
    fc_w: LinearWeight,
    fc_b: Vec<f32>,
    /// (C, 4C)
    proj_w: LinearWeight,
    proj_b: Vec<f32>,
}

pub struct Transformer {
    pub blocks: Vec<Block>,
    pub width: usize,
    pub heads: usize,
    pub act: Activation,
}

/// What one forward pass should record, layer by layer.
#[derive(Default)]
pub struct LayerRequests<'a> {
    /// Per layer additive masks (index = layer); missing entries mean no mask.
    pub masks: Vec<AttnMask<'a>>,
    /// Record every layer's head-averaged probabilities.
    pub record_probs: bool,
    /// Record them before the masks are added (TagCLIP's convention for its masked layer).
    pub probs_before_mask: bool,
}

impl Transformer {
    pub fn load(
        p: &mut Params,
        prefix: &str,
        width: usize,
        layers: usize,
        heads: usize,
        act: Activation,
    ) -> Result<Self> {
        let c = width;
        let mut blocks = Vec::with_capacity(layers);
        for l in 0..layers {
            let n = |s: &str| format!("{prefix}{l}.{s}");
            blocks.push(Block {
                ln1_w: p.take(&n("ln_1.weight"), &[c])?,
                ln1_b: p.take(&n("ln_1.bias"), &[c])?,
                in_w: LinearWeight::new(p.take(&n("attn.in_proj_weight"), &[3 * c, c])?, 3 * c, c),
                in_b: p.take(&n("attn.in_proj_bias"), &[3 * c])?,
                out_w: LinearWeight::new(p.take(&n("attn.out_proj.weight"), &[c, c])?, c, c),
                out_b: p.take(&n("attn.out_proj.bias"), &[c])?,
                ln2_w: p.take(&n("ln_2.weight"), &[c])?,
                ln2_b: p.take(&n("ln_2.bias"), &[c])?,
                fc_w: LinearWeight::new(p.take(&n("mlp.c_fc.weight"), &[4 * c, c])?, 4 * c, c),
                fc_b: p.take(&n("mlp.c_fc.bias"), &[4 * c])?,
                proj_w: LinearWeight::new(p.take(&n("mlp.c_proj.weight"), &[c, 4 * c])?, c, 4 * c),
                proj_b: p.take(&n("mlp.c_proj.bias"), &[c])?,
            });
        }
        Ok(Transformer { blocks, width, heads, act })
    }

    /// Random weights with CLIP's initialisation scales.
    pub fn random(width: usize, layers: usize, heads: usize, act: Activation, rng: &mut impl Rng) -> Self {
        let c = width;
        let attn_std = (c as f32).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f32).powf(-0.5);
        let fc_std = ((2 * c) as f32).powf(-0.5);
        let r =
            |shape: &[usize], std: f32, rng: &mut _| Tensor::randn(shape, std, rng).into_f32_vec().unwrap_or_default();
        let blocks = (0..layers)
            .map(|_| Block {
                ln1_w: vec![1.0; c],
                ln1_b: vec![0.0; c],
                in_w: LinearWeight::new(r(&[3 * c, c], attn_std, rng), 3 * c, c),
                in_b: vec![0.0; 3 * c],
                out_w: LinearWeight::new(r(&[c, c], proj_std, rng), c, c),
                out_b: vec![0.0; c],
                ln2_w: vec![1.0; c],
                ln2_b: vec![0.0; c],
                fc_w: LinearWeight::new(r(&[4 * c, c], fc_std, rng), 4 * c, c),
                fc_b: vec![0.0; 4 * c],
                proj_w: LinearWeight::new(r(&[c, 4 * c], proj_std, rng), c, 4 * c),
                proj_b: vec![0.0; c],
            })
            .collect();
        Transformer { blocks, width, heads, act }
    }

    /// x (B, T, C) in place. Returns the recorded probabilities, one (B, T, T) per layer.
    pub fn forward(&self, x: &mut [f32], b: usize, t: usize, req: &LayerRequests) -> Vec<Vec<f32>> {
        let c = self.width;
        let rows = b * t;
        let mut h = vec![0.0f32; rows * c];
        let mut qkv = vec![0.0f32; rows * 3 * c];
        let mut attn = vec![0.0f32; rows * c];
        let mut mlp = vec![0.0f32; rows * 4 * c];
        let mut recorded = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate() {
            layer_norm_cpu(x, &blk.ln1_w, &blk.ln1_b, LN_EPS, &mut h);
            blk.in_w.forward(&h, &mut qkv, &Epilogue { bias: Bias::PerColumn(&blk.in_b), ..Default::default() });
            let mask = req.masks.get(l).copied().unwrap_or_default();
            let record = ProbsRecord::from_flags(req.record_probs, req.probs_before_mask);
            let mut probs = if req.record_probs { vec![0.0f32; b * t * t] } else { Vec::new() };
            attention_forward_cpu(
                &qkv,
                b,
                t,
                c,
                self.heads,
                &mask,
                record,
                &mut attn,
                if req.record_probs { Some(&mut probs) } else { None },
            );
            if req.record_probs {
                recorded.push(probs);
            }
            // Residual adds and biases fused into the output GEMMs (they accumulate into x),
            // the MLP's bias and activation into its first GEMM.
            let residual = |bias| Epilogue { bias: Bias::PerColumn(bias), accumulate: true, ..Default::default() };
            blk.out_w.forward(&attn, x, &residual(&blk.out_b));
            layer_norm_cpu(x, &blk.ln2_w, &blk.ln2_b, LN_EPS, &mut h);
            blk.fc_w.forward(
                &h,
                &mut mlp,
                &Epilogue { bias: Bias::PerColumn(&blk.fc_b), act: Some(self.act), ..Default::default() },
            );
            blk.proj_w.forward(&mlp, x, &residual(&blk.proj_b));
        }
        recorded
    }
}
