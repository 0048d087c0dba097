//! Talking to a coordinator: submit a manifest, show, watch, cancel, retry and fetch
//! batches. `stylefarm run` goes through these same functions against its embedded
//! coordinator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use stylefarm_core::limits;
use stylefarm_core::{
    BatchState, JobSpec, JobState, ObjectRef, OutputFormat, PreviousFrame, StyleRef,
};
use stylefarm_net::client::Channel;
use stylefarm_net::{ClientAuth, NetError};
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::{convert, v1};
use stylefarm_storage::{Limit, ObjectUrl, Storage};
use tokio_stream::StreamExt;

use crate::exit::{from_status, CliError};
use crate::input;
use crate::manifest::{ImageRef, Manifest};

/// A connected client and the address it was made for (for messages).
pub struct Coordinator {
    addr: String,
    client: StyleFarmClient<Channel>,
}

impl Coordinator {
    /// Connects, failing with [`CliError::Unreachable`] when nobody answers or the TLS
    /// handshake fails (the cause says which).
    pub async fn connect(addr: &str, auth: &ClientAuth) -> anyhow::Result<Self> {
        let channel = auth.connect(addr).await.map_err(|e| match e {
            NetError::Connect { addr, cause } => CliError::Unreachable { addr, cause },
            other => CliError::Invalid(other.to_string()),
        })?;
        Ok(Self {
            addr: addr.to_owned(),
            client: StyleFarmClient::new(channel),
        })
    }

    fn err(&self, s: &tonic::Status) -> anyhow::Error {
        from_status(&self.addr, s)
    }

    /// A batch: its state and counts, without its jobs.
    pub async fn batch(&mut self, id: &str) -> anyhow::Result<v1::Batch> {
        self.get(v1::GetBatchRequest {
            batch_id: id.to_owned(),
            ..Default::default()
        })
        .await
    }

