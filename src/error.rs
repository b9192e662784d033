//! Typed errors inside the engine; the CLI turns them into `anyhow` at the edge.

use crate::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape error: {0}")]
    Shape(String),
    #[error("expected dtype {expected:?}, found {found:?}")]
    DType { expected: DType, found: DType },
    #[error("weights: tensor `{name}` expected shape {expected:?}, found {found:?}")]
    WeightShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("weights: tensor `{0}` is missing")]
    WeightMissing(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("image `{path}`: {reason}")]
    Image { path: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    /// Work this device cannot do by its nature (cuBLAS or timing on the simulator): reported
    /// as skipped, not as a failure.
    #[error("skipped: {0}")]
    Skipped(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("dataset: {0}")]
    Dataset(String),
    #[error("io error on `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;
