//! Crops of float planar images (N, 3, IH, IW), each resized bilinearly to its own size
//! (align_corners false, no antialias: torch's `F.interpolate` of the cropped region), as CCD's
//! stage 2 crops its normalised CLIP-size images. The CUDA launcher makes every crop of a batch
//! in one launch, each written where its destination tensor wants it (crops of one size share
//! a CLIP batch tensor), with the CPU's f32 rounding, so the pixels are identical.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};
use crate::ops::interpolate::bilinear_resize_cpu;

/// The region [y0, y0 + h) x [x0, x0 + w) of image `image`, resized to (oh, ow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneCrop {
    pub image: usize,
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

/// One crop of a (3, ih, iw) image: (3, oh, ow).
pub fn crop_resize_plane_cpu(image: &[f32], ih: usize, iw: usize, crop: &PlaneCrop) -> Vec<f32> {
    debug_assert!(ih >= crop.y0 + crop.h && iw >= crop.x0 + crop.w);
    let mut region = Vec::with_capacity(3 * crop.h * crop.w);
    for ch in 0..3 {
        for y in crop.y0..crop.y0 + crop.h {
            region.extend_from_slice(&image[(ch * ih + y) * iw + crop.x0..][..crop.w]);
        }
    }
    let mut out = vec![0.0f32; 3 * crop.oh * crop.ow];
    bilinear_resize_cpu(&region, 3, crop.h, crop.w, crop.oh, crop.ow, false, &mut out);
    out
}

/// Where a crop goes: tensor `tensor` of the destination list, item `slot` of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropDest {
    pub tensor: usize,
    pub slot: usize,
}

/// CUDA launcher: kernels/crop_resize_planes.cu. images (N, 3, IH, IW) f32; crop k is written
/// to item `dest[k].slot` of `outs[dest[k].tensor]`, a (n, 3, oh, ow) tensor of the crop's
/// size; every output tensor has the same float dtype. One launch for all crops.
pub fn crop_resize_planes_cuda(
    gpu: &Gpu,
    images: &CudaTensor,
    crops: &[PlaneCrop],
    dest: &[CropDest],
    outs: &mut [CudaTensor],
) -> Result<()> {
    let &[n, 3, ih, iw] = images.shape() else {
        return Err(Error::Shape(format!(
            "crop_resize_planes_cuda: images {:?}, expected (N, 3, H, W)",
            images.shape()
        )));
    };
    images.expect_dtype(DType::F32, "crop_resize_planes_cuda images")?;
    if crops.len() != dest.len() {
        return Err(Error::Shape(format!(
            "crop_resize_planes_cuda: {} crops, {} destinations",
            crops.len(),
            dest.len()
        )));
    }
    if crops.is_empty() {
        return Ok(());
    }
    let dtype = outs.first().map(|t| t.dtype()).unwrap_or(DType::F32);
    if !dtype.is_float() || outs.iter().any(|t| t.dtype() != dtype) {
        return Err(Error::Device("crop_resize_planes_cuda: the outputs must share one float dtype".into()));
    }
    let mut table = Vec::with_capacity(crops.len() * 7);
    let mut ptrs = Vec::with_capacity(crops.len() * 2);
    let mut largest = 0;
    for (k, (cr, d)) in crops.iter().zip(dest).enumerate() {
        let inside = cr.image < n && cr.h > 0 && cr.w > 0 && cr.y0 + cr.h <= ih && cr.x0 + cr.w <= iw;
        let out = outs.get(d.tensor);
        let fits =
            out.is_some_and(|t| t.shape().len() == 4 && t.shape()[1..] == [3, cr.oh, cr.ow] && d.slot < t.dim(0));
        if !inside || !fits || cr.oh == 0 || cr.ow == 0 {
            return Err(Error::Shape(format!(
                "crop_resize_planes_cuda: crop {k} {cr:?} of images {:?} to {:?} item {}",
                images.shape(),
                out.map(|t| t.shape().to_vec()),
                d.slot
            )));
        }
        let out = &outs[d.tensor];
        let addr = out.ptr(gpu) + (d.slot * 3 * cr.oh * cr.ow * dtype.size_in_bytes()) as u64;
        ptrs.extend_from_slice(&[addr as u32 as i32, (addr >> 32) as u32 as i32]);
        for v in [cr.image, cr.y0, cr.x0, cr.h, cr.w, cr.oh, cr.ow] {
            table
                .push(i32::try_from(v).map_err(|_| Error::Shape(format!("crop_resize_planes_cuda: crop {k} {cr:?}")))?);
        }
        largest = largest.max(3 * cr.oh * cr.ow);
    }
    let k = crops.len();
    let grid_y = u32::try_from(k).ok().filter(|&v| v <= 65535);
    let grid_y = grid_y.ok_or_else(|| Error::Shape(format!("crop_resize_planes_cuda: {k} crops in one launch")))?;
    let td = CudaTensor::from_i32(gpu, &[k, 7], &table)?;
    // (K) u64 addresses as little-endian (lo, hi) i32 pairs
    let pd = CudaTensor::from_i32(gpu, &[k, 2], &ptrs)?;
    let blocks_x = largest.div_ceil(256).min(1024) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks_x, grid_y, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    gpu.launch(
        "crop_resize_planes",
        &format!("crop_resize_planes_{}", dtype.suffix()),
        cfg,
        &[
            images.arg(gpu),
            to_i32(n, "N")?,
            to_i32(ih, "IH")?,
            to_i32(iw, "IW")?,
            td.arg(gpu),
            pd.arg(gpu),
            to_i32(k, "K")?,
        ],
    )?;
    // the tables must outlive the launch: on a GPU the stream is asynchronous
    gpu.synchronize()
}

