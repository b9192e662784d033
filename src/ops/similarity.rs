//! L2 normalisation, cosine logits and class softmax: the zero-shot head of CLIP.

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::matmul::linear_cpu;
use crate::ops::softmax::{softmax_row, threads_per_row};
use crate::tensor::Tensor;

/// Each row of `cols` divided by its L2 norm (torch's F.normalize without eps clamping
/// matters only for all-zero rows, which stay zero here).
pub fn l2_normalize_cpu(x: &mut [f32], cols: usize) {
    x.par_chunks_mut(cols).for_each(|r| {
        let n = r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32;
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    });
}

pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().ok_or_else(|| Error::Shape("normalise a scalar".into()))?;
    let mut v = x.f32s()?.to_vec();
    l2_normalize_cpu(&mut v, cols);
    Tensor::from_f32(x.shape(), v)
}

/// scale * normalize(img) @ normalize(txt)^T: img (B, D), txt (C, D) -> (B, C).
pub fn cosine_logits(img: &Tensor, txt: &Tensor, scale: f32) -> Result<Tensor> {
    if img.rank() != 2 || txt.rank() != 2 || img.dim(1) != txt.dim(1) {
        return Err(Error::Shape(format!("cosine logits of {:?} and {:?}", img.shape(), txt.shape())));
    }
    let (b, c, d) = (img.dim(0), txt.dim(0), img.dim(1));
    let mut a = img.f32s()?.to_vec();
    let mut t = txt.f32s()?.to_vec();
    l2_normalize_cpu(&mut a, d);
    l2_normalize_cpu(&mut t, d);
    let mut out = vec![0.0f32; b * c];
    linear_cpu(&a, &t, None, &mut out, d, false);
    out.iter_mut().for_each(|v| *v *= scale);
    Tensor::from_f32(&[b, c], out)
}

/// softmax over classes of the cosine logits: CLIP's zero-shot probabilities, (B, C).
pub fn class_probabilities(img: &Tensor, txt: &Tensor, scale: f32) -> Result<Tensor> {
    let mut logits = cosine_logits(img, txt, scale)?;
    let c = logits.dim(1);
    logits.f32s_mut()?.par_chunks_mut(c).for_each(softmax_row);
    Ok(logits)
}

/// Rows of a launch's grid (one block per row), with an error instead of a silent wrap.
fn grid_rows(rows: usize, what: &str) -> Result<u32> {
    u32::try_from(rows).map_err(|_| Error::Shape(format!("{what}: {rows} rows do not fit one launch")))
}

/// CUDA launcher: kernels/similarity.cu, one block per row. Each row of the last dimension
/// divided by its L2 norm (zero rows stay zero); `x`, `y` of one shape and float dtype.
pub fn l2_normalize_cuda(gpu: &Gpu, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    let cols = *x.shape().last().unwrap_or(&0);
    if cols == 0 || y.shape() != x.shape() {
        return Err(Error::Shape(format!("l2_normalize_cuda: x {:?}, y {:?}", x.shape(), y.shape())));
    }
    if !x.dtype().is_float() {
        return Err(Error::Device(format!("l2_normalize_cuda: x must be a float tensor, found {:?}", x.dtype())));
    }
    y.expect_dtype(x.dtype(), "l2_normalize_cuda output")?;
    let rows = grid_rows(x.numel() / cols, "l2_normalize_cuda")?;
    let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (threads_per_row(cols), 1, 1), shared_mem_bytes: 0 };
    let name = format!("l2_normalize_{}", x.dtype().suffix());
    gpu.launch("similarity", &name, cfg, &[x.arg(gpu), y.arg(gpu), to_i32(cols, "cols")?])
}

