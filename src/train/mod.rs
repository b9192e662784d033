//! Training: the optimiser (Adam, as torch.optim.Adam), the loss step of CCD / CDUL, the
//! training loop, its checkpoints, the per-epoch evaluation (mAP), soft-label files and the
//! run the CLI calls.

pub mod adam;
pub mod checkpoint;
pub mod evaluate;
pub mod labels;
pub mod run;
pub mod step;
pub mod trainer;
