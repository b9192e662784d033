//! Device tensors: shape + dtype + one device buffer (or a view of part of another tensor's,
//! `CudaTensor::view`), contiguous, row-major — the device twin of `crate::tensor::Tensor`. Kept as its own type so that the CPU ops, which work on host
//! slices, never have to handle a device variant.
//!
//! Launchers pass buffers to kernels as raw device pointers (`ptr()`): every op of a `Gpu`
//! runs on its single stream, so cudarc's per-buffer event tracking is switched off and
//! ordering is the stream's. On the PTX simulator the buffer is an allocation in its memory
//! table and the pointer its simulated device address.

use cudarc::driver::{CudaSlice, DevicePtr};
use half::{bf16, f16};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use std::sync::Arc;

use super::graph::{capturing, note_free_in_capture, CaptureSlot};
use super::pool::PoolLease;
use super::{driver_err, Backend, Gpu};
use crate::device::sim::Simulator;
use crate::error::{Error, Result};
use crate::tensor::{numel, Storage as TensorStorage, Tensor};

/// The one element-type enum, defined beside the CPU tensor; re-exported here because every
/// launcher names it with the device types.
pub use crate::tensor::DType;

/// A buffer on a GPU (through the driver).
pub enum CudaBuf {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
    U8(CudaSlice<u8>),
    I32(CudaSlice<i32>),
}

/// A buffer in the simulator's device memory; freed when dropped.
pub struct SimBuf {
    sim: Arc<Simulator>,
    addr: u64,
    bytes: usize,
}

impl SimBuf {
    /// `bytes` of simulator memory filled with 0xFF (NaN in every float dtype).
    pub(crate) fn alloc_poisoned(sim: &Arc<Simulator>, bytes: usize) -> crate::device::sim::SimResult<SimBuf> {
        let addr = sim.alloc(bytes)?;
        let buf = SimBuf { sim: sim.clone(), addr, bytes };
        sim.fill(addr, bytes, 0xFF)?;
        Ok(buf)
    }

    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for SimBuf {
    fn drop(&mut self) {
        // The address came from this simulator's alloc, so free cannot fail.
        let _ = self.sim.free(self.addr);
    }
}

enum Storage {
    Driver(CudaBuf),
    Sim(SimBuf),
    /// Part of another tensor's buffer, at this device address (GPU or simulator): only ever
    /// inside a `CudaView` / `CudaViewMut`, whose borrow keeps the owner alive.
    View {
        addr: u64,
    },
    /// A block of a graph's memory pool (`Gpu::capture_pooled`), given back when dropped: a
    /// kernel argument only, like a view (the work inside a capture copies nothing).
    Pooled {
        addr: u64,
        _lease: PoolLease,
    },
}

pub struct CudaTensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
    /// Refuses the graph capture this buffer is dropped in (`Gpu::capture`).
    _drop_check: CaptureDropCheck,
}

/// Dropping a buffer while its device captures a graph frees memory the graph will read:
/// the capture is refused (the graph.rs rule "buffers outlive their graphs").
struct CaptureDropCheck(Option<CaptureSlot>);

impl CaptureDropCheck {
    fn of(gpu: &Gpu) -> CaptureDropCheck {
        CaptureDropCheck(Some(gpu.capture.clone()))
    }
}

impl Drop for CaptureDropCheck {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            if capturing(slot) {
                note_free_in_capture(slot);
            }
        }
    }
}

/// Part of another tensor's buffer as a tensor of its own (`CudaTensor::view`): a kernel
/// argument that borrows its parent, so the parent outlives it. Flat parameter buffers hand
/// one per layer tensor to the launchers (the CUDA trainer, as llm.c's train_gpt2.cu).
pub struct CudaView<'a> {
    tensor: CudaTensor,
    _parent: PhantomData<&'a CudaTensor>,
}

/// A writable `CudaView`: borrows its parent mutably.
pub struct CudaViewMut<'a> {
    tensor: CudaTensor,
    _parent: PhantomData<&'a mut CudaTensor>,
}

impl Deref for CudaView<'_> {
    type Target = CudaTensor;
    fn deref(&self) -> &CudaTensor {
        &self.tensor
    }
}

impl Deref for CudaViewMut<'_> {
    type Target = CudaTensor;
    fn deref(&self) -> &CudaTensor {
        &self.tensor
    }
}

impl DerefMut for CudaViewMut<'_> {
    fn deref_mut(&mut self) -> &mut CudaTensor {
        &mut self.tensor
    }
}

