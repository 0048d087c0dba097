//! `make bench-engine`: seconds per evaluation (forward, losses, backward) of VGG19 to
//! relu5_1 with seeded random weights, the engine against eager PyTorch in the same run.
//!
//! Two references: `matched` runs the engine's recipe in eager PyTorch (frozen weights,
//! gradient for the image only); `naive` is the usual nn.Module code whose parameters
//! require grad, so backward also computes every weight gradient. Printed as ratios
//! engine / reference (below 1: the engine is faster).

use stylefarm_worker_testkit as common;

use std::time::Instant;

use stylefarm_core::{InitKind, RenderParams, WeightedLayer};
use stylefarm_weights::Architecture;
use stylefarm_worker::engine::{Render, RenderInputs};
use tch::Device;

const WARMUP: usize = 1;
const REPEAT: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads = std::env::var("STYLEFARM_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(tch::get_num_threads);
    tch::set_num_threads(threads);
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = common::random_weights(dir.path(), Architecture::Vgg19, "conv5_1", None, 1);
    let layer = |l: &str| WeightedLayer {
        layer: l.to_owned(),
        weight: 1.0,
    };
    println!(
        "VGG19 to relu5_1, random weights, CPU, {threads} threads, median of {REPEAT} evaluations"
    );
    println!(
        "{:>6} {:>11} {:>13} {:>11} {:>15} {:>13}",
        "size", "engine s", "matched s", "ratio", "naive s", "ratio"
    );
    for size in [256u32, 512] {
        let (w, h) = (size, size * 3 / 4);
        let inputs = RenderInputs {
            content: common::image("content/tubingen.jpg", w, h),
            styles: vec![common::image("styles/starry_night.jpg", w, h)],
            style_weights: vec![],
            init_image: None,
            previous: None,
        };
        let params = RenderParams {
            size,
            init: InitKind::Noise,
            content_layers: vec![layer("relu4_2")],
            style_layers: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
                .map(layer)
                .to_vec(),
            ..RenderParams::default()
        };
        let render = Render::new(&weights, &params, &inputs, Device::Cpu).expect("render");
        let mut times = Vec::new();
        for i in 0..WARMUP + REPEAT {
            let t = Instant::now();
            let _ = render.evaluate_with_grad().expect("evaluate");
            if i >= WARMUP {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let engine = median(times);
        let case = common::reference::write_case(dir.path(), &weights, &params, &inputs, &render);
        let reference = |mode: &str| -> f64 {
            let out = common::reference::run(&[
                "bench",
                "--case",
                case.to_str().expect("utf8"),
                "--mode",
                mode,
                "--threads",
                &threads.to_string(),
                "--repeat",
                &REPEAT.to_string(),
                "--warmup",
                &WARMUP.to_string(),
            ]);
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
            v["median_s"].as_f64().expect("median_s")
        };
        let matched = reference("matched");
        let naive = reference("naive");
        println!(
            "{:>6} {:>11.3} {:>13.3} {:>11.2} {:>15.3} {:>13.2}",
            format!("{w}x{h}"),
            engine,
            matched,
            engine / matched,
            naive,
            engine / naive
        );
    }
}
