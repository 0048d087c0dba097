//! The control plane's security against a real coordinator over TLS: every RPC against
//! every kind of caller, leases bound to the worker that holds them, keys confined to
//! the attempt, certificates (wrong CA, plaintext, expired, mutual TLS, rotation) and
//! tokens files re-read on change and on SIGHUP.

use stylefarm_testkit::farm as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Coordinator;
use stylefarm_coordinator::Config;
use stylefarm_net::client::Channel;
use stylefarm_net::ClientAuth;
use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use stylefarm_testkit::pki::{self, Pki, Purpose};
use tonic::Code;

/// The callers of the table: no token, a made-up token, and one identity per role
/// (alice owns the batches the table changes; bob is another submitter).
const CALLERS: [&str; 6] = ["none", "bad", "worker", "alice", "bob", "admin"];

fn auth(c: &Coordinator, caller: &str) -> ClientAuth {
    let s = c.security.as_ref().expect("a secure coordinator");
    let token = match caller {
        "none" => None,
        "bad" => Some("sft_0000000000000000000000000000000000000000000000000000000000000000"),
        name => Some(s.tokens.token(name)),
    };
    ClientAuth::with_ca(&s.pki.ca, token).expect("CA")
}

async fn channel(c: &Coordinator, caller: &str) -> Channel {
    auth(c, caller)
        .connect(&c.grpc)
        .await
        .expect("connect over TLS")
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    code_of(&r)
}

fn code_of<T>(r: &Result<T, tonic::Status>) -> Code {
    r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)
}

/// A batch of `n` jobs submitted by `who`; its id and its jobs' ids.
async fn batch_of(
    c: &Coordinator,
    who: &str,
    token: &str,
    priority: i32,
    n: usize,
) -> (String, Vec<String>) {
    let mut client = c.client_as(who).await;
    let id = client
        .submit_batch(common::submit(token, priority, n))
        .await
        .expect("submit")
        .into_inner()
        .batch_id;
    let jobs = client
        .get_batch(v1::GetBatchRequest {
            batch_id: id.clone(),
            include_jobs: true,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    (id, jobs)
}

async fn register(w: &mut WorkerServiceClient<Channel>, name: &str) -> String {
    w.register_worker(common::register(name))
        .await
        .expect("register")
        .into_inner()
        .worker_id
}

async fn lease(w: &mut WorkerServiceClient<Channel>, worker_id: &str) -> v1::Lease {
    w.lease_job(v1::LeaseJobRequest {
        worker_id: worker_id.into(),
        wait_ms: 0,
    })
    .await
    .expect("lease")
    .into_inner()
    .lease
    .expect("a job")
}

fn heartbeat(worker_id: &str, l: &v1::Lease, checkpoint_key: String) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        worker_id: worker_id.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        iteration: 1,
        losses: None,
        checkpoint_key,
    }
}

fn complete(worker_id: &str, l: &v1::Lease, result_key: String) -> v1::CompleteJobRequest {
    v1::CompleteJobRequest {
        worker_id: worker_id.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        sidecar_key: String::new(),
        result_key,
        iteration: 1,
        losses: None,
    }
}

fn fail(worker_id: &str, l: &v1::Lease) -> v1::FailJobRequest {
    v1::FailJobRequest {
        worker_id: worker_id.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        error: "test".into(),
        retryable: true,
    }
}

fn release(worker_id: &str, l: &v1::Lease) -> v1::ReleaseJobRequest {
    v1::ReleaseJobRequest {
        worker_id: worker_id.into(),
        job_id: l.job_id.clone(),
        fencing_token: l.fencing_token,
        checkpoint_key: String::new(),
        iteration: 0,
    }
}

