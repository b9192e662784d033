//! The report every run ends with: printed for people, written as JSON for programs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::methods::cache::CacheStatus;
use crate::methods::encode::Skipped;

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub command: String,
    pub arch: String,
    pub weights: Option<String>,
    pub random_weights: bool,
    pub activation: String,
    pub device: String,
    pub threads: usize,
    pub transform: String,
    pub images_total: usize,
    pub images_ok: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    /// Images encoded (not taken from the cache) per second.
    pub images_per_s: f64,
    /// Images decoded and transformed per second of the loader's own time.
    pub decoded_images_per_s: f64,
    /// The embedding cache, when the command uses one.
    pub cache: Option<CacheStatus>,
    pub outputs: Vec<String>,
    /// Command-specific results (e.g. classes).
    pub extra: serde_json::Value,
}

impl RunReport {
    /// The human-readable summary (stderr).
    pub fn print(&self) {
        eprintln!("── {} report ──", self.command);
        eprintln!("model     {} ({})", self.arch, self.weights.as_deref().unwrap_or("random weights"));
        eprintln!("device    {} · {} threads · {}", self.device, self.threads, self.transform);
        match &self.cache {
            Some(c) if c.reused > 0 => eprintln!(
                "images    {} of {}: {} embeddings from the cache, {} encoded, in {:.1} s",
                self.images_ok, self.images_total, c.reused, c.encoded, self.seconds
            ),
            _ => eprintln!(
                "images    {} of {} encoded in {:.1} s ({:.2} images/s)",
                self.images_ok, self.images_total, self.seconds, self.images_per_s
            ),
        }
        if self.decoded_images_per_s > 0.0 {
            eprintln!("loader    {:.1} images/s decoded and transformed", self.decoded_images_per_s);
        }
        if let Some(c) = &self.cache {
            eprintln!(
                "cache     {} ({} reused, {} encoded){}",
                c.outcome(),
                c.reused,
                c.encoded,
                c.file.as_deref().map(|f| format!(" {f}")).unwrap_or_default()
            );
        }
        if !self.skipped.is_empty() {
            eprintln!("skipped   {}:", self.skipped.len());
            for s in &self.skipped {
                eprintln!("  {}: {}", s.path, s.reason);
            }
        }
        for o in &self.outputs {
            eprintln!("wrote     {o}");
        }
        if self.random_weights {
            eprintln!("WARNING   random weights: these numbers mean nothing (pass --weights for a real model)");
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Weights(e.to_string()))?;
        crate::methods::write_atomic(path, text.as_bytes())
    }
}

/// Where a run's JSON report goes: `json` when given, else `<out>.report.json`.
pub fn json_path(json: &Option<PathBuf>, out: &Path) -> PathBuf {
    json.clone().unwrap_or_else(|| {
        let mut s = out.as_os_str().to_owned();
        s.push(".report.json");
        PathBuf::from(s)
    })
}
