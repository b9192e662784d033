//! Runs one launch of a lowered kernel: CTAs in parallel on rayon threads; inside a CTA, warps
//! of 32 lanes with a PC per lane.
//!
//! Scheduling inside a warp: the lanes still running that sit at the smallest PC execute the
//! instruction there together (their mask is the warp's active mask). Since nvcc lays code out
//! so that a branch's join point follows both sides, the lanes that took the shorter side wait
//! at the join until the others arrive: they reconverge where an immediate post-dominator
//! stack would have reconverged them, and the per-warp counts of the profile are those of a
//! SIMT machine. A lane that reaches `bar.sync` waits; when every lane of the CTA waits or has
//! exited, the barrier releases. Warp collectives (`shfl.sync`, `mma.sync`, `ldmatrix.sync`)
//! execute once for the lanes at their PC and are an error when those are not the lanes the
//! instruction names (its member mask, or the whole warp for `.aligned`).
//!
//! cp.async: the global bytes are read when the instruction issues and land in shared memory
//! only at the `cp.async.wait_group` / `wait_all` that retires their group, as on hardware a
//! read of the destination before that wait sees the old bytes.
//!
//! The sanitizer (on by default) checks every shared access for bounds, alignment,
//! uninitialised reads and races between threads (same bytes, one a write, no barrier between,
//! and not ordered by a warp collective of their warp), and every global access for bounds and
//! alignment. Global-memory races between CTAs are not checked. Atomics (`atom`, `red`) of
//! different threads to the same shared bytes are not races with each other; an atomic and a
//! plain access of another thread with nothing ordering them are.
//!
//! Atomics: the lanes of one warp instruction apply theirs in ascending lane order; global
//! atomics use the host's atomic instructions, since CTAs run on several host threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::fp;
use super::hopper;
use super::memory::Table;
use super::mma;
use super::parse::{AtomOp, Cmp, Inst, Kernel, Op, Opnd, PrmtMode, Rnd, ShflMode, Space, Special, Ty};
use super::{Finding, FindingKind, LaunchProfile, SimError, SimResult};

/// Most findings kept per launch (the first of each kind and line always are).
const MAX_FINDINGS: usize = 64;

/// Everything one launch needs, shared by its CTAs.
pub struct Launch<'a> {
    pub module: &'a str,
    pub kernel: &'a Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
    pub params: Vec<u8>,
    pub table: &'a Table,
    pub sanitize: bool,
    pub profile: bool,
}

/// What a launch returns besides its effect on memory. The findings are kept when the launch
/// faults: what the sanitizer saw before the fault (the out-of-bounds or misaligned access that
/// is the fault, a race that led to it) is part of the report.
pub struct LaunchResult {
    pub findings: Vec<Finding>,
    /// The fault that stopped the launch, or its profile (`None` unless asked for).
    pub outcome: SimResult<Option<LaunchProfile>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lane {
    Running,
    AtBarrier,
    Exited,
    /// At a warpgroup collective (wgmma), waiting for the other warps of its warpgroup; the
    /// PC stays at the instruction.
    Parked,
    /// Polled an mbarrier whose phase has not completed: runs `try_wait` again once other
    /// warps have run (the PC stays at the instruction).
    Yielded,
}

/// One mbarrier object (its state lives beside shared memory, keyed by its address).
#[derive(Clone, Copy, Debug)]
struct Mbarrier {
    expected: u32,
    pending: u32,
    /// Transaction bytes still to come in the current phase (negative: completed before they
    /// were expected).
    tx: i64,
    /// Completed phases.
    phase: u32,
}

/// A wgmma.mma_async issued and not yet retired by wait_group.
struct PendingWgmma<'a> {
    inst: &'a Inst,
    n: u16,
    input: Ty,
    a: hopper::MatrixDescriptor,
    b: hopper::MatrixDescriptor,
    /// scale-d: accumulate into D (true) or overwrite it (false); per warp of the group.
    scale_d: [bool; 4],
    neg_a: bool,
    neg_b: bool,
}

#[derive(Default)]
struct WarpgroupState<'a> {
    open: Vec<PendingWgmma<'a>>,
    committed: std::collections::VecDeque<Vec<PendingWgmma<'a>>>,
}

/// A cp.async copy waiting for its group to retire.
struct PendingCopy {
    shared_addr: u32,
    len: u8,
    data: [u8; 16],
}

#[derive(Default)]
struct AsyncState {
    committed: std::collections::VecDeque<Vec<PendingCopy>>,
    open: Vec<PendingCopy>,
}

/// Shadow of one shared byte for the sanitizer.
#[derive(Clone, Copy, Default)]
struct Shadow {
    /// Last writer (thread index + 1; 0: never written in this launch), its barrier epoch and
    /// its warp's collective count at the time.
    w_tid: u32,
    w_epoch: u32,
    w_sync: u32,
    /// The last write was an atomic: another atomic to these bytes is not a race with it.
    w_atomic: bool,
    /// Last reader (thread index + 1, 0: none) with the same.
    r_tid: u32,
    r_epoch: u32,
    r_sync: u32,
}

struct Warp {
    /// (reg, lane) → bits; index `reg * 32 + lane`.
    regs: Vec<u64>,
    pc: [u32; 32],
    lane: [Lane; 32],
    /// Lanes that exist (the last warp of a block may be partial).
    exists: u32,
    async_state: Vec<AsyncState>,
    /// Warp collectives executed so far (orders accesses of lanes of this warp).
    sync_count: u32,
}

/// Per-CTA counters (summed into the launch profile).
#[derive(Default)]
struct Counts {
    warp_instructions: u64,
    thread_instructions: u64,
    by_class: BTreeMap<&'static str, u64>,
    flops: u64,
    tensor_flops: u64,
    global_load_bytes: u64,
    global_store_bytes: u64,
    global_load_sectors: u64,
    global_store_sectors: u64,
    global_load_requests: u64,
    global_store_requests: u64,
    shared_requests: u64,
    shared_wavefronts: u64,
    shared_ideal_wavefronts: u64,
    barriers: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.warp_instructions += o.warp_instructions;
        self.thread_instructions += o.thread_instructions;
        for (k, v) in &o.by_class {
            *self.by_class.entry(k).or_default() += v;
        }
        self.flops += o.flops;
        self.tensor_flops += o.tensor_flops;
        self.global_load_bytes += o.global_load_bytes;
        self.global_store_bytes += o.global_store_bytes;
        self.global_load_sectors += o.global_load_sectors;
        self.global_store_sectors += o.global_store_sectors;
        self.global_load_requests += o.global_load_requests;
        self.global_store_requests += o.global_store_requests;
        self.shared_requests += o.shared_requests;
        self.shared_wavefronts += o.shared_wavefronts;
        self.shared_ideal_wavefronts += o.shared_ideal_wavefronts;
        self.barriers += o.barriers;
    }
}

/// Distinct global sectors touched by a launch: one bit per 32 bytes of each allocation.
struct SectorSet {
    bases: Vec<(u64, u64)>,
    bits: Vec<Vec<AtomicU64>>,
}

impl SectorSet {
    fn new(table: &Table) -> SectorSet {
        let bases: Vec<(u64, u64)> = table.allocations().iter().map(|a| (a.base, a.size as u64)).collect();
        let bits =
            bases.iter().map(|&(_, size)| (0..size.div_ceil(32 * 64)).map(|_| AtomicU64::new(0)).collect()).collect();
        SectorSet { bases, bits }
    }

    fn mark(&self, addr: u64) {
        let i = self.bases.partition_point(|&(b, _)| b <= addr);
        let Some(i) = i.checked_sub(1) else { return };
        let (base, size) = self.bases[i];
        if addr >= base + size {
            return;
        }
        let s = (addr - base) / 32;
        self.bits[i][(s / 64) as usize].fetch_or(1 << (s % 64), Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.bits.iter().flatten().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum()
    }
}

struct Cta<'a> {
    l: &'a Launch<'a>,
    ctaid: [u32; 3],
    warps: Vec<Warp>,
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    epoch: u32,
    findings: Vec<Finding>,
    counts: Counts,
    sectors: Option<&'a SectorSet>,
    mbarriers: std::collections::HashMap<u32, Mbarrier>,
    warpgroups: Vec<WarpgroupState<'a>>,
    /// Instructions executed, failed mbarrier polls excepted (deadlock detection).
    progress: u64,
}

fn fault(l: &Launch, ctaid: [u32; 3], tid: u32, inst: &Inst, message: impl Into<String>) -> SimError {
    SimError::Fault {
        kernel: l.kernel.name.clone(),
        cta: ctaid,
        thread: thread_xyz(l.block, tid),
        ptx_line: inst.line,
        source_loc: source_loc(l.kernel, inst),
        message: message.into(),
    }
}

fn thread_xyz(block: [u32; 3], tid: u32) -> [u32; 3] {
    [tid % block[0], (tid / block[0]) % block[1], tid / (block[0] * block[1])]
}

fn source_loc(k: &Kernel, inst: &Inst) -> Option<String> {
    k.locs.get(inst.loc as usize).cloned()
}

/// Runs the launch to completion.
pub fn run(l: &Launch) -> LaunchResult {
    let [gx, gy, gz] = l.grid;
    let ncta = gx as u64 * gy as u64 * gz as u64;
    let sectors = l.profile.then(|| SectorSet::new(l.table));
    let findings = Mutex::new(Vec::new());
    let counts = Mutex::new(Counts::default());
    let ran = (0..ncta).into_par_iter().try_for_each(|i| -> SimResult<()> {
        let ctaid =
            [(i % gx as u64) as u32, ((i / gx as u64) % gy as u64) as u32, (i / (gx as u64 * gy as u64)) as u32];
        let mut cta = Cta::new(l, ctaid, sectors.as_ref());
        // A faulting CTA's findings are collected before its fault is returned.
        let cta_ran = cta.run();
        if !cta.findings.is_empty() {
            let mut f = findings.lock().unwrap_or_else(|e| e.into_inner());
            for x in cta.findings.drain(..) {
                if f.len() < MAX_FINDINGS && !f.iter().any(|y: &Finding| y.kind == x.kind && y.ptx_line == x.ptx_line) {
                    f.push(x);
                }
            }
        }
        cta_ran?;
        if l.profile {
            counts.lock().unwrap_or_else(|e| e.into_inner()).add(&cta.counts);
        }
        Ok(())
    });
    let findings = findings.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Err(fault) = ran {
        return LaunchResult { findings, outcome: Err(fault) };
    }
    let profile = l.profile.then(|| {
        let c = counts.into_inner().unwrap_or_else(|e| e.into_inner());
        LaunchProfile {
            module: l.module.to_string(),
            kernel: l.kernel.name.clone(),
            grid: l.grid,
            block: l.block,
            dynamic_shared_bytes: l.dynamic_shared_bytes,
            warp_instructions: c.warp_instructions,
            thread_instructions: c.thread_instructions,
            by_class: c.by_class.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            flops: c.flops,
            tensor_flops: c.tensor_flops,
            global_load_bytes: c.global_load_bytes,
            global_store_bytes: c.global_store_bytes,
            global_load_sectors: c.global_load_sectors,
            global_store_sectors: c.global_store_sectors,
            global_load_requests: c.global_load_requests,
            global_store_requests: c.global_store_requests,
            shared_requests: c.shared_requests,
            shared_wavefronts: c.shared_wavefronts,
            shared_ideal_wavefronts: c.shared_ideal_wavefronts,
            barriers: c.barriers,
            global_unique_bytes: sectors.as_ref().map_or(0, |s| s.count() * 32),
        }
    });
    LaunchResult { findings, outcome: Ok(profile) }
}

