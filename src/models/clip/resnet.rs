//! CLIP's ModifiedResNet image encoder: three-conv stem, anti-aliased average-pool
//! downsampling, bottleneck stages and attention pooling. Batch norm is folded into the
//! convolutions at load time (inference only).

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::models::clip::config::ResNetConfig;
use crate::models::clip::weights::Params;
use crate::ops::conv2d::{conv2d_weight_cpu, Conv2dShape, ConvWeight};
use crate::ops::interpolate::resize_positional_grid;
use crate::ops::matmul::LinearWeight;
use crate::ops::pool::{attention_pool2d_cpu, avg_pool2d_cpu, AttnPoolWeights};
use crate::tensor::Tensor;

const BN_EPS: f32 = 1e-5;

/// Takes conv `conv` (c_out, c_in, k, k) and batch norm `bn` and folds the norm into the conv:
/// w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps). The CUDA encoder uploads the
/// result (`CudaModifiedResNet::from_cpu`).
fn load_conv_bn_folded(
    p: &mut Params,
    conv: &str,
    bn: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut w = p.take(&format!("{conv}.weight"), &[c_out, c_in, k, k])?;
    let gamma = p.take(&format!("{bn}.weight"), &[c_out])?;
    let beta = p.take(&format!("{bn}.bias"), &[c_out])?;
    let mean = p.take(&format!("{bn}.running_mean"), &[c_out])?;
    let var = p.take(&format!("{bn}.running_var"), &[c_out])?;
    let per = c_in * k * k;
    let mut b = vec![0.0f32; c_out];
    for co in 0..c_out {
        let s = gamma[co] / (var[co] + BN_EPS).sqrt();
        for v in &mut w[co * per..(co + 1) * per] {
            *v *= s;
        }
        b[co] = beta[co] - mean[co] * s;
    }
    Ok((w, b))
}

/// A convolution with its batch norm folded in: w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps).
pub(crate) struct ConvBn {
    /// (C_out, C_in, k, k), the batch norm's scale folded in.
    pub(crate) w: ConvWeight,
    pub(crate) b: Vec<f32>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
}

