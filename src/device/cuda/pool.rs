//! A graph's own memory: the buffers its work allocates and frees while it is captured.
//!
//! A captured graph replays launches on fixed device addresses, and a capture may not allocate
//! (on a GPU `cuMemAlloc` inside a stream capture is an unsafe call that invalidates it; on both
//! backends an allocation is not a launch and would not be replayed). Work such as a training
//! step allocates its activations, workspaces and split-K partials in dozens of launchers, so
//! instead of moving every allocation out, `Gpu::capture_pooled` runs the work twice:
//! 1. a sizing pass that launches nothing, with every allocation served by a `GraphPool` that
//!    grows (real allocations, outside any capture), and every free returning the buffer to it;
//! 2. the capture, with the pool fixed: each allocation takes a free buffer of the same byte
//!    size, which exists because the capture asks for the same sizes in the same order as the
//!    sizing pass (a pool that cannot serve one is an error, not a silent allocation).
//!
//! The graph keeps the pool, so every address it holds stays valid until it is dropped. A buffer
//! freed and taken again inside the work is reused in stream order, as the eager run reuses
//! memory; this is PyTorch's "private memory pool" of a CUDA graph.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, DevicePtr};

use super::{driver_err, Backend, Gpu};
use crate::error::{Error, Result};

/// One block: a device allocation of exactly `bytes`.
struct PoolBlock {
    /// Keeps the memory alive (freed when the pool drops).
    _mem: PoolMem,
    addr: u64,
    bytes: usize,
}

// The allocation is only ever dropped (freed); its address is kept beside it.
#[allow(dead_code)]
enum PoolMem {
    Driver(CudaSlice<u8>),
    Sim(super::tensor::SimBuf),
}

#[derive(Default)]
struct PoolState {
    blocks: Vec<PoolBlock>,
    /// Free blocks by byte size, the last freed on top.
    free: HashMap<usize, Vec<usize>>,
    /// True during the sizing pass: a request with no free block of its size allocates one.
    grow: bool,
    /// Blocks in use now, and the most at once.
    in_use: usize,
    peak_in_use: usize,
}

/// The memory of one captured graph (module comment).
#[derive(Default)]
pub struct GraphPool {
    state: Mutex<PoolState>,
}

/// A block taken from a pool: returned to its free list when dropped (the tensor that holds it
/// is freed).
pub(crate) struct PoolLease {
    pool: Arc<GraphPool>,
    block: usize,
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let mut s = self.pool.lock();
        let bytes = s.blocks[self.block].bytes;
        s.free.entry(bytes).or_default().push(self.block);
        s.in_use -= 1;
    }
}

/// What a pool holds, for reports and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Device allocations the pool made (all in the sizing pass).
    pub blocks: usize,
    pub bytes: usize,
    /// The most blocks in use at once.
    pub peak_blocks: usize,
}

impl GraphPool {
    /// A pool in its sizing pass (growing) until `fix`.
    pub(crate) fn new() -> Arc<GraphPool> {
        Arc::new(GraphPool { state: Mutex::new(PoolState { grow: true, ..PoolState::default() }) })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the sizing pass: from now on every request must find a free block.
    pub(crate) fn fix(&self) {
        self.lock().grow = false;
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats { blocks: s.blocks.len(), bytes: s.blocks.iter().map(|b| b.bytes).sum(), peak_blocks: s.peak_in_use }
    }

    /// A block of `bytes` (at least 1) for `what`: a free one of that size, or, while the pool
    /// grows, a new allocation (poisoned on the simulator, as `CudaTensor::empty`'s are).
    pub(crate) fn take(self: &Arc<Self>, gpu: &Gpu, bytes: usize, what: &str) -> Result<(u64, PoolLease)> {
        let bytes = bytes.max(1);
        let mut s = self.lock();
        let block = match s.free.get_mut(&bytes).and_then(|v| v.pop()) {
            Some(i) => i,
            None if s.grow => {
                let (mem, addr) = alloc_block(gpu, bytes, what)?;
                s.blocks.push(PoolBlock { _mem: mem, addr, bytes });
                s.blocks.len() - 1
            }
            None => {
                return Err(Error::Device(format!(
                    "graph pool: no free buffer of {bytes} bytes for {what}: the captured work asked for \
                     other buffers than its sizing pass (it must allocate the same sizes in the same order \
                     both times)"
                )))
            }
        };
        s.in_use += 1;
        s.peak_in_use = s.peak_in_use.max(s.in_use);
        Ok((s.blocks[block].addr, PoolLease { pool: self.clone(), block }))
    }
}

/// One device allocation of `bytes` for the pool.
fn alloc_block(gpu: &Gpu, bytes: usize, what: &str) -> Result<(PoolMem, u64)> {
    match gpu.backend() {
        Backend::Sim(sim) => {
            let buf = super::tensor::SimBuf::alloc_poisoned(sim, bytes)
                .map_err(|e| Error::Device(format!("graph pool: allocating {what}: {e}")))?;
            let addr = buf.addr();
            Ok((PoolMem::Sim(buf), addr))
        }
        Backend::Driver(d) => {
            // SAFETY: the buffer is written by the kernels of the work before they read it.
            let slice = unsafe { d.stream.alloc::<u8>(bytes) }
                .map_err(|e| driver_err(&format!("graph pool: allocating {what}"), e))?;
            let addr = slice.device_ptr(&d.stream).0;
            Ok((PoolMem::Driver(slice), addr))
        }
    }
}
