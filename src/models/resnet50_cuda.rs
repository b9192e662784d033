//! The trainer's ResNet on the GPU: the CPU model (src/models/resnet50.rs) with every tensor on
//! the device and every layer's forward and backward done by the kernels its CPU twin is
//! checked against (conv2d, conv2d_backward, batchnorm, maxpool, ReLU, residual add, the CAM
//! or linear head, the fused losses, Adam). f32 throughout, like the CPU reference.
//!
//! Layout: the CPU model's flat buffers on the device, as llm.c's train_gpt2.cu holds them:
//! parameters, gradients, Adam's m and v and the batch-norm running statistics are one
//! allocation each, in the CPU model's slot layout, and each layer's tensors are views at the
//! slots' offsets (`CudaTensor::view`). So `upload` / `download_into` are one copy per buffer,
//! zeroing the gradients is one memset, Adam is one launch per parameter group, and the CPU
//! checkpoint code serves both. The forward keeps its activations on
//! the device (`CudaActivations`, the twin of `Activations`); the backward walks them in
//! reverse. Nothing crosses to the host in a step but the batch in and two loss scalars out.

use std::sync::Arc;

use crate::device::cuda::{CudaTensor, CudaView, CudaViewMut, DType, Gpu};
use crate::error::{Error, Result};
use crate::models::resnet50::{ConvBn, HeadKind, ResNet, ResNetConfig, Slot};
use crate::ops::batchnorm::{
    batch_norm_backward_cuda, batch_norm_eval_cuda, batch_norm_train_cuda, batch_norm_workspace_len,
};
use crate::ops::bce::{bce_with_logits_cuda, consistency_bce_cuda, LOSS_WORKSPACE_LEN};
use crate::ops::cam_head::{cam_head_backward_cuda, cam_head_cuda, linear_head_backward_cuda, linear_head_cuda};
use crate::ops::conv2d::conv2d_cuda;
use crate::ops::conv2d_backward::{conv2d_backward_data_cuda, conv2d_backward_weight_cuda};
use crate::ops::maxpool::{max_pool2d_backward_cuda, max_pool2d_cuda, MaxPoolShape};
use crate::ops::relu::{relu_backward_inplace_cuda, relu_inplace_cuda};
use crate::ops::residual::add_inplace_cuda;
use crate::train::adam::{adam_step_cuda, Adam};

const F32: DType = DType::F32;

/// A conv + batch norm with its tensors as slot indices (`CudaResNet::slots` for w, gamma and
/// beta, `buffer_slots` for the running statistics).
#[derive(Clone, Debug)]
struct CudaConvBn {
    w: usize,
    gamma: usize,
    beta: usize,
    running_mean: usize,
    running_var: usize,
    layer: ConvBn,
}

struct CudaBottleneck {
    conv1: CudaConvBn,
    conv2: CudaConvBn,
    conv3: CudaConvBn,
    down: Option<CudaConvBn>,
}

/// What one conv + batch norm (+ ReLU) saves for the backward (`ConvBnAct` on the device).
pub struct CudaConvBnAct {
    /// The convolution's output (batch norm's input), (B, C, h, w).
    z: CudaTensor,
    /// Batch statistics (C); None in eval mode.
    stats: Option<(CudaTensor, CudaTensor)>,
    /// After ReLU (or, for a bottleneck's last conv, after the residual add and the ReLU).
    y: CudaTensor,
    h: usize,
    w: usize,
}

struct CudaBlockAct {
    conv1: CudaConvBnAct,
    conv2: CudaConvBnAct,
    conv3: CudaConvBnAct,
    down: Option<CudaConvBnAct>,
}

/// Everything the forward saves, on the device.
pub struct CudaActivations {
    batch: usize,
    h: usize,
    w: usize,
    stem: CudaConvBnAct,
    pool: CudaTensor,
    pool_argmax: CudaTensor,
    blocks: Vec<CudaBlockAct>,
    /// CAM head: the boosted CAM (B, C, h, w); linear head: the pooled features (B, K).
    head: CudaTensor,
    /// (B, C).
    pub logits: CudaTensor,
}

impl CudaActivations {
    /// The CAM head's boosted CAMs (B, C, h, w); None for a linear head (its head output is
    /// the pooled features (B, K)).
    pub fn cam(&self) -> Option<&CudaTensor> {
        (self.head.shape().len() == 4).then_some(&self.head)
    }
}

