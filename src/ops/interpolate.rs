//! Bilinear resizing of a (C, H, W) grid, as torch.nn.functional.interpolate(mode="bilinear",
//! antialias=False): used for positional grids at input sizes other than the native one.

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
