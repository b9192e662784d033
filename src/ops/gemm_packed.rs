//! f32 GEMM `C (M x N) [+]= A (M x K) @ B (K x N)` with one operand packed once at model
//! load: the encoders' weights are static, so re-packing them on every call (what a general
//! GEMM does) is wasted memory traffic. The other operand (the activations) is packed per
//! call. The bias, a ReLU / QuickGELU / GELU and the residual add are fused into the store.
//!
//! BLIS layout: A in MR-row panels, B in NR-column panels, both cut into KC-deep blocks, so
//! that a 6 x 16 AVX2/FMA microkernel (12 ymm accumulators) reads both operands as
//! contiguous streams; the B micro-panel (KC x NR) stays in L1 while the A block (MC x KC)
//! stays in L2. Threads split the N panels. Used by the CLIP encoders when the CPU has AVX2
//! and FMA (`packed_gemm_available`); elsewhere they keep the `gemm` crate path
//! (`ops::matmul`). The portable microkernel beside the AVX2 one keeps the packed path
//! correct on every target (and is the reference the tests hold the fast one to).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::ops::activation::{gelu, quick_gelu, Activation};
use crate::ops::SendPtr;

/// Rows of the microkernel tile (A panel height).
pub const MR: usize = 6;
/// Columns of the microkernel tile (B panel width, two ymm registers).
pub const NR: usize = 16;
/// Depth of one packed block: a B micro-panel of KC x NR f32 is 16 KiB, half of L1.
pub const KC: usize = 256;
/// Rows of A per L2 block, in MR panels (120 rows x KC: 120 KiB).
const MC_PANELS: usize = 20;
/// The most N panels one parallel chunk takes (256 columns).
const NC_PANELS: usize = 16;

/// True when this CPU runs the AVX2/FMA microkernel.
pub fn packed_gemm_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 storage aligned to 64 bytes, so that every NR-wide row of a B panel is one cache line.
#[derive(Default)]
struct AlignedBuf {
    data: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::default();
        buf.resize(len);
        buf.as_mut_slice().fill(0.0);
        buf
    }

    /// Makes room for `len` floats (contents unspecified); keeps the allocation when it fits.
    fn resize(&mut self, len: usize) {
        if self.data.len() < len + 16 {
            self.data = vec![0.0f32; len + 16];
        }
        let misalign = (self.data.as_ptr() as usize / 4) % 16;
        self.offset = (16 - misalign) % 16;
        self.len = len;
    }

    fn as_slice(&self) -> &[f32] {
        &self.data[self.offset..self.offset + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.offset..self.offset + self.len]
    }
}

/// Offset of block (kb, panel) in a packed operand whose panels are `width` wide and whose
/// full extent (panels x width) is `padded`.
#[inline]
fn block_offset(kb: usize, panel: usize, k: usize, padded: usize, width: usize) -> usize {
    let kc = KC.min(k - kb * KC);
    kb * KC * padded + panel * kc * width
}

/// Packs `src` (rows x k; element (i, p) at `src[i * rs + p * cs]`) into `W`-row panels:
/// for each KC block, for each panel, kc steps of `W` values (rows past the end are 0).
/// A's layout with W = MR; B's with W = NR, B seen transposed (its columns as rows).
///
/// # Safety
/// `src` must address every (i, p) with i < rows, p < k.
unsafe fn pack_panels<const W: usize>(rows: usize, k: usize, src: *const f32, rs: usize, cs: usize, dst: &mut [f32]) {
    let panels = rows.div_ceil(W);
    let padded = panels * W;
    debug_assert_eq!(dst.len(), padded * k);
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    let src_addr = src as usize;
    let pack_one = |(kb, panel): (usize, usize)| {
        let kc = KC.min(k - kb * KC);
        let out = dst_ptr.get().add(block_offset(kb, panel, k, padded, W));
        let i0 = panel * W;
        let valid = W.min(rows - i0);
        // The block's first element: row i0, column kb * KC.
        let src = (src_addr as *const f32).add(i0 * rs + kb * KC * cs);
        pack_block::<W>(src, rs, cs, valid, kc, out);
    };
    let kblocks = k.div_ceil(KC);
    let jobs = kblocks * panels;
    // Packing is a memory pass: only worth threads when there is a lot of it.
    if rows * k >= 1 << 16 {
        (0..jobs).into_par_iter().map(|j| (j / panels, j % panels)).for_each(pack_one);
    } else {
        (0..jobs).map(|j| (j / panels, j % panels)).for_each(pack_one);
    }
}

