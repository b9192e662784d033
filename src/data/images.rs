//! Finding the images a command should read.

use std::path::{Path, PathBuf};

/// Extensions read as images (the decoders handle JPEG and PNG; others are reported per file).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "jpe", "jfif"];

pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expands directories (recursively, image extensions only) and keeps files as given; the
/// result is in sorted path order. A path that does not exist is kept: reading it fails later
/// and is reported with the other bad images.
pub fn list_images(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if has_image_extension(&p) {
            out.push(p);
        }
    }
}
