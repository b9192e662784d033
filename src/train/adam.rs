//! Adam exactly as torch.optim.Adam (default, non-amsgrad, single-tensor form): bias-corrected
//! moments, eps added after the square root, optional L2 weight decay (off by default). The
//! parameters are one flat buffer; parameter groups are ranges of it with their own lr.

use std::ops::Range;

use rayon::prelude::*;

use crate::device::cuda::check::{max_rel_err_all, random_vec, CheckRun, GpuCheck, Work};
use crate::device::cuda::{expect_f32, f32_arg_at, grid_stride_config, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

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
        Adam {
            groups,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 0,
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
        }
    }

    /// Counts a step and returns its bias corrections (1 - beta1^t, sqrt(1 - beta2^t)), in f32 as
    /// torch: shared by the CPU step and the CUDA one, so both use the same scalars.
    pub fn advance(&mut self) -> (f32, f32) {
        self.step += 1;
        let t = self.step as i32;
        (1.0 - self.beta1.powi(t), (1.0 - self.beta2.powi(t)).sqrt())
    }

    /// One step over every group: params -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        let (bc1, bc2_sqrt) = self.advance();
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

/// The step-dependent scalars of the CUDA Adam on the device: for each parameter group its
/// step size lr / (1 - beta1^t) and sqrt(1 - beta2^t), computed on the host exactly as
/// `Adam::step` does. The kernel reads them from this buffer, not from its arguments, so a
/// captured training step (a graph, whose arguments are frozen) takes every step's values:
/// `advance` writes the next step's before the step runs.
pub struct AdamScalars {
    /// (groups, 2).
    buf: CudaTensor,
}

impl AdamScalars {
    pub fn new(gpu: &Gpu, opt: &Adam) -> Result<AdamScalars> {
        Ok(AdamScalars { buf: CudaTensor::zeros(gpu, &[opt.groups.len().max(1), 2], DType::F32)? })
    }

    /// Counts a step in `opt` and uploads its scalars (a host copy: outside any capture).
    pub fn advance(&mut self, gpu: &Gpu, opt: &mut Adam) -> Result<()> {
        if self.buf.dim(0) != opt.groups.len().max(1) {
            return Err(Error::Shape(format!(
                "AdamScalars of {} groups for an optimiser of {}",
                self.buf.dim(0),
                opt.groups.len()
            )));
        }
        let (bc1, bc2_sqrt) = opt.advance();
        let mut v: Vec<f32> = opt.groups.iter().flat_map(|g| [g.lr / bc1, bc2_sqrt]).collect();
        v.resize(self.buf.numel(), 0.0);
        self.buf.write_f32(gpu, &v)
    }
}

/// CUDA twin of `Adam::step` (kernels/adam.cu, f32): one launch per parameter group over the
/// flat buffers (the CUDA trainer's layout, `CudaResNet`), with the scalars of the step that
/// `scalars.advance` counted. The moments live on the device (`m`, `v`, the size of `params`;
/// `opt.m` / `opt.v` are the CPU path's and are left alone); `opt` gives the hyperparameters
/// and groups.
pub fn adam_step_cuda(
    gpu: &Gpu,
    opt: &Adam,
    scalars: &AdamScalars,
    params: &mut CudaTensor,
    grads: &CudaTensor,
    m: &mut CudaTensor,
    v: &mut CudaTensor,
) -> Result<()> {
    let n = params.numel();
    let sizes_ok = grads.numel() == n && m.numel() == n && v.numel() == n;
    if !sizes_ok
        || opt.groups.iter().any(|g| g.range.start > g.range.end || g.range.end > n)
        || scalars.buf.dim(0) != opt.groups.len().max(1)
    {
        return Err(Error::Shape(format!(
            "adam_step_cuda: params {}, grads {}, m {}, v {}, groups {:?}, scalars for {} groups",
            n,
            grads.numel(),
            m.numel(),
            v.numel(),
            opt.groups.iter().map(|g| g.range.clone()).collect::<Vec<_>>(),
            scalars.buf.dim(0)
        )));
    }
    expect_f32("adam_step_cuda", &[params, grads, m, v])?;
    for (i, g) in opt.groups.iter().enumerate().filter(|(_, g)| !g.range.is_empty()) {
        let start = g.range.start;
        let len = g.range.len();
        let args = [
            f32_arg_at(gpu, params, start),
            f32_arg_at(gpu, grads, start),
            f32_arg_at(gpu, m, start),
            f32_arg_at(gpu, v, start),
            (len as i64).into(),
            f32_arg_at(gpu, &scalars.buf, 2 * i),
            opt.beta1.into(),
            opt.beta2.into(),
            opt.eps.into(),
            opt.weight_decay.into(),
        ];
        gpu.launch("adam", "adam_step_f32", grid_stride_config(len), &args)?;
    }
    Ok(())
}

/// Kernel checks: ten steps against the CPU Adam (fresh random gradients each step) on the
/// ResNet-50's 23.5M parameters in two groups (backbone, head: the trainer's split) and on an
/// odd small buffer with weight decay; params, m and v compared to 1e-5.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(n, head, wd) in &[(23_508_032usize, 163_920usize, 0.0f32), (1001, 37, 1e-4)] {
        let shape = format!("params={n} groups=2 weight_decay={wd}");
        // Read params, grads, m, v; write params, m, v.
        let bytes = (n * 7 * 4) as f64;
        checks.push(
            GpuCheck::new("adam_step", shape, DType::F32, Work::Bytes(bytes), move |gpu, rng| {
                let groups =
                    vec![ParamGroup { range: 0..n - head, lr: 1e-4 }, ParamGroup { range: n - head..n, lr: 1e-2 }];
                let mut cpu = Adam::new(n, groups);
                cpu.weight_decay = wd;
                let mut dev = cpu.clone();
                let mut p = random_vec(rng, n, 1.0);
                let up = |v: &[f32]| CudaTensor::from_f32(gpu, &[n], v, DType::F32);
                let mut pd = up(&p)?;
                let (mut md, mut vd) =
                    (CudaTensor::zeros(gpu, &[n], DType::F32)?, CudaTensor::zeros(gpu, &[n], DType::F32)?);
                let mut gd = CudaTensor::empty(gpu, &[n], DType::F32)?;
                let mut scalars = AdamScalars::new(gpu, &dev)?;
                for _ in 0..10 {
                    let grads = random_vec(rng, n, 0.1);
                    cpu.step(&mut p, &grads);
                    gd = up(&grads)?;
                    scalars.advance(gpu, &mut dev)?;
                    adam_step_cuda(gpu, &dev, &scalars, &mut pd, &gd, &mut md, &mut vd)?;
                }
                let err = max_rel_err_all(gpu, &[(&pd, &p), (&md, &cpu.m), (&vd, &cpu.v)])?;
                let g = gpu.clone();
                Ok(CheckRun {
                    max_rel_err: err,
                    // The timed launch repeats the last step's scalars (the kernel alone).
                    launch: Box::new(move || adam_step_cuda(&g, &dev, &scalars, &mut pd, &gd, &mut md, &mut vd)),
                    cublas: None,
                })
            })
            .with_tolerance(1e-5),
        );
    }
    checks
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
