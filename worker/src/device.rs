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

/// Whether this build links PyTorch's CUDA backend (libtorch_cuda.so): false where
/// the libtorch it was built against is CPU-only. See link/src/lib.rs.
pub const CUDA_BACKEND_LINKED: bool = matches!(env!("STYLEFARM_LIBTORCH_CUDA").as_bytes(), b"1");

/// CUDA was asked for and libtorch sees none.
#[derive(Debug, thiserror::Error)]
#[error(
    "--device cuda: no CUDA device is available to libtorch ({})",
    why_no_cuda()
)]
pub struct NoCuda;

fn why_no_cuda() -> &'static str {
    if !CUDA_BACKEND_LINKED {
        "this build's libtorch is CPU-only; build against PyPI's torch with its CUDA libraries"
    } else if !cuda_backend_loaded() {
        "libtorch_cuda.so is not loaded in this process"
    } else {
        "the CUDA backend is loaded but sees no GPU: check the NVIDIA driver, and that the \
         GPU is visible to this process (CUDA_VISIBLE_DEVICES, the container's GPU resources)"
    }
}

/// Whether libtorch_cuda.so is mapped into this process (Linux; false elsewhere).
pub fn cuda_backend_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("/libtorch_cuda.so"))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A build against a libtorch with CUDA must carry the backend into the process, or
    /// a GPU node silently renders on its CPU.
    #[test]
    fn the_cuda_backend_is_loaded_wherever_it_was_linked() {
        assert_eq!(cuda_backend_loaded(), CUDA_BACKEND_LINKED);
    }

    #[test]
    fn no_cuda_says_why() {
        let msg = NoCuda.to_string();
        assert!(msg.starts_with("--device cuda: no CUDA device"), "{msg}");
        if CUDA_BACKEND_LINKED && !tch::Cuda::is_available() {
            assert!(msg.contains("sees no GPU"), "{msg}");
        }
    }
}
