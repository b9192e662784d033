//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labelfree::models::clip::weights::load_safetensors;
use labelfree::Tensor;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_io(path: &Path) -> BTreeMap<String, Tensor> {
    load_safetensors(path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display())).0
}

/// max |a - b| / max |b|: the relative error of a whole tensor, robust to entries near zero.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Per-row ||a - b|| / ||b||, worst row.
pub fn row_rel_err(a: &[f32], b: &[f32], cols: usize) -> f32 {
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let d: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt();
            let n: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt().max(1e-12);
            d / n
        })
        .fold(0.0, f32::max)
}

pub fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.shape(), b.shape(), "{name}: shapes differ");
    let e = rel_err(a.f32s().unwrap(), b.f32s().unwrap());
    eprintln!("{name}: rel err {e:.3e}");
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.1e}");
}

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("labelfree-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path`, creating its folders.
pub fn write(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Writes a w x h 8-bit RGB PNG whose pixels depend on `seed`.
pub fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    let data: Vec<u8> =
        (0..w * h * 3).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed.wrapping_mul(67))).collect();
    wr.write_image_data(&data).unwrap();
}

/// Copies a file of tests/fixtures/preprocess/generated to `dest`.
pub fn copy_sample(name: &str, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(fixtures().join("preprocess/generated").join(name), dest).unwrap();
}

/// A tiny random CLIP (ViT: width 64, 2 layers, patch 8, image 32; text: width 64, 2 layers)
/// with CLIP's full 49,408-token vocabulary, so real class prompts tokenise.
/// A random image-only CLIP with a tiny ModifiedResNet tower: attention-pool head dim
/// 16 * 32 / 8 = 64, one the attention kernel has; a 32-pixel input ends in the configured
/// 1 x 1 feature grid.
pub fn tiny_clip_resnet(seed: u64) -> labelfree::models::clip::ClipModel {
    use labelfree::models::clip::config::ResNetConfig;
    use labelfree::models::clip::{ClipConfig, ClipModel, VisionConfig};
    let config = ClipConfig {
        vision: VisionConfig::ResNet(ResNetConfig {
            layers: [1, 1, 1, 1],
            width: 16,
            heads: 8,
            grid: 1,
            output_dim: 32,
        }),
        text: None,
        act: labelfree::ops::activation::Activation::QuickGelu,
    };
    ClipModel::random_from_config(config, seed)
}

pub fn tiny_clip(seed: u64) -> labelfree::models::clip::ClipModel {
    use labelfree::models::clip::config::{TextConfig, VitConfig};
    use labelfree::models::clip::{ClipConfig, ClipModel, VisionConfig};
    let config = ClipConfig {
        vision: VisionConfig::Vit(VitConfig { width: 64, layers: 2, heads: 2, patch: 8, grid: 4, output_dim: 32 }),
        text: Some(TextConfig { width: 64, layers: 2, heads: 2, context: 77, vocab: 49408, output_dim: 32 }),
        act: labelfree::ops::activation::Activation::QuickGelu,
    };
    ClipModel::random_from_config(config, seed)
}

/// The tiny open_clip ViT fixture with its 1000-token text vocabulary widened to CLIP's
/// 49,408 (random rows), written to `dir`: a weights file real prompts tokenise for.
pub fn tiny_full_vocab_weights(dir: &Path) -> PathBuf {
    use labelfree::models::clip::weights::save_safetensors;
    let (mut map, meta) = load_safetensors(&fixtures().join("models/vit_openclip_quickgelu.safetensors")).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    map.insert("token_embedding.weight".into(), Tensor::randn(&[49408, 64], 0.02, &mut rng));
    let pairs: Vec<(&str, &Tensor)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let weights = dir.join("tiny_full_vocab.safetensors");
    std::fs::write(&weights, save_safetensors(&pairs, &meta.into_iter().collect()).unwrap()).unwrap();
    weights
}

/// TagCLIP's tiny ViT fixture (patch 16, 224, 12 layers: what DMAR needs; width 32, output 32)
/// with the text tower of the tiny open_clip fixture (width 64, 2 layers, output 32) and CLIP's
/// full 49,408-token vocabulary (random rows), written to `dir`: weights a whole `tagclip` run
/// (class text included) loads, fast enough for a test over coco128.
pub fn tiny_tagclip_weights(dir: &Path) -> PathBuf {
    use labelfree::models::clip::weights::save_safetensors;
    let (mut map, mut meta) = load_safetensors(&fixtures().join("tagclip/tiny.safetensors")).unwrap();
    let (text, text_meta) = load_safetensors(&fixtures().join("models/vit_openclip_quickgelu.safetensors")).unwrap();
    for (k, v) in text {
        if !k.starts_with("visual.") && k != "logit_scale" {
            map.insert(k, v);
        }
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    map.insert("token_embedding.weight".into(), Tensor::randn(&[49408, 64], 0.02, &mut rng));
    meta.insert("text_heads".into(), text_meta["text_heads"].clone());
    let pairs: Vec<(&str, &Tensor)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let weights = dir.join("tiny_tagclip.safetensors");
    std::fs::write(&weights, save_safetensors(&pairs, &meta.into_iter().collect()).unwrap()).unwrap();
    weights
}

/// Kernels are needed to simulate; a build without nvcc skips (CI builds with them).
pub fn kernels_or_skip() -> bool {
    if labelfree::device::cuda::has_kernels() {
        return true;
    }
    assert!(
        !std::env::var("LABELFREE_REQUIRE_KERNELS").is_ok_and(|v| v == "1"),
        "LABELFREE_REQUIRE_KERNELS=1 but this build has no kernels"
    );
    eprintln!("skipped: this build has no CUDA kernels (no nvcc at build time)");
    false
}
