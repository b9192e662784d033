//! Decoding image files to 8-bit RGB, as PIL's `Image.open(p).convert("RGB")` does.
//!
//! The reference pipelines (open_clip, OpenAI CLIP, TagCLIP, CCD) all start from PIL, so the
//! pixels handed to the models must be PIL's pixels, bit for bit:
//!
//! * JPEG is decoded by libjpeg-turbo's decoder (the `mozjpeg` crate builds it from C with `cc`,
//!   no SIMD; the SIMD paths of libjpeg-turbo are bit-exact with the C paths), with the same
//!   settings PIL uses: ISLOW IDCT, fancy upsampling. Grayscale is replicated to RGB. CMYK and
//!   YCCK files are decoded to CMYK by libjpeg, inverted (PIL's `CMYK;I` rawmode: PIL always
//!   assumes Adobe polarity) and converted with PIL's integer `cmyk2rgb`.
//! * PNG is decoded by the `png` crate without transformations; PIL's conversions are applied
//!   here: 16-bit samples keep their high byte, 16-bit grayscale (`I;16`) saturates at 255,
//!   alpha is dropped (no blending), palettes are looked up, 1/2/4-bit gray is scaled.
//! * EXIF orientation is NOT applied (PIL's open/convert does not apply it either).
//! * A truncated file is an error (PIL: "image file is truncated"), as is anything that is
//!   neither JPEG nor PNG. Decoder panics are caught; no input can take the process down.

// libjpeg reports fatal errors by unwinding out of its error handler (see `mod jpeg`); with
// panic = "abort" a corrupt JPEG would kill the process instead of being skipped.
#[cfg(panic = "abort")]
compile_error!("labelfree's image decoding needs panic = \"unwind\" (libjpeg errors unwind)");

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{Error, Result};

/// Refuse images with more pixels than this, before allocating anything for them. This is PIL's
/// own limit: `Image.MAX_IMAGE_PIXELS * 2` (PIL raises `DecompressionBombError` above it).
pub const MAX_PIXELS: usize = 2 * 89_478_485;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `width * height * 3` bytes, `data[(y * width + x) * 3 + c]`.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps an HWC RGB buffer; fails if its length is not `width * height * 3`.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(Error::Shape(format!(
                "RgbImage {width}x{height} needs {} bytes, got {}",
                expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        Ok(Self { width, height, data })
    }

    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self { width, height, data: vec![0; width * height * 3] }
    }

    /// Builds an image from a function of (x, y) giving the RGB triple.
    pub fn from_fn(width: usize, height: usize, mut f: impl FnMut(usize, usize) -> [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&f(x, y));
            }
        }
        Self { width, height, data }
    }

    /// The pixel at (x, y). Panics when out of bounds (a programming error, not an input error).
    #[inline]
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// One row, `width * 3` bytes.
    #[inline]
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.width * 3..(y + 1) * self.width * 3]
    }
}

/// The formats we recognise by their first bytes (the file name's extension is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

/// Recognises JPEG (`FF D8 FF`, as PIL requires) and PNG by their signatures.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else {
        None
    }
}

/// Reads and decodes an image file (JPEG or PNG, recognised by content) to RGB.
pub fn decode_image_file(path: &Path) -> Result<RgbImage> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Image { path: name.clone(), reason: format!("cannot read file: {e}") })?;
    decode_image_bytes(&bytes, &name)
}

/// Decodes an in-memory image (JPEG or PNG) to RGB. `name_for_errors` names it in errors.
pub fn decode_image_bytes(bytes: &[u8], name_for_errors: &str) -> Result<RgbImage> {
    let fail = |reason: String| Error::Image { path: name_for_errors.to_string(), reason };
    if bytes.is_empty() {
        return Err(fail("empty file (0 bytes)".into()));
    }
    let format = sniff_format(bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        fail(format!("not a JPEG or PNG file (starts with {})", head.join(" ")))
    })?;
    // The decoders should not panic, but a decoder bug must never take a run down.
    let outcome = catch_unwind(AssertUnwindSafe(|| match format {
        ImageFormat::Jpeg => jpeg::decode(bytes),
        ImageFormat::Png => png_dec::decode(bytes),
    }));
    match outcome {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(payload) => Err(fail(panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "decoder panicked".to_string()
    }
}

fn check_pixels(width: usize, height: usize) -> std::result::Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has a zero dimension ({width}x{height})"));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_PIXELS => Ok(()),
        _ => Err(format!(
            "image is {width}x{height} = {} pixels, over the limit of {MAX_PIXELS} \
             (possible decompression bomb)",
            width as u128 * height as u128
        )),
    }
}

/// PIL's CMYK -> RGB (`Convert.c: cmyk2rgb`), on CMYK values *after* PIL's `CMYK;I` inversion.
#[inline]
pub fn pil_cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as i32;
    let f = |v: u8| -> u8 {
        let t = v as i32 * nk + 128;
        let muldiv255 = ((t >> 8) + t) >> 8;
        (nk - muldiv255).clamp(0, 255) as u8
    };
    [f(c), f(m), f(y)]
}

