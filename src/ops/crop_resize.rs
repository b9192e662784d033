//! Batched crop-and-resize: uint8 HWC images -> normalised NCHW model inputs, every box of
//! every image in one pass (TagCLIP's crops, a batch of resized photos).
//!
//! Each box (x0, y0, x1, y1), in pixels, float, is resized to (oh, ow) as PyTorch's
//! `F.interpolate(crop, (oh, ow), mode, align_corners=False, antialias=False)` of the cropped
//! region. Along each axis, output index o samples the source coordinate
//!
//! ```text
//! src = x0 + (o + 0.5) * (x1 - x0) / ow - 0.5
//! ```
//!
//! and the taps are clamped to the box's pixels [first, last] = [floor(x0), ceil(x1) - 1]
//! (clipped to the image):
//!
//! - bilinear: src = max(src, x0) (torch clamps negative crop coordinates to 0), taps
//!   floor(src) and floor(src) + 1, weights 1 - t and t, t = src - floor(src);
//! - bicubic: taps floor(src) - 1 .. floor(src) + 2, cubic-convolution weights with A = -0.75
//!   (torch's `upsample_bicubic2d`), no clamping of src.
//!
//! For integer boxes inside the image this is exactly crop-then-interpolate. The value is then
//! (v / 255 - mean[c]) / std[c] (no clamping, as torch on float tensors). A box that names no
//! image is written as NaN.

use rayon::prelude::*;

use cudarc::driver::LaunchConfig;