/// One panel of one KC block: out (kc x W) from `valid` rows of src (row stride rs, column
/// stride cs). The two layouts the callers have get straight loops the compiler unrolls:
/// rows contiguous along k (activations, linear weights) and columns contiguous along the
/// rows (im2col columns).
///
/// # Safety
/// As `pack_panels`, for this block; `out` must hold kc x W values.
#[inline(always)]
unsafe fn pack_block<const W: usize>(src: *const f32, rs: usize, cs: usize, valid: usize, kc: usize, out: *mut f32) {
    if valid == W && cs == 1 {
        let rows: [*const f32; W] = std::array::from_fn(|i| src.add(i * rs));
        for p in 0..kc {
            let o = out.add(p * W);
            for (i, row) in rows.iter().enumerate() {
                *o.add(i) = *row.add(p);
            }
        }
    } else if valid == W && rs == 1 {
        for p in 0..kc {
            std::ptr::copy_nonoverlapping(src.add(p * cs), out.add(p * W), W);
        }
    } else {
        for p in 0..kc {
            let o = out.add(p * W);
            for i in 0..valid {
                *o.add(i) = *src.add(i * rs + p * cs);
            }
            for i in valid..W {
                *o.add(i) = 0.0;
            }
        }
    }
}

/// A row-major (rows, k) matrix packed into `W`-row panels, in fresh aligned storage.
fn pack_row_major<const W: usize>(src: &[f32], rows: usize, k: usize, what: &str) -> AlignedBuf {
    assert_eq!(src.len(), rows * k, "{what}: {} values for ({rows}, {k})", src.len());
    let mut buf = AlignedBuf::zeroed(rows.div_ceil(W) * W * k);
    // SAFETY: src is (rows x k) row-major, checked above.
    unsafe { pack_panels::<W>(rows, k, src.as_ptr(), k, 1, buf.as_mut_slice()) };
    buf
}

/// The inverse of `pack_row_major`: the (rows, k) row-major matrix back out of its `W`-row
/// panels (a copy, exact: packing only moves values). For the CUDA towers, which upload the
/// weights the CPU model holds.
fn unpack_row_major<const W: usize>(buf: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let padded = rows.div_ceil(W) * W;
    let mut out = vec![0.0f32; rows * k];
    for (i, row) in out.chunks_exact_mut(k.max(1)).enumerate().take(rows) {
        for (p, v) in row.iter_mut().enumerate() {
            *v = buf[block_offset(p / KC, i / W, k, padded, W) + (p % KC) * W + i % W];
        }
    }
    out
}

/// The right operand B (K x N) of `C = A B`, packed once: a linear layer's weight W (N x K)
/// seen as W^T.
pub struct PackedB {
    k: usize,
    n: usize,
    buf: AlignedBuf,
}

