//! The check every launch passes before it runs: the kernel exists in its module, and the
//! launcher passes as many arguments, of the same widths, as the kernel declares.
//!
//! build.rs reads each module's `.entry` names and `.param` widths from the PTX
//! (`KERNEL_ENTRIES`). Without this check a misspelt name surfaces only when a GPU loads the
//! function, and a wrong argument count is worse: `cuLaunchKernel` reads as many argument
//! pointers as the kernel has parameters, so a short list reads past it and runs anyway.
//! `Gpu::launch_recorder` runs launchers through the same check with nothing executed, which
//! is how tests/kernel_entries.rs covers every launcher without a GPU.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{KArg, KernelEntry, KERNEL_ENTRIES};

/// Why a launch does not fit the build's PTX.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchMismatch {
    #[error("no kernel module `{module}` in this build (kernels/{module}.cu)")]
    NoModule { module: String },
    #[error("kernels/{module}.cu has no entry point `{function}` (it has: {known})")]
    NoFunction { module: String, function: String, known: String },
    #[error("{module}::{function} takes {expected} parameters, the launcher passes {found}")]
    ParamCount { module: String, function: String, expected: usize, found: usize },
    #[error("{module}::{function} parameter {index} is {expected} bytes wide, the launcher passes {found} bytes")]
    ParamWidth { module: String, function: String, index: usize, expected: u32, found: u32 },
}

impl KArg {
    /// Bytes the argument occupies in the kernel's parameter block.
    pub fn width(self) -> u32 {
        match self {
            KArg::Ptr(_) | KArg::U64(_) | KArg::I64(_) => 8,
            KArg::I32(_) | KArg::U32(_) | KArg::F32(_) => 4,
        }
    }
}

type EntryTable = HashMap<&'static str, HashMap<&'static str, &'static KernelEntry>>;

/// module -> function -> entry. A module compiled for two architectures (NAME.cu and
/// NAME.sm90a.cu) shares one name; its entries are merged, the first one of a name kept.
fn table() -> &'static EntryTable {
    static TABLE: OnceLock<EntryTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: EntryTable = HashMap::new();
        for e in KERNEL_ENTRIES {
            t.entry(e.module).or_default().entry(e.name).or_insert(e);
        }
        t
    })
}

/// The entry point `function` of kernels/`module`.cu, as build.rs read it from the PTX.
pub fn kernel_entry(module: &str, function: &str) -> Option<&'static KernelEntry> {
    table().get(module)?.get(function).copied()
}

/// Checks a launch of `module::function` with `args` against the build's PTX.
pub fn check_launch(module: &str, function: &str, args: &[KArg]) -> Result<(), LaunchMismatch> {
    let Some(functions) = table().get(module) else {
        return Err(LaunchMismatch::NoModule { module: module.to_string() });
    };
    let Some(entry) = functions.get(function) else {
        let mut known: Vec<&str> = functions.keys().copied().collect();
        known.sort_unstable();
        return Err(LaunchMismatch::NoFunction {
            module: module.to_string(),
            function: function.to_string(),
            known: known.join(", "),
        });
    };
    if entry.param_bytes.len() != args.len() {
        return Err(LaunchMismatch::ParamCount {
            module: module.to_string(),
            function: function.to_string(),
            expected: entry.param_bytes.len(),
            found: args.len(),
        });
    }
    for (index, (&expected, &arg)) in entry.param_bytes.iter().zip(args).enumerate() {
        if arg.width() != expected {
            return Err(LaunchMismatch::ParamWidth {
                module: module.to_string(),
                function: function.to_string(),
                index,
                expected,
                found: arg.width(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_that_fits_passes_and_each_misfit_is_named() {
        // Built without nvcc there is no PTX to check against: the test says so and stops.
        let Some(entry) = KERNEL_ENTRIES.iter().find(|e| !e.param_bytes.is_empty()) else {
            eprintln!("SKIPPED: this build has no kernels (built without nvcc): no entry points to check");
            return;
        };
        let fitting: Vec<KArg> =
            entry.param_bytes.iter().map(|&w| if w == 8 { KArg::Ptr(0) } else { KArg::I32(0) }).collect();
        assert_eq!(check_launch(entry.module, entry.name, &fitting), Ok(()));
        assert!(matches!(check_launch("no_such_module", entry.name, &fitting), Err(LaunchMismatch::NoModule { .. })));
        let misspelt = format!("{}_typo", entry.name);
        match check_launch(entry.module, &misspelt, &fitting) {
            Err(LaunchMismatch::NoFunction { known, .. }) => assert!(known.contains(entry.name), "{known}"),
            other => panic!("{misspelt}: {other:?}"),
        }
        let short = &fitting[..fitting.len() - 1];
        assert!(matches!(
            check_launch(entry.module, entry.name, short),
            Err(LaunchMismatch::ParamCount { expected, found, .. }) if expected == fitting.len() && found == short.len()
        ));
        let mut swapped = fitting.clone();
        let last = swapped.len() - 1;
        swapped[last] = if entry.param_bytes[last] == 8 { KArg::I32(0) } else { KArg::I64(0) };
        assert!(matches!(
            check_launch(entry.module, entry.name, &swapped),
            Err(LaunchMismatch::ParamWidth { index, .. }) if index == last
        ));
    }
}
