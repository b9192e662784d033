//! Adam exactly as torch.optim.Adam (default, non-amsgrad, single-tensor form): bias-corrected
//! moments, eps added after the square root, optional L2 weight decay (off by default). The
//! parameters are one flat buffer; parameter groups are ranges of it with their own lr.

use std::ops::Range;

use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub range: Range<usize>,
    pub lr: f32,
}

#[derive(Clone, Debug)]
pub struct Adam {
    pub groups: Vec<ParamGroup>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Steps taken (torch's `state['step']`).
    pub step: u64,
    /// First and second moments, the size of the parameter buffer.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Adam {
    pub fn new(n_params: usize, groups: Vec<ParamGroup>) -> Adam {
        Adam { groups, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 0, m: vec![0.0; n_params], v: vec![0.0; n_params] }
    }

    /// One step over every group: params -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        for g in &self.groups {
            let step_size = g.lr / bc1;
            let r = g.range.clone();
            params[r.clone()]
                .par_iter_mut()
                .zip(&grads[r.clone()])
                .zip(self.m[r.clone()].par_iter_mut())
                .zip(self.v[r].par_iter_mut())
                .for_each(|(((p, &gr), m), v)| {
                    let gr = if wd != 0.0 { gr + wd * *p } else { gr };
                    *m = b1 * *m + (1.0 - b1) * gr;
                    *v = b2 * *v + (1.0 - b2) * gr * gr;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * *m / denom;
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps on f(p) = sum(c * p^2 / 2) (g = c * p), against the formulas in f64.
    #[test]
    fn adam_matches_torch_formulas() {
        let c = [1.0f64, -0.5, 3.0, 1e-3];
        let mut p = vec![1.0f32, 2.0, -1.0, 0.5];
        let mut opt = Adam::new(4, vec![ParamGroup { range: 0..2, lr: 0.01 }, ParamGroup { range: 2..4, lr: 0.1 }]);
        let mut pd: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        let (mut m, mut v) = (vec![0.0f64; 4], vec![0.0f64; 4]);
        for t in 1..=3 {
            let g: Vec<f32> = p.iter().zip(&c).map(|(&x, &k)| (x as f64 * k) as f32).collect();
            opt.step(&mut p, &g);
            for i in 0..4 {
                let lr = if i < 2 { 0.01 } else { 0.1 };
                let gi = pd[i] * c[i];
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                pd[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        for i in 0..4 {
            assert!((p[i] as f64 - pd[i]).abs() < 1e-6, "p[{i}] {} vs {}", p[i], pd[i]);
        }
    }
}
