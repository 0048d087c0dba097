//! `make bench-quality`: what a render's defaults and schedule buy, on the real partial
//! VGG19 (relu1_1, relu2_1, relu3_1 style; relu3_2 content) and the fixtures.
//!
//! 1. Time to quality: tubingen x starry night at 512 px. The reference is single-scale
//!    L-BFGS for 500 iterations (its final loss and wall time); the coarse-to-fine
//!    schedule runs until its loss at 512 px is at or below that, and the ratio of the
//!    two wall times is printed (goal: at most 0.35).
//! 2. Calibration: every fixture content x every fixture style at the default
//!    parameters: how far the style loss fell, and how much of the photo's structure
//!    survived (SSIM of the luminance at a quarter of the size, against the photo).
//! 3. Tiles: tubingen x starry night at 2048 px rendered whole and with tiles forced to
//!    512 px, each in its own process (this bench re-run with `STYLEFARM_BENCH_CHILD`)
//!    so that its peak resident memory is its own: time, peak RSS, the memory
//!    estimates, and the seam ratio (the mean gradient on the tile boundaries against
//!    elsewhere, the tiled render's over the whole one's; goal at most 1.10).
//!
//! It ends with `time-to-quality ratio: 0.NN` and `seam ratio: N.NN`.
//!
//! Images go to `target/bench-quality/`. Environment: `STYLEFARM_BENCH_PARTS`
//! (`speed,calibration,tiles`), `STYLEFARM_BENCH_TILED_SIZE` (2048), `STYLEFARM_BENCH_TILE`
//! (512), `STYLEFARM_BENCH_TILED_SCALES` (`1024,2048`; on 2 CPU cores the whole render's
//! ten iterations at 2048 px alone take over 20 minutes, and the tiled one about twice
//! that: `STYLEFARM_BENCH_TILED_SIZE=1024 STYLEFARM_BENCH_TILE=256` has the same layout
//! of tiles in a quarter of the work), `STYLEFARM_BENCH_TILED_FIRST_ITERATIONS` (30),
//! `STYLEFARM_BENCH_TILED_SCALE_ITERATIONS` (10), `STYLEFARM_BENCH_DEVICE` (`cpu`, `cuda`), `STYLEFARM_BENCH_SIZE`
//! (512), `STYLEFARM_BENCH_REFERENCE_ITERATIONS` (500), `STYLEFARM_BENCH_SCALES`
//! (`256,362,512`), `STYLEFARM_BENCH_CALIBRATION_SIZE` (256) and
//! `STYLEFARM_BENCH_CALIBRATION_ITERATIONS` (the default iterations), and for sweeps
//! `STYLEFARM_BENCH_STYLE_WEIGHT`, `STYLEFARM_BENCH_TV_WEIGHT`, `STYLEFARM_BENCH_CONTENTS`
//! and `STYLEFARM_BENCH_STYLES` (name prefixes, comma-separated).

use stylefarm_worker_testkit as common;
use stylefarm_worker_testkit::sheet::{env_or, side_by_side, to_rgb8};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use image::{imageops, Rgb, Rgb32FImage, RgbImage};
use stylefarm_core::params::{describe_schedule, parse_scales};
use stylefarm_core::RenderParams;
use stylefarm_weights::{memory, WeightsInfo};
use stylefarm_worker::engine::{image_io, metrics, Render, RenderInputs};
use tch::Device;

fn out_dir() -> PathBuf {
    let d = common::root().join("target").join("bench-quality");
    std::fs::create_dir_all(&d).expect("output folder");
    d
}

fn load(rel: &str) -> Rgb32FImage {
    image_io::load(&common::fixture(rel), image_io::DEFAULT_MAX_PIXELS).expect("fixture")
}

fn inputs(content: &str, style: &str) -> RenderInputs {
    RenderInputs {
        content: load(content),
        styles: vec![load(style)],
        style_weights: vec![],
        init_image: None,
        previous: None,
    }
}

fn save(img: &RgbImage, name: &str) -> PathBuf {
    let p = out_dir().join(name);
    img.save(&p).expect("write image");
    p
}