#[inline]
fn mask_bits(v: u64, ty: Ty) -> u64 {
    match ty.bytes() {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// Sign-extends the low `ty.bytes()` bytes.
#[inline]
fn sext(v: u64, ty: Ty) -> i64 {
    match ty.bytes() {
        1 => v as u8 as i8 as i64,
        2 => v as u16 as i16 as i64,
        4 => v as u32 as i32 as i64,
        _ => v as i64,
    }
}

#[inline]
fn f32v(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline]
fn f64v(v: u64) -> f64 {
    f64::from_bits(v)
}

#[inline]
fn ftz32(x: f32, on: bool) -> f32 {
    if on {
        fp::ftz(x)
    } else {
        x
    }
}

fn rnd_of(r: Option<Rnd>) -> fp::Round {
    match r {
        None | Some(Rnd::Rn) => fp::Round::Rn,
        Some(Rnd::Rz) => fp::Round::Rz,
        Some(Rnd::Rm) => fp::Round::Rm,
        Some(Rnd::Rp) => fp::Round::Rp,
    }
}

fn cmp_of(c: Cmp) -> fp::CmpOp {
    match c {
        Cmp::Eq => fp::CmpOp::Eq,
        Cmp::Ne => fp::CmpOp::Ne,
        Cmp::Lt | Cmp::Lo => fp::CmpOp::Lt,
        Cmp::Le | Cmp::Ls => fp::CmpOp::Le,
        Cmp::Gt | Cmp::Hi => fp::CmpOp::Gt,
        Cmp::Ge | Cmp::Hs => fp::CmpOp::Ge,
        Cmp::Equ => fp::CmpOp::Equ,
        Cmp::Neu => fp::CmpOp::Neu,
        Cmp::Ltu => fp::CmpOp::Ltu,
        Cmp::Leu => fp::CmpOp::Leu,
        Cmp::Gtu => fp::CmpOp::Gtu,
        Cmp::Geu => fp::CmpOp::Geu,
        Cmp::Num => fp::CmpOp::Num,
        Cmp::Nan => fp::CmpOp::Nan,
    }
}

/// The profile class of an instruction.
fn class_of(inst: &Inst) -> &'static str {
    match &inst.op {
        Op::Ld { space: Space::Global, .. } => "ld_global",
        Op::St { space: Space::Global, .. } => "st_global",
        Op::Ld { space: Space::Shared, .. } => "ld_shared",
        Op::St { space: Space::Shared, .. } => "st_shared",
        Op::Ld { space: Space::Param, .. } => "ld_param",
        Op::St { .. } => "st_other",
        Op::Atom { space: Space::Global, .. } => "atom_global",
        Op::Atom { .. } => "atom_shared",
        Op::CpAsync { .. } | Op::CpAsyncCommit | Op::CpAsyncWait { .. } => "cp_async",
        Op::Ldmatrix { .. } => "ldmatrix",
        Op::Mma { .. } => "mma",
        Op::Wgmma { .. } | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait => "wgmma",
        Op::MbarInit | Op::MbarArrive { .. } | Op::MbarTryWait => "mbarrier",
        Op::TmaLoad2d => "tma",
        Op::Nop => "special",
        Op::Shfl(_) => "shfl",
        Op::BarSync => "bar",
        Op::Bra | Op::Ret => "branch",
        Op::Mov | Op::Cvta | Op::Selp => "mov",
        Op::Cvt { .. } => "cvt",
        Op::Setp(_) => {
            if inst.ty == Ty::F32 || inst.ty == Ty::F64 {
                "fp_compare"
            } else {
                "int"
            }
        }
        Op::Ex2 | Op::Lg2 | Op::Rsqrt | Op::Rcp | Op::Sqrt if inst.ty == Ty::F32 => "special",
        _ => match inst.ty {
            Ty::F32 | Ty::F16 | Ty::Bf16 | Ty::F16x2 | Ty::Bf16x2 => "fp32",
            Ty::F64 => "fp64",
            _ => "int",
        },
    }
}

/// FLOPs per active lane.
fn flops_of(inst: &Inst) -> u64 {
    if !inst.ty.is_float() {
        return 0;
    }
    match inst.op {
        Op::Fma | Op::MadLo => 2,
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Sqrt
        | Op::Rcp
        | Op::Rsqrt
        | Op::Ex2
        | Op::Lg2
        | Op::Min
        | Op::Max => 1,
        _ => 0,
    }
}

thread_local! {
    /// Register files of finished CTAs, reused by the next CTA on the same thread: for small
    /// kernels, fresh zeroed pages per CTA cost more (page faults) than running the CTA.
    static REGISTER_FILES: std::cell::RefCell<Vec<Vec<u64>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Register files kept per thread, and the largest one kept (in registers of 8 bytes).
const KEPT_REGISTER_FILES: usize = 64;
const KEPT_REGISTER_FILE_LEN: usize = 1 << 20;

/// A zeroed register file of `len` slots, reusing a finished CTA's allocation when there is one.
fn register_file(len: usize) -> Vec<u64> {
    let mut regs = REGISTER_FILES.with(|pool| pool.borrow_mut().pop()).unwrap_or_default();
    regs.clear();
    regs.resize(len, 0);
    regs
}

impl Drop for Cta<'_> {
    fn drop(&mut self) {
        REGISTER_FILES.with(|pool| {
            let mut pool = pool.borrow_mut();
            for w in &mut self.warps {
                if pool.len() < KEPT_REGISTER_FILES && w.regs.capacity() <= KEPT_REGISTER_FILE_LEN {
                    pool.push(std::mem::take(&mut w.regs));
                }
            }
        });
    }
}

impl<'a> Cta<'a> {
    fn new(l: &'a Launch<'a>, ctaid: [u32; 3], sectors: Option<&'a SectorSet>) -> Cta<'a> {
        let nthreads = l.block[0] * l.block[1] * l.block[2];
        let nwarps = nthreads.div_ceil(32);
        let nregs = l.kernel.nregs as usize;
        let warps = (0..nwarps)
            .map(|w| {
                let n = (nthreads - w * 32).min(32);
                let exists = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                let mut lane = [Lane::Exited; 32];
                for (i, s) in lane.iter_mut().enumerate() {
                    if exists >> i & 1 == 1 {
                        *s = Lane::Running;
                    }
                }
                Warp {
                    regs: register_file(nregs * 32),
                    pc: [0; 32],
                    lane,
                    exists,
                    async_state: (0..32).map(|_| AsyncState::default()).collect(),
                    sync_count: 0,
                }
            })
            .collect();
        let shared_bytes = (l.kernel.dynamic_shared_offset + l.dynamic_shared_bytes).max(l.kernel.static_shared_bytes);
        Cta {
            l,
            ctaid,
            warps,
            shared: vec![0; shared_bytes as usize],
            shadow: if l.sanitize { vec![Shadow::default(); shared_bytes as usize] } else { Vec::new() },
            epoch: 1,
            findings: Vec::new(),
            counts: Counts::default(),
            sectors,
            mbarriers: std::collections::HashMap::new(),
            warpgroups: (0..nwarps.div_ceil(4)).map(|_| WarpgroupState::default()).collect(),
            progress: 0,
        }
    }

    fn run(&mut self) -> SimResult<()> {
        loop {
            let progress_before = self.progress;
            for w in 0..self.warps.len() {
                self.run_warp(w)?;
            }
            let count = |state: Lane, warps: &[Warp]| -> usize {
                warps.iter().map(|w| w.lane.iter().filter(|&&l| l == state).count()).sum()
            };
            // A warpgroup collective released warps that already had their turn in this pass.
            if count(Lane::Running, &self.warps) > 0 {
                continue;
            }
            if count(Lane::Yielded, &self.warps) > 0 {
                if self.progress == progress_before {
                    return Err(self.stuck(Lane::Yielded, |_, _| {
                        "deadlock: waits on an mbarrier phase that nothing left running can complete".to_string()
                    }));
                }
                for warp in &mut self.warps {
                    for l in warp.lane.iter_mut() {
                        if *l == Lane::Yielded {
                            *l = Lane::Running;
                        }
                    }
                }
                continue;
            }
            if count(Lane::Parked, &self.warps) > 0 {
                return Err(self.stuck(Lane::Parked, |w, inst| {
                    format!(
                        "warpgroup collective `{}`: warp {w} waits for the other warps of warpgroup {} (threads {}..{}), which never reach it",
                        inst.text,
                        w / 4,
                        w / 4 * 128,
                        w / 4 * 128 + 128
                    )
                }));
            }
            let mut waiting = 0usize;
            let mut exited_early = false;
            let mut barrier_pcs = std::collections::BTreeSet::new();
            for w in &self.warps {
                for lane in 0..32 {
                    match w.lane[lane] {
                        Lane::AtBarrier => {
                            waiting += 1;
                            barrier_pcs.insert(w.pc[lane]);
                        }
                        Lane::Exited if w.exists >> lane & 1 == 1 => exited_early = true,
                        _ => {}
                    }
                }
            }
            if waiting == 0 {
                if let Some(g) = self.warpgroups.iter().position(|g| !g.open.is_empty() || !g.committed.is_empty()) {
                    let st = &self.warpgroups[g];
                    let inst = st.open.first().or(st.committed.iter().flatten().next()).map(|p| p.inst);
                    if let Some(inst) = inst {
                        return Err(fault(
                            self.l,
                            self.ctaid,
                            (g * 128) as u32,
                            inst,
                            "wgmma.mma_async never retired by wgmma.wait_group before the warpgroup exited",
                        ));
                    }
                }
                return Ok(());
            }
            if self.l.sanitize && (exited_early || barrier_pcs.len() > 1) {
                let (w, lane) = self.first_waiting();
                let pc = self.warps[w].pc[lane].saturating_sub(1);
                let inst = &self.l.kernel.insts[pc as usize];
                let msg = if barrier_pcs.len() > 1 {
                    format!("threads of one CTA wait at {} different barriers", barrier_pcs.len())
                } else {
                    "threads wait at a barrier that other threads of the CTA exited without reaching".to_string()
                };
                self.finding(FindingKind::BarrierDeadlock, (w * 32 + lane) as u32, inst, msg);
            }
            self.epoch += 1;
            for w in &mut self.warps {
                for lane in 0..32 {
                    if w.lane[lane] == Lane::AtBarrier {
                        w.lane[lane] = Lane::Running;
                    }
                }
            }
        }
    }

    fn first_waiting(&self) -> (usize, usize) {
        self.first_in(Lane::AtBarrier)
    }

    /// The fault of a CTA that cannot go on: at the first lane in `state`, with `message(warp,
    /// instruction)`.
    fn stuck(&self, state: Lane, message: impl Fn(usize, &Inst) -> String) -> SimError {
        let (w, lane) = self.first_in(state);
        let inst = &self.l.kernel.insts[self.warps[w].pc[lane] as usize];
        fault(self.l, self.ctaid, (w * 32 + lane) as u32, inst, message(w, inst))
    }

    fn first_in(&self, state: Lane) -> (usize, usize) {
        for (wi, w) in self.warps.iter().enumerate() {
            for lane in 0..32 {
                if w.lane[lane] == state {
                    return (wi, lane);
                }
            }
        }
        (0, 0)
    }

    fn finding(&mut self, kind: FindingKind, tid: u32, inst: &Inst, message: String) {
        if self.findings.iter().any(|f| f.kind == kind && f.ptx_line == inst.line)
            || self.findings.len() >= MAX_FINDINGS
        {
            return;
        }
        self.findings.push(Finding {
            kind,
            module: self.l.module.to_string(),
            kernel: self.l.kernel.name.clone(),
            cta: self.ctaid,
            thread: thread_xyz(self.l.block, tid),
            ptx_line: inst.line,
            source_loc: source_loc(self.l.kernel, inst),
            message,
        });
    }

    /// Runs warp `w` until every lane waits at a barrier or has exited.
    fn run_warp(&mut self, w: usize) -> SimResult<()> {
        let launch: &'a Launch<'a> = self.l;
        let insts = &launch.kernel.insts;
        loop {
            let warp = &self.warps[w];
            let mut min_pc = u32::MAX;
            let mut mask = 0u32;
            for lane in 0..32 {
                if warp.lane[lane] == Lane::Running {
                    let pc = warp.pc[lane];
                    if pc < min_pc {
                        min_pc = pc;
                        mask = 1 << lane;
                    } else if pc == min_pc {
                        mask |= 1 << lane;
                    }
                }
            }
            if min_pc == u32::MAX {
                return Ok(());
            }
            let Some(inst) = insts.get(min_pc as usize) else {
                let lane = mask.trailing_zeros();
                let last = &insts[insts.len() - 1];
                return Err(fault(self.l, self.ctaid, w as u32 * 32 + lane, last, "ran past the end of the kernel"));
            };
            self.step(w, inst, min_pc, mask)?;
        }
    }

    #[inline(always)]
    fn read(&self, w: usize, o: &Opnd, lane: usize) -> u64 {
        match o {
            Opnd::Reg(r) => self.warps[w].regs[*r as usize * 32 + lane],
            Opnd::Imm(v) => *v,
            Opnd::Special(s) => self.special(*s, w, lane) as u64,
            Opnd::Pred { reg, neg } => (self.warps[w].regs[*reg as usize * 32 + lane] & 1) ^ (*neg as u64),
            _ => 0,
        }
    }

    fn special(&self, s: Special, w: usize, lane: usize) -> u32 {
        let at = SpecialCtx { block: self.l.block, grid: self.l.grid, ctaid: self.ctaid, warp: w as u32 };
        special_of(s, &at, lane)
    }

    #[inline]
    fn write(&mut self, w: usize, o: &Opnd, lane: usize, v: u64) {
        if let Opnd::Reg(r) = o {
            self.warps[w].regs[*r as usize * 32 + lane] = v;
        }
    }

    fn addr(&self, w: usize, o: &Opnd, lane: usize) -> u64 {
        match o {
            Opnd::Addr { base, offset } => {
                let b = base.map_or(0, |r| self.warps[w].regs[r as usize * 32 + lane]);
                b.wrapping_add(*offset as u64)
            }
            _ => 0,
        }
    }

    /// Executes `inst` for the lanes in `mask` (all at `pc`).
    fn step(&mut self, w: usize, inst: &'a Inst, pc: u32, mask: u32) -> SimResult<()> {
        // Lanes whose guard is true.
        let mut active = mask;
        if let Some((p, neg)) = inst.guard {
            active = 0;
            for lane in lanes(mask) {
                let v = (self.warps[w].regs[p as usize * 32 + lane] & 1 == 1) != neg;
                if v {
                    active |= 1 << lane;
                }
            }
        }
        if self.l.profile {
            let c = &mut self.counts;
            c.warp_instructions += 1;
            c.thread_instructions += active.count_ones() as u64;
            *c.by_class.entry(class_of(inst)).or_default() += 1;
            c.flops += flops_of(inst) * active.count_ones() as u64;
            if matches!(inst.op, Op::Mma { .. }) {
                c.flops += 2 * 16 * 8 * 16;
                c.tensor_flops += 2 * 16 * 8 * 16;
            }
        }
        match &inst.op {
            Op::MbarTryWait => return self.exec_mbar_try_wait(w, inst, pc, mask, active),
            Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait | Op::Wgmma { .. } => {
                return self.warpgroup_step(w, inst, pc, mask, active)
            }
            _ => {}
        }
        self.progress += 1;
        // Control flow first.
        match &inst.op {
            Op::Bra => {
                let Some(Opnd::Target(t)) = inst.ops.first() else { unreachable!("lowering checks bra targets") };
                let warp = &mut self.warps[w];
                for lane in lanes(mask) {
                    warp.pc[lane] = if active >> lane & 1 == 1 { *t } else { pc + 1 };
                }
                return Ok(());
            }
            Op::Ret => {
                let warp = &mut self.warps[w];
                for lane in lanes(mask) {
                    if active >> lane & 1 == 1 {
                        warp.lane[lane] = Lane::Exited;
                    } else {
                        warp.pc[lane] = pc + 1;
                    }
                }
                return Ok(());
            }
            Op::BarSync => {
                if self.l.profile {
                    self.counts.barriers += 1;
                }
                let warp = &mut self.warps[w];
                for lane in lanes(mask) {
                    warp.pc[lane] = pc + 1;
                    if active >> lane & 1 == 1 {
                        warp.lane[lane] = Lane::AtBarrier;
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        if active != 0 {
            self.exec(w, inst, active, mask)?;
        }
        let warp = &mut self.warps[w];
        for lane in lanes(mask) {
            warp.pc[lane] = pc + 1;
        }
        Ok(())
    }

    fn exec(&mut self, w: usize, inst: &Inst, active: u32, mask: u32) -> SimResult<()> {
        let ty = inst.ty;
        let ops = &inst.ops;
        match &inst.op {
            Op::Mov => self.exec_mov(w, inst, active),
            Op::Cvta => {
                for lane in lanes(active) {
                    let v = self.read(w, &ops[1], lane);
                    self.write(w, &ops[0], lane, v);
                }
                Ok(())
            }
            Op::Ld { space, vec } => self.exec_ld(w, inst, *space, *vec as usize, active),
            Op::St { space, vec } => self.exec_st(w, inst, *space, *vec as usize, active),
            Op::Atom { space, op, ret } => self.exec_atom(w, inst, *space, *op, *ret, active),
            Op::Setp(c) => {
                let src: [Src; 2] = self.sources(w, inst, 1)?;
                self.map_lanes(w, active, &ops[0], src, |[a, b]| compare(*c, ty, a, b) as u64);
                Ok(())
            }
            Op::Selp => {
                let src: [Src; 3] = self.sources(w, inst, 1)?;
                self.map_lanes(w, active, &ops[0], src, |[a, b, p]| mask_bits(if p & 1 == 1 { a } else { b }, ty));
                Ok(())
            }
            Op::Cvt { from } if matches!(ty, Ty::Bf16x2 | Ty::F16x2) => {
                // cvt.rn.bf16x2.f32 d, a, b: a goes to the upper half (the operand-order trap).
                for lane in lanes(active) {
                    let a = f32v(self.read(w, &ops[1], lane));
                    let b = f32v(self.read(w, &ops[2], lane));
                    let v = if ty == Ty::Bf16x2 { fp::cvt_rn_bf16x2_f32(a, b) } else { fp::cvt_rn_f16x2_f32(a, b) };
                    self.write(w, &ops[0], lane, v as u64);
                }
                Ok(())
            }
            Op::Cvt { from } => {
                for lane in lanes(active) {
                    let a = self.read(w, &ops[1], lane);
                    let v = convert(inst, *from, ty, a)
                        .map_err(|m| fault(self.l, self.ctaid, (w * 32 + lane) as u32, inst, m))?;
                    self.write(w, &ops[0], lane, v);
                }
                Ok(())
            }
            Op::Shfl(mode) => self.exec_shfl(w, inst, *mode, active, mask),
            Op::Mma { input } => self.exec_mma(w, inst, *input, active),
            Op::Ldmatrix { num, trans } => self.exec_ldmatrix(w, inst, *num as usize, *trans, active),
            Op::CpAsync { bytes } => self.exec_cp_async(w, inst, *bytes, active),
            Op::CpAsyncCommit => {
                let warp = &mut self.warps[w];
                for lane in lanes(active) {
                    let st = &mut warp.async_state[lane];
                    let g = std::mem::take(&mut st.open);
                    st.committed.push_back(g);
                }
                Ok(())
            }
            Op::CpAsyncWait { all } => {
                let keep = if *all { 0 } else { self.read(w, &ops[0], 0) as usize };
                for lane in lanes(active) {
                    let mut done = Vec::new();
                    {
                        let st = &mut self.warps[w].async_state[lane];
                        while st.committed.len() > keep {
                            if let Some(g) = st.committed.pop_front() {
                                done.extend(g);
                            }
                        }
                        if *all {
                            done.append(&mut st.open);
                        }
                    }
                    let tid = (w * 32 + lane) as u32;
                    for c in done {
                        self.shared_access(w, tid, inst, c.shared_addr as u64, c.len as u32, true)?;
                        let at = c.shared_addr as usize;
                        self.shared[at..at + c.len as usize].copy_from_slice(&c.data[..c.len as usize]);
                    }
                }
                Ok(())
            }
            Op::MbarInit | Op::MbarArrive { .. } => self.exec_mbar(w, inst, active),
            Op::TmaLoad2d => self.exec_tma_load(w, inst, active),
            Op::Nop => Ok(()),
            Op::Bra | Op::Ret | Op::BarSync => unreachable!("handled in step"),
            Op::MbarTryWait | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait | Op::Wgmma { .. } => {
                unreachable!("handled in step")
            }
            _ => self.exec_alu(w, inst, active),
        }
    }

    fn exec_mov(&mut self, w: usize, inst: &Inst, active: u32) -> SimResult<()> {
        let ops = &inst.ops;
        let width = inst.ty.bytes() * 8;
        match (&ops[0], &ops[1]) {
            (Opnd::Vec(parts), src) => {
                // Unpack: {lo, hi} = src.
                let n = parts.len() as u32;
                let each = width / n;
                for lane in lanes(active) {
                    let v = self.read(w, src, lane);
                    for (i, p) in parts.iter().enumerate() {
                        let part = (v >> (each * i as u32)) & ((1u64 << each) - 1);
                        self.write(w, p, lane, part);
                    }
                }
            }
            (dst, Opnd::Vec(parts)) => {
                // Pack: dst = {lo, hi}.
                let n = parts.len() as u32;
                let each = width / n;
                for lane in lanes(active) {
                    let mut v = 0u64;
                    for (i, p) in parts.iter().enumerate() {
                        v |= (self.read(w, p, lane) & ((1u64 << each) - 1)) << (each * i as u32);
                    }
                    self.write(w, dst, lane, v);
                }
            }
            (dst, _) => {
                let src: [Src; 1] = self.sources(w, inst, 1)?;
                self.map_lanes(w, active, dst, src, |[a]| mask_bits(a, inst.ty));
            }
        }
        Ok(())
    }

    /// Operands resolved once per warp instruction, so the lane loop only indexes registers.
    fn sources<const N: usize>(&self, w: usize, inst: &Inst, first: usize) -> SimResult<[Src; N]> {
        let mut out = [Src::Imm(0); N];
        for (i, s) in out.iter_mut().enumerate() {
            *s = match inst.ops.get(first + i) {
                None => Src::Imm(0),
                Some(Opnd::Reg(r)) => Src::Reg(*r as usize * 32),
                Some(Opnd::Imm(v)) => Src::Imm(*v),
                Some(Opnd::Pred { reg, neg }) => Src::Pred(*reg as usize * 32, *neg as u64),
                Some(Opnd::Special(sp)) => Src::Special(*sp),
                Some(_) => {
                    let lane = self.warps[w].exists.trailing_zeros() as usize;
                    return Err(fault(self.l, self.ctaid, (w * 32 + lane) as u32, inst, "unexpected operand kind"));
                }
            };
        }
        Ok(out)
    }

    /// `regs[dst] = f(sources)` for the active lanes of warp `w`.
    #[inline(always)]
    fn map_lanes<const N: usize>(
        &mut self,
        w: usize,
        active: u32,
        dst: &Opnd,
        src: [Src; N],
        mut f: impl FnMut([u64; N]) -> u64,
    ) {
        let Opnd::Reg(d) = dst else { return };
        let d = *d as usize * 32;
        let at = SpecialCtx { block: self.l.block, grid: self.l.grid, ctaid: self.ctaid, warp: w as u32 };
        let regs = &mut self.warps[w].regs;
        for lane in lanes(active) {
            // Not `src.map(..)`: array::map does not inline here and costs more than the op.
            let mut vals = [0u64; N];
            for (v, s) in vals.iter_mut().zip(src) {
                *v = s.get(regs, lane, &at);
            }
            regs[d + lane] = f(vals);
        }
    }

    /// `fma.rn.f32` over the lanes compiled for a CPU with FMA: the fused multiply-add is then
    /// one instruction instead of a call to libm's `fmaf` per lane (about a tenth of the
    /// simulator's time on the SIMT GEMM). Same result: both round a·b + c once, to nearest.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn fma_lanes_hw(&mut self, w: usize, active: u32, dst: &Opnd, src: [Src; 4]) {
        let f = |v: u64| f32::from_bits(v as u32);
        self.map_lanes(w, active, dst, src, |[a, b, c, _]| fp::fma_rn_f32(f(a), f(b), f(c)).to_bits() as u64)
    }

    fn exec_alu(&mut self, w: usize, inst: &Inst, active: u32) -> SimResult<()> {
        let src: [Src; 4] = self.sources(w, inst, 1)?;
        let dst = &inst.ops[0];
        let ty = inst.ty;
        // Whether an instruction is implemented depends on its op and types, never on the values:
        // asking with zeros tells for every lane.
        let implemented = match ty {
            Ty::F32 => f32_op(inst, 0, 0, 0).is_some(),
            Ty::F64 => f64_op(inst, 0, 0, 0).is_some(),
            Ty::Pred => matches!(inst.op, Op::And | Op::Or | Op::Xor | Op::Not),
            _ if ty.is_float() => false,
            _ => int_op(inst, 0, 0, 0, 0).is_some(),
        };
        if !implemented {
            return Err(self.unsupported(w, active.trailing_zeros() as usize, inst));
        }
        match ty {
            // The common f32 forms (round to nearest, no ftz or saturation) skip f32_op's decoding.
            Ty::F32 if !inst.ftz && !inst.sat && rnd_of(inst.rnd) == fp::Round::Rn => {
                let f = |v: u64| f32::from_bits(v as u32);
                let rn = fp::Round::Rn;
                match inst.op {
                    Op::Add => {
                        self.map_lanes(w, active, dst, src, |[a, b, ..]| fp::add_f32(f(a), f(b), rn).to_bits() as u64)
                    }
                    Op::Sub => {
                        self.map_lanes(w, active, dst, src, |[a, b, ..]| fp::sub_f32(f(a), f(b), rn).to_bits() as u64)
                    }
                    Op::Mul => {
                        self.map_lanes(w, active, dst, src, |[a, b, ..]| fp::mul_f32(f(a), f(b), rn).to_bits() as u64)
                    }
                    Op::Fma | Op::MadLo => {
                        #[cfg(target_arch = "x86_64")]
                        if std::arch::is_x86_feature_detected!("fma") {
                            // SAFETY: the CPU has FMA (checked just above).
                            unsafe { self.fma_lanes_hw(w, active, dst, src) };
                            return Ok(());
                        }
                        self.map_lanes(w, active, dst, src, |[a, b, c, _]| {
                            fp::fma_f32(f(a), f(b), f(c), rn).to_bits() as u64
                        })
                    }
                    _ => self.map_lanes(w, active, dst, src, |[a, b, c, _]| {
                        f32_op(inst, a, b, c).map_or(0, |v| v.to_bits() as u64)
                    }),
                }
            }
            Ty::F32 => self
                .map_lanes(w, active, dst, src, |[a, b, c, _]| f32_op(inst, a, b, c).map_or(0, |v| v.to_bits() as u64)),
            Ty::F64 => {
                self.map_lanes(w, active, dst, src, |[a, b, c, _]| f64_op(inst, a, b, c).map_or(0, f64::to_bits))
            }
            Ty::Pred => self.map_lanes(w, active, dst, src, |[a, b, ..]| match inst.op {
                Op::And => a & b & 1,
                Op::Or => (a | b) & 1,
                Op::Xor => (a ^ b) & 1,
                _ => !a & 1,
            }),
            _ => self.map_lanes(w, active, dst, src, |[a, b, c, d]| int_op(inst, a, b, c, d).unwrap_or(0)),
        }
        Ok(())
    }

    fn unsupported(&self, w: usize, lane: usize, inst: &Inst) -> SimError {
        fault(
            self.l,
            self.ctaid,
            (w * 32 + lane) as u32,
            inst,
            format!("`{}` with these types is not implemented", inst.text),
        )
    }

    /// Checks one global access of `len` bytes and returns its host pointer.
    fn global_ptr(&self, w: usize, lane: usize, inst: &Inst, addr: u64, len: u32) -> SimResult<*mut u8> {
        let tid = (w * 32 + lane) as u32;
        if !addr.is_multiple_of(len as u64) {
            return Err(fault(
                self.l,
                self.ctaid,
                tid,
                inst,
                format!("misaligned {len}-byte global access at {addr:#x}"),
            ));
        }
        self.l.table.resolve(addr, len as usize).ok_or_else(|| {
            fault(
                self.l,
                self.ctaid,
                tid,
                inst,
                format!("global access of {len} bytes at {addr:#x} is outside every allocation"),
            )
        })
    }

    /// Bounds, alignment, race and initialisation checks of one shared access.
    fn shared_access(&mut self, w: usize, tid: u32, inst: &Inst, addr: u64, len: u32, is_write: bool) -> SimResult<()> {
        let access = if is_write { Access::Write } else { Access::Read };
        self.shared_check(w, tid, inst, addr, len, access)
    }

    /// `shared_access` for a read, a write or an atomic read-modify-write. Atomics of different
    /// threads to the same bytes are no race; an atomic and a plain access of another thread
    /// with no barrier (or collective) between them are, in either order, as the PTX memory
    /// model has it.
    fn shared_check(&mut self, w: usize, tid: u32, inst: &Inst, addr: u64, len: u32, access: Access) -> SimResult<()> {
        let size = self.shared.len() as u64;
        if addr + len as u64 > size {
            if self.l.sanitize {
                self.finding(
                    FindingKind::SharedOutOfBounds,
                    tid,
                    inst,
                    format!("{len} bytes at shared {addr:#x}, CTA has {size}"),
                );
            }
            return Err(fault(
                self.l,
                self.ctaid,
                tid,
                inst,
                format!("shared access of {len} bytes at {addr:#x} past the CTA's {size} bytes"),
            ));
        }
        if !addr.is_multiple_of(len.min(16) as u64) {
            if self.l.sanitize {
                self.finding(
                    FindingKind::MisalignedAccess,
                    tid,
                    inst,
                    format!("{len}-byte shared access at {addr:#x}"),
                );
            }
            return Err(fault(
                self.l,
                self.ctaid,
                tid,
                inst,
                format!("misaligned {len}-byte shared access at {addr:#x}"),
            ));
        }
        if !self.l.sanitize {
            return Ok(());
        }
        let me = tid + 1;
        let my_warp = tid / 32;
        let my_sync = self.warps[w].sync_count;
        let epoch = self.epoch;
        let mut problem: Option<(FindingKind, String)> = None;
        for i in addr..addr + len as u64 {
            let s = &mut self.shadow[i as usize];
            let ordered = |other: u32, other_epoch: u32, other_sync: u32| {
                other == me || other_epoch != epoch || ((other - 1) / 32 == my_warp && other_sync != my_sync)
            };
            if access == Access::Atomic {
                if s.w_tid == 0 {
                    if problem.is_none() {
                        problem = Some((
                            FindingKind::SharedUninitializedRead,
                            format!("atomic on shared {i:#x}, never written in this launch"),
                        ));
                    }
                } else if !s.w_atomic && !ordered(s.w_tid, s.w_epoch, s.w_sync) && problem.is_none() {
                    problem = Some((
                        FindingKind::SharedRace,
                        format!(
                            "atomic after a plain write by thread {} of shared {i:#x} without a barrier",
                            s.w_tid - 1
                        ),
                    ));
                }
                if s.r_tid != 0 && !ordered(s.r_tid, s.r_epoch, s.r_sync) && problem.is_none() {
                    problem = Some((
                        FindingKind::SharedRace,
                        format!(
                            "atomic after a plain read by thread {} of shared {i:#x} without a barrier",
                            s.r_tid - 1
                        ),
                    ));
                }
                // The atomic's read is not recorded as a reader: a later atomic of another
                // thread must not see it as a plain read.
                s.w_tid = me;
                s.w_epoch = epoch;
                s.w_sync = my_sync;
                s.w_atomic = true;
            } else if access == Access::Write {
                if s.w_tid != 0 && !ordered(s.w_tid, s.w_epoch, s.w_sync) && problem.is_none() {
                    problem = Some((
                        FindingKind::SharedRace,
                        format!("write-write race on shared {i:#x} with thread {}", s.w_tid - 1),
                    ));
                }
                if s.r_tid != 0 && !ordered(s.r_tid, s.r_epoch, s.r_sync) && problem.is_none() {
                    problem = Some((
                        FindingKind::SharedRace,
                        format!("write after read by thread {} of shared {i:#x} without a barrier", s.r_tid - 1),
                    ));
                }
                s.w_tid = me;
                s.w_epoch = epoch;
                s.w_sync = my_sync;
                s.w_atomic = false;
            } else {
                if s.w_tid == 0 {
                    if problem.is_none() {
                        problem = Some((
                            FindingKind::SharedUninitializedRead,
                            format!("read of shared {i:#x}, never written in this launch"),
                        ));
                    }
                } else if !ordered(s.w_tid, s.w_epoch, s.w_sync) && problem.is_none() {
                    problem = Some((
                        FindingKind::SharedRace,
                        format!("read after write by thread {} of shared {i:#x} without a barrier", s.w_tid - 1),
                    ));
                }
                s.r_tid = me;
                s.r_epoch = epoch;
                s.r_sync = my_sync;
            }
        }
        if let Some((k, m)) = problem {
            self.finding(k, tid, inst, m);
        }
        Ok(())
    }

    fn exec_ld(&mut self, w: usize, inst: &Inst, space: Space, vec: usize, active: u32) -> SimResult<()> {
        let ty = inst.ty;
        let eb = ty.bytes();
        let len = eb * vec as u32;
        let dsts: &[Opnd] = elements(&inst.ops[0]);
        let mut addrs = [0u64; 32];
        for lane in lanes(active) {
            let addr = self.addr(w, &inst.ops[1], lane);
            addrs[lane] = addr;
            let mut buf = [0u8; 32];
            match space {
                Space::Param => {
                    let a = addr as usize;
                    let Some(src) = self.l.params.get(a..a + len as usize) else {
                        return Err(fault(
                            self.l,
                            self.ctaid,
                            (w * 32 + lane) as u32,
                            inst,
                            format!("param read at {a} past the parameters"),
                        ));
                    };
                    buf[..len as usize].copy_from_slice(src);
                }
                Space::Global => {
                    let p = self.global_ptr(w, lane, inst, addr, len)?;
                    // SAFETY: resolve() checked [addr, addr+len) lies in one live allocation,
                    // and the launch holds the table's read lock.
                    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len as usize) };
                }
                Space::Shared => {
                    self.shared_access(w, (w * 32 + lane) as u32, inst, addr, len, false)?;
                    let a = addr as usize;
                    buf[..len as usize].copy_from_slice(&self.shared[a..a + len as usize]);
                }
            }
            for (i, d) in dsts.iter().enumerate() {
                let mut raw = [0u8; 8];
                raw[..eb as usize].copy_from_slice(&buf[i * eb as usize..(i + 1) * eb as usize]);
                let mut v = u64::from_le_bytes(raw);
                if ty.is_signed() {
                    v = sext(v, ty) as u64;
                }
                self.write(w, d, lane, v);
            }
        }
        self.count_mem(space, false, &addrs, active, len);
        Ok(())
    }

    fn exec_st(&mut self, w: usize, inst: &Inst, space: Space, vec: usize, active: u32) -> SimResult<()> {
        let ty = inst.ty;
        let eb = ty.bytes() as usize;
        let len = eb * vec;
        let srcs: &[Opnd] = elements(&inst.ops[1]);
        let mut addrs = [0u64; 32];
        for lane in lanes(active) {
            let addr = self.addr(w, &inst.ops[0], lane);
            addrs[lane] = addr;
            let mut buf = [0u8; 32];
            for (i, s) in srcs.iter().enumerate() {
                let v = self.read(w, s, lane);
                buf[i * eb..(i + 1) * eb].copy_from_slice(&v.to_le_bytes()[..eb]);
            }
            match space {
                Space::Global => {
                    let p = self.global_ptr(w, lane, inst, addr, len as u32)?;
                    // SAFETY: as in exec_ld.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, len) };
                }
                Space::Shared => {
                    self.shared_access(w, (w * 32 + lane) as u32, inst, addr, len as u32, true)?;
                    let a = addr as usize;
                    self.shared[a..a + len].copy_from_slice(&buf[..len]);
                }
                Space::Param => {
                    return Err(fault(self.l, self.ctaid, (w * 32 + lane) as u32, inst, "store to .param"));
                }
            }
        }
        self.count_mem(space, true, &addrs, active, len as u32);
        Ok(())
    }

    /// `atom` / `red`: the active lanes apply their operation one after another in ascending
    /// lane order, each reading what the lane before it wrote (so lanes on the same address
    /// see distinct old values, and an `atom` returns each lane its own). Shared memory belongs
    /// to this CTA alone, so a plain read-modify-write is atomic; global memory is shared with
    /// the CTAs running on other host threads, so it is updated with the host's atomics and
    /// the order between CTAs is whatever the host gives, as on hardware. The profile counts
    /// an atomic as a store request (its write is what reaches memory).
    fn exec_atom(&mut self, w: usize, inst: &Inst, space: Space, op: AtomOp, ret: bool, active: u32) -> SimResult<()> {
        let ty = inst.ty;
        let len = ty.bytes();
        let ops = &inst.ops;
        let at = ret as usize;
        let mut addrs = [0u64; 32];
        for lane in lanes(active) {
            let addr = self.addr(w, &ops[at], lane);
            addrs[lane] = addr;
            let b = mask_bits(self.read(w, &ops[at + 1], lane), ty);
            let c = ops.get(at + 2).map_or(0, |o| mask_bits(self.read(w, o, lane), ty));
            let update = |old: u64| atom_apply(op, ty, old, b, c);
            let old = match space {
                Space::Global => {
                    let p = self.global_ptr(w, lane, inst, addr, len)?;
                    // SAFETY: global_ptr checked that [addr, addr + len) lies in one live
                    // allocation (held by the launch's read lock) and that addr is a multiple
                    // of len; allocations are 256-byte aligned on the host too, so the host
                    // pointer is aligned for the atomic type.
                    unsafe { global_rmw(p, len, update) }
                }
                Space::Shared => {
                    self.shared_check(w, (w * 32 + lane) as u32, inst, addr, len, Access::Atomic)?;
                    let a = addr as usize;
                    let mut raw = [0u8; 8];
                    raw[..len as usize].copy_from_slice(&self.shared[a..a + len as usize]);
                    let old = u64::from_le_bytes(raw);
                    let new = update(old);
                    self.shared[a..a + len as usize].copy_from_slice(&new.to_le_bytes()[..len as usize]);
                    old
                }
                Space::Param => {
                    return Err(fault(self.l, self.ctaid, (w * 32 + lane) as u32, inst, "atomic on .param"));
                }
            };
            if ret {
                self.write(w, &ops[0], lane, old);
            }
        }
        self.count_mem(space, true, &addrs, active, len);
        Ok(())
    }

    /// Profile counts of one warp-level memory request.
    fn count_mem(&mut self, space: Space, store: bool, addrs: &[u64; 32], active: u32, len: u32) {
        if !self.l.profile {
            return;
        }
        match space {
            Space::Global => {
                let mut sectors: Vec<u64> = Vec::with_capacity(64);
                for lane in lanes(active) {
                    let a = addrs[lane];
                    for s in (a / 32)..=((a + len as u64 - 1) / 32) {
                        sectors.push(s);
                    }
                }
                sectors.sort_unstable();
                sectors.dedup();
                if let Some(set) = self.sectors {
                    for &s in &sectors {
                        set.mark(s * 32);
                    }
                }
                let c = &mut self.counts;
                let bytes = active.count_ones() as u64 * len as u64;
                if store {
                    c.global_store_requests += 1;
                    c.global_store_bytes += bytes;
                    c.global_store_sectors += sectors.len() as u64;
                } else {
                    c.global_load_requests += 1;
                    c.global_load_bytes += bytes;
                    c.global_load_sectors += sectors.len() as u64;
                }
            }
            Space::Shared => {
                self.counts.shared_requests += 1;
                let (actual, ideal) = wavefronts(addrs, active, len);
                self.counts.shared_wavefronts += actual;
                self.counts.shared_ideal_wavefronts += ideal;
            }
            Space::Param => {}
        }
    }

    fn check_collective(&self, w: usize, inst: &Inst, members: u32, active: u32) -> SimResult<()> {
        let warp = &self.warps[w];
        let members = members & warp.exists;
        if members & !active != 0 {
            let missing = members & !active;
            let lane = missing.trailing_zeros() as usize;
            let why = if warp.lane[lane] == Lane::Exited { "has exited" } else { "is elsewhere in the kernel" };
            return Err(fault(
                self.l,
                self.ctaid,
                (w * 32 + active.trailing_zeros() as usize) as u32,
                inst,
                format!(
                    "warp collective `{}`: member mask {members:#010x} but lanes {active:#010x} execute it (lane {lane} {why})",
                    inst.text
                ),
            ));
        }
        Ok(())
    }

    fn exec_shfl(&mut self, w: usize, inst: &Inst, mode: ShflMode, active: u32, mask: u32) -> SimResult<()> {
        // shfl.sync.mode.b32 d|p, a, b, c, membermask
        let ops = &inst.ops;
        let first = active.trailing_zeros() as usize;
        let members = self.read(w, &ops[5], first) as u32;
        self.check_collective(w, inst, members, active)?;
        let _ = mask;
        let mut src = [0u64; 32];
        for lane in lanes(active) {
            src[lane] = self.read(w, &ops[2], lane);
        }
        for lane in lanes(active) {
            let b = self.read(w, &ops[3], lane) as u32 & 31;
            let c = self.read(w, &ops[4], lane) as u32;
            let clamp = c & 31;
            let seg = (c >> 8) & 31;
            let l = lane as i32;
            let max_lane = ((lane as u32 & seg) | (clamp & !seg)) as i32;
            let min_lane = (lane as u32 & seg) as i32;
            let (j, p) = match mode {
                ShflMode::Up => {
                    let j = l - b as i32;
                    (j, j >= max_lane)
                }
                ShflMode::Down => {
                    let j = l + b as i32;
                    (j, j <= max_lane)
                }
                ShflMode::Bfly => {
                    let j = l ^ b as i32;
                    (j, j <= max_lane)
                }
                ShflMode::Idx => {
                    let j = min_lane | (b & !seg) as i32;
                    (j, j <= max_lane)
                }
            };
            let j = if p { j as usize } else { lane };
            if active >> j & 1 == 0 {
                return Err(fault(
                    self.l,
                    self.ctaid,
                    (w * 32 + lane) as u32,
                    inst,
                    format!("shfl reads lane {j}, which does not execute it"),
                ));
            }
            self.write(w, &ops[0], lane, src[j] & 0xffff_ffff);
            self.write(w, &ops[1], lane, p as u64);
        }
        self.warps[w].sync_count += 1;
        Ok(())
    }

    fn exec_mma(&mut self, w: usize, inst: &Inst, input: Ty, active: u32) -> SimResult<()> {
        self.check_collective(w, inst, u32::MAX, active)?;
        let ops = &inst.ops;
        let (d, a, b, c) = (elements(&ops[0]), elements(&ops[1]), elements(&ops[2]), elements(&ops[3]));
        if d.len() != 4 || a.len() != 4 || b.len() != 2 || c.len() != 4 {
            return Err(self.unsupported(w, active.trailing_zeros() as usize, inst));
        }
        let mut fa = [[0u32; 4]; 32];
        let mut fb = [[0u32; 2]; 32];
        let mut fc = [[0f32; 4]; 32];
        for lane in 0..32 {
            for i in 0..4 {
                fa[lane][i] = self.read(w, &a[i], lane) as u32;
                fc[lane][i] = f32v(self.read(w, &c[i], lane));
            }
            for i in 0..2 {
                fb[lane][i] = self.read(w, &b[i], lane) as u32;
            }
        }
        let ty = if input == Ty::Bf16 { mma::MmaInput::Bf16 } else { mma::MmaInput::F16 };
        let out = mma::mma_m16n8k16_f32(ty, &fa, &fb, &fc);
        for (lane, row) in out.iter().enumerate() {
            for i in 0..4 {
                self.write(w, &d[i], lane, row[i].to_bits() as u64);
            }
        }
        self.warps[w].sync_count += 1;
        Ok(())
    }

    fn exec_ldmatrix(&mut self, w: usize, inst: &Inst, num: usize, trans: bool, active: u32) -> SimResult<()> {
        self.check_collective(w, inst, u32::MAX, active)?;
        let dsts: &[Opnd] = elements(&inst.ops[0]);
        if dsts.len() != num {
            return Err(self.unsupported(w, 0, inst));
        }
        let rows: [u32; 32] = std::array::from_fn(|lane| self.addr(w, &inst.ops[1], lane) as u32);
        // Each lane that provides a row address reads that row (sanitized as its read).
        let mut row_data: BTreeMap<u32, [u16; 8]> = BTreeMap::new();
        for (lane, &a) in rows.iter().enumerate().take(num * 8) {
            self.shared_access(w, (w * 32 + lane) as u32, inst, a as u64, 16, false)?;
            let mut r = [0u16; 8];
            for (k, x) in r.iter_mut().enumerate() {
                let at = a as usize + 2 * k;
                *x = u16::from_le_bytes([self.shared[at], self.shared[at + 1]]);
            }
            row_data.insert(a, r);
        }
        if self.l.profile {
            let mut addrs = [0u64; 32];
            for lane in 0..num * 8 {
                addrs[lane] = rows[lane] as u64;
            }
            let lanes_mask = if num * 8 >= 32 { u32::MAX } else { (1u32 << (num * 8)) - 1 };
            self.counts.shared_requests += 1;
            let (actual, ideal) = wavefronts(&addrs, lanes_mask, 16);
            self.counts.shared_wavefronts += actual;
            self.counts.shared_ideal_wavefronts += ideal;
        }
        let mut read_row =
            |a: u32| -> Result<[u16; 8], String> { row_data.get(&a).copied().ok_or_else(|| format!("row {a:#x}")) };
        let out = mma::ldmatrix(num, trans, &rows, &mut read_row)
            .map_err(|m| fault(self.l, self.ctaid, (w * 32) as u32, inst, format!("ldmatrix: {m}")))?;
        for (lane, regs) in out.iter().enumerate() {
            for (i, d) in dsts.iter().enumerate() {
                self.write(w, d, lane, regs[i] as u64);
            }
        }
        self.warps[w].sync_count += 1;
        Ok(())
    }

    fn exec_cp_async(&mut self, w: usize, inst: &Inst, bytes: u8, active: u32) -> SimResult<()> {
        // cp.async.cg.shared.global [dst], [src], cp-size{, src-size}
        let ops = &inst.ops;
        let mut gaddrs = [0u64; 32];
        let mut saddrs = [0u64; 32];
        let mut gactive = 0u32;
        for lane in lanes(active) {
            let dst = self.addr(w, &ops[0], lane);
            let src = self.addr(w, &ops[1], lane);
            let src_size = match ops.get(3) {
                Some(o) => self.read(w, o, lane) as u32,
                None => bytes as u32,
            };
            let tid = (w * 32 + lane) as u32;
            if src_size > bytes as u32 {
                return Err(fault(
                    self.l,
                    self.ctaid,
                    tid,
                    inst,
                    format!("cp.async src-size {src_size} > cp-size {bytes}"),
                ));
            }
            let size = self.shared.len() as u64;
            if dst + bytes as u64 > size || !dst.is_multiple_of(bytes as u64) {
                if self.l.sanitize {
                    self.finding(
                        FindingKind::SharedOutOfBounds,
                        tid,
                        inst,
                        format!("cp.async of {bytes} bytes to shared {dst:#x}"),
                    );
                }
                return Err(fault(
                    self.l,
                    self.ctaid,
                    tid,
                    inst,
                    format!(
                        "cp.async destination {dst:#x} ({bytes} bytes) outside or misaligned in the CTA's {size} bytes"
                    ),
                ));
            }
            let mut data = [0u8; 16];
            if src_size > 0 {
                let p = self
                    .global_ptr(w, lane, inst, src, src_size.next_power_of_two().min(bytes as u32))
                    .or_else(|_| self.l.table.resolve(src, src_size as usize).ok_or(()))
                    .map_err(|_| {
                        fault(
                            self.l,
                            self.ctaid,
                            tid,
                            inst,
                            format!("cp.async source {src:#x} ({src_size} bytes) outside every allocation"),
                        )
                    })?;
                // SAFETY: resolve() checked the source range.
                unsafe { std::ptr::copy_nonoverlapping(p, data.as_mut_ptr(), src_size as usize) };
                gaddrs[lane] = src;
                gactive |= 1 << lane;
            }
            saddrs[lane] = dst;
            self.warps[w].async_state[lane].open.push(PendingCopy { shared_addr: dst as u32, len: bytes, data });
        }
        if self.l.profile {
            self.count_mem(Space::Global, false, &gaddrs, gactive, bytes as u32);
            self.count_mem(Space::Shared, true, &saddrs, active, bytes as u32);
        }
        Ok(())
    }
}

/// The sm_90a instructions: mbarriers, TMA and the warpgroup's wgmma.
impl<'a> Cta<'a> {
    /// The shared address of an mbarrier operand, checked for bounds and 8-byte alignment.
    fn mbarrier_addr(&self, w: usize, lane: usize, inst: &Inst, o: &Opnd) -> SimResult<u32> {
        let addr = self.addr(w, o, lane);
        if !addr.is_multiple_of(8) || addr + 8 > self.shared.len() as u64 {
            return Err(fault(
                self.l,
                self.ctaid,
                (w * 32 + lane) as u32,
                inst,
                format!(
                    "mbarrier at shared {addr:#x}: not 8-byte aligned inside the CTA's {} bytes",
                    self.shared.len()
                ),
            ));
        }
        Ok(addr as u32)
    }

    fn mbarrier(&mut self, w: usize, lane: usize, inst: &Inst, addr: u32) -> SimResult<&mut Mbarrier> {
        let (l, ctaid) = (self.l, self.ctaid);
        self.mbarriers.get_mut(&addr).ok_or_else(|| {
            fault(
                l,
                ctaid,
                (w * 32 + lane) as u32,
                inst,
                format!("mbarrier at shared {addr:#x} used before mbarrier.init"),
            )
        })
    }

    /// Completes the mbarrier's phase when its arrivals and transactions are all in. A
    /// completed phase orders, for the sanitizer, what came before it with what follows the
    /// waits on it; it is modelled as a CTA-wide epoch (so it also orders threads that never
    /// wait on this mbarrier: races between those are not reported).
    fn mbarrier_settle(&mut self, addr: u32) {
        if let Some(m) = self.mbarriers.get_mut(&addr) {
            if m.pending == 0 && m.tx == 0 {
                m.phase += 1;
                m.pending = m.expected;
                self.epoch += 1;
            }
        }
    }

    /// `mbarrier.init` / `mbarrier.arrive{.expect_tx}`, one lane at a time in lane order.
    fn exec_mbar(&mut self, w: usize, inst: &Inst, active: u32) -> SimResult<()> {
        let ops = &inst.ops;
        for lane in lanes(active) {
            let tid = (w * 32 + lane) as u32;
            match inst.op {
                Op::MbarInit => {
                    let addr = self.mbarrier_addr(w, lane, inst, &ops[0])?;
                    let count = self.read(w, &ops[1], lane) as u32;
                    if count == 0 || count >= 1 << 20 {
                        return Err(fault(self.l, self.ctaid, tid, inst, format!("mbarrier.init with count {count}")));
                    }
                    self.shared_access(w, tid, inst, addr as u64, 8, true)?;
                    self.shared[addr as usize..addr as usize + 8].fill(0);
                    self.mbarriers.insert(addr, Mbarrier { expected: count, pending: count, tx: 0, phase: 0 });
                }
                Op::MbarArrive { expect_tx } => {
                    let addr = self.mbarrier_addr(w, lane, inst, &ops[1])?;
                    let tx = if expect_tx { self.read(w, &ops[2], lane) as u32 as i64 } else { 0 };
                    let m = self.mbarrier(w, lane, inst, addr)?;
                    m.tx += tx;
                    m.pending -= 1;
                    let state = m.phase as u64;
                    self.mbarrier_settle(addr);
                    self.write(w, &ops[0], lane, state);
                }
                _ => unreachable!("exec_mbar takes mbarrier ops"),
            }
        }
        Ok(())
    }

    /// `mbarrier.try_wait.parity p, [addr], parity`: true once the phase of that parity has
    /// completed. A lane whose phase has not completed does not loop in the kernel's spin
    /// loop: it yields (its PC stays here) and polls again after the other warps have run.
    fn exec_mbar_try_wait(&mut self, w: usize, inst: &Inst, pc: u32, mask: u32, active: u32) -> SimResult<()> {
        let ops = &inst.ops;
        let mut advanced = mask & !active;
        for lane in lanes(active) {
            let addr = self.mbarrier_addr(w, lane, inst, &ops[1])?;
            let parity = self.read(w, &ops[2], lane) & 1;
            let phase = self.mbarrier(w, lane, inst, addr)?.phase;
            if (phase & 1) as u64 != parity {
                self.write(w, &ops[0], lane, 1);
                advanced |= 1 << lane;
            }
        }
        if advanced != 0 {
            self.progress += 1;
        }
        let warp = &mut self.warps[w];
        for lane in lanes(mask) {
            if advanced >> lane & 1 == 1 {
                warp.pc[lane] = pc + 1;
            } else {
                warp.lane[lane] = Lane::Yielded;
            }
        }
        Ok(())
    }

    /// `cp.async.bulk.tensor.2d` global -> shared with complete_tx on an mbarrier: each active
    /// lane copies one box. The copy lands at once (the earliest an asynchronous copy may);
    /// elements outside the tensor are zero, and count toward the transaction bytes.
    fn exec_tma_load(&mut self, w: usize, inst: &Inst, active: u32) -> SimResult<()> {
        let ops = &inst.ops;
        let coords = elements(&ops[2]);
        for lane in lanes(active) {
            let tid = (w * 32 + lane) as u32;
            let (l, ctaid) = (self.l, self.ctaid);
            let err = move |m: String| fault(l, ctaid, tid, inst, m);
            if coords.len() != 2 {
                return Err(err(format!("{} coordinates for a 2-D tensor copy", coords.len())));
            }
            let dst = self.addr(w, &ops[0], lane);
            let map_addr = self.addr(w, &ops[1], lane);
            let c0 = self.read(w, &coords[0], lane) as u32 as i32 as i64;
            let c1 = self.read(w, &coords[1], lane) as u32 as i32 as i64;
            let mbar = self.mbarrier_addr(w, lane, inst, &ops[3])?;
            let Some(p) = self.l.table.resolve(map_addr, hopper::TENSOR_MAP_BYTES) else {
                return Err(err(format!("tensor map at {map_addr:#x} is not inside an allocation")));
            };
            let mut raw = [0u8; hopper::TENSOR_MAP_BYTES];
            // SAFETY: resolve() checked the 128 bytes lie in one live allocation.
            unsafe { std::ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), raw.len()) };
            let map =
                hopper::TensorMap2d::decode(&raw).map_err(|m| err(format!("tensor map at {map_addr:#x}: {m}")))?;
            let align = if map.swizzle == hopper::Swizzle::B128 { 1024 } else { 128 };
            if !dst.is_multiple_of(align) || dst + map.box_bytes() as u64 > self.shared.len() as u64 {
                return Err(err(format!(
                    "tensor copy of {} bytes to shared {dst:#x}: must be {align}-byte aligned inside the CTA's {} bytes",
                    map.box_bytes(),
                    self.shared.len()
                )));
            }
            let eb = map.elem_bytes as i64;
            let row_bytes = (map.box_dims[0] * map.elem_bytes) as usize;
            let mut row = vec![0u8; row_bytes];
            for r in 0..map.box_dims[1] {
                row.fill(0);
                let y = c1 + r as i64;
                let x0 = c0.max(0);
                let x1 = (c0 + map.box_dims[0] as i64).min(map.dims[0] as i64);
                if (0..map.dims[1] as i64).contains(&y) && x1 > x0 {
                    let g = map.base + y as u64 * map.row_stride + x0 as u64 * eb as u64;
                    let len = ((x1 - x0) * eb) as usize;
                    let Some(src) = self.l.table.resolve(g, len) else {
                        return Err(err(format!("tensor copy reads {len} bytes at {g:#x}, outside every allocation")));
                    };
                    let at = ((x0 - c0) * eb) as usize;
                    // SAFETY: resolve() checked the source range.
                    unsafe { std::ptr::copy_nonoverlapping(src, row[at..].as_mut_ptr(), len) };
                    if self.l.profile {
                        let c = &mut self.counts;
                        c.global_load_bytes += len as u64;
                        c.global_load_sectors += (g + len as u64 - 1) / 32 - g / 32 + 1;
                        if let Some(set) = self.sectors {
                            for s in (g / 32)..=((g + len as u64 - 1) / 32) {
                                set.mark(s * 32);
                            }
                        }
                    }
                }
                for chunk in 0..row_bytes / 16 {
                    let s = map.shared_addr(dst as u32, (chunk * 16) as u32 / map.elem_bytes, r);
                    self.shared_access(w, tid, inst, s as u64, 16, true)?;
                    self.shared[s as usize..s as usize + 16].copy_from_slice(&row[chunk * 16..chunk * 16 + 16]);
                }
            }
            if self.l.profile {
                self.counts.global_load_requests += 1;
            }
            let m = self.mbarrier(w, lane, inst, mbar)?;
            m.tx -= map.box_bytes() as i64;
            self.mbarrier_settle(mbar);
        }
        Ok(())
    }

    /// A warpgroup collective (`wgmma.*`): warp `w` waits here until the four warps of its
    /// warpgroup all have; the last one to arrive executes it for the warpgroup. Warps of the
    /// group at another warpgroup collective, at a barrier or exited are a fault.
    fn warpgroup_step(&mut self, w: usize, inst: &'a Inst, pc: u32, mask: u32, active: u32) -> SimResult<()> {
        self.check_collective(w, inst, u32::MAX, active)?;
        let nthreads = self.l.block[0] * self.l.block[1] * self.l.block[2];
        let tid = (w * 32 + active.trailing_zeros() as usize) as u32;
        if !nthreads.is_multiple_of(128) {
            return Err(fault(
                self.l,
                self.ctaid,
                tid,
                inst,
                format!("warpgroup instruction in a block of {nthreads} threads (not whole warpgroups of 128)"),
            ));
        }
        for lane in lanes(mask) {
            self.warps[w].lane[lane] = Lane::Parked;
        }
        let g = w / 4;
        for ww in 4 * g..4 * g + 4 {
            let warp = &self.warps[ww];
            for lane in lanes(warp.exists) {
                let why = match warp.lane[lane] {
                    Lane::Parked if warp.pc[lane] == pc => continue,
                    Lane::Running | Lane::Yielded => return Ok(()),
                    Lane::Parked => {
                        format!("is at `{}` (PTX line {})", self.l.kernel.insts[warp.pc[lane] as usize].text, {
                            self.l.kernel.insts[warp.pc[lane] as usize].line
                        })
                    }
                    Lane::AtBarrier => "waits at a barrier".to_string(),
                    Lane::Exited => "has exited".to_string(),
                };
                return Err(fault(
                    self.l,
                    self.ctaid,
                    tid,
                    inst,
                    format!(
                        "warpgroup collective `{}` with mismatched participation: thread {} of warpgroup {g} {why}",
                        inst.text,
                        ww * 32 + lane
                    ),
                ));
            }
        }
        self.progress += 1;
        match inst.op {
            Op::WgmmaFence => {}
            Op::WgmmaCommit => {
                let st = &mut self.warpgroups[g];
                let open = std::mem::take(&mut st.open);
                st.committed.push_back(open);
            }
            Op::WgmmaWait => {
                let keep = self.read(4 * g, &inst.ops[0], 0) as usize;
                while self.warpgroups[g].committed.len() > keep {
                    let group = self.warpgroups[g].committed.pop_front().unwrap_or_default();
                    for op in &group {
                        self.retire_wgmma(g, op)?;
                    }
                }
            }
            Op::Wgmma { n, input } => {
                let op = self.issue_wgmma(g, inst, n, input)?;
                self.warpgroups[g].open.push(op);
            }
            _ => unreachable!("warpgroup_step takes wgmma ops"),
        }
        for ww in 4 * g..4 * g + 4 {
            let warp = &mut self.warps[ww];
            for lane in lanes(warp.exists) {
                warp.lane[lane] = Lane::Running;
                warp.pc[lane] = pc + 1;
            }
            warp.sync_count += 1;
        }
        Ok(())
    }

    /// Reads the operands of a `wgmma.mma_async` (uniform over the warpgroup) at issue.
    fn issue_wgmma(&self, g: usize, inst: &'a Inst, n: u16, input: Ty) -> SimResult<PendingWgmma<'a>> {
        let ops = &inst.ops;
        let err = |m: String| fault(self.l, self.ctaid, (g * 128) as u32, inst, m);
        if elements(&ops[0]).len() != n as usize / 2 || !(ops.len() == 6 || ops.len() == 8) {
            return Err(err(format!(
                "wgmma m64n{n}k16 takes {} accumulator registers and 6 or 8 operands (A from registers is not implemented)",
                n / 2
            )));
        }
        let uniform = |o: &Opnd, what: &str| -> SimResult<u64> {
            let v = self.read(4 * g, o, 0);
            for ww in 4 * g..4 * g + 4 {
                for lane in 0..32 {
                    if self.read(ww, o, lane) != v {
                        return Err(err(format!("{what} differs between threads of the warpgroup")));
                    }
                }
            }
            Ok(v)
        };
        let a = hopper::MatrixDescriptor::decode(uniform(&ops[1], "the A descriptor")?).map_err(err)?;
        let b = hopper::MatrixDescriptor::decode(uniform(&ops[2], "the B descriptor")?).map_err(err)?;
        let imm = |i: usize| -> i64 {
            match ops.get(i) {
                Some(Opnd::Imm(v)) => *v as i64,
                Some(_) => i64::MIN,
                None => 0,
            }
        };
        let (scale_a, scale_b, trans_a, trans_b) = (imm(4), imm(5), imm(6), imm(7));
        if !matches!(scale_a, 1 | -1) || !matches!(scale_b, 1 | -1) {
            return Err(err("imm-scale-a and imm-scale-b must be the immediates 1 or -1".into()));
        }
        if trans_a != 0 || trans_b != 0 {
            return Err(err(format!(
                "imm-trans-a {trans_a}, imm-trans-b {trans_b}: transposed (MN-major) operands are not implemented"
            )));
        }
        let scale_d = std::array::from_fn(|i| self.read(4 * g + i, &ops[3], 0) & 1 == 1);
        Ok(PendingWgmma { inst, n, input, a, b, scale_d, neg_a: scale_a == -1, neg_b: scale_b == -1 })
    }

    /// Executes a wgmma at the wait_group that retires it: reads A (64x16) and B (N x 16,
    /// K-major) from shared memory through their descriptors, then D = A B (+ D) into the
    /// accumulator registers of the warpgroup's 128 threads. Products are exact and added in
    /// k order with one f32 rounding each, as the mma.sync model does.
    fn retire_wgmma(&mut self, g: usize, op: &PendingWgmma<'a>) -> SimResult<()> {
        let n = op.n as usize;
        let tid = (g * 128) as u32;
        let to_f32 = |bits: u16| if op.input == Ty::Bf16 { fp::bf16_to_f32(bits) } else { fp::f16_to_f32(bits) };
        let read_tile = |cta: &mut Self, desc: &hopper::MatrixDescriptor, rows: usize, neg: bool| {
            let mut tile = vec![[0f32; 16]; rows];
            for (r, out) in tile.iter_mut().enumerate() {
                for chunk in 0..2u32 {
                    let at = desc.k_major_chunk_addr(r as u32, chunk) as u64;
                    cta.shared_access(4 * g, tid, op.inst, at, 16, false)?;
                    for e in 0..8 {
                        let i = at as usize + 2 * e;
                        let v = to_f32(u16::from_le_bytes([cta.shared[i], cta.shared[i + 1]]));
                        out[chunk as usize * 8 + e] = if neg { -v } else { v };
                    }
                }
            }
            SimResult::Ok(tile)
        };
        let a = read_tile(self, &op.a, 64, op.neg_a)?;
        let b = read_tile(self, &op.b, n, op.neg_b)?;
        let dst = elements(&op.inst.ops[0]);
        for i in 0..4 {
            let w = 4 * g + i;
            for lane in 0..32 {
                for (reg, d) in dst.iter().enumerate() {
                    let (row, col) = hopper::accumulator_position(i as u32, lane as u32, reg as u32);
                    let mut acc = if op.scale_d[i] { f32v(self.read(w, d, lane)) } else { 0.0 };
                    for k in 0..16 {
                        acc = fp::fma_rn_f32(a[row as usize][k], b[col as usize][k], acc);
                    }
                    self.write(w, d, lane, acc.to_bits() as u64);
                }
            }
        }
        if self.l.profile {
            self.counts.flops += 2 * 64 * n as u64 * 16;
            self.counts.tensor_flops += 2 * 64 * n as u64 * 16;
        }
        Ok(())
    }
}

/// What a shared access does, for the sanitizer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    /// A read-modify-write by `atom` / `red`.
    Atomic,
}

/// Applies `update` to the `len`-byte word at `p` atomically with respect to other host
/// threads, and returns the old value.
///
/// # Safety
/// `p` must point to `len` (4 or 8) live bytes aligned to `len`.
unsafe fn global_rmw(p: *mut u8, len: u32, update: impl Fn(u64) -> u64) -> u64 {
    // The closure cannot fail, so fetch_update always returns Ok; Err would hold the same value.
    if len == 4 {
        // SAFETY: the caller's contract; u32 and AtomicU32 have the same layout.
        let a = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) };
        let r = a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| Some(update(old as u64) as u32));
        r.unwrap_or_else(|v| v) as u64
    } else {
        // SAFETY: as above, for 8 bytes.
        let a = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) };
        let r = a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| Some(update(old)));
        r.unwrap_or_else(|v| v)
    }
}

