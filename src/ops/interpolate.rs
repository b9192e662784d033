//! Bilinear resizing of a (C, H, W) grid, as torch.nn.functional.interpolate(mode="bilinear",
//! antialias=False): used for positional grids at input sizes other than the native one.

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{max_rel_err, random_vec, CheckRun, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// A positional table (1 + g*g, C) (the class/mean position, then a g x g grid) for a
/// gh x gw grid: the first row as is, the grid resized bilinearly (align_corners = false) as
/// TagCLIP's ViT and CCD's attention pool do.
pub fn resize_positional_grid(table: &[f32], c: usize, g: usize, gh: usize, gw: usize) -> Vec<f32> {
    if gh == g && gw == g {
        return table.to_vec();
    }
    // (g*g, C) -> (C, g, g) -> resize -> (C, gh, gw) -> (gh*gw, C)
    let grid = &table[c..];
    let mut chw = vec![0.0f32; c * g * g];
    for p in 0..g * g {
        for ci in 0..c {
            chw[ci * g * g + p] = grid[p * c + ci];
        }
    }
    let mut resized = vec![0.0f32; c * gh * gw];
    bilinear_resize_cpu(&chw, c, g, g, gh, gw, false, &mut resized);
    let mut out = Vec::with_capacity((gh * gw + 1) * c);
    out.extend_from_slice(&table[..c]);
    for p in 0..gh * gw {
        for ci in 0..c {
            out.push(resized[ci * gh * gw + p]);
        }
    }
    out
}

/// CUDA launcher: kernels/interpolate.cu, as `resize_positional_grid`. table (1 + g*g, C) f32;
/// out (1 + gh*gw, C) in any float dtype (f32 to feed `vit_tokens_cuda` / `attnpool_tokens_cuda`,
/// which take the positional table in f32). At gh = gw = g the result is an exact copy.
pub fn resize_positional_grid_cuda(
    gpu: &Gpu,
    table: &CudaTensor,
    g: usize,
    gh: usize,
    gw: usize,
    out: &mut CudaTensor,
) -> Result<()> {
    let ts = table.shape();
    let c = if ts.len() == 2 { ts[1] } else { 0 };
    if ts != [1 + g * g, c] || out.shape() != [1 + gh * gw, c] || g == 0 || gh == 0 || gw == 0 {
        return Err(Error::Shape(format!(
            "resize_positional_grid_cuda: table {ts:?} for g = {g} (1 + g*g, C), out {:?} for {gh}x{gw} (1 + gh*gw, C)",
            out.shape()
        )));
    }
    table.expect_dtype(DType::F32, "resize_positional_grid_cuda table")?;
    if !out.dtype().is_float() {
        return Err(Error::Device(format!(
            "resize_positional_grid_cuda: out is {:?}; expected a float dtype",
            out.dtype()
        )));
    }
    let total = out.numel();
    if total == 0 {
        return Ok(());
    }
    to_i32(total, "resize_positional_grid_cuda outputs")?;
    let cfg = LaunchConfig::for_num_elems(total as u32);
    let name = format!("resize_positional_grid_{}", out.dtype().suffix());
    gpu.launch(
        "interpolate",
        &name,
        cfg,
        &[table.arg(gpu), out.arg(gpu), to_i32(c, "C")?, to_i32(g, "g")?, to_i32(gh, "gh")?, to_i32(gw, "gw")?],
    )
}

/// Kernel checks: ViT-B/16's 14x14 grid to 16x16 (256 px) and to a non-square 20x12, ViT-B/32's
/// 7x7 to 14x14, RN50's attention-pool 7x7 to 9x9 (C = 2048), the same size (a copy), a
/// downscale, every output dtype.
pub fn gpu_checks() -> Vec<GpuCheck> {
    let mut checks = Vec::new();
    for &(c, g, gh, gw) in &[
        (768usize, 14usize, 16usize, 16usize),
        (768, 14, 20, 12),
        (768, 7, 14, 14),
        (2048, 7, 9, 9),
        (768, 14, 14, 14),
        (37, 9, 4, 5),
    ] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = ((1 + g * g) * c * 4 + (1 + gh * gw) * c * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "resize_positional_grid",
                format!("C={c} {g}x{g} -> {gh}x{gw}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let table = random_vec(rng, (1 + g * g) * c, 1.0);
                    let want = resize_positional_grid(&table, c, g, gh, gw);
                    let td = CudaTensor::from_f32(gpu, &[1 + g * g, c], &table, DType::F32)?;
                    let mut od = CudaTensor::empty(gpu, &[1 + gh * gw, c], dtype)?;
                    od.poison(gpu)?;
                    resize_positional_grid_cuda(gpu, &td, g, gh, gw, &mut od)?;
                    let err = max_rel_err(&od.to_f32_vec(gpu)?, &want);
                    let gp = gpu.clone();
                    Ok(CheckRun {
                        max_rel_err: err,
                        launch: Box::new(move || resize_positional_grid_cuda(&gp, &td, g, gh, gw, &mut od)),
                        cublas: None,
                    })
                },
            ));
        }
    }
    checks
}

/// y (C, ho, wo) from x (C, h, w).
#[allow(clippy::too_many_arguments)]
pub fn bilinear_resize_cpu(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    align_corners: bool,
    y: &mut [f32],
) {
    // Source coordinate of output index `o` along an axis of `n_in` -> `n_out`.
    let coord = |o: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
        let src = if align_corners {
            if n_out > 1 {
                o as f32 * (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
            } else {
                0.0
            }
        } else {
            let scale = n_in as f32 / n_out as f32;
            ((o as f32 + 0.5) * scale - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, src - i0 as f32)
    };
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for oy in 0..ho {
            let (y0, y1, fy) = coord(oy, h, ho);
            for ox in 0..wo {
                let (x0, x1, fx) = coord(ox, w, wo);
                let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                let bot = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                y[(ci * ho + oy) * wo + ox] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy_and_corners_hold() {
        let x: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut y = vec![f32::NAN; x.len()];
        bilinear_resize_cpu(&x, 2, 3, 4, 3, 4, false, &mut y);
        assert_eq!(x, y);
        // align_corners=True keeps the four corners of each plane.
        let mut z = vec![f32::NAN; 2 * 5 * 7];
        bilinear_resize_cpu(&x, 2, 3, 4, 5, 7, true, &mut z);
        for c in 0..2 {
            assert_eq!(z[c * 35], x[c * 12]);
            assert_eq!(z[c * 35 + 6], x[c * 12 + 3]);
            assert_eq!(z[c * 35 + 34], x[c * 12 + 11]);
        }
    }

    #[test]
    fn half_pixel_rule_of_torch() {
        // 2 -> 4 along one axis with align_corners=False: torch gives [a, .75a+.25b, .25a+.75b, b].
        let x = [1.0f32, 3.0];
        let mut y = [f32::NAN; 4];
        bilinear_resize_cpu(&x, 1, 1, 2, 1, 4, false, &mut y);
        assert_eq!(y, [1.0, 1.5, 2.5, 3.0]);
    }
}
