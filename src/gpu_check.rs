//! `labelfree gpu-check`: every CUDA launcher against its CPU reference, on a GPU or on the PTX
//! simulator (`--device sim`), with the simulator's sanitizer findings and (`--profile`) its
//! per-launch counts, occupancy from ptxas and a lower bound of the time on an H100.
//!
//! The list of every op's checks lives here, one layer above ops, models, methods and train, so
//! the harness (`device::cuda::check`) knows no op: adding a kernel check touches its op file and
//! one line of `all_checks`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::device::cuda::check::{self, CheckOptions, CheckReport, GpuCheck, RowProfile};
use crate::device::cuda::resources::{self, Efficiencies, KernelResources, Occupancy, TimeBound, H100_SXM, SM80, SM90};
use crate::device::cuda::{Gpu, KERNEL_ENTRIES, KERNEL_MODULES, NVCC_VERSION};
use crate::device::sim::{LaunchProfile, Simulator};
use crate::error::{Error, Result};

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
        crate::ops::fill::gpu_checks(),
        crate::ops::cast::gpu_checks(),
        crate::ops::layout::gpu_checks(),
        crate::train::adam::gpu_checks(),
        crate::ops::conv2d::gpu_checks(),
        crate::ops::conv2d_nhwc::gpu_checks(),
        crate::ops::pool::gpu_checks(),
        crate::ops::tokens::gpu_checks(),
        crate::ops::interpolate::gpu_checks(),
        crate::ops::crop_resize::gpu_checks(),
        crate::ops::crop_resize_planes::gpu_checks(),
        crate::ops::cam_box::gpu_checks(),
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
        crate::ops::matmul::wgmma_gpu_checks(),
    ];
    groups.into_iter().flatten().collect()
}

/// The simulator's default work cap per row (FLOPs or bytes of one launch): the rows above it
/// (full-size encoders, ViT-B/16 linear layers over 50k rows, ...) take minutes each on a CPU.
pub const SIM_DEFAULT_MAX_WORK: f64 = 2e8;

#[derive(clap::Args, Debug, Clone)]
pub struct GpuCheckArgs {
    /// Time every kernel too (and cuBLAS beside the GEMMs); a GPU only: the simulator measures
    /// no time (use the global --profile for its counts)
    #[arg(long)]
    pub bench: bool,
    /// Only kernels whose name contains this
    #[arg(long)]
    pub filter: Option<String>,
    /// Timed runs per kernel (the median is reported)
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Skip rows whose work (FLOPs, or bytes for memory-bound kernels, of one launch) exceeds
    /// this; they are listed as skipped. Default: 2e8 on the simulator, none on a GPU; `inf` runs all
    #[arg(long)]
    pub max_work: Option<String>,
    /// Write the rows, every entry point of the build, the sanitizer's findings and (with
    /// --profile) the profiles as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A line per row on stderr as it finishes
    #[arg(long)]
    pub progress: bool,
}

/// One entry point of the build and how often this run launched it.
#[derive(Clone, Debug, Serialize)]
pub struct KernelLaunches {
    pub module: String,
    pub name: String,
    pub arch: String,
    /// Launches in this run (None on a GPU, which does not count them).
    pub launches: Option<u64>,
}

/// A launch's counts with what follows from them.
#[derive(Clone, Debug, Serialize)]
pub struct ProfiledLaunch {
    #[serde(flatten)]
    pub launch: RowProfile,
    pub efficiencies: Efficiencies,
    pub resources: Vec<KernelResources>,
    pub occupancy: Vec<Occupancy>,
    pub bound: TimeBound,
}

/// Counts of one kernel summed over all its launches.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelProfile {
    pub module: String,
    pub kernel: String,
    pub launches: u64,
    pub totals: LaunchProfile,
}

/// Parses `--max-work` (`2e8`, `inf`).
pub fn parse_max_work(s: Option<&str>, sim: bool) -> Result<Option<f64>> {
    match s {
        None => Ok(sim.then_some(SIM_DEFAULT_MAX_WORK)),
        Some("inf" | "none") => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|w| *w > 0.0)
            .map(Some)
            .ok_or_else(|| Error::Device(format!("--max-work {v}: give a positive number such as 2e8, or inf"))),
    }
}

