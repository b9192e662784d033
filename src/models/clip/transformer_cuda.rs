//! The pre-norm residual attention block stack on the GPU (`transformer.rs`'s twin), shared by
//! the CUDA ViT and text encoders: LayerNorm -> packed qkv GEMM -> fused attention -> out-proj
//! GEMM with the residual fused -> LayerNorm -> fc GEMM with bias + activation fused -> proj GEMM
//! with the residual fused. Weights in the compute dtype; LayerNorm parameters and biases f32,
//! uploaded from the CPU stack (`CudaTransformer::from_cpu`): the CPU loader is the only one.

use std::sync::Arc;

use crate::device::cuda::{CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
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
        let (b, t) = (x.dim(0), x.dim(1));
        let mut ws = TransformerWorkspace::new(gpu, b, t, self.width, self.dtype)?;
        let mut recorded = Vec::new();
        if record != ProbsRecord::None {
            for _ in 0..self.blocks.len() {
                recorded.push(CudaTensor::empty(gpu, &[b, t, t], DType::F32)?);
            }
        }
        self.forward_in(&mut x, &mut ws, masks, record, &mut recorded)?;
        Ok((x, recorded))
    }

    /// The blocks on x (B, T, C) in place, with every intermediate in `ws` and layer l's
    /// probabilities into `probs[l]` when `record` asks: kernel launches only, nothing
    /// allocated, so it can be captured into a graph (`Gpu::capture`).
    pub fn forward_in(
        &self,
        x: &mut CudaTensor,
        ws: &mut TransformerWorkspace,
        masks: &[CudaAttnMask],
        record: ProbsRecord,
        probs: &mut [CudaTensor],
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let want = [x.dim(0), x.dim(1), self.width];
        if x.shape() != want || ws.h.shape() != want {
            return Err(Error::Shape(format!(
                "transformer input {:?}, workspace {:?}, width {}",
                x.shape(),
                ws.h.shape(),
                self.width
            )));
        }
        if record != ProbsRecord::None && probs.len() != self.blocks.len() {
            return Err(Error::Shape(format!("{} probability maps for {} layers", probs.len(), self.blocks.len())));
        }
        let epi = match self.act {
            Activation::QuickGelu => Epilogue::QuickGelu,
            Activation::Gelu => Epilogue::Gelu,
        };
        let TransformerWorkspace { h, qkv, attn, x2, mlp } = ws;
        let none = CudaAttnMask { shared: None, cls_row: None, causal: false };
        for (l, blk) in self.blocks.iter().enumerate() {
            let mask = masks.get(l).unwrap_or(&none);
            layer_norm_cuda(gpu, x, &blk.ln1_w, &blk.ln1_b, LN_EPS, h)?;
            linear_cuda(gpu, h, &blk.in_w, Some(&blk.in_b), Epilogue::None, None, qkv)?;
            let p = if record == ProbsRecord::None { None } else { Some(&mut probs[l]) };
            attention_cuda(gpu, qkv, self.heads, mask, record, attn, p)?;
            // x2 = x + attn W_out^T + b_out
            linear_cuda(gpu, attn, &blk.out_w, Some(&blk.out_b), Epilogue::None, Some(&*x), x2)?;
            layer_norm_cuda(gpu, x2, &blk.ln2_w, &blk.ln2_b, LN_EPS, h)?;
            linear_cuda(gpu, h, &blk.fc_w, Some(&blk.fc_b), epi, None, mlp)?;
            // x = x2 + act(h W_fc^T + b_fc) W_proj^T + b_proj
            linear_cuda(gpu, mlp, &blk.proj_w, Some(&blk.proj_b), Epilogue::None, Some(&*x2), x)?;
        }
        Ok(())
    }
}

/// The block stack's intermediates for one (B, T): allocated once, reused by every layer and
/// every call of `CudaTransformer::forward_in`.
pub struct TransformerWorkspace {
    h: CudaTensor,    // (B, T, C) LayerNorm output
    qkv: CudaTensor,  // (B, T, 3C)
    attn: CudaTensor, // (B, T, C)
    x2: CudaTensor,   // (B, T, C) after the attention residual
    mlp: CudaTensor,  // (B, T, 4C)
}

impl TransformerWorkspace {
    pub fn new(gpu: &Gpu, b: usize, t: usize, c: usize, dt: DType) -> Result<TransformerWorkspace> {
        Ok(TransformerWorkspace {
            h: CudaTensor::empty(gpu, &[b, t, c], dt)?,
            qkv: CudaTensor::empty(gpu, &[b, t, 3 * c], dt)?,
            attn: CudaTensor::empty(gpu, &[b, t, c], dt)?,
            x2: CudaTensor::empty(gpu, &[b, t, c], dt)?,
            mlp: CudaTensor::empty(gpu, &[b, t, 4 * c], dt)?,
        })
    }
}
