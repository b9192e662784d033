//! The command-line edge: each command's arguments and `run` in its own module (embed,
//! zeroshot, eval, info, bench here; tagclip, cdul, ccd in `methods::*::cli`, train in
//! `train::run`, gpu-check in `gpu_check`), the CLIP model flags they share (`model`), and the
//! device flags of one invocation resolved once (`Session`). Errors become `anyhow` here, at
//! the edge; main.rs only parses and dispatches.

pub mod bench;
pub mod embed;
pub mod eval;
pub mod info;
pub mod model;
pub mod zeroshot;

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::device::cuda::{DType, GemmBackend, Gpu};
use crate::device::sim::SimOptions;
use crate::device::Device;
use crate::train::run::TrainArgs;

/// The global device flags of one invocation: `--device` opened once (creating the context
/// loads, and JIT-compiles, every kernel module), and the `--dtype` / `--gemm` its CUDA paths
/// use.
pub struct Session {
    pub device: Device,
    /// The GPU or the simulator; None on the CPU.
    pub gpu: Option<Arc<Gpu>>,
    pub dtype: DType,
    pub gemm: GemmBackend,
}

impl Session {
    /// Opens `device` (nothing to open for the CPU). `sim` applies to `--device sim` only.
    pub fn open(device: Device, sim: SimOptions, dtype: DType, gemm: GemmBackend) -> Result<Session> {
        let gpu = match device {
            Device::Cuda(n) => Some(Gpu::new(n)?.with_gemm(gemm)),
            Device::Sim => Some(Gpu::simulator(sim)?.with_gemm(gemm)),
            Device::Cpu => None,
        };
        Ok(Session { device, gpu, dtype, gemm })
    }

    /// The opened GPU or simulator, else GPU 0 (gpu-check always runs kernels).
    pub fn gpu_or_first(&self) -> Result<Arc<Gpu>> {
        Ok(match &self.gpu {
            Some(g) => g.clone(),
            None => Gpu::new(0)?.with_gemm(self.gemm),
        })
    }
}

/// `labelfree train` (its arguments live with the trainer, `train::run::TrainArgs`): the GPU
/// trainer is f32 only.
pub fn train(a: &TrainArgs, s: &Session) -> Result<()> {
    if s.gpu.is_some() && !matches!(s.dtype, DType::F32 | DType::BF16) {
        bail!(
            "train --device cuda runs in f32 or in bf16 mixed precision (f16 would need loss scaling); drop --dtype {}",
            s.dtype
        );
    }
    crate::train::run::run(&crate::train::run::TrainRun { dtype: s.dtype, ..a.to_run() }, s.gpu.as_ref())?;
    Ok(())
}
