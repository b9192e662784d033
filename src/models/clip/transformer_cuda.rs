//! The pre-norm residual attention block stack on the GPU (`transformer.rs`'s twin), shared by
//! the CUDA ViT and text encoders: LayerNorm -> packed qkv GEMM -> fused attention -> out-proj
//! GEMM with the residual fused -> LayerNorm -> fc GEMM with bias + activation fused -> proj GEMM
//! with the residual fused. Weights in the compute dtype; LayerNorm parameters and biases f32,
//! uploaded from the CPU stack (`CudaTransformer::from_cpu`): the CPU loader is the only one.

use std::sync::Arc;

use crate::device::cuda::{CudaTensor, DType, Gpu};
use crate::error::Result;
use crate::models::clip::transformer::{Transformer, LN_EPS};
use crate::ops::activation::Activation;
use crate::ops::attention::{attention_cuda, CudaAttnMask, ProbsRecord};
use crate::ops::layernorm::layer_norm_cuda;
use crate::ops::matmul::{linear_cuda, Epilogue, LinearWeight};

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
    /// Uploads the CPU stack's weights (GEMM weights in `dtype`, LayerNorm parameters and
    /// biases in f32): the same model, whatever loaded or drew it.
    pub fn from_cpu(gpu: &Arc<Gpu>, cpu: &Transformer, dtype: DType) -> Result<Self> {
        let c = cpu.width;
        let small = |v: &[f32]| CudaTensor::from_f32(gpu, &[v.len()], v, DType::F32);
        let weight = |w: &LinearWeight| CudaTensor::from_f32(gpu, &[w.n(), w.k()], &w.to_row_major(), dtype);
        let blocks = cpu
            .blocks
            .iter()
            .map(|blk| {
                Ok(CudaBlock {
                    ln1_w: small(&blk.ln1_w)?,
                    ln1_b: small(&blk.ln1_b)?,
                    in_w: weight(&blk.in_w)?,
                    in_b: small(&blk.in_b)?,
                    out_w: weight(&blk.out_w)?,
                    out_b: small(&blk.out_b)?,
                    ln2_w: small(&blk.ln2_w)?,
                    ln2_b: small(&blk.ln2_b)?,
                    fc_w: weight(&blk.fc_w)?,
                    fc_b: small(&blk.fc_b)?,
                    proj_w: weight(&blk.proj_w)?,
                    proj_b: small(&blk.proj_b)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaTransformer { blocks, width: c, heads: cpu.heads, act: cpu.act, dtype, gpu: gpu.clone() })
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
