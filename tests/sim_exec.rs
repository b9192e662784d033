//! The PTX simulator's semantics, one instruction family at a time, on hand-written PTX: warp
//! shuffles (every mode, clamps, segments, the predicate output), divergence and reconvergence,
//! bar.sync, cp.async groups, integer widening, NaN comparisons, copysign and bf16x2 packing,
//! prmt in every mode, atom / red on shared and global memory (and the sanitizer's view of them);
//! and the errors: an unknown instruction, a collective with lanes missing, misaligned and
//! uninitialised accesses, wrong arguments, a block over `.maxntid`.
//!
//! Each kernel writes what it computed to global memory; the expected values are written out
//! by hand from the PTX ISA, not computed by a second model of the instruction.

use labelfree::device::sim::{FindingKind, SimArg, SimError, SimOptions, Simulator};

const HEADER: &str = ".version 9.0\n.target sm_80\n.address_size 64\n";

/// A simulator holding one module `t` made of `entries` (PTX text after the header).
fn sim_of(entries: &str, options: SimOptions) -> Simulator {
    let text: &'static str = Box::leak(format!("{HEADER}{entries}").into_boxed_str());
    Simulator::new(&[("t", text)], options)
}

fn sim(entries: &str) -> Simulator {
    sim_of(entries, SimOptions::default())
}

/// A device buffer of `words` u32 poisoned with 0xCDCDCDCD.
fn poisoned(sim: &Simulator, words: usize) -> u64 {
    let addr = sim.alloc(words * 4).expect("alloc");
    sim.fill(addr, words * 4, 0xCD).expect("fill");
    addr
}

fn read_u32(sim: &Simulator, addr: u64, words: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; words * 4];
    sim.read(addr, &mut bytes).expect("read");
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn read_u64(sim: &Simulator, addr: u64, words: usize) -> Vec<u64> {
    let mut bytes = vec![0u8; words * 8];
    sim.read(addr, &mut bytes).expect("read");
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

fn write_u32(sim: &Simulator, addr: u64, values: &[u32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    sim.write(addr, &bytes).expect("write");
}

/// The 1-based line of the first line of the module text (header included) containing `needle`.
fn line_of(entries: &str, needle: &str) -> u32 {
    let text = format!("{HEADER}{entries}");
    let i = text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not in the PTX"));
    i as u32 + 1
}

// ---------------------------------------------------------------------------------------------
// shfl.sync
// ---------------------------------------------------------------------------------------------

/// Lane l holds 10 * l + 1; writes what `shfl.sync.MODE` gave it to out[l] and its predicate
/// to out[32 + l].
fn shfl_kernel(mode: &str) -> String {
    format!(
        r#"
.visible .entry shfl_{mode}(
    .param .u64 out_param,
    .param .u32 b_param,
    .param .u32 c_param
)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out_param];
    ld.param.u32 %r1, [b_param];
    ld.param.u32 %r2, [c_param];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r4, %r3, 10, 1;
    shfl.sync.{mode}.b32 %r5|%p1, %r4, %r1, %r2, -1;
    selp.u32 %r6, 1, 0, %p1;
    mul.wide.u32 %rd3, %r3, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r5;
    st.global.u32 [%rd4+128], %r6;
    ret;
}}
"#
    )
}

/// Runs one shuffle and checks every lane against `expect(lane) -> (source lane, predicate)`.
fn check_shfl(mode: &str, b: u32, c: u32, expect: impl Fn(u32) -> (u32, bool)) {
    let s = sim(&shfl_kernel(mode));
    let out = poisoned(&s, 64);
    s.launch(
        "t",
        &format!("shfl_{mode}"),
        [1, 1, 1],
        [32, 1, 1],
        0,
        &[SimArg::B64(out), SimArg::B32(b), SimArg::B32(c)],
    )
    .expect("launch");
    let got = read_u32(&s, out, 64);
    for lane in 0..32u32 {
        let (src, p) = expect(lane);
        assert_eq!(
            (got[lane as usize], got[32 + lane as usize]),
            (10 * src + 1, p as u32),
            "shfl.{mode} b={b} c={c:#x}: lane {lane} should read lane {src} with predicate {p}"
        );
    }
    assert!(s.take_findings().is_empty());
}

#[test]
fn shfl_down_past_the_clamp_keeps_its_own_value_and_clears_the_predicate() {
    // Full warp (c = 0x1f): lanes 28..31 would read lanes 32..35.
    check_shfl("down", 4, 0x1f, |l| if l + 4 <= 31 { (l + 4, true) } else { (l, false) });
    // Segments of 8 (c = (32 - 8) << 8 | 0x1f): the clamp is the segment's last lane.
    check_shfl("down", 2, 0x181f, |l| if l % 8 + 2 <= 7 { (l + 2, true) } else { (l, false) });
}

#[test]
fn shfl_up_below_the_segment_start_keeps_its_own_value() {
    check_shfl("up", 3, 0, |l| if l >= 3 { (l - 3, true) } else { (l, false) });
    // Segments of 8 (c = (32 - 8) << 8, clamp 0).
    check_shfl("up", 3, 0x1800, |l| if l % 8 >= 3 { (l - 3, true) } else { (l, false) });
}

#[test]
fn shfl_bfly_swaps_and_a_small_clamp_refuses_the_high_lanes() {
    check_shfl("bfly", 5, 0x1f, |l| (l ^ 5, true));
    // Clamp 15, no segments: lanes 0..15 would read 16..31 (> 15), lanes 16..31 read 0..15.
    check_shfl("bfly", 16, 0x0f, |l| if l < 16 { (l, false) } else { (l ^ 16, true) });
}

#[test]
fn shfl_idx_reads_the_lane_within_its_segment() {
    check_shfl("idx", 7, 0x1f, |_| (7, true));
    // Only b[4:0] counts: 40 reads lane 8.
    check_shfl("idx", 40, 0x1f, |_| (8, true));
    // Segments of 8: lane 3 of each lane's own segment.
    check_shfl("idx", 3, 0x181f, |l| ((l & 24) | 3, true));
}

