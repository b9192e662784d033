//! Where tensors live and ops run: the CPU, a CUDA GPU through the driver, or the PTX simulator
//! (`--device sim`: the same kernels, run on the CPU by `sim`, behind the same `cuda::Gpu`).

pub mod cuda;
pub mod sim;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// The PTX simulator: every CUDA path, on the CPU, sanitized.
    Sim,
}

impl Device {
    /// True for the devices that run the CUDA kernels (a GPU or the simulator).
    pub fn runs_kernels(self) -> bool {
        !matches!(self, Device::Cpu)
    }
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "sim" => Ok(Device::Sim),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::Device(format!("unknown device `{s}` (use cpu, cuda, cuda:N or sim)"))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Sim => write!(f, "sim"),
        }
    }
}

/// Sets the size of rayon's global pool (the CPU path's only source of parallelism).
pub fn set_cpu_threads(n: usize) {
    if n > 0 {
        // A second call (tests, library users) keeps the first pool: not an error.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}
