//! One file per op: its CPU reference (f32, rayon) and, beside it, its CUDA launcher.
