//! Devices: where inference is asked to run, where it ends up, and the settings that depend on it.

use std::str::FromStr;
use std::time::Duration;

/// Where inference runs, as asked on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
    /// CUDA device 0 when its provider registers, else CPU with a warning.
    Auto,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda, cuda:N or auto")),
        }
    }
}

/// Where inference actually runs once sessions are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Batching defaults per device: a GPU wants large batches and few workers, a CPU a worker per core and batches
/// small enough to keep latency low (measured: 64 gives no more throughput than 32 on CPU, at twice the latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDefaults {
    pub workers: usize,
    pub max_batch: usize,
    pub max_queue_delay: Duration,
}

impl Placement {
    pub fn defaults(self) -> DeviceDefaults {
        match self {
            Placement::Cpu => DeviceDefaults {
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                max_batch: 32,
                max_queue_delay: Duration::from_millis(5),
            },
            Placement::Cuda(_) => DeviceDefaults {
                workers: 2,
                max_batch: 1024,
                max_queue_delay: Duration::from_millis(2),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("CUDA".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!("auto".parse(), Ok(Device::Auto));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!(
            "tpu"
                .parse::<Device>()
                .unwrap_err()
                .contains("cpu, cuda, cuda:N or auto")
        );
    }
}
