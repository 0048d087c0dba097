//! Where the CLI tests find the fixtures and the real partial VGG19 weights.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared` (or `STYLEFARM_SHARED`).
pub fn shared() -> PathBuf {
    std::env::var_os("STYLEFARM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// The real VGG19 weights for conv1_1..conv3_4.
pub fn weights() -> PathBuf {
    shared().join("weights/vgg19-caffe-conv1_1-conv3_4.safetensors")
}
