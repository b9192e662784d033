//! Bilinear resizing of a (C, H, W) grid, as torch.nn.functional.interpolate(mode="bilinear",
//! antialias=False): used for positional grids at input sizes other than the native one.

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

/// y (C, ho, wo) from x (C, h, w).
pub fn bilinear_resize_cpu(x: &[f32], c: usize, h: usize, w: usize, ho: usize, wo: usize, align_corners: bool, y: &mut [f32]) {
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