impl ConvBn {
    fn load(p: &mut Params, conv: &str, bn: &str, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Self> {
        let (w, b) = load_conv_bn_folded(p, conv, bn, c_in, c_out, k)?;
        Ok(ConvBn { w: ConvWeight::new(w, c_out, c_in * k * k), b, c_in, c_out, k, stride })
    }

    fn random(c_in: usize, c_out: usize, k: usize, stride: usize, rng: &mut impl Rng) -> Self {
        let std = (2.0 / (c_in * k * k) as f32).sqrt();
        let w = Tensor::randn(&[c_out, c_in, k, k], std, rng).into_f32_vec().unwrap_or_default();
        ConvBn { w: ConvWeight::new(w, c_out, c_in * k * k), b: vec![0.0; c_out], c_in, c_out, k, stride }
    }

    fn shape(&self, b: usize, h: usize, w: usize) -> Conv2dShape {
        Conv2dShape {
            batch: b,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            kernel: self.k,
            stride: self.stride,
            pad: self.k / 2,
        }
    }

    /// x (B, C_in, H, W) -> (B, C_out, H', W'), ReLU optional.
    fn forward(&self, x: &[f32], b: usize, h: usize, w: usize, relu: bool) -> (Vec<f32>, usize, usize) {
        let s = self.shape(b, h, w);
        let (ho, wo) = s.out_hw();
        let mut y = vec![0.0f32; b * self.c_out * ho * wo];
        conv2d_weight_cpu(x, &self.w, Some(&self.b), &s, relu, false, &mut y);
        (y, ho, wo)
    }

    /// y = relu(y + conv(x)): the last conv of a bottleneck onto its identity branch.
    fn forward_residual_relu(&self, x: &[f32], b: usize, h: usize, w: usize, y: &mut [f32]) {
        conv2d_weight_cpu(x, &self.w, Some(&self.b), &self.shape(b, h, w), true, true, y);
    }
}

fn avg_pool(x: Vec<f32>, bc: usize, h: usize, w: usize, k: usize) -> (Vec<f32>, usize, usize) {
    if k == 1 {
        return (x, h, w);
    }
    let (ho, wo) = (h / k, w / k);
    let mut y = vec![0.0f32; bc * ho * wo];
    avg_pool2d_cpu(&x, bc, h, w, k, &mut y);
    (y, ho, wo)
}

pub(crate) struct Bottleneck {
    pub(crate) conv1: ConvBn,
    pub(crate) conv2: ConvBn,
    pub(crate) conv3: ConvBn,
    pub(crate) stride: usize,
    /// AvgPool(stride) then a folded 1x1 conv, when the shape changes.
    pub(crate) downsample: Option<ConvBn>,
}

impl Bottleneck {
    /// Takes x by value: without a downsample it becomes the output buffer (the residual
    /// is accumulated onto it).
    fn forward(&self, x: Vec<f32>, b: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (o, _, _) = self.conv1.forward(&x, b, h, w, true);
        let (o, _, _) = self.conv2.forward(&o, b, h, w, true);
        let (o, ho, wo) = avg_pool(o, b * self.conv2.c_out, h, w, self.stride);
        let mut identity = match &self.downsample {
            Some(ds) if self.stride > 1 => {
                let (xi, _, _) = avg_pool(x, b * ds.c_in, h, w, self.stride);
                ds.forward(&xi, b, ho, wo, false).0
            }
            Some(ds) => ds.forward(&x, b, h, w, false).0,
            None => x,
        };
        self.conv3.forward_residual_relu(&o, b, ho, wo, &mut identity);
        (identity, ho, wo)
    }
}

pub struct ModifiedResNet {
    pub cfg: ResNetConfig,
    pub(crate) stem: [ConvBn; 3],
    pub(crate) stages: Vec<Vec<Bottleneck>>,
    /// (grid^2 + 1, C)
    pub(crate) pool_pos: Vec<f32>,
    pub(crate) q_w: LinearWeight,
    pub(crate) q_b: Vec<f32>,
    pub(crate) k_w: LinearWeight,
    pub(crate) k_b: Vec<f32>,
    pub(crate) v_w: LinearWeight,
    pub(crate) v_b: Vec<f32>,
    pub(crate) c_w: LinearWeight,
    pub(crate) c_b: Vec<f32>,
    /// Round the resized positional table to fp16 (CCD's `upsample_pos_emb` returns it as
    /// half, whatever the model's dtype): off by default (open_clip keeps it f32).
    pub pos_f16: bool,
}

pub struct ResNetOutput {
    /// (B, D)
    pub pooled: Tensor,
    /// (B, C, h, w): the last stage's feature map, before the attention pool.
    pub features: Option<Tensor>,
}

/// The (planes, stride) of every block, in order, with its input channels.
pub(crate) fn block_plan(cfg: &ResNetConfig) -> Vec<Vec<(usize, usize, usize)>> {
    let mut inplanes = cfg.width;
    let mut plan = Vec::new();
    for (s, &n) in cfg.layers.iter().enumerate() {
        let planes = cfg.width << s;
        let mut stage = Vec::new();
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            stage.push((inplanes, planes, stride));
            inplanes = planes * 4;
        }
        plan.push(stage);
    }
    plan
}

impl ModifiedResNet {
    pub fn embed_dim(cfg: &ResNetConfig) -> usize {
        cfg.width * 32
    }

    pub fn load(p: &mut Params, cfg: &ResNetConfig) -> Result<Self> {
        let w = cfg.width;
        let stem = [
            ConvBn::load(p, "visual.conv1", "visual.bn1", 3, w / 2, 3, 2)?,
            ConvBn::load(p, "visual.conv2", "visual.bn2", w / 2, w / 2, 3, 1)?,
            ConvBn::load(p, "visual.conv3", "visual.bn3", w / 2, w, 3, 1)?,
        ];
        let mut stages = Vec::new();
        for (s, stage) in block_plan(cfg).into_iter().enumerate() {
            let mut blocks = Vec::new();
            for (i, (inplanes, planes, stride)) in stage.into_iter().enumerate() {
                let pre = format!("visual.layer{}.{}", s + 1, i);
                let downsample = if stride > 1 || inplanes != planes * 4 {
                    Some(ConvBn::load(
                        p,
                        &format!("{pre}.downsample.0"),
                        &format!("{pre}.downsample.1"),
                        inplanes,
                        planes * 4,
                        1,
                        1,
                    )?)
                } else {
                    None
                };
                blocks.push(Bottleneck {
                    conv1: ConvBn::load(p, &format!("{pre}.conv1"), &format!("{pre}.bn1"), inplanes, planes, 1, 1)?,
                    conv2: ConvBn::load(p, &format!("{pre}.conv2"), &format!("{pre}.bn2"), planes, planes, 3, 1)?,
                    conv3: ConvBn::load(p, &format!("{pre}.conv3"), &format!("{pre}.bn3"), planes, planes * 4, 1, 1)?,
                    stride,
                    downsample,
                });
            }
            stages.push(blocks);
        }
        let c = Self::embed_dim(cfg);
        let d = cfg.output_dim;
        let a = "visual.attnpool";
        Ok(ModifiedResNet {
            cfg: cfg.clone(),
            stem,
            stages,
            pool_pos: p.take(&format!("{a}.positional_embedding"), &[cfg.grid * cfg.grid + 1, c])?,
            q_w: LinearWeight::new(p.take(&format!("{a}.q_proj.weight"), &[c, c])?, c, c),
            q_b: p.take(&format!("{a}.q_proj.bias"), &[c])?,
            k_w: LinearWeight::new(p.take(&format!("{a}.k_proj.weight"), &[c, c])?, c, c),
            k_b: p.take(&format!("{a}.k_proj.bias"), &[c])?,
            v_w: LinearWeight::new(p.take(&format!("{a}.v_proj.weight"), &[c, c])?, c, c),
            v_b: p.take(&format!("{a}.v_proj.bias"), &[c])?,
            c_w: LinearWeight::new(p.take(&format!("{a}.c_proj.weight"), &[d, c])?, d, c),
            c_b: p.take(&format!("{a}.c_proj.bias"), &[d])?,
            pos_f16: false,
        })
    }

