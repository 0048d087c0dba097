//! Typed errors of the engine. Every message names the input or parameter at fault.

use stylefarm_core::InvalidField;
use stylefarm_weights::WeightsError;

/// A problem with one input image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {name}: {cause}")]
    Unreadable {
        /// Which image.
        name: String,
        /// The cause (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// Zero bytes.
    #[error("image {name} is empty (0 bytes)")]
    Empty {
        /// Which image.
        name: String,
    },
    /// Not a format the engine reads.
    #[error("{name} is not an image in a supported format (JPEG, PNG, WebP, TIFF)")]
    UnknownFormat {
        /// Which image.
        name: String,
    },
    /// Recognised but undecodable: corrupt or truncated.
    #[error("image {name} is corrupt or truncated: {reason}")]
    Corrupt {
        /// Which image.
        name: String,
        /// The decoder's message.
        reason: String,
    },
    /// Over the pixel budget (refused before decoding).
    #[error("image {name} is {width}x{height}, over the budget of {max_pixels} pixels")]
    TooLarge {
        /// Which image.
        name: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The budget.
        max_pixels: u64,
    },
    /// Encoding the output failed.
    #[error("cannot encode the output PNG: {reason}")]
    Encode {
        /// The encoder's message.
        reason: String,
    },
}

/// Any failure of a render.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A parameter is out of range.
    #[error("invalid parameter {0}")]
    Param(InvalidField),
    /// The weights file cannot serve this job.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// An input image is bad.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An image is too small for the deepest layer used.
    #[error("{what} is {width}x{height} px; layer {layer} comes after {pools} poolings and needs at least {min}x{min}")]
    TooSmall {
        /// Which image (content, style N).
        what: String,
        /// Its width after resizing.
        width: u32,
        /// Its height after resizing.
        height: u32,
        /// The deepest layer used.
        layer: String,
        /// Poolings before it.
        pools: u32,
        /// The smallest side accepted.
        min: u32,
    },
    /// The job's estimated peak memory is over what one job may take here; found from
    /// the images' headers, before anything is decoded.
    #[error("needs about {needs} at its peak, over the {budget} one job may take on this worker ({from}); lower size or style_scale, or use fewer or smaller style images")]
    Memory {
        /// The estimate and its largest parts.
        needs: String,
        /// The budget.
        budget: String,
        /// Where the budget comes from.
        from: String,
    },
    /// A job without a style image, or with mismatched blend weights.
    #[error("invalid styles: {reason}")]
    Styles {
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint that cannot be resumed by this job.
    #[error("cannot resume from checkpoint: {reason}")]
    Checkpoint {
        /// What is wrong.
        reason: String,
    },
    /// libtorch reported an error (out of memory, device failure).
    #[error("libtorch error: {reason}")]
    Torch {
        /// libtorch's message.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "loss diverged to {value} at iteration {iteration}; lower the learning rate or weights"
    )]
    Diverged {
        /// The iteration.
        iteration: u32,
        /// The loss value.
        value: f64,
    },
}

// By hand rather than `#[from]`, which would also make the field a `source()`: the
// message already carries it, and a chain would print it twice.
impl From<InvalidField> for EngineError {
    fn from(e: InvalidField) -> Self {
        Self::Param(e)
    }
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch {
            reason: e.to_string(),
        }
    }
}