#[test]
fn a_shfl_whose_member_lanes_do_not_all_execute_it_is_a_fault() {
    // Lanes 16..31 branch past the shuffle; lanes 0..15 shuffle with the given member mask.
    let ptx = r#"
.visible .entry half_warp_shfl(
    .param .u64 out_param,
    .param .u32 mask_param
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out_param];
    ld.param.u32 %r1, [mask_param];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r3, %tid.x;
    setp.ge.u32 %p1, %r3, 16;
    @%p1 bra DONE;
    shfl.sync.bfly.b32 %r5, %r3, 1, 31, %r1;
    mul.wide.u32 %rd3, %r3, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r5;
DONE:
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 32);
    // The member mask names the half warp that is there: fine.
    s.launch("t", "half_warp_shfl", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(0xffff)])
        .expect("launch");
    let got = read_u32(&s, out, 32);
    assert_eq!(&got[..16], &(0..16u32).map(|l| l ^ 1).collect::<Vec<_>>()[..]);
    assert!(got[16..].iter().all(|&v| v == 0xCDCD_CDCD), "lanes 16.. store nothing");

    // The whole warp named, half of it elsewhere: a fault at the shuffle's line.
    let err = s
        .launch("t", "half_warp_shfl", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(u32::MAX)])
        .expect_err("a shuffle with lanes 16..31 missing must fault");
    match err {
        SimError::Fault { kernel, ptx_line, message, .. } => {
            assert_eq!(kernel, "half_warp_shfl");
            assert_eq!(ptx_line, line_of(ptx, "shfl.sync.bfly"));
            assert!(message.contains("member mask 0xffffffff") && message.contains("lane 16"), "{message}");
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Divergence, reconvergence, barriers
// ---------------------------------------------------------------------------------------------

const LOOP_PTX: &str = r#"
.visible .entry lane_loop(
    .param .u64 out_param,
    .param .u32 uniform_param
)
{
    .reg .pred %p<3>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out_param];
    ld.param.u32 %r9, [uniform_param];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r1, %tid.x;
    add.s32 %r2, %r1, 1;
    setp.ne.s32 %p2, %r9, 0;
    selp.b32 %r2, 32, %r2, %p2;
    mov.u32 %r3, 0;
    mov.u32 %r4, 0;
LOOP:
    add.s32 %r4, %r4, %r3;
    add.s32 %r3, %r3, 1;
    setp.lt.u32 %p1, %r3, %r2;
    @%p1 bra LOOP;
    shfl.sync.bfly.b32 %r5, %r4, 1, 31, -1;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r4;
    st.global.u32 [%rd4+128], %r5;
    ret;
}
"#;

#[test]
fn lanes_with_different_loop_counts_reconverge_before_a_full_warp_shuffle() {
    let s = sim_of(LOOP_PTX, SimOptions { sanitize: true, profile: true, ..SimOptions::default() });
    let out = poisoned(&s, 64);
    // Lane l loops l + 1 times: acc = 0 + 1 + ... + l.
    s.launch("t", "lane_loop", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(0)]).expect("divergent");
    let got = read_u32(&s, out, 64);
    for l in 0..32u32 {
        assert_eq!(got[l as usize], l * (l + 1) / 2, "lane {l} sum");
        let o = l ^ 1;
        assert_eq!(got[32 + l as usize], o * (o + 1) / 2, "lane {l} shuffled sum");
    }
    // Every lane loops 32 times.
    s.launch("t", "lane_loop", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(1)]).expect("uniform");
    assert_eq!(read_u32(&s, out, 1)[0], 31 * 32 / 2);
    let p = s.take_profiles();
    assert_eq!(p.len(), 2);
    // SIMT: the warp issues the 4-instruction body 32 times either way; only the lanes active
    // in it differ, by 4 * (32 * 32 - (1 + 2 + ... + 32)) thread instructions.
    assert_eq!(p[0].warp_instructions, p[1].warp_instructions, "the divergent warp issues as many as the uniform one");
    assert_eq!(p[1].thread_instructions - p[0].thread_instructions, 4 * (32 * 32 - 32 * 33 / 2));
    assert!(s.take_findings().is_empty());
}

/// Two warps: each thread writes its word of shared memory, then reads its neighbour's
/// (thread 31 reads thread 32's, in the other warp). `{BARRIER}` is `bar.sync 0;` or nothing.
const NEIGHBOUR_PTX: &str = r#"
.visible .entry neighbour(
    .param .u64 out_param
)
{
    .reg .b32 %r<10>;
    .reg .b64 %rd<5>;
    .shared .align 4 .b8 buf[256];
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd2, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, buf;
    shl.b32 %r3, %r1, 2;
    add.s32 %r4, %r2, %r3;
    mul.lo.s32 %r5, %r1, 3;
    st.shared.u32 [%r4], %r5;
    {BARRIER}
    add.s32 %r6, %r1, 1;
    and.b32 %r6, %r6, 63;
    shl.b32 %r7, %r6, 2;
    add.s32 %r8, %r2, %r7;
    ld.shared.u32 %r9, [%r8];
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r9;
    ret;
}
"#;

