//! CLIP's ModifiedResNet image encoder on the GPU: the pass of `resnet.rs` through the CUDA
//! launchers (implicit-GEMM convolutions with folded batch norm, fused bias / residual / ReLU,
//! anti-aliased average pooling, and the attention pool as token building + one packed qkv
//! GEMM + the fused attention kernel + the output projection of the mean token). The weights
//! come from the loaded CPU tower (`CudaModifiedResNet::from_cpu`), batch norm already folded
//! there: `resnet.rs` holds the one loader and name list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::device::cuda::{CudaTensor, DType, Gpu, GpuGraph, GraphLaunch};
use crate::error::{Error, Result};
use crate::models::clip::config::ResNetConfig;
use crate::models::clip::resnet::{block_plan, random_resnet_params, ConvBn, ModifiedResNet};
use crate::ops::attention::{attention_cuda, CudaAttnMask, ProbsRecord};
use crate::ops::conv2d::{conv2d_cuda, Conv2dShape};
use crate::ops::fill::fill_cuda;
use crate::ops::interpolate::resize_positional_grid;
use crate::ops::matmul::{linear_cuda, Epilogue};
use crate::ops::pool::{attnpool_tokens_cuda, avg_pool2d_cuda};
use crate::ops::tokens::gather_rows_cuda;
use crate::tensor::Tensor;

/// A convolution with its batch norm folded in, on the device.
struct CudaConvBn {
    w: CudaTensor, // (C_out, C_in, k, k)
    b: CudaTensor, // (C_out,) f32
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
}

impl CudaConvBn {
    /// Uploads a CPU conv with its batch norm already folded in (filters in `dtype`, bias f32).
    fn from_cpu(gpu: &Gpu, cpu: &ConvBn, dtype: DType) -> Result<Self> {
        let (c_in, c_out, k) = (cpu.c_in, cpu.c_out, cpu.k);
        Ok(CudaConvBn {
            w: CudaTensor::from_f32(gpu, &[c_out, c_in, k, k], &cpu.w.to_row_major(), dtype)?,
            b: CudaTensor::from_f32(gpu, &[c_out], &cpu.b, DType::F32)?,
            c_in,
            c_out,
            k,
            stride: cpu.stride,
        })
    }

    fn shape(&self, b: usize, h: usize, w: usize) -> Conv2dShape {
        Conv2dShape {
            batch: b,
            c_in: self.c_in,
            h,
            w,
            c_out: self.c_out,
            kernel: self.k,
            stride: self.stride,
            pad: self.k / 2,
        }
    }

    /// x (B, C_in, H, W) -> relu?(conv(x) + b + residual), (B, C_out, H', W').
    fn forward(&self, gpu: &Gpu, x: &CudaTensor, relu: bool, residual: Option<&CudaTensor>) -> Result<CudaTensor> {
        let (b, h, w) = (x.dim(0), x.dim(2), x.dim(3));
        let s = self.shape(b, h, w);
        let (ho, wo) = s.out_hw();
        let mut y = CudaTensor::empty(gpu, &[b, self.c_out, ho, wo], x.dtype())?;
        conv2d_cuda(gpu, x, &self.w, Some(&self.b), &s, relu, residual, &mut y)?;
        Ok(y)
    }
}

fn avg_pool(gpu: &Gpu, x: CudaTensor, k: usize) -> Result<CudaTensor> {
    if k == 1 {
        return Ok(x);
    }
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let mut y = CudaTensor::empty(gpu, &[b, c, h / k, w / k], x.dtype())?;
    avg_pool2d_cuda(gpu, &x, k, &mut y)?;
    Ok(y)
}

struct CudaBottleneck {
    conv1: CudaConvBn,
    conv2: CudaConvBn,
    conv3: CudaConvBn,
    stride: usize,
    downsample: Option<CudaConvBn>,
}

pub struct CudaModifiedResNet {
    pub cfg: ResNetConfig,
    pub dtype: DType,
    gpu: Arc<Gpu>,
    stem: [CudaConvBn; 3],
    stages: Vec<Vec<CudaBottleneck>>,
    pool_pos: Vec<f32>,
    pos_cache: Mutex<HashMap<(usize, usize), Arc<CudaTensor>>>,
    /// Round the attention pool's (resized) positional table to fp16, as the CPU tower's
    /// `pos_f16` (CCD's fp16 `upsample_pos_emb`); `from_cpu` copies the CPU tower's flag. Set it
    /// before the first forward: the tables are cached per grid.
    pub pos_f16: bool,
    /// (3C, C): q, k and v projections stacked, so the pool's projections are one GEMM.
    qkv_w: CudaTensor,
    qkv_b: CudaTensor,
    c_w: CudaTensor, // (D, C)
    c_b: CudaTensor,
}

