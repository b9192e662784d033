//! Decoding and preprocessing against PIL / torchvision / open_clip.
//!
//! Fixtures come from `tools/make_preprocess_fixtures.py` (Pillow 13, libjpeg-turbo 3.2,
//! torchvision, open_clip): small generated images with PIL's decode of each, and for the
//! coco128 photos (read from `../shared/data/coco128/train2017`) CRC-32s of PIL's decode, of
//! PIL resizes and of whole reference pipelines. No Python at test time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labelfree::data::decode::{decode_image_bytes, decode_image_file, pil_cmyk_to_rgb, RgbImage};
use labelfree::data::transforms::{
    center_crop, interpolate_bilinear_chw, interpolate_nearest_chw, resize, shorter_side_size, to_chw_normalized,
    Interpolation, NormArith, Normalize, Transform, CLIP_NORM, IMAGENET_NORM, IMAGENET_NORM_NUMPY,
};
use labelfree::Error;
use safetensors::SafeTensors;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn photo_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("NOTE: {} not found: coco128 photo checks skipped", d.display());
        None
    }
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest.json parses")
}

fn tensors_bytes() -> Vec<u8> {
    std::fs::read(fixture_dir().join("decoded.safetensors")).expect("decoded.safetensors")
}

fn tensor_f32(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (v, t.shape().to_vec())
}

/// zlib's CRC-32 (the fixtures hash raw bytes with `zlib.crc32`).
fn crc32(bytes: &[u8]) -> String {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    format!("{:08x}", c ^ 0xFFFF_FFFF)
}

fn crc_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    crc32(&bytes)
}

fn interp(name: &str) -> Interpolation {
    name.parse().expect("interpolation name")
}

fn transform_from_spec(spec: &Value) -> Transform {
    let norm = |v: &Value| match v.as_str() {
        Some("clip") => CLIP_NORM,
        Some("imagenet") => IMAGENET_NORM,
        Some("imagenet_numpy") => IMAGENET_NORM_NUMPY,
        other => panic!("unknown norm {other:?}"),
    };
    let n = |k: &str| spec[k].as_u64().expect("number") as usize;
    match spec["kind"].as_str() {
        Some("clip_center_crop") => Transform::ClipCenterCrop { size: n("size") },
        Some("square_resize") => Transform::SquareResize {
            size: n("size"),
            interp: interp(spec["interp"].as_str().expect("interp")),
            norm: norm(&spec["norm"]),
        },
        Some("patch_multiple") => Transform::PatchMultiple {
            patch: n("patch"),
            interp: interp(spec["interp"].as_str().expect("interp")),
            norm: norm(&spec["norm"]),
        },
        other => panic!("unknown transform kind {other:?}"),
    }
}

