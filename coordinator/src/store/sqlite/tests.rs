use super::*;
use crate::model::{Capacity, Losses, NewJob};
use std::collections::BTreeMap;

fn batch(token: &str, priority: i32, n: usize) -> NewBatch {
    NewBatch {
        name: token.to_owned(),
        owner: "alice".into(),
        adopt_unowned: false,
        client_token: Some(token.to_owned()),
        manifest_sha256: format!("sha-{token}-{n}"),
        priority,
        max_attempts: 3,
        jobs: (0..n)
            .map(|i| NewJob {
                name: format!("out{i}"),
                iterations: 10,
                spec: vec![i as u8],
                after: Vec::new(),
            })
            .collect(),
    }
}

/// When the tests' attempts end (unix ms).
const LATER: i64 = 5_000;

fn done(key: &str) -> Completion {
    Completion {
        result_key: key.to_owned(),
        sidecar_key: None,
        progress: None,
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("state.db")).expect("open");
    (dir, s)
}

/// A store that gives up on a held lock after `busy_ms` instead of 5 s.
fn store_with(busy_ms: u64) -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        busy_timeout: Duration::from_millis(busy_ms),
    };
    let s = SqliteStore::open_with(&dir.path().join("state.db"), &options).expect("open");
    (dir, Arc::new(s))
}

/// Another connection to the store's file holding the write lock, as another process
/// on the file (a backup, an operator's `sqlite3` shell) can. Dropping it releases it.
fn hold_write_lock(dir: &tempfile::TempDir) -> Connection {
    let other = Connection::open(dir.path().join("state.db")).expect("open");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    other
}

/// Polls `done` every 10 ms for at most `limit`; true once it held.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn lease(s: &SqliteStore, worker: &str, now: i64, ms: i64) -> Option<Lease> {
    let ask = LeaseAsk {
        worker: worker.to_owned(),
        now_ms: now,
        lease_ms: ms,
        max_worker_failures: 2,
    };
    s.lease(ask).await.expect("lease").map(|(l, _)| l)
}

#[tokio::test]
async fn submit_is_idempotent_per_token_and_refuses_a_reused_token() {
    let (_d, s) = store();
    let a = s.submit(batch("t1", 0, 2), 0).await.expect("submit");
    assert!(!a.existing);
    let b = s.submit(batch("t1", 0, 2), 1).await.expect("submit");
    assert!(b.existing);
    assert_eq!(a.batch_id, b.batch_id);
    assert_eq!(s.jobs(&a.batch_id).await.expect("jobs").len(), 2);
    let other = s.submit(batch("t1", 0, 3), 2).await;
    assert!(
        matches!(other, Err(StoreError::TokenReused { .. })),
        "{other:?}"
    );
}

#[tokio::test]
async fn priority_then_round_robin_then_fifo() {
    let (_d, s) = store();
    let low = s
        .submit(batch("low", 0, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    let a = s
        .submit(batch("a", 5, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    let b = s
        .submit(batch("b", 5, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(lease(&s, "w", 0, 1000).await.expect("a job").job_id);
    }
    assert_eq!(
        order,
        vec![
            format!("{a}-j000000"),
            format!("{b}-j000000"),
            format!("{a}-j000001"),
            format!("{b}-j000001"),
            format!("{low}-j000000"),
            format!("{low}-j000001"),
        ]
    );
    assert!(lease(&s, "w", 0, 1000).await.is_none());
    let stats = s.stats().await.expect("stats");
    assert_eq!(stats.jobs_by_state.get(&JobState::Leased), Some(&6));
    assert_eq!(stats.batches_waiting, 0);
}

#[tokio::test]
async fn expiry_requeues_with_checkpoint_and_fences_the_old_token() {
    let (_d, s) = store();
    let id = s
        .submit(batch("t", 0, 1), 0)
        .await
        .expect("submit")
        .batch_id;
    let first = lease(&s, "w1", 0, 100).await.expect("job");
    let progress = Progress {
        iteration: 40,
        losses: Losses::default(),
        checkpoint_key: Some("ck/40".into()),
    };
    let (_, rec) = s
        .heartbeat(&first.job_id, first.token, progress, 50, 100)
        .await
        .expect("heartbeat");
    assert_eq!(rec.state, JobState::Running);
    assert!(
        s.expire(149).await.expect("expire").changed.is_empty(),
        "deadline was extended"
    );
    let expired = s.expire(151).await.expect("expire").changed;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, JobState::Queued);
    assert!(expired[0].version > rec.version);
    let second = lease(&s, "w2", 200, 100).await.expect("job");
    assert_eq!(second.attempt, 2);
    assert_eq!(second.checkpoint_key.as_deref(), Some("ck/40"));
    assert_ne!(second.token, first.token);
    let stale = s
        .complete(&first.job_id, first.token, done("late/output.png"), LATER)
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleToken { .. })),
        "{stale:?}"
    );
    s.complete(
        &second.job_id,
        second.token,
        done("attempt2/output.png"),
        LATER,
    )
    .await
    .expect("complete");
    let job = &s.jobs(&id).await.expect("jobs")[0];
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result_key.as_deref(), Some("attempt2/output.png"));
    assert_eq!(job.result_attempt, Some(2));
}

