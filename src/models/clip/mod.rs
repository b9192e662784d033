//! CLIP: weights (both naming schemes), ViT, ModifiedResNet, text encoder, tokenizer, prompts.
//!
//! Each encoder has a CPU model (`vit.rs`, `resnet.rs`, `text.rs`, `transformer.rs`) and a CUDA
//! twin (`*_cuda.rs`), as llm.c's train_gpt2.c / .cu. The CPU module holds the architecture's
//! one loader and tensor-name list; the twin is built by uploading the loaded CPU model
//! (`from_cpu`), so both run the same weights, random ones included.

pub mod config;
pub mod prompts;
pub mod resnet;
pub mod resnet_cuda;
pub mod text;
pub mod text_cuda;
pub mod tokenizer;
pub mod transformer;
pub mod transformer_cuda;
pub mod vit;
pub mod vit_cuda;
pub mod weights;

use std::path::Path;

use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::similarity::l2_normalize_cpu;
use crate::tensor::Tensor;

pub use config::{ClipConfig, VisionConfig};
pub use resnet::ModifiedResNet;
pub use text::TextEncoder;
pub use vit::{VisionTransformer, VitRequest};
pub use weights::Params;

// One per loaded model: the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum VisionEncoder {
    Vit(VisionTransformer),
    ResNet(ModifiedResNet),
}

pub struct ClipModel {
    pub config: ClipConfig,
    /// open_clip's name when known, else a description.
    pub arch: String,
    pub visual: VisionEncoder,
    pub text: Option<TextEncoder>,
    /// The raw parameter: logits are scaled by exp(logit_scale).
    pub logit_scale: f32,
    /// True for random-weight models: their scores mean nothing.
    pub random: bool,
    /// Where the activation came from, for the run report.
    pub act_source: String,
    /// Set when nothing said which activation the weights use and QuickGELU was assumed: the
    /// warning to print, naming the flags that settle it.
    pub act_warning: Option<String>,
    /// The image tower on a GPU (`attach_cuda`): `encode_image` then runs there.
    pub cuda_visual: Option<CudaVisual>,
    /// The GPU tower's forward captured as a graph for the last input shape `encode_image` saw
    /// (each batch of that shape is one graph launch).
    image_graph: std::sync::Mutex<Option<ImageGraph>>,
}

/// An image tower on the GPU, with the dtype it computes in.
#[allow(clippy::large_enum_variant)]
pub enum CudaVisual {
    Vit(std::sync::Arc<vit_cuda::CudaVit>),
    ResNet(std::sync::Arc<resnet_cuda::CudaModifiedResNet>),
}

/// An image tower's forward captured for one input shape (`ClipModel::encode_image`).
// One per model, like `CudaVisual`: the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
enum ImageGraph {
    Vit(vit_cuda::CudaVitGraph),
    ResNet(resnet_cuda::CudaModifiedResNetGraph),
}

impl ImageGraph {
    fn input_shape(&self) -> &[usize] {
        match self {
            ImageGraph::Vit(g) => g.input_shape(),
            ImageGraph::ResNet(g) => g.input_shape(),
        }
    }

    fn run(&mut self, pixels: &[f32]) -> Result<&crate::device::cuda::CudaTensor> {
        match self {
            ImageGraph::Vit(g) => {
                g.set_pixels(pixels)?;
                g.replay()
            }
            ImageGraph::ResNet(g) => {
                g.set_pixels(pixels)?;
                g.replay()
            }
        }
    }
}

impl CudaVisual {
    /// The device the tower lives on.
    pub fn gpu(&self) -> &std::sync::Arc<crate::device::cuda::Gpu> {
        match self {
            CudaVisual::Vit(v) => v.gpu(),
            CudaVisual::ResNet(r) => r.gpu(),
        }
    }

    /// The dtype the tower computes in.
    pub fn dtype(&self) -> crate::device::cuda::DType {
        match self {
            CudaVisual::Vit(v) => v.dtype,
            CudaVisual::ResNet(r) => r.dtype,
        }
    }

    pub fn forward(&self, pixels: &crate::device::cuda::CudaTensor) -> Result<crate::device::cuda::CudaTensor> {
        match self {
            CudaVisual::Vit(v) => v.forward(pixels),
            CudaVisual::ResNet(r) => r.forward(pixels),
        }
    }
}

