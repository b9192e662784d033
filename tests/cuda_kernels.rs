//! Every CUDA kernel against its CPU reference (labelfree::gpu_check::all_checks): fresh random
//! inputs, poisoned outputs, several shapes, f32 <= 1e-4 and bf16/f16 <= 1e-2 relative error.
//! On a machine without a GPU (or a build without nvcc) it says why and passes, so CI stays
//! green; the same binary runs the checks on a GPU machine.

use labelfree::device::cuda::{check, gpu_or_skip_reason};
use labelfree::gpu_check::all_checks;

#[test]
fn every_kernel_matches_its_cpu_reference() {
    let checks = all_checks();
    assert!(!checks.is_empty() || !labelfree::device::cuda::has_kernels(), "a build with kernels has checks");
    let gpu = match gpu_or_skip_reason() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("cuda_kernels: {why} ({} checks not run)", checks.len());
            return;
        }
    };
    let report = check::run_checks(&gpu, &checks, &check::CheckOptions::default()).expect("checks run");
    eprintln!("{}", check::format_table(&report.rows));
    let failed = report.failed();
    assert!(failed.is_empty(), "{} of {} kernel checks failed", failed.len(), report.rows.len());
}

#[test]
fn every_kernel_module_of_the_build_is_embedded() {
    // With nvcc at build time every kernels/*.cu is in the binary; without, none is.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let sources = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cu"))
        .count();
    let embedded = labelfree::device::cuda::KERNEL_MODULES.len();
    assert!(embedded == 0 || embedded == sources, "{embedded} modules embedded, {sources} kernels/*.cu");
    if std::env::var("LABELFREE_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
        assert_eq!(embedded, sources, "LABELFREE_REQUIRE_KERNELS=1: every kernel must be built");
    }
}
