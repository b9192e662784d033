//! Resizing, cropping and normalisation, pixel-compatible with PIL / torchvision.
//!
//! * [`resize`] is PIL's `Image.resize` (Pillow 10 - 13) on an RGB image: for bilinear and
//!   bicubic the separable convolution of `Resample.c` (filter support scaled by the downscale
//!   factor, i.e. antialiased; bicubic a = -0.5; coefficients normalised in f64 then rounded to
//!   22-bit fixed point; two passes, each rounded and clipped to u8: horizontal first, over
//!   only the rows the vertical pass reads, unless the height shrinks much more than the
//!   width, see `vertical_first`). Nearest is PIL's affine nearest-neighbour scaler
//!   (`Geometry.c: ImagingScaleAffine`, with its accumulated f64 source coordinate).
//! * [`resize_shorter_side`] and [`center_crop`] are torchvision's `Resize(int)` and
//!   `CenterCrop` on a PIL image (banker's rounding of the crop offset, zero padding).
//! * [`to_chw_normalized`] is `ToTensor()` + `Normalize(mean, std)`: `x / 255`, `- mean`,
//!   `/ std`, each rounded to f32 as torch does; or, for code that normalised with numpy in
//!   f64 (CCD's `TorchvisionNormalize`), the same in f64 rounded once to f32.
//! * [`interpolate_bilinear_chw`] and [`interpolate_nearest_chw`] are `torch.nn.functional.
//!   interpolate` (bilinear, `align_corners=False`, no antialias; nearest) on f32 CHW tensors,
//!   which TagCLIP and CCD use to resize crops of already normalised images.

use std::fmt;
use std::str::FromStr;

use super::decode::RgbImage;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// PIL resize
// ---------------------------------------------------------------------------------------------

/// PIL resampling filters (`Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

impl Interpolation {
    /// Lower-case name, stable (used in [`Transform::describe`]).
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        }
    }
}

impl fmt::Display for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interpolation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nearest" => Ok(Interpolation::Nearest),
            "bilinear" | "linear" => Ok(Interpolation::Bilinear),
            "bicubic" | "cubic" => Ok(Interpolation::Bicubic),
            other => Err(format!("unknown interpolation `{other}` (expected nearest, bilinear or bicubic)")),
        }
    }
}

