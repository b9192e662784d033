//! Every launch the launchers build names a kernel that the build's PTX has, with as many
//! parameters of the same widths, checked without a GPU: every kernel check
//! (labelfree::gpu_check::all_checks, with every dtype and shape it covers, so the names built
//! from dtype suffixes and variants too) runs on a launch recorder, a device that checks each
//! launch against build.rs's table of entry points and runs nothing. Entry points that no check
//! launches are listed, not failed. A build without nvcc has no PTX: the test then says, loudly,
//! that it checked nothing.
//!
//! The rows' host side (inputs, CPU references) costs real time even though nothing runs: rows
//! above ROW_MAX_WORK are left out when a smaller row of the same op and dtype is run (they
//! build the same launches at a larger size; the test prints what it left out). Run with
//! LABELFREE_ENTRIES_ALL=1 to go through every row.

use std::collections::{BTreeMap, BTreeSet};

use labelfree::device::cuda::{has_kernels, Gpu, KERNEL_ENTRIES};
use labelfree::error::Error;
use labelfree::gpu_check::all_checks;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// FLOPs (or bytes) above which a row is left out if its op and dtype have a smaller one.
const ROW_MAX_WORK: f64 = 1e9;

#[test]
fn every_launch_fits_an_entry_point_of_the_build() {
    if !has_kernels() {
        eprintln!(
            "\n*** kernel_entries: SKIPPED, NOTHING CHECKED: this build has no PTX (built without nvcc; set NVCC, \
             see scripts/install-nvcc.sh) ***\n"
        );
        return;
    }
    let gpu = Gpu::launch_recorder().expect("a launch recorder");
    let checks = all_checks();
    let every_row = std::env::var_os("LABELFREE_ENTRIES_ALL").is_some();
    let mut smallest: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for c in &checks {
        let w = smallest.entry((c.op, c.dtype.suffix())).or_insert(f64::INFINITY);
        *w = w.min(c.work.amount());
    }
    let mut left_out = 0;
    // A row that stops early (an error other than a misfit launch) has not shown all its
    // launches: it fails the test too, so a launcher cannot drop out of the guard unnoticed.
    let mut stopped = Vec::new();
    let mut skipped = Vec::new();
    for check in &checks {
        let mut rng = StdRng::seed_from_u64(check.seed(0));
        let row = format!("{} {} {}", check.op, check.dtype.suffix(), check.shape);
        let work = check.work.amount();
        if !every_row && work > ROW_MAX_WORK && smallest[&(check.op, check.dtype.suffix())] <= ROW_MAX_WORK {
            left_out += 1;
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = (check.run)(&gpu, &mut rng);
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.5 {
            eprintln!("  slow row {secs:.1} s: {row}");
        }
        match outcome {
            Ok(_) => {}
            Err(Error::Skipped(why)) => skipped.push(format!("{row}: {why}")),
            Err(e) => stopped.push(format!("{row}: {e}")),
        }
    }
    let launches = gpu.recorded_launches();
    let misfits: BTreeSet<String> =
        launches.iter().filter_map(|l| l.mismatch.as_ref()).map(|m| m.to_string()).collect();
    let launched: BTreeSet<(&str, &str)> = launches.iter().map(|l| (l.module.as_str(), l.function.as_str())).collect();
    // The recorder is an sm_80 device: Hopper-only (compute_90a) entries are not reached.
    let portable: Vec<_> = KERNEL_ENTRIES.iter().filter(|e| e.arch == "compute_80").collect();
    let never: Vec<String> = portable
        .iter()
        .filter(|e| !launched.contains(&(e.module, e.name)))
        .map(|e| format!("{}::{}", e.module, e.name))
        .collect();
    eprintln!(
        "kernel_entries: {} checks ({} larger rows left out), {} launches of {} distinct kernels checked against {} \
         entry points; {} rows skipped",
        checks.len(),
        left_out,
        launches.len(),
        launched.len(),
        portable.len(),
        skipped.len()
    );
    for s in &skipped {
        eprintln!("  skipped: {s}");
    }
    if !never.is_empty() {
        eprintln!("kernel_entries: entry points no check launches ({}): {}", never.len(), never.join(", "));
    }
    assert!(
        misfits.is_empty(),
        "launches that do not fit the PTX:\n{}",
        misfits.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(stopped.is_empty(), "rows that stopped before their last launch:\n{}", stopped.join("\n"));
    assert!(!launches.is_empty(), "the checks launched nothing");
}
