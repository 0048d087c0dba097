//! The frozen VGG feature extractor: torchvision's `features` sequence, loaded by name
//! from safetensors and cut after the deepest layer a job uses.

use std::collections::HashMap;

use stylefarm_core::Pooling;
use stylefarm_weights::{Convention, LayerKind, WeightsError, WeightsInfo};
use tch::{Device, Kind, Tensor};

use super::error::EngineError;

/// ImageNet statistics used by torchvision's files.
const TORCHVISION_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const TORCHVISION_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Caffe's per-channel mean, in BGR order, on 0-255 values.
const CAFFE_MEAN_BGR: [f64; 3] = [103.939, 116.779, 123.68];

enum Op {
    Conv { weight: Tensor, bias: Tensor },
    Relu,
    Pool,
}

/// A VGG `features` prefix with frozen weights.
pub struct Vgg {
    ops: Vec<Op>,
    convention: Convention,
    pooling: Pooling,
    mean: Tensor,
    scale: Tensor,
}

impl Vgg {
    /// Loads `features.0` ..= `features.{last}` from the weights file onto `device`.
    pub fn load(
        info: &WeightsInfo,
        last: usize,
        pooling: Pooling,
        device: Device,
    ) -> Result<Self, EngineError> {
        let mut tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(&info.path)?.into_iter().collect();
        let mut ops = Vec::new();
        for layer in info.architecture.layers().into_iter().take(last + 1) {
            ops.push(match layer.kind {
                LayerKind::Conv { .. } => {
                    let mut take = |suffix: &str| {
                        let key = format!("features.{}.{suffix}", layer.index);
                        tensors
                            .remove(&key)
                            .map(|t| t.to_kind(Kind::Float).to_device(device).detach())
                            .ok_or_else(|| WeightsError::MissingTensor {
                                path: info.path.clone(),
                                key,
                            })
                    };
                    Op::Conv {
                        weight: take("weight")?,
                        bias: take("bias")?,
                    }
                }
                LayerKind::Relu => Op::Relu,
                LayerKind::Pool => Op::Pool,
            });
        }
        let (mean, scale) = match info.convention {
            Convention::Torchvision => (TORCHVISION_MEAN, TORCHVISION_STD.map(|s| 1.0 / s)),
            // Caffe's mean is BGR; the input is reordered to BGR before it is subtracted.
            Convention::Caffe => (CAFFE_MEAN_BGR, [255.0; 3]),
        };
        let channel = |v: [f64; 3]| {
            Tensor::from_slice(&v.map(|x| x as f32))
                .view([1, 3, 1, 1])
                .to_device(device)
        };
        Ok(Self {
            ops,
            convention: info.convention,
            pooling,
            mean: channel(mean),
            scale: channel(scale),
        })
    }

    /// Maps RGB pixels in [0, 1] to the network's input convention (differentiable).
    pub fn preprocess(&self, rgb: &Tensor) -> Tensor {
        match self.convention {
            Convention::Torchvision => (rgb - &self.mean) * &self.scale,
            Convention::Caffe => rgb.flip([1]) * &self.scale - &self.mean,
        }
    }

    /// Runs the network on RGB pixels and returns the activations at `taps` (indices into
    /// `features`), in the order given.
    pub fn forward(&self, rgb: &Tensor, taps: &[usize]) -> Vec<Tensor> {
        let deepest = taps.iter().copied().max().unwrap_or(0);
        let mut found: Vec<Option<Tensor>> = taps.iter().map(|_| None).collect();
        let mut x = self.preprocess(rgb);
        for (i, op) in self.ops.iter().enumerate().take(deepest + 1) {
            x = match op {
                Op::Conv { weight, bias } => {
                    x.conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)
                }
                Op::Relu => x.relu(),
                Op::Pool => match self.pooling {
                    Pooling::Max => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
                    Pooling::Avg => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
                },
            };
            for (slot, &tap) in found.iter_mut().zip(taps) {
                if tap == i {
                    *slot = Some(x.shallow_clone());
                }
            }
        }
        found
            .into_iter()
            .map(|t| t.unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, rgb.device()))))
            .collect()
    }
}
