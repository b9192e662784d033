//! Device tensors: shape + dtype + one device buffer, contiguous, row-major — the device twin
//! of `crate::tensor::Tensor`. Kept as its own type so that the CPU ops, which work on host
//! slices, never have to handle a device variant.
//!
//! Launchers pass buffers to kernels as raw device pointers (`ptr()`): every op of a `Gpu`
//! runs on its single stream, so cudarc's per-buffer event tracking is switched off and
//! ordering is the stream's.

use std::str::FromStr;

use cudarc::driver::{CudaSlice, DevicePtr};
use half::{bf16, f16};

use super::{driver_err, Gpu};
use crate::error::{Error, Result};
use crate::tensor::{numel, Storage, Tensor};

/// Element types that kernels take. f32/bf16/f16 for activations and weights, u8 for images,
/// i32 for indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaDType {
    F32,
    BF16,
    F16,
    U8,
    I32,
}

impl CudaDType {
    /// The suffix of a kernel's name for this element type (`layernorm_forward_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            CudaDType::F32 => "f32",
            CudaDType::BF16 => "bf16",
            CudaDType::F16 => "f16",
            CudaDType::U8 => "u8",
            CudaDType::I32 => "i32",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            CudaDType::F32 | CudaDType::I32 => 4,
            CudaDType::BF16 | CudaDType::F16 => 2,
            CudaDType::U8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, CudaDType::F32 | CudaDType::BF16 | CudaDType::F16)
    }

    /// The relative error a kernel in this dtype is held to against the f32 CPU reference.
    pub fn tolerance(self) -> f32 {
        match self {
            CudaDType::F32 => 1e-4,
            _ => 1e-2,
        }
    }
}

impl FromStr for CudaDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(CudaDType::F32),
            "bf16" => Ok(CudaDType::BF16),
            "f16" => Ok(CudaDType::F16),
            _ => Err(Error::Device(format!(
                "unknown --dtype `{s}` (use f32, bf16 or f16)"
            ))),
        }
    }
}

pub enum CudaBuf {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
    U8(CudaSlice<u8>),
    I32(CudaSlice<i32>),
}

pub struct CudaTensor {
    shape: Vec<usize>,
    buf: CudaBuf,
}