    async fn get(&mut self, req: v1::GetBatchRequest) -> anyhow::Result<v1::Batch> {
        match self.client.get_batch(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(&s)),
        }
    }

    /// A batch's jobs a page at a time, in submission order: at most one page is held.
    pub fn pages(&mut self, id: &str) -> Pages<'_> {
        Pages {
            c: self,
            id: id.to_owned(),
            next: Some(String::new()),
        }
    }

    /// Ok for a batch that succeeded, else [`CliError::BatchFailed`] with its counts
    /// and its first failures.
    pub async fn outcome(&mut self, batch: &v1::Batch) -> anyhow::Result<()> {
        if convert::batch_state("state", batch.state) == Ok(BatchState::Succeeded) {
            return Ok(());
        }
        let mut failed: Vec<String> = Vec::new();
        let mut pages = self.pages(&batch.batch_id);
        while failed.len() < 5 {
            let Some(page) = pages.next().await? else {
                break;
            };
            failed.extend(
                page.iter()
                    .filter(|j| job_state(j.state) == Some(JobState::Failed))
                    .take(5 - failed.len())
                    .map(|j| format!("{}: {}", j.name, first_line(&j.error, 200))),
            );
        }
        let mut detail = counts_of(batch);
        if !failed.is_empty() {
            detail = format!("{detail}; {}", failed.join("; "));
        }
        Err(CliError::BatchFailed {
            batch: batch.batch_id.clone(),
            state: batch_state_name(batch.state).to_owned(),
            detail,
        }
        .into())
    }

    /// The newest batches.
    pub async fn batches(&mut self, limit: u32) -> anyhow::Result<Vec<v1::Batch>> {
        match self
            .client
            .list_batches(v1::ListBatchesRequest {
                limit,
                ..Default::default()
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().batches),
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Cancels every unfinished job of a batch.
    pub async fn cancel(&mut self, id: &str) -> anyhow::Result<v1::Batch> {
        let req = v1::CancelBatchRequest {
            batch_id: id.to_owned(),
        };
        match self.client.cancel_batch(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Queues a batch's failed jobs again (and its cancelled ones unless `failed_only`).
    pub async fn retry(&mut self, id: &str, failed_only: bool) -> anyhow::Result<v1::Batch> {
        let req = v1::RetryJobsRequest {
            batch_id: id.to_owned(),
            include_cancelled: !failed_only,
        };
        match self.client.retry_jobs(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Uploads the manifest's local inputs (content-addressed: what is there already is
    /// skipped) and submits its jobs. The client token is the hash of the expanded
    /// batch, so the same manifest submitted twice is one batch. Returns the batch id
    /// and whether it already existed.
    pub async fn submit(
        &mut self,
        manifest: &Manifest,
        weights_sha256: &str,
        storage: &Storage,
        root: &ObjectUrl,
    ) -> anyhow::Result<(String, bool)> {
        let mut inputs: BTreeMap<&ImageRef, ObjectRef> = BTreeMap::new();
        let mut uploaded = 0usize;
        for job in &manifest.jobs {
            let refs = std::iter::once(&job.content)
                .chain(job.styles.iter().map(|(s, _)| s))
                .chain(job.init_image.as_ref());
            for r in refs {
                if inputs.contains_key(r) {
                    continue;
                }
                // Only images go up (the manifest may come from someone else).
                let (bytes, dims) = match r {
                    ImageRef::Local(p) => {
                        let p = p.clone();
                        tokio::task::spawn_blocking(move || input::read_file(&p)).await?
                    }
                    ImageRef::S3(u) => {
                        let limit = Limit::new("an input image", input::MAX_INPUT_BYTES);
                        let bytes = storage.get(&ObjectUrl::parse(u)?, &limit).await?;
                        input::check_bytes(u, &bytes).map(|dims| (bytes, dims))
                    }
                }
                .map_err(|e| {
                    CliError::Invalid(format!("{}:{}: {e}", manifest.file.display(), job.line))
                })?;
                let (object, fresh) = storage.put_input(root, bytes).await?;
                uploaded += usize::from(fresh);
                let label = r.to_string();
                // Sizes the coordinator cannot take are left out (it then estimates a
                // square); the workers read the real header anyway.
                let side = stylefarm_core::spec::MAX_IMAGE_SIDE;
                let dims = (dims.0 <= side && dims.1 <= side).then_some(dims);
                inputs.insert(
                    r,
                    ObjectRef {
                        label,
                        dims,
                        ..object
                    },
                );
            }
        }
        tracing::info!(inputs = inputs.len(), uploaded, "inputs in storage");
        let jobs: Vec<v1::JobSpec> = manifest
            .jobs
            .iter()
            .map(|j| {
                let spec = JobSpec {
                    name: j.name.clone(),
                    content: inputs[&j.content].clone(),
                    styles: j
                        .styles
                        .iter()
                        .map(|(s, weight)| StyleRef {
                            image: inputs[s].clone(),
                            weight: *weight,
                        })
                        .collect(),
                    init_image: j.init_image.as_ref().map(|i| inputs[i].clone()),
                    params: j.params.clone(),
                    weights_sha256: weights_sha256.to_owned(),
                    output_key: String::new(),
                    after: j.after.clone(),
                    previous: j.previous.as_ref().map(|(name, content)| PreviousFrame {
                        name: name.clone(),
                        content: inputs[content].clone(),
                    }),
                };
                v1::JobSpec::from(&spec)
            })
            .collect();
        let mut token = Sha256::new();
        token.update(manifest.batch.as_bytes());
        token.update(manifest.priority.to_le_bytes());
        token.update(manifest.max_attempts.to_le_bytes());
        for j in &jobs {
            token.update(prost::Message::encode_to_vec(j));
        }
        let req = v1::SubmitBatchRequest {
            name: manifest.batch.clone(),
            client_token: hex::encode(token.finalize()),
            priority: manifest.priority,
            max_attempts: manifest.max_attempts,
            jobs,
        };
        match self.client.submit_batch(req).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok((r.batch_id, r.existing))
            }
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Follows a batch until it ends, with a bar per running job and one for the whole
    /// batch (hidden when stderr is not a terminal). Returns the batch as it ended.
    pub async fn watch(&mut self, id: &str, quiet: bool) -> anyhow::Result<v1::Batch> {
        let snapshot = self.batch(id).await?;
        let bars = MultiProgress::new();
        if quiet {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let total: u64 = snapshot.jobs_by_state.values().map(|&n| u64::from(n)).sum();
        let overall = bars.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:40}] {pos}/{len} jobs  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix(snapshot.name.clone());
        let job_style =
            ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} it  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let mut running: HashMap<String, ProgressBar> = HashMap::new();
        // Each job's state (a few bytes a job), and how many are in each.
        let mut states: HashMap<String, i32> = HashMap::new();
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        let mut show = |job: &v1::JobStatus| {
            if let Some(old) = states.insert(job.job_id.clone(), job.state) {
                if let Some(n) = counts.get_mut(&old) {
                    *n -= 1;
                }
            }
            *counts.entry(job.state).or_insert(0) += 1;
            let live = job_state(job.state).is_some_and(JobState::is_live);
            if live {
                let bar = running.entry(job.job_id.clone()).or_insert_with(|| {
                    let b = bars.add(ProgressBar::new(u64::from(job.iterations)));
                    b.set_style(job_style.clone());
                    b.set_prefix(job.name.clone());
                    b
                });
                bar.set_position(u64::from(job.iteration));
                if let Some(l) = &job.losses {
                    bar.set_message(format!("loss {:.3e}", l.total));
                }
            } else if let Some(b) = running.remove(&job.job_id) {
                b.finish_and_clear();
                bars.remove(&b);
            }
            let done: u64 = counts
                .iter()
                .filter(|(s, _)| ended(**s))
                .map(|(_, n)| n)
                .sum();
            overall.set_position(done);
            overall.set_message(summary_of(&counts));
        };
        if !batch_ended(snapshot.state) {
            // Subscribe first: the stream starts with every job's state, then changes.
            let req = v1::WatchBatchRequest {
                batch_id: id.to_owned(),
            };
            let mut stream = match self.client.watch_batch(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(self.err(&s)),
            };
            while let Some(ev) = stream.next().await {
                let ev = ev.map_err(|s| self.err(&s))?;
                if let Some(job) = &ev.job {
                    show(job);
                }
                if batch_ended(ev.batch_state) {
                    break;
                }
            }
        }
        overall.finish();
        self.batch(id).await
    }
}

/// A cursor over a batch's jobs, a page at a time ([`Coordinator::pages`]).
pub struct Pages<'a> {
    c: &'a mut Coordinator,
    id: String,
    /// The next page's token; `None` after the last page.
    next: Option<String>,
}

impl Pages<'_> {
    /// The next page of jobs, or `None` after the last.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<v1::JobStatus>>> {
        let Some(token) = self.next.take() else {
            return Ok(None);
        };
        let page = self
            .c
            .get(v1::GetBatchRequest {
                batch_id: self.id.clone(),
                include_jobs: true,
                page_size: 0,
                page_token: token.clone(),
            })
            .await?;
        if !page.next_page_token.is_empty() {
            // Tokens are job ids, which only grow along a batch: anything else (or more
            // pages with no jobs) would page for ever.
            if page.next_page_token <= token || page.jobs.is_empty() {
                anyhow::bail!(
                    "the coordinator's pages of batch {} do not advance (token {:?} after {token:?})",
                    self.id,
                    page.next_page_token
                );
            }
            self.next = Some(page.next_page_token);
        }
        Ok(Some(page.jobs))
    }
}

