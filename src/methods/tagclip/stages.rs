//! The model-free stages of TagCLIP, one image at a time: patch probabilities, the DMAR
//! weights and class boxes, the refined scores, the CWR plan (candidates, boxes, crops) and the
//! fusion. Each follows the official `classify.py` step by step (see shared/methods/tagclip.md);
//! where the official code has a quirk, the default reproduces it and an option fixes it.

use rayon::prelude::*;

use super::TagclipOptions;
use crate::data::transforms::{interpolate_bilinear_chw, interpolate_nearest_chw};
use crate::error::Result;
use crate::ops::contours::external_contour_boxes;
use crate::ops::dmar::dmar_propagate_cpu;
use crate::ops::matmul::{gemm_cpu, MatRef};
use crate::ops::similarity::l2_normalize_cpu;
use crate::ops::softmax::softmax_row;

/// The additive mask value of the CWR pass on the CLS row (official: -1000).
pub const CLS_ROW_MASKED: f32 = -1000.0;
/// The off-diagonal value of the last layer's mask in the patch pass (official: -100).
pub const DIAG_OFF: f32 = -100.0;

/// (T, T) additive mask: 0 on the diagonal, -100 elsewhere (the patch pass's last layer).
pub fn diagonal_mask(t: usize) -> Vec<f32> {
    let mut m = vec![DIAG_OFF; t * t];
    for i in 0..t {
        m[i * t + i] = 0.0;
    }
    m
}

/// Softmax over classes of `scale * cos(token, class)`: tokens (R, D) (normalised here),
/// text (C, D) unit rows. Returns (R, C).
pub fn class_softmax(tokens: &[f32], text: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let r = tokens.len() / d;
    let c = text.len() / d;
    let mut f = tokens.to_vec();
    l2_normalize_cpu(&mut f, d);
    // Official order: (scale * features) @ text^T.
    f.iter_mut().for_each(|v| *v *= scale);
    let mut out = vec![0.0f32; r * c];
    // SAFETY: f (r x d), text^T (d x c), out (r x c).
    unsafe {
        gemm_cpu(
            r,
            c,
            d,
            MatRef::row_major(&f, d),
            MatRef::transposed(text, d),
            out.as_mut_ptr(),
            c as isize,
            false,
            true,
        );
    }
    out.par_chunks_mut(c).for_each(softmax_row);
    out
}

/// Mean of a slice in f64, rounded to f32 (torch's f32 mean agrees to the last bit nearly
/// always; the difference can only matter at an exact tie of a threshold).
fn mean_f32(x: &[f32]) -> f32 {
    (x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64) as f32
}

/// The DMAR attention weights W (N x N) from the per-layer head-averaged maps of ONE image,
/// each (T, T) with T = N + 1 (CLS first): the patch-to-patch parts A_l, the vote mask
/// M(i, j) = [#{l : A_l(i, j) > mean(A_l)} >= vote_min], and W = M * mean of A_l over
/// `opts.refine_layers`.
pub fn dmar_weights(maps: &[&[f32]], t: usize, opts: &TagclipOptions) -> Vec<f32> {
    crate::ops::dmar::dmar_weights_cpu(maps, t, opts.vote_min_layers, opts.refine_range(maps.len()))
}

/// A box in grid cells, end exclusive: rows y0..y1, columns x0..x1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CellBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl CellBox {
    pub fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }
}

/// TagCLIP's `scoremap2bbox(map, threshold, multi_contour_eval=True)` on a map already
/// normalised to [0, 1] (gh x gw): the map is quantised to u8 (`(map * 255).astype(uint8)`),
/// thresholded with `> int(threshold * max)` (OpenCV THRESH_BINARY), and every external
/// contour's bounding box is returned with its exclusive end clipped to `gw - 1` / `gh - 1`
/// (the official quirk; `fix_box_clip` keeps the true end). No contour: one empty box.
/// With `fix_quantization`, the threshold is `map > threshold` on the floats instead.
pub fn scoremap_boxes(
    map: &[f32],
    gh: usize,
    gw: usize,
    threshold: f32,
    fix_box_clip: bool,
    fix_quantization: bool,
) -> Vec<CellBox> {
    let binary: Vec<bool> = if fix_quantization {
        map.iter().map(|&v| v > threshold).collect()
    } else {
        // astype(uint8) truncates; NaN becomes 0 (x86).
        let q: Vec<u8> = map.iter().map(|&v| (v * 255.0) as u8).collect();
        let qmax = q.iter().copied().max().unwrap_or(0);
        let t = threshold * qmax as f32;
        let thresh = if t.is_finite() { t.trunc() } else { f32::INFINITY };
        q.iter().map(|&v| (v as f32) > thresh).collect()
    };
    let rects = external_contour_boxes(&binary, gh, gw);
    if rects.is_empty() {
        return vec![CellBox { x0: 0, y0: 0, x1: 0, y1: 0 }];
    }
    rects
        .into_iter()
        .map(|r| {
            let (mut x1, mut y1) = (r.x + r.w, r.y + r.h);
            if !fix_box_clip {
                x1 = x1.min(gw - 1);
                y1 = y1.min(gh - 1);
            }
            CellBox { x0: r.x, y0: r.y, x1, y1 }
        })
        .collect()
}

