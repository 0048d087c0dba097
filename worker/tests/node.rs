//! The worker node as a real process, against a coordinator serving on port 0 and a
//! real S3 server (Garage): jobs complete with their outputs in the bucket, a corrupt
//! input fails only its job, SIGTERM drains.

use stylefarm_worker_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use stylefarm_core::layout::{AttemptProgress, View};
use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use stylefarm_storage::{ObjectUrl, Storage};
use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::process::{workspace_bin, CoordinatorProc, Proc};
use stylefarm_weights::{Architecture, Convention, WeightsInfo};
use tokio_stream::StreamExt;

/// Any object a test reads back.
const ANY: stylefarm_storage::Limit = stylefarm_storage::Limit::new("a test object", 1 << 30);

type Worker = Proc;

struct Farm {
    garage: Garage,
    coordinator: CoordinatorProc,
    storage: Storage,
    weights: WeightsInfo,
    _dir: tempfile::TempDir,
}

impl Farm {
    async fn start(lease_ms: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let garage = Garage::start();
        let coordinator = CoordinatorProc::start(
            &workspace_bin("stylefarm-coordinator"),
            &dir.path().join("coordinator.db"),
            &["--lease-ms", &lease_ms.to_string()],
        );
        let weights = common::random_weights(
            dir.path(),
            Architecture::Vgg19,
            "conv3_2",
            Some(Convention::Torchvision),
            11,
        );
        let storage = Storage::new(garage.options(Duration::from_secs(60)));
        Self {
            garage,
            coordinator,
            storage,
            weights,
            _dir: dir,
        }
    }

    fn root(&self) -> ObjectUrl {
        self.garage.root("farm")
    }

    async fn input(&self, bytes: Vec<u8>) -> v1::ObjectRef {
        let (r, _) = self
            .storage
            .put_input(&self.root(), bytes)
            .await
            .expect("upload input");
        v1::ObjectRef::from(&r)
    }

