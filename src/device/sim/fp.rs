//! Floating-point semantics of the PTX instructions the simulator runs, as pure functions.
//!
//! Written from NVIDIA's PTX ISA (chapter 9.7.3 "Floating-Point Instructions", `cvt`, `setp`,
//! `min`/`max`, `copysign`) for the forms nvcc 13.0 emits for compute_80. The executor decodes an
//! instruction and calls one function here; modifiers that wrap an operation (`.ftz`, `.sat`)
//! are applied by the executor around the call with [`ftz`] and [`saturate_f32`].
//!
//! Rounding: `.rn` is the host's IEEE round-to-nearest-even. `.rz`/`.rm`/`.rp` are exact: the
//! nearest result is computed first, then the sign of the rounding error (exact − nearest) is
//! found with an error-free transformation (`two_sum`, or an FMA residual on exactly scaled
//! operands), and the result is moved one ulp with `next_up`/`next_down` when that direction
//! asks for it. Results too large for the format follow IEEE 754: `.rz` gives ±MAX, `.rm` gives
//! +MAX or −inf, `.rp` gives +inf or −MAX. An exact zero sum of operands of opposite sign is +0,
//! except under `.rm`, where it is −0.
//!
//! NaN results of f32 arithmetic are `0x7FFFFFFF`, the pattern NVIDIA GPUs are reported to return
//! (the ISA's `min`/`max` say "canonical NaN" without giving the bits; not measured here); NaN
//! results of f64 arithmetic are [`CANONICAL_NAN_F64`], likewise a choice of this simulator.
//! One NaN pattern keeps the simulator deterministic whatever payload the host CPU would
//! propagate; code that inspects NaN bits may see other patterns on hardware.

use std::cmp::Ordering;

/// A rounding modifier: `.rn`, `.rz`, `.rm`, `.rp`, and for rounding to an integral value
/// `.rni`, `.rzi`, `.rmi`, `.rpi` (same directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// To nearest, ties to even.
    Rn,
    /// Toward zero.
    Rz,
    /// Toward −infinity.
    Rm,
    /// Toward +infinity.
    Rp,
}

/// The f32 NaN this simulator returns for NaN results (see the module doc).
pub const CANONICAL_NAN_F32: f32 = f32::from_bits(0x7FFF_FFFF);
/// The f64 NaN this simulator returns for NaN results (see the module doc).
pub const CANONICAL_NAN_F64: f64 = f64::from_bits(0x7FFF_FFFF_FFFF_FFFF);
/// The NaN this simulator gives `.f16` and `.bf16` results (the usual canonical 16-bit NaN; the
/// ISA does not spell out the bits).
pub const CANONICAL_NAN_16: u16 = 0x7FFF;

// ---------------------------------------------------------------------------------------------
// Directed rounding from a nearest result and the sign of its error.

macro_rules! directed_rounding {
    ($float:ty, $adjust:ident, $overflow:ident, $finish:ident, $nan:expr) => {
        /// Moves `nearest` (the round-to-nearest result, finite) to the result of `round`,
        /// given `error` = sign of (exact − nearest).
        fn $adjust(nearest: $float, error: Ordering, round: Round) -> $float {
            match (round, error) {
                (Round::Rn, _) | (_, Ordering::Equal) => nearest,
                (Round::Rm, Ordering::Less) => nearest.next_down(),
                (Round::Rp, Ordering::Greater) => nearest.next_up(),
                // Toward zero: step only when nearest lies farther from zero than the exact value.
                (Round::Rz, Ordering::Less) if nearest > 0.0 => nearest.next_down(),
                (Round::Rz, Ordering::Greater) if nearest < 0.0 => nearest.next_up(),
                _ => nearest,
            }
        }

        /// The result of a finite exact value beyond the largest finite number.
        fn $overflow(negative: bool, round: Round) -> $float {
            let magnitude = match (round, negative) {
                (Round::Rn, _) | (Round::Rm, true) | (Round::Rp, false) => <$float>::INFINITY,
                _ => <$float>::MAX,
            };
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }

        /// Turns a nearest result into the result of `round`: NaN becomes canonical, an
        /// infinity from finite operands is an overflow, anything else is adjusted by the sign
        /// of the error, which `error` computes only when needed.
        fn $finish(nearest: $float, operands_finite: bool, round: Round, error: impl FnOnce() -> Ordering) -> $float {
            if nearest.is_nan() {
                $nan
            } else if nearest.is_infinite() {
                if operands_finite {
                    $overflow(nearest < 0.0, round)
                } else {
                    nearest
                }
            } else if round == Round::Rn {
                nearest
            } else {
                $adjust(nearest, error(), round)
            }
        }
    };
}

directed_rounding!(f32, adjust_f32, overflow_f32, finish_f32, CANONICAL_NAN_F32);
directed_rounding!(f64, adjust_f64, overflow_f64, finish_f64, CANONICAL_NAN_F64);

fn sign_of(x: f64) -> Ordering {
    x.partial_cmp(&0.0).unwrap_or(Ordering::Equal)
}

/// Exact-zero sums: +0 unless both operands are −0, except under `.rm` where only two +0 give +0.
fn zero_sum_sign_f32(nearest: f32, both_positive_zero: bool, round: Round) -> f32 {
    if round == Round::Rm && !both_positive_zero {
        -0.0
    } else {
        nearest
    }
}

// ---------------------------------------------------------------------------------------------
// f32 arithmetic.

/// A `.rn` result computed by the host as is, with the canonical NaN for any NaN.
#[inline]
fn canonical_f32(x: f32) -> f32 {
    if x.is_nan() {
        CANONICAL_NAN_F32
    } else {
        x
    }
}

/// `add{.rnd}.f32 d, a, b`.
pub fn add_f32(a: f32, b: f32, round: Round) -> f32 {
    if round == Round::Rn {
        // The host's IEEE addition is .rn, signed zeros included: the simulator's hot path.
        return canonical_f32(a + b);
    }
    let sum = a + b;
    let finite = a.is_finite() && b.is_finite();
    if finite && sum == 0.0 {
        // An f32 sum that rounds to zero is exact (sums of f32 are multiples of 2^-149).
        return zero_sum_sign_f32(sum, a.to_bits() == 0 && b.to_bits() == 0, round);
    }
    finish_f32(sum, finite, round, || {
        // two_sum: a + b = sum + err exactly (no overflow: sum is finite here).
        let b_virtual = sum - a;
        let a_virtual = sum - b_virtual;
        let err = (a - a_virtual) + (b - b_virtual);
        sign_of(err as f64)
    })
}

/// `sub{.rnd}.f32 d, a, b` = a − b.
pub fn sub_f32(a: f32, b: f32, round: Round) -> f32 {
    add_f32(a, -b, round)
}

/// `mul{.rnd}.f32 d, a, b`.
pub fn mul_f32(a: f32, b: f32, round: Round) -> f32 {
    if round == Round::Rn {
        return canonical_f32(a * b);
    }
    // The product of two f32 is exact in f64 (48 significant bits, exponent >= -298).
    let exact = a as f64 * b as f64;
    let nearest = exact as f32;
    finish_f32(nearest, a.is_finite() && b.is_finite(), round, || {
        exact.partial_cmp(&(nearest as f64)).unwrap_or(Ordering::Equal)
    })
}

/// `fma.rn.f32`: the host's fused `mul_add` (inlined, so a caller compiled with FMA enabled
/// gets the instruction rather than libm's `fmaf`).
#[inline(always)]
pub fn fma_rn_f32(a: f32, b: f32, c: f32) -> f32 {
    canonical_f32(a.mul_add(b, c))
}

/// `fma{.rnd}.f32 d, a, b, c` = a * b + c with one rounding (`.rn` is the host's fused
/// `mul_add`).
pub fn fma_f32(a: f32, b: f32, c: f32, round: Round) -> f32 {
    if round == Round::Rn {
        return fma_rn_f32(a, b, c);
    }
    let nearest = a.mul_add(b, c);
    let finite = a.is_finite() && b.is_finite() && c.is_finite();
    let product = a as f64 * b as f64; // exact
    if finite && nearest == 0.0 && product + c as f64 == 0.0 {
        // product and c are multiples of 2^-298 below 2^257: their f64 sum is zero only when exact.
        return zero_sum_sign_f32(nearest, product.to_bits() == 0 && c.to_bits() == 0, round);
    }
    finish_f32(nearest, finite, round, || {
        // exact − nearest = (sum − nearest) + err, with sum + err = product + c exactly;
        // sum − nearest is exact (both approximate the same value to within their ulps), and
        // every term is a multiple of 2^-298, so the final f64 addition cannot underflow to a
        // zero of the wrong meaning: its sign is the sign of the exact error.
        let (sum, err) = two_sum_f64(product, c as f64);
        sign_of((sum - nearest as f64) + err)
    })
}

