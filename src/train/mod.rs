//! Training: the optimiser (Adam, as torch.optim.Adam), the loss step of CCD / CDUL, the
//! training loop and its checkpoints.

pub mod adam;
pub mod checkpoint;
pub mod step;
pub mod trainer;
