//! Losses with their gradients, fused: BCE-with-logits against soft targets with per-sample
//! weights (mean over B x C, as torch's `BCEWithLogitsLoss(reduction='none')` times w, then
//! `.mean()`), and CCD's consistency loss (BCE of one view's logits against the other view's
//! detached sigmoid).

/// log(1 + exp(-|x|)) + max(x, 0) - x*y: torch's stable form, per element.
#[inline]
fn bce_elem(x: f32, y: f32) -> f64 {
    let (x, y) = (x as f64, y as f64);
    (1.0 + (-x.abs()).exp()).ln() + x.max(0.0) - x * y
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// loss = mean_{i,c} w_i * BCE(logits_ic, targets_ic); dlogits (B, C) gets the gradient of
/// `scale * loss` added (so several losses can sum into one buffer). `weights` None = all ones.
pub fn bce_with_logits_cpu(logits: &[f32], targets: &[f32], weights: Option<&[f32]>, c: usize, scale: f32, dlogits: &mut [f32]) -> f32 {
    let n = logits.len();
    let mut total = 0.0f64;
    for (i, ((&x, &y), d)) in logits.iter().zip(targets).zip(dlogits.iter_mut()).enumerate() {
        let w = weights.map_or(1.0, |w| w[i / c]);
        total += w as f64 * bce_elem(x, y);
        *d += scale * w * (sigmoid(x) - y) / n as f32;
    }
    (total / n as f64) as f32
}

/// CCD's consistency loss: mean BCE(logits_b, sigmoid(logits_a)) with logits_a detached; the
/// gradient of `scale * loss` is added to dlogits_b only.
pub fn consistency_bce_cpu(logits_a: &[f32], logits_b: &[f32], c: usize, scale: f32, dlogits_b: &mut [f32]) -> f32 {
    let targets: Vec<f32> = logits_a.iter().map(|&x| sigmoid(x)).collect();
    bce_with_logits_cpu(logits_b, &targets, None, c, scale, dlogits_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_value_and_gradient() {
        let logits = [0.3f32, -2.0, 5.0, -40.0, 1.5, 0.0];
        let targets = [0.2f32, 0.9, 1.0, 0.0, 0.5, 0.7];
        let weights = [0.5f32, 2.0];
        let c = 3;
        // The definition: -(y log s + (1-y) log(1-s)), weighted, averaged over 6 elements.
        let mut want = 0.0f64;
        for i in 0..6 {
            let s = 1.0 / (1.0 + (-(logits[i] as f64)).exp());
            let y = targets[i] as f64;
            let l = -(y * s.ln() + (1.0 - y) * (1.0 - s).max(1e-300).ln());
            want += weights[i / c] as f64 * l;
        }
        want /= 6.0;
        let mut d = [1.0f32; 6];
        let got = bce_with_logits_cpu(&logits, &targets, Some(&weights), c, 2.0, &mut d);
        assert!((got as f64 - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
        for i in 0..6 {
            let s = 1.0 / (1.0 + (-(logits[i] as f64)).exp());
            let g = 1.0 + 2.0 * weights[i / c] as f64 * (s - targets[i] as f64) / 6.0;
            assert!((d[i] as f64 - g).abs() < 1e-6, "d[{i}] {} vs {g}", d[i]);
        }
        // Consistency: the target is the other view's sigmoid.
        let a = [0.0f32, 1.0, -1.0];
        let b = [0.0f32, 1.0, -1.0];
        let mut db = [0.0f32; 3];
        consistency_bce_cpu(&a, &b, 3, 1.0, &mut db);
        assert!(db.iter().all(|g| g.abs() < 1e-7), "same logits: zero gradient");
    }
}
