//! torchvision's published VGG files: where they are, how they are checked, and their
//! conversion to the safetensors the engine reads (the `features` convolutions only,
//! with the preprocessing and architecture recorded as metadata).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};

use crate::torch_file::{read_state_dict, RawTensor};
use crate::{Architecture, Convention, META_ARCHITECTURE, META_PREPROCESSING};

/// A published file.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// The network.
    pub architecture: Architecture,
    /// Where torchvision downloads it from.
    pub url: &'static str,
    /// The start of its SHA-256 as torchvision publishes it (in the file's name, which
    /// torchvision's own download checks). A copy from anywhere else (`--from`, a
    /// mirror's `--url`) must match this, whatever its own name says.
    pub sha256_prefix: &'static str,
}

impl Published {
    /// torchvision's ImageNet weights (`VGG16_Weights.IMAGENET1K_V1`,
    /// `VGG19_Weights.IMAGENET1K_V1`).
    pub fn of(architecture: Architecture) -> Self {
        let (url, sha256_prefix) = match architecture {
            Architecture::Vgg16 => (
                "https://download.pytorch.org/models/vgg16-397923af.pth",
                "397923af",
            ),
            Architecture::Vgg19 => (
                "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                "dcbb9e9d",
            ),
        };
        Self {
            architecture,
            url,
            sha256_prefix,
        }
    }
}

/// Why a checkpoint could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Not a readable checkpoint.
    #[error(transparent)]
    Read(#[from] crate::torch_file::TorchFileError),
    /// A tensor is missing or has the wrong shape.
    #[error("not torchvision's {arch}: {reason}")]
    Layout {
        /// The architecture expected.
        arch: &'static str,
        /// What does not fit.
        reason: String,
    },
    /// Serialization failed.
    #[error("writing safetensors: {0}")]
    Write(String),
}

/// Converts a torchvision VGG checkpoint to safetensors: every `features` convolution,
/// checked against the architecture's shapes, with metadata naming the architecture,
/// the preprocessing (torchvision) and `origin`.
pub fn convert(
    checkpoint: &[u8],
    architecture: Architecture,
    origin: &str,
) -> Result<Vec<u8>, ConvertError> {
    let state = read_state_dict(checkpoint)?;
    let arch = architecture.name();
    let mut kept: BTreeMap<String, &RawTensor> = BTreeMap::new();
    for (layer, o, i) in architecture.convs() {
        for (suffix, shape) in [("weight", vec![o, i, 3, 3]), ("bias", vec![o])] {
            let key = format!("features.{}.{suffix}", layer.index);
            let t = state.get(&key).ok_or_else(|| ConvertError::Layout {
                arch,
                reason: format!("{key} ({}) is missing", layer.name),
            })?;
            if t.shape != shape {
                return Err(ConvertError::Layout {
                    arch,
                    reason: format!(
                        "{key} has shape {:?}, {} needs {shape:?}",
                        t.shape, layer.name
                    ),
                });
            }
            kept.insert(key, t);
        }
    }
    let views = kept
        .iter()
        .map(|(k, t)| {
            TensorView::new(Dtype::F32, t.shape.clone(), &t.data)
                .map(|v| (k.clone(), v))
                .map_err(|e| ConvertError::Write(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = HashMap::from([
        (META_ARCHITECTURE.to_owned(), arch.to_owned()),
        (
            META_PREPROCESSING.to_owned(),
            Convention::Torchvision.name().to_owned(),
        ),
        ("origin".to_owned(), origin.to_owned()),
    ]);
    safetensors::serialize(views, &Some(meta)).map_err(|e| ConvertError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_hashes_are_the_ones_in_torchvisions_file_names() {
        for arch in [Architecture::Vgg16, Architecture::Vgg19] {
            let p = Published::of(arch);
            assert_eq!(p.sha256_prefix.len(), 8);
            assert!(
                p.url
                    .ends_with(&format!("{}-{}.pth", arch.name(), p.sha256_prefix)),
                "{p:?}"
            );
        }
    }

    #[test]
    fn junk_and_truncated_checkpoints_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"not a checkpoint",
            b"PK\x03\x04broken",
            b"\x80\x02\x8a\x0a",
        ] {
            let e = convert(bytes, Architecture::Vgg19, "test").expect_err("refused");
            assert!(
                e.to_string().contains("not a readable PyTorch checkpoint"),
                "{e}"
            );
        }
    }
}
