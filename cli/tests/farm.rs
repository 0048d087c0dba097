//! The `stylefarm` binary as a user runs it against a farm: `run` (everything embedded)
//! over the fixtures with the real partial VGG19 weights, and submit, watch, status,
//! fetch, retry and cancel against a coordinator process, a worker process and a real
//! S3 server (Garage). Exit codes are checked as scripts would see them.

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::process::{output_within, workspace_bin, CoordinatorProc, Proc};

mod common;

use common::{shared, text, weights};

fn stylefarm(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    c.args(args)
        .env("STYLEFARM_SHARED", shared())
        .env("STYLEFARM_WEIGHTS", weights())
        .env_remove("STYLEFARM_COORDINATOR")
        .env_remove("STYLEFARM_STORAGE");
    c
}

/// Every command of these tests ends well within this; one that does not (a `watch`
/// whose worker died) fails the test with its output instead of hanging it.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);

fn run(c: &mut Command) -> Output {
    output_within(c, COMMAND_LIMIT)
}

/// Asserts the exit code; returns stdout.
fn expect(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn manifest(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("manifest");
    p
}

const SMALL: &str = "defaults:
  size: 64
  iterations: 15
";

/// Every fetched output is a PNG with a JSON sidecar, and the contact sheet is a PNG.
fn check_outputs(out: &Path, names: &[&str]) {
    for n in names {
        let img =
            image::open(out.join(format!("{n}.png"))).unwrap_or_else(|e| panic!("{n}.png: {e}"));
        assert_eq!(img.width().max(img.height()), 64, "{n}");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{n}.json"))).expect("sidecar"))
                .expect("sidecar is JSON");
        assert_eq!(sidecar["iterations_done"], 15, "{n}");
        // The loss plot beside it: four curves of a point per iteration.
        let svg = std::fs::read_to_string(out.join(format!("{n}.loss.svg")))
            .unwrap_or_else(|e| panic!("{n}.loss.svg: {e}"));
        assert_eq!(svg.matches("<path ").count(), 4, "{n}");
        let total = svg
            .split("<path d=\"")
            .nth(1)
            .and_then(|p| p.split('"').next());
        assert_eq!(
            total.map(|d| d.matches(['M', 'L']).count()),
            sidecar["loss_curve"].as_array().map(Vec::len),
            "{n}"
        );
        // Where the bytes are (what the contact sheet reads back) and what the manifest
        // called them.
        let content = &sidecar["content"];
        let (source, label) = (content["source"].as_str(), content["label"].as_str());
        assert!(
            source.is_some_and(|s| s.contains("inputs/sha256/")),
            "{n}: {content}"
        );
        assert!(
            label.is_some_and(|l| l.contains("/fixtures/content/")),
            "{n}: {content}"
        );
    }
    let sheet = image::open(out.join("contact-sheet.png"))
        .expect("contact sheet PNG")
        .to_rgb8();
    // The sheet's layout (cli/src/sheet.rs): rows of 192 px boxes, 12 px apart, a
    // 24 px label above and below. Each row's result, content and style boxes hold a
    // picture: many colours, none of them the grey of a picture that could not be read.
    const THUMB: u32 = 192;
    const PAD: u32 = 12;
    const LABEL: u32 = 24;
    let row_h = LABEL + THUMB + LABEL + PAD;
    assert_eq!(
        sheet.height(),
        PAD + names.len() as u32 * row_h,
        "a row per job"
    );
    for r in 0..names.len() as u32 {
        for c in 0..3 {
            let (x0, y0) = (PAD + c * (THUMB + PAD), PAD + r * row_h + LABEL);
            let mut colours = std::collections::HashSet::new();
            for y in y0..y0 + THUMB {
                for x in x0..x0 + THUMB {
                    colours.insert(sheet.get_pixel(x, y).0);
                }
            }
            assert!(
                colours.len() > 200 && !colours.contains(&[200, 200, 200]),
                "row {r} box {c}: {} colours",
                colours.len()
            );
        }
        // The row's loss sparkline, at the right end of its label.
        let top = PAD + r * row_h;
        let red = (sheet.width() - PAD - 160..sheet.width() - PAD)
            .flat_map(|x| (top..top + LABEL).map(move |y| (x, y)))
            .filter(|&(x, y)| sheet.get_pixel(x, y).0 == [200, 40, 40])
            .count();
        assert!(red >= 160, "row {r}: a sparkline of {red} pixels");
    }
}

#[test]
fn run_renders_a_manifest_in_one_process_and_a_second_run_reuses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest(
        dir.path(),
        "looks.yaml",
        &format!(
            "batch: looks\n{SMALL}wedges:
  - contents:
      - ${{STYLEFARM_SHARED}}/fixtures/content/tubingen.jpg
      - ${{STYLEFARM_SHARED}}/fixtures/content/chelsea.png
    styles:
      - ${{STYLEFARM_SHARED}}/fixtures/styles/starry_night.jpg
      - - ${{STYLEFARM_SHARED}}/fixtures/styles/the_scream.jpg
        - image: ${{STYLEFARM_SHARED}}/fixtures/styles/shipwreck.jpg
          weight: 0.5
"
        ),
    );
    let out = dir.path().join("out");
    let o = run(stylefarm(&["run", "--quiet", "--workers", "2"])
        .arg(&m)
        .arg("--out")
        .arg(&out));
    expect(&o, 0);
    let names = [
        "tubingen_starry_night",
        "tubingen_the_scream+shipwreck",
        "chelsea_starry_night",
        "chelsea_the_scream+shipwreck",
    ];
    check_outputs(&out, &names);
    let blend: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("chelsea_the_scream+shipwreck.json")).expect("sidecar"),
    )
    .expect("JSON");
    assert_eq!(blend["styles"].as_array().map(Vec::len), Some(2));
    assert_eq!(blend["styles"][1]["weight"], 0.5);

    // The same manifest again: the batch exists, nothing is rendered twice. A second
    // render would write new sidecars (their timings differ); these are the same bytes.
    let sidecars = |names: &[&str]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| std::fs::read(out.join(format!("{n}.json"))).expect("sidecar"))
            .collect()
    };
    let first = sidecars(&names);
    let again = run(stylefarm(&["run", "--quiet"])
        .arg(&m)
        .arg("--out")
        .arg(&out));
    expect(&again, 0);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("resuming batch"),
        "{}",
        text(&again)
    );
    assert!(sidecars(&names) == first, "the second run rendered again");

    // A manifest error: exit 3 with file, line and field.
    let bad = manifest(
        dir.path(),
        "bad.yaml",
        "batch: b\ndefaults:\n  size: 2\njobs: []\n",
    );
    let o = run(stylefarm(&["run"]).arg(&bad).arg("--out").arg(&out));
    expect(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yaml:3: defaults.size: 2 is outside 16..=8192"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_status_fetch_retry_and_cancel_against_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garage = Garage::start();
    let coordinator = CoordinatorProc::start(
        &workspace_bin("stylefarm-coordinator"),
        &dir.path().join("coordinator.db"),
        &[],
    );
    let storage = garage.storage_flags("farm");
    let cluster = |cmd: &str| {
        let mut c = stylefarm(&[cmd]);
        c.args(coordinator.client_flags("alice"));
        c
    };
    let mut worker = coordinator.worker("w", &weights(), &storage);

    // A studio asset already in the bucket, referenced by its s3:// URI.
    let asset = garage.root("assets").join("starry_night.jpg").expect("key");
    let store = stylefarm_storage::Storage::new(garage.options(std::time::Duration::from_secs(30)));
    let painting =
        std::fs::read(shared().join("fixtures/styles/starry_night.jpg")).expect("fixture");
    store.put(&asset, painting).await.expect("upload the asset");

    // A good batch: submitted twice it is one batch; watch exits 0 when it succeeds.
    let good = manifest(
        dir.path(),
        "good.yaml",
        &format!(
            "batch: good\n{SMALL}jobs:
  - content: ${{STYLEFARM_SHARED}}/fixtures/content/coffee.png
    style: ${{STYLEFARM_SHARED}}/fixtures/styles/the_scream.jpg
  - content: ${{STYLEFARM_SHARED}}/fixtures/content/astronaut.png
    style: {asset}
"
        ),
    );
    let id = expect(&run(cluster("submit").arg(&good).args(&storage)), 0);
    assert!(id.starts_with('b'), "{id}");
    let again = run(cluster("submit").arg(&good).args(&storage));
    assert_eq!(expect(&again, 0), id, "the same manifest is the same batch");
    assert!(String::from_utf8_lossy(&again.stderr).contains("submitted before"));
    expect(&run(cluster("watch").arg(&id)), 0);

    let status: serde_json::Value =
        serde_json::from_str(&expect(&run(cluster("status").arg(&id).arg("--json")), 0))
            .expect("JSON");
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["jobs"].as_array().map(Vec::len), Some(2));
    assert!(status["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|j| j["state"] == "succeeded"));
    // An ended job shows what it did: every iteration, not the last heartbeat's count.
    for j in status["jobs"].as_array().into_iter().flatten() {
        assert_eq!(j["iteration"], j["iterations"], "{j}");
    }
    let table = expect(&run(&mut cluster("status")), 0);
    assert!(table.contains(&id) && table.contains("good"), "{table}");

    let out = dir.path().join("fetched");
    expect(
        &run(cluster("fetch")
            .arg(&id)
            .arg("--out")
            .arg(&out)
            .args(&storage)),
        0,
    );
    check_outputs(&out, &["coffee_the_scream", "astronaut_starry_night"]);

    // A corrupt input fails its job: watch exits 4 and names the job and the file as the
    // manifest gave it (not its content-addressed copy); retry requeues it.
    let corrupt = dir.path().join("corrupt.jpg");
    let jpeg = std::fs::read(shared().join("fixtures/content/tubingen.jpg")).expect("fixture");
    std::fs::write(&corrupt, &jpeg[..jpeg.len() / 3]).expect("write");
    let bad = manifest(
        dir.path(),
        "bad.yaml",
        &format!(
            "batch: bad\n{SMALL}jobs:
  - content: corrupt.jpg
    style: ${{STYLEFARM_SHARED}}/fixtures/styles/the_scream.jpg
"
        ),
    );
    let bad_id = expect(&run(cluster("submit").arg(&bad).args(&storage)), 0);
    let o = run(cluster("watch").arg(&bad_id));
    expect(&o, 4);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let named = format!("image {} is corrupt or truncated", corrupt.display());
    assert!(
        stderr.contains("corrupt_the_scream") && stderr.contains(&named),
        "{}",
        text(&o)
    );
    let attempt = |id: &str| {
        let s: serde_json::Value =
            serde_json::from_str(&expect(&run(cluster("status").arg(id).arg("--json")), 0))
                .expect("JSON");
        (
            s["jobs"][0]["attempt"].as_u64(),
            s["jobs"][0]["state"].clone(),
        )
    };
    assert_eq!(attempt(&bad_id), (Some(1), "failed".into()));
    let o = run(cluster("retry").arg(&bad_id).arg("--failed"));
    expect(&o, 0);
    expect(&run(cluster("watch").arg(&bad_id)), 4);
    assert_eq!(
        attempt(&bad_id),
        (Some(2), "failed".into()),
        "retry ran the job again as a new attempt"
    );

    // Cancel a long batch: watch ends with exit 4, state cancelled.
    let long = manifest(
        dir.path(),
        "long.yaml",
        "batch: long\ndefaults:\n  size: 64\n  iterations: 100000\njobs:
  - content: ${STYLEFARM_SHARED}/fixtures/content/coffee.png
    style: ${STYLEFARM_SHARED}/fixtures/styles/shipwreck.jpg
",
    );
    let long_id = expect(&run(cluster("submit").arg(&long).args(&storage)), 0);
    expect(&run(cluster("cancel").arg(&long_id)), 0);
    let o = run(cluster("watch").arg(&long_id));
    expect(&o, 4);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cancelled"),
        "{}",
        text(&o)
    );

    // Nobody listening: exit 5 with the address; an invalid manifest: exit 3.
    let o = run(&mut stylefarm(&[
        "status",
        "--coordinator=http://127.0.0.1:1",
    ]));
    expect(&o, 5);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&o)
    );
    let invalid = manifest(
        dir.path(),
        "invalid.yaml",
        "batch: x\njobs:\n  - content: nowhere.png\n    style: b.png\n",
    );
    let o = run(cluster("submit").arg(&invalid).args(&storage));
    expect(&o, 3);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid.yaml:3: jobs[0].content"),
        "{}",
        text(&o)
    );

    worker.signal("TERM");
    assert!(worker.wait().expect("wait").success());
}

