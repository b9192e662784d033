//! Soft labels for training: the scores format of `zeroshot` and `tagclip` (a CSV
//! `path,<class>,<class>,...`, then one row per image with a value in [0, 1] per class), or a
//! safetensors file with a tensor `labels` (N, C), metadata `paths` (JSON list) and optionally
//! `classes` (JSON list).
//!
//! The rows become training samples in one of two ways: joined to a folder (relative paths
//! taken from `root`), or matched to the images of a dataset split by path
//! ([`crate::eval::scores_csv::match_dataset`]: relative or absolute path, or the file name when
//! unique), where the label file's classes must be the dataset's classes.

use std::path::Path;

use serde::Serialize;

use crate::data::datasets::Dataset;
use crate::error::{Error, Result};
use crate::eval::scores_csv::{self, Matched, ScoreTable};
use crate::models::clip::weights::load_safetensors;
use crate::train::trainer::Sample;

pub struct SoftLabels {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn bad(path: &Path, what: String) -> Error {
    Error::Weights(format!("labels `{}`: {what}", path.display()))
}

/// A label table read from disk; `named_classes` is false when a safetensors file has no
/// `classes` metadata (its columns are then called class0, class1, ...).
pub struct LabelTable {
    pub table: ScoreTable,
    pub named_classes: bool,
}

/// Reads a CSV or safetensors label file (by extension). Every value must lie in [0, 1] and
/// every CSV line must parse: an error names the line.
pub fn read_label_table(path: &Path) -> Result<LabelTable> {
    let (table, named_classes) = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        read_safetensors(path)?
    } else {
        let t = scores_csv::read(path)?;
        if let Some(first) = t.bad_lines.first() {
            return Err(bad(path, format!("{first} ({} unreadable lines)", t.bad_lines.len())));
        }
        (t, true)
    };
    let c = table.classes.len().max(1);
    if let Some(k) = table.scores.iter().position(|v| !(0.0..=1.0).contains(v)) {
        let row = k / c;
        let place = match table.lines.get(row) {
            Some(&line) if line > 0 => format!("line {line}"),
            _ => format!("row {row}"),
        };
        return Err(bad(path, format!("{place} (`{}`): value {} is not in [0, 1]", table.paths[row], table.scores[k])));
    }
    Ok(LabelTable { table, named_classes })
}

/// Labels for the images of a folder: relative paths are joined to `root`.
pub fn read_labels(path: &Path, root: &Path) -> Result<SoftLabels> {
    let LabelTable { table, .. } = read_label_table(path)?;
    let c = table.classes.len();
    let samples = table
        .paths
        .iter()
        .zip(table.scores.chunks_exact(c))
        .map(|(p, row)| Sample { path: root.join(p), target: row.to_vec() })
        .collect();
    Ok(SoftLabels { classes: table.classes, samples })
}

/// How a label file's rows met a dataset's images.
#[derive(Clone, Debug, Serialize)]
pub struct LabelMatch {
    pub label_rows: usize,
    /// Images with a label row: the training set.
    pub matched: usize,
    #[serde(flatten)]
    pub detail: Matched,
}

/// Labels for the images of a dataset split, in dataset order. The classes must be the
/// dataset's (any order, any spelling of [`Dataset::class_aliases`]); images without a row
/// and rows without an image are left out and counted.
pub fn match_labels(path: &Path, ds: &Dataset) -> Result<(SoftLabels, LabelMatch)> {
    let LabelTable { mut table, named_classes } = read_label_table(path)?;
    if !named_classes {
        if table.classes.len() != ds.num_classes() {
            return Err(bad(
                path,
                format!(
                    "{} label columns and no `classes` metadata; {} has {} classes",
                    table.classes.len(),
                    ds.name,
                    ds.num_classes()
                ),
            ));
        }
        // Unnamed columns are taken to be the dataset's classes in its order.
        table.classes = ds.classes.clone();
    }
    let mismatch = |what: String| {
        bad(
            path,
            format!(
                "its classes are not those of {} {}: {what} (the dataset's: {})",
                ds.name,
                ds.split,
                ds.classes.join(", ")
            ),
        )
    };
    let detail = scores_csv::match_dataset(&table, ds).map_err(|e| mismatch(e.to_string()))?;
    if !detail.extra_columns.is_empty() {
        return Err(mismatch(format!("columns that are no class of the dataset: {}", detail.extra_columns.join(", "))));
    }
    if detail.items.is_empty() {
        return Err(bad(path, format!("no row matches an image of {} {} at {}", ds.name, ds.split, ds.root.display())));
    }
    let c = ds.num_classes();
    let samples = detail
        .items
        .iter()
        .zip(detail.scores.chunks_exact(c))
        .map(|(&i, row)| Sample { path: ds.items[i].path.clone(), target: row.to_vec() })
        .collect();
    let m = LabelMatch { label_rows: table.paths.len(), matched: detail.items.len(), detail };
    Ok((SoftLabels { classes: ds.classes.clone(), samples }, m))
}

fn read_safetensors(path: &Path) -> Result<(ScoreTable, bool)> {
    let (map, meta) = load_safetensors(path)?;
    let labels = map.get("labels").ok_or_else(|| Error::WeightMissing("labels".into()))?;
    if labels.rank() != 2 {
        return Err(bad(path, format!("`labels` has shape {:?}, expected (N, C)", labels.shape())));
    }
    let (n, c) = (labels.dim(0), labels.dim(1));
    let paths: Vec<String> = meta
        .get("paths")
        .ok_or_else(|| bad(path, "no `paths` metadata".into()))
        .and_then(|j| serde_json::from_str(j).map_err(|e| bad(path, format!("`paths` metadata: {e}"))))?;
    if paths.len() != n {
        return Err(bad(path, format!("{} paths for {n} label rows", paths.len())));
    }
    let (classes, named) = match meta.get("classes") {
        Some(j) => {
            (serde_json::from_str::<Vec<String>>(j).map_err(|e| bad(path, format!("`classes` metadata: {e}")))?, true)
        }
        None => ((0..c).map(|i| format!("class{i}")).collect(), false),
    };
    if classes.len() != c {
        return Err(bad(path, format!("{} class names for {c} label columns", classes.len())));
    }
    let scores = labels.to_f32()?.into_f32_vec()?;
    Ok((ScoreTable { classes, paths, scores, lines: vec![0; n], bad_lines: Vec::new() }, named))
}
