//! VGG layer tables: which `features.N` index each named layer (conv3_1, relu3_1,
//! pool3) has in torchvision's VGG16 and VGG19.

use serde::{Deserialize, Serialize};

/// A VGG variant with torchvision's `features` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// 13 convolutions in 5 blocks (2, 2, 3, 3, 3).
    Vgg16,
    /// 16 convolutions in 5 blocks (2, 2, 4, 4, 4).
    Vgg19,
}

impl Architecture {
    /// Convolutions per block.
    fn blocks(self) -> [usize; 5] {
        match self {
            Self::Vgg16 => [2, 2, 3, 3, 3],
            Self::Vgg19 => [2, 2, 4, 4, 4],
        }
    }

    /// The name used in metadata and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vgg16 => "vgg16",
            Self::Vgg19 => "vgg19",
        }
    }

    /// Parses `vgg16` / `vgg19` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vgg16" => Some(Self::Vgg16),
            "vgg19" => Some(Self::Vgg19),
            _ => None,
        }
    }

    /// Every layer of `features` in order, with torchvision's indices.
    pub fn layers(self) -> Vec<Layer> {
        let mut out = Vec::new();
        let mut index = 0;
        let mut in_channels = 3;
        for (b, &convs) in self.blocks().iter().enumerate() {
            let out_channels = [64, 128, 256, 512, 512][b];
            for c in 0..convs {
                let name = format!("{}_{}", b + 1, c + 1);
                out.push(Layer {
                    name: format!("conv{name}"),
                    index,
                    kind: LayerKind::Conv {
                        in_channels,
                        out_channels,
                    },
                });
                out.push(Layer {
                    name: format!("relu{name}"),
                    index: index + 1,
                    kind: LayerKind::Relu,
                });
                index += 2;
                in_channels = out_channels;
            }
            out.push(Layer {
                name: format!("pool{}", b + 1),
                index,
                kind: LayerKind::Pool,
            });
            index += 1;
        }
        out
    }

    /// The convolutions in order, each with its (out, in) channel counts.
    pub fn convs(self) -> impl Iterator<Item = (Layer, usize, usize)> {
        self.layers().into_iter().filter_map(|l| match l.kind {
            LayerKind::Conv {
                in_channels,
                out_channels,
            } => Some((l, out_channels as usize, in_channels as usize)),
            _ => None,
        })
    }

    /// The layer called `name`, if this architecture has one.
    pub fn layer(self, name: &str) -> Option<Layer> {
        self.layers().into_iter().find(|l| l.name == name)
    }

    /// Tells VGG16 from VGG19 by which `features.N.weight` keys a file holds: index 16
    /// is a convolution in VGG19 and a pooling layer in VGG16.
    pub fn infer_from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut any = false;
        for k in keys {
            if let Some(i) = feature_index(k) {
                any = true;
                if i == 16 || i == 25 || i == 34 {
                    return Some(Self::Vgg19);
                }
                if i == 17 || i == 24 {
                    return Some(Self::Vgg16);
                }
            }
        }
        // Files cut before conv3_4 cannot be told apart; their layers coincide.
        any.then_some(Self::Vgg19)
    }
}

/// What a layer of `features` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// 3x3 convolution, padding 1.
    Conv {
        /// Input channels.
        in_channels: i64,
        /// Output channels.
        out_channels: i64,
    },
    /// ReLU after a convolution.
    Relu,
    /// 2x2 pooling with stride 2.
    Pool,
}

/// One named layer of `features`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `conv3_1`, `relu3_1`, `pool3`, ...
    pub name: String,
    /// Position in torchvision's `features` sequence.
    pub index: usize,
    /// Convolution, ReLU or pooling.
    pub kind: LayerKind,
}

/// `features.12.weight` -> 12.
pub fn feature_index(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("features.")?;
    let (idx, tail) = rest.split_once('.')?;
    matches!(tail, "weight" | "bias")
        .then(|| idx.parse().ok())
        .flatten()
}

/// The layers Gatys et al. (2015) use, as far as `held` reaches: style `relu1_1` to
/// `relu5_1` (each block's first ReLU that is held) and content `relu4_2`, or the second
/// ReLU of the deepest block below it that is held. Full VGG16 and VGG19 get the paper's
/// layers; a file that stops at `conv3_4` gets `relu1_1,relu2_1,relu3_1` and `relu3_2`.
pub fn standard_layers(held: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let style = (1..=5)
        .map(|b| format!("relu{b}_1"))
        .filter(|l| held(l))
        .collect();
    let content = (1..=4)
        .rev()
        .map(|b| format!("relu{b}_2"))
        .find(|l| held(l))
        .into_iter()
        .collect();
    (content, style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_indices() {
        let v19 = Architecture::Vgg19;
        assert_eq!(v19.layer("conv1_1").map(|l| l.index), Some(0));
        assert_eq!(v19.layer("relu3_2").map(|l| l.index), Some(13));
        assert_eq!(v19.layer("conv3_4").map(|l| l.index), Some(16));
        assert_eq!(v19.layer("relu5_1").map(|l| l.index), Some(29));
        assert_eq!(v19.layers().len(), 37);
        let v16 = Architecture::Vgg16;
        assert_eq!(v16.layer("conv4_1").map(|l| l.index), Some(17));
        assert_eq!(v16.layer("relu5_3").map(|l| l.index), Some(29));
        assert_eq!(v16.layers().len(), 31);
        assert!(v16.layer("conv3_4").is_none());
    }

    #[test]
    fn infers_architecture() {
        assert_eq!(
            Architecture::infer_from_keys(["features.16.weight"]),
            Some(Architecture::Vgg19)
        );
        assert_eq!(
            Architecture::infer_from_keys(["features.0.weight", "features.17.bias"]),
            Some(Architecture::Vgg16)
        );
        assert_eq!(Architecture::infer_from_keys(["classifier.0.weight"]), None);
    }

    #[test]
    fn standard_layers_follow_what_is_held() {
        let full = |arch: Architecture| standard_layers(|n| arch.layer(n).is_some());
        for arch in [Architecture::Vgg16, Architecture::Vgg19] {
            let (content, style) = full(arch);
            assert_eq!(content, ["relu4_2"]);
            assert_eq!(
                style,
                ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
            );
        }
        let partial = standard_layers(|n| {
            Architecture::Vgg19
                .layers()
                .iter()
                .take_while(|l| l.name != "pool3")
                .any(|l| l.name == n)
        });
        assert_eq!(partial.0, ["relu3_2"]);
        assert_eq!(partial.1, ["relu1_1", "relu2_1", "relu3_1"]);
    }
}