#[tokio::test]
async fn failures_retry_then_fail_bad_workers_are_kept_off_and_retry_requeues() {
    let (_d, s) = store();
    let id = s
        .submit(batch("t", 0, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    for _ in 0..2 {
        let l = lease(&s, "bad", 0, 100).await.expect("job");
        s.fail(&l.job_id, l.token, "CUDA error", true, LATER)
            .await
            .expect("fail");
    }
    assert!(
        lease(&s, "bad", 0, 100).await.is_none(),
        "bad worker is kept off"
    );
    let l = lease(&s, "good", 0, 100).await.expect("job");
    s.fail(&l.job_id, l.token, "corrupt input", false, LATER)
        .await
        .expect("fail");
    let jobs = s.jobs(&id).await.expect("jobs");
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| j.state == JobState::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("corrupt input"));
    let batch = s.batch(&id).await.expect("batch");
    assert_eq!(batch.counts.get(&JobState::Queued), Some(&1));
    // Retrying forgets the bad worker's record and requeues the failed job.
    let requeued = s.retry(&id, false).await.expect("retry");
    assert_eq!(requeued.len(), 1);
    assert!(lease(&s, "bad", 0, 100).await.is_some());
}

#[tokio::test]
async fn cancel_reaches_the_heartbeat_and_state_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let (id, lease_) = {
        let s = SqliteStore::open(&path).expect("open");
        let id = s
            .submit(batch("t", 0, 3), 0)
            .await
            .expect("submit")
            .batch_id;
        let l = lease(&s, "w", 0, 10_000).await.expect("job");
        let changed = s.cancel_batch(&id, LATER).await.expect("cancel");
        assert_eq!(changed.len(), 3);
        (id, l)
    };
    let s = SqliteStore::open(&path).expect("reopen");
    let (answer, _) = s
        .heartbeat(
            &lease_.job_id,
            lease_.token,
            Progress::default(),
            10,
            10_000,
        )
        .await
        .expect("heartbeat");
    assert!(answer.cancelled);
    let jobs = s.jobs(&id).await.expect("jobs");
    assert!(jobs.iter().all(|j| j.state == JobState::Cancelled));
    assert!(matches!(
        s.cancel_batch("nope", LATER).await,
        Err(StoreError::NotFound { .. })
    ));
    // The holder's last word releases the lease; the token is then stale.
    s.fail(&lease_.job_id, lease_.token, "cancelled", false, LATER)
        .await
        .expect("release");
    let again = s
        .complete(&lease_.job_id, lease_.token, done("x"), LATER)
        .await;
    assert!(
        matches!(again, Err(StoreError::StaleToken { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_completed_job_shows_the_iterations_it_ran_not_its_last_heartbeat() {
    let (_d, s) = store();
    s.submit(batch("t", 0, 1), 0).await.expect("submit");
    let l = lease(&s, "w", 0, 100).await.expect("job");
    let beat = Progress {
        iteration: 92,
        losses: Losses::default(),
        checkpoint_key: None,
    };
    s.heartbeat(&l.job_id, l.token, beat, 1, 100)
        .await
        .expect("heartbeat");
    let losses = Losses {
        content: 1.0,
        style: 2.0,
        tv: 0.5,
        total: 3.5,
        temporal: 0.0,
    };
    let finished = Completion {
        progress: Some((100, losses)),
        ..done("out.png")
    };
    let rec = s
        .complete(&l.job_id, l.token, finished, LATER)
        .await
        .expect("complete")
        .changed;
    assert_eq!(
        (rec.state, rec.iteration, rec.losses),
        (JobState::Succeeded, 100, losses)
    );
    assert_eq!(s.job(&l.job_id).await.expect("job").iteration, 100);
}

#[tokio::test]
async fn a_completion_without_figures_keeps_the_last_heartbeats() {
    let (_d, s) = store();
    s.submit(batch("t", 0, 1), 0).await.expect("submit");
    let l = lease(&s, "w", 0, 100).await.expect("job");
    let beat = Progress {
        iteration: 92,
        losses: Losses {
            total: 7.0,
            temporal: 0.0,
            ..Losses::default()
        },
        checkpoint_key: None,
    };
    s.heartbeat(&l.job_id, l.token, beat, 1, 100)
        .await
        .expect("heartbeat");
    // An older worker reports no figures with its completion.
    let rec = s
        .complete(&l.job_id, l.token, done("out.png"), LATER)
        .await
        .expect("complete")
        .changed;
    assert_eq!((rec.iteration, rec.losses.total), (92, 7.0));
}

#[tokio::test]
async fn a_released_job_is_requeued_with_its_checkpoint_without_spending_an_attempt() {
    let (_d, s) = store();
    let mut b = batch("t", 0, 1);
    b.max_attempts = 2;
    s.submit(b, 0).await.expect("submit");
    let first = lease(&s, "w", 0, 100).await.expect("job");
    let progress = Progress {
        iteration: 30,
        losses: Losses::default(),
        checkpoint_key: Some("ck/30".into()),
    };
    let rec = s
        .release(&first.job_id, first.token, progress, LATER)
        .await
        .expect("release");
    assert_eq!((rec.state, rec.iteration), (JobState::Queued, 30));
    let second = lease(&s, "w", 1, 100).await.expect("requeued");
    assert_eq!(second.checkpoint_key.as_deref(), Some("ck/30"));
    assert_eq!(second.attempt, 2);
    // Two attempts allowed, and the released one does not count: the failure of the
    // second attempt is the first that counts, so the job is retried once more...
    let rec = s
        .fail(&second.job_id, second.token, "oom", true, LATER)
        .await
        .expect("fail")
        .changed;
    assert_eq!(
        rec.state,
        JobState::Queued,
        "the released attempt did not count against the two allowed"
    );
    // ...and the failure of the third attempt, the second that counts, ends it.
    let third = lease(&s, "w", 2, 100).await.expect("requeued");
    let rec = s
        .fail(&third.job_id, third.token, "oom", true, LATER)
        .await
        .expect("fail")
        .changed;
    assert_eq!(rec.state, JobState::Failed, "two counted attempts failed");
}

#[tokio::test]
async fn a_leaving_worker_gives_back_what_it_never_received_uncharged_and_is_forgotten() {
    let (_d, s) = store();
    let mut b = batch("t", 0, 3);
    b.max_attempts = 1;
    s.submit(b, 0).await.expect("submit");
    let register = cpu_worker;
    let gone = s
        .register_worker(register("gone"), 0)
        .await
        .expect("register");
    let other = s
        .register_worker(register("other"), 0)
        .await
        .expect("register");
    let lost = lease(&s, &gone, 0, 100).await.expect("job");
    let progress = Progress {
        iteration: 40,
        losses: Losses::default(),
        checkpoint_key: Some("ck/40".into()),
    };
    s.heartbeat(&lost.job_id, lost.token, progress, 1, 100)
        .await
        .expect("heartbeat");
    let released = lease(&s, &gone, 2, 100).await.expect("job");
    s.release(&released.job_id, released.token, Progress::default(), LATER)
        .await
        .expect("release");
    let theirs = lease(&s, &other, 3, 100).await.expect("job");
    let held = |known: &[KnownWorker], id: &str| {
        known
            .iter()
            .find(|w| w.id == id)
            .map(|w| w.jobs.clone())
            .expect("listed")
    };
    let known = s.workers().await.expect("workers");
    assert_eq!(
        (held(&known, &gone), held(&known, &other)),
        (vec![lost.job_id.clone()], vec![theirs.job_id.clone()]),
        "each worker lists the leases it holds, not one it handed back"
    );
    assert_eq!(
        (known[0].worker.name.as_str(), known[0].registered_ms),
        ("gone", 0)
    );

    let requeued = s.leave(&gone, LATER).await.expect("leave");
    assert_eq!(
        requeued
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        [lost.job_id.as_str()],
        "only the lease it still held: not the one it handed back, not another worker's"
    );
    assert_eq!(
        (requeued[0].state, requeued[0].iteration),
        (JobState::Queued, 40)
    );
    let again = lease(&s, &other, 4, 100).await.expect("requeued");
    assert_eq!(again.job_id, lost.job_id);
    assert_eq!(again.checkpoint_key.as_deref(), Some("ck/40"));
    // One attempt allowed and the lost lease did not spend it: this attempt's
    // expiry is the one that fails the job.
    s.heartbeat(&theirs.job_id, theirs.token, Progress::default(), 5, 10_000)
        .await
        .expect("heartbeat");
    let expired = s.expire(1_000).await.expect("expire").changed;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].job_id, lost.job_id);
    assert_eq!(expired[0].state, JobState::Failed);
    let known: Vec<String> = s
        .workers()
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(
        known,
        [other],
        "the leaving worker's registration is forgotten"
    );
}

#[tokio::test]
async fn concurrent_writers_share_group_commits_and_lose_nothing() {
    let (_d, s) = store();
    let s = Arc::new(s);
    let id = s
        .submit(batch("t", 0, 500), 0)
        .await
        .expect("submit")
        .batch_id;
    let mut tasks = Vec::new();
    for w in 0..50 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut finished = 0;
            while let Some(l) = lease(&s, &format!("w{w}"), 0, 10_000).await {
                s.complete(&l.job_id, l.token, done("out"), LATER)
                    .await
                    .expect("complete");
                finished += 1;
            }
            finished
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 500, "every job leased exactly once");
    let b = s.batch(&id).await.expect("batch");
    assert_eq!(b.counts.get(&JobState::Succeeded), Some(&500));
}

#[tokio::test]
async fn a_group_that_cannot_begin_changes_nothing_and_every_caller_is_told() {
    // The writer waits 600 ms for the lock, then gives up on BEGIN.
    let (dir, s) = store_with(600);
    let other = hold_write_lock(&dir);
    // No client token: the change's first statement is a write, which (outside a
    // transaction) would wait for the lock too.
    let mut b = batch("t", 0, 2);
    b.client_token = None;
    let submit = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.submit(b, 0).await }
    });
    // The lock goes away once the store reports that BEGIN failed, and at the latest
    // while a change run outside any transaction would still be waiting for it.
    wait_until(Duration::from_millis(900), || !s.healthy()).await;
    drop(other);
    let refused = submit.await.expect("task");
    assert!(
        matches!(refused, Err(StoreError::Commit { .. })),
        "{refused:?}"
    );
    assert_eq!(
        s.batches(10, None).await.expect("batches").len(),
        0,
        "the refused submission left nothing on disk"
    );
    s.submit(batch("t", 0, 2), 1).await.expect("submit");
    assert_eq!(s.batches(10, None).await.expect("batches").len(), 1);
}

