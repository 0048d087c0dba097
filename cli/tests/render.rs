//! `stylefarm render` as a user runs it: the real binary on the fixtures.

use std::process::Command;

mod common;

use common::{shared, weights};

fn stylefarm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    c.env_remove("STYLEFARM_WEIGHTS");
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
