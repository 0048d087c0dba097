//! Seeded random VGG weights in torchvision's layout, for tests and benchmarks of the
//! full VGG16/VGG19 paths where real weights cannot be downloaded.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use stylefarm_core::rng::SplitMix64;

use crate::{Architecture, Convention, META_ARCHITECTURE, META_PREPROCESSING};

/// Writes Kaiming-uniform random convolutions `conv1_1 ..= last_conv` of `arch` to
/// `path`. `convention: None` writes no preprocessing metadata (torchvision by default).
pub fn write_random_vgg(
    path: &Path,
    arch: Architecture,
    last_conv: &str,
    convention: Option<Convention>,
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = SplitMix64::new(seed);
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (layer, o, i) in arch.convs() {
        let fan_in = (i * 9) as f32;
        let bound = (6.0 / fan_in).sqrt();
        let weight: Vec<u8> = (0..o * i * 9)
            .flat_map(|_| ((rng.next_f32() * 2.0 - 1.0) * bound).to_le_bytes())
            .collect();
        let bias: Vec<u8> = (0..o)
            .flat_map(|_| ((rng.next_f32() * 2.0 - 1.0) * 0.01).to_le_bytes())
            .collect();
        raw.push((
            format!("features.{}.weight", layer.index),
            vec![o, i, 3, 3],
            weight,
        ));
        raw.push((format!("features.{}.bias", layer.index), vec![o], bias));
        if layer.name == last_conv {
            break;
        }
    }
    let views = raw
        .iter()
        .map(|(k, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut meta = HashMap::from([(META_ARCHITECTURE.to_owned(), arch.name().to_owned())]);
    if let Some(c) = convention {
        meta.insert(META_PREPROCESSING.to_owned(), c.name().to_owned());
    }
    let bytes = safetensors::serialize(views, &Some(meta))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(path, bytes)
}
