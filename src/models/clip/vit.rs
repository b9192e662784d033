//! CLIP's ViT image encoder at any input size (H, W multiples of the patch): patch embedding,
//! class token, positional grid (bilinearly resized when the grid differs from the native one),
//! ln_pre, the block stack, ln_post and the projection.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::models::clip::config::VitConfig;
use crate::models::clip::transformer::{block_param_shapes, LayerRequests, Transformer, LN_EPS};
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;
use crate::ops::attention::AttnMask;
use crate::ops::conv2d::patch_embed_weight_cpu;
use crate::ops::gemm_packed::Epilogue;
use crate::ops::interpolate::resize_positional_grid;
use crate::ops::layernorm::layer_norm_cpu;
use crate::ops::matmul::LinearWeight;
use crate::tensor::Tensor;

pub struct VisionTransformer {
    pub cfg: VitConfig,
    /// (C, 3 * p * p): the patch convolution as a linear layer over flattened patches.
    pub(crate) conv_w: LinearWeight,
    pub(crate) class_emb: Vec<f32>,
    /// (grid^2 + 1, C)
    pub(crate) pos_emb: Vec<f32>,
    pub(crate) ln_pre_w: Vec<f32>,
    pub(crate) ln_pre_b: Vec<f32>,
    pub transformer: Transformer,
    pub(crate) ln_post_w: Vec<f32>,
    pub(crate) ln_post_b: Vec<f32>,
    /// Stored transposed, (D, C), so the projection is a `linear`.
    pub(crate) proj_t: LinearWeight,
}

/// Extra things a caller may ask of one pass (TagCLIP asks for all of them).
#[derive(Default)]
pub struct VitRequest<'a> {
    /// Every token after ln_post and the projection, (B, T, D).
    pub tokens: bool,
    /// Each layer's head-averaged attention probabilities, (B, T, T) per layer.
    pub attn_probs: bool,
    /// Record probabilities before the masks (TagCLIP records its masked last layer this way).
    pub probs_before_mask: bool,
    /// Per-layer additive masks.
    pub masks: Vec<AttnMask<'a>>,
    /// A positional table (T, C) to use instead of the model's own (resized) one: TagCLIP
    /// resizes it its own way (torch's f32 arithmetic, then a cast to fp16).
    pub pos_table: Option<&'a [f32]>,
}

pub struct VitOutput {
    /// (B, D): the class token after ln_post and the projection.
    pub pooled: Tensor,
    pub tokens: Option<Tensor>,
    pub attn: Vec<Tensor>,
}

impl VisionTransformer {
    pub fn load(p: &mut Params, cfg: &VitConfig, act: Activation) -> Result<Self> {
        let (c, pp, d) = (cfg.width, cfg.patch, cfg.output_dim);
        let n_pos = cfg.grid * cfg.grid + 1;
        let conv_w = p.take("visual.conv1.weight", &[c, 3, pp, pp])?;
        let class_emb = p.take("visual.class_embedding", &[c])?;
        let pos_emb = p.take("visual.positional_embedding", &[n_pos, c])?;
        let ln_pre_w = p.take("visual.ln_pre.weight", &[c])?;
        let ln_pre_b = p.take("visual.ln_pre.bias", &[c])?;
        let transformer = Transformer::load(p, "visual.transformer.resblocks.", c, cfg.layers, cfg.heads, act)?;
        let ln_post_w = p.take("visual.ln_post.weight", &[c])?;
        let ln_post_b = p.take("visual.ln_post.bias", &[c])?;
        let proj = p.take("visual.proj", &[c, d])?;
        let proj_t = LinearWeight::new(transpose(&proj, c, d), d, c);
        let conv_w = LinearWeight::new(conv_w, c, 3 * pp * pp);
        Ok(VisionTransformer {
            cfg: cfg.clone(),
            conv_w,
            class_emb,
            pos_emb,
            ln_pre_w,
            ln_pre_b,
            transformer,
            ln_post_w,
            ln_post_b,
            proj_t,
        })
    }

