//! CCD's box of a class activation map: the CAM plane (h, w) upsampled bilinearly to the image
//! (align_corners false), min-max normalised as (v - min) / (max - min + 1e-5), and the pixels
//! above a level (0.95) give the box, by the official rule (the first and the last such pixel
//! in raster order) or as their true bounding box. The CUDA kernel (kernels/cam_box.cu) takes
//! every (image, class) pair of a batch in one launch and rounds every value as the CPU does,
//! so the boxes are identical for the same CAM.

use cudarc::driver::LaunchConfig;
use serde::Serialize;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu, KArg};
use crate::error::{Error, Result};
use crate::ops::interpolate::bilinear_resize_cpu;

/// How the box is read from the pixels above the CAM level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BoxRule {
    /// The official quirk: the corners are the first and the last such pixel in raster order
    /// (the x extent comes from those two pixels only).
    FirstLast,
    /// The true bounding box of all such pixels (`--box minmax`).
    MinMax,
}

/// The box of one CAM plane (h, w) at the image size (ih, iw): first-last: (y, x) of the first
/// then of the last pixel above `level`; minmax: y0, x0, y1, x1 (inclusive). None when no pixel
/// is above it (a flat CAM).
pub fn cam_box(cam: &[f32], h: usize, w: usize, ih: usize, iw: usize, level: f32, rule: BoxRule) -> Option<[usize; 4]> {
    let mut up = vec![0.0f32; ih * iw];
    bilinear_resize_cpu(cam, 1, h, w, ih, iw, false, &mut up);
    let lo = up.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = up.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let den = hi - lo + 1e-5;
    let above = |i: usize| (up[i] - lo) / den > level;
    match rule {
        BoxRule::FirstLast => {
            let first = (0..ih * iw).find(|&i| above(i))?;
            let last = (0..ih * iw).rev().find(|&i| above(i))?;
            Some([first / iw, first % iw, last / iw, last % iw])
        }
        BoxRule::MinMax => {
            let (mut y0, mut x0, mut y1, mut x1) = (usize::MAX, usize::MAX, 0, 0);
            for i in (0..ih * iw).filter(|&i| above(i)) {
                y0 = y0.min(i / iw);
                x0 = x0.min(i % iw);
                y1 = y1.max(i / iw);
                x1 = x1.max(i % iw);
            }
            (y0 != usize::MAX).then_some([y0, x0, y1, x1])
        }
    }
}

/// How a CAM becomes a box: upsampled to the image (image_h x image_w), min-max normalised,
/// the pixels above `level` turned into a box by `rule`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxSearch {
    pub image_h: usize,
    pub image_w: usize,
    pub level: f32,
    pub rule: BoxRule,
}

/// `cam_box` of every (image, class) pair of cams (B, C, h, w), in the kernel's layout:
/// (P, 4) i32, -1 where there is no box.
pub fn cam_boxes_cpu(cams: &[f32], c: usize, h: usize, w: usize, pairs: &[(usize, usize)], s: BoxSearch) -> Vec<i32> {
    let (ih, iw, level, rule) = (s.image_h, s.image_w, s.level, s.rule);
    let plane = h * w;
    pairs
        .iter()
        .flat_map(|&(i, j)| {
            let cam = &cams[(i * c + j) * plane..][..plane];
            match cam_box(cam, h, w, ih, iw, level, rule) {
                Some(b) => b.map(|v| v as i32),
                None => [-1; 4],
            }
        })
        .collect()
}