mod jpeg {
    //! libjpeg-turbo (via mozjpeg) with PIL's settings. libjpeg reports fatal errors through
    //! `error_exit`, which unwinds back here (`resume_unwind`, caught by the caller);
    //! warnings go to `emit_message`, where a premature end of data is recorded.

    use super::{check_pixels, pil_cmyk_to_rgb, RgbImage};
    use mozjpeg_sys as ffi;
    use std::cell::Cell;
    use std::os::raw::c_int;

    thread_local! {
        /// Set when libjpeg ran out of data (the source then feeds it a fake EOI marker).
        static HIT_EOF: Cell<bool> = const { Cell::new(false) };
    }

    fn format_message(cinfo: &mut ffi::jpeg_common_struct) -> String {
        // SAFETY: `cinfo.err` points at the error manager installed below, alive for the
        // whole decode; `format_message` writes at most 80 bytes (JMSG_LENGTH_MAX).
        unsafe {
            let err = &*cinfo.err;
            match err.format_message {
                Some(fmt) => {
                    let buffer = [0u8; 80];
                    fmt(cinfo, &buffer);
                    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                    String::from_utf8_lossy(&buffer[..end]).into_owned()
                }
                None => format!("libjpeg error code {}", err.msg_code),
            }
        }
    }

    unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
        let msg = format_message(cinfo);
        // resume_unwind skips the panic hook: nothing is printed, the caller gets the message.
        std::panic::resume_unwind(Box::new(format!("JPEG decoding failed: {msg}")));
    }

    unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
        if level < 0 {
            // SAFETY: see format_message.
            let err = unsafe { &mut *cinfo.err };
            err.num_warnings += 1;
            if err.msg_code == ffi::JWRN_JPEG_EOF {
                HIT_EOF.with(|f| f.set(true));
            }
        }
    }

    fn error_mgr() -> ffi::jpeg_error_mgr {
        // SAFETY: jpeg_error_mgr is a plain C struct; jpeg_std_error fills in every field.
        unsafe {
            let mut err: ffi::jpeg_error_mgr = std::mem::zeroed();
            ffi::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            err
        }
    }

    const TRUNCATED: &str = "image file is truncated (premature end of JPEG data)";

    pub(super) fn decode(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
        HIT_EOF.with(|f| f.set(false));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_inner(bytes)))
            .unwrap_or_else(|payload| Err(super::panic_message(payload.as_ref())));
        let eof = HIT_EOF.with(|f| f.replace(false));
        match result {
            // PIL's suspending source raises "image file is truncated" whenever libjpeg wants
            // bytes past the end of the file; ours fakes an EOI instead, so check the flag.
            Ok(_) | Err(_) if eof => Err(TRUNCATED.to_string()),
            r => r,
        }
    }

    fn decode_inner(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
        let dec = mozjpeg::Decompress::builder()
            .with_err(error_mgr())
            .from_mem(bytes)
            .map_err(|e| format!("JPEG header: {e}"))?;
        let (width, height) = dec.size();
        check_pixels(width, height)?;
        let ncomp = dec.components().len();
        let rgb = match ncomp {
            // Gray -> RGB in libjpeg replicates the sample, exactly like PIL's L -> RGB.
            1 | 3 => {
                let mut started =
                    dec.to_colorspace(ffi::J_COLOR_SPACE::JCS_RGB).map_err(|e| format!("JPEG start: {e}"))?;
                let data: Vec<u8> = started.read_scanlines().map_err(|_| TRUNCATED.to_string())?;
                let _ = started.finish();
                data
            }
            4 => {
                // libjpeg turns YCCK into CMYK; PIL then inverts (CMYK;I) and converts.
                let mut started =
                    dec.to_colorspace(ffi::J_COLOR_SPACE::JCS_CMYK).map_err(|e| format!("JPEG start: {e}"))?;
                let cmyk: Vec<u8> = started.read_scanlines().map_err(|_| TRUNCATED.to_string())?;
                let _ = started.finish();
                let mut rgb = Vec::with_capacity(width * height * 3);
                for px in cmyk.chunks_exact(4) {
                    rgb.extend_from_slice(&pil_cmyk_to_rgb(255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3]));
                }
                rgb
            }
            n => return Err(format!("cannot handle {n}-component JPEG images")),
        };
        if rgb.len() != width * height * 3 {
            return Err(TRUNCATED.to_string());
        }
        Ok(RgbImage { width, height, data: rgb })
    }
}

mod png_dec {
    //! PNG via the `png` crate, raw samples, with PIL's mode conversions applied here.

    use super::{check_pixels, RgbImage, MAX_PIXELS};
    use png::{BitDepth, ColorType, Transformations};

