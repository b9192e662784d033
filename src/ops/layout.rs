//! Layout changes between NCHW and NHWC (channels-last) for the channels-last training step,
//! with a channel pad or crop and a storage-type cast in the same pass: the f32 NCHW image batch
//! into the bf16 NHWC network with its 3 channels padded to 8 (one 16-byte vector a pixel), and
//! the bf16 NHWC features back to f32 NCHW for the head. Channels of the destination past the
//! source's are zeros; channels of the source past the destination's are dropped.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// The definition: y (B, HW, c_dst) from x (B, c_src, HW); channel c of y is x's channel c when
/// c < c_src, else 0.
pub fn nchw_to_nhwc_cpu(x: &[f32], b: usize, c_src: usize, hw: usize, c_dst: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; b * hw * c_dst];
    for bi in 0..b {
        for c in 0..c_src.min(c_dst) {
            for p in 0..hw {
                y[(bi * hw + p) * c_dst + c] = x[(bi * c_src + c) * hw + p];
            }
        }
    }
    y
}

/// The definition: y (B, c_dst, HW) from x (B, HW, c_src), the same pad / crop rule.
pub fn nhwc_to_nchw_cpu(x: &[f32], b: usize, hw: usize, c_src: usize, c_dst: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; b * c_dst * hw];
    for bi in 0..b {
        for p in 0..hw {
            for c in 0..c_src.min(c_dst) {
                y[(bi * c_dst + c) * hw + p] = x[(bi * hw + p) * c_src + c];
            }
        }
    }
    y
}

/// Kernel name suffix `{src}_{dst}` for f32 / bf16 storage.
fn dtype_pair(what: &str, x: &CudaTensor, y: &CudaTensor) -> Result<String> {
    for t in [x, y] {
        if !matches!(t.dtype(), DType::F32 | DType::BF16) {
            return Err(Error::Device(format!("{what}: {:?} tensor; f32 or bf16 expected", t.dtype())));
        }
    }
    Ok(format!("{}_{}", x.dtype().suffix(), y.dtype().suffix()))
}

/// Grid (ceil(HW / tile_pixels), ceil(c_dst / 32), B) of 32x8 threads: one 32-channel x
/// `tile_pixels` tile each (kernels/layout.cu).
fn tile_config(what: &str, b: usize, hw: usize, c_dst: usize, tile_pixels: usize) -> Result<LaunchConfig> {
    let (gx, gy) = (hw.div_ceil(tile_pixels), c_dst.div_ceil(32));
    if gx > u32::MAX as usize || gy > 65535 || b > 65535 {
        return Err(Error::Shape(format!("{what}: B={b} HW={hw} C={c_dst} exceed the launch grid")));
    }
    Ok(LaunchConfig { grid_dim: (gx as u32, gy as u32, b as u32), block_dim: (32, 8, 1), shared_mem_bytes: 0 })
}

/// CUDA launcher (kernels/layout.cu): x (B, Cs, H, W) -> y (B, H, W, Cd), each f32 or bf16 (a
/// cast rounds to nearest even); Cd > Cs pads with zeros, Cd < Cs crops.
pub fn nchw_to_nhwc_cuda(gpu: &Gpu, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    const WHAT: &str = "nchw_to_nhwc_cuda";
    let (xs, ys) = (x.shape(), y.shape());
    if xs.len() != 4 || ys.len() != 4 || xs[0] != ys[0] || xs[2..] != ys[1..3] || x.numel() == 0 || y.numel() == 0 {
        return Err(Error::Shape(format!("{WHAT}: x {xs:?} is not (B, C, H, W) of y {ys:?} (B, H, W, C')")));
    }
    let (b, c_src, hw, c_dst) = (xs[0], xs[1], xs[2] * xs[3], ys[3]);
    let name = format!("nchw_to_nhwc_{}", dtype_pair(WHAT, x, y)?);
    // A small power-of-two channel count (the stem's 8) takes 1024 / Cd pixels a tile: one
    // block still moves 1024 values (kernels/layout.cu).
    let tile_pixels = if c_dst < 32 && c_dst.is_power_of_two() { 1024 / c_dst } else { 32 };
    let cfg = tile_config(WHAT, b, hw, c_dst, tile_pixels)?;
    let args = [
        x.arg(gpu),
        y.arg(gpu),
        to_i32(c_src, "Cs")?,
        to_i32(c_dst, "Cd")?,
        to_i32(hw, "HW")?,
        to_i32(tile_pixels, "tile pixels")?,
    ];
    gpu.launch("layout", &name, cfg, &args)
}