#[test]
fn bar_sync_orders_shared_writes_before_reads_of_other_warps() {
    let ptx = NEIGHBOUR_PTX.replace("{BARRIER}", "bar.sync 0;");
    let s = sim(&ptx);
    let out = poisoned(&s, 64);
    s.launch("t", "neighbour", [1, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out)]).expect("launch");
    let got = read_u32(&s, out, 64);
    assert_eq!(got, (0..64u32).map(|t| ((t + 1) % 64) * 3).collect::<Vec<_>>());
    assert!(s.take_findings().is_empty());
    let counts = s.launch_counts();
    assert_eq!(counts.get(&("t".to_string(), "neighbour".to_string())), Some(&1));

    // Without the barrier: thread 0 reads thread 1's word with nothing ordering them (lanes of
    // a warp are not ordered without a collective), thread 31 reads word 32 before warp 1 wrote
    // it, and warp 1's store then overwrites a word thread 31 read.
    let ptx = NEIGHBOUR_PTX.replace("{BARRIER}", "");
    let s = sim(&ptx);
    let out = poisoned(&s, 64);
    s.launch("t", "neighbour", [1, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out)]).expect("launch");
    let findings = s.take_findings();
    let (load, store) = (line_of(&ptx, "ld.shared.u32"), line_of(&ptx, "st.shared.u32"));
    let race_at = |line: u32| {
        findings
            .iter()
            .find(|f| f.kind == FindingKind::SharedRace && f.ptx_line == line)
            .unwrap_or_else(|| panic!("no race at line {line}: {findings:?}"))
    };
    assert!(race_at(load).message.contains("read after write by thread 1 "), "{:?}", race_at(load));
    assert!(race_at(store).message.contains("write after read by thread 31 "), "{:?}", race_at(store));
    for f in &findings {
        assert!(
            matches!((f.kind, f.ptx_line), (FindingKind::SharedRace, _) | (FindingKind::SharedUninitializedRead, _))
                && (f.ptx_line == load || f.ptx_line == store),
            "unexpected finding {f:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------------------------

const CP_ASYNC_PTX: &str = r#"
.visible .entry cp_groups(
    .param .u64 out_param,
    .param .u64 a_param,
    .param .u64 b_param
)
{
    .reg .b32 %r<16>;
    .reg .b64 %rd<12>;
    .shared .align 16 .b8 sa[128];
    .shared .align 16 .b8 sb[128];
    ld.param.u64 %rd1, [out_param];
    ld.param.u64 %rd2, [a_param];
    ld.param.u64 %rd3, [b_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 2;
    mov.u32 %r3, sa;
    add.s32 %r3, %r3, %r2;
    mov.u32 %r4, sb;
    add.s32 %r4, %r4, %r2;
    or.b32 %r5, %r1, 0xAAAA0000;
    st.shared.u32 [%r3], %r5;
    or.b32 %r6, %r1, 0xBBBB0000;
    st.shared.u32 [%r4], %r6;
    mul.wide.u32 %rd4, %r1, 4;
    add.s64 %rd5, %rd2, %rd4;
    add.s64 %rd6, %rd3, %rd4;
    cp.async.ca.shared.global [%r3], [%rd5], 4;
    cp.async.commit_group;
    cp.async.ca.shared.global [%r4], [%rd6], 4;
    cp.async.commit_group;
    ld.shared.u32 %r10, [%r3];
    cp.async.wait_group 1;
    ld.shared.u32 %r11, [%r3];
    ld.shared.u32 %r12, [%r4];
    cp.async.wait_group 0;
    ld.shared.u32 %r13, [%r4];
    add.s64 %rd7, %rd1, %rd4;
    st.global.u32 [%rd7], %r10;
    st.global.u32 [%rd7+128], %r11;
    st.global.u32 [%rd7+256], %r12;
    st.global.u32 [%rd7+384], %r13;
    ret;
}
"#;

#[test]
fn cp_async_lands_at_the_wait_that_retires_its_group() {
    let s = sim(CP_ASYNC_PTX);
    let out = poisoned(&s, 128);
    let a = s.alloc(128).expect("alloc");
    let b = s.alloc(128).expect("alloc");
    write_u32(&s, a, &(0..32u32).map(|t| 0x1000 + t).collect::<Vec<_>>());
    write_u32(&s, b, &(0..32u32).map(|t| 0x2000 + t).collect::<Vec<_>>());
    s.launch("t", "cp_groups", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out), SimArg::B64(a), SimArg::B64(b)])
        .expect("launch");
    let got = read_u32(&s, out, 128);
    for t in 0..32u32 {
        let old_a = 0xAAAA_0000 | t;
        let old_b = 0xBBBB_0000 | t;
        let at = |k: usize| got[k * 32 + t as usize];
        assert_eq!(at(0), old_a, "thread {t}: before any wait the destination holds its old bytes");
        assert_eq!(at(1), 0x1000 + t, "thread {t}: wait_group 1 retires the older group");
        assert_eq!(at(2), old_b, "thread {t}: ... but not the newer one");
        assert_eq!(at(3), 0x2000 + t, "thread {t}: wait_group 0 retires all");
    }
    assert!(s.take_findings().is_empty(), "each thread reads only its own bytes");
}

// ---------------------------------------------------------------------------------------------
// Integer widening, NaN comparisons, copysign, bf16x2
// ---------------------------------------------------------------------------------------------

#[test]
fn wide_multiplies_and_conversions_extend_by_the_source_type() {
    let ptx = r#"
.visible .entry widen(
    .param .u64 out_param,
    .param .u32 x_param
)
{
    .reg .b32 %r<2>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [out_param];
    ld.param.u32 %r1, [x_param];
    cvta.to.global.u64 %rd1, %rd1;
    mul.wide.s32 %rd2, %r1, 4;
    mul.wide.u32 %rd3, %r1, 4;
    cvt.s64.s32 %rd4, %r1;
    cvt.u64.u32 %rd5, %r1;
    mad.wide.s32 %rd6, %r1, 3, 100;
    st.global.u64 [%rd1], %rd2;
    st.global.u64 [%rd1+8], %rd3;
    st.global.u64 [%rd1+16], %rd4;
    st.global.u64 [%rd1+24], %rd5;
    st.global.u64 [%rd1+32], %rd6;
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 10);
    let x = -5i32;
    s.launch("t", "widen", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(x as u32)]).expect("launch");
    let got = read_u64(&s, out, 5);
    assert_eq!(got[0] as i64, -20, "mul.wide.s32 sign-extends");
    assert_eq!(got[1], 0xFFFF_FFFB_u64 * 4, "mul.wide.u32 zero-extends");
    assert_eq!(got[2] as i64, -5, "cvt.s64.s32 sign-extends");
    assert_eq!(got[3], 0xFFFF_FFFB, "cvt.u64.u32 zero-extends");
    assert_eq!(got[4] as i64, 85, "mad.wide.s32: -5 * 3 + 100");
}

#[test]
fn ordered_comparisons_are_false_on_nan_and_unordered_ones_true() {
    let ptx = r#"
.visible .entry compare(
    .param .u64 out_param,
    .param .f32 a_param,
    .param .f32 b_param
)
{
    .reg .pred %p<9>;
    .reg .f32 %f<3>;
    .reg .b32 %r<9>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    ld.param.f32 %f1, [a_param];
    ld.param.f32 %f2, [b_param];
    cvta.to.global.u64 %rd1, %rd1;
    setp.eq.f32 %p1, %f1, %f2;
    setp.ne.f32 %p2, %f1, %f2;
    setp.equ.f32 %p3, %f1, %f2;
    setp.neu.f32 %p4, %f1, %f2;
    setp.lt.f32 %p5, %f1, %f2;
    setp.ltu.f32 %p6, %f1, %f2;
    setp.num.f32 %p7, %f1, %f2;
    setp.nan.f32 %p8, %f1, %f2;
    selp.u32 %r1, 1, 0, %p1;
    selp.u32 %r2, 1, 0, %p2;
    selp.u32 %r3, 1, 0, %p3;
    selp.u32 %r4, 1, 0, %p4;
    selp.u32 %r5, 1, 0, %p5;
    selp.u32 %r6, 1, 0, %p6;
    selp.u32 %r7, 1, 0, %p7;
    selp.u32 %r8, 1, 0, %p8;
    st.global.v4.u32 [%rd1], {%r1, %r2, %r3, %r4};
    st.global.v4.u32 [%rd1+16], {%r5, %r6, %r7, %r8};
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 8);
    //                        eq ne equ neu lt ltu num nan
    let cases: [(f32, f32, [u32; 8]); 4] = [
        (f32::NAN, 1.0, [0, 0, 1, 1, 0, 1, 0, 1]),
        (1.0, f32::NAN, [0, 0, 1, 1, 0, 1, 0, 1]),
        (1.0, 1.0, [1, 0, 1, 0, 0, 0, 1, 0]),
        (1.0, 2.0, [0, 1, 0, 1, 1, 1, 1, 0]),
    ];
    for (a, b, want) in cases {
        let args = [SimArg::B64(out), SimArg::B32(a.to_bits()), SimArg::B32(b.to_bits())];
        s.launch("t", "compare", [1, 1, 1], [1, 1, 1], 0, &args).expect("launch");
        assert_eq!(read_u32(&s, out, 8), want, "setp eq/ne/equ/neu/lt/ltu/num/nan of {a} and {b}");
    }
}

#[test]
fn copysign_takes_the_sign_of_its_first_operand_and_the_magnitude_of_its_second() {
    let ptx = r#"
.visible .entry copysign_f32(
    .param .u64 out_param,
    .param .f32 a_param,
    .param .f32 b_param
)
{
    .reg .f32 %f<4>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    ld.param.f32 %f1, [a_param];
    ld.param.f32 %f2, [b_param];
    cvta.to.global.u64 %rd1, %rd1;
    copysign.f32 %f3, %f1, %f2;
    st.global.f32 [%rd1], %f3;
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 1);
    for (a, b, want) in [(-1.0f32, 2.0f32, -2.0f32), (1.0, -3.0, 3.0), (-0.0, 5.5, -5.5), (7.0, -0.25, 0.25)] {
        s.launch(
            "t",
            "copysign_f32",
            [1, 1, 1],
            [1, 1, 1],
            0,
            &[SimArg::B64(out), SimArg::B32(a.to_bits()), SimArg::B32(b.to_bits())],
        )
        .expect("launch");
        assert_eq!(f32::from_bits(read_u32(&s, out, 1)[0]), want, "copysign.f32 d, {a}, {b}");
    }
}

