//! Kernel checks: every CUDA launcher against its CPU reference, on fresh random inputs (never
//! zeros), with the output poisoned before the launch, over several shapes including odd ones.
//! The same checks, timed, are the per-kernel microbenchmarks (`labelfree gpu-check --bench`,
//! scripts/gpu-check.sh) and, untimed, the CUDA test (tests/cuda_kernels.rs).
//!
//! Each op file exposes `pub fn gpu_checks() -> Vec<GpuCheck>`; the list of every op's checks
//! lives one layer up (`crate::gpu_check::all_checks`), so this harness knows no op.
//!
//! On the PTX simulator each row also collects the sanitizer's findings (a finding fails the
//! row) and, with profiling on, the counts of every launch it made; rows whose work exceeds
//! `CheckOptions::max_work` are listed as skipped instead of run.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::timer::Timer;
use super::{CudaTensor, DType, Gpu};
use crate::device::sim::{Finding, LaunchProfile, Simulator};
use crate::error::{Error, Result};

/// What one launch does, for the throughput column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Floating-point operations (2 per multiply-add): reported as TFLOP/s.
    Flops(f64),
    /// Bytes read + written at least once: reported as GB/s.
    Bytes(f64),
}

impl Work {
    /// The FLOPs or bytes, whichever this is.
    pub fn amount(&self) -> f64 {
        match *self {
            Work::Flops(f) | Work::Bytes(f) => f,
        }
    }
}

/// Check rows up to this much work (FLOPs, or bytes) compare the kernel with the op's naive
/// `*_reference` definition; larger rows compare it with the fast CPU path, which the op's unit
/// tests hold to the reference (a naive reference of a 1e10-FLOP row would take minutes).
pub const REFERENCE_MAX_WORK: f64 = 1e8;

/// A launch, ready to be repeated for timing (inputs and outputs already on the device).
pub type Launch = Box<dyn FnMut() -> Result<()>>;

/// What a check's `run` returns: the error against the CPU, and the launch to time.
pub struct CheckRun {
    pub max_rel_err: f64,
    pub launch: Launch,
    /// The same work through cuBLAS, for the "% of cuBLAS" column (GEMM-shaped kernels).
    pub cublas: Option<Launch>,
}

/// Builds a check's inputs (seeded), runs the CPU reference and the launcher, compares.
pub type CheckFn = Box<dyn Fn(&Arc<Gpu>, &mut StdRng) -> Result<CheckRun>>;

pub struct GpuCheck {
    /// Kernel family and variant, e.g. `layernorm_forward`.
    pub op: &'static str,
    /// Human-readable shape, e.g. `B=8 T=197 C=768`.
    pub shape: String,
    pub dtype: DType,
    pub work: Work,
    /// Allowed max relative error (defaults to the dtype's: f32 1e-4, bf16/f16 1e-2).
    pub tolerance: f64,
    /// Builds inputs (seeded), runs the CPU reference and the launcher, compares.
    pub run: CheckFn,
}

impl GpuCheck {
    pub fn new(
        op: &'static str,
        shape: impl Into<String>,
        dtype: DType,
        work: Work,
        run: impl Fn(&Arc<Gpu>, &mut StdRng) -> Result<CheckRun> + 'static,
    ) -> GpuCheck {
        GpuCheck { op, shape: shape.into(), dtype, work, tolerance: dtype.tolerance() as f64, run: Box::new(run) }
    }

    pub fn with_tolerance(mut self, tolerance: f64) -> GpuCheck {
        self.tolerance = tolerance;
        self
    }

    /// The seed of this row's inputs: `base` mixed with a hash (FNV-1a) of the row's op, dtype
    /// and shape, so a row draws the same inputs wherever it sits in the list (a row added
    /// before it does not change what it is checked on).
    pub fn seed(&self, base: u64) -> u64 {
        let name = format!("{}/{}/{}", self.op, self.dtype.suffix(), self.shape);
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        base ^ hash
    }
}

