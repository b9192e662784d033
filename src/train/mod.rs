//! Training: the optimiser (Adam, as torch.optim.Adam) and the loss step of CCD / CDUL.

pub mod adam;
pub mod step;
