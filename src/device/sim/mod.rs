//! The PTX simulator behind `--device sim`: runs the PTX that build.rs embeds (the same text the
//! driver would load) on the CPU, so every kernel executes, is checked and sanitized on a
//! machine with no GPU.
//!
//! This module knows no op: it loads PTX modules, owns a device-memory table, and runs what it
//! is given. `device::cuda::Gpu` puts it under the same `launch` as the driver.
//!
//! Public surface (the contract with device::cuda):
//! - `Simulator::new(modules, options)`; modules are parsed and lowered lazily, once each.
//! - memory: `alloc` / `free` / `write` / `read` / `fill` on 256-byte-aligned device addresses,
//!   bounded by the requested size (allocations are spaced so an access past the end hits no
//!   allocation).
//! - `launch(module, kernel, grid, block, dynamic_shared_bytes, args)`: synchronous; arguments
//!   are checked against the entry's parameter list (count and widths) and the shared size
//!   against the limit; a fault (unknown instruction, access outside every allocation, barrier
//!   deadlock, collective with mismatched lanes) is an error naming kernel, CTA, thread and line.
//! - sanitizer findings and per-launch profiles are collected and taken with `take_findings` /
//!   `take_profiles`; `launch_counts` says how often each entry point ran.

pub mod exec;
pub mod fp;
pub mod hopper;
pub mod memory;
pub mod mma;
pub mod parse;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

pub use memory::DeviceMemory;

/// Errors of the simulator (the device layer turns them into `crate::error::Error::Device`).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The PTX text could not be parsed or uses something the simulator does not know.
    #[error("kernels/{module}.cu PTX line {line}: {message}")]
    Ptx { module: String, line: u32, message: String },
    /// A host-side memory operation on an address that is not (all) inside one allocation.
    #[error("simulated device memory: {0}")]
    Memory(String),
    /// A launch that cannot start: unknown kernel, wrong arguments, too much shared memory.
    #[error("launch of {kernel}: {message}")]
    Launch { kernel: String, message: String },
    /// A fault while the kernel ran.
    #[error("{kernel}: CTA {cta:?} thread {thread:?}, PTX line {ptx_line}{}: {message}", source_loc.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Fault {
        kernel: String,
        cta: [u32; 3],
        thread: [u32; 3],
        ptx_line: u32,
        source_loc: Option<String>,
        message: String,
    },
}

pub type SimResult<T> = std::result::Result<T, SimError>;

/// How launches run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Race, bounds, initialisation, alignment and barrier checks (on by default).
    pub sanitize: bool,
    /// Count instructions, FLOPs, sectors and bank conflicts per launch.
    pub profile: bool,
    /// The device modelled: which modules the device layer hands the simulator, the compute
    /// capability it reports and the shared memory a CTA may have.
    pub arch: SimArch,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { sanitize: true, profile: false, arch: SimArch::Sm80 }
    }
}

/// The architecture the simulator stands in for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimArch {
    /// sm_80: the portable compute_80 modules only; compute capability (8, 0).
    #[default]
    Sm80,
    /// sm_90a: the compute_90a modules too (wgmma, TMA, mbarrier); compute capability (9, 0).
    Sm90a,
}

impl SimArch {
    /// Largest shared memory of one CTA: sm_80's opt-in 163 KB, sm_90's 227 KB.
    pub fn max_shared_bytes(self) -> u32 {
        match self {
            SimArch::Sm80 => MAX_SHARED_BYTES,
            SimArch::Sm90a => 227 * 1024,
        }
    }

    pub fn compute_capability(self) -> (i32, i32) {
        match self {
            SimArch::Sm80 => (8, 0),
            SimArch::Sm90a => (9, 0),
        }
    }
}

impl std::str::FromStr for SimArch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sm80" | "sm_80" => Ok(SimArch::Sm80),
            "sm90a" | "sm_90a" => Ok(SimArch::Sm90a),
            _ => Err(format!("unknown simulator architecture `{s}` (sm80 or sm90a)")),
        }
    }
}

