//! CCD (Classifier-guided CLIP Distillation, CVPR 2025; official code github k0u-id/CCD):
//! stage 0, debiased global CLIP labels ([`init`]), and stage 2, the classifier-guided local
//! views and the label update ([`relabel`]). Each stage is a function of arrays, so a stage can
//! be rerun alone from files; the official code's quirks are kept by default (see
//! ../shared/methods/ccd.md).

pub mod cli;
pub mod init;
pub mod labels;
pub mod relabel;
pub mod relabel_cli;
pub mod train;

use crate::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};

/// The official code's CLIP scale: softmax(100 * cos), whatever the model's logit_scale.
pub const CLIP_SCALE: f32 = 100.0;

/// CCD's CLIP input: a square bilinear resize (aspect ignored) with ImageNet statistics
/// (`datasets.ImageDataset` with `resize=(size, size)`), 640 in the official code.
pub fn clip_input(size: usize) -> Transform {
    Transform::SquareResize { size, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY }
}