impl PackedB {
    /// From a linear layer's weight w (N, K), row-major: B = w^T.
    pub fn from_linear_weight(w: &[f32], n: usize, k: usize) -> PackedB {
        // B^T = w is (n x k) row-major: its rows are B's columns.
        PackedB { k, n, buf: pack_row_major::<NR>(w, n, k, "PackedB::from_linear_weight") }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The linear layer's weight w (N, K), row-major, as `from_linear_weight` took it.
    pub fn to_linear_weight(&self) -> Vec<f32> {
        unpack_row_major::<NR>(self.buf.as_slice(), self.n, self.k)
    }
}

/// The left operand A (M x K) of `C = A B`, packed once: a convolution's weight (C_out, C_in k k).
pub struct PackedA {
    m: usize,
    k: usize,
    buf: AlignedBuf,
}

impl PackedA {
    /// From a row-major (M, K) matrix.
    pub fn from_row_major(a: &[f32], m: usize, k: usize) -> PackedA {
        PackedA { m, k, buf: pack_row_major::<MR>(a, m, k, "PackedA::from_row_major") }
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The (M, K) row-major matrix `from_row_major` took.
    pub fn to_row_major(&self) -> Vec<f32> {
        unpack_row_major::<MR>(self.buf.as_slice(), self.m, self.k)
    }
}

/// A bias added in the epilogue: one value per output column (a linear layer) or per output
/// row (a convolution, whose rows are output channels).
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    None,
    PerColumn(&'a [f32]),
    PerRow(&'a [f32]),
}

/// What the store does with a finished tile: `C = act([C +] A B + bias)`.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Bias<'a>,
    /// Add the product to what C holds (a residual branch) instead of overwriting it.
    pub accumulate: bool,
    pub relu: bool,
    /// QuickGELU / GELU after the bias (applied to the tile while it is in L1).
    pub act: Option<Activation>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue { bias: Bias::None, accumulate: false, relu: false, act: None }
    }
}

/// What the microkernel does at its store.
#[derive(Clone, Copy)]
struct Store {
    /// Add to C's contents rather than overwrite them.
    load_c: bool,
    /// NR values or null.
    bias_col: *const f32,
    /// MR values or null.
    bias_row: *const f32,
    relu: bool,
}

/// The microkernel and the activation pass over a finished tile, for one instruction set.
#[derive(Clone, Copy)]
struct Kernel {
    /// (kc, A panel, B panel, C tile, C row stride, store)
    micro: unsafe fn(usize, *const f32, *const f32, *mut f32, usize, Store),
    /// (activation, C tile, C row stride, rows, cols)
    act: unsafe fn(Activation, *mut f32, usize, usize, usize),
}

/// QuickGELU / GELU over a rows x cols tile of C (row stride c_rs), in place.
///
/// # Safety
/// `c` must address the tile.
#[inline(always)]
unsafe fn act_tile_portable(act: Activation, c: *mut f32, c_rs: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        let row = std::slice::from_raw_parts_mut(c.add(i * c_rs), cols);
        match act {
            Activation::QuickGelu => row.iter_mut().for_each(|v| *v = quick_gelu(*v)),
            Activation::Gelu => row.iter_mut().for_each(|v| *v = gelu(*v)),
        }
    }
}

/// The same loop compiled for AVX2 so that GELU's polynomial runs 8 wide (plain multiplies
/// and adds, no contraction to FMA: the same rounding as the portable one).
///
/// # Safety
/// As `act_tile_portable`, and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_tile_avx2(act: Activation, c: *mut f32, c_rs: usize, rows: usize, cols: usize) {
    act_tile_portable(act, c, c_rs, rows, cols)
}

/// The portable microkernel: C (MR x NR, row stride c_rs) [+]= A panel . B panel, then the
/// store's bias and ReLU.
///
/// # Safety
/// `a` holds kc x MR, `b` kc x NR values, `c` addresses an MR x NR tile.
unsafe fn kernel_portable(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize, st: Store) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = *a.add(p * MR + i);
            for (r, &bv) in row.iter_mut().zip(bp) {
                *r += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let cr = c.add(i * c_rs);
        for (j, &v) in row.iter().enumerate() {
            let mut v = if st.load_c { *cr.add(j) + v } else { v };
            if !st.bias_col.is_null() {
                v += *st.bias_col.add(j);
            }
            if !st.bias_row.is_null() {
                v += *st.bias_row.add(i);
            }
            *cr.add(j) = if st.relu { v.max(0.0) } else { v };
        }
    }
}

