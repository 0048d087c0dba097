//! `make bench-coordinator`: simulated workers (no libtorch) against a real
//! `stylefarm-coordinator` process on loopback.
//!
//! Two runs of 100,000 jobs in 20 batches each, 1,000 workers that lease, heartbeat once
//! and complete until the queue is empty, each completion followed by a LeaseJob for
//! the next job, as the real worker does:
//! - paced: each simulated job takes 0.5 to 1.5 times `STYLEFARM_BENCH_JOB_MS` (default
//!   150 ms, seeded, split around the heartbeat), so 1,000 workers offer a bit over
//!   5,000 leases/s. This is
//!   the goal's case: does the coordinator keep up, and how long does a lease take?
//! - saturated: no job time at all, every worker hammers the coordinator back to back.
//!   This measures the most it can do; latency is then queueing (Little's law: 1,000
//!   requests in flight divided by the throughput).
//!
//! Prints leases per second, p50/p99 lease latency as the worker sees it, and the
//! coordinator's CPU. The reference, in the same run with the same connections and
//! concurrency, is the gRPC health check: an empty round trip on this machine. Sizes
//! can be changed with STYLEFARM_BENCH_JOBS and STYLEFARM_BENCH_WORKERS.
//!
//! Everything runs twice, on a coordinator of its own each: over TLS with bearer tokens
//! (the default) and in plaintext (`--insecure`); the last line gives their ratio.

use stylefarm_testkit::farm as common;

use std::time::{Duration, Instant};

use common::Coordinator;
use stylefarm_net::client::Channel;
use stylefarm_proto::v1;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

// The simulated workers share the machine with the coordinator: keep them cheap.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 32;
const BATCHES: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Clock ticks of 1/100 s (USER_HZ on Linux).
    (tick(11) + tick(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn channels(c: &Coordinator) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(c.channel("worker").await);
    }
    out
}

/// One worker: lease, heartbeat, complete until the queue is empty, spending between
/// half and 1.5 times `job` (seeded, uniform) on each job. Returns LeaseJob latencies.
async fn worker(ch: Channel, id: String, seed: u64, job: Duration) -> Vec<Duration> {
    let mut w = WorkerServiceClient::new(ch);
    let mut rng = stylefarm_core::rng::SplitMix64::new(seed);
    let mut lat = Vec::new();
    loop {
        let leased_at = Instant::now();
        let Some(l) = w
            .lease_job(v1::LeaseJobRequest {
                worker_id: id.clone(),
                wait_ms: 0,
            })
            .await
            .expect("lease")
            .into_inner()
            .lease
        else {
            break;
        };
        lat.push(leased_at.elapsed());
        let this_job = job.mul_f32(0.5 + rng.next_f32());
        tokio::time::sleep(this_job / 2).await;
        let hb = v1::HeartbeatRequest {
            worker_id: id.clone(),
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            iteration: 10,
            losses: Some(v1::Losses {
                content: 1.0,
                style: 1.0,
                tv: 1.0,
                total: 3.0,
                temporal: 0.0,
            }),
            checkpoint_key: format!("{}/ck-10", l.attempt_prefix),
        };
        w.heartbeat(hb).await.expect("heartbeat");
        tokio::time::sleep(this_job / 2).await;
        let done = v1::CompleteJobRequest {
            worker_id: id.clone(),
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            result_key: format!("{}/out.png", l.attempt_prefix),
            sidecar_key: format!("{}/out.json", l.attempt_prefix),
            iteration: 10,
            losses: None,
        };
        w.complete_job(done).await.expect("complete");
    }
    lat
}

