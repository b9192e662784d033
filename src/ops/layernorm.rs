//! LayerNorm over the last dimension (torch.nn.LayerNorm, biased variance).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ops::require_cpu;
use crate::tensor::Tensor;

/// y = (x - mean) / sqrt(var + eps) * w + b, one row of `w.len()` at a time.
/// Mean and variance are accumulated in f64 so long rows stay within the f32 tolerance.
pub fn layer_norm_cpu(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let c = w.len();
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        let (mean, rstd) = (mean as f32, rstd as f32);
        for i in 0..c {
            yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
        }
    });
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    require_cpu("layer_norm", &[x, w, b])?;
    let c = *x.shape().last().unwrap_or(&0);
    if w.shape() != [c] || b.shape() != [c] {
        return Err(Error::Shape(format!(
            "layer_norm: x {:?}, weight {:?}, bias {:?}",
            x.shape(),
            w.shape(),
            b.shape()
        )));
    }
    let mut y = vec![0.0; x.numel()];
    layer_norm_cpu(x.f32s()?, w.f32s()?, b.f32s()?, eps, &mut y);
    Tensor::from_f32(x.shape(), y)
}
