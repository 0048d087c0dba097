//! The interface's routes. Every read and action is a call to the coordinator with the
//! signed-in person's token, so the coordinator alone decides what each may see and do;
//! the pages only hide what would be refused.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Form, FromRequestParts, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use stylefarm_proto::convert;
use stylefarm_proto::v1::{self, style_farm_client::StyleFarmClient};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::html;
use crate::session::{self, Cookie, LoginThrottle, Session, Sessions};
use crate::views::{ViewError, Views};
use stylefarm_core::layout::View;
use stylefarm_core::{BatchState, OutputFormat};

/// Jobs per page of a batch.
pub const PAGE_SIZE: u32 = 100;
/// Batches the batches page lists.
pub const BATCHES_LISTED: u32 = 500;
/// The largest form body read (a token, a CSRF token).
pub const MAX_FORM_BYTES: usize = 4096;

/// What every route shares.
pub struct App {
    /// Signed-in sessions.
    pub sessions: Sessions,
    /// Failed sign-ins per address.
    pub logins: LoginThrottle,
    /// The connection to the coordinator (no token of its own).
    pub channel: tonic::transport::Channel,
    /// Whether the interface is served over HTTPS (the cookie's Secure flag).
    pub https: bool,
    /// Cancelled at shutdown: live streams end.
    pub shutdown: CancellationToken,
    /// The farm's storage, for view files and downloads.
    pub views: Views,
}

impl App {
    fn client(&self, token: &str) -> StyleFarmClient<stylefarm_net::client::Channel> {
        StyleFarmClient::new(stylefarm_net::client::as_caller(
            self.channel.clone(),
            token,
        ))
    }
}

/// The routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/batches") }))
        // For probes: the process serves; says nothing of the farm.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/batches", get(batches))
        .route("/batches/rows", get(batch_rows))
        .route("/batches/{id}", get(batch))
        .route("/batches/{id}/events", get(events))
        .route("/batches/{id}/cancel", post(cancel_batch))
        .route("/batches/{id}/retry", post(retry))
        .route("/batches/{id}/jobs/{job}/cancel", post(cancel_job))
        .route("/workers", get(workers))
        .route("/workers/rows", get(worker_rows))
        .route("/jobs/{job}", get(job))
        .route("/jobs/{job}/live", get(job_live))
        .route("/jobs/{job}/attempts/{n}/{file}", get(view_file))
        .route("/jobs/{job}/output", get(output))
        .route("/jobs/{job}/sidecar.json", get(sidecar))
        .route("/static/app.js", get(script))
        .route("/static/style.css", get(style))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(headers))
        .with_state(app)
}

/// Headers on every answer: no framing, no sniffing, no referrer, scripts and styles
/// from this origin only.
async fn headers(mut req: Request<axum::body::Body>, next: Next) -> Response {
    // HTTP/2 carries the host as the request's authority, not a `Host` header: the
    // origin check reads it the same way either way.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    // A route that set its own policy (a download's sandbox) keeps it.
    if !h.contains_key("content-security-policy") {
        set(
            h,
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        );
    }
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    // Browsers heed it over HTTPS only, so it is harmless on plain HTTP.
    set(h, "strict-transport-security", "max-age=31536000");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    res
}