/// The AVX2/FMA microkernel: 6 x 16 tile in 12 ymm accumulators; per k step two B loads,
/// six A broadcasts, twelve FMAs.
///
/// # Safety
/// As `kernel_portable`, and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize, st: Store) {
    use std::arch::x86_64::*;
    // C's rows come from L2/L3 (the tile was last touched one KC block ago): ask for them
    // now, so the loads at the store do not stall.
    for i in 0..MR {
        let cr = c.add(i * c_rs) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(cr);
        _mm_prefetch::<_MM_HINT_T0>(cr.add(60));
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    let zero = _mm256_setzero_ps();
    for (i, row) in acc.iter_mut().enumerate() {
        let cr = c.add(i * c_rs);
        if st.load_c {
            row[0] = _mm256_add_ps(row[0], _mm256_loadu_ps(cr));
            row[1] = _mm256_add_ps(row[1], _mm256_loadu_ps(cr.add(8)));
        }
        if !st.bias_col.is_null() {
            row[0] = _mm256_add_ps(row[0], _mm256_loadu_ps(st.bias_col));
            row[1] = _mm256_add_ps(row[1], _mm256_loadu_ps(st.bias_col.add(8)));
        }
        if !st.bias_row.is_null() {
            let bv = _mm256_broadcast_ss(&*st.bias_row.add(i));
            row[0] = _mm256_add_ps(row[0], bv);
            row[1] = _mm256_add_ps(row[1], bv);
        }
        if st.relu {
            row[0] = _mm256_max_ps(row[0], zero);
            row[1] = _mm256_max_ps(row[1], zero);
        }
        _mm256_storeu_ps(cr, row[0]);
        _mm256_storeu_ps(cr.add(8), row[1]);
    }
}

fn pick_kernel(portable: bool) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if !portable && packed_gemm_available() {
            return Kernel { micro: kernel_avx2, act: act_tile_avx2 };
        }
    }
    let _ = portable;
    Kernel { micro: kernel_portable, act: act_tile_portable }
}

/// A view of C: element (i, j) at `ptr[i * rs + j]`.
#[derive(Clone, Copy)]
struct COut {
    ptr: SendPtr,
    rs: usize,
}

/// The driver over packed operands. `a` in MR panels (m x k), `b` in NR panels (k x n).
///
/// # Safety
/// `c` must address m x n values with row stride `c_rs`, not aliasing a or b.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: COut,
    ep: &Epilogue,
    parallel: bool,
    kernel: Kernel,
) {
    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (m_pad, n_pad) = (m_panels * MR, n_panels * NR);
    let kblocks = k.div_ceil(KC);
    // An equal number of chunks per thread, each at most NC_PANELS wide.
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    let rounds = n_panels.div_ceil(threads * NC_PANELS).max(1);
    let chunk = n_panels.div_ceil(threads * rounds).max(1);
    let chunks = n_panels.div_ceil(chunk);
    let do_chunk = |ci: usize| {
        let (jp0, jp1) = (ci * chunk, ((ci + 1) * chunk).min(n_panels));
        for kb in 0..kblocks {
            let kc = KC.min(k - kb * KC);
            let last = kb + 1 == kblocks;
            for ic in (0..m_panels).step_by(MC_PANELS) {
                for jp in jp0..jp1 {
                    let bp = b.as_ptr().add(block_offset(kb, jp, k, n_pad, NR));
                    for ip in ic..(ic + MC_PANELS).min(m_panels) {
                        let ap = a.as_ptr().add(block_offset(kb, ip, k, m_pad, MR));
                        tile(kernel, kc, ap, bp, c, ip, jp, m, n, kb == 0, last, ep);
                    }
                }
            }
        }
    };
    if chunks > 1 && threads > 1 {
        (0..chunks).into_par_iter().for_each(do_chunk);
    } else {
        (0..chunks).for_each(do_chunk);
    }
}