#[test]
fn weights_inspect_and_completions() {
    let o = run(stylefarm(&["weights", "inspect", "--json"]).arg(weights()));
    let info: serde_json::Value = serde_json::from_str(&expect(&o, 0)).expect("JSON");
    assert_eq!(info["architecture"], "vgg19");
    assert_eq!(info["convention"], "caffe");
    assert_eq!(info["sha256"].as_str().map(str::len), Some(64));
    assert!(info["layers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x == "relu3_2")));
    let o = run(&mut stylefarm(&[
        "weights",
        "inspect",
        "/nonexistent.safetensors",
    ]));
    expect(&o, 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.safetensors"));
    let script = expect(&run(&mut stylefarm(&["completions", "bash"])), 0);
    assert!(
        script.contains("stylefarm") && script.contains("submit"),
        "{script}"
    );
    expect(&run(&mut stylefarm(&["submit"])), 2);
}

#[test]
fn an_interrupted_run_checkpoints_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest(
        dir.path(),
        "long.yaml",
        "batch: long\ndefaults:\n  size: 64\n  iterations: 400\njobs:
  - content: ${STYLEFARM_SHARED}/fixtures/content/chelsea.png
    style: ${STYLEFARM_SHARED}/fixtures/styles/starry_night.jpg
",
    );
    let out = dir.path().join("out");
    let mut first = Proc::spawn(
        stylefarm(&["run", "--quiet"])
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::piped()),
    );
    // Wait for the first checkpoint (every 50 iterations) in the embedded storage.
    let store = out.join(".stylefarm/store/batches");
    let start = std::time::Instant::now();
    while !walk(&store)
        .iter()
        .any(|p| p.to_string_lossy().contains("checkpoint-"))
    {
        assert!(
            start.elapsed().as_secs() < 120,
            "no checkpoint within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    first.signal("INT");
    let o = finish(&mut first);
    assert_eq!(o.0.code(), Some(1), "{}", o.1);
    assert!(o.1.contains("interrupted"), "{}", o.1);

    let o = run(stylefarm(&["run", "--quiet"])
        .arg(&m)
        .arg("--out")
        .arg(&out));
    expect(&o, 0);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("chelsea_starry_night.json")).expect("sidecar"),
    )
    .expect("JSON");
    assert_eq!(sidecar["iterations_done"], 400);
    let resumed = sidecar["resumed_from"]
        .as_u64()
        .expect("the second run resumed");
    assert!(resumed >= 50, "resumed from {resumed}");
}

/// Every file below `dir` (none when it does not exist yet).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Waits for a child and returns its status and stderr.
/// Waits (at most [`COMMAND_LIMIT`]) for a process whose stderr is piped; returns how
/// it ended and what it wrote.
fn finish(p: &mut Proc) -> (std::process::ExitStatus, String) {
    let reader = p.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
            err
        })
    });
    let status = p.wait_within(COMMAND_LIMIT);
    let err = reader
        .map(|r| r.join().unwrap_or_default())
        .unwrap_or_default();
    (status, err)
}