/// Every entry point of the build with this run's launch counts.
pub fn kernel_launches(sim: Option<&Simulator>) -> Vec<KernelLaunches> {
    let counts = sim.map(|s| s.launch_counts()).unwrap_or_default();
    KERNEL_ENTRIES
        .iter()
        .map(|e| KernelLaunches {
            module: e.module.to_string(),
            name: e.name.to_string(),
            arch: e.arch.to_string(),
            launches: sim.map(|_| counts.get(&(e.module.to_string(), e.name.to_string())).copied().unwrap_or(0)),
        })
        .collect()
}

/// Adds efficiencies, ptxas resources, occupancy on sm_80 / sm_90 and the H100 bound to each
/// launch. Without ptxas the resources and occupancy are left empty (said once on stderr).
pub fn profile_launches(launches: Vec<RowProfile>) -> Vec<ProfiledLaunch> {
    let ptxas = resources::find_ptxas();
    if ptxas.is_none() && !launches.is_empty() {
        eprintln!("profile: no ptxas found (set NVCC or run scripts/install-nvcc.sh): no registers or occupancy");
    }
    let mut cache: BTreeMap<(String, String), Vec<KernelResources>> = BTreeMap::new();
    launches
        .into_iter()
        .map(|launch| {
            let p = &launch.profile;
            let key = (p.module.clone(), p.kernel.clone());
            let res = cache
                .entry(key)
                .or_insert_with(|| {
                    let (Some(ptxas), Some(m)) = (ptxas.as_ref(), KERNEL_MODULES.iter().find(|m| m.name == p.module))
                    else {
                        return Vec::new();
                    };
                    ["sm_80", "sm_90"]
                        .iter()
                        .filter_map(|arch| match resources::kernel_resources(ptxas, m.ptx, &p.kernel, arch) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                eprintln!("profile: {e}");
                                None
                            }
                        })
                        .collect()
                })
                .clone();
            let threads = p.block.iter().product::<u32>();
            let occupancy = res
                .iter()
                .map(|r| {
                    let lim = if r.arch == "sm_80" { &SM80 } else { &SM90 };
                    resources::occupancy(lim, threads, r.registers, r.static_shared_bytes + p.dynamic_shared_bytes)
                })
                .collect();
            ProfiledLaunch {
                efficiencies: resources::efficiencies(p),
                bound: resources::time_bound(p, &H100_SXM),
                resources: res,
                occupancy,
                launch,
            }
        })
        .collect()
}

/// Sums the launches of each kernel.
pub fn per_kernel(launches: &[LaunchProfile]) -> Vec<KernelProfile> {
    let mut by: BTreeMap<(String, String), KernelProfile> = BTreeMap::new();
    for p in launches {
        let k = by.entry((p.module.clone(), p.kernel.clone())).or_insert_with(|| KernelProfile {
            module: p.module.clone(),
            kernel: p.kernel.clone(),
            ..Default::default()
        });
        k.launches += 1;
        let t = &mut k.totals;
        t.warp_instructions += p.warp_instructions;
        t.thread_instructions += p.thread_instructions;
        for (c, n) in &p.by_class {
            *t.by_class.entry(c.clone()).or_default() += n;
        }
        t.flops += p.flops;
        t.tensor_flops += p.tensor_flops;
        t.global_load_bytes += p.global_load_bytes;
        t.global_store_bytes += p.global_store_bytes;
        t.global_load_sectors += p.global_load_sectors;
        t.global_store_sectors += p.global_store_sectors;
        t.global_load_requests += p.global_load_requests;
        t.global_store_requests += p.global_store_requests;
        t.shared_requests += p.shared_requests;
        t.shared_wavefronts += p.shared_wavefronts;
        t.shared_ideal_wavefronts += p.shared_ideal_wavefronts;
        t.barriers += p.barriers;
        t.global_unique_bytes += p.global_unique_bytes;
    }
    by.into_values().collect()
}