#[test]
fn cvt_bf16x2_puts_the_first_operand_in_the_upper_half_and_rounds_to_nearest_even() {
    let ptx = r#"
.visible .entry pack_bf16x2(
    .param .u64 out_param,
    .param .f32 a_param,
    .param .f32 b_param
)
{
    .reg .f32 %f<3>;
    .reg .b32 %r<2>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    ld.param.f32 %f1, [a_param];
    ld.param.f32 %f2, [b_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvt.rn.bf16x2.f32 %r1, %f1, %f2;
    st.global.u32 [%rd1], %r1;
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 1);
    let cases: [(u32, u32, u32); 3] = [
        // 1.0 (0x3f80) above, 2.0 (0x4000) below.
        (0x3F80_0000, 0x4000_0000, 0x3F80_4000),
        // Ties go to even: 0x3f80|8000 -> 0x3f80, 0x3f81|8000 -> 0x3f82.
        (0x3F80_8000, 0x3F81_8000, 0x3F80_3F82),
        // Above the tie rounds up.
        (0x3F80_8001, 0xBF80_7FFF, 0x3F81_BF80),
    ];
    for (a, b, want) in cases {
        s.launch("t", "pack_bf16x2", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(a), SimArg::B32(b)])
            .expect("launch");
        let got = read_u32(&s, out, 1)[0];
        assert_eq!(got, want, "cvt.rn.bf16x2.f32 of {a:#010x}, {b:#010x}: {got:#010x}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sanitizer findings and faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_read_of_shared_memory_nobody_wrote_is_reported_at_its_line() {
    let ptx = r#"
.visible .entry uninit(
    .param .u64 out_param
)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<4>;
    .shared .align 4 .b8 buf[128];
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, buf;
    shl.b32 %r3, %r1, 2;
    add.s32 %r2, %r2, %r3;
    ld.shared.u32 %r3, [%r2];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 32);
    s.launch("t", "uninit", [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(out)]).expect("launch");
    let findings = s.take_findings();
    assert!(!findings.is_empty());
    for f in &findings {
        assert_eq!(f.kind, FindingKind::SharedUninitializedRead, "{f:?}");
        assert_eq!(f.kernel, "uninit");
        assert_eq!(f.ptx_line, line_of(ptx, "ld.shared.u32"));
        assert!(f.message.contains("never written"), "{}", f.message);
    }
}

const MISALIGNED_PTX: &str = r#"
.visible .entry misaligned_global(
    .param .u64 in_param,
    .param .u64 out_param
)
{
    .reg .b32 %r<2>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [in_param];
    ld.param.u64 %rd2, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    ld.global.u32 %r1, [%rd1+2];
    st.global.u32 [%rd2], %r1;
    ret;
}

.visible .entry misaligned_vector(
    .param .u64 in_param,
    .param .u64 out_param
)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [in_param];
    ld.param.u64 %rd2, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    ld.global.v2.u32 {%r1, %r2}, [%rd1+4];
    st.global.u32 [%rd2], %r1;
    ret;
}

.visible .entry misaligned_shared(
    .param .u64 out_param
)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<2>;
    .shared .align 4 .b8 buf[64];
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, buf;
    st.shared.u32 [%r1+2], %r1;
    st.global.u32 [%rd1], %r1;
    ret;
}
"#;

fn expect_fault(result: Result<(), SimError>, kernel: &str, line: u32, says: &str) {
    match result {
        Err(SimError::Fault { kernel: k, ptx_line, message, .. }) => {
            assert_eq!(k, kernel);
            assert_eq!(ptx_line, line, "{message}");
            assert!(message.contains(says), "`{message}` should say `{says}`");
        }
        other => panic!("{kernel}: expected a fault saying `{says}`, got {other:?}"),
    }
}

#[test]
fn misaligned_accesses_fault_and_shared_ones_are_reported() {
    let s = sim(MISALIGNED_PTX);
    let input = s.alloc(64).expect("alloc");
    let out = poisoned(&s, 4);
    let args = [SimArg::B64(input), SimArg::B64(out)];
    let r = s.launch("t", "misaligned_global", [1, 1, 1], [1, 1, 1], 0, &args);
    expect_fault(r, "misaligned_global", line_of(MISALIGNED_PTX, "[%rd1+2]"), "misaligned 4-byte global access");
    // A v2.u32 is one 8-byte access: 4-byte alignment is not enough.
    let r = s.launch("t", "misaligned_vector", [1, 1, 1], [1, 1, 1], 0, &args);
    expect_fault(
        r,
        "misaligned_vector",
        line_of(MISALIGNED_PTX, "ld.global.v2.u32"),
        "misaligned 8-byte global access",
    );
    let r = s.launch("t", "misaligned_shared", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(out)]);
    let line = line_of(MISALIGNED_PTX, "st.shared.u32 [%r1+2]");
    expect_fault(r, "misaligned_shared", line, "misaligned 4-byte shared access");
    let findings = s.take_findings();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!((findings[0].kind, findings[0].ptx_line), (FindingKind::MisalignedAccess, line));
    assert_eq!(read_u32(&s, out, 1)[0], 0xCDCD_CDCD, "no faulting kernel got to its store");
}

// ---------------------------------------------------------------------------------------------
// Launch errors
// ---------------------------------------------------------------------------------------------

const TWO_ENTRIES_PTX: &str = r#"
.visible .entry good(
    .param .u64 out_param,
    .param .u32 value_param
)
.maxntid 64, 1, 1
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out_param];
    ld.param.u32 %r1, [value_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r2, %tid.x;
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r1;
    ret;
}

.visible .entry reverses_bits(
    .param .u64 out_param
)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    brev.b32 %r2, %r1;
    st.global.u32 [%rd1], %r2;
    ret;
}
"#;

#[test]
fn an_unknown_instruction_is_named_with_its_kernel_and_line_and_nothing_runs() {
    let s = sim(TWO_ENTRIES_PTX);
    let out = poisoned(&s, 64);
    let err = s.launch("t", "reverses_bits", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(out)]).expect_err("brev");
    let line = line_of(TWO_ENTRIES_PTX, "brev.b32");
    match &err {
        SimError::Launch { kernel, message } => {
            assert_eq!(kernel, "reverses_bits");
            assert!(message.contains("`brev.b32`") && message.contains("not implemented"), "{message}");
            assert!(message.contains(&format!("PTX line {line}")), "{message}");
        }
        other => panic!("expected a launch error, got {other:?}"),
    }
    assert_eq!(read_u32(&s, out, 1)[0], 0xCDCD_CDCD, "nothing ran");
    assert!(s.launch_counts().is_empty(), "a kernel that cannot be lowered is not counted as launched");
    let lowering = s.lowering_errors().expect("module parses");
    assert_eq!(lowering.len(), 1, "{lowering:?}");
    assert!(lowering[0].contains("reverses_bits") && lowering[0].contains("brev.b32"), "{lowering:?}");
    // The module's other kernel is unaffected.
    s.launch("t", "good", [1, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(7)]).expect("good runs");
    assert_eq!(read_u32(&s, out, 64), vec![7; 64]);
}

