//! Multi-head scaled dot-product attention over a packed qkv tensor, with the additive masks
//! TagCLIP needs and an optional head-averaged probability map.
//!
//! qkv (B, T, 3C) holds [q | k | v] as produced by CLIP's fused in-projection; heads split C.
//! out (B, T, C). probs (B, T, T) = softmax(q k^T / sqrt(dh)) averaged over heads.

use rayon::prelude::*;

use crate::ops::matmul::{gemm_cpu, MatRef};
use crate::ops::softmax::softmax_row;
use crate::ops::SendPtr;

/// Additive masks, all optional.
#[derive(Clone, Copy, Default)]
pub struct AttnMask<'a> {
    /// (T, T), added to every sample's and head's scores.
    pub shared: Option<&'a [f32]>,
    /// (B, T), added to the CLS query row (query 0) of sample b only.
    pub cls_row: Option<&'a [f32]>,
    /// Text encoder: key j > query i is excluded.
    pub causal: bool,
}

impl AttnMask<'_> {
    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.cls_row.is_none() && !self.causal
    }
}

/// Which probabilities a caller wants recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbsRecord {
    None,
    /// The probabilities actually used (masks applied).
    Masked,
    /// softmax of the scores before the masks (TagCLIP records the last layer this way).
    Unmasked,
}

fn apply_mask_row(row: &mut [f32], b: usize, i: usize, t: usize, mask: &AttnMask) {
    if let Some(m) = mask.shared {
        for (v, mv) in row.iter_mut().zip(&m[i * t..(i + 1) * t]) {
            *v += mv;
        }
    }
    if i == 0 {
        if let Some(m) = mask.cls_row {
            for (v, mv) in row.iter_mut().zip(&m[b * t..(b + 1) * t]) {
                *v += mv;
            }
        }
    }
    if mask.causal {
        for v in row[i + 1..].iter_mut() {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// CPU reference. `probs`, when given, must hold B*T*T floats and `record` must not be None.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_cpu(
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    heads: usize,
    mask: &AttnMask,
    record: ProbsRecord,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
) {
    let dh = c / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let want = probs.is_some() && record != ProbsRecord::None;
    // Per-(sample, head) probability maps, reduced over heads afterwards.
    let mut head_probs = if want { vec![0.0f32; b * heads * t * t] } else { Vec::new() };
    let hp = SendPtr(head_probs.as_mut_ptr());
    let outp = SendPtr(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bi * t * 3 * c;
        let mut s = vec![0.0f32; t * t];
        // SAFETY: q and k^T views stay inside sample bi of qkv; s is t x t.
        unsafe {
            gemm_cpu(
                t,
                t,
                dh,
                MatRef { ptr: qkv.as_ptr().add(base + h * dh), rs: 3 * c as isize, cs: 1 },
                MatRef { ptr: qkv.as_ptr().add(base + c + h * dh), rs: 1, cs: 3 * c as isize },
                s.as_mut_ptr(),
                t as isize,
                false,
                false,
            );
        }
        for i in 0..t {
            let row = &mut s[i * t..(i + 1) * t];
            for v in row.iter_mut() {
                *v *= scale;
            }
            if want && record == ProbsRecord::Unmasked {
                // SAFETY: each (bi, h) task owns its t*t slab of head_probs.
                let dst = unsafe { std::slice::from_raw_parts_mut(hp.get().add((bh * t + i) * t), t) };
                dst.copy_from_slice(row);
                softmax_row(dst);
            }
            apply_mask_row(row, bi, i, t, mask);
            softmax_row(row);
            if want && record == ProbsRecord::Masked {
                let dst = unsafe { std::slice::from_raw_parts_mut(hp.get().add((bh * t + i) * t), t) };
                dst.copy_from_slice(row);
            }
        }
        // SAFETY: P (t x t) @ V_h (t x dh) into the disjoint columns h*dh.. of sample bi.
        unsafe {
            gemm_cpu(
                t,
                dh,
                t,
                MatRef::row_major(&s, t),
                MatRef { ptr: qkv.as_ptr().add(base + 2 * c + h * dh), rs: 3 * c as isize, cs: 1 },
                outp.get().add(bi * t * c + h * dh),
                c as isize,
                false,
                false,
            );
        }
    });
    if let Some(p) = probs {
        if want {
            let inv = 1.0 / heads as f32;
            p.par_chunks_mut(t * t).enumerate().for_each(|(bi, pb)| {
                pb.fill(0.0);
                for h in 0..heads {
                    let src = &head_probs[(bi * heads + h) * t * t..(bi * heads + h + 1) * t * t];
                    for (d, s) in pb.iter_mut().zip(src) {
                        *d += s;
                    }
                }
                for d in pb.iter_mut() {
                    *d *= inv;
                }
            });
        }
    }
}