impl std::fmt::Display for SimArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SimArch::Sm80 => "sm80",
            SimArch::Sm90a => "sm90a",
        })
    }
}

/// One kernel argument as the kernel's `.param` sees it: 4 or 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimArg {
    B32(u32),
    B64(u64),
}

impl SimArg {
    pub fn size(self) -> u32 {
        match self {
            SimArg::B32(_) => 4,
            SimArg::B64(_) => 8,
        }
    }
}

/// One `.entry` of a module.
#[derive(Clone, Debug, Serialize)]
pub struct EntryInfo {
    pub module: String,
    pub name: String,
    /// Width in bytes of each `.param`, in order.
    pub param_bytes: Vec<u32>,
    /// Bytes of `.shared` declared by the entry (the dynamic part comes with the launch).
    pub static_shared_bytes: u32,
}

/// What the sanitizer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A global access outside every live allocation.
    GlobalOutOfBounds,
    /// A shared access outside the CTA's shared memory.
    SharedOutOfBounds,
    /// Two threads touch the same shared bytes, one writes, with no barrier between and not
    /// ordered by a warp collective of their warp.
    SharedRace,
    /// A read of shared bytes not written in this launch.
    SharedUninitializedRead,
    /// A vector or wide access at an address not aligned to its size.
    MisalignedAccess,
    /// Some threads wait at a barrier that the others can never reach.
    BarrierDeadlock,
}

/// One sanitizer finding: kind, where (kernel, CTA, thread, PTX line, .cu file:line) and what.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub module: String,
    pub kernel: String,
    pub cta: [u32; 3],
    pub thread: [u32; 3],
    pub ptx_line: u32,
    /// `kernels/NAME.cu:LINE` from the PTX `.loc` (the innermost location in a kernels/ file).
    pub source_loc: Option<String>,
    pub message: String,
}

/// Counts of one launch (`SimOptions::profile`). Counts, never times.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LaunchProfile {
    pub module: String,
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
    /// Warp instructions issued (one per warp per executed instruction).
    pub warp_instructions: u64,
    /// Thread instructions: the sum over warp instructions of their active lanes.
    pub thread_instructions: u64,
    /// Warp instructions by class (`fp32`, `fp64`, `int`, `cvt`, `mov`, `ld_global`,
    /// `st_global`, `ld_shared`, `st_shared`, `atom_global`, `atom_shared`, `cp_async`,
    /// `ldmatrix`, `mma`, `shfl`, `bar`, `branch`, `special`, ...). An atomic also counts as a
    /// store request of its space (global requests, bytes and sectors; shared wavefronts).
    pub by_class: BTreeMap<String, u64>,
    /// Floating-point operations (2 per FMA; an m16n8k16 mma is 2*16*8*16 per warp).
    pub flops: u64,
    /// The part of `flops` done on the tensor cores (mma.sync, and wgmma per warpgroup).
    pub tensor_flops: u64,
    /// Bytes the active lanes asked for (global loads / stores, cp.async reads included in loads).
    pub global_load_bytes: u64,
    pub global_store_bytes: u64,
    /// Distinct 32-byte sectors touched per warp instruction, summed.
    pub global_load_sectors: u64,
    pub global_store_sectors: u64,
    /// Warp-level global memory instructions.
    pub global_load_requests: u64,
    pub global_store_requests: u64,
    /// Warp-level shared memory instructions (ld/st/ldmatrix/cp.async writes), the wavefronts
    /// they need, and the wavefronts they would need without bank conflicts (1 per request for
    /// 4-byte accesses, 2 for 8-byte, 4 for 16-byte by a full warp): `shared_wavefronts -
    /// shared_ideal_wavefronts` is the bank conflicts' cost.
    pub shared_requests: u64,
    pub shared_wavefronts: u64,
    pub shared_ideal_wavefronts: u64,
    /// bar.sync executions (per warp).
    pub barriers: u64,
    /// Distinct 32-byte global sectors the whole launch touched (loads and stores), times 32:
    /// the compulsory DRAM traffic, used for the lower bound of the time.
    pub global_unique_bytes: u64,
}

