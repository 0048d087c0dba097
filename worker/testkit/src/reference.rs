//! Driving tests/reference/nst_reference.py: case files in, results out.

use std::path::{Path, PathBuf};
use std::process::Command;

use stylefarm_core::{LineSearch, Pooling, RenderParams};
use stylefarm_weights::WeightsInfo;
use stylefarm_worker::engine::{image_io, Render, RenderInputs};
use tch::{Device, Tensor};

/// Writes the case files the reference reads and returns the case path.
pub fn write_case(
    dir: &Path,
    weights: &WeightsInfo,
    params: &RenderParams,
    inputs: &RenderInputs,
    render: &Render,
) -> PathBuf {
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "content".into(),
            image_io::to_tensor(&inputs.content, Device::Cpu),
        ),
        ("x".into(), render.variable()),
    ];
    for (i, s) in inputs.styles.iter().enumerate() {
        tensors.push((format!("style.{i}"), image_io::to_tensor(s, Device::Cpu)));
    }
    let inputs_path = dir.join("inputs.safetensors");
    Tensor::write_safetensors(&tensors, &inputs_path).expect("write inputs");
    let n = inputs.styles.len() as f64;
    let blend: Vec<f64> = if inputs.style_weights.is_empty() {
        vec![1.0 / n; inputs.styles.len()]
    } else {
        let s: f64 = inputs.style_weights.iter().sum();
        inputs.style_weights.iter().map(|w| w / s).collect()
    };
    let case = serde_json::json!({
        "weights": weights.path,
        "inputs": inputs_path,
        "content_layers": render.params().content_layers.iter().map(|l| (l.layer.clone(), l.weight)).collect::<Vec<_>>(),
        "style_layers": render.params().style_layers.iter().map(|l| (l.layer.clone(), l.weight)).collect::<Vec<_>>(),
        "content_weight": params.content_weight,
        "style_weight": params.style_weight,
        "tv_weight": params.tv_weight,
        "pooling": match params.pooling { Pooling::Max => "max", Pooling::Avg => "avg" },
        "blend": blend,
        "learning_rate": params.learning_rate,
        "lbfgs_history": params.lbfgs_history,
        "line_search": match params.line_search {
            LineSearch::StrongWolfe => Some("strong_wolfe"),
            LineSearch::None => None,
        },
    });
    let case_path = dir.join("case.json");
    std::fs::write(&case_path, serde_json::to_vec_pretty(&case).expect("json"))
        .expect("write case");
    case_path
}

/// Runs the reference script with `args` and returns its stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(super::python())
        .arg(super::root().join("tests/reference/nst_reference.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