/// The new value of an atomic's location, from its old value `old` and operands `b` (and `c`
/// for cas), all as the bits of `ty`.
fn atom_apply(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let v = match op {
        // The ISA: atom.add.f32 rounds to nearest even and flushes subnormal inputs and
        // results to sign-preserving zero.
        AtomOp::Add if ty == Ty::F32 => {
            let (x, y) = (fp::ftz(f32v(old)), fp::ftz(f32v(b)));
            fp::ftz(fp::add_f32(x, y, fp::Round::Rn)).to_bits() as u64
        }
        AtomOp::Add if ty == Ty::F64 => fp::add_f64(f64v(old), f64v(b), fp::Round::Rn).to_bits(),
        AtomOp::Add => old.wrapping_add(b),
        AtomOp::Min | AtomOp::Max => {
            let less = if ty.is_signed() { sext(old, ty) < sext(b, ty) } else { old < b };
            if (op == AtomOp::Min) == less {
                old
            } else {
                b
            }
        }
        AtomOp::And => old & b,
        AtomOp::Or => old | b,
        AtomOp::Xor => old ^ b,
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if old == b {
                c
            } else {
                old
            }
        }
        // inc wraps to 0 once the old value reaches b; dec wraps to b at 0 or above b.
        AtomOp::Inc => {
            if old >= b {
                0
            } else {
                old + 1
            }
        }
        AtomOp::Dec => {
            if old == 0 || old > b {
                b
            } else {
                old - 1
            }
        }
    };
    mask_bits(v, ty)
}