/// A job's state from the wire (`None`: a value this CLI does not know).
fn job_state(wire: i32) -> Option<JobState> {
    convert::job_state("state", wire).ok()
}

fn ended(state: i32) -> bool {
    job_state(state).is_some_and(JobState::is_terminal)
}

fn batch_ended(state: i32) -> bool {
    convert::batch_state("batch_state", state).is_ok_and(BatchState::has_ended)
}

/// `3 succeeded, 1 running` from counts per wire state.
fn summary_of(counts: &BTreeMap<i32, u64>) -> String {
    let mut named: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (s, n) in counts {
        if *n > 0 {
            *named.entry(job_state_name(*s)).or_insert(0) += n;
        }
    }
    named
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The start of an error for a table cell: its first line, at most `max` characters.
pub fn first_line(error: &str, max: usize) -> String {
    let line = error.lines().next().unwrap_or_default();
    if line.chars().count() > max || error.lines().nth(1).is_some() {
        let cut: String = line.chars().take(max).collect();
        format!("{cut} …")
    } else {
        line.to_owned()
    }
}

/// `3 succeeded, 1 failed` from a batch's counts, in the order jobs live.
pub fn counts_of(batch: &v1::Batch) -> String {
    const ORDER: [&str; 6] = [
        "queued",
        "leased",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ];
    let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
    let mut counts: Vec<(&String, &u32)> = batch
        .jobs_by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .collect();
    counts.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A job state's lower-case name, `unknown` for a value this CLI does not know.
pub fn job_state_name(state: i32) -> &'static str {
    job_state(state).map_or("unknown", JobState::as_str)
}

/// A batch state's lower-case name, `unknown` for a value this CLI does not know.
pub fn batch_state_name(state: i32) -> &'static str {
    convert::batch_state("state", state).map_or("unknown", BatchState::as_str)
}

