//! VGG weights files: what a safetensors file holds and how its input must be prepared.
//!
//! - [`vgg`]: torchvision's VGG16/VGG19 `features` layout and layer names.
//! - [`WeightsInfo::inspect`] reads a file's header (never its name) and returns its
//!   architecture, preprocessing [`Convention`], available layers and sha256, which
//!   identifies the weights in job specs and sidecars.
//!
//! - [`torchvision`] and [`torch_file`]: torchvision's published VGG files, read without
//!   Python (legacy and zip `torch.save` formats) and converted to safetensors.
//!
//! Nothing here links libtorch: the coordinator and CLI use it to check jobs early.

pub mod memory;
pub mod synthetic;
pub mod torch_file;
pub mod torchvision;
pub mod vgg;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use vgg::{standard_layers, Architecture, Layer, LayerKind};

use stylefarm_core::params::layers as named_layers;
use stylefarm_core::RenderParams;

/// Metadata key naming the preprocessing convention.
pub const META_PREPROCESSING: &str = "preprocessing";
/// Metadata key naming the architecture.
pub const META_ARCHITECTURE: &str = "architecture";

/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// How images must be prepared for a set of weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// RGB in [0, 1], normalised by ImageNet mean and std (torchvision's own files).
    Torchvision,
    /// BGR in [0, 255] minus the mean (103.939, 116.779, 123.68), no std (Caffe VGG).
    Caffe,
}

impl Convention {
    /// The name used in metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Caffe => "caffe",
        }
    }
}

/// Errors reading a weights file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read weights file {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("weights file {path} is not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file's metadata names something this version does not know.
    #[error("weights file {path}: metadata {key}={value:?} is not supported ({allowed})")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A tensor the architecture needs is not in the file (it changed after it was
    /// inspected, or it was written incomplete).
    #[error("weights file {path} has no tensor {key}: the file changed since it was inspected or is incomplete; convert or fetch it again (`stylefarm weights fetch`)")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name, e.g. `features.5.weight`.
        key: String,
    },
    /// A job asks for a layer the file cannot compute.
    #[error("layer {layer} is not available in {path} ({arch}); it has: {available}")]
    MissingLayer {
        /// The layer asked for.
        layer: String,
        /// The file.
        path: PathBuf,
        /// Its architecture.
        arch: &'static str,
        /// The layers it has, comma-separated.
        available: String,
    },
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<i64>,
}

/// What a weights file holds.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsInfo {
    /// The file.
    pub path: PathBuf,
    /// Hex sha256 of the whole file: the weights' identity.
    pub sha256: String,
    /// VGG16 or VGG19.
    pub architecture: Architecture,
    /// How inputs are prepared.
    pub convention: Convention,
    /// The layers the file can compute, in network order.
    pub layers: Vec<String>,
    /// The file's own metadata.
    pub metadata: BTreeMap<String, String>,
}