/// A markdown table of per-kernel counts: the simulator's profile (counts, never times).
pub fn format_profile_table(kernels: &[KernelProfile]) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into());
    let mut s = String::from(
        "| kernel | launches | warp instr | lanes/instr | GFLOP | ld sector eff | st sector eff | smem wavefronts/req | bank-conflict wavefronts/req | barriers | H100 bound (us) |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for k in kernels {
        let e = resources::efficiencies(&k.totals);
        let b = resources::time_bound(&k.totals, &H100_SXM);
        s.push_str(&format!(
            "| {}.{} | {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {:.2} ({}) |\n",
            k.module,
            k.kernel,
            k.launches,
            k.totals.warp_instructions,
            opt(e.mean_active_lanes, 1),
            k.totals.flops as f64 / 1e9,
            opt(e.global_load_sector_efficiency, 2),
            opt(e.global_store_sector_efficiency, 2),
            opt(e.shared_wavefronts_per_request, 2),
            opt(e.shared_bank_conflicts_per_request, 2),
            k.totals.barriers,
            b.bound_us,
            b.limited_by
        ));
    }
    s
}

/// UTC date and time of now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What `labelfree gpu-check` found, for its JSON and its exit status.
#[derive(Debug, Serialize)]
pub struct GpuCheckOutcome {
    pub device: String,
    pub nvcc: String,
    pub date: String,
    pub sanitize: Option<bool>,
    pub max_work: Option<f64>,
    pub seconds: f64,
    pub summary: Summary,
    pub rows: Vec<check::CheckRow>,
    pub kernels: Vec<KernelLaunches>,
    pub sanitizer: Vec<check::RowFinding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfiledLaunch>>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub rows: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub sanitizer_findings: usize,
    pub entry_points: usize,
    /// Entry points launched at least once (simulator only).
    pub entry_points_launched: Option<usize>,
}

/// Runs the checks on `gpu` and builds the outcome (the caller prints and writes it).
pub fn run(args: &GpuCheckArgs, gpu: &Arc<Gpu>) -> Result<GpuCheckOutcome> {
    let sim = gpu.sim().cloned();
    if args.bench && sim.is_some() {
        return Err(Error::Device(
            "gpu-check --bench times kernels, and the simulator measures no time: use --profile for its counts".into(),
        ));
    }
    let max_work = parse_max_work(args.max_work.as_deref(), sim.is_some())?;
    let checks = all_checks();
    let opts = CheckOptions {
        bench: args.bench,
        runs: args.runs,
        filter: args.filter.clone(),
        max_work,
        progress: args.progress,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let CheckReport { rows, sanitizer, profile } = check::run_checks(gpu, &checks, &opts)?;
    let seconds = started.elapsed().as_secs_f64();
    let kernels = kernel_launches(sim.as_deref());
    let profiling = sim.as_ref().is_some_and(|s| s.options().profile);
    let summary = Summary {
        rows: rows.len(),
        passed: rows.iter().filter(|r| r.skipped.is_none() && r.pass && r.error.is_none()).count(),
        failed: rows.iter().filter(|r| r.skipped.is_none() && (!r.pass || r.error.is_some())).count(),
        skipped: rows.iter().filter(|r| r.skipped.is_some()).count(),
        sanitizer_findings: sanitizer.len(),
        entry_points: kernels.len(),
        entry_points_launched: sim.as_ref().map(|_| kernels.iter().filter(|k| k.launches.unwrap_or(0) > 0).count()),
    };
    Ok(GpuCheckOutcome {
        device: gpu.name.clone(),
        nvcc: NVCC_VERSION.to_string(),
        date: utc_now(),
        sanitize: sim.as_ref().map(|s| s.options().sanitize),
        max_work,
        seconds,
        summary,
        rows,
        kernels,
        sanitizer,
        profile: profiling.then(|| profile_launches(profile)),
    })
}

/// The CLI: runs, prints the table, the summary and (with --profile) the per-kernel counts,
/// writes the JSON, and fails when a row failed or the sanitizer found anything.
pub fn run_cli(args: &GpuCheckArgs, gpu: &Arc<Gpu>) -> Result<()> {
    let (major, minor) = gpu.compute_capability;
    eprintln!("device    {} (sm_{major}{minor}), kernels from {NVCC_VERSION}", gpu.name);
    let out = run(args, gpu)?;
    println!("{}", check::format_table(&out.rows));
    if let Some(p) = &out.profile {
        let launches: Vec<LaunchProfile> = p.iter().map(|l| l.launch.profile.clone()).collect();
        println!("simulator profile (counts, never times; the H100 bound is a lower bound from them):\n");
        println!("{}", format_profile_table(&per_kernel(&launches)));
    }
    for f in &out.sanitizer {
        let f2 = &f.finding;
        eprintln!(
            "sanitizer: {:?} in {} (row `{}`), CTA {:?} thread {:?}, PTX line {}{}: {}",
            f2.kind,
            f2.kernel,
            f.op,
            f2.cta,
            f2.thread,
            f2.ptx_line,
            f2.source_loc.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
            f2.message
        );
    }
    let s = &out.summary;
    eprintln!(
        "rows: {} passed, {} failed, {} skipped (of {}); sanitizer findings: {}; {:.1} s",
        s.passed, s.failed, s.skipped, s.rows, s.sanitizer_findings, out.seconds
    );
    if let Some(n) = s.entry_points_launched {
        eprintln!("entry points launched: {n} of {}", s.entry_points);
        let missed: Vec<String> =
            out.kernels.iter().filter(|k| k.launches == Some(0)).map(|k| format!("{}.{}", k.module, k.name)).collect();
        if !missed.is_empty() && args.filter.is_none() {
            eprintln!("not launched: {}", missed.join(", "));
        }
    }
    if let Some(j) = &args.json {
        let text = serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(format!("gpu-check JSON: {e}")))?;
        crate::methods::write_atomic(j, text.as_bytes())?;
    }
    if s.failed > 0 || s.sanitizer_findings > 0 {
        return Err(Error::Device(format!(
            "{} of {} kernel checks failed, {} sanitizer findings",
            s.failed, s.rows, s.sanitizer_findings
        )));
    }
    Ok(())
}

