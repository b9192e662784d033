//! Colour jitter as torchvision's `transforms.ColorJitter` on float tensors (torchvision 0.29,
//! `transforms/_functional_tensor.py`), for CHW f32 images with values in [0, 1]:
//!
//! * brightness f: `blend(img, 0, f)`, i.e. `clamp(f * img, 0, 1)`;
//! * contrast f: `blend(img, m, f)` with m the mean over the image of its grayscale
//!   `0.2989 r + 0.587 g + 0.114 b` (one scalar per image);
//! * saturation f: `blend(img, gray, f)` with gray that grayscale, per pixel;
//! * hue f (in [-0.5, 0.5]): RGB to HSV (`_rgb2hsv`, after Pillow's `Convert.c`), h = (h + f)
//!   mod 1, back to RGB (`_hsv2rgb`);
//!
//! where `blend(a, b, r) = clamp(r * a + (1 - r) * b, 0, 1)`. `ColorJitter(b, c, s, h)` draws
//! its factors uniformly from [max(0, 1 - b), 1 + b], [max(0, 1 - c), 1 + c],
//! [max(0, 1 - s), 1 + s] and [-h, h] (a range of zero width turns that adjustment off), and
//! applies the four in the order of a random permutation (`torch.randperm(4)`). Our random
//! numbers are not torch's: a jitter is deterministic given our seed, and its adjustments match
//! torchvision's for the same factors and order (tests/color_jitter.rs, to 1e-5).
//!
//! The arithmetic follows torch's f32 operation by operation (a python float factor is rounded
//! to f32, as torch does for a scalar times a float tensor); the contrast mean is summed in f64.
//!
//! Official CCD applies `ColorJitter(0.5, 0.5, 0.5, 0.5)` to the PIL image (8 bits, each
//! adjustment rounded to u8, Pillow's 8-bit HSV) after the 448 square resize and before its
//! normalisation. The engine applies these float definitions to the resized image divided by
//! 255 and normalises the result without rounding to 8 bits: the same transform up to the
//! 8-bit quantisation of each step (at most a few 1/255 per pixel). Since the random factors
//! cannot be torch's anyway, only the distribution of the augmentation is reproduced.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;

/// Grayscale weights of torchvision's `rgb_to_grayscale` (ITU-R 601-2 luma, as written there).
const GRAY: [f32; 3] = [0.2989, 0.587, 0.114];

/// One of the four adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjustment {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

impl Adjustment {
    /// torchvision's `fn_idx` numbering.
    pub const ALL: [Adjustment; 4] =
        [Adjustment::Brightness, Adjustment::Contrast, Adjustment::Saturation, Adjustment::Hue];

    pub fn name(self) -> &'static str {
        match self {
            Adjustment::Brightness => "brightness",
            Adjustment::Contrast => "contrast",
            Adjustment::Saturation => "saturation",
            Adjustment::Hue => "hue",
        }
    }

    /// Applies this adjustment with `factor` to `img` (3, h, w) in place.
    pub fn apply(self, img: &mut [f32], h: usize, w: usize, factor: f32) {
        match self {
            Adjustment::Brightness => adjust_brightness(img, factor),
            Adjustment::Contrast => adjust_contrast(img, h, w, factor),
            Adjustment::Saturation => adjust_saturation(img, h, w, factor),
            Adjustment::Hue => adjust_hue(img, h, w, factor),
        }
    }
}

