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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn layer_norm_matches_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for &(rows, c) in &[(3usize, 7usize), (5, 768), (1, 1)] {
            let x: Vec<f32> = (0..rows * c).map(|_| rng.gen_range(-3.0..3.0) + 10.0).collect();
            let w: Vec<f32> = (0..c).map(|_| rng.gen_range(0.5..1.5)).collect();
            let b: Vec<f32> = (0..c).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![f32::NAN; rows * c];
            layer_norm_cpu(&x, &w, &b, 1e-5, &mut y);
            for r in 0..rows {
                let xr = &x[r * c..(r + 1) * c];
                let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                for i in 0..c {
                    let want = (xr[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
                    assert!((y[r * c + i] as f64 - want).abs() < 1e-5, "{} vs {want}", y[r * c + i]);
                }
            }
        }
    }
}
