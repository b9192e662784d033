//! One file per op: its CPU reference (f32, rayon) and, beside it, its CUDA launcher.
//!
//! Each op has a tensor-level entry (`linear`, `layer_norm`, ...) that checks shapes and
//! dispatches on the device, and slice-level CPU kernels (`*_cpu`) that the models and the
//! tests call directly. The CUDA launchers join each file with the CUDA backend.

pub mod activation;
pub mod attention;
pub mod batchnorm;
pub mod bce;
pub mod cam_box;
pub mod cam_head;
pub mod contours;
pub mod conv2d;
pub mod conv2d_backward;
pub mod conv2d_nhwc;
pub mod crop_resize;
pub mod crop_resize_planes;
pub mod dmar;
pub mod embedding;
pub mod gap;
pub mod gemm_packed;
pub mod interpolate;
pub mod layernorm;
pub mod matmul;
pub mod maxpool;
pub mod pool;
pub mod relu;
pub mod residual;
pub mod similarity;
pub mod softmax;
pub mod tokens;

/// A raw pointer that rayon tasks may share when each task writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Sync) wrapper, not the raw field.
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}