#[tokio::test]
async fn a_held_lock_makes_the_store_unhealthy_until_a_commit_succeeds() {
    let (dir, s) = store_with(100);
    assert!(s.healthy());
    let other = hold_write_lock(&dir);
    let refused = s.submit(batch("t", 0, 1), 0).await;
    assert!(
        matches!(refused, Err(StoreError::Commit { .. })),
        "{refused:?}"
    );
    let why = s
        .health()
        .expect_err("BEGIN failed: the store cannot commit");
    assert!(why.contains("begin") && why.contains("locked"), "{why}");
    drop(other);
    s.submit(batch("t", 0, 1), 1).await.expect("submit");
    assert!(s.healthy(), "a commit succeeded again");
}

/// Caps the database at the pages it has now (SQLite's `max_page_count`, set on the
/// writer's connection, where it applies), or lifts the cap: a real "database or disk
/// is full" without filling a disk.
async fn cap_pages(s: &SqliteStore, capped: bool) {
    s.write_one(move |conn| {
        let limit: i64 = if capped {
            conn.query_row("PRAGMA page_count", [], |r| r.get(0))?
        } else {
            i64::from(u32::MAX)
        };
        conn.query_row(&format!("PRAGMA max_page_count = {limit}"), [], |_| Ok(()))?;
        Ok(())
    })
    .await
    .expect("max_page_count");
}

