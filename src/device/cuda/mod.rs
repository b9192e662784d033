//! The CUDA side: one `Gpu` per device (a GPU through the driver: context, stream, loaded
//! kernel modules, cuBLAS handle; or the PTX simulator), device tensors (`CudaTensor`), timers,
//! and the kernel checks that compare every launcher with its CPU reference.
//!
//! cudarc loads the driver at run time (dynamic loading), so one binary serves a CPU-only
//! machine and a GPU machine. The PTX of kernels/*.cu is embedded by build.rs; a build made
//! without nvcc has none and says so. The simulator (`--device sim`) runs that same PTX.

pub mod check;
pub mod entries;
pub mod graph;
pub mod pool;
pub mod resources;
pub mod tensor;
pub mod timer;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::device::sim::hopper::{Swizzle, TensorMap2d, TENSOR_MAP_BYTES};
use crate::device::sim::{SimArch, SimArg, SimError, SimOptions, Simulator};
use crate::error::{Error, Result};

pub use graph::{GpuGraph, GraphLaunch};
pub use pool::PoolStats;
pub use tensor::{CudaTensor, CudaView, CudaViewMut, DType};

/// One compiled kernels/*.cu file.
pub struct KernelModule {
    /// The file name without `.cu` (and without `.sm90a`): ops name their module by it.
    pub name: &'static str,
    /// `compute_80` (portable PTX) or `compute_90a` (Hopper only).
    pub arch: &'static str,
    pub ptx: &'static str,
}

/// One `.entry` of a compiled module, as build.rs read it from the PTX.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub module: &'static str,
    pub arch: &'static str,
    pub name: &'static str,
    /// Byte width of each `.param`, in order (8 for pointers and 64-bit scalars, 4 for int/float).
    pub param_bytes: &'static [u32],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// True when this binary carries kernels (it was built with nvcc).
pub fn has_kernels() -> bool {
    !KERNEL_MODULES.is_empty()
}

const NO_KERNELS: &str = "this build of labelfree has no CUDA kernels: it was built without nvcc. \
Run `export NVCC=$(scripts/install-nvcc.sh | tail -n1)` and rebuild (cargo build --release)";

/// Which GEMM the CUDA linear layers use. The native kernels are the default; cuBLAS is a
/// reference for tests and benches (`--gemm cublas`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmBackend {
    Native,
    Cublas,
}

/// The flag's spelling (`native`, `cublas`), as `--gemm` takes it.
impl fmt::Display for GemmBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GemmBackend::Native => "native",
            GemmBackend::Cublas => "cublas",
        })
    }
}

impl FromStr for GemmBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(GemmBackend::Native),
            "cublas" => Ok(GemmBackend::Cublas),
            _ => Err(Error::Device(format!("unknown --gemm `{s}` (use native or cublas)"))),
        }
    }
}

/// A CUDA device ready to run labelfree's kernels: a GPU through the driver (every op launches
/// on its one stream), or the PTX simulator (`--device sim`), which runs the same embedded PTX
/// on the CPU. Launchers, `CudaTensor` and `KArg` do not know which.
pub struct Gpu {
    backend: Backend,
    pub ordinal: usize,
    pub name: String,
    /// (major, minor); the simulator models sm_80.
    pub compute_capability: (i32, i32),
    pub gemm: GemmBackend,
    /// Set on a launch recorder (`Gpu::launch_recorder`): each launch is checked and recorded,
    /// and none runs.
    recorder: Option<Arc<Mutex<Vec<RecordedLaunch>>>>,
    /// The graph capture in progress, if any (`Gpu::capture`; shared with `with_gemm` twins).
    capture: graph::CaptureSlot,
}

