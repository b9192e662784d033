//! The simulator's sm_90a instructions on hand-written PTX: wgmma.mma_async with
//! shared-memory descriptors (no swizzle and the 128-byte swizzle), scale-d and imm-scale, the
//! warpgroup's accumulator layout, commit/wait groups; mbarrier init/arrive/expect_tx/try_wait;
//! cp.async.bulk.tensor (TMA) with the simulator's tensor map, its zero fill past the tensor's
//! edges; and the faults: a warpgroup collective not every warp reaches, a wait that can never
//! complete, an unimplemented swizzle, a wgmma never retired.
//!
//! Inputs are small integers in bf16, so every sum is exact and the expected values are
//! written from the ISA's layouts (operand placement in shared memory, accumulator fragment)
//! without a second model of the instruction.

use labelfree::device::sim::hopper::{MatrixDescriptor, Swizzle, TensorMap2d};
use labelfree::device::sim::{SimArg, SimError, SimOptions, Simulator};

const HEADER: &str = ".version 8.0\n.target sm_90a\n.address_size 64\n";

/// The tail both wgmma kernels share: thread t's 8 accumulators to out (%rd9) + 32 t.
const STORE_ACCUMULATORS: &str = "st.global.v4.f32 [%rd9], {%f1, %f2, %f3, %f4};
    st.global.v4.f32 [%rd9+16], {%f5, %f6, %f7, %f8};";

fn sim(entries: &str) -> Simulator {
    let text: &'static str = Box::leak(format!("{HEADER}{entries}").into_boxed_str());
    Simulator::new(&[("t", text)], SimOptions::default())
}

fn line_of(entries: &str, needle: &str) -> u32 {
    let text = format!("{HEADER}{entries}");
    let i = text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not in the PTX"));
    i as u32 + 1
}

fn upload(sim: &Simulator, bytes: &[u8]) -> u64 {
    let addr = sim.alloc(bytes.len()).expect("alloc");
    sim.write(addr, bytes).expect("write");
    addr
}

fn read_f32(sim: &Simulator, addr: u64, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 4];
    sim.read(addr, &mut bytes).expect("read");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// bf16 bits of a small integer (exact).
fn bf16(v: i32) -> u16 {
    ((v as f32).to_bits() >> 16) as u16
}

/// A small integer in -3..=3 from a seed, so that products and their sums stay exact.
fn small(seed: usize) -> i32 {
    ((seed * 7919 + 13) % 7) as i32 - 3
}

/// (row, column) of accumulator register `reg` of thread `tid` of a warpgroup (m64nNk16, f32),
/// from the ISA's figure: warp w holds rows 16w..16w+16; register 4i+j of lane l is row
/// 16w + l/4 + 8(j/2), column 8i + 2(l%4) + j%2.
fn accumulator(tid: usize, reg: usize) -> (usize, usize) {
    let (w, lane, i, j) = (tid / 32, tid % 32, reg / 4, reg % 4);
    (16 * w + lane / 4 + 8 * (j / 2), 8 * i + 2 * (lane % 4) + j % 2)
}

