//! The worker service (`stylefarm.v1.WorkerService`): registration, long-polled leases
//! with fencing tokens, heartbeats, completion and failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use stylefarm_proto::v1::{self, worker_service_server::WorkerService};
use stylefarm_proto::PROTOCOL_VERSION;
use tonic::{Request, Response, Status};

use stylefarm_net::Role;

use super::convert;
use super::error::ApiError;
use crate::auth;
use crate::model::{Completion, JobRecord, Lease, LeaseAsk, Losses};
use crate::state::{Seen, State};
use crate::store::{Store, StoreError};

/// Serves [`WorkerService`] over the shared state.
pub struct WorkerApi<S> {
    state: Arc<State<S>>,
}

impl<S> WorkerApi<S> {
    /// The service over `state`.
    pub fn new(state: Arc<State<S>>) -> Self {
        Self { state }
    }
}

impl<S: Store> WorkerApi<S> {
    /// The worker a call names, when the caller may act as a worker and registered it.
    fn known_worker<'a, T>(
        &self,
        req: &'a Request<T>,
        worker_id: impl Fn(&T) -> &str,
    ) -> Result<&'a str, ApiError> {
        let who = auth::caller(req, Role::Worker)?;
        let id = convert::id("worker_id", worker_id(req.get_ref()))?;
        match self
            .state
            .workers
            .seen(id, &who.name, self.state.clock.now_ms())
        {
            Seen::Yours => Ok(id),
            Seen::Unknown => Err(ApiError::UnknownWorker {
                worker_id: id.to_owned(),
            }),
            Seen::NotYours => Err(ApiError::Forbidden(format!(
                "worker {id} was registered by another identity; {} may not act as it",
                who.name
            ))),
        }
    }

    /// The job a worker's call is about, when that worker holds its lease. A lease held
    /// by another worker reads as a token no longer live: for an honest worker whose
    /// lease moved on that is what happened.
    async fn held(&self, worker: &str, job_id: &str, token: u64) -> Result<JobRecord, ApiError> {
        let job = self.state.store.job(job_id).await?;
        if job.worker.as_deref() != Some(worker) {
            return Err(StoreError::StaleToken {
                job_id: job_id.to_owned(),
                token,
            }
            .into());
        }
        Ok(job)
    }

    fn ask(&self, worker_id: &str) -> LeaseAsk {
        LeaseAsk {
            worker: worker_id.to_owned(),
            now_ms: self.state.clock.now_ms(),
            lease_ms: self.state.lease_ms(),
            max_worker_failures: self.state.config.max_worker_failures,
        }
    }

    /// Counts and announces a lease; `started` is when the store was asked.
    fn leased(&self, leased: Option<(Lease, JobRecord)>, started: Instant) -> Option<Lease> {
        let s = &self.state;
        leased.map(|(lease, record)| {
            s.metrics
                .lease_seconds
                .observe(started.elapsed().as_secs_f64());
            s.metrics.leases.inc();
            s.publish([record]);
            lease
        })
    }

    /// One try at leasing.
    async fn try_lease(&self, worker_id: &str) -> Result<Option<Lease>, ApiError> {
        let started = Instant::now();
        let leased = self.state.store.lease(self.ask(worker_id)).await?;
        Ok(self.leased(leased, started))
    }

    async fn lease_answer(&self, lease: Lease) -> Result<v1::Lease, ApiError> {
        let mut spec =
            v1::JobSpec::decode(lease.spec.as_slice()).map_err(|e| ApiError::CorruptSpec {
                job_id: lease.job_id.clone(),
                reason: e.to_string(),
            })?;
        // A frame kept to its predecessor reads that job's result: the attempt that
        // succeeded wrote it, under a prefix only the coordinator knows.
        let previous_result_key = match &spec.previous {
            Some(p) => self
                .state
                .store
                .result_of(&lease.batch_id, &p.name)
                .await?
                .unwrap_or_default(),
            None => String::new(),
        };
        spec.output_key = stylefarm_core::layout::output_key(
            &lease.batch_id,
            &lease.name,
            stylefarm_proto::convert::output_format(&spec),
        );
        Ok(v1::Lease {
            attempt_prefix: stylefarm_core::layout::attempt_prefix(
                &lease.batch_id,
                &lease.job_id,
                lease.attempt,
            ),
            job_id: lease.job_id,
            batch_id: lease.batch_id,
            spec: Some(spec),
            attempt: lease.attempt,
            fencing_token: lease.token,
            deadline_unix_ms: lease.deadline_ms,
            checkpoint_key: lease.checkpoint_key.unwrap_or_default(),
            previous_result_key,
        })
    }
}