/// One MR x NR tile of C for one KC block; edge tiles go through a full-size scratch tile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    kernel: Kernel,
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    c: COut,
    ip: usize,
    jp: usize,
    m: usize,
    n: usize,
    first: bool,
    last: bool,
    ep: &Epilogue,
) {
    let (i0, j0) = (ip * MR, jp * NR);
    let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
    let load_c = !first || ep.accumulate;
    let cp = c.ptr.get().add(i0 * c.rs + j0);
    let mut bias_col_pad = [0.0f32; NR];
    let mut bias_row_pad = [0.0f32; MR];
    let mut st = Store { load_c, bias_col: std::ptr::null(), bias_row: std::ptr::null(), relu: last && ep.relu };
    if last {
        match ep.bias {
            Bias::None => {}
            Bias::PerColumn(bias) if cols == NR => st.bias_col = bias.as_ptr().add(j0),
            Bias::PerColumn(bias) => {
                bias_col_pad[..cols].copy_from_slice(&bias[j0..j0 + cols]);
                st.bias_col = bias_col_pad.as_ptr();
            }
            Bias::PerRow(bias) if rows == MR => st.bias_row = bias.as_ptr().add(i0),
            Bias::PerRow(bias) => {
                bias_row_pad[..rows].copy_from_slice(&bias[i0..i0 + rows]);
                st.bias_row = bias_row_pad.as_ptr();
            }
        }
    }
    if rows == MR && cols == NR {
        (kernel.micro)(kc, ap, bp, cp, c.rs, st);
    } else {
        let mut scratch = [0.0f32; MR * NR];
        if load_c {
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(cp.add(i * c.rs), scratch.as_mut_ptr().add(i * NR), cols);
            }
        }
        (kernel.micro)(kc, ap, bp, scratch.as_mut_ptr(), NR, st);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(scratch.as_ptr().add(i * NR), cp.add(i * c.rs), cols);
        }
    }
    if let (true, Some(act)) = (last, ep.act) {
        (kernel.act)(act, cp, c.rs, rows, cols);
    }
}

thread_local! {
    /// The per-call packing buffer, kept between calls. Taken out while in use, so a nested
    /// call on the same thread (rayon may run another task while this one waits) gets its own.
    static PACK_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

fn with_pack_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = PACK_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(len);
    let r = f(buf.as_mut_slice());
    PACK_BUF.with(|b| *b.borrow_mut() = buf);
    r
}

/// Floats in the packed layout of a K x N right operand (N rounded up to whole panels).
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Where element (p, j) of a K x N right operand lives in its packed layout, so that a
/// caller that builds B itself (a convolution's im2col) can write it there directly. The
/// NR - 1 elements after it, up to the end of its panel row (j rounded up to a multiple of
/// NR), are columns j + 1, ... of the same row.
#[inline]
pub fn packed_b_index(k: usize, n: usize, p: usize, j: usize) -> usize {
    let (kb, jp) = (p / KC, j / NR);
    block_offset(kb, jp, k, n.div_ceil(NR) * NR, NR) + (p % KC) * NR + j % NR
}

/// Runs `f` on a scratch buffer of `packed_b_len(k, n)` floats (contents unspecified), kept
/// per thread between calls: where a caller packs B itself for `gemm_packed_ab_cpu`.
pub fn with_packed_b_scratch<R>(k: usize, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_pack_buf(packed_b_len(k, n), f)
}