/// The activation of a checkpoint and where it came from: an explicit choice, else the file's
/// metadata, else a Hugging Face `config.json` beside it (`hidden_act`), else open_clip's
/// `open_clip_config.json` beside it (`model_cfg.quick_gelu`, false when absent, as open_clip
/// builds the model), else the open_clip architecture name given with `--arch` (open_clip's
/// rule: `ViT-B-16` is GELU, `ViT-B-16-quickgelu` QuickGELU), else QuickGELU (OpenAI's
/// checkpoints). The last case is a guess: `None` for the source.
fn resolve_activation(
    path: &Path,
    params: &Params,
    explicit: Option<Activation>,
    arch: Option<&str>,
) -> (Activation, Option<String>) {
    if let Some(a) = explicit {
        return (a, Some("--act".into()));
    }
    if let Some(a) = params.metadata.get("act").and_then(|s| Activation::parse(s)) {
        return (a, Some("weights metadata".into()));
    }
    let read_json = |name: &str| {
        let file = path.with_file_name(name);
        let json = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        json.map(|j| (file, j))
    };
    if let Some((file, json)) = read_json("config.json") {
        let act = json
            .pointer("/vision_config/hidden_act")
            .or_else(|| json.pointer("/hidden_act"))
            .and_then(|v| v.as_str())
            .and_then(Activation::parse);
        if let Some(a) = act {
            return (a, Some(format!("{}", file.display())));
        }
    }
    if let Some((file, json)) = read_json("open_clip_config.json") {
        if let Some(cfg) = json.get("model_cfg").and_then(|c| c.as_object()) {
            let quick = cfg.get("quick_gelu").and_then(|q| q.as_bool()).unwrap_or(false);
            let act = if quick { Activation::QuickGelu } else { Activation::Gelu };
            return (act, Some(format!("{} (model_cfg.quick_gelu: {quick})", file.display())));
        }
    }
    if let Some(cfg) = arch.and_then(|a| ClipConfig::named(a).ok()) {
        return (cfg.act, Some(format!("open_clip's config of --arch {}", arch.unwrap_or_default())));
    }
    (Activation::QuickGelu, None)
}

/// What to print when nothing said which activation a checkpoint of `arch` uses.
fn activation_warning(path: &Path, arch: &str) -> String {
    let fix = if ClipConfig::named(arch).is_ok() {
        format!("pass --arch {arch} (or --act gelu); --arch {arch}-quickgelu (or --act quick_gelu) confirms QuickGELU")
    } else {
        "pass --act gelu; --act quick_gelu confirms QuickGELU".to_string()
    };
    format!(
        "`{}` does not say which activation its transformers use (no `act` in its metadata, no config.json \
         or open_clip_config.json beside it): assuming QuickGELU, as OpenAI's CLIP. If it is an open_clip \
         model trained with GELU, {fix} and silences this warning",
        path.display()
    )
}