/// The losses of one step, read back from the device.
#[derive(Clone, Debug)]
pub struct CudaStepLosses {
    pub bce: f32,
    pub consistency: f32,
    /// View 1's training-mode logits (B, C).
    pub logits: Vec<f32>,
}

pub struct CudaResNet {
    pub gpu: Arc<Gpu>,
    pub cfg: ResNetConfig,
    slots: Vec<Slot>,
    buffer_slots: Vec<Slot>,
    /// The flat buffers, in the CPU model's layout: parameters, their gradients, Adam's
    /// moments (each the length of `ResNet::params`) and the running statistics.
    params: CudaTensor,
    grads: CudaTensor,
    m: CudaTensor,
    v: CudaTensor,
    buffers: CudaTensor,
    stem: CudaConvBn,
    blocks: Vec<CudaBottleneck>,
    head_w: usize,
    head_b: usize,
}

/// The view of slot `s` in a flat device buffer, in its device shape.
fn slot_view<'a>(gpu: &Gpu, flat: &'a CudaTensor, s: &Slot) -> Result<CudaView<'a>> {
    flat.view(gpu, s.offset, &device_shape(s))
}

/// Writable views of two distinct slots of a flat device buffer.
fn slot_views_mut<'a>(gpu: &Gpu, flat: &'a mut CudaTensor, a: &Slot, b: &Slot) -> Result<[CudaViewMut<'a>; 2]> {
    let (sa, sb) = (device_shape(a), device_shape(b));
    flat.views_mut(gpu, [(a.offset, &sa), (b.offset, &sb)])
}

/// The device shape of a slot: the CAM head's 1x1 conv weight (C, K, 1, 1) is the (C, K)
/// matrix the head kernels take; every other tensor keeps its shape.
fn device_shape(s: &Slot) -> Vec<usize> {
    if s.name == "head.weight" && s.shape.len() == 4 {
        vec![s.shape[0], s.shape[1]]
    } else {
        s.shape.clone()
    }
}