#[test]
fn wrong_argument_counts_and_widths_are_refused_before_running() {
    let s = sim(TWO_ENTRIES_PTX);
    let out = poisoned(&s, 64);
    let launch_message = |args: &[SimArg]| match s.launch("t", "good", [1, 1, 1], [32, 1, 1], 0, args) {
        Err(SimError::Launch { kernel, message }) => {
            assert_eq!(kernel, "good");
            message
        }
        other => panic!("expected a launch error for {args:?}, got {other:?}"),
    };
    assert_eq!(launch_message(&[SimArg::B64(out)]), "1 arguments for 2 parameters");
    assert_eq!(launch_message(&[SimArg::B64(out), SimArg::B32(1), SimArg::B32(2)]), "3 arguments for 2 parameters");
    // The pointer passed as 32 bits; the value as 64.
    assert_eq!(launch_message(&[SimArg::B32(out as u32), SimArg::B32(1)]), "argument 0 is 4 bytes, the parameter 8");
    assert_eq!(launch_message(&[SimArg::B64(out), SimArg::B64(1)]), "argument 1 is 8 bytes, the parameter 4");
    assert_eq!(read_u32(&s, out, 1)[0], 0xCDCD_CDCD, "nothing ran");
    assert!(s.launch_counts().is_empty());
}

#[test]
fn a_block_larger_than_maxntid_is_refused() {
    let s = sim(TWO_ENTRIES_PTX);
    let out = poisoned(&s, 128);
    let args = [SimArg::B64(out), SimArg::B32(3)];
    match s.launch("t", "good", [1, 1, 1], [128, 1, 1], 0, &args) {
        Err(SimError::Launch { message, .. }) => assert!(message.contains(".maxntid [64, 1, 1]"), "{message}"),
        other => panic!("expected a launch error, got {other:?}"),
    }
    // 64 = 32 x 2 is within the limit too.
    s.launch("t", "good", [1, 1, 1], [32, 2, 1], 0, &args).expect("64 threads");
    s.launch("t", "good", [1, 1, 1], [64, 1, 1], 0, &args).expect("64 threads");
    assert!(s.launch("t", "good", [1, 1, 1], [33, 2, 1], 0, &args).is_err(), "66 threads");
}

// ---------------------------------------------------------------------------------------------
// Module-scope shared memory
// ---------------------------------------------------------------------------------------------

/// nvcc declares a function's `__shared__` array at module scope when the function is inlined
/// into two entries; each entry's CTAs then have their own copy.
const MODULE_SHARED_PTX: &str = r#"
.shared .align 4 .b8 module_buf[256];

.visible .entry reverse_a(
    .param .u64 out_param
)
{
    .reg .b32 %r<8>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, module_buf;
    shl.b32 %r3, %r1, 2;
    add.s32 %r4, %r2, %r3;
    st.shared.u32 [%r4], %r1;
    bar.sync 0;
    sub.s32 %r5, 252, %r3;
    add.s32 %r6, %r2, %r5;
    ld.shared.u32 %r7, [%r6];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r7;
    ret;
}

.visible .entry reverse_b(
    .param .u64 out_param
)
{
    .reg .b32 %r<8>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, module_buf;
    shl.b32 %r3, %r1, 2;
    add.s32 %r4, %r2, %r3;
    add.s32 %r5, %r1, 100;
    st.shared.u32 [%r4], %r5;
    bar.sync 0;
    sub.s32 %r5, 252, %r3;
    add.s32 %r6, %r2, %r5;
    ld.shared.u32 %r7, [%r6];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r7;
    ret;
}
"#;

#[test]
fn a_module_scope_shared_array_is_shared_memory_of_each_entry_that_names_it() {
    let s = sim(MODULE_SHARED_PTX);
    assert!(s.lowering_errors().expect("parses").is_empty());
    let entries = s.entries().expect("entries");
    assert!(entries.iter().all(|e| e.static_shared_bytes == 256), "{entries:?}");
    let out = poisoned(&s, 64);
    s.launch("t", "reverse_a", [2, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out)]).expect("reverse_a");
    assert_eq!(read_u32(&s, out, 64), (0..64u32).rev().collect::<Vec<_>>());
    s.launch("t", "reverse_b", [2, 1, 1], [64, 1, 1], 0, &[SimArg::B64(out)]).expect("reverse_b");
    assert_eq!(read_u32(&s, out, 64), (0..64u32).rev().map(|t| t + 100).collect::<Vec<_>>());
    assert!(s.take_findings().is_empty());
}

// ---------------------------------------------------------------------------------------------
// prmt.b32
// ---------------------------------------------------------------------------------------------

/// `prmt.b32{mode} out[0], a, b, c` with a, b and c from parameters.
fn prmt_kernel(mode: &str) -> String {
    let (name, suffix) = if mode.is_empty() { ("generic", String::new()) } else { (mode, format!(".{mode}")) };
    format!(
        r#"
.visible .entry prmt_{name}(
    .param .u64 out_param,
    .param .u32 a_param,
    .param .u32 b_param,
    .param .u32 c_param
)
{{
    .reg .b32 %r<5>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    ld.param.u32 %r1, [a_param];
    ld.param.u32 %r2, [b_param];
    ld.param.u32 %r3, [c_param];
    prmt.b32{suffix} %r4, %r1, %r2, %r3;
    st.global.u32 [%rd1], %r4;
    ret;
}}
"#
    )
}

/// The result of `prmt.b32{mode}` on the simulator.
fn run_prmt(s: &Simulator, mode: &str, a: u32, b: u32, c: u32) -> u32 {
    let name = if mode.is_empty() { "generic" } else { mode };
    let out = poisoned(s, 1);
    s.launch(
        "t",
        &format!("prmt_{name}"),
        [1, 1, 1],
        [1, 1, 1],
        0,
        &[SimArg::B64(out), SimArg::B32(a), SimArg::B32(b), SimArg::B32(c)],
    )
    .expect("launch");
    let v = read_u32(s, out, 1)[0];
    s.free(out).expect("free");
    v
}

/// The ISA's table of the named modes as it is printed: for each mode and c[1:0], the source
/// byte of d.b3, d.b2, d.b1, d.b0 (in that order).
const PRMT_TABLE: [(&str, [[u32; 4]; 4]); 6] = [
    ("f4e", [[3, 2, 1, 0], [4, 3, 2, 1], [5, 4, 3, 2], [6, 5, 4, 3]]),
    ("b4e", [[5, 6, 7, 0], [6, 7, 0, 1], [7, 0, 1, 2], [0, 1, 2, 3]]),
    ("rc8", [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]),
    ("ecl", [[3, 2, 1, 0], [3, 2, 1, 1], [3, 2, 2, 2], [3, 3, 3, 3]]),
    ("ecr", [[0, 0, 0, 0], [1, 1, 1, 0], [2, 2, 1, 0], [3, 2, 1, 0]]),
    ("rc16", [[1, 0, 1, 0], [3, 2, 3, 2], [1, 0, 1, 0], [3, 2, 3, 2]]),
];