fn speed(weights: &WeightsInfo, device: Device) -> String {
    let size: u32 = env_or("STYLEFARM_BENCH_SIZE", 512);
    let iterations: u32 = env_or("STYLEFARM_BENCH_REFERENCE_ITERATIONS", 500);
    let scales = std::env::var("STYLEFARM_BENCH_SCALES").unwrap_or_else(|_| {
        let (a, b) = (
            size / 2,
            (f64::from(size) / std::f64::consts::SQRT_2).round() as u32,
        );
        format!("{a},{b},{size}")
    });
    let inputs = inputs("content/tubingen.jpg", "styles/starry_night.jpg");
    let cancel = AtomicBool::new(false);

    println!("time to quality: tubingen x starry night, {size} px, {device:?}");
    let reference = RenderParams {
        size,
        iterations,
        scales: vec![size],
        ..RenderParams::default()
    };
    let t0 = Instant::now();
    let mut r = Render::new(weights, &reference, &inputs, device).expect("reference");
    r.run(&cancel, &mut |_| {}).expect("reference run");
    let target = r.losses().expect("losses").total;
    let reference_s = t0.elapsed().as_secs_f64();
    let reference_img = r.output();
    println!(
        "  reference  single-scale L-BFGS, {} iterations ({} evaluations): final loss {target:.4e} in {reference_s:.1} s",
        r.iteration(),
        r.evaluations()
    );
    drop(r);

    let sides = parse_scales(&scales).expect("STYLEFARM_BENCH_SCALES");
    let multi = RenderParams {
        size,
        scales: sides,
        // The run stops once the loss at the last scale is the reference's.
        iterations: env_or("STYLEFARM_BENCH_FIRST_ITERATIONS", 150),
        scale_iterations: env_or("STYLEFARM_BENCH_SCALE_ITERATIONS", 100),
        ..RenderParams::default()
    };
    let last_scale = multi.schedule().len() - 1;
    let t0 = Instant::now();
    let mut m = Render::new(weights, &multi, &inputs, device).expect("multi-scale");
    let mut reached: Option<(f64, u32, f64)> = None;
    let stop = AtomicBool::new(false);
    let mut last_loss = f64::NAN;
    m.run_until(u32::MAX, &stop, &mut |p| {
        if p.scale == last_scale {
            last_loss = p.losses.total;
            if p.losses.total <= target && reached.is_none() {
                reached = Some((t0.elapsed().as_secs_f64(), p.iteration, p.losses.total));
                stop.store(true, Ordering::Relaxed);
            }
        }
    })
    .expect("multi-scale run");
    let schedule = describe_schedule(&multi.schedule());
    let multi_img = m.output();
    let times: Vec<String> = m
        .runs()
        .iter()
        .map(|r| format!("{} px {:.1} s", r.side, r.optimize_s))
        .collect();
    let pair = save(
        &side_by_side(&[&reference_img, &multi_img], 384),
        &format!("time-to-quality-{size}.png"),
    );
    match reached {
        Some((s, it, loss)) => {
            println!(
                "  multi-scale {schedule}: loss {loss:.4e} at iteration {it} ({} evaluations) after {s:.1} s ({})",
                m.evaluations(),
                times.join(", ")
            );
            println!("  reference | multi-scale: {}", pair.display());
            format!("time-to-quality ratio: {:.2}", s / reference_s)
        }
        None => {
            println!(
                "  multi-scale {schedule}: never reached {target:.4e} (last {last_loss:.4e}) in {:.1} s ({})",
                t0.elapsed().as_secs_f64(),
                times.join(", ")
            );
            println!("  reference | multi-scale: {}", pair.display());
            "time-to-quality ratio: not reached".to_owned()
        }
    }
}

const CONTENTS: [&str; 4] = ["tubingen.jpg", "chelsea.png", "coffee.png", "astronaut.png"];
const STYLES: [&str; 4] = [
    "starry_night.jpg",
    "the_scream.jpg",
    "shipwreck.jpg",
    "woman-with-hat-matisse.jpg",
];

