//! The client service (`stylefarm.v1.StyleFarm`): batches in, progress and results out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use stylefarm_proto::v1::{self, style_farm_server::StyleFarm};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use stylefarm_net::{Identity, Role};

use super::convert;
use super::error::ApiError;
use crate::auth;
use crate::model::{BatchState, JobRecord, JobState};
use crate::state::State;
use crate::store::Store;

/// Most batches one ListBatches answer holds.
const MAX_LIST: u32 = 1000;

/// Serves [`StyleFarm`] over the shared state.
pub struct ClientApi<S> {
    state: Arc<State<S>>,
}

impl<S> ClientApi<S> {
    /// The service over `state`.
    pub fn new(state: Arc<State<S>>) -> Self {
        Self { state }
    }
}

impl<S: Store> ClientApi<S> {
    async fn batch_answer(&self, batch_id: &str) -> Result<v1::Batch, ApiError> {
        let b = self.state.store.batch(batch_id).await?;
        Ok(convert::batch(&b, &[]))
    }

    /// Refuses a change to `batch_id` unless `who` owns it or is an admin.
    async fn may_change(&self, who: &Identity, batch_id: &str) -> Result<(), ApiError> {
        let b = self.state.store.batch(batch_id).await?;
        auth::owner_or_admin(who, &b.owner, batch_id)
    }
}

/// Most workers one ListWorkers answer lists (live ones first), so it fits a client's
/// 4 MiB message limit.
pub const MAX_LISTED_WORKERS: usize = 5000;