/// A reference written from the ISA text: bytes {b, a} = {b7..b4, b3..b0}; generic selectors
/// are c's four low nibbles, d.b0 first, bit 3 replicating the selected byte's sign.
fn prmt_reference(mode: &str, a: u32, b: u32, c: u32) -> u32 {
    let bytes: Vec<u8> = a.to_le_bytes().into_iter().chain(b.to_le_bytes()).collect();
    let mut d = [0u8; 4];
    if mode.is_empty() {
        for (k, out) in d.iter_mut().enumerate() {
            let nibble = (c >> (4 * k)) & 0xf;
            let byte = bytes[(nibble & 7) as usize];
            *out = if nibble & 8 == 0 {
                byte
            } else if byte & 0x80 != 0 {
                0xff
            } else {
                0
            };
        }
    } else {
        let row = PRMT_TABLE.iter().find(|(m, _)| *m == mode).expect("mode").1[(c & 3) as usize];
        // row[0] is d.b3.
        for k in 0..4 {
            d[k] = bytes[row[3 - k] as usize];
        }
    }
    u32::from_le_bytes(d)
}

#[test]
fn prmt_picks_bytes_of_b_and_a_in_every_mode() {
    let modes = ["", "f4e", "b4e", "rc8", "ecl", "ecr", "rc16"];
    let s = sim(&modes.iter().map(|m| prmt_kernel(m)).collect::<String>());
    // a's bytes b3..b0 = 83 02 81 00, b's b7..b4 = 87 06 85 04: bytes 1, 3, 5 and 7 are negative.
    let (a, b) = (0x8302_8100u32, 0x8706_8504u32);
    // Hand-computed from the ISA, one or more per mode.
    let literal: &[(&str, u32, u32)] = &[
        ("", 0x5410, 0x8504_8100),      // low halves of a and b: the halfword pack
        ("", 0x1010, 0x8100_8100),      // a's low half twice: h | h << 16
        ("", 0x7654, 0x8706_8504),      // b itself
        ("", 0xFFFF_5410, 0x8504_8100), // bits above the four selectors are ignored
        ("", 0x9999, 0xFFFF_FFFF),      // byte 1 (0x81) sign-replicated
        ("", 0x8888, 0x0000_0000),      // byte 0 (0x00) sign-replicated
        ("", 0xB0A9, 0xFF00_00FF),      // sign of bytes 1, 2, copy of 0, sign of 3
        ("", 0xF0D3, 0xFF00_FF83),      // copy of 3, sign of 5, copy of 0, sign of 7
        ("f4e", 1, 0x0483_0281),
        ("f4e", 3, 0x0685_0483),
        ("b4e", 0, 0x8506_8700),
        ("b4e", 3, 0x0081_0283),
        ("rc8", 3, 0x8383_8383),
        ("rc8", 0xFFFF_FFF5, 0x8181_8181), // only c[1:0] counts
        ("ecl", 1, 0x8302_8181),
        ("ecl", 3, 0x8383_8383),
        ("ecr", 2, 0x0202_8100),
        ("ecr", 1, 0x8181_8100),
        ("rc16", 1, 0x8302_8302),
        ("rc16", 2, 0x8100_8100),
    ];
    for &(mode, c, want) in literal {
        assert_eq!(run_prmt(&s, mode, a, b, c), want, "prmt.b32.{mode} c={c:#x}: {:#010x}", want);
        assert_eq!(prmt_reference(mode, a, b, c), want, "the reference agrees with the hand value ({mode} {c:#x})");
    }
    // Every mode on more selectors and operands, against the reference.
    let selectors = [0u32, 1, 2, 3, 4, 7, 0x3210, 0x0123, 0x4C3A, 0x89AB, 0xFEDC, 0x1234_5678, 0xFFFF_FFFF];
    for (a, b) in [(a, b), (0x0403_0201, 0x0807_0605), (0xF0E1_D2C3, 0x7F80_0111)] {
        for mode in modes {
            for c in selectors {
                assert_eq!(
                    run_prmt(&s, mode, a, b, c),
                    prmt_reference(mode, a, b, c),
                    "prmt.b32.{mode} a={a:#x} b={b:#x} c={c:#x}"
                );
            }
        }
    }
    assert!(s.take_findings().is_empty());
}

#[test]
fn prmt_with_an_immediate_selector_packs_a_halfword_twice() {
    // What nvcc emits for `(unsigned)h | ((unsigned)h << 16)`.
    let ptx = r#"
.visible .entry pack(
    .param .u64 out_param,
    .param .u32 h_param
)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    ld.param.u32 %r1, [h_param];
    prmt.b32 %r2, %r1, %r1, 4112;
    st.global.u32 [%rd1], %r2;
    ret;
}
"#;
    let s = sim(ptx);
    let out = poisoned(&s, 1);
    s.launch("t", "pack", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(out), SimArg::B32(0xBEEF)]).expect("launch");
    assert_eq!(read_u32(&s, out, 1)[0], 0xBEEF_BEEF);
}

// ---------------------------------------------------------------------------------------------
// atom / red
// ---------------------------------------------------------------------------------------------

/// An entry `name(out)` with %rd1 = out (global), %r1 = %tid.x, a 64-byte shared array `sm`,
/// then `body`.
fn atom_entry(name: &str, body: &str) -> String {
    format!(
        r#"
.visible .entry {name}(
    .param .u64 out_param
)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<32>;
    .reg .f32 %f<8>;
    .shared .align 8 .b8 sm[64];
    ld.param.u64 %rd1, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %tid.x;
{body}
    ret;
}}
"#
    )
}

/// Runs `kernel` on an output buffer that starts as `init` (u32 words), returns its words.
fn run_atom(s: &Simulator, kernel: &str, grid: u32, block: u32, init: &[u32]) -> Vec<u32> {
    let out = s.alloc(init.len() * 4).expect("alloc");
    write_u32(s, out, init);
    s.launch("t", kernel, [grid, 1, 1], [block, 1, 1], 0, &[SimArg::B64(out)]).expect("launch");
    let v = read_u32(s, out, init.len());
    s.free(out).expect("free");
    v
}

/// Thread 0 sets the shared word `sm` to `v`; everyone meets at a barrier.
fn init_shared(v: &str) -> String {
    format!("    setp.ne.u32 %p1, %r1, 0;\n    @%p1 bra INIT_DONE;\n    st.shared.u32 [sm], {v};\nINIT_DONE:\n    bar.sync 0;\n")
}

/// The old values one location returned to the additions `(old, added)` are consistent with
/// some order of them: sorted, they start at `start` and each is the one before plus what the
/// one before added; the last plus its addition is `end`.
fn assert_prefix_sums(mut pairs: Vec<(u64, u64)>, start: u64, end: u64, what: &str) {
    pairs.sort_unstable();
    let mut at = start;
    for (old, added) in &pairs {
        assert_eq!(*old, at, "{what}: the old values are not the prefix sums of one order");
        at += added;
    }
    assert_eq!(at, end, "{what}: total");
}