/// `prmt.b32 d, a, b, c`: four bytes picked from the eight of {b, a} (a's bytes are 0..3, b's
/// 4..7). The generic form reads a 4-bit selector per result byte from c (bit 3 set: the
/// selected byte's sign bit fills the result byte); the modes index the ISA's table with c's
/// two low bits, result byte 0 first.
fn prmt(mode: PrmtMode, a: u32, b: u32, c: u32) -> u32 {
    let src = (b as u64) << 32 | a as u64;
    let byte = |i: u32| (src >> (8 * (i & 7))) as u8;
    let pick = |sel: [u32; 4]| sel.iter().enumerate().fold(0u32, |d, (k, &i)| d | (byte(i) as u32) << (8 * k));
    let s = (c & 3) as usize;
    match mode {
        PrmtMode::Generic => (0..4).fold(0u32, |d, k| {
            let sel = c >> (4 * k) & 0xf;
            let v = byte(sel);
            let v = if sel & 8 != 0 { ((v as i8) >> 7) as u8 } else { v };
            d | (v as u32) << (8 * k)
        }),
        PrmtMode::F4e => pick([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]][s]),
        PrmtMode::B4e => pick([[0, 7, 6, 5], [1, 0, 7, 6], [2, 1, 0, 7], [3, 2, 1, 0]][s]),
        PrmtMode::Rc8 => pick([s as u32; 4]),
        PrmtMode::Ecl => pick([[0, 1, 2, 3], [1, 1, 2, 3], [2, 2, 2, 3], [3, 3, 3, 3]][s]),
        PrmtMode::Ecr => pick([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 2, 2], [0, 1, 2, 3]][s]),
        PrmtMode::Rc16 => pick([[0, 1, 0, 1], [2, 3, 2, 3]][s & 1]),
    }
}

