//! The models, each a CPU model with a CUDA twin built from it: CLIP's encoders (`clip`) and
//! the trainer's ResNet (`resnet50` / `resnet50_cuda`).

pub mod clip;
pub mod resnet50;
pub mod resnet50_cuda;