/// `status`, `status --json`, `watch` and `fetch` on a batch of 100,000 jobs, one of
/// them with a 4 KiB error: every command pages through the jobs (a single answer
/// would pass tonic's 4 MiB limit) and each sees every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_and_fetch_page_through_a_100000_job_batch() {
    use stylefarm_proto::v1;
    use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
    use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;

    const JOBS: usize = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = dir.path().join("farm");
    let coordinator = CoordinatorProc::start(
        &workspace_bin("stylefarm-coordinator"),
        &dir.path().join("coordinator.db"),
        &[],
    );
    let channel = |who: &str| {
        let auth = coordinator.auth(who);
        let addr = coordinator.grpc.clone();
        async move { auth.connect(&addr).await.expect("connect") }
    };
    let mut client = StyleFarmClient::new(channel("alice").await);
    let id = client
        .submit_batch(stylefarm_testkit::farm::submit("big", 0, JOBS))
        .await
        .expect("submit 100,000 jobs")
        .into_inner()
        .batch_id;

    // A worker finishes three jobs with real files and fails one with a long error.
    let mut worker = WorkerServiceClient::new(channel("worker").await);
    let w = worker
        .register_worker(stylefarm_testkit::farm::register("w"))
        .await
        .expect("register")
        .into_inner()
        .worker_id;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 6, image::Rgb([200, 40, 40]))
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    for i in 0..4 {
        let lease = worker
            .lease_job(v1::LeaseJobRequest {
                worker_id: w.clone(),
                wait_ms: 0,
            })
            .await
            .expect("lease")
            .into_inner()
            .lease
            .expect("a job");
        if i == 3 {
            worker
                .fail_job(v1::FailJobRequest {
                    worker_id: w.clone(),
                    job_id: lease.job_id,
                    fencing_token: lease.fencing_token,
                    error: format!("first line\n{}", "x".repeat(4096)),
                    retryable: false,
                })
                .await
                .expect("fail");
            continue;
        }
        let name = lease.spec.expect("spec").name;
        let key = |ext: &str| format!("{}/{name}.{ext}", lease.attempt_prefix);
        let put = |key: &str, bytes: &[u8]| {
            let path = farm.join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        };
        put(&key("png"), png.get_ref());
        put(
            &key("json"),
            br#"{"content": {"source": "nowhere"}, "styles": []}"#,
        );
        worker
            .complete_job(v1::CompleteJobRequest {
                worker_id: w.clone(),
                job_id: lease.job_id,
                fencing_token: lease.fencing_token,
                result_key: key("png"),
                sidecar_key: key("json"),
                iteration: 20,
                losses: None,
            })
            .await
            .expect("complete");
    }
    client
        .cancel_batch(v1::CancelBatchRequest {
            batch_id: id.clone(),
        })
        .await
        .expect("cancel the rest");

    let cluster = |cmd: &str| {
        let mut c = stylefarm(&[cmd]);
        c.args(coordinator.client_flags("alice"));
        c
    };
    let table = expect(&run(cluster("status").arg(&id)), 0);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("out")).collect();
    assert_eq!(rows.len(), JOBS, "every job listed once");
    assert!(rows[JOBS - 1].starts_with("out99999"), "{}", rows[JOBS - 1]);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.contains("3 succeeded")
                && l.contains("1 failed")
                && l.contains("99996 cancelled")),
        "{}",
        table.lines().next().unwrap_or_default()
    );
    assert!(
        rows[3].contains("first line …") && !rows[3].contains("xxx"),
        "a long error is cut in the table: {}",
        rows[3]
    );

    let json: serde_json::Value =
        serde_json::from_str(&expect(&run(cluster("status").arg(&id).arg("--json")), 0))
            .expect("one JSON document");
    let jobs = json["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), JOBS);
    let error = jobs[3]["error"].as_str().expect("error");
    assert!(
        error.starts_with("first line\nxxx") && error.ends_with("more bytes not kept)"),
        "the whole error as kept: {error}"
    );
    assert_eq!(json["jobs_by_state"]["cancelled"], 99_996);

    let watched = run(cluster("watch").arg(&id));
    expect(&watched, 4);
    let err = String::from_utf8_lossy(&watched.stderr);
    assert!(
        err.contains(
            "ended failed: 3 succeeded, 1 failed, 99996 cancelled; out00003: first line …"
        ) && !err.contains("xxx"),
        "{err}"
    );

    let out = dir.path().join("out");
    let fetched = run(cluster("fetch")
        .arg(&id)
        .arg("--out")
        .arg(&out)
        .arg(format!("--storage={}", farm.display())));
    expect(&fetched, 0);
    for name in ["out00000", "out00001", "out00002"] {
        assert!(out.join(format!("{name}.png")).is_file(), "{name}");
        assert!(out.join(format!("{name}.json")).is_file(), "{name}");
    }
    assert!(out.join("contact-sheet.png").is_file());
    assert_eq!(std::fs::read_dir(&out).expect("out").count(), 7);
}