#[tokio::test]
async fn a_full_database_makes_the_store_unhealthy_until_a_commit_succeeds() {
    let (_d, s) = store();
    s.submit(batch("small", 0, 1), 0).await.expect("submit");
    cap_pages(&s, true).await;
    let mut big = batch("big", 0, 100);
    for job in &mut big.jobs {
        job.spec = vec![7; 4096];
    }
    let refused = s.submit(big.clone(), 1).await;
    assert!(refused.is_err(), "{refused:?}");
    let why = s.health().expect_err("a statement found the database full");
    assert!(why.contains("full"), "{why}");
    // Lifting the cap is a change of its own; it commits and meets no storage failure.
    cap_pages(&s, false).await;
    assert!(s.healthy(), "a commit succeeded again");
    s.submit(big, 2).await.expect("submit once there is room");
    assert_eq!(s.batches(10, None).await.expect("batches").len(), 2);
}

#[tokio::test]
async fn a_group_that_sqlite_rolls_back_part_way_runs_none_of_its_later_changes() {
    let (dir, s) = store_with(5_000);
    let small = s
        .submit(batch("small", 0, 1), 0)
        .await
        .expect("submit")
        .batch_id;
    cap_pages(&s, true).await;
    let mut big = batch("big", 0, 100);
    for job in &mut big.jobs {
        job.spec = vec![7; 4096];
    }
    // The writer waits for the lock with a first change while the next two queue up
    // behind it; they then go into one group, the full database's error first.
    let other = hold_write_lock(&dir);
    let first = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.expire(0).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let full = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.submit(big, 1).await }
    });
    let cancel = tokio::spawn({
        let s = Arc::clone(&s);
        let small = small.clone();
        async move { s.cancel_batch(&small, LATER).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(other);
    // (Should the writer have been slow to take the first change, all three share a
    // group and the first is refused too; what follows holds either way.)
    let _ = first.await.expect("task");
    let full = full.await.expect("task");
    assert!(full.is_err(), "{full:?}");
    // SQLite rolled the whole transaction back on SQLITE_FULL; the cancel behind it
    // must not then run on its own, outside any transaction.
    let cancel = cancel.await.expect("task");
    assert!(
        matches!(cancel, Err(StoreError::Commit { .. })),
        "{cancel:?}"
    );
    let jobs = s.jobs(&small).await.expect("jobs");
    assert_eq!(
        jobs[0].state,
        JobState::Queued,
        "the refused cancel changed nothing"
    );
}

#[tokio::test]
async fn a_client_token_is_its_owners_and_the_owner_is_kept() {
    let (_d, s) = store();
    let first = s.submit(batch("t", 0, 1), 0).await.expect("submit");
    let again = s.submit(batch("t", 0, 1), 0).await.expect("again");
    assert_eq!(
        (again.batch_id.as_str(), again.existing),
        (first.batch_id.as_str(), true)
    );
    let mut bobs = batch("t", 0, 1);
    bobs.owner = "bob".into();
    let bobs = s.submit(bobs, 0).await.expect("bob's");
    assert!(!bobs.existing, "bob's token found alice's batch");
    assert_ne!(bobs.batch_id, first.batch_id);
    assert_eq!(
        s.batch(&first.batch_id).await.expect("batch").owner,
        "alice"
    );
    assert_eq!(s.batch(&bobs.batch_id).await.expect("batch").owner, "bob");
    let stats = s.stats().await.expect("stats");
    assert_eq!(stats.batches_waiting, 2);
}

#[tokio::test]
async fn fencing_tokens_are_not_one_counter() {
    let (_d, s) = store();
    s.submit(batch("t", 0, 3), 0).await.expect("submit");
    let tokens: Vec<u64> = [
        lease(&s, "w", 0, 1000).await,
        lease(&s, "w", 0, 1000).await,
        lease(&s, "w", 0, 1000).await,
    ]
    .into_iter()
    .map(|l| l.expect("leased").token)
    .collect();
    // Three consecutive leases of a counter differ by one; random 63-bit tokens almost
    // never come within a million of each other.
    for pair in tokens.windows(2) {
        assert!(
            pair[0].abs_diff(pair[1]) > 1_000_000,
            "guessable tokens: {tokens:?}"
        );
    }
    assert!(tokens.iter().all(|t| *t > 0 && *t <= i64::MAX as u64));
}

/// A one-slot CPU worker of the `worker` identity named `name`.
fn cpu_worker(name: &str) -> NewWorker {
    NewWorker {
        name: name.into(),
        identity: "worker".into(),
        device: "cpu".into(),
        gpu_model: String::new(),
        gpu_memory_bytes: 0,
        slots: 1,
        capacity: Capacity::default(),
    }
}

/// What version 5 added: attempt times.
const FORGET_ATTEMPT_TIMES: &str =
    "ALTER TABLE jobs DROP COLUMN started_ms; ALTER TABLE jobs DROP COLUMN ended_ms;";

#[tokio::test]
async fn a_version_4_database_gains_attempt_times_unknown_until_the_next_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path).expect("open");
    let id = s
        .submit(batch("t", 0, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    let w = s
        .register_worker(cpu_worker("w"), 0)
        .await
        .expect("register");
    let held = lease(&s, &w, 10, 100).await.expect("job");
    drop(s);
    let conn = Connection::open(&path).expect("raw");
    conn.execute_batch(&format!("{FORGET_ATTEMPT_TIMES} PRAGMA user_version = 4;"))
        .expect("make it version 4");
    drop(conn);
    let s = SqliteStore::open(&path).expect("migrate");
    let before = s.job(&held.job_id).await.expect("job");
    assert_eq!((before.started_ms, before.ended_ms), (None, None));
    assert_eq!(before.state, JobState::Leased, "the lease survives");
    let next = lease(&s, &w, 20, 100).await.expect("job");
    let after = s
        .complete(&next.job_id, next.token, done("o.png"), 70)
        .await
        .expect("complete")
        .changed;
    assert_eq!((after.started_ms, after.ended_ms), (Some(20), Some(70)));
    assert_eq!(s.jobs(&id).await.expect("jobs").len(), 2);
}

#[tokio::test]
async fn each_attempt_records_when_it_started_and_ended() {
    let (_d, s) = store();
    let id = s
        .submit(batch("t", 0, 3), 0)
        .await
        .expect("submit")
        .batch_id;
    let w = s
        .register_worker(cpu_worker("w"), 0)
        .await
        .expect("register");
    let times = |r: &JobRecord| (r.started_ms, r.ended_ms);
    let first = lease(&s, &w, 100, 1_000).await.expect("job");
    assert_eq!(
        times(&s.job(&first.job_id).await.expect("job")),
        (Some(100), None),
        "a leased attempt runs"
    );
    let failed = s
        .fail(&first.job_id, first.token, "oom", true, 400)
        .await
        .expect("fail")
        .changed;
    assert_eq!(failed.state, JobState::Queued);
    assert_eq!(
        times(&failed),
        (Some(100), Some(400)),
        "a requeued job keeps its last attempt's times"
    );
    let again = lease(&s, &w, 500, 1_000).await.expect("job");
    assert_eq!(again.job_id, first.job_id);
    assert_eq!(
        times(&s.job(&again.job_id).await.expect("job")),
        (Some(500), None),
        "a new attempt starts afresh"
    );
    let finished = s
        .complete(&again.job_id, again.token, done("o.png"), 900)
        .await
        .expect("complete")
        .changed;
    assert_eq!(times(&finished), (Some(500), Some(900)));
    let running = lease(&s, &w, 1_000, 1_000).await.expect("job");
    let expired = s.expire(2_500).await.expect("expire").changed;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        times(&expired[0]),
        (Some(1_000), Some(2_500)),
        "expiry ends it when noticed"
    );
    let held = lease(&s, &w, 3_000, 1_000).await.expect("job");
    let cancelled = s.cancel_batch(&id, 3_200).await.expect("cancel");
    let by_id = |j: &str| cancelled.iter().find(|r| r.job_id == j).expect("cancelled");
    assert_eq!(
        times(by_id(&held.job_id)),
        (Some(3_000), Some(3_200)),
        "a cancelled attempt ends"
    );
    let queued = cancelled
        .iter()
        .find(|r| r.job_id != held.job_id)
        .expect("the queued one");
    assert_eq!(
        held.job_id, running.job_id,
        "the expired job comes first again"
    );
    assert_eq!(
        times(queued),
        (None, None),
        "cancelling a job that never ran gives it no times"
    );
    let last_word = s
        .fail(&held.job_id, held.token, "cancelled", false, 3_900)
        .await
        .expect("the holder's last word")
        .changed;
    assert_eq!(last_word.state, JobState::Cancelled);
    assert_eq!(
        times(&last_word),
        (Some(3_000), Some(3_200)),
        "the holder's last word keeps the cancel's end"
    );
}

#[tokio::test]
async fn a_version_3_database_gains_batch_counts_filled_from_its_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path).expect("open");
    let id = s
        .submit(batch("t", 0, 5), 0)
        .await
        .expect("submit")
        .batch_id;
    let w = s
        .register_worker(cpu_worker("w"), 0)
        .await
        .expect("register");
    let held = lease(&s, &w, 0, 100).await.expect("job");
    s.cancel_job(&held.job_id, LATER).await.expect("cancel");
    lease(&s, &w, 1, 100).await.expect("job");
    let before = s.batch(&id).await.expect("batch").counts;
    assert_eq!(
        before,
        BTreeMap::from([
            (JobState::Queued, 3),
            (JobState::Leased, 1),
            (JobState::Cancelled, 1)
        ]),
        "the trigger moves each job's count with its state"
    );
    drop(s);
    let conn = Connection::open(&path).expect("raw");
    conn.execute_batch(&format!(
        "{FORGET_ATTEMPT_TIMES} DROP TRIGGER jobs_state_count; DROP TABLE batch_counts;
             PRAGMA user_version = 3;"
    ))
    .expect("make it version 3");
    drop(conn);
    let s = SqliteStore::open(&path).expect("migrate");
    assert_eq!(
        s.batch(&id).await.expect("batch").counts,
        before,
        "filled from the jobs"
    );
}

