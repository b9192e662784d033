//! What a kernel asks of an SM, and what its counts allow: ptxas's registers and shared memory
//! per entry point (sm_80, sm_90), the theoretical occupancy they give, and a lower bound of a
//! launch's time on a named GPU from the simulator's counts. A bound from counts is never a
//! measured time, and every figure here says so.
//!
//! ptxas comes with nvcc (scripts/install-nvcc.sh); it is looked up beside `$NVCC`, in
//! `$CUDA_HOME/bin`, on PATH, and in the install script's default folder. Its answers are cached
//! per (PTX text, arch, entry) under the labelfree cache folder, because the largest modules take
//! a minute to assemble.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::device::sim::LaunchProfile;
use crate::error::{Error, Result};

/// ptxas's report for one entry point on one architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelResources {
    pub arch: String,
    pub registers: u32,
    /// Static shared memory (bytes); dynamic shared memory comes with each launch.
    pub static_shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// The per-SM limits that decide occupancy (CUDA occupancy calculator rules).
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    pub arch: &'static str,
    pub registers: u32,
    /// Registers are allocated per warp in units of this many.
    pub register_unit: u32,
    pub max_registers_per_thread: u32,
    pub max_threads: u32,
    pub max_blocks: u32,
    /// Shared memory an SM can give to blocks, and what each block reserves for the system.
    pub shared_bytes: u32,
    pub reserved_shared_per_block: u32,
}

/// A100 (sm_80): 64K registers, 2048 threads, 32 blocks, 164 KB shared memory per SM.
pub const SM80: SmLimits = SmLimits {
    arch: "sm_80",
    registers: 65536,
    register_unit: 256,
    max_registers_per_thread: 255,
    max_threads: 2048,
    max_blocks: 32,
    shared_bytes: 164 * 1024,
    reserved_shared_per_block: 1024,
};

/// H100 (sm_90): as sm_80 with 228 KB of shared memory per SM.
pub const SM90: SmLimits = SmLimits { arch: "sm_90", shared_bytes: 228 * 1024, ..SM80 };

/// Theoretical occupancy of one launch shape on one SM kind.
#[derive(Clone, Debug, Serialize)]
pub struct Occupancy {
    pub arch: &'static str,
    pub blocks_per_sm: u32,
    /// Resident warps / the SM's maximum (64).
    pub occupancy: f64,
    /// What bounds it: `registers`, `shared memory`, `threads` or `blocks`.
    pub limited_by: &'static str,
}

/// Blocks of `threads` threads using `registers` per thread and `shared_bytes` (static +
/// dynamic) per block, on an SM with `lim`.
pub fn occupancy(lim: &SmLimits, threads: u32, registers: u32, shared_bytes: u32) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (registers.max(1) * 32).div_ceil(lim.register_unit) * lim.register_unit;
    let by_regs = if registers > lim.max_registers_per_thread { 0 } else { lim.registers / regs_per_warp / warps };
    let smem = shared_bytes + lim.reserved_shared_per_block;
    let by_smem = lim.shared_bytes / smem;
    let by_threads = lim.max_threads / (warps * 32);
    let limits =
        [(by_regs, "registers"), (by_smem, "shared memory"), (by_threads, "threads"), (lim.max_blocks, "blocks")];
    let (blocks, limited_by) = limits.iter().copied().min_by_key(|&(b, _)| b).unwrap_or((0, "threads"));
    Occupancy {
        arch: lim.arch,
        blocks_per_sm: blocks,
        occupancy: (blocks * warps) as f64 / (lim.max_threads / 32) as f64,
        limited_by,
    }
}

/// Peak rates of a named GPU, for lower bounds of time from counts.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GpuPeaks {
    pub name: &'static str,
    /// Dense bf16/f16 tensor-core FLOP/s.
    pub tensor_flops: f64,
    /// f32 FMA FLOP/s (CUDA cores).
    pub fma_flops: f64,
    /// DRAM bytes/s.
    pub dram_bytes: f64,
}

/// H100 SXM5 datasheet peaks: 989 dense bf16 tensor TFLOP/s, 67 f32 TFLOP/s, 3.35 TB/s HBM3.
pub const H100_SXM: GpuPeaks =
    GpuPeaks { name: "H100 SXM", tensor_flops: 989.4e12, fma_flops: 66.9e12, dram_bytes: 3.35e12 };

/// FLOPs of one warp-level mma.sync m16n8k16.
pub const MMA_M16N8K16_FLOPS: u64 = 2 * 16 * 8 * 16;