fn expect_fault(result: Result<(), SimError>, line: u32, says: &str) {
    match result {
        Err(SimError::Fault { ptx_line, message, .. }) => {
            assert!(message.contains(says), "`{message}` should say `{says}`");
            assert_eq!(ptx_line, line, "{message}");
        }
        other => panic!("expected a fault saying `{says}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// wgmma, no swizzle: descriptors with leading / stride byte offsets, scale-d, imm-scale-a
// ---------------------------------------------------------------------------------------------

/// Threads copy a 3072-byte image to shared memory (A 64x16 at 0, B 16x16 at 2048, B2 at
/// 2560), then with every accumulator preset to 100: D = A B (scale-d false: the 100s are not
/// read), D = (-A) B2 + D (scale-d true, imm-scale-a -1). out[8 tid + r] = register r.
const WG_NONE_PTX: &str = r#"
.visible .entry wg_none(
    .param .u64 img,
    .param .u64 out,
    .param .u64 da,
    .param .u64 db,
    .param .u64 db2
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<12>;
    .reg .f32 %f<9>;
    .shared .align 128 .b8 smem[3072];
    ld.param.u64 %rd1, [img];
    ld.param.u64 %rd2, [out];
    ld.param.u64 %rd3, [da];
    ld.param.u64 %rd4, [db];
    ld.param.u64 %rd5, [db2];
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 2;
    cvt.u64.u32 %rd6, %r2;
    add.s64 %rd7, %rd1, %rd6;
    mov.u32 %r3, smem;
    add.s32 %r4, %r3, %r2;
    ld.global.u32 %r5, [%rd7+0];
    st.shared.u32 [%r4+0], %r5;
    ld.global.u32 %r5, [%rd7+512];
    st.shared.u32 [%r4+512], %r5;
    ld.global.u32 %r5, [%rd7+1024];
    st.shared.u32 [%r4+1024], %r5;
    ld.global.u32 %r5, [%rd7+1536];
    st.shared.u32 [%r4+1536], %r5;
    ld.global.u32 %r5, [%rd7+2048];
    st.shared.u32 [%r4+2048], %r5;
    ld.global.u32 %r5, [%rd7+2560];
    st.shared.u32 [%r4+2560], %r5;
    bar.sync 0;
    mov.f32 %f1, 0f42C80000;
    mov.f32 %f2, 0f42C80000;
    mov.f32 %f3, 0f42C80000;
    mov.f32 %f4, 0f42C80000;
    mov.f32 %f5, 0f42C80000;
    mov.f32 %f6, 0f42C80000;
    mov.f32 %f7, 0f42C80000;
    mov.f32 %f8, 0f42C80000;
    wgmma.fence.sync.aligned;
    setp.ne.u32 %p1, %r1, %r1;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd3, %rd4, %p1, 1, 1, 0, 0;
    setp.eq.u32 %p1, %r1, %r1;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd3, %rd5, %p1, -1, 1, 0, 0;
    wgmma.commit_group.sync.aligned;
    {WAIT}
    mul.wide.u32 %rd8, %r1, 32;
    add.s64 %rd9, %rd2, %rd8;
    {STORE}
    ret;
}
"#;

/// K-major without swizzle: 8x8 core matrices of 16-byte rows; LBO = 128 between the two core
/// matrices along K, SBO = 256 between those along M (or N).
fn none_addr(row: usize, k: usize) -> usize {
    (row / 8) * 256 + (k / 8) * 128 + (row % 8) * 16 + (k % 8) * 2
}

fn run_wg_none(wait: &str, desc_a_swizzle_bits: u64) -> (Simulator, Result<(), SimError>, Vec<f32>, u64) {
    let ptx = WG_NONE_PTX.replace("{WAIT}", wait).replace("{STORE}", STORE_ACCUMULATORS);
    let s = sim(&ptx);
    let a = |m: usize, k: usize| small(m * 16 + k);
    let b = |n: usize, k: usize| small(1000 + n * 16 + k);
    let b2 = |n: usize, k: usize| small(5000 + n * 31 + k);
    let mut img = vec![0u8; 3072];
    let mut put = |at: usize, v: i32| img[at..at + 2].copy_from_slice(&bf16(v).to_le_bytes());
    for k in 0..16 {
        for m in 0..64 {
            put(none_addr(m, k), a(m, k));
        }
        for n in 0..16 {
            put(2048 + none_addr(n, k), b(n, k));
            put(2560 + none_addr(n, k), b2(n, k));
        }
    }
    let desc =
        |start| MatrixDescriptor { start, leading_byte_offset: 128, stride_byte_offset: 256, swizzle: Swizzle::None };
    let img_d = upload(&s, &img);
    let out = upload(&s, &vec![0xCD; 128 * 8 * 4]);
    let args = [
        SimArg::B64(img_d),
        SimArg::B64(out),
        SimArg::B64(desc(0).encode() | desc_a_swizzle_bits << 62),
        SimArg::B64(desc(2048).encode()),
        SimArg::B64(desc(2560).encode()),
    ];
    let result = s.launch("t", "wg_none", [1, 1, 1], [128, 1, 1], 0, &args);
    let mut want = vec![0f32; 128 * 8];
    for (tid, regs) in want.chunks_mut(8).enumerate() {
        for (r, v) in regs.iter_mut().enumerate() {
            let (m, n) = accumulator(tid, r);
            *v = (0..16).map(|k| a(m, k) * b(n, k) - a(m, k) * b2(n, k)).sum::<i32>() as f32;
        }
    }
    let got = if result.is_ok() { read_f32(&s, out, 128 * 8) } else { Vec::new() };
    assert!(result.is_err() || got == want, "wgmma result differs from the ISA layout");
    (s, result, got, 0)
}

#[test]
fn wgmma_reads_k_major_core_matrices_through_descriptors_and_honours_scale_d_and_imm_scale() {
    let (s, result, got, _) = run_wg_none("wgmma.wait_group.sync.aligned 0;", 0);
    result.expect("launch");
    assert_eq!(got.len(), 1024);
    assert!(got.iter().any(|&v| v != 0.0), "all zeros: the test data would not tell layouts apart");
    assert!(s.take_findings().is_empty(), "{:?}", s.take_findings());
}

#[test]
fn a_wgmma_never_retired_by_wait_group_is_a_fault() {
    let (_, result, _, _) = run_wg_none("", 0);
    let ptx = WG_NONE_PTX.replace("{WAIT}", "");
    expect_fault(result, line_of(&ptx, "wgmma.mma_async"), "never retired");
}

#[test]
fn the_64_and_32_byte_swizzles_are_refused_by_name() {
    let ptx = WG_NONE_PTX.replace("{WAIT}", "wgmma.wait_group.sync.aligned 0;");
    let (_, result, _, _) = run_wg_none("wgmma.wait_group.sync.aligned 0;", 2);
    expect_fault(result, line_of(&ptx, "wgmma.mma_async"), "64-byte swizzle is not implemented");
    let (_, result, _, _) = run_wg_none("wgmma.wait_group.sync.aligned 0;", 3);
    expect_fault(result, line_of(&ptx, "wgmma.mma_async"), "32-byte swizzle is not implemented");
}

// ---------------------------------------------------------------------------------------------
// TMA into 128-byte-swizzled tiles, mbarrier with a transaction count, wgmma on them
// ---------------------------------------------------------------------------------------------

/// Thread 0 initialises an mbarrier (count 1), arrives with expect_tx of both boxes' bytes and
/// issues two tensor copies at (k0, 0): A's 64x64 box to shared 0 and B's 16x64 box to 8192,
/// both 128-byte swizzled. Every thread waits on phase 0, then the warpgroup runs four
/// m64n16k16 wgmmas along K (descriptor start +32 bytes each; two commit groups) and writes
/// its accumulators.
const WG_TMA_PTX: &str = r#"
.visible .entry wg_tma(
    .param .u64 map_a,
    .param .u64 map_b,
    .param .u64 out,
    .param .u32 k0
)
{
    .reg .pred %p<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<24>;
    .reg .f32 %f<9>;
    .shared .align 1024 .b8 smem[10304];
    ld.param.u64 %rd1, [map_a];
    ld.param.u64 %rd2, [map_b];
    ld.param.u64 %rd3, [out];
    ld.param.u32 %r2, [k0];
    mov.u32 %r1, %tid.x;
    mov.u32 %r3, smem;
    add.s32 %r4, %r3, 10240;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INIT_DONE;
    mov.u32 %r5, 1;
    mbarrier.init.shared::cta.b64 [%r4], %r5;
    fence.proxy.async.shared::cta;
INIT_DONE:
    bar.sync 0;
    @%p1 bra ISSUED;
    mov.u32 %r6, 10240;
    mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r4], %r6;
    mov.u32 %r7, 0;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r3], [%rd1, {%r2, %r7}], [%r4];
    add.s32 %r8, %r3, 8192;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r8], [%rd2, {%r2, %r7}], [%r4];
ISSUED:
    mov.u32 %r9, 0;
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p2, [%r4], %r9;
    @!%p2 bra WAIT;
    mov.u64 %rd4, 4611686293305360384;
    cvt.u64.u32 %rd5, %r3;
    shr.u64 %rd5, %rd5, 4;
    or.b64 %rd6, %rd4, %rd5;
    add.s64 %rd7, %rd6, 512;
    wgmma.fence.sync.aligned;
    setp.ne.u32 %p3, %r1, %r1;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd6, %rd7, %p3, 1, 1, 0, 0;
    setp.eq.u32 %p3, %r1, %r1;
    add.s64 %rd8, %rd6, 2;
    add.s64 %rd9, %rd7, 2;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd8, %rd9, %p3, 1, 1, 0, 0;
    add.s64 %rd8, %rd6, 4;
    add.s64 %rd9, %rd7, 4;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd8, %rd9, %p3, 1, 1, 0, 0;
    wgmma.commit_group.sync.aligned;
    add.s64 %rd8, %rd6, 6;
    add.s64 %rd9, %rd7, 6;
    wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1, %f2, %f3, %f4, %f5, %f6, %f7, %f8}, %rd8, %rd9, %p3, 1, 1, 0, 0;
    wgmma.commit_group.sync.aligned;
    wgmma.wait_group.sync.aligned 0;
    mul.wide.u32 %rd10, %r1, 32;
    add.s64 %rd9, %rd3, %rd10;
    {STORE}
    ret;
}
"#;

