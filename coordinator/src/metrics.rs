//! Prometheus metrics. Counters and the lease-latency histogram are updated as things
//! happen; job and queue gauges are read from the store at scrape time, so they are
//! never out of step with it.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::model::{JobState, Stats};

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Time the store takes to pick and lease a job.
    pub lease_seconds: Histogram,
    /// Leases handed out.
    pub leases: IntCounter,
    /// Leases that ran past their deadline.
    pub expirations: IntCounter,
    /// Attempts reported finished, by outcome.
    pub attempts: IntCounterVec,
    jobs: IntGaugeVec,
    batches_waiting: IntGauge,
    workers_live: IntGauge,
    workers_registered: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let lease_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "stylefarm_lease_seconds",
                "Time to pick and durably lease a job",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid histogram");
        let leases =
            IntCounter::new("stylefarm_leases_total", "Leases handed out").expect("valid counter");
        let expirations = IntCounter::new(
            "stylefarm_lease_expirations_total",
            "Leases that passed their deadline and were requeued",
        )
        .expect("valid counter");
        let attempts = IntCounterVec::new(
            Opts::new("stylefarm_attempts_total", "Attempts reported finished"),
            &["outcome"],
        )
        .expect("valid counter");
        let jobs = IntGaugeVec::new(Opts::new("stylefarm_jobs", "Jobs by state"), &["state"])
            .expect("valid gauge");
        // Counts only: no batch id, name or owner becomes a label (they would tell
        // anyone who reaches the metrics port what is being rendered, and grow without
        // bound).
        let batches_waiting =
            IntGauge::new("stylefarm_batches_waiting", "Batches with queued jobs")
                .expect("valid gauge");
        let workers_live = IntGauge::new(
            "stylefarm_workers_live",
            "Workers heard from within one lease period",
        )
        .expect("valid gauge");
        let workers_registered =
            IntGauge::new("stylefarm_workers_registered", "Workers ever registered")
                .expect("valid gauge");
        for c in [
            Box::new(lease_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(leases.clone()),
            Box::new(expirations.clone()),
            Box::new(attempts.clone()),
            Box::new(jobs.clone()),
            Box::new(batches_waiting.clone()),
            Box::new(workers_live.clone()),
            Box::new(workers_registered.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            lease_seconds,
            leases,
            expirations,
            attempts,
            jobs,
            batches_waiting,
            workers_live,
            workers_registered,
        }
    }

    /// The text exposition, with gauges set from `stats` and the worker counts.
    pub fn render(&self, stats: &Stats, live: usize, registered: usize) -> String {
        for s in JobState::ALL {
            let n = stats.jobs_by_state.get(&s).copied().unwrap_or(0);
            self.jobs.with_label_values(&[s.as_str()]).set(n as i64);
        }
        self.batches_waiting.set(stats.batches_waiting as i64);
        self.workers_live.set(live as i64);
        self.workers_registered.set(registered as i64);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric kinds.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
