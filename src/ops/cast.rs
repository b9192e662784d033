//! Casts between storage types for mixed-precision training: f32 <-> bf16 elementwise (the
//! image batch into the bf16 network, its last features back into the f32 head), and the
//! per-step bf16 copy of a network's convolution weights from the f32 master parameters, every
//! layer's run of the flat f32 buffer into its own 16-byte-aligned place of one bf16 buffer, in
//! one launch (`CastSegments`).

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// The definition: `x` as a tensor of `dtype` holds it (bf16 / f16 rounded to nearest even).
pub fn cast_cpu(x: &[f32], dtype: DType) -> Vec<f32> {
    dtype.round(x.to_vec())
}

/// CUDA launcher (kernels/cast.cu): y = x, f32 -> bf16 or bf16 -> f32; same element count.
pub fn cast_cuda(gpu: &Gpu, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    if x.numel() != y.numel() {
        return Err(Error::Shape(format!("cast_cuda: x {:?}, y {:?}", x.shape(), y.shape())));
    }
    let name = match (x.dtype(), y.dtype()) {
        (DType::F32, DType::BF16) | (DType::BF16, DType::F32) => {
            format!("cast_{}_{}", x.dtype().suffix(), y.dtype().suffix())
        }
        (a, b) => return Err(Error::Device(format!("cast_cuda: {a:?} -> {b:?} is not supported (f32 <-> bf16)"))),
    };
    let n = x.numel();
    gpu.launch("cast", &name, grid_stride_config(n.div_ceil(4)), &[x.arg(gpu), y.arg(gpu), (n as i64).into()])
}

/// Runs of a flat f32 buffer copied into a flat bf16 buffer by `cast_segments_cuda`: each
/// `(src offset, dst offset, length)` in elements, checked once against both lengths; the
/// table lives on the device.
pub struct CastSegments {
    runs: Vec<(usize, usize, usize)>,
    src_len: usize,
    dst_len: usize,
    table: CudaTensor,
}

impl CastSegments {
    pub fn new(gpu: &Gpu, runs: Vec<(usize, usize, usize)>, src_len: usize, dst_len: usize) -> Result<CastSegments> {
        if runs.is_empty() || runs.len() > 65535 {
            return Err(Error::Shape(format!("cast segments: {} runs (1 to 65535)", runs.len())));
        }
        let mut flat = Vec::with_capacity(3 * runs.len());
        for &(s, d, n) in &runs {
            if s + n > src_len || d + n > dst_len {
                return Err(Error::Shape(format!(
                    "cast segments: run ({s}, {d}, {n}) outside source {src_len} / destination {dst_len}"
                )));
            }
            for (v, what) in [(s, "run source"), (d, "run destination"), (n, "run length")] {
                flat.push(i32::try_from(v).map_err(|_| Error::Shape(format!("cast segments: {what} {v} over i32")))?);
            }
        }
        let table = CudaTensor::from_i32(gpu, &[runs.len(), 3], &flat)?;
        Ok(CastSegments { runs, src_len, dst_len, table })
    }

    /// The definition: dst (f32 values as bf16 rounds them) with every run copied.
    pub fn apply_cpu(&self, src: &[f32], dst: &mut [f32]) {
        for &(s, d, n) in &self.runs {
            dst[d..d + n].copy_from_slice(&cast_cpu(&src[s..s + n], DType::BF16));
        }
    }
}

/// CUDA launcher: every run of `segs` from `src` (f32) into `dst` (bf16), one launch (grid y =
/// the run); the rest of `dst` is left as it is.
pub fn cast_segments_cuda(gpu: &Gpu, segs: &CastSegments, src: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
    if src.numel() != segs.src_len || dst.numel() != segs.dst_len {
        return Err(Error::Shape(format!(
            "cast_segments_cuda: src {} / dst {} elements, the runs were made for {} / {}",
            src.numel(),
            dst.numel(),
            segs.src_len,
            segs.dst_len
        )));
    }
    src.expect_dtype(DType::F32, "cast_segments_cuda src")?;
    dst.expect_dtype(DType::BF16, "cast_segments_cuda dst")?;
    let longest = segs.runs.iter().map(|r| r.2).max().unwrap_or(0);
    // A few blocks per run: the largest runs (ResNet-50's 2.4 M-weight convolutions) stride.
    let cfg = LaunchConfig {
        grid_dim: (longest.div_ceil(256).clamp(1, 256) as u32, segs.runs.len() as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    to_i32(segs.runs.len(), "cast segments")?;
    gpu.launch("cast", "cast_segments_f32_bf16", cfg, &[src.arg(gpu), dst.arg(gpu), segs.table.arg(gpu)])
}

/// Kernel checks: both elementwise casts on a ResNet-50 activation (448, batch 2, layer1) and
/// an odd length (vector body plus a scalar tail), and the segment cast on ResNet-50-like runs
/// (odd source offsets, aligned destinations) and tiny ones. Rounding to nearest even is exact
/// arithmetic: the kernels must agree with the CPU bit for bit (tolerance 0).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for n in [2 * 256 * 112 * 112, 3 * 5 * 7 * 11] {
        for (from, to) in [(DType::F32, DType::BF16), (DType::BF16, DType::F32)] {
            let name = if from == DType::F32 { "cast_f32_bf16" } else { "cast_bf16_f32" };
            checks.push(
                GpuCheck::new(name, format!("n={n}"), DType::BF16, Work::Bytes((n * 6) as f64), move |gpu, rng| {
                    let xd = CudaTensor::from_f32(gpu, &[n], &random_vec(rng, n, 3.0), from)?;
                    let want = cast_cpu(&xd.to_f32_vec(gpu)?, DType::BF16);
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[n], to)?,
                        move |g, yd| cast_cuda(g, &xd, yd),
                        |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                    )
                })
                .with_tolerance(0.0),
            );
        }
    }
    // (label, run lengths): the destination packs them at 8-element (16-byte) boundaries and
    // the source puts 5 stray values before each.
    let cases: [(&str, &[usize]); 2] =
        [("resnet50 layer4 convs", &[512 * 1024, 512 * 512 * 9, 2048 * 512, 2048 * 1024]), ("odd", &[7, 1, 300, 64])];
    for (label, lens) in cases {
        let total: usize = lens.iter().sum();
        checks.push(
            GpuCheck::new(
                "cast_segments_f32_bf16",
                format!("{label}: {} runs, {total} values", lens.len()),
                DType::BF16,
                Work::Bytes((total * 6) as f64),
                move |gpu, rng| {
                    let (mut runs, mut s, mut d) = (Vec::new(), 0, 0);
                    for &n in lens {
                        runs.push((s + 5, d, n));
                        s += 5 + n;
                        d += n.next_multiple_of(8);
                    }
                    let src = random_vec(rng, s, 3.0);
                    let segs = CastSegments::new(gpu, runs, s, d)?;
                    // Padding between runs is not written: the comparison covers it as zeros.
                    let mut want = vec![0.0f32; d];
                    segs.apply_cpu(&src, &mut want);
                    let srcd = CudaTensor::from_f32(gpu, &[s], &src, DType::F32)?;
                    launch_and_compare(
                        gpu,
                        CudaTensor::zeros(gpu, &[d], DType::BF16)?,
                        move |g, dst| cast_segments_cuda(g, &segs, &srcd, dst),
                        |g, dst| max_rel_err_all(g, &[(dst, &want)]),
                    )
                },
            )
            .with_tolerance(0.0),
        );
    }
    checks
}
