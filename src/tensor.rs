//! Tensor = shape + dtype + host storage (a plain `Vec`). Always contiguous, row-major, and
//! always on the CPU: the device twin is its own type, `device::cuda::CudaTensor`, so the CPU
//! ops work on host slices and never handle a device variant. Models follow the same split (a
//! CPU model and its `*_cuda` twin), as llm.c's train_gpt2.c / train_gpt2.cu do.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Element types, of CPU tensors and of the kernels' device buffers alike: f32/bf16/f16 for
/// activations and weights, u8 for images, i32 for indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    U8,
    I32,
}

impl DType {
    /// The suffix of a kernel's name for this element type (`layernorm_forward_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U8 => "u8",
            DType::I32 => "i32",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }

    /// `v` as the device holds it in this dtype (bf16 / f16 rounded to nearest even), so that a
    /// CPU reference sees the kernel's inputs and a check measures the kernel, not the rounding
    /// of its inputs.
    pub fn round(self, v: Vec<f32>) -> Vec<f32> {
        match self {
            DType::BF16 => v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect(),
            DType::F16 => v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect(),
            _ => v,
        }
    }

    /// The relative error a kernel in this dtype is held to against the f32 CPU reference.
    pub fn tolerance(self) -> f32 {
        match self {
            DType::F32 => 1e-4,
            _ => 1e-2,
        }
    }
}

/// The flag's spelling (`f32`, `bf16`, ...), as `--dtype` takes it and kernel names end.
impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// The values of `--dtype`: the float types a CUDA path computes in.
impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            _ => Err(Error::Device(format!("unknown --dtype `{s}` (use f32, bf16 or f16)"))),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U8(Vec<u8>),
    I32(Vec<i32>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Self::new(shape, Storage::F32(data))
    }

    pub fn new(shape: &[usize], storage: Storage) -> Result<Tensor> {
        let len = match &storage {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::U8(v) => v.len(),
            Storage::I32(v) => v.len(),
        };
        if len != numel(shape) {
            return Err(Error::Shape(format!("tensor of shape {shape:?} needs {} elements, got {len}", numel(shape))));
        }
        Ok(Tensor { shape: shape.to_vec(), storage })
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor { shape: shape.to_vec(), storage: Storage::F32(vec![0.0; numel(shape)]) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::U8(_) => DType::U8,
            Storage::I32(_) => DType::I32,
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The f32 data of a CPU tensor; other dtypes are an error (convert with `to_f32` first).
    pub fn f32s(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::F32(v) => Ok(v),
            _ => Err(Error::DType { expected: DType::F32, found: self.dtype() }),
        }
    }

    pub fn f32s_mut(&mut self) -> Result<&mut [f32]> {
        let found = self.dtype();
        match &mut self.storage {
            Storage::F32(v) => Ok(v),
            _ => Err(Error::DType { expected: DType::F32, found }),
        }
    }

    pub fn into_f32_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::F32(v) => Ok(v),
            other => Tensor { shape: self.shape, storage: other }.to_f32()?.into_f32_vec(),
        }
    }

    /// Converts any dtype to f32 (the engine's CPU compute type).
    pub fn to_f32(&self) -> Result<Tensor> {
        let v: Vec<f32> = match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as f32).collect(),
        };
        Tensor::from_f32(&self.shape, v)
    }

    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let f = self.to_f32()?;
        let v = f.f32s()?;
        let storage = match dtype {
            DType::F32 => Storage::F32(v.to_vec()),
            DType::F16 => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::U8 => Storage::U8(v.iter().map(|&x| x.round().clamp(0.0, 255.0) as u8).collect()),
            DType::I32 => Storage::I32(v.iter().map(|&x| x as i32).collect()),
        };
        Tensor::new(&self.shape, storage)
    }

    /// Same data, new shape (one dimension may be `usize::MAX` to be inferred).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let mut shape = shape.to_vec();
        if let Some(pos) = shape.iter().position(|&d| d == usize::MAX) {
            let known: usize = shape.iter().filter(|&&d| d != usize::MAX).product();
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
            }
            shape[pos] = self.numel() / known;
        }
        if numel(&shape) != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Rows `start..end` along dimension 0.
    pub fn narrow0(&self, start: usize, end: usize) -> Result<Tensor> {
        if start > end || end > self.shape[0] {
            return Err(Error::Shape(format!("narrow {start}..{end} of {:?}", self.shape)));
        }
        let inner: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let storage = match &self.storage {
            Storage::F32(v) => Storage::F32(v[start * inner..end * inner].to_vec()),
            Storage::F16(v) => Storage::F16(v[start * inner..end * inner].to_vec()),
            Storage::BF16(v) => Storage::BF16(v[start * inner..end * inner].to_vec()),
            Storage::U8(v) => Storage::U8(v[start * inner..end * inner].to_vec()),
            Storage::I32(v) => Storage::I32(v[start * inner..end * inner].to_vec()),
        };
        Tensor::new(&shape, storage)
    }

    /// Concatenates f32 tensors along dimension 0.
    pub fn cat0(parts: &[Tensor]) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| Error::Shape("cat of nothing".into()))?;
        let mut shape = first.shape.clone();
        shape[0] = 0;
        let mut data = Vec::new();
        for p in parts {
            if p.shape[1..] != first.shape[1..] {
                return Err(Error::Shape(format!("cat {:?} with {:?}", first.shape, p.shape)));
            }
            shape[0] += p.shape[0];
            data.extend_from_slice(p.f32s()?);
        }
        Tensor::from_f32(&shape, data)
    }

    /// Random normal values (Box-Muller on a seeded generator): for random-weight models and tests.
    pub fn randn(shape: &[usize], std: f32, rng: &mut impl rand::Rng) -> Tensor {
        let n = numel(shape);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let u1: f32 = rng.gen::<f32>().max(1e-12);
            let u2: f32 = rng.gen::<f32>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f32::consts::PI * u2;
            v.push(r * t.cos() * std);
            if v.len() < n {
                v.push(r * t.sin() * std);
            }
        }
        Tensor { shape: shape.to_vec(), storage: Storage::F32(v) }
    }
}