    pub fn random(cfg: &VitConfig, act: Activation, rng: &mut impl Rng) -> Self {
        let (c, pp, d) = (cfg.width, cfg.patch, cfg.output_dim);
        let scale = (c as f32).powf(-0.5);
        let r =
            |shape: &[usize], std: f32, rng: &mut _| Tensor::randn(shape, std, rng).into_f32_vec().unwrap_or_default();
        VisionTransformer {
            cfg: cfg.clone(),
            conv_w: LinearWeight::new(r(&[c, 3, pp, pp], 0.02, rng), c, 3 * pp * pp),
            class_emb: r(&[c], scale, rng),
            pos_emb: r(&[cfg.grid * cfg.grid + 1, c], scale, rng),
            ln_pre_w: vec![1.0; c],
            ln_pre_b: vec![0.0; c],
            transformer: Transformer::random(c, cfg.layers, cfg.heads, act, rng),
            ln_post_w: vec![1.0; c],
            ln_post_b: vec![0.0; c],
            proj_t: LinearWeight::new(r(&[d, c], scale, rng), d, c),
        }
    }

    /// The positional embedding for a gh x gw grid: the class position as is, the patch
    /// grid resized bilinearly (align_corners = false) when it differs from the native one.
    pub fn positional_embedding(&self, gh: usize, gw: usize) -> Vec<f32> {
        resize_positional_grid(&self.pos_emb, self.cfg.width, self.cfg.grid, gh, gw)
    }

    /// Number of tokens for an input of h x w pixels.
    pub fn num_tokens(&self, h: usize, w: usize) -> usize {
        (h / self.cfg.patch) * (w / self.cfg.patch) + 1
    }

    /// pixels (B, 3, H, W), normalised.
    pub fn forward(&self, pixels: &Tensor, req: &VitRequest) -> Result<VitOutput> {
        let s = pixels.shape();
        let p = self.cfg.patch;
        if s.len() != 4 || s[1] != 3 || !s[2].is_multiple_of(p) || !s[3].is_multiple_of(p) || s[2] == 0 || s[3] == 0 {
            return Err(Error::Shape(format!(
                "ViT input must be (B, 3, H, W) with H and W positive multiples of the patch {p}; got {s:?}"
            )));
        }
        let (b, h, w) = (s[0], s[2], s[3]);
        let (gh, gw) = (h / p, w / p);
        let (c, d) = (self.cfg.width, self.cfg.output_dim);
        let n = gh * gw;
        let t = n + 1;
        let mut patches = vec![0.0f32; b * n * c];
        patch_embed_weight_cpu(pixels.f32s()?, b, 3, h, w, &self.conv_w, p, &mut patches);
        let pos = match req.pos_table {
            Some(table) if table.len() == t * c => table.to_vec(),
            Some(table) => {
                return Err(Error::Shape(format!("positional table of {} values for {t} tokens x {c}", table.len())))
            }
            None => self.positional_embedding(gh, gw),
        };
        let mut x = vec![0.0f32; b * t * c];
        for bi in 0..b {
            let xb = &mut x[bi * t * c..(bi + 1) * t * c];
            xb[..c].copy_from_slice(&self.class_emb);
            xb[c..].copy_from_slice(&patches[bi * n * c..(bi + 1) * n * c]);
            for (v, pv) in xb.iter_mut().zip(&pos) {
                *v += pv;
            }
        }
        let mut xn = vec![0.0f32; x.len()];
        layer_norm_cpu(&x, &self.ln_pre_w, &self.ln_pre_b, LN_EPS, &mut xn);
        let mut x = xn;
        for m in &req.masks {
            if let Some(sm) = m.shared {
                if sm.len() != t * t {
                    return Err(Error::Shape(format!("attention mask of {} values for {t} tokens", sm.len())));
                }
            }
            if let Some(cm) = m.cls_row {
                if cm.len() != b * t {
                    return Err(Error::Shape(format!("CLS-row mask of {} values for {b} x {t}", cm.len())));
                }
            }
        }
        let layer_req = LayerRequests {
            masks: req.masks.clone(),
            record_probs: req.attn_probs,
            probs_before_mask: req.probs_before_mask,
        };
        let probs = self.transformer.forward(&mut x, b, t, &layer_req);
        let mut attn = Vec::with_capacity(probs.len());
        for pm in probs {
            attn.push(Tensor::from_f32(&[b, t, t], pm)?);
        }
        let (pooled, tokens) = if req.tokens {
            let mut xn = vec![0.0f32; x.len()];
            layer_norm_cpu(&x, &self.ln_post_w, &self.ln_post_b, LN_EPS, &mut xn);
            let mut all = vec![0.0f32; b * t * d];
            self.proj_t.forward(&xn, &mut all, &Epilogue::default());
            let pooled: Vec<f32> = all.chunks_exact(t * d).flat_map(|r| r[..d].to_vec()).collect();
            (pooled, Some(Tensor::from_f32(&[b, t, d], all)?))
        } else {
            let cls: Vec<f32> = x.chunks_exact(t * c).flat_map(|r| r[..c].to_vec()).collect();
            let mut cn = vec![0.0f32; b * c];
            layer_norm_cpu(&cls, &self.ln_post_w, &self.ln_post_b, LN_EPS, &mut cn);
            let mut pooled = vec![0.0f32; b * d];
            self.proj_t.forward(&cn, &mut pooled, &Epilogue::default());
            (pooled, None)
        };
        Ok(VitOutput { pooled: Tensor::from_f32(&[b, d], pooled)?, tokens, attn })
    }
}