/// The registers of an operand: the elements of a `{a, b, ...}` vector, or the operand itself.
fn elements(o: &Opnd) -> &[Opnd] {
    match o {
        Opnd::Vec(v) => v,
        o => std::slice::from_ref(o),
    }
}

/// Where the special registers of a lane come from.
struct SpecialCtx {
    block: [u32; 3],
    grid: [u32; 3],
    ctaid: [u32; 3],
    warp: u32,
}

/// A source operand resolved for a whole warp instruction.
#[derive(Clone, Copy)]
enum Src {
    /// The slot's first lane (`reg * 32`).
    Reg(usize),
    Imm(u64),
    /// A predicate register's first lane and whether it is negated (1) or not (0).
    Pred(usize, u64),
    Special(Special),
}

impl Src {
    #[inline(always)]
    fn get(self, regs: &[u64], lane: usize, at: &SpecialCtx) -> u64 {
        match self {
            Src::Reg(r) => regs[r + lane],
            Src::Imm(v) => v,
            Src::Pred(r, neg) => (regs[r + lane] & 1) ^ neg,
            Src::Special(s) => special_of(s, at, lane) as u64,
        }
    }
}

fn special_of(s: Special, at: &SpecialCtx, lane: usize) -> u32 {
    let tid = at.warp * 32 + lane as u32;
    match s {
        Special::Tid(d) => thread_xyz(at.block, tid)[d as usize],
        Special::Ntid(d) => at.block[d as usize],
        Special::Ctaid(d) => at.ctaid[d as usize],
        Special::Nctaid(d) => at.grid[d as usize],
        Special::LaneId => lane as u32,
        Special::WarpId => at.warp,
    }
}

