//! TagCLIP's patch stage on the GPU: the patch pass, the patch class probabilities, the DMAR
//! weights and both propagations stay on the device (kernels/similarity.cu, kernels/dmar.cu);
//! only P_hat (N x C per image, for the class boxes: external contours are a sequential scan
//! of a few hundred cells) and P_ref (for the CWR plan) come back. The attention maps, the
//! largest intermediate (layers x T x T per image), never leave the device.

use rayon::prelude::*;

use super::stages::{box_mask_matrix, BoxMasks};
use super::TagclipOptions;
use crate::device::cuda::{CudaTensor, DType};
use crate::error::Result;
use crate::models::clip::vit::VitRequest;
use crate::models::clip::vit_cuda::CudaVit;
use crate::ops::dmar::{dmar_propagate_cuda, dmar_weights_cuda};
use crate::ops::similarity::class_probabilities_cuda;
use crate::tensor::Tensor;

/// Per image of the batch: P_hat and P_ref (N x C, row-major, host) and the box masks.
pub struct PatchStage {
    pub hat: Vec<f32>,
    pub refined: Vec<f32>,
    pub masks: BoxMasks,
}

/// Steps 1 and 2 of `run_batch` on the device for a batch of one size: `req` is the patch
/// pass's request (tokens, unmasked maps of every layer, diagonal mask in the last layer);
/// `text` (C, D) unit rows; `scale` the logit multiplier; the grid gh x gw.
#[allow(clippy::too_many_arguments)]
pub fn patch_stage_cuda(
    vit: &CudaVit,
    pixels: &Tensor,
    req: &VitRequest,
    text: &[f32],
    c: usize,
    scale: f32,
    gh: usize,
    gw: usize,
    opts: &TagclipOptions,
) -> Result<Vec<PatchStage>> {
    let gpu = vit.gpu().clone();
    let out = vit.forward_request_device(pixels, req)?;
    let (b, t, d) = (out.batch, out.tokens, vit.cfg.output_dim);
    let n = gh * gw;
    // P_coarse of every token (the CLS rows are computed and skipped: p_row0 = 1 below).
    let txt = CudaTensor::from_f32(&gpu, &[c, d], text, out.projected.dtype())?;
    let mut probs = CudaTensor::empty(&gpu, &[b * t, c], DType::F32)?;
    class_probabilities_cuda(&gpu, &out.projected, &txt, scale, &mut probs)?;
    let probs = probs.reshape(&[b, t, c])?;
    let layers = out.attn.len();
    let mut w = CudaTensor::empty(&gpu, &[b, n, n], DType::F32)?;
    dmar_weights_cuda(&gpu, &out.attn, opts.vote_min_layers, opts.refine_range(layers), &mut w)?;
    drop(out);
    let mut hat = CudaTensor::empty(&gpu, &[b, n, c], DType::F32)?;
    dmar_propagate_cuda(&gpu, &w, &probs, 1, None, &mut hat)?;
    let hat = hat.to_f32_vec(&gpu)?;
    let masks: Vec<BoxMasks> = hat.par_chunks(n * c).map(|h| box_mask_matrix(h, gh, gw, c, opts)).collect();
    let keep: Vec<u8> = masks.iter().flat_map(|m| m.keep.iter().map(|&k| k as u8)).collect();
    let keep = CudaTensor::from_u8(&gpu, &[b, n, c], &keep)?;
    let mut refined = CudaTensor::empty(&gpu, &[b, n, c], DType::F32)?;
    dmar_propagate_cuda(&gpu, &w, &probs, 1, Some(&keep), &mut refined)?;
    let refined = refined.to_f32_vec(&gpu)?;
    Ok(masks
        .into_iter()
        .enumerate()
        .map(|(bi, m)| {
            let h = hat[bi * n * c..(bi + 1) * n * c].to_vec();
            let r = m.keep_unmasked_columns(refined[bi * n * c..(bi + 1) * n * c].to_vec(), &h, c);
            PatchStage { hat: h, refined: r, masks: m }
        })
        .collect())
}

