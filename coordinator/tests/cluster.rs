//! The `stylefarm-coordinator` binary on port 0 with simulated workers (no libtorch):
//! expiry, fencing, cancel, priorities and fair share, operations endpoints, SIGTERM,
//! and kill -9 then restart losing nothing.

use stylefarm_testkit::farm as common;

use std::collections::HashMap;
use std::time::Duration;

use common::Coordinator;
use stylefarm_proto::v1::{self, JobState};
use tonic::Code;

/// Submits `common::submit(token, priority, n)` as admin; returns the batch id.
async fn submit(c: &Coordinator, token: &str, priority: i32, n: usize) -> String {
    c.client()
        .await
        .submit_batch(common::submit(token, priority, n))
        .await
        .expect("submit")
        .into_inner()
        .batch_id
}

async fn register(c: &Coordinator, name: &str) -> String {
    let mut w = c.worker().await;
    w.register_worker(common::register(name))
        .await
        .expect("register")
        .into_inner()
        .worker_id
}

async fn lease(c: &Coordinator, worker: &str, wait_ms: u32) -> Option<v1::Lease> {
    let mut w = c.worker().await;
    let req = v1::LeaseJobRequest {
        worker_id: worker.into(),
        wait_ms,
    };
    w.lease_job(req).await.expect("lease").into_inner().lease
}

fn heartbeat_req(worker: &str, l: &v1::Lease, iteration: u32, ck: &str) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        worker_id: worker.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        iteration,
        losses: Some(v1::Losses {
            content: 1.0,
            style: 2.0,
            tv: 0.5,
            total: 3.5,
            temporal: 0.0,
        }),
        checkpoint_key: if ck.is_empty() {
            String::new()
        } else {
            format!("{}/{ck}", l.attempt_prefix)
        },
    }
}

fn complete_req(worker: &str, l: &v1::Lease) -> v1::CompleteJobRequest {
    v1::CompleteJobRequest {
        worker_id: worker.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        result_key: format!("{}/result.png", l.attempt_prefix),
        sidecar_key: format!("{}/result.json", l.attempt_prefix),
        iteration: 0,
        losses: None,
    }
}

async fn workers(c: &Coordinator) -> Vec<v1::WorkerInfo> {
    c.client()
        .await
        .list_workers(v1::ListWorkersRequest {})
        .await
        .expect("list workers")
        .into_inner()
        .workers
}

