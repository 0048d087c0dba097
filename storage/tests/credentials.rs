//! S3 credentials and configuration as a user gives them: each case runs a process
//! (this test binary again, in `child`) that parses the storage flags with their
//! environment, logs like the CLI (warnings and errors to stderr) and uploads one
//! object to a real S3 server (Garage on loopback), printing `error: ...` on failure.
//! A fake EC2 instance metadata service counts whether anything asked it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use stylefarm_storage::{ObjectUrl, Storage, StorageArgs};
use stylefarm_testkit::garage::Garage;

/// Where the child finds its arguments, one a line.
const CHILD_ARGS: &str = "STYLEFARM_TEST_CHILD_ARGS";
/// What the child uploads.
const PAYLOAD: &[u8] = b"probe";

#[derive(Parser)]
struct ChildCli {
    #[command(flatten)]
    storage: StorageArgs,
    /// The key to write below the storage root.
    #[arg(long)]
    key: String,
}

/// The process each case runs: parse, open, put; `error: ...` and exit 1 on failure.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    stylefarm_core::telemetry::init(false, "warn");
    let cli = match ChildCli::try_parse_from(
        std::iter::once("child").chain(args.lines().filter(|l| !l.is_empty())),
    ) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let (root, storage) = cli.storage.open()?;
        storage.put(&root.join(&cli.key)?, PAYLOAD.to_vec()).await
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// A stand-in for the EC2 instance metadata service: answers 404 to everything and
/// counts connections.
struct FakeImds {
    endpoint: String,
    connections: Arc<AtomicUsize>,
}