/// Min-max normalisation as the official code writes it: `x - min`, then `/ max`.
pub fn minmax_normalize(col: &[f32]) -> Vec<f32> {
    let mi = col.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = col.iter().map(|&v| v - mi).collect();
    let ma = shifted.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    shifted.iter().map(|&v| v / ma).collect()
}

/// The boxes whose union is DMAR's class box mask for one column of P_hat: normalise, boxes
/// of the external contours at the mean. None for a constant column.
pub fn class_boxes(col: &[f32], gh: usize, gw: usize, opts: &TagclipOptions) -> Vec<CellBox> {
    let v = minmax_normalize(col);
    if v.iter().any(|x| !x.is_finite()) {
        return Vec::new();
    }
    let mean = mean_f32(&v);
    scoremap_boxes(&v, gh, gw, mean, opts.fix_box_clip, opts.fix_quantization)
}

/// The class box mask B_c of DMAR for one column of P_hat (N = gh * gw): normalise, boxes of
/// the external contours at the mean, union of the boxes. A constant column (0/0 in the
/// official code, which then fails) gives an empty mask.
pub fn class_box_mask(col: &[f32], gh: usize, gw: usize, opts: &TagclipOptions) -> Vec<bool> {
    let mut mask = vec![false; gh * gw];
    for b in class_boxes(col, gh, gw, opts) {
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                mask[y * gw + x] = true;
            }
        }
    }
    mask
}

/// DMAR refinement (the official `mask_attn` with the product before it): P_hat = W @
/// P_coarse, then for every class c whose P_hat column has a positive maximum,
/// P_ref[:, c] = W @ (B_c * P_coarse[:, c]); other columns keep P_hat. w (N x N),
/// coarse (N x C). Returns (P_hat, P_ref), both (N x C).
pub fn dmar_refine(
    w: &[f32],
    coarse: &[f32],
    gh: usize,
    gw: usize,
    c: usize,
    opts: &TagclipOptions,
) -> (Vec<f32>, Vec<f32>) {
    let n = gh * gw;
    let hat = dmar_propagate_cpu(w, coarse, None, n, c);
    let mask = box_mask_matrix(&hat, gh, gw, c, opts);
    let refined = dmar_propagate_cpu(w, coarse, Some(&mask.keep), n, c);
    let refined = mask.keep_unmasked_columns(refined, &hat, c);
    (hat, refined)
}

/// The class box masks of DMAR for every column of P_hat (N x C) at once, row-major (N x C):
/// `keep[i * C + c]` is B_c at patch i; `masked[c]` says whether column c is refined at all
/// (its P_hat maximum is positive; otherwise P_ref keeps the P_hat column).
pub struct BoxMasks {
    pub keep: Vec<bool>,
    pub masked: Vec<bool>,
}

impl BoxMasks {
    /// P_ref with the columns that have no box mask taken from P_hat.
    pub fn keep_unmasked_columns(&self, mut refined: Vec<f32>, hat: &[f32], c: usize) -> Vec<f32> {
        for (ci, _) in self.masked.iter().enumerate().filter(|(_, m)| !**m) {
            for i in 0..refined.len() / c {
                refined[i * c + ci] = hat[i * c + ci];
            }
        }
        refined
    }
}

/// `BoxMasks` of one image's P_hat (N x C): the box mask of each column (rayon over classes).
pub fn box_mask_matrix(hat: &[f32], gh: usize, gw: usize, c: usize, opts: &TagclipOptions) -> BoxMasks {
    let n = gh * gw;
    let cols: Vec<Option<Vec<bool>>> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let col: Vec<f32> = (0..n).map(|i| hat[i * c + ci]).collect();
            let mx = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (mx > 0.0).then(|| class_box_mask(&col, gh, gw, opts))
        })
        .collect();
    let mut keep = vec![false; n * c];
    for (ci, m) in cols.iter().enumerate() {
        if let Some(m) = m {
            for i in 0..n {
                keep[i * c + ci] = m[i];
            }
        }
    }
    BoxMasks { keep, masked: cols.iter().map(|m| m.is_some()).collect() }
}

/// Column maxima of the first `k` columns of an (N x C) matrix.
pub fn column_max(m: &[f32], c: usize, k: usize) -> Vec<f32> {
    let mut out = vec![f32::NEG_INFINITY; k];
    for row in m.chunks_exact(c) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = o.max(v);
        }
    }
    out
}