/// CUDA launcher: kernels/similarity.cu, exactly `class_probabilities`: softmax over classes
/// of scale * normalize(img) . normalize(txt), fused, one block per image row.
/// img (B, D), txt (C, D) in one float dtype; probs (B, C) f32.
pub fn class_probabilities_cuda(
    gpu: &Gpu,
    img: &CudaTensor,
    txt: &CudaTensor,
    scale: f32,
    probs: &mut CudaTensor,
) -> Result<()> {
    let (&[b, d], &[c, dt]) = (img.shape(), txt.shape()) else {
        return Err(Error::Shape(format!(
            "class_probabilities_cuda: img {:?} and txt {:?} must be 2-D",
            img.shape(),
            txt.shape()
        )));
    };
    if d != dt || d == 0 || c == 0 || probs.shape() != [b, c] {
        return Err(Error::Shape(format!(
            "class_probabilities_cuda: img {:?} (B, D), txt {:?} (C, D), probs {:?} (B, C)",
            img.shape(),
            txt.shape(),
            probs.shape()
        )));
    }
    if !img.dtype().is_float() {
        return Err(Error::Device(format!(
            "class_probabilities_cuda: img must be a float tensor, found {:?}",
            img.dtype()
        )));
    }
    txt.expect_dtype(img.dtype(), "class_probabilities_cuda txt")?;
    probs.expect_dtype(DType::F32, "class_probabilities_cuda probs")?;
    if b == 0 {
        return Ok(());
    }
    // The normalised image row lives in shared memory (D floats).
    let smem = d * std::mem::size_of::<f32>();
    if smem > 96 * 1024 {
        return Err(Error::Shape(format!("class_probabilities_cuda: embedding dim {d} is too large for one block")));
    }
    let cfg = LaunchConfig {
        grid_dim: (grid_rows(b, "class_probabilities_cuda")?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let name = format!("class_probabilities_{}", img.dtype().suffix());
    gpu.launch(
        "similarity",
        &name,
        cfg,
        &[img.arg(gpu), txt.arg(gpu), probs.arg(gpu), to_i32(c, "classes")?, to_i32(d, "D")?, scale.into()],
    )
}

/// Kernel checks (see device::cuda::check): embeddings of ViT-B (512) and ViT-L / RN50 (768,
/// 1024), TagCLIP's patch tokens against COCO's 80 classes, a thousand classes, odd sizes;
/// every dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    let mut checks = Vec::new();
    for &(rows, cols) in &[(8usize, 512usize), (2 * 1200, 512), (80, 768), (16, 1024), (33, 37)] {
        for dtype in dtypes {
            let bytes = (rows * cols * 2 * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "l2_normalize",
                format!("rows={rows} cols={cols}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let xd = CudaTensor::from_f32(gpu, &[rows, cols], &random_vec(rng, rows * cols, 2.0), dtype)?;
                    // The reference sees the inputs as rounded to the dtype: the check measures the kernel.
                    let mut want = xd.to_f32_vec(gpu)?;
                    l2_normalize_cpu(&mut want, cols);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[rows, cols], dtype)?,
                        move |g, yd| l2_normalize_cuda(g, &xd, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                },
            ));
        }
    }
    for &(b, c, d) in &[(8usize, 80usize, 512usize), (2 * 1200, 80, 512), (64, 1000, 768), (5, 33, 37)] {
        for dtype in dtypes {
            // B·C dot products of length D: FLOPs, not bytes, bound it (and the simulator's time).
            let flops = 2.0 * (b * c * d) as f64;
            checks.push(GpuCheck::new(
                "class_probabilities",
                format!("B={b} C={c} D={d}"),
                dtype,
                Work::Flops(flops),
                move |gpu, rng| {
                    let img_d = CudaTensor::from_f32(gpu, &[b, d], &random_vec(rng, b * d, 1.0), dtype)?;
                    let txt_d = CudaTensor::from_f32(gpu, &[c, d], &random_vec(rng, c * d, 1.0), dtype)?;
                    let img = Tensor::from_f32(&[b, d], img_d.to_f32_vec(gpu)?)?;
                    let txt = Tensor::from_f32(&[c, d], txt_d.to_f32_vec(gpu)?)?;
                    // CLIP's logit scale, exp(4.6052) = 100: peaked class distributions.
                    let want = class_probabilities(&img, &txt, 100.0)?;
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, c], DType::F32)?,
                        move |g, pd| class_probabilities_cuda(g, &img_d, &txt_d, 100.0, pd),
                        |g, pd| max_rel_err_all(g, &[(pd, want.f32s()?)]),
                    )
                },
            ));
        }
    }
    checks
}