struct ModuleSlot {
    name: &'static str,
    ptx: &'static str,
    parsed: OnceLock<std::result::Result<parse::Module, String>>,
}

/// Largest shared memory of one CTA (sm_80's opt-in limit, 163 KB).
pub const MAX_SHARED_BYTES: u32 = 163 * 1024;

/// The simulator: PTX modules, device memory, and what launches found and counted.
pub struct Simulator {
    options: SimOptions,
    modules: Vec<ModuleSlot>,
    memory: DeviceMemory,
    findings: Mutex<Vec<Finding>>,
    profiles: Mutex<Vec<LaunchProfile>>,
    launches: Mutex<BTreeMap<(String, String), u64>>,
}

impl Simulator {
    /// A simulator of these `(module name, PTX text)` pairs (build.rs's `KERNEL_MODULES`).
    pub fn new(modules: &[(&'static str, &'static str)], options: SimOptions) -> Simulator {
        Simulator {
            options,
            modules: modules.iter().map(|&(name, ptx)| ModuleSlot { name, ptx, parsed: OnceLock::new() }).collect(),
            memory: DeviceMemory::new(),
            findings: Mutex::new(Vec::new()),
            profiles: Mutex::new(Vec::new()),
            launches: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// The PTX text of `module`, if the simulator has it.
    pub fn module_ptx(&self, module: &str) -> Option<&'static str> {
        self.modules.iter().find(|m| m.name == module).map(|m| m.ptx)
    }

    /// The module named `module` that has entry `kernel`: an sm_90a module shares its name with
    /// the portable one (kernels/NAME.cu and kernels/NAME.sm90a.cu), each has its own entries.
    fn module_with(&self, module: &str, kernel: &str) -> SimResult<&parse::Module> {
        let mut first = None;
        for slot in self.modules.iter().filter(|m| m.name == module) {
            let m = self.parsed(slot)?;
            if m.kernel(kernel).is_some() {
                return Ok(m);
            }
            first.get_or_insert(m);
        }
        first.ok_or_else(|| SimError::Launch { kernel: "*".into(), message: format!("no module `{module}`") })
    }

    /// A module slot parsed and lowered (on first use).
    fn parsed<'s>(&'s self, slot: &'s ModuleSlot) -> SimResult<&'s parse::Module> {
        let module = slot.name;
        slot.parsed
            .get_or_init(|| parse::parse_module(slot.name, slot.ptx).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| SimError::Ptx { module: module.into(), line: 0, message: e.clone() })
    }

    /// Every `.entry` of every module (parses each module once). A kernel that could not be
    /// lowered is listed too; launching it reports why.
    pub fn entries(&self) -> SimResult<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for slot in &self.modules {
            let m = self.parsed(slot)?;
            for (name, params, shared) in &m.entry_params {
                out.push(EntryInfo {
                    module: slot.name.to_string(),
                    name: name.clone(),
                    param_bytes: params.clone(),
                    static_shared_bytes: *shared,
                });
            }
        }
        Ok(out)
    }

    /// Errors of kernels that could not be lowered (an instruction the simulator does not
    /// know, an operand form it does not read), one line each.
    pub fn lowering_errors(&self) -> SimResult<Vec<String>> {
        let mut out = Vec::new();
        for slot in &self.modules {
            let m = self.parsed(slot)?;
            out.extend(m.kernels.iter().filter_map(|k| k.as_ref().err().map(|e| format!("{}: {e}", slot.name))));
        }
        Ok(out)
    }

    pub fn memory(&self) -> &DeviceMemory {
        &self.memory
    }