/// CUDA launcher: kernels/cam_box.cu, as `cam_boxes_cpu`. cams (B, C, h, w) f32; pairs (P, 2)
/// i32 (image, class); boxes (P, 4) i32. One block per pair.
pub fn cam_box_cuda(
    gpu: &Gpu,
    cams: &CudaTensor,
    pairs: &CudaTensor,
    s: BoxSearch,
    boxes: &mut CudaTensor,
) -> Result<()> {
    let (ih, iw, level, rule) = (s.image_h, s.image_w, s.level, s.rule);
    let &[b, c, h, w] = cams.shape() else {
        return Err(Error::Shape(format!("cam_box_cuda: cams {:?}, expected (B, C, h, w)", cams.shape())));
    };
    let p = pairs.shape().first().copied().unwrap_or(0);
    if pairs.shape() != [p, 2] || boxes.shape() != [p, 4] || h == 0 || w == 0 || ih == 0 || iw == 0 {
        return Err(Error::Shape(format!(
            "cam_box_cuda: pairs {:?} (P, 2), boxes {:?} (P, 4), CAM {h}x{w}, image {ih}x{iw}",
            pairs.shape(),
            boxes.shape()
        )));
    }
    cams.expect_dtype(DType::F32, "cam_box_cuda cams")?;
    pairs.expect_dtype(DType::I32, "cam_box_cuda pairs")?;
    boxes.expect_dtype(DType::I32, "cam_box_cuda boxes")?;
    if p == 0 {
        return Ok(());
    }
    to_i32(ih * iw, "cam_box_cuda image pixels")?;
    let blocks = u32::try_from(p).map_err(|_| Error::Shape(format!("cam_box_cuda: {p} pairs")))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    gpu.launch(
        "cam_box",
        "cam_box",
        cfg,
        &[
            cams.arg(gpu),
            pairs.arg(gpu),
            boxes.arg(gpu),
            to_i32(p, "P")?,
            to_i32(b, "B")?,
            to_i32(c, "C")?,
            to_i32(h, "h")?,
            to_i32(w, "w")?,
            to_i32(ih, "ih")?,
            to_i32(iw, "iw")?,
            KArg::F32(level),
            KArg::I32((rule == BoxRule::MinMax) as i32),
        ],
    )
}

/// Kernel checks: random CAMs (with a ReLU-like floor, as CCD's boosted CAMs, so plateaus and
/// ties occur) and one flat plane, every class of some images; CCD's 20x20 -> 320x320, odd
/// 7x9 -> 61x83 and 13x11 -> 97x75 (downscaled axes too: 5x40 -> 33x17); both rules. The
/// boxes must be identical: any difference is a relative error of at least 1/640.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(b, c, h, w, ih, iw) in &[
        (1usize, 3usize, 20usize, 20usize, 320usize, 320usize),
        (2, 5, 7, 9, 61, 83),
        (3, 4, 13, 11, 97, 75),
        (1, 6, 5, 40, 33, 17),
    ] {
        for rule in [BoxRule::FirstLast, BoxRule::MinMax] {
            let bytes = (b * c * h * w * 4) as f64;
            let label = format!("B={b} C={c} {h}x{w} -> {ih}x{iw} {rule:?}");
            checks.push(GpuCheck::new("cam_box", label, DType::I32, Work::Bytes(bytes), move |gpu, rng| {
                let mut cams: Vec<f32> = random_vec(rng, b * c * h * w, 2.0).into_iter().map(|v| v.max(-0.3)).collect();
                // the last plane flat: no box
                cams[(b * c - 1) * h * w..].fill(0.25);
                let pairs: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..c).map(move |j| (i, j))).collect();
                let search = BoxSearch { image_h: ih, image_w: iw, level: 0.95, rule };
                let want: Vec<f32> =
                    cam_boxes_cpu(&cams, c, h, w, &pairs, search).into_iter().map(|v| v as f32).collect();
                let flat: Vec<i32> = pairs.iter().flat_map(|&(i, j)| [i as i32, j as i32]).collect();
                let cd = CudaTensor::from_f32(gpu, &[b, c, h, w], &cams, DType::F32)?;
                let pd = CudaTensor::from_i32(gpu, &[pairs.len(), 2], &flat)?;
                launch_and_compare(
                    gpu,
                    poisoned(gpu, &[pairs.len(), 4], DType::I32)?,
                    move |g, bd| cam_box_cuda(g, &cd, &pd, search, bd),
                    |g, bd| max_rel_err_all(g, &[(bd, &want)]),
                )
            }));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_last_against_minmax() {
        // a 2x2 CAM upsampled to 4x4: peaks at (0, 1) and (1, 0)
        let cam = [0.0f32, 1.0, 1.0, 0.0];
        let fl = cam_box(&cam, 2, 2, 4, 4, 0.95, BoxRule::FirstLast).unwrap();
        let mm = cam_box(&cam, 2, 2, 4, 4, 0.95, BoxRule::MinMax).unwrap();
        // the first above-level pixel is in row 0 at the right, the last in row 3 at the left
        assert_eq!(fl, [0, 3, 3, 0]);
        assert_eq!(mm, [0, 0, 3, 3]);
        assert!(cam_box(&[1.0; 4], 2, 2, 4, 4, 0.95, BoxRule::FirstLast).is_none());
        let rows = cam_boxes_cpu(
            &[cam, [1.0; 4]].concat(),
            2,
            2,
            2,
            &[(0, 1), (0, 0)],
            BoxSearch { image_h: 4, image_w: 4, level: 0.95, rule: BoxRule::MinMax },
        );
        assert_eq!(rows, vec![-1, -1, -1, -1, 0, 0, 3, 3]);
    }
}
