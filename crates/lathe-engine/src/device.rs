//! Where the engine computes: the CPU (every build) or one CUDA GPU (a build
//! with the `cuda` feature). Everything else takes the `candle_core::Device`
//! this opens: the model's weights, adapters and activations live there, and
//! the fused CPU kernels (`fused`, `frozen`) step aside for candle's composed
//! ops on any other device.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::{EngineError, Result};

/// Whether this build has candle's CUDA backend.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// A device as an operator names it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A CUDA GPU by its ordinal.
    Cuda(usize),
}

impl DeviceChoice {
    /// Opens the device: for a GPU, its CUDA context and streams.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(_) if !CUDA_BUILT => Err(EngineError::Data(NOT_BUILT.into())),
            DeviceChoice::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|e| EngineError::Load(format!("opening CUDA device {ordinal}: {e}")))
            }
        }
    }
}

const NOT_BUILT: &str = "this lathe was built without CUDA support (cargo feature `cuda`); the device can only be cpu";

impl FromStr for DeviceChoice {
    type Err = String;

    /// Refuses `cuda` in a build without CUDA, so the mistake shows when the
    /// setting is read rather than at the first job.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let choice = match s {
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => DeviceChoice::Cuda(ordinal),
                _ => return Err(format!("expected cpu, cuda or cuda:N (a GPU's ordinal), not {s:?}")),
            },
        };
        if matches!(choice, DeviceChoice::Cuda(_)) && !CUDA_BUILT {
            return Err(NOT_BUILT.into());
        }
        Ok(choice)
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::Cpu.to_string(), "cpu");
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        for bad in ["", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cuda1"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad:?}: {err}");
        }
        assert!(matches!(DeviceChoice::Cpu.open(), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_is_refused_without_the_feature() {
        for name in ["cuda", "cuda:0", "cuda:3"] {
            let err = name.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("built without CUDA support"), "{name}: {err}");
        }
        // A choice made in code, not parsed, is refused when opened.
        let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("built without CUDA support"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_parses_with_the_feature() {
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:2".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(2)));
    }
}