/// Iterates the set bits of a lane mask.
#[inline]
fn lanes(mask: u32) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let l = m.trailing_zeros();
        m &= m - 1;
        Some(l as usize)
    })
}

/// Shared-memory wavefronts of one warp request, as (needed, conflict-free): 32 banks of 4
/// bytes; accesses wider than 4 bytes are served a half (8 bytes) or a quarter (16 bytes) of the
/// warp at a time; within a phase the wavefronts needed are the most distinct 4-byte words any
/// one bank must deliver, and the conflict-free count is what the phase's distinct words would
/// take spread evenly over the banks (ceil(words / 32)). The difference is bank conflicts.
fn wavefronts(addrs: &[u64; 32], active: u32, len: u32) -> (u64, u64) {
    let per_phase = match len {
        0..=4 => 32,
        5..=8 => 16,
        _ => 8,
    };
    let (mut needed, mut ideal) = (0u64, 0u64);
    for phase in 0..(32 / per_phase) {
        let mut words: Vec<u64> = Vec::with_capacity(128);
        for (lane, &a) in addrs.iter().enumerate().skip(phase * per_phase).take(per_phase) {
            if active >> lane & 1 == 0 {
                continue;
            }
            for k in 0..len.div_ceil(4) {
                words.push(a / 4 + k as u64);
            }
        }
        if words.is_empty() {
            continue;
        }
        words.sort_unstable();
        words.dedup();
        let mut per_bank = [0u32; 32];
        for &wd in &words {
            per_bank[(wd % 32) as usize] += 1;
        }
        needed += *per_bank.iter().max().unwrap_or(&1) as u64;
        ideal += words.len().div_ceil(32) as u64;
    }
    (needed, ideal)
}

