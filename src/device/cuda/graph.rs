//! Launch graphs: the kernel launches a closure issues on a `Gpu`, captured once and replayed
//! as one unit (`Gpu::capture`, `GpuGraph::replay`), to pay the per-launch host cost once.
//!
//! A graph is "these launches, with these arguments, on these buffers": replaying it runs the
//! same kernels on the same device addresses, so a caller allocates every buffer the closure
//! touches before capturing, keeps them alive as long as the graph, and changes the work by
//! writing new data into the input buffers between replays.
//!
//! On a GPU this is the driver's stream capture (cudarc's `begin_capture` / `end_capture`,
//! instantiated once, launched with `CudaGraph::launch`). On the simulator the capture records
//! each launch (kernel, grid, block, shared bytes, argument values) without running it, and a
//! replay runs the recorded list in order, which is what the driver's graph of one stream's
//! kernels does. On both, work that cannot be part of a graph (allocating, host copies,
//! memsets, synchronising, a buffer dropped while capturing) is refused with an error that
//! names it, and the capture fails.
//!
//! Work that allocates its own temporaries (a training step: activations, workspaces, split-K
//! partials in dozens of launchers) is captured with `Gpu::capture_pooled`, which serves those
//! allocations from a memory pool the graph keeps (pool.rs).

use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUresult, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, DriverError, LaunchConfig};

use super::pool::{GraphPool, PoolStats};
use super::{driver_err, Backend, Gpu, KArg};
use crate::device::sim::Simulator;
use crate::error::{Error, Result};

/// One launch of a graph: what `Gpu::launch` was asked to run.
#[derive(Clone, Debug)]
pub struct GraphLaunch {
    pub module: String,
    pub function: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
    pub args: Vec<KArg>,
}

/// What a capture in progress has seen (shared by a `Gpu` and its `with_gemm` twins, which use
/// the same stream).
#[derive(Default)]
pub(crate) struct CaptureLog {
    launches: Vec<GraphLaunch>,
    /// Operations refused while capturing, kept even when the closure swallowed the error.
    refused: Vec<String>,
    /// Where `CudaTensor::empty` takes its buffers during a pooled capture and its sizing pass.
    pool: Option<Arc<GraphPool>>,
    /// The sizing pass of `capture_pooled`: launches are recorded and run nowhere, on the
    /// simulator and on a GPU (no stream capture is open).
    sizing: bool,
}

/// `Some` while a capture runs.
pub(crate) type CaptureSlot = Arc<Mutex<Option<CaptureLog>>>;

fn lock(slot: &CaptureSlot) -> std::sync::MutexGuard<'_, Option<CaptureLog>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// True while `slot` captures.
pub(crate) fn capturing(slot: &CaptureSlot) -> bool {
    lock(slot).is_some()
}

/// Notes that a buffer was freed while capturing (a graph would later read freed memory).
pub(crate) fn note_free_in_capture(slot: &CaptureSlot) {
    if let Some(log) = lock(slot).as_mut() {
        log.refused.push("a device buffer was dropped".into());
    }
}

/// The error of an operation that cannot run inside a capture.
fn refused_err(what: &str) -> Error {
    Error::Device(format!(
        "{what} inside a graph capture: a graph holds kernel launches only; allocate and fill \
         every buffer before Gpu::capture, keep them alive, and read results after a replay"
    ))
}

/// The driver's capture errors, in words.
fn capture_driver_err(what: &str, e: DriverError) -> Error {
    let why = match e.0 {
        CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED => "an operation that cannot be captured was issued",
        CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED => {
            "the capture was invalidated by an operation that cannot be captured (a synchronisation, a host copy, an allocation)"
        }
        CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT => "an operation synchronised with the legacy default stream",
        CUresult::CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD => "the capture was ended from another thread",
        CUresult::CUDA_ERROR_STREAM_CAPTURE_ISOLATION | CUresult::CUDA_ERROR_STREAM_CAPTURE_MERGE => {
            "work from another stream joined the capture"
        }
        _ => return driver_err(what, e),
    };
    Error::Device(format!("{what}: {why} ({e:?})"))
}

/// A captured sequence of launches, replayable on the device it was captured on.
pub struct GpuGraph {
    launches: Vec<GraphLaunch>,
    exec: GraphExec,
    /// The memory of a pooled capture's temporaries, alive as long as the graph.
    pool: Option<Arc<GraphPool>>,
}

enum GraphExec {
    Driver(CudaGraph),
    Sim(Arc<Simulator>),
}

impl GpuGraph {
    /// Runs the captured launches again, in order, with the arguments they were captured with.
    /// On a GPU it is queued on the stream (synchronise, or read a result, to wait for it).
    pub fn replay(&self) -> Result<()> {
        match &self.exec {
            GraphExec::Driver(g) => g.launch().map_err(|e| driver_err("launching a graph", e)),
            GraphExec::Sim(sim) => {
                for l in &self.launches {
                    let args: Vec<_> = l.args.iter().map(|a| a.to_sim()).collect();
                    sim.launch(&l.module, &l.function, l.grid, l.block, l.shared_mem_bytes, &args)
                        .map_err(|e| Error::Device(format!("graph replay: {e}")))?;
                }
                Ok(())
            }
        }
    }

    /// The launches the graph holds, in the order they were captured.
    pub fn launches(&self) -> &[GraphLaunch] {
        &self.launches
    }

    /// The memory pool of a `capture_pooled` graph (None for `capture`).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.pool.as_ref().map(|p| p.stats())
    }
}

