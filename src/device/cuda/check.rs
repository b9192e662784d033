//! Kernel checks: every CUDA launcher against its CPU reference, on fresh random inputs (never
//! zeros), with the output poisoned before the launch, over several shapes including odd ones.
//! The same checks, timed, are the per-kernel microbenchmarks (`labelfree gpu-check --bench`,
//! scripts/gpu-check.sh) and, untimed, the CUDA test (tests/cuda_kernels.rs).
//!
//! Each op file exposes `pub fn gpu_checks() -> Vec<GpuCheck>`; `all_checks` lists them.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::timer::Timer;
use super::{CudaDType, Gpu};
use crate::error::Result;

/// What one launch does, for the throughput column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Floating-point operations (2 per multiply-add): reported as TFLOP/s.
    Flops(f64),
    /// Bytes read + written at least once: reported as GB/s.
    Bytes(f64),
}

/// A launch, ready to be repeated for timing (inputs and outputs already on the device).
pub type Launch = Box<dyn FnMut() -> Result<()>>;

/// What a check's `run` returns: the error against the CPU, and the launch to time.
pub struct CheckRun {
    pub max_rel_err: f64,
    pub launch: Launch,
    /// The same work through cuBLAS, for the "% of cuBLAS" column (GEMM-shaped kernels).
    pub cublas: Option<Launch>,
}

pub struct GpuCheck {
    /// Kernel family and variant, e.g. `layernorm_forward`.
    pub op: &'static str,
    /// Human-readable shape, e.g. `B=8 T=197 C=768`.
    pub shape: String,
    pub dtype: CudaDType,
    pub work: Work,
    /// Allowed max relative error (defaults to the dtype's: f32 1e-4, bf16/f16 1e-2).
    pub tolerance: f64,
    /// Builds inputs (seeded), runs the CPU reference and the launcher, compares.
    pub run: Box<dyn Fn(&Arc<Gpu>, &mut StdRng) -> Result<CheckRun>>,
}

impl GpuCheck {
    pub fn new(
        op: &'static str,
        shape: impl Into<String>,
        dtype: CudaDType,
        work: Work,
        run: impl Fn(&Arc<Gpu>, &mut StdRng) -> Result<CheckRun> + 'static,
    ) -> GpuCheck {
        GpuCheck {
            op,
            shape: shape.into(),
            dtype,
            work,
            tolerance: dtype.tolerance() as f64,
            run: Box::new(run),
        }
    }

    pub fn with_tolerance(mut self, tolerance: f64) -> GpuCheck {
        self.tolerance = tolerance;
        self
    }
}

/// Every kernel check of the build, in table order.
pub fn all_checks() -> Vec<GpuCheck> {
    let groups: Vec<Vec<GpuCheck>> = vec![
        crate::ops::layernorm::gpu_checks(),
        crate::ops::matmul::gpu_checks(),
        crate::ops::conv2d_backward::gpu_checks(),
        crate::ops::batchnorm::gpu_checks(),
        crate::ops::maxpool::gpu_checks(),
        crate::ops::gap::gpu_checks(),
        crate::ops::cam_head::gpu_checks(),
        crate::ops::bce::gpu_checks(),
        crate::ops::relu::gpu_checks(),
        crate::ops::residual::gpu_checks(),
        crate::train::adam::gpu_checks(),
        crate::ops::conv2d::gpu_checks(),
        crate::ops::pool::gpu_checks(),
        crate::ops::tokens::gpu_checks(),
        crate::ops::interpolate::gpu_checks(),
        crate::ops::crop_resize::gpu_checks(),
        crate::ops::attention::gpu_checks(),
        crate::ops::softmax::gpu_checks(),
        crate::ops::activation::gpu_checks(),
        crate::ops::similarity::gpu_checks(),
        crate::ops::dmar::gpu_checks(),
        crate::ops::embedding::gpu_checks(),
        crate::models::clip::vit_cuda::gpu_checks(),
        crate::models::clip::resnet_cuda::gpu_checks(),
        crate::models::clip::text_cuda::gpu_checks(),
        crate::models::resnet50_cuda::gpu_checks(),
        crate::methods::tagclip::cuda::gpu_checks(),
    ];
    groups.into_iter().flatten().collect()
}

/// Random values in [-scale, scale), never all zero.
pub fn random_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Max over elements of |gpu - cpu| / max(|cpu|, rms(cpu)): relative for the entries that
/// matter, and measured against the tensor's RMS for entries near zero (where a relative
/// error means nothing). NaN (a poisoned element left unwritten) gives infinity.
pub fn max_rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.len() != cpu.len() {
        return f64::INFINITY;
    }
    let rms = (cpu.iter().map(|&c| (c as f64) * (c as f64)).sum::<f64>() / cpu.len().max(1) as f64)
        .sqrt();
    let floor = rms.max(f64::MIN_POSITIVE);
    let mut worst = 0.0f64;
    for (&g, &c) in gpu.iter().zip(cpu) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        let e = (g as f64 - c as f64).abs() / (c as f64).abs().max(floor);
        worst = worst.max(e);
    }
    worst
}

