//! Loading CLIP weights from safetensors, in OpenAI / open_clip names or Hugging Face
//! transformers names. HF names are mapped onto OpenAI's at load time (q/k/v concatenated into
//! the fused in-projection, projections transposed), so the models read one scheme only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::{numel, Storage, Tensor};

/// All tensors of a checkpoint, by OpenAI name, with the file's metadata.
pub struct Params {
    map: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
    pub metadata: HashMap<String, String>,
    /// "open_clip" or "hf": the scheme the file used.
    pub scheme: &'static str,
}

/// Buffers that checkpoints carry but that are not parameters.
fn is_ignorable(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
        || name.ends_with("position_ids")
        || name == "attn_mask"
        || name.ends_with(".attn_mask")
        || matches!(name, "input_resolution" | "context_length" | "vocab_size")
}

fn read_tensor(name: &str, view: &safetensors::tensor::TensorView) -> Result<Tensor> {
    let shape = view.shape().to_vec();
    let bytes = view.data();
    let n = numel(&shape);
    let bad = |what: &str| Error::Weights(format!("tensor `{name}`: {what}"));
    let data: Vec<f32> = match view.dtype() {
        StDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        StDtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StDtype::F64 => {
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
        }
        StDtype::I64 => {
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
        }
        StDtype::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        other => return Err(bad(&format!("unsupported dtype {other:?}"))),
    };
    if data.len() != n {
        return Err(bad("data size does not match its shape"));
    }
    Tensor::new(&shape, Storage::F32(data))
}

/// Loads every tensor of a safetensors file as f32.
pub fn load_safetensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    // SAFETY: the map is read-only and lives only while we copy out of it.
    let mmap =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| {
        Error::Weights(format!("`{}` is not a readable safetensors file (truncated or corrupt?): {e}", path.display()))
    })?;
    let (_, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| Error::Weights(format!("`{}`: bad safetensors header: {e}", path.display())))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut map = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = read_tensor(&name, &view)?;
        map.insert(name, t);
    }
    Ok((map, metadata))
}

/// Maps a Hugging Face CLIPModel state dict onto OpenAI names.
fn hf_to_openai(hf: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let mut qkv: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for (name, t) in hf {
        let (tower_hf, tower) = if let Some(r) = name.strip_prefix("vision_model.") {
            (r.to_string(), "visual.")
        } else if let Some(r) = name.strip_prefix("text_model.") {
            (r.to_string(), "")
        } else {
            match name.as_str() {
                "visual_projection.weight" => {
                    out.insert("visual.proj".into(), transpose2(&t)?);
                }
                "text_projection.weight" => {
                    out.insert("text_projection".into(), transpose2(&t)?);
                }
                _ => {
                    out.insert(name, t);
                }
            }
            continue;
        };
        let r = tower_hf.as_str();
        let mapped: String = if let Some(rest) = r.strip_prefix("encoder.layers.") {
            let (idx, sub) = rest.split_once('.').ok_or_else(|| Error::Weights(format!("odd tensor name `{name}`")))?;
            let base = format!("{tower}transformer.resblocks.{idx}.");
            let qkv_slot = |p: &str| match p {
                "q_proj" => Some(0),
                "k_proj" => Some(1),
                "v_proj" => Some(2),
                _ => None,
            };
            if let Some((proj, wb)) = sub.strip_prefix("self_attn.").and_then(|s| s.split_once('.')) {
                if let Some(slot) = qkv_slot(proj) {
                    let key = format!("{base}attn.in_proj_{wb}");
                    qkv.entry(key).or_default()[slot] = Some(t);
                    continue;
                }
            }
            let sub = sub
                .replace("self_attn.out_proj", "attn.out_proj")
                .replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj");
            format!("{base}{sub}")
        } else {
            match r {
                "embeddings.class_embedding" => format!("{tower}class_embedding"),
                "embeddings.patch_embedding.weight" => format!("{tower}conv1.weight"),
                "embeddings.position_embedding.weight" if tower.is_empty() => "positional_embedding".into(),
                "embeddings.position_embedding.weight" => format!("{tower}positional_embedding"),
                "embeddings.token_embedding.weight" => "token_embedding.weight".into(),
                "pre_layrnorm.weight" => format!("{tower}ln_pre.weight"),
                "pre_layrnorm.bias" => format!("{tower}ln_pre.bias"),
                "post_layernorm.weight" => format!("{tower}ln_post.weight"),
                "post_layernorm.bias" => format!("{tower}ln_post.bias"),
                "final_layer_norm.weight" => "ln_final.weight".into(),
                "final_layer_norm.bias" => "ln_final.bias".into(),
                _ => name.clone(),
            }
        };
        out.insert(mapped, t);
    }
    for (key, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(Error::Weights(format!("`{key}`: q_proj, k_proj and v_proj must all be present")));
        };
        let mut shape = q.shape().to_vec();
        shape[0] *= 3;
        let mut data = q.f32s()?.to_vec();
        data.extend_from_slice(k.f32s()?);
        data.extend_from_slice(v.f32s()?);
        out.insert(key, Tensor::from_f32(&shape, data)?);
    }
    Ok(out)
}

