//! A disk cache of CLIP image embeddings, so a second run over the same dataset skips the
//! image encoder.
//!
//! One safetensors file per (model, dataset, split, transform), in the cache folder
//! (`$LABELFREE_CACHE`, else `.labelfree-cache/` under the current folder), named
//! `<dataset>-<split>-<hash of the key>.safetensors`. It holds the tensor `embeddings` (N, D)
//! and, as metadata, the full `key` (checked on load, so a hash collision is a miss), the `ids`
//! of the rows (the images' paths relative to the dataset root) and each image file's `stamps`
//! (size and modification time: a changed file is encoded again).
//!
//! The model part of the key is, for a weights file, its size and an FNV-1a 64 hash of its
//! safetensors header (every tensor's name, dtype, shape and offsets) and of 64 blocks of
//! 64 KiB spread evenly over the file, first and last bytes included; a checkpoint whose
//! weights differ anywhere in practice differs in those blocks. For a random-weight model it
//! is the architecture and seed. The activation and the transform's description are part of
//! the key too. Images that failed to load are not cached: they are retried on every run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::clip::weights::{load_safetensors, save_safetensors};
use crate::tensor::Tensor;

const FORMAT: &str = "labelfree-embeddings-v1";

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(self) -> u64 {
        self.0
    }
    pub fn hash(bytes: &[u8]) -> u64 {
        let mut h = Fnv64::default();
        h.update(bytes);
        h.finish()
    }
}

const SAMPLE_BLOCKS: u64 = 64;
const SAMPLE_BYTES: u64 = 64 * 1024;
const MAX_HEADER: u64 = 100 << 20;

/// `size=<bytes>,fnv1a64=<hex>` of a weights file (see the module docs for what is hashed).
pub fn weights_fingerprint(path: &Path) -> Result<String> {
    let io = |e| Error::Io { path: path.display().to_string(), source: e };
    let mut f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut h = Fnv64::default();
    h.update(&size.to_le_bytes());
    // The safetensors header: u64 length, then that much JSON.
    let mut len = [0u8; 8];
    if size >= 8 {
        f.read_exact(&mut len).map_err(io)?;
        let n = u64::from_le_bytes(len).min(MAX_HEADER).min(size - 8);
        let mut head = vec![0u8; n as usize];
        f.read_exact(&mut head).map_err(io)?;
        h.update(&head);
    }
    let block = SAMPLE_BYTES.min(size);
    let mut buf = vec![0u8; block as usize];
    for i in 0..SAMPLE_BLOCKS {
        let off = (size - block) * i / (SAMPLE_BLOCKS - 1);
        f.seek(SeekFrom::Start(off)).map_err(io)?;
        f.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
    }
    Ok(format!("size={size},fnv1a64={:016x}", h.finish()))
}

/// Size and modification time (ns since the epoch) of a file; `None` if it cannot be read.
pub fn file_stamp(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64;
    Some((m.len(), t))
}

/// The default cache folder: `$LABELFREE_CACHE`, else `.labelfree-cache` in the current folder.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("LABELFREE_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(".labelfree-cache"),
    }
}

/// Where one run's embeddings are cached.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    pub file: PathBuf,
    pub key: String,
}

impl CacheEntry {
    /// `model` is [`weights_fingerprint`]'s text or `random:<arch>:seed=<seed>`.
    pub fn new(dir: &Path, model: &str, act: &str, dataset: &str, split: &str, transform: &str) -> CacheEntry {
        let key = format!("{FORMAT}|model={model}|act={act}|dataset={dataset}|split={split}|transform={transform}");
        let clean = |s: &str| {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect::<String>()
        };
        let file =
            dir.join(format!("{}-{}-{:016x}.safetensors", clean(dataset), clean(split), Fnv64::hash(key.as_bytes())));
        CacheEntry { file, key }
    }

    /// The cached rows, by id, with the stamp of the file they were made from. A missing file,
    /// another key or an unreadable file is an empty cache (a miss), never an error.
    pub fn load(&self) -> CachedRows {
        self.try_load().unwrap_or_default()
    }

    fn try_load(&self) -> Option<CachedRows> {
        if !self.file.is_file() {
            return None;
        }
        let (tensors, meta) = load_safetensors(&self.file).ok()?;
        if meta.get("key") != Some(&self.key) {
            return None;
        }
        let emb = tensors.get("embeddings")?;
        let ids: Vec<String> = serde_json::from_str(meta.get("ids")?).ok()?;
        let stamps: Vec<(u64, u64)> = serde_json::from_str(meta.get("stamps")?).ok()?;
        if emb.rank() != 2 || emb.dim(0) != ids.len() || stamps.len() != ids.len() {
            return None;
        }
        let d = emb.dim(1);
        let data = emb.f32s().ok()?;
        let rows = ids
            .into_iter()
            .zip(stamps)
            .zip(data.chunks_exact(d.max(1)))
            .map(|((id, st), row)| (id, (st, row.to_vec())))
            .collect();
        Some(CachedRows { dim: d, rows })
    }

    /// Writes `rows` (replacing what was there).
    pub fn store(&self, rows: &CachedRows) -> Result<()> {
        let mut ids: Vec<&String> = rows.rows.keys().collect();
        ids.sort();
        let mut data = Vec::with_capacity(ids.len() * rows.dim);
        let mut stamps = Vec::with_capacity(ids.len());
        for id in &ids {
            let (st, row) = &rows.rows[*id];
            stamps.push(*st);
            data.extend_from_slice(row);
        }
        let t = Tensor::from_f32(&[ids.len(), rows.dim], data)?;
        let json = |e: serde_json::Error| Error::Internal(format!("cache metadata: {e}"));
        let mut meta = HashMap::new();
        meta.insert("key".to_string(), self.key.clone());
        meta.insert("ids".to_string(), serde_json::to_string(&ids).map_err(json)?);
        meta.insert("stamps".to_string(), serde_json::to_string(&stamps).map_err(json)?);
        let bytes = save_safetensors(&[("embeddings", &t)], &meta)?;
        crate::methods::write_atomic(&self.file, &bytes)
    }
}

/// Cached embeddings by image id, each with the stamp of its file.
#[derive(Clone, Debug, Default)]
pub struct CachedRows {
    pub dim: usize,
    pub rows: HashMap<String, ((u64, u64), Vec<f32>)>,
}

/// What the cache did in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CacheStatus {
    pub enabled: bool,
    pub file: Option<String>,
    /// Images whose embedding came from the cache.
    pub reused: usize,
    /// Images encoded in this run (and added to the cache).
    pub encoded: usize,
}

impl CacheStatus {
    /// `hit` (all reused), `partial`, `miss` or `off`.
    pub fn outcome(&self) -> &'static str {
        match (self.enabled, self.reused, self.encoded) {
            (false, _, _) => "off",
            (true, r, 0) if r > 0 => "hit",
            (true, r, _) if r > 0 => "partial",
            _ => "miss",
        }
    }
}
