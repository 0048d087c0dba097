//! `make bench-temporal`: temporal coherence on a synthetic shot (Ruder et al. 2016).
//!
//! The shot is 24 frames of a camera panning across and slowly zooming into a fixture
//! photo (`stylefarm_worker_testkit::camera`), so the true optical flow between frames
//! is known. It measures:
//! 1. the flow's end-point error against the truth, per frame pair;
//! 2. the shot styled twice, each frame on its own and with the temporal term (each
//!    frame from its predecessor's result warped along the estimated flow): the warp
//!    error (mean absolute difference, on [0, 1] pixels, between each styled frame and
//!    its predecessor warped along the *true* flow, where both frames show the same
//!    ground) and each frame's style loss (measured alone, without the temporal term).
//!    Goal: warp error at most 0.4 of independent styling, style loss within 1.2.
//!
//! It ends with `warp error ratio: 0.NN` and `style loss ratio: N.NN`, and writes
//! `target/bench-temporal/shot.gif` (content | each frame alone | temporal) and a strip
//! of frames. Environment: `STYLEFARM_BENCH_DEVICE` (`cpu`, `cuda`),
//! `STYLEFARM_BENCH_FRAMES` (24), `STYLEFARM_BENCH_SIZE` (256: the frames' long side),
//! `STYLEFARM_BENCH_ITERATIONS` (100), `STYLEFARM_BENCH_TEMPORAL_WEIGHT` (the default).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use image::{Rgb32FImage, RgbImage};
use stylefarm_core::params::DEFAULT_TEMPORAL_WEIGHT;
use stylefarm_core::RenderParams;
use stylefarm_weights::WeightsInfo;
use stylefarm_worker::engine::{flow, image_io, PreviousImages, Render, RenderInputs};
use stylefarm_worker_testkit::camera::{inner, Move};
use stylefarm_worker_testkit::sheet::{env_or, side_by_side};
use stylefarm_worker_testkit::{image as fixture_image, root};
use tch::{Device, Kind};

fn out_dir() -> PathBuf {
    let d = root().join("target").join("bench-temporal");
    std::fs::create_dir_all(&d).expect("output folder");
    d
}

/// The shot: a pan of 2 x 0.5 photo pixels and a 0.4% zoom per frame.
fn shot(frames: usize, side: u32) -> Move {
    let (w, h) = (side, side * 3 / 4);
    // The photo at a size where the frames sample it near one to one.
    let (pw, ph) = (w * 25 / 16, h * 25 / 16);
    let photo = fixture_image("content/tubingen.jpg", pw, ph);
    let start = (f64::from(w) / 2.0 + 8.0, f64::from(ph) / 2.0);
    Move::new(&photo, (w, h), frames, start, (2.0, 0.5), 0.004)
}

/// Styles every frame, each on its own or each from its predecessor; gives the results,
/// the time and the mean style loss.
fn style(
    weights: &WeightsInfo,
    params: &RenderParams,
    contents: &[Rgb32FImage],
    style: &Rgb32FImage,
    temporal: bool,
    device: Device,
) -> (Vec<Rgb32FImage>, f64) {
    let cancel = AtomicBool::new(false);
    let t0 = Instant::now();
    let mut out: Vec<Rgb32FImage> = Vec::new();
    for (k, content) in contents.iter().enumerate() {
        let previous = match (temporal, k) {
            (true, k) if k > 0 => Some(PreviousImages {
                content: contents[k - 1].clone(),
                styled: out[k - 1].clone(),
            }),
            _ => None,
        };
        let inputs = RenderInputs {
            content: content.clone(),
            styles: vec![style.clone()],
            style_weights: vec![],
            init_image: None,
            previous,
        };
        let mut r = Render::new(weights, params, &inputs, device).expect("render");
        r.run(&cancel, &mut |_| {}).expect("run");
        out.push(r.output());
    }
    (out, t0.elapsed().as_secs_f64())
}

/// A frame's style loss alone: the objective without a temporal term, at the image.
fn style_loss(
    weights: &WeightsInfo,
    params: &RenderParams,
    content: &Rgb32FImage,
    style: &Rgb32FImage,
    image: &Rgb32FImage,
    device: Device,
) -> f64 {
    let params = RenderParams {
        init: stylefarm_core::InitKind::Image,
        temporal_weight: 0.0,
        ..params.clone()
    };
    let inputs = RenderInputs {
        content: content.clone(),
        styles: vec![style.clone()],
        style_weights: vec![],
        init_image: Some(image.clone()),
        previous: None,
    };
    let r = Render::new(weights, &params, &inputs, device).expect("objective");
    r.losses().expect("losses").style
}

/// Mean absolute difference between each styled frame and its predecessor warped along
/// the true flow, where both frames show the same ground.
fn warp_error(m: &Move, styled: &[Rgb32FImage]) -> f64 {
    let mut sum = 0.0;
    for k in 1..styled.len() {
        let now = image_io::to_tensor(&styled[k], Device::Cpu);
        let before = image_io::to_tensor(&styled[k - 1], Device::Cpu);
        let warped = flow::warp(&before, &m.flow(k, k - 1));
        let seen = m.seen_in(k, k - 1);
        let diff = ((now - warped).abs() * &seen)
            .sum(Kind::Float)
            .double_value(&[])
            / (3.0 * seen.sum(Kind::Float).double_value(&[]).max(1.0));
        sum += diff;
    }
    sum / (styled.len() - 1) as f64
}