/// Random values in [-scale, scale), never all zero.
pub fn random_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// A device tensor of `shape` filled with NaN (floats) or 0xAB bytes: a check's output, so that
/// an element the kernel fails to write shows up in the comparison.
pub fn poisoned(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<CudaTensor> {
    let mut t = CudaTensor::empty(gpu, shape, dtype)?;
    t.poison(gpu)?;
    Ok(t)
}

/// The part every check repeats once its inputs are uploaded and its outputs poisoned (`io`,
/// any tuple or struct of device tensors): one launch, the comparison with the CPU's answer
/// (`compare`, usually `max_rel_err_all`), and the same launch boxed for timing.
///
/// ```ignore
/// let io = (CudaTensor::from_f32(gpu, &[n], &x, dtype)?, poisoned(gpu, &[n], dtype)?);
/// launch_and_compare(gpu, io, |g, (x, y)| relu_cuda(g, x, y), |g, (_, y)| max_rel_err_all(g, &[(y, &want)]))
/// ```
pub fn launch_and_compare<S: 'static>(
    gpu: &Arc<Gpu>,
    mut io: S,
    mut launch: impl FnMut(&Gpu, &mut S) -> Result<()> + 'static,
    compare: impl FnOnce(&Gpu, &S) -> Result<f64>,
) -> Result<CheckRun> {
    launch(gpu, &mut io)?;
    let max_rel_err = compare(gpu, &io)?;
    let g = gpu.clone();
    Ok(CheckRun { max_rel_err, launch: Box::new(move || launch(&g, &mut io)), cublas: None })
}

/// Max over elements of |gpu - cpu| / max(|cpu|, rms(cpu)): relative for the entries that
/// matter, and measured against the tensor's RMS for entries near zero (where a relative
/// error means nothing). NaN (a poisoned element left unwritten) gives infinity.
pub fn max_rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.len() != cpu.len() {
        return f64::INFINITY;
    }
    let rms = (cpu.iter().map(|&c| (c as f64) * (c as f64)).sum::<f64>() / cpu.len().max(1) as f64).sqrt();
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
    /// Set when the row was not run on this device, with the reason (cuBLAS on the simulator,
    /// work above `--max-work`, ...). A skipped row neither passes nor fails.
    pub skipped: Option<String>,
    /// The work of one launch: FLOPs or bytes, per `work_unit`.
    pub work: f64,
    pub work_unit: &'static str,
    /// Sanitizer findings of this row's launches (simulator only; any finding fails the row).
    pub sanitizer_findings: usize,
    /// Kernel launches the row made (simulator only).
    pub launches: u64,
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
    /// Rows whose work (FLOPs or bytes of one launch) exceeds this are skipped and listed.
    pub max_work: Option<f64>,
    /// Prints one line per row to stderr as it finishes (long runs on the simulator).
    pub progress: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            bench: false,
            warmup: 3,
            runs: 20,
            filter: None,
            seed: 0x1abe1f2ee,
            max_work: None,
            progress: false,
        }
    }
}

/// A sanitizer finding, with the check row whose launch produced it.
#[derive(Clone, Debug, Serialize)]
pub struct RowFinding {
    pub row: usize,
    pub op: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// A launch's profile, with the check row that made it.
#[derive(Clone, Debug, Serialize)]
pub struct RowProfile {
    pub row: usize,
    pub op: String,
    #[serde(flatten)]
    pub profile: LaunchProfile,
}

/// What `run_checks` returns: the table, and on the simulator the findings and profiles.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub rows: Vec<CheckRow>,
    pub sanitizer: Vec<RowFinding>,
    pub profile: Vec<RowProfile>,
}

impl CheckReport {
    /// Rows that ran and missed their tolerance, failed to run, or tripped the sanitizer.
    pub fn failed(&self) -> Vec<&CheckRow> {
        self.rows.iter().filter(|r| r.skipped.is_none() && (!r.pass || r.error.is_some())).collect()
    }
}

