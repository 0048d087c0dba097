//! The services called directly, without a network: validation, idempotency, protocol
//! checks, lease expiry under paused time, long-polling, cancel, watch.

use stylefarm_testkit::farm as common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_coordinator::grpc::{ClientApi, WorkerApi};
use stylefarm_coordinator::state::State;
use stylefarm_coordinator::store::sqlite::Options;
use stylefarm_coordinator::store::SqliteStore;
use stylefarm_coordinator::Config;
use stylefarm_proto::v1::style_farm_server::StyleFarm;
use stylefarm_proto::v1::worker_service_server::WorkerService;
use stylefarm_proto::v1::{self, BatchState, JobState};
use tokio_stream::StreamExt;
use tonic::{Code, Request};

/// A request from an admin (these tests call the services directly, past the
/// interceptor that identifies callers; `tests/auth.rs` covers that part).
fn call<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.extensions_mut()
        .insert(stylefarm_coordinator::auth::Caller(std::sync::Arc::new(
            stylefarm_net::Identity {
                name: "admin".into(),
                roles: vec![stylefarm_net::Role::Admin],
                max_priority: 0,
            },
        )));
    req
}

struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<State<SqliteStore>>,
    client: ClientApi<SqliteStore>,
    worker: WorkerApi<SqliteStore>,
}

async fn harness(edit: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::local(dir.path().join("state.db"));
    edit(&mut config);
    let store = SqliteStore::open(&config.db).expect("open");
    let state = Arc::new(State::new(store, config).await.expect("state"));
    Harness {
        _dir: dir,
        client: ClientApi::new(Arc::clone(&state)),
        worker: WorkerApi::new(Arc::clone(&state)),
        state,
    }
}

