//! Choosing where libtorch runs, and describing it to the coordinator.

use tch::Device;

/// Where the computation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// CUDA was asked for and libtorch sees none.
#[derive(Debug, thiserror::Error)]
#[error("--device cuda: no CUDA device is available to libtorch")]
pub struct NoCuda;

impl DeviceArg {
    /// The tch device, or an error when CUDA is asked for and absent.
    pub fn resolve(self) -> Result<Device, NoCuda> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Cuda => Err(NoCuda),
        }
    }
}

/// What a worker reports at registration: device name, GPU model and memory.
pub fn describe(device: Device) -> (String, String, u64) {
    match device {
        Device::Cuda(i) => {
            let (model, memory) = gpu_model(i).unwrap_or_else(|| ("unknown CUDA device".into(), 0));
            (format!("cuda:{i}"), model, memory)
        }
        _ => ("cpu".into(), String::new(), 0),
    }
}

/// The GPU's name and memory from `nvidia-smi`, when it is installed.
fn gpu_model(index: usize) -> Option<(String, u64)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (name, mib) = text.trim().split_once(',')?;
    Some((
        name.trim().to_owned(),
        mib.trim().parse::<u64>().ok()? << 20,
    ))
}