/// (r, c) row-major -> (c, r) row-major.
pub fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            y[j * r + i] = x[i * c + j];
        }
    }
    y
}

/// The tensor names and shapes of a ViT image tower (open_clip names), for loading and for
/// random weights that both the CPU and the CUDA encoder can load.
pub fn vit_param_shapes(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (c, p, d) = (cfg.width, cfg.patch, cfg.output_dim);
    let mut v = vec![
        ("visual.conv1.weight".to_string(), vec![c, 3, p, p]),
        ("visual.class_embedding".into(), vec![c]),
        ("visual.positional_embedding".into(), vec![cfg.grid * cfg.grid + 1, c]),
        ("visual.ln_pre.weight".into(), vec![c]),
        ("visual.ln_pre.bias".into(), vec![c]),
    ];
    v.extend(block_param_shapes("visual.transformer.resblocks.", c, cfg.layers));
    v.extend([
        ("visual.ln_post.weight".to_string(), vec![c]),
        ("visual.ln_post.bias".into(), vec![c]),
        ("visual.proj".into(), vec![c, d]),
    ]);
    v
}

/// Random ViT image-tower weights as `Params` (CLIP-like scales, non-trivial LayerNorm and
/// biases so that every parameter matters in a comparison).
pub fn random_vit_params(cfg: &VitConfig, seed: u64) -> Result<Params> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut map = std::collections::BTreeMap::new();
    let c = cfg.width as f32;
    for (name, shape) in vit_param_shapes(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("ln_1.weight")
            || name.ends_with("ln_2.weight")
            || name.contains("ln_p") && name.ends_with("weight")
        {
            (0..n).map(|_| rng.gen_range(0.8..1.2)).collect()
        } else if name.ends_with("bias") {
            (0..n).map(|_| rng.gen_range(-0.05..0.05)).collect()
        } else {
            let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
            let std = if name.ends_with("conv1.weight") {
                0.02
            } else if name == "visual.proj" {
                c.powf(-0.5)
            } else {
                fan_in.powf(-0.5)
            };
            Tensor::randn(&shape, std, &mut rng).into_f32_vec()?
        };
        map.insert(name, Tensor::from_f32(&shape, data)?);
    }
    Params::from_map(map, HashMap::new())
}