/// What a view (or a graph pool's buffer) cannot do: it is a kernel argument; copies go through
/// the tensor that owns it (a graph's inputs and outputs are buffers of their own).
fn view_err(what: &str) -> Error {
    Error::Device(format!(
        "{what}: a view or a graph pool's buffer is a kernel argument only (copy through the tensor that owns it)"
    ))
}

fn sim_err(what: &str, e: crate::device::sim::SimError) -> Error {
    Error::Device(format!("{what}: {e}"))
}

/// The bytes of one poison element: NaN for floats, 0xAB bytes for u8, i32::MIN for i32.
fn poison_bytes(dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => f32::NAN.to_le_bytes().to_vec(),
        DType::BF16 => bf16::NAN.to_bits().to_le_bytes().to_vec(),
        DType::F16 => f16::NAN.to_bits().to_le_bytes().to_vec(),
        DType::U8 => vec![0xAB],
        DType::I32 => i32::MIN.to_le_bytes().to_vec(),
    }
}

/// f32 host values as the little-endian bytes of float `dtype` (the simulator's uploads).
fn f32_as_bytes_of(data: &[f32], dtype: DType, what: &str) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::BF16 => data.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
        DType::F16 => data.iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect(),
        DType::I32 | DType::U8 => return Err(Error::Device(format!("{what} into {dtype:?}: use from_u8 / from_i32"))),
    })
}

impl CudaTensor {
    /// A simulator buffer of `n` elements holding `bytes` (poison when None).
    fn sim_alloc(
        gpu: &Gpu,
        sim: &Arc<Simulator>,
        shape: &[usize],
        dtype: DType,
        bytes: Option<&[u8]>,
    ) -> Result<CudaTensor> {
        let n = numel(shape).max(1);
        let len = n * dtype.size_in_bytes();
        let addr = sim.alloc(len).map_err(|e| sim_err(&format!("allocating {shape:?} {dtype:?}"), e))?;
        let t = CudaTensor {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Sim(SimBuf { sim: sim.clone(), addr, bytes: len }),
            _drop_check: CaptureDropCheck::of(gpu),
        };
        match bytes {
            Some(b) => sim.write(addr, b).map_err(|e| sim_err("host to device copy", e))?,
            None => sim.write(addr, &poison_bytes(dtype).repeat(n)).map_err(|e| sim_err("poisoning a buffer", e))?,
        }
        Ok(t)
    }

