//! Multi-head scaled dot-product attention over a packed qkv tensor, with the additive masks
//! TagCLIP needs and an optional head-averaged probability map.
//!
//! qkv (B, T, 3C) holds [q | k | v] as produced by CLIP's fused in-projection; heads split C.
//! out (B, T, C). probs (B, T, T) = softmax(q k^T / sqrt(dh)) averaged over heads.

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{
    launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work, REFERENCE_MAX_WORK,
};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
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

impl ProbsRecord {
    /// From a request's two flags: record at all, and whether before the masks.
    pub fn from_flags(record: bool, before_mask: bool) -> ProbsRecord {
        match (record, before_mask) {
            (false, _) => ProbsRecord::None,
            (true, false) => ProbsRecord::Masked,
            (true, true) => ProbsRecord::Unmasked,
        }
    }
}

/// The definition, in f64, one (sample, head, query) at a time: out (B, T, C) and the
/// head-averaged probabilities (B, T, T) as `record` asks (zeros for `ProbsRecord::None`) of
/// qkv (B, T, 3C). The fast CPU path below is tested against it, and so are the kernels (on
/// check rows up to `REFERENCE_MAX_WORK`).
pub fn attention_reference(
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    heads: usize,
    mask: &AttnMask,
    record: ProbsRecord,
) -> (Vec<f32>, Vec<f32>) {
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
                let rec = if record == ProbsRecord::Unmasked { sm(&raw) } else { p.clone() };
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

/// Device masks, all optional: shared (T, T) f32 added to every sample's and head's scores;
/// cls_row (B, T) f32 added to query row 0 of sample b; causal excludes key j > query i.
#[derive(Clone, Copy, Default)]
pub struct CudaAttnMask<'a> {
    pub shared: Option<&'a CudaTensor>,
    pub cls_row: Option<&'a CudaTensor>,
    pub causal: bool,
}

/// Head dims with an attention_flash (f32) and attention_flash_tc (bf16, f16) instantiation in
/// kernels/attention.cu (every CLIP encoder uses 64).
const FLASH_HEAD_DIMS: [usize; 2] = [32, 64];
/// Queries per attention_flash block (ATTN_BQ) and the (i, j) tile of attention_probs
/// (PROBS_TILE) in kernels/attention.cu.
const FLASH_QUERIES_PER_BLOCK: usize = 64;
const PROBS_TILE: usize = 64;
/// Queries per attention_flash_tc block (TC_BQ) and its threads (TC_WARPS * 32); it has the
/// same head dims as attention_flash.
const FLASH_TC_QUERIES_PER_BLOCK: usize = 64;
const FLASH_TC_THREADS: u32 = 128;
/// Dynamic shared memory of a masked attention_flash_tc launch (kernels/attention.cu,
/// TC_MASK_LDS): the shared mask's tile, 64 query rows of 64 keys in rows of 72 floats, and
/// the CLS row's 64 keys.
const FLASH_TC_SHARED_MASK_BYTES: u32 = 64 * 72 * 4;
const FLASH_TC_CLS_MASK_BYTES: u32 = 64 * 4;