fn transpose2(t: &Tensor) -> Result<Tensor> {
    if t.rank() != 2 {
        return Err(Error::Shape(format!("projection of shape {:?} is not a matrix", t.shape())));
    }
    let (r, c) = (t.dim(0), t.dim(1));
    let src = t.f32s()?;
    let mut dst = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            dst[j * r + i] = src[i * c + j];
        }
    }
    Tensor::from_f32(&[c, r], dst)
}

impl Params {
    pub fn load(path: &Path) -> Result<Params> {
        let (map, metadata) = load_safetensors(path)?;
        Params::from_map(map, metadata)
    }

    pub fn from_map(map: BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Params> {
        let mut map: BTreeMap<String, Tensor> = map
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v))
            .filter(|(k, _)| !is_ignorable(k))
            .collect();
        let hf = map.keys().any(|k| k.starts_with("vision_model.") || k.starts_with("text_model."));
        if hf {
            map = hf_to_openai(map)?;
        }
        Ok(Params { map, used: BTreeSet::new(), metadata, scheme: if hf { "hf" } else { "open_clip" } })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A tensor's shape, for reading the architecture.
    pub fn shape_of(&self, name: &str) -> Result<&[usize]> {
        self.map.get(name).map(|t| t.shape()).ok_or_else(|| Error::WeightMissing(name.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// Takes a tensor and checks its shape.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let t = self.map.remove(name).ok_or_else(|| Error::WeightMissing(name.to_string()))?;
        if t.shape() != expected {
            // A 0-d scalar saved as (1,) is the same parameter.
            let scalar_alias = expected.is_empty() && t.numel() == 1;
            if !scalar_alias {
                return Err(Error::WeightShape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    found: t.shape().to_vec(),
                });
            }
        }
        self.used.insert(name.to_string());
        t.into_f32_vec()
    }

    /// Every tensor must have been used: an extra tensor means the file is not the model the
    /// shapes suggested.
    pub fn finish(self) -> Result<()> {
        if let Some((name, t)) = self.map.iter().next() {
            return Err(Error::Weights(format!(
                "unexpected tensor `{name}` of shape {:?} ({} unused tensors in all): the weights do not \
                 match the architecture read from their shapes",
                t.shape(),
                self.map.len()
            )));
        }
        Ok(())
    }
}

/// Serialises f32 tensors (and string metadata) to safetensors bytes.
pub fn save_safetensors(tensors: &[(&str, &Tensor)], metadata: &HashMap<String, String>) -> Result<Vec<u8>> {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.to_string(), t.shape().to_vec(), bytemuck::cast_slice::<f32, u8>(t.f32s()?).to_vec())))
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(StDtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Weights(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, &Some(metadata.clone())).map_err(|e| Error::Weights(e.to_string()))
}
