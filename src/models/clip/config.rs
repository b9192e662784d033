//! CLIP architectures, read from the weights' shapes (or named, for random-weight models).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::clip::weights::Params;
use crate::ops::activation::Activation;

#[derive(Clone, Debug, Serialize)]
pub struct VitConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch: usize,
    /// Native positional grid side (image_size / patch).
    pub grid: usize,
    pub output_dim: usize,
}

impl VitConfig {
    /// FLOPs of one image at h x w (2 per multiply-add), for roofline figures and check costs.
    pub fn flops_per_image(&self, h: usize, w: usize) -> f64 {
        let (c, p) = (self.width as f64, self.patch);
        let n = ((h / p) * (w / p)) as f64;
        let t = n + 1.0;
        let patch = 2.0 * n * c * (3 * p * p) as f64;
        let per_layer = 2.0 * t * c * (3.0 * c + c + 8.0 * c) + 2.0 * 2.0 * t * t * c;
        patch + self.layers as f64 * per_layer + 2.0 * c * self.output_dim as f64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ResNetConfig {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Stem width; stage s has width * 2^s planes and 4x that many output channels.
    pub width: usize,
    pub heads: usize,
    /// Native attention-pool grid side (image_size / 32).
    pub grid: usize,
    pub output_dim: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
    pub vocab: usize,
    pub output_dim: usize,
}

#[derive(Clone, Debug, Serialize)]
pub enum VisionConfig {
    Vit(VitConfig),
    ResNet(ResNetConfig),
}

#[derive(Clone, Debug, Serialize)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: Option<TextConfig>,
    pub act: Activation,
}

impl VisionConfig {
    pub fn image_size(&self) -> usize {
        match self {
            VisionConfig::Vit(v) => v.grid * v.patch,
            VisionConfig::ResNet(r) => r.grid * 32,
        }
    }
    pub fn output_dim(&self) -> usize {
        match self {
            VisionConfig::Vit(v) => v.output_dim,
            VisionConfig::ResNet(r) => r.output_dim,
        }
    }
}

/// The open_clip names the engine knows, with the act their open_clip config uses.
pub const KNOWN_ARCHS: &[&str] =
    &["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"];

fn text_cfg(width: usize, output_dim: usize) -> TextConfig {
    TextConfig { width, layers: 12, heads: width / 64, context: 77, vocab: 49408, output_dim }
}

impl ClipConfig {
    /// A named open_clip architecture (a `-quickgelu` suffix selects QuickGELU, as in open_clip).
    pub fn named(name: &str) -> Result<ClipConfig> {
        let (base, act) = match name.strip_suffix("-quickgelu") {
            Some(b) => (b, Activation::QuickGelu),
            None => (name, Activation::Gelu),
        };
        let vit = |width, layers, patch, image: usize, out| {
            VisionConfig::Vit(VitConfig {
                width,
                layers,
                heads: width / 64,
                patch,
                grid: image / patch,
                output_dim: out,
            })
        };
        let rn = |layers, width: usize, image: usize, out| {
            VisionConfig::ResNet(ResNetConfig {
                layers,
                width,
                heads: width * 32 / 64,
                grid: image / 32,
                output_dim: out,
            })
        };
        let (vision, text) = match base {
            "ViT-B-32" => (vit(768, 12, 32, 224, 512), text_cfg(512, 512)),
            "ViT-B-16" => (vit(768, 12, 16, 224, 512), text_cfg(512, 512)),
            "ViT-L-14" => (vit(1024, 24, 14, 224, 768), text_cfg(768, 768)),
            "ViT-L-14-336" => (vit(1024, 24, 14, 336, 768), text_cfg(768, 768)),
            "RN50" => (rn([3, 4, 6, 3], 64, 224, 1024), text_cfg(512, 1024)),
            "RN101" => (rn([3, 4, 23, 3], 64, 224, 512), text_cfg(512, 512)),
            "RN50x4" => (rn([4, 6, 10, 6], 80, 288, 640), text_cfg(640, 640)),
            "RN50x16" => (rn([6, 8, 18, 8], 96, 384, 768), text_cfg(768, 768)),
            "RN50x64" => (rn([3, 15, 36, 10], 128, 448, 1024), text_cfg(1024, 1024)),
            _ => {
                return Err(Error::Weights(format!("unknown architecture `{name}`; known: {}", KNOWN_ARCHS.join(", "))))
            }
        };
        Ok(ClipConfig { vision, text: Some(text), act })
    }

