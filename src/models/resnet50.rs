//! The classifier: torchvision's ResNet-50 (v1.5: the stride sits on the 3x3 conv; 7x7 s2 stem,
//! batch norm, ReLU, 3x3 s2 max pool; bottlenecks [3, 4, 6, 3]) with CCD's CAM head (1x1 conv
//! 2048 -> C with bias, positive part times alpha, logits = global average pool of the CAM) or
//! a plain linear head. The width (64 in ResNet-50) and the block counts are configurable, so a
//! tiny ResNet runs the same code path in the tests.
//!
//! Written like llm.c's GPT-2: the parameters are one flat buffer (and the gradients another of
//! the same layout), the forward saves what the backward needs in `Activations`, and the
//! backward walks the layers in reverse, accumulating into the gradient buffer. Batch norm
//! runs in training mode (batch statistics, running statistics updated) or eval mode.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::models::clip::weights::load_safetensors;
use crate::ops::batchnorm::{batch_norm_backward_cpu, batch_norm_eval_cpu, batch_norm_train_cpu};
use crate::ops::cam_head::{cam_head_backward_cpu, cam_head_cpu, linear_head_backward_cpu, linear_head_cpu};
use crate::ops::conv2d::{conv2d_cpu, Conv2dShape};
use crate::ops::conv2d_backward::conv2d_backward_cpu;
use crate::ops::maxpool::{max_pool2d_backward_cpu, max_pool2d_cpu, MaxPoolShape};
use crate::ops::relu::{relu_backward_inplace_cpu, relu_inplace_cpu};
use crate::ops::residual::add_inplace_cpu;
use crate::tensor::{numel, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// CCD: 1x1 conv with bias on the feature map, alpha boost, global average pool.
    Cam,
    /// Global average pool then a linear layer.
    Linear,
}

#[derive(Clone, Debug)]
pub struct ResNetConfig {
    /// Channels of the stem (64 in ResNet-50); stage i has planes width * 2^i, output 4x that.
    pub width: usize,
    pub layers: [usize; 4],
    pub num_classes: usize,
    pub head: HeadKind,
    /// CAM boost of the positive part (CCD: 3 once training starts; 1 = no boost).
    pub alpha: f32,
}

impl ResNetConfig {
    pub fn resnet50(num_classes: usize) -> ResNetConfig {
        ResNetConfig { width: 64, layers: [3, 4, 6, 3], num_classes, head: HeadKind::Cam, alpha: 3.0 }
    }

    /// Channels of the final feature map (2048 in ResNet-50).
    pub fn feature_dim(&self) -> usize {
        self.width * 8 * 4
    }
}

/// A named tensor inside a flat buffer.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl Slot {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + numel(&self.shape)
    }
}

/// Hands out consecutive ranges of a flat buffer.
#[derive(Default)]
struct Layout {
    slots: Vec<Slot>,
    len: usize,
}

impl Layout {
    fn add(&mut self, name: String, shape: &[usize]) -> usize {
        let offset = self.len;
        self.len += numel(shape);
        self.slots.push(Slot { name, shape: shape.to_vec(), offset });
        offset
    }
}

/// A bias-free convolution followed by batch norm: offsets of its tensors.
#[derive(Clone, Debug)]
pub(crate) struct ConvBn {
    pub(crate) w: usize,
    pub(crate) gamma: usize,
    pub(crate) beta: usize,
    pub(crate) running_mean: usize,
    pub(crate) running_var: usize,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
}

/// A convolution's shape: channels in and out, square kernel side, stride, zero padding.
#[derive(Clone, Copy, Debug)]
struct ConvSpec {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl ConvSpec {
    /// A 1x1 convolution (no padding).
    fn pointwise(c_in: usize, c_out: usize, stride: usize) -> ConvSpec {
        ConvSpec { c_in, c_out, k: 1, stride, pad: 0 }
    }
}

impl ConvBn {
    /// Lays out the conv weight `{conv}.weight` and batch norm `{bn}.*` (torchvision names).
    fn new(p: &mut Layout, bufs: &mut Layout, conv: &str, bn: &str, spec: ConvSpec) -> ConvBn {
        let ConvSpec { c_in, c_out, k, stride, pad } = spec;
        ConvBn {
            w: p.add(format!("{conv}.weight"), &[c_out, c_in, k, k]),
            gamma: p.add(format!("{bn}.weight"), &[c_out]),
            beta: p.add(format!("{bn}.bias"), &[c_out]),
            running_mean: bufs.add(format!("{bn}.running_mean"), &[c_out]),
            running_var: bufs.add(format!("{bn}.running_var"), &[c_out]),
            c_in,
            c_out,
            k,
            stride,
            pad,
        }
    }

