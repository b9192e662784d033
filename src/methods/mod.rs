//! Pipelines the CLI calls.