use crate::data::transforms::CLIP_NORM;
use crate::device::cuda::check::{max_rel_err, CheckRun, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropInterp {
    Bilinear,
    Bicubic,
}

/// A box over image `image`, in pixels: x0, y0 the top-left corner, x1, y1 the bottom-right.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub image: u32,
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

/// The cubic-convolution weights of torch's bicubic (A = -0.75) for fraction t in [0, 1).
pub fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let (x0, x1, x2, x3) = (t + 1.0, t, 1.0 - t, 2.0 - t);
    [
        ((A * x0 - 5.0 * A) * x0 + 8.0 * A) * x0 - 4.0 * A,
        ((A + 2.0) * x1 - (A + 3.0)) * x1 * x1 + 1.0,
        ((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0,
        ((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A,
    ]
}

/// Taps along one axis for output index o (see the module docs): (count, indices, weights).
/// Mirrored exactly by `axis_taps` in kernels/crop_resize.cu.
fn axis_taps(
    o: usize,
    n_out: usize,
    lo: f32,
    hi: f32,
    n_in: usize,
    interp: CropInterp,
) -> (usize, [usize; 4], [f32; 4]) {
    let n_in = n_in as i32;
    let first = (lo.floor() as i32).max(0).min(n_in - 1);
    let last = (hi.ceil() as i32 - 1).min(n_in - 1).max(first);
    let scale = (hi - lo) / n_out as f32;
    let src = lo + (o as f32 + 0.5) * scale - 0.5;
    // Beyond 2 pixels outside the box every tap is the edge pixel: bounding src changes no
    // value and keeps the integer conversions in range (NaN becomes the left edge).
    let src = src.max((first - 2) as f32).min((last + 2) as f32);
    let clamp = |i: i32| i.max(first).min(last) as usize;
    match interp {
        CropInterp::Bilinear => {
            let src = src.max(lo);
            let f0 = src.floor();
            let t = src - f0;
            let i0 = f0 as i32;
            (2, [clamp(i0), clamp(i0 + 1), 0, 0], [1.0 - t, t, 0.0, 0.0])
        }
        CropInterp::Bicubic => {
            let f0 = src.floor();
            let i0 = f0 as i32;
            let w = cubic_weights(src - f0);
            (4, [clamp(i0 - 1), clamp(i0), clamp(i0 + 1), clamp(i0 + 2)], w)
        }
    }
}

/// out (N, 3, oh, ow) from `images` (HWC u8, `sizes[i]` = (H, W)) and `boxes` (module docs).
#[allow(clippy::too_many_arguments)]
pub fn crop_resize_cpu(
    images: &[&[u8]],
    sizes: &[(usize, usize)],
    boxes: &[CropBox],
    oh: usize,
    ow: usize,
    interp: CropInterp,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) {
    let plane = oh * ow;
    out[..boxes.len() * 3 * plane].par_chunks_mut(3 * plane).zip(boxes.par_iter()).for_each(|(ob, bx)| {
        let i = bx.image as usize;
        let valid = i < images.len()
            && i < sizes.len()
            && sizes[i].0 > 0
            && sizes[i].1 > 0
            && images[i].len() >= sizes[i].0 * sizes[i].1 * 3;
        if !valid {
            ob.fill(f32::NAN);
            return;
        }
        let (h, w) = sizes[i];
        let im = images[i];
        for oy in 0..oh {
            let (ny, yi, yw) = axis_taps(oy, oh, bx.y0, bx.y1, h, interp);
            for ox in 0..ow {
                let (nx, xi, xw) = axis_taps(ox, ow, bx.x0, bx.x1, w, interp);
                let mut acc = [0.0f32; 3];
                for j in 0..ny {
                    let row = &im[yi[j] * w * 3..];
                    let mut r = [0.0f32; 3];
                    for k in 0..nx {
                        let px = &row[xi[k] * 3..][..3];
                        for c in 0..3 {
                            r[c] += xw[k] * px[c] as f32;
                        }
                    }
                    for c in 0..3 {
                        acc[c] += yw[j] * r[c];
                    }
                }
                for c in 0..3 {
                    ob[c * plane + oy * ow + ox] = (acc[c] / 255.0 - mean[c]) / std[c];
                }
            }
        }
    });
}

/// CUDA launcher: kernels/crop_resize.cu, one launch for every box, as `crop_resize_cpu`.
/// images: u8, the HWC images packed one after another; image_table (n_images, 3) i32: byte
/// offset, H, W of each; boxes (N, 5) f32: image index, x0, y0, x1, y1; out (N, 3, oh, ow)
/// f32/bf16/f16. A box whose image index is not an integer in [0, n_images), or whose table
/// entry does not fit the buffer, is written as NaN (the host does not see the device tables).
#[allow(clippy::too_many_arguments)]
pub fn crop_resize_cuda(
    gpu: &Gpu,
    images: &CudaTensor,
    image_table: &CudaTensor,
    boxes: &CudaTensor,
    interp: CropInterp,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut CudaTensor,
) -> Result<()> {
    let ts = image_table.shape();
    let bs = boxes.shape();
    let os = out.shape();
    if ts.len() != 2 || ts[1] != 3 || bs.len() != 2 || bs[1] != 5 || os.len() != 4 || os[0] != bs[0] || os[1] != 3 {
        return Err(Error::Shape(format!(
            "crop_resize_cuda: image_table {ts:?} (n_images, 3), boxes {bs:?} (N, 5), out {os:?} (N, 3, oh, ow)"
        )));
    }
    images.expect_dtype(DType::U8, "crop_resize_cuda images")?;
    image_table.expect_dtype(DType::I32, "crop_resize_cuda image_table")?;
    boxes.expect_dtype(DType::F32, "crop_resize_cuda boxes")?;
    if !out.dtype().is_float() {
        return Err(Error::Device(format!("crop_resize_cuda: out is {:?}; expected a float dtype", out.dtype())));
    }
    let (n, oh, ow) = (bs[0], os[2], os[3]);
    let total = out.numel() / 3;
    if total == 0 {
        return Ok(());
    }
    let blocks = u32::try_from(total.div_ceil(256))
        .map_err(|_| Error::Shape(format!("crop_resize_cuda: {total} output pixels")))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let name = format!("crop_resize_{}", out.dtype().suffix());
    gpu.launch(
        "crop_resize",
        &name,
        cfg,
        &[
            images.arg(gpu),
            KArg::I64(images.numel() as i64),
            image_table.arg(gpu),
            to_i32(ts[0], "n_images")?,
            boxes.arg(gpu),
            out.arg(gpu),
            to_i32(n, "N")?,
            to_i32(oh, "oh")?,
            to_i32(ow, "ow")?,
            KArg::I32((interp == CropInterp::Bicubic) as i32),
            mean[0].into(),
            mean[1].into(),
            mean[2].into(),
            std[0].into(),
            std[1].into(),
            std[2].into(),
        ],
    )
}

/// CLIP's normalisation (data::transforms::CLIP_NORM) in f32, for the checks.
const CLIP_MEAN: [f32; 3] = [CLIP_NORM.mean[0] as f32, CLIP_NORM.mean[1] as f32, CLIP_NORM.mean[2] as f32];
const CLIP_STD: [f32; 3] = [CLIP_NORM.std[0] as f32, CLIP_NORM.std[1] as f32, CLIP_NORM.std[2] as f32];

/// Kernel checks: 8 random-size images (200..640 px), 64 random boxes (some reaching past the
/// image), out 224x224 and an odd 37x53, bilinear and bicubic, every output dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(n_images, n_boxes, oh, ow) in &[(8usize, 64usize, 224usize, 224usize), (3, 7, 37, 53)] {
        for interp in [CropInterp::Bilinear, CropInterp::Bicubic] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let taps = if interp == CropInterp::Bicubic { 16 } else { 4 };
                let bytes = (n_boxes * 3 * oh * ow * (dtype.size_in_bytes() + taps)) as f64;
                let label = format!("{n_images} images, {n_boxes} boxes -> {oh}x{ow} {interp:?}");
                checks.push(GpuCheck::new("crop_resize", label, dtype, Work::Bytes(bytes), move |gpu, rng| {
                    use rand::Rng;
                    let mut packed = Vec::new();
                    let mut table = Vec::new();
                    let mut sizes = Vec::new();
                    for _ in 0..n_images {
                        let (h, w) = (rng.gen_range(200..=640usize), rng.gen_range(200..=640usize));
                        table.extend_from_slice(&[packed.len() as i32, h as i32, w as i32]);
                        sizes.push((h, w));
                        packed.extend((0..h * w * 3).map(|_| rng.gen::<u8>()));
                    }
                    let boxes: Vec<CropBox> = (0..n_boxes)
                        .map(|_| {
                            let image = rng.gen_range(0..n_images);
                            let (h, w) = (sizes[image].0 as f32, sizes[image].1 as f32);
                            let (x0, y0) = (rng.gen_range(-10.0..w * 0.7), rng.gen_range(-10.0..h * 0.7));
                            let (x1, y1) = (rng.gen_range(x0 + 4.0..w + 10.0), rng.gen_range(y0 + 4.0..h + 10.0));
                            CropBox { image: image as u32, x0, y0, x1, y1 }
                        })
                        .collect();
                    let views: Vec<&[u8]> =
                        table.chunks(3).map(|t| &packed[t[0] as usize..][..(t[1] * t[2] * 3) as usize]).collect();
                    let mut want = vec![0.0; n_boxes * 3 * oh * ow];
                    crop_resize_cpu(&views, &sizes, &boxes, oh, ow, interp, CLIP_MEAN, CLIP_STD, &mut want);
                    let flat: Vec<f32> = boxes.iter().flat_map(|b| [b.image as f32, b.x0, b.y0, b.x1, b.y1]).collect();
                    let id = CudaTensor::from_u8(gpu, &[packed.len()], &packed)?;
                    let td = CudaTensor::from_i32(gpu, &[n_images, 3], &table)?;
                    let bd = CudaTensor::from_f32(gpu, &[n_boxes, 5], &flat, DType::F32)?;
                    let mut od = CudaTensor::empty(gpu, &[n_boxes, 3, oh, ow], dtype)?;
                    od.poison(gpu)?;
                    crop_resize_cuda(gpu, &id, &td, &bd, interp, CLIP_MEAN, CLIP_STD, &mut od)?;
                    let err = max_rel_err(&od.to_f32_vec(gpu)?, &want);
                    let g = gpu.clone();
                    Ok(CheckRun {
                        max_rel_err: err,
                        launch: Box::new(move || {
                            crop_resize_cuda(&g, &id, &td, &bd, interp, CLIP_MEAN, CLIP_STD, &mut od)
                        }),
                        cublas: None,
                    })
                }));
            }
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect()
    }

    #[test]
    fn identity_box_is_the_normalised_image() {
        let (h, w) = (5usize, 7usize);
        let im = image(h, w);
        let mean = [0.1, 0.2, 0.3];
        let std = [0.5, 0.25, 2.0];
        for interp in [CropInterp::Bilinear, CropInterp::Bicubic] {
            let b = CropBox { image: 0, x0: 0.0, y0: 0.0, x1: w as f32, y1: h as f32 };
            let mut out = vec![f32::NAN; 3 * h * w];
            crop_resize_cpu(&[&im], &[(h, w)], &[b], h, w, interp, mean, std, &mut out);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let want = (im[(y * w + x) * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
                        assert_eq!(out[(c * h + y) * w + x], want, "{interp:?} ({y}, {x}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn bilinear_2x_matches_hand_computation() {
        // Box columns 2..4, rows 1..3 of a 4x6 image, resized to 4x4: torch's
        // interpolate(crop, scale 2) samples crop coordinates max((o + 0.5) / 2 - 0.5, 0) =
        // 0, 0.25, 0.75, 1 (clamped to the last column).
        let (h, w) = (4usize, 6usize);
        let im = image(h, w);
        let px = |y: usize, x: usize, c: usize| im[(y * w + x) * 3 + c] as f32;
        let b = CropBox { image: 0, x0: 2.0, y0: 1.0, x1: 4.0, y1: 3.0 };
        let mut out = vec![f32::NAN; 3 * 16];
        crop_resize_cpu(&[&im], &[(h, w)], &[b], 4, 4, CropInterp::Bilinear, [0.0; 3], [1.0; 3], &mut out);
        // Output (1, 2): crop (y 0.25, x 0.75) -> image rows 1, 2 and columns 2, 3.
        for c in 0..3 {
            let top = px(1, 2, c) * 0.25 + px(1, 3, c) * 0.75;
            let bot = px(2, 2, c) * 0.25 + px(2, 3, c) * 0.75;
            let want = (top * 0.75 + bot * 0.25) / 255.0;
            let got = out[c * 16 + 4 + 2];
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
            // Output (0, 0) is the crop's corner pixel; output (3, 3) the opposite one.
            assert!((out[c * 16] - px(1, 2, c) / 255.0).abs() < 1e-6);
            assert!((out[c * 16 + 15] - px(2, 3, c) / 255.0).abs() < 1e-6);
        }
    }

    #[test]
    fn bicubic_weights_sum_to_one() {
        for i in 0..100 {
            let t = i as f32 / 100.0;
            let w = cubic_weights(t);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6, "t = {t}: {w:?}");
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn a_box_without_an_image_is_nan() {
        let im = image(3, 3);
        let b = CropBox { image: 1, x0: 0.0, y0: 0.0, x1: 3.0, y1: 3.0 };
        let mut out = vec![0.0; 3 * 4];
        crop_resize_cpu(&[&im], &[(3, 3)], &[b], 2, 2, CropInterp::Bilinear, [0.0; 3], [1.0; 3], &mut out);
        assert!(out.iter().all(|v| v.is_nan()));
    }
}