/// What `Gpu::tensor_map_2d` maps: a row-major (rows, cols) matrix of `dtype` at `base`, rows
/// `row_stride` elements apart, copied in boxes of (box_rows, box_cols).
#[derive(Clone, Copy, Debug)]
pub struct TensorMapSpec {
    pub base: u64,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub box_rows: u32,
    pub box_cols: u32,
    /// The 128-byte swizzle (box rows of exactly 128 bytes), else none.
    pub swizzle_128b: bool,
}

/// A launch a launch recorder saw: the kernel, its arguments' widths, and whether they fit the
/// build's PTX.
#[derive(Clone, Debug)]
pub struct RecordedLaunch {
    pub module: String,
    pub function: String,
    pub arg_bytes: Vec<u32>,
    pub mismatch: Option<entries::LaunchMismatch>,
}

pub(crate) enum Backend {
    Driver(Arc<DriverGpu>),
    Sim(Arc<Simulator>),
}

/// The driver's side of a `Gpu`: context, stream, loaded modules, cuBLAS.
pub(crate) struct DriverGpu {
    /// The context's default stream (it keeps the context alive).
    pub(crate) stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    cublas: Mutex<Option<Arc<cudarc::cublas::CudaBlas>>>,
}

pub(crate) fn driver_err(what: &str, e: DriverError) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

fn sim_err(e: SimError) -> Error {
    Error::Device(e.to_string())
}

/// The name a simulated device reports.
pub const SIM_DEVICE_NAME: &str = "labelfree PTX simulator (functional, sm_80)";

