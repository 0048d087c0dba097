//! Hostile input never harms the user: a manifest from someone else cannot make
//! `submit` or `run` upload anything but images, and a rogue coordinator cannot make
//! `fetch` write outside `--out`, over another job's files or over the contact sheet;
//! what can be fetched still is. The real binary, real local storage; the rogue
//! coordinator is a gRPC server that answers GetBatch with what the test gives it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use stylefarm_proto::v1::style_farm_server::{StyleFarm, StyleFarmServer};
use stylefarm_proto::v1::{self, JobState};
use stylefarm_testkit::process::output_within;
use tonic::{Request, Response, Status};

mod common;

use common::{shared, weights};

fn stylefarm(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    c.args(args)
        .env("STYLEFARM_SHARED", shared())
        .env("STYLEFARM_WEIGHTS", weights())
        .env_remove("STYLEFARM_COORDINATOR")
        .env_remove("STYLEFARM_STORAGE");
    c
}

fn run(c: &mut Command) -> Output {
    output_within(c, Duration::from_secs(300))
}

/// Asserts the exit code; returns stderr.
fn expect(o: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr
}

/// Every file below `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_manifest_that_names_a_secret_uploads_nothing_with_submit_or_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("credentials");
    std::fs::write(&secret, "[default]\naws_secret_access_key = abc\n").expect("write");
    let steal = dir.path().join("steal.yaml");
    std::fs::write(
        &steal,
        "batch: steal\njobs:\n  - content: ${STYLEFARM_SHARED}/fixtures/content/coffee.png\n    style: credentials\n",
    )
    .expect("write");
    let store = dir.path().join("store");
    let storage = format!("--storage={}", store.display());
    // Refused before the coordinator is called (nobody listens there).
    let err = expect(
        &run(stylefarm(&["submit", &storage, "--coordinator=http://127.0.0.1:1"]).arg(&steal)),
        3,
    );
    let wanted = format!(
        "steal.yaml:4: jobs[0].style: {} is not an image stylefarm reads",
        secret.display()
    );
    assert!(err.contains(&wanted), "{err}");
    assert_eq!(files(&store), Vec::<std::path::PathBuf>::new());

    let out = dir.path().join("out");
    let err = expect(
        &run(stylefarm(&["run", "--quiet"])
            .arg(&steal)
            .arg("--out")
            .arg(&out)),
        3,
    );
    assert!(err.contains(&wanted), "{err}");
    assert_eq!(files(&out), Vec::<std::path::PathBuf>::new());

    // A variable outside STYLEFARM_* is refused by name, even when it is set.
    let env = dir.path().join("env.yaml");
    std::fs::write(
        &env,
        "batch: env\njobs:\n  - content: ${STYLEFARM_SHARED}/fixtures/content/coffee.png\n    style: s3://bucket/${AWS_SECRET_ACCESS_KEY}.png\n",
    )
    .expect("write");
    let err = expect(
        &run(
            stylefarm(&["submit", &storage, "--coordinator=http://127.0.0.1:1"])
                .arg(&env)
                .env("AWS_SECRET_ACCESS_KEY", "abc"),
        ),
        3,
    );
    assert!(
        err.contains("env.yaml:4: jobs[0].style: \"s3://bucket/${AWS_SECRET_ACCESS_KEY}.png\" uses ${AWS_SECRET_ACCESS_KEY}, which is refused: a manifest may only use STYLEFARM_* variables"),
        "{err}"
    );
    assert!(!err.contains("abc"), "{err}");
    assert_eq!(files(&store), Vec::<std::path::PathBuf>::new());
}

/// A coordinator that answers every GetBatch with `batch` and nothing else.
struct Rogue(v1::Batch);

