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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition in f64, one (sample, head, query) at a time.
    fn naive(qkv: &[f32], b: usize, t: usize, c: usize, heads: usize, mask: &AttnMask, before: bool) -> (Vec<f32>, Vec<f32>) {
        let dh = c / heads;
        let mut out = vec![0.0f32; b * t * c];
        let mut probs = vec![0.0f32; b * t * t];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..t {
                    let q = |d: usize| qkv[(bi * t + i) * 3 * c + h * dh + d] as f64;
                    let mut raw = vec![0.0f64; t];
                    for (j, r) in raw.iter_mut().enumerate() {
                        let k = |d: usize| qkv[(bi * t + j) * 3 * c + c + h * dh + d] as f64;
                        *r = (0..dh).map(|d| q(d) * k(d)).sum::<f64>() / (dh as f64).sqrt();
                    }
                    let mut masked = raw.clone();
                    for (j, m) in masked.iter_mut().enumerate() {
                        if let Some(s) = mask.shared {
                            *m += s[i * t + j] as f64;
                        }
                        if let (Some(cr), 0) = (mask.cls_row, i) {
                            *m += cr[bi * t + j] as f64;
                        }
                        if mask.causal && j > i {
                            *m = f64::NEG_INFINITY;
                        }
                    }
                    let sm = |v: &[f64]| {
                        let mx = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = v.iter().map(|x| (x - mx).exp()).collect();
                        let s: f64 = e.iter().sum();
                        e.into_iter().map(|x| x / s).collect::<Vec<f64>>()
                    };
                    let p = sm(&masked);
                    let rec = if before { sm(&raw) } else { p.clone() };
                    for j in 0..t {
                        probs[(bi * t + i) * t + j] += (rec[j] / heads as f64) as f32;
                    }
                    for d in 0..dh {
                        let v: f64 = (0..t).map(|j| p[j] * qkv[(bi * t + j) * 3 * c + 2 * c + h * dh + d] as f64).sum();
                        out[(bi * t + i) * c + h * dh + d] = v as f32;
                    }
                }
            }
        }
        (out, probs)
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{what}: {x} vs {y}");
        }
    }

    #[test]
    fn attention_matches_definition_with_masks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for &(b, t, c, heads) in &[(2usize, 7usize, 12usize, 3usize), (1, 17, 64, 2), (3, 5, 8, 1)] {
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let shared: Vec<f32> = (0..t * t).map(|i| if i % (t + 1) == 0 { 0.0 } else { -100.0 * rng.gen::<f32>() }).collect();
            let cls: Vec<f32> = (0..b * t).map(|i| if i % 3 == 1 { -1000.0 } else { 0.0 }).collect();
            let masks = [
                AttnMask::default(),
                AttnMask { shared: Some(&shared), ..Default::default() },
                AttnMask { cls_row: Some(&cls), ..Default::default() },
                AttnMask { causal: true, ..Default::default() },
            ];
            for mask in &masks {
                for (record, before) in [(ProbsRecord::Masked, false), (ProbsRecord::Unmasked, true)] {
                    let mut out = vec![f32::NAN; b * t * c];
                    let mut probs = vec![f32::NAN; b * t * t];
                    attention_forward_cpu(&qkv, b, t, c, heads, mask, record, &mut out, Some(&mut probs));
                    let (want_out, want_probs) = naive(&qkv, b, t, c, heads, mask, before);
                    close(&out, &want_out, "out");
                    close(&probs, &want_probs, "probs");
                }
            }
        }
    }
}