/// c (M x N, row stride c_rs) = epilogue(w @ B) with B (K x N, K = w's) already packed by the
/// caller (`packed_b_index`; every element written, the padding columns as 0).
///
/// # Safety
/// `c` must address M x N values with row stride `c_rs`, not aliasing `b_packed`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed_ab_cpu(
    w: &PackedA,
    n: usize,
    b_packed: &[f32],
    c: *mut f32,
    c_rs: usize,
    ep: &Epilogue,
    parallel: bool,
) {
    let (m, k) = (w.m, w.k);
    check_bias(ep, m, n);
    assert_eq!(
        b_packed.len(),
        packed_b_len(k, n),
        "gemm_packed_ab_cpu: packed B of {} values for ({k}, {n})",
        b_packed.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = COut { ptr: SendPtr(c), rs: c_rs };
    run(m, n, k, w.buf.as_slice(), b_packed, c, ep, parallel, pick_kernel(false));
}

/// y (rows x N) = epilogue(x (rows x K) @ w^T) with w packed: a linear layer.
pub fn linear_packed_cpu(x: &[f32], w: &PackedB, ep: &Epilogue, y: &mut [f32]) {
    linear_packed_with(x, w, ep, y, false)
}

fn linear_packed_with(x: &[f32], w: &PackedB, ep: &Epilogue, y: &mut [f32], portable: bool) {
    let (k, n) = (w.k, w.n);
    let rows = x.len() / k.max(1);
    assert_eq!(x.len(), rows * k, "linear_packed_cpu: x of {} values for K = {k}", x.len());
    assert_eq!(y.len(), rows * n, "linear_packed_cpu: y of {} values for ({rows}, {n})", y.len());
    check_bias(ep, rows, n);
    if rows == 0 || n == 0 {
        return;
    }
    with_pack_buf(rows.div_ceil(MR) * MR * k, |a| {
        // SAFETY: x is (rows x k) row-major and y (rows x n), checked above; y is a fresh
        // borrow, so it aliases neither operand.
        unsafe {
            pack_panels::<MR>(rows, k, x.as_ptr(), k, 1, a);
            let c = COut { ptr: SendPtr(y.as_mut_ptr()), rs: n };
            run(rows, n, k, a, w.buf.as_slice(), c, ep, true, pick_kernel(portable));
        }
    });
}

/// c (M x N, row stride c_rs) = epilogue(w @ b) with w packed and b (K x N) row-major with row
/// stride `b_rs`: a convolution (w the filters, b the im2col columns or a 1x1 conv's input).
///
/// # Safety
/// `b` must address K x N values with row stride `b_rs`, `c` M x N values with row stride
/// `c_rs`, not aliasing b.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed_a_cpu(
    w: &PackedA,
    n: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    ep: &Epilogue,
    parallel: bool,
) {
    with_packed_b_scratch(w.k, n, |bp| {
        // B^T is (n x k) with element (j, p) at b[p * b_rs + j].
        pack_panels::<NR>(n, w.k, b, 1, b_rs, bp);
        gemm_packed_ab_cpu(w, n, bp, c, c_rs, ep, parallel);
    });
}