impl Gpu {
    /// Opens device `ordinal` and loads every embedded kernel module that runs on it.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        // SAFETY: only probes whether the driver library can be dlopen'ed.
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            return Err(Error::Device(format!(
                "--device cuda:{ordinal}: no CUDA driver (libcuda) found on this machine; use --device cpu, or --device sim to run the kernels on the PTX simulator"
            )));
        }
        if !has_kernels() {
            return Err(Error::Device(format!("--device cuda:{ordinal}: {NO_KERNELS}")));
        }
        let count = CudaContext::device_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        if ordinal as i32 >= count {
            return Err(Error::Device(format!("--device cuda:{ordinal}: this machine has {count} CUDA device(s)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the CUDA context", e))?;
        let name = ctx.name().map_err(|e| driver_err("device name", e))?;
        let cc = ctx.compute_capability().map_err(|e| driver_err("compute capability", e))?;
        if cc.0 < 8 {
            return Err(Error::Device(format!(
                "{name} has compute capability {}.{}; labelfree's kernels need 8.0 or newer",
                cc.0, cc.1
            )));
        }
        // SAFETY: every op of a Gpu runs on its one stream, so ordering is the stream's and
        // cudarc's per-buffer events would only cost time (see tensor.rs).
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream, which the driver cannot capture
        // into a graph (`Gpu::capture`).
        let stream = ctx.new_stream().map_err(|e| driver_err("creating the CUDA stream", e))?;
        let mut modules = HashMap::new();
        for m in KERNEL_MODULES {
            if m.arch == "compute_90a" && cc != (9, 0) {
                continue;
            }
            let module = ctx
                .load_module(Ptx::from_src(m.ptx))
                .map_err(|e| driver_err(&format!("loading kernels/{}.cu", m.name), e))?;
            modules.insert(m.name, module);
        }
        let driver = DriverGpu { stream, modules, functions: Mutex::new(HashMap::new()), cublas: Mutex::new(None) };
        Ok(Arc::new(Gpu {
            backend: Backend::Driver(Arc::new(driver)),
            ordinal,
            name,
            compute_capability: cc,
            gemm: GemmBackend::Native,
            recorder: None,
            capture: Default::default(),
        }))
    }

    /// The PTX simulator with every portable (compute_80) module of the build: the same kernels
    /// a GPU would load, run on the CPU (device::sim).
    pub fn simulator(options: SimOptions) -> Result<Arc<Gpu>> {
        Gpu::sim_device(options).map(Arc::new)
    }

    fn sim_device(options: SimOptions) -> Result<Gpu> {
        if !has_kernels() {
            return Err(Error::Device(format!("--device sim: {NO_KERNELS}")));
        }
        // In sm90a mode the compute_90a modules come after the portable ones of the same name
        // (the simulator looks a kernel up by module name and entry), as on a Hopper GPU.
        let arch = options.arch;
        let modules: Vec<(&'static str, &'static str)> = KERNEL_MODULES
            .iter()
            .filter(|m| m.arch == "compute_80" || (arch == SimArch::Sm90a && m.arch == "compute_90a"))
            .map(|m| (m.name, m.ptx))
            .collect();
        let name = match arch {
            SimArch::Sm80 => SIM_DEVICE_NAME.to_string(),
            SimArch::Sm90a => SIM_DEVICE_NAME.replace("sm_80", "sm_90a"),
        };
        Ok(Gpu {
            backend: Backend::Sim(Arc::new(Simulator::new(&modules, options))),
            ordinal: 0,
            name,
            compute_capability: arch.compute_capability(),
            gemm: GemmBackend::Native,
            recorder: None,
            capture: Default::default(),
        })
    }

    /// A device whose launches run nothing: each is checked against the build's entry points
    /// (`entries::check_launch`) and recorded (`recorded_launches`). Memory is the simulator's,
    /// so launchers allocate, upload and download as usual; what they download is whatever the
    /// buffers held (poison for outputs). For guards that reach every launcher without a GPU.
    pub fn launch_recorder() -> Result<Arc<Gpu>> {
        // Nothing runs, so there is nothing to sanitize or profile.
        let mut gpu = Gpu::sim_device(SimOptions { sanitize: false, profile: false, ..SimOptions::default() })?;
        gpu.name = "labelfree launch recorder (launches checked against the PTX, not run)".into();
        gpu.recorder = Some(Arc::new(Mutex::new(Vec::new())));
        Ok(Arc::new(gpu))
    }

    /// The launches a launch recorder has seen so far, in order (empty on any other device).
    pub fn recorded_launches(&self) -> Vec<RecordedLaunch> {
        match &self.recorder {
            Some(r) => r.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => Vec::new(),
        }
    }

    /// Opens what `device` names: a GPU or the simulator (None for the CPU).
    pub fn open(device: crate::device::Device, sim: SimOptions) -> Result<Option<Arc<Gpu>>> {
        match device {
            crate::device::Device::Cpu => Ok(None),
            crate::device::Device::Cuda(n) => Gpu::new(n).map(Some),
            crate::device::Device::Sim => Gpu::simulator(sim).map(Some),
        }
    }

    /// The same device with another GEMM backend (shares context, stream, modules, memory).
    pub fn with_gemm(self: &Arc<Self>, gemm: GemmBackend) -> Arc<Gpu> {
        let backend = match &self.backend {
            Backend::Driver(d) => Backend::Driver(d.clone()),
            Backend::Sim(s) => Backend::Sim(s.clone()),
        };
        Arc::new(Gpu {
            backend,
            ordinal: self.ordinal,
            name: self.name.clone(),
            compute_capability: self.compute_capability,
            gemm,
            recorder: self.recorder.clone(),
            capture: self.capture.clone(),
        })
    }

    /// True on a device that runs the sm_90a (Hopper) kernels.
    pub fn is_hopper(&self) -> bool {
        self.compute_capability == (9, 0)
    }

    /// A 2-D tiled tensor map (TMA descriptor) in device memory, for kernels that hand its
    /// address to `cp.async.bulk.tensor`: on a GPU the driver's `cuTensorMapEncodeTiled`
    /// encodes it, on the simulator `sim::hopper::TensorMap2d` (the map is opaque to kernels).
    /// Boxes outside the tensor read as zeros.
    pub fn tensor_map_2d(&self, spec: &TensorMapSpec) -> Result<CudaTensor> {
        let elem_bytes = match spec.dtype {
            DType::BF16 | DType::F16 => 2u32,
            DType::F32 => 4,
            d => return Err(Error::Device(format!("tensor map of {d:?} elements"))),
        };
        let map = TensorMap2d {
            base: spec.base,
            dims: [spec.cols as u64, spec.rows as u64],
            row_stride: spec.row_stride as u64 * elem_bytes as u64,
            box_dims: [spec.box_cols, spec.box_rows],
            elem_bytes,
            swizzle: if spec.swizzle_128b { Swizzle::B128 } else { Swizzle::None },
        };
        map.validate().map_err(|m| Error::Device(format!("tensor map {spec:?}: {m}")))?;
        let bytes: [u8; TENSOR_MAP_BYTES] = match &self.backend {
            Backend::Sim(_) => map.encode(),
            Backend::Driver(_) => {
                use cudarc::driver::sys;
                let dtype = match spec.dtype {
                    DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                    DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                    _ => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
                };
                let swizzle = if spec.swizzle_128b {
                    sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B
                } else {
                    sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE
                };
                let dims = map.dims;
                let strides = [map.row_stride];
                let boxes = map.box_dims;
                let element_strides = [1u32, 1];
                let mut out = sys::CUtensorMap { opaque: [0; 16] };
                // SAFETY: every pointer is to a local array of the length rank 2 asks for; the
                // driver writes the 128-byte map into `out`.
                let r = unsafe {
                    sys::cuTensorMapEncodeTiled(
                        &mut out,
                        dtype,
                        2,
                        spec.base as *mut std::ffi::c_void,
                        dims.as_ptr(),
                        strides.as_ptr(),
                        boxes.as_ptr(),
                        element_strides.as_ptr(),
                        sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                        swizzle,
                        sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                        sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                    )
                };
                if r != sys::CUresult::CUDA_SUCCESS {
                    return Err(Error::Device(format!("cuTensorMapEncodeTiled {spec:?}: {r:?}")));
                }
                let mut bytes = [0u8; TENSOR_MAP_BYTES];
                for (chunk, word) in bytes.chunks_exact_mut(8).zip(out.opaque) {
                    chunk.copy_from_slice(&word.to_le_bytes());
                }
                bytes
            }
        };
        CudaTensor::from_u8(self, &[TENSOR_MAP_BYTES], &bytes)
    }

    /// The simulator under this device, if it is one.
    pub fn sim(&self) -> Option<&Arc<Simulator>> {
        match &self.backend {
            Backend::Sim(s) => Some(s),
            Backend::Driver(_) => None,
        }
    }

    pub fn is_sim(&self) -> bool {
        self.sim().is_some()
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The driver's context and stream; an error naming `what` on the simulator.
    pub(crate) fn driver(&self, what: &str) -> Result<&Arc<DriverGpu>> {
        match &self.backend {
            Backend::Driver(d) => Ok(d),
            Backend::Sim(_) => Err(Error::Skipped(format!("{what} needs a GPU (the PTX simulator has none)"))),
        }
    }

    /// Looks up kernel `function` of kernels/`module`.cu on a GPU (cached after the first call).
    fn function(&self, d: &DriverGpu, module: &str, function: &str) -> Result<CudaFunction> {
        let key = format!("{module}::{function}");
        let mut cache = d.functions.lock().map_err(|_| Error::Internal("kernel cache poisoned".into()))?;
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let m = d
            .modules
            .get(module)
            .ok_or_else(|| Error::Device(format!("no kernel module `{module}` in this build (kernels/{module}.cu)")))?;
        let f = m
            .load_function(function)
            .map_err(|e| driver_err(&format!("kernel `{function}` in kernels/{module}.cu"), e))?;
        cache.insert(key, f.clone());
        Ok(f)
    }

    /// Launches kernel `function` of kernels/`module`.cu: on the GPU's stream, or run to
    /// completion by the simulator.
    ///
    /// Arguments are passed by value in the kernel's parameter order: device pointers as
    /// `KArg::Ptr` (`tensor.arg(gpu)`), scalars as the C type the kernel declares. A launch
    /// whose kernel is not in the build, or whose arguments do not match its parameters in
    /// number and width, is an error before anything runs (`entries::check_launch`).
    pub fn launch(&self, module: &str, function: &str, cfg: LaunchConfig, args: &[KArg]) -> Result<()> {
        let fits = entries::check_launch(module, function, args);
        if let Some(recorder) = &self.recorder {
            recorder.lock().unwrap_or_else(|e| e.into_inner()).push(RecordedLaunch {
                module: module.to_string(),
                function: function.to_string(),
                arg_bytes: args.iter().map(|a| a.width()).collect(),
                mismatch: fits.clone().err(),
            });
            return fits.map_err(|e| Error::Device(e.to_string()));
        }
        fits.map_err(|e| Error::Device(e.to_string()))?;
        if self.capture_launch(module, function, &cfg, args) {
            return Ok(());
        }
        let d = match &self.backend {
            Backend::Sim(sim) => {
                let sim_args: Vec<SimArg> = args.iter().map(|a| a.to_sim()).collect();
                let (g, b) = (cfg.grid_dim, cfg.block_dim);
                return sim
                    .launch(module, function, [g.0, g.1, g.2], [b.0, b.1, b.2], cfg.shared_mem_bytes, &sim_args)
                    .map_err(sim_err);
            }
            Backend::Driver(d) => d,
        };
        let f = self.function(d, module, function)?;
        // Past 48 KB a block's shared memory (static + dynamic) needs the kernel's opt-in.
        let static_shared = if cfg.shared_mem_bytes > 0 {
            f.shared_size_bytes().map_err(|e| driver_err(&format!("{function}: static shared memory"), e))? as u32
        } else {
            0
        };
        if static_shared + cfg.shared_mem_bytes > 48 * 1024 {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_mem_bytes as i32,
            )
            .map_err(|e| driver_err(&format!("{function}: {} bytes of shared memory", cfg.shared_mem_bytes), e))?;
        }
        let mut builder = d.stream.launch_builder(&f);
        // `args` is not touched again before the launch, so these references stay valid.
        for a in args {
            match a {
                KArg::Ptr(v) | KArg::U64(v) => builder.arg(v),
                KArg::I32(v) => builder.arg(v),
                KArg::U32(v) => builder.arg(v),
                KArg::I64(v) => builder.arg(v),
                KArg::F32(v) => builder.arg(v),
            };
        }
        // SAFETY: each launcher checks shapes and dtypes before building `args`, and the
        // kernels bound every access by the sizes passed here.
        unsafe { builder.launch(cfg) }.map(|_| ()).map_err(|e| {
            driver_err(&format!("launching {function} (grid {:?}, block {:?})", cfg.grid_dim, cfg.block_dim), e)
        })
    }

    /// The cuBLAS handle on this stream, created on first use. The simulator has none (cuBLAS
    /// ships no PTX): `Error::Skipped`.
    pub fn cublas(&self) -> Result<Arc<cudarc::cublas::CudaBlas>> {
        let d = match &self.backend {
            Backend::Sim(_) => return Err(Error::Skipped("cuBLAS has no PTX".into())),
            Backend::Driver(d) => d,
        };
        // A graph holds this crate's kernels only (the simulator's capture could not replay a
        // library call, so neither does the GPU's).
        self.refuse_in_capture("a cuBLAS call")?;
        let mut slot = d.cublas.lock().map_err(|_| Error::Internal("cublas handle poisoned".into()))?;
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        // SAFETY: only probes whether the library can be dlopen'ed (cudarc panics on first use
        // when it cannot). Once per device: the handle is cached below.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device("--gemm cublas: no cuBLAS library (libcublas) found on this machine".into()));
        }
        let b = Arc::new(
            cudarc::cublas::CudaBlas::new(d.stream.clone())
                .map_err(|e| Error::Device(format!("creating the cuBLAS handle: {e:?}")))?,
        );
        *slot = Some(b.clone());
        Ok(b)
    }

    /// Waits for every launched kernel; surfaces asynchronous launch errors. (The simulator's
    /// launches are synchronous.)
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_in_capture("synchronising the stream")?;
        match &self.backend {
            Backend::Driver(d) => d.stream.synchronize().map_err(|e| driver_err("synchronize", e)),
            Backend::Sim(_) => Ok(()),
        }
    }
}

