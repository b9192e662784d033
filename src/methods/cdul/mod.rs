//! CDUL (ICCV 2023, ../shared/methods/cdul.md): CLIP global-local pseudo-labels, then a
//! classifier trained on them with gradient-alignment updates of the labels.
//!
//! Stages, each runnable alone from files:
//! - [`init`]: the global and snippet CLIP scores of every image, aggregated into the initial
//!   soft labels (`cdul init`), or recombined from a previous run's scores with another zeta;
//! - [`update`]: one gradient-alignment step of soft labels towards a classifier's scores
//!   (`cdul update`);
//! - [`train`]: the trainer (BCE only) alternating with label updates (`cdul train`).
//!
//! The label file of every stage is the safetensors format `train --labels` reads: tensor
//! `labels` (N, C) and metadata `paths`, `classes` (JSON lists); `init` adds the tensors
//! `global`, `alpha`, `beta` and the metadata `zeta`, `grid`.

pub mod cli;
pub mod init;
pub mod train;
pub mod update;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::models::clip::weights::{load_safetensors, save_safetensors};
use crate::tensor::Tensor;

/// A CDUL label file in memory. Every (N, C) table is row-major, rows in `paths` order.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelFile {
    pub paths: Vec<String>,
    pub classes: Vec<String>,
    /// (N, C) soft labels in [0, 1].
    pub labels: Vec<f32>,
    /// (N, C) S_global, alpha, beta: present in the files `init` writes.
    pub scores: Option<InitScores>,
    /// Every other metadata entry (zeta, grid, provenance), kept as read.
    pub meta: HashMap<String, String>,
}

/// The CLIP scores `init` aggregates: kept so that zeta can change without CLIP.
#[derive(Clone, Debug, PartialEq)]
pub struct InitScores {
    /// (N, C) softmax over the classes of the whole image.
    pub global: Vec<f32>,
    /// (N, C) max over the snippets of their softmax.
    pub alpha: Vec<f32>,
    /// (N, C) min over the snippets of their softmax.
    pub beta: Vec<f32>,
}

fn bad(path: &Path, what: String) -> Error {
    Error::Weights(format!("labels `{}`: {what}", path.display()))
}

impl LabelFile {
    pub fn rows(&self) -> usize {
        self.paths.len()
    }

    /// Reads a label file: `labels` (N, C), metadata `paths` and `classes`, and `global`,
    /// `alpha`, `beta` when all three are there.
    pub fn read(path: &Path) -> Result<LabelFile> {
        let (mut map, mut meta) = load_safetensors(path)?;
        let list = |meta: &mut HashMap<String, String>, key: &str| -> Result<Vec<String>> {
            let j = meta.remove(key).ok_or_else(|| bad(path, format!("no `{key}` metadata")))?;
            serde_json::from_str(&j).map_err(|e| bad(path, format!("`{key}` metadata: {e}")))
        };
        let paths = list(&mut meta, "paths")?;
        let classes = list(&mut meta, "classes")?;
        let (n, c) = (paths.len(), classes.len());
        let mut table = |name: &str| -> Result<Option<Vec<f32>>> {
            let Some(t) = map.remove(name) else { return Ok(None) };
            if t.shape() != [n, c] {
                return Err(bad(
                    path,
                    format!("`{name}` has shape {:?}; {n} paths and {c} classes make ({n}, {c})", t.shape()),
                ));
            }
            Ok(Some(t.to_f32()?.into_f32_vec()?))
        };
        let labels = table("labels")?.ok_or_else(|| bad(path, "no `labels` tensor".into()))?;
        let scores = match (table("global")?, table("alpha")?, table("beta")?) {
            (Some(global), Some(alpha), Some(beta)) => Some(InitScores { global, alpha, beta }),
            _ => None,
        };
        if let Some(k) = labels.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(bad(
                path,
                format!(
                    "row {} (`{}`), class `{}`: label {} is not in [0, 1]",
                    k / c,
                    paths[k / c],
                    classes[k % c],
                    labels[k]
                ),
            ));
        }
        Ok(LabelFile { paths, classes, labels, scores, meta })
    }

    /// Writes the file (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let (n, c) = (self.paths.len(), self.classes.len());
        let json = |e: serde_json::Error| Error::Internal(format!("label metadata: {e}"));
        let mut meta = self.meta.clone();
        meta.insert("paths".into(), serde_json::to_string(&self.paths).map_err(json)?);
        meta.insert("classes".into(), serde_json::to_string(&self.classes).map_err(json)?);
        let mut tensors = vec![("labels", Tensor::from_f32(&[n, c], self.labels.clone())?)];
        if let Some(s) = &self.scores {
            tensors.push(("global", Tensor::from_f32(&[n, c], s.global.clone())?));
            tensors.push(("alpha", Tensor::from_f32(&[n, c], s.alpha.clone())?));
            tensors.push(("beta", Tensor::from_f32(&[n, c], s.beta.clone())?));
        }
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        crate::methods::write_atomic(path, &save_safetensors(&refs, &meta)?)
    }
}