/// An animated GIF looping over `frames` (all one size) at 12 frames a second.
fn gif(path: &Path, frames: &[RgbImage]) {
    let (w, h) = frames[0].dimensions();
    let (w, h) = (
        u16::try_from(w).expect("GIF width"),
        u16::try_from(h).expect("GIF height"),
    );
    let file = File::create(path).expect("gif file");
    let mut enc = gif::Encoder::new(file, w, h, &[]).expect("gif header");
    enc.set_repeat(gif::Repeat::Infinite).expect("loop");
    for f in frames {
        // Each frame quantised to its own palette (NeuQuant, speed 10 of 1..30).
        let mut frame = gif::Frame::from_rgb_speed(w, h, f.as_raw(), 10);
        frame.delay = 8; // hundredths of a second
        enc.write_frame(&frame).expect("gif frame");
    }
}

fn main() {
    let device = match std::env::var("STYLEFARM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let frames: usize = env_or("STYLEFARM_BENCH_FRAMES", 24);
    let side: u32 = env_or("STYLEFARM_BENCH_SIZE", 256);
    let weights = stylefarm_worker_testkit::real_weights();
    let params = RenderParams {
        size: side,
        iterations: env_or("STYLEFARM_BENCH_ITERATIONS", 100),
        temporal_weight: env_or("STYLEFARM_BENCH_TEMPORAL_WEIGHT", DEFAULT_TEMPORAL_WEIGHT),
        ..RenderParams::default()
    };
    let m = shot(frames.max(2), side);
    let contents: Vec<Rgb32FImage> = (0..m.views.len()).map(|k| m.frame_image(k)).collect();
    println!(
        "shot: {} frames of {}x{} (pan 2 x 0.5 px, zoom 0.4% per frame), tubingen x starry night, {} iterations, temporal weight {}, {device:?}, {} threads",
        contents.len(),
        m.width,
        m.height,
        params.iterations,
        params.temporal_weight,
        tch::get_num_threads()
    );

    // 1. Flow against the truth.
    let t0 = Instant::now();
    let mut epe = Vec::new();
    for k in 1..contents.len() {
        let est = flow::estimate(&m.frame(k), &m.frame(k - 1));
        epe.push(flow::end_point_error(
            &inner(&est, 8),
            &inner(&m.flow(k, k - 1), 8),
            None,
        ));
    }
    let flow_s = t0.elapsed().as_secs_f64() / epe.len() as f64;
    let mean_epe = epe.iter().sum::<f64>() / epe.len() as f64;
    let worst = epe.iter().copied().fold(0.0, f64::max);
    println!(
        "flow end-point error: mean {mean_epe:.3} px, worst {worst:.3} px over {} pairs ({:.0} ms a pair)",
        epe.len(),
        flow_s * 1000.0
    );

    // 2. The shot styled both ways.
    let painting = image_io::load(
        &stylefarm_worker_testkit::fixture("styles/starry_night.jpg"),
        image_io::DEFAULT_MAX_PIXELS,
    )
    .expect("style fixture");
    let (alone, alone_s) = style(&weights, &params, &contents, &painting, false, device);
    let (coherent, coherent_s) = style(&weights, &params, &contents, &painting, true, device);
    let mean_style = |imgs: &[Rgb32FImage]| {
        imgs.iter()
            .zip(&contents)
            .map(|(i, c)| style_loss(&weights, &params, c, &painting, i, device))
            .sum::<f64>()
            / imgs.len() as f64
    };
    let (alone_style, coherent_style) = (mean_style(&alone), mean_style(&coherent));
    let (alone_warp, coherent_warp) = (warp_error(&m, &alone), warp_error(&m, &coherent));
    println!(
        "each frame alone:   warp error {alone_warp:.4}, style loss {alone_style:.4} (mean per frame), {alone_s:.1} s"
    );
    println!(
        "temporal coherence: warp error {coherent_warp:.4}, style loss {coherent_style:.4} (mean per frame), {coherent_s:.1} s"
    );

    let dir = out_dir();
    let sheets: Vec<RgbImage> = (0..contents.len())
        .map(|k| side_by_side(&[&contents[k], &alone[k], &coherent[k]], m.height))
        .collect();
    let gif_path = dir.join("shot.gif");
    gif(&gif_path, &sheets);
    let strip_frames: Vec<&Rgb32FImage> = [0, contents.len() / 2, contents.len() - 1]
        .iter()
        .flat_map(|&k| [&alone[k], &coherent[k]])
        .collect();
    let strip = dir.join("frames.png");
    side_by_side(&strip_frames, m.height)
        .save(&strip)
        .expect("write strip");
    println!(
        "animated: content | each frame alone | temporal: {}",
        gif_path.display()
    );
    println!(
        "first, middle, last frame (alone, temporal each): {}",
        strip.display()
    );
    println!("warp error ratio: {:.2}", coherent_warp / alone_warp);
    println!("style loss ratio: {:.2}", coherent_style / alone_style);
}
