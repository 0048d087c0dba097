//! `make demo` as a new user runs it: nothing beside the checkout (no ../shared), the
//! example's own images, and weights from the cache or nowhere. (CI runs this in a
//! fresh clone; the binaries are the ones this test was built with.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stylefarm_testkit::process::{output_within, workspace_bin};

mod common;

use common::text;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// `make demo-run` (the demo's recipe after its build) with ../shared hidden and the
/// weights cache under `cache`.
fn demo(cache: &Path, out: &Path, extra: &[&str]) -> Output {
    let bin = workspace_bin("stylefarm");
    let mut make = Command::new("make");
    make.current_dir(repo())
        .args(["--no-print-directory", "demo-run", "SHARED=/nonexistent"])
        .arg(format!("BIN={}", bin.parent().expect("bin dir").display()))
        .arg(format!("DEMO_OUT={}", out.display()))
        .args(extra)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("STYLEFARM_WEIGHTS")
        .env_remove("STYLEFARM_SHARED")
        // Not part of an outer make (`make test`): its flags and jobserver stay there.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    output_within(&mut make, Duration::from_secs(900))
}

#[test]
fn make_demo_runs_from_the_checkout_alone_and_says_how_to_get_weights_without_a_network() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Nothing anywhere and no network: it stops within seconds and says what to do.
    let empty = dir.path().join("empty-cache");
    let started = Instant::now();
    let o = demo(
        &empty,
        &dir.path().join("none"),
        &["WEIGHTS_URL=http://127.0.0.1:1/models/vgg19-dcbb9e9d.pth"],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let all = text(&o);
    assert!(
        all.contains("downloading torchvision's VGG19")
            && all.contains("cannot download http://127.0.0.1:1/models/vgg19-dcbb9e9d.pth")
            && all.contains("stylefarm weights fetch vgg19 --from FILE")
            && all.contains("set STYLEFARM_WEIGHTS=FILE"),
        "{all}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(!dir.path().join("none").exists(), "nothing rendered");

    // The weights cache holds the partial VGG19 (as a user's `weights fetch` would have
    // left a file there): the demo renders every job of examples/demo.yaml.
    let cache = dir.path().join("cache");
    let weights = cache.join("stylefarm/weights");
    std::fs::create_dir_all(&weights).expect("cache");
    std::fs::copy(common::weights(), weights.join("vgg19-partial.safetensors")).expect("copy");
    let out = dir.path().join("demo-out");
    let o = demo(&cache, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let names = [
        "tubingen-starry_night",
        "chelsea_the_scream-style_weight3",
        "chelsea_the_scream-style_weight30",
    ];
    for n in names {
        let img = image::open(out.join(format!("{n}.png"))).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(img.width().max(img.height()), 256, "{n}");
        assert!(out.join(format!("{n}.json")).is_file(), "{n}");
        assert!(out.join(format!("{n}.loss.svg")).is_file(), "{n}");
    }
    let pngs = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    assert_eq!(pngs, 6, "five results and the contact sheet");
    // Each result took on its style: the style loss fell at least tenfold (a run that
    // diverged and stalled keeps most of it and looks like its photo).
    for e in std::fs::read_dir(&out).expect("out").filter_map(Result::ok) {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("sidecar")).expect("JSON");
        let first = s["loss_curve"][0]["style"]
            .as_f64()
            .expect("first style loss");
        let last = s["final_losses"]["style"]
            .as_f64()
            .expect("final style loss");
        assert!(
            first / last >= 10.0,
            "{}: style loss only {first:.3e} -> {last:.3e}",
            p.display()
        );
    }
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("tubingen-starry_night.json")).expect("sidecar"),
    )
    .expect("JSON");
    assert!(
        sidecar["content"]["label"]
            .as_str()
            .is_some_and(|l| l.ends_with("examples/images/tubingen.jpg")),
        "{}",
        sidecar["content"]
    );
    // The demo names no layers: with the partial file (conv1_1..conv3_4) it used the
    // standard ones that file holds, and the sidecar says which.
    let names = |field: &str| -> Vec<String> {
        sidecar["params"][field]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["layer"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names("content_layers"), ["relu3_2"]);
    assert_eq!(names("style_layers"), ["relu1_1", "relu2_1", "relu3_1"]);
}
