//! CLIP's text encoder on the GPU (`text.rs`'s twin): token + positional embedding, the causal
//! block stack, ln_final at the end token (the first position of the largest id, torch.argmax's
//! rule) and the projection.

use std::sync::Arc;

use crate::device::cuda::{CudaTensor, DType, Gpu};
use crate::error::Result;
use crate::models::clip::config::TextConfig;
use crate::models::clip::text::{encode_trimmed, end_token_positions, text_ids, TextEncoder, TEXT_BATCH};
use crate::models::clip::transformer::LN_EPS;
use crate::models::clip::transformer_cuda::CudaTransformer;
use crate::ops::attention::{CudaAttnMask, ProbsRecord};
use crate::ops::embedding::token_embedding_cuda;
use crate::ops::layernorm::layer_norm_cuda;
use crate::ops::matmul::{linear_cuda, Epilogue};
use crate::ops::tokens::gather_rows_cuda;
use crate::tensor::Tensor;

pub struct CudaTextEncoder {
    pub cfg: TextConfig,
    pub dtype: DType,
    gpu: Arc<Gpu>,
    token_emb: CudaTensor, // (V, W)
    pos_emb: CudaTensor,   // (context, W)
    pub transformer: CudaTransformer,
    ln_final_w: CudaTensor,
    ln_final_b: CudaTensor,
    proj_t: CudaTensor, // (D, W)
}

impl CudaTextEncoder {
    /// Uploads the CPU tower's weights (embeddings and projection in `dtype`, LayerNorm
    /// parameters f32): the same model as `cpu`, whatever loaded or drew it.
    pub fn from_cpu(gpu: &Arc<Gpu>, cpu: &TextEncoder, dtype: DType) -> Result<Self> {
        let (cfg, w) = (&cpu.cfg, cpu.cfg.width);
        let small = |v: &[f32]| CudaTensor::from_f32(gpu, &[v.len()], v, DType::F32);
        Ok(CudaTextEncoder {
            cfg: cfg.clone(),
            dtype,
            gpu: gpu.clone(),
            token_emb: CudaTensor::from_f32(gpu, &[cfg.vocab, w], &cpu.token_emb, dtype)?,
            pos_emb: CudaTensor::from_f32(gpu, &[cfg.context, w], &cpu.pos_emb, dtype)?,
            transformer: CudaTransformer::from_cpu(gpu, &cpu.transformer, dtype)?,
            ln_final_w: small(&cpu.ln_final_w)?,
            ln_final_b: small(&cpu.ln_final_b)?,
            proj_t: CudaTensor::from_f32(gpu, &[cfg.output_dim, w], &cpu.proj_t.to_row_major(), dtype)?,
        })
    }

    /// tokens (B, T) i32 ids on the host -> (B, D) unnormalised text features on the device.
    pub fn forward(&self, tokens: &Tensor) -> Result<CudaTensor> {
        let gpu = &*self.gpu;
        let (ids, b, t) = text_ids(tokens, self.cfg.context)?;
        let (w, d) = (self.cfg.width, self.cfg.output_dim);
        let ids_dev = CudaTensor::from_i32(gpu, &[b, t], ids)?;
        let mut x = CudaTensor::empty(gpu, &[b, t, w], self.dtype)?;
        token_embedding_cuda(gpu, &ids_dev, ids, &self.token_emb, &self.pos_emb, &mut x)?;
        let causal = CudaAttnMask { shared: None, cls_row: None, causal: true };
        let masks: Vec<CudaAttnMask> = (0..self.transformer.layers()).map(|_| CudaAttnMask { ..causal }).collect();
        let (x, _) = self.transformer.forward(x, &masks, ProbsRecord::None)?;
        let eot: Vec<i32> = end_token_positions(ids, t).into_iter().map(|j| j as i32).collect();
        let index = CudaTensor::from_i32(gpu, &[b], &eot)?;
        let mut pooled = CudaTensor::empty(gpu, &[b, w], self.dtype)?;
        gather_rows_cuda(gpu, &x, &index, &mut pooled)?;
        let mut normed = CudaTensor::empty(gpu, &[b, w], self.dtype)?;
        layer_norm_cuda(gpu, &pooled, &self.ln_final_w, &self.ln_final_b, LN_EPS, &mut normed)?;
        let mut out = CudaTensor::empty(gpu, &[b, d], self.dtype)?;
        linear_cuda(gpu, &normed, &self.proj_t, None, Epilogue::None, None, &mut out)?;
        Ok(out)
    }

    /// tokens (N, context) on the host -> (N, D) unnormalised features on the host, through
    /// the CPU tower's batching ([`encode_trimmed`]: batches of similar length, each only up to
    /// its longest prompt's end token).
    pub fn forward_trimmed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.forward_trimmed_in(tokens, TEXT_BATCH)
    }

    /// [`CudaTextEncoder::forward_trimmed`] with `batch` prompts per pass.
    pub fn forward_trimmed_in(&self, tokens: &Tensor, batch: usize) -> Result<Tensor> {
        let (n, d) = (tokens.shape().first().copied().unwrap_or(0), self.cfg.output_dim);
        let out = encode_trimmed(tokens, self.cfg.context, d, batch, |t| self.forward(t)?.to_f32_vec(&self.gpu))?;
        Tensor::from_f32(&[n, d], out)
    }
}