    pub fn random(cfg: &ResNetConfig, rng: &mut impl Rng) -> Self {
        let w = cfg.width;
        let stem = [
            ConvBn::random(3, w / 2, 3, 2, rng),
            ConvBn::random(w / 2, w / 2, 3, 1, rng),
            ConvBn::random(w / 2, w, 3, 1, rng),
        ];
        let stages = block_plan(cfg)
            .into_iter()
            .map(|stage| {
                stage
                    .into_iter()
                    .map(|(inplanes, planes, stride)| Bottleneck {
                        downsample: (stride > 1 || inplanes != planes * 4)
                            .then(|| ConvBn::random(inplanes, planes * 4, 1, 1, rng)),
                        conv1: ConvBn::random(inplanes, planes, 1, 1, rng),
                        conv2: ConvBn::random(planes, planes, 3, 1, rng),
                        conv3: ConvBn::random(planes, planes * 4, 1, 1, rng),
                        stride,
                    })
                    .collect()
            })
            .collect();
        let c = Self::embed_dim(cfg);
        let d = cfg.output_dim;
        let std = (c as f32).powf(-0.5);
        let mut r = |shape: &[usize]| Tensor::randn(shape, std, rng).into_f32_vec().unwrap_or_default();
        ModifiedResNet {
            cfg: cfg.clone(),
            stem,
            stages,
            pool_pos: r(&[cfg.grid * cfg.grid + 1, c]),
            q_w: LinearWeight::new(r(&[c, c]), c, c),
            q_b: vec![0.0; c],
            k_w: LinearWeight::new(r(&[c, c]), c, c),
            k_b: vec![0.0; c],
            v_w: LinearWeight::new(r(&[c, c]), c, c),
            v_b: vec![0.0; c],
            c_w: LinearWeight::new(r(&[d, c]), d, c),
            c_b: vec![0.0; d],
            pos_f16: false,
        }
    }

    /// The attention pool's positional embedding for an h x w feature grid (bilinear,
    /// align_corners = false, when it differs from the native grid).
    fn pool_positional(&self, h: usize, w: usize) -> Vec<f32> {
        let mut pos = resize_positional_grid(&self.pool_pos, Self::embed_dim(&self.cfg), self.cfg.grid, h, w);
        if self.pos_f16 {
            pos.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        }
        pos
    }