fn compare(c: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    match ty {
        Ty::F32 => fp::compare_f32(cmp_of(c), f32v(a), f32v(b)),
        Ty::F64 => fp::compare_f64(cmp_of(c), f64v(a), f64v(b)),
        _ => {
            let signed = ty.is_signed() && !matches!(c, Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs);
            let ord = if signed { sext(a, ty).cmp(&sext(b, ty)) } else { mask_bits(a, ty).cmp(&mask_bits(b, ty)) };
            use std::cmp::Ordering::*;
            match c {
                Cmp::Eq => ord == Equal,
                Cmp::Ne => ord != Equal,
                Cmp::Lt | Cmp::Lo => ord == Less,
                Cmp::Le | Cmp::Ls => ord != Greater,
                Cmp::Gt | Cmp::Hi => ord == Greater,
                Cmp::Ge | Cmp::Hs => ord != Less,
                _ => false,
            }
        }
    }
}

fn f32_op(inst: &Inst, a: u64, b: u64, c: u64) -> Option<f32> {
    let z = inst.ftz;
    let (a, b, c) = (ftz32(f32v(a), z), ftz32(f32v(b), z), ftz32(f32v(c), z));
    let r = rnd_of(inst.rnd);
    let v = match inst.op {
        Op::Add => fp::add_f32(a, b, r),
        Op::Sub => fp::sub_f32(a, b, r),
        Op::Mul => fp::mul_f32(a, b, r),
        Op::Fma | Op::MadLo => fp::fma_f32(a, b, c, r),
        Op::Div if inst.approx => fp::div_approx_f32(a, b),
        Op::Div => fp::div_f32(a, b, r),
        Op::Neg => -a,
        Op::Abs => a.abs(),
        Op::Min => fp::min_f32(a, b),
        Op::Max => fp::max_f32(a, b),
        Op::Sqrt if inst.approx => fp::sqrt_f32(a, fp::Round::Rn),
        Op::Sqrt => fp::sqrt_f32(a, r),
        Op::Rcp if inst.approx => fp::rcp_approx_f32(a),
        Op::Rcp => fp::rcp_f32(a, r),
        Op::Rsqrt => fp::rsqrt_approx_f32(a),
        Op::Ex2 => fp::ex2_approx_f32(a),
        Op::Lg2 => fp::lg2_approx_f32(a),
        Op::Copysign => fp::copysign_f32(a, b),
        _ => return None,
    };
    let v = if inst.sat { sat01(v) } else { v };
    Some(ftz32(v, z))
}