/// Fixed-point precision of PIL's 8-bit resampling: 32 bits, minus 8 for the value, minus 2
/// for overshoot of the (possibly negative) filter lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Triangle filter, support 1.
#[inline]
fn bilinear_filter(x: f64) -> f64 {
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys cubic convolution with a = -0.5, support 2 (PIL's BICUBIC). The expressions keep
/// PIL's operation order so that every f64 rounding is the same.
#[inline]
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output position's source window and its fixed-point weights.
struct Coeffs {
    /// Window size (PIL's `ksize`): weights of output `i` are `kk[i * ksize .. i * ksize + n]`.
    ksize: usize,
    /// Per output position: (first source index, number of source samples).
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the input span `[in0, in1)`.
fn precompute_coeffs(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: fn(f64) -> f64,
    support: f64,
) -> Coeffs {
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0f64;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = filter(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *wx = v;
            ww += v;
        }
        let k = &mut kk[xx * ksize..xx * ksize + n];
        for (x, kx) in k.iter_mut().enumerate() {
            let mut v = w[x];
            if ww != 0.0 {
                v /= ww;
            }
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            *kx = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, kk }
}

// The sums cannot overflow (|weights| sum to well under 2 in 22-bit fixed point); wrapping
// arithmetic keeps debug builds' overflow checks out of the hot loops.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over source rows `y0 .. y0 + rows`; output is `out_w x rows`.
fn resample_horizontal(src: &RgbImage, y0: usize, rows: usize, c: &Coeffs, out_w: usize) -> RgbImage {
    let mut out = vec![0u8; out_w * rows * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (r, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let line = src.row(y0 + r);
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            let seg = &line[xmin * 3..(xmin + n) * 3];
            for (kx, p) in k.iter().zip(seg.chunks_exact(3)) {
                s0 = s0.wrapping_add((p[0] as i32).wrapping_mul(*kx));
                s1 = s1.wrapping_add((p[1] as i32).wrapping_mul(*kx));
                s2 = s2.wrapping_add((p[2] as i32).wrapping_mul(*kx));
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    RgbImage { width: out_w, height: rows, data: out }
}

/// Vertical pass; `c.bounds` are relative to the first row of `src`.
fn resample_vertical(src: &RgbImage, c: &Coeffs, out_h: usize) -> RgbImage {
    let w = src.width;
    let mut out = vec![0u8; w * out_h * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; w * 3];
    for (yy, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
        acc.fill(half);
        // Same sums as PIL (integer adds commute exactly), accumulated row by row.
        for (j, &ky) in k.iter().enumerate() {
            let line = src.row(ymin + j);
            for (a, &p) in acc.iter_mut().zip(line) {
                *a = a.wrapping_add((p as i32).wrapping_mul(ky));
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage { width: w, height: out_h, data: out }
}

/// Pass order. Pillow 13 runs the vertical pass first when the height shrinks "significantly
/// more" than the width (python-pillow/Pillow#9549); the two orders round the intermediate
/// image differently. The condition below was measured against Pillow 13.0.0 (596 random
/// size pairs and the exact boundary, bilinear and bicubic): the height shrinks and it loses
/// more than twice as many pixels as the width does.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let (dx, dy) = (in_w as i64 - out_w as i64, in_h as i64 - out_h as i64);
    dy > 0 && dy > 2 * dx
}

/// PIL's `ImagingResample` (bilinear / bicubic) with the full-image box.
fn resample(img: &RgbImage, out_w: usize, out_h: usize, filter: fn(f64) -> f64, support: f64) -> RgbImage {
    let need_h = out_w != img.width;
    let need_v = out_h != img.height;
    let cv = precompute_coeffs(img.height, 0.0, img.height as f32, out_h, filter, support);
    match (need_h, need_v) {
        (false, false) => img.clone(),
        (true, false) => {
            let ch = precompute_coeffs(img.width, 0.0, img.width as f32, out_w, filter, support);
            resample_horizontal(img, 0, img.height, &ch, out_w)
        }
        (false, true) => resample_vertical(img, &cv, out_h),
        (true, true) if vertical_first(img.width, img.height, out_w, out_h) => {
            let tmp = resample_vertical(img, &cv, out_h);
            let ch = precompute_coeffs(img.width, 0.0, img.width as f32, out_w, filter, support);
            resample_horizontal(&tmp, 0, out_h, &ch, out_w)
        }
        (true, true) => {
            // Only the source rows the vertical pass reads go through the horizontal pass.
            let first = cv.bounds[0].0;
            let (lmin, ln) = cv.bounds[out_h - 1];
            let last = lmin + ln;
            let ch = precompute_coeffs(img.width, 0.0, img.width as f32, out_w, filter, support);
            let tmp = resample_horizontal(img, first, last - first, &ch, out_w);
            let shifted =
                Coeffs { ksize: cv.ksize, bounds: cv.bounds.iter().map(|&(m, n)| (m - first, n)).collect(), kk: cv.kk };
            resample_vertical(&tmp, &shifted, out_h)
        }
    }
}

/// PIL's nearest-neighbour resize (`ImagingScaleAffine`): the source coordinate starts at
/// half a step and is accumulated in f64, truncated toward zero.
fn resize_nearest(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let ax = (img.width as f32) as f64 / out_w as f64;
    let ay = (img.height as f32) as f64 / out_h as f64;
    let coord = |v: f64| -> i64 {
        if v < 0.0 {
            -1
        } else {
            v as i64
        }
    };
    let mut xintab = vec![0usize; out_w];
    let (mut xmin, mut xmax) = (out_w, 0usize);
    let mut xo = ax * 0.5;
    for (x, slot) in xintab.iter_mut().enumerate() {
        let xin = coord(xo);
        if xin >= 0 && (xin as usize) < img.width {
            xmax = x + 1;
            xmin = xmin.min(x);
            *slot = xin as usize;
        }
        xo += ax;
    }
    let mut out = RgbImage::zeros(out_w, out_h);
    let mut yo = ay * 0.5;
    for y in 0..out_h {
        let yi = coord(yo);
        if yi >= 0 && (yi as usize) < img.height {
            let src = img.row(yi as usize);
            let dst = &mut out.data[y * out_w * 3..(y + 1) * out_w * 3];
            for x in xmin..xmax {
                let s = xintab[x] * 3;
                dst[x * 3..x * 3 + 3].copy_from_slice(&src[s..s + 3]);
            }
        }
        yo += ay;
    }
    out
}

/// `Image.resize((new_w, new_h), interp)` exactly as PIL does it on an RGB image.
/// A zero target size gives an empty image (PIL raises; callers never ask for it).
pub fn resize(img: &RgbImage, new_w: usize, new_h: usize, interp: Interpolation) -> RgbImage {
    if new_w == img.width && new_h == img.height {
        return img.clone();
    }
    if new_w == 0 || new_h == 0 || img.width == 0 || img.height == 0 {
        return RgbImage::zeros(new_w, new_h);
    }
    match interp {
        Interpolation::Nearest => resize_nearest(img, new_w, new_h),
        Interpolation::Bilinear => resample(img, new_w, new_h, bilinear_filter, 1.0),
        Interpolation::Bicubic => resample(img, new_w, new_h, bicubic_filter, 2.0),
    }
}

// ---------------------------------------------------------------------------------------------
// torchvision geometry on PIL images
// ---------------------------------------------------------------------------------------------

/// torchvision's `_compute_resized_output_size` for an int `size` (no `max_size`): the shorter
/// side becomes `size`, the longer `int(size * long / short)`. Returns (width, height).
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    if short == 0 {
        return (width, height);
    }
    // Python: int(size * long / short), true division of ints in f64, then truncation.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `Resize(size)` (an int) on a PIL image.
pub fn resize_shorter_side(img: &RgbImage, size: usize, interp: Interpolation) -> RgbImage {
    let (w, h) = shorter_side_size(img.width, img.height, size);
    resize(img, w, h, interp)
}

/// PIL's `Image.crop((left, top, left + width, top + height))`: areas outside the image are
/// black.
pub fn crop(img: &RgbImage, left: i64, top: i64, width: usize, height: usize) -> RgbImage {
    let mut out = RgbImage::zeros(width, height);
    let x0 = left.max(0);
    let x1 = (left + width as i64).min(img.width as i64);
    if x1 <= x0 {
        return out;
    }
    let (sx, n) = (x0 as usize, (x1 - x0) as usize);
    let dx = (x0 - left) as usize;
    for y in 0..height {
        let sy = top + y as i64;
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        let src = &img.row(sy as usize)[sx * 3..(sx + n) * 3];
        out.data[(y * width + dx) * 3..(y * width + dx + n) * 3].copy_from_slice(src);
    }
    out
}

/// torchvision `CenterCrop((crop_h, crop_w))` on a PIL image: zero padding (split as
/// `d // 2` before, the rest after) where the image is smaller, offset
/// `int(round((size - crop) / 2.0))` (round half to even) where it is larger.
pub fn center_crop(img: &RgbImage, crop_w: usize, crop_h: usize) -> RgbImage {
    let offset = |size: usize, c: usize| -> i64 {
        if c > size {
            -(((c - size) / 2) as i64)
        } else {
            ((size - c) as f64 / 2.0).round_ties_even() as i64
        }
    };
    crop(img, offset(img.width, crop_w), offset(img.height, crop_h), crop_w, crop_h)
}

/// Mirror left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for (dst, src) in out.data.chunks_exact_mut(img.width * 3).zip(img.data.chunks_exact(img.width * 3)) {
        for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3).rev()) {
            d.copy_from_slice(s);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ToTensor + Normalize
// ---------------------------------------------------------------------------------------------

/// How the normalisation arithmetic is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormArith {
    /// torchvision `ToTensor` + `Normalize`: `x / 255`, `- mean`, `/ std`, each in f32, with
    /// mean and std rounded to f32 first (`torch.as_tensor(mean, dtype=float32)`).
    TorchF32,
    /// numpy in f64 (`(x / 255. - mean) / std`), rounded to f32 once at the end (CCD's
    /// `TorchvisionNormalize`).
    NumpyF64,
}

/// Per-channel mean and std as the Python literals (f64); see [`NormArith`] for the rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub arith: NormArith,
}

/// OpenAI CLIP / open_clip normalisation.
pub const CLIP_NORM: Normalize = Normalize {
    mean: [0.48145466, 0.4578275, 0.40821073],
    std: [0.26862954, 0.26130258, 0.27577711],
    arith: NormArith::TorchF32,
};

/// ImageNet normalisation as torchvision's `Normalize` does it.
pub const IMAGENET_NORM: Normalize =
    Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], arith: NormArith::TorchF32 };

/// ImageNet normalisation as CCD's `TorchvisionNormalize` does it (numpy f64).
pub const IMAGENET_NORM_NUMPY: Normalize =
    Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], arith: NormArith::NumpyF64 };

impl Normalize {
    /// The same constants with another arithmetic.
    pub const fn with_arith(self, arith: NormArith) -> Self {
        Normalize { mean: self.mean, std: self.std, arith }
    }

    /// Stable text form, e.g. `mean=[0.485,0.456,0.406],std=[0.229,0.224,0.225],f32`.
    pub fn describe(&self) -> String {
        let list = |v: &[f64; 3]| format!("[{},{},{}]", v[0], v[1], v[2]);
        let arith = match self.arith {
            NormArith::TorchF32 => "f32",
            NormArith::NumpyF64 => "f64",
        };
        format!("mean={},std={},{}", list(&self.mean), list(&self.std), arith)
    }

    /// Lookup table: the normalised value of each byte for channel `c`.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let mut t = [0f32; 256];
        match self.arith {
            NormArith::TorchF32 => {
                let (m, s) = (self.mean[c] as f32, self.std[c] as f32);
                for (v, slot) in t.iter_mut().enumerate() {
                    *slot = (v as f32 / 255.0f32 - m) / s;
                }
            }
            NormArith::NumpyF64 => {
                let (m, s) = (self.mean[c], self.std[c]);
                for (v, slot) in t.iter_mut().enumerate() {
                    *slot = ((v as f64 / 255.0 - m) / s) as f32;
                }
            }
        }
        t
    }
}

