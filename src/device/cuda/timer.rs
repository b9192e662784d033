//! Kernel timing with CUDA events: warm-up, then the median of many runs, each on a cold L2
//! (a buffer larger than the L2 is overwritten between runs, outside the timed region).

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;

use super::{driver_err, Gpu};
use crate::error::Result;

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

/// Bytes written between timed runs to evict the L2 (H100: 50 MiB; H200: 60 MiB).
const L2_FLUSH_BYTES: usize = 256 << 20;

pub struct Timer {
    flush: Option<CudaSlice<u8>>,
}

impl Timer {
    /// `flush_l2`: overwrite a 256 MiB buffer before each timed run (memory-bound kernels);
    /// false for end-to-end figures, where warm caches are the real condition.
    ///
    /// On the PTX simulator there is no time to measure (its profile is a count, never a time):
    /// `Error::Skipped`.
    pub fn new(gpu: &Gpu, flush_l2: bool) -> Result<Timer> {
        let stream = &gpu.driver("timing")?.stream;
        let flush = if flush_l2 {
            Some(stream.alloc_zeros::<u8>(L2_FLUSH_BYTES).map_err(|e| driver_err("L2 flush buffer", e))?)
        } else {
            None
        };
        Ok(Timer { flush })
    }

    /// Runs `launch` `warmup` times untimed, then `runs` times, each between two events.
    pub fn time(
        &mut self,
        gpu: &Gpu,
        warmup: usize,
        runs: usize,
        mut launch: impl FnMut() -> Result<()>,
    ) -> Result<Timing> {
        let stream = &gpu.driver("timing")?.stream;
        for _ in 0..warmup {
            launch()?;
        }
        gpu.synchronize()?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            if let Some(buf) = self.flush.as_mut() {
                stream.memset_zeros(buf).map_err(|e| driver_err("L2 flush", e))?;
            }
            let ev = |s: &str| -> Result<_> {
                stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_err(s, e))
            };
            let start = ev("timing event")?;
            launch()?;
            let end = ev("timing event")?;
            times.push(start.elapsed_ms(&end).map_err(|e| driver_err("event elapsed time", e))? as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(Timing { median_ms: times[times.len() / 2], min_ms: times[0], runs: times.len() })
    }
}