#[tokio::test]
async fn older_databases_gain_owners_identities_and_worker_capacities() {
    for version in [1, 2] {
        older_database(version).await;
    }
}

async fn older_database(version: i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path).expect("open");
    let id = s
        .submit(batch("t", 0, 1), 0)
        .await
        .expect("submit")
        .batch_id;
    let capacity = Capacity {
        cuda: true,
        max_job_memory_bytes: 5 << 30,
    };
    let worker = s
        .register_worker(
            NewWorker {
                name: "gpu".into(),
                identity: "worker".into(),
                device: "cuda:0".into(),
                gpu_model: "H100".into(),
                gpu_memory_bytes: 80 << 30,
                slots: 1,
                capacity,
            },
            0,
        )
        .await
        .expect("register");
    drop(s);
    let conn = Connection::open(&path).expect("raw");
    let older = if version == 1 {
        "ALTER TABLE batches DROP COLUMN owner; ALTER TABLE workers DROP COLUMN identity;
         ALTER TABLE jobs DROP COLUMN expiries; ALTER TABLE jobs DROP COLUMN expired_workers;"
    } else {
        ""
    };
    conn.execute_batch(&format!(
        "{older} {FORGET_ATTEMPT_TIMES} ALTER TABLE workers DROP COLUMN max_job_memory_bytes;
         DROP TRIGGER jobs_state_count; DROP TABLE batch_counts; PRAGMA user_version = {version};"
    ))
    .expect("make it an older version");
    drop(conn);
    let s = SqliteStore::open(&path).expect("migrate");
    let known = s.workers().await.expect("workers");
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].id, worker);
    assert_eq!(
        known[0].worker.capacity,
        Capacity {
            cuda: true,
            max_job_memory_bytes: 0
        },
        "a worker from before capacities has not said"
    );
    if version == 2 {
        assert_eq!(known[0].worker.identity, "worker");
    }
    assert_eq!(
        s.batch(&id).await.expect("batch").owner,
        if version == 1 { "" } else { "alice" }
    );
    let again = s.submit(batch("u", 0, 1), 0).await.expect("submit");
    assert_eq!(
        s.batch(&again.batch_id).await.expect("batch").owner,
        "alice"
    );
}

