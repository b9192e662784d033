//! Maps people can read: for each tagged class of an image, a PNG of the image (at the patch
//! pass's size) with the refined class map blended in, the class name and its final score
//! written on it, DMAR's class boxes and the CWR crop drawn, and a legend strip below; and one
//! `index.html` in the maps folder that lays them out as a contact sheet (image, tags with
//! scores, class maps), with relative links only, so it opens from disk.
//!
//! Text is drawn with the public-domain 8x8 bitmap font of the `font8x8` crate: no system
//! font is needed.

use std::path::{Path, PathBuf};

use super::stages::{class_boxes, minmax_normalize, CellBox};
use super::{transform_for, ClassText, ImageResult, TagclipOptions};
use crate::data::decode::{decode_image_file, RgbImage};
use crate::error::{Error, Result};
use crate::methods::write_atomic;
use crate::models::clip::ClipModel;

/// Colours of what is drawn.
pub const LABEL_TEXT: [u8; 3] = [255, 255, 255];
pub const LABEL_BACKGROUND: [u8; 3] = [0, 0, 0];
pub const DMAR_BOX: [u8; 3] = [0, 255, 0];
pub const CWR_BOX: [u8; 3] = [255, 0, 255];

/// Pixels between the label and the image edge.
pub const PAD: usize = 4;

/// The text written at the top of a class map: the class name and its final score.
pub fn label_text(class: &str, score: f32) -> String {
    format!("{class} {score:.3}")
}

/// Narrower images are enlarged (nearest neighbour, by a whole factor) to at least this width,
/// so that a label fits and the patches are visible.
pub const MIN_WIDTH: usize = 384;

/// The whole factor a `width`-pixel image is enlarged by (at most 8).
pub fn zoom_for(width: usize) -> usize {
    MIN_WIDTH.div_ceil(width.max(1)).clamp(1, 8)
}

/// Glyph scale on a map `width` pixels wide: 16-pixel glyphs from 480 pixels on, else 8.
pub fn text_scale(width: usize) -> usize {
    if width >= 480 {
        2
    } else {
        1
    }
}

/// The on-pixels of `text` at `scale` (8 x 8 glyphs, one per char; chars outside ASCII are
/// drawn as `?`): (width, height, row-major mask).
pub fn text_mask(text: &str, scale: usize) -> (usize, usize, Vec<bool>) {
    let chars: Vec<char> = text.chars().collect();
    let (w, h) = (chars.len() * 8 * scale, 8 * scale);
    let mut mask = vec![false; w * h];
    for (i, ch) in chars.iter().enumerate() {
        let code = if ch.is_ascii() { *ch as usize } else { '?' as usize };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                // Bit 0 is the leftmost pixel of the row.
                if bits >> gx & 1 == 1 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            mask[(gy * scale + sy) * w + i * 8 * scale + gx * scale + sx] = true;
                        }
                    }
                }
            }
        }
    }
    (w, h, mask)
}

/// An RGB canvas that clips everything drawn to its bounds.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// `width * height * 3` bytes, row-major.
    pub rgb: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, c: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A `thickness`-pixel outline inside the pixel rectangle [x0, x1) x [y0, y1).
    pub fn outline(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, thickness: usize, c: [u8; 3]) {
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        let t = thickness.min(x1 - x0).min(y1 - y0);
        self.fill(x0, y0, x1 - x0, t, c);
        self.fill(x0, y1 - t, x1 - x0, t, c);
        self.fill(x0, y0, t, y1 - y0, c);
        self.fill(x1 - t, y0, t, y1 - y0, c);
    }

    /// `text` on a filled box with `PAD` pixels around it; returns the box's width.
    pub fn label(&mut self, x: usize, y: usize, text: &str, scale: usize) -> usize {
        let (w, h, mask) = text_mask(text, scale);
        self.fill(x, y, w + 2 * PAD, h + 2 * PAD, LABEL_BACKGROUND);
        for ty in 0..h {
            for tx in 0..w {
                if mask[ty * w + tx] {
                    self.set(x + PAD + tx, y + PAD + ty, LABEL_TEXT);
                }
            }
        }
        w + 2 * PAD
    }

    pub fn png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().map_err(|e| Error::Shape(format!("png: {e}")))?;
            wr.write_image_data(&self.rgb).map_err(|e| Error::Shape(format!("png: {e}")))?;
        }
        Ok(bytes)
    }
}