#[test]
fn atom_add_by_every_lane_of_several_warps_and_ctas_sums_and_returns_distinct_olds() {
    // 3 CTAs of 4 warps: thread t of CTA c adds t + 1 to its CTA's shared word and 1000 + g
    // (g = 128 c + t) to one global word; it writes both old values, and thread 0 the CTA total.
    let body = format!(
        "{}    add.u32 %r2, %r1, 1;
    atom.shared.add.u32 %r3, [sm], %r2;
    mov.u32 %r4, %ctaid.x;
    mad.lo.s32 %r5, %r4, 128, %r1;
    add.u32 %r6, %r5, 1000;
    atom.global.relaxed.gpu.add.u32 %r7, [%rd1], %r6;
    mul.wide.u32 %rd2, %r5, 8;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v2.u32 [%rd3+16], {{%r3, %r7}};
    bar.sync 0;
    @%p1 bra END;
    ld.shared.u32 %r8, [sm];
    mul.wide.u32 %rd4, %r4, 4;
    add.s64 %rd5, %rd1, %rd4;
    st.global.u32 [%rd5+4], %r8;
END:
",
        init_shared("0")
    );
    let s = sim_of(&atom_entry("sum", &body), SimOptions { profile: true, ..SimOptions::default() });
    let n = 3 * 128;
    // Word 0: the global sum (starts at 7); words 1..4: CTA totals; 2 words per thread from 4.
    let mut init = vec![0xCDCD_CDCDu32; 4 + 2 * n];
    init[0] = 7;
    let got = run_atom(&s, "sum", 3, 128, &init);
    let global_total: u64 = 7 + (0..n as u64).map(|g| 1000 + g).sum::<u64>();
    assert_eq!(got[0] as u64, global_total);
    assert_eq!(&got[1..4], &[128 * 129 / 2; 3], "each CTA's shared total");
    let thread = |g: usize| (got[4 + 2 * g] as u64, got[5 + 2 * g] as u64);
    for c in 0..3 {
        // Inside a CTA the simulator is deterministic: warps in order, lanes ascending.
        for t in 0..128 {
            assert_eq!(thread(128 * c + t).0, (t * (t + 1) / 2) as u64, "CTA {c} thread {t}'s shared old value");
        }
        let pairs = (0..128).map(|t| (thread(128 * c + t).0, t as u64 + 1)).collect();
        assert_prefix_sums(pairs, 0, 128 * 129 / 2, "shared add");
    }
    let pairs = (0..n).map(|g| (thread(g).1, 1000 + g as u64)).collect();
    assert_prefix_sums(pairs, 7, global_total, "global add");
    assert!(s.take_findings().is_empty(), "atomics on one shared word are not races");
    let p = s.take_profiles();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].by_class.get("atom_shared"), Some(&12), "one shared atomic per warp");
    assert_eq!(p[0].by_class.get("atom_global"), Some(&12), "one global atomic per warp");
}

#[test]
fn atom_min_and_max_compare_signed_types_as_signed_and_unsigned_as_unsigned() {
    // 64 threads, v = 3 (t - 32) in -96..=93. Shared words: s32 min, s32 max (from 0), u32 max
    // (from 0), u32 min (from all ones); global u64 words: s64 min (from 5), u64 max (from 0).
    let body = r#"    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INIT_DONE;
    st.shared.v4.u32 [sm], {0, 0, 0, 0xFFFFFFFF};
INIT_DONE:
    bar.sync 0;
    sub.s32 %r2, %r1, 32;
    mul.lo.s32 %r3, %r2, 3;
    atom.shared.min.s32 %r4, [sm], %r3;
    red.shared.max.s32 [sm+4], %r3;
    red.shared::cta.max.u32 [sm+8], %r3;
    atom.acq_rel.cta.shared.min.u32 %r5, [sm+12], %r3;
    cvt.s64.s32 %rd2, %r3;
    red.global.min.s64 [%rd1+16], %rd2;
    atom.global.sys.max.u64 %rd3, [%rd1+24], %rd2;
    bar.sync 0;
    @%p1 bra END;
    ld.shared.v4.u32 {%r6, %r7, %r8, %r9}, [sm];
    st.global.v4.u32 [%rd1], {%r6, %r7, %r8, %r9};
END:
"#;
    let s = sim(&atom_entry("minmax", body));
    let got = run_atom(&s, "minmax", 1, 64, &[0xCDCD_CDCD, 0xCDCD_CDCD, 0xCDCD_CDCD, 0xCDCD_CDCD, 5, 0, 0, 0]);
    assert_eq!(got[0] as i32, -96, "min.s32");
    assert_eq!(got[1] as i32, 93, "max.s32");
    assert_eq!(got[2], 0xFFFF_FFFD, "max.u32: -3 is the largest unsigned");
    assert_eq!(got[3], 0, "min.u32: 0 is the smallest unsigned");
    assert_eq!(got[4] as u64 | (got[5] as u64) << 32, (-96i64) as u64, "min.s64");
    assert_eq!(got[6] as u64 | (got[7] as u64) << 32, 0xFFFF_FFFF_FFFF_FFFD, "max.u64");
    assert!(s.take_findings().is_empty());
}

#[test]
fn atom_exch_returns_each_lane_the_value_of_the_lane_before_it() {
    // Lanes apply in ascending order: lane 0 gets the initial 100, lane l gets l - 1.
    let body = format!(
        "{}    atom.shared.exch.b32 %r2, [sm], %r1;
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r2;
    bar.sync 0;
    @%p1 bra END;
    ld.shared.u32 %r3, [sm];
    st.global.u32 [%rd1+128], %r3;
END:
",
        init_shared("100")
    );
    let s = sim(&atom_entry("exch", &body));
    let got = run_atom(&s, "exch", 1, 32, &[0xCDCD_CDCD; 33]);
    let mut want: Vec<u32> = std::iter::once(100).chain(0..31).collect();
    want.push(31);
    assert_eq!(got, want);
    assert!(s.take_findings().is_empty());
}

#[test]
fn atom_inc_and_dec_wrap_at_their_operand() {
    // inc: old >= 3 ? 0 : old + 1 from 0; dec: old == 0 || old > 3 ? 3 : old - 1 from 1.
    let body = r#"    atom.global.inc.u32 %r2, [%rd1], 3;
    atom.global.dec.u32 %r3, [%rd1+4], 3;
    mul.wide.u32 %rd2, %r1, 8;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v2.u32 [%rd3+8], {%r2, %r3};
"#;
    let s = sim(&atom_entry("incdec", body));
    let mut init = vec![0xCDCD_CDCDu32; 18];
    init[0] = 0;
    init[1] = 1;
    let got = run_atom(&s, "incdec", 1, 8, &init);
    assert_eq!(&got[..2], &[0, 1], "final values");
    let inc: Vec<u32> = (0..8).map(|l| got[2 + 2 * l]).collect();
    let dec: Vec<u32> = (0..8).map(|l| got[3 + 2 * l]).collect();
    assert_eq!(inc, [0, 1, 2, 3, 0, 1, 2, 3]);
    assert_eq!(dec, [1, 0, 3, 2, 1, 0, 3, 2]);
}

