//! `stylefarm render` as a user runs it: the real binary on the fixtures.

use std::process::Command;

mod common;

use common::{shared, weights};
use stylefarm_core::params::DEFAULT_ADAM_LR;
use stylefarm_core::RenderParams;

fn stylefarm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    c.env_remove("STYLEFARM_WEIGHTS");
    c
}

/// `stylefarm render` of tubingen as starry night to `out`, with the real weights.
fn tubingen_starry(out: &std::path::Path) -> Command {
    let mut c = stylefarm();
    c.arg("render")
        .arg("--weights")
        .arg(weights())
        .arg("--content")
        .arg(shared().join("fixtures/content/tubingen.jpg"))
        .arg("--style")
        .arg(shared().join("fixtures/styles/starry_night.jpg"))
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn renders_tubingen_as_starry_night_and_writes_a_sidecar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nested/tubingen.png");
    let run = stylefarm()
        .args([
            "render",
            "--quiet",
            "--size",
            "256",
            "--iterations",
            "200",
            "--threads",
            "2",
        ])
        .arg("--content")
        .arg(shared().join("fixtures/content/tubingen.jpg"))
        .arg("--style")
        .arg(shared().join("fixtures/styles/starry_night.jpg"))
        .arg("--out")
        .arg(&out)
        .env("STYLEFARM_WEIGHTS", weights())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("final losses"), "{stdout}");

    let img = image::open(&out).expect("output is a PNG");
    assert_eq!((img.width(), img.height()), (256, 192));
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("nested/tubingen.png.json")).expect("sidecar"),
    )
    .expect("json");
    assert_eq!(sidecar["params"]["iterations"], 200);
    assert_eq!(sidecar["iterations_done"], 200);
    assert_eq!(
        sidecar["weights"]["sha256"],
        "ced4f340f1687f54bd786f406fd1e3be8580df9024892054b7cb8ff5a06b659a"
    );
    assert_eq!(sidecar["weights"]["convention"], "caffe");
    let curve = sidecar["loss_curve"].as_array().expect("curve");
    assert_eq!(curve.len(), 200);
    let first = curve[0]["style"].as_f64().expect("style");
    let last = sidecar["final_losses"]["style"].as_f64().expect("style");
    assert!(
        first / last >= 10.0,
        "style loss only went {first} -> {last}"
    );
    assert!(sidecar["timings"]["optimize_s"].as_f64().expect("timing") > 0.0);

    // The loss plot beside the sidecar, named on stdout.
    let plot = dir.path().join("nested/tubingen.png.loss.svg");
    assert!(
        stdout.contains(&format!("loss plot: {}", plot.display())),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&plot).expect("loss plot");
    assert_eq!(svg.matches("<path ").count(), 4);
    assert!(svg.contains("tubingen.png"));
}

#[test]
fn a_corrupt_content_image_fails_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 not really a jpeg").expect("write");
    let run = stylefarm()
        .args([
            "render",
            "--quiet",
            "--size",
            "64",
            "--iterations",
            "1",
            "--weights",
        ])
        .arg(weights())
        .arg("--content")
        .arg(&bad)
        .arg("--style")
        .arg(shared().join("fixtures/styles/starry_night.jpg"))
        .arg("--out")
        .arg(dir.path().join("o.png"))
        .output()
        .expect("runs");
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!dir.path().join("o.png").exists());
}

#[test]
fn missing_weights_say_how_to_supply_them() {
    let run = stylefarm()
        .args([
            "render",
            "--content",
            "a.jpg",
            "--style",
            "b.jpg",
            "--out",
            "o.png",
        ])
        .output()
        .expect("runs");
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("STYLEFARM_WEIGHTS"), "{err}");
}