/// A lower bound of one launch's time on `gpu`: its tensor-core FLOPs (mma.sync and wgmma, as the
/// simulator counts them) at the tensor peak plus
/// its other FLOPs at the FMA peak, or its compulsory DRAM bytes at the memory peak, whichever
/// is longer. Counts from the simulator; the real time is longer (latency, occupancy, L2).
#[derive(Clone, Debug, Serialize)]
pub struct TimeBound {
    pub gpu: &'static str,
    pub bound_us: f64,
    pub compute_us: f64,
    pub memory_us: f64,
    /// `compute` or `memory`.
    pub limited_by: &'static str,
    /// FLOPs per compulsory DRAM byte.
    pub arithmetic_intensity: f64,
    pub note: &'static str,
}

pub fn time_bound(p: &LaunchProfile, gpu: &GpuPeaks) -> TimeBound {
    let tensor = p.tensor_flops;
    let simt = p.flops.saturating_sub(tensor);
    let compute = tensor as f64 / gpu.tensor_flops + simt as f64 / gpu.fma_flops;
    let memory = p.global_unique_bytes as f64 / gpu.dram_bytes;
    TimeBound {
        gpu: gpu.name,
        bound_us: compute.max(memory) * 1e6,
        compute_us: compute * 1e6,
        memory_us: memory * 1e6,
        limited_by: if compute >= memory { "compute" } else { "memory" },
        arithmetic_intensity: p.flops as f64 / (p.global_unique_bytes.max(1) as f64),
        note: "a lower bound from counted FLOPs and bytes at datasheet peaks, not a measured time",
    }
}

/// Ratios that say how well a launch uses the memory system and the warps, from its counts.
#[derive(Clone, Debug, Serialize)]
pub struct Efficiencies {
    /// Requested bytes / (32 x sectors touched) of global loads (1.0 = fully coalesced).
    pub global_load_sector_efficiency: Option<f64>,
    pub global_store_sector_efficiency: Option<f64>,
    /// Shared-memory wavefronts per request (1.0 for 4-byte accesses without bank conflicts; a
    /// 16-byte access by a full warp needs 4 even without).
    pub shared_wavefronts_per_request: Option<f64>,
    /// Wavefronts lost to bank conflicts (needed minus conflict-free) per request: 0.0 = none.
    pub shared_bank_conflicts_per_request: Option<f64>,
    /// Mean active lanes per warp instruction (32 = no divergence).
    pub mean_active_lanes: Option<f64>,
}

pub fn efficiencies(p: &LaunchProfile) -> Efficiencies {
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    Efficiencies {
        global_load_sector_efficiency: ratio(p.global_load_bytes, 32 * p.global_load_sectors),
        global_store_sector_efficiency: ratio(p.global_store_bytes, 32 * p.global_store_sectors),
        shared_wavefronts_per_request: ratio(p.shared_wavefronts, p.shared_requests),
        shared_bank_conflicts_per_request: ratio(
            p.shared_wavefronts.saturating_sub(p.shared_ideal_wavefronts),
            p.shared_requests,
        ),
        mean_active_lanes: ratio(p.thread_instructions, p.warp_instructions),
    }
}

/// Where ptxas is, if anywhere.
pub fn find_ptxas() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    let mut candidates = Vec::new();
    if let Ok(nvcc) = std::env::var("NVCC") {
        if let Some(dir) = Path::new(&nvcc).parent() {
            candidates.push(dir.join("ptxas"));
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            candidates.push(Path::new(&home).join("bin").join("ptxas"));
        }
    }
    candidates.push(PathBuf::from("ptxas"));
    if let Some(home) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    {
        // scripts/install-nvcc.sh's default environment.
        candidates.push(home.join("labelfree/nvcc-13.0.2/lib/python3.11/site-packages/nvidia/cu13/bin/ptxas"));
    }
    candidates.into_iter().find(|p| works(p))
}

/// Parses ptxas -v output for `entry`.
fn parse_ptxas(log: &str, entry: &str, arch: &str) -> Option<KernelResources> {
    let mut found = false;
    let mut r = KernelResources {
        arch: arch.to_string(),
        registers: 0,
        static_shared_bytes: 0,
        stack_bytes: 0,
        spill_store_bytes: 0,
        spill_load_bytes: 0,
    };
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let i = line.find(what)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let mut in_entry = false;
    for line in log.lines() {
        if line.contains("Compiling entry function") || line.contains("Function properties for") {
            in_entry = line.contains(&format!("'{entry}'")) || line.trim_end().ends_with(&format!(" {entry}"));
            continue;
        }
        if !in_entry {
            continue;
        }
        if line.contains("bytes stack frame") {
            r.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            r.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            r.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            r.registers = number_before(line, "registers")?;
            r.static_shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            found = true;
        }
    }
    found.then_some(r)
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LABELFREE_CACHE") {
        return PathBuf::from(d).join("ptxas");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("labelfree/ptxas")
}