#[tokio::test]
async fn every_expired_lease_spends_an_attempt_and_the_last_one_fails_the_job_saying_how() {
    let (_d, s) = store();
    let id = s
        .submit(batch("t", 0, 2), 0)
        .await
        .expect("submit")
        .batch_id;
    // Three workers each lease the first job and vanish (max_attempts is 3).
    let mut now = 0;
    for (i, w) in ["a", "b", "c"].into_iter().enumerate() {
        let l = lease(&s, w, now, 100).await.expect("job");
        assert_eq!((l.name.as_str(), l.attempt), ("out0", i as u32 + 1));
        now += 101;
        let expired = s.expire(now).await.expect("expire").changed;
        assert_eq!(expired.len(), 1);
        let want = if i < 2 {
            JobState::Queued
        } else {
            JobState::Failed
        };
        assert_eq!(expired[0].state, want, "after {w}'s lease expired");
    }
    let jobs = s.jobs(&id).await.expect("jobs");
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(
        jobs[0].error.as_deref(),
        Some("attempts spent (3 of 3): lease expired 3 times, workers a, b, c")
    );
    // Never leased again; the batch's other job still runs.
    let next = lease(&s, "d", now, 100).await.expect("the other job");
    assert_eq!(next.name, "out1");
    s.complete(&next.job_id, next.token, done("out1.png"), LATER)
        .await
        .expect("complete");
    assert!(
        lease(&s, "e", now, 100).await.is_none(),
        "a failed job was leased again"
    );
}

