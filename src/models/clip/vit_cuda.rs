//! CLIP's ViT image encoder on the GPU: the same pass as `vit.rs`, op for op, through the CUDA
//! launchers of src/ops (patchify + GEMM patch embedding, class token and positional table,
//! ln_pre, the pre-norm blocks with the fused attention kernel and GEMM epilogues for bias,
//! activation and residual, ln_post on the class token, projection). Activations live in the
//! chosen dtype (f32, bf16 or f16); LayerNorm parameters and biases stay f32. The weights come
//! from the loaded CPU tower (`CudaVit::from_cpu`): `vit.rs` holds the one loader and name list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::device::cuda::{CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::models::clip::config::VitConfig;
use crate::models::clip::transformer::LN_EPS;
use crate::models::clip::transformer_cuda::CudaTransformer;
use crate::models::clip::vit::{VisionTransformer, VitOutput, VitRequest};
use crate::ops::activation::Activation;
use crate::ops::attention::{CudaAttnMask, ProbsRecord};
use crate::ops::conv2d::patchify_cuda;
use crate::ops::interpolate::resize_positional_grid;
use crate::ops::layernorm::layer_norm_cuda;
use crate::ops::matmul::{linear_cuda, Epilogue, LinearWeight};
use crate::ops::tokens::{gather_rows_cuda, vit_tokens_cuda};
use crate::tensor::Tensor;

/// What `CudaVit::forward_request_device` leaves on the device.
pub struct CudaVitOutput {
    /// (B * T, D) projected tokens (CLS first in each image) with `VitRequest::tokens`, else
    /// (B, D) the projected CLS token; in the tower's dtype.
    pub projected: CudaTensor,
    /// The recorded head-averaged attention maps, one (B, T, T) f32 tensor per layer.
    pub attn: Vec<CudaTensor>,
    pub batch: usize,
    /// Tokens per image (T = patches + 1).
    pub tokens: usize,
}

pub struct CudaVit {
    pub cfg: VitConfig,
    pub act: Activation,
    pub dtype: DType,
    gpu: Arc<Gpu>,
    conv_w: CudaTensor, // (C, 3 * p * p)
    class_emb: CudaTensor,
    /// (grid^2 + 1, C) on the host: resized per input grid, uploaded once per grid.
    pos_emb: Vec<f32>,
    pos_cache: Mutex<HashMap<(usize, usize), Arc<CudaTensor>>>,
    ln_pre_w: CudaTensor,
    ln_pre_b: CudaTensor,
    pub transformer: CudaTransformer,
    ln_post_w: CudaTensor,
    ln_post_b: CudaTensor,
    proj_t: CudaTensor, // (D, C)
}

fn upload(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> Result<CudaTensor> {
    CudaTensor::from_f32(gpu, shape, data, dtype)
}

/// The input rule of `VisionTransformer::forward`: (B, 3, H, W), H and W positive multiples of the patch.
fn check_vit_input(s: &[usize], p: usize) -> Result<()> {
    if s.len() != 4 || s[1] != 3 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) || s[2] == 0 || s[3] == 0 {
        return Err(Error::Shape(format!(
            "ViT input must be (B, 3, H, W) with H and W positive multiples of the patch {p}; got {s:?}"
        )));
    }
    Ok(())
}

impl CudaVit {
    /// Uploads the CPU tower's weights (GEMM weights in `dtype`; the class token, LayerNorm
    /// parameters and the positional table f32): the same model as `cpu`, whatever loaded or
    /// drew it.
    pub fn from_cpu(gpu: &Arc<Gpu>, cpu: &VisionTransformer, dtype: DType) -> Result<CudaVit> {
        if !dtype.is_float() {
            return Err(Error::Device(format!("CUDA ViT: dtype {dtype:?} is not a float type")));
        }
        let f32d = DType::F32;
        let small = |v: &[f32]| upload(gpu, v, &[v.len()], f32d);
        let weight = |w: &LinearWeight| upload(gpu, &w.to_row_major(), &[w.n(), w.k()], dtype);
        Ok(CudaVit {
            cfg: cpu.cfg.clone(),
            act: cpu.transformer.act,
            dtype,
            gpu: gpu.clone(),
            conv_w: weight(&cpu.conv_w)?,
            class_emb: small(&cpu.class_emb)?,
            pos_emb: cpu.pos_emb.clone(),
            pos_cache: Mutex::new(HashMap::new()),
            ln_pre_w: small(&cpu.ln_pre_w)?,
            ln_pre_b: small(&cpu.ln_pre_b)?,
            transformer: CudaTransformer::from_cpu(gpu, &cpu.transformer, dtype)?,
            ln_post_w: small(&cpu.ln_post_w)?,
            ln_post_b: small(&cpu.ln_post_b)?,
            proj_t: weight(&cpu.proj_t)?,
        })
    }