/// After a command other than gpu-check ran on the simulator: prints the per-kernel counts
/// (with --profile) and fails when the sanitizer found anything.
pub fn report_sim_run(sim: &Simulator) -> Result<()> {
    let profiles = sim.take_profiles();
    if !profiles.is_empty() {
        eprintln!("simulator profile (counts, never times; the H100 bound is a lower bound from them):\n");
        eprintln!("{}", format_profile_table(&per_kernel(&profiles)));
    }
    let findings = sim.take_findings();
    for f in &findings {
        eprintln!(
            "sanitizer: {:?} in {}, CTA {:?} thread {:?}, PTX line {}{}: {}",
            f.kind,
            f.kernel,
            f.cta,
            f.thread,
            f.ptx_line,
            f.source_loc.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
            f.message
        );
    }
    if !findings.is_empty() {
        return Err(Error::Device(format!(
            "the simulator's sanitizer found {} problem(s) in the kernels",
            findings.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listing the checks needs no GPU: every row is named once (op, dtype, shape), and the
    /// newest families are in the list.
    #[test]
    fn check_rows_are_unique() {
        let checks = all_checks();
        let mut keys: Vec<String> = checks.iter().map(|c| format!("{} {:?} {}", c.op, c.dtype, c.shape)).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate check rows");
        for op in ["dmar_weights", "dmar_propagate", "tagclip_patch_stage", "resnet_train_step", "adam_step", "linear"]
        {
            assert!(checks.iter().any(|c| c.op.starts_with(op)), "no `{op}` rows");
        }
        eprintln!("{n} check rows");
    }

    #[test]
    fn utc_dates_are_civil() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }

    #[test]
    fn max_work_parses() {
        assert_eq!(parse_max_work(None, true).unwrap(), Some(SIM_DEFAULT_MAX_WORK));
        assert_eq!(parse_max_work(None, false).unwrap(), None);
        assert_eq!(parse_max_work(Some("inf"), true).unwrap(), None);
        assert_eq!(parse_max_work(Some("1e6"), false).unwrap(), Some(1e6));
        assert!(parse_max_work(Some("-3"), true).is_err());
        assert!(parse_max_work(Some("lots"), true).is_err());
    }
}
