//! CLIP's text encoder: token + positional embeddings, causal block stack, ln_final, the
//! features at the end token (the largest token id, as OpenAI pools) and the projection.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::models::clip::config::TextConfig;
use crate::models::clip::transformer::{block_param_shapes, LayerRequests, Transformer, LN_EPS};
use crate::models::clip::vit::transpose;
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;
use crate::ops::attention::AttnMask;
use crate::ops::embedding::token_embedding_cpu;
use crate::ops::gemm_packed::Epilogue;
use crate::ops::layernorm::layer_norm_cpu;
use crate::ops::matmul::LinearWeight;
use crate::tensor::{Storage, Tensor};

pub struct TextEncoder {
    pub cfg: TextConfig,
    pub(crate) token_emb: Vec<f32>,
    pub(crate) pos_emb: Vec<f32>,
    pub transformer: Transformer,
    pub(crate) ln_final_w: Vec<f32>,
    pub(crate) ln_final_b: Vec<f32>,
    /// (D, W), transposed from OpenAI's (W, D).
    pub(crate) proj_t: LinearWeight,
}

impl TextEncoder {
    pub fn load(p: &mut Params, cfg: &TextConfig, act: Activation) -> Result<Self> {
        let (w, d) = (cfg.width, cfg.output_dim);
        let token_emb = p.take("token_embedding.weight", &[cfg.vocab, w])?;
        let pos_emb = p.take("positional_embedding", &[cfg.context, w])?;
        let transformer = Transformer::load(p, "transformer.resblocks.", w, cfg.layers, cfg.heads, act)?;
        let ln_final_w = p.take("ln_final.weight", &[w])?;
        let ln_final_b = p.take("ln_final.bias", &[w])?;
        let proj = p.take("text_projection", &[w, d])?;
        Ok(TextEncoder {
            cfg: cfg.clone(),
            token_emb,
            pos_emb,
            transformer,
            ln_final_w,
            ln_final_b,
            proj_t: LinearWeight::new(transpose(&proj, w, d), d, w),
        })
    }

    pub fn random(cfg: &TextConfig, act: Activation, rng: &mut impl Rng) -> Self {
        let (w, d) = (cfg.width, cfg.output_dim);
        let r =
            |shape: &[usize], std: f32, rng: &mut _| Tensor::randn(shape, std, rng).into_f32_vec().unwrap_or_default();
        TextEncoder {
            cfg: cfg.clone(),
            token_emb: r(&[cfg.vocab, w], 0.02, rng),
            pos_emb: r(&[cfg.context, w], 0.01, rng),
            transformer: Transformer::random(w, cfg.layers, cfg.heads, act, rng),
            ln_final_w: vec![1.0; w],
            ln_final_b: vec![0.0; w],
            proj_t: LinearWeight::new(r(&[d, w], (w as f32).powf(-0.5), rng), d, w),
        }
    }

    /// tokens (B, context) i32 ids -> (B, D) unnormalised text features.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (ids, b, t) = text_ids(tokens, self.cfg.context)?;
        let (w, d) = (self.cfg.width, self.cfg.output_dim);
        let mut x = vec![0.0f32; b * t * w];
        token_embedding_cpu(ids, t, &self.token_emb, &self.pos_emb, w, &mut x)?;
        let causal = AttnMask { causal: true, ..Default::default() };
        let req = LayerRequests { masks: vec![causal; self.cfg.layers], ..Default::default() };
        self.transformer.forward(&mut x, b, t, &req);
        // Pool at the end token: the first position of the largest id (torch.argmax's rule).
        let mut pooled_in = vec![0.0f32; b * w];
        for (bi, best) in end_token_positions(ids, t).into_iter().enumerate() {
            pooled_in[bi * w..(bi + 1) * w].copy_from_slice(&x[(bi * t + best) * w..(bi * t + best + 1) * w]);
        }
        let mut normed = vec![0.0f32; b * w];
        layer_norm_cpu(&pooled_in, &self.ln_final_w, &self.ln_final_b, LN_EPS, &mut normed);
        let mut out = vec![0.0f32; b * d];
        self.proj_t.forward(&normed, &mut out, &Epilogue::default());
        Tensor::from_f32(&[b, d], out)
    }

    /// tokens (N, context) -> (N, D) unnormalised, as [`TextEncoder::forward`] returns them,
    /// encoded in [`TEXT_BATCH`]es of similar length, each only up to its longest prompt.
    pub fn forward_trimmed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (n, d) = (tokens.shape().first().copied().unwrap_or(0), self.cfg.output_dim);
        let out = encode_trimmed(tokens, self.cfg.context, d, TEXT_BATCH, |t| self.forward(t)?.into_f32_vec())?;
        Tensor::from_f32(&[n, d], out)
    }
}

