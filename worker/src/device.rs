//! Choosing where libtorch runs, and describing it to the coordinator.

use stylefarm_weights::memory::Backend;
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

/// The libtorch folder this build links against, and its PyTorch version (from the
/// `version.py` beside it in PyPI's torch), when that file is there.
pub fn libtorch() -> (&'static str, Option<String>) {
    let dir = env!("STYLEFARM_LIBTORCH_LIB");
    let version = std::fs::read_to_string(std::path::Path::new(dir).join("../version.py"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let v = l.strip_prefix("__version__")?.split(['\'', '"']).nth(1)?;
                Some(v.to_owned())
            })
        });
    (dir, version)
}

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

/// Share of the host's memory the jobs on a CPU worker may take together by default.
pub const CPU_SHARE: f64 = 0.8;
/// Share of a GPU's memory the jobs on a CUDA worker may take together by default.
pub const CUDA_SHARE: f64 = 0.9;

/// The most memory one job may take here, and why: what the worker checks each job's
/// estimate ([`stylefarm_weights::memory`]) against before it decodes an input.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    /// Bytes one job may take: host memory on CPU, device memory with CUDA.
    pub bytes: u64,
    /// Where the tensors live.
    pub backend: Backend,
    /// Where the figure comes from, for messages (`--max-job-memory`, or the share of
    /// the machine's memory).
    pub from: String,
}

impl MemoryBudget {
    /// `given` (`--max-job-memory`), else [`CPU_SHARE`] of the host's memory (its
    /// cgroup limit when lower, as in a container) or [`CUDA_SHARE`] of the GPU's,
    /// divided among the `slots` jobs that run at once. Unlimited only when the memory
    /// cannot be read (said in the log).
    pub fn for_device(device: Device, slots: u32, given: Option<u64>) -> Self {
        let backend = match device {
            Device::Cuda(_) => Backend::Cuda,
            _ => Backend::Cpu,
        };
        if let Some(bytes) = given {
            return Self {
                bytes,
                backend,
                from: "--max-job-memory".into(),
            };
        }
        let (total, share, what) = match device {
            Device::Cuda(_) => (describe(device).2, CUDA_SHARE, "GPU memory"),
            _ => (host_memory().unwrap_or(0), CPU_SHARE, "host memory"),
        };
        if total == 0 {
            tracing::warn!("cannot read this machine's {what}; jobs are not checked against a memory budget (set --max-job-memory)");
            return Self {
                bytes: u64::MAX,
                backend,
                from: format!("unknown {what}"),
            };
        }
        let slots = slots.max(1);
        Self {
            bytes: (total as f64 * share) as u64 / u64::from(slots),
            backend,
            from: format!(
                "{:.0}% of {} of {what}{}; --max-job-memory to change",
                share * 100.0,
                stylefarm_weights::memory::gib(total),
                if slots > 1 {
                    format!(" over {slots} slots")
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// This process's peak resident memory so far (`VmHWM`), where the system reports it.
pub fn peak_rss() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// A `NAME:   1234 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The host's memory: `MemTotal`, or the cgroup's limit when lower.
pub fn host_memory() -> Option<u64> {
    let total = kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")?;
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// Parses a size: bytes, or a number with `K`, `M`, `G`, `T` (powers of 1024, with or
/// without `iB`/`B`), e.g. `6GiB`, `512M`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 6GiB or 512M"))?;
    let bytes = n * scale as f64;
    if !(1.0..=f64::from(u32::MAX) * f64::from(1u32 << 30)).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
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

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("6GiB"), Ok(6 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "six", "6 parsecs", "0", "-1G", "9999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_budget_is_a_share_of_the_host_split_over_slots() {
        let total = host_memory().expect("meminfo");
        let one = MemoryBudget::for_device(Device::Cpu, 1, None);
        let four = MemoryBudget::for_device(Device::Cpu, 4, None);
        assert_eq!(one.bytes, (total as f64 * CPU_SHARE) as u64);
        assert_eq!(four.bytes, one.bytes / 4);
        assert!(four.from.contains("over 4 slots"), "{}", four.from);
        let given = MemoryBudget::for_device(Device::Cpu, 4, Some(1 << 30));
        assert_eq!(
            (given.bytes, given.from.as_str()),
            (1 << 30, "--max-job-memory")
        );
    }

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