/// Checks: the device stage against the CPU stages (class_softmax, dmar_weights, dmar_refine)
/// fed with the same pass's tokens and maps, downloaded: P_hat to the tolerance; P_ref on
/// every column whose box mask came out the same on both sides (a column whose P_hat sits
/// within rounding of a box threshold may flip, as between the official code and the CPU);
/// more than 2% flipped columns fails the row. A tiny ViT on two photo-like sizes and
/// ViT-B/16 at 224 (T = 197), 80 + 23 classes.
pub fn gpu_checks() -> Vec<crate::device::cuda::check::GpuCheck> {
    use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
    use crate::models::clip::config::VitConfig;
    use crate::models::clip::vit::{random_vit_params, VisionTransformer};
    use crate::ops::activation::Activation;
    use crate::ops::attention::AttnMask;
    use crate::ops::similarity::l2_normalize_cpu;
    use rand::Rng;

    let tiny = VitConfig { width: 128, layers: 12, heads: 2, patch: 16, grid: 4, output_dim: 32 };
    let b16 = VitConfig { width: 768, layers: 12, heads: 12, patch: 16, grid: 14, output_dim: 512 };
    let mut checks = Vec::new();
    for (name, cfg, batch, h, w) in [
        ("tiny ViT", tiny.clone(), 2usize, 96usize, 128usize),
        ("tiny ViT", tiny, 3, 80, 64),
        ("ViT-B/16", b16, 2, 224, 224),
    ] {
        let (gh, gw) = (h / 16, w / 16);
        let (n, c) = (gh * gw, 103usize);
        let shape = format!("{name} B={batch} {h}x{w} C={c}");
        // Two encoder passes (the recorded one and the stage's) and the DMAR products.
        let flops = (batch * 2 * 2 * n * n * c) as f64 + 2.0 * batch as f64 * cfg.flops_per_image(h, w);
        checks.push(GpuCheck::new("tagclip_patch_stage", shape, DType::F32, Work::Flops(flops), move |gpu, rng| {
            let seed = rng.gen::<u64>();
            let cpu_vit = VisionTransformer::load(&mut random_vit_params(&cfg, seed)?, &cfg, Activation::QuickGelu)?;
            let vit = CudaVit::from_cpu(gpu, &cpu_vit, DType::F32)?;
            let d = cfg.output_dim;
            let mut text = random_vec(rng, c * d, 1.0);
            l2_normalize_cpu(&mut text, d);
            let t = n + 1;
            let pixels = Tensor::from_f32(&[batch, 3, h, w], random_vec(rng, batch * 3 * h * w, 2.0))?;
            let diag = super::stages::diagonal_mask(t);
            let opts = TagclipOptions::default();
            let layers = cfg.layers;
            let scale = 100.0f32;
            let got = {
                let mut masks = vec![AttnMask::default(); layers];
                masks[layers - 1] = AttnMask { shared: Some(&diag), ..Default::default() };
                let req =
                    VitRequest { tokens: true, attn_probs: true, probs_before_mask: true, masks, pos_table: None };
                let dev_out = vit.forward_request(&pixels, &req)?;
                let stage = patch_stage_cuda(&vit, &pixels, &req, &text, c, scale, gh, gw, &opts)?;
                (dev_out, stage)
            };
            let (host, stage) = got;
            let tokens = host.tokens.as_ref().map(|x| x.f32s().map(|s| s.to_vec())).transpose()?.unwrap_or_default();
            let maps: Vec<&[f32]> = host.attn.iter().map(|a| a.f32s()).collect::<Result<_>>()?;
            let (mut err, mut flipped) = (0.0f64, 0usize);
            for (bi, st) in stage.iter().enumerate() {
                let coarse = super::stages::class_softmax(&tokens[(bi * t + 1) * d..(bi + 1) * t * d], &text, d, scale);
                let per: Vec<&[f32]> = maps.iter().map(|m| &m[bi * t * t..(bi + 1) * t * t]).collect();
                let wm = super::stages::dmar_weights(&per, t, &opts);
                let (hat, refined) = super::stages::dmar_refine(&wm, &coarse, gh, gw, c, &opts);
                err = err.max(max_rel_err(&st.hat, &hat));
                let cpu_masks = box_mask_matrix(&hat, gh, gw, c, &opts);
                for ci in 0..c {
                    let same = cpu_masks.masked[ci] == st.masks.masked[ci]
                        && (0..n).all(|i| cpu_masks.keep[i * c + ci] == st.masks.keep[i * c + ci]);
                    if !same {
                        flipped += 1;
                        continue;
                    }
                    let col = |m: &[f32]| (0..n).map(|i| m[i * c + ci]).collect::<Vec<f32>>();
                    err = err.max(max_rel_err(&col(&st.refined), &col(&refined)));
                }
            }
            if flipped * 50 > batch * c {
                err = f64::INFINITY;
            }
            let launch = move || {
                let mut masks = vec![AttnMask::default(); layers];
                masks[layers - 1] = AttnMask { shared: Some(&diag), ..Default::default() };
                let req =
                    VitRequest { tokens: true, attn_probs: true, probs_before_mask: true, masks, pos_table: None };
                patch_stage_cuda(&vit, &pixels, &req, &text, c, scale, gh, gw, &opts).map(|_| ())
            };
            Ok(CheckRun { max_rel_err: err, launch: Box::new(launch), cublas: None })
        }));
    }
    checks
}