#[tonic::async_trait]
impl<S: Store> WorkerService for WorkerApi<S> {
    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name, device = %req.get_ref().device))]
    async fn register_worker(
        &self,
        req: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let who = auth::caller(&req, Role::Worker)?;
        let req = req.into_inner();
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(ApiError::ProtocolMismatch {
                worker: req.protocol_version,
                coordinator: PROTOCOL_VERSION,
            }
            .into());
        }
        let worker = convert::new_worker(&req, &who.name).map_err(ApiError::from)?;
        let capacity = worker.capacity;
        let now = self.state.clock.now_ms();
        let id = self
            .state
            .store
            .register_worker(worker, now)
            .await
            .map_err(ApiError::from)?;
        self.state
            .workers
            .add(id.clone(), who.name.clone(), capacity, now, true);
        tracing::info!(worker = %id, identity = %who.name, gpu = %req.gpu_model, slots = req.slots, "worker registered");
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id: id,
            lease_ms: self.state.config.lease_ms,
            heartbeat_ms: u32::try_from(self.state.config.heartbeat().as_millis())
                .unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(skip_all, fields(worker = %req.get_ref().worker_id))]
    async fn lease_job(
        &self,
        req: Request<v1::LeaseJobRequest>,
    ) -> Result<Response<v1::LeaseJobResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let worker = worker.as_str();
        let req = req.into_inner();
        let wait = Duration::from_millis(u64::from(
            req.wait_ms.min(self.state.config.max_lease_wait_ms),
        ));
        let until = tokio::time::Instant::now() + wait;
        loop {
            if self.state.shutdown.is_cancelled() {
                return Err(ApiError::ShuttingDown.into());
            }
            // Register for a wake-up before looking, so work queued in between is not missed.
            let notified = self.state.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_lease(worker).await? {
                tracing::debug!(job = %lease.job_id, attempt = lease.attempt, "job leased");
                let lease = self.lease_answer(lease).await?;
                return Ok(Response::new(v1::LeaseJobResponse { lease: Some(lease) }));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {
                    return Ok(Response::new(v1::LeaseJobResponse { lease: None }));
                }
                () = self.state.shutdown.cancelled() => {
                    return Err(ApiError::ShuttingDown.into());
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let req = req.into_inner();
        let job_id = convert::id("job_id", &req.job_id).map_err(ApiError::from)?;
        let job = self.held(&worker, job_id, req.fencing_token).await?;
        if !req.checkpoint_key.is_empty() {
            checkpoint_under_attempt(&job, &req.checkpoint_key)?;
        }
        let s = &self.state;
        let (answer, record) = s
            .store
            .heartbeat(
                job_id,
                req.fencing_token,
                convert::progress(&req),
                s.clock.now_ms(),
                s.lease_ms(),
            )
            .await
            .map_err(ApiError::from)?;
        s.publish([record]);
        Ok(Response::new(v1::HeartbeatResponse {
            deadline_unix_ms: answer.deadline_ms,
            cancelled: answer.cancelled,
        }))
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn complete_job(
        &self,
        req: Request<v1::CompleteJobRequest>,
    ) -> Result<Response<v1::CompleteJobResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let req = req.into_inner();
        let job_id = convert::id("job_id", &req.job_id).map_err(ApiError::from)?;
        let job = self.held(&worker, job_id, req.fencing_token).await?;
        under_attempt(&job, "result_key", &req.result_key)?;
        if !req.sidecar_key.is_empty() {
            under_attempt(&job, "sidecar_key", &req.sidecar_key)?;
        }
        let done = Completion {
            result_key: convert::id("result_key", &req.result_key)
                .map_err(ApiError::from)?
                .to_owned(),
            sidecar_key: (!req.sidecar_key.is_empty()).then(|| req.sidecar_key.clone()),
            progress: req.losses.map(|l| (req.iteration, Losses::from(l))),
        };
        let settled = self
            .state
            .store
            .complete(job_id, req.fencing_token, done, self.state.clock.now_ms())
            .await
            .map_err(ApiError::from)?;
        let record = &settled.changed;
        tracing::info!(
            state = record.state.as_str(),
            attempt = record.attempt,
            "job completed"
        );
        self.state
            .metrics
            .attempts
            .with_label_values(&["succeeded"])
            .inc();
        self.state.publish_settled(settled);
        Ok(Response::new(v1::CompleteJobResponse {}))
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn release_job(
        &self,
        req: Request<v1::ReleaseJobRequest>,
    ) -> Result<Response<v1::ReleaseJobResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let req = req.into_inner();
        let job_id = convert::id("job_id", &req.job_id).map_err(ApiError::from)?;
        let job = self.held(&worker, job_id, req.fencing_token).await?;
        if !req.checkpoint_key.is_empty() {
            checkpoint_under_attempt(&job, &req.checkpoint_key)?;
        }
        let progress = crate::model::Progress {
            iteration: req.iteration,
            losses: crate::model::Losses::default(),
            checkpoint_key: (!req.checkpoint_key.is_empty()).then(|| req.checkpoint_key.clone()),
        };
        let record = self
            .state
            .store
            .release(
                job_id,
                req.fencing_token,
                progress,
                self.state.clock.now_ms(),
            )
            .await
            .map_err(ApiError::from)?;
        tracing::info!(
            state = record.state.as_str(),
            iteration = record.iteration,
            "job released"
        );
        self.state
            .metrics
            .attempts
            .with_label_values(&["released"])
            .inc();
        self.state.publish([record]);
        Ok(Response::new(v1::ReleaseJobResponse {}))
    }

    #[tracing::instrument(skip_all, fields(worker = %req.get_ref().worker_id))]
    async fn leave_farm(
        &self,
        req: Request<v1::LeaveFarmRequest>,
    ) -> Result<Response<v1::LeaveFarmResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let requeued = self
            .state
            .store
            .leave(&worker, self.state.clock.now_ms())
            .await
            .map_err(ApiError::from)?;
        self.state.workers.remove(&worker);
        for job in &requeued {
            tracing::info!(job = %job.job_id, attempt = job.attempt, "requeued: leased to a worker that left without receiving it");
        }
        tracing::info!(requeued = requeued.len(), "worker left the farm");
        self.state
            .metrics
            .attempts
            .with_label_values(&["released"])
            .inc_by(requeued.len() as u64);
        let n = u32::try_from(requeued.len()).unwrap_or(u32::MAX);
        self.state.publish(requeued);
        Ok(Response::new(v1::LeaveFarmResponse { requeued: n }))
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn fail_job(
        &self,
        req: Request<v1::FailJobRequest>,
    ) -> Result<Response<v1::FailJobResponse>, Status> {
        let worker = self.known_worker(&req, |r| &r.worker_id)?.to_owned();
        let req = req.into_inner();
        let job_id = convert::id("job_id", &req.job_id).map_err(ApiError::from)?;
        self.held(&worker, job_id, req.fencing_token).await?;
        let error = convert::error_text(&req.error);
        let settled = self
            .state
            .store
            .fail(
                job_id,
                req.fencing_token,
                &error,
                req.retryable,
                self.state.clock.now_ms(),
            )
            .await
            .map_err(ApiError::from)?;
        let record = &settled.changed;
        tracing::warn!(state = record.state.as_str(), attempt = record.attempt, cause = %error, retryable = req.retryable, "attempt failed");
        let outcome = if req.retryable {
            "failed_retryable"
        } else {
            "failed"
        };
        self.state
            .metrics
            .attempts
            .with_label_values(&[outcome])
            .inc();
        self.state.publish_settled(settled);
        Ok(Response::new(v1::FailJobResponse {}))
    }
}

/// Refuses a key a worker reports unless it lies under the prefix of the attempt it
/// holds (`batches/B/jobs/J/attempt-NNN/...`): a worker names only what it wrote.
fn under_attempt(job: &JobRecord, field: &'static str, key: &str) -> Result<(), ApiError> {
    let prefix = stylefarm_core::layout::attempt_prefix(&job.batch_id, &job.job_id, job.attempt);
    let rest = key
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or_default();
    let clean = !rest.is_empty()
        && key.len() <= 1024
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !rest.chars().any(char::is_control);
    if clean {
        Ok(())
    } else {
        Err(ApiError::KeyOutsideAttempt {
            field,
            key: key.chars().take(200).collect(),
            prefix,
        })
    }
}

/// A checkpoint key is the attempt's own, or the one the lease handed over (a worker
/// that hands a job back before checkpointing passes on what it resumed from).
fn checkpoint_under_attempt(job: &JobRecord, key: &str) -> Result<(), ApiError> {
    if job.checkpoint_key.as_deref() == Some(key) {
        return Ok(());
    }
    under_attempt(job, "checkpoint_key", key)
}