/// What each caller gets from each RPC.
fn expected() -> BTreeMap<(&'static str, &'static str), Code> {
    use Code::{Ok, PermissionDenied as Denied, Unauthenticated as Unauth};
    let rows: [(&str, [Code; 6]); 19] = [
        //                     none    bad     worker  alice   bob     admin
        ("SubmitBatch", [Unauth, Unauth, Denied, Ok, Ok, Ok]),
        ("GetBatch", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("ListBatches", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("GetServerInfo", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("ListWorkers", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("GetJob", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("WatchBatch", [Unauth, Unauth, Ok, Ok, Ok, Ok]),
        ("CancelJob", [Unauth, Unauth, Denied, Ok, Denied, Ok]),
        ("CancelBatch", [Unauth, Unauth, Denied, Ok, Denied, Ok]),
        ("RetryJobs", [Unauth, Unauth, Denied, Ok, Denied, Ok]),
        ("RegisterWorker", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("LeaseJob", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("Heartbeat", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("CompleteJob", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("FailJob", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("ReleaseJob", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        ("LeaveFarm", [Unauth, Unauth, Ok, Denied, Denied, Ok]),
        // A submitter above its maximum priority (alice may use 10, bob 0).
        (
            "SubmitBatch at priority 10",
            [Unauth, Unauth, Denied, Ok, Denied, Ok],
        ),
        // Another identity's registered worker.
        (
            "LeaseJob as another's worker",
            [Unauth, Unauth, Denied, Denied, Denied, Denied],
        ),
    ];
    let mut out = BTreeMap::new();
    for (rpc, codes) in rows {
        for (caller, code) in CALLERS.into_iter().zip(codes) {
            out.insert((rpc, caller), code);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_caller_as_its_role_and_ownership_allow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    // Work for the workers' rows, ahead of everything else (an admin may use any priority).
    batch_of(&c, "admin", "work", 1000, 40).await;
    // Another identity's registered worker (worker2's).
    let foreign = register(&mut c.worker_as("worker2").await, "foreign").await;

    let mut got = BTreeMap::new();
    for caller in CALLERS {
        let ch = channel(&c, caller).await;
        let mut client = StyleFarmClient::new(ch.clone());
        let mut worker = WorkerServiceClient::new(ch);
        // Alice's batch that this caller's row reads and changes.
        let (target, jobs) = batch_of(&c, "alice", &format!("target-{caller}"), 0, 2).await;
        let mut put = |rpc: &'static str, code: Code| {
            got.insert((rpc, caller), code);
        };

        put(
            "SubmitBatch",
            code(
                client
                    .submit_batch(common::submit(&format!("own-{caller}"), 0, 1))
                    .await,
            ),
        );
        put(
            "SubmitBatch at priority 10",
            code(
                client
                    .submit_batch(common::submit(&format!("high-{caller}"), 10, 1))
                    .await,
            ),
        );
        let get = v1::GetBatchRequest {
            batch_id: target.clone(),
            include_jobs: false,
            ..Default::default()
        };
        put("GetBatch", code(client.get_batch(get).await));
        put(
            "ListBatches",
            code(
                client
                    .list_batches(v1::ListBatchesRequest {
                        limit: 5,
                        ..Default::default()
                    })
                    .await,
            ),
        );
        let info = client.get_server_info(v1::GetServerInfoRequest {}).await;
        if let Ok(i) = &info {
            let i = i.get_ref();
            assert_eq!(
                (i.protocol.as_str(), i.caller.as_str()),
                ("stylefarm.v1", caller)
            );
            let admin = i.roles.iter().any(|r| r == "admin");
            assert_eq!(admin, caller == "admin", "{caller}: {:?}", i.roles);
        }
        put("GetServerInfo", code_of(&info));
        let workers = client.list_workers(v1::ListWorkersRequest {}).await;
        if let Ok(w) = &workers {
            let listed = w.get_ref().workers.iter().find(|w| w.worker_id == foreign);
            let listed = listed.expect("the registered worker is listed");
            assert_eq!(
                (listed.identity.as_str(), listed.name.as_str()),
                ("worker2", "foreign"),
                "{caller}: {listed:?}"
            );
        }
        put("ListWorkers", code_of(&workers));
        let job = client
            .get_job(v1::GetJobRequest {
                job_id: jobs[1].clone(),
            })
            .await;
        if let Ok(j) = &job {
            let j = j.get_ref();
            let (status, spec) = (j.job.as_ref().expect("job"), j.spec.as_ref().expect("spec"));
            assert_eq!(status.job_id, jobs[1], "{caller}");
            assert_eq!(status.batch_id, target, "{caller}");
            assert!(
                spec.output_key
                    .starts_with(&format!("batches/{target}/outputs/")),
                "{caller}: {spec:?}"
            );
        }
        put("GetJob", code_of(&job));
        let watch = v1::WatchBatchRequest {
            batch_id: target.clone(),
        };
        put("WatchBatch", code(client.watch_batch(watch).await));
        let cancel_job = v1::CancelJobRequest {
            job_id: jobs[0].clone(),
        };
        put("CancelJob", code(client.cancel_job(cancel_job).await));
        let cancel = v1::CancelBatchRequest {
            batch_id: target.clone(),
        };
        put("CancelBatch", code(client.cancel_batch(cancel).await));
        let retry = v1::RetryJobsRequest {
            batch_id: target.clone(),
            include_cancelled: true,
        };
        put("RetryJobs", code(client.retry_jobs(retry).await));

        put(
            "LeaseJob as another's worker",
            code(
                worker
                    .lease_job(v1::LeaseJobRequest {
                        worker_id: foreign.clone(),
                        wait_ms: 0,
                    })
                    .await,
            ),
        );
        let registered = worker
            .register_worker(common::register(&format!("w-{caller}")))
            .await;
        put("RegisterWorker", code_of(&registered));
        // Callers that cannot register act as worker2's worker (their role is refused first).
        let id = registered.map_or(foreign.clone(), |r| r.into_inner().worker_id);
        let leased = worker
            .lease_job(v1::LeaseJobRequest {
                worker_id: id.clone(),
                wait_ms: 0,
            })
            .await;
        put("LeaseJob", code_of(&leased));
        // Callers that cannot lease use a lease of worker2's worker: refused before it matters.
        let mut leases = Vec::new();
        for _ in 0..3 {
            let l = match leased.as_ref() {
                Ok(_) => lease(&mut worker, &id).await,
                Err(_) => lease(&mut c.worker_as("worker2").await, &foreign).await,
            };
            leases.push(l);
        }
        if let Ok(r) = &leased {
            leases[0] = r.get_ref().lease.clone().expect("a job");
        }
        let key = format!("{}/out.png", leases[0].attempt_prefix);
        put(
            "Heartbeat",
            code(
                worker
                    .heartbeat(heartbeat(&id, &leases[0], String::new()))
                    .await,
            ),
        );
        put(
            "CompleteJob",
            code(worker.complete_job(complete(&id, &leases[0], key)).await),
        );
        put(
            "FailJob",
            code(worker.fail_job(fail(&id, &leases[1])).await),
        );
        put(
            "ReleaseJob",
            code(worker.release_job(release(&id, &leases[2])).await),
        );
        let leave = v1::LeaveFarmRequest {
            worker_id: id.clone(),
        };
        put("LeaveFarm", code(worker.leave_farm(leave).await));
    }

    let want = expected();
    let mut wrong = Vec::new();
    for (key, code) in &want {
        let g = got.get(key).copied();
        if g != Some(*code) {
            wrong.push(format!(
                "{:<30} {:<7} expected {code:?}, got {g:?}",
                key.0, key.1
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}",
        wrong.len(),
        want.len(),
        wrong.join("\n")
    );
    assert_eq!(got.len(), want.len(), "a row or caller was not exercised");

    // Ownership is shown: alice's batches say so.
    let b = c
        .client_as("bob")
        .await
        .list_batches(v1::ListBatchesRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .batches;
    assert!(
        b.iter()
            .any(|b| b.owner == "alice" && b.name == "batch-target-bob"),
        "{b:?}"
    );
    assert!(b
        .iter()
        .any(|b| b.owner == "bob" && b.name == "batch-own-bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_acts_only_on_its_own_lease_and_names_only_keys_of_its_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    batch_of(&c, "alice", "t", 0, 3).await;
    let mut mine = c.worker_as("worker").await;
    let mut theirs = c.worker_as("worker2").await;
    let holder = register(&mut mine, "holder").await;
    let sibling = register(&mut mine, "sibling").await; // same identity, another worker
    let other = register(&mut theirs, "other").await;
    let l = lease(&mut mine, &holder).await;
    let key = format!("{}/out.png", l.attempt_prefix);

    // Another identity cannot speak as the holder at all...
    for (what, got) in [
        (
            "heartbeat",
            code(
                theirs
                    .heartbeat(heartbeat(&holder, &l, String::new()))
                    .await,
            ),
        ),
        (
            "complete",
            code(
                theirs
                    .complete_job(complete(&holder, &l, key.clone()))
                    .await,
            ),
        ),
        ("fail", code(theirs.fail_job(fail(&holder, &l)).await)),
        (
            "release",
            code(theirs.release_job(release(&holder, &l)).await),
        ),
        (
            "leave",
            code(
                theirs
                    .leave_farm(v1::LeaveFarmRequest {
                        worker_id: holder.clone(),
                    })
                    .await,
            ),
        ),
    ] {
        assert_eq!(
            got,
            Code::PermissionDenied,
            "{what} as another identity's worker"
        );
    }
    // ...and no other worker, its own or the same identity's, can use the lease even with
    // the right job and token.
    for (w, client) in [(&other, &mut theirs), (&sibling, &mut mine)] {
        for (what, got) in [
            (
                "heartbeat",
                code(client.heartbeat(heartbeat(w, &l, String::new())).await),
            ),
            (
                "complete",
                code(client.complete_job(complete(w, &l, key.clone())).await),
            ),
            ("fail", code(client.fail_job(fail(w, &l)).await)),
            ("release", code(client.release_job(release(w, &l)).await)),
        ] {
            assert_eq!(
                got,
                Code::FailedPrecondition,
                "{what} by {w}, which does not hold the lease"
            );
        }
    }
    // The holder names only keys under its attempt's prefix.
    let p = &l.attempt_prefix;
    let other_attempt = p.replace("attempt-001", "attempt-002");
    for bad in [
        "inputs/x.png".to_owned(),
        format!("{p}/../../j000001/attempt-001/out.png"),
        format!("{p}out.png"),
        format!("{p}/"),
        format!("{other_attempt}/out.png"),
        "/etc/passwd".to_owned(),
    ] {
        let s = mine
            .complete_job(complete(&holder, &l, bad.clone()))
            .await
            .expect_err(&bad);
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}: {}", s.message());
        assert!(
            s.message().contains("result_key") && s.message().contains(p.as_str()),
            "{}",
            s.message()
        );
        let s = mine
            .heartbeat(heartbeat(&holder, &l, bad.clone()))
            .await
            .expect_err(&bad);
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "checkpoint {bad}: {}",
            s.message()
        );
    }
    mine.heartbeat(heartbeat(
        &holder,
        &l,
        format!("{p}/checkpoint-1.safetensors"),
    ))
    .await
    .expect("its own checkpoint");
    mine.complete_job(complete(&holder, &l, key))
        .await
        .expect("its own result");
}

/// A coordinator in this process over TLS from `pki`, with the tokens in `tokens`.
async fn serve(
    dir: &Path,
    pki: &Pki,
    tokens: &Path,
    client_ca: Option<&Path>,
) -> stylefarm_coordinator::Running {
    let mut config = Config::local(dir.join(format!("c{}.db", rand_suffix())));
    config.insecure = false;
    config.tls_cert_file = Some(pki.cert.clone());
    config.tls_key_file = Some(pki.key.clone());
    config.tls_client_ca_file = client_ca.map(Path::to_owned);
    config.tokens_file = Some(tokens.to_owned());
    config.reload_interval_ms = 100;
    stylefarm_coordinator::start(config).await.expect("start")
}

fn rand_suffix() -> String {
    stylefarm_net::token::generate()[4..12].to_owned()
}

/// The outcome of one ListBatches as `auth` against `addr`: Ok, or the whole error.
async fn try_list(auth: &ClientAuth, addr: &str) -> Result<(), String> {
    let ch = auth.connect(addr).await.map_err(|e| e.to_string())?;
    StyleFarmClient::new(ch)
        .list_batches(v1::ListBatchesRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), stylefarm_net::chain(&s)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_wrong_ca_plaintext_an_expired_certificate_and_a_missing_client_certificate()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let tokens = pki::tokens(&dir.path().join("tokens"));
    let admin = tokens.token("admin");
    let c = serve(dir.path(), &pki, &tokens.file, None).await;
    let addr = format!("https://{}", c.grpc_addr);

    let right = ClientAuth::with_ca(&pki.ca, Some(admin)).expect("CA");
    try_list(&right, &addr)
        .await
        .expect("the right CA connects");

    let stranger = pki::stranger_ca(dir.path(), "stranger");
    let err = try_list(
        &ClientAuth::with_ca(&stranger, Some(admin)).expect("CA"),
        &addr,
    )
    .await
    .expect_err("a wrong CA");
    assert!(err.contains("UnknownIssuer"), "a wrong CA: {err}");

    // Plaintext to the TLS port: the server sees no ClientHello and hangs up.
    let err = try_list(&ClientAuth::default(), &format!("http://{}", c.grpc_addr))
        .await
        .expect_err("plaintext");
    assert!(!err.is_empty(), "plaintext");

    // A certificate past its end, from the right CA.
    let (cert, key) = pki.issue("expired", Purpose::Server, pki::expired());
    let expired_pki = pki.with_server(cert, key);
    let e = serve(dir.path(), &expired_pki, &tokens.file, None).await;
    let err = try_list(&right, &format!("https://{}", e.grpc_addr))
        .await
        .expect_err("an expired certificate");
    assert!(
        err.to_lowercase().contains("expired"),
        "an expired certificate: {err}"
    );

    // Mutual TLS: no client certificate, no service; the CA's client certificate, service.
    let m = serve(dir.path(), &pki, &tokens.file, Some(&pki.ca)).await;
    let maddr = format!("https://{}", m.grpc_addr);
    // TLS 1.3 finishes the client's side of the handshake before the server checks the
    // certificate, so the client learns of the refusal as the connection closing (or, when
    // it reads first, as the CertificateRequired alert); either way no call gets through.
    let err = try_list(&right, &maddr)
        .await
        .expect_err("no client certificate");
    // (hyper reports a connection closed under a call as Unknown, Unavailable or,
    // when the close wins the race with the request, Cancelled.)
    assert!(
        err.starts_with("Unknown")
            || err.starts_with("Unavailable")
            || (err.starts_with("Cancelled") && err.contains("connection closed"))
            || err.contains("CertificateRequired"),
        "no client certificate: {err}"
    );
    let with_cert = ClientAuth::with_ca(&pki.ca, Some(admin))
        .expect("CA")
        .with_identity(&pki.client_cert, &pki.client_key)
        .expect("client identity");
    try_list(&with_cert, &maddr)
        .await
        .expect("mutual TLS with the CA's client certificate");
    for r in [c, e, m] {
        r.shutdown();
        r.wait().await.expect("stop");
    }
}

/// Polls `f` until it returns true, for at most 10 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < until, "{what} did not happen within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_tokens_and_certificates_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let tokens = pki::tokens(&dir.path().join("tokens"));
    // The coordinator serves copies, which the test then replaces as cert-manager would.
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    for (from, to) in [(&pki.cert, "tls.crt"), (&pki.key, "tls.key")] {
        std::fs::copy(from, served.join(to)).expect("copy");
    }
    let live = pki.with_server(served.join("tls.crt"), served.join("tls.key"));
    let c = serve(dir.path(), &live, &tokens.file, None).await;
    let addr = format!("https://{}", c.grpc_addr);
    let bob = ClientAuth::with_ca(&pki.ca, Some(tokens.token("bob"))).expect("CA");
    try_list(&bob, &addr).await.expect("bob before");

    // Bob's line removed, carol added: bob is refused, carol admitted.
    let text = std::fs::read_to_string(&tokens.file).expect("read");
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("bob "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text);
    std::fs::write(&tokens.file, kept).expect("write");
    let carol_token = stylefarm_net::token::add(
        &tokens.file,
        &stylefarm_net::Identity {
            name: "carol".into(),
            roles: vec![stylefarm_net::Role::Submitter],
            max_priority: 0,
        },
    )
    .expect("add carol");
    let carol = ClientAuth::with_ca(&pki.ca, Some(&carol_token)).expect("CA");
    eventually("bob refused", async || {
        try_list(&bob, &addr)
            .await
            .is_err_and(|e| e.starts_with("Unauthenticated"))
    })
    .await;
    try_list(&carol, &addr)
        .await
        .expect("carol after the reload");

    // A broken tokens file keeps the identities in use.
    std::fs::write(&tokens.file, "carol boss sha256:00\n").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    try_list(&carol, &addr)
        .await
        .expect("carol still, the broken file was not taken");

    // Rotation to a certificate from another CA: clients of the new CA get in, clients
    // of the old one no longer do.
    let next = Pki::new(&dir.path().join("next"));
    std::fs::copy(&next.cert, served.join("tls.crt")).expect("rotate cert");
    std::fs::copy(&next.key, served.join("tls.key")).expect("rotate key");
    let carol_next = ClientAuth::with_ca(&next.ca, Some(&carol_token)).expect("CA");
    eventually("the new certificate served", async || {
        try_list(&carol_next, &addr).await.is_ok()
    })
    .await;
    let err = try_list(&carol, &addr)
        .await
        .expect_err("the old CA no longer fits");
    assert!(err.contains("UnknownIssuer"), "{err}");
    c.shutdown();
    c.wait().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_tokens_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Polling once an hour: only the signal can make the change take effect in time.
    let c = Coordinator::start(
        &dir.path().join("c.db"),
        &["--reload-interval-ms", "3600000"],
    );
    let s = c.security.as_ref().expect("secure");
    let bob = auth(&c, "bob");
    try_list(&bob, &c.grpc).await.expect("bob before");
    let text = std::fs::read_to_string(&s.tokens.file).expect("read");
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("bob "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.tokens.file, kept).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    try_list(&bob, &c.grpc)
        .await
        .expect("no reload without the signal");
    c.proc.signal("HUP");
    eventually("bob refused after SIGHUP", async || {
        try_list(&bob, &c.grpc)
            .await
            .is_err_and(|e| e.starts_with("Unauthenticated"))
    })
    .await;
    let (status, _) = c.http_get("/livez");
    assert!(
        status.contains("200"),
        "SIGHUP does not stop the coordinator: {status}"
    );
}

#[test]
fn the_coordinator_refuses_to_serve_unprotected_unless_told() {
    let bin = stylefarm_testkit::process::workspace_bin("stylefarm-coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let run = |args: &[&str]| {
        let listen = if args.contains(&"--insecure") {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let out = stylefarm_testkit::process::output_within(
            std::process::Command::new(&bin)
                .args([
                    "--listen",
                    listen,
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--db",
                ])
                .arg(&db)
                .args(args)
                .env_remove("STYLEFARM_INSECURE"),
            Duration::from_secs(20),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&[]);
    assert!(
        !ok && err.contains("refusing to serve without TLS"),
        "{err}"
    );
    let (ok, err) = run(&["--insecure"]);
    assert!(!ok && err.contains("--insecure-non-loopback"), "{err}");
    let pki = Pki::new(&dir.path().join("pki"));
    let (ok, err) = run(&[
        "--tls-cert-file",
        pki.cert.to_str().expect("utf-8"),
        "--tls-key-file",
        pki.key.to_str().expect("utf-8"),
    ]);
    assert!(
        !ok && err.contains("a tokens file (--tokens-file)"),
        "{err}"
    );
}

#[test]
fn token_add_prints_the_token_once_and_keeps_only_its_hash() {
    let bin = stylefarm_testkit::process::workspace_bin("stylefarm-coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    let add = |name: &str, extra: &[&str]| {
        stylefarm_testkit::process::output_within(
            std::process::Command::new(&bin)
                .args(["token", "add", name, "--tokens-file"])
                .arg(&file)
                .args(extra),
            Duration::from_secs(20),
        )
    };
    let out = add("alice", &["--role", "submitter", "--max-priority", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(token.starts_with("sft_"), "{token}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        !text.contains(&token)
            && text.starts_with("alice submitter sha256:")
            && text.contains("max-priority=5"),
        "{text}"
    );
    let tokens = stylefarm_net::Tokens::load(&file).expect("load");
    assert_eq!(tokens.identify(&token).expect("alice").max_priority, 5);
    let out = add("alice", &["--role", "admin"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("already has an identity named \"alice\"")
    );
    let out = add("ops", &["--role", "worker,admin"]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&file)
        .expect("read")
        .contains("ops worker,admin sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_per_identity_and_one_that_is_never_read_does_not_stall_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let (batch, _) = batch_of(&c, "alice", "big", 0, 5000).await;
    let watch = || v1::WatchBatchRequest {
        batch_id: batch.clone(),
    };
    // Bob opens as many as he may and reads none of them.
    let mut bob = c.client_as("bob").await;
    let mut open = Vec::new();
    for _ in 0..stylefarm_coordinator::state::MAX_WATCHES_PER_IDENTITY {
        open.push(
            bob.watch_batch(watch())
                .await
                .expect("a watch within the limit"),
        );
    }
    let s = bob.watch_batch(watch()).await.expect_err("one too many");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("bob already follows 64 batches"),
        "{}",
        s.message()
    );
    // Others are not affected; a closed stream frees its place.
    c.client_as("alice")
        .await
        .watch_batch(watch())
        .await
        .expect("alice watches");
    drop(open.pop());
    eventually("bob's closed watch frees its place", async || {
        bob.watch_batch(watch()).await.is_ok()
    })
    .await;
    // 5,000 jobs never read by 64 streams: SIGTERM still ends the coordinator promptly.
    c.proc.signal("TERM");
    let exit = c.proc.wait_within(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    drop(open);
}