/// A jet-like ramp (blue, cyan, yellow, red) for a value in [0, 1].
pub fn ramp(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |c: f32| ((1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [f(3.0), f(2.0), f(1.0)]
}

/// Height of the legend strip under the image at `scale`: two lines of text.
pub fn legend_height(scale: usize) -> usize {
    2 * (8 * scale + 2 * PAD)
}

/// The legend: the ramp from 0 to 1 (the refined map, min-max normalised), then the two box
/// colours with their meaning.
fn draw_legend(cv: &mut Canvas, y0: usize, scale: usize) {
    let line = 8 * scale + 2 * PAD;
    cv.fill(0, y0, cv.width, legend_height(scale), LABEL_BACKGROUND);
    let x = cv.label(0, y0, "map 0", scale);
    let bar = (cv.width / 4).max(32);
    for i in 0..bar {
        let c = ramp(i as f32 / (bar - 1) as f32);
        cv.fill(x + i, y0 + PAD, 1, 8 * scale, c);
    }
    cv.label(x + bar, y0, "1", scale);
    let y = y0 + line;
    cv.fill(PAD, y + PAD, 8 * scale, 8 * scale, DMAR_BOX);
    let x = 8 * scale + PAD + cv.label(8 * scale + PAD, y, "DMAR box", scale);
    cv.fill(x + PAD, y + PAD, 8 * scale, 8 * scale, CWR_BOX);
    cv.label(x + 8 * scale + 2 * PAD, y, "CWR crop", scale);
}

/// What one image's maps show, for the contact sheet.
pub struct ImageMaps {
    /// The image at the patch pass's size, as written.
    pub image: PathBuf,
    /// The source image, as the run read it.
    pub source: String,
    /// (class name, final score) of every tag, highest score first.
    pub tags: Vec<(String, f32)>,
    /// (class name, map file) per tagged class.
    pub maps: Vec<(String, PathBuf)>,
}

/// A file-name-safe form of `s`.
pub fn safe_name(s: &str) -> String {
    s.chars().map(|ch| if ch.is_ascii_alphanumeric() || ch == '-' { ch } else { '_' }).collect()
}

/// What every map of a run is drawn with.
pub struct MapSource<'a> {
    pub model: &'a ClipModel,
    pub text: &'a ClassText,
    /// The dataset classes as the outputs name them (the scores CSV's columns).
    pub names: &'a [String],
    pub opts: &'a TagclipOptions,
}

/// Writes `stem.png` (the image) and one `stem_<class>.png` per tagged class into `dir`.
pub fn save_maps(dir: &Path, stem: &str, path: &Path, r: &ImageResult, src: &MapSource) -> Result<Option<ImageMaps>> {
    let MapSource { model, text, names, opts } = *src;
    let (Some(refined), Some(hat)) = (&r.refined, &r.hat) else { return Ok(None) };
    let transform = transform_for(model)?;
    let img: RgbImage = transform.apply_u8(&decode_image_file(path)?);
    let p = model.input_multiple();
    let (gh, gw) = (img.height / p, img.width / p);
    let c = text.len();
    if refined.len() != gh * gw * c || hat.len() != gh * gw * c {
        return Err(Error::Shape(format!(
            "maps of {}: {gh} x {gw} patches for an image of {} x {}",
            path.display(),
            img.width,
            img.height
        )));
    }
    // Drawn at `zoom` x the patch pass's size: a patch is p pixels there, p * zoom here.
    let zoom = zoom_for(img.width);
    let img = RgbImage::from_fn(img.width * zoom, img.height * zoom, |x, y| img.pixel(x / zoom, y / zoom));
    let (h, w, p) = (img.height, img.width, p * zoom);
    let scale = text_scale(w);
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    let image = dir.join(format!("{stem}.png"));
    let plain = Canvas { width: w, height: h, rgb: img.data.clone() };
    write_atomic(&image, &plain.png()?)?;
    let mut tags: Vec<(String, f32)> = r.tags.iter().map(|&t| (names[t].clone(), r.scores[t])).collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut maps = Vec::new();
    for &cls in &r.tags {
        let col: Vec<f32> = (0..gh * gw).map(|i| refined[i * c + cls]).collect();
        let v = minmax_normalize(&col);
        let mut cv =
            Canvas { width: w, height: h + legend_height(scale), rgb: vec![0u8; w * (h + legend_height(scale)) * 3] };
        for y in 0..h {
            for x in 0..w {
                let m = v[(y / p).min(gh - 1) * gw + (x / p).min(gw - 1)];
                let heat = ramp(if m.is_finite() { m } else { 0.0 });
                let px = img.pixel(x, y);
                let i = (y * w + x) * 3;
                for ch in 0..3 {
                    cv.rgb[i + ch] = (px[ch] as u16 + heat[ch] as u16).div_ceil(2) as u8;
                }
            }
        }
        let thick = scale + 1;
        let to_px = |b: &CellBox| (b.x0 * p, b.y0 * p, (b.x1 * p).min(w), (b.y1 * p).min(h));
        // DMAR's class boxes come from P_hat (only classes with a positive maximum are masked).
        let hat_col: Vec<f32> = (0..gh * gw).map(|i| hat[i * c + cls]).collect();
        if hat_col.iter().copied().fold(f32::NEG_INFINITY, f32::max) > 0.0 {
            for b in class_boxes(&hat_col, gh, gw, opts) {
                let (x0, y0, x1, y1) = to_px(&b);
                cv.outline(x0, y0, x1, y1, thick, DMAR_BOX);
            }
        }
        if let Some(crop) = r.cwr.crops.iter().find(|cr| cr.class == cls) {
            let (x0, y0, x1, y1) = to_px(&crop.cells);
            cv.outline(x0, y0, x1, y1, thick, CWR_BOX);
        }
        cv.label(0, 0, &label_text(&names[cls], r.scores[cls]), scale);
        draw_legend(&mut cv, h, scale);
        let out = dir.join(format!("{stem}_{}.png", safe_name(&names[cls])));
        write_atomic(&out, &cv.png()?)?;
        maps.push((names[cls].clone(), out));
    }
    Ok(Some(ImageMaps { image, source: path.display().to_string(), tags, maps }))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A path inside `dir` as a relative link (file name, URL-escaped where needed).
fn link(dir: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(dir).unwrap_or(p);
    let s = rel.to_string_lossy().replace('\\', "/");
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `index.html` in `dir`: one card per image (the image, its tags with scores, its class maps),
/// every link relative to `dir`; each picture links to itself at full size. `title` heads the page (the run: model, weights).
pub fn write_index(dir: &Path, title: &str, images: &[ImageMaps]) -> Result<PathBuf> {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>{}</title>\n", html_escape(title)));
    h.push_str(
        "<style>body{font-family:sans-serif;background:#111;color:#eee;margin:16px}\
         .card{display:flex;gap:12px;align-items:flex-start;border-bottom:1px solid #444;padding:12px 0}\
         .card img{height:220px;border:1px solid #555}.meta{min-width:220px;max-width:260px}\
         .meta code{word-break:break-all}.maps{display:flex;flex-wrap:wrap;gap:8px}\
         figure{margin:0}figcaption{font-size:12px;text-align:center}</style>\n",
    );
    h.push_str("</head><body>\n");
    h.push_str(&format!("<h1>{}</h1>\n", html_escape(title)));
    h.push_str(&format!(
        "<p>{} images. Each map: the image with the refined class map blended in (blue 0 to red 1, \
         min-max normalised), the class name and final score, DMAR's class boxes in green and the \
         CWR crop in magenta.</p>\n",
        images.len()
    ));
    for im in images {
        h.push_str("<div class=\"card\">\n");
        h.push_str(&format!(
            "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"image\"></a><figcaption>image</figcaption></figure>\n",
            link(dir, &im.image)
        ));
        h.push_str(&format!("<div class=\"meta\"><code>{}</code><ul>\n", html_escape(&im.source)));
        for (name, score) in &im.tags {
            h.push_str(&format!("<li>{} <b>{score:.3}</b></li>\n", html_escape(name)));
        }
        h.push_str("</ul></div>\n<div class=\"maps\">\n");
        for (name, file) in &im.maps {
            h.push_str(&format!(
                "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>\n",
                link(dir, file),
                html_escape(name)
            ));
        }
        h.push_str("</div></div>\n");
    }
    h.push_str("</body></html>\n");
    let out = dir.join("index.html");
    write_atomic(&out, h.as_bytes())?;
    Ok(out)
}
