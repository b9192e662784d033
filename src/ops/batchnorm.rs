//! 2-D batch norm (NCHW) as torch.nn.BatchNorm2d: in training, batch statistics (biased
//! variance) normalise and the running statistics move by `momentum` towards the batch mean
//! and the unbiased batch variance; in eval, the running statistics normalise. Backward of the
//! training form: dx, dgamma, dbeta.

use rayon::prelude::*;

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// Per-channel statistics over (B, H*W), in f64: (mean, biased variance).
fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let n = (b * hw) as f64;
            let mut s = 0.0f64;
            for bi in 0..b {
                s += x[(bi * c + ci) * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>();
            }
            let mean = s / n;
            let mut q = 0.0f64;
            for bi in 0..b {
                q += x[(bi * c + ci) * hw..][..hw].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
            }
            (mean, q / n)
        })
        .collect()
}

/// y = gamma * (x - mean) * rstd + beta, plane by plane.
#[allow(clippy::too_many_arguments)]
fn apply(x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    y.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(p, (yp, xp))| {
        let ci = p % c;
        let (m, s) = (mean[ci], rstd[ci] * gamma[ci]);
        for (o, &v) in yp.iter_mut().zip(xp) {
            *o = (v - m) * s + beta[ci];
        }
    });
}

/// Training forward: y from batch statistics; `mean` and `rstd` (C) are saved for the backward;
/// the running statistics are updated in place (torch: momentum 0.1, unbiased variance).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_cpu(
    x: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let n = b * hw;
    let stats = channel_stats(x, b, c, hw);
    for (ci, &(m, v)) in stats.iter().enumerate() {
        mean[ci] = m as f32;
        rstd[ci] = (1.0 / (v + BN_EPS as f64).sqrt()) as f32;
        let unbiased = if n > 1 { v * n as f64 / (n - 1) as f64 } else { v };
        running_mean[ci] = (1.0 - BN_MOMENTUM) * running_mean[ci] + BN_MOMENTUM * m as f32;
        running_var[ci] = (1.0 - BN_MOMENTUM) * running_var[ci] + BN_MOMENTUM * unbiased as f32;
    }
    apply(x, gamma, beta, mean, rstd, c, hw, y);
}

/// Eval forward: y from the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_cpu(x: &[f32], c: usize, hw: usize, gamma: &[f32], beta: &[f32], running_mean: &[f32], running_var: &[f32], y: &mut [f32]) {
    let rstd: Vec<f32> = running_var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    apply(x, gamma, beta, running_mean, &rstd, c, hw, y);
}

/// Backward of the training forward. dx = gamma*rstd/N * (N*dy - sum dy - xhat * sum(dy*xhat));
/// dgamma += sum(dy*xhat), dbeta += sum(dy) (accumulated); dx overwritten.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_cpu(
    x: &[f32],
    dy: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (m, r) = (mean[ci], rstd[ci]);
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for bi in 0..b {
                let off = (bi * c + ci) * hw;
                for (&g, &v) in dy[off..off + hw].iter().zip(&x[off..off + hw]) {
                    sdy += g as f64;
                    sdyx += g as f64 * ((v - m) * r) as f64;
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let n = (b * hw) as f32;
    for (ci, &(sdy, sdyx)) in sums.iter().enumerate() {
        dbeta[ci] += sdy as f32;
        dgamma[ci] += sdyx as f32;
    }
    dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
        let ci = p % c;
        let (m, r) = (mean[ci], rstd[ci]);
        let (mdy, mdyx) = ((sums[ci].0 / n as f64) as f32, (sums[ci].1 / n as f64) as f32);
        let k = gamma[ci] * r;
        let off = p * hw;
        for ((o, &g), &v) in dxp.iter_mut().zip(&dy[off..off + hw]).zip(&x[off..off + hw]) {
            *o = k * (g - mdy - (v - m) * r * mdyx);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Loss L = sum(y * r) for a fixed random r: dL/dy = r. The analytic gradients against
    /// central finite differences in f64 of the definition.
    #[test]
    fn batch_norm_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (b, c, hw) = (3, 4, 5);
        let x: Vec<f32> = (0..b * c * hw).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let gamma: Vec<f32> = (0..c).map(|_| rng.gen_range(0.5..1.5)).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let r: Vec<f32> = (0..b * c * hw).map(|_| rng.gen_range(-1.0..1.0)).collect();
        // The definition in f64.
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
            let mut l = 0.0;
            for ci in 0..c {
                let vals: Vec<f64> = (0..b).flat_map(|bi| x[(bi * c + ci) * hw..][..hw].to_vec()).collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|t| (t - m).powi(2)).sum::<f64>() / vals.len() as f64;
                for bi in 0..b {
                    for i in 0..hw {
                        let idx = (bi * c + ci) * hw + i;
                        l += r[idx] as f64 * (gamma[ci] * (x[idx] - m) / (v + BN_EPS as f64).sqrt() + beta[ci]);
                    }
                }
            }
            l
        };
        let (xd, gd, bd): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| v as f64).collect(),
            gamma.iter().map(|&v| v as f64).collect(),
            beta.iter().map(|&v| v as f64).collect(),
        );
        let h = 1e-6;
        let fd = |f: &dyn Fn(usize, f64) -> f64, i: usize| (f(i, h) - f(i, -h)) / (2.0 * h);

        let (mut rm, mut rv) = (vec![0.3f32; c], vec![2.0f32; c]);
        let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_train_cpu(&x, b, c, hw, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd);
        let (mut dx, mut dg, mut db) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm_backward_cpu(&x, &r, b, c, hw, &gamma, &mean, &rstd, &mut dx, &mut dg, &mut db);

        for (i, &g) in dx.iter().enumerate() {
            let want = fd(&|j, e| { let mut t = xd.clone(); t[j] += e; loss(&t, &gd, &bd) }, i);
            assert!((g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dx[{i}] {g} vs {want}");
        }
        for i in 0..c {
            let want = fd(&|j, e| { let mut t = gd.clone(); t[j] += e; loss(&xd, &t, &bd) }, i);
            assert!((dg[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dgamma[{i}]");
            let want = fd(&|j, e| { let mut t = bd.clone(); t[j] += e; loss(&xd, &gd, &t) }, i);
            assert!((db[i] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "dbeta[{i}]");
        }
        // Running statistics as torch: momentum 0.1 towards mean and unbiased variance.
        let n = (b * hw) as f64;
        for ci in 0..c {
            let vals: Vec<f64> = (0..b).flat_map(|bi| xd[(bi * c + ci) * hw..][..hw].to_vec()).collect();
            let m = vals.iter().sum::<f64>() / n;
            let v = vals.iter().map(|t| (t - m).powi(2)).sum::<f64>() / (n - 1.0);
            assert!((rm[ci] as f64 - (0.9 * 0.3 + 0.1 * m)).abs() < 1e-6);
            assert!((rv[ci] as f64 - (0.9 * 2.0 + 0.1 * v)).abs() < 1e-5);
        }
        // Eval with running stats equal to the batch's biased stats reproduces the train output.
        let var_b: Vec<f32> = rstd.iter().map(|r| 1.0 / (r * r) - BN_EPS).collect();
        let mut ye = vec![f32::NAN; x.len()];
        batch_norm_eval_cpu(&x, c, hw, &gamma, &beta, &mean, &var_b, &mut ye);
        for (a, b) in ye.iter().zip(&y) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