    fn positional(&self, gh: usize, gw: usize) -> Result<Arc<CudaTensor>> {
        let mut cache = self.pos_cache.lock().map_err(|_| Error::Internal("positional cache poisoned".into()))?;
        if let Some(t) = cache.get(&(gh, gw)) {
            return Ok(t.clone());
        }
        let table = resize_positional_grid(&self.pos_emb, self.cfg.width, self.cfg.grid, gh, gw);
        // f32 like every small parameter: vit_tokens adds it in f32 before the cast.
        let t = Arc::new(upload(&self.gpu, &table, &[gh * gw + 1, self.cfg.width], DType::F32)?);
        cache.insert((gh, gw), t.clone());
        Ok(t)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// pixels (B, 3, H, W) in this encoder's dtype, normalised -> pooled (B, D).
    pub fn forward(&self, pixels: &CudaTensor) -> Result<CudaTensor> {
        check_vit_input(pixels.shape(), self.cfg.patch)?;
        pixels.expect_dtype(self.dtype, "CUDA ViT input")?;
        let p = self.cfg.patch;
        let pos = self.positional(pixels.dim(2) / p, pixels.dim(3) / p)?;
        let h = self.embed(pixels, &pos)?;
        let (x, _) = self.transformer.forward(h, &[], ProbsRecord::None)?;
        self.project(x, false)
    }

    /// pixels (B, 3, H, W) -> ln_pre(patch embedding, class token, + pos), (B, T, C): the
    /// patch embedding as one GEMM over the patchified pixels.
    fn embed(&self, pixels: &CudaTensor, pos: &CudaTensor) -> Result<CudaTensor> {
        let gpu = &*self.gpu;
        let p = self.cfg.patch;
        let (b, n, c) = (pixels.dim(0), (pixels.dim(2) / p) * (pixels.dim(3) / p), self.cfg.width);
        let dt = self.dtype;
        let mut cols = CudaTensor::empty(gpu, &[b * n, 3 * p * p], dt)?;
        patchify_cuda(gpu, pixels, p, &mut cols)?;
        let mut patches = CudaTensor::empty(gpu, &[b * n, c], dt)?;
        linear_cuda(gpu, &cols, &self.conv_w, None, Epilogue::None, None, &mut patches)?;
        drop(cols);
        let patches = patches.reshape(&[b, n, c])?;
        let mut x = CudaTensor::empty(gpu, &[b, n + 1, c], dt)?;
        vit_tokens_cuda(gpu, &patches, &self.class_emb, pos, &mut x)?;
        drop(patches);
        let mut h = CudaTensor::empty(gpu, &[b, n + 1, c], dt)?;
        layer_norm_cuda(gpu, &x, &self.ln_pre_w, &self.ln_pre_b, LN_EPS, &mut h)?;
        Ok(h)
    }

    /// x (B, T, C) after the blocks -> proj(ln_post(.)) of every token, (B * T, D), or of the
    /// class token only, (B, D).
    fn project(&self, x: CudaTensor, all_tokens: bool) -> Result<CudaTensor> {
        let gpu = &*self.gpu;
        let (b, t, c, d) = (x.dim(0), x.dim(1), self.cfg.width, self.cfg.output_dim);
        let dt = self.dtype;
        let src = if all_tokens {
            x.reshape(&[b * t, c])?
        } else {
            let index = CudaTensor::from_i32(gpu, &[b], &vec![0i32; b])?;
            let mut cls = CudaTensor::empty(gpu, &[b, c], dt)?;
            gather_rows_cuda(gpu, &x, &index, &mut cls)?;
            cls
        };
        let rows = src.dim(0);
        let mut normed = CudaTensor::empty(gpu, &[rows, c], dt)?;
        layer_norm_cuda(gpu, &src, &self.ln_post_w, &self.ln_post_b, LN_EPS, &mut normed)?;
        let mut projected = CudaTensor::empty(gpu, &[rows, d], dt)?;
        linear_cuda(gpu, &normed, &self.proj_t, None, Epilogue::None, None, &mut projected)?;
        Ok(projected)
    }

    /// The pass with everything `VisionTransformer::forward` offers (per-layer masks, recorded
    /// attention maps, all tokens, a caller's positional table), host tensors in and out: what
    /// TagCLIP's two passes need. Pixels and masks are uploaded, maps and tokens downloaded.
    pub fn forward_request(&self, pixels: &Tensor, req: &VitRequest) -> Result<VitOutput> {
        let gpu = &*self.gpu;
        let out = self.forward_request_device(pixels, req)?;
        let (b, t, d) = (out.batch, out.tokens, self.cfg.output_dim);
        let attn = out.attn.iter().map(|pm| pm.to_tensor(gpu)).collect::<Result<Vec<_>>>()?;
        let all = out.projected.to_f32_vec(gpu)?;
        let (pooled, tokens) = if req.tokens {
            let pooled: Vec<f32> = all.chunks_exact(t * d).flat_map(|r| r[..d].to_vec()).collect();
            (pooled, Some(Tensor::from_f32(&[b, t, d], all)?))
        } else {
            (all, None)
        };
        Ok(VitOutput { pooled: Tensor::from_f32(&[b, d], pooled)?, tokens, attn })
    }

    /// `forward_request` with its outputs left on the device (TagCLIP's DMAR runs there).
    pub fn forward_request_device(&self, pixels: &Tensor, req: &VitRequest) -> Result<CudaVitOutput> {
        let gpu = &*self.gpu;
        let s = pixels.shape().to_vec();
        let p = self.cfg.patch;
        check_vit_input(&s, p)?;
        let (b, gh, gw) = (s[0], s[2] / p, s[3] / p);
        let (c, n) = (self.cfg.width, gh * gw);
        let t = n + 1;
        let dt = self.dtype;
        let x_in = CudaTensor::from_tensor(gpu, pixels, dt)?;
        let pos = match req.pos_table {
            Some(table) if table.len() == t * c => Arc::new(upload(gpu, table, &[t, c], DType::F32)?),
            Some(table) => {
                return Err(Error::Shape(format!("positional table of {} values for {t} tokens x {c}", table.len())))
            }
            None => self.positional(gh, gw)?,
        };
        // Masks: uploaded once per distinct host slice (CWR passes the same rows to every layer).
        let mut uploaded: Vec<(usize, usize, CudaTensor)> = Vec::new();
        let mut up = |m: &[f32], shape: &[usize]| -> Result<usize> {
            let key = (m.as_ptr() as usize, m.len());
            if let Some(i) = uploaded.iter().position(|(p, l, _)| (*p, *l) == key) {
                return Ok(i);
            }
            if m.len() != shape.iter().product::<usize>() {
                return Err(Error::Shape(format!("attention mask of {} values for shape {shape:?}", m.len())));
            }
            uploaded.push((key.0, key.1, CudaTensor::from_f32(gpu, shape, m, DType::F32)?));
            Ok(uploaded.len() - 1)
        };
        let mut idx = Vec::with_capacity(req.masks.len());
        for m in &req.masks {
            let sh = m.shared.map(|v| up(v, &[t, t])).transpose()?;
            let cr = m.cls_row.map(|v| up(v, &[b, t])).transpose()?;
            idx.push((sh, cr, m.causal));
        }
        let masks: Vec<CudaAttnMask> = idx
            .iter()
            .map(|&(sh, cr, causal)| CudaAttnMask {
                shared: sh.map(|i| &uploaded[i].2),
                cls_row: cr.map(|i| &uploaded[i].2),
                causal,
            })
            .collect();
        let record = ProbsRecord::from_flags(req.attn_probs, req.probs_before_mask);

        let h = self.embed(&x_in, &pos)?;
        drop(x_in);
        let (x, attn) = self.transformer.forward(h, &masks, record)?;
        let projected = self.project(x, req.tokens)?;
        Ok(CudaVitOutput { projected, attn, batch: b, tokens: t })
    }

    /// FLOPs of one image at h x w (2 per multiply-add), for roofline figures.
    pub fn flops_per_image(&self, h: usize, w: usize) -> f64 {
        self.cfg.flops_per_image(h, w)
    }
}

/// Encoder-level checks for gpu-check: the CUDA ViT's pooled embeddings against the CPU
/// encoder it was uploaded from, on random weights (a tiny tower at two input sizes, and ViT-B/16 at 224).
pub fn gpu_checks() -> Vec<crate::device::cuda::check::GpuCheck> {
    use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
    use crate::models::clip::vit::random_vit_params;
    let tiny = VitConfig { width: 128, layers: 2, heads: 2, patch: 16, grid: 4, output_dim: 32 };
    let b16 = VitConfig { width: 768, layers: 12, heads: 12, patch: 16, grid: 14, output_dim: 512 };
    let mut checks = Vec::new();
    for (name, cfg, batch, h, w) in [
        ("tiny ViT", tiny.clone(), 3usize, 64usize, 64usize),
        ("tiny ViT", tiny, 2, 64, 96),
        ("ViT-B/16", b16, 2, 224, 224),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let cfg = cfg.clone();
            let shape = format!("{name} B={batch} {h}x{w}");
            let flops = batch as f64 * 35.1e9 * ((h * w) as f64 / (224.0 * 224.0));
            checks.push(GpuCheck::new("vit_encoder_forward", shape, dtype, Work::Flops(flops), move |gpu, rng| {
                let seed = rng.gen::<u64>();
                let act = Activation::QuickGelu;
                let cpu = VisionTransformer::load(&mut random_vit_params(&cfg, seed)?, &cfg, act)?;
                let dev = CudaVit::from_cpu(gpu, &cpu, dtype)?;
                let pixels = random_vec(rng, batch * 3 * h * w, 2.0);
                let want =
                    cpu.forward(&Tensor::from_f32(&[batch, 3, h, w], pixels.clone())?, &VitRequest::default())?.pooled;
                let x = CudaTensor::from_f32(gpu, &[batch, 3, h, w], &pixels, dtype)?;
                let got = dev.forward(&x)?.to_f32_vec(gpu)?;
                let err = max_rel_err(&got, want.f32s()?);
                Ok(CheckRun { max_rel_err: err, launch: Box::new(move || dev.forward(&x).map(|_| ())), cublas: None })
            }));
        }
    }
    // TagCLIP's two requests: the patch pass (diagonal mask in the last layer, every layer's
    // unmasked maps, all tokens) and the crop pass (a per-sample CLS-row mask in every layer).
    for dtype in [DType::F32, DType::BF16] {
        let cfg = VitConfig { width: 128, layers: 3, heads: 2, patch: 16, grid: 4, output_dim: 32 };
        let (batch, h, w) = (2usize, 80usize, 64usize);
        let flops = batch as f64 * 2.0 * cfg.layers as f64 * 21.0 * 12.0 * 128.0 * 128.0;
        let check = GpuCheck::new(
            "vit_encoder_tagclip_passes",
            format!("tiny ViT B={batch} {h}x{w}"),
            dtype,
            Work::Flops(flops),
            move |gpu, rng| {
                use crate::ops::attention::AttnMask;
                let seed = rng.gen::<u64>();
                let act = Activation::QuickGelu;
                let cpu = VisionTransformer::load(&mut random_vit_params(&cfg, seed)?, &cfg, act)?;
                let dev = CudaVit::from_cpu(gpu, &cpu, dtype)?;
                let t = (h / 16) * (w / 16) + 1;
                let pixels = Tensor::from_f32(&[batch, 3, h, w], random_vec(rng, batch * 3 * h * w, 2.0))?;
                let diag: Vec<f32> = (0..t * t).map(|i| if i / t == i % t { -1e4 } else { 0.0 }).collect();
                let mut masks = vec![AttnMask::default(); cfg.layers];
                masks[cfg.layers - 1] = AttnMask { shared: Some(&diag), ..Default::default() };
                let req =
                    VitRequest { tokens: true, attn_probs: true, probs_before_mask: true, masks, pos_table: None };
                let (a, b) = (cpu.forward(&pixels, &req)?, dev.forward_request(&pixels, &req)?);
                let flat = |o: &VitOutput| -> Result<Vec<f32>> {
                    let mut v =
                        o.tokens.as_ref().map(|t| t.f32s().map(|s| s.to_vec())).transpose()?.unwrap_or_default();
                    for m in &o.attn {
                        v.extend_from_slice(m.f32s()?);
                    }
                    Ok(v)
                };
                let mut err = max_rel_err(&flat(&b)?, &flat(&a)?);
                let rows: Vec<f32> =
                    (0..batch * t).map(|i| if i % t != 0 && (i / t + i) % 3 == 0 { -1000.0 } else { 0.0 }).collect();
                let req = VitRequest {
                    masks: vec![AttnMask { cls_row: Some(&rows), ..Default::default() }; cfg.layers],
                    ..Default::default()
                };
                let (a, b) = (cpu.forward(&pixels, &req)?, dev.forward_request(&pixels, &req)?);
                err = err.max(max_rel_err(b.pooled.f32s()?, a.pooled.f32s()?));
                let layers = cfg.layers;
                let launch = move || {
                    let req = VitRequest {
                        masks: vec![AttnMask { cls_row: Some(&rows), ..Default::default() }; layers],
                        ..Default::default()
                    };
                    dev.forward_request(&pixels, &req).map(|_| ())
                };
                Ok(CheckRun { max_rel_err: err, launch: Box::new(launch), cublas: None })
            },
        );
        // Every token and every attention map, against the f32 CPU: each bf16 op rounds its
        // output (<= 2^-8 relative, what the per-op rows measure), and a chain of them through
        // patch embedding, two LayerNorms, the qkv GEMM and the softmax reaches ~5e-2 on single
        // map entries (measured on the simulator, also with bf16-rounded inputs and weights).
        // The f32 row checks the same paths at 1e-4; this one checks the bf16 storage paths.
        checks.push(if dtype == DType::BF16 { check.with_tolerance(1e-1) } else { check });
    }
    checks
}