fn check_bias(ep: &Epilogue, m: usize, n: usize) {
    match ep.bias {
        Bias::PerColumn(b) => assert_eq!(b.len(), n, "packed GEMM: column bias of {} for {n} columns", b.len()),
        Bias::PerRow(b) => assert_eq!(b.len(), m, "packed GEMM: row bias of {} for {m} rows", b.len()),
        Bias::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Unpacking gives back exactly what was packed, for shapes with ragged panels and more
    /// than one KC block.
    #[test]
    fn unpack_inverts_pack() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (rows, k) in [(1, 1), (7, 3), (17, KC + 5), (MR * NR + 3, 2 * KC + 1)] {
            let w = rand_vec(rows * k, &mut rng);
            assert_eq!(PackedB::from_linear_weight(&w, rows, k).to_linear_weight(), w, "B ({rows}, {k})");
            assert_eq!(PackedA::from_row_major(&w, rows, k).to_row_major(), w, "A ({rows}, {k})");
        }
    }

    /// The definition in f64: act([c +] a (m x k) @ b (k x n) + bias).
    #[allow(clippy::too_many_arguments)]
    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c0: &[f32], ep: &Epilogue) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
                if ep.accumulate {
                    s += c0[i * n + j] as f64;
                }
                match ep.bias {
                    Bias::PerColumn(bb) => s += bb[j] as f64,
                    Bias::PerRow(bb) => s += bb[i] as f64,
                    Bias::None => {}
                }
                let mut v = s as f32;
                if ep.relu {
                    v = v.max(0.0);
                }
                c[i * n + j] = match ep.act {
                    Some(Activation::QuickGelu) => quick_gelu(v),
                    Some(Activation::Gelu) => gelu(v),
                    None => v,
                };
            }
        }
        c
    }

    /// Relative error over the whole output, ‖got − want‖ / ‖want‖, and the worst element.
    fn check(got: &[f32], want: &[f32], what: &str) {
        let (mut num, mut den, mut worst) = (0.0f64, 0.0f64, 0.0f64);
        for (g, w) in got.iter().zip(want) {
            let d = (*g as f64 - *w as f64).abs();
            num += d * d;
            den += (*w as f64) * (*w as f64);
            worst = worst.max(d / (1.0 + w.abs() as f64));
        }
        let rel = (num / den.max(1e-30)).sqrt();
        assert!(rel <= 1e-5 && worst <= 1e-5, "{what}: rel {rel:e}, worst {worst:e}");
    }

    fn epilogue(bias: Bias, accumulate: bool, relu: bool, act: Option<Activation>) -> Epilogue {
        Epilogue { bias, accumulate, relu, act }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 16, 7),
        (1, 37, 300),
        (5, 3, 2),
        (6, 16, 256),
        (7, 17, 257),
        (13, 50, 513),
        (50, 33, 31),
        (121, 40, 770),
        (130, 300, 64),
    ];

    #[test]
    fn linear_packed_matches_definition_on_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(m, n, k) in SHAPES {
            let x = rand_vec(m * k, &mut rng);
            let w = rand_vec(n * k, &mut rng);
            let wt: Vec<f32> = (0..k * n).map(|idx| w[(idx % n) * k + idx / n]).collect();
            let bias = rand_vec(n, &mut rng);
            let c0 = rand_vec(m * n, &mut rng);
            let packed = PackedB::from_linear_weight(&w, n, k);
            let col = Bias::PerColumn(&bias);
            let eps = [
                epilogue(Bias::None, false, false, None),
                epilogue(col, false, false, None),
                epilogue(col, true, false, None),
                epilogue(col, false, false, Some(Activation::QuickGelu)),
                epilogue(col, false, false, Some(Activation::Gelu)),
                epilogue(Bias::None, true, true, None),
            ];
            for (e, ep) in eps.iter().enumerate() {
                let want = naive(m, n, k, &x, &wt, &c0, ep);
                for portable in [false, true] {
                    let mut y = if ep.accumulate { c0.clone() } else { vec![f32::NAN; m * n] };
                    linear_packed_with(&x, &packed, ep, &mut y, portable);
                    check(&y, &want, &format!("linear ({m}, {n}, {k}) epilogue {e} portable {portable}"));
                }
            }
        }
    }

    #[test]
    fn packed_a_matches_definition_on_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for &(m, n, k) in SHAPES {
            let w = rand_vec(m * k, &mut rng);
            // b with a row stride wider than n: a band of a wider matrix.
            let b_rs = n + 3;
            let b_wide = rand_vec(k * b_rs, &mut rng);
            let b: Vec<f32> = (0..k * n).map(|idx| b_wide[(idx / n) * b_rs + idx % n]).collect();
            let bias = rand_vec(m, &mut rng);
            let c0 = rand_vec(m * n, &mut rng);
            let packed = PackedA::from_row_major(&w, m, k);
            let row = Bias::PerRow(&bias);
            for (e, ep) in
                [epilogue(row, false, true, None), epilogue(row, true, true, None), epilogue(row, false, false, None)]
                    .iter()
                    .enumerate()
            {
                let want = naive(m, n, k, &w, &b, &c0, ep);
                for parallel in [false, true] {
                    // c inside a wider buffer (row stride n + 5), whose margins must survive.
                    let c_rs = n + 5;
                    let mut c = vec![-7.0f32; m * c_rs];
                    for i in 0..m {
                        for j in 0..n {
                            c[i * c_rs + j] = if ep.accumulate { c0[i * n + j] } else { f32::NAN };
                        }
                    }
                    unsafe { gemm_packed_a_cpu(&packed, n, b_wide.as_ptr(), b_rs, c.as_mut_ptr(), c_rs, ep, parallel) };
                    let got: Vec<f32> = (0..m * n).map(|idx| c[(idx / n) * c_rs + idx % n]).collect();
                    check(&got, &want, &format!("packed A ({m}, {n}, {k}) epilogue {e} parallel {parallel}"));
                    assert!(
                        (0..m).all(|i| c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&v| v == -7.0)),
                        "margin overwritten"
                    );
                }
            }
        }
    }
}