/// A chained sequence (each frame after the one before it, `chain: true`) through
/// `stylefarm run` with two workers: interrupted while its second frame runs, the next
/// run resumes that frame from its checkpoint, and every frame starts only once the one
/// before it has finished.
#[test]
fn a_chained_sequence_renders_frame_after_frame_on_two_workers_and_resumes_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    pan_plates(dir.path(), 2);
    let m = chained_shot(dir.path(), "##", false);
    let out = dir.path().join("out");
    let mut first = Proc::spawn(
        stylefarm(&["run", "--quiet", "--workers", "2"])
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::piped()),
    );
    // Interrupted once the second frame has a checkpoint.
    let store = out.join(".stylefarm/store/batches");
    let start = std::time::Instant::now();
    while !walk(&store).iter().any(|p| {
        let p = p.to_string_lossy();
        p.contains("-j000001/") && p.contains("checkpoint-")
    }) {
        assert!(
            start.elapsed().as_secs() < 300,
            "no checkpoint of the second frame within 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    first.signal("INT");
    let o = finish(&mut first);
    assert_eq!(o.0.code(), Some(1), "{}", o.1);

    let o = run(stylefarm(&["run", "--quiet", "--workers", "2"])
        .arg(&m)
        .arg("--out")
        .arg(&out));
    expect(&o, 0);
    frames_in_order(&out, 2, false);
}

/// A chained sequence on a cluster of two worker processes: the worker rendering the
/// second frame is killed (-9) after its first checkpoint; the other takes the frame over
/// from that checkpoint once the lease runs out, and the frames still come out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_sequence_on_two_workers_survives_a_killed_worker_and_keeps_its_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garage = Garage::start();
    let coordinator = CoordinatorProc::start(
        &workspace_bin("stylefarm-coordinator"),
        &dir.path().join("coordinator.db"),
        &["--lease-ms", "3000"],
    );
    let storage = garage.storage_flags("farm");
    let mut workers = [
        coordinator.worker("a", &weights(), &storage),
        coordinator.worker("b", &weights(), &storage),
    ];
    pan_plates(dir.path(), 1);
    let m = chained_shot(dir.path(), "#", true);
    let cluster = |cmd: &str| {
        let mut c = stylefarm(&[cmd]);
        c.args(coordinator.client_flags("alice"));
        c
    };
    let id = expect(&run(cluster("submit").arg(&m).args(&storage)), 0);
    let channel = coordinator
        .auth("admin")
        .connect(&coordinator.grpc)
        .await
        .expect("connect");
    let mut client = stylefarm_proto::v1::style_farm_client::StyleFarmClient::new(channel);
    // The second frame's first checkpoint, and who holds it.
    let start = std::time::Instant::now();
    let holder = loop {
        let b = stylefarm_testkit::farm::whole_batch(&mut client, &id).await;
        let second = &b.jobs[1];
        assert_eq!(
            b.jobs[2].state,
            stylefarm_proto::v1::JobState::Waiting as i32,
            "the third frame waits while the second runs: {:?}",
            b.jobs
                .iter()
                .map(|j| (&j.name, j.state, &j.error))
                .collect::<Vec<_>>()
        );
        if !second.checkpoint_key.is_empty() {
            break second.worker.clone();
        }
        assert!(start.elapsed().as_secs() < 300, "no checkpoint of frame 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim = usize::from(holder.ends_with("-b"));
    workers[victim].kill9();
    expect(&run(cluster("watch").arg(&id)), 0);
    let out = dir.path().join("fetched");
    expect(
        &run(cluster("fetch")
            .arg(&id)
            .arg("--out")
            .arg(&out)
            .args(&storage)),
        0,
    );
    frames_in_order(&out, 1, true);
}

/// Three frames of a pan across the fixture photo in `dir/plates`, numbered with
/// `digits` digits: `pan.1.png` or `pan.01.png`, ...
fn pan_plates(dir: &Path, digits: usize) {
    let photo = image::open(shared().join("fixtures/content/chelsea.png")).expect("fixture");
    std::fs::create_dir(dir.join("plates")).expect("folder");
    for f in 1..=3u32 {
        photo
            .crop_imm(f * 12, 0, 200, 150)
            .save(dir.join(format!("plates/pan.{f:0digits$}.png")))
            .expect("frame");
    }
}

/// The manifest of a chained 3-frame sequence of those plates (`pattern`: `#` or `##`),
/// each frame kept to the one before it when `temporal`.
fn chained_shot(dir: &Path, pattern: &str, temporal: bool) -> PathBuf {
    let chain = if temporal {
        "temporal: {weight: 100}"
    } else {
        "chain: true"
    };
    manifest(
        dir,
        "shot.yaml",
        &format!(
            "batch: shot\ndefaults:\n  size: 64\n  iterations: 150\njobs:
  - name: pan
    content: plates/pan.{pattern}.png
    frames: 1-3
    {chain}
    style: ${{STYLEFARM_SHARED}}/fixtures/styles/starry_night.jpg
"
        ),
    )
}

/// The three frames' outputs in `out` (named `pan.N.png`, `digits` digits): each ran
/// every iteration, the second resumed from a checkpoint, and each began only once the
/// one before it had ended; when `temporal`, each after the first was rendered against
/// the one before it (its published result, read back from storage).
fn frames_in_order(out: &Path, digits: usize, temporal: bool) {
    let frames: Vec<serde_json::Value> = (1..=3u32)
        .map(|f| {
            let name = format!("pan.{f:0digits$}");
            let img = image::open(out.join(format!("{name}.png"))).expect("output");
            assert_eq!(img.width().max(img.height()), 64);
            serde_json::from_slice(
                &std::fs::read(out.join(format!("{name}.json")))
                    .unwrap_or_else(|e| panic!("{name}.json: {e}")),
            )
            .expect("JSON")
        })
        .collect();
    for (f, s) in frames.iter().enumerate() {
        assert_eq!(s["iterations_done"], 150, "frame {}", f + 1);
        let previous = &s["previous"]["result"]["sha256"];
        let temporal_loss = s["final_losses"]["temporal"].as_f64().unwrap_or(0.0);
        if temporal && f > 0 {
            // Kept to the bytes its predecessor published.
            let before = std::fs::read(out.join(format!("pan.{f:0digits$}.png"))).expect("output");
            assert_eq!(
                previous.as_str(),
                Some(hex::encode(sha2::Sha256::digest(&before)).as_str()),
                "frame {}",
                f + 1
            );
            assert!(
                temporal_loss > 0.0,
                "frame {}: {}",
                f + 1,
                s["final_losses"]
            );
        } else {
            assert!(previous.is_null(), "frame {}: {previous}", f + 1);
            assert_eq!(temporal_loss, 0.0, "frame {}", f + 1);
        }
    }
    assert!(
        frames[1]["resumed_from"].as_u64().is_some_and(|i| i >= 50),
        "the second frame resumed from its checkpoint: {}",
        frames[1]["resumed_from"]
    );
    for f in 1..3 {
        let finished = frames[f - 1]["timings"]["finished_unix_s"]
            .as_f64()
            .expect("finished");
        let started = frames[f]["timings"]["started_unix_s"]
            .as_f64()
            .expect("started");
        assert!(
            started >= finished,
            "frame {} started at {started}, before frame {f} finished at {finished}",
            f + 1
        );
    }
}
