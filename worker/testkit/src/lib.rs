//! Shared by the worker's integration tests and benches: the real partial VGG19 and
//! seeded synthetic weights, small fixture images and parameters, the virtualenv's
//! Python and the PyTorch reference ([`reference`]).

pub mod camera;
pub mod checkpoint;
pub mod reference;
pub mod sheet;

use std::path::{Path, PathBuf};

use image::Rgb32FImage;
use stylefarm_core::params::layers;
use stylefarm_core::RenderParams;
use stylefarm_weights::{synthetic, Architecture, Convention, WeightsInfo};
use stylefarm_worker::engine::{image_io, RenderInputs};

pub use stylefarm_testkit::fixtures::{fixture, root};

/// The partial real VGG19 (Caffe convention, conv1_1..conv3_4).
pub fn real_weights() -> WeightsInfo {
    WeightsInfo::inspect(&stylefarm_testkit::fixtures::real_weights())
        .expect("real weights readable")
}

/// Seeded random weights written under `dir`.
pub fn random_weights(
    dir: &Path,
    arch: Architecture,
    last_conv: &str,
    convention: Option<Convention>,
    seed: u64,
) -> WeightsInfo {
    let p = dir.join(format!("{}-{last_conv}-{seed}.safetensors", arch.name()));
    synthetic::write_random_vgg(&p, arch, last_conv, convention, seed).expect("write weights");
    WeightsInfo::inspect(&p).expect("inspect weights")
}

/// The virtualenv's Python (with torch).
pub fn python() -> PathBuf {
    let p = root().join(".venv").join("bin").join("python");
    assert!(p.exists(), "{} is missing: run `make venv`", p.display());
    p
}

/// A fixture resized to exactly `w` x `h`.
pub fn image(rel: &str, w: u32, h: u32) -> Rgb32FImage {
    let img = image_io::load(&fixture(rel), image_io::DEFAULT_MAX_PIXELS).expect("fixture decodes");
    image_io::resize(&img, w, h)
}

/// Small inputs: tubingen content, starry night style, at 64x48.
pub fn small_inputs() -> RenderInputs {
    RenderInputs {
        content: image("content/tubingen.jpg", 64, 48),
        styles: vec![image("styles/starry_night.jpg", 64, 48)],
        style_weights: vec![],
        init_image: None,
        previous: None,
    }
}

/// Parameters for the partial real weights at 64 px.
pub fn small_params(iterations: u32) -> RenderParams {
    RenderParams {
        size: 64,
        iterations,
        content_layers: layers(&["relu3_2"]),
        style_layers: layers(&["relu1_1", "relu2_1", "relu3_1"]),
        ..RenderParams::default()
    }
}

pub use checkpoint::tampered;
pub use stylefarm_testkit::farm::wire_spec;
