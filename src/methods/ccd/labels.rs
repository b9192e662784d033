//! CCD's label file: the safetensors format `train --labels` reads (tensor `labels` (N, C),
//! metadata `paths` and `classes`, JSON lists), plus what stage 2 needs from stage 0: `bias`
//! (C), and for people `clip_scores` (N, C) and `flags` (N, 1 confident / 0 uncertain, stored
//! as f32). A scores CSV (TagCLIP's, zeroshot's) is read too: it has no bias, so stage 2 then
//! divides by 1.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::models::clip::weights::{load_safetensors, save_safetensors};
use crate::tensor::Tensor;
use crate::train::labels::read_label_table;

/// A CCD label file in memory; every (N, C) table row-major, rows in `paths` order.
#[derive(Clone, Debug, PartialEq)]
pub struct CcdLabels {
    pub paths: Vec<String>,
    pub classes: Vec<String>,
    /// (N, C) in [0, 1]
    pub labels: Vec<f32>,
    /// (N, C) stage 0's CLIP softmax, when the file is stage 0's
    pub clip_scores: Option<Vec<f32>>,
    /// (N) stage 0's entropy flags
    pub flags: Option<Vec<u8>>,
    /// (C) stage 0's class bias; None for a file without one (a scores CSV)
    pub bias: Option<Vec<f32>>,
    /// Every other metadata entry, kept as read.
    pub meta: HashMap<String, String>,
}

fn bad(path: &Path, what: String) -> Error {
    Error::Weights(format!("labels `{}`: {what}", path.display()))
}

impl CcdLabels {
    pub fn rows(&self) -> usize {
        self.paths.len()
    }

    /// Reads a CCD label file, or any label file `train --labels` reads (then without bias,
    /// scores and flags). Values outside [0, 1] stop it with the row named.
    pub fn read(path: &Path) -> Result<CcdLabels> {
        let table = read_label_table(path)?.table;
        let (n, c) = (table.paths.len(), table.classes.len());
        let mut file = CcdLabels {
            paths: table.paths,
            classes: table.classes,
            labels: table.scores,
            clip_scores: None,
            flags: None,
            bias: None,
            meta: HashMap::new(),
        };
        if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            return Ok(file);
        }
        let (mut map, mut meta) = load_safetensors(path)?;
        meta.remove("paths");
        meta.remove("classes");
        file.meta = meta;
        let mut take = |name: &str, shape: &[usize]| -> Result<Option<Vec<f32>>> {
            let Some(t) = map.remove(name) else { return Ok(None) };
            if t.shape() != shape {
                return Err(bad(
                    path,
                    format!("`{name}` has shape {:?}; {n} paths and {c} classes make {shape:?}", t.shape()),
                ));
            }
            Ok(Some(t.to_f32()?.into_f32_vec()?))
        };
        file.clip_scores = take("clip_scores", &[n, c])?;
        file.flags = take("flags", &[n])?.map(|f| f.iter().map(|&v| (v > 0.5) as u8).collect());
        file.bias = take("bias", &[c])?;
        if let Some(b) = &file.bias {
            if let Some(j) = b.iter().position(|v| !v.is_finite() || *v <= 0.0) {
                return Err(bad(
                    path,
                    format!("`bias` of class `{}` is {}, not a positive number", file.classes[j], b[j]),
                ));
            }
        }
        Ok(file)
    }

    /// Writes the file (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let (n, c) = (self.paths.len(), self.classes.len());
        let json = |e: serde_json::Error| Error::Internal(format!("label metadata: {e}"));
        let mut meta = self.meta.clone();
        meta.insert("paths".into(), serde_json::to_string(&self.paths).map_err(json)?);
        meta.insert("classes".into(), serde_json::to_string(&self.classes).map_err(json)?);
        let mut tensors = vec![("labels", Tensor::from_f32(&[n, c], self.labels.clone())?)];
        if let Some(s) = &self.clip_scores {
            tensors.push(("clip_scores", Tensor::from_f32(&[n, c], s.clone())?));
        }
        if let Some(f) = &self.flags {
            tensors.push(("flags", Tensor::from_f32(&[n], f.iter().map(|&v| v as f32).collect())?));
        }
        if let Some(b) = &self.bias {
            tensors.push(("bias", Tensor::from_f32(&[c], b.clone())?));
        }
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        crate::methods::write_atomic(path, &save_safetensors(&refs, &meta)?)
    }

    /// The bias stage 2 divides by: the file's, else ones.
    pub fn bias_or_ones(&self) -> Vec<f32> {
        self.bias.clone().unwrap_or_else(|| vec![1.0; self.classes.len()])
    }
}
