//! Warp-level tensor-core instructions of the simulator: `mma.sync` m16n8k16 with f32
//! accumulation and `ldmatrix` m8n8 b16, written from the PTX ISA's fragment layouts (section
//! "Matrix Fragments for mma.m16n8k16 with floating point type" and the `ldmatrix` figures).
//!
//! Both work on whole warps: the executor gathers the registers (or row addresses) of the 32
//! lanes, calls one function, and scatters the results back. Lane `l` is index `l` of every
//! array. A `.b32` register holding two 16-bit elements keeps the element with the lower index
//! (lower column for A, C, D and `ldmatrix`; lower row for B) in bits 0..16.
//!
//! The layouts, with `group = lane >> 2` and `thread_in_group = lane % 4` (the ISA's `groupID`
//! and `threadID_in_group`):
//! - A (16x16, row-major fragment): register `j` holds row `group + 8 * (j & 1)`, columns
//!   `2 * thread_in_group + 8 * (j >> 1)` and that plus one (the ISA's a0..a7 taken in pairs).
//! - B (16x8, "col"): register `j` holds column `group`, rows `2 * thread_in_group + 8 * j`
//!   and that plus one (b0..b3 in pairs).
//! - C and D (16x8, f32): register `i` holds row `group + 8 * (i >> 1)`, column
//!   `2 * thread_in_group + (i & 1)`.

use super::fp::{bf16_to_f32, f16_to_f32};

/// The element type of the A and B operands (`.bf16` or `.f16`; both must be the same here, as
/// in every form the kernels use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaInput {
    Bf16,
    F16,
}

impl MmaInput {
    /// The value of one 16-bit element.
    fn to_f32(self, bits: u16) -> f32 {
        match self {
            MmaInput::Bf16 => bf16_to_f32(bits),
            MmaInput::F16 => f16_to_f32(bits),
        }
    }
}