#[test]
fn tma_boxes_land_swizzled_with_zeros_past_the_edges_and_wgmma_reads_them_through_sw128_descriptors() {
    let s = sim(&WG_TMA_PTX.replace("{STORE}", STORE_ACCUMULATORS));
    // A: 50 rows x 100 k (row stride 104 elements: TMA needs 16-byte strides); B: 12 x 100.
    let (m_rows, n_rows, k_len, stride) = (50usize, 12usize, 100usize, 104usize);
    let a = |m: usize, k: usize| small(m * 100 + k);
    let b = |n: usize, k: usize| small(7000 + n * 100 + k);
    let matrix = |rows: usize, f: &dyn Fn(usize, usize) -> i32| -> Vec<u8> {
        let mut v = vec![0u8; rows * stride * 2];
        for r in 0..rows {
            for k in 0..k_len {
                v[(r * stride + k) * 2..(r * stride + k) * 2 + 2].copy_from_slice(&bf16(f(r, k)).to_le_bytes());
            }
        }
        v
    };
    let (a_d, b_d) = (upload(&s, &matrix(m_rows, &a)), upload(&s, &matrix(n_rows, &b)));
    let map = |base, rows, box_rows| TensorMap2d {
        base,
        dims: [k_len as u64, rows as u64],
        row_stride: (stride * 2) as u64,
        box_dims: [64, box_rows],
        elem_bytes: 2,
        swizzle: Swizzle::B128,
    };
    let map_a = upload(&s, &map(a_d, m_rows, 64).encode());
    let map_b = upload(&s, &map(b_d, n_rows, 16).encode());
    let out = upload(&s, &vec![0xCD; 128 * 8 * 4]);
    let k0 = 64usize;
    s.launch(
        "t",
        "wg_tma",
        [1, 1, 1],
        [128, 1, 1],
        0,
        &[SimArg::B64(map_a), SimArg::B64(map_b), SimArg::B64(out), SimArg::B32(k0 as u32)],
    )
    .expect("launch");
    let got = read_f32(&s, out, 128 * 8);
    for (tid, regs) in got.chunks(8).enumerate() {
        for (r, &v) in regs.iter().enumerate() {
            let (m, n) = accumulator(tid, r);
            // Rows past 50 (A), 12 (B) and k past 100 were filled with zeros by the copy.
            let want: i32 = if m < m_rows && n < n_rows { (k0..k_len).map(|k| a(m, k) * b(n, k)).sum() } else { 0 };
            assert_eq!(v, want as f32, "thread {tid} register {r} (row {m}, column {n})");
        }
    }
    // The mbarrier orders the copy's writes before the wgmma's reads for the sanitizer.
    assert!(s.take_findings().is_empty(), "{:?}", s.take_findings());
}

