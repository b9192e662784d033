//! The CUDA side: driver detection now; context, stream, module store and timers with the
//! kernels (see the CUDA backend issue).

use crate::error::{Error, Result};

/// Checks that a CUDA device can be used, with a message a user can act on when not.
/// cudarc loads the driver at run time, so the same binary runs on machines without CUDA.
pub fn check_available(ordinal: usize) -> Result<()> {
    // SAFETY: only probes whether the driver library can be dlopen'ed.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(Error::Device(format!(
            "--device cuda:{ordinal}: no CUDA driver (libcuda) found on this machine; use --device cpu"
        )));
    }
    Err(Error::Device(
        "--device cuda: this build of labelfree has no CUDA kernels yet; use --device cpu".into(),
    ))
}
