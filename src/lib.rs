//! labelfree: annotation-free multi-label image classification with CLIP.
//!
//! Layout (see DESIGN.md): `tensor` (the CPU tensor) and `device` (the GPU or simulator and its
//! `CudaTensor`) hold data; `ops` holds one file per op with its CPU reference, CUDA launcher and
//! kernel checks; `models` builds the encoders and the classifier from those ops (CPU models and
//! their `*_cuda` twins); `data` reads datasets, decodes and transforms images; `methods` are the
//! pipelines; `train` the classifier's trainer; `eval` scores their outputs (AP, mAP, F1); `cli`
//! the commands main.rs dispatches to (methods and train keep their own command modules).

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod gpu_check;
pub mod methods;
pub mod models;
pub mod ops;
pub mod tensor;
pub mod train;

pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