impl WeightsInfo {
    /// Reads a file's header and hashes it.
    pub fn inspect(path: &Path) -> Result<Self, WeightsError> {
        let io = |cause| WeightsError::Io {
            path: path.to_owned(),
            cause,
        };
        let format = |reason: String| WeightsError::Format {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let mut hasher = Sha256::new();

        let mut len_bytes = [0u8; 8];
        reader
            .read_exact(&mut len_bytes)
            .map_err(|_| format(format!("{file_len} bytes is too short for a header")))?;
        hasher.update(len_bytes);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len + 8 > file_len {
            return Err(format(format!(
                "header length {header_len} does not fit a {file_len}-byte file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        reader.read_exact(&mut header).map_err(io)?;
        hasher.update(&header);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha256 = hex::encode(hasher.finalize());

        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| format(format!("header is not JSON: {e}")))?;
        let mut metadata = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (k, v) in raw {
            if k == "__metadata__" {
                metadata = serde_json::from_value(v)
                    .map_err(|e| format(format!("__metadata__ is not a string map: {e}")))?;
            } else {
                let entry: TensorEntry =
                    serde_json::from_value(v).map_err(|e| format(format!("tensor {k}: {e}")))?;
                tensors.insert(k, entry);
            }
        }
        Self::from_parts(path, sha256, metadata, &tensors)
    }

    fn from_parts(
        path: &Path,
        sha256: String,
        metadata: BTreeMap<String, String>,
        tensors: &BTreeMap<String, TensorEntry>,
    ) -> Result<Self, WeightsError> {
        let convention = match metadata.get(META_PREPROCESSING).map(String::as_str) {
            None => Convention::Torchvision,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "torchvision" | "pytorch" => Convention::Torchvision,
                "caffe" => Convention::Caffe,
                _ => {
                    return Err(WeightsError::Metadata {
                        path: path.to_owned(),
                        key: META_PREPROCESSING,
                        value: v.to_owned(),
                        allowed: "caffe or torchvision",
                    })
                }
            },
        };
        let architecture = match metadata.get(META_ARCHITECTURE) {
            Some(v) => Architecture::parse(v).ok_or_else(|| WeightsError::Metadata {
                path: path.to_owned(),
                key: META_ARCHITECTURE,
                value: v.clone(),
                allowed: "vgg16 or vgg19",
            })?,
            None => Architecture::infer_from_keys(tensors.keys().map(String::as_str)).ok_or_else(
                || WeightsError::Format {
                    path: path.to_owned(),
                    reason: "no features.N.weight tensors: not a VGG features file".into(),
                },
            )?,
        };

        // The usable prefix: every convolution up to the first one missing or misshapen.
        let mut layers = Vec::new();
        for layer in architecture.layers() {
            if let LayerKind::Conv {
                in_channels,
                out_channels,
            } = layer.kind
            {
                let w = tensors.get(&format!("features.{}.weight", layer.index));
                let b = tensors.get(&format!("features.{}.bias", layer.index));
                let (Some(w), Some(b)) = (w, b) else { break };
                let shape_ok = w.shape == [out_channels, in_channels, 3, 3]
                    && b.shape == [out_channels]
                    && w.dtype == "F32"
                    && b.dtype == "F32";
                if !shape_ok {
                    return Err(WeightsError::Format {
                        path: path.to_owned(),
                        reason: format!(
                            "{} (features.{}) has shape {:?}/{:?} {}, expected [{out_channels}, {in_channels}, 3, 3]/[{out_channels}] F32",
                            layer.name, layer.index, w.shape, b.shape, w.dtype
                        ),
                    });
                }
            }
            layers.push(layer.name);
        }
        // A trailing pool without a convolution after it is still computable.
        if layers.is_empty() {
            return Err(WeightsError::Format {
                path: path.to_owned(),
                reason: "conv1_1 (features.0) is missing".into(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            sha256,
            architecture,
            convention,
            layers,
            metadata,
        })
    }

    /// `params` with an empty layer list (the default) replaced by the standard layers
    /// this file holds ([`standard_layers`]).
    pub fn resolve_layers(&self, params: &RenderParams) -> RenderParams {
        with_standard_layers(params, |n| self.layers.iter().any(|l| l == n))
    }

    /// The layer called `name`, or an error naming the layers this file has.
    pub fn layer(&self, name: &str) -> Result<Layer, WeightsError> {
        self.layers
            .iter()
            .any(|l| l == name)
            .then(|| self.architecture.layer(name))
            .flatten()
            .ok_or_else(|| WeightsError::MissingLayer {
                layer: name.to_owned(),
                path: self.path.clone(),
                arch: self.architecture.name(),
                available: self
                    .layers
                    .iter()
                    .filter(|l| !l.starts_with("pool"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            })
    }
}

/// `params` with each empty layer list replaced by the standard layers `held` allows.
pub fn with_standard_layers(params: &RenderParams, held: impl Fn(&str) -> bool) -> RenderParams {
    let mut p = params.clone();
    if p.content_layers.is_empty() || p.style_layers.is_empty() {
        let (content, style) = standard_layers(held);
        let names = |v: &[String]| named_layers(&v.iter().map(String::as_str).collect::<Vec<_>>());
        if p.content_layers.is_empty() {
            p.content_layers = names(&content);
        }
        if p.style_layers.is_empty() {
            p.style_layers = names(&style);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shape: &[i64]) -> TensorEntry {
        TensorEntry {
            dtype: "F32".into(),
            shape: shape.to_vec(),
        }
    }

    fn first_convs(n: usize) -> BTreeMap<String, TensorEntry> {
        let mut t = BTreeMap::new();
        for l in Architecture::Vgg19.layers() {
            if let LayerKind::Conv {
                in_channels,
                out_channels,
            } = l.kind
            {
                if t.len() / 2 == n {
                    break;
                }
                t.insert(
                    format!("features.{}.weight", l.index),
                    entry(&[out_channels, in_channels, 3, 3]),
                );
                t.insert(format!("features.{}.bias", l.index), entry(&[out_channels]));
            }
        }
        t
    }

    #[test]
    fn convention_from_metadata_defaults_to_torchvision() {
        let t = first_convs(2);
        let p = Path::new("w.safetensors");
        let info = WeightsInfo::from_parts(p, String::new(), BTreeMap::new(), &t).expect("ok");
        assert_eq!(info.convention, Convention::Torchvision);
        let meta = BTreeMap::from([(META_PREPROCESSING.to_owned(), "caffe".to_owned())]);
        let info = WeightsInfo::from_parts(p, String::new(), meta, &t).expect("ok");
        assert_eq!(info.convention, Convention::Caffe);
        let meta = BTreeMap::from([(META_PREPROCESSING.to_owned(), "tf".to_owned())]);
        let err = WeightsInfo::from_parts(p, String::new(), meta, &t).expect_err("tf");
        assert!(err.to_string().contains("caffe or torchvision"), "{err}");
    }

    #[test]
    fn missing_layer_names_available_ones() {
        let t = first_convs(8);
        let p = Path::new("w.safetensors");
        let info = WeightsInfo::from_parts(p, String::new(), BTreeMap::new(), &t).expect("ok");
        assert!(info.layer("relu3_1").is_ok());
        let err = info.layer("relu4_1").expect_err("absent").to_string();
        assert!(err.contains("relu4_1"), "{err}");
        assert!(err.contains("relu3_4") && err.contains("conv1_1"), "{err}");
    }

    #[test]
    fn wrong_shapes_are_reported() {
        let mut t = first_convs(2);
        t.insert("features.2.weight".into(), entry(&[64, 3, 3, 3]));
        let err = WeightsInfo::from_parts(Path::new("w"), String::new(), BTreeMap::new(), &t)
            .expect_err("shape");
        assert!(err.to_string().contains("conv1_2"), "{err}");
    }
}
