//! Soft labels for training: a CSV `path,<class>,<class>,...` (header row with the class
//! names, then one row per image with a value in [0, 1] per class), or a safetensors file with
//! a tensor `labels` (N, C) and metadata `paths` (JSON list) and optionally `classes`.
//! Relative paths are taken from `root`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::clip::weights::load_safetensors;
use crate::train::trainer::Sample;

pub struct SoftLabels {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn bad(path: &Path, what: String) -> Error {
    Error::Weights(format!("labels `{}`: {what}", path.display()))
}

fn check_value(path: &Path, where_: &str, v: f32) -> Result<f32> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(bad(path, format!("{where_}: value {v} is not in [0, 1]")))
    }
}

/// Reads a CSV or safetensors label file (by extension).
pub fn read_labels(path: &Path, root: &Path) -> Result<SoftLabels> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        return read_safetensors(path, root);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad(path, "empty file".into()))?;
    let classes: Vec<String> = header.split(',').skip(1).map(|s| s.trim().to_string()).collect();
    if classes.is_empty() {
        return Err(bad(path, "the header must be `path,<class>,...`".into()));
    }
    let mut samples = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != classes.len() + 1 {
            return Err(bad(path, format!("line {}: {} fields, the header has {}", i + 1, fields.len(), classes.len() + 1)));
        }
        let target = fields[1..]
            .iter()
            .map(|f| {
                let v: f32 = f.parse().map_err(|_| bad(path, format!("line {}: `{f}` is not a number", i + 1)))?;
                check_value(path, &format!("line {}", i + 1), v)
            })
            .collect::<Result<Vec<f32>>>()?;
        samples.push(Sample { path: root.join(fields[0]), target });
    }
    Ok(SoftLabels { classes, samples })
}

fn read_safetensors(path: &Path, root: &Path) -> Result<SoftLabels> {
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
    let classes: Vec<String> = match meta.get("classes") {
        Some(j) => serde_json::from_str(j).map_err(|e| bad(path, format!("`classes` metadata: {e}")))?,
        None => (0..c).map(|i| format!("class{i}")).collect(),
    };
    if classes.len() != c {
        return Err(bad(path, format!("{} class names for {c} label columns", classes.len())));
    }
    let data = labels.to_f32()?.into_f32_vec()?;
    let samples = paths
        .iter()
        .zip(data.chunks_exact(c))
        .enumerate()
        .map(|(i, (p, row))| {
            let target = row.iter().map(|&v| check_value(path, &format!("row {i}"), v)).collect::<Result<Vec<f32>>>()?;
            Ok(Sample { path: root.join(p), target })
        })
        .collect::<Result<Vec<Sample>>>()?;
    Ok(SoftLabels { classes, samples })
}