/// The two 16-bit halves of a `.b32` register, lower half first.
fn halves(reg: u32) -> [u16; 2] {
    [reg as u16, (reg >> 16) as u16]
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c` for one warp:
/// D = A * B + C with A 16x16, B 16x8, C and D 16x8, in the fragment layouts of the module doc.
///
/// Numerics: every element is widened exactly to f32; each D element starts from its C element
/// and adds the 16 products in k order (k = 0..16), each step one fused multiply-add rounded to
/// nearest even in f32 (so each product is exact, as a product of two bf16 or f16 values is
/// inside the step). The ISA does not specify the hardware's internal order or precision of this
/// accumulation, so a result may differ from a real tensor core in the last bits of f32 (and
/// where intermediate sums overflow or cancel); checks against hardware need a tolerance.
/// NaN and infinity propagate as in IEEE arithmetic.
pub fn mma_m16n8k16_f32(ty: MmaInput, a: &[[u32; 4]; 32], b: &[[u32; 2]; 32], c: &[[f32; 4]; 32]) -> [[f32; 4]; 32] {
    let mut a_tile = [[0f32; 16]; 16]; // (M=16, K=16)
    let mut b_tile = [[0f32; 8]; 16]; // (K=16, N=8)
    let mut c_tile = [[0f32; 8]; 16]; // (M=16, N=8)
    for lane in 0..32 {
        let group = lane >> 2;
        let thread_in_group = lane % 4;
        for (j, &reg) in a[lane].iter().enumerate() {
            let row = group + 8 * (j & 1);
            let col = 2 * thread_in_group + 8 * (j >> 1);
            let [lo, hi] = halves(reg);
            a_tile[row][col] = ty.to_f32(lo);
            a_tile[row][col + 1] = ty.to_f32(hi);
        }
        for (j, &reg) in b[lane].iter().enumerate() {
            let row = 2 * thread_in_group + 8 * j;
            let [lo, hi] = halves(reg);
            b_tile[row][group] = ty.to_f32(lo);
            b_tile[row + 1][group] = ty.to_f32(hi);
        }
        for (i, &value) in c[lane].iter().enumerate() {
            c_tile[group + 8 * (i >> 1)][2 * thread_in_group + (i & 1)] = value;
        }
    }
    let mut d = [[0f32; 4]; 32];
    for (lane, d_regs) in d.iter_mut().enumerate() {
        let group = lane >> 2;
        let thread_in_group = lane % 4;
        for (i, out) in d_regs.iter_mut().enumerate() {
            let row = group + 8 * (i >> 1);
            let col = 2 * thread_in_group + (i & 1);
            let mut acc = c_tile[row][col];
            for k in 0..16 {
                acc = a_tile[row][k].mul_add(b_tile[k][col], acc);
            }
            *out = acc;
        }
    }
    d
}

/// `ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16 {d0..}, [addr]` for one warp.
///
/// `row_addr[l]` is lane `l`'s address operand. Matrix `i` (`i < num`) takes its 8 row addresses
/// from lanes `8i..8i+8` (lane `8i + r` gives row `r`); the other lanes' addresses are not read
/// (for `.x1` only lanes 0-7 matter, for `.x2` lanes 0-15). `read_row(addr)` returns the 8 b16
/// elements (16 bytes) of the row at `addr`; it is called once per row, matrix by matrix, and
/// its first error is returned.
///
/// Lane `l` receives in register `i` two elements of matrix `i`: without `.trans` row `l / 4`,
/// columns `2 * (l % 4)` (low half) and `2 * (l % 4) + 1` (high half); with `.trans` (the
/// matrix read as column-major) the same positions of the transposed matrix, i.e. stored rows
/// `2 * (l % 4)` (low) and `2 * (l % 4) + 1` (high) of stored column `l / 4`. Registers
/// `num..4` are returned as 0.
///
/// Panics if `num` is not 1, 2 or 4 (the parser accepts only `.x1`, `.x2`, `.x4`).
pub fn ldmatrix<E>(
    num: usize,
    trans: bool,
    row_addr: &[u32; 32],
    read_row: &mut dyn FnMut(u32) -> Result<[u16; 8], E>,
) -> Result<[[u32; 4]; 32], E> {
    assert!(matches!(num, 1 | 2 | 4), "ldmatrix .x{num}: only .x1, .x2, .x4 exist");
    let mut out = [[0u32; 4]; 32];
    for matrix in 0..num {
        let mut rows = [[0u16; 8]; 8]; // (8 rows, 8 columns) as stored
        for (r, row) in rows.iter_mut().enumerate() {
            *row = read_row(row_addr[8 * matrix + r])?;
        }
        for (lane, regs) in out.iter_mut().enumerate() {
            let (lo, hi) = if trans {
                let col = lane / 4;
                (rows[2 * (lane % 4)][col], rows[2 * (lane % 4) + 1][col])
            } else {
                let row = &rows[lane / 4];
                (row[2 * (lane % 4)], row[2 * (lane % 4) + 1])
            };
            regs[matrix] = lo as u32 | (hi as u32) << 16;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::fp::{f32_to_bf16, f32_to_f16, Round};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    // The fragment maps below are written element by element from the ISA's tables (a_i, b_i,
    // c_i with their row/col formulas), independently of the register-pair loops above.

    /// (row, col) of element a_i (i in 0..8) held by `lane`.
    fn a_element(lane: usize, i: usize) -> (usize, usize) {
        let group = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 || (4..6).contains(&i) { group } else { group + 8 };
        let col = if i < 4 { tig * 2 + (i & 1) } else { tig * 2 + (i & 1) + 8 };
        (row, col)
    }

    /// (row, col) of element b_i (i in 0..4) held by `lane`.
    fn b_element(lane: usize, i: usize) -> (usize, usize) {
        let group = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 { tig * 2 + (i & 1) } else { tig * 2 + (i & 1) + 8 };
        (row, group)
    }

    /// (row, col) of element c_i / d_i (i in 0..4) held by `lane`.
    fn c_element(lane: usize, i: usize) -> (usize, usize) {
        let group = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 { group } else { group + 8 };
        (row, tig * 2 + (i & 1))
    }

    /// Element i of a fragment sits in register i / 2, half i % 2 (a0 is the low half).
    fn put_half(reg: &mut u32, i: usize, bits: u16) {
        if i.is_multiple_of(2) {
            *reg = (*reg & 0xFFFF_0000) | bits as u32;
        } else {
            *reg = (*reg & 0x0000_FFFF) | (bits as u32) << 16;
        }
    }

    fn fragment_a(tile: &[[u16; 16]; 16]) -> [[u32; 4]; 32] {
        let mut regs = [[0u32; 4]; 32];
        for (lane, lane_regs) in regs.iter_mut().enumerate() {
            for i in 0..8 {
                let (r, c) = a_element(lane, i);
                put_half(&mut lane_regs[i / 2], i, tile[r][c]);
            }
        }
        regs
    }

    fn fragment_b(tile: &[[u16; 8]; 16]) -> [[u32; 2]; 32] {
        let mut regs = [[0u32; 2]; 32];
        for (lane, lane_regs) in regs.iter_mut().enumerate() {
            for i in 0..4 {
                let (r, c) = b_element(lane, i);
                put_half(&mut lane_regs[i / 2], i, tile[r][c]);
            }
        }
        regs
    }

    fn fragment_c(tile: &[[f32; 8]; 16]) -> [[f32; 4]; 32] {
        let mut regs = [[0f32; 4]; 32];
        for (lane, lane_regs) in regs.iter_mut().enumerate() {
            for (i, reg) in lane_regs.iter_mut().enumerate() {
                let (r, c) = c_element(lane, i);
                *reg = tile[r][c];
            }
        }
        regs
    }

    fn gather_d(regs: &[[f32; 4]; 32]) -> [[f32; 8]; 16] {
        let mut tile = [[f32::NAN; 8]; 16];
        for (lane, lane_regs) in regs.iter().enumerate() {
            for (i, &v) in lane_regs.iter().enumerate() {
                let (r, c) = c_element(lane, i);
                tile[r][c] = v;
            }
        }
        tile
    }

    fn encode(ty: MmaInput, x: f32) -> u16 {
        match ty {
            MmaInput::Bf16 => f32_to_bf16(x, Round::Rn),
            MmaInput::F16 => f32_to_f16(x, Round::Rn),
        }
    }

    type TileA = [[u16; 16]; 16]; // (M=16, K=16) bf16/f16 bits
    type TileB = [[u16; 8]; 16]; // (K=16, N=8) bf16/f16 bits
    type TileC = [[f32; 8]; 16]; // (M=16, N=8)

    fn random_tiles(ty: MmaInput, rng: &mut StdRng) -> (TileA, TileB, TileC) {
        let mut a = [[0u16; 16]; 16];
        let mut b = [[0u16; 8]; 16];
        let mut c = [[0f32; 8]; 16];
        a.iter_mut().flatten().for_each(|x| *x = encode(ty, rng.gen_range(-2.0..2.0)));
        b.iter_mut().flatten().for_each(|x| *x = encode(ty, rng.gen_range(-2.0..2.0)));
        c.iter_mut().flatten().for_each(|x| *x = rng.gen_range(-4.0..4.0));
        (a, b, c)
    }

    /// D = A B + C in f64 from the 16-bit tiles, and the sum of |terms| for the tolerance.
    fn reference(
        ty: MmaInput,
        a: &[[u16; 16]; 16],
        b: &[[u16; 8]; 16],
        c: &[[f32; 8]; 16],
    ) -> ([[f64; 8]; 16], [[f64; 8]; 16]) {
        let mut d = [[0f64; 8]; 16];
        let mut mag = [[0f64; 8]; 16];
        for i in 0..16 {
            for j in 0..8 {
                let mut s = c[i][j] as f64;
                let mut m = s.abs();
                for k in 0..16 {
                    let p = ty.to_f32(a[i][k]) as f64 * ty.to_f32(b[k][j]) as f64;
                    s += p;
                    m += p.abs();
                }
                d[i][j] = s;
                mag[i][j] = m;
            }
        }
        (d, mag)
    }

    /// 17 f32 roundings, each off by at most 2^-24 of the running |sum| <= mag.
    fn assert_close(got: &[[f32; 8]; 16], want: &[[f64; 8]; 16], mag: &[[f64; 8]; 16]) {
        for i in 0..16 {
            for j in 0..8 {
                let tol = 17.0 * mag[i][j] * f32::EPSILON as f64 / 2.0;
                let err = (got[i][j] as f64 - want[i][j]).abs();
                assert!(err <= tol, "D[{i}][{j}] = {} want {} (err {err:e} > tol {tol:e})", got[i][j], want[i][j]);
            }
        }
    }

    #[test]
    fn mma_matches_triple_loop() {
        let mut rng = StdRng::seed_from_u64(7);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            for _ in 0..20 {
                let (a, b, c) = random_tiles(ty, &mut rng);
                let d = mma_m16n8k16_f32(ty, &fragment_a(&a), &fragment_b(&b), &fragment_c(&c));
                let (want, mag) = reference(ty, &a, &b, &c);
                assert_close(&gather_d(&d), &want, &mag);
            }
        }
    }

    #[test]
    fn mma_is_exact_on_small_integers() {
        // Integers in [-8, 8]: every partial sum is exact in f32, so D must equal the integer
        // product exactly; a layout mistake moves whole integers, not last bits.
        let mut rng = StdRng::seed_from_u64(8);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            let mut a = [[0u16; 16]; 16];
            let mut b = [[0u16; 8]; 16];
            let mut c = [[0f32; 8]; 16];
            a.iter_mut().flatten().for_each(|x| *x = encode(ty, rng.gen_range(-8i32..=8) as f32));
            b.iter_mut().flatten().for_each(|x| *x = encode(ty, rng.gen_range(-8i32..=8) as f32));
            c.iter_mut().flatten().for_each(|x| *x = rng.gen_range(-100i32..=100) as f32);
            let d = gather_d(&mma_m16n8k16_f32(ty, &fragment_a(&a), &fragment_b(&b), &fragment_c(&c)));
            let (want, _) = reference(ty, &a, &b, &c);
            for i in 0..16 {
                for j in 0..8 {
                    assert_eq!(d[i][j] as f64, want[i][j], "{ty:?} D[{i}][{j}]");
                }
            }
        }
    }

    #[test]
    fn mma_single_nonzero_lands_in_the_right_place() {
        // A = e_(r,k), B = e_(k,n): D is zero except D[r][n] = 1. Every (r, k, n) is tried.
        let one = f32_to_bf16(1.0, Round::Rn);
        for r in 0..16 {
            for k in 0..16 {
                for n in 0..8 {
                    let mut a = [[0u16; 16]; 16];
                    let mut b = [[0u16; 8]; 16];
                    a[r][k] = one;
                    b[k][n] = one;
                    let c = [[0f32; 8]; 16];
                    let d =
                        gather_d(&mma_m16n8k16_f32(MmaInput::Bf16, &fragment_a(&a), &fragment_b(&b), &fragment_c(&c)));
                    for (i, row) in d.iter().enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            let want = if (i, j) == (r, n) { 1.0 } else { 0.0 };
                            assert_eq!(v, want, "r={r} k={k} n={n}: D[{i}][{j}]");
                        }
                    }
                }
            }
        }
    }

    /// Shared memory for ldmatrix tests: a flat array of b16 with a row reader at byte addresses.
    struct Smem(Vec<u16>);

    impl Smem {
        fn reader(&self) -> impl FnMut(u32) -> Result<[u16; 8], String> + '_ {
            move |addr: u32| {
                if !addr.is_multiple_of(16) {
                    return Err(format!("unaligned row address {addr}"));
                }
                let start = addr as usize / 2;
                let row = self.0.get(start..start + 8).ok_or(format!("row address {addr} out of range"))?;
                Ok(row.try_into().expect("8 elements"))
            }
        }
    }

    #[test]
    fn ldmatrix_non_trans_and_trans_follow_the_isa() {
        // Four 8x8 matrices stored with a row pitch of 24 elements (48 bytes), rows of matrix m
        // at element offset m * 8 (side by side), so rows are not contiguous.
        let pitch = 24usize;
        let mut rng = StdRng::seed_from_u64(3);
        let smem = Smem((0..pitch * 8 + 64).map(|_| rng.gen()).collect());
        let elem = |m: usize, r: usize, c: usize| smem.0[r * pitch + m * 8 + c];
        for num in [1usize, 2, 4] {
            for trans in [false, true] {
                let mut addr = [0u32; 32];
                for (lane, a) in addr.iter_mut().enumerate() {
                    // Lanes past 8 * num point at an invalid address: they must not be read.
                    *a = if lane < 8 * num { (((lane % 8) * pitch + (lane / 8) * 8) * 2) as u32 } else { 3 };
                }
                let regs = ldmatrix(num, trans, &addr, &mut smem.reader()).expect("valid addresses");
                for (lane, lane_regs) in regs.iter().enumerate() {
                    for (m, &reg) in lane_regs.iter().enumerate() {
                        if m >= num {
                            assert_eq!(reg, 0);
                            continue;
                        }
                        let (r, c) = (lane / 4, 2 * (lane % 4));
                        let (lo, hi) =
                            if trans { (elem(m, c, r), elem(m, c + 1, r)) } else { (elem(m, r, c), elem(m, r, c + 1)) };
                        assert_eq!(reg, lo as u32 | (hi as u32) << 16, "x{num} trans={trans} lane {lane} matrix {m}");
                    }
                }
            }
        }
    }

    #[test]
    fn ldmatrix_returns_the_reader_error() {
        let smem = Smem(vec![0; 64]);
        let addr = [1024u32; 32];
        let err = ldmatrix(1, false, &addr, &mut smem.reader()).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn mma_fed_by_ldmatrix_computes_a_gemm_tile() {
        // The usual GEMM pattern: A (16x16, row-major in shared) via ldmatrix.x4, lane l giving
        // row (l % 16) at column 8 * (l / 16); B (16x8, row-major, K x N) via ldmatrix.x2.trans,
        // lane l giving row (l % 16); and the same B stored column-major (N x K) via
        // ldmatrix.x2 without .trans, lane l giving column-row (l % 8) at k offset 8 * (l / 8).
        let mut rng = StdRng::seed_from_u64(11);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            let (a, b, c) = random_tiles(ty, &mut rng);
            let a_off = 0usize; // 16 rows x 16 elements
            let b_off = 256usize; // 16 rows x 8 elements (K x N)
            let bt_off = 384usize; // 8 rows x 16 elements (N x K)
            let mut mem = vec![0u16; 512];
            for i in 0..16 {
                for k in 0..16 {
                    mem[a_off + i * 16 + k] = a[i][k];
                }
            }
            for k in 0..16 {
                for n in 0..8 {
                    mem[b_off + k * 8 + n] = b[k][n];
                    mem[bt_off + n * 16 + k] = b[k][n];
                }
            }
            let smem = Smem(mem);
            let byte = |elem: usize| (elem * 2) as u32;
            let a_addr: [u32; 32] = std::array::from_fn(|l| byte(a_off + (l % 16) * 16 + 8 * (l / 16)));
            let b_addr: [u32; 32] = std::array::from_fn(|l| byte(b_off + (l % 16) * 8));
            let bt_addr: [u32; 32] = std::array::from_fn(|l| byte(bt_off + (l % 8) * 16 + 8 * ((l / 8) % 2)));
            let a_regs = ldmatrix(4, false, &a_addr, &mut smem.reader()).expect("A");
            // ldmatrix.x4 matrices: 0 = rows 0-7 cols 0-7, 1 = rows 8-15 cols 0-7,
            // 2 = rows 0-7 cols 8-15, 3 = rows 8-15 cols 8-15: exactly a0a1, a2a3, a4a5, a6a7.
            assert_eq!(a_regs, fragment_a(&a));
            let b_regs_t = ldmatrix(2, true, &b_addr, &mut smem.reader()).expect("B trans");
            let b_regs_n = ldmatrix(2, false, &bt_addr, &mut smem.reader()).expect("B col-major");
            let b_frag = fragment_b(&b);
            for lane in 0..32 {
                assert_eq!([b_regs_t[lane][0], b_regs_t[lane][1]], b_frag[lane], "trans lane {lane}");
                assert_eq!([b_regs_n[lane][0], b_regs_n[lane][1]], b_frag[lane], "col-major lane {lane}");
            }
            let b_regs: [[u32; 2]; 32] = std::array::from_fn(|l| [b_regs_t[l][0], b_regs_t[l][1]]);
            let d = mma_m16n8k16_f32(ty, &a_regs, &b_regs, &fragment_c(&c));
            let (want, mag) = reference(ty, &a, &b, &c);
            assert_close(&gather_d(&d), &want, &mag);
        }
    }
}