impl CudaModifiedResNet {
    /// Uploads the CPU tower's weights (its folded convolutions, the attention pool's q, k and
    /// v projections stacked into one (3C, C) GEMM weight): the same model as `cpu`, whatever
    /// loaded or drew it.
    pub fn from_cpu(gpu: &Arc<Gpu>, cpu: &ModifiedResNet, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Device(format!("CUDA ModifiedResNet: dtype {dtype:?} is not a float type")));
        }
        let g = &**gpu;
        let conv = |l: &ConvBn| CudaConvBn::from_cpu(g, l, dtype);
        let [s0, s1, s2] = &cpu.stem;
        let stem = [conv(s0)?, conv(s1)?, conv(s2)?];
        let stages = cpu
            .stages
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|blk| {
                        Ok(CudaBottleneck {
                            conv1: conv(&blk.conv1)?,
                            conv2: conv(&blk.conv2)?,
                            conv3: conv(&blk.conv3)?,
                            stride: blk.stride,
                            downsample: blk.downsample.as_ref().map(conv).transpose()?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let c = ModifiedResNet::embed_dim(&cpu.cfg);
        let d = cpu.cfg.output_dim;
        let qkv_w: Vec<f32> = [&cpu.q_w, &cpu.k_w, &cpu.v_w].iter().flat_map(|w| w.to_row_major()).collect();
        let qkv_b: Vec<f32> = [&cpu.q_b, &cpu.k_b, &cpu.v_b].iter().flat_map(|b| b.iter().copied()).collect();
        Ok(CudaModifiedResNet {
            cfg: cpu.cfg.clone(),
            dtype,
            gpu: gpu.clone(),
            stem,
            stages,
            pool_pos: cpu.pool_pos.clone(),
            pos_cache: Mutex::new(HashMap::new()),
            pos_f16: cpu.pos_f16,
            qkv_w: CudaTensor::from_f32(g, &[3 * c, c], &qkv_w, dtype)?,
            qkv_b: CudaTensor::from_f32(g, &[3 * c], &qkv_b, DType::F32)?,
            c_w: CudaTensor::from_f32(g, &[d, c], &cpu.c_w.to_row_major(), dtype)?,
            c_b: CudaTensor::from_f32(g, &[d], &cpu.c_b, DType::F32)?,
        })
    }

    fn positional(&self, h: usize, w: usize) -> Result<Arc<CudaTensor>> {
        let mut cache = self.pos_cache.lock().map_err(|_| Error::Internal("positional cache poisoned".into()))?;
        if let Some(t) = cache.get(&(h, w)) {
            return Ok(t.clone());
        }
        let c = ModifiedResNet::embed_dim(&self.cfg);
        let mut table = resize_positional_grid(&self.pool_pos, c, self.cfg.grid, h, w);
        if self.pos_f16 {
            table.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        }
        let t = Arc::new(CudaTensor::from_f32(&self.gpu, &[h * w + 1, c], &table, DType::F32)?);
        cache.insert((h, w), t.clone());
        Ok(t)
    }

    /// FLOPs of one image at h x w (2 per multiply-add; convolutions and the attention pool,
    /// as the model profiles of open_clip count them).
    pub fn flops_per_image(&self, h: usize, w: usize) -> f64 {
        let conv =
            |c_in: usize, c_out: usize, k: usize, ho: usize, wo: usize| 2.0 * (c_in * c_out * k * k * ho * wo) as f64;
        let (mut hh, mut ww) = (h / 2, w / 2);
        let wd = self.cfg.width;
        let mut f = conv(3, wd / 2, 3, hh, ww) + conv(wd / 2, wd / 2, 3, hh, ww) + conv(wd / 2, wd, 3, hh, ww);
        hh /= 2;
        ww /= 2;
        for stage in block_plan(&self.cfg) {
            for (inplanes, planes, stride) in stage {
                f += conv(inplanes, planes, 1, hh, ww) + conv(planes, planes, 3, hh, ww);
                let (ho, wo) = (hh / stride, ww / stride);
                f += conv(planes, planes * 4, 1, ho, wo);
                if stride > 1 || inplanes != planes * 4 {
                    f += conv(inplanes, planes * 4, 1, ho, wo);
                }
                hh = ho;
                ww = wo;
            }
        }
        let c = ModifiedResNet::embed_dim(&self.cfg) as f64;
        let t = (hh * ww + 1) as f64;
        f + 2.0 * t * c * 3.0 * c + 4.0 * t * t * c + 2.0 * c * self.cfg.output_dim as f64
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// pixels (B, 3, H, W) in this encoder's dtype, normalised; H, W at least 32 -> (B, D).
    /// Sides that are no multiple of 32 end in a floor(ceil(H / 2) / 16) grid, as the CPU tower
    /// (CCD's crops have any size).
    pub fn forward(&self, pixels: &CudaTensor) -> Result<CudaTensor> {
        check_resnet_input(pixels.shape())?;
        let mut pooled = CudaTensor::empty(&self.gpu, &[pixels.dim(0), self.cfg.output_dim], self.dtype)?;
        self.forward_into(pixels, &mut pooled)?;
        Ok(pooled)
    }

    /// `forward` into `pooled` (B, D) in this encoder's dtype. Kernel launches only, once the
    /// positional table of the input's grid is cached: what `capture_forward` captures.
    pub fn forward_into(&self, pixels: &CudaTensor, pooled: &mut CudaTensor) -> Result<()> {
        let gpu = &*self.gpu;
        check_resnet_input(pixels.shape())?;
        pixels.expect_dtype(self.dtype, "CUDA ModifiedResNet input")?;
        let want = [pixels.dim(0), self.cfg.output_dim];
        if pooled.shape() != want || pooled.dtype() != self.dtype {
            return Err(Error::Shape(format!(
                "CUDA ModifiedResNet output {:?} {:?}, expected {want:?} {:?}",
                pooled.shape(),
                pooled.dtype(),
                self.dtype
            )));
        }
        let x = self.stem[0].forward(gpu, pixels, true, None)?;
        let x = self.stem[1].forward(gpu, &x, true, None)?;
        let x = self.stem[2].forward(gpu, &x, true, None)?;
        let mut x = avg_pool(gpu, x, 2)?;
        for stage in &self.stages {
            for blk in stage {
                let o = blk.conv1.forward(gpu, &x, true, None)?;
                let o = blk.conv2.forward(gpu, &o, true, None)?;
                let o = avg_pool(gpu, o, blk.stride)?;
                let identity = match &blk.downsample {
                    Some(ds) => {
                        let xi = avg_pool(gpu, x, blk.stride)?;
                        ds.forward(gpu, &xi, false, None)?
                    }
                    None => x,
                };
                x = blk.conv3.forward(gpu, &o, true, Some(&identity))?;
            }
        }
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let t = h * w + 1;
        let pos = self.positional(h, w)?;
        let mut tokens = CudaTensor::empty(gpu, &[b, t, c], self.dtype)?;
        attnpool_tokens_cuda(gpu, &x, &pos, &mut tokens)?;
        drop(x);
        let mut qkv = CudaTensor::empty(gpu, &[b, t, 3 * c], self.dtype)?;
        linear_cuda(gpu, &tokens, &self.qkv_w, Some(&self.qkv_b), Epilogue::None, None, &mut qkv)?;
        let mut attn = CudaTensor::empty(gpu, &[b, t, c], self.dtype)?;
        let no_mask = CudaAttnMask { shared: None, cls_row: None, causal: false };
        attention_cuda(gpu, &qkv, self.cfg.heads, &no_mask, ProbsRecord::None, &mut attn, None)?;
        // Row 0 (the mean token) of every sample: indices zeroed by a kernel, not uploaded, so
        // that a captured forward holds them.
        let mut index = CudaTensor::empty(gpu, &[b], DType::I32)?;
        fill_cuda(gpu, &mut index, 0.0)?;
        let mut mean_token = CudaTensor::empty(gpu, &[b, c], self.dtype)?;
        gather_rows_cuda(gpu, &attn, &index, &mut mean_token)?;
        linear_cuda(gpu, &mean_token, &self.c_w, Some(&self.c_b), Epilogue::None, None, pooled)
    }

    /// The forward of `batch` images at `height` x `width` captured once as a graph (its
    /// temporaries in the graph's memory pool, `Gpu::capture_pooled`), on input and output
    /// buffers of its own: write pixels with `set_pixels`, then `replay`.
    pub fn capture_forward(
        self: &Arc<Self>,
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<CudaModifiedResNetGraph> {
        check_resnet_input(&[batch, 3, height, width])?;
        // The attention pool's grid (the stem's stride 2, then four halvings, each a floor: as
        // `forward` documents): its positional table is uploaded now, outside the capture.
        self.positional(height.div_ceil(2) / 16, width.div_ceil(2) / 16)?;
        let pixels = CudaTensor::empty(&self.gpu, &[batch, 3, height, width], self.dtype)?;
        let mut pooled = CudaTensor::empty(&self.gpu, &[batch, self.cfg.output_dim], self.dtype)?;
        let graph = self.gpu.capture_pooled(|| self.forward_into(&pixels, &mut pooled))?;
        Ok(CudaModifiedResNetGraph { rn: self.clone(), pixels, pooled, graph })
    }
}

/// (B, 3, H, W) with H, W at least 32, or an error.
fn check_resnet_input(s: &[usize]) -> Result<()> {
    if s.len() != 4 || s[1] != 3 || s[2] < 32 || s[3] < 32 {
        return Err(Error::Shape(format!(
            "ModifiedResNet input must be (B, 3, H, W) with H, W at least 32; got {s:?}"
        )));
    }
    Ok(())
}

/// `CudaModifiedResNet::capture_forward`: the pooled forward of one (B, H, W) as a graph. It
/// holds the encoder, whose weights the graph reads by address.
pub struct CudaModifiedResNetGraph {
    rn: Arc<CudaModifiedResNet>,
    /// (B, 3, H, W) input in the encoder's dtype.
    pixels: CudaTensor,
    /// (B, D) output.
    pooled: CudaTensor,
    graph: GpuGraph,
}

impl CudaModifiedResNetGraph {
    /// The input shape the graph was captured for, (B, 3, H, W).
    pub fn input_shape(&self) -> &[usize] {
        self.pixels.shape()
    }

    /// Writes normalised pixels (B * 3 * H * W values, f32) into the graph's input buffer.
    pub fn set_pixels(&mut self, pixels: &[f32]) -> Result<()> {
        self.pixels.write_f32(&self.rn.gpu, pixels)
    }

    /// Runs the captured forward on the pixels last written: pooled (B, D), valid until the
    /// next replay.
    pub fn replay(&self) -> Result<&CudaTensor> {
        self.graph.replay()?;
        Ok(&self.pooled)
    }

    /// The kernel launches one replay runs.
    pub fn launches(&self) -> &[GraphLaunch] {
        self.graph.launches()
    }
}

/// Encoder-level checks for gpu-check: the CUDA ModifiedResNet against the CPU one on the same
/// random weights (a narrow RN50-shaped tower at two sizes, and RN50 at 224).
pub fn gpu_checks() -> Vec<crate::device::cuda::check::GpuCheck> {
    use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
    // Head dim = width * 32 / heads must be one the attention kernel has (32 or 64): 512 / 8.
    let narrow = ResNetConfig { layers: [1, 1, 1, 1], width: 16, heads: 8, grid: 2, output_dim: 32 };
    let rn50 = ResNetConfig { layers: [3, 4, 6, 3], width: 64, heads: 32, grid: 7, output_dim: 1024 };
    let mut checks = Vec::new();
    for (name, cfg, batch, h, w) in [
        ("narrow RN", narrow.clone(), 3usize, 64usize, 64usize),
        ("narrow RN", narrow, 2, 64, 96),
        ("RN50", rn50, 2, 224, 224),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let cfg = cfg.clone();
            let flops = batch as f64 * 12.2e9 * ((h * w) as f64 / (224.0 * 224.0));
            checks.push(GpuCheck::new(
                "resnet_encoder_forward",
                format!("{name} B={batch} {h}x{w}"),
                dtype,
                Work::Flops(flops),
                move |gpu, rng| {
                    let seed = rng.gen::<u64>();
                    let cpu = ModifiedResNet::load(&mut random_resnet_params(&cfg, seed)?, &cfg)?;
                    let dev = CudaModifiedResNet::from_cpu(gpu, &cpu, dtype)?;
                    let pixels = random_vec(rng, batch * 3 * h * w, 2.0);
                    let want = cpu.forward(&Tensor::from_f32(&[batch, 3, h, w], pixels.clone())?, false)?.pooled;
                    let x = CudaTensor::from_f32(gpu, &[batch, 3, h, w], &pixels, dtype)?;
                    let got = dev.forward(&x)?.to_f32_vec(gpu)?;
                    let err = max_rel_err(&got, want.f32s()?);
                    Ok(CheckRun {
                        max_rel_err: err,
                        launch: Box::new(move || dev.forward(&x).map(|_| ())),
                        cublas: None,
                    })
                },
            ));
        }
    }
    checks
}