    pub(crate) fn shape(&self, b: usize, h: usize, w: usize) -> Conv2dShape {
        Conv2dShape {
            batch: b,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            kernel: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

pub(crate) struct Bottleneck {
    pub(crate) conv1: ConvBn,
    pub(crate) conv2: ConvBn,
    pub(crate) conv3: ConvBn,
    pub(crate) down: Option<ConvBn>,
}

/// What one conv + batch norm (+ ReLU) saves for the backward.
#[derive(Default)]
pub struct ConvBnAct {
    /// The convolution's output (batch norm's input).
    pub z: Vec<f32>,
    /// Batch statistics (empty in eval mode).
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    /// The layer's output: after ReLU when it has one; for a bottleneck's last conv, the
    /// block's output (after the residual add and the ReLU).
    pub y: Vec<f32>,
    pub h: usize,
    pub w: usize,
}

pub struct BlockAct {
    pub conv1: ConvBnAct,
    pub conv2: ConvBnAct,
    pub conv3: ConvBnAct,
    pub down: Option<ConvBnAct>,
}

/// Everything the forward saves (llm.c's activations).
pub struct Activations {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub stem: ConvBnAct,
    pub pool: Vec<f32>,
    pub pool_argmax: Vec<u32>,
    pub pool_h: usize,
    pub pool_w: usize,
    pub blocks: Vec<BlockAct>,
    /// CAM head: the boosted CAM (B, C, h, w). Linear head: the pooled features (B, K).
    pub head: Vec<f32>,
    pub logits: Vec<f32>,
}

impl Activations {
    /// The final feature map (B, K, h, w) and its spatial size.
    pub fn features(&self) -> (&[f32], usize, usize) {
        let last = &self.blocks.last().expect("at least one block").conv3;
        (&last.y, last.h, last.w)
    }
}

enum BnMode<'a> {
    Train(&'a mut [f32]),
    Eval(&'a [f32]),
}

pub struct ResNet {
    pub cfg: ResNetConfig,
    /// All parameters, one buffer; `slots` name them (torchvision names, the head as `head.*`).
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub slots: Vec<Slot>,
    /// Batch norm running statistics.
    pub buffers: Vec<f32>,
    pub buffer_slots: Vec<Slot>,
    /// The head's parameters are `params[head_start..]` (their own Adam group).
    pub head_start: usize,
    pub(crate) stem: ConvBn,
    pub(crate) blocks: Vec<Bottleneck>,
    pub(crate) head_w: usize,
    pub(crate) head_b: usize,
    /// Test reference for the device's bf16 mixed-precision step: when set, every activation
    /// and activation gradient is rounded to bf16 where the device stores one in bf16 (the
    /// convolution outputs, batch-norm outputs, residual sums, the head's input gradient and
    /// the backward's dz / dx); statistics, the head and the weight gradients stay f32 as there.
    /// Rounding the convolution weights and the input is the caller's part. Off by default.
    pub emulate_bf16: bool,
}

/// Rounds `v` to bf16 (nearest even) in place when `on`: the storage of the device's bf16 step.
fn store_bf16(on: bool, v: &mut [f32]) {
    if on {
        for x in v.iter_mut() {
            *x = half::bf16::from_f32(*x).to_f32();
        }
    }
}

impl ResNet {
    /// The architecture with torch's default initialisation: convs kaiming-normal (fan_out,
    /// ReLU gain) as torchvision; batch norm gamma 1, beta 0, running stats 0 and 1; the head as
    /// nn.Conv2d / nn.Linear (uniform +-1/sqrt(fan_in)). Seeded.
    pub fn new(cfg: ResNetConfig, seed: u64) -> ResNet {
        let (mut p, mut bufs) = (Layout::default(), Layout::default());
        let stem_spec = ConvSpec { c_in: 3, c_out: cfg.width, k: 7, stride: 2, pad: 3 };
        let stem = ConvBn::new(&mut p, &mut bufs, "conv1", "bn1", stem_spec);
        let mut blocks = Vec::new();
        let mut c_in = cfg.width;
        for (stage, &n) in cfg.layers.iter().enumerate() {
            let planes = cfg.width << stage;
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                let pre = format!("layer{}.{j}", stage + 1);
                let mut layer = |conv: &str, bn: &str, spec: ConvSpec| {
                    ConvBn::new(&mut p, &mut bufs, &format!("{pre}.{conv}"), &format!("{pre}.{bn}"), spec)
                };
                let conv1 = layer("conv1", "bn1", ConvSpec::pointwise(c_in, planes, 1));
                let conv2 = layer("conv2", "bn2", ConvSpec { c_in: planes, c_out: planes, k: 3, stride, pad: 1 });
                let conv3 = layer("conv3", "bn3", ConvSpec::pointwise(planes, planes * 4, 1));
                let down = (stride != 1 || c_in != planes * 4)
                    .then(|| layer("downsample.0", "downsample.1", ConvSpec::pointwise(c_in, planes * 4, stride)));
                blocks.push(Bottleneck { conv1, conv2, conv3, down });
                c_in = planes * 4;
            }
        }
        let head_start = p.len;
        let k = cfg.feature_dim();
        let head_shape: Vec<usize> = match cfg.head {
            HeadKind::Cam => vec![cfg.num_classes, k, 1, 1],
            HeadKind::Linear => vec![cfg.num_classes, k],
        };
        let head_w = p.add("head.weight".into(), &head_shape);
        let head_b = p.add("head.bias".into(), &[cfg.num_classes]);

        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut params = vec![0.0f32; p.len];
        for s in &p.slots {
            let r = s.range();
            if s.name.starts_with("head.") {
                let bound = 1.0 / (k as f32).sqrt();
                params[r].iter_mut().for_each(|v| *v = rng.gen_range(-bound..bound));
            } else if s.shape.len() == 4 {
                let fan_out = (s.shape[0] * s.shape[2] * s.shape[3]) as f32;
                let std = (2.0 / fan_out).sqrt();
                let t = Tensor::randn(&s.shape, std, &mut rng).into_f32_vec().unwrap_or_default();
                params[r].copy_from_slice(&t);
            } else if s.name.ends_with(".weight") {
                params[r].fill(1.0);
            }
        }
        let mut buffers = vec![0.0f32; bufs.len];
        for s in &bufs.slots {
            if s.name.ends_with("running_var") {
                buffers[s.range()].fill(1.0);
            }
        }
        ResNet {
            cfg,
            grads: vec![0.0; params.len()],
            params,
            slots: p.slots,
            buffers,
            buffer_slots: bufs.slots,
            head_start,
            stem,
            blocks,
            head_w,
            head_b,
            emulate_bf16: false,
        }
    }

    /// Reads the width and block counts from torchvision-named tensors.
    pub fn config_from_names(
        map: &BTreeMap<String, Tensor>,
        num_classes: usize,
        head: HeadKind,
        alpha: f32,
    ) -> Result<ResNetConfig> {
        let stem = map.get("conv1.weight").ok_or_else(|| Error::WeightMissing("conv1.weight".into()))?;
        let mut layers = [0usize; 4];
        for (i, n) in layers.iter_mut().enumerate() {
            while map.contains_key(&format!("layer{}.{}.conv1.weight", i + 1, *n)) {
                *n += 1;
            }
            if *n == 0 {
                return Err(Error::WeightMissing(format!("layer{}.0.conv1.weight", i + 1)));
            }
        }
        Ok(ResNetConfig { width: stem.dim(0), layers, num_classes, head, alpha })
    }

    /// Copies every tensor of `map` into the model (shapes checked, names must all be known).
    /// torchvision's `fc.*` and `num_batches_tracked` are ignored; a missing `head.*` keeps the
    /// seeded initialisation (a backbone-only file); anything else missing is an error.
    pub fn load_map(&mut self, map: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, t) in map {
            if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
                continue;
            }
            let (slot, dst) = if let Some(s) = self.slots.iter().find(|s| &s.name == name) {
                (s, &mut self.params)
            } else if let Some(s) = self.buffer_slots.iter().find(|s| &s.name == name) {
                (s, &mut self.buffers)
            } else {
                return Err(Error::Weights(format!(
                    "unexpected tensor `{name}` of shape {:?} for this ResNet",
                    t.shape()
                )));
            };
            if t.shape() != slot.shape.as_slice() {
                return Err(Error::WeightShape {
                    name: name.clone(),
                    expected: slot.shape.clone(),
                    found: t.shape().to_vec(),
                });
            }
            dst[slot.range()].copy_from_slice(&t.to_f32()?.into_f32_vec()?);
        }
        for s in self.slots.iter().chain(&self.buffer_slots) {
            if !s.name.starts_with("head.") && !map.contains_key(&s.name) {
                return Err(Error::WeightMissing(s.name.clone()));
            }
        }
        Ok(())
    }

    /// A ResNet from a torchvision-named safetensors file; the architecture comes from the
    /// shapes, the head (if the file has none) from `seed`.
    pub fn load(path: &Path, num_classes: usize, head: HeadKind, alpha: f32, seed: u64) -> Result<ResNet> {
        let (map, _) = load_safetensors(path)?;
        let cfg = Self::config_from_names(&map, num_classes, head, alpha)?;
        let mut model = ResNet::new(cfg, seed);
        model.load_map(&map)?;
        Ok(model)
    }

    /// Every parameter and buffer as named tensors (for checkpoints and tests).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (slots, data) in [(&self.slots, &self.params), (&self.buffer_slots, &self.buffers)] {
            for s in slots {
                out.push((s.name.clone(), Tensor::from_f32(&s.shape, data[s.range()].to_vec()).expect("slot shape")));
            }
        }
        out
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_bn_forward(
        &self,
        l: &ConvBn,
        x: &[f32],
        b: usize,
        h: usize,
        w: usize,
        relu: bool,
        mode: &mut BnMode,
    ) -> ConvBnAct {
        let s = l.shape(b, h, w);
        let (ho, wo) = s.out_hw();
        let mut z = vec![0.0f32; b * l.c_out * ho * wo];
        conv2d_cpu(x, &self.params[l.w..][..l.c_out * l.c_in * l.k * l.k], None, &s, false, false, &mut z);
        store_bf16(self.emulate_bf16, &mut z);
        let mut y = vec![0.0f32; z.len()];
        let c = l.c_out;
        let (gamma, beta) = (&self.params[l.gamma..][..c], &self.params[l.beta..][..c]);
        let (mut mean, mut rstd) = (Vec::new(), Vec::new());
        match mode {
            BnMode::Train(bufs) => {
                mean = vec![0.0; c];
                rstd = vec![0.0; c];
                let (rm, rest) = bufs.split_at_mut(l.running_var);
                let rm = &mut rm[l.running_mean..][..c];
                let rv = &mut rest[..c];
                batch_norm_train_cpu(&z, b, c, ho * wo, gamma, beta, rm, rv, &mut y, &mut mean, &mut rstd);
            }
            BnMode::Eval(bufs) => {
                batch_norm_eval_cpu(
                    &z,
                    c,
                    ho * wo,
                    gamma,
                    beta,
                    &bufs[l.running_mean..][..c],
                    &bufs[l.running_var..][..c],
                    &mut y,
                );
            }
        }
        store_bf16(self.emulate_bf16, &mut y);
        if relu {
            relu_inplace_cpu(&mut y);
        }
        ConvBnAct { z, mean, rstd, y, h: ho, w: wo }
    }

