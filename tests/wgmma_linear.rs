//! The Hopper GEMM (kernels/matmul.sm90a.cu: TMA, mbarriers, wgmma) through the linear
//! launcher, on the PTX simulator in sm90a mode: the `linear_wgmma` rows of gpu-check (ViT-B/16
//! projections at 50 tokens, odd M / N / K edges, bf16 and f16) against the CPU, sanitizer on.
//! The rows fail unless the wgmma kernel itself ran (the launcher would otherwise fall back to
//! the mma.sync GEMM).

use labelfree::device::cuda::{check, Gpu, KERNEL_ENTRIES};
use labelfree::device::sim::{SimArch, SimOptions};
use labelfree::gpu_check::all_checks;

fn sm90a() -> std::sync::Arc<Gpu> {
    Gpu::simulator(SimOptions { arch: SimArch::Sm90a, ..SimOptions::default() }).expect("simulator")
}

#[test]
fn the_sm90a_simulator_reports_hopper_and_lowers_every_hopper_kernel() {
    if !labelfree::device::cuda::has_kernels() {
        return;
    }
    let gpu = sm90a();
    assert!(gpu.is_hopper());
    assert_eq!(gpu.compute_capability, (9, 0));
    let sim = gpu.sim().expect("a simulator");
    let errors = sim.lowering_errors().expect("modules parse");
    assert!(errors.is_empty(), "kernels the simulator cannot run:\n{}", errors.join("\n"));
    let entries = sim.entries().expect("entries");
    for e in KERNEL_ENTRIES.iter().filter(|e| e.arch == "compute_90a") {
        assert!(entries.iter().any(|x| x.module == e.module && x.name == e.name), "{}.{} not loaded", e.module, e.name);
    }
    // The default simulator stays sm_80.
    let plain = Gpu::simulator(SimOptions::default()).expect("simulator");
    assert!(!plain.is_hopper());
}

#[test]
fn the_wgmma_linear_rows_match_the_cpu_on_the_sm90a_simulator() {
    if !labelfree::device::cuda::has_kernels() {
        return;
    }
    let gpu = sm90a();
    let checks: Vec<_> = all_checks().into_iter().filter(|c| c.op == "linear_wgmma").collect();
    assert!(checks.len() >= 14, "{} linear_wgmma rows", checks.len());
    let opts = check::CheckOptions { max_work: None, ..Default::default() };
    let report = check::run_checks(&gpu, &checks, &opts).expect("checks run");
    eprintln!("{}", check::format_table(&report.rows));
    assert!(report.rows.iter().all(|r| r.skipped.is_none()), "a row was skipped on an sm90a device");
    assert!(report.failed().is_empty(), "{} rows failed", report.failed().len());
    for f in &report.sanitizer {
        eprintln!("sanitizer: row {} {}: {:?}", f.row, f.op, f.finding);
    }
    assert!(report.sanitizer.is_empty(), "{} sanitizer findings", report.sanitizer.len());
}