/// One planned CWR crop.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CwrCrop {
    /// Class index (dataset classes only).
    pub class: usize,
    /// The crop in grid cells.
    pub cells: CellBox,
    /// The region (normalised refined score > 0.5) inside the box, row-major (y1-y0) x (x1-x0).
    #[serde(skip)]
    pub region: Vec<bool>,
}

/// What CWR will do for one image.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CwrPlan {
    /// Candidates in the order the official loop visits them (ascending class index).
    pub candidates: Vec<usize>,
    /// The crops to encode.
    pub crops: Vec<CwrCrop>,
    /// The candidate whose box came out empty and ended the loop (the official early stop).
    pub stopped_at: Option<usize>,
    /// Candidates skipped because of an empty box (only with `fix_cwr_early_stop`).
    pub skipped: Vec<usize>,
}

/// Candidates: dataset classes (the first `k` columns) whose local score exceeds
/// min + cwr_threshold * (max - min) of the whole refined matrix. For each, in ascending
/// order: the normalised column > 0.5, its tight box (end + 1, clipped to the grid minus one
/// by default), and, on an empty box, the official early stop (or, fixed, a skip).
pub fn cwr_plan(refined: &[f32], local: &[f32], gh: usize, gw: usize, c: usize, opts: &TagclipOptions) -> CwrPlan {
    let n = gh * gw;
    let k = local.len();
    let ma = refined.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mi = refined.iter().copied().fold(f32::INFINITY, f32::min);
    let thres = mi + opts.cwr_threshold * (ma - mi);
    let mut plan = CwrPlan { candidates: (0..k).filter(|&ci| local[ci] > thres).collect(), ..Default::default() };
    for &ci in &plan.candidates.clone() {
        let col: Vec<f32> = (0..n).map(|i| refined[i * c + ci]).collect();
        let v = minmax_normalize(&col);
        let region: Vec<bool> = v.iter().map(|&x| x > 0.5).collect();
        let cols_any: Vec<usize> = (0..gw).filter(|&x| (0..gh).any(|y| region[y * gw + x])).collect();
        let rows_any: Vec<usize> = (0..gh).filter(|&y| (0..gw).any(|x| region[y * gw + x])).collect();
        let (mut x0, mut x1, mut y0, mut y1) =
            match (cols_any.first(), cols_any.last(), rows_any.first(), rows_any.last()) {
                (Some(&a), Some(&b), Some(&c0), Some(&d)) => (a, b + 1, c0, d + 1),
                _ => (0, 0, 0, 0),
            };
        if !opts.fix_box_clip {
            x1 = x1.min(gw - 1);
            y1 = y1.min(gh - 1);
        }
        x0 = x0.min(x1);
        y0 = y0.min(y1);
        let cells = CellBox { x0, y0, x1, y1 };
        if cells.is_empty() {
            if opts.fix_cwr_early_stop {
                plan.skipped.push(ci);
                continue;
            }
            plan.stopped_at = Some(ci);
            break;
        }
        let mut sub = Vec::with_capacity((y1 - y0) * (x1 - x0));
        for y in y0..y1 {
            for x in x0..x1 {
                sub.push(region[y * gw + x]);
            }
        }
        plan.crops.push(CwrCrop { class: ci, cells, region: sub });
    }
    plan
}

/// The input of one CWR pass: the crop of the normalised image (3 x h x w, CHW) at the box
/// times the patch, resized bilinearly (align_corners = false) to `size` x `size`; and the
/// CLS-row mask (grid^2 + 1 values, grid = size / patch): 0 for the CLS key and for patches
/// inside the region (resized nearest to grid x grid), -1000 elsewhere.
pub fn crop_inputs(
    pixels: &[f32],
    h: usize,
    w: usize,
    crop: &CwrCrop,
    patch: usize,
    size: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let b = crop.cells;
    let (py0, py1, px0, px1) = (b.y0 * patch, (b.y1 * patch).min(h), b.x0 * patch, (b.x1 * patch).min(w));
    let (ch, cw) = (py1 - py0, px1 - px0);
    let mut cut = Vec::with_capacity(3 * ch * cw);
    for c in 0..3 {
        for y in py0..py1 {
            cut.extend_from_slice(&pixels[c * h * w + y * w + px0..c * h * w + y * w + px1]);
        }
    }
    let resized = interpolate_bilinear_chw(&cut, 3, ch, cw, size, size)?;
    let grid = size / patch;
    let region: Vec<f32> = crop.region.iter().map(|&r| if r { 1.0 } else { 0.0 }).collect();
    let small = interpolate_nearest_chw(&region, 1, b.y1 - b.y0, b.x1 - b.x0, grid, grid)?;
    let mut row = Vec::with_capacity(grid * grid + 1);
    row.push(0.0);
    row.extend(small.iter().map(|&v| if v != 0.0 { 0.0 } else { CLS_ROW_MASKED }));
    Ok((resized, row))
}