// ---------------------------------------------------------------------------------------------
// Faults of the scheduling: warpgroups and mbarrier waits
// ---------------------------------------------------------------------------------------------

const WARPGROUP_EXIT_PTX: &str = r#"
.visible .entry wg_exit()
{
    .reg .pred %p<2>;
    .reg .b32 %r<2>;
    mov.u32 %r1, %tid.x;
    setp.ge.u32 %p1, %r1, 96;
    @%p1 bra DONE;
    wgmma.fence.sync.aligned;
DONE:
    ret;
}
"#;

#[test]
fn a_warpgroup_collective_that_one_warp_skips_is_a_fault() {
    let s = sim(WARPGROUP_EXIT_PTX);
    let line = line_of(WARPGROUP_EXIT_PTX, "wgmma.fence");
    expect_fault(s.launch("t", "wg_exit", [1, 1, 1], [128, 1, 1], 0, &[]), line, "never reach it");
    // A block of two warps has no whole warpgroup.
    expect_fault(s.launch("t", "wg_exit", [1, 1, 1], [64, 1, 1], 0, &[]), line, "not whole warpgroups");
}

const MBARRIER_PTX: &str = r#"
.visible .entry mbar_phases(
    .param .u64 out,
    .param .u32 arrivals
)
{
    .reg .pred %p<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<4>;
    .shared .align 8 .b8 smem[16];
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r10, [arrivals];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, smem;
    add.s32 %r3, %r2, 8;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra READY;
    mov.u32 %r4, 1;
    mbarrier.init.shared::cta.b64 [%r2], %r4;
READY:
    bar.sync 0;
    setp.ne.u32 %p2, %r1, 32;
    @%p2 bra CONSUMER;
    mov.u32 %r5, 7;
    st.shared.u32 [%r3], %r5;
    setp.eq.u32 %p3, %r10, 0;
    @%p3 bra DONE;
    mbarrier.arrive.shared::cta.b64 %rd2, [%r2];
    bra DONE;
CONSUMER:
    @%p1 bra DONE;
    mov.u32 %r8, 0;
WAIT0:
    mbarrier.try_wait.parity.shared::cta.b64 %p3, [%r2], %r8;
    @!%p3 bra WAIT0;
    ld.shared.u32 %r7, [%r3];
    st.global.u32 [%rd1], %r7;
    mbarrier.arrive.shared::cta.b64 %rd2, [%r2];
    mov.u32 %r6, 1;
WAIT1:
    mbarrier.try_wait.parity.shared::cta.b64 %p3, [%r2], %r6;
    @!%p3 bra WAIT1;
    st.global.u32 [%rd1+4], %r6;
DONE:
    ret;
}
"#;

#[test]
fn try_wait_parity_waits_for_each_phase_and_a_wait_nothing_can_complete_is_a_deadlock() {
    // Thread 0 (warp 0, scheduled first) waits on phase 0, which thread 32 completes (count 1)
    // after writing 7; thread 0 reads the 7, completes phase 1 itself and waits on it.
    let s = sim(MBARRIER_PTX);
    let out = upload(&s, &[0xCD; 8]);
    s.launch("t", "mbar_phases", [1, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(1)]).expect("launch");
    let mut got = [0u8; 8];
    s.read(out, &mut got).expect("read");
    assert_eq!(got, [7, 0, 0, 0, 1, 0, 0, 0]);
    assert!(s.take_findings().is_empty(), "{:?}", s.take_findings());
    // Without thread 32's arrival phase 0 never completes.
    let line = line_of(MBARRIER_PTX, "[%r2], %r8;");
    expect_fault(
        s.launch("t", "mbar_phases", [1, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(0)]),
        line,
        "deadlock",
    );
}