/// `div{.rnd}.f32 d, a, b` (IEEE, correctly rounded; `div.rn` is the default `/`).
pub fn div_f32(a: f32, b: f32, round: Round) -> f32 {
    if round == Round::Rn {
        return canonical_f32(a / b);
    }
    let nearest = a / b;
    finish_f32(nearest, a.is_finite() && b.is_finite() && b != 0.0, round, || {
        // sign(a/b − q) = sign(a − q*b) * sign(b); q*b is exact in f64 and the fused residual is
        // rounded once, keeping its sign (it is a multiple of 2^-298, far from underflow).
        let residual = (-(nearest as f64)).mul_add(b as f64, a as f64);
        let s = sign_of(residual);
        if b < 0.0 {
            s.reverse()
        } else {
            s
        }
    })
}

/// `sqrt{.rnd}.f32 d, a`.
pub fn sqrt_f32(a: f32, round: Round) -> f32 {
    let nearest = a.sqrt();
    finish_f32(nearest, a.is_finite(), round, || {
        // sign(sqrt(a) − r) = sign(a − r*r); r*r is exact in f64.
        sign_of((-(nearest as f64)).mul_add(nearest as f64, a as f64))
    })
}

/// `rcp{.rnd}.f32 d, a` = 1 / a, correctly rounded.
pub fn rcp_f32(a: f32, round: Round) -> f32 {
    div_f32(1.0, a, round)
}

/// `.ftz`: a subnormal becomes a zero of the same sign (applied to inputs and results).
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        if x.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else {
        x
    }
}

// ---------------------------------------------------------------------------------------------
// f64 arithmetic.

fn two_sum_f64(a: f64, b: f64) -> (f64, f64) {
    let sum = a + b;
    let b_virtual = sum - a;
    let a_virtual = sum - b_virtual;
    (sum, (a - a_virtual) + (b - b_virtual))
}