/// Kernel checks: random images, random regions (a whole image, a single row or column,
/// up- and downscales, odd sizes), two crops of a size sharing a batch tensor, every output
/// dtype; CCD's sizes (640 images, a whole image to long side 640 and an odd short side) and
/// small odd ones. Random output sides stay under `out_max` to keep the simulator quick.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(n, ih, iw, whole, out_max) in
        &[(2usize, 640usize, 640usize, (33usize, 640usize), 160usize), (3, 37, 53, (37, 53), 90)]
    {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let label = format!("{n} images {ih}x{iw}, 6 crops");
            let bytes = (n * 3 * ih * iw * 4) as f64;
            checks.push(GpuCheck::new("crop_resize_planes", label, dtype, Work::Bytes(bytes), move |gpu, rng| {
                use rand::Rng;
                let images = random_vec(rng, n * 3 * ih * iw, 2.0);
                let mut crops = Vec::new();
                // a whole image at its own size, a row and a column (upscaled), then random
                crops.push(PlaneCrop { image: 0, y0: 0, x0: 0, h: ih, w: iw, oh: whole.0, ow: whole.1 });
                crops.push(PlaneCrop { image: n - 1, y0: ih - 1, x0: 3, h: 1, w: iw - 5, oh: 5, ow: 29 });
                crops.push(PlaneCrop { image: 1, y0: 2, x0: iw / 2, h: ih - 3, w: 1, oh: 31, ow: 3 });
                for _ in 0..3 {
                    let (h, w) = (rng.gen_range(1..=ih), rng.gen_range(1..=iw));
                    let (y0, x0) = (rng.gen_range(0..=ih - h), rng.gen_range(0..=iw - w));
                    let (oh, ow) = (rng.gen_range(1..=out_max), rng.gen_range(1..=out_max));
                    crops.push(PlaneCrop { image: rng.gen_range(0..n), y0, x0, h, w, oh, ow });
                }
                // the last crop again, second in a batch of two
                crops.push(PlaneCrop { y0: 0, x0: 0, ..crops[5] });
                let mut want = Vec::new();
                let mut outs = Vec::new();
                let mut dest = Vec::new();
                for (k, cr) in crops.iter().enumerate() {
                    let img = &images[cr.image * 3 * ih * iw..][..3 * ih * iw];
                    if k < 6 {
                        want.push(crop_resize_plane_cpu(img, ih, iw, cr));
                        let mut t = CudaTensor::empty(gpu, &[1 + (k == 5) as usize, 3, cr.oh, cr.ow], dtype)?;
                        t.poison(gpu)?;
                        outs.push(t);
                        dest.push(CropDest { tensor: k, slot: 0 });
                    } else {
                        want[5].extend(crop_resize_plane_cpu(img, ih, iw, cr));
                        dest.push(CropDest { tensor: 5, slot: 1 });
                    }
                }
                let id = CudaTensor::from_f32(gpu, &[n, 3, ih, iw], &images, DType::F32)?;
                crop_resize_planes_cuda(gpu, &id, &crops, &dest, &mut outs)?;
                let mut err = 0.0f64;
                for (t, w) in outs.iter().zip(&want) {
                    err = err.max(max_rel_err(&t.to_f32_vec(gpu)?, &dtype.round(w.clone())));
                }
                let g = gpu.clone();
                Ok(CheckRun {
                    max_rel_err: err,
                    launch: Box::new(move || crop_resize_planes_cuda(&g, &id, &crops, &dest, &mut outs)),
                    cublas: None,
                })
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_at_its_own_size_is_a_copy() {
        let (ih, iw) = (4usize, 5usize);
        let img: Vec<f32> = (0..3 * ih * iw).map(|i| i as f32 * 0.25 - 2.0).collect();
        let cr = PlaneCrop { image: 0, y0: 1, x0: 2, h: 2, w: 3, oh: 2, ow: 3 };
        let out = crop_resize_plane_cpu(&img, ih, iw, &cr);
        for ch in 0..3 {
            for y in 0..2 {
                for x in 0..3 {
                    assert_eq!(out[(ch * 2 + y) * 3 + x], img[(ch * ih + 1 + y) * iw + 2 + x]);
                }
            }
        }
    }
}