/// CUDA launcher: kernels/attention.cu. qkv (B, T, 3C) packed [q | k | v] (heads split C; head
/// dim C/heads, 32 or 64), out (B, T, C) in qkv's float dtype; probs (B, T, T) f32 = softmax
/// averaged over heads, masked or unmasked per `record`, exactly as `attention_forward_cpu`
/// (written only when `probs` is given and `record` is not None).
///
/// attention_flash computes `out` (and, for probs, each row's log-sum-exp into a (B, H, T)
/// scratch buffer); attention_probs then recomputes q.k per (b, i, j) over heads. bf16 and f16
/// run attention_flash_tc instead (tensor cores, same masks and log-sum-exp); f32 keeps the
/// SIMT attention_flash.
pub fn attention_cuda(
    gpu: &Gpu,
    qkv: &CudaTensor,
    heads: usize,
    mask: &CudaAttnMask,
    record: ProbsRecord,
    out: &mut CudaTensor,
    probs: Option<&mut CudaTensor>,
) -> Result<()> {
    let shape_err = |why: &str| {
        Error::Shape(format!("attention_cuda: {why} (qkv {:?}, heads {heads}, out {:?})", qkv.shape(), out.shape()))
    };
    let &[b, t, c3] = qkv.shape() else {
        return Err(shape_err("qkv must be (B, T, 3C)"));
    };
    if b == 0 || t == 0 || c3 == 0 || c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 {
        return Err(shape_err("3C must be a positive multiple of 3 * heads"));
    }
    let c = c3 / 3;
    let dh = c / heads;
    if !FLASH_HEAD_DIMS.contains(&dh) {
        return Err(shape_err(&format!("head dim {dh} has no kernel (supported: {FLASH_HEAD_DIMS:?})")));
    }
    if out.shape() != [b, t, c] {
        return Err(shape_err("out must be (B, T, C)"));
    }
    if !qkv.dtype().is_float() {
        return Err(Error::Device(format!("attention_cuda: qkv must be a float tensor, found {:?}", qkv.dtype())));
    }
    out.expect_dtype(qkv.dtype(), "attention_cuda out")?;
    if let Some(m) = mask.shared {
        if m.shape() != [t, t] {
            return Err(shape_err(&format!("shared mask {:?} must be (T, T)", m.shape())));
        }
        m.expect_dtype(DType::F32, "attention_cuda shared mask")?;
    }
    if let Some(m) = mask.cls_row {
        if m.shape() != [b, t] {
            return Err(shape_err(&format!("cls_row mask {:?} must be (B, T)", m.shape())));
        }
        m.expect_dtype(DType::F32, "attention_cuda cls_row mask")?;
    }
    let probs = probs.filter(|_| record != ProbsRecord::None);
    if let Some(p) = &probs {
        if p.shape() != [b, t, t] {
            return Err(shape_err(&format!("probs {:?} must be (B, T, T)", p.shape())));
        }
        p.expect_dtype(DType::F32, "attention_cuda probs")?;
    }
    let (grid_heads, grid_b) = (u32::try_from(heads), u32::try_from(b));
    let (Ok(grid_heads), Ok(grid_b)) = (grid_heads, grid_b) else {
        return Err(shape_err("too many heads or samples for one launch"));
    };
    if grid_heads > 65535 || grid_b > 65535 {
        return Err(shape_err("heads and B must each be at most 65535 (grid y / z)"));
    }
    let opt_arg = |m: Option<&CudaTensor>| m.map_or(KArg::Ptr(0), |m| m.arg(gpu));
    let (n_tok, h_arg, causal) = (to_i32(t, "T")?, to_i32(heads, "heads")?, KArg::I32(mask.causal as i32));
    let scale = 1.0 / (dh as f32).sqrt();
    // lse_mode of attention_flash: 0 none, 1 masked, 2 unmasked (LSE_* in the kernel).
    let (lse, lse_mode) = match (&probs, record) {
        (Some(_), ProbsRecord::Masked) => (Some(CudaTensor::empty(gpu, &[b, heads, t], DType::F32)?), 1),
        (Some(_), ProbsRecord::Unmasked) => (Some(CudaTensor::empty(gpu, &[b, heads, t], DType::F32)?), 2),
        _ => (None, 0),
    };
    let sfx = qkv.dtype().suffix();
    // f32 runs the SIMT kernel; bf16 / f16 the tensor-core one, whose 16-byte cp.async loads
    // and stores need 16-byte aligned bases (rows and head slices then are, as dh % 8 == 0).
    let tensor_cores = matches!(qkv.dtype(), DType::BF16 | DType::F16);
    if tensor_cores && !(qkv.ptr(gpu).is_multiple_of(16) && out.ptr(gpu).is_multiple_of(16)) {
        return Err(Error::Device("attention_cuda: qkv and out must be 16-byte aligned for bf16 / f16".into()));
    }
    let (kernel, queries_per_block, threads) = if tensor_cores {
        (format!("attention_flash_tc_d{dh}_{sfx}"), FLASH_TC_QUERIES_PER_BLOCK, FLASH_TC_THREADS)
    } else {
        (format!("attention_flash_d{dh}_{sfx}"), FLASH_QUERIES_PER_BLOCK, FLASH_QUERIES_PER_BLOCK as u32)
    };
    let q_tiles = t.div_ceil(queries_per_block) as u32;
    let mask_bytes = if tensor_cores {
        mask.shared.map_or(0, |_| FLASH_TC_SHARED_MASK_BYTES) + mask.cls_row.map_or(0, |_| FLASH_TC_CLS_MASK_BYTES)
    } else {
        0
    };
    let cfg = LaunchConfig {
        grid_dim: (q_tiles, grid_heads, grid_b),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: mask_bytes,
    };
    gpu.launch(
        "attention",
        &kernel,
        cfg,
        &[
            qkv.arg(gpu),
            opt_arg(mask.shared),
            opt_arg(mask.cls_row),
            causal,
            out.arg(gpu),
            opt_arg(lse.as_ref()),
            KArg::I32(lse_mode),
            n_tok,
            h_arg,
            scale.into(),
        ],
    )?;
    let (Some(p), Some(lse)) = (probs, lse.as_ref()) else {
        return Ok(());
    };
    let tiles = t.div_ceil(PROBS_TILE) as u32;
    let cfg = LaunchConfig { grid_dim: (tiles, tiles, grid_b), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    gpu.launch(
        "attention",
        &format!("attention_probs_{sfx}"),
        cfg,
        &[
            qkv.arg(gpu),
            lse.arg(gpu),
            opt_arg(mask.shared),
            opt_arg(mask.cls_row),
            causal,
            KArg::I32((record == ProbsRecord::Masked) as i32),
            p.arg(gpu),
            n_tok,
            h_arg,
            to_i32(dh, "head dim")?,
            scale.into(),
        ],
    )
}

/// Which masks a check applies.
#[derive(Clone, Copy, Debug)]
enum CheckMask {
    None,
    Causal,
    /// TagCLIP's last patch-pass layer: 0 on the diagonal, -100 elsewhere.
    Diagonal,
    /// TagCLIP's crops: CLS row 0 or -1000 per key.
    ClsRow,
    /// A random shared mask, a CLS row and causal at once.
    All,
}

/// Kernel checks (see device::cuda::check): CLIP ViT-B/16 and B/32, the text encoder (causal),
/// TagCLIP's masked layers at native resolution, odd sizes and head dim 32; every dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    use CheckMask as M;
    use ProbsRecord as R;
    let cases: [(usize, usize, usize, usize, CheckMask, ProbsRecord); 16] = [
        (8, 197, 768, 12, M::None, R::None),
        (2, 197, 768, 12, M::None, R::None),
        // ModifiedResNet (RN50) attention pool: 7x7 + 1 tokens, C 2048, 32 heads.
        (2, 50, 2048, 32, M::None, R::None),
        // Below the simulator's CI work cap: several key tiles and query blocks for head dims 64
        // and 32, T = 7 (a fraction of one tile), causal with the unmasked log-sum-exp.
        (1, 130, 128, 2, M::Causal, R::None),
        (2, 130, 64, 2, M::Diagonal, R::Unmasked),
        (2, 7, 128, 2, M::All, R::Masked),
        (1, 77, 512, 8, M::Causal, R::Unmasked),
        (8, 197, 768, 12, M::None, R::Unmasked),
        (8, 50, 768, 12, M::None, R::None),
        (4, 77, 512, 8, M::Causal, R::None),
        (4, 77, 512, 8, M::Causal, R::Masked),
        (2, 1201, 768, 12, M::Diagonal, R::Unmasked),
        (3, 50, 768, 12, M::ClsRow, R::Masked),
        (2, 33, 128, 2, M::All, R::Masked),
        (2, 33, 128, 2, M::All, R::Unmasked),
        (3, 70, 96, 3, M::All, R::Masked),
    ];
    let mut checks = Vec::new();
    for (b, t, c, heads, kind, record) in cases {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let probs_flops = if record == R::None { 0.0 } else { 2.0 };
            let flops = (4.0 + probs_flops) * (b * t * t * c) as f64;
            let op = if record == R::None { "attention_forward" } else { "attention_forward_probs" };
            let shape = format!("B={b} T={t} C={c} heads={heads} mask={kind:?} probs={record:?}");
            checks.push(GpuCheck::new(op, shape, dtype, Work::Flops(flops), move |gpu, rng| {
                let qkv = random_vec(rng, b * t * 3 * c, 1.0);
                let qkv_d = CudaTensor::from_f32(gpu, &[b, t, 3 * c], &qkv, dtype)?;
                // The reference sees the inputs as rounded to the dtype: the check measures the kernel.
                let qkv = qkv_d.to_f32_vec(gpu)?;
                let shared: Option<Vec<f32>> = match kind {
                    M::Diagonal => Some((0..t * t).map(|k| if k % (t + 1) == 0 { 0.0 } else { -100.0 }).collect()),
                    M::All => Some(random_vec(rng, t * t, 3.0)),
                    _ => None,
                };
                let cls_row: Option<Vec<f32>> = match kind {
                    M::ClsRow | M::All => Some((0..b * t).map(|k| if k % 3 == 1 { -1000.0 } else { 0.0 }).collect()),
                    _ => None,
                };
                let causal = matches!(kind, M::Causal | M::All);
                let mask = AttnMask { shared: shared.as_deref(), cls_row: cls_row.as_deref(), causal };
                let (want_out, want_probs) = if flops <= REFERENCE_MAX_WORK {
                    attention_reference(&qkv, b, t, c, heads, &mask, record)
                } else {
                    let mut want_out = vec![0.0; b * t * c];
                    let mut want_probs = vec![0.0; b * t * t];
                    let want_p = (record != R::None).then_some(&mut want_probs[..]);
                    attention_forward_cpu(&qkv, b, t, c, heads, &mask, record, &mut want_out, want_p);
                    (want_out, want_probs)
                };

                let shared_d = shared.map(|m| CudaTensor::from_f32(gpu, &[t, t], &m, DType::F32)).transpose()?;
                let cls_d = cls_row.map(|m| CudaTensor::from_f32(gpu, &[b, t], &m, DType::F32)).transpose()?;
                let outputs = (poisoned(gpu, &[b, t, c], dtype)?, poisoned(gpu, &[b, t, t], DType::F32)?);
                launch_and_compare(
                    gpu,
                    outputs,
                    move |g, (out_d, probs_d)| {
                        let mask_d = CudaAttnMask { shared: shared_d.as_ref(), cls_row: cls_d.as_ref(), causal };
                        attention_cuda(g, &qkv_d, heads, &mask_d, record, out_d, Some(probs_d))
                    },
                    |g, (out_d, probs_d)| {
                        let mut compared = vec![(out_d, &want_out[..])];
                        if record != R::None {
                            compared.push((probs_d, &want_probs[..]));
                        }
                        max_rel_err_all(g, &compared)
                    },
                )
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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
            let shared: Vec<f32> =
                (0..t * t).map(|i| if i % (t + 1) == 0 { 0.0 } else { -100.0 * rng.gen::<f32>() }).collect();
            let cls: Vec<f32> = (0..b * t).map(|i| if i % 3 == 1 { -1000.0 } else { 0.0 }).collect();
            let masks = [
                AttnMask::default(),
                AttnMask { shared: Some(&shared), ..Default::default() },
                AttnMask { cls_row: Some(&cls), ..Default::default() },
                AttnMask { causal: true, ..Default::default() },
            ];
            for mask in &masks {
                for record in [ProbsRecord::Masked, ProbsRecord::Unmasked] {
                    let mut out = vec![f32::NAN; b * t * c];
                    let mut probs = vec![f32::NAN; b * t * t];
                    attention_forward_cpu(&qkv, b, t, c, heads, mask, record, &mut out, Some(&mut probs));
                    let (want_out, want_probs) = attention_reference(&qkv, b, t, c, heads, mask, record);
                    close(&out, &want_out, "out");
                    close(&probs, &want_probs, "probs");
                }
            }
        }
    }
}
