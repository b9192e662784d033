//! Global average pooling (NCHW -> NC) and its backward (the gradient spread evenly).

use rayon::prelude::*;

/// y (planes) = mean over each plane of x (planes, hw), summed in f64.
pub fn global_avg_pool_cpu(x: &[f32], hw: usize, y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_chunks(hw)).for_each(|(o, p)| {
        *o = (p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
    });
}

/// dx (planes, hw) = dy (planes) / hw broadcast; with `accumulate`, added to dx.
pub fn global_avg_pool_backward_cpu(dy: &[f32], hw: usize, dx: &mut [f32], accumulate: bool) {
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(|(p, &g)| {
        if accumulate {
            p.iter_mut().for_each(|v| *v += g * inv);
        } else {
            p.fill(g * inv);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_backward() {
        let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; 4];
        global_avg_pool_cpu(&x, 6, &mut y);
        assert_eq!(y, vec![2.5, 8.5, 14.5, 20.5]);
        let mut dx = vec![1.0f32; 24];
        global_avg_pool_backward_cpu(&[6.0, 12.0, 0.0, -6.0], 6, &mut dx, true);
        assert_eq!(&dx[..7], &[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0]);
        global_avg_pool_backward_cpu(&[6.0, 12.0, 0.0, -6.0], 6, &mut dx, false);
        assert_eq!(dx[23], -1.0);
    }
}