/// One row of the gpu-check table.
#[derive(Clone, Debug, Serialize)]
pub struct CheckRow {
    pub op: String,
    pub dtype: String,
    pub shape: String,
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub pass: bool,
    /// Set when the check itself failed to run (launch error, ...).
    pub error: Option<String>,
    pub median_ms: Option<f64>,
    /// TFLOP/s (compute-bound kernels) or GB/s (memory-bound), per `unit`.
    pub throughput: Option<f64>,
    pub unit: &'static str,
    pub cublas_ms: Option<f64>,
    pub pct_of_cublas: Option<f64>,
}

pub struct CheckOptions {
    pub bench: bool,
    pub warmup: usize,
    pub runs: usize,
    pub filter: Option<String>,
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            bench: false,
            warmup: 3,
            runs: 20,
            filter: None,
            seed: 0x1abe1f2ee,
        }
    }
}

/// Runs the checks (and, with `bench`, times them); a failing check is a row, not an abort.
pub fn run_checks(
    gpu: &Arc<Gpu>,
    checks: &[GpuCheck],
    opts: &CheckOptions,
) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    let mut timer = if opts.bench {
        Some(Timer::new(gpu, true)?)
    } else {
        None
    };
    for (i, check) in checks.iter().enumerate() {
        if let Some(f) = &opts.filter {
            if !check.op.contains(f.as_str()) {
                continue;
            }
        }
        let (unit, work) = match check.work {
            Work::Flops(f) => ("TFLOP/s", f / 1e12),
            Work::Bytes(b) => ("GB/s", b / 1e9),
        };
        let mut row = CheckRow {
            op: check.op.to_string(),
            dtype: check.dtype.suffix().to_string(),
            shape: check.shape.clone(),
            max_rel_err: f64::NAN,
            tolerance: check.tolerance,
            pass: false,
            error: None,
            median_ms: None,
            throughput: None,
            unit,
            cublas_ms: None,
            pct_of_cublas: None,
        };
        let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(i as u64));
        match (check.run)(gpu, &mut rng).and_then(|r| gpu.synchronize().map(|_| r)) {
            Err(e) => row.error = Some(e.to_string()),
            Ok(mut run) => {
                row.max_rel_err = run.max_rel_err;
                row.pass = run.max_rel_err <= check.tolerance;
                if let Some(timer) = timer.as_mut() {
                    match timer.time(gpu, opts.warmup, opts.runs, &mut run.launch) {
                        Ok(t) => {
                            row.median_ms = Some(t.median_ms);
                            row.throughput = Some(work / (t.median_ms / 1e3));
                        }
                        Err(e) => row.error = Some(format!("timing: {e}")),
                    }
                    if let Some(cublas) = run.cublas.as_mut() {
                        if let Ok(t) = timer.time(gpu, opts.warmup, opts.runs, cublas) {
                            row.cublas_ms = Some(t.median_ms);
                            row.pct_of_cublas = row.median_ms.map(|m| 100.0 * t.median_ms / m);
                        }
                    }
                }
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The table printed by `labelfree gpu-check` (markdown, ready for benches/RESULTS.md).
pub fn format_table(rows: &[CheckRow]) -> String {
    let mut s = String::from(
        "| kernel | dtype | shape | max rel err | ok | time (ms) | throughput | % of cuBLAS |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let ok = match (&r.error, r.pass) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, true) => "yes".into(),
            (None, false) => format!("NO (> {:.0e})", r.tolerance),
        };
        let time = r
            .median_ms
            .map(|m| format!("{m:.4}"))
            .unwrap_or_else(|| "-".into());
        let tp = r
            .throughput
            .map(|t| format!("{t:.1} {}", r.unit))
            .unwrap_or_else(|| "-".into());
        let pct = r
            .pct_of_cublas
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {} | {} | {} | {} |\n",
            r.op, r.dtype, r.shape, r.max_rel_err, ok, time, tp, pct
        ));
    }
    s
}

/// The worst `max_rel_err` over several outputs: each device tensor against its CPU values.
pub fn max_rel_err_all(gpu: &Gpu, outputs: &[(&super::CudaTensor, &[f32])]) -> Result<f64> {
    let mut worst = 0.0f64;
    for (d, want) in outputs {
        worst = worst.max(max_rel_err(&d.to_f32_vec(gpu)?, want));
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listing the checks needs no GPU: every row is named once (op, dtype, shape), and the
    /// newest families are in the list.
    #[test]
    fn check_rows_are_unique() {
        let checks = all_checks();
        let mut keys: Vec<String> = checks
            .iter()
            .map(|c| format!("{} {:?} {}", c.op, c.dtype, c.shape))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate check rows");
        for op in [
            "dmar_weights",
            "dmar_propagate",
            "tagclip_patch_stage",
            "resnet_train_step",
            "adam_step",
            "linear",
        ] {
            assert!(
                checks.iter().any(|c| c.op.starts_with(op)),
                "no `{op}` rows"
            );
        }
        eprintln!("{n} check rows");
    }
}