    /// Reads the architecture from the shapes of the tensors. Head counts are not visible in
    /// shapes: they come from the metadata (`vision_heads`, `text_heads`) when present, else
    /// CLIP's rule (width / 64 for transformers, width * 32 / 64 for the ResNet pool).
    pub fn from_params(p: &Params, act: Activation) -> Result<ClipConfig> {
        let meta_usize = |k: &str| p.metadata.get(k).and_then(|v| v.parse::<usize>().ok());
        let count_blocks = |prefix: &str| {
            let mut n = 0;
            while p.contains(&format!("{prefix}{n}.ln_1.weight")) {
                n += 1;
            }
            n
        };
        let vision = if p.contains("visual.class_embedding") {
            let conv = p.shape_of("visual.conv1.weight")?.to_vec();
            if conv.len() != 4 || conv[1] != 3 || conv[2] != conv[3] {
                return Err(Error::WeightShape {
                    name: "visual.conv1.weight".into(),
                    expected: vec![
                        conv.first().copied().unwrap_or(0),
                        3,
                        conv.get(2).copied().unwrap_or(0),
                        conv.get(2).copied().unwrap_or(0),
                    ],
                    found: conv,
                });
            }
            let (width, patch) = (conv[0], conv[2]);
            let pos = p.shape_of("visual.positional_embedding")?;
            let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
            if grid * grid + 1 != pos[0] {
                return Err(Error::Weights(format!(
                    "visual.positional_embedding has {} rows: not a square grid plus the class position",
                    pos[0]
                )));
            }
            let layers = count_blocks("visual.transformer.resblocks.");
            let output_dim = p.shape_of("visual.proj")?[1];
            let heads = meta_usize("vision_heads").unwrap_or(width / 64).max(1);
            VisionConfig::Vit(VitConfig { width, layers, heads, patch, grid, output_dim })
        } else if p.contains("visual.layer1.0.conv1.weight") {
            let mut layers = [0usize; 4];
            for (s, l) in layers.iter_mut().enumerate() {
                while p.contains(&format!("visual.layer{}.{}.conv1.weight", s + 1, *l)) {
                    *l += 1;
                }
            }
            let width = p.shape_of("visual.conv3.weight")?[0];
            let pos = p.shape_of("visual.attnpool.positional_embedding")?;
            let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
            let output_dim = p.shape_of("visual.attnpool.c_proj.weight")?[0];
            let heads = meta_usize("vision_heads").unwrap_or(width * 32 / 64).max(1);
            VisionConfig::ResNet(ResNetConfig { layers, width, heads, grid, output_dim })
        } else {
            return Err(Error::Weights(
                "no image tower found: expected `visual.class_embedding` (ViT) or `visual.layer1.0.conv1.weight` \
                 (ModifiedResNet), or their Hugging Face names"
                    .into(),
            ));
        };
        let text = if p.contains("token_embedding.weight") {
            let tok = p.shape_of("token_embedding.weight")?;
            let (vocab, width) = (tok[0], tok[1]);
            let context = p.shape_of("positional_embedding")?[0];
            let output_dim = p.shape_of("text_projection")?[1];
            let layers = count_blocks("transformer.resblocks.");
            let heads = meta_usize("text_heads").unwrap_or(width / 64).max(1);
            Some(TextConfig { width, layers, heads, context, vocab, output_dim })
        } else {
            None
        };
        Ok(ClipConfig { vision, text, act })
    }

    /// The open_clip name of this architecture, when it is one of the known ones.
    pub fn arch_name(&self) -> String {
        for name in KNOWN_ARCHS {
            if let Ok(k) = ClipConfig::named(name) {
                let same = match (&k.vision, &self.vision) {
                    (VisionConfig::Vit(a), VisionConfig::Vit(b)) => {
                        (a.width, a.layers, a.patch, a.grid) == (b.width, b.layers, b.patch, b.grid)
                    }
                    (VisionConfig::ResNet(a), VisionConfig::ResNet(b)) => {
                        (a.layers, a.width, a.grid) == (b.layers, b.width, b.grid)
                    }
                    _ => false,
                };
                if same {
                    return name.to_string();
                }
            }
        }
        match &self.vision {
            VisionConfig::Vit(v) => format!("ViT(width {}, {} layers, patch {})", v.width, v.layers, v.patch),
            VisionConfig::ResNet(r) => format!("ModifiedResNet(width {}, layers {:?})", r.width, r.layers),
        }
    }
}