/// One kernel argument, passed by value.
#[derive(Clone, Copy, Debug)]
pub enum KArg {
    /// A device address (`CudaTensor::arg`).
    Ptr(u64),
    U64(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
}

impl KArg {
    /// The argument as the simulator's `.param` bytes.
    pub fn to_sim(self) -> SimArg {
        match self {
            KArg::Ptr(v) | KArg::U64(v) => SimArg::B64(v),
            KArg::I64(v) => SimArg::B64(v as u64),
            KArg::I32(v) => SimArg::B32(v as u32),
            KArg::U32(v) => SimArg::B32(v),
            KArg::F32(v) => SimArg::B32(v.to_bits()),
        }
    }
}

impl From<i32> for KArg {
    fn from(v: i32) -> KArg {
        KArg::I32(v)
    }
}
impl From<u32> for KArg {
    fn from(v: u32) -> KArg {
        KArg::U32(v)
    }
}
impl From<i64> for KArg {
    fn from(v: i64) -> KArg {
        KArg::I64(v)
    }
}
impl From<f32> for KArg {
    fn from(v: f32) -> KArg {
        KArg::F32(v)
    }
}

/// Converts a size to the kernels' `int`, with an error instead of a silent wrap.
pub fn to_i32(v: usize, what: &str) -> Result<KArg> {
    i32::try_from(v).map(KArg::I32).map_err(|_| Error::Shape(format!("{what} = {v} does not fit a 32-bit int")))
}

/// For tests and checks: the GPU when this machine has one and the binary has kernels, or a
/// line saying why the GPU part is skipped.
pub fn gpu_or_skip_reason() -> std::result::Result<Arc<Gpu>, String> {
    if !has_kernels() {
        return Err(format!("skipped: {NO_KERNELS}"));
    }
    // SAFETY: only probes whether the driver library can be dlopen'ed.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("skipped: no CUDA driver on this machine".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        _ => return Err("skipped: no CUDA device on this machine".into()),
    }
    Gpu::new(0).map_err(|e| format!("skipped: {e}"))
}

/// Launch shape of the grid-stride elementwise kernels: 256 threads a block, one thread per
/// item, at most 16384 blocks (enough to fill any GPU; the kernels loop over the rest).
pub fn grid_stride_config(items: usize) -> LaunchConfig {
    let blocks = items.div_ceil(256).clamp(1, 16384) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Launch shape of the one-warp-per-item kernels: 8 warps a block.
pub fn warp_per_item_config(items: usize) -> LaunchConfig {
    let blocks = items.div_ceil(8).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// A kernel argument pointing `elems` f32 elements into `t` (a range of a flat buffer).
pub fn f32_arg_at(gpu: &Gpu, t: &CudaTensor, elems: usize) -> KArg {
    KArg::Ptr(t.ptr(gpu) + (elems * 4) as u64)
}

/// Errors unless every tensor is f32 (the training kernels' precision).
pub fn expect_f32(what: &str, tensors: &[&CudaTensor]) -> Result<()> {
    for (i, t) in tensors.iter().enumerate() {
        t.expect_dtype(DType::F32, &format!("{what} argument {i}"))?;
    }
    Ok(())
}