impl Harness {
    async fn submit(
        &self,
        req: v1::SubmitBatchRequest,
    ) -> Result<v1::SubmitBatchResponse, tonic::Status> {
        self.client
            .submit_batch(call(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn register(&self, name: &str) -> String {
        let r = self
            .worker
            .register_worker(call(common::register(name)))
            .await
            .expect("register");
        r.into_inner().worker_id
    }

    async fn lease(&self, worker: &str, wait_ms: u32) -> Option<v1::Lease> {
        let req = v1::LeaseJobRequest {
            worker_id: worker.into(),
            wait_ms,
        };
        self.worker
            .lease_job(call(req))
            .await
            .expect("lease")
            .into_inner()
            .lease
    }

    async fn heartbeat(
        &self,
        worker: &str,
        l: &v1::Lease,
        iteration: u32,
        ck: &str,
    ) -> Result<v1::HeartbeatResponse, tonic::Status> {
        let req = v1::HeartbeatRequest {
            worker_id: worker.into(),
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            iteration,
            losses: None,
            checkpoint_key: ck.into(),
        };
        self.worker
            .heartbeat(call(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn complete(&self, worker: &str, l: &v1::Lease, key: &str) -> Result<(), tonic::Status> {
        let req = v1::CompleteJobRequest {
            worker_id: worker.into(),
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            result_key: key.into(),
            sidecar_key: String::new(),
            iteration: 0,
            losses: None,
        };
        self.worker.complete_job(call(req)).await.map(|_| ())
    }

    async fn batch(&self, id: &str) -> v1::Batch {
        let req = v1::GetBatchRequest {
            batch_id: id.into(),
            include_jobs: true,
            ..Default::default()
        };
        self.client
            .get_batch(call(req))
            .await
            .expect("get")
            .into_inner()
    }
}

fn invalid(err: tonic::Status, needles: &[&str]) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for n in needles {
        assert!(
            err.message().contains(n),
            "{:?} does not mention {n:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn bad_submissions_are_invalid_argument_naming_job_and_field() {
    let h = harness(|c| {
        c.max_jobs_per_batch = 10;
        c.max_manifest_bytes = 4000;
    })
    .await;
    invalid(
        h.submit(common::submit("t", 0, 0))
            .await
            .expect_err("empty"),
        &["jobs", "no jobs"],
    );
    invalid(
        h.submit(common::submit("t", 0, 11))
            .await
            .expect_err("too many"),
        &["jobs", "limit of 10"],
    );

    let mut dup = common::submit("t", 0, 3);
    dup.jobs[2].name = dup.jobs[0].name.clone();
    invalid(
        h.submit(dup).await.expect_err("dup"),
        &["jobs[2]", "out00000", "duplicates jobs[0]"],
    );

    let mut nan = common::submit("t", 0, 3);
    nan.jobs[1].params.as_mut().expect("params").style_weight = Some(f64::NAN);
    invalid(
        h.submit(nan).await.expect_err("nan"),
        &["jobs[1]", "out00001", "params.style_weight", "NaN"],
    );

    let mut neg = common::submit("t", 0, 2);
    neg.jobs[0].styles[0].weight = -1.0;
    invalid(
        h.submit(neg).await.expect_err("neg"),
        &["jobs[0]", "styles[0].weight"],
    );

    let mut inf = common::submit("t", 0, 2);
    inf.jobs[1].params.as_mut().expect("params").tv_weight = Some(f64::INFINITY);
    invalid(
        h.submit(inf).await.expect_err("inf"),
        &["jobs[1]", "params.tv_weight", "inf"],
    );

    let mut big = common::submit("t", 0, 2);
    big.jobs[0].params.as_mut().expect("params").size = Some(100_000);
    invalid(
        h.submit(big).await.expect_err("size"),
        &["jobs[0]", "params.size", "8192"],
    );

    let mut its = common::submit("t", 0, 2);
    its.jobs[0].params.as_mut().expect("params").iterations = Some(0);
    invalid(
        h.submit(its).await.expect_err("iterations"),
        &["params.iterations"],
    );

    let mut no_content = common::submit("t", 0, 2);
    no_content.jobs[1].content = None;
    invalid(
        h.submit(no_content).await.expect_err("missing"),
        &["jobs[1]", "content", "missing"],
    );

    let mut unknown = common::submit("t", 0, 1);
    unknown.jobs[0].params.as_mut().expect("params").optimizer = 42;
    invalid(
        h.submit(unknown).await.expect_err("enum"),
        &["params.optimizer", "42"],
    );

    let mut oversize = common::submit("t", 0, 10);
    oversize.name = "x".repeat(150);
    for j in &mut oversize.jobs {
        j.content.as_mut().expect("content").uri = format!("s3://inputs/{}", "k".repeat(400));
    }
    invalid(
        h.submit(oversize).await.expect_err("oversize"),
        &["manifest", "4000-byte limit"],
    );

    // Nothing was stored by any of them.
    let list = h
        .client
        .list_batches(call(v1::ListBatchesRequest::default()))
        .await
        .expect("list");
    assert!(list.into_inner().batches.is_empty());
}

#[tokio::test]
async fn batches_are_listed_by_state_however_far_back_they_are() {
    let h = harness(|_| {}).await;
    let oldest = h
        .submit(common::submit("a", 0, 1))
        .await
        .expect("submit")
        .batch_id;
    for token in ["b", "c"] {
        h.submit(common::submit(token, 0, 1)).await.expect("submit");
    }
    h.client
        .cancel_batch(call(v1::CancelBatchRequest {
            batch_id: oldest.clone(),
        }))
        .await
        .expect("cancel");
    let list = |limit, state: BatchState| {
        h.client.list_batches(call(v1::ListBatchesRequest {
            limit,
            state: state as i32,
        }))
    };
    let cancelled = list(1, BatchState::Cancelled)
        .await
        .expect("list")
        .into_inner()
        .batches;
    assert_eq!(
        cancelled.iter().map(|b| &b.batch_id).collect::<Vec<_>>(),
        [&oldest],
        "found behind two newer batches in other states"
    );
    let count = |r: Result<tonic::Response<v1::ListBatchesResponse>, tonic::Status>| {
        r.expect("list").into_inner().batches.len()
    };
    assert_eq!(count(list(10, BatchState::Queued).await), 2);
    assert_eq!(count(list(1, BatchState::Queued).await), 1);
    assert_eq!(count(list(10, BatchState::Failed).await), 0);
    assert_eq!(count(list(10, BatchState::Unspecified).await), 3);
    let bad = h
        .client
        .list_batches(call(v1::ListBatchesRequest {
            limit: 1,
            state: 42,
        }))
        .await
        .expect_err("no such state");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("state"), "{}", bad.message());
}

#[tokio::test]
async fn submit_is_idempotent_per_token() {
    let h = harness(|_| {}).await;
    let a = h.submit(common::submit("tok", 0, 3)).await.expect("submit");
    let b = h.submit(common::submit("tok", 0, 3)).await.expect("again");
    assert!(!a.existing && b.existing);
    assert_eq!(a.batch_id, b.batch_id);
    let changed = h
        .submit(common::submit("tok", 0, 4))
        .await
        .expect_err("reused token");
    assert_eq!(changed.code(), Code::AlreadyExists, "{changed:?}");
    assert!(changed.message().contains(&a.batch_id));
    assert_eq!(h.batch(&a.batch_id).await.jobs.len(), 3);
}

#[tokio::test]
async fn a_batch_is_queued_until_a_job_is_leased() {
    let h = harness(|_| {}).await;
    let id = h
        .submit(common::submit("q", 0, 2))
        .await
        .expect("submit")
        .batch_id;
    assert_eq!(h.batch(&id).await.state, BatchState::Queued as i32);
    let w = h.register("w").await;
    h.lease(&w, 0).await.expect("job");
    assert_eq!(h.batch(&id).await.state, BatchState::Running as i32);
}

#[tokio::test]
async fn protocol_mismatch_and_unknown_workers_are_refused() {
    let h = harness(|_| {}).await;
    let mut old = common::register("w");
    old.protocol_version = stylefarm_proto::PROTOCOL_VERSION + 1;
    let err = h
        .worker
        .register_worker(call(old))
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let (ours, theirs) = (
        stylefarm_proto::PROTOCOL_VERSION.to_string(),
        (stylefarm_proto::PROTOCOL_VERSION + 1).to_string(),
    );
    assert!(
        err.message().contains(&ours) && err.message().contains(&theirs),
        "{}",
        err.message()
    );

    let mut no_slots = common::register("w");
    no_slots.slots = 0;
    invalid(
        h.worker
            .register_worker(call(no_slots))
            .await
            .expect_err("slots"),
        &["slots"],
    );

    let req = v1::LeaseJobRequest {
        worker_id: "w999-ghost".into(),
        wait_ms: 0,
    };
    let err = h.worker.lease_job(call(req)).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("register again"));
}

#[tokio::test]
async fn an_expired_lease_requeues_with_its_checkpoint_and_the_old_token_is_fenced() {
    let h = harness(|c| c.lease_ms = 10_000).await;
    tokio::time::pause();
    let batch = h
        .submit(common::submit("t", 0, 1))
        .await
        .expect("submit")
        .batch_id;
    let (w1, w2) = (h.register("one").await, h.register("two").await);
    let first = h.lease(&w1, 0).await.expect("a job");
    assert_eq!(first.attempt, 1);
    assert!(first.checkpoint_key.is_empty());
    assert!(
        first.attempt_prefix.contains(&first.job_id)
            && first.attempt_prefix.ends_with("attempt-001")
    );
    assert_eq!(
        first.spec.as_ref().expect("spec").output_key,
        format!("batches/{batch}/outputs/out00000.png")
    );
    h.heartbeat(&w1, &first, 7, &format!("{}/ck/7", first.attempt_prefix))
        .await
        .expect("heartbeat");

    tokio::time::advance(Duration::from_millis(9_000)).await;
    assert_eq!(
        h.state.expire_once().await.expect("expire"),
        0,
        "heartbeat extended the lease"
    );
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert_eq!(h.state.expire_once().await.expect("expire"), 1);

    let second = h.lease(&w2, 0).await.expect("requeued job");
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.checkpoint_key,
        format!("{}/ck/7", first.attempt_prefix)
    );
    let stale = h
        .heartbeat(&w1, &first, 8, "")
        .await
        .expect_err("stale heartbeat");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let stale = h
        .complete(&w1, &first, "late.png")
        .await
        .expect_err("stale complete");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("stale"));
    h.complete(&w2, &second, &format!("{}/out.png", second.attempt_prefix))
        .await
        .expect("complete");
    let job = &h.batch(&batch).await.jobs[0];
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.result_attempt, 2);
    assert!(job.result_key.ends_with("attempt-002/out.png"));
}

#[tokio::test]
async fn a_long_poll_wakes_when_work_arrives() {
    let h = Arc::new(harness(|_| {}).await);
    let w = h.register("poller").await;
    let waiting = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.lease(&w, 20_000).await })
    };
    tokio::task::yield_now().await;
    h.submit(common::submit("t", 0, 1)).await.expect("submit");
    let lease = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the long poll returned before its 20 s wait")
        .expect("task");
    assert!(lease.is_some(), "the waiting worker got the new job");
}

