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
pub mod cast;
pub mod contours;
pub mod conv2d;
pub mod conv2d_backward;
pub mod conv2d_nhwc;
pub mod crop_resize;
pub mod crop_resize_planes;
pub mod dmar;
pub mod embedding;
pub mod fill;
pub mod gap;
pub mod gemm_packed;
pub mod interpolate;
pub mod layernorm;
pub mod layout;
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

/// The storage dtype of the training kernels' activations (x, y, dy, dx: f32, or bf16 for
/// mixed-precision training), checked to be one of the two and shared by every `tensors`
/// entry; parameters, statistics and their gradients stay f32 and are checked by the caller.
pub(crate) fn activation_dtype(
    what: &str,
    tensors: &[&crate::device::cuda::CudaTensor],
) -> crate::error::Result<crate::device::cuda::DType> {
    use crate::device::cuda::DType;
    let dtype = tensors.first().map_or(DType::F32, |t| t.dtype());
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(crate::error::Error::Device(format!("{what}: activations in {dtype:?}; f32 or bf16 expected")));
    }
    for (i, t) in tensors.iter().enumerate() {
        t.expect_dtype(dtype, &format!("{what} activation {i}"))?;
    }
    Ok(dtype)
}
