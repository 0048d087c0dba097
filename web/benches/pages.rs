//! `make bench-web`: the web interface's pages for a batch of 10,000 jobs, against the
//! same pages for a batch of 100 in the same run, through the interface's own router
//! (no browser, no TLS on the page side) over a real coordinator process (TLS, tokens).
//!
//! What a wrangler waits for: the batch page (its first page of 100 jobs, and one deep
//! in the batch), the batches list, and the live stream's first burst (WatchBatch sends
//! every job as it is before any change, and the page patches only the rows it shows).
//! Each page is timed 7 times; the median is printed. The last lines give the ratios
//! large/small: a paged page should cost about the same for both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request};
use http_body_util::BodyExt;
use stylefarm_net::client::ClientAuth;
use stylefarm_proto::v1;
use stylefarm_storage::StorageArgs;
use stylefarm_testkit::farm::{self, Coordinator};
use stylefarm_web::routes::{self, App};
use stylefarm_web::session::{LoginThrottle, Sessions};
use stylefarm_web::views::Views;
use tower::ServiceExt;

const LARGE: usize = 10_000;
const SMALL: usize = 100;
const RUNS: usize = 7;

/// A signed-in GET of `path`, as from loopback.
fn request(cookie: &str, path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))))
        .body(Body::empty())
        .expect("request")
}

async fn get(router: &axum::Router, cookie: &str, path: &str) -> (Duration, Vec<u8>) {
    let req = request(cookie, path);
    let start = Instant::now();
    let res = router.clone().oneshot(req).await.expect("answer");
    assert!(res.status().is_success(), "{path}: {}", res.status());
    let body = res
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (start.elapsed(), body)
}

async fn median(router: &axum::Router, cookie: &str, path: &str) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..RUNS {
        let (t, body) = get(router, cookie, path).await;
        times.push(t);
        size = body.len();
    }
    times.sort();
    (times[RUNS / 2], size)
}

/// Time until the live stream has sent `n` job events (a page's worth: the jobs of other
/// pages reach it only as a line of counts).
async fn burst(router: &axum::Router, cookie: &str, batch: &str, n: usize) -> Duration {
    let req = request(cookie, &format!("/batches/{batch}/events"));
    let start = Instant::now();
    let res = router.clone().oneshot(req).await.expect("answer");
    let mut body = res.into_body();
    let mut seen = 0;
    let mut tail = String::new();
    while seen < n {
        let frame = tokio::time::timeout(Duration::from_secs(120), body.frame())
            .await
            .expect("events within 120 s")
            .expect("a frame")
            .expect("not an error");
        if let Some(data) = frame.data_ref() {
            tail.push_str(&String::from_utf8_lossy(data));
            seen += tail.matches("event: job").count();
            tail = tail
                .rsplit("event: job")
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    }
    start.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&dir.path().join("c.db"), &[]);
    let mut alice = c.client_as("alice").await;
    let mut submit = async |token: &str, n: usize| {
        alice
            .submit_batch(farm::submit(token, 0, n))
            .await
            .expect("submit")
            .into_inner()
            .batch_id
    };
    let start = Instant::now();
    let large = submit("large", LARGE).await;
    println!(
        "submitted {LARGE} jobs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let small = submit("small", SMALL).await;
    let deep = c
        .client_as("alice")
        .await
        .get_batch(v1::GetBatchRequest {
            batch_id: large.clone(),
            include_jobs: true,
            page_size: u32::try_from(LARGE / 2).unwrap_or(u32::MAX),
            page_token: String::new(),
        })
        .await
        .expect("a page")
        .into_inner()
        .next_page_token;

    let security = c.security.as_ref().expect("a secure coordinator");
    let channel = ClientAuth::with_ca(&security.pki.ca, None)
        .expect("the CA")
        .carrying_tokens()
        .endpoint(&c.grpc)
        .expect("endpoint")
        .connect_lazy();
    let app = App {
        sessions: Sessions::new(Duration::from_secs(3600)),
        logins: LoginThrottle::default(),
        channel,
        https: false,
        shutdown: tokio_util::sync::CancellationToken::new(),
        views: Views::open(&StorageArgs::local(dir.path())).expect("storage"),
    };
    let (id, _) = app.sessions.create(
        "alice".into(),
        vec!["submitter".into()],
        security.tokens.token("alice").to_owned(),
    );
    let cookie = format!("stylefarm_session={id}");
    let router = routes::router(Arc::new(app));
    // Warm the connection and the pages' code paths.
    get(&router, &cookie, "/batches").await;

    let (large_page, large_bytes) = median(&router, &cookie, &format!("/batches/{large}")).await;
    let (small_page, small_bytes) = median(&router, &cookie, &format!("/batches/{small}")).await;
    let (deep_page, _) = median(&router, &cookie, &format!("/batches/{large}?page={deep}")).await;
    let (list, _) = median(&router, &cookie, "/batches").await;
    let job = format!("{large}-j{:06}", LARGE - 1);
    let (job_page, _) = median(&router, &cookie, &format!("/jobs/{job}")).await;
    let page = routes::PAGE_SIZE as usize;
    let large_burst = burst(&router, &cookie, &large, page.min(LARGE)).await;
    let small_burst = burst(&router, &cookie, &small, page.min(SMALL)).await;

    println!("batch page, first 100 jobs: {LARGE} jobs {:.1} ms ({large_bytes} bytes), {SMALL} jobs {:.1} ms ({small_bytes} bytes)", ms(large_page), ms(small_page));
    println!("batch page at job {}: {:.1} ms", LARGE / 2, ms(deep_page));
    println!("batches list: {:.1} ms", ms(list));
    println!("job page (no storage files yet): {:.1} ms", ms(job_page));
    println!(
        "live stream, a page's first {page} job events: batch of {LARGE} jobs {:.1} ms, of {SMALL} jobs {:.1} ms (ratio {:.2})",
        ms(large_burst),
        ms(small_burst),
        ms(large_burst) / ms(small_burst)
    );
    println!(
        "page ratio {LARGE}/{SMALL}: {:.2}",
        ms(large_page) / ms(small_page)
    );
    println!("deep page ratio: {:.2}", ms(deep_page) / ms(small_page));
}