#[test]
fn a_layer_the_weights_lack_is_named() {
    let run = stylefarm()
        .args([
            "render",
            "--quiet",
            "--style-layers",
            "relu1_1,relu5_1",
            "--weights",
        ])
        .arg(weights())
        .arg("--content")
        .arg(shared().join("fixtures/content/chelsea.png"))
        .arg("--style")
        .arg(shared().join("fixtures/styles/the_scream.jpg"))
        .args(["--out", "/nonexistent/o.png"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("relu5_1") && err.contains("relu3_1"), "{err}");
}

#[test]
fn bad_parameters_are_named() {
    let run = stylefarm()
        .args([
            "render",
            "--content",
            "a.jpg",
            "--style",
            "b.jpg",
            "--out",
            "o.png",
            "--size",
            "3",
            "--weights",
            "w",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("--size"), "{err}");
}

/// `stylefarm render` with `args` (no weights needed: these fail before loading any).
fn refused(args: &[&str]) -> String {
    let run = stylefarm().arg("render").args(args).output().expect("runs");
    assert!(!run.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn a_bad_value_is_reported_under_the_flag_that_set_it_and_names_stay_as_written() {
    let base = ["--content", "c.jpg", "--style", "s.jpg", "--out", "o.png"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let err = refused(&with(&base, &["--bit-depth", "12"]));
    assert!(err.contains("--bit-depth: 12 is not 8 or 16"), "{err}");
    assert!(!err.contains("--output-bit-depth"), "{err}");
    let err = refused(&with(&base, &["--style-layers", "relu1_1,relu1_1"]));
    assert!(err.contains("--style-layers[1]"), "{err}");
    assert!(err.contains("layer relu1_1 is listed twice"), "{err}");
    assert!(!err.contains("relu1-1"), "{err}");
    let err = refused(&with(&base, &["--style-layers", "relu1_1:-2"]));
    assert!(err.contains("--style-layers[0].weight"), "{err}");
}

#[test]
fn help_shows_the_engine_defaults() {
    let run = stylefarm()
        .args(["render", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&run.stdout);
    let d = RenderParams::default();
    let of = |flag: &str| -> String {
        common::flag_help(&help, flag)
            .unwrap_or_else(|| panic!("{flag} not in\n{help}"))
            .to_owned()
    };
    for (flag, default) in [
        ("--size", d.size.to_string()),
        ("--iterations", d.iterations.to_string()),
        ("--optimizer", "lbfgs".to_owned()),
        ("--seed", d.seed.to_string()),
        ("--init", "content".to_owned()),
        ("--content-weight", d.content_weight.to_string()),
        ("--style-weight", d.style_weight.to_string()),
        ("--tv-weight", d.tv_weight.to_string()),
        ("--style-scale", d.style_scale.to_string()),
        ("--pooling", "max".to_owned()),
        ("--bit-depth", d.output_bit_depth.to_string()),
    ] {
        let text = of(flag);
        assert!(
            text.contains(&format!("[default: {default}]")),
            "{flag}: {text}"
        );
    }
    let lr = of("--learning-rate");
    assert!(
        lr.contains(&format!(
            "{} for L-BFGS, {DEFAULT_ADAM_LR} for Adam",
            d.learning_rate
        )),
        "{lr}"
    );
}

#[test]
fn each_cause_is_printed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nonexistent.jpg");
    let missing = missing.to_str().expect("utf-8");
    let no_weights = dir.path().join("missing.safetensors");
    let no_weights = no_weights.to_str().expect("utf-8");
    // Real weights, so that the missing content is what fails.
    let real = weights();
    let real = real.to_str().expect("utf-8");
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "render",
            "--content",
            missing,
            "--style",
            missing,
            "--out",
            "o.png",
            "--weights",
            real,
        ],
        vec!["weights", "inspect", no_weights],
        vec!["run", missing, "--out", "out"],
    ];
    for args in runs {
        let run = stylefarm()
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("runs");
        assert!(!run.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&run.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
        let parts: Vec<&str> = line.split(": ").collect();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                !parts[i + 1..].contains(p),
                "{args:?}: {p:?} is printed twice in {line}"
            );
        }
        assert!(
            line.contains("No such file or directory"),
            "{args:?}: {line}"
        );
    }
}

/// A render whose memory estimate is over its budget stops before any image is
/// decoded, with the estimate, its largest parts and the budget in the message.
#[test]
fn a_render_over_its_memory_budget_stops_before_decoding_with_the_estimate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o.png");
    let run = |extra: &[&str]| {
        let run = tubingen_starry(&out)
            .args(["--quiet", "--iterations", "1"])
            .args(extra)
            .output()
            .expect("runs");
        (
            run.status.code(),
            String::from_utf8_lossy(&run.stderr).into_owned(),
        )
    };
    // The bomb: an 8192 px render whose style is resized to 65536 px.
    let (code, err) = run(&[
        "--size",
        "8192",
        "--style-scale",
        "8",
        "--max-job-memory",
        "16GiB",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("needs about") && err.contains("over the 16.00 GiB one job may take"),
        "{err}"
    );
    assert!(err.contains("(--max-job-memory)"), "{err}");
    let needs: f64 = err
        .split("needs about ")
        .nth(1)
        .and_then(|r| r.split(" GiB").next())
        .and_then(|n| n.parse().ok())
        .expect("the estimate in GiB");
    assert!(
        needs > 50.0,
        "the 65536 px style alone is about 51 GB: {err}"
    );
    // An ordinary size under a budget too small for it.
    let (code, err) = run(&["--size", "512", "--max-job-memory", "600M"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("over the 0.59 GiB"), "{err}");
    assert!(!out.exists());
    // And the same render within a budget that fits it.
    let (code, err) = run(&["--size", "64", "--max-job-memory", "2G"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.exists());
}

/// The estimate a worker decides with, against what the render really held: the
/// sidecar's estimate and the process's peak resident memory at three sizes (one
/// `render` process each, so the peak is that render's), each at one scale (a schedule's
/// peak is at its last) with an L-BFGS history that fills up.
#[test]
fn the_memory_estimate_is_within_a_quarter_of_the_measured_peak_at_three_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = Vec::new();
    for size in ["256", "512", "768"] {
        let out = dir.path().join(format!("o{size}.png"));
        let run = tubingen_starry(&out)
            .args(["--quiet", "--threads", "2", "--size", size])
            .args([
                "--scales",
                size,
                "--iterations",
                "6",
                "--lbfgs-history",
                "4",
            ])
            .output()
            .expect("runs");
        assert!(
            run.status.success(),
            "{size}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let sidecar: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("o{size}.png.json"))).expect("sidecar"),
        )
        .expect("json");
        let mib = |v: &serde_json::Value| v.as_f64().expect("bytes") / f64::from(1 << 20);
        let estimate = mib(&sidecar["memory"]["estimate_bytes"]);
        let peak = mib(&sidecar["memory"]["peak_rss_bytes"]);
        let ratio = estimate / peak;
        report.push(format!(
            "{size} px: estimate {estimate:.0} MiB, peak {peak:.0} MiB, ratio {ratio:.2}"
        ));
        println!("{}", report[report.len() - 1]);
        assert!(
            (0.75..=1.25).contains(&ratio),
            "the estimate is off by more than 25%: {report:?}"
        );
    }
}

#[test]
fn an_openexr_plate_is_read_as_linear_light_and_the_sidecar_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fixture photo decoded to linear light, as a half-float-free 32-bit EXR plate.
    let photo = image::open(shared().join("fixtures/content/tubingen.jpg"))
        .expect("fixture")
        .resize(96, 96, image::imageops::FilterType::Triangle)
        .into_rgb32f();
    let linear = image::Rgb32FImage::from_fn(photo.width(), photo.height(), |x, y| {
        image::Rgb(photo.get_pixel(x, y).0.map(|v| {
            if v <= 0.04045 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        }))
    });
    let plate = dir.path().join("plate.1001.exr");
    image::DynamicImage::ImageRgb32F(linear)
        .save_with_format(&plate, image::ImageFormat::OpenExr)
        .expect("write the plate");
    let out = dir.path().join("plate.png");
    let run = stylefarm()
        .args([
            "render",
            "--quiet",
            "--size",
            "64",
            "--iterations",
            "3",
            "--threads",
            "2",
        ])
        .arg("--content")
        .arg(&plate)
        .arg("--style")
        .arg(shared().join("fixtures/styles/starry_night.jpg"))
        .arg("--out")
        .arg(&out)
        .env("STYLEFARM_WEIGHTS", weights())
        .output()
        .expect("runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("plate.png.json")).expect("sidecar"))
            .expect("json");
    assert_eq!(sidecar["content"]["transfer"], "linear");
    assert_eq!(sidecar["styles"][0]["transfer"], "srgb");
    assert_eq!(sidecar["params"]["input_transfer"], "auto");
}

#[test]
fn a_plate_with_alpha_renders_to_a_half_float_exr_with_that_alpha_or_to_a_jpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fixture photo with its right third cleared and a soft edge before it.
    let photo = image::open(shared().join("fixtures/content/tubingen.jpg"))
        .expect("fixture")
        .resize_exact(96, 64, image::imageops::FilterType::Triangle)
        .into_rgb32f();
    let coverage = |x: u32| ((64.0 - x as f32) / 8.0).clamp(0.0, 1.0);
    let rgba = image::Rgba32FImage::from_fn(96, 64, |x, y| {
        let p = photo.get_pixel(x, y).0;
        image::Rgba([p[0], p[1], p[2], coverage(x)])
    });
    let plate = dir.path().join("matte.png");
    image::DynamicImage::ImageRgba32F(rgba)
        .into_rgba16()
        .save(&plate)
        .expect("write the plate");
    let render = |out: &std::path::Path, extra: &[&str]| {
        stylefarm()
            .args([
                "render",
                "--quiet",
                "--size",
                "96",
                "--iterations",
                "3",
                "--threads",
                "2",
            ])
            .args(extra)
            .arg("--content")
            .arg(&plate)
            .arg("--style")
            .arg(shared().join("fixtures/styles/starry_night.jpg"))
            .arg("--out")
            .arg(out)
            .env("STYLEFARM_WEIGHTS", weights())
            .output()
            .expect("runs")
    };
    let exr = dir.path().join("matte.exr");
    let run = render(&exr, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let meta = exr::meta::MetaData::read_from_file(&exr, true).expect("an OpenEXR file");
    let names: Vec<String> = meta.headers[0]
        .channels
        .list
        .iter()
        .map(|c| format!("{}:{:?}", c.name, c.sample_type))
        .collect();
    assert_eq!(
        names,
        ["A:F16", "B:F16", "G:F16", "R:F16"],
        "half-float RGBA"
    );
    let out = image::open(&exr).expect("decodes").into_rgba32f();
    assert_eq!(out.dimensions(), (96, 64));
    for x in [0, 30, 60, 62, 70, 95] {
        let p = out.get_pixel(x, 32).0;
        assert!(
            (p[3] - coverage(x)).abs() < 0.02,
            "alpha at x={x}: {} for the plate's {}",
            p[3],
            coverage(x)
        );
        assert!(
            p[..3].iter().all(|c| *c <= p[3] + 1e-3),
            "premultiplied at x={x}: {p:?}"
        );
    }
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("matte.exr.json")).expect("sidecar"))
            .expect("json");
    assert_eq!(sidecar["params"]["output_format"], "exr");
    assert_eq!(sidecar["alpha"], true);

    let jpg = dir.path().join("matte.jpg");
    let run = render(&jpg, &["--format", "jpg"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        image::ImageReader::open(&jpg)
            .expect("open")
            .with_guessed_format()
            .expect("read")
            .format(),
        Some(image::ImageFormat::Jpeg)
    );
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("matte.jpg.json")).expect("sidecar"))
            .expect("json");
    assert_eq!(sidecar["alpha"], false, "JPEG holds no alpha");

    let mismatched = render(&dir.path().join("x.png"), &["--format", "exr"]);
    assert!(!mismatched.status.success());
    let err = String::from_utf8_lossy(&mismatched.stderr);
    assert!(err.contains("is a .png file but --format is exr"), "{err}");
    let deep_jpeg = render(&dir.path().join("x.jpg"), &["--bit-depth", "16"]);
    let err = String::from_utf8_lossy(&deep_jpeg.stderr);
    assert!(err.contains("--bit-depth") && err.contains("png"), "{err}");
}