fn decoded_generated(name: &str) -> RgbImage {
    decode_image_file(&fixture_dir().join("generated").join(name)).expect("decodes")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn generated_images_decode_exactly_like_pil() {
    let m = manifest();
    let bytes = tensors_bytes();
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut checked = 0;
    for e in m["generated"].as_array().expect("generated") {
        let name = e["file"].as_str().expect("file");
        if e["expect"] != "ok" {
            continue;
        }
        let img = decoded_generated(name);
        let t = st.tensor(&format!("decoded/{name}")).expect("reference decode");
        assert_eq!(t.shape(), &[img.height, img.width, 3], "{name}: shape");
        let differing = t.data().iter().zip(&img.data).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{name} (PIL mode {}): {differing} values differ", e["pil_mode"]);
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} generated images checked");
}

#[test]
fn broken_files_are_errors_with_a_reason() {
    let m = manifest();
    let mut checked = 0;
    for e in m["generated"].as_array().expect("generated") {
        if e["expect"] != "error" {
            continue;
        }
        let name = e["file"].as_str().expect("file");
        match decode_image_file(&fixture_dir().join("generated").join(name)) {
            Err(Error::Image { path, reason }) => {
                assert!(path.ends_with(name), "{path}");
                assert!(!reason.is_empty());
                eprintln!("{name}: {reason}   [PIL: {}]", e["pil_error"].as_str().unwrap_or(""));
            }
            Err(other) => panic!("{name}: unexpected error kind {other}"),
            Ok(img) => panic!("{name}: decoded as {img:?}, PIL says {}", e["pil_error"]),
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn specific_failure_reasons() {
    let reason = |r: labelfree::Result<RgbImage>| match r {
        Err(Error::Image { reason, .. }) => reason,
        other => panic!("expected an image error, got {other:?}"),
    };
    let dir = fixture_dir().join("generated");
    assert!(reason(decode_image_bytes(&[], "x")).contains("empty"));
    assert!(reason(decode_image_file(&dir.join("does_not_exist.jpg"))).contains("cannot read"));
    assert!(reason(decode_image_file(&dir.join("bad_text.png"))).contains("not a JPEG or PNG"));
    assert!(reason(decode_image_file(&dir.join("bad_truncated_half.jpg"))).contains("truncated"));
    assert!(reason(decode_image_file(&dir.join("bad_missing_eoi.jpg"))).contains("truncated"));
    assert!(reason(decode_image_file(&dir.join("bad_truncated_prog.jpg"))).contains("truncated"));
    assert!(reason(decode_image_file(&dir.join("bad_bomb.jpg"))).contains("decompression bomb"));
    assert!(reason(decode_image_file(&dir.join("bad_bomb.png"))).contains("decompression bomb"));
}

/// Every prefix-truncation and a sweep of corruptions of valid files: errors or images, never
/// a panic; truncations are always errors.
#[test]
fn damaged_files_never_panic() {
    let dir = fixture_dir().join("generated");
    for name in
        ["jpeg_420.jpg", "jpeg_420_prog.jpg", "jpeg_cmyk.jpg", "png_rgb8.png", "png_p4.png", "png_rgb8_interlaced.png"]
    {
        let data = std::fs::read(dir.join(name)).expect("fixture");
        let step = (data.len() / 97).max(1);
        for cut in (0..data.len() - 2).step_by(step) {
            let r = decode_image_bytes(&data[..cut], name);
            assert!(r.is_err(), "{name} cut at {cut}/{} decoded", data.len());
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            let mut d = data.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = 2 + (state as usize) % (d.len() - 2);
                d[i] = (state >> 40) as u8;
            }
            let _ = decode_image_bytes(&d, name); // must return, Ok or Err
        }
    }
    let mut state = 7u64;
    for len in [1usize, 2, 3, 4, 10, 100, 5000] {
        let mut d: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        assert!(decode_image_bytes(&d, "garbage").is_err());
        // Garbage behind valid signatures.
        d.splice(0..0, [0xFF, 0xD8, 0xFF]);
        assert!(decode_image_bytes(&d, "garbage.jpg").is_err());
        d.splice(0..3, *b"\x89PNG\r\n\x1a\n");
        assert!(decode_image_bytes(&d, "garbage.png").is_err());
    }
}

#[test]
fn exif_orientation_is_not_applied() {
    let plain = decoded_generated("jpeg_444.jpg");
    let rotated_tag = decoded_generated("jpeg_exif_orient6.jpg");
    assert_eq!((rotated_tag.width, rotated_tag.height), (plain.width, plain.height));
}

#[test]
fn cmyk_conversion_matches_pil_formula() {
    // Spot values of PIL's cmyk2rgb (checked exhaustively over (c, k) against Pillow 13).
    assert_eq!(pil_cmyk_to_rgb(0, 0, 0, 0), [255, 255, 255]);
    assert_eq!(pil_cmyk_to_rgb(255, 255, 255, 255), [0, 0, 0]);
    assert_eq!(pil_cmyk_to_rgb(128, 64, 0, 100), [77, 116, 155]);
}

#[test]
fn coco128_photos_decode_exactly_like_pil() {
    let Some(dir) = photo_dir() else { return };
    let m = manifest();
    let photos = m["photos"].as_array().expect("photos");
    assert_eq!(photos.len(), 128);
    let mut bad = Vec::new();
    for p in photos {
        let name = p["file"].as_str().expect("file");
        let img = decode_image_file(&dir.join(name)).expect("photo decodes");
        assert_eq!(img.width as u64, p["width"].as_u64().expect("w"), "{name}");
        assert_eq!(img.height as u64, p["height"].as_u64().expect("h"), "{name}");
        if crc32(&img.data) != p["crc"].as_str().expect("crc") {
            bad.push(name.to_string());
        }
    }
    assert!(bad.is_empty(), "{} of 128 photos differ from PIL: {bad:?}", bad.len());
}

// ---------------------------------------------------------------------------------------------
// Resize, crop, pipelines
// ---------------------------------------------------------------------------------------------

#[test]
fn resize_matches_pil_on_coco128() {
    let Some(dir) = photo_dir() else { return };
    let m = manifest();
    let mut bad = Vec::new();
    let mut n = 0;
    for p in m["photos"].as_array().expect("photos") {
        let name = p["file"].as_str().expect("file");
        let img = decode_image_file(&dir.join(name)).expect("photo decodes");
        for r in p["resize"].as_array().expect("resize") {
            let (mode, w, h) = (r[0].as_str().expect("mode"), r[1].as_u64().expect("w"), r[2].as_u64().expect("h"));
            let out = resize(&img, w as usize, h as usize, interp(mode));
            assert_eq!((out.width, out.height), (w as usize, h as usize));
            if crc32(&out.data) != r[3].as_str().expect("crc") {
                bad.push(format!("{name} {mode} {w}x{h}"));
            }
            n += 1;
        }
    }
    assert!(n >= 128 * 21, "{n}");
    assert!(bad.is_empty(), "{} of {n} resizes differ from PIL: {:?}", bad.len(), &bad[..bad.len().min(20)]);
}

#[test]
fn resize_matches_pil_on_small_images() {
    let m = manifest();
    let mut bad = Vec::new();
    for r in m["small_resizes"].as_array().expect("small_resizes") {
        let img = decoded_generated(r["file"].as_str().expect("file"));
        let (w, h) = (r["w"].as_u64().expect("w") as usize, r["h"].as_u64().expect("h") as usize);
        let mode = r["interp"].as_str().expect("interp");
        let out = resize(&img, w, h, interp(mode));
        if crc32(&out.data) != r["crc"].as_str().expect("crc") {
            bad.push(format!("{} {mode} {w}x{h}", r["file"]));
        }
    }
    assert!(bad.is_empty(), "differ from PIL: {bad:?}");
}

#[test]
fn center_crop_and_resize_sizes_match_torchvision() {
    let m = manifest();
    for c in m["center_crops"].as_array().expect("center_crops") {
        let img = decoded_generated(c["file"].as_str().expect("file"));
        let (w, h) = (c["w"].as_u64().expect("w") as usize, c["h"].as_u64().expect("h") as usize);
        let out = center_crop(&img, w, h);
        assert_eq!(
            crc32(&out.data),
            c["crc"].as_str().expect("crc"),
            "center crop {w}x{h} of {}x{}",
            img.width,
            img.height
        );
    }
    for s in m["shorter_side"].as_array().expect("shorter_side") {
        let g = |k: &str| s[k].as_u64().expect("n") as usize;
        let out = shorter_side_size(g("w"), g("h"), g("size"));
        let want = (s["out"][0].as_u64().expect("w") as usize, s["out"][1].as_u64().expect("h") as usize);
        assert_eq!(out, want, "Resize({}) of {}x{}", g("size"), g("w"), g("h"));
    }
}

#[test]
fn pipelines_match_reference_bit_for_bit_on_coco128() {
    let Some(dir) = photo_dir() else { return };
    let m = manifest();
    let specs: BTreeMap<String, Transform> = m["pipelines"]
        .as_object()
        .expect("pipelines")
        .iter()
        .map(|(k, v)| (k.clone(), transform_from_spec(v)))
        .collect();
    let mut bad = Vec::new();
    let mut n = 0;
    for p in m["photos"].as_array().expect("photos") {
        let name = p["file"].as_str().expect("file");
        let img = decode_image_file(&dir.join(name)).expect("photo decodes");
        for (pname, t) in &specs {
            let r = &p["pipelines"][pname];
            let u8_img = t.apply_u8(&img);
            let (data, h, w) = t.apply(&img);
            assert_eq!(
                (h as u64, w as u64),
                (r["h"].as_u64().expect("h"), r["w"].as_u64().expect("w")),
                "{pname} {name}"
            );
            if crc32(&u8_img.data) != r["u8_crc"].as_str().expect("crc") {
                bad.push(format!("{pname} {name} (u8 geometry)"));
            } else if crc_f32(&data) != r["f32_crc"].as_str().expect("crc") {
                bad.push(format!("{pname} {name} (f32 normalisation)"));
            }
            n += 1;
        }
    }
    assert!(bad.is_empty(), "{} of {n} pipeline outputs differ: {:?}", bad.len(), &bad[..bad.len().min(20)]);
}

#[test]
fn pipelines_full_tensors_within_1e6() {
    let m = manifest();
    let bytes = tensors_bytes();
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let check = |t: &Transform, img: &RgbImage, key: &str| {
        let (want, shape) = tensor_f32(&st, key);
        let (got, h, w) = t.apply(img);
        assert_eq!(shape, vec![3, h, w], "{key}");
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "{key}: max abs diff {d}");
    };
    let small = m["small_pipelines"].as_object().expect("small_pipelines");
    if let Some(dir) = photo_dir() {
        for photo in m["full_tensor_photos"].as_array().expect("photos") {
            let photo = photo.as_str().expect("name");
            let img = decode_image_file(&dir.join(photo)).expect("decodes");
            for (pname, spec) in small {
                check(&transform_from_spec(spec), &img, &format!("pipeline/{pname}/{photo}"));
            }
        }
    }
    let t = transform_from_spec(&m["pipelines"]["tagclip_16"]);
    assert_eq!(t, Transform::TAGCLIP);
    check(&t, &decoded_generated("jpeg_444.jpg"), "pipeline/tagclip_16/jpeg_444.jpg");
}

#[test]
fn normalisation_arithmetic() {
    let img = RgbImage::from_fn(16, 16, |x, y| [(x * 16 + y) as u8, (255 - x * 16 - y) as u8, (x * y) as u8]);
    let t = to_chw_normalized(&img, &CLIP_NORM);
    let plane = 256;
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let want = (px[c] as f32 / 255.0 - CLIP_NORM.mean[c] as f32) / CLIP_NORM.std[c] as f32;
            assert_eq!(t[c * plane + i].to_bits(), want.to_bits());
        }
    }
    let numpy = Normalize { arith: NormArith::NumpyF64, ..IMAGENET_NORM };
    assert_eq!(numpy, IMAGENET_NORM_NUMPY);
    let tab = numpy.table(1);
    assert_eq!(tab[200], ((200.0f64 / 255.0 - 0.456) / 0.224) as f32);
}