    pub fn alloc(&self, bytes: usize) -> SimResult<u64> {
        self.memory.alloc(bytes)
    }

    pub fn free(&self, addr: u64) -> SimResult<()> {
        self.memory.free(addr)
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> SimResult<()> {
        self.memory.write(addr, data)
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> SimResult<()> {
        self.memory.read(addr, out)
    }

    pub fn fill(&self, addr: u64, len: usize, byte: u8) -> SimResult<()> {
        self.memory.fill(addr, len, byte)
    }

    /// Runs kernel `kernel` of module `module` to completion.
    pub fn launch(
        &self,
        module: &str,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_shared_bytes: u32,
        args: &[SimArg],
    ) -> SimResult<()> {
        let launch_err = |message: String| SimError::Launch { kernel: kernel.into(), message };
        let m = self.module_with(module, kernel)?;
        let k = match m.kernel(kernel) {
            Some(Ok(k)) => k,
            Some(Err(e)) => return Err(launch_err(format!("kernels/{module}.cu: {e}"))),
            None => return Err(launch_err(format!("module `{module}` has no entry `{kernel}`"))),
        };
        if args.len() != k.params.len() {
            return Err(launch_err(format!("{} arguments for {} parameters", args.len(), k.params.len())));
        }
        let mut params = vec![0u8; k.params.iter().map(|&(b, o)| (b + o) as usize).max().unwrap_or(0)];
        for (i, (a, &(bytes, off))) in args.iter().zip(&k.params).enumerate() {
            if a.size() != bytes {
                return Err(launch_err(format!("argument {i} is {} bytes, the parameter {bytes}", a.size())));
            }
            let off = off as usize;
            match *a {
                SimArg::B32(v) => params[off..off + 4].copy_from_slice(&v.to_le_bytes()),
                SimArg::B64(v) => params[off..off + 8].copy_from_slice(&v.to_le_bytes()),
            }
        }
        let threads = block[0] as u64 * block[1] as u64 * block[2] as u64;
        if threads == 0 || threads > 1024 || grid.contains(&0) {
            return Err(launch_err(format!("grid {grid:?} block {block:?}: empty or more than 1024 threads a block")));
        }
        if let Some(max) = k.maxntid {
            if threads > max[0] as u64 * max[1] as u64 * max[2] as u64 {
                return Err(launch_err(format!("block {block:?} exceeds the kernel's .maxntid {max:?}")));
            }
        }
        let shared = k.dynamic_shared_offset + dynamic_shared_bytes;
        let max_shared = self.options.arch.max_shared_bytes();
        if shared > max_shared {
            return Err(launch_err(format!("{shared} bytes of shared memory, the limit is {max_shared}")));
        }
        let table = self.memory.table();
        let result = exec::run(&exec::Launch {
            module,
            kernel: k,
            grid,
            block,
            dynamic_shared_bytes,
            params,
            table: &table,
            sanitize: self.options.sanitize,
            profile: self.options.profile,
        });
        drop(table);
        *self
            .launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((module.to_string(), kernel.to_string()))
            .or_default() += 1;
        // Findings are kept even when the launch faulted (the next take_findings has them).
        if !result.findings.is_empty() {
            self.findings.lock().unwrap_or_else(|e| e.into_inner()).extend(result.findings);
        }
        if let Some(p) = result.outcome? {
            self.profiles.lock().unwrap_or_else(|e| e.into_inner()).push(p);
        }
        Ok(())
    }

    /// The sanitizer's findings since the last call.
    pub fn take_findings(&self) -> Vec<Finding> {
        std::mem::take(&mut *self.findings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The profiles of the launches since the last call (empty unless `options.profile`).
    pub fn take_profiles(&self) -> Vec<LaunchProfile> {
        std::mem::take(&mut *self.profiles.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many times each (module, kernel) has been launched.
    pub fn launch_counts(&self) -> BTreeMap<(String, String), u64> {
        self.launches.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