fn calibration(weights: &WeightsInfo, device: Device) {
    let size: u32 = env_or("STYLEFARM_BENCH_CALIBRATION_SIZE", 256);
    let iterations: u32 = env_or(
        "STYLEFARM_BENCH_CALIBRATION_ITERATIONS",
        RenderParams::default().iterations,
    );
    let d = RenderParams::default();
    let params = RenderParams {
        size,
        iterations,
        style_weight: env_or("STYLEFARM_BENCH_STYLE_WEIGHT", d.style_weight),
        tv_weight: env_or("STYLEFARM_BENCH_TV_WEIGHT", d.tv_weight),
        ..d
    };
    let pick = |var: &str, all: &[&'static str]| -> Vec<&'static str> {
        match std::env::var(var) {
            Ok(v) => all
                .iter()
                .copied()
                .filter(|n| v.split(',').any(|p| n.starts_with(p)))
                .collect(),
            Err(_) => all.to_vec(),
        }
    };
    let (contents, styles) = (
        pick("STYLEFARM_BENCH_CONTENTS", &CONTENTS),
        pick("STYLEFARM_BENCH_STYLES", &STYLES),
    );
    println!(
        "calibration: parameters (content_weight {}, style_weight {}, tv_weight {}) at {size} px, {iterations} iterations, {device:?}",
        params.content_weight, params.style_weight, params.tv_weight
    );
    println!(
        "  {:<14} {:<28} {:>12} {:>16} {:>8}",
        "content", "style", "style fell", "structure SSIM", "seconds"
    );
    let cell = 160;
    let mut rows: Vec<Vec<Rgb32FImage>> = Vec::new();
    let mut worst = f64::INFINITY;
    for &content in &contents {
        let mut row = Vec::new();
        for &style in &styles {
            let inputs = inputs(&format!("content/{content}"), &format!("styles/{style}"));
            let t0 = Instant::now();
            let mut r = Render::new(weights, &params, &inputs, device).expect("render");
            r.run(&AtomicBool::new(false), &mut |_| {}).expect("run");
            let first = r.history().first().map_or(f64::NAN, |l| l.style);
            let last = r.losses().expect("losses").style;
            let out = r.output();
            let (w, h) = out.dimensions();
            let photo = image_io::resize(&inputs.content, w, h);
            let ssim = metrics::structure_ssim(&out, &photo, 4);
            worst = worst.min(ssim);
            println!(
                "  {content:<14} {style:<28} {:>11.0}x {ssim:>16.3} {:>8.1}",
                first / last,
                t0.elapsed().as_secs_f64()
            );
            if row.is_empty() {
                row.push(photo);
            }
            row.push(out);
        }
        rows.push(row);
    }
    // The sheet: a row per photo (the photo first), a column per painting (the
    // painting on top).
    let mut header = vec![Rgb32FImage::from_pixel(4, 3, image::Rgb([1.0, 1.0, 1.0]))];
    header.extend(styles.iter().map(|s| load(&format!("styles/{s}"))));
    let lines: Vec<RgbImage> = std::iter::once(&header)
        .chain(&rows)
        .map(|r| side_by_side(&r.iter().collect::<Vec<_>>(), cell))
        .collect();
    let width = lines.iter().map(RgbImage::width).max().unwrap_or(1);
    let height = lines.iter().map(RgbImage::height).sum();
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for l in &lines {
        imageops::replace(&mut sheet, l, 0, i64::from(y));
        y += l.height();
    }
    let p = save(
        &sheet,
        &format!(
            "calibration-{size}-sw{}-tv{}.jpg",
            params.style_weight, params.tv_weight
        ),
    );
    println!("  contact sheet: {}", p.display());
    println!("lowest structure SSIM: {worst:.3}");
}

fn main() {
    let device = match std::env::var("STYLEFARM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let weights = WeightsInfo::inspect(Path::new(&stylefarm_testkit::fixtures::real_weights()))
        .expect("the partial VGG19 in ../shared/weights");
    println!(
        "weights {} ({} threads)",
        weights.path.display(),
        tch::get_num_threads()
    );
    if let Ok(which) = std::env::var("STYLEFARM_BENCH_CHILD") {
        tiles_child(&weights, device, &which);
        return;
    }
    let parts =
        std::env::var("STYLEFARM_BENCH_PARTS").unwrap_or_else(|_| "speed,calibration,tiles".into());
    if parts.contains("calibration") {
        calibration(&weights, device);
    }
    let ratio = parts.contains("speed").then(|| speed(&weights, device));
    let seam = parts.contains("tiles").then(|| tiles(&weights, device));
    println!(
        "{}",
        ratio.unwrap_or_else(|| {
            "time-to-quality ratio: not measured (speed not in STYLEFARM_BENCH_PARTS)".into()
        })
    );
    println!(
        "{}",
        seam.unwrap_or_else(
            || "seam ratio: not measured (tiles not in STYLEFARM_BENCH_PARTS)".into()
        )
    );
}

/// The tiles part's render, whole or in tiles.
fn tiled_params(tiled: bool) -> RenderParams {
    let size: u32 = env_or("STYLEFARM_BENCH_TILED_SIZE", 2048);
    let scales = std::env::var("STYLEFARM_BENCH_TILED_SCALES")
        .unwrap_or_else(|_| format!("{},{size}", size / 2));
    RenderParams {
        size,
        scales: parse_scales(&scales).expect("STYLEFARM_BENCH_TILED_SCALES"),
        iterations: env_or("STYLEFARM_BENCH_TILED_FIRST_ITERATIONS", 30),
        scale_iterations: env_or("STYLEFARM_BENCH_TILED_SCALE_ITERATIONS", 10),
        tile: if tiled {
            env_or("STYLEFARM_BENCH_TILE", 512)
        } else {
            0
        },
        ..RenderParams::default()
    }
}

/// One render of the tiles part, in a process of its own: writes its output and prints
/// `child: SECONDS PEAK_RSS_BYTES` for the parent.
fn tiles_child(weights: &WeightsInfo, device: Device, which: &str) {
    let params = tiled_params(which == "tiled");
    let inputs = inputs("content/tubingen.jpg", "styles/starry_night.jpg");
    let t0 = Instant::now();
    let mut r = Render::new(weights, &params, &inputs, device).expect("render");
    r.run(&AtomicBool::new(false), &mut |_| {}).expect("run");
    let seconds = t0.elapsed().as_secs_f64();
    let losses = r.losses().expect("losses");
    to_rgb8(&r.output())
        .save(out_dir().join(format!("tiles-{}-{which}.png", params.size)))
        .expect("write output");
    let per_scale: Vec<String> = r
        .runs()
        .iter()
        .map(|s| match s.tiles {
            0 => format!("{} px {:.0} s", s.side, s.optimize_s),
            n => format!("{} px in {n} tiles {:.0} s", s.side, s.optimize_s),
        })
        .collect();
    println!(
        "child: {seconds} {} {} {} ({})",
        stylefarm_worker::device::peak_rss().unwrap_or(0),
        losses.style,
        losses.content,
        per_scale.join(", ")
    );
}

/// Renders whole and tiled in child processes and compares them; gives the
/// `seam ratio:` line.
fn tiles(weights: &WeightsInfo, device: Device) -> String {
    let (whole_p, tiled_p) = (tiled_params(false), tiled_params(true));
    let size = whole_p.size;
    let tile = tiled_p.tile;
    println!(
        "tiles: tubingen x starry night at {size} px ({}), whole against {tile} px tiles, {device:?}",
        describe_schedule(&whole_p.schedule())
    );
    let file_bytes = std::fs::metadata(&weights.path).map_or(0, |m| m.len());
    let dims = |rel: &str| {
        let img = load(rel);
        memory::Dims::new(img.width(), img.height())
    };
    let images = memory::JobImages {
        content: dims("content/tubingen.jpg"),
        styles: vec![dims("styles/starry_night.jpg")],
        init: None,
        previous: None,
    };
    let backend = match device {
        Device::Cpu => memory::Backend::Cpu,
        _ => memory::Backend::Cuda,
    };
    let params = |p: &RenderParams| weights.resolve_layers(p);
    let mut outputs = Vec::new();
    for (which, p) in [("whole", &whole_p), ("tiled", &tiled_p)] {
        let estimate = memory::estimate(
            weights.architecture,
            file_bytes,
            &params(p),
            &images,
            backend,
        )
        .expect("estimate");
        let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
            .env("STYLEFARM_BENCH_CHILD", which)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the child");
        assert!(out.status.success(), "the {which} render failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("child: "))
            .expect("the child's line");
        let mut f = line.splitn(5, ' ');
        let mut next = || f.next().unwrap_or_default().to_owned();
        let (seconds, rss, style, content, scales) = (next(), next(), next(), next(), next());
        let rss: u64 = rss.parse().unwrap_or(0);
        println!(
            "  {which}: {:.0} s, peak RSS {} (estimate {}), style {:.4}, content {:.4} (by the whole image's objective; tiled: share by share) {scales}",
            seconds.parse::<f64>().unwrap_or(f64::NAN),
            memory::gib(rss),
            memory::gib(estimate.peak()),
            style.parse::<f64>().unwrap_or(f64::NAN),
            content.parse::<f64>().unwrap_or(f64::NAN),
        );
        let img = image_io::load(
            &out_dir().join(format!("tiles-{size}-{which}.png")),
            image_io::DEFAULT_MAX_PIXELS,
        )
        .expect("the child's output");
        outputs.push(img);
    }
    let (whole, tiled) = (&outputs[0], &outputs[1]);
    let seam = metrics::boundary_gradient_ratio(tiled, tile)
        / metrics::boundary_gradient_ratio(whole, tile);
    let pair = save(
        &side_by_side(&[whole, tiled], 768),
        &format!("tiles-{size}.png"),
    );
    // 1:1 around the corner where the first pass's first four tiles meet.
    let grid = stylefarm_core::tiles::grid(whole.width(), whole.height(), tile);
    let corner = grid[0]
        .iter()
        .find(|r| r.x > 0 && r.y > 0)
        .map_or((0, 0), |r| (r.x, r.y));
    let crop = |img: &Rgb32FImage| {
        let (w, h) = (tile.min(img.width()), (tile * 3 / 4).min(img.height()));
        let x = corner.0.saturating_sub(w / 2).min(img.width() - w);
        let y = corner.1.saturating_sub(h / 2).min(img.height() - h);
        imageops::crop_imm(img, x, y, w, h).to_image()
    };
    let detail = save(
        &side_by_side(&[&crop(whole), &crop(tiled)], tile * 3 / 4),
        &format!("tiles-{size}-detail.png"),
    );
    println!(
        "  whole | tiled: {} (1:1 at a tile corner: {})",
        pair.display(),
        detail.display()
    );
    format!("seam ratio: {seam:.2}")
}