/// One fetched job: its files in the output folder and its inputs' local copies.
pub struct Fetched {
    /// The job's name.
    pub name: String,
    /// The result image (PNG, OpenEXR or JPEG).
    pub image: PathBuf,
    /// The sidecar.
    pub sidecar: serde_json::Value,
}

/// Most "not fetched" reasons kept for the message (the rest are counted).
const MAX_MISSING_SHOWN: usize = 20;

/// What `fetch` wrote, and the succeeded jobs it did not (with why).
pub struct FetchReport {
    /// How many outputs were written.
    pub fetched: usize,
    /// The first [`crate::sheet::MAX_ROWS`] written, in batch order, for the sheet.
    pub sheet_rows: Vec<Fetched>,
    /// How many succeeded jobs were not written.
    pub not_fetched: usize,
    /// `job "NAME": why` for the first of them.
    pub missing: Vec<String>,
    /// Where the contact sheet goes: `contact-sheet.png`, or `contact-sheet~.png` when a
    /// job of the batch is itself named `contact-sheet` (`~` is never in a job name).
    pub sheet: PathBuf,
}

impl FetchReport {
    /// Ok when every succeeded job was fetched, else [`CliError::Incomplete`].
    pub fn complete(&self, batch: &v1::Batch) -> anyhow::Result<()> {
        if self.not_fetched == 0 {
            return Ok(());
        }
        Err(CliError::Incomplete {
            batch: batch.batch_id.clone(),
            total: self.not_fetched + self.fetched,
            not_fetched: self.not_fetched,
            missing: self.missing.clone(),
        }
        .into())
    }
}

/// The contact sheet's name in the output folder, without `.png`.
pub const SHEET: &str = "contact-sheet";