impl ClipModel {
    /// Loads a safetensors checkpoint; the architecture is read from its shapes. With
    /// `expect_arch`, a different architecture is an error.
    pub fn load(path: &Path, act: Option<Activation>, expect_arch: Option<&str>) -> Result<ClipModel> {
        let mut params = Params::load(path)?;
        // HF configs name their head counts; take them when the file does not.
        let hf_cfg = path.with_file_name("config.json");
        if let Ok(text) = std::fs::read_to_string(&hf_cfg) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                for (key, ptr) in [
                    ("vision_heads", "/vision_config/num_attention_heads"),
                    ("text_heads", "/text_config/num_attention_heads"),
                ] {
                    if let Some(n) = json.pointer(ptr).and_then(|v| v.as_u64()) {
                        params.metadata.entry(key.to_string()).or_insert(n.to_string());
                    }
                }
            }
        }
        let (act, act_source) = resolve_activation(path, &params, act, expect_arch);
        let config = ClipConfig::from_params(&params, act)?;
        let arch = config.arch_name();
        let act_warning = act_source.is_none().then(|| activation_warning(path, &arch));
        let act_source =
            act_source.unwrap_or_else(|| "assumed QuickGELU (nothing in or beside the weights says)".into());
        if let Some(want) = expect_arch {
            let want_base = want.strip_suffix("-quickgelu").unwrap_or(want);
            if want_base != arch {
                return Err(Error::Weights(format!(
                    "--arch {want} was given, but the weights in `{}` are {arch} (read from their shapes)",
                    path.display()
                )));
            }
        }
        let visual = match &config.vision {
            VisionConfig::Vit(v) => VisionEncoder::Vit(VisionTransformer::load(&mut params, v, act)?),
            VisionConfig::ResNet(r) => VisionEncoder::ResNet(ModifiedResNet::load(&mut params, r)?),
        };
        let text = match &config.text {
            Some(t) => Some(TextEncoder::load(&mut params, t, act)?),
            None => None,
        };
        let logit_scale =
            if params.contains("logit_scale") { params.take("logit_scale", &[])?[0] } else { (1.0f32 / 0.07).ln() };
        params.finish()?;
        Ok(ClipModel {
            config,
            arch,
            visual,
            text,
            logit_scale,
            random: false,
            act_source,
            act_warning,
            cuda_visual: None,
            image_graph: Default::default(),
        })
    }

    /// A random-weight model of a named open_clip architecture (for demos and benchmarks).
    pub fn random(arch: &str, seed: u64) -> Result<ClipModel> {
        let mut model = ClipModel::random_from_config(ClipConfig::named(arch)?, seed);
        model.arch = arch.to_string();
        model.act_source = "the architecture's open_clip config".into();
        Ok(model)
    }

    /// A random-weight model of any configuration (e.g. a tiny one with CLIP's full
    /// vocabulary, for tests of whole pipelines). Its `arch` is the configuration's description.
    pub fn random_from_config(config: ClipConfig, seed: u64) -> ClipModel {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let act = config.act;
        let visual = match &config.vision {
            VisionConfig::Vit(v) => VisionEncoder::Vit(VisionTransformer::random(v, act, &mut rng)),
            VisionConfig::ResNet(r) => VisionEncoder::ResNet(ModifiedResNet::random(r, &mut rng)),
        };
        let text = config.text.as_ref().map(|t| TextEncoder::random(t, act, &mut rng));
        ClipModel {
            arch: config.arch_name(),
            config,
            visual,
            text,
            logit_scale: (100.0f32).ln(),
            random: true,
            act_source: "the configuration".into(),
            act_warning: None,
            cuda_visual: None,
            image_graph: Default::default(),
        }
    }

    /// Native input side in pixels.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size()
    }

    /// The input granularity: the patch for a ViT, 32 for a ModifiedResNet.
    pub fn input_multiple(&self) -> usize {
        match &self.visual {
            VisionEncoder::Vit(v) => v.cfg.patch,
            VisionEncoder::ResNet(_) => 32,
        }
    }

    /// Uploads this model's image tower onto `gpu` in `dtype`: the CPU tower's weights as they
    /// were loaded (or drawn, for a random model), so both towers are the same model.
    /// `encode_image` then runs on the GPU; the CPU tower stays (TagCLIP's CPU paths use it).
    pub fn attach_cuda(
        &mut self,
        gpu: &std::sync::Arc<crate::device::cuda::Gpu>,
        dtype: crate::device::cuda::DType,
    ) -> Result<()> {
        *self.image_graph.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.cuda_visual = Some(match &self.visual {
            VisionEncoder::Vit(v) => CudaVisual::Vit(std::sync::Arc::new(vit_cuda::CudaVit::from_cpu(gpu, v, dtype)?)),
            VisionEncoder::ResNet(r) => {
                CudaVisual::ResNet(std::sync::Arc::new(resnet_cuda::CudaModifiedResNet::from_cpu(gpu, r, dtype)?))
            }
        });
        Ok(())
    }

    /// pixels (B, 3, H, W) -> (B, D), unnormalised (open_clip's encode_image). On a GPU the
    /// tower replays its forward captured once per input shape (`capture_forward`: the same
    /// launches as the eager forward, so the same bits).
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        if let Some(cv) = &self.cuda_visual {
            if let Some(out) = self.encode_image_graph(cv, pixels)? {
                return Ok(out);
            }
            let x = crate::device::cuda::CudaTensor::from_tensor(cv.gpu(), pixels, cv.dtype())?;
            return cv.forward(&x)?.to_tensor(cv.gpu());
        }
        match &self.visual {
            VisionEncoder::Vit(v) => Ok(v.forward(pixels, &VitRequest::default())?.pooled),
            VisionEncoder::ResNet(r) => Ok(r.forward(pixels, false)?.pooled),
        }
    }

    /// The input shape of the forward graph `encode_image` holds now, if any.
    pub fn image_graph_shape(&self) -> Option<Vec<usize>> {
        self.image_graph.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|g| g.input_shape().to_vec())
    }

    /// `encode_image` through the cached graph of this input shape (captured when the shape
    /// changes). None where no graph can be captured (a launch recorder): the eager forward.
    fn encode_image_graph(&self, cv: &CudaVisual, pixels: &Tensor) -> Result<Option<Tensor>> {
        let &[b, c, h, w] = pixels.shape() else {
            return Err(Error::Shape(format!("encode_image: pixels {:?}, expected (B, 3, H, W)", pixels.shape())));
        };
        let mut slot = self.image_graph.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|g| g.input_shape() != [b, c, h, w]) {
            // The previous shape's buffers go before the new ones are allocated.
            *slot = None;
            let captured = match cv {
                CudaVisual::Vit(v) => v.capture_forward(b, h, w).map(ImageGraph::Vit),
                CudaVisual::ResNet(r) => r.capture_forward(b, h, w).map(ImageGraph::ResNet),
            };
            match captured {
                Ok(g) => *slot = Some(g),
                Err(Error::Skipped(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let Some(graph) = slot.as_mut() else { return Ok(None) };
        let widened;
        let data = match pixels.f32s() {
            Ok(v) => v,
            Err(_) => {
                widened = pixels.to_f32()?;
                widened.f32s()?
            }
        };
        Ok(Some(graph.run(data)?.to_tensor(cv.gpu())?))
    }

    pub fn text_encoder(&self) -> Result<&TextEncoder> {
        self.text.as_ref().ok_or_else(|| {
            Error::Weights("these weights have no text tower (token_embedding.weight is missing)".into())
        })
    }

    /// tokens (B, 77) -> (B, D), unnormalised.
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor> {
        self.text_encoder()?.forward(tokens)
    }

    /// exp(logit_scale), the multiplier of cosine similarities.
    pub fn logit_multiplier(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// One L2-normalised embedding per class: each template filled with the class name and
    /// encoded, each normalised, averaged, normalised again (CLIP's prompt ensemble; with one
    /// template, just the normalised embedding). (C, D). The prompts of all classes and
    /// templates go through the text tower together, in batches trimmed to their longest
    /// prompt ([`text::TextEncoder::forward_trimmed`]).
    pub fn class_embeddings(
        &self,
        tok: &tokenizer::ClipTokenizer,
        classes: &[String],
        templates: &[&str],
    ) -> Result<Tensor> {
        let text = self.text_encoder()?;
        let d = text.cfg.output_dim;
        if templates.is_empty() {
            return Err(Error::Tokenizer("no prompt template".into()));
        }
        // (C x templates) prompts, class-major.
        let prompts: Vec<String> =
            classes.iter().flat_map(|c| templates.iter().map(move |t| prompts::fill(t, c))).collect();
        let tokens = tok.encode_batch(&prompts, text.cfg.context);
        let emb = text.forward_trimmed(&tokens)?.into_f32_vec()?;
        Tensor::from_f32(&[classes.len(), d], ensemble_means(emb, templates.len(), d))
    }
}

/// (C x K, D) prompt features, class-major -> (C, D): each row normalised, the K rows of a class
/// averaged, the mean normalised.
fn ensemble_means(mut emb: Vec<f32>, k: usize, d: usize) -> Vec<f32> {
    l2_normalize_cpu(&mut emb, d);
    let mut out = Vec::with_capacity(emb.len() / k.max(1));
    for class in emb.chunks_exact(k * d) {
        let mut mean = vec![0.0f32; d];
        for row in class.chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= k as f32);
        l2_normalize_cpu(&mut mean, d);
        out.extend(mean);
    }
    out
}