async fn reference(chs: &[Channel], workers: usize, calls: usize) -> f64 {
    let per = calls / workers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..workers {
        let mut h = HealthClient::new(chs[i % chs.len()].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    (per * workers) as f64 / start.elapsed().as_secs_f64()
}

/// The server-side lease latency histogram: (bucket upper bound in ms, cumulative count).
fn server_buckets(c: &Coordinator) -> Vec<(f64, f64)> {
    let (_, body) = c.http_get("/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("stylefarm_lease_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((
                le.parse::<f64>().unwrap_or(f64::INFINITY) * 1e3,
                n.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// The smallest bucket bound under which `p` of the leases between two scrapes fell.
fn server_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let total = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    after
        .iter()
        .zip(before)
        .find(|((_, a), (_, b))| a - b >= p * total)
        .map_or(f64::INFINITY, |((le, _), _)| *le)
}

struct Run {
    leases_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_p99_ms: f64,
    cpu_s: f64,
    wall_s: f64,
}

async fn submit_all(c: &Coordinator, tag: &str, jobs: usize) {
    let t = Instant::now();
    let mut client = c.client().await;
    let per_batch = jobs.div_ceil(BATCHES);
    let mut submitted = 0;
    for b in 0..BATCHES {
        let n = per_batch.min(jobs - submitted);
        if n == 0 {
            break;
        }
        client
            .submit_batch(common::submit(&format!("{tag}{b}"), 0, n))
            .await
            .expect("submit");
        submitted += n;
    }
    println!(
        "{tag}: submitted {submitted} jobs in {BATCHES} batches in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

async fn run(c: &Coordinator, chs: &[Channel], ids: &[String], jobs: usize, job: Duration) -> Run {
    let pid = c.proc.id();
    let cpu0 = cpu_seconds(pid);
    let buckets0 = server_buckets(c);
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            tokio::spawn(worker(
                chs[i % chs.len()].clone(),
                id.clone(),
                i as u64,
                job,
            ))
        })
        .collect();
    let mut lat = Vec::with_capacity(jobs);
    for t in tasks {
        lat.extend(t.await.expect("worker"));
    }
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid) - cpu0;
    lat.sort();
    assert_eq!(lat.len(), jobs, "every job leased exactly once");
    Run {
        leases_per_s: lat.len() as f64 / wall_s,
        p50_ms: percentile(&lat, 0.50).as_secs_f64() * 1e3,
        p99_ms: percentile(&lat, 0.99).as_secs_f64() * 1e3,
        server_p99_ms: server_quantile(&buckets0, &server_buckets(c), 0.99),
        cpu_s,
        wall_s,
    }
}

// One thread for the simulated workers and one gRPC thread (plus the database writer)
// for the coordinator: on 2 cores, more threads only add cross-thread wake-ups.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let jobs = env_usize("STYLEFARM_BENCH_JOBS", 100_000);
    let workers = env_usize("STYLEFARM_BENCH_WORKERS", 1000);
    let job_ms = env_usize("STYLEFARM_BENCH_JOB_MS", 150);
    // The same work over TLS with tokens (the default) and in plaintext (--insecure),
    // each on a coordinator of its own.
    let secure = measure("TLS + tokens", &[], jobs, workers, job_ms).await;
    let plain = measure("plaintext", &["--insecure"], jobs, workers, job_ms).await;

    println!();
    println!(
        "{} CPUs shared by the coordinator (1 gRPC thread + the database writer) and the simulated workers (1 thread); {jobs} jobs per run, {workers} workers, {CONNECTIONS} connections",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| transport | run | leases/s | lease p50 | lease p99 | store p99 (bucket) | coordinator CPU | wall |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for m in [&secure, &plain] {
        for (name, r) in [
            (format!("paced ({job_ms} ms jobs)"), &m.paced),
            ("saturated (0 ms jobs)".to_owned(), &m.saturated),
        ] {
            println!(
                "| {} | {name} | {:.0} | {:.2} ms | {:.2} ms | <= {} ms | {:.1} s ({:.0}% of a core) | {:.1} s |",
                m.name, r.leases_per_s, r.p50_ms, r.p99_ms, r.server_p99_ms, r.cpu_s, 100.0 * r.cpu_s / r.wall_s, r.wall_s
            );
        }
    }
    println!(
        "goal: >= 5000 leases/s with p99 <= 20 ms (paced run); TLS + tokens >= 0.8 of plaintext"
    );
    for m in [&secure, &plain] {
        println!(
            "reference ({}): empty gRPC health checks {:.0}/s (coordinator at {:.0}% of a core); saturated coordinator RPCs/s (2 per job) to empty RPCs/s: {:.2}",
            m.name,
            m.rpc_per_s,
            100.0 * m.ref_cpu,
            2.0 * m.saturated.leases_per_s / m.rpc_per_s
        );
    }
    println!(
        "ratio, TLS + tokens to plaintext leases/s: paced {:.2}, saturated {:.2}",
        secure.paced.leases_per_s / plain.paced.leases_per_s,
        secure.saturated.leases_per_s / plain.saturated.leases_per_s
    );
}

/// Both runs and the reference against one coordinator started with `extra`.
struct Measured {
    name: &'static str,
    paced: Run,
    saturated: Run,
    rpc_per_s: f64,
    ref_cpu: f64,
}

async fn measure(
    name: &'static str,
    extra: &[&str],
    jobs: usize,
    workers: usize,
    job_ms: usize,
) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--lease-ms", "600000", "--worker-threads", "1"];
    args.extend_from_slice(extra);
    let c = Coordinator::start(&dir.path().join("bench.db"), &args);
    let pid = c.proc.id();
    let chs = channels(&c).await;
    let mut ids = Vec::new();
    for i in 0..workers {
        let mut w = WorkerServiceClient::new(chs[i % CONNECTIONS].clone());
        let r = w
            .register_worker(common::register(&format!("sim{i}")))
            .await
            .expect("register");
        ids.push(r.into_inner().worker_id);
    }

    submit_all(&c, "paced", jobs).await;
    let paced = run(&c, &chs, &ids, jobs, Duration::from_millis(job_ms as u64)).await;
    submit_all(&c, "saturated", jobs).await;
    let saturated = run(&c, &chs, &ids, jobs, Duration::ZERO).await;

    let ref_cpu0 = cpu_seconds(pid);
    let ref_start = Instant::now();
    let rpc_per_s = reference(&chs, workers, 2 * jobs.min(50_000)).await;
    let ref_cpu = (cpu_seconds(pid) - ref_cpu0) / ref_start.elapsed().as_secs_f64();
    Measured {
        name,
        paced,
        saturated,
        rpc_per_s,
        ref_cpu,
    }
}
