//! Every CUDA kernel against its CPU reference (labelfree::gpu_check::all_checks): fresh random
//! inputs, poisoned outputs, several shapes, f32 <= 1e-4 and bf16/f16 <= 1e-2 relative error.
//! On a GPU machine the checks run there; everywhere else they run on the PTX simulator
//! (device::sim), sanitizer on, with the rows whose work fits LABELFREE_SIM_MAX_WORK (default
//! 2e7 FLOPs or bytes a launch: the small and odd shapes, tiny-tower encoders, a tiny ResNet
//! training step, TagCLIP's patch stage on a tiny ViT). A build without nvcc has no kernels and
//! says so (CI builds with nvcc: LABELFREE_REQUIRE_KERNELS=1).

use labelfree::device::cuda::{check, gpu_or_skip_reason, Gpu, KERNEL_ENTRIES};
use labelfree::device::sim::SimOptions;
use labelfree::gpu_check::all_checks;

/// The simulator's default budget per row in CI (FLOPs or bytes of one launch).
const SIM_MAX_WORK: f64 = 2e7;

#[test]
fn every_kernel_matches_its_cpu_reference() {
    let checks = all_checks();
    assert!(!checks.is_empty() || !labelfree::device::cuda::has_kernels(), "a build with kernels has checks");
    if !labelfree::device::cuda::has_kernels() {
        eprintln!("cuda_kernels: this build has no kernels (no nvcc at build time): {} checks not run", checks.len());
        return;
    }
    let (gpu, max_work) = match gpu_or_skip_reason() {
        Ok(g) => (g, None),
        Err(why) => {
            let max_work = std::env::var("LABELFREE_SIM_MAX_WORK")
                .ok()
                .map(|v| v.parse::<f64>().expect("LABELFREE_SIM_MAX_WORK is a number"))
                .unwrap_or(SIM_MAX_WORK);
            eprintln!(
                "cuda_kernels: no GPU ({why}); the checks run on the PTX simulator, rows up to {max_work:e} work"
            );
            (Gpu::simulator(SimOptions::default()).expect("simulator"), Some(max_work))
        }
    };
    let opts = check::CheckOptions {
        max_work,
        progress: std::env::var_os("LABELFREE_PROGRESS").is_some(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let report = check::run_checks(&gpu, &checks, &opts).expect("checks run");
    eprintln!("{}", check::format_table(&report.rows));
    let failed = report.failed();
    let ran = report.rows.iter().filter(|r| r.skipped.is_none()).count();
    eprintln!(
        "cuda_kernels: {ran} rows ran, {} skipped, in {:.0} s",
        report.rows.len() - ran,
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{} of {} kernel checks failed", failed.len(), report.rows.len());
    if let Some(sim) = gpu.sim() {
        for f in &report.sanitizer {
            eprintln!("sanitizer: row {} {}: {:?}", f.row, f.op, f.finding);
        }
        assert!(report.sanitizer.is_empty(), "{} sanitizer findings", report.sanitizer.len());
        let counts = sim.launch_counts();
        let missing: Vec<String> = KERNEL_ENTRIES
            .iter()
            .filter(|e| e.arch == "compute_80")
            .filter(|e| counts.get(&(e.module.to_string(), e.name.to_string())).copied().unwrap_or(0) == 0)
            .map(|e| format!("{}.{}", e.module, e.name))
            .collect();
        assert!(missing.is_empty(), "entry points no row launched: {missing:?}");
    }
}

#[test]
fn every_entry_point_lowers_for_the_simulator() {
    // Every instruction of every kernel is one the simulator implements (an unknown one would
    // otherwise surface only when that kernel first runs).
    if !labelfree::device::cuda::has_kernels() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions::default()).expect("simulator");
    let sim = gpu.sim().expect("a simulator");
    let errors = sim.lowering_errors().expect("modules parse");
    assert!(errors.is_empty(), "kernels the simulator cannot run:\n{}", errors.join("\n"));
    let entries = sim.entries().expect("entries");
    let portable = KERNEL_ENTRIES.iter().filter(|e| e.arch == "compute_80").count();
    assert_eq!(entries.len(), portable, "the simulator sees every compute_80 entry point");
    for e in &entries {
        let k =
            KERNEL_ENTRIES.iter().find(|k| k.module == e.module && k.name == e.name).expect("entry known to build.rs");
        assert_eq!(k.param_bytes, &e.param_bytes[..], "{}.{} parameter widths", e.module, e.name);
    }
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