    /// Uninitialised device memory: the kernel that fills it must write every element. Tests
    /// use `poison` to catch a kernel that does not. (On the simulator it starts poisoned, so
    /// a kernel that reads memory nobody wrote sees NaN, not zeros.)
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<CudaTensor> {
        if let Some(pool) = gpu.capture_pool() {
            let what = format!("{shape:?} {dtype:?}");
            let (addr, lease) = pool.take(gpu, numel(shape).max(1) * dtype.size_in_bytes(), &what)?;
            return Ok(CudaTensor {
                shape: shape.to_vec(),
                dtype,
                storage: Storage::Pooled { addr, _lease: lease },
                _drop_check: CaptureDropCheck(None),
            });
        }
        gpu.refuse_in_capture(&format!("allocating {shape:?} {dtype:?}"))?;
        let d = match gpu.backend() {
            Backend::Sim(sim) => return Self::sim_alloc(gpu, sim, shape, dtype, None),
            Backend::Driver(d) => d,
        };
        let n = numel(shape).max(1);
        let s = &d.stream;
        let err = |e| driver_err(&format!("allocating {shape:?} {dtype:?}"), e);
        // SAFETY: the memory is only read after a kernel (or a copy) has written it.
        let buf = unsafe {
            match dtype {
                DType::F32 => CudaBuf::F32(s.alloc::<f32>(n).map_err(err)?),
                DType::BF16 => CudaBuf::BF16(s.alloc::<bf16>(n).map_err(err)?),
                DType::F16 => CudaBuf::F16(s.alloc::<f16>(n).map_err(err)?),
                DType::U8 => CudaBuf::U8(s.alloc::<u8>(n).map_err(err)?),
                DType::I32 => CudaBuf::I32(s.alloc::<i32>(n).map_err(err)?),
            }
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Driver(buf),
            _drop_check: CaptureDropCheck::of(gpu),
        })
    }

    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<CudaTensor> {
        gpu.refuse_in_capture(&format!("allocating {shape:?} {dtype:?}"))?;
        let d = match gpu.backend() {
            Backend::Sim(sim) => {
                let bytes = vec![0u8; numel(shape).max(1) * dtype.size_in_bytes()];
                return Self::sim_alloc(gpu, sim, shape, dtype, Some(&bytes));
            }
            Backend::Driver(d) => d,
        };
        let n = numel(shape).max(1);
        let s = &d.stream;
        let err = |e| driver_err(&format!("allocating {shape:?} {dtype:?}"), e);
        let buf = match dtype {
            DType::F32 => CudaBuf::F32(s.alloc_zeros::<f32>(n).map_err(err)?),
            DType::BF16 => CudaBuf::BF16(s.alloc_zeros::<bf16>(n).map_err(err)?),
            DType::F16 => CudaBuf::F16(s.alloc_zeros::<f16>(n).map_err(err)?),
            DType::U8 => CudaBuf::U8(s.alloc_zeros::<u8>(n).map_err(err)?),
            DType::I32 => CudaBuf::I32(s.alloc_zeros::<i32>(n).map_err(err)?),
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Driver(buf),
            _drop_check: CaptureDropCheck::of(gpu),
        })
    }

    /// Copies f32 host data to the device, converting to `dtype` on the host.
    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32], dtype: DType) -> Result<CudaTensor> {
        gpu.refuse_in_capture(&format!("uploading {shape:?} {dtype:?}"))?;
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!("{} values for shape {shape:?}", data.len())));
        }
        let d = match gpu.backend() {
            Backend::Sim(sim) => {
                let bytes = f32_as_bytes_of(data, dtype, "from_f32")?;
                return Self::sim_alloc(gpu, sim, shape, dtype, Some(&bytes));
            }
            Backend::Driver(d) => d,
        };
        let s = &d.stream;
        let err = |e| driver_err("host to device copy", e);
        let buf = match dtype {
            DType::F32 => CudaBuf::F32(s.clone_htod(data).map_err(err)?),
            DType::BF16 => {
                let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                CudaBuf::BF16(s.clone_htod(&v).map_err(err)?)
            }
            DType::F16 => {
                let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                CudaBuf::F16(s.clone_htod(&v).map_err(err)?)
            }
            DType::I32 | DType::U8 => {
                return Err(Error::Device(format!("from_f32 into {dtype:?}: use from_u8 / from_i32")))
            }
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Driver(buf),
            _drop_check: CaptureDropCheck::of(gpu),
        })
    }

    pub fn from_u8(gpu: &Gpu, shape: &[usize], data: &[u8]) -> Result<CudaTensor> {
        gpu.refuse_in_capture(&format!("uploading {shape:?} u8"))?;
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!("{} bytes for shape {shape:?}", data.len())));
        }
        let d = match gpu.backend() {
            Backend::Sim(sim) => return Self::sim_alloc(gpu, sim, shape, DType::U8, Some(data)),
            Backend::Driver(d) => d,
        };
        let buf = d.stream.clone_htod(data).map_err(|e| driver_err("host to device copy", e))?;
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype: DType::U8,
            storage: Storage::Driver(CudaBuf::U8(buf)),
            _drop_check: CaptureDropCheck::of(gpu),
        })
    }

    pub fn from_i32(gpu: &Gpu, shape: &[usize], data: &[i32]) -> Result<CudaTensor> {
        gpu.refuse_in_capture(&format!("uploading {shape:?} i32"))?;
        if data.len() != numel(shape) {
            return Err(Error::Shape(format!("{} values for shape {shape:?}", data.len())));
        }
        let d = match gpu.backend() {
            Backend::Sim(sim) => return Self::sim_alloc(gpu, sim, shape, DType::I32, Some(bytemuck::cast_slice(data))),
            Backend::Driver(d) => d,
        };
        let buf = d.stream.clone_htod(data).map_err(|e| driver_err("host to device copy", e))?;
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype: DType::I32,
            storage: Storage::Driver(CudaBuf::I32(buf)),
            _drop_check: CaptureDropCheck::of(gpu),
        })
    }

    /// Uploads a host tensor (f32 is converted to `dtype`; u8/i32 keep theirs).
    pub fn from_tensor(gpu: &Gpu, t: &Tensor, dtype: DType) -> Result<CudaTensor> {
        match t.storage() {
            TensorStorage::F32(v) => Self::from_f32(gpu, t.shape(), v, dtype),
            TensorStorage::U8(v) => Self::from_u8(gpu, t.shape(), v),
            TensorStorage::I32(v) => Self::from_i32(gpu, t.shape(), v),
            TensorStorage::F16(_) | TensorStorage::BF16(_) => {
                Self::from_f32(gpu, t.shape(), t.to_f32()?.f32s()?, dtype)
            }
        }
    }

    /// Copies to the host as f32 (bf16/f16 widened). Synchronises the stream.
    pub fn to_f32_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.refuse_in_capture("a device to host copy")?;
        let n = self.numel();
        let b = match &self.storage {
            Storage::Sim(sb) => {
                let mut bytes = vec![0u8; sb.bytes];
                sb.sim.read(sb.addr, &mut bytes).map_err(|e| sim_err("device to host copy", e))?;
                let mut v: Vec<f32> = match self.dtype {
                    DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                    DType::BF16 => bytes
                        .chunks_exact(2)
                        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                        .collect(),
                    DType::F16 => bytes
                        .chunks_exact(2)
                        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                        .collect(),
                    DType::U8 => bytes.iter().map(|&x| x as f32).collect(),
                    DType::I32 => {
                        bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
                    }
                };
                v.truncate(n);
                return Ok(v);
            }
            Storage::Driver(b) => b,
            Storage::View { .. } | Storage::Pooled { .. } => return Err(view_err("device to host copy")),
        };
        let s = &gpu.driver("device to host copy")?.stream;
        let err = |e| driver_err("device to host copy", e);
        let mut v = match b {
            CudaBuf::F32(b) => s.clone_dtoh(b).map_err(err)?,
            CudaBuf::BF16(b) => s.clone_dtoh(b).map_err(err)?.iter().map(|x| x.to_f32()).collect(),
            CudaBuf::F16(b) => s.clone_dtoh(b).map_err(err)?.iter().map(|x| x.to_f32()).collect(),
            CudaBuf::U8(b) => s.clone_dtoh(b).map_err(err)?.iter().map(|&x| x as f32).collect(),
            CudaBuf::I32(b) => s.clone_dtoh(b).map_err(err)?.iter().map(|&x| x as f32).collect(),
        };
        v.truncate(n);
        Ok(v)
    }

    pub fn to_tensor(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_f32(&self.shape, self.to_f32_vec(gpu)?)
    }

    /// Overwrites the buffer with f32 host data, converted to this tensor's float dtype on the
    /// host: new input for a buffer a graph reads (`Gpu::capture`).
    pub fn write_f32(&mut self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        gpu.refuse_in_capture("a host to device copy")?;
        if data.len() != self.numel() {
            return Err(Error::Shape(format!("{} values for a tensor of shape {:?}", data.len(), self.shape)));
        }
        let b = match &mut self.storage {
            Storage::Sim(sb) => {
                let bytes = f32_as_bytes_of(data, self.dtype, "write_f32")?;
                return sb.sim.write(sb.addr, &bytes).map_err(|e| sim_err("host to device copy", e));
            }
            Storage::Driver(b) => b,
            Storage::View { .. } | Storage::Pooled { .. } => return Err(view_err("host to device copy")),
        };
        let s = &gpu.driver("host to device copy")?.stream;
        let err = |e| driver_err("host to device copy", e);
        match b {
            CudaBuf::F32(b) => s.memcpy_htod(data, b).map_err(err),
            CudaBuf::BF16(b) => {
                s.memcpy_htod(&data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), b).map_err(err)
            }
            CudaBuf::F16(b) => {
                s.memcpy_htod(&data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), b).map_err(err)
            }
            CudaBuf::U8(_) | CudaBuf::I32(_) => Err(Error::Device(format!("write_f32 into {:?}", self.dtype))),
        }
    }

    /// Fills the buffer with NaN (floats) or 0xAB bytes, so that a kernel that skips an
    /// element is caught by the comparison.
    pub fn poison(&mut self, gpu: &Gpu) -> Result<()> {
        gpu.refuse_in_capture("poisoning a buffer (a host to device copy)")?;
        let b = match &mut self.storage {
            Storage::Sim(sb) => {
                let pattern = poison_bytes(self.dtype);
                let n = sb.bytes / pattern.len();
                return sb.sim.write(sb.addr, &pattern.repeat(n)).map_err(|e| sim_err("poisoning a buffer", e));
            }
            Storage::Driver(b) => b,
            Storage::View { .. } | Storage::Pooled { .. } => return Err(view_err("poisoning a buffer")),
        };
        let s = &gpu.driver("poisoning a buffer")?.stream;
        let err = |e| driver_err("poisoning a buffer", e);
        match b {
            CudaBuf::F32(b) => s.memcpy_htod(&vec![f32::NAN; b.len()], b).map_err(err),
            CudaBuf::BF16(b) => s.memcpy_htod(&vec![bf16::NAN; b.len()], b).map_err(err),
            CudaBuf::F16(b) => s.memcpy_htod(&vec![f16::NAN; b.len()], b).map_err(err),
            CudaBuf::U8(b) => s.memcpy_htod(&vec![0xABu8; b.len()], b).map_err(err),
            CudaBuf::I32(b) => s.memcpy_htod(&vec![i32::MIN; b.len()], b).map_err(err),
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

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The GPU buffer (library calls such as cuBLAS that take typed slices); the simulator's
    /// buffers have none.
    pub fn buf(&self) -> Result<&CudaBuf> {
        match &self.storage {
            Storage::Driver(b) => Ok(b),
            Storage::Sim(_) => {
                Err(Error::Skipped("a library call needs a GPU buffer (the PTX simulator has none)".into()))
            }
            Storage::View { .. } | Storage::Pooled { .. } => Err(view_err("a library call")),
        }
    }

    /// The GPU buffer for writing.
    pub fn buf_mut(&mut self) -> Result<&mut CudaBuf> {
        match &mut self.storage {
            Storage::Driver(b) => Ok(b),
            Storage::Sim(_) => {
                Err(Error::Skipped("a library call needs a GPU buffer (the PTX simulator has none)".into()))
            }
            Storage::View { .. } | Storage::Pooled { .. } => Err(view_err("a library call")),
        }
    }

    /// Same buffer, new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<CudaTensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!("reshape {:?} -> {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The device address of element 0, for a kernel argument. Valid while `self` lives.
    pub fn ptr(&self, gpu: &Gpu) -> u64 {
        let b = match (&self.storage, gpu.backend()) {
            (Storage::Sim(sb), _) => return sb.addr,
            (Storage::View { addr } | Storage::Pooled { addr, .. }, _) => return *addr,
            (Storage::Driver(b), Backend::Driver(d)) => (b, &d.stream),
            // A GPU buffer handed to the simulator: no valid address there.
            (Storage::Driver(_), Backend::Sim(_)) => return 0,
        };
        let (b, s) = b;
        match b {
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

    /// The tensor of `shape` at element `offset` of this one's buffer (same dtype).
    fn view_tensor(&self, gpu: &Gpu, offset: usize, shape: &[usize]) -> Result<CudaTensor> {
        let n = numel(shape);
        if offset + n > self.numel() {
            return Err(Error::Shape(format!(
                "view of {shape:?} at {offset} past the end of a tensor of {} elements",
                self.numel()
            )));
        }
        let addr = self.ptr(gpu) + (offset * self.dtype.size_in_bytes()) as u64;
        Ok(CudaTensor {
            shape: shape.to_vec(),
            dtype: self.dtype,
            storage: Storage::View { addr },
            _drop_check: CaptureDropCheck(None),
        })
    }

    /// A read-only view of `shape` at element `offset`.
    pub fn view(&self, gpu: &Gpu, offset: usize, shape: &[usize]) -> Result<CudaView<'_>> {
        Ok(CudaView { tensor: self.view_tensor(gpu, offset, shape)?, _parent: PhantomData })
    }

    /// Writable views of disjoint parts, each (offset, shape) in elements.
    pub fn views_mut<const N: usize>(
        &mut self,
        gpu: &Gpu,
        parts: [(usize, &[usize]); N],
    ) -> Result<[CudaViewMut<'_>; N]> {
        let mut ranges: Vec<(usize, usize)> = parts.iter().map(|&(o, s)| (o, o + numel(s))).collect();
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(Error::Shape(format!("writable views overlap: {ranges:?}")));
        }
        let mut views = Vec::with_capacity(N);
        for (offset, shape) in parts {
            views.push(CudaViewMut { tensor: self.view_tensor(gpu, offset, shape)?, _parent: PhantomData });
        }
        views.try_into().map_err(|_| Error::Internal("views_mut: N views".into()))
    }

    /// Errors unless this tensor has `dtype`.
    pub fn expect_dtype(&self, dtype: DType, what: &str) -> Result<()> {
        if self.dtype() != dtype {
            return Err(Error::Device(format!("{what}: expected {dtype:?}, found {:?}", self.dtype())));
        }
        Ok(())
    }
}
