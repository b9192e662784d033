//! Every element of a tensor set to one value: the kernel twin of a memset. The training step
//! zeroes its gradient buffer and its loss gradients with it, so that the whole step is kernel
//! launches and can be captured as one graph (`Gpu::capture`, where a memset is refused).

use half::{bf16, f16};

use crate::device::cuda::check::{launch_and_compare, max_rel_err, random_vec, GpuCheck, Work};
use crate::device::cuda::{grid_stride_config, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// x[i] = value for every i.
pub fn fill_cpu(x: &mut [f32], value: f32) {
    x.fill(value);
}

/// CUDA twin of `fill_cpu` (kernels/fill.cu) on any float or i32 tensor, or a view: `value`
/// converted to the tensor's dtype once on the host (i32: truncated), its bit pattern stored in
/// every element. (u8 tensors have no fill kernel: nothing needs one.)
pub fn fill_cuda(gpu: &Gpu, x: &mut CudaTensor, value: f32) -> Result<()> {
    let (function, bits) = match x.dtype() {
        DType::F32 => ("fill_b32", value.to_bits()),
        DType::I32 => ("fill_b32", value as i32 as u32),
        DType::BF16 => ("fill_b16", twice(bf16::from_f32(value).to_bits())),
        DType::F16 => ("fill_b16", twice(f16::from_f32(value).to_bits())),
        DType::U8 => return Err(Error::Device("fill_cuda: u8 tensors have no fill kernel".into())),
    };
    let n = x.numel();
    // Each thread stores 16 bytes a loop.
    let per_thread = 16 / x.dtype().size_in_bytes();
    gpu.launch(
        "fill",
        function,
        grid_stride_config(n.div_ceil(per_thread)),
        &[x.arg(gpu), (n as i64).into(), bits.into()],
    )
}

/// A 16-bit pattern in both halves of a 32-bit word (the 16-byte stores' unit).
fn twice(bits: u16) -> u32 {
    (bits as u32) << 16 | bits as u32
}

/// Zeroes `x` (`fill_cuda` with 0).
pub fn fill_zero_cuda(gpu: &Gpu, x: &mut CudaTensor) -> Result<()> {
    fill_cuda(gpu, x, 0.0)
}

/// Kernel checks: the ResNet-50 gradient buffer (23.5M f32, the trainer's zero_grad), an odd
/// length in f32 and bf16, and views whose first element is not 16-byte aligned (a slot of a
/// flat buffer), where the elements around the view must keep their values.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    // (dtype, elements, view offset in the parent: None = the whole tensor)
    let cases: [(DType, usize, Option<usize>); 6] = [
        (DType::F32, 23_508_032, None),
        (DType::F32, 1001, None),
        (DType::BF16, 1001, None),
        (DType::F32, 1001, Some(3)),
        (DType::BF16, 37, Some(5)),
        (DType::F32, 2, Some(1)),
    ];
    for (dt, n, offset) in cases {
        let shape = match offset {
            Some(o) => format!("[{n}] view at {o}"),
            None => format!("[{n}]"),
        };
        let work = Work::Bytes((n * dt.size_in_bytes()) as f64);
        checks.push(GpuCheck::new("fill", shape, dt, work, move |gpu, rng| {
            let value = 1.5f32;
            let o = offset.unwrap_or(0);
            // The parent: 7 more elements after the view, all random, so an overrun shows.
            let len = if offset.is_some() { o + n + 7 } else { n };
            let mut want = dt.round(random_vec(rng, len, 1.0));
            let parent = CudaTensor::from_f32(gpu, &[len], &want, dt)?;
            fill_cpu(&mut want[o..o + n], value);
            launch_and_compare(
                gpu,
                parent,
                move |g, p| {
                    let [mut v] = p.views_mut(g, [(o, &[n])])?;
                    fill_cuda(g, &mut v, value)
                },
                move |g, p| Ok(max_rel_err(&p.to_f32_vec(g)?, &want)),
            )
        }));
    }
    checks
}