/// ptxas's registers and shared memory for `entry` of this PTX on `arch` (`sm_80`, `sm_90`),
/// from the cache or by running ptxas on that entry alone.
pub fn kernel_resources(ptxas: &Path, ptx: &str, entry: &str, arch: &str) -> Result<KernelResources> {
    let mut h = DefaultHasher::new();
    ptx.hash(&mut h);
    let key = format!("{:016x}-{arch}-{entry}.json", h.finish());
    let dir = cache_dir();
    let cached = dir.join(&key);
    if let Ok(text) = std::fs::read_to_string(&cached) {
        if let Ok(r) = serde_json::from_str::<KernelResources>(&text) {
            return Ok(r);
        }
    }
    let io = |path: &Path, source| Error::Io { path: path.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let ptx_path = dir.join(format!("{key}.ptx"));
    std::fs::write(&ptx_path, ptx).map_err(|e| io(&ptx_path, e))?;
    let cubin = dir.join(format!("{key}.cubin"));
    let out = Command::new(ptxas)
        .args(["-v", &format!("-arch={arch}"), "-e", entry])
        .arg(&ptx_path)
        .arg("-o")
        .arg(&cubin)
        .output()
        .map_err(|e| Error::Device(format!("running {}: {e}", ptxas.display())))?;
    let _ = std::fs::remove_file(&ptx_path);
    let _ = std::fs::remove_file(&cubin);
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(Error::Device(format!("ptxas -arch={arch} -e {entry}: {log}")));
    }
    let r = parse_ptxas(&log, entry, arch)
        .ok_or_else(|| Error::Device(format!("ptxas -arch={arch} -e {entry}: no register count in its report")))?;
    if let Ok(text) = serde_json::to_string(&r) {
        let _ = std::fs::write(&cached, text);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_follows_the_calculator() {
        // 256 threads, 32 registers, no shared memory: 8 blocks fill 64 warps.
        let o = occupancy(&SM80, 256, 32, 0);
        assert_eq!((o.blocks_per_sm, o.occupancy), (8, 1.0));
        // 128 registers per thread: 65536 / (128 * 32) = 16 warps = 2 blocks of 8 warps.
        let o = occupancy(&SM90, 256, 128, 0);
        assert_eq!((o.blocks_per_sm, o.limited_by), (2, "registers"));
        assert!((o.occupancy - 0.25).abs() < 1e-12);
        // 100 KB of shared memory: one block on sm_80 (164 KB), two on sm_90 (228 KB).
        assert_eq!(occupancy(&SM80, 128, 32, 100 * 1024).blocks_per_sm, 1);
        assert_eq!(occupancy(&SM90, 128, 32, 100 * 1024).blocks_per_sm, 2);
        assert_eq!(occupancy(&SM90, 128, 32, 100 * 1024).limited_by, "shared memory");
        // Registers round up to 256 per warp: 33 registers cost as 40.
        assert_eq!(occupancy(&SM80, 1024, 33, 0).blocks_per_sm, 1);
    }

    #[test]
    fn ptxas_report_is_parsed_per_entry() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'a' for 'sm_90'\n\
ptxas info    : Function properties for a\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 16 registers, used 1 barriers, 128 bytes smem, 392 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'b' for 'sm_90'\n\
ptxas info    : Function properties for b\n    8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n\
ptxas info    : Used 255 registers, used 1 barriers, 392 bytes cmem[0]\n";
        let a = parse_ptxas(log, "a", "sm_90").unwrap();
        assert_eq!((a.registers, a.static_shared_bytes, a.spill_store_bytes), (16, 128, 0));
        let b = parse_ptxas(log, "b", "sm_90").unwrap();
        assert_eq!((b.registers, b.static_shared_bytes, b.stack_bytes, b.spill_load_bytes), (255, 0, 8, 8));
        assert!(parse_ptxas(log, "c", "sm_90").is_none());
    }

    #[test]
    fn time_bound_takes_the_slower_of_compute_and_memory() {
        let mut p = LaunchProfile { flops: 2_000_000, global_unique_bytes: 3_350_000, ..Default::default() };
        let b = time_bound(&p, &H100_SXM);
        assert!((b.memory_us - 1.0).abs() < 1e-9);
        assert_eq!(b.limited_by, "memory");
        p.flops = 1_000_000 * MMA_M16N8K16_FLOPS;
        p.tensor_flops = p.flops;
        let b = time_bound(&p, &H100_SXM);
        assert_eq!(b.limited_by, "compute");
        assert!((b.compute_us - 1e6 * p.flops as f64 / H100_SXM.tensor_flops).abs() < 1e-6);
    }
}