/// Downloads every succeeded job's output and sidecar into `out` as `NAME.EXT` and
/// `NAME.json`, a page of jobs at a time. Names from the coordinator are checked again
/// here (as the coordinator checks them), so none can write outside `out` or over
/// another job's files; a job that is refused or cannot be downloaded is counted in
/// [`FetchReport::not_fetched`] and the others are fetched. Memory stays bounded: one
/// page of jobs, one output at a time, and the sheet's first rows.
pub async fn fetch(
    c: &mut Coordinator,
    batch: &v1::Batch,
    storage: &Storage,
    root: &ObjectUrl,
    out: &Path,
) -> anyhow::Result<FetchReport> {
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("creating {}", out.display()))?;
    let mut report = FetchReport {
        fetched: 0,
        sheet_rows: Vec::new(),
        not_fetched: 0,
        missing: Vec::new(),
        sheet: out.join(format!("{SHEET}.png")),
    };
    let mut names = HashSet::new();
    let mut pages = c.pages(&batch.batch_id);
    while let Some(page) = pages.next().await? {
        if page.iter().any(|j| j.name == SHEET) {
            report.sheet = out.join(format!("{SHEET}~.png"));
        }
        for job in page
            .iter()
            .filter(|j| job_state(j.state) == Some(JobState::Succeeded))
        {
            let fetched = if names.insert(job.name.clone()) {
                fetch_one(job, storage, root, out).await
            } else {
                Err(anyhow::anyhow!(
                    "another job of the batch has this name too; the first one's files are kept"
                ))
            };
            match fetched {
                Ok(f) => {
                    report.fetched += 1;
                    if report.sheet_rows.len() < crate::sheet::MAX_ROWS {
                        report.sheet_rows.push(f);
                    }
                }
                Err(e) => {
                    tracing::warn!(job = ?job.name, cause = %format!("{e:#}"), "not fetched");
                    report.not_fetched += 1;
                    if report.missing.len() < MAX_MISSING_SHOWN {
                        report.missing.push(format!("job {:?}: {e:#}", job.name));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// One job's output and sidecar: both downloaded and the sidecar parsed before either
/// is written.
async fn fetch_one(
    job: &v1::JobStatus,
    storage: &Storage,
    root: &ObjectUrl,
    out: &Path,
) -> anyhow::Result<Fetched> {
    stylefarm_core::spec::check_name(&job.name)
        .map_err(|e| anyhow::anyhow!("refused: the coordinator sent {}", e.reason))?;
    let key = |what: &str, key: &str| -> anyhow::Result<ObjectUrl> {
        if key.is_empty() {
            anyhow::bail!("the coordinator gave no {what} key");
        }
        root.join(key)
            .with_context(|| format!("the coordinator's {what} key"))
    };
    let image = storage
        .get(
            &key("result", &job.result_key)?,
            &Limit::new("a result", limits::MAX_RESULT_BYTES),
        )
        .await
        .context("downloading the result")?;
    let sidecar_bytes = storage
        .get(
            &key("sidecar", &job.sidecar_key)?,
            &Limit::new("a sidecar", limits::MAX_SIDECAR_BYTES),
        )
        .await
        .context("downloading the sidecar")?;
    let sidecar = serde_json::from_slice(&sidecar_bytes).context("the sidecar is not JSON")?;
    // Saved with the extension of the format the worker wrote (the key's).
    let format = OutputFormat::from_name(&job.result_key).unwrap_or_default();
    let image_path = out.join(stylefarm_core::layout::output_file(&job.name, format));
    write_atomic(&image_path, image).await?;
    write_atomic(&out.join(format!("{}.json", job.name)), sidecar_bytes).await?;
    if let Some(curve) = stylefarm_core::plot::from_sidecar(&sidecar) {
        let svg = stylefarm_core::plot::loss_svg(&job.name, &curve);
        write_atomic(
            &out.join(format!("{}.loss.svg", job.name)),
            svg.into_bytes(),
        )
        .await?;
    }
    Ok(Fetched {
        name: job.name.clone(),
        image: image_path,
        sidecar,
    })
}

/// Replaces `path` with `bytes` (core's `write_atomic`, fsyncs included) on a blocking
/// thread, off the async runtime.
pub(crate) async fn write_atomic(path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || stylefarm_core::fs::write_atomic(&owned, &bytes))
        .await?
        .with_context(|| format!("writing {}", path.display()))
}

/// A table of batches (or of one batch's jobs) for the terminal.
pub fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
