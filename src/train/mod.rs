//! Training: the optimiser (Adam, as torch.optim.Adam).

pub mod adam;
