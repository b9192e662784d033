//! Pipelines the CLI calls.

pub mod cache;
pub mod ccd;
pub mod cdul;
pub mod encode;
pub mod report;
pub mod tagclip;
pub mod zeroshot;

use std::path::Path;

use crate::error::{Error, Result};

/// Writes a file through a temporary sibling and a rename, so a reader never sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::Io { path: path.display().to_string(), source: e };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("out")));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
