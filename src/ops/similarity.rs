//! L2 normalisation, cosine logits and class softmax: the zero-shot head of CLIP.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ops::matmul::linear_cpu;
use crate::ops::require_cpu;
use crate::ops::softmax::softmax_row;
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
    require_cpu("l2_normalize", &[x])?;
    let cols = *x.shape().last().ok_or_else(|| Error::Shape("normalise a scalar".into()))?;
    let mut v = x.f32s()?.to_vec();
    l2_normalize_cpu(&mut v, cols);
    Tensor::from_f32(x.shape(), v)
}

/// scale * normalize(img) @ normalize(txt)^T: img (B, D), txt (C, D) -> (B, C).
pub fn cosine_logits(img: &Tensor, txt: &Tensor, scale: f32) -> Result<Tensor> {
    require_cpu("cosine_logits", &[img, txt])?;
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