#[tokio::test]
async fn cancel_reaches_the_running_worker_and_watch_ends_with_the_batch() {
    let h = harness(|_| {}).await;
    let batch = h
        .submit(common::submit("t", 0, 2))
        .await
        .expect("submit")
        .batch_id;
    let w = h.register("w").await;
    let watch = h
        .client
        .watch_batch(call(v1::WatchBatchRequest {
            batch_id: batch.clone(),
        }))
        .await
        .expect("watch");
    let mut events = watch.into_inner();
    let l = h.lease(&w, 0).await.expect("job");
    assert!(!h.heartbeat(&w, &l, 3, "").await.expect("hb").cancelled);
    let cancelled = h
        .client
        .cancel_batch(call(v1::CancelBatchRequest {
            batch_id: batch.clone(),
        }))
        .await
        .expect("cancel");
    assert_eq!(cancelled.into_inner().state, BatchState::Cancelled as i32);
    assert!(
        h.heartbeat(&w, &l, 4, "").await.expect("hb").cancelled,
        "the heartbeat carries the cancel"
    );

    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("event in time")
    {
        last = Some(ev.expect("event"));
    }
    let last = last.expect("some events");
    assert_eq!(
        last.batch_state,
        BatchState::Cancelled as i32,
        "the stream ends with the batch"
    );

    let retried = h
        .client
        .retry_jobs(call(v1::RetryJobsRequest {
            batch_id: batch.clone(),
            include_cancelled: true,
        }))
        .await
        .expect("retry");
    // The job whose lease is still live stays with its holder until it lets go.
    assert_eq!(retried.into_inner().jobs_by_state.get("queued"), Some(&1));
    let missing = h
        .client
        .get_batch(call(v1::GetBatchRequest {
            batch_id: "b404".into(),
            include_jobs: false,
            ..Default::default()
        }))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_watch_that_starts_after_some_jobs_finished_still_follows_the_batch() {
    let h = harness(|_| {}).await;
    let batch = h
        .submit(common::submit("t", 0, 3))
        .await
        .expect("submit")
        .batch_id;
    let w = h.register("w").await;
    // The first job finishes before anyone watches; two are left.
    let first = h.lease(&w, 0).await.expect("job");
    h.complete(&w, &first, &format!("{}/first.png", first.attempt_prefix))
        .await
        .expect("complete");
    let mut events = h
        .client
        .watch_batch(call(v1::WatchBatchRequest {
            batch_id: batch.clone(),
        }))
        .await
        .expect("watch")
        .into_inner();
    // Every snapshot event carries the state of the whole batch: still running, and its
    // counts once the snapshot is complete.
    let counts = |pairs: &[(&str, u32)]| -> HashMap<String, u32> {
        pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    };
    let mut snapshot = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("event in time")
            .expect("an event")
            .expect("ok");
        assert_eq!(ev.batch_state, BatchState::Running as i32, "{ev:?}");
        snapshot.push(ev);
    }
    assert_eq!(
        snapshot[2].jobs_by_state,
        counts(&[("succeeded", 1), ("queued", 2)]),
        "the whole batch's counts"
    );
    let l = h.lease(&w, 0).await.expect("job");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("event in time")
        .expect("an event")
        .expect("ok");
    assert_eq!(ev.job.as_ref().expect("job").job_id, l.job_id);
    assert_eq!(
        ev.jobs_by_state,
        counts(&[("succeeded", 1), ("queued", 1), ("leased", 1)]),
        "counts move with each event"
    );
    h.complete(&w, &l, &format!("{}/x.png", l.attempt_prefix))
        .await
        .expect("complete");
    let l = h.lease(&w, 0).await.expect("job");
    h.complete(&w, &l, &format!("{}/x.png", l.attempt_prefix))
        .await
        .expect("complete");
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("event in time")
    {
        last = Some(ev.expect("event"));
    }
    assert_eq!(
        last.expect("events").batch_state,
        BatchState::Succeeded as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_fails_while_the_database_cannot_commit_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::local(dir.path().join("state.db"));
    let options = Options {
        busy_timeout: Duration::from_millis(100),
    };
    let store = SqliteStore::open_with(&config.db, &options).expect("open");
    let state = Arc::new(State::new(store, config).await.expect("state"));
    let client = ClientApi::new(Arc::clone(&state));
    let ops = Arc::new(stylefarm_coordinator::ops::Ops {
        state: Arc::clone(&state),
        ready: true.into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let router = stylefarm_coordinator::ops::router(ops);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let livez = || {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                stylefarm_testkit::process::http_get(&addr, "/livez")
            })
            .await
            .expect("get")
        }
    };
    assert!(livez().await.0.contains("200"));

    // Another connection holds the write lock: the next change cannot begin.
    let other = rusqlite::Connection::open(&state.config.db).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let refused = client
        .submit_batch(call(common::submit("t", 0, 1)))
        .await
        .expect_err("the store cannot commit");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let (status, body) = livez().await;
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("locked"), "{body}");

    drop(other);
    client
        .submit_batch(call(common::submit("t", 0, 1)))
        .await
        .expect("submit");
    let (status, body) = livez().await;
    assert!(status.contains("200"), "{status} {body}");
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_or_loaded_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory is no database file: the store cannot open it.
    let err = stylefarm_coordinator::start(Config::local(dir.path().to_owned()))
        .await
        .err()
        .expect("a directory does not open");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    // A file whose workers table is not ours opens, then fails to load.
    let db = dir.path().join("other.db");
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute_batch("CREATE TABLE workers (id TEXT PRIMARY KEY)")
        .expect("create");
    let err = stylefarm_coordinator::start(Config::local(db.clone()))
        .await
        .err()
        .expect("the workers do not load");
    let message = err.to_string();
    assert!(message.contains(&db.display().to_string()), "{message}");
}