/// Four jobs: out0; out1 after out0; out2 after out1; out3 after out0.
fn chained(token: &str) -> NewBatch {
    let mut b = batch(token, 0, 4);
    for (i, after) in [vec![], vec![0], vec![1], vec![0]].into_iter().enumerate() {
        b.jobs[i].after = after;
    }
    b
}

#[tokio::test]
async fn jobs_wait_for_what_they_run_after_failures_block_their_dependants_and_retry_brings_them_back(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path).expect("open");
    let id = s.submit(chained("t"), 0).await.expect("submit").batch_id;
    let w = s
        .register_worker(cpu_worker("w"), 0)
        .await
        .expect("register");
    async fn state(s: &SqliteStore, id: &str, n: usize) -> JobRecord {
        s.job(&format!("{id}-j{n:06}")).await.expect("job")
    }
    assert_eq!(
        s.batch(&id).await.expect("batch").counts,
        BTreeMap::from([(JobState::Queued, 1), (JobState::Waiting, 3)])
    );
    let first = lease(&s, &w, 0, 1_000)
        .await
        .expect("the one that waits on nothing");
    assert_eq!(first.name, "out0");
    assert!(lease(&s, &w, 1, 1_000).await.is_none(), "the others wait");
    assert_eq!(
        s.result_of(&id, "out0").await.expect("result"),
        None,
        "no result while it runs"
    );
    let settled = s
        .complete(&first.job_id, first.token, done("o0.png"), 2)
        .await
        .expect("complete");
    assert_eq!(
        s.result_of(&id, "out0").await.expect("result").as_deref(),
        Some("o0.png"),
        "a succeeded job's result, by name"
    );
    assert_eq!(s.result_of(&id, "nothing").await.expect("result"), None);
    assert_eq!(state(&s, &id, 1).await.state, JobState::Queued, "released");
    assert_eq!(state(&s, &id, 3).await.state, JobState::Queued, "released");
    assert_eq!(
        state(&s, &id, 2).await.state,
        JobState::Waiting,
        "out1 has not run"
    );
    let mut released: Vec<&str> = settled.dependants.iter().map(|j| j.name.as_str()).collect();
    released.sort_unstable();
    assert_eq!(
        released,
        ["out1", "out3"],
        "the completion returns what it released"
    );

    let second = lease(&s, &w, 3, 1_000).await.expect("out1");
    assert_eq!(second.name, "out1");
    s.fail(&second.job_id, second.token, "corrupt input", false, 4)
        .await
        .expect("fail");
    let blocked = state(&s, &id, 2).await;
    assert_eq!(blocked.state, JobState::Blocked);
    assert_eq!(
        blocked.error.as_deref(),
        Some("runs after out1, which failed")
    );
    let fourth = lease(&s, &w, 5, 1_000).await.expect("out3 still runs");
    assert_eq!(fourth.name, "out3");
    s.complete(&fourth.job_id, fourth.token, done("o3.png"), 6)
        .await
        .expect("complete");
    assert!(
        lease(&s, &w, 7, 1_000).await.is_none(),
        "a blocked job is not leased"
    );
    assert_eq!(
        s.batch(&id).await.expect("batch").state(),
        BatchState::Failed,
        "every job has ended, one failed"
    );

    // A retry brings back the failed job and the one it blocked, which waits again; the
    // store reopened (as after kill -9) keeps it waiting.
    let retried = s.retry(&id, false).await.expect("retry");
    let mut names: Vec<&str> = retried.iter().map(|j| j.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["out1", "out2"], "each change is returned, in order");
    drop(s);
    let s = SqliteStore::open(&path).expect("reopen");
    assert_eq!(state(&s, &id, 1).await.state, JobState::Queued);
    let waiting = state(&s, &id, 2).await;
    assert_eq!((waiting.state, waiting.error), (JobState::Waiting, None));
    let again = lease(&s, &w, 8, 1_000).await.expect("out1 again");
    assert_eq!(again.name, "out1");
    assert!(lease(&s, &w, 9, 1_000).await.is_none(), "out2 still waits");
    s.complete(&again.job_id, again.token, done("o1.png"), 10)
        .await
        .expect("complete");
    let last = lease(&s, &w, 11, 1_000).await.expect("out2 runs at last");
    assert_eq!(last.name, "out2");
}