    fn forward_mode(&self, x: &[f32], b: usize, h: usize, w: usize, mode: &mut BnMode) -> Result<Activations> {
        if x.len() != b * 3 * h * w {
            return Err(Error::Shape(format!("resnet: input of {} values for ({b}, 3, {h}, {w})", x.len())));
        }
        let stem = self.conv_bn_forward(&self.stem, x, b, h, w, true, mode);
        let ps = MaxPoolShape { h: stem.h, w: stem.w, kernel: 3, stride: 2, pad: 1 };
        let (pool_h, pool_w) = ps.out_hw();
        let mut pool = vec![0.0f32; b * self.cfg.width * pool_h * pool_w];
        let mut pool_argmax = vec![0u32; pool.len()];
        max_pool2d_cpu(&stem.y, &ps, &mut pool, &mut pool_argmax);
        let mut blocks: Vec<BlockAct> = Vec::with_capacity(self.blocks.len());
        let (mut ch, mut cw) = (pool_h, pool_w);
        for blk in &self.blocks {
            let input: &[f32] = blocks.last().map_or(&pool, |a| &a.conv3.y);
            let a1 = self.conv_bn_forward(&blk.conv1, input, b, ch, cw, true, mode);
            let a2 = self.conv_bn_forward(&blk.conv2, &a1.y, b, a1.h, a1.w, true, mode);
            let mut a3 = self.conv_bn_forward(&blk.conv3, &a2.y, b, a2.h, a2.w, false, mode);
            let down = blk.down.as_ref().map(|d| self.conv_bn_forward(d, input, b, ch, cw, false, mode));
            add_inplace_cpu(&mut a3.y, down.as_ref().map_or(input, |d| &d.y));
            store_bf16(self.emulate_bf16, &mut a3.y);
            relu_inplace_cpu(&mut a3.y);
            (ch, cw) = (a3.h, a3.w);
            blocks.push(BlockAct { conv1: a1, conv2: a2, conv3: a3, down });
        }
        let (k, hw, c) = (self.cfg.feature_dim(), ch * cw, self.cfg.num_classes);
        let feats = &blocks.last().ok_or_else(|| Error::Shape("resnet with no blocks".into()))?.conv3.y;
        let (hwt, hbias) = (&self.params[self.head_w..][..c * k], &self.params[self.head_b..][..c]);
        let mut logits = vec![0.0f32; b * c];
        let head = match self.cfg.head {
            HeadKind::Cam => {
                let mut cam = vec![0.0f32; b * c * hw];
                cam_head_cpu(feats, b, k, hw, hwt, hbias, self.cfg.alpha, &mut cam, &mut logits);
                cam
            }
            HeadKind::Linear => {
                let mut pooled = vec![0.0f32; b * k];
                linear_head_cpu(feats, b, k, hw, hwt, hbias, &mut pooled, &mut logits);
                pooled
            }
        };
        Ok(Activations { batch: b, h, w, stem, pool, pool_argmax, pool_h, pool_w, blocks, head, logits })
    }