/// CUDA launcher (kernels/layout.cu): x (B, H, W, Cs) -> y (B, Cd, H, W), each f32 or bf16 (a
/// cast rounds to nearest even); Cd > Cs pads with zeros, Cd < Cs crops.
pub fn nhwc_to_nchw_cuda(gpu: &Gpu, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    const WHAT: &str = "nhwc_to_nchw_cuda";
    let (xs, ys) = (x.shape(), y.shape());
    if xs.len() != 4 || ys.len() != 4 || xs[0] != ys[0] || xs[1..3] != ys[2..] || x.numel() == 0 || y.numel() == 0 {
        return Err(Error::Shape(format!("{WHAT}: x {xs:?} is not (B, H, W, C) of y {ys:?} (B, C', H, W)")));
    }
    let (b, hw, c_src, c_dst) = (xs[0], xs[1] * xs[2], xs[3], ys[1]);
    let name = format!("nhwc_to_nchw_{}", dtype_pair(WHAT, x, y)?);
    let cfg = tile_config(WHAT, b, hw, c_dst, 32)?;
    let args = [x.arg(gpu), y.arg(gpu), to_i32(c_src, "Cs")?, to_i32(c_dst, "Cd")?, to_i32(hw, "HW")?];
    gpu.launch("layout", &name, cfg, &args)
}

/// (label, B, C source, H, W, C destination, source dtype, destination dtype): the stem's image
/// batch (f32 NCHW, 3 channels -> bf16 NHWC padded to 8), ResNet-50 activations both ways in
/// bf16 (layer1 at 56x56, layer4 at 7x7 back to f32 for the head), a crop, and odd maps (C not a
/// multiple of 8, HW not a multiple of 32, 1x1).
type LayoutCase = (&'static str, usize, usize, usize, usize, usize, DType, DType);
const LAYOUT_CASES: &[LayoutCase] = &[
    ("stem image", 2, 3, 64, 64, 8, DType::F32, DType::BF16),
    ("layer1", 2, 256, 56, 56, 256, DType::BF16, DType::BF16),
    ("layer4 head", 2, 2048, 7, 7, 2048, DType::BF16, DType::F32),
    ("crop", 2, 20, 9, 11, 13, DType::F32, DType::F32),
    ("odd", 3, 37, 5, 7, 37, DType::BF16, DType::BF16),
    ("1x1", 5, 20, 1, 1, 24, DType::F32, DType::BF16),
    // Small power-of-two channel counts take wider pixel tiles (1024 / C): partial last tiles.
    ("16 channels", 2, 5, 9, 13, 16, DType::F32, DType::BF16),
    ("2 channels", 1, 3, 23, 31, 2, DType::BF16, DType::BF16),
];

/// Kernel checks, both directions on every case (the NHWC -> NCHW one reads the NHWC form of the
/// case: (B, H, W, Cs) -> (B, Cd, H, W)). Moving values and rounding to nearest even are exact:
/// bit for bit against the CPU (tolerance 0).
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(label, b, c_src, h, w, c_dst, from, to) in LAYOUT_CASES {
        let hw = h * w;
        let shape = format!("{label}: B={b} Cs={c_src} H={h} W={w} Cd={c_dst} {}->{}", from.suffix(), to.suffix());
        let bytes = (b * hw * (c_src * from.size_in_bytes() + c_dst * to.size_in_bytes())) as f64;
        checks.push(
            GpuCheck::new("nchw_to_nhwc", shape.clone(), to, Work::Bytes(bytes), move |gpu, rng| {
                let x = from.round(random_vec(rng, b * c_src * hw, 3.0));
                let want = to.round(nchw_to_nhwc_cpu(&x, b, c_src, hw, c_dst));
                let xd = CudaTensor::from_f32(gpu, &[b, c_src, h, w], &x, from)?;
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &[b, h, w, c_dst], to)?,
                    move |g, yd| nchw_to_nhwc_cuda(g, &xd, yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                )
            })
            .with_tolerance(0.0),
        );
        checks.push(
            GpuCheck::new("nhwc_to_nchw", shape, to, Work::Bytes(bytes), move |gpu, rng| {
                let x = from.round(random_vec(rng, b * hw * c_src, 3.0));
                let want = to.round(nhwc_to_nchw_cpu(&x, b, hw, c_src, c_dst));
                let xd = CudaTensor::from_f32(gpu, &[b, h, w, c_src], &x, from)?;
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &[b, c_dst, h, w], to)?,
                    move |g, yd| nhwc_to_nchw_cuda(g, &xd, yd),
                    |g, yd| max_rel_err_all(g, &[(yd, &want)]),
                )
            })
            .with_tolerance(0.0),
        );
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two transposes undo each other when the channels are kept; a pad adds zero channels
    /// and a crop after it gives the source back.
    #[test]
    fn transposes_invert_and_pad_with_zeros() {
        let (b, c, hw) = (2, 3, 5);
        let x: Vec<f32> = (0..b * c * hw).map(|i| i as f32 + 1.0).collect();
        let padded = nchw_to_nhwc_cpu(&x, b, c, hw, 8);
        assert_eq!(padded[0..8], [1.0, 6.0, 11.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(nhwc_to_nchw_cpu(&padded, b, hw, 8, c), x);
        let y = nchw_to_nhwc_cpu(&x, b, c, hw, c);
        assert_eq!(nhwc_to_nchw_cpu(&y, b, hw, c, c), x);
    }
}