#[test]
fn atom_bitwise_add_u64_and_cas_b64_by_one_warp() {
    let body = r#"    shl.b32 %r2, 1, %r1;
    red.global.or.b32 [%rd1], %r2;
    red.global.xor.b32 [%rd1+4], %r2;
    shl.b32 %r3, %r1, 1;
    mov.b64 %rd2, 1;
    shl.b64 %rd3, %rd2, %r3;
    not.b64 %rd4, %rd3;
    red.global.and.b64 [%rd1+8], %rd4;
    atom.global.add.u64 %rd5, [%rd1+16], %rd3;
    cvt.u64.u32 %rd6, %r1;
    add.s64 %rd7, %rd6, 4294967296;
    add.s64 %rd8, %rd6, 8589934592;
    atom.global.cas.b64 %rd9, [%rd1+24], %rd7, %rd8;
    mul.wide.u32 %rd10, %r1, 8;
    add.s64 %rd11, %rd1, %rd10;
    st.global.u64 [%rd11+32], %rd9;
"#;
    let s = sim(&atom_entry("bits", body));
    let mut init = vec![0u32; 8 + 64];
    init[1] = 0x0F0F_0F0F;
    init[2] = u32::MAX;
    init[3] = u32::MAX;
    // The cas word is 0x1_0000_0007: only lane 7's compare value (0x1_0000_0000 + lane) matches.
    init[6] = 7;
    init[7] = 1;
    let got = run_atom(&s, "bits", 1, 32, &init);
    let word64 = |i: usize| got[i] as u64 | (got[i + 1] as u64) << 32;
    assert_eq!(got[0], 0xFFFF_FFFF, "or of every bit");
    assert_eq!(got[1], 0xF0F0_F0F0, "xor of every bit flips each");
    assert_eq!(word64(2), 0xAAAA_AAAA_AAAA_AAAA, "and clears the even bits");
    assert_eq!(word64(4), 0x5555_5555_5555_5555, "add.u64 of the even bits");
    assert_eq!(word64(6), 0x2_0000_0007, "lane 7's cas swapped");
    for lane in 0..32 {
        let want = if lane <= 7 { 0x1_0000_0007 } else { 0x2_0000_0007 };
        assert_eq!(word64(8 + 2 * lane), want, "lane {lane}'s cas returns the old value whether or not it swapped");
    }
}

#[test]
fn red_add_f32_sums_in_global_and_shared_memory_and_flushes_subnormals() {
    // 2 CTAs of 64 threads each add 0.25 to a global word starting at 0.5 and to a shared word
    // starting at 1.0; adding the smallest subnormal to 0 leaves 0 (atom.add.f32 flushes).
    let body = format!(
        "{}    red.global.add.f32 [%rd1], 0f3E800000;
    atom.global.add.f32 %f1, [%rd1+4], 0f00000001;
    red.shared.add.f32 [sm], 0f3E800000;
    bar.sync 0;
    @%p1 bra END;
    ld.shared.f32 %f2, [sm];
    mov.u32 %r2, %ctaid.x;
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3+8], %f2;
    st.global.f32 [%rd3+16], %f1;
END:
",
        init_shared("0f3F800000")
    );
    let s = sim(&atom_entry("fadd", &body));
    let got = run_atom(&s, "fadd", 2, 64, &[0.5f32.to_bits(), 0, 0, 0, 0xCDCD_CDCD, 0xCDCD_CDCD]);
    assert_eq!(f32::from_bits(got[0]), 0.5 + 128.0 * 0.25);
    assert_eq!(got[1], 0, "subnormal additions flushed to zero");
    assert_eq!([f32::from_bits(got[2]), f32::from_bits(got[3])], [17.0, 17.0], "each CTA's shared sum");
    assert_eq!(&got[4..6], &[0, 0], "the returned old values are 0");
    assert!(s.take_findings().is_empty());
}

#[test]
fn a_cas_spin_lock_serialises_a_plain_read_modify_write() {
    // Lane 0 of every warp of 4 CTAs takes the lock with cas, increments a plain counter and
    // releases with exch. (A lock per lane would livelock within a warp, as on pre-Volta
    // hardware: the spinning lanes sit at a lower PC than the holder.)
    let body = r#"    and.b32 %r2, %r1, 31;
    setp.ne.u32 %p1, %r2, 0;
    @%p1 bra END;
LOCK:
    atom.global.acquire.gpu.cas.b32 %r3, [%rd1], 0, 1;
    setp.ne.u32 %p2, %r3, 0;
    @%p2 bra LOCK;
    ld.global.u32 %r4, [%rd1+4];
    add.u32 %r4, %r4, 1;
    st.global.u32 [%rd1+4], %r4;
    atom.global.release.gpu.exch.b32 %r5, [%rd1], 0;
END:
"#;
    let s = sim(&atom_entry("lock", body));
    for _ in 0..5 {
        assert_eq!(run_atom(&s, "lock", 4, 128, &[0, 0]), [0, 16]);
    }
}

#[test]
fn shared_atomics_are_not_races_but_a_plain_store_among_them_is() {
    let ok = format!(
        "{}    atom.shared.add.u32 %r2, [sm], 1;
    bar.sync 0;
    @%p1 bra END;
    ld.shared.u32 %r3, [sm];
    st.global.u32 [%rd1], %r3;
END:
",
        init_shared("0")
    );
    // Thread 40 (warp 1) stores plainly to the word warp 0 updated atomically, no barrier between.
    let racy = format!(
        "{}    setp.eq.u32 %p2, %r1, 40;
    @!%p2 red.shared.add.u32 [sm], 1;
    @%p2 st.shared.u32 [sm], 7;
",
        init_shared("0")
    );
    let ptx = format!("{}{}", atom_entry("atomics_only", &ok), atom_entry("plain_store", &racy));
    let s = sim(&ptx);
    assert_eq!(run_atom(&s, "atomics_only", 1, 64, &[0])[0], 64);
    let f = s.take_findings();
    assert!(f.is_empty(), "{f:?}");
    run_atom(&s, "plain_store", 1, 64, &[0]);
    let store = line_of(&ptx, "@%p2 st.shared.u32 [sm], 7");
    let f = s.take_findings();
    assert!(
        f.iter().any(|x| x.kind == FindingKind::SharedRace && x.ptx_line == store && x.kernel == "plain_store"),
        "{f:?}"
    );
}

#[test]
fn atomics_the_simulator_does_not_implement_are_named_with_their_line() {
    for (op, operands) in [
        ("atom.add.u32", "%r2, [%rd1], 1"),
        ("atom.global.add.noftz.f16", "%rs1, [%rd1], %rs1"),
        ("atom.global.min.f32", "%f1, [%rd1], %f1"),
        ("red.global.cas.b32", "[%rd1], 1, 2"),
        ("prmt.b32.xyz", "%r2, %r1, %r1, %r1"),
    ] {
        let body = format!("    .reg .b16 %rs<2>;\n    {op} {operands};\n");
        let ptx = atom_entry("bad", &body);
        let s = sim(&ptx);
        let err = s.launch("t", "bad", [1, 1, 1], [1, 1, 1], 0, &[SimArg::B64(0)]).expect_err(op);
        let line = line_of(&ptx, op);
        match &err {
            SimError::Launch { message, .. } => {
                assert!(message.contains(&format!("`{op}`")) && message.contains("not implemented"), "{message}");
                assert!(message.contains(&format!("PTX line {line}")), "{message}");
            }
            other => panic!("expected a launch error for {op}, got {other:?}"),
        }
    }
}