#[tonic::async_trait]
impl StyleFarm for Rogue {
    async fn submit_batch(
        &self,
        _: Request<v1::SubmitBatchRequest>,
    ) -> Result<Response<v1::SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn get_batch(
        &self,
        _: Request<v1::GetBatchRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        Ok(Response::new(self.0.clone()))
    }
    async fn list_batches(
        &self,
        _: Request<v1::ListBatchesRequest>,
    ) -> Result<Response<v1::ListBatchesResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn get_server_info(
        &self,
        _: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn get_job(
        &self,
        _: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobDetail>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    type WatchBatchStream = tokio_stream::Empty<Result<v1::BatchEvent, Status>>;
    async fn watch_batch(
        &self,
        _: Request<v1::WatchBatchRequest>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn cancel_batch(
        &self,
        _: Request<v1::CancelBatchRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn retry_jobs(
        &self,
        _: Request<v1::RetryJobsRequest>,
    ) -> Result<Response<v1::Batch>, Status> {
        Err(Status::unimplemented("rogue"))
    }
    async fn cancel_job(
        &self,
        _: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        Err(Status::unimplemented("rogue"))
    }
}

async fn serve(batch: v1::Batch) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StyleFarmServer::new(Rogue(batch)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn png(rgb: [u8; 3]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(40, 30, image::Rgb(rgb))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn succeeded(id: &str, name: &str, result: &str, sidecar: &str) -> v1::JobStatus {
    v1::JobStatus {
        job_id: id.into(),
        batch_id: "b-rogue".into(),
        name: name.into(),
        state: JobState::Succeeded as i32,
        result_key: result.into(),
        sidecar_key: sidecar.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_a_rogue_coordinator_writes_only_checked_names_inside_out_and_fetches_the_rest()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let put = |key: &str, bytes: &[u8]| {
        let p = store.join(key);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    };
    // The farm's own copy of an input, and an image elsewhere that a sidecar names.
    let content = std::fs::read(shared().join("fixtures/content/coffee.png")).expect("fixture");
    let digest = stylefarm_storage::sha256_hex(&content);
    put(&format!("inputs/sha256/{digest}"), &content);
    let elsewhere = dir.path().join("private.png");
    std::fs::write(&elsewhere, png([255, 0, 0])).expect("write");
    let sidecar = serde_json::json!({
        "content": {"source": store.join("inputs/sha256").join(&digest)},
        "styles": [{"source": elsewhere, "weight": 1.0}],
    })
    .to_string();
    put("r/good.png", &png([0, 0, 255]));
    put("r/good.json", sidecar.as_bytes());
    put("r/twin.png", &png([0, 255, 0]));
    put("r/sheet-job.png", &png([1, 2, 3]));
    put("r/after.png", &png([4, 5, 6]));

    let batch = v1::Batch {
        batch_id: "b-rogue".into(),
        name: "rogue".into(),
        state: v1::BatchState::Succeeded as i32,
        jobs: vec![
            succeeded("j1", "good", "r/good.png", "r/good.json"),
            succeeded("j2", "../escape", "r/good.png", "r/good.json"),
            succeeded("j3", "no-sidecar", "r/good.png", "r/absent.json"),
            succeeded("j4", "good", "r/twin.png", "r/good.json"),
            succeeded("j5", "contact-sheet", "r/sheet-job.png", "r/good.json"),
            succeeded("j6", "after", "r/after.png", "r/good.json"),
        ],
        ..Default::default()
    };
    let addr = serve(batch).await;
    let out = dir.path().join("out");
    let o = run(stylefarm(&[
        "fetch",
        "b-rogue",
        &format!("--coordinator=http://{addr}"),
        &format!("--storage={}", store.display()),
    ])
    .arg("--out")
    .arg(&out));
    // Exit 1 (a failure that is not the batch's) after fetching the rest, each missing
    // job named with why.
    let err = expect(&o, 1);
    for wanted in [
        "3 of 6 finished outputs of batch b-rogue were not fetched (the others were)",
        "job \"../escape\": refused: the coordinator sent \"../escape\" is not a valid output name",
        "job \"no-sidecar\": downloading the sidecar",
        "job \"good\": another job of the batch has this name too; the first one's files are kept",
    ] {
        assert!(err.contains(wanted), "wanted {wanted:?} in\n{err}");
    }

    // Nothing outside --out; the first "good" kept; the rest fetched.
    assert!(!dir.path().join("escape.png").exists());
    assert!(!dir.path().join("escape.json").exists());
    let read = |name: &str| std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(read("good.png"), png([0, 0, 255]));
    assert_eq!(read("good.json"), sidecar.as_bytes());
    assert_eq!(read("after.png"), png([4, 5, 6]));
    assert!(!out.join("no-sidecar.png").exists(), "nothing half-written");
    // The job called contact-sheet keeps its name; the sheet goes beside it.
    assert_eq!(read("contact-sheet.png"), png([1, 2, 3]));
    let sheet = image::open(out.join("contact-sheet~.png"))
        .expect("the sheet")
        .to_rgb8();
    assert!(sheet.height() > 3 * 192, "a row per fetched job");
    assert!(
        err.contains(&format!(
            "contact sheet {}",
            out.join("contact-sheet~.png").display()
        )),
        "{err}"
    );
    // The sidecar's content source is the farm's input and is drawn; its style source
    // is a file outside the farm's inputs, left as a grey box, not read.
    let cell = |col: u32| sheet.get_pixel(12 + col * (192 + 12) + 96, 12 + 24 + 96).0;
    assert_ne!(cell(1), [200, 200, 200], "the content is drawn");
    assert_eq!(cell(2), [200, 200, 200], "the private file is not drawn");
}
