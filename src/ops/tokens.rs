//! Token-matrix assembly: the ViT's input tokens (class token, then the patch embeddings, plus
//! the positional table) and picking one token per sample (CLS = 0, the text's EOT position).

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};

/// out (B, 1 + N, C): the class embedding then the patches (B, N, C), plus pos (1 + N, C).
pub fn vit_tokens_cpu(patches: &[f32], b: usize, n: usize, c: usize, class_emb: &[f32], pos: &[f32], out: &mut [f32]) {
    let t = n + 1;
    for bi in 0..b {
        let ob = &mut out[bi * t * c..(bi + 1) * t * c];
        ob[..c].copy_from_slice(&class_emb[..c]);
        ob[c..].copy_from_slice(&patches[bi * n * c..(bi + 1) * n * c]);
        for (v, pv) in ob.iter_mut().zip(pos) {
            *v += pv;
        }
    }
}

/// y (B, C) = x (B, T, C) at token index[b] of each sample. An index outside [0, T) is an error.
pub fn gather_rows_cpu(x: &[f32], t: usize, c: usize, index: &[i32], y: &mut [f32]) -> Result<()> {
    for (bi, &i) in index.iter().enumerate() {
        let i = usize::try_from(i)
            .ok()
            .filter(|&i| i < t)
            .ok_or_else(|| Error::Shape(format!("gather_rows: index {i} of sample {bi} is outside 0..{t}")))?;
        y[bi * c..(bi + 1) * c].copy_from_slice(&x[(bi * t + i) * c..][..c]);
    }
    Ok(())
}

/// CUDA launcher: kernels/tokens.cu `vit_tokens`, as `vit_tokens_cpu`. patches (B, N, C) and
/// out (B, 1 + N, C) in one float dtype; class_emb (C,) and pos (1 + N, C) f32.
pub fn vit_tokens_cuda(
    gpu: &Gpu,
    patches: &CudaTensor,
    class_emb: &CudaTensor,
    pos: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let ps = patches.shape();
    let ok = ps.len() == 3;
    let (b, n, c) = if ok { (ps[0], ps[1], ps[2]) } else { (0, 0, 0) };
    if !ok || class_emb.shape() != [c] || pos.shape() != [n + 1, c] || out.shape() != [b, n + 1, c] {
        return Err(Error::Shape(format!(
            "vit_tokens_cuda: patches {ps:?} (B, N, C), class_emb {:?} (C,), pos {:?} (1 + N, C), out {:?} (B, 1 + N, C)",
            class_emb.shape(),
            pos.shape(),
            out.shape()
        )));
    }
    if !patches.dtype().is_float() {
        return Err(Error::Device(format!(
            "vit_tokens_cuda: patches are {:?}; expected a float dtype",
            patches.dtype()
        )));
    }
    class_emb.expect_dtype(DType::F32, "vit_tokens_cuda class_emb")?;
    pos.expect_dtype(DType::F32, "vit_tokens_cuda pos")?;
    out.expect_dtype(patches.dtype(), "vit_tokens_cuda out")?;
    let total = out.numel();
    if total == 0 {
        return Ok(());
    }
    let blocks =
        u32::try_from(total.div_ceil(256)).map_err(|_| Error::Shape(format!("vit_tokens_cuda: {total} outputs")))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let name = format!("vit_tokens_{}", patches.dtype().suffix());
    gpu.launch(
        "tokens",
        &name,
        cfg,
        &[
            patches.arg(gpu),
            class_emb.arg(gpu),
            pos.arg(gpu),
            out.arg(gpu),
            KArg::I64(total as i64),
            to_i32(n, "N")?,
            to_i32(c, "C")?,
        ],
    )
}

/// CUDA launcher: kernels/tokens.cu `gather_rows`. x (B, T, C) and y (B, C) in one float dtype,
/// index (B,) i32. An index outside [0, T) yields a row of NaN (checked on the device; the
/// host never sees the indices).
pub fn gather_rows_cuda(gpu: &Gpu, x: &CudaTensor, index: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    let xs = x.shape();
    let ok = xs.len() == 3;
    let (b, t, c) = if ok { (xs[0], xs[1], xs[2]) } else { (0, 0, 0) };
    if !ok || index.shape() != [b] || y.shape() != [b, c] {
        return Err(Error::Shape(format!(
            "gather_rows_cuda: x {xs:?} (B, T, C), index {:?} (B,), y {:?} (B, C)",
            index.shape(),
            y.shape()
        )));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("gather_rows_cuda: x is {:?}; expected a float dtype", x.dtype())));
    }
    index.expect_dtype(DType::I32, "gather_rows_cuda index")?;
    y.expect_dtype(x.dtype(), "gather_rows_cuda output")?;
    if b == 0 || c == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (
            c.div_ceil(256) as u32,
            u32::try_from(b).map_err(|_| Error::Shape(format!("gather_rows_cuda: B = {b}")))?,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = format!("gather_rows_{}", x.dtype().suffix());
    gpu.launch("tokens", &name, cfg, &[x.arg(gpu), index.arg(gpu), y.arg(gpu), to_i32(t, "T")?, to_i32(c, "C")?])
}

