//! The pre-norm residual attention block stack shared by CLIP's ViT and text encoder
//! (OpenAI's `Transformer` of `ResidualAttentionBlock`s).

use rand::Rng;

use crate::error::{Error, Result};
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;
use crate::ops::attention::{attention_forward_cpu, AttnMask, ProbsRecord};
use crate::ops::gemm_packed::{Bias, Epilogue};
use crate::ops::layernorm::layer_norm_cpu;
use crate::ops::matmul::LinearWeight;
use crate::tensor::Tensor;

pub const LN_EPS: f32 = 1e-5;

/// One block's tensors (open_clip names under `{prefix}{layer}.`) and shapes at width c, in the
/// order `Block` holds them: the one name list of the block stack.
fn block_tensors(c: usize) -> [(&'static str, Vec<usize>); 12] {
    [
        ("ln_1.weight", vec![c]),
        ("ln_1.bias", vec![c]),
        ("attn.in_proj_weight", vec![3 * c, c]),
        ("attn.in_proj_bias", vec![3 * c]),
        ("attn.out_proj.weight", vec![c, c]),
        ("attn.out_proj.bias", vec![c]),
        ("ln_2.weight", vec![c]),
        ("ln_2.bias", vec![c]),
        ("mlp.c_fc.weight", vec![4 * c, c]),
        ("mlp.c_fc.bias", vec![4 * c]),
        ("mlp.c_proj.weight", vec![c, 4 * c]),
        ("mlp.c_proj.bias", vec![c]),
    ]
}

/// The names and shapes of the whole stack's tensors under `prefix` (`{prefix}{layer}.ln_1.weight`,
/// ...), the names `Transformer::load` takes: for random weights both encoders can load.
pub fn block_param_shapes(prefix: &str, c: usize, layers: usize) -> Vec<(String, Vec<usize>)> {
    (0..layers)
        .flat_map(|l| block_tensors(c).into_iter().map(move |(name, shape)| (format!("{prefix}{l}.{name}"), shape)))
        .collect()
}

/// One pre-norm residual attention block; the CUDA twin uploads these tensors.
pub struct Block {
    pub(crate) ln1_w: Vec<f32>,
    pub(crate) ln1_b: Vec<f32>,
    /// (3C, C): q, k, v stacked.
    pub(crate) in_w: LinearWeight,
    pub(crate) in_b: Vec<f32>,
    /// (C, C)
    pub(crate) out_w: LinearWeight,
    pub(crate) out_b: Vec<f32>,
    pub(crate) ln2_w: Vec<f32>,
    pub(crate) ln2_b: Vec<f32>,
    /// (4C, C)
    pub(crate) fc_w: LinearWeight,
    pub(crate) fc_b: Vec<f32>,
    /// (C, 4C)
    pub(crate) proj_w: LinearWeight,
    pub(crate) proj_b: Vec<f32>,
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
    /// Takes the block stack's tensors from `p`, by the names and shapes of `block_param_shapes`.
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
            let taken = block_tensors(c)
                .iter()
                .map(|(name, shape)| p.take(&format!("{prefix}{l}.{name}"), shape))
                .collect::<Result<Vec<_>>>()?;
            let [ln1_w, ln1_b, in_w, in_b, out_w, out_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b]: [Vec<f32>; 12] =
                taken.try_into().map_err(|_| Error::Internal("a block has 12 tensors".into()))?;
            blocks.push(Block {
                ln1_w,
                ln1_b,
                in_w: LinearWeight::new(in_w, 3 * c, c),
                in_b,
                out_w: LinearWeight::new(out_w, c, c),
                out_b,
                ln2_w,
                ln2_b,
                fc_w: LinearWeight::new(fc_w, 4 * c, c),
                fc_b,
                proj_w: LinearWeight::new(proj_w, c, 4 * c),
                proj_b,
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
