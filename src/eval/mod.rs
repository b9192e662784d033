//! Multi-label metrics: per-class average precision exactly as scikit-learn's
//! `average_precision_score`, mAP, and precision / recall / F1 of thresholded or top-k
//! predictions, micro ("overall") and per class, as scikit-learn's `precision_recall_fscore_support`
//! with `zero_division=0`. Scores are (images, classes) row-major f32; labels 0/1 u8 the same shape.
//! Everything is accumulated in f64.

pub mod scores_csv;

use serde::Serialize;

/// scikit-learn's `average_precision_score` for one class: the sum over the distinct score
/// values t, highest first, of (R(t) - R(previous t)) * P(t), where an image is predicted
/// positive when its score is >= t. Tied scores form one threshold, so their order does not
/// matter. `None` when the class has no positive.
pub fn average_precision(labels: &[u8], scores: &[f32]) -> Option<f64> {
    assert_eq!(labels.len(), scores.len(), "average_precision: labels and scores differ in length");
    let positives = labels.iter().filter(|&&l| l != 0).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut ap, mut prev_recall) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        while i < order.len() && scores[order[i]].total_cmp(&t).is_eq() {
            if labels[order[i]] != 0 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// Column `c` of a row-major (n, classes) matrix.
fn column<T: Copy>(m: &[T], classes: usize, c: usize) -> Vec<T> {
    m.iter().skip(c).step_by(classes).copied().collect()
}

/// Per-class AP of every column; `None` for classes without a positive.
pub fn per_class_ap(labels: &[u8], scores: &[f32], classes: usize) -> Vec<Option<f64>> {
    check_shapes(labels, scores, classes);
    (0..classes).map(|c| average_precision(&column(labels, classes, c), &column(scores, classes, c))).collect()
}

/// Mean of the per-class APs: over the classes with at least one positive, or, with
/// `empty_as_zero`, over all classes with those counted as 0 (scikit-learn's `average="macro"`).
/// 0 when there is nothing to average.
pub fn mean_ap(ap: &[Option<f64>], empty_as_zero: bool) -> f64 {
    let vals: Vec<f64> = if empty_as_zero {
        ap.iter().map(|a| a.unwrap_or(0.0)).collect()
    } else {
        ap.iter().flatten().copied().collect()
    };
    if vals.is_empty() {
        0.0
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    }
}

fn check_shapes(labels: &[u8], scores: &[f32], classes: usize) {
    assert!(classes > 0, "no classes");
    assert_eq!(labels.len(), scores.len(), "labels and scores differ in size");
    assert_eq!(scores.len() % classes, 0, "scores are not (n, {classes})");
}

/// How scores become predicted labels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Rule {
    /// Positive when score >= threshold.
    Threshold(f32),
    /// The k highest scores of each image are positive (ties: the lower class index first).
    TopK(usize),
}

impl Rule {
    pub fn describe(&self) -> String {
        match self {
            Rule::Threshold(t) => format!("score >= {t}"),
            Rule::TopK(k) => format!("top-{k}"),
        }
    }

    /// The predicted 0/1 matrix.
    pub fn apply(&self, scores: &[f32], classes: usize) -> Vec<u8> {
        match *self {
            Rule::Threshold(t) => scores.iter().map(|&s| (s >= t) as u8).collect(),
            Rule::TopK(k) => {
                let mut out = vec![0u8; scores.len()];
                for (row, pred) in scores.chunks_exact(classes).zip(out.chunks_exact_mut(classes)) {
                    let mut idx: Vec<usize> = (0..classes).collect();
                    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                    for &c in idx.iter().take(k) {
                        pred[c] = 1;
                    }
                }
                out
            }
        }
    }
}

/// Precision, recall and F1 of one set of counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Prf {
    /// scikit-learn's definitions with `zero_division=0`.
    pub fn from_counts(tp: usize, fp: usize, fn_: usize) -> Prf {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Prf {
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            tp,
            fp,
            fn_,
        }
    }
}

/// Precision / recall / F1 of one prediction rule.
#[derive(Clone, Debug, Serialize)]
pub struct PrfReport {
    pub rule: String,
    /// Over all (image, class) pairs: scikit-learn's `average="micro"` (TagCLIP's "overall").
    pub micro: Prf,
    /// The mean of the per-class values over all classes: scikit-learn's `average="macro"`.
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub per_class: Vec<Prf>,
}

pub fn precision_recall_f1(labels: &[u8], scores: &[f32], classes: usize, rule: Rule) -> PrfReport {
    check_shapes(labels, scores, classes);
    let pred = rule.apply(scores, classes);
    let mut counts = vec![(0usize, 0usize, 0usize); classes];
    for (i, (&y, &p)) in labels.iter().zip(&pred).enumerate() {
        let k = &mut counts[i % classes];
        match (y != 0, p != 0) {
            (true, true) => k.0 += 1,
            (false, true) => k.1 += 1,
            (true, false) => k.2 += 1,
            (false, false) => {}
        }
    }
    let per_class: Vec<Prf> = counts.iter().map(|&(tp, fp, fn_)| Prf::from_counts(tp, fp, fn_)).collect();
    let sum = counts.iter().fold((0, 0, 0), |a, k| (a.0 + k.0, a.1 + k.1, a.2 + k.2));
    let mean = |f: fn(&Prf) -> f64| per_class.iter().map(f).sum::<f64>() / classes as f64;
    PrfReport {
        rule: rule.describe(),
        micro: Prf::from_counts(sum.0, sum.1, sum.2),
        macro_precision: mean(|p| p.precision),
        macro_recall: mean(|p| p.recall),
        macro_f1: mean(|p| p.f1),
        per_class,
    }
}