fn sat01(v: f32) -> f32 {
    fp::saturate_f32(v)
}

fn f64_op(inst: &Inst, a: u64, b: u64, c: u64) -> Option<f64> {
    let (a, b, c) = (f64v(a), f64v(b), f64v(c));
    let r = rnd_of(inst.rnd);
    Some(match inst.op {
        Op::Add => fp::add_f64(a, b, r),
        Op::Sub => fp::sub_f64(a, b, r),
        Op::Mul => fp::mul_f64(a, b, r),
        Op::Fma | Op::MadLo if r == fp::Round::Rn => fp::fma_f64(a, b, c),
        Op::Div => fp::div_f64(a, b, r),
        Op::Neg => -a,
        Op::Abs => a.abs(),
        Op::Min => fp::min_f64(a, b),
        Op::Max => fp::max_f64(a, b),
        Op::Sqrt => fp::sqrt_f64(a, r),
        Op::Rcp => fp::rcp_f64(a, r),
        Op::Copysign => fp::copysign_f64(a, b),
        _ => return None,
    })
}

/// Integer instructions; None for an op the type does not allow.
fn int_op(inst: &Inst, a: u64, b: u64, c: u64, d: u64) -> Option<u64> {
    let ty = inst.ty;
    let bits = ty.bytes() * 8;
    let s = ty.is_signed();
    let v = match inst.op {
        Op::Add => a.wrapping_add(b),
        Op::Sub => a.wrapping_sub(b),
        Op::MulLo => a.wrapping_mul(b),
        Op::MadLo => a.wrapping_mul(b).wrapping_add(c),
        Op::MulWide | Op::MadWide => {
            let p =
                if s { (sext(a, ty) * sext(b, ty)) as u64 } else { mask_bits(a, ty).wrapping_mul(mask_bits(b, ty)) };
            let v = if inst.op == Op::MadWide { p.wrapping_add(c) } else { p };
            return Some(v); // twice the type's width
        }
        Op::MulHi => {
            if s {
                ((sext(a, ty) as i128 * sext(b, ty) as i128) >> bits) as u64
            } else {
                ((mask_bits(a, ty) as u128 * mask_bits(b, ty) as u128) >> bits) as u64
            }
        }
        Op::Div | Op::Rem => {
            if mask_bits(b, ty) == 0 {
                // Integer division by zero is undefined in PTX; hardware returns all ones.
                u64::MAX
            } else if s {
                let (x, y) = (sext(a, ty), sext(b, ty));
                (if inst.op == Op::Div { x.wrapping_div(y) } else { x.wrapping_rem(y) }) as u64
            } else {
                let (x, y) = (mask_bits(a, ty), mask_bits(b, ty));
                if inst.op == Op::Div {
                    x / y
                } else {
                    x % y
                }
            }
        }
        Op::Neg => (sext(a, ty)).wrapping_neg() as u64,
        Op::Abs => sext(a, ty).wrapping_abs() as u64,
        Op::Min | Op::Max => {
            let less = if s { sext(a, ty) < sext(b, ty) } else { mask_bits(a, ty) < mask_bits(b, ty) };
            if (inst.op == Op::Min) == less {
                a
            } else {
                b
            }
        }
        Op::Shl => {
            let n = b as u32;
            if n >= bits {
                0
            } else {
                a << n
            }
        }
        Op::Shr => {
            let n = (b as u32).min(bits);
            if s {
                let x = sext(a, ty);
                (if n >= bits { x >> (bits - 1) >> 1 } else { x >> n }) as u64
            } else if n >= bits {
                0
            } else {
                mask_bits(a, ty) >> n
            }
        }
        Op::And => a & b,
        Op::Or => a | b,
        Op::Xor => a ^ b,
        Op::Not => !a,
        Op::Prmt(mode) => prmt(mode, a as u32, b as u32, c as u32) as u64,
        Op::Bfi => {
            // bfi.b32 d, a, b, pos, len: b with bits [pos, pos+len) from a.
            let pos = (c & 0xff) as u32;
            let len = (d & 0xff) as u32;
            let mut v = mask_bits(b, ty);
            for i in 0..len {
                let k = pos + i;
                if k >= bits {
                    break;
                }
                v = (v & !(1u64 << k)) | (((a >> i) & 1) << k);
            }
            v
        }
        _ => return None,
    };
    Some(mask_bits(v, ty))
}

/// `cvt` between any two of the types our kernels use.
fn convert(inst: &Inst, from: Ty, to: Ty, a: u64) -> Result<u64, String> {
    let r = rnd_of(inst.rnd);
    let z = inst.ftz;
    // The source as an exact value class.
    enum V {
        I(i128),
        F(f64, bool),
    }
    let v = match from {
        Ty::F32 => V::F(ftz32(f32v(a), z) as f64, true),
        Ty::F64 => V::F(f64v(a), false),
        Ty::F16 => V::F(fp::f16_to_f32(a as u16) as f64, true),
        Ty::Bf16 => V::F(fp::bf16_to_f32(a as u16) as f64, true),
        _ if from.is_signed() => V::I(sext(a, from) as i128),
        _ if !from.is_float() => V::I(mask_bits(a, from) as i128),
        _ => return Err(format!("cvt from {from:?}")),
    };
    let out = match (to, v) {
        (Ty::F32, V::F(x, from32)) => {
            let y = if from32 {
                let x = x as f32;
                if inst.int_rnd {
                    match r {
                        fp::Round::Rn => x.round_ties_even(),
                        fp::Round::Rz => x.trunc(),
                        fp::Round::Rm => x.floor(),
                        fp::Round::Rp => x.ceil(),
                    }
                } else {
                    x
                }
            } else {
                fp::f64_to_f32(x, r)
            };
            let y = if inst.sat { sat01(y) } else { y };
            ftz32(y, z).to_bits() as u64
        }
        (Ty::F64, V::F(x, _)) => {
            let y = if inst.int_rnd {
                match r {
                    fp::Round::Rn => x.round_ties_even(),
                    fp::Round::Rz => x.trunc(),
                    fp::Round::Rm => x.floor(),
                    fp::Round::Rp => x.ceil(),
                }
            } else {
                x
            };
            y.to_bits()
        }
        (Ty::F16, V::F(x, _)) => fp::f32_to_f16(x as f32, r) as u64,
        (Ty::Bf16, V::F(x, _)) => fp::f32_to_bf16(x as f32, r) as u64,
        (Ty::F32, V::I(i)) => fp::int_to_f32(i, r).to_bits() as u64,
        (Ty::F64, V::I(i)) => fp::int_to_f64(i, r).to_bits(),
        (t, V::F(x, _)) if !t.is_float() => {
            // Float → integer: round as asked, saturate, NaN → 0.
            let y = match r {
                fp::Round::Rn => x.round_ties_even(),
                fp::Round::Rz => x.trunc(),
                fp::Round::Rm => x.floor(),
                fp::Round::Rp => x.ceil(),
            };
            let bits = t.bytes() * 8;
            let (lo, hi) = if t.is_signed() {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            } else {
                (0, (1i128 << bits) - 1)
            };
            let i = if y.is_nan() { 0 } else { (y.clamp(lo as f64, hi as f64)) as i128 };
            mask_bits(i as u64, t)
        }
        (t, V::I(i)) if !t.is_float() => {
            let v = if t.is_signed() { i as i64 as u64 } else { i as u64 };
            if t.is_signed() {
                sext(v, t) as u64
            } else {
                mask_bits(v, t)
            }
        }
        (Ty::F16x2 | Ty::Bf16x2, _) => return Err("cvt to a packed type takes two sources".into()),
        _ => return Err(format!("cvt {from:?} → {to:?}")),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::wavefronts;

    fn lanes(f: impl Fn(u64) -> u64) -> [u64; 32] {
        std::array::from_fn(|l| f(l as u64))
    }

    #[test]
    fn wavefronts_count_bank_conflicts_against_the_conflict_free_count() {
        // Consecutive words: one wavefront, none wasted.
        assert_eq!(wavefronts(&lanes(|l| 4 * l), u32::MAX, 4), (1, 1));
        // Everyone on the same word is a broadcast, not a conflict.
        assert_eq!(wavefronts(&lanes(|_| 64), u32::MAX, 4), (1, 1));
        // A column of a 32-float row-major tile: all lanes on bank 0, a 32-way conflict.
        assert_eq!(wavefronts(&lanes(|l| 128 * l), u32::MAX, 4), (32, 1));
        // Padding the row to 33 floats spreads the column over the banks.
        assert_eq!(wavefronts(&lanes(|l| 132 * l), u32::MAX, 4), (1, 1));
        // 16-byte accesses go a quarter warp at a time: 4 wavefronts are the floor.
        assert_eq!(wavefronts(&lanes(|l| 16 * l), u32::MAX, 16), (4, 4));
        // Rows of 16 bytes at a 64-byte pitch (an unswizzled 32-element bf16 tile read by
        // ldmatrix): the 8 rows of a phase fall on 2 groups of 4 banks, a 4-way conflict.
        assert_eq!(wavefronts(&lanes(|l| 64 * l), u32::MAX, 16), (16, 4));
        // Inactive lanes ask for nothing: half a warp of 4-byte words on distinct banks.
        assert_eq!(wavefronts(&lanes(|l| 4 * l), 0xffff, 4), (1, 1));
        assert_eq!(wavefronts(&lanes(|l| 4 * l), 0, 4), (0, 0));
    }
}