/// Runs the checks (and, with `bench`, times them); a failing check is a row, not an abort.
pub fn run_checks(gpu: &Arc<Gpu>, checks: &[GpuCheck], opts: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut timer = if opts.bench { Some(Timer::new(gpu, true)?) } else { None };
    let sim = gpu.sim();
    if let Some(s) = sim {
        // Findings and profiles of earlier work are not this run's.
        s.take_findings();
        s.take_profiles();
    }
    for (i, check) in checks.iter().enumerate() {
        if let Some(f) = &opts.filter {
            if !check.op.contains(f.as_str()) {
                continue;
            }
        }
        let (unit, work, work_unit, work_amount) = match check.work {
            Work::Flops(f) => ("TFLOP/s", f / 1e12, "flop", f),
            Work::Bytes(b) => ("GB/s", b / 1e9, "byte", b),
        };
        let mut row = CheckRow {
            op: check.op.to_string(),
            dtype: check.dtype.suffix().to_string(),
            shape: check.shape.clone(),
            max_rel_err: f64::NAN,
            tolerance: check.tolerance,
            pass: false,
            error: None,
            skipped: None,
            work: work_amount,
            work_unit,
            sanitizer_findings: 0,
            launches: 0,
            median_ms: None,
            throughput: None,
            unit,
            cublas_ms: None,
            pct_of_cublas: None,
        };
        if let Some(max) = opts.max_work {
            if work_amount > max {
                row.skipped = Some(format!("work {work_amount:.3e} {work_unit}s exceeds --max-work {max:.3e}"));
                report.rows.push(row);
                continue;
            }
        }
        let row_index = report.rows.len();
        let launches_before = sim.map(|s| total_launches(s)).unwrap_or(0);
        let started = std::time::Instant::now();
        let mut rng = StdRng::seed_from_u64(check.seed(opts.seed));
        match (check.run)(gpu, &mut rng).and_then(|r| gpu.synchronize().map(|_| r)) {
            Err(Error::Skipped(why)) => row.skipped = Some(why),
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
        if let Some(s) = sim {
            row.launches = total_launches(s) - launches_before;
            let findings = s.take_findings();
            row.sanitizer_findings = findings.len();
            if !findings.is_empty() {
                row.pass = false;
            }
            let op = row.op.clone();
            report.sanitizer.extend(findings.into_iter().map(|finding| RowFinding {
                row: row_index,
                op: op.clone(),
                finding,
            }));
            report.profile.extend(s.take_profiles().into_iter().map(|profile| RowProfile {
                row: row_index,
                op: op.clone(),
                profile,
            }));
        }
        if opts.progress {
            let status = match (&row.skipped, &row.error, row.pass) {
                (Some(why), _, _) => format!("skipped ({why})"),
                (None, Some(e), _) => format!("ERROR {e}"),
                (None, None, true) => "ok".into(),
                (None, None, false) if row.sanitizer_findings > 0 => {
                    format!("SANITIZER ({} findings)", row.sanitizer_findings)
                }
                (None, None, false) => format!("FAIL {:.2e} > {:.0e}", row.max_rel_err, row.tolerance),
            };
            eprintln!(
                "[{:>3}/{}] {:.1}s {} {} {}: {status}",
                i + 1,
                checks.len(),
                started.elapsed().as_secs_f64(),
                row.op,
                row.dtype,
                row.shape
            );
        }
        report.rows.push(row);
    }
    Ok(report)
}

fn total_launches(sim: &Simulator) -> u64 {
    sim.launch_counts().values().sum()
}

/// The table printed by `labelfree gpu-check` (markdown, ready for benches/RESULTS.md).
pub fn format_table(rows: &[CheckRow]) -> String {
    let mut s = String::from("| kernel | dtype | shape | max rel err | ok | time (ms) | throughput | % of cuBLAS |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let ok = match (&r.skipped, &r.error, r.pass) {
            (Some(why), _, _) => format!("skipped: {why}"),
            (None, Some(e), _) => format!("ERROR: {e}"),
            (None, None, true) => "yes".into(),
            (None, None, false) if r.sanitizer_findings > 0 => {
                format!("NO ({} sanitizer findings)", r.sanitizer_findings)
            }
            (None, None, false) => format!("NO (> {:.0e})", r.tolerance),
        };
        let time = r.median_ms.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into());
        let tp = r.throughput.map(|t| format!("{t:.1} {}", r.unit)).unwrap_or_else(|| "-".into());
        let pct = r.pct_of_cublas.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {} | {} | {} | {} |\n",
            r.op, r.dtype, r.shape, r.max_rel_err, ok, time, tp, pct
        ));
    }
    s
}

/// The worst `max_rel_err` over several outputs: each device tensor against its CPU values.
pub fn max_rel_err_all(gpu: &Gpu, outputs: &[(&CudaTensor, &[f32])]) -> Result<f64> {
    let mut worst = 0.0f64;
    for (d, want) in outputs {
        worst = worst.max(max_rel_err(&d.to_f32_vec(gpu)?, want));
    }
    Ok(worst)
}
