//! `make bench-worker`: how long the worker leaves its device idle between consecutive
//! jobs, as a share of the time it spends rendering them.
//!
//! A real coordinator process, a real S3 server (Garage) and one `stylefarm-worker`
//! process on the CPU run a batch of small jobs (tubingen x starry night with the real
//! partial VGG19 weights). Each sidecar records when its engine started and finished;
//! idle time is the sum of the gaps from one job's finish to the next one's start.
//! Two runs in the same process: prefetching off (the reference: lease, download,
//! render, publish, report, one after the other) and on (the default: the next job is
//! leased and its inputs fetched while the current one renders, and publishing runs
//! beside the next render). STYLEFARM_BENCH_JOBS (default 10), STYLEFARM_BENCH_SIZE
//! (default 128 px) and STYLEFARM_BENCH_ITERATIONS (default 40) size the jobs.

use stylefarm_worker_testkit as common;

use std::process::Command;
use std::time::{Duration, Instant};

use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_storage::{ObjectUrl, Storage};
use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::process::{workspace_bin, CoordinatorProc, Proc};

/// Any object a test reads back.
const ANY: stylefarm_storage::Limit = stylefarm_storage::Limit::new("a test object", 1 << 30);

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    label: &'static str,
    render_s: f64,
    idle_s: f64,
    wall_s: f64,
}

#[tokio::main]
async fn main() {
    let jobs = env_u32("STYLEFARM_BENCH_JOBS", 10);
    let size = env_u32("STYLEFARM_BENCH_SIZE", 128);
    let iterations = env_u32("STYLEFARM_BENCH_ITERATIONS", 40);
    let dir = tempfile::tempdir().expect("tempdir");
    let garage = Garage::start();
    let storage = Storage::new(garage.options(Duration::from_secs(60)));
    let root = garage.root("bench");
    let coordinator = CoordinatorProc::start(
        &workspace_bin("stylefarm-coordinator"),
        &dir.path().join("coordinator.db"),
        &[],
    );
    let weights = common::real_weights();
    let mut inputs = Vec::new();
    for f in ["content/tubingen.jpg", "styles/starry_night.jpg"] {
        let bytes = std::fs::read(common::fixture(f)).expect("fixture");
        let (r, _) = storage.put_input(&root, bytes).await.expect("upload");
        inputs.push(v1::ObjectRef::from(&r));
    }
    println!(
        "{jobs} jobs of {iterations} iterations at {size} px, one worker on the CPU, Garage on loopback"
    );
    let mut runs = Vec::new();
    for (label, flag) in [("prefetch off", "--no-prefetch"), ("prefetch on", "")] {
        let spec = |i: u32| {
            common::wire_spec(
                &format!("{}-{i:02}", label.replace(' ', "-")),
                &inputs[0],
                &inputs[1],
                &weights.sha256,
                size,
                iterations,
            )
        };
        let batch = submit(&coordinator, label, (0..jobs).map(spec).collect()).await;
        let started = Instant::now();
        let mut worker = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_stylefarm-worker"))
                .args(coordinator.client_flags("worker"))
                .args(["--storage", &root.to_string()])
                .arg("--weights")
                .arg(&weights.path)
                .args(["--device", "cpu", "--name", "bench"])
                .args([
                    "--s3-endpoint",
                    &garage.endpoint,
                    "--s3-region",
                    "garage",
                    "--s3-path-style",
                ])
                .args([
                    "--s3-access-key",
                    &garage.access_key,
                    "--s3-secret-key",
                    &garage.secret_key,
                ])
                .args(Some(flag).filter(|f| !f.is_empty()))
                .env("RUST_LOG", "warn"),
        );
        let done = wait(&coordinator, &batch).await;
        let wall_s = started.elapsed().as_secs_f64();
        worker.signal("TERM");
        let _ = worker.wait();
        runs.push(measure(label, &storage, &root, &done, wall_s).await);
    }
    println!("\n| run | render s | idle s | idle / render | batch wall s |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &runs {
        println!(
            "| {} | {:.2} | {:.3} | {:.1}% | {:.2} |",
            r.label,
            r.render_s,
            r.idle_s,
            100.0 * r.idle_s / r.render_s,
            r.wall_s
        );
    }
    let (off, on) = (&runs[0], &runs[1]);
    println!(
        "\nidle time with prefetch is {:.2}x that without (per gap: {:.1} ms vs {:.1} ms)",
        on.idle_s / off.idle_s,
        1e3 * on.idle_s / f64::from(jobs - 1),
        1e3 * off.idle_s / f64::from(jobs - 1),
    );
}

async fn submit(c: &CoordinatorProc, name: &str, jobs: Vec<v1::JobSpec>) -> String {
    let mut client = StyleFarmClient::new(c.auth("admin").connect(&c.grpc).await.expect("connect"));
    let req = v1::SubmitBatchRequest {
        name: name.into(),
        client_token: name.into(),
        priority: 0,
        max_attempts: 0,
        jobs,
    };
    client
        .submit_batch(req)
        .await
        .expect("submit")
        .into_inner()
        .batch_id
}

async fn wait(c: &CoordinatorProc, batch: &str) -> Vec<v1::JobStatus> {
    let mut client = StyleFarmClient::new(c.auth("admin").connect(&c.grpc).await.expect("connect"));
    loop {
        let b = stylefarm_testkit::farm::whole_batch(&mut client, batch).await;
        let states: Vec<_> = b.jobs.iter().map(|j| j.state).collect();
        assert!(
            !states.contains(&(v1::JobState::Failed as i32)),
            "a job failed: {:#?}",
            b.jobs
        );
        if states.iter().all(|s| *s == v1::JobState::Succeeded as i32) {
            return b.jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(
    label: &'static str,
    storage: &Storage,
    root: &ObjectUrl,
    jobs: &[v1::JobStatus],
    wall_s: f64,
) -> Run {
    let mut spans = Vec::new();
    for j in jobs {
        let bytes = storage
            .get(&root.join(&j.sidecar_key).expect("key"), &ANY)
            .await
            .expect("sidecar");
        let s: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let t = &s["timings"];
        let at = |k: &str| t[k].as_f64().expect("timestamp");
        spans.push((at("started_unix_s"), at("finished_unix_s")));
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let render_s: f64 = spans.iter().map(|(a, b)| b - a).sum();
    let idle_s: f64 = spans.windows(2).map(|w| (w[1].0 - w[0].1).max(0.0)).sum();
    Run {
        label,
        render_s,
        idle_s,
        wall_s,
    }
}