/// What went wrong, as a page.
pub enum WebError {
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn,
    /// A form without this session's CSRF token.
    Csrf,
    /// The request names something malformed.
    BadRequest(String),
    /// The coordinator's answer.
    Coordinator(Arc<Session>, tonic::Status),
    /// A file from storage could not be served.
    View(ViewError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/login").into_response(),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                Html(html::error(None, "Refused", "The form was not sent from this interface (its CSRF token is missing or stale). Reload the page and try again.")),
            )
                .into_response(),
            Self::BadRequest(m) => {
                (StatusCode::BAD_REQUEST, Html(html::error(None, "Bad request", &m))).into_response()
            }
            Self::View(ViewError::Missing) => {
                (StatusCode::NOT_FOUND, "not written yet").into_response()
            }
            Self::View(ViewError::Busy) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage is busy; try again").into_response()
            }
            Self::View(e) => {
                tracing::warn!(cause = %e, "storage read failed");
                (StatusCode::BAD_GATEWAY, "storage could not be read").into_response()
            }
            Self::Coordinator(who, status) => {
                let (code, title) = match status.code() {
                    Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
                    Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
                    Code::InvalidArgument | Code::FailedPrecondition => {
                        (StatusCode::BAD_REQUEST, "Refused")
                    }
                    Code::Unauthenticated => {
                        // The token was revoked: the session goes with it.
                        who.revoke();
                        return Redirect::to("/login").into_response();
                    }
                    Code::Unavailable | Code::DeadlineExceeded => {
                        (StatusCode::SERVICE_UNAVAILABLE, "The coordinator is not reachable")
                    }
                    _ => (StatusCode::BAD_GATEWAY, "The coordinator failed"),
                };
                (code, Html(html::error(Some(&who), title, status.message()))).into_response()
            }
        }
    }
}

/// The signed-in session of a request, or a redirect to the sign-in page.
pub struct SignedIn(pub Arc<Session>);

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, WebError> {
        let id = cookie(&parts.headers, Cookie::Session, app.https).ok_or(WebError::SignIn)?;
        app.sessions.get(id).map(SignedIn).ok_or(WebError::SignIn)
    }
}

/// One of the interface's cookies in a request.
fn cookie(headers: &HeaderMap, which: Cookie, https: bool) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| which.read(h, https))
}

/// Adds a `Set-Cookie` header.
fn set_cookie(res: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The sign-in page (with `error` when the last try failed) and a fresh nonce for its
/// form, in its cookie.
fn sign_in_page(app: &App, code: StatusCode, error: Option<&str>) -> Response {
    let nonce = session::random_id();
    let mut res = (code, Html(html::login(error, &nonce))).into_response();
    set_cookie(&mut res, &Cookie::SignIn.set(&nonce, app.https));
    res
}

/// A state-changing request must come from this origin: browsers send `Origin` (or
/// `Sec-Fetch-Site`) with every POST, and a page elsewhere cannot make them say so.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        (None, _) => true,
        _ => false,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A batch or job id as the coordinator makes them (`b00000001`, `b00000001-j000000`).
fn id(kind: &str, s: &str) -> Result<String, WebError> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(s.to_owned())
    } else {
        Err(WebError::BadRequest(format!(
            "{kind} {s:?} is not a stylefarm id"
        )))
    }
}