    /// pixels (B, 3, H, W), normalised; H and W at least 32. Sides that are no multiple of 32
    /// end in a feature grid of floor(ceil(H / 2) / 16) (the stride-2 stem conv, then four
    /// floor-ing average pools), which is CCD's `H // 32` (+1 where H % 32 == 31).
    pub fn forward(&self, pixels: &Tensor, want_features: bool) -> Result<ResNetOutput> {
        let s = pixels.shape();
        if s.len() != 4 || s[1] != 3 || s[2] < 32 || s[3] < 32 {
            return Err(Error::Shape(format!(
                "ModifiedResNet input must be (B, 3, H, W) with H, W at least 32; got {s:?}"
            )));
        }
        let (b, h, w) = (s[0], s[2], s[3]);
        let (x, h, w) = self.stem[0].forward(pixels.f32s()?, b, h, w, true);
        let (x, h, w) = self.stem[1].forward(&x, b, h, w, true);
        let (x, h, w) = self.stem[2].forward(&x, b, h, w, true);
        let (mut x, mut h, mut w) = avg_pool(x, b * self.cfg.width, h, w, 2);
        for stage in &self.stages {
            for blk in stage {
                let (y, ho, wo) = blk.forward(x, b, h, w);
                x = y;
                h = ho;
                w = wo;
            }
        }
        let c = Self::embed_dim(&self.cfg);
        let pos = self.pool_positional(h, w);
        let wt = AttnPoolWeights {
            pos: &pos,
            q_w: &self.q_w,
            q_b: &self.q_b,
            k_w: &self.k_w,
            k_b: &self.k_b,
            v_w: &self.v_w,
            v_b: &self.v_b,
            c_w: &self.c_w,
            c_b: &self.c_b,
            heads: self.cfg.heads,
        };
        let d = self.cfg.output_dim;
        let mut pooled = vec![0.0f32; b * d];
        attention_pool2d_cpu(&x, b, c, h * w, &wt, &mut pooled);
        let features = if want_features { Some(Tensor::from_f32(&[b, c, h, w], x)?) } else { None };
        Ok(ResNetOutput { pooled: Tensor::from_f32(&[b, d], pooled)?, features })
    }
}

/// The tensor names and shapes of a ModifiedResNet image tower (OpenAI / open_clip names).
pub fn resnet_param_shapes(cfg: &ResNetConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut conv_bn = |conv: &str, bn: &str, c_in: usize, c_out: usize, k: usize| {
        v.push((format!("{conv}.weight"), vec![c_out, c_in, k, k]));
        for s in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{bn}.{s}"), vec![c_out]));
        }
    };
    let w = cfg.width;
    conv_bn("visual.conv1", "visual.bn1", 3, w / 2, 3);
    conv_bn("visual.conv2", "visual.bn2", w / 2, w / 2, 3);
    conv_bn("visual.conv3", "visual.bn3", w / 2, w, 3);
    for (s, stage) in block_plan(cfg).into_iter().enumerate() {
        for (i, (inplanes, planes, stride)) in stage.into_iter().enumerate() {
            let pre = format!("visual.layer{}.{}", s + 1, i);
            conv_bn(&format!("{pre}.conv1"), &format!("{pre}.bn1"), inplanes, planes, 1);
            conv_bn(&format!("{pre}.conv2"), &format!("{pre}.bn2"), planes, planes, 3);
            conv_bn(&format!("{pre}.conv3"), &format!("{pre}.bn3"), planes, planes * 4, 1);
            if stride > 1 || inplanes != planes * 4 {
                conv_bn(&format!("{pre}.downsample.0"), &format!("{pre}.downsample.1"), inplanes, planes * 4, 1);
            }
        }
    }
    let c = ModifiedResNet::embed_dim(cfg);
    let a = "visual.attnpool";
    v.push((format!("{a}.positional_embedding"), vec![cfg.grid * cfg.grid + 1, c]));
    for n in ["q", "k", "v"] {
        v.push((format!("{a}.{n}_proj.weight"), vec![c, c]));
        v.push((format!("{a}.{n}_proj.bias"), vec![c]));
    }
    v.push((format!("{a}.c_proj.weight"), vec![cfg.output_dim, c]));
    v.push((format!("{a}.c_proj.bias"), vec![cfg.output_dim]));
    v
}

/// Random ModifiedResNet weights as `Params`, with non-trivial batch-norm statistics (so the
/// folding is exercised) and activations that stay O(1) through the stages.
pub fn random_resnet_params(cfg: &ResNetConfig, seed: u64) -> Result<Params> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut map = BTreeMap::new();
    for (name, shape) in resnet_param_shapes(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("running_var") {
            (0..n).map(|_| rng.gen_range(0.5..1.5)).collect()
        } else if name.ends_with("running_mean") || name.ends_with("bias") {
            (0..n).map(|_| rng.gen_range(-0.1..0.1)).collect()
        } else if shape.len() == 1 {
            // batch-norm gamma: small, so residual sums do not grow stage after stage
            (0..n).map(|_| rng.gen_range(0.2..0.5)).collect()
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(&shape, (1.0 / fan_in.max(1) as f32).sqrt(), &mut rng).into_f32_vec()?
        };
        map.insert(name, Tensor::from_f32(&shape, data)?);
    }
    Params::from_map(map, HashMap::new())
}