async fn jobs(c: &Coordinator, batch: &str) -> Vec<v1::JobStatus> {
    stylefarm_testkit::farm::whole_batch(&mut c.client().await, batch)
        .await
        .jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_requeues_with_checkpoint_and_stale_tokens_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &["--lease-ms", "1500"]);
    let batch = submit(&c, "t", 0, 1).await;
    let (dead, alive) = (register(&c, "dead").await, register(&c, "alive").await);
    let first = lease(&c, &dead, 0).await.expect("job");
    c.worker()
        .await
        .heartbeat(heartbeat_req(&dead, &first, 12, "ck/12"))
        .await
        .expect("heartbeat");
    // The first worker goes silent; the expiry loop requeues the job, and the long poll
    // of the second worker picks it up with the checkpoint.
    let second = lease(&c, &alive, 10_000).await.expect("requeued job");
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.checkpoint_key,
        format!("{}/ck/12", first.attempt_prefix)
    );

    let mut w = c.worker().await;
    let stale = w
        .complete_job(complete_req(&dead, &first))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let stale = w
        .heartbeat(heartbeat_req(&dead, &first, 13, ""))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    w.complete_job(complete_req(&alive, &second))
        .await
        .expect("complete");
    let job = &jobs(&c, &batch).await[0];
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.result_attempt, 2);
    assert_eq!(
        job.result_key,
        format!("{}/result.png", second.attempt_prefix)
    );
    assert_eq!(
        job.sidecar_key,
        format!("{}/result.json", second.attempt_prefix)
    );

    let (status, body) = c.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    // Whole lines: `..._total 1` must not also match 10 to 19.
    let line = |l: &str| body.lines().any(|b| b == l);
    assert!(line("stylefarm_lease_expirations_total 1"), "{body}");
    assert!(line("stylefarm_jobs{state=\"succeeded\"} 1"), "{body}");
    assert!(body.contains("stylefarm_lease_seconds_bucket"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_leaves_gives_back_a_lease_it_never_received_without_spending_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &["--lease-ms", "60000"]);
    let batch = submit(&c, "t", 0, 1).await;
    let (gone, next) = (register(&c, "gone").await, register(&c, "next").await);
    // The lease is granted, but the worker's drain cut its long poll short: it never
    // saw the answer, and says so by leaving.
    let lost = lease(&c, &gone, 0).await.expect("job");
    let allowed = jobs(&c, &batch).await[0].attempts_allowed;
    let listed = workers(&c).await;
    let shown = |id: &str| listed.iter().find(|w| w.worker_id == id).cloned();
    let (g, n) = (shown(&gone).expect("listed"), shown(&next).expect("listed"));
    assert_eq!(
        (
            g.live,
            g.job_ids.clone(),
            g.name.as_str(),
            n.live,
            n.job_ids.len()
        ),
        (true, vec![lost.job_id.clone()], "gone", true, 0),
        "both heard from within the lease; the one that leased holds its job"
    );
    assert!(g.last_heard_unix_ms >= g.registered_unix_ms && g.registered_unix_ms > 0);
    let mut w = c.worker().await;
    let left = w
        .leave_farm(v1::LeaveFarmRequest {
            worker_id: gone.clone(),
        })
        .await
        .expect("leave")
        .into_inner();
    assert_eq!(left.requeued, 1);
    let job = &jobs(&c, &batch).await[0];
    assert_eq!(
        job.state,
        JobState::Queued as i32,
        "requeued at once, not after 60 s"
    );
    // Requeued uncharged: the next lease is the second attempt of an allowance that grew
    // by one.
    let again = lease(&c, &next, 0).await.expect("requeued job");
    assert_eq!(again.job_id, lost.job_id);
    assert_eq!(again.attempt, 2);
    let job = &jobs(&c, &batch).await[0];
    assert_eq!(job.attempts_allowed, allowed + 1);
    assert!(
        workers(&c).await.iter().all(|w| w.worker_id != gone),
        "a worker that left is no longer listed"
    );
    // The registration is forgotten: the departed worker can neither lease nor leave again,
    // and its stale token is refused.
    let refused = w
        .lease_job(v1::LeaseJobRequest {
            worker_id: gone.clone(),
            wait_ms: 0,
        })
        .await
        .expect_err("forgotten");
    assert_eq!(refused.code(), Code::NotFound);
    let refused = w
        .leave_farm(v1::LeaveFarmRequest { worker_id: gone })
        .await
        .expect_err("forgotten");
    assert_eq!(refused.code(), Code::NotFound);
    // A worker that holds nothing leaves with nothing to give back.
    w.complete_job(complete_req(&next, &again))
        .await
        .expect("complete");
    let left = w
        .leave_farm(v1::LeaveFarmRequest { worker_id: next })
        .await
        .expect("leave")
        .into_inner();
    assert_eq!(left.requeued, 0);
    assert_eq!(jobs(&c, &batch).await[0].state, JobState::Succeeded as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_running_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let batch = submit(&c, "t", 0, 3).await;
    let w = register(&c, "w").await;
    let l = lease(&c, &w, 0).await.expect("job");
    let mut wc = c.worker().await;
    assert!(
        !wc.heartbeat(heartbeat_req(&w, &l, 1, ""))
            .await
            .expect("hb")
            .into_inner()
            .cancelled
    );
    c.client()
        .await
        .cancel_job(v1::CancelJobRequest {
            job_id: l.job_id.clone(),
        })
        .await
        .expect("cancel");
    assert!(
        wc.heartbeat(heartbeat_req(&w, &l, 2, ""))
            .await
            .expect("hb")
            .into_inner()
            .cancelled
    );
    // The other jobs are still there for the next lease.
    let next = lease(&c, &w, 0).await.expect("another job");
    assert_ne!(next.job_id, l.job_id);
    let states: Vec<i32> = jobs(&c, &batch).await.iter().map(|j| j.state).collect();
    assert_eq!(states[0], JobState::Cancelled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_then_fair_share_then_fifo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let mut client = c.client().await;
    let mut ids = HashMap::new();
    for (token, prio, n) in [("low", 0, 4), ("a", 10, 4), ("b", 10, 4), ("c", 10, 4)] {
        let id = client
            .submit_batch(common::submit(token, prio, n))
            .await
            .expect("submit")
            .into_inner()
            .batch_id;
        ids.insert(id, token);
    }
    let w = register(&c, "w").await;
    let mut order = Vec::new();
    for _ in 0..16 {
        let l = lease(&c, &w, 0).await.expect("job");
        order.push((ids[&l.batch_id], l.spec.expect("spec").name));
    }
    let batches: Vec<&str> = order.iter().map(|(b, _)| *b).collect();
    // Equal priorities take turns; the low-priority batch waits for all of them.
    assert_eq!(&batches[..12], ["a", "b", "c"].repeat(4).as_slice());
    assert!(batches[12..].iter().all(|b| *b == "low"));
    // FIFO within each batch.
    for token in ["a", "low"] {
        let names: Vec<&str> = order
            .iter()
            .filter(|(b, _)| *b == token)
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(names, ["out00000", "out00001", "out00002", "out00003"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let mut c = Coordinator::start(&db, &["--lease-ms", "60000"]);
    let batch = submit(&c, "t", 0, 6).await;
    let w = register(&c, "w").await;
    let mut wc = c.worker().await;
    let mut leases = Vec::new();
    for _ in 0..4 {
        leases.push(lease(&c, &w, 0).await.expect("job"));
    }
    wc.complete_job(complete_req(&w, &leases[0]))
        .await
        .expect("complete");
    wc.complete_job(complete_req(&w, &leases[1]))
        .await
        .expect("complete");
    let fail = v1::FailJobRequest {
        worker_id: w.clone(),
        job_id: leases[2].job_id.clone(),
        fencing_token: leases[2].fencing_token,
        error: "corrupt input: truncated JPEG".into(),
        retryable: false,
    };
    wc.fail_job(fail).await.expect("fail");
    wc.heartbeat(heartbeat_req(&w, &leases[3], 33, "ck/33"))
        .await
        .expect("heartbeat");
    let before = jobs(&c, &batch).await;
    let live_deadline = wc
        .heartbeat(heartbeat_req(&w, &leases[3], 34, "ck/34"))
        .await
        .expect("hb")
        .into_inner()
        .deadline_unix_ms;

    c.kill9();
    // The last acknowledged heartbeat's deadline is on disk, as the heartbeat said.
    let stored: i64 = rusqlite::Connection::open(&db)
        .expect("open the database")
        .query_row(
            "SELECT deadline_ms FROM jobs WHERE id = ?1",
            [&leases[3].job_id],
            |r| r.get(0),
        )
        .expect("the live lease's deadline");
    assert_eq!(stored, live_deadline);
    let c = Coordinator::start(&db, &["--lease-ms", "60000"]);
    let after = jobs(&c, &batch).await;
    assert_eq!(after.len(), 6);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (a.job_id.as_str(), a.state, a.attempt, a.result_key.as_str()),
            (b.job_id.as_str(), b.state, b.attempt, b.result_key.as_str())
        );
    }
    assert_eq!(after[2].error, "corrupt input: truncated JPEG");
    assert_eq!(
        after[3].checkpoint_key,
        format!("{}/ck/34", leases[3].attempt_prefix),
        "the last acknowledged heartbeat survived"
    );
    assert_eq!(after[3].iteration, 34);
    // The live lease kept its deadline and its token: the worker carries on.
    let mut wc = c.worker().await;
    let hb = wc
        .heartbeat(heartbeat_req(&w, &leases[3], 35, ""))
        .await
        .expect("the old token still holds");
    assert!(hb.into_inner().deadline_unix_ms >= live_deadline);
    wc.complete_job(complete_req(&w, &leases[3]))
        .await
        .expect("complete after restart");
    // The registration survived too, and the remaining jobs are handed out once each.
    let mut rest = Vec::new();
    while let Some(l) = lease(&c, &w, 0).await {
        rest.push(l.job_id);
    }
    let expected: Vec<String> = after[4..].iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(rest, expected);
    // A submission acknowledged before the kill is still idempotent after it.
    let again = c
        .client()
        .await
        .submit_batch(common::submit("t", 0, 6))
        .await
        .expect("resubmit")
        .into_inner();
    assert!(again.existing);
    assert_eq!(again.batch_id, batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_sigterm_drain() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let mut health = HealthClient::new(c.channel("worker").await);
    for service in ["stylefarm.v1.StyleFarm", "stylefarm.v1.WorkerService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check");
        assert_eq!(
            r.into_inner().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }
    assert!(c.http_get("/readyz").0.contains("200"));
    assert!(c.http_get("/livez").0.contains("200"));

    // A worker long-polling an empty queue is answered when SIGTERM arrives.
    let w = register(&c, "w").await;
    let mut wc = c.worker().await;
    let poll = tokio::spawn(async move {
        wc.lease_job(v1::LeaseJobRequest {
            worker_id: w,
            wait_ms: 25_000,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &c.proc.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let answer = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("answered in time")
        .expect("task");
    // Drained by the coordinator, not refused by a closed socket: the answer says why.
    let answer = answer.expect_err("shutting down");
    assert_eq!(answer.code(), Code::Unavailable, "{answer:?}");
    assert_eq!(answer.message(), "the coordinator is shutting down");
    let exit = c.proc.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_keeps_every_acknowledged_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let mut c = Coordinator::start(&db, &[]);
    let batch = submit(&c, "load", 0, 2000).await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut workers = Vec::new();
    for i in 0..16 {
        let w = register(&c, &format!("w{i}")).await;
        let mut wc = c.worker().await;
        let acked = acked_tx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let req = v1::LeaseJobRequest {
                    worker_id: w.clone(),
                    wait_ms: 0,
                };
                let Ok(Some(l)) = wc.lease_job(req).await.map(|r| r.into_inner().lease) else {
                    return;
                };
                if wc.complete_job(complete_req(&w, &l)).await.is_err() {
                    return;
                }
                let _ = acked.send(l.job_id);
            }
        }));
    }
    drop(acked_tx);
    // Kill in the middle of the stream of completions.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(acked_rx.recv().await.expect("completions flow"));
    }
    c.kill9();
    for w in workers {
        let _ = w.await;
    }
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }
    assert!(acked.len() < 2000, "the kill landed mid-batch");

    let c = Coordinator::start(&db, &[]);
    let states: HashMap<String, i32> = jobs(&c, &batch)
        .await
        .into_iter()
        .map(|j| (j.job_id, j.state))
        .collect();
    assert_eq!(states.len(), 2000);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| states[*id] != JobState::Succeeded as i32)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged completions lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_worker_fields_are_refused_or_cut_and_the_coordinator_stays_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let mut w = c.worker().await;
    // A 4 MiB GPU model: past the worker service's message limit.
    let mut huge = common::register("huge");
    huge.gpu_model = "x".repeat(4 << 20);
    let s = w
        .register_worker(huge)
        .await
        .expect_err("4 MiB registration");
    assert!(
        matches!(
            s.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{s:?}"
    );
    // 10 KiB: within the message limit, past the field's.
    let mut long = common::register("long");
    long.gpu_model = "x".repeat(10 << 10);
    let s = w.register_worker(long).await.expect_err("10 KiB GPU model");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("gpu_model"), "{}", s.message());

    // A 60 KiB failure message is kept cut to 4 KiB, and says so.
    let batch = submit(&c, "t", 0, 1).await;
    let id = register(&c, "w").await;
    let l = lease(&c, &id, 0).await.expect("job");
    let fail = v1::FailJobRequest {
        worker_id: id.clone(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        error: "é".repeat(30 << 10),
        retryable: false,
    };
    w.fail_job(fail).await.expect("fail");
    let job = &jobs(&c, &batch).await[0];
    assert!(
        job.error.len() <= 4096 + 64,
        "kept {} bytes",
        job.error.len()
    );
    assert!(
        job.error.ends_with("more bytes not kept)"),
        "{}",
        &job.error[job.error.len() - 40..]
    );
    let (status, _) = c.http_get("/livez");
    assert!(status.contains("200"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_not_heard_from_is_forgotten_and_stays_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let mut c = Coordinator::start(&db, &["--forget-workers-after-ms", "1500"]);
    let gone = register(&c, "gone").await;
    let alive = register(&c, "alive").await;
    // `alive` keeps calling (as a real worker's long poll does); `gone` says nothing.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert!(lease(&c, &alive, 200).await.is_none());
    }
    let req = v1::LeaseJobRequest {
        worker_id: gone.clone(),
        wait_ms: 0,
    };
    let s = c
        .worker()
        .await
        .lease_job(req.clone())
        .await
        .expect_err("forgotten");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("register again"), "{}", s.message());
    let (_, metrics) = c.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "stylefarm_workers_registered 1"),
        "{metrics}"
    );
    // Forgotten on disk too: a restart does not bring it back.
    c.kill9();
    let c = Coordinator::start(&db, &["--forget-workers-after-ms", "1500"]);
    let s = c
        .worker()
        .await
        .lease_job(req)
        .await
        .expect_err("still forgotten");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(
        lease(&c, &alive, 0).await.is_none(),
        "the live one is still known"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_waiting_and_blocked_jobs_and_a_retry_after_restart_releases_them_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let mut c = Coordinator::start(&db, &[]);
    // A chain of four: each job after the one before it.
    let mut req = common::submit("chain", 0, 4);
    for i in 1..4 {
        req.jobs[i].after = vec![format!("out{:05}", i - 1)];
    }
    let batch = c
        .client()
        .await
        .submit_batch(req)
        .await
        .expect("submit")
        .into_inner()
        .batch_id;
    let w = register(&c, "w").await;
    let mut wc = c.worker().await;
    let first = lease(&c, &w, 0).await.expect("the first job");
    assert_eq!(first.job_id, format!("{batch}-j000000"));
    assert!(lease(&c, &w, 0).await.is_none(), "the rest wait");
    wc.complete_job(complete_req(&w, &first))
        .await
        .expect("complete");
    let second = lease(&c, &w, 0).await.expect("released by the first");
    assert_eq!(second.job_id, format!("{batch}-j000001"));
    wc.fail_job(v1::FailJobRequest {
        worker_id: w.clone(),
        job_id: second.job_id.clone(),
        fencing_token: second.fencing_token,
        error: "corrupt input".into(),
        retryable: false,
    })
    .await
    .expect("fail");
    let states = |jobs: &[v1::JobStatus]| jobs.iter().map(|j| j.state).collect::<Vec<_>>();
    let before = jobs(&c, &batch).await;
    assert_eq!(
        states(&before),
        [
            JobState::Succeeded as i32,
            JobState::Failed as i32,
            JobState::Blocked as i32,
            JobState::Blocked as i32
        ]
    );
    assert_eq!(before[3].error, "runs after out00001, which failed");

    c.kill9();
    let c = Coordinator::start(&db, &[]);
    let after = jobs(&c, &batch).await;
    assert_eq!(states(&after), states(&before), "kill -9 kept every state");
    assert_eq!(after[2].error, before[2].error);
    c.client()
        .await
        .retry_jobs(v1::RetryJobsRequest {
            batch_id: batch.clone(),
            include_cancelled: false,
        })
        .await
        .expect("retry");
    let w = register(&c, "w2").await;
    let mut wc = c.worker().await;
    // Released one at a time, in order.
    for n in 1..4 {
        let l = lease(&c, &w, 0).await.expect("the next in the chain");
        assert_eq!(l.job_id, format!("{batch}-j{n:06}"));
        assert!(lease(&c, &w, 0).await.is_none(), "one at a time");
        wc.complete_job(complete_req(&w, &l))
            .await
            .expect("complete");
    }
    assert!(jobs(&c, &batch)
        .await
        .iter()
        .all(|j| j.state == JobState::Succeeded as i32));
}
