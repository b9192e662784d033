//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labelfree::models::clip::weights::load_safetensors;
use labelfree::Tensor;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_io(path: &Path) -> BTreeMap<String, Tensor> {
    load_safetensors(path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display())).0
}

/// max |a - b| / max |b|: the relative error of a whole tensor, robust to entries near zero.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Per-row ||a - b|| / ||b||, worst row.
pub fn row_rel_err(a: &[f32], b: &[f32], cols: usize) -> f32 {
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let d: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt();
            let n: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt().max(1e-12);
            d / n
        })
        .fold(0.0, f32::max)
}

pub fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.shape(), b.shape(), "{name}: shapes differ");
    let e = rel_err(a.f32s().unwrap(), b.f32s().unwrap());
    eprintln!("{name}: rel err {e:.3e}");
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.1e}");
}