impl FakeImds {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self {
            endpoint,
            connections,
        }
    }

    fn asked(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One run of the child.
struct Run {
    ok: bool,
    stderr: String,
    elapsed: Duration,
}

/// Runs the child with `args` and exactly the variables in `env` (beside the ones any
/// process needs, and empty AWS config files so the developer's `~/.aws` stays out).
fn run(dir: &Path, imds: &FakeImds, args: &[String], env: &[(&str, String)]) -> Run {
    for empty in ["no-aws-config", "no-aws-credentials"] {
        std::fs::write(dir.join(empty), "").expect("write");
    }
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_clear()
    .env(CHILD_ARGS, args.join("\n"))
    .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
    .env(
        "AWS_SHARED_CREDENTIALS_FILE",
        dir.join("no-aws-credentials"),
    )
    .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint)
    .env("HOME", dir);
    for keep in ["PATH", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run the child");
    Run {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// The flags that reach `garage`, without credentials, writing below `prefix`.
fn reach(garage: &Garage, prefix: &str) -> Vec<String> {
    reach_at(garage, prefix, &garage.endpoint, "garage")
}

/// [`reach`] with another endpoint and region.
fn reach_at(garage: &Garage, prefix: &str, endpoint: &str, region: &str) -> Vec<String> {
    vec![
        format!("--storage=s3://{}/{prefix}", garage.bucket),
        format!("--s3-endpoint={endpoint}"),
        format!("--s3-region={region}"),
        "--s3-path-style".into(),
        "--key=probe.bin".into(),
    ]
}

fn with(mut args: Vec<String>, more: &[String]) -> Vec<String> {
    args.extend_from_slice(more);
    args
}

/// True when the probe object of `prefix` is on the server.
async fn uploaded(garage: &Garage, prefix: &str) -> bool {
    let storage = Storage::new(garage.options(Duration::from_secs(5)));
    let url = ObjectUrl::parse(&format!("s3://{}/{prefix}/probe.bin", garage.bucket)).expect("url");
    storage.exists(&url).await.expect("exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misconfiguration_fails_at_once_with_a_short_clear_error() {
    let garage = Garage::start();
    let imds = FakeImds::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{}\n", garage.secret_key)).expect("write");
    let secret_file = secret_file.display().to_string();
    let good_access = garage.access_key.clone();
    let good_secret = garage.secret_key.clone();
    let half_names = [
        "--s3-access-key",
        "STYLEFARM_S3_ACCESS_KEY",
        "--s3-secret-key",
        "STYLEFARM_S3_SECRET_KEY",
        "--s3-secret-key-file",
        "STYLEFARM_S3_SECRET_KEY_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ];

    struct Case<'a> {
        name: &'a str,
        args: Vec<String>,
        env: Vec<(&'a str, String)>,
        says: Vec<&'a str>,
    }
    let cases = vec![
        Case {
            // The case: the two halves from different conventions.
            name: "mixed-halves",
            args: reach(&garage, "mixed-halves"),
            env: vec![
                ("AWS_ACCESS_KEY_ID", good_access.clone()),
                ("STYLEFARM_S3_SECRET_KEY_FILE", secret_file.clone()),
            ],
            says: [
                &half_names[..],
                &["half a credential", "AWS_ACCESS_KEY_ID is set"],
            ]
            .concat(),
        },
        Case {
            name: "secret-flag-only",
            args: with(
                reach(&garage, "secret-flag-only"),
                &[format!("--s3-secret-key={good_secret}")],
            ),
            env: vec![],
            says: [&half_names[..], &["half a credential"]].concat(),
        },
        Case {
            name: "access-variable-only",
            args: reach(&garage, "access-variable-only"),
            env: vec![("STYLEFARM_S3_ACCESS_KEY", good_access.clone())],
            says: [&half_names[..], &["half a credential"]].concat(),
        },
        Case {
            name: "aws-secret-only",
            args: reach(&garage, "aws-secret-only"),
            env: vec![("AWS_SECRET_ACCESS_KEY", good_secret.clone())],
            says: [&half_names[..], &["half a credential"]].concat(),
        },
        Case {
            name: "no-credentials",
            args: reach(&garage, "no-credentials"),
            env: vec![],
            says: vec![
                "none given",
                "--s3-access-key",
                "AWS_ACCESS_KEY_ID",
                "--s3-aws-chain",
                "AWS_PROFILE",
            ],
        },
        Case {
            name: "invalid-access-key",
            args: with(
                reach(&garage, "invalid-access-key"),
                &[
                    format!("--s3-access-key=GK{}", "0".repeat(24)),
                    format!("--s3-secret-key={good_secret}"),
                ],
            ),
            env: vec![],
            says: vec!["access denied", "403", "--s3-access-key"],
        },
        Case {
            name: "wrong-secret",
            args: with(
                reach(&garage, "wrong-secret"),
                &[
                    format!("--s3-access-key={good_access}"),
                    format!("--s3-secret-key={}", "0".repeat(64)),
                ],
            ),
            env: vec![],
            says: vec!["access denied", "403", "--s3-secret-key"],
        },
        Case {
            name: "wrong-region",
            args: with(
                reach_at(&garage, "wrong-region", &garage.endpoint, "eu-west-3"),
                &[
                    format!("--s3-access-key={good_access}"),
                    format!("--s3-secret-key={good_secret}"),
                ],
            ),
            env: vec![],
            says: vec!["--s3-region"],
        },
        Case {
            name: "not-a-region",
            args: with(
                reach_at(&garage, "not-a-region", &garage.endpoint, "eu west"),
                &[
                    format!("--s3-access-key={good_access}"),
                    format!("--s3-secret-key={good_secret}"),
                ],
            ),
            env: vec![],
            says: vec!["--s3-region", "not a region name"],
        },
        Case {
            name: "endpoint-not-a-url",
            args: with(
                reach_at(
                    &garage,
                    "endpoint-not-a-url",
                    garage.endpoint.trim_start_matches("http://"),
                    "garage",
                ),
                &[
                    format!("--s3-access-key={good_access}"),
                    format!("--s3-secret-key={good_secret}"),
                ],
            ),
            env: vec![],
            says: vec!["--s3-endpoint", "http://"],
        },
        Case {
            name: "endpoint-unknown-host",
            args: with(
                reach_at(
                    &garage,
                    "endpoint-unknown-host",
                    "http://no-such-host.invalid:3900",
                    "garage",
                ),
                &[
                    format!("--s3-access-key={good_access}"),
                    format!("--s3-secret-key={good_secret}"),
                ],
            ),
            env: vec![],
            says: vec!["host does not exist", "--s3-endpoint"],
        },
    ];

    let mut report = Vec::new();
    for case in &cases {
        let r = run(dir.path(), &imds, &case.args, &case.env);
        let lines = r.stderr.lines().count();
        report.push(format!(
            "{}: {} ms, {lines} line(s), {} bytes\n  {}",
            case.name,
            r.elapsed.as_millis(),
            r.stderr.len(),
            r.stderr.trim_end()
        ));
        assert!(!r.ok, "{}: succeeded:\n{}", case.name, r.stderr);
        assert!(
            r.elapsed < Duration::from_secs(2),
            "{}: took {:?}:\n{}",
            case.name,
            r.elapsed,
            r.stderr
        );
        assert!(
            lines <= 3 && r.stderr.len() <= 1200,
            "{}: {lines} lines, {} bytes:\n{}",
            case.name,
            r.stderr.len(),
            r.stderr
        );
        assert!(
            r.stderr.starts_with("error: "),
            "{}: only the error:\n{}",
            case.name,
            r.stderr
        );
        for word in &case.says {
            assert!(
                r.stderr.contains(word),
                "{}: {word:?} missing:\n{}",
                case.name,
                r.stderr
            );
        }
        assert!(
            !uploaded(&garage, case.name).await,
            "{}: uploaded anyway",
            case.name
        );
        assert_eq!(
            imds.asked(),
            0,
            "{}: asked the instance metadata service",
            case.name
        );
    }

    // Asked for explicitly, the AWS chain may ask the instance metadata service; when
    // nothing gives credentials the error says which sources were tried.
    let r = run(
        dir.path(),
        &imds,
        &with(reach(&garage, "chain-none"), &["--s3-aws-chain".into()]),
        &[],
    );
    report.push(format!(
        "chain-none: {} ms, {} line(s), {} bytes\n  {}",
        r.elapsed.as_millis(),
        r.stderr.lines().count(),
        r.stderr.len(),
        r.stderr.trim_end()
    ));
    assert!(!r.ok, "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    assert!(r.stderr.lines().count() <= 3, "{}", r.stderr);
    // (The SDK's own warning about the failed provider may come first.)
    for word in [
        "error: S3 credentials: the AWS credential chain",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_",
        "EC2 instance metadata service",
        "IMDS",
    ] {
        assert!(r.stderr.contains(word), "{word:?} missing:\n{}", r.stderr);
    }
    assert!(imds.asked() > 0, "the chain asked the metadata service");
    assert!(!uploaded(&garage, "chain-none").await);
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_configuration_works_given_each_supported_way() {
    let garage = Garage::start();
    let imds = FakeImds::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{}\n", garage.secret_key)).expect("write");
    let secret_file = secret_file.display().to_string();
    let profiles = dir.path().join("aws-credentials");
    std::fs::write(
        &profiles,
        format!(
            "[farm]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            garage.access_key, garage.secret_key
        ),
    )
    .expect("write");
    let access = garage.access_key.clone();
    let secret = garage.secret_key.clone();
    let everything_by_variable = vec![
        ("STYLEFARM_STORAGE", format!("s3://{}/vars", garage.bucket)),
        ("STYLEFARM_S3_ENDPOINT", garage.endpoint.clone()),
        ("STYLEFARM_S3_REGION", "garage".into()),
        ("STYLEFARM_S3_PATH_STYLE", "true".into()),
        ("STYLEFARM_S3_ACCESS_KEY", access.clone()),
        ("STYLEFARM_S3_SECRET_KEY", secret.clone()),
    ];

    let cases: Vec<(&str, Vec<String>, Vec<(&str, String)>)> = vec![
        (
            "flags",
            with(
                reach(&garage, "flags"),
                &[
                    format!("--s3-access-key={access}"),
                    format!("--s3-secret-key={secret}"),
                ],
            ),
            vec![],
        ),
        (
            "secret-file-flag",
            with(
                reach(&garage, "secret-file-flag"),
                &[
                    format!("--s3-access-key={access}"),
                    format!("--s3-secret-key-file={secret_file}"),
                ],
            ),
            vec![],
        ),
        (
            "vars",
            vec!["--key=probe.bin".into()],
            everything_by_variable,
        ),
        (
            "secret-file-variable",
            reach(&garage, "secret-file-variable"),
            vec![
                ("STYLEFARM_S3_ACCESS_KEY", access.clone()),
                ("STYLEFARM_S3_SECRET_KEY_FILE", secret_file.clone()),
            ],
        ),
        (
            "aws-variables",
            reach(&garage, "aws-variables"),
            vec![
                ("AWS_ACCESS_KEY_ID", access.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ],
        ),
        (
            "aws-variables-endpoint-region",
            vec![
                format!(
                    "--storage=s3://{}/aws-variables-endpoint-region",
                    garage.bucket
                ),
                "--s3-path-style".into(),
                "--key=probe.bin".into(),
            ],
            vec![
                ("AWS_ACCESS_KEY_ID", access.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
                ("AWS_ENDPOINT_URL", garage.endpoint.clone()),
                ("AWS_REGION", "garage".into()),
            ],
        ),
        (
            "aws-profile",
            reach(&garage, "aws-profile"),
            vec![
                ("AWS_PROFILE", "farm".into()),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    profiles.display().to_string(),
                ),
            ],
        ),
        (
            "aws-chain-flag",
            with(reach(&garage, "aws-chain-flag"), &["--s3-aws-chain".into()]),
            vec![
                ("AWS_ACCESS_KEY_ID", access.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ],
        ),
    ];
    for (name, args, env) in &cases {
        let r = run(dir.path(), &imds, args, env);
        assert!(r.ok, "{name}: failed in {:?}:\n{}", r.elapsed, r.stderr);
        assert!(r.stderr.is_empty(), "{name}: said something:\n{}", r.stderr);
        assert!(uploaded(&garage, name).await, "{name}: nothing uploaded");
        assert_eq!(imds.asked(), 0, "{name}: asked the metadata service");
    }
}