/// `ToTensor()` then `Normalize`: HWC u8 to CHW f32.
pub fn to_chw_normalized(img: &RgbImage, norm: &Normalize) -> Vec<f32> {
    let mut out = vec![0f32; img.width * img.height * 3];
    to_chw_normalized_into(img, norm, &mut out);
    out
}

/// [`to_chw_normalized`] into a slice of exactly `3 * width * height` values.
pub fn to_chw_normalized_into(img: &RgbImage, norm: &Normalize, out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), plane * 3, "to_chw_normalized_into: wrong output length");
    let tables = [norm.table(0), norm.table(1), norm.table(2)];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = tables[0][px[0] as usize];
        g[i] = tables[1][px[1] as usize];
        b[i] = tables[2][px[2] as usize];
    }
}

/// `ToTensor()` alone: HWC u8 to CHW f32 in [0, 1] (`x / 255` in f32), for the float
/// augmentations (colour jitter) that run before the normalisation.
pub fn to_chw_unit(img: &RgbImage) -> Vec<f32> {
    let plane = img.width * img.height;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = v as f32 / 255.0;
        }
    }
    out
}

/// `Normalize` of a CHW f32 image in [0, 1], in place, with the arithmetic of `norm` (the
/// f64 one rounds once, as numpy on a float image would).
pub fn normalize_unit_chw(x: &mut [f32], norm: &Normalize) {
    let plane = x.len() / 3;
    for (c, ch) in x.chunks_exact_mut(plane.max(1)).enumerate().take(3) {
        match norm.arith {
            NormArith::TorchF32 => {
                let (m, s) = (norm.mean[c] as f32, norm.std[c] as f32);
                ch.iter_mut().for_each(|v| *v = (*v - m) / s);
            }
            NormArith::NumpyF64 => {
                let (m, s) = (norm.mean[c], norm.std[c]);
                ch.iter_mut().for_each(|v| *v = ((*v as f64 - m) / s) as f32);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The preprocessings the methods use
// ---------------------------------------------------------------------------------------------

/// An image preprocessing, from decoded RGB to a normalised CHW f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// OpenAI CLIP / open_clip `preprocess`: `Resize(size, bicubic)` (shorter side),
    /// `CenterCrop(size)`, `ToTensor`, `Normalize(CLIP)`.
    ClipCenterCrop { size: usize },
    /// `Resize((size, size), interp)`, aspect ignored (CCD: 640 for CLIP labelling, 448 for
    /// training, torchvision's default bilinear, ImageNet statistics in numpy f64).
    SquareResize { size: usize, interp: Interpolation, norm: Normalize },
    /// Resize each side up to the next multiple of `patch` (`Resize((ceil(H/p)*p,
    /// ceil(W/p)*p), interp)` on the PIL image, as TagCLIP's `_transform_resize`), no crop.
    PatchMultiple { patch: usize, interp: Interpolation, norm: Normalize },
}

impl Transform {
    /// TagCLIP's preprocessing (ViT-B/16): patch multiple of 16, PIL bicubic, CLIP statistics.
    pub const TAGCLIP: Transform =
        Transform::PatchMultiple { patch: 16, interp: Interpolation::Bicubic, norm: CLIP_NORM };

    /// CCD's CLIP-labelling input: 640x640 bilinear, ImageNet statistics (numpy f64).
    pub const CCD_CLIP: Transform =
        Transform::SquareResize { size: 640, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY };

    /// CCD's classifier input: 448x448 bilinear, ImageNet statistics (numpy f64).
    pub const CCD_TRAIN: Transform =
        Transform::SquareResize { size: 448, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY };

    /// The normalisation this transform ends with.
    pub fn normalize(&self) -> &Normalize {
        match self {
            Transform::ClipCenterCrop { .. } => &CLIP_NORM,
            Transform::SquareResize { norm, .. } | Transform::PatchMultiple { norm, .. } => norm,
        }
    }

    /// Output (height, width) for an input of the given size.
    pub fn output_hw(&self, width: usize, height: usize) -> (usize, usize) {
        match *self {
            Transform::ClipCenterCrop { size } => (size, size),
            Transform::SquareResize { size, .. } => (size, size),
            Transform::PatchMultiple { patch, .. } => {
                let p = patch.max(1);
                (height.div_ceil(p) * p, width.div_ceil(p) * p)
            }
        }
    }

    /// The geometric part only: the u8 image that is then normalised.
    pub fn apply_u8(&self, img: &RgbImage) -> RgbImage {
        match *self {
            Transform::ClipCenterCrop { size } => {
                let r = resize_shorter_side(img, size, Interpolation::Bicubic);
                center_crop(&r, size, size)
            }
            Transform::SquareResize { size, interp, .. } => resize(img, size, size, interp),
            Transform::PatchMultiple { interp, .. } => {
                let (h, w) = self.output_hw(img.width, img.height);
                resize(img, w, h, interp)
            }
        }
    }

    /// The output (height, width) when it does not depend on the input size.
    pub fn fixed_output_hw(&self) -> Option<(usize, usize)> {
        match *self {
            Transform::ClipCenterCrop { size } | Transform::SquareResize { size, .. } => Some((size, size)),
            Transform::PatchMultiple { .. } => None,
        }
    }

    /// Runs the transform into `out`, which must hold exactly `3 * h * w` values of
    /// [`Transform::output_hw`]; returns (height, width).
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) -> (usize, usize) {
        let r = self.apply_u8(img);
        to_chw_normalized_into(&r, self.normalize(), out);
        (r.height, r.width)
    }

    /// Runs the transform: CHW f32 data, height, width.
    pub fn apply(&self, img: &RgbImage) -> (Vec<f32>, usize, usize) {
        let out = self.apply_u8(img);
        let data = to_chw_normalized(&out, self.normalize());
        (data, out.height, out.width)
    }

    /// A stable one-line description (used as a cache key).
    pub fn describe(&self) -> String {
        match self {
            Transform::ClipCenterCrop { size } => {
                format!("clip_center_crop(size={size},interp=bicubic,{})", CLIP_NORM.describe())
            }
            Transform::SquareResize { size, interp, norm } => {
                format!("square_resize(size={size},interp={interp},{})", norm.describe())
            }
            Transform::PatchMultiple { patch, interp, norm } => {
                format!("patch_multiple(patch={patch},interp={interp},{})", norm.describe())
            }
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

// ---------------------------------------------------------------------------------------------
// torch.nn.functional.interpolate on f32 CHW tensors
// ---------------------------------------------------------------------------------------------

/// Source index and weights of torch's linear interpolation (`align_corners=False`,
/// no explicit scale factor): `src = max(scale * (dst + 0.5) - 0.5, 0)` in f32, which torch's
/// CPU build evaluates as one fused multiply-add (measured: the weights then agree exactly).
fn torch_linear_weights(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            if in_size == out_size {
                return (i, i, 1.0, 0.0);
            }
            let src = scale.mul_add(i as f32 + 0.5, -0.5).max(0.0);
            let i0 = (src as usize).min(in_size - 1);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)` for one
/// image `x` of shape `[c, h, w]` (row-major). Same indices and weights as torch; the sums
/// agree to 1 ulp (torch's vectorised loop rounds some of them differently).
pub fn interpolate_bilinear_chw(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    if x.len() != c * h * w || h == 0 || w == 0 {
        return Err(Error::Shape(format!("interpolate_bilinear_chw: {} values for shape [{c}, {h}, {w}]", x.len())));
    }
    let wy = torch_linear_weights(h, out_h);
    let wx = torch_linear_weights(w, out_w);
    let mut out = vec![0f32; c * out_h * out_w];
    for ch in 0..c {
        let src = &x[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * out_h * out_w..(ch + 1) * out_h * out_w];
        for (oy, &(y0, y1, hy0, hy1)) in wy.iter().enumerate() {
            let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, wx0, wx1)) in wx.iter().enumerate() {
                let t0 = r0[x0] * wx0 + r0[x1] * wx1;
                let t1 = r1[x0] * wx0 + r1[x1] * wx1;
                dst[oy * out_w + ox] = t0 * hy0 + t1 * hy1;
            }
        }
    }
    Ok(out)
}

/// `F.interpolate(x, size=(out_h, out_w), mode="nearest")` for `[c, h, w]`:
/// `src = min(floor(dst * (in / out)), in - 1)` with the scale in f32.
pub fn interpolate_nearest_chw(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    if x.len() != c * h * w || h == 0 || w == 0 {
        return Err(Error::Shape(format!("interpolate_nearest_chw: {} values for shape [{c}, {h}, {w}]", x.len())));
    }
    let index = |in_size: usize, out_size: usize| -> Vec<usize> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|i| {
                if in_size == out_size {
                    i
                } else if out_size == 2 * in_size {
                    i >> 1
                } else {
                    ((i as f32 * scale).floor() as usize).min(in_size - 1)
                }
            })
            .collect()
    };
    let (iy, ix) = (index(h, out_h), index(w, out_w));
    let mut out = Vec::with_capacity(c * out_h * out_w);
    for ch in 0..c {
        let src = &x[ch * h * w..(ch + 1) * h * w];
        for &y in &iy {
            out.extend(ix.iter().map(|&xx| src[y * w + xx]));
        }
    }
    Ok(out)
}
