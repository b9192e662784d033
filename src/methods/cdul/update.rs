//! CDUL's gradient-alignment step on the soft labels (`cdul update`).
//!
//! The labels are kept as logits z = logit(y), y clamped to [1e-6, 1 - 1e-6] first, and moved
//! against the gradient of BCE-with-logits(z, p) with respect to z, sigmoid(z) - p, where p is
//! the classifier's sigmoid score, weighted by psi(sigmoid(z)) = exp(-(sigmoid(z) - 0.5)^2 /
//! (2 sigma^2)) (labels near 0.5, the uncertain ones, move most):
//!
//! ```text
//! z <- z - eta * psi(sigmoid(z)) * (sigmoid(z) - p);   y = sigmoid(z)
//! ```
//!
//! Computed in f64 per element, stored as f32.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::scores_csv::{count_and_head, ScoreTable};

/// Labels are clamped to [LABEL_CLAMP, 1 - LABEL_CLAMP] before the logit.
pub const LABEL_CLAMP: f64 = 1e-6;

/// The step's constants (method file: eta 0.25, sigma 0.2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UpdateParams {
    pub eta: f32,
    pub sigma: f32,
}

impl Default for UpdateParams {
    fn default() -> Self {
        UpdateParams { eta: 0.25, sigma: 0.2 }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One label after one step, from label `y` and classifier score `p`.
pub fn step_one(y: f32, p: f32, u: UpdateParams) -> f32 {
    let y = (y as f64).clamp(LABEL_CLAMP, 1.0 - LABEL_CLAMP);
    let z = (y / (1.0 - y)).ln();
    let s = sigmoid(z);
    let sigma = u.sigma as f64;
    let psi = (-(s - 0.5) * (s - 0.5) / (2.0 * sigma * sigma)).exp();
    sigmoid(z - u.eta as f64 * psi * (s - p as f64)) as f32
}

/// The step on (N, C) labels and (N, C) scores, both row-major in the same order.
pub fn step(labels: &[f32], scores: &[f32], u: UpdateParams) -> Result<Vec<f32>> {
    if labels.len() != scores.len() {
        return Err(Error::Shape(format!("{} labels and {} scores", labels.len(), scores.len())));
    }
    if u.sigma.is_nan() || u.sigma <= 0.0 || !u.eta.is_finite() {
        return Err(Error::Shape(format!("eta {} and sigma {}: sigma must be positive, eta finite", u.eta, u.sigma)));
    }
    Ok(labels.iter().zip(scores).map(|(&y, &p)| step_one(y, p, u)).collect())
}

/// How far one update moved the labels.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateStats {
    pub rows: usize,
    pub classes: usize,
    pub mean_abs_change: f64,
    pub max_abs_change: f64,
}

pub fn stats(before: &[f32], after: &[f32], classes: usize) -> UpdateStats {
    let (mut sum, mut max) = (0.0f64, 0.0f64);
    for (a, b) in before.iter().zip(after) {
        let d = (*a as f64 - *b as f64).abs();
        sum += d;
        max = max.max(d);
    }
    UpdateStats {
        rows: before.len() / classes.max(1),
        classes,
        mean_abs_change: sum / before.len().max(1) as f64,
        max_abs_change: max,
    }
}

/// The scores of `table` in the order of `paths` and `classes`: every label row needs exactly
/// one score row with the same path and every class a column of the same name (any column
/// order). A mismatch stops with the rows or classes named; extra score rows are ignored.
pub fn align_scores(table: &ScoreTable, paths: &[String], classes: &[String], what: &str) -> Result<Vec<f32>> {
    let width = table.classes.len();
    let mut col = Vec::with_capacity(classes.len());
    let mut missing_classes = Vec::new();
    for c in classes {
        match table.classes.iter().position(|t| t == c) {
            Some(j) => col.push(j),
            None => missing_classes.push(c.clone()),
        }
    }
    if !missing_classes.is_empty() {
        return Err(Error::Dataset(format!(
            "{what} does not match the labels: {}; its columns: {}",
            count_and_head("classes without a column", &missing_classes),
            table.classes.join(", ")
        )));
    }
    let extra: Vec<String> = table.classes.iter().filter(|t| !classes.contains(t)).cloned().collect();
    if !extra.is_empty() {
        return Err(Error::Dataset(format!(
            "{what} does not match the labels: {}",
            count_and_head("columns that are no class of the labels", &extra)
        )));
    }
    let mut row_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut duplicates = Vec::new();
    for (r, p) in table.paths.iter().enumerate() {
        if row_of.insert(p.as_str(), r).is_some() {
            duplicates.push(p.clone());
        }
    }
    if !duplicates.is_empty() {
        return Err(Error::Dataset(format!("{what}: {}", count_and_head("paths with several rows", &duplicates))));
    }
    let missing: Vec<String> = paths.iter().filter(|p| !row_of.contains_key(p.as_str())).cloned().collect();
    if !missing.is_empty() {
        return Err(Error::Dataset(format!(
            "{what} does not match the labels: {}",
            count_and_head("label rows without a score row", &missing)
        )));
    }
    let mut out = Vec::with_capacity(paths.len() * classes.len());
    for p in paths {
        let r = row_of[p.as_str()];
        let row = &table.scores[r * width..(r + 1) * width];
        out.extend(col.iter().map(|&j| row[j]));
    }
    if let Some(k) = out.iter().position(|v| !(0.0..=1.0).contains(v)) {
        let c = classes.len();
        return Err(Error::Dataset(format!(
            "{what}: row `{}`, class `{}`: score {} is not a probability in [0, 1] (sigmoid scores expected)",
            paths[k / c],
            classes[k % c],
            out[k]
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_equal_to_its_score_does_not_move() {
        let u = UpdateParams::default();
        for y in [0.1f32, 0.5, 0.9] {
            assert!((step_one(y, y, u) - y).abs() < 1e-6);
        }
        // Below the score the label rises, above it it falls; near 0.5 it moves most.
        assert!(step_one(0.4, 0.9, u) > 0.4 && step_one(0.6, 0.1, u) < 0.6);
        assert!(step_one(0.5, 1.0, u) - 0.5 > step_one(0.05, 1.0, u) - 0.05);
    }

    #[test]
    fn align_reorders_and_names_what_is_missing() {
        let t = ScoreTable {
            classes: vec!["b".into(), "a".into()],
            paths: vec!["y.jpg".into(), "x.jpg".into()],
            scores: vec![0.1, 0.2, 0.3, 0.4],
            lines: vec![2, 3],
            bad_lines: vec![],
        };
        let classes = vec!["a".to_string(), "b".to_string()];
        let got = align_scores(&t, &["x.jpg".into(), "y.jpg".into()], &classes, "p.csv").unwrap();
        assert_eq!(got, vec![0.4, 0.3, 0.2, 0.1]);
        let e = align_scores(&t, &["z.jpg".into()], &classes, "p.csv").unwrap_err().to_string();
        assert!(e.contains("z.jpg"), "{e}");
        let e = align_scores(&t, &["x.jpg".into()], &["a".into(), "c".into()], "p.csv").unwrap_err().to_string();
        assert!(e.contains("`c`") || e.contains("(c)"), "{e}");
    }
}