#[test]
fn a_render_over_its_memory_budget_runs_in_the_largest_tiles_that_fit_and_within_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tiled.png");
    let budget = 1200u64 << 20;
    let run = tubingen_starry(&out)
        .args(["--threads", "2", "--size", "1024", "--scales", "1024"])
        .args(["--iterations", "6", "--lbfgs-history", "4"])
        .arg("--max-job-memory")
        .arg(budget.to_string())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tiled.png.json")).expect("sidecar"))
            .expect("json");
    let tile = sidecar["params"]["tile"].as_u64().expect("params.tile");
    assert!(
        (128..1024).contains(&tile) && tile.is_multiple_of(64),
        "{tile}"
    );
    assert!(
        stderr.contains(&format!("tiles: scales above {tile} px")),
        "{stderr}"
    );
    assert!(sidecar["schedule"][0]["tiles"].as_u64().expect("tiles") >= 4);
    let bytes = |v: &serde_json::Value| v.as_u64().expect("bytes");
    let (estimate, peak) = (
        bytes(&sidecar["memory"]["estimate_bytes"]),
        bytes(&sidecar["memory"]["peak_rss_bytes"]),
    );
    let ratio = estimate as f64 / peak as f64;
    println!("{tile} px tiles: estimate {estimate}, peak {peak}, ratio {ratio:.2}");
    assert!(estimate <= budget, "{estimate} over {budget}");
    assert!((0.75..=1.25).contains(&ratio), "{estimate} vs {peak}");
    let image = image::open(&out).expect("output");
    assert_eq!((image.width(), image.height()), (1024, 768));

    // What cannot fit even in the smallest tiles is refused before anything is decoded.
    let run = tubingen_starry(&dir.path().join("never.png"))
        .args(["--quiet", "--size", "1024", "--max-job-memory", "600MiB"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    // At 1024 px the smallest tile is 128 px (at most 8 tiles across).
    assert!(stderr.contains("even in 128 px tiles"), "{stderr}");
}