impl CudaTensor {
    /// Uninitialised device memory: the kernel that fills it must write every element. Tests
    /// use `poison` to catch a kernel that does not.
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: CudaDType) -> Result<CudaTensor> {
        let n = numel(shape).max(1);
        let s = &gpu.stream;
        let err = |e| driver_err(&format!("allocating {shape:?} {dtype:?}"), e);
        // SAFETY: the memory is only read after a kernel (or a copy) has written it.
        let buf = unsafe {
            match dtype {
                CudaDType::F32 => CudaBuf::F32(s.alloc::<f32>(n).map_err(err)?),
                CudaDType::BF16 => CudaBuf::BF16(s.alloc::<bf16>(n).map_err(err)?),
                CudaDType::F16 => CudaBuf::F16(s.alloc::<f16>(n).map_err(err)?),
                CudaDType::U8 => CudaBuf::U8(s.alloc::<u8>(n).map_err(err)?),
                CudaDType::I32 => CudaBuf::I32(s.alloc::<i32>(n).map_err(err)?),
            }
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            buf,
        })
    }

    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: CudaDType) -> Result<CudaTensor> {
        let n = numel(shape).max(1);
        let s = &gpu.stream;
        let err = |e| driver_err(&format!("allocating {shape:?} {dtype:?}"), e);
        let buf = match dtype {
            CudaDType::F32 => CudaBuf::F32(s.alloc_zeros::<f32>(n).map_err(err)?),
            CudaDType::BF16 => CudaBuf::BF16(s.alloc_zeros::<bf16>(n).map_err(err)?),
            CudaDType::F16 => CudaBuf::F16(s.alloc_zeros::<f16>(n).map_err(err)?),
            CudaDType::U8 => CudaBuf::U8(s.alloc_zeros::<u8>(n).map_err(err)?),
            CudaDType::I32 => CudaBuf::I32(s.alloc_zeros::<i32>(n).map_err(err)?),
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            buf,
        })
    }

    /// Copies f32 host data to the device, converting to `dtype` on the host.
    pub fn from_f32(
        gpu: &Gpu,
        shape: &[usize],
        data: &[f32],
        dtype: CudaDType,
    ) -> Result<CudaTensor> {
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        let s = &gpu.stream;
        let err = |e| driver_err("host to device copy", e);
        let buf = match dtype {
            CudaDType::F32 => CudaBuf::F32(s.clone_htod(data).map_err(err)?),
            CudaDType::BF16 => {
                let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                CudaBuf::BF16(s.clone_htod(&v).map_err(err)?)
            }
            CudaDType::F16 => {
                let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                CudaBuf::F16(s.clone_htod(&v).map_err(err)?)
            }
            CudaDType::I32 | CudaDType::U8 => {
                return Err(Error::Device(format!(
                    "from_f32 into {dtype:?}: use from_u8 / from_i32"
                )))
            }
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            buf,
        })
    }

    pub fn from_u8(gpu: &Gpu, shape: &[usize], data: &[u8]) -> Result<CudaTensor> {
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!(
                "{} bytes for shape {shape:?}",
                data.len()
            )));
        }
        let buf = gpu
            .stream
            .clone_htod(data)
            .map_err(|e| driver_err("host to device copy", e))?;
        Ok(CudaTensor {
            shape: shape.to_vec(),
            buf: CudaBuf::U8(buf),
        })
    }

    pub fn from_i32(gpu: &Gpu, shape: &[usize], data: &[i32]) -> Result<CudaTensor> {
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        let buf = gpu
            .stream
            .clone_htod(data)
            .map_err(|e| driver_err("host to device copy", e))?;
        Ok(CudaTensor {
            shape: shape.to_vec(),
            buf: CudaBuf::I32(buf),
        })
    }

    /// Uploads a host tensor (f32 is converted to `dtype`; u8/i32 keep theirs).
    pub fn from_tensor(gpu: &Gpu, t: &Tensor, dtype: CudaDType) -> Result<CudaTensor> {
        match t.storage() {
            Storage::F32(v) => Self::from_f32(gpu, t.shape(), v, dtype),
            Storage::U8(v) => Self::from_u8(gpu, t.shape(), v),
            Storage::I32(v) => Self::from_i32(gpu, t.shape(), v),
            Storage::F16(_) | Storage::BF16(_) => {
                Self::from_f32(gpu, t.shape(), t.to_f32()?.f32s()?, dtype)
            }
        }
    }

    /// Copies to the host as f32 (bf16/f16 widened). Synchronises the stream.
    pub fn to_f32_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let s = &gpu.stream;
        let err = |e| driver_err("device to host copy", e);
        let n = self.numel();
        let mut v = match &self.buf {
            CudaBuf::F32(b) => s.clone_dtoh(b).map_err(err)?,
            CudaBuf::BF16(b) => s
                .clone_dtoh(b)
                .map_err(err)?
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            CudaBuf::F16(b) => s
                .clone_dtoh(b)
                .map_err(err)?
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            CudaBuf::U8(b) => s
                .clone_dtoh(b)
                .map_err(err)?
                .iter()
                .map(|&x| x as f32)
                .collect(),
            CudaBuf::I32(b) => s
                .clone_dtoh(b)
                .map_err(err)?
                .iter()
                .map(|&x| x as f32)
                .collect(),
        };
        v.truncate(n);
        Ok(v)
    }

    pub fn to_tensor(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_f32(&self.shape, self.to_f32_vec(gpu)?)
    }

    /// Fills the buffer with NaN (floats) or 0xAB bytes, so that a kernel that skips an
    /// element is caught by the comparison.
    pub fn poison(&mut self, gpu: &Gpu) -> Result<()> {
        let s = &gpu.stream;
        let err = |e| driver_err("poisoning a buffer", e);
        match &mut self.buf {
            CudaBuf::F32(b) => s.memcpy_htod(&vec![f32::NAN; b.len()], b).map_err(err),
            CudaBuf::BF16(b) => s.memcpy_htod(&vec![bf16::NAN; b.len()], b).map_err(err),
            CudaBuf::F16(b) => s.memcpy_htod(&vec![f16::NAN; b.len()], b).map_err(err),
            CudaBuf::U8(b) => s.memcpy_htod(&vec![0xABu8; b.len()], b).map_err(err),
            CudaBuf::I32(b) => s.memcpy_htod(&vec![i32::MIN; b.len()], b).map_err(err),
        }
    }

    /// Sets every element to zero (a memset on the stream: gradient buffers between steps).
    pub fn fill_zero(&mut self, gpu: &Gpu) -> Result<()> {
        let s = &gpu.stream;
        let err = |e| driver_err("memset", e);
        match &mut self.buf {
            CudaBuf::F32(b) => s.memset_zeros(b).map_err(err),
            CudaBuf::BF16(b) => s.memset_zeros(b).map_err(err),
            CudaBuf::F16(b) => s.memset_zeros(b).map_err(err),
            CudaBuf::U8(b) => s.memset_zeros(b).map_err(err),
            CudaBuf::I32(b) => s.memset_zeros(b).map_err(err),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn dtype(&self) -> CudaDType {
        match &self.buf {
            CudaBuf::F32(_) => CudaDType::F32,
            CudaBuf::BF16(_) => CudaDType::BF16,
            CudaBuf::F16(_) => CudaDType::F16,
            CudaBuf::U8(_) => CudaDType::U8,
            CudaBuf::I32(_) => CudaDType::I32,
        }
    }

    pub fn buf(&self) -> &CudaBuf {
        &self.buf
    }

    /// The buffer for writing (library calls such as cuBLAS that take typed slices).
    pub fn buf_mut(&mut self) -> &mut CudaBuf {
        &mut self.buf
    }

    /// Same buffer, new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<CudaTensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!(
                "reshape {:?} -> {shape:?}",
                self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The device address of element 0, for a kernel argument. Valid while `self` lives.
    pub fn ptr(&self, gpu: &Gpu) -> u64 {
        let s = &gpu.stream;
        match &self.buf {
            CudaBuf::F32(b) => b.device_ptr(s).0,
            CudaBuf::BF16(b) => b.device_ptr(s).0,
            CudaBuf::F16(b) => b.device_ptr(s).0,
            CudaBuf::U8(b) => b.device_ptr(s).0,
            CudaBuf::I32(b) => b.device_ptr(s).0,
        }
    }

    /// This tensor's address as a kernel argument.
    pub fn arg(&self, gpu: &Gpu) -> super::KArg {
        super::KArg::Ptr(self.ptr(gpu))
    }

    /// Errors unless this tensor has `dtype`.
    pub fn expect_dtype(&self, dtype: CudaDType, what: &str) -> Result<()> {
        if self.dtype() != dtype {
            return Err(Error::Device(format!(
                "{what}: expected {dtype:?}, found {:?}",
                self.dtype()
            )));
        }
        Ok(())
    }
}
