//! ReLU for training: in place forward, and the backward that masks the gradient with the
//! saved output (y > 0), as torch's threshold_backward.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// x = max(x, 0) in place.
pub fn relu_inplace_cpu(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// dy *= (y > 0) in place, y the ReLU's output.
pub fn relu_backward_inplace_cpu(y: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(d, y)| {
        for (g, &v) in d.iter_mut().zip(y) {
            if v <= 0.0 {
                *g = 0.0;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_and_its_backward() {
        let mut x: Vec<f32> = (0..40000).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let orig = x.clone();
        relu_inplace_cpu(&mut x);
        let mut g: Vec<f32> = (0..x.len()).map(|i| i as f32 + 1.0).collect();
        relu_backward_inplace_cpu(&x, &mut g);
        for i in 0..x.len() {
            assert_eq!(x[i], orig[i].max(0.0));
            assert_eq!(g[i], if orig[i] > 0.0 { i as f32 + 1.0 } else { 0.0 });
        }
    }
}
