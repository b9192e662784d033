//! Softmax over the last dimension (max-subtracted, as torch).

use rayon::prelude::*;

use crate::error::Result;
use crate::ops::require_cpu;
use crate::tensor::Tensor;

/// In place, one row of `cols` at a time.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

pub fn softmax_cpu(x: &mut [f32], cols: usize) {
    x.par_chunks_mut(cols).for_each(softmax_row);
}

/// softmax(scale * x) over the last dimension (scale = exp(logit_scale) for CLIP logits).
pub fn softmax(x: &Tensor, scale: f32) -> Result<Tensor> {
    require_cpu("softmax", &[x])?;
    let cols = *x.shape().last().unwrap_or(&1);
    let mut y: Vec<f32> = x.f32s()?.iter().map(|v| v * scale).collect();
    softmax_cpu(&mut y, cols.max(1));
    Tensor::from_f32(x.shape(), y)
}
