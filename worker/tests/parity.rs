//! Parity with a plain PyTorch implementation (tests/reference/nst_reference.py): for the
//! same weights, images and point, every loss and the gradient agree to 1e-4, and ten
//! L-BFGS iterations end at torch.optim.LBFGS's loss to 1e-3.

use stylefarm_worker_testkit as common;

use std::collections::HashMap;

use stylefarm_core::params::WeightedLayer;
use stylefarm_core::{InitKind, Pooling, RenderParams};
use stylefarm_weights::{Architecture, Convention, WeightsInfo};
use stylefarm_worker::engine::{Render, RenderInputs};
use tch::{Device, Tensor};

fn weighted(spec: &[(&str, f64)]) -> Vec<WeightedLayer> {
    spec.iter()
        .map(|(l, w)| WeightedLayer {
            layer: (*l).to_owned(),
            weight: *w,
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn check_eval(weights: &WeightsInfo, params: RenderParams, inputs: RenderInputs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let render = Render::new(weights, &params, &inputs, Device::Cpu).expect("render");
    let (losses, grad) = render.evaluate_with_grad().expect("evaluate");
    let case = common::reference::write_case(dir.path(), weights, &params, &inputs, &render);
    let out = dir.path().join("result.safetensors");
    common::reference::run(&[
        "eval",
        "--case",
        case.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);

    let st: HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .expect("read result")
        .into_iter()
        .collect();
    let bytes = std::fs::read(&out).expect("result");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let meta = header.metadata().as_ref().expect("metadata");
    let want: HashMap<String, f64> = serde_json::from_str(&meta["losses"]).expect("losses json");
    for (name, got) in [
        ("content", losses.content),
        ("style", losses.style),
        ("tv", losses.tv),
        ("total", losses.total),
    ] {
        let r = rel(got, want[name]);
        assert!(
            r <= 1e-4,
            "{name}: engine {got} vs reference {} (relative error {r:.2e})",
            want[name]
        );
    }
    assert!(
        losses.style > 0.0 && losses.content > 0.0,
        "degenerate case: {losses:?}"
    );
    let ref_grad = &st["grad"];
    let diff = (&grad - ref_grad).norm().double_value(&[]);
    let norm = ref_grad.norm().double_value(&[]);
    assert!(norm > 0.0, "reference gradient is zero");
    assert!(
        diff / norm <= 1e-4,
        "gradient relative error {:.2e}",
        diff / norm
    );
}

#[test]
fn vgg19_torchvision_random_weights_match_pytorch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = common::random_weights(dir.path(), Architecture::Vgg19, "conv5_1", None, 7);
    assert_eq!(weights.convention, Convention::Torchvision);
    let params = RenderParams {
        size: 64,
        init: InitKind::Noise,
        seed: 3,
        content_layers: weighted(&[("relu4_2", 1.0)]),
        style_layers: weighted(&[
            ("relu1_1", 1.0),
            ("relu2_1", 0.5),
            ("relu3_1", 2.0),
            ("relu4_1", 1.0),
            ("relu5_1", 0.25),
        ]),
        style_weight: 1e6,
        tv_weight: 10.0,
        ..RenderParams::default()
    };
    let mut inputs = common::small_inputs();
    inputs
        .styles
        .push(common::image("styles/the_scream.jpg", 64, 48));
    inputs.style_weights = vec![0.7, 0.3];
    check_eval(&weights, params, inputs);
}

#[test]
fn vgg16_random_weights_with_avg_pooling_match_pytorch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = common::random_weights(
        dir.path(),
        Architecture::Vgg16,
        "conv5_3",
        Some(Convention::Torchvision),
        11,
    );
    let params = RenderParams {
        size: 64,
        init: InitKind::Noise,
        pooling: Pooling::Avg,
        content_layers: weighted(&[("conv4_2", 1.0), ("relu5_3", 0.5)]),
        style_layers: weighted(&[("relu1_2", 1.0), ("relu3_3", 1.0), ("relu5_1", 1.0)]),
        style_weight: 1e5,
        ..RenderParams::default()
    };
    check_eval(&weights, params, common::small_inputs());
}

#[test]
fn real_caffe_weights_match_pytorch() {
    let weights = common::real_weights();
    assert_eq!(weights.convention, Convention::Caffe);
    let params = RenderParams {
        init: InitKind::Noise,
        ..common::small_params(10)
    };
    check_eval(&weights, params, common::small_inputs());
}

#[test]
fn ten_lbfgs_iterations_end_at_torch_optim_lbfgs_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = common::real_weights();
    let params = RenderParams {
        init: InitKind::Noise,
        ..common::small_params(10)
    };
    let inputs = common::small_inputs();
    let mut render = Render::new(&weights, &params, &inputs, Device::Cpu).expect("render");
    let case = common::reference::write_case(dir.path(), &weights, &params, &inputs, &render);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    render.run(&cancel, &mut |_| {}).expect("run");
    assert_eq!(render.iteration(), 10);
    let got = render.losses().expect("losses");
    let out = dir.path().join("lbfgs.json");
    common::reference::run(&[
        "lbfgs",
        "--case",
        case.to_str().expect("utf8"),
        "--iterations",
        "10",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    let want: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out).expect("read")).expect("json");
    let ref_history: Vec<f64> = serde_json::from_value(want["history"].clone()).expect("history");
    let engine_history: Vec<f64> = render.history().iter().map(|l| l.total).collect();
    let want_total = want["total"].as_f64().expect("total");
    let start = render.history()[0].total;
    assert!(
        got.total < start * 0.99,
        "10 iterations did not move: {start} -> {}",
        got.total
    );
    let r = rel(got.total, want_total);
    assert!(
        r <= 1e-3,
        "engine {} vs torch.optim.LBFGS {want_total} after 10 iterations (relative {r:.2e})\nengine:    {engine_history:?}\nreference: {ref_history:?}",
        got.total
    );
}