/// A job that no registered worker could hold is refused at submit, naming the job and
/// both figures; the same job fits once a worker with more memory registers, and
/// nothing is refused before any worker has said what it takes.
#[tokio::test]
async fn a_job_no_registered_worker_can_hold_is_refused_at_submit() {
    let h = harness(|_| {}).await;
    let mut req = common::submit("mem", 0, 2);
    // The second job: an 8192 px render of a 4000x3000 photo, its style at 2x.
    let big = &mut req.jobs[1];
    if let Some(c) = big.content.as_mut() {
        (c.width, c.height) = (4000, 3000);
    }
    let p = big.params.as_mut().expect("params");
    p.size = Some(8192);
    p.style_scale = Some(2.0);
    let token = |t: &str| v1::SubmitBatchRequest {
        client_token: t.into(),
        ..req.clone()
    };
    // No worker has said what it takes yet: accepted (workers check when they lease).
    h.submit(token("before"))
        .await
        .expect("no capacities known");

    let mut small = common::register("small");
    small.max_job_memory_bytes = 4 << 30;
    h.worker
        .register_worker(call(small))
        .await
        .expect("register");
    let err = h
        .submit(token("small"))
        .await
        .expect_err("too big for 4 GiB");
    invalid(
        err,
        &[
            "jobs[1] (name \"out00001\") params",
            "no registered worker can run it",
            "on a CPU worker, where the largest takes 4.00 GiB per job",
            "--max-job-memory",
        ],
    );

    let mut gpu = common::register("gpu");
    gpu.device = "cuda:0".into();
    gpu.max_job_memory_bytes = 400 << 30;
    h.worker.register_worker(call(gpu)).await.expect("register");
    h.submit(token("gpu")).await.expect("fits the GPU worker");
}

