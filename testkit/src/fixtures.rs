//! Where tests find the fixtures and the real weights: `../shared` beside the checkout,
//! or the folder `STYLEFARM_SHARED` names (the Makefile sets it).

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// The shared folder: `STYLEFARM_SHARED`, else `../shared` beside the checkout.
pub fn shared() -> PathBuf {
    std::env::var_os("STYLEFARM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("..").join("shared"))
}

/// A fixture image, e.g. `content/tubingen.jpg`; panics naming the path when missing.
pub fn fixture(rel: &str) -> PathBuf {
    let p = shared().join("fixtures").join(rel);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

/// The real partial VGG19 (Caffe convention, conv1_1..conv3_4).
pub fn real_weights() -> PathBuf {
    shared()
        .join("weights")
        .join("vgg19-caffe-conv1_1-conv3_4.safetensors")
}