/// x = m * 2^e with 1 <= |m| < 2 (sign kept in m), for finite nonzero x; exact.
fn frexp_f64(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7FF) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first (exact).
        let (m, e) = frexp_f64(x * f64::from_bits(0x43F0_0000_0000_0000)); // 2^64
        return (m, e - 64);
    }
    let m = f64::from_bits((bits & 0x800F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    (m, biased - 1023)
}

/// 2^k for -1022 <= k <= 1023.
fn pow2_f64(k: i32) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// x * 2^k; exact whenever the result is a normal number or zero, or k >= 0 without overflow
/// (callers scale results back near 1).
fn ldexp_f64(mut x: f64, mut k: i32) -> f64 {
    while k > 1000 {
        x *= pow2_f64(1000);
        k -= 1000;
    }
    while k < -1000 {
        x *= pow2_f64(-1000);
        k += 1000;
    }
    x * pow2_f64(k)
}

/// Exact-zero sums in f64, as [`zero_sum_sign_f32`].
fn zero_sum_sign_f64(nearest: f64, both_positive_zero: bool, round: Round) -> f64 {
    if round == Round::Rm && !both_positive_zero {
        -0.0
    } else {
        nearest
    }
}

/// `add{.rnd}.f64 d, a, b`.
pub fn add_f64(a: f64, b: f64, round: Round) -> f64 {
    let (sum, err) = two_sum_f64(a, b);
    let finite = a.is_finite() && b.is_finite();
    if finite && sum == 0.0 {
        return zero_sum_sign_f64(sum, a.to_bits() == 0 && b.to_bits() == 0, round);
    }
    finish_f64(sum, finite, round, || sign_of(err))
}

/// `sub{.rnd}.f64 d, a, b` = a − b.
pub fn sub_f64(a: f64, b: f64, round: Round) -> f64 {
    add_f64(a, -b, round)
}

/// `mul{.rnd}.f64 d, a, b`.
pub fn mul_f64(a: f64, b: f64, round: Round) -> f64 {
    let nearest = a * b;
    let finite = a.is_finite() && b.is_finite();
    if a == 0.0 || b == 0.0 {
        // Exact zero, or NaN (0 * inf).
        return finish_f64(nearest, false, round, || Ordering::Equal);
    }
    finish_f64(nearest, finite, round, || {
        // Scale both operands to [1, 2) so the FMA residual cannot underflow: the sign of
        // ma*mb − nearest*2^-(ea+eb) is the sign of the error.
        let (ma, ea) = frexp_f64(a);
        let (mb, eb) = frexp_f64(b);
        let scaled = ldexp_f64(nearest, -(ea + eb));
        sign_of(ma.mul_add(mb, -scaled))
    })
}

/// `div{.rnd}.f64 d, a, b`.
pub fn div_f64(a: f64, b: f64, round: Round) -> f64 {
    let nearest = a / b;
    let finite = a.is_finite() && b.is_finite() && b != 0.0;
    if a == 0.0 || b.is_infinite() {
        // Exact (zero) or special (NaN): no rounding error to look at.
        return finish_f64(nearest, false, round, || Ordering::Equal);
    }
    finish_f64(nearest, finite, round, || {
        let (ma, ea) = frexp_f64(a);
        let (mb, eb) = frexp_f64(b);
        let scaled = ldexp_f64(nearest, -(ea - eb)); // near ma / mb, in (1/2, 2)
        let s = sign_of((-scaled).mul_add(mb, ma));
        if mb < 0.0 {
            s.reverse()
        } else {
            s
        }
    })
}

/// `sqrt{.rnd}.f64 d, a`.
pub fn sqrt_f64(a: f64, round: Round) -> f64 {
    let nearest = a.sqrt();
    if a <= 0.0 {
        return if a == 0.0 { nearest } else { CANONICAL_NAN_F64 };
    }
    finish_f64(nearest, a.is_finite(), round, || {
        let (mut m, mut e) = frexp_f64(a);
        if e % 2 != 0 {
            m *= 2.0;
            e -= 1;
        }
        let scaled = ldexp_f64(nearest, -e / 2); // near sqrt(m), in [1, 2)
        sign_of((-scaled).mul_add(scaled, m))
    })
}

/// `rcp{.rnd}.f64 d, a` = 1 / a, correctly rounded.
pub fn rcp_f64(a: f64, round: Round) -> f64 {
    div_f64(1.0, a, round)
}

/// `fma.rn.f64 d, a, b, c` (fused, one rounding to nearest even). Only `.rn`: the directed
/// forms do not occur in the kernels' PTX and are not implemented.
pub fn fma_f64(a: f64, b: f64, c: f64) -> f64 {
    let r = a.mul_add(b, c);
    if r.is_nan() {
        CANONICAL_NAN_F64
    } else {
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Sign, min, max, comparisons.

/// `copysign.f32 d, a, b`: the value of `b` with the sign of `a`.
///
/// Mind the operand order: PTX copies the sign *of the first source* onto the second (ISA: "Copy
/// sign bit of a into value of b"), the opposite of C's `copysignf(x, y)` (magnitude of x, sign
/// of y). The erf code nvcc inlines into kernels/activation.cu shows it: `copysign.f32 %f419,
/// %f6, %f99` gives |1 - exp(..)| (`%f99`) the sign of the input `%f6`.
pub fn copysign_f32(a: f32, b: f32) -> f32 {
    f32::from_bits((b.to_bits() & 0x7FFF_FFFF) | (a.to_bits() & 0x8000_0000))
}

/// `copysign.f64 d, a, b`: the value of `b` with the sign of `a` (see [`copysign_f32`]).
pub fn copysign_f64(a: f64, b: f64) -> f64 {
    f64::from_bits((b.to_bits() & !(1 << 63)) | (a.to_bits() & (1 << 63)))
}

macro_rules! min_max {
    ($float:ty, $min:ident, $max:ident, $nan:expr, $doc_min:literal, $doc_max:literal) => {
        #[doc = $doc_min]
        /// One NaN operand gives the other operand, two give the canonical NaN, and −0 < +0.
        pub fn $min(a: $float, b: $float) -> $float {
            match (a.is_nan(), b.is_nan()) {
                (true, true) => $nan,
                (true, false) => b,
                (false, true) => a,
                _ if a == 0.0 && b == 0.0 => {
                    if a.is_sign_negative() {
                        a
                    } else {
                        b
                    }
                }
                _ => {
                    if a < b {
                        a
                    } else {
                        b
                    }
                }
            }
        }

        #[doc = $doc_max]
        /// One NaN operand gives the other operand, two give the canonical NaN, and +0 > −0.
        pub fn $max(a: $float, b: $float) -> $float {
            match (a.is_nan(), b.is_nan()) {
                (true, true) => $nan,
                (true, false) => b,
                (false, true) => a,
                _ if a == 0.0 && b == 0.0 => {
                    if a.is_sign_positive() {
                        a
                    } else {
                        b
                    }
                }
                _ => {
                    if a > b {
                        a
                    } else {
                        b
                    }
                }
            }
        }
    };
}

min_max!(
    f32,
    min_f32,
    max_f32,
    CANONICAL_NAN_F32,
    "`min.f32 d, a, b` (without `.NaN`).",
    "`max.f32 d, a, b` (without `.NaN`)."
);
min_max!(f64, min_f64, max_f64, CANONICAL_NAN_F64, "`min.f64 d, a, b`.", "`max.f64 d, a, b`.");

/// The comparison of `setp`/`set`/`selp`-feeding compares on floats.
///
/// The ordered forms (`eq ne lt le gt ge`) are false when either operand is NaN — `ne`
/// included; the unordered forms (`equ neu ltu leu gtu geu`) are true when either is NaN;
/// `num` is "neither is NaN", `nan` is "either is NaN". −0 equals +0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// `setp.op.f64` (and `.f32`, which is exact in f64): the predicate of the ISA's table of
/// floating-point comparison operators.
pub fn compare_f64(op: CmpOp, a: f64, b: f64) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match op {
        CmpOp::Eq => !unordered && a == b,
        CmpOp::Ne => !unordered && a != b,
        CmpOp::Lt => !unordered && a < b,
        CmpOp::Le => !unordered && a <= b,
        CmpOp::Gt => !unordered && a > b,
        CmpOp::Ge => !unordered && a >= b,
        CmpOp::Equ => unordered || a == b,
        CmpOp::Neu => unordered || a != b,
        CmpOp::Ltu => unordered || a < b,
        CmpOp::Leu => unordered || a <= b,
        CmpOp::Gtu => unordered || a > b,
        CmpOp::Geu => unordered || a >= b,
        CmpOp::Num => !unordered,
        CmpOp::Nan => unordered,
    }
}

/// `setp.op.f32`: see [`compare_f64`].
pub fn compare_f32(op: CmpOp, a: f32, b: f32) -> bool {
    compare_f64(op, a as f64, b as f64)
}

// ---------------------------------------------------------------------------------------------
// Conversions between float formats.

/// The value of a `.bf16` (exact; NaN payloads kept).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The value of an `.f16` (exact).
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// `cvt.{rn,rz,rm,rp}.bf16.f32 d, a`. NaN gives the canonical NaN `0x7FFF`.
pub fn f32_to_bf16(x: f32, round: Round) -> u16 {
    if x.is_nan() {
        return CANONICAL_NAN_16;
    }
    // bf16 is the upper half of an f32: the lower half is what rounding drops. Carrying into
    // the exponent field is exactly the move to the next bf16 (up to infinity).
    let bits = x.to_bits();
    let upper = (bits >> 16) as u16;
    let dropped = bits & 0xFFFF;
    let negative = bits >> 31 == 1;
    let away = match round {
        Round::Rn => dropped > 0x8000 || (dropped == 0x8000 && upper & 1 == 1),
        Round::Rz => false,
        Round::Rm => negative && dropped != 0,
        Round::Rp => !negative && dropped != 0,
    };
    upper + away as u16
}

/// Next `.f16` toward +infinity (bit patterns; −0 goes to the smallest positive subnormal).
fn f16_next_up(h: u16) -> u16 {
    match h {
        0x8000 => 0x0001,
        _ if h & 0x8000 == 0 => h + 1,
        _ => h - 1,
    }
}

/// Next `.f16` toward −infinity.
fn f16_next_down(h: u16) -> u16 {
    match h {
        0x0000 => 0x8001,
        _ if h & 0x8000 == 0 => h - 1,
        _ => h + 1,
    }
}

/// `cvt.{rn,rz,rm,rp}.f16.f32 d, a`. NaN gives the canonical NaN `0x7FFF`.
pub fn f32_to_f16(x: f32, round: Round) -> u16 {
    if x.is_nan() {
        return CANONICAL_NAN_16;
    }
    let nearest = half::f16::from_f32(x).to_bits();
    if round == Round::Rn {
        return nearest;
    }
    let negative = x.is_sign_negative();
    if nearest & 0x7FFF == 0x7C00 && x.is_finite() {
        // Overflow: ±MAX (0x7BFF) or ±inf by direction.
        let to_inf = matches!((round, negative), (Round::Rm, true) | (Round::Rp, false));
        let magnitude: u16 = if to_inf { 0x7C00 } else { 0x7BFF };
        return (negative as u16) << 15 | magnitude;
    }
    // Every f16 is exact in f32: compare directly.
    let error = x.partial_cmp(&f16_to_f32(nearest)).unwrap_or(Ordering::Equal);
    let nearest_positive = nearest & 0x8000 == 0 && nearest != 0;
    let nearest_negative = nearest & 0x8000 != 0 && nearest != 0x8000;
    match (round, error) {
        (_, Ordering::Equal) => nearest,
        (Round::Rm, Ordering::Less) => f16_next_down(nearest),
        (Round::Rp, Ordering::Greater) => f16_next_up(nearest),
        (Round::Rz, Ordering::Less) if nearest_positive => f16_next_down(nearest),
        (Round::Rz, Ordering::Greater) if nearest_negative => f16_next_up(nearest),
        _ => nearest,
    }
}

/// `cvt.rn.bf16x2.f32 d, a, b`: the ISA puts cvt(a) in the UPPER half of d and cvt(b) in the
/// lower half (so the first source lands at the higher address when d is stored).
pub fn cvt_rn_bf16x2_f32(a: f32, b: f32) -> u32 {
    (f32_to_bf16(a, Round::Rn) as u32) << 16 | f32_to_bf16(b, Round::Rn) as u32
}

/// `cvt.rn.f16x2.f32 d, a, b`: cvt(a) in the upper half, cvt(b) in the lower half.
pub fn cvt_rn_f16x2_f32(a: f32, b: f32) -> u32 {
    (f32_to_f16(a, Round::Rn) as u32) << 16 | f32_to_f16(b, Round::Rn) as u32
}

/// `cvt.f64.f32 d, a` (exact).
pub fn f32_to_f64(x: f32) -> f64 {
    if x.is_nan() {
        CANONICAL_NAN_F64
    } else {
        x as f64
    }
}

/// `cvt.{rn,rz,rm,rp}.f32.f64 d, a`.
pub fn f64_to_f32(x: f64, round: Round) -> f32 {
    let nearest = x as f32; // Rust's cast rounds to nearest even
    finish_f32(nearest, x.is_finite(), round, || x.partial_cmp(&(nearest as f64)).unwrap_or(Ordering::Equal))
}

/// `cvt.{rni,rzi,rmi,rpi}.f32.f32 d, a`: round to an integral value in f32.
pub fn round_integral_f32(x: f32, round: Round) -> f32 {
    if x.is_nan() {
        return CANONICAL_NAN_F32;
    }
    match round {
        Round::Rn => x.round_ties_even(),
        Round::Rz => x.trunc(),
        Round::Rm => x.floor(),
        Round::Rp => x.ceil(),
    }
}

/// `cvt.{rni,rzi,rmi,rpi}.f64.f64 d, a`.
pub fn round_integral_f64(x: f64, round: Round) -> f64 {
    if x.is_nan() {
        return CANONICAL_NAN_F64;
    }
    match round {
        Round::Rn => x.round_ties_even(),
        Round::Rz => x.trunc(),
        Round::Rm => x.floor(),
        Round::Rp => x.ceil(),
    }
}

/// `.sat` on an f32 result (`cvt.sat.f32.f32`, `add.sat`, ...): clamp to [+0.0, 1.0], NaN
/// gives +0.0. −0.0 gives +0.0, as CUDA's `__saturatef` documents ("clamp to [+0.0, 1.0]").
pub fn saturate_f32(x: f32) -> f32 {
    if x.is_nan() || x <= 0.0 {
        0.0
    } else if x > 1.0 {
        1.0
    } else {
        x
    }
}

// ---------------------------------------------------------------------------------------------
// Float <-> integer conversions.

macro_rules! float_to_int {
    ($name:ident, $int:ty, $ptx:literal) => {
        #[doc = concat!("`cvt.{rni,rzi,rmi,rpi}.", $ptx, ".{f32,f64} d, a`: round to an integer in the given")]
        /// direction, then saturate to the destination range (PTX float-to-integer conversions
        /// always saturate); NaN gives 0. An f32 source is passed as `x as f64` (exact).
        pub fn $name(x: f64, round: Round) -> $int {
            // Rust's float-to-int `as` saturates and maps NaN to 0, as PTX does.
            round_integral_f64(x, round) as $int
        }
    };
}

float_to_int!(float_to_s16, i16, "s16");
float_to_int!(float_to_u16, u16, "u16");
float_to_int!(float_to_s32, i32, "s32");
float_to_int!(float_to_u32, u32, "u32");
float_to_int!(float_to_s64, i64, "s64");
float_to_int!(float_to_u64, u64, "u64");

/// `cvt{.rn,.rz,.rm,.rp}.f32.{s16,u16,s32,u32,s64,u64} d, a`: the integer (any of those types,
/// widened to i128) rounded to f32 in the given direction.
pub fn int_to_f32(v: i128, round: Round) -> f32 {
    // Rust rounds integer-to-float casts to nearest even; nearest is an integer of magnitude at
    // most 2^64, so comparing it as an i128 is exact.
    let nearest = v as f32;
    adjust_f32(nearest, v.cmp(&(nearest as i128)), round)
}

/// `cvt{.rn,.rz,.rm,.rp}.f64.{s16,...,u64} d, a`.
pub fn int_to_f64(v: i128, round: Round) -> f64 {
    let nearest = v as f64;
    adjust_f64(nearest, v.cmp(&(nearest as i128)), round)
}

// ---------------------------------------------------------------------------------------------
// .approx functions.
//
// Each returns the f64 computation rounded once to the nearest f32: at most half an ulp from
// the exact value in f32 terms (plus the f64 library's error, far below that), so always inside
// the ISA's stated error bound; hardware may differ from these results by up to that bound:
// - ex2.approx.f32: "maximum ulp error is 2 ulp from correctly rounded result".
// - lg2.approx.f32: absolute error 2^-22 for inputs in (0.5, 2), relative 2^-22 elsewhere.
// - rsqrt.approx.f32: relative error 2^-22.9 over the positive finite range.
// - rcp.approx.f32: 1 ulp (ISA "maximum ulp error is 1 across the full range").
// - sin/cos.approx.f32: absolute error 2^-20.5 in [-2pi, 2pi], 2^-14.7 in [-100pi, 100pi].
// - tanh.approx.f32: relative error 2^-11.
// - div.approx.f32: 2 ulp for |b| in [2^-126, 2^126]; div.full.f32: 2 ulp over the full range.
// Special inputs (±0, ±inf, NaN) follow the ISA's tables, which agree with the f64 functions.
// `.ftz` forms: the executor flushes the input and the result with [`ftz`].

fn approx_result(x: f64) -> f32 {
    let r = x as f32;
    if r.is_nan() {
        CANONICAL_NAN_F32
    } else {
        r
    }
}

/// `ex2.approx.f32 d, a` = 2^a.
pub fn ex2_approx_f32(a: f32) -> f32 {
    approx_result((a as f64).exp2())
}

/// `lg2.approx.f32 d, a` = log2(a) (±0 give −inf, negatives NaN).
pub fn lg2_approx_f32(a: f32) -> f32 {
    approx_result((a as f64).log2())
}

/// `rsqrt.approx.f32 d, a` = 1 / sqrt(a) (−0 gives −inf, +0 gives +inf).
pub fn rsqrt_approx_f32(a: f32) -> f32 {
    approx_result(1.0 / (a as f64).sqrt())
}

/// `rcp.approx.f32 d, a` = 1 / a.
pub fn rcp_approx_f32(a: f32) -> f32 {
    approx_result(1.0 / a as f64)
}

/// `sin.approx.f32 d, a`.
pub fn sin_approx_f32(a: f32) -> f32 {
    approx_result((a as f64).sin())
}

/// `cos.approx.f32 d, a`.
pub fn cos_approx_f32(a: f32) -> f32 {
    approx_result((a as f64).cos())
}

/// `tanh.approx.f32 d, a`.
pub fn tanh_approx_f32(a: f32) -> f32 {
    approx_result((a as f64).tanh())
}

/// `div.approx.f32 d, a, b`, computed by the hardware as a * (1/b). The ISA: "For 2^126 < |b| <
/// 2^128, if a is infinity, div.approx.f32 returns NaN, otherwise it returns a sign-preserving
/// zero" (the reciprocal is below the normal range and flushes); the zero here has the sign of
/// a * b. Elsewhere a / b rounded from f64 (correctly rounded).
pub fn div_approx_f32(a: f32, b: f32) -> f32 {
    let magnitude = b.abs();
    if magnitude.is_finite() && magnitude > f32::from_bits(0x7E80_0000) {
        // 0x7E800000 = 2^126
        return if !a.is_finite() {
            CANONICAL_NAN_F32
        } else if (a.to_bits() ^ b.to_bits()) >> 31 == 1 {
            -0.0
        } else {
            0.0
        };
    }
    approx_result(a as f64 / b as f64)
}

/// `div.full.f32 d, a, b`: a / b rounded from f64 (which is the correctly rounded quotient).
pub fn div_full_f32(a: f32, b: f32) -> f32 {
    approx_result(a as f64 / b as f64)
}

#[cfg(test)]
mod tests {
    //! The reference here rounds exact values held as integers (u128 magnitude times a power of
    //! two, plus a sticky bit for anything smaller) bit by bit, independently of the
    //! error-free transformations above.
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ROUNDS: [Round; 4] = [Round::Rn, Round::Rz, Round::Rm, Round::Rp];

    /// A binary floating-point format: significand bits (with the implicit one), minimum and
    /// maximum exponent of normal numbers.
    #[derive(Clone, Copy)]
    struct Format {
        precision: i32,
        emin: i32,
        emax: i32,
    }
    const F32: Format = Format { precision: 24, emin: -126, emax: 127 };
    const F64: Format = Format { precision: 53, emin: -1022, emax: 1023 };
    const F16: Format = Format { precision: 11, emin: -14, emax: 15 };
    const BF16: Format = Format { precision: 8, emin: -126, emax: 127 };

    /// 2^k as f64 for -1074 <= k <= 1023, from bits.
    fn pow2(k: i32) -> f64 {
        if k >= -1022 {
            f64::from_bits(((k + 1023) as u64) << 52)
        } else {
            f64::from_bits(1u64 << (k + 1074))
        }
    }

    /// An exact value: (-1)^negative * (magnitude + (sticky ? something in (0, 1) : 0)) * 2^exp.
    #[derive(Clone, Copy, Debug)]
    struct Exact {
        negative: bool,
        magnitude: u128,
        exp: i32,
        sticky: bool,
    }

    fn bit_length(x: u128) -> i32 {
        128 - x.leading_zeros() as i32
    }

    /// Rounds an exact nonzero value to `format` in direction `round`; the result as f64 (every
    /// value of the formats above is exact in f64).
    fn round_exact(v: Exact, format: Format, round: Round) -> f64 {
        assert!(v.magnitude != 0, "zero results are checked separately");
        let top = v.exp + bit_length(v.magnitude) - 1; // value in [2^top, 2^(top+1))
        let lsb = top.max(format.emin) - (format.precision - 1);
        let shift = lsb - v.exp;
        let (mut q, rem, half) = if shift <= 0 {
            assert!(!v.sticky || shift < -1, "sticky needs guard bits");
            (v.magnitude << -shift, 0u128, 1u128)
        } else if shift >= 128 {
            (0, v.magnitude, u128::MAX)
        } else {
            (v.magnitude >> shift, v.magnitude & ((1u128 << shift) - 1), 1u128 << (shift - 1))
        };
        assert!(!v.sticky || shift >= 2, "sticky needs guard bits (shift {shift})");
        let inexact = rem != 0 || v.sticky;
        let above_half = if shift <= 0 { false } else { rem > half || (rem == half && v.sticky) };
        let exactly_half = shift > 0 && rem == half && !v.sticky;
        let up = match round {
            Round::Rn => above_half || (exactly_half && q & 1 == 1),
            Round::Rz => false,
            Round::Rm => v.negative && inexact,
            Round::Rp => !v.negative && inexact,
        };
        q += up as u128;
        let max_finite_exceeded = bit_length(q) as i64 + lsb as i64 - 1 > format.emax as i64;
        let magnitude = if max_finite_exceeded {
            let to_inf = match round {
                Round::Rn => true,
                Round::Rz => false,
                Round::Rm => v.negative,
                Round::Rp => !v.negative,
            };
            if to_inf {
                f64::INFINITY
            } else {
                (2.0 - pow2(1 - format.precision)) * pow2(format.emax)
            }
        } else {
            q as f64 * pow2(lsb)
        };
        if v.negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// A finite value as (negative, integer significand, exponent).
    fn decompose_f32(x: f32) -> (bool, u128, i32) {
        let bits = x.to_bits();
        let biased = ((bits >> 23) & 0xFF) as i32;
        let frac = (bits & 0x7F_FFFF) as u128;
        let (m, e) = if biased == 0 { (frac, -149) } else { (frac | 1 << 23, biased - 150) };
        (bits >> 31 == 1, m, e)
    }

    fn decompose_f64(x: f64) -> (bool, u128, i32) {
        let bits = x.to_bits();
        let biased = ((bits >> 52) & 0x7FF) as i32;
        let frac = (bits & 0xF_FFFF_FFFF_FFFF) as u128;
        let (m, e) = if biased == 0 { (frac, -1074) } else { (frac | 1 << 52, biased - 1075) };
        (bits >> 63 == 1, m, e)
    }

    /// Exact sum of two nonzero terms (negative, significand, exponent); None when it is zero.
    fn exact_sum(x: (bool, u128, i32), y: (bool, u128, i32)) -> Option<Exact> {
        let top = |t: (bool, u128, i32)| t.2 + bit_length(t.1) - 1;
        let (big, small) = if top(x) >= top(y) { (x, y) } else { (y, x) };
        if top(big) - top(small) > 64 {
            // The small term is below the 64 leading bits of the big one: it only decides the
            // direction of the remainder.
            let shift = 64 - bit_length(big.1); // every significand here has at most 53 bits
            let (m, e) = (big.1 << shift, big.2 - shift);
            let m = if big.0 == small.0 { m } else { m - 1 };
            return Some(Exact { negative: big.0, magnitude: m, exp: e, sticky: true });
        }
        let low = x.2.min(y.2);
        let signed = |t: (bool, u128, i32)| {
            let v = (t.1 << (t.2 - low)) as i128;
            if t.0 {
                -v
            } else {
                v
            }
        };
        let s = signed(x) + signed(y);
        (s != 0).then(|| Exact { negative: s < 0, magnitude: s.unsigned_abs(), exp: low, sticky: false })
    }

    /// f32 values that exercise the edges: zeros, subnormals, the normal boundary, MAX, ones.
    fn edge_f32() -> Vec<f32> {
        let bits = [
            0x0000_0000u32,
            0x0000_0001,
            0x0000_0002,
            0x0000_0003,
            0x007F_FFFF,
            0x0080_0000,
            0x0080_0001,
            0x3F80_0000,
            0x3F80_0001,
            0x3F7F_FFFF,
            0x3FC0_0000,
            0x4000_0000,
            0x4B80_0000,
            0x7F7F_FFFF,
            0x7F7F_FFFE,
            0x7F00_0000,
            0x3400_0000,
            0x3380_0000,
            0x0CFF_FFFF,
        ];
        bits.iter().flat_map(|&b| [f32::from_bits(b), -f32::from_bits(b)]).collect()
    }

    /// Random finite f32: uniform bit patterns, or significands near powers of two (ties).
    fn random_f32(rng: &mut StdRng) -> f32 {
        loop {
            let x = match rng.gen_range(0..4) {
                0 => f32::from_bits(rng.gen()),
                1 => f32::from_bits(rng.gen::<u32>() & 0x80FF_FFFF | (rng.gen_range(100u32..154) << 23)),
                2 => f32::from_bits(rng.gen::<u32>() & 0x807F_FFFF), // subnormal
                _ => {
                    f32::from_bits((rng.gen::<u32>() & 0xFF80_0000) | rng.gen_range(0..4) | (rng.gen_range(0..4) << 21))
                }
            };
            if x.is_finite() {
                return x;
            }
        }
    }

    fn random_f64(rng: &mut StdRng) -> f64 {
        loop {
            let x = match rng.gen_range(0..4) {
                0 => f64::from_bits(rng.gen()),
                1 => f64::from_bits(rng.gen::<u64>() & 0x800F_FFFF_FFFF_FFFF | (rng.gen_range(900u64..1150) << 52)),
                2 => f64::from_bits(rng.gen::<u64>() & 0x800F_FFFF_FFFF_FFFF), // subnormal
                _ => f64::from_bits(
                    (rng.gen::<u64>() & 0xFFF0_0000_0000_0000) | rng.gen_range(0..4) | (rng.gen_range(0..4) << 50),
                ),
            };
            if x.is_finite() {
                return x;
            }
        }
    }

    /// Pairs: edge x edge, random x random, and near-cancelling pairs.
    fn pairs_f32(rng: &mut StdRng, n: usize) -> Vec<(f32, f32)> {
        let edges = edge_f32();
        let mut out: Vec<(f32, f32)> = edges.iter().flat_map(|&a| edges.iter().map(move |&b| (a, b))).collect();
        for _ in 0..n {
            let a = random_f32(rng);
            let b = match rng.gen_range(0..3) {
                0 => random_f32(rng),
                1 => f32::from_bits(a.to_bits() ^ 0x8000_0000).next_up(), // near −a
                _ => f32::from_bits(a.to_bits().wrapping_add(rng.gen_range(0..1 << 26))), // near a
            };
            if b.is_finite() {
                out.push((a, b));
            }
        }
        out
    }

    fn same(got: f64, want: f64) -> bool {
        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
    }

    #[test]
    fn add_sub_f32_directed_rounding_is_exact() {
        let mut rng = StdRng::seed_from_u64(1);
        for (a, b) in pairs_f32(&mut rng, 40_000) {
            for round in ROUNDS {
                let got = add_f32(a, b, round);
                let (na, ma, ea) = decompose_f32(a);
                let (nb, mb, eb) = decompose_f32(b);
                let want = match (ma, mb) {
                    (0, 0) => continue,
                    (0, _) => b as f64,
                    (_, 0) => a as f64,
                    _ => match exact_sum((na, ma, ea), (nb, mb, eb)) {
                        Some(v) => round_exact(v, F32, round),
                        None => {
                            if round == Round::Rm {
                                -0.0
                            } else {
                                0.0
                            }
                        }
                    },
                };
                assert!(same(got as f64, want), "add {a:e} + {b:e} {round:?}: got {got:e} want {want:e}");
                let got_sub = sub_f32(a, -b, round);
                assert!(same(got_sub as f64, want), "sub {a:e} - {:e} {round:?}", -b);
            }
        }
    }

    #[test]
    fn signed_zero_sums() {
        for round in ROUNDS {
            let minus_if_rm = if round == Round::Rm { -0.0f32 } else { 0.0 };
            assert_eq!(add_f32(0.0, 0.0, round).to_bits(), 0.0f32.to_bits());
            assert_eq!(add_f32(-0.0, -0.0, round).to_bits(), (-0.0f32).to_bits());
            assert_eq!(add_f32(0.0, -0.0, round).to_bits(), minus_if_rm.to_bits(), "{round:?}");
            assert_eq!(add_f32(1.5, -1.5, round).to_bits(), minus_if_rm.to_bits(), "{round:?}");
            assert_eq!(sub_f32(2.0, 2.0, round).to_bits(), minus_if_rm.to_bits(), "{round:?}");
            assert_eq!(fma_f32(2.0, 3.0, -6.0, round).to_bits(), minus_if_rm.to_bits(), "{round:?}");
            assert_eq!(fma_f32(-0.0, 3.0, -0.0, round).to_bits(), (-0.0f32).to_bits(), "{round:?}");
            assert_eq!(add_f64(1.5, -1.5, round).to_bits(), (minus_if_rm as f64).to_bits(), "{round:?}");
            // A product that underflows keeps its sign.
            assert!(mul_f32(-1e-30, 1e-30, round).is_sign_negative());
        }
    }

    #[test]
    fn mul_div_sqrt_f32_directed_rounding_is_exact() {
        let mut rng = StdRng::seed_from_u64(2);
        for (a, b) in pairs_f32(&mut rng, 40_000) {
            let (na, ma, ea) = decompose_f32(a);
            let (nb, mb, eb) = decompose_f32(b);
            for round in ROUNDS {
                // mul: the significand product is exact in u128.
                let got = mul_f32(a, b, round);
                let want = if ma == 0 || mb == 0 {
                    if na != nb {
                        -0.0
                    } else {
                        0.0
                    }
                } else {
                    round_exact(
                        Exact { negative: na != nb, magnitude: ma * mb, exp: ea + eb, sticky: false },
                        F32,
                        round,
                    )
                };
                assert!(same(got as f64, want), "mul {a:e} * {b:e} {round:?}: got {got:e} want {want:e}");
                // div: normalise both significands to 24 bits, then 80 more quotient bits.
                if ma != 0 && mb != 0 {
                    let sa = 24 - bit_length(ma);
                    let sb = 24 - bit_length(mb);
                    let num = (ma << sa) << 80;
                    let den = mb << sb;
                    let v = Exact {
                        negative: na != nb,
                        magnitude: num / den,
                        exp: (ea - sa) - (eb - sb) - 80,
                        sticky: !num.is_multiple_of(den),
                    };
                    let got = div_f32(a, b, round);
                    let want = round_exact(v, F32, round);
                    assert!(same(got as f64, want), "div {a:e} / {b:e} {round:?}: got {got:e} want {want:e}");
                    if a == 1.0 {
                        assert_eq!(rcp_f32(b, round).to_bits(), got.to_bits());
                    }
                }
            }
            // sqrt of |a|.
            if ma != 0 {
                let (mut m, mut e) = (ma << (24 - bit_length(ma)), ea - (24 - bit_length(ma)));
                if e % 2 != 0 {
                    m <<= 1;
                    e -= 1;
                }
                let radicand = m << 80;
                let root = isqrt(radicand);
                let v = Exact { negative: false, magnitude: root, exp: (e - 80) / 2, sticky: root * root != radicand };
                for round in ROUNDS {
                    let got = sqrt_f32(a.abs(), round);
                    let want = round_exact(v, F32, round);
                    assert!(same(got as f64, want), "sqrt {:e} {round:?}: got {got:e} want {want:e}", a.abs());
                }
            }
        }
    }

    fn isqrt(n: u128) -> u128 {
        // Newton from above, on integers.
        if n < 2 {
            return n;
        }
        let mut x = 1u128 << (bit_length(n) / 2 + 1);
        loop {
            let y = (x + n / x) / 2;
            if y >= x {
                return x;
            }
            x = y;
        }
    }

    #[test]
    fn fma_f32_directed_rounding_is_exact() {
        let mut rng = StdRng::seed_from_u64(3);
        let edges = edge_f32();
        let mut triples: Vec<(f32, f32, f32)> = Vec::new();
        for &a in &edges {
            for &b in &edges {
                for &c in edges.iter().step_by(3) {
                    triples.push((a, b, c));
                }
            }
        }
        for _ in 0..60_000 {
            let a = random_f32(&mut rng);
            let b = random_f32(&mut rng);
            let c = match rng.gen_range(0..3) {
                0 => random_f32(&mut rng),
                _ => {
                    // Near −a*b, so the sum cancels.
                    let p = -(a as f64 * b as f64) as f32;
                    f32::from_bits(p.to_bits().wrapping_add(rng.gen_range(0..64)).wrapping_sub(32))
                }
            };
            if c.is_finite() {
                triples.push((a, b, c));
            }
        }
        for (a, b, c) in triples {
            let (na, ma, ea) = decompose_f32(a);
            let (nb, mb, eb) = decompose_f32(b);
            let (nc, mc, ec) = decompose_f32(c);
            for round in ROUNDS {
                let got = fma_f32(a, b, c, round);
                let want = match (ma * mb, mc) {
                    (0, 0) => continue,
                    (0, _) => c as f64,
                    (p, 0) => {
                        round_exact(Exact { negative: na != nb, magnitude: p, exp: ea + eb, sticky: false }, F32, round)
                    }
                    (p, _) => match exact_sum((na != nb, p, ea + eb), (nc, mc, ec)) {
                        Some(v) => round_exact(v, F32, round),
                        None => {
                            if round == Round::Rm {
                                -0.0
                            } else {
                                0.0
                            }
                        }
                    },
                };
                assert!(same(got as f64, want), "fma {a:e} * {b:e} + {c:e} {round:?}: got {got:e} want {want:e}");
            }
        }
    }

    #[test]
    fn f64_directed_rounding_is_exact() {
        let mut rng = StdRng::seed_from_u64(4);
        for i in 0..60_000 {
            let a = random_f64(&mut rng);
            let b = if i % 3 == 0 { (-a).next_up() } else { random_f64(&mut rng) };
            let (na, ma, ea) = decompose_f64(a);
            let (nb, mb, eb) = decompose_f64(b);
            if ma == 0 || mb == 0 {
                continue;
            }
            for round in ROUNDS {
                let want_add = match exact_sum((na, ma, ea), (nb, mb, eb)) {
                    Some(v) => round_exact(v, F64, round),
                    None => continue,
                };
                let got = add_f64(a, b, round);
                assert!(same(got, want_add), "add {a:e} + {b:e} {round:?}: got {got:e} want {want_add:e}");
                assert!(same(sub_f64(a, -b, round), want_add));

                let want = round_exact(
                    Exact { negative: na != nb, magnitude: ma * mb, exp: ea + eb, sticky: false },
                    F64,
                    round,
                );
                let got = mul_f64(a, b, round);
                assert!(same(got, want), "mul {a:e} * {b:e} {round:?}: got {got:e} want {want:e}");

                let sa = 53 - bit_length(ma);
                let sb = 53 - bit_length(mb);
                let num = (ma << sa) << 72;
                let den = mb << sb;
                let v = Exact {
                    negative: na != nb,
                    magnitude: num / den,
                    exp: (ea - sa) - (eb - sb) - 72,
                    sticky: !num.is_multiple_of(den),
                };
                let want = round_exact(v, F64, round);
                let got = div_f64(a, b, round);
                assert!(same(got, want), "div {a:e} / {b:e} {round:?}: got {got:e} want {want:e}");

                let (mut m, mut e) = (ma << sa, ea - sa);
                if e % 2 != 0 {
                    m <<= 1;
                    e -= 1;
                }
                let radicand = m << 72;
                let root = isqrt(radicand);
                let v = Exact { negative: false, magnitude: root, exp: (e - 72) / 2, sticky: root * root != radicand };
                let want = round_exact(v, F64, round);
                let got = sqrt_f64(a.abs(), round);
                assert!(same(got, want), "sqrt {:e} {round:?}: got {got:e} want {want:e}", a.abs());
            }
        }
    }

    #[test]
    fn overflow_follows_the_direction() {
        let max = f32::MAX;
        assert_eq!(add_f32(max, max, Round::Rn), f32::INFINITY);
        assert_eq!(add_f32(max, max, Round::Rz), max);
        assert_eq!(add_f32(max, max, Round::Rm), max);
        assert_eq!(add_f32(max, max, Round::Rp), f32::INFINITY);
        assert_eq!(mul_f32(-max, 2.0, Round::Rz), -max);
        assert_eq!(mul_f32(-max, 2.0, Round::Rm), f32::NEG_INFINITY);
        assert_eq!(mul_f32(-max, 2.0, Round::Rp), -max);
        // Just above MAX but below the rounding-to-infinity threshold: Rp still overflows.
        assert_eq!(add_f32(max, 1e20, Round::Rn), max);
        assert_eq!(add_f32(max, 1e20, Round::Rp), f32::INFINITY);
        assert_eq!(div_f32(1e30, 1e-30, Round::Rz), max);
        assert_eq!(f64_to_f32(1e300, Round::Rz), max);
        assert_eq!(f64_to_f32(-1e300, Round::Rp), -max);
        assert_eq!(f64_to_f32(-1e300, Round::Rn), f32::NEG_INFINITY);
        assert_eq!(mul_f64(f64::MAX, 2.0, Round::Rz), f64::MAX);
        assert_eq!(mul_f64(f64::MAX, -2.0, Round::Rm), f64::NEG_INFINITY);
        // Infinite operands are not overflows.
        assert_eq!(add_f32(f32::INFINITY, 1.0, Round::Rz), f32::INFINITY);
        assert_eq!(div_f32(1.0, 0.0, Round::Rz), f32::INFINITY);
        assert_eq!(div_f32(-1.0, 0.0, Round::Rp), f32::NEG_INFINITY);
    }

    #[test]
    fn nan_results_are_canonical() {
        let weird_nan = f32::from_bits(0xFFC0_1234);
        for round in ROUNDS {
            assert_eq!(add_f32(weird_nan, 1.0, round).to_bits(), 0x7FFF_FFFF);
            assert_eq!(mul_f32(0.0, f32::INFINITY, round).to_bits(), 0x7FFF_FFFF);
            assert_eq!(div_f32(0.0, 0.0, round).to_bits(), 0x7FFF_FFFF);
            assert_eq!(sqrt_f32(-1.0, round).to_bits(), 0x7FFF_FFFF);
            assert_eq!(fma_f32(f32::INFINITY, 0.0, 1.0, round).to_bits(), 0x7FFF_FFFF);
            assert!(div_f64(0.0, 0.0, round).is_nan());
        }
        assert_eq!(ex2_approx_f32(weird_nan).to_bits(), 0x7FFF_FFFF);
    }

    #[test]
    fn ftz_flushes_subnormals_only() {
        assert_eq!(ftz(f32::from_bits(1)).to_bits(), 0);
        assert_eq!(ftz(-f32::from_bits(0x007F_FFFF)).to_bits(), 0x8000_0000);
        assert_eq!(ftz(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(ftz(-1.5), -1.5);
    }

    /// Every float in a format with its neighbours: bit patterns in order of value.
    fn format_value(bits: u16, bf16: bool) -> f32 {
        if bf16 {
            bf16_to_f32(bits)
        } else {
            f16_to_f32(bits)
        }
    }

    #[test]
    fn bf16_and_f16_conversions_round_exactly() {
        // Inputs: every finite 16-bit value, the midpoints to its upper neighbour and one f32
        // ulp either side of them, plus random f32s. Reference: round_exact on the f32 input.
        let mut rng = StdRng::seed_from_u64(5);
        for bf16 in [true, false] {
            let format = if bf16 { BF16 } else { F16 };
            let mut inputs: Vec<f32> = Vec::new();
            let largest_finite: u16 = if bf16 { 0x7F7F } else { 0x7BFF };
            for bits in 0..largest_finite {
                let lo = format_value(bits, bf16);
                let hi = format_value(bits + 1, bf16);
                let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
                for x in [lo, mid, mid.next_up(), mid.next_down(), hi.next_down()] {
                    inputs.push(x);
                    inputs.push(-x);
                }
            }
            for _ in 0..20_000 {
                inputs.push(random_f32(&mut rng));
            }
            for &x in &inputs {
                let (neg, m, e) = decompose_f32(x);
                for round in ROUNDS {
                    let got = if bf16 { f32_to_bf16(x, round) } else { f32_to_f16(x, round) };
                    let want = if m == 0 {
                        x as f64
                    } else {
                        round_exact(Exact { negative: neg, magnitude: m, exp: e, sticky: false }, format, round)
                    };
                    assert!(
                        same(format_value(got, bf16) as f64, want),
                        "{} {x:e} {round:?}: got {:#06x} = {:e}, want {want:e}",
                        if bf16 { "bf16" } else { "f16" },
                        got,
                        format_value(got, bf16)
                    );
                    if round == Round::Rn && !bf16 {
                        assert_eq!(got, half::f16::from_f32(x).to_bits());
                    }
                    if round == Round::Rn && bf16 {
                        assert_eq!(got, half::bf16::from_f32(x).to_bits());
                    }
                }
            }
        }
        // Ties to even, by hand: 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0, Round::Rn), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0, Round::Rn), 0x3F82);
        assert_eq!(f32_to_bf16(f32::MAX, Round::Rn), 0x7F80);
        assert_eq!(f32_to_bf16(f32::MAX, Round::Rz), 0x7F7F);
        assert_eq!(f32_to_f16(65520.0, Round::Rn), 0x7C00);
        assert_eq!(f32_to_f16(65520.0, Round::Rz), 0x7BFF);
        assert_eq!(f32_to_f16(-1e9, Round::Rp), 0xFBFF);
        assert_eq!(f32_to_f16(-1e9, Round::Rm), 0xFC00);
        assert_eq!(f32_to_f16(1e-9, Round::Rp), 0x0001);
        assert_eq!(f32_to_f16(-1e-9, Round::Rz), 0x8000);
        assert_eq!(f32_to_f16(f32::NAN, Round::Rn), 0x7FFF);
        assert_eq!(f32_to_bf16(-f32::NAN, Round::Rz), 0x7FFF);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY, Round::Rz), 0xFC00);
    }

    #[test]
    fn x2_packing_puts_the_first_source_high() {
        let d = cvt_rn_bf16x2_f32(1.0, -2.0);
        assert_eq!(d >> 16, 0x3F80, "cvt(a) in the upper half");
        assert_eq!(d & 0xFFFF, 0xC000, "cvt(b) in the lower half");
        let d = cvt_rn_f16x2_f32(1.0, -2.0);
        assert_eq!(d >> 16, 0x3C00);
        assert_eq!(d & 0xFFFF, 0xC000);
    }

    #[test]
    fn f64_to_f32_directed() {
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..100_000 {
            let x = random_f64(&mut rng);
            let (neg, m, e) = decompose_f64(x);
            if m == 0 {
                continue;
            }
            for round in ROUNDS {
                let want = round_exact(Exact { negative: neg, magnitude: m, exp: e, sticky: false }, F32, round);
                let got = f64_to_f32(x, round);
                assert!(same(got as f64, want), "{x:e} {round:?}: got {got:e} want {want:e}");
            }
        }
        assert_eq!(f32_to_f64(1.5), 1.5);
    }

    #[test]
    fn int_to_float_directed() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut values: Vec<i128> = vec![
            0,
            1,
            -1,
            (1 << 24) + 1,
            (1 << 24) + 3,
            -(1 << 24) - 1,
            i32::MAX as i128,
            i32::MIN as i128,
            u32::MAX as i128,
            i64::MAX as i128,
            i64::MIN as i128,
            u64::MAX as i128,
            (1 << 53) + 1,
            u16::MAX as i128,
        ];
        for _ in 0..50_000 {
            values.push(match rng.gen_range(0..3) {
                0 => rng.gen::<i64>() as i128,
                1 => rng.gen::<u64>() as i128,
                _ => rng.gen::<i32>() as i128,
            });
        }
        for v in values {
            for round in ROUNDS {
                let got32 = int_to_f32(v, round);
                let got64 = int_to_f64(v, round);
                if v == 0 {
                    assert_eq!(got32.to_bits(), 0);
                    assert_eq!(got64.to_bits(), 0);
                    continue;
                }
                let exact = Exact { negative: v < 0, magnitude: v.unsigned_abs(), exp: 0, sticky: false };
                assert!(same(got32 as f64, round_exact(exact, F32, round)), "{v} {round:?} -> f32 {got32:e}");
                assert!(same(got64, round_exact(exact, F64, round)), "{v} {round:?} -> f64 {got64:e}");
            }
        }
        assert_eq!(int_to_f32(16_777_217, Round::Rn), 16_777_216.0);
        assert_eq!(int_to_f32(16_777_217, Round::Rp), 16_777_218.0);
    }

    #[test]
    fn float_to_int_saturates_and_maps_nan_to_zero() {
        assert_eq!(float_to_s32(2.5, Round::Rn), 2);
        assert_eq!(float_to_s32(3.5, Round::Rn), 4);
        assert_eq!(float_to_s32(-2.5, Round::Rn), -2);
        assert_eq!(float_to_s32(-2.7, Round::Rz), -2);
        assert_eq!(float_to_s32(-2.2, Round::Rm), -3);
        assert_eq!(float_to_s32(2.2, Round::Rp), 3);
        assert_eq!(float_to_s32(3e9, Round::Rz), i32::MAX);
        assert_eq!(float_to_s32(-3e9, Round::Rz), i32::MIN);
        assert_eq!(float_to_s32(f64::NAN, Round::Rz), 0);
        assert_eq!(float_to_u32(-1.5, Round::Rz), 0);
        assert_eq!(float_to_u32(5e9, Round::Rn), u32::MAX);
        assert_eq!(float_to_u32(f64::INFINITY, Round::Rn), u32::MAX);
        assert_eq!(float_to_s64(-1e30, Round::Rn), i64::MIN);
        assert_eq!(float_to_u64(f64::NAN, Round::Rp), 0);
        assert_eq!(float_to_u64(0.5, Round::Rp), 1);
        assert_eq!(float_to_s16(40_000.0, Round::Rz), i16::MAX);
        assert_eq!(float_to_u16(-0.5, Round::Rm), 0);
        // An f32 source goes through f64 exactly.
        assert_eq!(float_to_s32(8_388_607.5f32 as f64, Round::Rz), 8_388_607);
    }

    #[test]
    fn integral_rounding_and_saturation() {
        assert_eq!(round_integral_f32(2.5, Round::Rn), 2.0);
        assert_eq!(round_integral_f32(-2.5, Round::Rn), -2.0);
        assert_eq!(round_integral_f32(-2.5, Round::Rz), -2.0);
        assert_eq!(round_integral_f32(-2.5, Round::Rm), -3.0);
        assert_eq!(round_integral_f32(2.1, Round::Rp), 3.0);
        assert!(round_integral_f32(-0.3, Round::Rp).is_sign_negative(), "ceil(-0.3) is -0");
        assert_eq!(round_integral_f64(1e300, Round::Rm), 1e300);
        assert_eq!(saturate_f32(f32::NAN).to_bits(), 0);
        assert_eq!(saturate_f32(-0.0).to_bits(), 0);
        assert_eq!(saturate_f32(-3.0), 0.0);
        assert_eq!(saturate_f32(0.25), 0.25);
        assert_eq!(saturate_f32(1.5), 1.0);
        assert_eq!(saturate_f32(f32::INFINITY), 1.0);
    }

    #[test]
    fn copysign_takes_the_sign_of_the_first_operand() {
        assert_eq!(copysign_f32(-1.0, 3.0), -3.0);
        assert_eq!(copysign_f32(1.0, -3.0), 3.0);
        assert_eq!(copysign_f32(-0.0, 0.0).to_bits(), 0x8000_0000);
        assert_eq!(copysign_f32(2.0, f32::NEG_INFINITY), f32::INFINITY);
        assert_eq!(copysign_f64(-1.0, 3.0), -3.0);
        assert_eq!(copysign_f64(5.0, -0.5), 0.5);
        // C's order is the other way round.
        assert_eq!(copysign_f32(-1.0, 3.0), 3.0f32.copysign(-1.0));
    }

    #[test]
    fn min_max_nan_and_signed_zero_rules() {
        let nan = f32::from_bits(0x7FC0_0001);
        assert_eq!(min_f32(nan, 2.0), 2.0);
        assert_eq!(min_f32(2.0, nan), 2.0);
        assert_eq!(max_f32(nan, -2.0), -2.0);
        assert_eq!(max_f32(-2.0, nan), -2.0);
        assert_eq!(min_f32(nan, nan).to_bits(), 0x7FFF_FFFF);
        assert_eq!(max_f32(nan, nan).to_bits(), 0x7FFF_FFFF);
        assert_eq!(min_f32(0.0, -0.0).to_bits(), 0x8000_0000);
        assert_eq!(min_f32(-0.0, 0.0).to_bits(), 0x8000_0000);
        assert_eq!(max_f32(-0.0, 0.0).to_bits(), 0);
        assert_eq!(max_f32(0.0, -0.0).to_bits(), 0);
        assert_eq!(min_f32(-1.0, 1.0), -1.0);
        assert_eq!(max_f32(f32::NEG_INFINITY, -1e30), -1e30);
        assert_eq!(min_f64(f64::NAN, 1.0), 1.0);
        assert_eq!(max_f64(-0.0, 0.0).to_bits(), 0);
        assert_eq!(min_f64(0.0, -0.0).to_bits(), 1 << 63);
        assert!(max_f64(f64::NAN, f64::NAN).is_nan());
    }

    #[test]
    fn compare_ordered_and_unordered() {
        use CmpOp::*;
        let nan = f32::NAN;
        let ordered = [Eq, Ne, Lt, Le, Gt, Ge, Num];
        let unordered = [Equ, Neu, Ltu, Leu, Gtu, Geu, Nan];
        for op in ordered {
            assert!(!compare_f32(op, nan, 1.0), "{op:?} with NaN is false");
            assert!(!compare_f32(op, 1.0, nan), "{op:?} with NaN is false");
        }
        for op in unordered {
            assert!(compare_f32(op, nan, 1.0), "{op:?} with NaN is true");
            assert!(compare_f64(op, 1.0, f64::NAN), "{op:?} with NaN is true");
        }
        let table = [
            // (op, 1 vs 2, 2 vs 2, 2 vs 1)
            (Eq, false, true, false),
            (Ne, true, false, true),
            (Lt, true, false, false),
            (Le, true, true, false),
            (Gt, false, false, true),
            (Ge, false, true, true),
            (Equ, false, true, false),
            (Neu, true, false, true),
            (Ltu, true, false, false),
            (Leu, true, true, false),
            (Gtu, false, false, true),
            (Geu, false, true, true),
            (Num, true, true, true),
            (Nan, false, false, false),
        ];
        for (op, lt, eq, gt) in table {
            assert_eq!(compare_f32(op, 1.0, 2.0), lt, "{op:?} 1 2");
            assert_eq!(compare_f32(op, 2.0, 2.0), eq, "{op:?} 2 2");
            assert_eq!(compare_f32(op, 2.0, 1.0), gt, "{op:?} 2 1");
        }
        assert!(compare_f32(Eq, 0.0, -0.0));
        assert!(!compare_f32(Lt, -0.0, 0.0));
    }

    /// Distance in ulps (of the f32 grid) between an f32 and an exact f64 value.
    fn ulp_error(got: f32, exact: f64) -> f64 {
        let ulp = (got.abs().next_up() - got.abs()) as f64;
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn approx_functions_are_within_half_an_ulp_of_f64_and_follow_the_special_cases() {
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..20_000 {
            let x: f32 = rng.gen_range(-100.0..100.0);
            let y: f32 = rng.gen_range(0.001..1000.0);
            assert!(ulp_error(ex2_approx_f32(x), (x as f64).exp2()) <= 0.5 + 1e-6);
            assert!(ulp_error(lg2_approx_f32(y), (y as f64).log2()) <= 0.5 + 1e-6);
            assert!(ulp_error(rsqrt_approx_f32(y), 1.0 / (y as f64).sqrt()) <= 0.5 + 1e-6);
            assert!(ulp_error(rcp_approx_f32(x), 1.0 / x as f64) <= 0.5 + 1e-6);
            assert!(ulp_error(sin_approx_f32(x), (x as f64).sin()) <= 0.5 + 1e-6);
            assert!(ulp_error(cos_approx_f32(x), (x as f64).cos()) <= 0.5 + 1e-6);
            assert!(ulp_error(tanh_approx_f32(x / 20.0), ((x / 20.0) as f64).tanh()) <= 0.5 + 1e-6);
            assert_eq!(div_full_f32(x, y), div_f32(x, y, Round::Rn), "div.full {x} / {y}");
            assert_eq!(div_approx_f32(x, y), div_f32(x, y, Round::Rn), "div.approx {x} / {y}");
        }
        // ISA special-case tables.
        assert_eq!(ex2_approx_f32(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(ex2_approx_f32(-0.0), 1.0);
        assert_eq!(ex2_approx_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(rsqrt_approx_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(rsqrt_approx_f32(0.0), f32::INFINITY);
        assert_eq!(rsqrt_approx_f32(f32::INFINITY).to_bits(), 0);
        assert!(rsqrt_approx_f32(-1.0).is_nan());
        assert_eq!(lg2_approx_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(lg2_approx_f32(-0.0), f32::NEG_INFINITY);
        assert!(lg2_approx_f32(-1.0).is_nan());
        assert_eq!(sin_approx_f32(-0.0).to_bits(), 0x8000_0000);
        assert!(sin_approx_f32(f32::INFINITY).is_nan());
        assert_eq!(cos_approx_f32(-0.0), 1.0);
        assert_eq!(tanh_approx_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_approx_f32(-0.0).to_bits(), 0x8000_0000);
        // div.approx with 2^126 < |b| < 2^128: 0, or NaN for an infinite a.
        assert_eq!(div_approx_f32(1.0, 1e38).to_bits(), 0);
        assert_eq!(div_approx_f32(-1.0, 1e38).to_bits(), 0x8000_0000);
        assert!(div_approx_f32(f32::INFINITY, 1e38).is_nan());
        assert!(div_full_f32(1.0, 1e38) > 0.0);
    }
}
