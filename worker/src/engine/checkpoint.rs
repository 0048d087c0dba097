//! Checkpoints as safetensors bytes: the image and optimizer tensors bit for bit, and the
//! scalars (iteration, step sizes, loss curve, fingerprint) as JSON metadata. At a tiled
//! scale the image and the optimizer are the current tile's, and the whole image is
//! stored beside them as `canvas`.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::EngineError;
use super::loss::Losses;
use super::optim::SavedState;

/// Version of the checkpoint layout.
pub const FORMAT: u32 = 1;
const META_KEY: &str = "stylefarm.checkpoint";
const IMAGE: &str = "image";
const CANVAS: &str = "canvas";

/// The scalars of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version.
    pub format: u32,
    /// Iterations done.
    pub iteration: u32,
    /// The scales begun, the one the image is at last (none in a single-scale render's
    /// checkpoints before multi-scale existed).
    #[serde(default)]
    pub runs: Vec<super::ScaleRun>,
    /// Hash of the job's inputs, parameters and weights; a checkpoint resumes only the
    /// job it came from.
    pub fingerprint: String,
    /// Optimizer `lbfgs` or `adam`.
    pub optimizer: String,
    /// Optimizer scalars.
    pub optimizer_state: serde_json::Value,
    /// Losses at each iteration so far.
    pub history: Vec<Losses>,
    /// Optimization seconds spent before this checkpoint.
    pub elapsed_s: f64,
    /// True when the optimizer had converged.
    pub converged: bool,
    /// At a tiled scale: the tile iterations done at it (which tile, and how far in).
    #[serde(default)]
    pub tile_iterations: u32,
}

fn checkpoint_err(reason: impl Into<String>) -> EngineError {
    EngineError::Checkpoint {
        reason: reason.into(),
    }
}

fn to_bytes(t: &Tensor) -> (Vec<usize>, Vec<u8>) {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n = t.numel();
    let mut floats = vec![0f32; n];
    t.copy_data(&mut floats, n);
    let bytes = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    (shape, bytes)
}

/// Serializes the image (and the whole image of a tiled scale), optimizer state and
/// scalars.
pub fn encode(
    image: &Tensor,
    canvas: Option<&Tensor>,
    state: SavedState,
    mut meta: Meta,
) -> Result<Vec<u8>, EngineError> {
    meta.optimizer_state = state.scalars;
    let mut raw: BTreeMap<String, (Vec<usize>, Vec<u8>)> = state
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), to_bytes(t)))
        .collect();
    raw.insert(IMAGE.to_owned(), to_bytes(image));
    if let Some(c) = canvas {
        raw.insert(CANVAS.to_owned(), to_bytes(c));
    }
    let views = raw
        .iter()
        .map(|(k, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| checkpoint_err(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let json = serde_json::to_string(&meta).map_err(|e| checkpoint_err(e.to_string()))?;
    let info = HashMap::from([(META_KEY.to_owned(), json)]);
    safetensors::serialize(views, &Some(info)).map_err(|e| checkpoint_err(e.to_string()))
}

/// What a checkpoint holds: the image, the whole image of a tiled scale, the
/// optimizer's state and the scalars.
pub type Decoded = (Tensor, Option<Tensor>, SavedState, Meta);

/// Reads a checkpoint back onto `device`.
pub fn decode(bytes: &[u8], device: Device) -> Result<Decoded, EngineError> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| checkpoint_err(format!("not a checkpoint: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| checkpoint_err("no stylefarm metadata"))?;
    let meta: Meta =
        serde_json::from_str(json).map_err(|e| checkpoint_err(format!("metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(checkpoint_err(format!(
            "layout version {} is not {FORMAT}",
            meta.format
        )));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| checkpoint_err(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(checkpoint_err(format!("tensor {name} is not F32")));
        }
        let floats: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.insert(
            name,
            Tensor::from_slice(&floats)
                .view(shape.as_slice())
                .to_device(device),
        );
    }
    let image = tensors
        .remove(IMAGE)
        .ok_or_else(|| checkpoint_err("no image tensor"))?;
    let canvas = tensors.remove(CANVAS);
    let state = SavedState {
        tensors,
        scalars: meta.optimizer_state.clone(),
    };
    Ok((image, canvas, state, meta))
}