/// Fusion: for each crop, g = softmax over all classes of scale * cos(crop feature, text),
/// entry of the crop's class; s_c = fusion * s_c + (1 - fusion) * g. features (crops, D).
pub fn fuse(
    local: &[f32],
    crops: &[CwrCrop],
    features: &[f32],
    text: &[f32],
    d: usize,
    scale: f32,
    fusion: f32,
) -> Vec<f32> {
    let c = text.len() / d;
    let probs = class_softmax(features, text, d, scale);
    let mut s = local.to_vec();
    for (i, cr) in crops.iter().enumerate() {
        let g = probs[i * c + cr.class];
        s[cr.class] = fusion * s[cr.class] + (1.0 - fusion) * g;
    }
    s
}

/// Tags: classes scoring above min + threshold * (max - min); if none, the (first) argmax.
pub fn tags_of(scores: &[f32], threshold: f32) -> Vec<usize> {
    if scores.is_empty() {
        return Vec::new();
    }
    let ma = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mi = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let thr = mi + threshold * (ma - mi);
    let tags: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > thr).collect();
    if tags.is_empty() {
        let arg = scores.iter().enumerate().fold(0, |best, (i, &v)| if v > scores[best] { i } else { best });
        vec![arg]
    } else {
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_clip_quirk_and_fix() {
        // One blob touching the right border.
        let mut m = vec![0.0f32; 3 * 4];
        m[4 + 2] = 1.0;
        m[4 + 3] = 1.0;
        let q = scoremap_boxes(&m, 3, 4, 0.5, false, false);
        assert_eq!(q, vec![CellBox { x0: 2, y0: 1, x1: 3, y1: 2 }]);
        let f = scoremap_boxes(&m, 3, 4, 0.5, true, false);
        assert_eq!(f, vec![CellBox { x0: 2, y0: 1, x1: 4, y1: 2 }]);
        // Nothing above the threshold: one empty box.
        assert!(scoremap_boxes(&[0.0; 4], 2, 2, 0.5, false, false)[0].is_empty());
    }

    #[test]
    fn quantisation_quirk() {
        // 0.5005 > 0.5 on the floats, but floor(127.6) = 127 is not > floor(127.5) = 127.
        let m = [1.0f32, 0.5005, 0.0, 0.0];
        let q = scoremap_boxes(&m, 1, 4, 0.5, true, false);
        assert_eq!(q, vec![CellBox { x0: 0, y0: 0, x1: 1, y1: 1 }]);
        let f = scoremap_boxes(&m, 1, 4, 0.5, true, true);
        assert_eq!(f, vec![CellBox { x0: 0, y0: 0, x1: 2, y1: 1 }]);
    }

    #[test]
    fn early_stop_and_fix() {
        // 2 x 3 grid, 3 classes (all dataset classes); class 0 peaks in the last column only.
        let (gh, gw, c) = (2, 3, 3);
        let mut r = vec![0.0f32; gh * gw * c];
        let set = |r: &mut Vec<f32>, y: usize, x: usize, ci: usize, v: f32| r[(y * gw + x) * c + ci] = v;
        set(&mut r, 0, 2, 0, 1.0);
        set(&mut r, 1, 2, 0, 1.0);
        set(&mut r, 0, 0, 1, 0.9);
        set(&mut r, 0, 1, 2, 0.8);
        let local = column_max(&r, c, 3);
        let opts = TagclipOptions::default();
        let p = cwr_plan(&r, &local, gh, gw, c, &opts);
        assert_eq!(p.candidates, vec![0, 1, 2]);
        assert_eq!(p.stopped_at, Some(0));
        assert!(p.crops.is_empty());
        let fixed = TagclipOptions { fix_cwr_early_stop: true, ..TagclipOptions::default() };
        let p = cwr_plan(&r, &local, gh, gw, c, &fixed);
        assert_eq!(p.skipped, vec![0]);
        assert_eq!(p.crops.iter().map(|c| c.class).collect::<Vec<_>>(), vec![1, 2]);
        let both = TagclipOptions { fix_cwr_early_stop: true, fix_box_clip: true, ..TagclipOptions::default() };
        let p = cwr_plan(&r, &local, gh, gw, c, &both);
        assert_eq!(p.crops.iter().map(|c| c.class).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(p.crops[0].cells, CellBox { x0: 2, y0: 0, x1: 3, y1: 2 });
    }

    #[test]
    fn tags_rule() {
        assert_eq!(tags_of(&[0.0, 1.0, 0.25, 0.75, 0.5], 0.5), vec![1, 3]);
        assert_eq!(tags_of(&[0.2, 0.2], 0.5), vec![0]);
    }
}