    /// Training forward of x (B, 3, H, W): batch statistics, running statistics updated.
    pub fn forward_train(&mut self, x: &[f32], b: usize, h: usize, w: usize) -> Result<Activations> {
        let mut bufs = std::mem::take(&mut self.buffers);
        let out = self.forward_mode(x, b, h, w, &mut BnMode::Train(&mut bufs));
        self.buffers = bufs;
        out
    }

    /// Eval forward: batch norm from the running statistics.
    pub fn forward_eval(&self, x: &[f32], b: usize, h: usize, w: usize) -> Result<Activations> {
        self.forward_mode(x, b, h, w, &mut BnMode::Eval(&self.buffers))
    }

    /// Backward of one conv + batch norm from dy (the gradient of the batch norm's output,
    /// already masked by the ReLU where there is one). Returns dx when wanted.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn_backward(
        &mut self,
        l: &ConvBn,
        x: &[f32],
        h: usize,
        w: usize,
        act: &ConvBnAct,
        dy: &[f32],
        b: usize,
        want_dx: bool,
    ) -> Option<Vec<f32>> {
        let c = l.c_out;
        let hw = act.h * act.w;
        let mut dz = vec![0.0f32; dy.len()];
        {
            let (params, grads) = (&self.params, &mut self.grads);
            let (dgamma, dbeta) = grads[l.gamma..l.beta + c].split_at_mut(l.beta - l.gamma);
            batch_norm_backward_cpu(
                &act.z,
                dy,
                b,
                c,
                hw,
                &params[l.gamma..][..c],
                &act.mean,
                &act.rstd,
                &mut dz,
                &mut dgamma[..c],
                dbeta,
            );
        }
        store_bf16(self.emulate_bf16, &mut dz);
        let s = l.shape(b, h, w);
        let nw = l.c_out * l.c_in * l.k * l.k;
        let mut dx = want_dx.then(|| vec![0.0f32; b * l.c_in * h * w]);
        conv2d_backward_cpu(x, &self.params[l.w..][..nw], &dz, &s, &mut self.grads[l.w..][..nw], dx.as_deref_mut());
        if let Some(dx) = &mut dx {
            store_bf16(self.emulate_bf16, dx);
        }
        dx
    }