#[test]
fn describe_is_stable() {
    assert_eq!(
        Transform::ClipCenterCrop { size: 224 }.describe(),
        "clip_center_crop(size=224,interp=bicubic,mean=[0.48145466,0.4578275,0.40821073],\
         std=[0.26862954,0.26130258,0.27577711],f32)"
    );
    assert_eq!(
        Transform::CCD_CLIP.describe(),
        "square_resize(size=640,interp=bilinear,mean=[0.485,0.456,0.406],std=[0.229,0.224,0.225],f64)"
    );
    assert_eq!(
        Transform::TAGCLIP.describe(),
        "patch_multiple(patch=16,interp=bicubic,mean=[0.48145466,0.4578275,0.40821073],\
         std=[0.26862954,0.26130258,0.27577711],f32)"
    );
    assert_eq!(Transform::TAGCLIP.output_hw(61, 45), (48, 64));
}

#[test]
fn torch_interpolate_matches() {
    let m = manifest();
    let bytes = tensors_bytes();
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    for c in m["interpolate"].as_array().expect("interpolate") {
        let id = c["id"].as_u64().expect("id");
        let g = |k: &str| c[k].as_u64().expect("n") as usize;
        let (x, _) = tensor_f32(&st, &format!("interp/{id}/in"));
        let (want, shape) = tensor_f32(&st, &format!("interp/{id}/out"));
        assert_eq!(shape, vec![g("c"), g("out_h"), g("out_w")]);
        let got = match c["mode"].as_str() {
            Some("bilinear") => interpolate_bilinear_chw(&x, g("c"), g("h"), g("w"), g("out_h"), g("out_w")),
            Some("nearest") => interpolate_nearest_chw(&x, g("c"), g("h"), g("w"), g("out_h"), g("out_w")),
            other => panic!("mode {other:?}"),
        }
        .expect("shapes agree");
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "interpolate case {id} ({}): max abs diff {d}", c["mode"]);
    }
    assert!(interpolate_bilinear_chw(&[0.0; 5], 1, 2, 3, 4, 4).is_err());
}