#[tokio::test]
async fn cancelling_a_job_blocks_what_runs_after_it_at_any_depth_and_a_cancelled_batch_leaves_none_waiting(
) {
    let (_d, s) = store();
    let id = s.submit(chained("t"), 0).await.expect("submit").batch_id;
    let job = |n: usize| format!("{id}-j{n:06}");
    s.cancel_job(&job(0), 1).await.expect("cancel the first");
    for n in 1..4 {
        let j = s.job(&job(n)).await.expect("job");
        assert_eq!(j.state, JobState::Blocked, "{j:?}");
        assert_eq!(
            j.error.as_deref(),
            Some("runs after out0, which was cancelled"),
            "at any depth"
        );
    }
    assert!(
        matches!(
            s.cancel_job(&job(2), 2).await,
            Err(StoreError::AlreadyEnded { .. })
        ),
        "a blocked job has ended"
    );
    // Retried without the cancelled ones, the blocked stay blocked; with them, all wait
    // or run again.
    s.retry(&id, false).await.expect("retry");
    assert_eq!(s.job(&job(3)).await.expect("job").state, JobState::Blocked);
    s.retry(&id, true).await.expect("retry");
    assert_eq!(s.job(&job(0)).await.expect("job").state, JobState::Queued);
    assert_eq!(s.job(&job(3)).await.expect("job").state, JobState::Waiting);

    let other = s.submit(chained("u"), 0).await.expect("submit").batch_id;
    s.cancel_batch(&other, 3).await.expect("cancel");
    let counts = s.batch(&other).await.expect("batch").counts;
    assert_eq!(counts.get(&JobState::Cancelled), Some(&4), "{counts:?}");
}
