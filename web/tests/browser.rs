//! The web interface in a real headless Chromium (Debian's, driven over WebDriver by
//! chromedriver; `make browser` installs both) against a real farm: the coordinator over
//! TLS with tokens, a worker with the real partial VGG19, Garage, and a batch submitted
//! with the `stylefarm` CLI. Screenshots of each page go to `target/web-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use stylefarm_proto::v1;
use stylefarm_testkit::fixtures::{fixture, real_weights, root, shared};
use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::process::{
    output_within, poll_file, ready_field, workspace_bin, CoordinatorProc, Proc,
};

/// Waits for `what` to hold, polling; fails the test with `what` after `limit`.
async fn until<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// chromedriver on a free loopback port, and a Chromium session through it.
struct Browser {
    client: Client,
    _driver: Proc,
}

impl Browser {
    async fn start(dir: &Path) -> Self {
        for bin in ["chromium", "chromedriver"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{bin} is not installed: `make browser` installs Debian's chromium and chromium-driver"
            );
        }
        // fantoccini's client is built on rustls; more than one crypto backend is
        // linked into the tests, so name one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // chromedriver takes no port 0: ask the kernel for a free one, then hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("chromedriver.log");
        let driver = Proc::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(Stdio::null()),
        );
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", dir.join("chromium-profile").display()),
                ]
            }
        }))
        .expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        let client = until(
            "chromedriver answers",
            Duration::from_secs(30),
            async || {
                ClientBuilder::rustls()
                    .ok()?
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                    .ok()
            },
        )
        .await;
        Self {
            client,
            _driver: driver,
        }
    }

    async fn shot(&self, name: &str) -> PathBuf {
        let dir = root().join("target").join("web-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.client.screenshot().await.expect("screenshot")).expect("write");
        path
    }

    async fn text(&self, css: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.client
            .goto(&format!("{base}/login"))
            .await
            .expect("login page");
        let field = self
            .client
            .find(Locator::Id("token"))
            .await
            .expect("token field");
        field.send_keys(token).await.expect("type");
        self.client
            .find(Locator::Css("form.login button"))
            .await
            .expect("button")
            .click()
            .await
            .expect("sign in");
        // The answer is a new page: either the batches or the form with its error.
        until("the sign-in answers", Duration::from_secs(20), async || {
            let signed_in = self.path().await != "/login";
            (signed_in || self.text("#login-error").await.is_some()).then_some(())
        })
        .await;
    }

    async fn sign_out(&self) {
        self.client
            .find(Locator::Css("form.who button"))
            .await
            .expect("sign-out button")
            .click()
            .await
            .expect("sign out");
        until("signed out", Duration::from_secs(20), async || {
            (self.path().await == "/login").then_some(())
        })
        .await;
    }

    /// The natural width of the first image `css` finds once it has loaded (0 while it
    /// has not, or could not).
    async fn image_width(&self, css: &str) -> u64 {
        self.client
            .execute(
                "const i = document.querySelector(arguments[0]); return i && i.complete && !i.hidden ? i.naturalWidth : 0;",
                vec![css.into()],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// GETs `path` from the page's own script: status and content type.
    async fn head(&self, path: &str) -> (u64, String) {
        let out = self
            .client
            .execute_async(
                "const [path, done] = arguments;
                 fetch(path).then(r => done([r.status, r.headers.get('content-type') || '']));",
                vec![path.into()],
            )
            .await
            .expect("fetch");
        (
            out[0].as_u64().unwrap_or(0),
            out[1].as_str().unwrap_or("").to_owned(),
        )
    }

    /// POSTs a form from the page's own script (as a forged or scripted request would).
    async fn post(&self, path: &str, body: &str) -> (u64, String) {
        let out = self
            .client
            .execute_async(
                "const [path, body, done] = arguments;
                 fetch(path, {method: 'POST', body, headers: {'content-type': 'application/x-www-form-urlencoded'}})
                   .then(async r => done([r.status, await r.text()]));",
                vec![path.into(), body.into()],
            )
            .await
            .expect("fetch");
        (
            out[0].as_u64().unwrap_or(0),
            out[1].as_str().unwrap_or("").to_owned(),
        )
    }
}

fn web(coordinator: &CoordinatorProc, dir: &Path, storage: &[String]) -> (Proc, String) {
    let security = coordinator.security.as_ref().expect("a secure coordinator");
    let ready = dir.join("web.ready");
    let proc = Proc::spawn(
        Command::new(workspace_bin("stylefarm-web"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--coordinator",
                &coordinator.grpc,
            ])
            .arg("--tls-ca-file")
            .arg(&security.pki.ca)
            .arg("--https-cert-file")
            .arg(&security.pki.cert)
            .arg("--https-key-file")
            .arg(&security.pki.key)
            .arg("--ready-file")
            .arg(&ready)
            .args(storage)
            .env("RUST_LOG", "warn"),
    );
    let body = poll_file(&ready, Duration::from_secs(30));
    let addr = ready_field(&body, "web");
    (proc, format!("https://{addr}"))
}

async fn job(coordinator: &CoordinatorProc, batch: &str, name: &str) -> v1::JobStatus {
    let channel = coordinator
        .auth("admin")
        .connect(&coordinator.grpc)
        .await
        .expect("connect");
    let b = stylefarm_testkit::farm::whole_batch(
        &mut v1::style_farm_client::StyleFarmClient::new(channel),
        batch,
    )
    .await;
    b.jobs
        .into_iter()
        .find(|j| j.name == name)
        .expect("the job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrangler_follows_and_cancels_a_batch_in_chromium_and_a_worker_identity_only_looks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garage = Garage::start();
    let db = dir.path().join("coordinator.db");
    let mut coordinator = CoordinatorProc::start(&workspace_bin("stylefarm-coordinator"), &db, &[]);
    let storage = garage.storage_flags("farm");
    let _worker = coordinator.worker("w", &real_weights(), &storage);
    // The interface reads storage with a key that may only read.
    let (_web, base) = web(&coordinator, dir.path(), &garage.read_only_flags("farm"));
    let tokens = &coordinator.security.as_ref().expect("secure").tokens;
    let browser = Browser::start(dir.path()).await;
    let b = &browser.client;

    // Signed out, every page is the sign-in page; a wrong token is refused and says so.
    b.goto(&format!("{base}/batches")).await.expect("goto");
    assert_eq!(browser.path().await, "/login");
    browser.shot("login").await;
    browser.sign_in(&base, "sft_not-a-token").await;
    let refused = browser.text("#login-error").await.unwrap_or_default();
    assert!(refused.contains("does not accept"), "{refused}");

    // A sign-in posted without the sign-in page's nonce (as a page elsewhere would post
    // it, or a script that never loaded the form) is refused, even with a good token.
    let (status, body) = browser
        .post("/login", &format!("token={}", tokens.token("alice")))
        .await;
    assert_eq!(status, 403, "{body}");
    b.goto(&format!("{base}/batches")).await.expect("goto");
    assert_eq!(browser.path().await, "/login", "not signed in");

    // alice signs in and sees her batch appear when the CLI submits it.
    browser.sign_in(&base, tokens.token("alice")).await;
    let cookies = b.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name() == "__Host-stylefarm_session")
        .unwrap_or_else(|| panic!("the session cookie: {cookies:?}"));
    assert_eq!(
        (session.http_only(), session.secure(), session.path()),
        (Some(true), Some(true), Some("/")),
        "{session:?}"
    );
    assert_eq!(
        browser.path().await,
        "/batches",
        "{:?}",
        browser.text("main").await
    );
    let truncated = dir.path().join("truncated.jpg");
    let photo = std::fs::read(fixture("content/tubingen.jpg")).expect("fixture");
    std::fs::write(&truncated, &photo[..photo.len() / 3]).expect("write");
    let manifest = dir.path().join("wedge.yaml");
    std::fs::write(
        &manifest,
        format!(
            "batch: web-wedge\ndefaults:\n  size: 64\n  optimizer: adam\njobs:
  - name: broken
    content: {truncated}
    style: {shared}/fixtures/styles/the_scream.jpg
    params:
      iterations: 5
  - name: quick
    content: {shared}/fixtures/content/tubingen.jpg
    style: {shared}/fixtures/styles/the_scream.jpg
    params:
      iterations: 60
  - name: slow
    content: {shared}/fixtures/content/tubingen.jpg
    style: {shared}/fixtures/styles/starry_night.jpg
    params:
      iterations: 20000
",
            shared = shared().display(),
            truncated = truncated.display()
        ),
    )
    .expect("manifest");
    let submitted = output_within(
        Command::new(workspace_bin("stylefarm"))
            .arg("submit")
            .arg(&manifest)
            .env("STYLEFARM_WEIGHTS", real_weights())
            .args(coordinator.client_flags("alice"))
            .args(&storage),
        Duration::from_secs(120),
    );
    assert!(submitted.status.success(), "{submitted:?}");
    let batch = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    let row = format!("tr[data-batch=\"{batch}\"]");
    until(
        "the batch appears without a reload",
        Duration::from_secs(20),
        async || browser.text(&row).await.filter(|t| t.contains("web-wedge")),
    )
    .await;
    browser.shot("batches").await;

    // Its page: the running job's iterations advance and the broken job's error shows,
    // all without reloading the page (a mark set on it survives).
    b.find(Locator::Css(&format!("{row} a")))
        .await
        .expect("link")
        .click()
        .await
        .expect("open the batch");
    assert_eq!(browser.path().await, format!("/batches/{batch}"));
    b.execute("document.body.dataset.mark = 'unreloaded'", vec![])
        .await
        .expect("mark");
    let slow = job(&coordinator, &batch, "slow").await.job_id;
    let broken = job(&coordinator, &batch, "broken").await.job_id;
    let progress = format!("tr[data-job=\"{slow}\"] [data-field=progress] .num");
    let iteration = async || {
        let t = browser.text(&progress).await?;
        t.split('/').next()?.parse::<u32>().ok()
    };
    let first = until("the slow job runs", Duration::from_secs(120), async || {
        iteration().await.filter(|i| *i > 0)
    })
    .await;
    until(
        "its iterations advance live",
        Duration::from_secs(60),
        async || iteration().await.filter(|i| *i > first),
    )
    .await;
    let error = format!("tr[data-job=\"{broken}\"] [data-field=error]");
    let text = until(
        "the broken job's error shows",
        Duration::from_secs(60),
        async || browser.text(&error).await.filter(|t| !t.is_empty()),
    )
    .await;
    assert!(text.contains("corrupt or truncated"), "{text}");
    let mark = b
        .execute("return document.body.dataset.mark || ''", vec![])
        .await
        .expect("mark");
    assert_eq!(mark, "unreloaded", "the page was never reloaded");
    // The grid shows the finished job's result and the running job's live preview.
    let quick = job(&coordinator, &batch, "quick").await.job_id;
    until(
        "the finished job's thumbnail shows in the grid",
        Duration::from_secs(60),
        async || {
            let css = format!("li[data-tile=\"{quick}\"] img[src$=\"thumbnail.jpg\"]");
            (browser.image_width(&css).await > 0).then_some(())
        },
    )
    .await;
    until(
        "a preview of the running job shows in the grid",
        Duration::from_secs(60),
        async || {
            (browser
                .image_width(&format!("li[data-tile=\"{slow}\"] img"))
                .await
                > 0)
            .then_some(())
        },
    )
    .await;
    // The running job's tile fetches its preview again when a new checkpoint wrote one.
    let tile = format!("li[data-tile=\"{slow}\"] img");
    let version = async || {
        let src = b
            .execute(
                "const i = document.querySelector(arguments[0]); return i ? i.getAttribute('src') : '';",
                vec![tile.as_str().into()],
            )
            .await
            .ok()?;
        src.as_str()?.split("?v=").nth(1)?.parse::<u32>().ok()
    };
    let shown = until(
        "the preview names its checkpoint",
        Duration::from_secs(30),
        version,
    )
    .await;
    until(
        "a newer checkpoint's preview replaces it",
        Duration::from_secs(90),
        async || version().await.filter(|v| *v > shown),
    )
    .await;
    until(
        "the newer preview loads",
        Duration::from_secs(30),
        async || (browser.image_width(&tile).await > 0).then_some(()),
    )
    .await;
    // Elapsed: the running attempt's counts on between events; the finished one's stays.
    let elapsed = |job: &str| format!("tr[data-job=\"{job}\"] [data-field=elapsed]");
    let seconds = async |job: &str| -> Option<u64> {
        let t = browser.text(&elapsed(job)).await?;
        match t.split_whitespace().collect::<Vec<_>>()[..] {
            [n, "s"] => n.parse().ok(),
            [n, "min"] => n.parse::<u64>().ok().map(|m| m * 60),
            _ => None,
        }
    };
    let running_for = until(
        "the running job's elapsed time shows",
        Duration::from_secs(10),
        async || seconds(&slow).await,
    )
    .await;
    until("it counts on", Duration::from_secs(70), async || {
        seconds(&slow).await.filter(|s| *s > running_for)
    })
    .await;
    assert!(
        seconds(&quick).await.is_some(),
        "the finished job shows how long it ran"
    );
    assert!(
        b.find(Locator::Css(&format!("{}[data-running]", elapsed(&quick))))
            .await
            .is_err(),
        "a finished job's elapsed time does not count on"
    );
    // The counts above the table follow the coordinator's: one of each ended state.
    for state in ["failed", "succeeded", "running"] {
        let shown = browser
            .text(&format!("section.summary [data-count=\"{state}\"]"))
            .await
            .unwrap_or_default();
        assert_eq!(shown, "1", "{state}");
    }
    browser.shot("batch").await;
    b.execute(
        "document.querySelector('ul.tiles').scrollIntoView()",
        vec![],
    )
    .await
    .expect("scroll");
    browser.shot("batch-images").await;

    // The running job's page: its preview beside its inputs, a loss curve with points,
    // its attempt with the worker that runs it, its parameters.
    b.goto(&format!("{base}/jobs/{slow}"))
        .await
        .expect("job page");
    until(
        "the job page shows a preview",
        Duration::from_secs(30),
        async || {
            (browser
                .image_width("#job-live img[src*=\"preview.jpg\"]")
                .await
                > 0)
            .then_some(())
        },
    )
    .await;
    assert!(
        browser.image_width("img[src$=\"content.jpg\"]").await > 0,
        "the content shows"
    );
    assert!(
        browser.image_width("img[src$=\"style-0.jpg\"]").await > 0,
        "the style shows"
    );
    let points = |v: serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let curve = async || {
        let v = b
            .execute(
                "const f = document.querySelector('figure.curve'); const p = f && f.querySelector('path[stroke=\"#222222\"]');
                 return f && p && p.getAttribute('d').split('L').length > 1 ? f.dataset.points : '0';",
                vec![],
            )
            .await
            .ok()?;
        Some(points(v)).filter(|n| *n > 1)
    };
    let before = until("the loss curve has points", Duration::from_secs(30), curve).await;
    until(
        "the curve grows without a reload",
        Duration::from_secs(60),
        async || curve().await.filter(|n| *n > before),
    )
    .await;
    let attempts = browser.text("table.attempts").await.unwrap_or_default();
    assert!(
        attempts.contains("-w") && attempts.contains("cpu"),
        "{attempts}"
    );
    let params = browser.text("table.params").await.unwrap_or_default();
    assert!(
        params.contains("iterations") && params.contains("20000"),
        "{params}"
    );
    browser.shot("job").await;

    // The finished job's page: its result, and its output served from storage.
    b.goto(&format!("{base}/jobs/{quick}"))
        .await
        .expect("job page");
    assert!(
        browser.image_width("img[src$=\"thumbnail.jpg\"]").await > 0,
        "the result shows"
    );
    assert!(curve().await.is_some(), "the finished job has its curve");
    assert_eq!(
        browser.head(&format!("/jobs/{quick}/output")).await,
        (200, "image/png".to_owned())
    );
    assert_eq!(
        browser.head(&format!("/jobs/{quick}/sidecar.json")).await,
        (200, "application/json".to_owned())
    );
    assert_eq!(
        browser
            .head(&format!("/jobs/{quick}/attempts/9/thumbnail.jpg"))
            .await
            .0,
        400,
        "an attempt the job never had"
    );
    browser.shot("job-finished").await;

    // The workers page: the worker is live and holds the running job.
    b.goto(&format!("{base}/workers"))
        .await
        .expect("workers page");
    let row = browser.text("tr[data-worker]").await.unwrap_or_default();
    assert!(row.contains("live") && row.contains(&slow), "{row}");
    browser.shot("workers").await;
    b.goto(&format!("{base}/batches/{batch}"))
        .await
        .expect("back to the batch");

    // A session that ends while its page is open (here signed out from a script, as
    // another tab would) leaves the page saying so, not showing stale rows as live.
    let csrf = async || {
        b.execute(
            "return document.querySelector('input[name=csrf]').value",
            vec![],
        )
        .await
        .expect("csrf")
        .as_str()
        .unwrap_or("")
        .to_owned()
    };
    let (status, _) = browser
        .post("/logout", &format!("csrf={}", csrf().await))
        .await;
    assert!(status < 400, "signed out: {status}");
    until(
        "the open page says the session ended",
        Duration::from_secs(30),
        async || {
            browser
                .text("#live-status")
                .await
                .filter(|t| t.contains("session has ended"))
        },
    )
    .await;
    browser.shot("batch-signed-out").await;

    // A worker identity sees the running batch but is offered no action, and a scripted
    // cancel of the running job is refused by the coordinator with its reason.
    browser.sign_in(&base, tokens.token("worker")).await;
    b.goto(&format!("{base}/batches/{batch}"))
        .await
        .expect("goto");
    assert!(browser
        .text("h1")
        .await
        .is_some_and(|t| t.contains("web-wedge")));
    assert!(
        b.find_all(Locator::Css("main button"))
            .await
            .expect("find")
            .is_empty(),
        "no actions for a worker identity"
    );
    browser.shot("batch-as-worker").await;
    let (status, body) = browser
        .post(
            &format!("/batches/{batch}/jobs/{slow}/cancel"),
            &format!("csrf={}", csrf().await),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("submitter role"), "{body}");
    assert_eq!(
        job(&coordinator, &batch, "slow").await.state,
        v1::JobState::Running as i32,
        "still running"
    );
    browser.sign_out().await;
    browser.sign_in(&base, tokens.token("alice")).await;
    b.goto(&format!("{base}/batches/{batch}"))
        .await
        .expect("back to the batch");

    // The coordinator dies (kill -9) and comes back on its address under the open page:
    // the page says it lost the farm, then follows the batch again by itself.
    until(
        "the page follows the batch",
        Duration::from_secs(20),
        async || {
            browser
                .text("#live-status")
                .await
                .filter(|t| t.contains("Live: following"))
        },
    )
    .await;
    let address = coordinator
        .grpc
        .rsplit_once("//")
        .map(|(_, a)| a.to_owned())
        .expect("host:port");
    coordinator.proc.kill9();
    until(
        "the page says the farm is not answering",
        Duration::from_secs(30),
        async || {
            browser
                .text("#live-status")
                .await
                .filter(|t| t.contains("reconnecting") || t.contains("not answering"))
        },
    )
    .await;
    browser.shot("batch-farm-lost").await;
    coordinator =
        CoordinatorProc::start_on(&workspace_bin("stylefarm-coordinator"), &db, &address, &[]);
    until(
        "the page follows the batch again",
        Duration::from_secs(60),
        async || {
            browser
                .text("#live-status")
                .await
                .filter(|t| t.contains("Live: following"))
        },
    )
    .await;
    until(
        "the running job is running again (its worker reconnected)",
        Duration::from_secs(90),
        async || {
            (job(&coordinator, &batch, "slow").await.state == v1::JobState::Running as i32)
                .then_some(())
        },
    )
    .await;

    // A form without the session's CSRF token is refused, and changes nothing.
    let (status, body) = browser
        .post(&format!("/batches/{batch}/cancel"), "csrf=forged")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        job(&coordinator, &batch, "slow").await.state,
        v1::JobState::Running as i32
    );

    // Cancel from the page: the coordinator has the job cancelled.
    b.find(Locator::Css(&format!(
        "tr[data-job=\"{slow}\"] button.danger"
    )))
    .await
    .expect("the job's cancel button")
    .click()
    .await
    .expect("cancel");
    until(
        "the coordinator has it cancelled",
        Duration::from_secs(20),
        async || {
            (job(&coordinator, &batch, "slow").await.state == v1::JobState::Cancelled as i32)
                .then_some(())
        },
    )
    .await;
    // The batch has ended: the page says so and stops following it.
    until(
        "the page says the batch ended",
        Duration::from_secs(20),
        async || {
            browser
                .text("#live-status")
                .await
                .filter(|t| t.contains("This batch has ended"))
        },
    )
    .await;
    browser.shot("batch-ended").await;

    // Retry brings back the failed job only; the cancelled one stays cancelled.
    let attempts_before = job(&coordinator, &batch, "broken").await.attempt;
    b.goto(&format!("{base}/batches/{batch}"))
        .await
        .expect("reload the ended batch");
    let labels = browser
        .text("section.summary .actions")
        .await
        .unwrap_or_default();
    assert!(
        labels.contains("Retry failed jobs") && labels.contains("Retry failed and cancelled jobs"),
        "{labels}"
    );
    b.find(Locator::XPath(
        "//section[@class='summary']//button[normalize-space()='Retry failed jobs']",
    ))
    .await
    .expect("the retry button")
    .click()
    .await
    .expect("retry");
    until(
        "the failed job runs again (and fails again: its input is corrupt)",
        Duration::from_secs(60),
        async || {
            let j = job(&coordinator, &batch, "broken").await;
            (j.attempt > attempts_before && j.state == v1::JobState::Failed as i32).then_some(())
        },
    )
    .await;
    assert_eq!(
        job(&coordinator, &batch, "slow").await.state,
        v1::JobState::Cancelled as i32,
        "the cancelled job was not asked back"
    );

    // Signed out, the pages are the sign-in page again.
    browser.sign_out().await;
    assert_eq!(browser.path().await, "/login");
    b.goto(&format!("{base}/batches/{batch}"))
        .await
        .expect("goto");
    assert_eq!(browser.path().await, "/login");
    b.clone().close().await.expect("close the browser");
}
