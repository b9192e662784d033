//! labelfree: annotation-free multi-label image classification with CLIP.
//!
//! Layout (see DESIGN.md): `tensor` and `device` hold data; `ops` holds one file per op with
//! its CPU reference (and CUDA launcher beside it); `models::clip` builds the encoders from
//! those ops; `data` reads datasets, decodes and transforms images; `methods` are the pipelines
//! the CLI calls; `eval` scores their outputs (AP, mAP, F1).

pub mod bench;
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