#[tonic::async_trait]
impl<S: Store> StyleFarm for ClientApi<S> {
    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name, jobs = req.get_ref().jobs.len()))]
    async fn submit_batch(
        &self,
        req: Request<v1::SubmitBatchRequest>,
    ) -> Result<Response<v1::SubmitBatchResponse>, Status> {
        let who = auth::caller(&req, Role::Submitter)?;
        auth::priority(&who, req.get_ref().priority)?;
        // Validating and encoding up to 100,000 jobs is CPU work: keep it off the runtime.
        let config = self.state.config.clone();
        let req = req.into_inner();
        let largest = self.state.workers.largest();
        let batch =
            tokio::task::spawn_blocking(move || convert::new_batch(&req, &config, &who, largest))
                .await
                .map_err(|e| Status::internal(format!("validating the batch failed: {e}")))?
                .map_err(ApiError::from)?;
        let jobs = batch.jobs.len();
        let submitted = self
            .state
            .store
            .submit(batch, self.state.clock.now_ms())
            .await
            .map_err(ApiError::from)?;
        if !submitted.existing {
            tracing::info!(batch = %submitted.batch_id, jobs, "batch submitted");
            self.state.work.notify_waiters();
        }
        Ok(Response::new(v1::SubmitBatchResponse {
            batch_id: submitted.batch_id,
            existing: submitted.existing,
        }))
    }

    #[tracing::instrument(skip_all, fields(batch = %req.get_ref().batch_id))]
    async fn get_batch(
        &self,
        req: Request<v1::GetBatchRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        auth::reader(&req)?;
        let req = req.into_inner();
        let id = convert::id("batch_id", &req.batch_id).map_err(ApiError::from)?;
        let b = self.state.store.batch(id).await.map_err(ApiError::from)?;
        let mut answer = convert::batch(&b, &[]);
        if req.include_jobs {
            let page = convert::page(&req).map_err(ApiError::from)?;
            let jobs = self
                .state
                .store
                .jobs_page(id, page.after, page.size + 1)
                .await
                .map_err(ApiError::from)?;
            convert::fill_page(&mut answer, &jobs, page.size);
        }
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all)]
    async fn list_batches(
        &self,
        req: Request<v1::ListBatchesRequest>,
    ) -> Result<Response<v1::ListBatchesResponse>, Status> {
        auth::reader(&req)?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n.min(MAX_LIST),
        };
        let state = match req.get_ref().state {
            0 => None,
            n => Some(stylefarm_proto::convert::batch_state("state", n).map_err(ApiError::from)?),
        };
        let batches = self
            .state
            .store
            .batches(limit, state)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::ListBatchesResponse {
            batches: batches.iter().map(|b| convert::batch(b, &[])).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_server_info(
        &self,
        req: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        let who = auth::reader(&req)?;
        Ok(Response::new(v1::ServerInfo {
            protocol: stylefarm_proto::PROTOCOL.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            caller: who.name.clone(),
            roles: [Role::Worker, Role::Submitter, Role::Admin]
                .into_iter()
                .filter(|&r| who.may(r))
                .map(|r| r.as_str().to_owned())
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_workers(
        &self,
        req: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        auth::reader(&req)?;
        let known = self.state.store.workers().await.map_err(ApiError::from)?;
        let live_since = self.state.clock.now_ms() - self.state.lease_ms();
        // Live workers first, then the most recently registered: what fits one answer.
        let mut known = known;
        known.sort_by_cached_key(|w| {
            let heard = self.state.workers.last_heard(&w.id);
            (
                std::cmp::Reverse(heard.is_some_and(|t| t >= live_since)),
                std::cmp::Reverse(w.registered_ms),
            )
        });
        let workers = known
            .iter()
            .take(MAX_LISTED_WORKERS)
            .map(|w| {
                let heard = self.state.workers.last_heard(&w.id);
                convert::worker_info(w, heard, heard.is_some_and(|t| t >= live_since))
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn get_job(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobDetail>, Status> {
        auth::reader(&req)?;
        let id = convert::id("job_id", &req.get_ref().job_id).map_err(ApiError::from)?;
        let (job, spec) = self
            .state
            .store
            .job_with_spec(id)
            .await
            .map_err(ApiError::from)?;
        let mut spec = v1::JobSpec::decode(spec.as_slice()).map_err(|e| ApiError::CorruptSpec {
            job_id: job.job_id.clone(),
            reason: e.to_string(),
        })?;
        spec.output_key = stylefarm_core::layout::output_key(
            &job.batch_id,
            &job.name,
            stylefarm_proto::convert::output_format(&spec),
        );
        Ok(Response::new(v1::JobDetail {
            job: Some(convert::job_status(&job)),
            spec: Some(spec),
        }))
    }

    type WatchBatchStream = ReceiverStream<Result<v1::BatchEvent, Status>>;

    #[tracing::instrument(skip_all, fields(batch = %req.get_ref().batch_id))]
    async fn watch_batch(
        &self,
        req: Request<v1::WatchBatchRequest>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        let who = auth::reader(&req)?;
        let batch_id = convert::id("batch_id", &req.get_ref().batch_id)
            .map_err(ApiError::from)?
            .to_owned();
        let watching = self.state.watchers.enter(&who.name)?;
        let state = Arc::clone(&self.state);
        // Subscribe before the snapshot, so no change falls between the two.
        let events = self.state.events.subscribe();
        let snapshot = self
            .state
            .store
            .jobs(&batch_id)
            .await
            .map_err(ApiError::from)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let _held = watching;
            watch(state, batch_id, snapshot, events, tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(batch = %req.get_ref().batch_id))]
    async fn cancel_batch(
        &self,
        req: Request<v1::CancelBatchRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        let who = auth::caller(&req, Role::Submitter)?;
        let id = convert::id("batch_id", &req.get_ref().batch_id).map_err(ApiError::from)?;
        self.may_change(&who, id).await?;
        let changed = self
            .state
            .store
            .cancel_batch(id, self.state.clock.now_ms())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(jobs = changed.len(), "batch cancelled");
        self.state.publish(changed);
        Ok(Response::new(self.batch_answer(id).await?))
    }

    #[tracing::instrument(skip_all, fields(batch = %req.get_ref().batch_id))]
    async fn retry_jobs(
        &self,
        req: Request<v1::RetryJobsRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        let who = auth::caller(&req, Role::Submitter)?;
        let req = req.into_inner();
        let id = convert::id("batch_id", &req.batch_id).map_err(ApiError::from)?;
        self.may_change(&who, id).await?;
        let changed = self
            .state
            .store
            .retry(id, req.include_cancelled)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(jobs = changed.len(), "jobs requeued");
        self.state.publish(changed);
        Ok(Response::new(self.batch_answer(id).await?))
    }

    #[tracing::instrument(skip_all, fields(job = %req.get_ref().job_id))]
    async fn cancel_job(
        &self,
        req: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let who = auth::caller(&req, Role::Submitter)?;
        let id = convert::id("job_id", &req.get_ref().job_id).map_err(ApiError::from)?;
        let batch_id = self
            .state
            .store
            .job(id)
            .await
            .map_err(ApiError::from)?
            .batch_id;
        self.may_change(&who, &batch_id).await?;
        let settled = self
            .state
            .store
            .cancel_job(id, self.state.clock.now_ms())
            .await
            .map_err(ApiError::from)?;
        let answer = convert::job_status(&settled.changed);
        self.state.publish_settled(settled);
        Ok(Response::new(answer))
    }
}

/// Streams a batch's jobs (first as they are, then each change) until every job has
/// ended, the client goes away or the coordinator shuts down.
async fn watch<S: Store>(
    state: Arc<State<S>>,
    batch_id: String,
    snapshot: Vec<JobRecord>,
    mut events: broadcast::Receiver<JobRecord>,
    tx: mpsc::Sender<Result<v1::BatchEvent, Status>>,
) {
    let mut known = Known::default();
    let mut pending = snapshot;
    loop {
        // Events can arrive older than the snapshot; versions put them in order.
        let fresh: Vec<JobRecord> = pending.drain(..).filter(|job| known.learn(job)).collect();
        // The batch's state and counts over everything known, not just the jobs sent so
        // far: a snapshot's first finished job must not read as a finished batch.
        let overall = v1::BatchState::from(BatchState::of(&known.counts)) as i32;
        let jobs_by_state = convert::counts(&known.counts);
        for job in fresh {
            let event = v1::BatchEvent {
                job: Some(convert::job_status(&job)),
                batch_state: overall,
                jobs_by_state: jobs_by_state.clone(),
            };
            // A client that stops reading must not hold the stream past shutdown.
            tokio::select! {
                sent = tx.send(Ok(event)) => if sent.is_err() { return },
                () = state.shutdown.cancelled() => return,
            }
        }
        if BatchState::of(&known.counts).has_ended() {
            return;
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(job) if job.batch_id == batch_id => pending.push(job),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "watcher lagged; re-reading the batch");
                    match state.store.jobs(&batch_id).await {
                        Ok(jobs) => pending = jobs,
                        Err(err) => {
                            let _ = tx.send(Err(Status::from(ApiError::from(err)))).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::from(ApiError::ShuttingDown))).await;
                return;
            }
        }
    }
}

/// What a watch has seen of its batch: each job's newest version and state, and the
/// jobs per state, kept as they change (so an event costs no pass over the batch).
#[derive(Default)]
struct Known {
    jobs: HashMap<String, (u64, JobState)>,
    counts: BTreeMap<JobState, u64>,
}

impl Known {
    /// Takes in `job` if it is newer than what was seen of it; true if it was.
    fn learn(&mut self, job: &JobRecord) -> bool {
        let before = self.jobs.get(&job.job_id).copied();
        if before.is_some_and(|(v, _)| v >= job.version) {
            return false;
        }
        if let Some((_, s)) = before {
            if let Some(n) = self.counts.get_mut(&s) {
                *n = n.saturating_sub(1);
            }
        }
        *self.counts.entry(job.state).or_insert(0) += 1;
        self.jobs
            .insert(job.job_id.clone(), (job.version, job.state));
        true
    }
}
