//! The pre-norm residual attention block stack on the GPU (`transformer.rs`'s twin), shared by
//! the CUDA ViT and text encoders: LayerNorm -> packed qkv GEMM -> fused attention -> out-proj
//! GEMM with the residual fused -> LayerNorm -> fc GEMM with bias + activation fused -> proj GEMM
//! with the residual fused. Weights in the compute dtype; LayerNorm parameters and biases f32.

use std::sync::Arc;

use crate::device::cuda::{CudaTensor, DType, Gpu};
use crate::error::Result;
use crate::models::clip::transformer::LN_EPS;
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;
use crate::ops::attention::{attention_cuda, CudaAttnMask, ProbsRecord};
use crate::ops::layernorm::layer_norm_cuda;
use crate::ops::matmul::{linear_cuda, Epilogue};

/// The names and shapes of the block stack's tensors under `prefix` (`{prefix}{layer}.ln_1.weight`,
/// ...), the names `Transformer::load` takes: for random weights both encoders can load.
pub fn block_param_shapes(prefix: &str, c: usize, layers: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::with_capacity(12 * layers);
    for l in 0..layers {
        let n = |s: &str| format!("{prefix}{l}.{s}");
        v.extend([
            (n("ln_1.weight"), vec![c]),
            (n("ln_1.bias"), vec![c]),
            (n("attn.in_proj_weight"), vec![3 * c, c]),
            (n("attn.in_proj_bias"), vec![3 * c]),
            (n("attn.out_proj.weight"), vec![c, c]),
            (n("attn.out_proj.bias"), vec![c]),
            (n("ln_2.weight"), vec![c]),
            (n("ln_2.bias"), vec![c]),
            (n("mlp.c_fc.weight"), vec![4 * c, c]),
            (n("mlp.c_fc.bias"), vec![4 * c]),
            (n("mlp.c_proj.weight"), vec![c, 4 * c]),
            (n("mlp.c_proj.bias"), vec![c]),
        ]);
    }
    v
}

struct CudaBlock {
    ln1_w: CudaTensor,
    ln1_b: CudaTensor,
    in_w: CudaTensor, // (3C, C)
    in_b: CudaTensor,
    out_w: CudaTensor, // (C, C)
    out_b: CudaTensor,
    ln2_w: CudaTensor,
    ln2_b: CudaTensor,
    fc_w: CudaTensor, // (4C, C)
    fc_b: CudaTensor,
    proj_w: CudaTensor, // (C, 4C)
    proj_b: CudaTensor,
}

pub struct CudaTransformer {
    blocks: Vec<CudaBlock>,
    pub width: usize,
    pub heads: usize,
    pub act: Activation,
    pub dtype: DType,
    gpu: Arc<Gpu>,
}

impl CudaTransformer {
    /// Takes `{prefix}{layer}.*` from `p` (the names `Transformer::load` takes).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        gpu: &Arc<Gpu>,
        p: &mut Params,
        prefix: &str,
        width: usize,
        layers: usize,
        heads: usize,
        act: Activation,
        dtype: DType,
    ) -> Result<Self> {
        let c = width;
        let f32d = DType::F32;
        let mut blocks = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut w = |s: &str, shape: &[usize], dt: DType| -> Result<CudaTensor> {
                CudaTensor::from_f32(gpu, shape, &p.take(&format!("{prefix}{l}.{s}"), shape)?, dt)
            };
            blocks.push(CudaBlock {
                ln1_w: w("ln_1.weight", &[c], f32d)?,
                ln1_b: w("ln_1.bias", &[c], f32d)?,
                in_w: w("attn.in_proj_weight", &[3 * c, c], dtype)?,
                in_b: w("attn.in_proj_bias", &[3 * c], f32d)?,
                out_w: w("attn.out_proj.weight", &[c, c], dtype)?,
                out_b: w("attn.out_proj.bias", &[c], f32d)?,
                ln2_w: w("ln_2.weight", &[c], f32d)?,
                ln2_b: w("ln_2.bias", &[c], f32d)?,
                fc_w: w("mlp.c_fc.weight", &[4 * c, c], dtype)?,
                fc_b: w("mlp.c_fc.bias", &[4 * c], f32d)?,
                proj_w: w("mlp.c_proj.weight", &[c, 4 * c], dtype)?,
                proj_b: w("mlp.c_proj.bias", &[c], f32d)?,
            });
        }
        Ok(CudaTransformer { blocks, width, heads, act, dtype, gpu: gpu.clone() })
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// x (B, T, C) -> (B, T, C). `masks[l]` applies to layer l (missing: none). With `record`
    /// other than None, returns each layer's head-averaged probabilities (B, T, T) f32.
    pub fn forward(
        &self,
        mut x: CudaTensor,
        masks: &[CudaAttnMask],
        record: ProbsRecord,
    ) -> Result<(CudaTensor, Vec<CudaTensor>)> {
        let gpu = &*self.gpu;
        let (b, t, c) = (x.dim(0), x.dim(1), self.width);
        let dt = self.dtype;
        let epi = match self.act {
            Activation::QuickGelu => Epilogue::QuickGelu,
            Activation::Gelu => Epilogue::Gelu,
        };
        let mut h = CudaTensor::empty(gpu, &[b, t, c], dt)?;
        let mut qkv = CudaTensor::empty(gpu, &[b, t, 3 * c], dt)?;
        let mut attn = CudaTensor::empty(gpu, &[b, t, c], dt)?;
        let mut x2 = CudaTensor::empty(gpu, &[b, t, c], dt)?;
        let mut mlp = CudaTensor::empty(gpu, &[b, t, 4 * c], dt)?;
        let none = CudaAttnMask { shared: None, cls_row: None, causal: false };
        let mut recorded = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate() {
            let mask = masks.get(l).unwrap_or(&none);
            layer_norm_cuda(gpu, &x, &blk.ln1_w, &blk.ln1_b, LN_EPS, &mut h)?;
            linear_cuda(gpu, &h, &blk.in_w, Some(&blk.in_b), Epilogue::None, None, &mut qkv)?;
            if record == ProbsRecord::None {
                attention_cuda(gpu, &qkv, self.heads, mask, record, &mut attn, None)?;
            } else {
                let mut probs = CudaTensor::empty(gpu, &[b, t, t], DType::F32)?;
                attention_cuda(gpu, &qkv, self.heads, mask, record, &mut attn, Some(&mut probs))?;
                recorded.push(probs);
            }
            // x2 = x + attn W_out^T + b_out
            linear_cuda(gpu, &attn, &blk.out_w, Some(&blk.out_b), Epilogue::None, Some(&x), &mut x2)?;
            layer_norm_cuda(gpu, &x2, &blk.ln2_w, &blk.ln2_b, LN_EPS, &mut h)?;
            linear_cuda(gpu, &h, &blk.fc_w, Some(&blk.fc_b), epi, None, &mut mlp)?;
            // x = x2 + act(h W_fc^T + b_fc) W_proj^T + b_proj
            linear_cuda(gpu, &mlp, &blk.proj_w, Some(&blk.proj_b), Epilogue::None, Some(&x2), &mut x)?;
        }
        Ok((x, recorded))
    }
}