    /// Backward from dlogits (B, C): every parameter gradient is added to `self.grads`. `x`
    /// and `acts` are the input and activations of a `forward_train`.
    pub fn backward(&mut self, x: &[f32], acts: &Activations, dlogits: &[f32]) -> Result<()> {
        let b = acts.batch;
        let (k, c) = (self.cfg.feature_dim(), self.cfg.num_classes);
        if dlogits.len() != b * c || acts.stem.mean.is_empty() {
            return Err(Error::Shape(
                "resnet backward: needs the activations of a training forward and (B, C) dlogits".into(),
            ));
        }
        let (feats, fh, fw) = acts.features();
        let hw = fh * fw;
        let mut d = vec![0.0f32; b * k * hw];
        {
            let (params, grads) = (&self.params, &mut self.grads);
            let (gw, gb) = grads[self.head_w..].split_at_mut(self.head_b - self.head_w);
            let (gw, gb, hwt) = (&mut gw[..c * k], &mut gb[..c], &params[self.head_w..][..c * k]);
            match self.cfg.head {
                HeadKind::Cam => {
                    cam_head_backward_cpu(feats, b, k, hw, hwt, self.cfg.alpha, &acts.head, dlogits, gw, gb, &mut d)
                }
                HeadKind::Linear => linear_head_backward_cpu(&acts.head, b, k, hw, hwt, dlogits, gw, gb, &mut d),
            }
        }
        store_bf16(self.emulate_bf16, &mut d);
        let blocks = std::mem::take(&mut self.blocks);
        for (i, (blk, a)) in blocks.iter().zip(&acts.blocks).enumerate().rev() {
            let (input, ih, iw): (&[f32], usize, usize) = if i == 0 {
                (&acts.pool, acts.pool_h, acts.pool_w)
            } else {
                let p = &acts.blocks[i - 1].conv3;
                (&p.y, p.h, p.w)
            };
            relu_backward_inplace_cpu(&a.conv3.y, &mut d);
            let mut d2 = self
                .conv_bn_backward(&blk.conv3, &a.conv2.y, a.conv2.h, a.conv2.w, &a.conv3, &d, b, true)
                .unwrap_or_default();
            relu_backward_inplace_cpu(&a.conv2.y, &mut d2);
            let mut d1 = self
                .conv_bn_backward(&blk.conv2, &a.conv1.y, a.conv1.h, a.conv1.w, &a.conv2, &d2, b, true)
                .unwrap_or_default();
            relu_backward_inplace_cpu(&a.conv1.y, &mut d1);
            let mut dx = self.conv_bn_backward(&blk.conv1, input, ih, iw, &a.conv1, &d1, b, true).unwrap_or_default();
            match (&blk.down, &a.down) {
                (Some(l), Some(da)) => {
                    let dd = self.conv_bn_backward(l, input, ih, iw, da, &d, b, true).unwrap_or_default();
                    add_inplace_cpu(&mut dx, &dd);
                }
                _ => add_inplace_cpu(&mut dx, &d),
            }
            store_bf16(self.emulate_bf16, &mut dx);
            d = dx;
        }
        self.blocks = blocks;
        let ps = MaxPoolShape { h: acts.stem.h, w: acts.stem.w, kernel: 3, stride: 2, pad: 1 };
        let mut ds = vec![0.0f32; acts.stem.y.len()];
        max_pool2d_backward_cpu(&d, &acts.pool_argmax, &ps, &mut ds);
        store_bf16(self.emulate_bf16, &mut ds);
        relu_backward_inplace_cpu(&acts.stem.y, &mut ds);
        let stem = self.stem.clone();
        self.conv_bn_backward(&stem, x, acts.h, acts.w, &acts.stem, &ds, b, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_load_and_errors() {
        let cfg = ResNetConfig { width: 2, layers: [1, 2, 1, 1], num_classes: 3, head: HeadKind::Cam, alpha: 3.0 };
        let m = ResNet::new(cfg.clone(), 1);
        assert_eq!(m.slots.last().unwrap().name, "head.bias");
        assert_eq!(m.params.len(), m.slots.iter().map(|s| numel(&s.shape)).sum::<usize>());
        assert_eq!(m.head_start, m.slots.iter().find(|s| s.name == "head.weight").unwrap().offset);
        // A round trip through named tensors, minus the head, plus torchvision's fc.
        let mut map: BTreeMap<String, Tensor> =
            m.named_tensors().into_iter().filter(|(n, _)| !n.starts_with("head.")).collect();
        map.insert("fc.weight".into(), Tensor::zeros(&[1000, 64]));
        let got = ResNet::config_from_names(&map, 3, HeadKind::Cam, 3.0).unwrap();
        assert_eq!((got.width, got.layers), (2, [1, 2, 1, 1]));
        let mut n = ResNet::new(got, 1);
        n.load_map(&map).unwrap();
        assert_eq!(n.params, m.params);
        let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let a = n.forward_eval(&x, 2, 32, 32).unwrap();
        assert_eq!(a.logits.len(), 6);
        assert!(a.logits.iter().all(|v| v.is_finite()));
        // A wrong shape names the tensor; a missing one too.
        map.insert("layer1.0.conv2.weight".into(), Tensor::zeros(&[2, 2, 1, 1]));
        let e = n.load_map(&map).unwrap_err().to_string();
        assert!(e.contains("layer1.0.conv2.weight") && e.contains("[2, 2, 3, 3]"), "{e}");
        map.remove("layer1.0.conv2.weight");
        let e = n.load_map(&map).unwrap_err().to_string();
        assert!(e.contains("layer1.0.conv2.weight"), "{e}");
    }

    /// `emulate_bf16`: the stored activations and the backward's activation gradients are bf16
    /// values, and the step moves away from the f32 one; off, nothing is rounded.
    #[test]
    fn emulate_bf16_rounds_what_the_device_stores() {
        let cfg = ResNetConfig { width: 4, layers: [1, 1, 1, 1], num_classes: 3, head: HeadKind::Cam, alpha: 3.0 };
        let (b, side) = (2, 32);
        let x: Vec<f32> = (0..b * 3 * side * side).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7).collect();
        let is_bf16 = |v: &[f32]| v.iter().all(|&x| half::bf16::from_f32(x).to_f32() == x);
        let mut runs = Vec::new();
        for emulate in [false, true] {
            let mut m = ResNet::new(cfg.clone(), 3);
            m.emulate_bf16 = emulate;
            let acts = m.forward_train(&x, b, side, side).unwrap();
            let a = &acts.blocks[0];
            for t in [&acts.stem.z, &acts.stem.y, &acts.pool, &a.conv1.z, &a.conv2.y, &a.conv3.y] {
                assert_eq!(is_bf16(t), emulate);
            }
            m.zero_grad();
            m.backward(&x, &acts, &vec![0.1; b * 3]).unwrap();
            runs.push(m.grads.clone());
        }
        let diff = runs[0].iter().zip(&runs[1]).filter(|(a, b)| a != b).count();
        assert!(diff > runs[0].len() / 2, "{diff} of {} gradients moved", runs[0].len());
    }
}