/// Kernel checks: ViT-B/16 at 224 and 256, ViT-B/32 at 224 (batch 8), an odd shape; gathers of
/// the CLS token and of text EOT positions (77 tokens, C = 512); every dtype. Inputs are rounded
/// to the dtype before the CPU reference.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(b, n, c) in &[(8usize, 196usize, 768usize), (8, 256, 768), (8, 49, 768), (3, 13, 37)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = ((b * n * c + b * (n + 1) * c) * dtype.size_in_bytes() + (n + 2) * c * 4) as f64;
            checks.push(GpuCheck::new(
                "vit_tokens",
                format!("B={b} N={n} C={c}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let pd = CudaTensor::from_f32(gpu, &[b, n, c], &random_vec(rng, b * n * c, 1.0), dtype)?;
                    let class_emb = random_vec(rng, c, 1.0);
                    let pos = random_vec(rng, (n + 1) * c, 0.5);
                    let cd = CudaTensor::from_f32(gpu, &[c], &class_emb, DType::F32)?;
                    let posd = CudaTensor::from_f32(gpu, &[n + 1, c], &pos, DType::F32)?;
                    let mut want = vec![0.0; b * (n + 1) * c];
                    vit_tokens_cpu(&pd.to_f32_vec(gpu)?, b, n, c, &class_emb, &pos, &mut want);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, n + 1, c], dtype)?,
                        move |g, od| vit_tokens_cuda(g, &pd, &cd, &posd, od),
                        |g, od| max_rel_err_all(g, &[(od, &want)]),
                    )
                },
            ));
        }
    }
    // (B, T, C, CLS only)
    for &(b, t, c, cls) in &[(8usize, 197usize, 768usize, true), (16, 77, 512, false), (5, 9, 33, false)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = (2 * b * c * dtype.size_in_bytes() + 4 * b) as f64;
            checks.push(GpuCheck::new(
                "gather_rows",
                format!("B={b} T={t} C={c}{}", if cls { " CLS" } else { "" }),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    use rand::Rng;
                    let index: Vec<i32> = (0..b).map(|_| if cls { 0 } else { rng.gen_range(0..t as i32) }).collect();
                    let xd = CudaTensor::from_f32(gpu, &[b, t, c], &random_vec(rng, b * t * c, 1.0), dtype)?;
                    let id = CudaTensor::from_i32(gpu, &[b], &index)?;
                    let mut want = vec![0.0; b * c];
                    gather_rows_cpu(&xd.to_f32_vec(gpu)?, t, c, &index, &mut want)?;
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, c], dtype)?,
                        move |g, yd| gather_rows_cuda(g, &xd, &id, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_tokens_put_the_class_token_first() {
        let (b, n, c) = (2usize, 3usize, 2usize);
        let patches: Vec<f32> = (0..b * n * c).map(|i| i as f32).collect();
        let class_emb = [100.0f32, 200.0];
        let pos: Vec<f32> = (0..(n + 1) * c).map(|i| i as f32 * 0.5).collect();
        let mut out = vec![f32::NAN; b * (n + 1) * c];
        vit_tokens_cpu(&patches, b, n, c, &class_emb, &pos, &mut out);
        for bi in 0..b {
            for tok in 0..=n {
                for ci in 0..c {
                    let base = if tok == 0 { class_emb[ci] } else { patches[(bi * n + tok - 1) * c + ci] };
                    assert_eq!(out[(bi * (n + 1) + tok) * c + ci], base + pos[tok * c + ci]);
                }
            }
        }
    }

    #[test]
    fn gather_rows_picks_each_samples_token() {
        let (t, c) = (4usize, 3usize);
        let x: Vec<f32> = (0..2 * t * c).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; 2 * c];
        gather_rows_cpu(&x, t, c, &[0, 3], &mut y).unwrap();
        assert_eq!(y, [0.0, 1.0, 2.0, 21.0, 22.0, 23.0]);
        assert!(gather_rows_cpu(&x, t, c, &[0, 4], &mut y).is_err());
        assert!(gather_rows_cpu(&x, t, c, &[-1, 0], &mut y).is_err());
    }
}