/// What `evaluate` computes.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub threshold: f32,
    pub top_k: usize,
    /// Count classes without a positive as AP 0 in the mAP (default: leave them out).
    pub empty_classes_as_zero: bool,
}

impl Default for EvalOptions {
    /// Threshold 0.5 (on softmax scores: an image's class is predicted when it holds at least
    /// half of the probability) and top-3 (the usual COCO / NUS-WIDE convention).
    fn default() -> Self {
        EvalOptions { threshold: 0.5, top_k: 3, empty_classes_as_zero: false }
    }
}

/// The metric flags of every command that scores a dataset (zeroshot, tagclip, eval).
#[derive(clap::Args, Clone, Debug)]
pub struct MetricArgs {
    /// F1 at this score threshold (predicted positive when score >= threshold)
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// F1 of the k highest scores of each image
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Count classes without a positive as AP 0 in the mAP (default: leave them out)
    #[arg(long)]
    pub empty_classes_as_zero: bool,
}

impl MetricArgs {
    pub fn options(&self) -> EvalOptions {
        EvalOptions { threshold: self.threshold, top_k: self.top_k, empty_classes_as_zero: self.empty_classes_as_zero }
    }
}

/// All the metrics of one score matrix.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub classes: Vec<String>,
    /// Per-class AP (null for classes without a positive).
    pub ap: Vec<Option<f64>>,
    /// Positives of each class.
    pub positives: Vec<usize>,
    pub map: f64,
    /// How many classes the mAP averages.
    pub map_classes: usize,
    pub empty_classes_as_zero: bool,
    pub at_threshold: PrfReport,
    pub at_top_k: PrfReport,
}

pub fn evaluate(labels: &[u8], scores: &[f32], classes: &[String], opts: &EvalOptions) -> EvalReport {
    let c = classes.len();
    let ap = per_class_ap(labels, scores, c);
    let positives: Vec<usize> = (0..c).map(|k| column(labels, c, k).iter().filter(|&&v| v != 0).count()).collect();
    EvalReport {
        images: scores.len() / c,
        classes: classes.to_vec(),
        map: mean_ap(&ap, opts.empty_classes_as_zero),
        map_classes: if opts.empty_classes_as_zero { c } else { ap.iter().flatten().count() },
        empty_classes_as_zero: opts.empty_classes_as_zero,
        ap,
        positives,
        at_threshold: precision_recall_f1(labels, scores, c, Rule::Threshold(opts.threshold)),
        at_top_k: precision_recall_f1(labels, scores, c, Rule::TopK(opts.top_k)),
    }
}

impl EvalReport {
    /// The human-readable summary (stderr).
    pub fn print(&self) {
        eprintln!(
            "mAP       {:.2}  ({} images, over {} of {} classes{})",
            100.0 * self.map,
            self.images,
            self.map_classes,
            self.classes.len(),
            if self.empty_classes_as_zero { ", classes without positives as 0" } else { " with positives" }
        );
        for r in [&self.at_threshold, &self.at_top_k] {
            eprintln!(
                "F1 {:<10} overall P {:.2} R {:.2} F1 {:.2} · per-class mean P {:.2} R {:.2} F1 {:.2}",
                r.rule,
                100.0 * r.micro.precision,
                100.0 * r.micro.recall,
                100.0 * r.micro.f1,
                100.0 * r.macro_precision,
                100.0 * r.macro_recall,
                100.0 * r.macro_f1
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap_by_hand() {
        // sklearn: average_precision_score([1,0,1,0], [.5,.5,.5,.1]) = 2/3
        assert!((average_precision(&[1, 0, 1, 0], &[0.5, 0.5, 0.5, 0.1]).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // [1,0,0,1] with [.5,.5,.2,.2]: thresholds .5 (R .5, P .5) and .2 (R 1, P .5) -> 0.5
        assert!((average_precision(&[1, 0, 0, 1], &[0.5, 0.5, 0.2, 0.2]).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(average_precision(&[0, 0], &[0.1, 0.2]), None);
        assert_eq!(mean_ap(&[Some(0.5), None], false), 0.5);
        assert_eq!(mean_ap(&[Some(0.5), None], true), 0.25);
    }

    #[test]
    fn top_k_ties_take_lower_index() {
        let p = Rule::TopK(1).apply(&[0.2, 0.4, 0.4], 3);
        assert_eq!(p, [0, 1, 0]);
        assert_eq!(Rule::TopK(5).apply(&[0.2, 0.4], 2), [1, 1]);
    }
}
