//! One training step's forward and backward for CCD's loss (CDUL's is the first term alone):
//! loss = mean(w_i * BCE(logits(view 1), y)) + lambda * mean BCE(logits(view 2),
//! sigmoid(logits(view 1)).detach()). Gradients are added to the model's gradient buffer.

use crate::error::{Error, Result};
use crate::models::resnet50::ResNet;
use crate::ops::bce::{bce_with_logits_cpu, consistency_bce_cpu};

pub struct StepLosses {
    pub bce: f32,
    /// The consistency term (0 without a second view).
    pub consistency: f32,
    pub logits1: Vec<f32>,
    pub logits2: Option<Vec<f32>>,
}

impl StepLosses {
    pub fn total(&self, consistency_weight: f32) -> f32 {
        self.bce + consistency_weight * self.consistency
    }
}

/// Forward (training mode) and backward of view 1 (B, 3, H, W) against soft `targets` (B, C)
/// with per-sample `weights`, plus, with `view2`, the consistency term times
/// `consistency_weight`. The running statistics see view 1 then view 2, as torch's two calls.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    model: &mut ResNet,
    view1: &[f32],
    view2: Option<&[f32]>,
    b: usize,
    h: usize,
    w: usize,
    targets: &[f32],
    weights: Option<&[f32]>,
    consistency_weight: f32,
) -> Result<StepLosses> {
    let c = model.cfg.num_classes;
    if targets.len() != b * c || weights.is_some_and(|w| w.len() != b) {
        return Err(Error::Shape(format!(
            "training step: targets {} / weights for batch {b} x {c} classes",
            targets.len()
        )));
    }
    let acts1 = model.forward_train(view1, b, h, w)?;
    let mut d1 = vec![0.0f32; b * c];
    let bce = bce_with_logits_cpu(&acts1.logits, targets, weights, c, 1.0, &mut d1);
    let (mut consistency, mut logits2) = (0.0, None);
    if let Some(v2) = view2 {
        let acts2 = model.forward_train(v2, b, h, w)?;
        let mut d2 = vec![0.0f32; b * c];
        consistency = consistency_bce_cpu(&acts1.logits, &acts2.logits, c, consistency_weight, &mut d2);
        model.backward(v2, &acts2, &d2)?;
        logits2 = Some(acts2.logits);
    }
    model.backward(view1, &acts1, &d1)?;
    Ok(StepLosses { bce, consistency, logits1: acts1.logits, logits2 })
}