impl Gpu {
    /// Captures the kernel launches `work` issues on this device into a graph, without running
    /// them on the simulator (on a GPU the stream records them; nothing runs until a replay).
    /// Anything else `work` asks of the device (an allocation, a copy, a memset, a
    /// synchronisation, dropping a buffer) is an error, and so is the capture.
    pub fn capture(&self, work: impl FnOnce() -> Result<()>) -> Result<GpuGraph> {
        self.capture_in(None, work)
    }

    /// `capture` for work that allocates (and frees) temporaries with `CudaTensor::empty`:
    /// `work` runs twice, a sizing pass that launches nothing and fills a memory pool, then the
    /// capture, whose allocations take the pool's buffers (pool.rs). `work` must ask for the
    /// same buffers and launches both times; a difference is an error. Its inputs and outputs
    /// stay buffers of its own, allocated before (`CudaTensor::zeros`, uploads and copies are
    /// still refused inside: zero a buffer with a kernel, `ops::fill`).
    pub fn capture_pooled(&self, mut work: impl FnMut() -> Result<()>) -> Result<GpuGraph> {
        let pool = GraphPool::new();
        self.begin_log(Some(pool.clone()), true)?;
        let worked = work();
        let sizing = self.finish_capture(worked)?;
        pool.fix();
        let mut graph = self.capture_in(Some(pool.clone()), work)?;
        let same = |a: &GraphLaunch, b: &GraphLaunch| {
            (&a.module, &a.function, a.grid, a.block, a.shared_mem_bytes)
                == (&b.module, &b.function, b.grid, b.block, b.shared_mem_bytes)
        };
        if sizing.launches.len() != graph.launches.len()
            || sizing.launches.iter().zip(&graph.launches).any(|(a, b)| !same(a, b))
        {
            return Err(Error::Device(format!(
                "pooled graph capture: the sizing pass issued {} launches and the capture {} (or other kernels or shapes): the work must be the same both times",
                sizing.launches.len(),
                graph.launches.len()
            )));
        }
        graph.pool = Some(pool);
        Ok(graph)
    }

    /// Opens the capture bookkeeping (refused when one is open or on a launch recorder).
    fn begin_log(&self, pool: Option<Arc<GraphPool>>, sizing: bool) -> Result<()> {
        let mut slot = lock(&self.capture);
        if slot.is_some() {
            return Err(Error::Device("Gpu::capture inside another capture".into()));
        }
        if self.recorder.is_some() {
            // Skipped, not failed: a check that captures has nothing a recorder could check
            // beyond the eager launches other checks record.
            return Err(Error::Skipped("a launch recorder runs nothing, so it has no graphs".into()));
        }
        *slot = Some(CaptureLog { pool, sizing, ..CaptureLog::default() });
        Ok(())
    }

    fn capture_in(&self, pool: Option<Arc<GraphPool>>, work: impl FnOnce() -> Result<()>) -> Result<GpuGraph> {
        self.begin_log(pool, false)?;
        match &self.backend {
            Backend::Driver(d) => {
                let begun = d
                    .stream
                    .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(|e| capture_driver_err("beginning a graph capture", e));
                if let Err(e) = begun {
                    *lock(&self.capture) = None;
                    return Err(e);
                }
                let worked = work();
                // The capture ends whatever happened, so the stream is usable afterwards.
                let ended = d
                    .stream
                    .end_capture(CUgraphInstantiate_flags(0))
                    .map_err(|e| capture_driver_err("ending a graph capture", e));
                let log = self.finish_capture(worked)?;
                let graph = ended?.ok_or_else(|| Error::Device("the graph capture produced no graph".into()))?;
                Ok(GpuGraph { launches: log.launches, exec: GraphExec::Driver(graph), pool: None })
            }
            Backend::Sim(sim) => {
                let worked = work();
                let log = self.finish_capture(worked)?;
                Ok(GpuGraph { launches: log.launches, exec: GraphExec::Sim(sim.clone()), pool: None })
            }
        }
    }

    /// The pool of the pooled capture (or its sizing pass) in progress.
    pub(crate) fn capture_pool(&self) -> Option<Arc<GraphPool>> {
        lock(&self.capture).as_ref().and_then(|log| log.pool.clone())
    }

    /// Ends the capture's bookkeeping: its log, or the first error (the closure's, then the
    /// first refused operation).
    fn finish_capture(&self, worked: Result<()>) -> Result<CaptureLog> {
        let log = lock(&self.capture).take().unwrap_or_default();
        worked?;
        if let Some(what) = log.refused.first() {
            return Err(refused_err(what));
        }
        Ok(log)
    }

    /// Errors when a capture is running: `what` cannot be part of a graph.
    pub(crate) fn refuse_in_capture(&self, what: &str) -> Result<()> {
        if let Some(log) = lock(&self.capture).as_mut() {
            log.refused.push(what.to_string());
            return Err(refused_err(what));
        }
        Ok(())
    }

    /// During a capture, records the launch; true when it must not run now (the simulator, or
    /// a sizing pass on either backend).
    pub(crate) fn capture_launch(&self, module: &str, function: &str, cfg: &LaunchConfig, args: &[KArg]) -> bool {
        let mut slot = lock(&self.capture);
        let Some(log) = slot.as_mut() else { return false };
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        log.launches.push(GraphLaunch {
            module: module.to_string(),
            function: function.to_string(),
            grid: [g.0, g.1, g.2],
            block: [b.0, b.1, b.2],
            shared_mem_bytes: cfg.shared_mem_bytes,
            args: args.to_vec(),
        });
        log.sizing || matches!(self.backend, Backend::Sim(_))
    }
}