    fn worker(&self, name: &str, extra: &[&str]) -> Worker {
        Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_stylefarm-worker"))
                .args(self.coordinator.client_flags("worker"))
                .args(["--storage", &self.root().to_string()])
                .arg("--weights")
                .arg(&self.weights.path)
                .args([
                    "--name",
                    name,
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                    "--grace-ms",
                    "20000",
                ])
                .args([
                    "--s3-endpoint",
                    &self.garage.endpoint,
                    "--s3-region",
                    "garage",
                    "--s3-path-style",
                ])
                .args([
                    "--s3-access-key",
                    &self.garage.access_key,
                    "--s3-secret-key",
                    &self.garage.secret_key,
                ])
                .args(extra)
                .env("RUST_LOG", "warn"),
        )
    }

    async fn client(&self) -> StyleFarmClient<stylefarm_net::client::Channel> {
        let auth = self.coordinator.auth("admin");
        StyleFarmClient::new(auth.connect(&self.coordinator.grpc).await.expect("connect"))
    }

    /// Follows the batch until it ends; returns its jobs.
    async fn wait(&self, batch: &str, limit: Duration) -> (i32, Vec<v1::JobStatus>) {
        let mut client = self.client().await;
        let mut stream = client
            .watch_batch(v1::WatchBatchRequest {
                batch_id: batch.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let mut state = 0;
        tokio::time::timeout(limit, async {
            while let Some(ev) = stream.next().await {
                state = ev.expect("event").batch_state;
            }
        })
        .await
        .expect("the batch ends in time");
        let req = v1::GetBatchRequest {
            batch_id: batch.into(),
            include_jobs: true,
            ..Default::default()
        };
        (
            state,
            client.get_batch(req).await.expect("get").into_inner().jobs,
        )
    }
}

fn spec(
    name: &str,
    content: &v1::ObjectRef,
    style: &v1::ObjectRef,
    weights: &WeightsInfo,
    iterations: u32,
) -> v1::JobSpec {
    common::wire_spec(name, content, style, &weights.sha256, 64, iterations)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("fixture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_into_the_bucket_and_a_corrupt_input_fails_only_its_job() {
    let farm = Farm::start(10_000).await;
    let (content, style) = farm.tubingen_and_starry_night().await;
    let jpeg = read(&common::fixture("content/tubingen.jpg"));
    let corrupt = farm.input(jpeg[..jpeg.len() / 3].to_vec()).await;
    let jobs = vec![
        spec("good-a", &content, &style, &farm.weights, 12),
        spec("broken", &corrupt, &style, &farm.weights, 12),
        spec("good-b", &style, &content, &farm.weights, 12),
    ];
    let req = v1::SubmitBatchRequest {
        name: "e2e".into(),
        client_token: "e2e".into(),
        priority: 0,
        max_attempts: 0,
        jobs,
    };
    let batch = farm
        .client()
        .await
        .submit_batch(req)
        .await
        .expect("submit")
        .into_inner()
        .batch_id;

    let mut worker = farm.worker("w1", &["--checkpoint-every", "5"]);
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Failed as i32, "{jobs:#?}");
    let by_name = |n: &str| jobs.iter().find(|j| j.name == n).expect("job");
    for name in ["good-a", "good-b"] {
        let j = by_name(name);
        assert_eq!(j.state, v1::JobState::Succeeded as i32, "{j:#?}");
        let png = farm
            .storage
            .get(&farm.root().join(&j.result_key).expect("key"), &ANY)
            .await
            .expect("output in the bucket");
        let img = image::load_from_memory(&png).expect("a PNG");
        assert_eq!(img.width().max(img.height()), 64);
        let sidecar = farm
            .storage
            .get(&farm.root().join(&j.sidecar_key).expect("key"), &ANY)
            .await
            .expect("sidecar in the bucket");
        let json: serde_json::Value = serde_json::from_slice(&sidecar).expect("sidecar JSON");
        assert_eq!(json["iterations_done"], 12);
        assert!(j
            .result_key
            .contains(&format!("attempt-{:03}", j.result_attempt)));
        let prefix = j.result_key.rsplit_once('/').expect("prefix").0;
        let ck = farm
            .root()
            .join(&format!("{prefix}/checkpoint-000010.safetensors"))
            .expect("key");
        assert!(
            farm.storage.exists(&ck).await.expect("exists"),
            "checkpoints are written every 5 iterations"
        );
        // The web interface's view files: the inputs and the result small, and the
        // final progress (written after every checkpoint's, so it is the last word).
        let farm = &farm;
        let view = move |v: View| async move {
            farm.storage
                .get(&farm.root().join(&v.key(prefix)).expect("key"), &ANY)
                .await
                .unwrap_or_else(|e| panic!("{v:?} of {name}: {e}"))
        };
        for v in [
            View::Thumbnail,
            View::Preview,
            View::Content,
            View::Style(0),
        ] {
            let img = image::load_from_memory(&view(v).await).expect("a JPEG");
            assert!(
                img.width().max(img.height()) <= stylefarm_core::layout::VIEW_SIDE,
                "{v:?} of {name} is small"
            );
        }
        let progress: AttemptProgress =
            serde_json::from_slice(&view(View::Progress).await).expect("progress JSON");
        assert_eq!(
            (
                progress.iteration,
                progress.loss_curve.len(),
                progress.worker.ends_with("-w1")
            ),
            (12, 12, true),
            "{name}: {progress:?}"
        );
    }
    let broken = by_name("broken");
    assert_eq!(broken.state, v1::JobState::Failed as i32);
    assert_eq!(broken.attempt, 1, "a bad input is not retried");
    assert!(
        broken.error.contains(&corrupt.uri) || broken.error.to_lowercase().contains("corrupt"),
        "{}",
        broken.error
    );

    // SIGTERM with nothing to do: the worker stops leasing and exits 0.
    worker.signal("TERM");
    let exit = worker.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

impl Farm {
    async fn submit(&self, token: &str, jobs: Vec<v1::JobSpec>) -> String {
        self.submit_with(token, jobs, 0).await
    }

    /// Submits with `max_attempts` (0: the coordinator's default).
    async fn submit_with(&self, token: &str, jobs: Vec<v1::JobSpec>, max_attempts: u32) -> String {
        let req = v1::SubmitBatchRequest {
            name: token.into(),
            client_token: token.into(),
            priority: 0,
            max_attempts,
            jobs,
        };
        self.client()
            .await
            .submit_batch(req)
            .await
            .expect("submit")
            .into_inner()
            .batch_id
    }

    /// The two fixtures most tests render, uploaded.
    async fn tubingen_and_starry_night(&self) -> (v1::ObjectRef, v1::ObjectRef) {
        let content = read(&common::fixture("content/tubingen.jpg"));
        let style = read(&common::fixture("styles/starry_night.jpg"));
        (self.input(content).await, self.input(style).await)
    }

    /// Submits one tubingen x starry night job named `name` in a batch of its own.
    async fn one_job(&self, name: &str, iterations: u32) -> String {
        let (content, style) = self.tubingen_and_starry_night().await;
        let job = spec(name, &content, &style, &self.weights, iterations);
        self.submit(name, vec![job]).await
    }

    /// The first (or only) job of a batch as the coordinator has it now.
    async fn first_job(&self, batch: &str) -> v1::JobStatus {
        let req = v1::GetBatchRequest {
            batch_id: batch.into(),
            include_jobs: true,
            ..Default::default()
        };
        let mut jobs = self
            .client()
            .await
            .get_batch(req)
            .await
            .expect("get")
            .into_inner()
            .jobs;
        jobs.remove(0)
    }

    /// Polls the job until the coordinator has a checkpoint for it from `worker`.
    async fn wait_for_checkpoint(&self, batch: &str, worker: &str) -> v1::JobStatus {
        let start = std::time::Instant::now();
        loop {
            let job = self.first_job(batch).await;
            if !job.checkpoint_key.is_empty()
                && job.worker.ends_with(&format!("-{worker}"))
                && job.state == v1::JobState::Running as i32
            {
                return job;
            }
            assert!(
                job.state < v1::JobState::Succeeded as i32,
                "the job ended before a checkpoint from {worker} was seen: {job:#?}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no checkpoint from {worker} within 120 s: {job:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn output(&self, job: &v1::JobStatus) -> (Vec<u8>, serde_json::Value) {
        let png = self
            .storage
            .get(&self.root().join(&job.result_key).expect("key"), &ANY)
            .await
            .expect("output");
        let sidecar = self
            .storage
            .get(&self.root().join(&job.sidecar_key).expect("key"), &ANY)
            .await
            .expect("sidecar");
        (png, serde_json::from_slice(&sidecar).expect("JSON"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_resumed_from_its_checkpoint_bit_for_bit_and_sigterm_drains() {
    let farm = Farm::start(4_000).await;
    let (content, style) = farm.tubingen_and_starry_night().await;
    let its = 200;
    let args = ["--checkpoint-every", "10"];
    // 16-bit outputs: a difference under half an 8-bit grey level still shows.
    let spec = |name: &str, c: &v1::ObjectRef, s: &v1::ObjectRef, w: &WeightsInfo, n: u32| {
        let mut job = spec(name, c, s, w, n);
        if let Some(p) = job.params.as_mut() {
            p.output_bit_depth = Some(16);
        }
        job
    };

    // The reference: the same job, never interrupted.
    let reference = farm
        .submit(
            "reference",
            vec![spec("reference", &content, &style, &farm.weights, its)],
        )
        .await;
    let mut w = farm.worker("reference", &args);
    let (_, done) = farm.wait(&reference, Duration::from_secs(300)).await;
    let (reference_png, reference_sidecar) = farm.output(&done[0]).await;
    assert!(reference_sidecar.get("resumed_from").is_none());
    assert_eq!(
        image::load_from_memory(&reference_png)
            .expect("png")
            .color(),
        image::ColorType::Rgb16
    );
    let curve = |sidecar: &serde_json::Value| sidecar["loss_curve"].clone();
    assert_eq!(
        curve(&reference_sidecar).as_array().map(Vec::len),
        Some(its as usize),
        "a loss per iteration"
    );
    w.signal("TERM");
    assert!(w.wait().expect("wait").success());

    // kill -9 mid-job: after the lease expires another worker resumes from the checkpoint.
    let batch = farm
        .submit(
            "killed",
            vec![spec("killed", &content, &style, &farm.weights, its)],
        )
        .await;
    let mut a = farm.worker("a", &args);
    let seen = farm.wait_for_checkpoint(&batch, "a").await;
    a.kill9();
    let mut b = farm.worker("b", &args);
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    assert_eq!(jobs[0].attempt, 2);
    let (png, sidecar) = farm.output(&jobs[0]).await;
    let resumed = sidecar["resumed_from"]
        .as_u64()
        .expect("the second attempt resumed");
    assert!(
        resumed >= 10 && resumed % 10 == 0,
        "resumed from iteration {resumed}"
    );
    assert!(resumed >= u64::from(seen.iteration) / 10 * 10);
    assert_eq!(sidecar["iterations_done"], its);
    assert!(
        png == reference_png,
        "the resumed image equals the uninterrupted one bit for bit (16-bit PNG)"
    );
    assert_eq!(
        curve(&sidecar),
        curve(&reference_sidecar),
        "and every iteration's losses are the same numbers"
    );

    // SIGTERM mid-job: the worker checkpoints, hands the job back and exits 0; the next
    // worker resumes it, and the hand-back spent no attempt: the batch allows one
    // attempt, yet the job runs a second time and succeeds.
    let batch = farm
        .submit_with(
            "drained",
            vec![spec("drained", &content, &style, &farm.weights, its)],
            1,
        )
        .await;
    b.signal("TERM");
    assert!(b.wait().expect("wait").success());
    let c = farm.worker("c", &args);
    farm.wait_for_checkpoint(&batch, "c").await;
    c.signal("TERM");
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut c = c;
            c.wait()
        }),
    )
    .await
    .expect("drained within the grace period")
    .expect("join")
    .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let job = farm.first_job(&batch).await;
    assert_eq!(
        job.state,
        v1::JobState::Queued as i32,
        "handed back, not left to expire"
    );
    // Every attempt so far was handed back, and each gave its place back.
    assert_eq!(job.attempts_allowed, 1 + job.attempt, "{job:#?}");
    assert!(!job.checkpoint_key.is_empty());
    let mut d = farm.worker("d", &args);
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    // Handed back once or twice (b may have leased it before its own SIGTERM): each
    // later attempt of this one-attempt batch ran, and the last one made the result.
    assert!(
        jobs[0].attempt >= 2 && jobs[0].result_attempt == jobs[0].attempt,
        "{jobs:#?}"
    );
    let (png, sidecar) = farm.output(&jobs[0]).await;
    assert!(sidecar["resumed_from"].as_u64().is_some_and(|i| i > 0));
    assert!(png == reference_png);
    assert_eq!(curve(&sidecar), curve(&reference_sidecar));
    d.signal("TERM");
    assert!(d.wait().expect("wait").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_second_storage_outage_mid_job_is_ridden_out() {
    let mut farm = Farm::start(6_000).await;
    let batch = farm.one_job("outage", 300).await;
    let mut w = farm.worker("w", &["--checkpoint-every", "10"]);
    farm.wait_for_checkpoint(&batch, "w").await;
    farm.garage.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    farm.garage.resume();
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    assert_eq!(
        jobs[0].attempt, 1,
        "the lease held through the outage: heartbeats do not wait on storage"
    );
    let (_, sidecar) = farm.output(&jobs[0]).await;
    assert_eq!(sidecar["iterations_done"], 300);
    w.signal("TERM");
    assert!(w.wait().expect("wait").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_workers_late_output_never_becomes_the_result() {
    let farm = Farm::start(4_000).await;
    let batch = farm.one_job("stale", 150).await;
    let mut a = farm.worker("a", &["--checkpoint-every", "10"]);
    farm.wait_for_checkpoint(&batch, "a").await;
    // Worker a freezes (as behind a partition) past its lease; b takes the job over.
    a.signal("STOP");
    let mut b = farm.worker("b", &["--checkpoint-every", "10"]);
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32);
    let result = jobs[0].clone();
    assert_eq!(result.result_attempt, 2);
    assert!(
        result.result_key.contains("attempt-002"),
        "{}",
        result.result_key
    );
    // a wakes up: its heartbeat or completion is refused and the result stays b's.
    a.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = farm.first_job(&batch).await;
    assert_eq!(
        (after.result_key.as_str(), after.result_attempt),
        (result.result_key.as_str(), 2)
    );
    a.signal("TERM");
    b.signal("TERM");
    assert!(a.wait().expect("wait").success());
    assert!(b.wait().expect("wait").success());

    // The same through the wire, where a real worker gives up at its refused heartbeat:
    // this test is the stale worker. It leases a job, writes an output under its
    // attempt and stays silent past the lease; a worker takes the job over and
    // finishes it; then the late CompleteJob arrives and is refused.
    let late = farm.one_job("late", 20).await;
    let mut stale = WorkerServiceClient::new(
        farm.coordinator
            .auth("worker")
            .connect(&farm.coordinator.grpc)
            .await
            .expect("connect"),
    );
    let me = stale
        .register_worker(stylefarm_testkit::farm::register("stale"))
        .await
        .expect("register")
        .into_inner()
        .worker_id;
    let lease = stale
        .lease_job(v1::LeaseJobRequest {
            worker_id: me.clone(),
            wait_ms: 5_000,
        })
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("the job");
    let key = format!("{}/late.png", lease.attempt_prefix);
    farm.storage
        .put(&farm.root().join(&key).expect("key"), b"stale".to_vec())
        .await
        .expect("put");
    let mut c = farm.worker("c", &["--checkpoint-every", "10"]);
    let (state, jobs) = farm.wait(&late, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    assert_eq!(jobs[0].result_attempt, 2, "{jobs:#?}");
    let refused = stale
        .complete_job(v1::CompleteJobRequest {
            worker_id: me,
            job_id: lease.job_id.clone(),
            fencing_token: lease.fencing_token,
            result_key: key.clone(),
            sidecar_key: String::new(),
            iteration: 20,
            losses: None,
        })
        .await
        .expect_err("a late completion");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let after = farm.first_job(&late).await;
    assert_eq!(
        (after.result_key.as_str(), after.result_attempt),
        (jobs[0].result_key.as_str(), 2),
        "the late output did not become the result"
    );
    assert_ne!(after.result_key, key);
    c.signal("TERM");
    assert!(c.wait().expect("wait").success());
}

impl Farm {
    /// The batch's jobs as the coordinator has them now.
    async fn jobs(&self, batch: &str) -> Vec<v1::JobStatus> {
        let req = v1::GetBatchRequest {
            batch_id: batch.into(),
            include_jobs: true,
            ..Default::default()
        };
        let mut client = self.client().await;
        client.get_batch(req).await.expect("get").into_inner().jobs
    }

    /// Polls until `ok` holds for the batch's jobs (or panics after `limit`).
    async fn until(
        &self,
        batch: &str,
        limit: Duration,
        what: &str,
        ok: impl Fn(&[v1::JobStatus]) -> bool,
    ) -> Vec<v1::JobStatus> {
        let start = std::time::Instant::now();
        loop {
            let jobs = self.jobs(batch).await;
            if ok(&jobs) {
                return jobs;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not seen in {limit:?}: {jobs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A batch of `n` tubingen x starry night jobs.
    async fn jobs_batch(&self, token: &str, n: usize, iterations: u32) -> String {
        self.jobs_batch_with(token, n, iterations, 0).await
    }

    /// `n` jobs of `iterations` each, at most `max_attempts` attempts each.
    async fn jobs_batch_with(
        &self,
        token: &str,
        n: usize,
        iterations: u32,
        max_attempts: u32,
    ) -> String {
        let (content, style) = self.tubingen_and_starry_night().await;
        let jobs = (0..n)
            .map(|i| {
                spec(
                    &format!("{token}-{i}"),
                    &content,
                    &style,
                    &self.weights,
                    iterations,
                )
            })
            .collect();
        self.submit_with(token, jobs, max_attempts).await
    }
}

fn running(jobs: &[v1::JobStatus]) -> usize {
    jobs.iter()
        .filter(|j| j.state == v1::JobState::Running as i32)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cancel_stops_the_running_job_and_the_worker_goes_on() {
    let farm = Farm::start(5_000).await;
    // Far more iterations than the test could wait for: only a stopped engine frees
    // the (single) slot for the next batch.
    let long = farm.one_job("endless", 100_000).await;
    let mut w = farm.worker("w", &["--no-prefetch"]);
    farm.until(&long, Duration::from_secs(120), "iteration 3", |j| {
        j[0].state == v1::JobState::Running as i32 && j[0].iteration >= 3
    })
    .await;
    let mut client = farm.client().await;
    client
        .cancel_batch(v1::CancelBatchRequest {
            batch_id: long.clone(),
        })
        .await
        .expect("cancel");
    let (state, jobs) = farm.wait(&long, Duration::from_secs(60)).await;
    assert_eq!(state, v1::BatchState::Cancelled as i32, "{jobs:#?}");
    assert_eq!(jobs[0].state, v1::JobState::Cancelled as i32);
    assert!(
        jobs[0].result_key.is_empty(),
        "a cancelled job has no result"
    );

    let next = farm.one_job("after-cancel", 20).await;
    let (state, jobs) = farm.wait(&next, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    assert!(jobs[0].worker.ends_with("-w"), "{}", jobs[0].worker);
    w.signal("TERM");
    assert!(w.wait().expect("wait").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_job_is_prefetched_while_one_runs_and_handed_back_on_sigterm() {
    let farm = Farm::start(5_000).await;
    // One slot, three jobs: from half-way through a job the next is already leased
    // (and its inputs fetched), so the worker holds two at once.
    let batch = farm.jobs_batch("prefetch", 3, 60).await;
    let mut a = farm.worker("a", &["--prefetch-at", "0.5"]);
    farm.until(&batch, Duration::from_secs(120), "two jobs leased", |j| {
        running(j) == 2
    })
    .await;
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(300)).await;
    assert_eq!(state, v1::BatchState::Succeeded as i32, "{jobs:#?}");
    for j in &jobs {
        assert_eq!(j.attempt, 1, "{j:#?}");
        let (png, sidecar) = farm.output(j).await;
        assert!(image::load_from_memory(&png).is_ok());
        assert_eq!(sidecar["iterations_done"], 60);
    }
    a.signal("TERM");
    assert!(a.wait().expect("wait").success());

    // SIGTERM while a prefetched job waits: both jobs go back to the queue, the
    // running one with its checkpoint, neither spending an attempt.
    let batch = farm.jobs_batch_with("drain", 2, 100_000, 1).await;
    let mut b = farm.worker("b", &["--prefetch-at", "0", "--checkpoint-every", "5"]);
    farm.until(
        &batch,
        Duration::from_secs(120),
        "both leased, one checkpointed",
        |j| running(j) == 2 && j.iter().any(|j| !j.checkpoint_key.is_empty()),
    )
    .await;
    b.signal("TERM");
    assert!(b.wait().expect("wait").success());
    let jobs = farm.jobs(&batch).await;
    for j in &jobs {
        assert_eq!(j.state, v1::JobState::Queued as i32, "{j:#?}");
        assert_eq!((j.attempt, j.attempts_allowed), (1, 2), "{j:#?}");
    }
    assert_eq!(
        jobs.iter().filter(|j| !j.checkpoint_key.is_empty()).count(),
        1,
        "the running job kept its checkpoint: {jobs:#?}"
    );
    // One attempt allowed, and both are leased again: the hand-backs spent none.
    let mut c = farm.worker("c", &["--prefetch-at", "0"]);
    let again = farm
        .until(&batch, Duration::from_secs(120), "both leased again", |j| {
            running(j) == 2
        })
        .await;
    assert!(again.iter().all(|j| j.attempt == 2), "{again:#?}");
    c.signal("TERM");
    assert!(c.wait().expect("wait").success());
}

impl Farm {
    /// Polls the batch's first job until `ok` holds for it (at most 120 s).
    async fn until_first(
        &self,
        batch: &str,
        what: &str,
        ok: impl Fn(&v1::JobStatus) -> bool,
    ) -> v1::JobStatus {
        let start = std::time::Instant::now();
        loop {
            let job = self.first_job(batch).await;
            if ok(&job) {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{what}: not within 120 s; {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_every_time_fails_when_its_attempts_are_spent_and_the_batch_goes_on(
) {
    let farm = Farm::start(4_000).await;
    let (content, style) = farm.tubingen_and_starry_night().await;
    // The first job runs long enough to be killed in; the second is quick.
    let batch = farm
        .submit(
            "poison",
            vec![
                spec("poison", &content, &style, &farm.weights, 100_000),
                spec("fine", &content, &style, &farm.weights, 5),
            ],
        )
        .await;
    let mut ids = Vec::new();
    for name in ["k1", "k2", "k3"] {
        let mut w = farm.worker(name, &["--no-prefetch"]);
        let job = farm
            .until_first(&batch, &format!("the poison job running on {name}"), |j| {
                j.state == v1::JobState::Running as i32 && j.worker.ends_with(&format!("-{name}"))
            })
            .await;
        ids.push(job.worker.clone());
        w.kill9();
        // Until the dead worker's lease runs out the job is not free again (and a new
        // worker would take the quick job instead).
        farm.until_first(&batch, "the poison job leaves the dead worker", |j| {
            j.state != v1::JobState::Running as i32 && j.state != v1::JobState::Leased as i32
        })
        .await;
    }
    let poison = farm.first_job(&batch).await;
    assert_eq!(poison.state, v1::JobState::Failed as i32, "{poison:?}");
    assert_eq!(
        poison.error,
        format!(
            "attempts spent (3 of 3): lease expired 3 times, workers {}",
            ids.join(", ")
        )
    );
    // The rest of the batch still runs, and the failed job is never handed out again.
    let _survivor = farm.worker("survivor", &["--no-prefetch"]);
    let (state, jobs) = farm.wait(&batch, Duration::from_secs(120)).await;
    assert_eq!(state, v1::BatchState::Failed as i32);
    assert_eq!(
        jobs[1].state,
        v1::JobState::Succeeded as i32,
        "{:?}",
        jobs[1]
    );
    assert_eq!(jobs[0].attempt, 3, "the failed job was leased again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_outside_the_inputs_prefix_are_refused_and_errors_tell_no_hash() {
    let farm = Farm::start(30_000).await;
    let (content, style) = farm.tubingen_and_starry_night().await;
    // Something of the worker's own in the same bucket, outside inputs/.
    let secret = farm.root().join("secrets/s3-key").expect("key");
    farm.storage
        .put(&secret, b"hunter2".to_vec())
        .await
        .expect("put");
    let secret_sha = stylefarm_storage::sha256_hex(b"hunter2");
    let named = |uri: String| v1::ObjectRef {
        uri,
        sha256: "0".repeat(64),
        ..Default::default()
    };
    let with = |name: &str, c: v1::ObjectRef| spec(name, &c, &style, &farm.weights, 5);
    let root = farm.root().to_string();
    let batch = farm
        .submit(
            "outside",
            vec![
                with("proc", named("/proc/self/environ".into())),
                with("bucket", named(secret.to_string())),
                with(
                    "traversal",
                    named(format!("{root}/inputs/../secrets/s3-key")),
                ),
                with("mismatch", named(content.uri.clone())),
                with("fine", content.clone()),
            ],
        )
        .await;
    let _w = farm.worker("w", &[]);
    let (_, jobs) = farm.wait(&batch, Duration::from_secs(120)).await;
    let by_name: std::collections::HashMap<_, _> =
        jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    for name in ["proc", "bucket", "traversal"] {
        let j = by_name[name];
        assert_eq!(j.state, v1::JobState::Failed as i32, "{j:?}");
        assert_eq!(j.attempt, 1, "refused inputs are not retried: {j:?}");
        assert!(
            j.error
                .contains("is outside the places this worker reads inputs from")
                && j.error.contains(&format!("{root}/inputs/")),
            "{name}: {}",
            j.error
        );
    }
    let m = by_name["mismatch"];
    assert_eq!(m.state, v1::JobState::Failed as i32, "{m:?}");
    assert!(m.error.contains("does not match its sha256"), "{}", m.error);
    // The content-addressed URI names its own hash; beyond what the submitter gave, no
    // hash of anything read appears.
    for j in &jobs {
        let said = j.error.replace(&content.uri, "URI");
        assert!(
            !said.contains(&secret_sha) && !said.contains(&content.sha256),
            "a hash leaked: {}",
            j.error
        );
    }
    assert_eq!(by_name["fine"].state, v1::JobState::Succeeded as i32);
}

/// A job whose memory estimate is over the worker's budget fails at once, without a
/// retry and before any decode, saying both figures; the rest of the batch renders,
/// and the coordinator, now knowing the worker's budget, refuses the job at submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_the_workers_memory_budget_fails_at_once_and_the_batch_goes_on() {
    let farm = Farm::start(30_000).await;
    let (content, style) = farm.tubingen_and_starry_night().await;
    let mut bomb = spec("bomb", &content, &style, &farm.weights, 5);
    if let Some(p) = bomb.params.as_mut() {
        // The style resized to 65536 px: about 51 GB for it alone.
        p.size = Some(8192);
        p.style_scale = Some(8.0);
    }
    let fine = spec("fine", &content, &style, &farm.weights, 5);
    let batch = farm.submit("memory", vec![bomb.clone(), fine]).await;
    let _w = farm.worker("w", &["--max-job-memory", "3GiB"]);
    let (_, jobs) = farm.wait(&batch, Duration::from_secs(120)).await;
    let by_name: std::collections::HashMap<_, _> =
        jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let b = by_name["bomb"];
    assert_eq!(b.state, v1::JobState::Failed as i32, "{b:?}");
    assert_eq!(b.attempt, 1, "not retried: {b:?}");
    assert!(
        b.error.contains("needs about")
            && b.error
                .contains("over the 3.00 GiB one job may take on this worker (--max-job-memory)"),
        "{}",
        b.error
    );
    assert_eq!(by_name["fine"].state, v1::JobState::Succeeded as i32);

    let err = farm
        .client()
        .await
        .submit_batch(v1::SubmitBatchRequest {
            name: "again".into(),
            client_token: "again".into(),
            jobs: vec![bomb],
            ..Default::default()
        })
        .await
        .expect_err("no worker can hold it");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("no registered worker can run it")
            && err
                .message()
                .contains("where the largest takes 3.00 GiB per job"),
        "{}",
        err.message()
    );
}