impl CudaResNet {
    /// Copies the CPU model and the optimiser's moments to the device.
    pub fn upload(gpu: &Arc<Gpu>, model: &ResNet, opt: &Adam) -> Result<CudaResNet> {
        if opt.m.len() != model.params.len() || opt.v.len() != model.params.len() {
            return Err(Error::Shape(format!(
                "CUDA ResNet: Adam moments of {} / {} for {} parameters",
                opt.m.len(),
                opt.v.len(),
                model.params.len()
            )));
        }
        let flat = |data: &[f32]| CudaTensor::from_f32(gpu, &[data.len()], data, F32);
        let params = flat(&model.params)?;
        let m = flat(&opt.m)?;
        let v = flat(&opt.v)?;
        let grads = CudaTensor::zeros(gpu, &[model.params.len()], F32)?;
        let buffers = flat(&model.buffers)?;
        let index = |slots: &[Slot], offset: usize| -> Result<usize> {
            slots
                .iter()
                .position(|s| s.offset == offset)
                .ok_or_else(|| Error::Internal(format!("CUDA ResNet: no tensor at offset {offset}")))
        };
        let layer = |l: &ConvBn| -> Result<CudaConvBn> {
            Ok(CudaConvBn {
                w: index(&model.slots, l.w)?,
                gamma: index(&model.slots, l.gamma)?,
                beta: index(&model.slots, l.beta)?,
                running_mean: index(&model.buffer_slots, l.running_mean)?,
                running_var: index(&model.buffer_slots, l.running_var)?,
                layer: l.clone(),
            })
        };
        let blocks = model
            .blocks
            .iter()
            .map(|b| {
                Ok(CudaBottleneck {
                    conv1: layer(&b.conv1)?,
                    conv2: layer(&b.conv2)?,
                    conv3: layer(&b.conv3)?,
                    down: b.down.as_ref().map(layer).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaResNet {
            gpu: gpu.clone(),
            cfg: model.cfg.clone(),
            slots: model.slots.clone(),
            buffer_slots: model.buffer_slots.clone(),
            params,
            grads,
            m,
            v,
            buffers,
            stem: layer(&model.stem)?,
            blocks,
            head_w: index(&model.slots, model.head_w)?,
            head_b: index(&model.slots, model.head_b)?,
        })
    }

    /// Copies parameters, running statistics and Adam moments back into the CPU model and
    /// optimiser (for checkpoints and tests). The gradients stay on the device.
    pub fn download_into(&self, model: &mut ResNet, opt: &mut Adam) -> Result<()> {
        let gpu = &self.gpu;
        let n = model.params.len();
        let nb = model.buffers.len();
        if opt.m.len() != n || opt.v.len() != n || n != self.params.numel() || nb != self.buffers.numel() {
            return Err(Error::Shape(format!(
                "CUDA ResNet download: {} parameters and {} buffer values on the device, {n} and {nb} in \
                 the model, moments {} / {}",
                self.params.numel(),
                self.buffers.numel(),
                opt.m.len(),
                opt.v.len()
            )));
        }
        model.params.copy_from_slice(&self.params.to_f32_vec(gpu)?);
        opt.m.copy_from_slice(&self.m.to_f32_vec(gpu)?);
        opt.v.copy_from_slice(&self.v.to_f32_vec(gpu)?);
        model.buffers.copy_from_slice(&self.buffers.to_f32_vec(gpu)?);
        Ok(())
    }

    /// The gradients as one flat vector in the CPU layout (tests).
    pub fn grads_flat(&self) -> Result<Vec<f32>> {
        self.grads.to_f32_vec(&self.gpu)
    }

    /// One memset over the flat gradient buffer.
    pub fn zero_grad(&mut self) -> Result<()> {
        self.grads.fill_zero(&self.gpu)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_bn_forward(
        &mut self,
        l: &CudaConvBn,
        x: &CudaTensor,
        b: usize,
        h: usize,
        w: usize,
        relu: bool,
        train: bool,
    ) -> Result<CudaConvBnAct> {
        let gpu = self.gpu.clone();
        let s = l.layer.shape(b, h, w);
        let (ho, wo) = s.out_hw();
        let c = l.layer.c_out;
        let mut z = CudaTensor::empty(&gpu, &[b, c, ho, wo], F32)?;
        let weight = slot_view(&gpu, &self.params, &self.slots[l.w])?;
        conv2d_cuda(&gpu, x, &weight, None, &s, false, None, &mut z)?;
        let mut y = CudaTensor::empty(&gpu, &[b, c, ho, wo], F32)?;
        let gamma = slot_view(&gpu, &self.params, &self.slots[l.gamma])?;
        let beta = slot_view(&gpu, &self.params, &self.slots[l.beta])?;
        let (mean_slot, var_slot) = (&self.buffer_slots[l.running_mean], &self.buffer_slots[l.running_var]);
        let stats = if train {
            let (mut mean, mut rstd) = (CudaTensor::empty(&gpu, &[c], F32)?, CudaTensor::empty(&gpu, &[c], F32)?);
            let mut ws = CudaTensor::empty(&gpu, &[batch_norm_workspace_len(b, c, ho * wo)], F32)?;
            let [mut rm, mut rv] = slot_views_mut(&gpu, &mut self.buffers, mean_slot, var_slot)?;
            batch_norm_train_cuda(&gpu, &z, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd, &mut ws)?;
            Some((mean, rstd))
        } else {
            let rm = slot_view(&gpu, &self.buffers, mean_slot)?;
            let rv = slot_view(&gpu, &self.buffers, var_slot)?;
            batch_norm_eval_cuda(&gpu, &z, &gamma, &beta, &rm, &rv, &mut y)?;
            None
        };
        if relu {
            relu_inplace_cuda(&gpu, &mut y)?;
        }
        Ok(CudaConvBnAct { z, stats, y, h: ho, w: wo })
    }

    /// Forward of x (B, 3, H, W) on the device: training mode (batch statistics, running
    /// statistics updated) or eval mode.
    pub fn forward(&mut self, x: &CudaTensor, train: bool) -> Result<CudaActivations> {
        let gpu = self.gpu.clone();
        let &[b, 3, h, w] = x.shape() else {
            return Err(Error::Shape(format!("CUDA ResNet: input {:?}, expected (B, 3, H, W)", x.shape())));
        };
        let stem_l = self.stem.clone();
        let stem = self.conv_bn_forward(&stem_l, x, b, h, w, true, train)?;
        let ps = MaxPoolShape { h: stem.h, w: stem.w, kernel: 3, stride: 2, pad: 1 };
        let (pool_h, pool_w) = ps.out_hw();
        let width = self.cfg.width;
        let mut pool = CudaTensor::empty(&gpu, &[b, width, pool_h, pool_w], F32)?;
        let mut pool_argmax = CudaTensor::empty(&gpu, &[b, width, pool_h, pool_w], DType::I32)?;
        max_pool2d_cuda(&gpu, &stem.y, &ps, &mut pool, &mut pool_argmax)?;
        let mut acts: Vec<CudaBlockAct> = Vec::with_capacity(self.blocks.len());
        let (mut ch, mut cw) = (pool_h, pool_w);
        let layers: Vec<(CudaConvBn, CudaConvBn, CudaConvBn, Option<CudaConvBn>)> =
            self.blocks.iter().map(|b| (b.conv1.clone(), b.conv2.clone(), b.conv3.clone(), b.down.clone())).collect();
        for (l1, l2, l3, ld) in &layers {
            let a1;
            let down;
            {
                let input: &CudaTensor = acts.last().map_or(&pool, |a| &a.conv3.y);
                a1 = self.conv_bn_forward(l1, input, b, ch, cw, true, train)?;
                down = ld.as_ref().map(|d| self.conv_bn_forward(d, input, b, ch, cw, false, train)).transpose()?;
            }
            let a2 = self.conv_bn_forward(l2, &a1.y, b, a1.h, a1.w, true, train)?;
            let mut a3 = self.conv_bn_forward(l3, &a2.y, b, a2.h, a2.w, false, train)?;
            {
                let input: &CudaTensor = acts.last().map_or(&pool, |a| &a.conv3.y);
                add_inplace_cuda(&gpu, &mut a3.y, down.as_ref().map_or(input, |d| &d.y))?;
            }
            relu_inplace_cuda(&gpu, &mut a3.y)?;
            (ch, cw) = (a3.h, a3.w);
            acts.push(CudaBlockAct { conv1: a1, conv2: a2, conv3: a3, down });
        }
        let (k, c) = (self.cfg.feature_dim(), self.cfg.num_classes);
        let feats = &acts.last().ok_or_else(|| Error::Shape("resnet with no blocks".into()))?.conv3.y;
        let mut logits = CudaTensor::empty(&gpu, &[b, c], F32)?;
        let hw_ = slot_view(&gpu, &self.params, &self.slots[self.head_w])?;
        let hb = slot_view(&gpu, &self.params, &self.slots[self.head_b])?;
        let head = match self.cfg.head {
            HeadKind::Cam => {
                let mut cam = CudaTensor::empty(&gpu, &[b, c, ch, cw], F32)?;
                cam_head_cuda(&gpu, feats, &hw_, &hb, self.cfg.alpha, &mut cam, &mut logits)?;
                cam
            }
            HeadKind::Linear => {
                let mut pooled = CudaTensor::empty(&gpu, &[b, k], F32)?;
                linear_head_cuda(&gpu, feats, &hw_, &hb, &mut pooled, &mut logits)?;
                pooled
            }
        };
        Ok(CudaActivations { batch: b, h, w, stem, pool, pool_argmax, blocks: acts, head, logits })
    }

    /// Backward of one conv + batch norm from dy (already masked by the layer's ReLU):
    /// gradients accumulated; dx (B, C_in, h, w) returned when wanted.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn_backward(
        &mut self,
        l: &CudaConvBn,
        x: &CudaTensor,
        h: usize,
        w: usize,
        act: &CudaConvBnAct,
        dy: &CudaTensor,
        b: usize,
        want_dx: bool,
    ) -> Result<Option<CudaTensor>> {
        let gpu = self.gpu.clone();
        let c = l.layer.c_out;
        let (mean, rstd) =
            act.stats.as_ref().ok_or_else(|| Error::Shape("CUDA ResNet backward: needs a training forward".into()))?;
        let mut dz = CudaTensor::empty(&gpu, dy.shape(), F32)?;
        let mut ws = CudaTensor::empty(&gpu, &[batch_norm_workspace_len(b, c, act.h * act.w)], F32)?;
        let gamma = slot_view(&gpu, &self.params, &self.slots[l.gamma])?;
        {
            let [mut dgamma, mut dbeta] =
                slot_views_mut(&gpu, &mut self.grads, &self.slots[l.gamma], &self.slots[l.beta])?;
            batch_norm_backward_cuda(&gpu, &act.z, dy, &gamma, mean, rstd, &mut dz, &mut dgamma, &mut dbeta, &mut ws)?;
        }
        let s = l.layer.shape(b, h, w);
        let w_slot = &self.slots[l.w];
        {
            let [mut dw] = self.grads.views_mut(&gpu, [(w_slot.offset, &device_shape(w_slot))])?;
            conv2d_backward_weight_cuda(&gpu, x, &dz, &s, &mut dw)?;
        }
        if !want_dx {
            return Ok(None);
        }
        let mut dx = CudaTensor::empty(&gpu, &[b, l.layer.c_in, h, w], F32)?;
        let weight = slot_view(&gpu, &self.params, w_slot)?;
        conv2d_backward_data_cuda(&gpu, &dz, &weight, &s, &mut dx)?;
        Ok(Some(dx))
    }

    /// Backward from dlogits (B, C) on the device: every parameter gradient is added to the
    /// device gradients. `x` and `acts` are the input and activations of a training forward.
    pub fn backward(&mut self, x: &CudaTensor, acts: &CudaActivations, dlogits: &CudaTensor) -> Result<()> {
        let gpu = self.gpu.clone();
        let b = acts.batch;
        let (k, c) = (self.cfg.feature_dim(), self.cfg.num_classes);
        if dlogits.shape() != [b, c] {
            return Err(Error::Shape(format!(
                "CUDA ResNet backward: dlogits {:?}, expected [{b}, {c}]",
                dlogits.shape()
            )));
        }
        let last = &acts.blocks.last().ok_or_else(|| Error::Shape("resnet with no blocks".into()))?.conv3;
        let mut d = CudaTensor::empty(&gpu, &[b, k, last.h, last.w], F32)?;
        {
            let (w_slot, b_slot) = (&self.slots[self.head_w], &self.slots[self.head_b]);
            let [mut gw, mut gb] = slot_views_mut(&gpu, &mut self.grads, w_slot, b_slot)?;
            let hwt = slot_view(&gpu, &self.params, w_slot)?;
            match self.cfg.head {
                HeadKind::Cam => cam_head_backward_cuda(
                    &gpu,
                    &last.y,
                    &hwt,
                    self.cfg.alpha,
                    &acts.head,
                    dlogits,
                    &mut gw,
                    &mut gb,
                    &mut d,
                )?,
                HeadKind::Linear => {
                    linear_head_backward_cuda(&gpu, &acts.head, &hwt, dlogits, &mut gw, &mut gb, &mut d)?
                }
            }
        }
        let layers: Vec<(CudaConvBn, CudaConvBn, CudaConvBn, Option<CudaConvBn>)> =
            self.blocks.iter().map(|b| (b.conv1.clone(), b.conv2.clone(), b.conv3.clone(), b.down.clone())).collect();
        for (i, ((l1, l2, l3, ld), a)) in layers.iter().zip(&acts.blocks).enumerate().rev() {
            let (input, ih, iw): (&CudaTensor, usize, usize) = if i == 0 {
                (&acts.pool, acts.pool.dim(2), acts.pool.dim(3))
            } else {
                let p = &acts.blocks[i - 1].conv3;
                (&p.y, p.h, p.w)
            };
            relu_backward_inplace_cuda(&gpu, &a.conv3.y, &mut d)?;
            let mut d2 = self
                .conv_bn_backward(l3, &a.conv2.y, a.conv2.h, a.conv2.w, &a.conv3, &d, b, true)?
                .expect("dx requested");
            relu_backward_inplace_cuda(&gpu, &a.conv2.y, &mut d2)?;
            let mut d1 = self
                .conv_bn_backward(l2, &a.conv1.y, a.conv1.h, a.conv1.w, &a.conv2, &d2, b, true)?
                .expect("dx requested");
            relu_backward_inplace_cuda(&gpu, &a.conv1.y, &mut d1)?;
            let mut dx = self.conv_bn_backward(l1, input, ih, iw, &a.conv1, &d1, b, true)?.expect("dx requested");
            match (ld, &a.down) {
                (Some(l), Some(da)) => {
                    let dd = self.conv_bn_backward(l, input, ih, iw, da, &d, b, true)?.expect("dx requested");
                    add_inplace_cuda(&gpu, &mut dx, &dd)?;
                }
                _ => add_inplace_cuda(&gpu, &mut dx, &d)?,
            }
            d = dx;
        }
        let ps = MaxPoolShape { h: acts.stem.h, w: acts.stem.w, kernel: 3, stride: 2, pad: 1 };
        let mut ds = CudaTensor::empty(&gpu, acts.stem.y.shape(), F32)?;
        max_pool2d_backward_cuda(&gpu, &d, &acts.pool_argmax, &ps, &mut ds)?;
        relu_backward_inplace_cuda(&gpu, &acts.stem.y, &mut ds)?;
        let stem = self.stem.clone();
        self.conv_bn_backward(&stem, x, acts.h, acts.w, &acts.stem, &ds, b, false)?;
        Ok(())
    }

    /// One training step of CCD's loss (`train::step::forward_backward` on the device) and the
    /// Adam step after it: gradients zeroed, view 1 (and view 2) forward in training mode, the
    /// fused losses, both backwards (view 2's first, as the CPU step), Adam. view1 / view2
    /// (B, 3, H, W) and targets (B, C) on the host; the two loss values come back.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        opt: &mut Adam,
        view1: &[f32],
        view2: Option<&[f32]>,
        b: usize,
        h: usize,
        w: usize,
        targets: &[f32],
        consistency_weight: f32,
    ) -> Result<CudaStepLosses> {
        let gpu = self.gpu.clone();
        let c = self.cfg.num_classes;
        if targets.len() != b * c || view1.len() != b * 3 * h * w || view2.is_some_and(|v| v.len() != view1.len()) {
            return Err(Error::Shape(format!(
                "CUDA training step: batch {b} x 3 x {h} x {w}, {c} classes, targets {}",
                targets.len()
            )));
        }
        self.zero_grad()?;
        let x1 = CudaTensor::from_f32(&gpu, &[b, 3, h, w], view1, F32)?;
        let t = CudaTensor::from_f32(&gpu, &[b, c], targets, F32)?;
        let mut ws = CudaTensor::empty(&gpu, &[LOSS_WORKSPACE_LEN], F32)?;
        let acts1 = self.forward(&x1, true)?;
        let mut d1 = CudaTensor::zeros(&gpu, &[b, c], F32)?;
        let mut bce = CudaTensor::empty(&gpu, &[1], F32)?;
        bce_with_logits_cuda(&gpu, &acts1.logits, &t, None, 1.0, &mut d1, &mut bce, &mut ws)?;
        let mut consistency = None;
        if let Some(v2) = view2 {
            let x2 = CudaTensor::from_f32(&gpu, &[b, 3, h, w], v2, F32)?;
            let acts2 = self.forward(&x2, true)?;
            let mut d2 = CudaTensor::zeros(&gpu, &[b, c], F32)?;
            let mut loss = CudaTensor::empty(&gpu, &[1], F32)?;
            consistency_bce_cuda(&gpu, &acts1.logits, &acts2.logits, consistency_weight, &mut d2, &mut loss, &mut ws)?;
            self.backward(&x2, &acts2, &d2)?;
            consistency = Some(loss);
        }
        self.backward(&x1, &acts1, &d1)?;
        adam_step_cuda(&gpu, opt, &mut self.params, &self.grads, &mut self.m, &mut self.v)?;
        let bce = bce.to_f32_vec(&gpu)?[0];
        let consistency = match consistency {
            Some(t) => t.to_f32_vec(&gpu)?[0],
            None => 0.0,
        };
        Ok(CudaStepLosses { bce, consistency, logits: acts1.logits.to_f32_vec(&gpu)? })
    }

    /// Eval-mode logits (B, C) of host images x (B, 3, H, W).
    pub fn logits_eval(&mut self, x: &[f32], b: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let xd = CudaTensor::from_f32(&self.gpu, &[b, 3, h, w], x, F32)?;
        let acts = self.forward(&xd, false)?;
        acts.logits.to_f32_vec(&self.gpu)
    }
}

/// One training step (two views, consistency weight 1, then Adam) on the device against the
/// CPU step on the same model, batch and optimiser: every gradient, then the parameters, Adam
/// moments and running statistics after the step, and the two losses. Tiny ResNets with both
/// heads (the test path of the CPU trainer) and ResNet-50 at 224; the timed launch is the
/// whole step (upload of the batch, two forwards, two backwards, Adam).
pub fn gpu_checks() -> Vec<crate::device::cuda::check::GpuCheck> {
    use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
    use crate::train::adam::ParamGroup;
    use crate::train::step::forward_backward;

    // (op, stem width, blocks per stage, classes, head, batch, image side)
    type StepCase = (&'static str, usize, [usize; 4], usize, HeadKind, usize, usize);
    let cases: [StepCase; 3] = [
        ("resnet_train_step", 4, [1, 2, 1, 1], 5, HeadKind::Cam, 3, 48),
        ("resnet_train_step", 4, [1, 1, 2, 1], 7, HeadKind::Linear, 2, 40),
        ("resnet_train_step", 64, [3, 4, 6, 3], 80, HeadKind::Cam, 2, 224),
    ];
    let mut checks = Vec::new();
    for (op, width, layers, classes, head, b, size) in cases {
        let shape = format!("width={width} layers={layers:?} C={classes} head={head:?} B={b} {size}x{size} two views");
        // A training step is about three forwards; ResNet-50 forward at 224: 4.1 GMAC.
        let macs = 4.1e9 * (width as f64 / 64.0).powi(2) * (size as f64 / 224.0).powi(2);
        let work = Work::Flops(2.0 * 3.0 * 2.0 * macs * b as f64);
        checks.push(
            GpuCheck::new(op, shape, DType::F32, work, move |gpu, rng| {
                let cfg = ResNetConfig { width, layers, num_classes: classes, head, alpha: 3.0 };
                let seed = rand::Rng::gen::<u64>(rng);
                let mut cpu = ResNet::new(cfg, seed);
                let n = cpu.params.len();
                let groups = vec![
                    ParamGroup { range: 0..cpu.head_start, lr: 1e-3 },
                    ParamGroup { range: cpu.head_start..n, lr: 1e-2 },
                ];
                let mut opt = Adam::new(n, groups);
                let mut dev = CudaResNet::upload(gpu, &cpu, &opt)?;
                let mut dev_opt = opt.clone();
                let (v1, v2) = (random_vec(rng, b * 3 * size * size, 2.0), random_vec(rng, b * 3 * size * size, 2.0));
                let targets: Vec<f32> = random_vec(rng, b * classes, 0.5).iter().map(|v| v + 0.5).collect();
                cpu.zero_grad();
                let want = forward_backward(&mut cpu, &v1, Some(&v2), b, size, size, &targets, None, 1.0)?;
                let got = dev.train_step(&mut dev_opt, &v1, Some(&v2), b, size, size, &targets, 1.0)?;
                let dev_grads = dev.grads_flat()?;
                let mut err = max_rel_err(&dev_grads, &cpu.grads);
                // Adam's first step moves each parameter by about lr * sign(g): a gradient near
                // zero whose last digits differ (another summation order) moves differently. So
                // the step after the gradients is checked on the device's own gradients.
                opt.step(&mut cpu.params, &dev_grads);
                let mut after = ResNet::new(cpu.cfg.clone(), seed);
                let mut after_opt = opt.clone();
                dev.download_into(&mut after, &mut after_opt)?;
                for (g, c) in [
                    (&after.params, &cpu.params),
                    (&after.buffers, &cpu.buffers),
                    (&after_opt.m, &opt.m),
                    (&after_opt.v, &opt.v),
                ] {
                    err = err.max(max_rel_err(g, c));
                }
                for (g, c) in [(got.bce, want.bce), (got.consistency, want.consistency)] {
                    err = err.max(((g - c).abs() / c.abs().max(1e-6)) as f64);
                }
                let mut o = dev_opt;
                Ok(CheckRun {
                    max_rel_err: err,
                    launch: Box::new(move || {
                        dev.train_step(&mut o, &v1, Some(&v2), b, size, size, &targets, 1.0).map(|_| ())
                    }),
                    cublas: None,
                })
            })
            // Two forwards and backwards through up to 53 layers with a different summation
            // order than the CPU: the gradients agree to ~1e-5; 1e-3 leaves room for the deep
            // reductions (batch-norm statistics over B*H*W, weight gradients over B*Ho*Wo).
            .with_tolerance(1e-3),
        );
    }
    checks
}