async fn login_page(State(app): State<Arc<App>>, who: Option<SignedIn>) -> Response {
    match who {
        Some(_) => Redirect::to("/batches").into_response(),
        None => sign_in_page(&app, StatusCode::OK, None),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    nonce: String,
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let refuse = |code: StatusCode, message: &str| sign_in_page(&app, code, Some(message));
    let nonce_ok = cookie(&headers, Cookie::SignIn, app.https)
        .is_some_and(|c| session::same_secret(c, &form.nonce));
    if !same_origin(&headers) || !nonce_ok {
        return refuse(
            StatusCode::FORBIDDEN,
            "Sign in from this interface's own page.",
        );
    }
    if !app.logins.attempt(peer.ip()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins from this address; wait a minute and try again.",
        );
    }
    let token = form.token.trim();
    let printable =
        !token.is_empty() && token.len() <= 256 && token.bytes().all(|b| b.is_ascii_graphic());
    if !printable {
        return refuse(StatusCode::UNAUTHORIZED, "That is not a stylefarm token.");
    }
    match app
        .client(token)
        .get_server_info(v1::GetServerInfoRequest {})
        .await
    {
        Ok(info) => {
            app.logins.succeeded(peer.ip());
            let info = info.into_inner();
            let (id, _) = app
                .sessions
                .create(info.caller.clone(), info.roles, token.to_owned());
            tracing::info!(caller = %info.caller, "signed in");
            let mut res = Redirect::to("/batches").into_response();
            set_cookie(&mut res, &Cookie::Session.set(&id, app.https));
            set_cookie(&mut res, &Cookie::SignIn.clear(app.https));
            res
        }
        Err(s) if s.code() == Code::Unauthenticated => {
            tracing::info!(%peer, "sign-in refused");
            refuse(
                StatusCode::UNAUTHORIZED,
                "The coordinator does not accept that token.",
            )
        }
        Err(s) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The coordinator could not be asked: {}", s.message()),
        ),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn checked(who: &Session, headers: &HeaderMap, form: &CsrfForm) -> Result<(), WebError> {
    if same_origin(headers) && who.csrf_ok(&form.csrf) {
        Ok(())
    } else {
        Err(WebError::Csrf)
    }
}

async fn logout(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    checked(&who, &headers, &form)?;
    if let Some(id) = cookie(&headers, Cookie::Session, app.https) {
        app.sessions.remove(id);
    }
    let mut res = Redirect::to("/login").into_response();
    set_cookie(&mut res, &Cookie::Session.clear(app.https));
    Ok(res)
}

#[derive(Deserialize)]
struct BatchesQuery {
    state: Option<String>,
}

/// The newest batches (only those in state `filter`, however far back, when given).
async fn list(
    app: &App,
    who: &Arc<Session>,
    filter: Option<BatchState>,
) -> Result<Vec<v1::Batch>, WebError> {
    let batches = app
        .client(who.token())
        .list_batches(v1::ListBatchesRequest {
            limit: BATCHES_LISTED,
            state: filter.map_or(0, |s| v1::BatchState::from(s) as i32),
        })
        .await
        .map_err(|s| WebError::Coordinator(Arc::clone(who), s))?
        .into_inner()
        .batches;
    Ok(batches)
}

fn filter(q: &BatchesQuery) -> Result<Option<BatchState>, WebError> {
    let Some(name) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    BatchState::parse(name).map(Some).ok_or_else(|| {
        WebError::BadRequest(format!(
            "state {name:?} is not one of {}",
            BatchState::ALL.map(BatchState::as_str).join(", ")
        ))
    })
}

async fn batches(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Query(q): Query<BatchesQuery>,
) -> Result<Html<String>, WebError> {
    let f = filter(&q)?;
    let list = list(&app, &who, f).await?;
    Ok(Html(html::batches(
        &who,
        &list,
        f.map(BatchState::as_str),
        now_ms(),
    )))
}

async fn batch_rows(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Query(q): Query<BatchesQuery>,
) -> Result<Html<String>, WebError> {
    let f = filter(&q)?;
    let list = list(&app, &who, f).await?;
    Ok(Html(html::batch_rows(&list, now_ms())))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    page: String,
}

async fn batch(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(batch_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, WebError> {
    let batch_id = id("batch", &batch_id)?;
    if q.page.len() > 256 {
        return Err(WebError::BadRequest("the page token is too long".into()));
    }
    let b = app
        .client(who.token())
        .get_batch(v1::GetBatchRequest {
            batch_id,
            include_jobs: true,
            page_size: PAGE_SIZE,
            page_token: q.page.clone(),
        })
        .await
        .map_err(|s| WebError::Coordinator(Arc::clone(&who), s))?
        .into_inner();
    Ok(Html(html::batch(&who, &b, &q.page, now_ms())))
}

/// One change of a job, as the batch page's script reads it.
#[derive(serde::Serialize)]
struct JobEvent<'a> {
    job: &'a str,
    state: &'static str,
    attempt: u32,
    worker: &'a str,
    iteration: u32,
    iterations: u32,
    loss: Option<f64>,
    error: &'a str,
    batch_state: &'static str,
    /// The whole batch's jobs per state, this change included.
    counts: &'a HashMap<String, u32>,
    result_attempt: u32,
    checkpoint: u32,
    /// How long the latest attempt has run (or ran), and whether it still runs.
    elapsed_ms: Option<i64>,
    running: bool,
}

/// The batch's state and counts, as the page's summary shows them.
#[derive(serde::Serialize)]
struct Counts<'a> {
    batch_state: &'static str,
    counts: &'a HashMap<String, u32>,
}

/// What a batch page's event stream has told its page so far.
struct Told {
    /// The jobs the page lists: only their changes are sent whole.
    on_page: HashSet<String>,
    /// The counts last sent, and whether the batch had ended by them.
    counts: Option<(String, bool)>,
}

impl Told {
    /// The event that tells the page about one WatchBatch message, if any: a listed
    /// job's change (with the counts), or new counts when an unlisted job changed them;
    /// `None` when the page has nothing to learn from it (so a snapshot of 10,000 jobs
    /// sends the page its 100 and one line of counts).
    fn event(&mut self, e: &v1::BatchEvent) -> Option<Event> {
        let job = e.job.as_ref()?;
        let counts = Counts {
            batch_state: html::batch_state(e.batch_state),
            counts: &e.jobs_by_state,
        };
        let summary = serde_json::to_string(&counts).ok()?;
        let ended =
            convert::batch_state("batch_state", e.batch_state).is_ok_and(BatchState::has_ended);
        let fresh = self.counts.as_ref().is_none_or(|(s, _)| *s != summary);
        if self.on_page.contains(&job.job_id) {
            self.counts = Some((summary, ended));
            return job_event(job, counts);
        }
        if !fresh {
            return None;
        }
        self.counts = Some((summary.clone(), ended));
        Some(Event::default().event("counts").data(summary))
    }

    /// The last event of the stream: `end` once the batch has ended (the page stops
    /// following it), else `lost` (the browser reconnects and gets a fresh snapshot).
    fn last(&self, broken: Option<&tonic::Status>) -> Event {
        if let Some(status) = broken {
            tracing::info!(code = ?status.code(), "a batch's event stream broke");
        } else if self.counts.as_ref().is_some_and(|(_, ended)| *ended) {
            return Event::default().event("end").data("ended");
        }
        Event::default().event("lost").data("reconnect")
    }
}

fn job_event(job: &v1::JobStatus, counts: Counts<'_>) -> Option<Event> {
    let elapsed = html::elapsed(job, now_ms());
    let event = JobEvent {
        job: &job.job_id,
        state: html::job_state(job.state),
        attempt: job.attempt,
        worker: &job.worker,
        iteration: job.iteration,
        iterations: job.iterations,
        loss: job.losses.as_ref().map(|l| l.total).filter(|t| *t > 0.0),
        error: &job.error,
        batch_state: counts.batch_state,
        counts: counts.counts,
        result_attempt: job.result_attempt,
        checkpoint: html::job::checkpointed(job),
        elapsed_ms: elapsed.map(|(ms, _)| ms),
        running: elapsed.is_some_and(|(_, running)| running),
    };
    let data = serde_json::to_string(&event).ok()?;
    Some(Event::default().event("job").data(data))
}

/// Live changes of the jobs one page of a batch lists, and the batch's counts
/// (server-sent events from the coordinator's WatchBatch, as the signed-in person).
async fn events(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(batch_id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let batch_id = id("batch", &batch_id)?;
    if q.page.len() > 256 {
        return Err(WebError::BadRequest("the page token is too long".into()));
    }
    let mut client = app.client(who.token());
    let refused = |s| WebError::Coordinator(Arc::clone(&who), s);
    let page = client
        .get_batch(v1::GetBatchRequest {
            batch_id: batch_id.clone(),
            include_jobs: true,
            page_size: PAGE_SIZE,
            page_token: q.page,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let stream = client
        .watch_batch(v1::WatchBatchRequest { batch_id })
        .await
        .map_err(refused)?
        .into_inner();
    let told = Told {
        on_page: page.jobs.into_iter().map(|j| j.job_id).collect(),
        counts: None,
    };
    let shutdown = app.shutdown.clone();
    let events = futures_util::stream::unfold(Some((stream, told)), |state| async move {
        let (mut stream, mut told) = state?;
        loop {
            match stream.next().await {
                Some(Ok(e)) => {
                    if let Some(event) = told.event(&e) {
                        return Some((Ok::<_, Infallible>(event), Some((stream, told))));
                    }
                }
                Some(Err(status)) => return Some((Ok(told.last(Some(&status))), None)),
                None => return Some((Ok(told.last(None)), None)),
            }
        }
    });
    // The stream ends at shutdown, so open pages do not hold the process, and when the
    // session ends (sign-out, a revoked token, idle), so it shows nothing more to a
    // browser no longer signed in.
    let events = futures_util::StreamExt::take_until(events, async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = who.ended() => {}
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The end of an action: the coordinator's refusal as a page, or back to the batch.
fn done<T>(
    answer: Result<T, tonic::Status>,
    who: &Arc<Session>,
    batch_id: &str,
    what: &str,
) -> Result<Redirect, WebError> {
    answer.map_err(|s| WebError::Coordinator(Arc::clone(who), s))?;
    tracing::info!(caller = %who.name, batch = %batch_id, "{what} from the web");
    Ok(Redirect::to(&format!("/batches/{batch_id}")))
}

async fn cancel_batch(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, WebError> {
    checked(&who, &headers, &form)?;
    let batch_id = id("batch", &batch_id)?;
    let req = v1::CancelBatchRequest {
        batch_id: batch_id.clone(),
    };
    let answer = app.client(who.token()).cancel_batch(req).await;
    done(answer, &who, &batch_id, "batch cancelled")
}

#[derive(Deserialize)]
struct RetryQuery {
    /// `cancelled`: cancelled jobs too, not only failed ones.
    #[serde(default)]
    include: String,
}

async fn retry(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(batch_id): Path<String>,
    Query(q): Query<RetryQuery>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, WebError> {
    checked(&who, &headers, &form)?;
    let batch_id = id("batch", &batch_id)?;
    let include_cancelled = match q.include.as_str() {
        "" => false,
        "cancelled" => true,
        other => {
            return Err(WebError::BadRequest(format!(
                "include={other:?}: only `cancelled` may be added to a retry"
            )))
        }
    };
    let req = v1::RetryJobsRequest {
        batch_id: batch_id.clone(),
        include_cancelled,
    };
    let answer = app.client(who.token()).retry_jobs(req).await;
    let what = if include_cancelled {
        "failed and cancelled jobs retried"
    } else {
        "failed jobs retried"
    };
    done(answer, &who, &batch_id, what)
}

async fn cancel_job(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path((batch_id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, WebError> {
    checked(&who, &headers, &form)?;
    let batch_id = id("batch", &batch_id)?;
    let req = v1::CancelJobRequest {
        job_id: id("job", &job_id)?,
    };
    let answer = app.client(who.token()).cancel_job(req).await;
    done(answer, &who, &batch_id, "job cancelled")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset(
        include_str!("../static/app.js"),
        "text/javascript; charset=utf-8",
    )
}

async fn style() -> Response {
    asset(
        include_str!("../static/style.css"),
        "text/css; charset=utf-8",
    )
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for SignedIn
where
    Arc<App>: axum::extract::FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Infallible> {
        let app: Arc<App> = axum::extract::FromRef::from_ref(state);
        Ok(
            <Self as FromRequestParts<Arc<App>>>::from_request_parts(parts, &app)
                .await
                .ok(),
        )
    }
}

/// The job as the coordinator answers the signed-in person.
async fn job_detail(
    app: &App,
    who: &Arc<Session>,
    job_id: &str,
) -> Result<v1::JobDetail, WebError> {
    let job_id = id("job", job_id)?;
    app.client(who.token())
        .get_job(v1::GetJobRequest { job_id })
        .await
        .map_err(|s| WebError::Coordinator(Arc::clone(who), s))
        .map(tonic::Response::into_inner)
}

fn status_of(d: &v1::JobDetail) -> v1::JobStatus {
    d.job.clone().unwrap_or_default()
}

/// Attempt `n`'s progress file: `None` when it has none (it ended before its first
/// checkpoint) or it could not be read (logged).
async fn progress(
    app: &App,
    j: &v1::JobStatus,
    n: u32,
) -> Option<stylefarm_core::layout::AttemptProgress> {
    match app.views.progress(&j.batch_id, &j.job_id, n).await {
        Ok(p) => Some(p),
        Err(ViewError::Missing) => None,
        Err(e) => {
            tracing::warn!(job = %j.job_id, attempt = n, cause = %e, "progress file not read");
            None
        }
    }
}

/// Attempts listed on a job page, newest first.
const ATTEMPTS_LISTED: u32 = 10;

async fn job(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(job_id): Path<String>,
) -> Result<Html<String>, WebError> {
    let detail = job_detail(&app, &who, &job_id).await?;
    let j = status_of(&detail);
    let batch = app
        .client(who.token())
        .get_batch(v1::GetBatchRequest {
            batch_id: j.batch_id.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| WebError::Coordinator(Arc::clone(&who), s))?
        .into_inner();
    let first = j.attempt.saturating_sub(ATTEMPTS_LISTED - 1).max(1);
    let numbers: Vec<u32> = (first..=j.attempt).rev().collect();
    let read = numbers.iter().map(|&n| progress(&app, &j, n));
    let attempts: Vec<(u32, Option<stylefarm_core::layout::AttemptProgress>)> = numbers
        .iter()
        .copied()
        .zip(futures_util::future::join_all(read).await)
        .collect();
    let shown = html::job::shown_attempt(&j);
    let progress = attempts
        .iter()
        .find(|(n, _)| Some(*n) == shown)
        .and_then(|(_, p)| p.clone());
    let view = html::JobView {
        detail,
        owner: batch.owner,
        batch_name: batch.name,
        progress,
        attempts,
    };
    Ok(Html(html::job(&who, &view, now_ms())))
}

async fn job_live(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(job_id): Path<String>,
) -> Result<Html<String>, WebError> {
    let detail = job_detail(&app, &who, &job_id).await?;
    let j = status_of(&detail);
    let progress = match html::job::shown_attempt(&j) {
        Some(n) => progress(&app, &j, n).await,
        None => None,
    };
    let spec = detail.spec.unwrap_or_default();
    Ok(Html(html::job_live(&j, &spec, progress.as_ref())))
}

/// A view image of one attempt: only for an attempt the job has had, only the names
/// workers write.
async fn view_file(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path((job_id, n, file)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let view = View::parse(&file)
        .filter(|v| *v != View::Progress)
        .ok_or_else(|| WebError::BadRequest(format!("{file:?} is not a view image")))?;
    let n: u32 = n
        .parse()
        .map_err(|_| WebError::BadRequest(format!("attempt {n:?} is not a number")))?;
    let j = status_of(&job_detail(&app, &who, &job_id).await?);
    if n == 0 || n > j.attempt {
        return Err(WebError::BadRequest(format!(
            "job {} has had {} attempts",
            j.job_id, j.attempt
        )));
    }
    let jpeg = app
        .views
        .image(&j.batch_id, &j.job_id, n, view)
        .await
        .map_err(WebError::View)?;
    // A preview is replaced at each checkpoint; the rest never change.
    let cache = if view == View::Preview {
        "private, max-age=2"
    } else {
        "private, max-age=86400"
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, cache),
        ],
        jpeg,
    )
        .into_response())
}

/// The job's output or sidecar, from the key the coordinator recorded for its result.
async fn download(
    app: &App,
    who: &Arc<Session>,
    job_id: &str,
    pick: fn(&v1::JobStatus) -> &str,
) -> Result<Response, WebError> {
    let j = status_of(&job_detail(app, who, job_id).await?);
    let key = pick(&j);
    if key.is_empty() {
        return Err(WebError::View(ViewError::Missing));
    }
    // What the worker wrote, by the extension of the key it reported.
    let (kind, ext) = if key.ends_with(".json") {
        ("application/json", "json")
    } else {
        OutputFormat::from_name(key).map_or(("application/octet-stream", "bin"), |f| {
            (f.content_type(), f.as_str())
        })
    };
    let (bytes, turn) = app.views.download(key).await.map_err(WebError::View)?;
    let disposition = format!("inline; filename=\"{}.{ext}\"", j.name);
    let mut res = ([(header::CONTENT_TYPE, kind)], sent_within(bytes, turn)).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    // Served bytes are never run as a page of this origin.
    res.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'"),
    );
    Ok(res)
}

/// Most time a download may take to send.
const SEND_LIMIT: Duration = Duration::from_secs(600);

/// A download's body, sent in pieces while `turn` is held: it is let go once the last
/// piece has gone, or after [`SEND_LIMIT`] (the body then ends short).
fn sent_within(bytes: Vec<u8>, turn: tokio::sync::OwnedSemaphorePermit) -> axum::body::Body {
    const PIECE: usize = 256 << 10;
    let bytes = axum::body::Bytes::from(bytes);
    let pieces: Vec<axum::body::Bytes> = (0..bytes.len())
        .step_by(PIECE)
        .map(|at| bytes.slice(at..(at + PIECE).min(bytes.len())))
        .collect();
    let stream = tokio_stream::iter(pieces.into_iter().map(Ok::<_, Infallible>));
    let timed = futures_util::StreamExt::take_until(stream, tokio::time::sleep(SEND_LIMIT));
    let held = futures_util::StreamExt::map(timed, move |piece| {
        let _held = &turn;
        piece
    });
    axum::body::Body::from_stream(held)
}

async fn output(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(job_id): Path<String>,
) -> Result<Response, WebError> {
    download(&app, &who, &job_id, |j| &j.result_key).await
}

async fn sidecar(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
    Path(job_id): Path<String>,
) -> Result<Response, WebError> {
    download(&app, &who, &job_id, |j| &j.sidecar_key).await
}

async fn worker_list(app: &App, who: &Arc<Session>) -> Result<Vec<v1::WorkerInfo>, WebError> {
    app.client(who.token())
        .list_workers(v1::ListWorkersRequest {})
        .await
        .map_err(|s| WebError::Coordinator(Arc::clone(who), s))
        .map(|r| r.into_inner().workers)
}

async fn workers(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
) -> Result<Html<String>, WebError> {
    let list = worker_list(&app, &who).await?;
    Ok(Html(html::workers(&who, &list, now_ms())))
}

async fn worker_rows(
    State(app): State<Arc<App>>,
    SignedIn(who): SignedIn,
) -> Result<Html<String>, WebError> {
    let list = worker_list(&app, &who).await?;
    Ok(Html(html::worker_rows(&list, now_ms())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// What the origin check says of a POST, after the middleware every route runs under.
    async fn origin_check(req: Request<axum::body::Body>) -> bool {
        let app = Router::new()
            .route(
                "/x",
                post(|h: HeaderMap| async move { same_origin(&h).to_string() }),
            )
            .layer(axum::middleware::from_fn(headers));
        let res = app.oneshot(req).await.expect("answer");
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .expect("body")
            .to_bytes();
        body.as_ref() == b"true"
    }

    fn post_to(uri: &str, headers: &[(&'static str, &str)]) -> Request<axum::body::Body> {
        let mut req = Request::post(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(axum::body::Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_form_from_this_origin_passes_over_http_1_and_http_2_and_others_do_not() {
        let here = "https://farm.example:8443";
        // HTTP/1.1: the host comes as a header.
        assert!(
            origin_check(post_to(
                "/x",
                &[("host", "farm.example:8443"), ("origin", here)]
            ))
            .await
        );
        // HTTP/2: the host is the request's authority, and there is no Host header.
        assert!(origin_check(post_to(&format!("{here}/x"), &[("origin", here)])).await);
        assert!(
            !origin_check(post_to(
                &format!("{here}/x"),
                &[("origin", "https://evil.example")]
            ))
            .await,
            "another origin"
        );
        assert!(
            !origin_check(post_to(
                "/x",
                &[
                    ("host", "farm.example:8443"),
                    ("origin", "https://evil.example")
                ]
            ))
            .await,
            "another origin over HTTP/1.1"
        );
        assert!(
            !origin_check(post_to(
                "/x",
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("origin", here),
                    ("host", "farm.example:8443")
                ]
            ))
            .await,
            "the browser says it is another site"
        );
    }
}
