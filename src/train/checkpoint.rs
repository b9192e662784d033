//! Checkpoints: the model's parameters and running statistics, Adam's moments and step, and
//! the run's position (epochs done, seed: the data order and flips of epoch e come from
//! (seed, e), so these two fix the RNG state) in one safetensors file, written atomically (a
//! temporary file, then a rename), with a JSON twin for people and scripts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::methods::write_atomic;
use crate::models::clip::weights::{load_safetensors, save_safetensors};
use crate::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use crate::tensor::Tensor;
use crate::train::adam::{Adam, ParamGroup};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const CHECKPOINT_JSON: &str = "checkpoint.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: usize,
    pub seed: u64,
    pub adam_step: u64,
    pub lr: f32,
    pub head_lr: f32,
    pub width: usize,
    pub layers: [usize; 4],
    pub num_classes: usize,
    /// "cam" or "linear".
    pub head: String,
    pub alpha: f32,
}

/// Saves model + optimiser + position to `dir/checkpoint.safetensors` (and `.json`).
pub fn save(dir: &Path, model: &ResNet, opt: &Adam, epoch: usize, seed: u64) -> Result<()> {
    let cfg = &model.cfg;
    let meta = CheckpointMeta {
        epoch,
        seed,
        adam_step: opt.step,
        lr: opt.groups.first().map_or(0.0, |g| g.lr),
        head_lr: opt.groups.last().map_or(0.0, |g| g.lr),
        width: cfg.width,
        layers: cfg.layers,
        num_classes: cfg.num_classes,
        head: match cfg.head {
            HeadKind::Cam => "cam".into(),
            HeadKind::Linear => "linear".into(),
        },
        alpha: cfg.alpha,
    };
    let mut named = model.named_tensors();
    for s in &model.slots {
        named.push((format!("adam.m.{}", s.name), Tensor::from_f32(&s.shape, opt.m[s.range()].to_vec())?));
        named.push((format!("adam.v.{}", s.name), Tensor::from_f32(&s.shape, opt.v[s.range()].to_vec())?));
    }
    let json = serde_json::to_string_pretty(&meta).map_err(|e| Error::Weights(e.to_string()))?;
    let metadata = HashMap::from([("labelfree_checkpoint".to_string(), json.clone())]);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_atomic(&dir.join(CHECKPOINT_FILE), &save_safetensors(&refs, &metadata)?)?;
    write_atomic(&dir.join(CHECKPOINT_JSON), json.as_bytes())
}

/// Loads a checkpoint: the model, Adam (moments, step, the two learning rates) and its meta.
pub fn load(path: &Path) -> Result<(ResNet, Adam, CheckpointMeta)> {
    let (map, metadata) = load_safetensors(path)?;
    let meta: CheckpointMeta = metadata
        .get("labelfree_checkpoint")
        .ok_or_else(|| Error::Weights(format!("`{}` is not a labelfree checkpoint (no metadata)", path.display())))
        .and_then(|j| {
            serde_json::from_str(j)
                .map_err(|e| Error::Weights(format!("`{}`: bad checkpoint metadata: {e}", path.display())))
        })?;
    let head = if meta.head == "linear" { HeadKind::Linear } else { HeadKind::Cam };
    let cfg =
        ResNetConfig { width: meta.width, layers: meta.layers, num_classes: meta.num_classes, head, alpha: meta.alpha };
    let mut model = ResNet::new(cfg, meta.seed);
    let (mut weights, mut moments) = (BTreeMap::new(), BTreeMap::new());
    for (name, t) in map {
        if name.starts_with("adam.") {
            moments.insert(name, t);
        } else {
            weights.insert(name, t);
        }
    }
    model.load_map(&weights)?;
    if !weights.contains_key("head.weight") || !weights.contains_key("head.bias") {
        return Err(Error::WeightMissing("head.weight / head.bias".into()));
    }
    let n = model.params.len();
    let mut opt = Adam::new(
        n,
        vec![
            ParamGroup { range: 0..model.head_start, lr: meta.lr },
            ParamGroup { range: model.head_start..n, lr: meta.head_lr },
        ],
    );
    opt.step = meta.adam_step;
    for s in &model.slots {
        for (which, dst) in [("m", &mut opt.m), ("v", &mut opt.v)] {
            let key = format!("adam.{which}.{}", s.name);
            let t = moments.get(&key).ok_or_else(|| Error::WeightMissing(key.clone()))?;
            if t.shape() != s.shape.as_slice() {
                return Err(Error::WeightShape { name: key, expected: s.shape.clone(), found: t.shape().to_vec() });
            }
            dst[s.range()].copy_from_slice(t.f32s()?);
        }
    }
    Ok((model, opt, meta))
}