/// GetBatch answers a page of jobs at a time in submission order: the default and the
/// asked-for sizes, a page cut short before 2 MiB when errors are long, and a token
/// that is not a job id refused; following the tokens visits every job once.
#[tokio::test]
async fn get_batch_pages_jobs_within_a_size_and_byte_budget() {
    let h = harness(|_| {}).await;
    let id = h
        .submit(common::submit("pages", 0, 2500))
        .await
        .expect("submit")
        .batch_id;
    // 700 jobs fail with 4 KiB errors: 1000 of them would pass 2 MiB.
    let w = h.register("w").await;
    for _ in 0..700 {
        let l = h.lease(&w, 0).await.expect("job");
        h.worker
            .fail_job(call(v1::FailJobRequest {
                worker_id: w.clone(),
                job_id: l.job_id.clone(),
                fencing_token: l.fencing_token,
                error: "x".repeat(4096),
                retryable: false,
            }))
            .await
            .expect("fail");
    }
    let page = |size: u32, token: &str| {
        let req = v1::GetBatchRequest {
            batch_id: id.clone(),
            include_jobs: true,
            page_size: size,
            page_token: token.into(),
        };
        let client = &h.client;
        async move { client.get_batch(call(req)).await.map(|r| r.into_inner()) }
    };
    let first = page(0, "").await.expect("first page");
    assert!(
        first.jobs.len() < 700 && first.jobs.len() > 400,
        "cut by bytes: {} jobs",
        first.jobs.len()
    );
    assert!(prost::Message::encoded_len(&first) <= 2 << 20);
    assert_eq!(first.jobs_by_state.get("failed"), Some(&700));

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = page(0, &token).await.expect("page");
        assert!(p.jobs.len() <= 1000);
        seen.extend(p.jobs.into_iter().map(|j| j.name));
        pages += 1;
        token = p.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..2500).map(|i| format!("out{i:05}")).collect();
    assert_eq!(seen, want, "every job once, in submission order");
    assert!(
        pages >= 3,
        "{pages} pages: one cut short by bytes, then 1000 a page"
    );

    let small = page(7, "").await.expect("seven");
    assert_eq!(small.jobs.len(), 7);
    assert_eq!(small.next_page_token, small.jobs[6].job_id);
    let huge = page(u32::MAX, &first.next_page_token)
        .await
        .expect("capped");
    assert!(huge.jobs.len() <= 10_000);
    let last = page(10, &small.jobs.last().expect("job").job_id)
        .await
        .expect("next");
    assert_eq!(last.jobs[0].name, "out00007");
    let err = page(0, "bad\ntoken").await.expect_err("not a job id");
    invalid(err, &["page_token"]);
}

