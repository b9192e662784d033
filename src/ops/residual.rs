//! The residual add of a bottleneck, y += identity, and its backward: the gradient of the sum
//! flows unchanged into both branches, so the backward adds the branch gradients (dx += d).

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// y += x elementwise (forward: main branch plus identity; backward: dx_main + dx_identity).
pub fn add_inplace_cpu(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, b)| {
        for (u, v) in a.iter_mut().zip(b) {
            *u += v;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_inplace_adds() {
        let mut y: Vec<f32> = (0..50000).map(|i| i as f32 * 0.5).collect();
        let x: Vec<f32> = (0..50000).map(|i| -(i as f32) * 0.25 + 1.0).collect();
        add_inplace_cpu(&mut y, &x);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, i as f32 * 0.25 + 1.0);
        }
    }
}