impl FromStr for Adjustment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Adjustment::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| format!("unknown colour adjustment `{s}`"))
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)`: the strengths, as torchvision's
/// constructor takes them (single numbers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

/// One draw of a [`ColorJitter`]: the adjustments to apply, in order, with their factors.
#[derive(Clone, Debug, PartialEq)]
pub struct JitterDraw {
    pub steps: Vec<(Adjustment, f32)>,
}

impl ColorJitter {
    /// CCD's second view: `ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)`.
    pub const CCD: ColorJitter = ColorJitter { brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.5 };

    pub fn is_identity(&self) -> bool {
        self.brightness == 0.0 && self.contrast == 0.0 && self.saturation == 0.0 && self.hue == 0.0
    }

    /// The factor range of each adjustment, None when it is off (torchvision's `_check_input`).
    fn range(&self, a: Adjustment) -> Option<(f32, f32)> {
        let (lo, hi) = match a {
            Adjustment::Brightness => ((1.0 - self.brightness).max(0.0), 1.0 + self.brightness),
            Adjustment::Contrast => ((1.0 - self.contrast).max(0.0), 1.0 + self.contrast),
            Adjustment::Saturation => ((1.0 - self.saturation).max(0.0), 1.0 + self.saturation),
            Adjustment::Hue => (-self.hue, self.hue),
        };
        (lo != hi).then_some((lo, hi))
    }

    /// Draws the order (a uniform permutation) and the factors (uniform in their ranges).
    pub fn draw(&self, rng: &mut impl Rng) -> JitterDraw {
        let mut order = Adjustment::ALL;
        order.shuffle(rng);
        // The factors are drawn in torchvision's order (brightness, contrast, saturation,
        // hue), independently of the permutation.
        let factors: Vec<Option<f32>> =
            Adjustment::ALL.iter().map(|&a| self.range(a).map(|(lo, hi)| rng.gen_range(lo..=hi))).collect();
        let steps = order.iter().filter_map(|&a| factors[a as usize].map(|f| (a, f))).collect();
        JitterDraw { steps }
    }
}

impl JitterDraw {
    /// Applies the draw to `img` (3, h, w), values in [0, 1], in place.
    pub fn apply(&self, img: &mut [f32], h: usize, w: usize) {
        for &(a, f) in &self.steps {
            a.apply(img, h, w, f);
        }
    }
}

impl fmt::Display for ColorJitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.brightness, self.contrast, self.saturation, self.hue)
    }
}

impl FromStr for ColorJitter {
    type Err = String;
    /// `b,c,s,h` (four numbers), or `off`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "off" || s.trim() == "none" {
            return Ok(ColorJitter { brightness: 0.0, contrast: 0.0, saturation: 0.0, hue: 0.0 });
        }
        let v: Vec<f32> = s
            .split(',')
            .map(|x| x.trim().parse::<f32>().map_err(|_| format!("jitter `{s}`: `{x}` is not a number")))
            .collect::<Result<_, _>>()?;
        let [brightness, contrast, saturation, hue] = v[..] else {
            return Err(format!("jitter `{s}`: give four numbers brightness,contrast,saturation,hue (or off)"));
        };
        if [brightness, contrast, saturation].iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(format!("jitter `{s}`: brightness, contrast and saturation must be >= 0"));
        }
        if !(0.0..=0.5).contains(&hue) {
            return Err(format!("jitter `{s}`: hue must be in [0, 0.5]"));
        }
        Ok(ColorJitter { brightness, contrast, saturation, hue })
    }
}

/// `clamp(r * a + (1 - r) * b, 0, 1)` in f32 with r and 1 - r rounded from f64 (torch's
/// `_blend` with a python float ratio).
#[inline]
fn blend_weights(ratio: f32) -> (f32, f32) {
    (ratio, (1.0 - ratio as f64) as f32)
}

#[inline]
fn blend(a: f32, b: f32, (r, q): (f32, f32)) -> f32 {
    (r * a + q * b).clamp(0.0, 1.0)
}

/// torchvision `adjust_brightness`: blend with black.
pub fn adjust_brightness(img: &mut [f32], factor: f32) {
    let wts = blend_weights(factor);
    for v in img.iter_mut() {
        *v = blend(*v, 0.0, wts);
    }
}

/// The grayscale plane (h * w): `0.2989 r + 0.587 g + 0.114 b`, summed left to right in f32.
fn grayscale(img: &[f32], plane: usize) -> Vec<f32> {
    let (r, rest) = img.split_at(plane);
    let (g, b) = rest.split_at(plane);
    r.iter().zip(g).zip(b).map(|((&r, &g), &b)| GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).collect()
}

/// torchvision `adjust_contrast`: blend with the mean of the grayscale image.
pub fn adjust_contrast(img: &mut [f32], h: usize, w: usize, factor: f32) {
    let plane = h * w;
    let gray = grayscale(img, plane);
    let mean = (gray.iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64) as f32;
    let wts = blend_weights(factor);
    for v in img.iter_mut() {
        *v = blend(*v, mean, wts);
    }
}

/// torchvision `adjust_saturation`: blend with the grayscale image, pixel by pixel.
pub fn adjust_saturation(img: &mut [f32], h: usize, w: usize, factor: f32) {
    let plane = h * w;
    let gray = grayscale(img, plane);
    let wts = blend_weights(factor);
    for ch in img.chunks_exact_mut(plane) {
        for (v, &g) in ch.iter_mut().zip(&gray) {
            *v = blend(*v, g, wts);
        }
    }
}

/// torch's `remainder` for floats: fmod, moved into the divisor's sign.
#[inline]
fn remainder(a: f32, b: f32) -> f32 {
    let m = a % b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        m + b
    } else {
        m
    }
}

/// torchvision `_rgb2hsv` for one pixel.
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let rc = (maxc - r) / div;
    let gc = (maxc - g) / div;
    let bc = (maxc - b) / div;
    // torch sums the three masked terms; exactly one mask is set, the others add +0.
    let hr = if maxc == r { bc - gc } else { 0.0 };
    let hg = if maxc == g && maxc != r { 2.0 + rc - bc } else { 0.0 };
    let hb = if maxc != g && maxc != r { 4.0 + gc - rc } else { 0.0 };
    let h = hr + hg + hb;
    let h = (h / 6.0 + 1.0) % 1.0;
    (h, s, maxc)
}

/// torchvision `_hsv2rgb` for one pixel.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// torchvision `adjust_hue`: shift the hue by `factor` (a fraction of the colour circle).
pub fn adjust_hue(img: &mut [f32], h: usize, w: usize, factor: f32) {
    let plane = h * w;
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (hue, s, v) = rgb_to_hsv(*r, *g, *b);
        let hue = remainder(hue + factor, 1.0);
        (*r, *g, *b) = hsv_to_rgb(hue, s, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_strengths_and_rejects_bad_ones() {
        assert_eq!("0.5,0.5,0.5,0.5".parse::<ColorJitter>().unwrap(), ColorJitter::CCD);
        assert!("off".parse::<ColorJitter>().unwrap().is_identity());
        for bad in ["0.5,0.5,0.5", "0.5,0.5,0.5,0.6", "-1,0,0,0", "a,0,0,0"] {
            assert!(bad.parse::<ColorJitter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_are_seeded_and_within_range() {
        let j = ColorJitter { brightness: 0.5, contrast: 0.2, saturation: 0.0, hue: 0.1 };
        let a = j.draw(&mut rand::rngs::StdRng::seed_from_u64(3));
        let b = j.draw(&mut rand::rngs::StdRng::seed_from_u64(3));
        assert_eq!(a, b);
        // Saturation has a zero-width range: off.
        assert_eq!(a.steps.len(), 3);
        for (adj, f) in a.steps {
            let ok = match adj {
                Adjustment::Brightness => (0.5..=1.5).contains(&f),
                Adjustment::Contrast => (0.8..=1.2).contains(&f),
                Adjustment::Hue => (-0.1..=0.1).contains(&f),
                Adjustment::Saturation => false,
            };
            assert!(ok, "{adj:?} {f}");
        }
    }

    #[test]
    fn hue_round_trip_keeps_the_image() {
        let mut img: Vec<f32> = (0..3 * 20).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        let before = img.clone();
        adjust_hue(&mut img, 4, 5, 0.0);
        for (a, b) in img.iter().zip(&before) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
    }
}