    pub(super) fn decode(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
        // Limits cover the decoder's own buffers; the frame buffer is checked below.
        let limits = png::Limits { bytes: MAX_PIXELS.saturating_mul(8) };
        let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
        decoder.set_transformations(Transformations::IDENTITY);
        let mut reader = decoder.read_info().map_err(|e| format!("PNG header: {e}"))?;
        let info = reader.info();
        let (width, height) = (info.width as usize, info.height as usize);
        check_pixels(width, height)?;
        let color = info.color_type;
        let depth = info.bit_depth;
        let palette: Option<Vec<u8>> = info.palette.as_ref().map(|p| p.to_vec());
        let size = reader.output_buffer_size().ok_or_else(|| "PNG image too large for memory".to_string())?;
        let mut buf = vec![0u8; size];
        let out = reader.next_frame(&mut buf).map_err(|e| {
            let msg = e.to_string();
            if msg.to_lowercase().contains("eof") || msg.contains("end of") {
                format!("image file is truncated ({msg})")
            } else {
                format!("PNG data: {msg}")
            }
        })?;
        let line = out.line_size;
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            let row = &buf[y * line..(y + 1) * line];
            convert_row(row, width, color, depth, palette.as_deref(), &mut rgb)?;
        }
        Ok(RgbImage { width, height, data: rgb })
    }

    /// Sample `i` of a packed row of `bits`-bit samples (1, 2 or 4), big-endian bit order.
    #[inline]
    fn packed(row: &[u8], i: usize, bits: usize) -> u8 {
        let per_byte = 8 / bits;
        let byte = row[i / per_byte];
        let shift = 8 - bits * (i % per_byte + 1);
        (byte >> shift) & ((1u16 << bits) - 1) as u8
    }

    fn convert_row(
        row: &[u8],
        width: usize,
        color: ColorType,
        depth: BitDepth,
        palette: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        let bits = depth as usize;
        match (color, depth) {
            // PIL mode "1": 0 -> 0, 1 -> 255. L;2 and L;4 scale by 0x55 and 0x11.
            (ColorType::Grayscale, BitDepth::One | BitDepth::Two | BitDepth::Four) => {
                let scale = 255 / ((1u16 << bits) - 1) as u8;
                for x in 0..width {
                    let v = packed(row, x, bits) * scale;
                    out.extend_from_slice(&[v, v, v]);
                }
            }
            (ColorType::Grayscale, BitDepth::Eight) => {
                for &v in &row[..width] {
                    out.extend_from_slice(&[v, v, v]);
                }
            }
            // PIL mode "I;16" -> RGB saturates: values above 255 become 255 (Convert.c I16_RGB).
            (ColorType::Grayscale, BitDepth::Sixteen) => {
                for s in row[..width * 2].chunks_exact(2) {
                    let v = u16::from_be_bytes([s[0], s[1]]).min(255) as u8;
                    out.extend_from_slice(&[v, v, v]);
                }
            }
            (ColorType::GrayscaleAlpha, BitDepth::Eight) => {
                for s in row[..width * 2].chunks_exact(2) {
                    out.extend_from_slice(&[s[0], s[0], s[0]]);
                }
            }
            // "LA;16B" unpacks to RGBA keeping the high bytes.
            (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => {
                for s in row[..width * 4].chunks_exact(4) {
                    out.extend_from_slice(&[s[0], s[0], s[0]]);
                }
            }
            (ColorType::Rgb, BitDepth::Eight) => out.extend_from_slice(&row[..width * 3]),
            // "RGB;16B": high byte of each sample.
            (ColorType::Rgb, BitDepth::Sixteen) => {
                for s in row[..width * 6].chunks_exact(6) {
                    out.extend_from_slice(&[s[0], s[2], s[4]]);
                }
            }
            // RGBA -> RGB drops alpha, no blending.
            (ColorType::Rgba, BitDepth::Eight) => {
                for s in row[..width * 4].chunks_exact(4) {
                    out.extend_from_slice(&s[..3]);
                }
            }
            (ColorType::Rgba, BitDepth::Sixteen) => {
                for s in row[..width * 8].chunks_exact(8) {
                    out.extend_from_slice(&[s[0], s[2], s[4]]);
                }
            }
            (ColorType::Indexed, _) => {
                let pal = palette.ok_or_else(|| "palette PNG without PLTE chunk".to_string())?;
                for x in 0..width {
                    let i = if bits == 8 { row[x] } else { packed(row, x, bits) } as usize;
                    // Entries past the end of PLTE read as black.
                    match pal.get(i * 3..i * 3 + 3) {
                        Some(rgb) => out.extend_from_slice(rgb),
                        None => out.extend_from_slice(&[0, 0, 0]),
                    }
                }
            }
            (c, d) => return Err(format!("unsupported PNG color type {c:?} with bit depth {d:?}")),
        }
        Ok(())
    }
}