#[tokio::test]
async fn dependencies_are_checked_at_submit_unknown_names_and_cycles_refused_by_name() {
    let h = harness(|_| {}).await;
    let with_after = |after: &[(usize, &[&str])]| {
        let mut req = common::submit("deps", 0, 4);
        for (i, names) in after {
            req.jobs[*i].after = names.iter().map(|n| (*n).to_owned()).collect();
        }
        req
    };
    invalid(
        h.submit(with_after(&[(1, &["out00009"])]))
            .await
            .expect_err("unknown"),
        &[
            "jobs[1]",
            "after[0]",
            "\"out00009\" is not a job of this batch",
        ],
    );
    invalid(
        h.submit(with_after(&[(2, &["out00002"])]))
            .await
            .expect_err("itself"),
        &["jobs[2]", "cannot wait on itself"],
    );
    invalid(
        h.submit(with_after(&[
            (0, &["out00003"]),
            (1, &["out00000"]),
            (2, &["out00001"]),
            (3, &["out00002"]),
        ]))
        .await
        .expect_err("a cycle"),
        &["cycle", "out00000", "out00001", "out00002", "out00003"],
    );
    // A frame kept to a previous frame must wait on it, with a temporal weight.
    let with_previous = |after: &[&str], weight: f64| {
        let mut req = with_after(&[(1, after)]);
        let job = &mut req.jobs[1];
        job.previous = Some(v1::PreviousFrame {
            name: "out00000".into(),
            content: job.content.clone(),
        });
        if let Some(p) = job.params.as_mut() {
            p.temporal_weight = Some(weight);
        }
        req
    };
    invalid(
        h.submit(with_previous(&[], 100.0))
            .await
            .expect_err("previous not waited on"),
        &["jobs[1]", "previous.name", "not one of `after`"],
    );
    invalid(
        h.submit(with_previous(&["out00000"], 0.0))
            .await
            .expect_err("no weight"),
        &["jobs[1]", "previous", "temporal_weight is 0"],
    );
    let mut fine = with_previous(&["out00000"], 100.0);
    fine.client_token = "frames".into();
    h.submit(fine).await.expect("a frame after its predecessor");
    // Its lease names where the predecessor's succeeded attempt put its result.
    let w = h.register("frames").await;
    let mut leases = Vec::new();
    while let Some(l) = h.lease(&w, 0).await {
        leases.push(l);
    }
    let first = leases
        .iter()
        .find(|l| l.spec.as_ref().is_some_and(|s| s.name == "out00000"))
        .expect("the first frame is leasable")
        .clone();
    assert!(
        first.previous_result_key.is_empty(),
        "it names no predecessor"
    );
    assert!(
        leases
            .iter()
            .all(|l| l.spec.as_ref().is_some_and(|s| s.name != "out00001")),
        "the second frame waits for the first"
    );
    let result = format!("{}/out00000.png", first.attempt_prefix);
    h.complete(&w, &first, &result).await.expect("complete");
    for other in leases.iter().filter(|l| l.job_id != first.job_id) {
        h.complete(&w, other, &format!("{}/x.png", other.attempt_prefix))
            .await
            .expect("complete");
    }
    let second = loop {
        let l = h.lease(&w, 0).await.expect("the second frame is released");
        if l.spec.as_ref().is_some_and(|s| s.name == "out00001") {
            break l;
        }
        h.complete(&w, &l, &format!("{}/x.png", l.attempt_prefix))
            .await
            .expect("complete");
    };
    assert_eq!(second.previous_result_key, result);
    // A chain is fine, and what waits shows as waiting.
    let ok = h
        .submit(with_after(&[
            (1, &["out00000"]),
            (2, &["out00001"]),
            (3, &["out00000", "out00002"]),
        ]))
        .await
        .expect("a chain");
    let b = h
        .client
        .get_batch(call(v1::GetBatchRequest {
            batch_id: ok.batch_id,
            include_jobs: true,
            ..Default::default()
        }))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(b.jobs_by_state.get("waiting"), Some(&3));
    assert_eq!(b.jobs[1].state, v1::JobState::Waiting as i32);
    assert_eq!(b.state, BatchState::Queued as i32, "nothing has started");
}