/// Encoder-level check for gpu-check: the CUDA text encoder against the CPU one on the same
/// random weights (a small tower, and CLIP's 12-layer 512-wide tower on 80 prompts).
pub fn gpu_checks() -> Vec<crate::device::cuda::check::GpuCheck> {
    use crate::device::cuda::check::{max_rel_err, CheckRun, GpuCheck, Work};
    use crate::models::clip::text::random_text_params;
    use crate::ops::activation::Activation;
    use crate::tensor::Storage;
    use rand::Rng;
    let small = TextConfig { width: 128, layers: 2, heads: 2, context: 77, vocab: 1000, output_dim: 64 };
    let clip = TextConfig { width: 512, layers: 12, heads: 8, context: 77, vocab: 49408, output_dim: 512 };
    let mut checks = Vec::new();
    for (name, cfg, batch) in [("small text", small.clone(), 5usize), ("CLIP text", clip, 80)] {
        for dtype in [DType::F32, DType::BF16] {
            let cfg = cfg.clone();
            let flops = batch as f64 * 5.96e9 * (cfg.width * cfg.width * cfg.layers) as f64 / (512.0 * 512.0 * 12.0);
            checks.push(GpuCheck::new(
                "text_encoder_forward",
                format!("{name} B={batch}"),
                dtype,
                Work::Flops(flops),
                move |gpu, rng| {
                    let seed = rng.gen::<u64>();
                    let act = Activation::QuickGelu;
                    let cpu = TextEncoder::load(&mut random_text_params(&cfg, seed)?, &cfg, act)?;
                    let dev = CudaTextEncoder::from_cpu(gpu, &cpu, dtype)?;
                    // Prompts of random lengths: start id, words, end id (the largest), padding 0.
                    let t = cfg.context;
                    let mut ids = vec![0i32; batch * t];
                    for row in ids.chunks_exact_mut(t) {
                        let len = rng.gen_range(3..t);
                        row[0] = cfg.vocab as i32 - 2;
                        for v in row[1..len - 1].iter_mut() {
                            *v = rng.gen_range(1..cfg.vocab as i32 - 2);
                        }
                        row[len - 1] = cfg.vocab as i32 - 1;
                    }
                    let tokens = Tensor::new(&[batch, t], Storage::I32(ids))?;
                    let want = cpu.forward(&tokens)?;
                    let got = dev.forward(&tokens)?.to_f32_vec(gpu)?;
                    let err = max_rel_err(&got, want.f32s()?);
                    Ok(CheckRun {
                        max_rel_err: err,
                        launch: Box::new(move || dev.forward(&tokens).map(|_| ())),
                        cublas: None,
                    })
                },
            ));
        }
    }
    // The trimmed batches on the device against the CPU tower's full-context pass: 8 prompts per
    // pass, so rows come back from three passes of different lengths.
    let cfg = TextConfig { width: 64, layers: 1, heads: 2, ..small };
    let (batch, per_pass) = (20usize, 8usize);
    // At most 24 of the 77 positions are encoded.
    let flops =
        batch as f64 * 5.96e9 * (cfg.width * cfg.width * cfg.layers) as f64 / (512.0 * 512.0 * 12.0) * 24.0 / 77.0;
    checks.push(GpuCheck::new(
        "text_encoder_trimmed",
        format!("tiny text B={batch}, {per_pass} per pass"),
        DType::F32,
        Work::Flops(flops),
        move |gpu, rng| {
            let seed = rng.gen::<u64>();
            let act = Activation::QuickGelu;
            let cpu = TextEncoder::load(&mut random_text_params(&cfg, seed)?, &cfg, act)?;
            let dev = CudaTextEncoder::from_cpu(gpu, &cpu, DType::F32)?;
            let t = cfg.context;
            let mut ids = vec![0i32; batch * t];
            for row in ids.chunks_exact_mut(t) {
                let len = rng.gen_range(3..24);
                row[0] = cfg.vocab as i32 - 2;
                for v in row[1..len - 1].iter_mut() {
                    *v = rng.gen_range(1..cfg.vocab as i32 - 2);
                }
                row[len - 1] = cfg.vocab as i32 - 1;
            }
            let tokens = Tensor::new(&[batch, t], Storage::I32(ids))?;
            let want = cpu.forward(&tokens)?;
            let got = dev.forward_trimmed_in(&tokens, per_pass)?;
            let err = max_rel_err(got.f32s()?, want.f32s()?);
            Ok(CheckRun {
                max_rel_err: err,
                launch: Box::new(move || dev.forward_trimmed_in(&tokens, per_pass).map(|_| ())),
                cublas: None,
            })
        },
    ));
    checks
}