/// Prompts per pass of the text tower in [`encode_trimmed`]: big enough for the GEMMs to run
/// near their peak, small enough that a batch's prompts have about the same length.
pub const TEXT_BATCH: usize = 256;

/// One pass of the text tower over some of the prompts.
pub struct TrimmedBatch {
    /// The prompts (row indices of the full token tensor) in this batch.
    pub rows: Vec<usize>,
    /// (B, T) i32: their ids up to the longest one's end token (T = its position + 1).
    pub tokens: Tensor,
}

/// Splits (N, context) token rows into batches of up to `batch` prompts of similar length
/// (sorted by end-token position, a stable sort), each cut after its longest prompt's end
/// token. Exact, not an approximation: the causal mask keeps every position from reading a
/// later one and the features are pooled at the end token, so the positions after a prompt's
/// end token (its padding) change nothing in what it returns.
pub fn trimmed_batches(tokens: &Tensor, context: usize, batch: usize) -> Result<Vec<TrimmedBatch>> {
    let (ids, n, t) = text_ids(tokens, context)?;
    let ends = end_token_positions(ids, t);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ends[i]);
    let mut out = Vec::with_capacity(n.div_ceil(batch.max(1)));
    for rows in order.chunks(batch.max(1)) {
        let len = rows.iter().map(|&i| ends[i] + 1).max().unwrap_or(1);
        let mut cut = Vec::with_capacity(rows.len() * len);
        for &i in rows {
            cut.extend_from_slice(&ids[i * t..i * t + len]);
        }
        out.push(TrimmedBatch { rows: rows.to_vec(), tokens: Tensor::new(&[rows.len(), len], Storage::I32(cut))? });
    }
    Ok(out)
}

/// Encodes (N, context) token rows with `forward` (a text tower: (B, T) ids -> B rows of `dim`
/// features) over [`trimmed_batches`], and puts the rows back in input order: (N, dim).
pub fn encode_trimmed(
    tokens: &Tensor,
    context: usize,
    dim: usize,
    batch: usize,
    mut forward: impl FnMut(&Tensor) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let n = tokens.shape().first().copied().unwrap_or(0);
    let mut out = vec![0.0f32; n * dim];
    for b in trimmed_batches(tokens, context, batch)? {
        let features = forward(&b.tokens)?;
        if features.len() != b.rows.len() * dim {
            return Err(Error::Shape(format!(
                "text tower returned {} values for {} prompts x {dim}",
                features.len(),
                b.rows.len()
            )));
        }
        for (&row, f) in b.rows.iter().zip(features.chunks_exact(dim)) {
            out[row * dim..(row + 1) * dim].copy_from_slice(f);
        }
    }
    Ok(out)
}

/// The ids of a (B, T) i32 token tensor with B and T, checked against the context length.
pub(crate) fn text_ids(tokens: &Tensor, context: usize) -> Result<(&[i32], usize, usize)> {
    let ids: &[i32] = match tokens.storage() {
        Storage::I32(v) => v,
        _ => return Err(Error::Shape("text tokens must be i32".into())),
    };
    let (b, t) = match tokens.shape() {
        [b, t] => (*b, *t),
        s => return Err(Error::Shape(format!("text tokens must be (B, T); got {s:?}"))),
    };
    if t > context {
        return Err(Error::Shape(format!("{t} tokens for a context of {context}")));
    }
    Ok((ids, b, t))
}

/// Per row of `t` ids, the first position of the largest id: the end token (torch.argmax's rule).
pub(crate) fn end_token_positions(ids: &[i32], t: usize) -> Vec<usize> {
    ids.chunks_exact(t.max(1))
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// Random text-tower weights as `Params` (names of `TextEncoder::load`).
pub fn random_text_params(cfg: &TextConfig, seed: u64) -> Result<Params> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (w, d) = (cfg.width, cfg.output_dim);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("token_embedding.weight".into(), vec![cfg.vocab, w]),
        ("positional_embedding".into(), vec![cfg.context, w]),
    ];
    shapes.extend(block_param_shapes("transformer.resblocks.", w, cfg.layers));
    shapes.extend([
        ("ln_final.weight".into(), vec![w]),
        ("ln_final.bias".into(), vec![w]),
        ("text_projection".into(), vec![w, d]),
    ]);
    let mut map = BTreeMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.contains("ln_") && name.ends_with("weight") {
            (0..n).map(|_| rng.gen_range(0.8..1.2)).collect()
        } else if name.ends_with("bias") {
            (0..n).map(|_| rng.gen_range(-0.05..0.05)).collect()
        } else {
            let std = if name.contains("embedding") { 0.02 } else { (*shape.last().unwrap_or(&1) as f32).powf(-0.5) };
            Tensor::randn(&shape, std, &mut rng).into_f32_vec()?
        };
        map.insert(name, Tensor::from_f32(&shape, data)?);
    }
    Params::from_map(map, HashMap::new())
}
