//! The Kubernetes manifests against the binaries they run. Kubernetes' schema is
//! `make deploy-check`'s job; these tests catch what a schema cannot: a variable no
//! binary reads (clap ignores unknown ones silently), a probe on a path or port the
//! coordinator does not serve, a grace period shorter than the worker's drain, a weights
//! path the job does not write, state on a volume that does not persist. The last test
//! runs the coordinator and a worker with the environment the manifests give them,
//! against a real S3 server, and renders a job through them with the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use stylefarm_deploy::{Container, Deploy};
use stylefarm_testkit::fixtures::{real_weights, shared};
use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::process::{
    http_get, output_within, poll_file, ready_field, workspace_bin, Proc,
};

const COORDINATOR: (&str, &str) = ("StatefulSet", "stylefarm-coordinator");
const WORKER: (&str, &str) = ("Deployment", "stylefarm-worker");
const WEIGHTS_JOB: (&str, &str) = ("Job", "stylefarm-weights");
/// The file `stylefarm weights fetch vgg19` writes into its cache folder.
const FETCHED_VGG19: &str = "stylefarm/weights/vgg19-torchvision.safetensors";

fn deploy() -> Deploy {
    Deploy::load(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("manifests parse")
}

/// The binary a container runs: its command, else its image's entrypoint.
fn binary(c: &Container) -> (String, Vec<String>) {
    let mut argv = c.command.clone();
    if argv.is_empty() {
        argv.push(c.image.clone());
    }
    let bin = argv.remove(0);
    (
        bin,
        argv.into_iter().chain(c.args.iter().cloned()).collect(),
    )
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

#[test]
fn the_manifests_are_whole_and_agree_with_each_other() {
    let d = deploy();
    let listed: BTreeSet<&str> = d
        .kustomization
        .resources
        .iter()
        .map(String::as_str)
        .collect();
    let files: BTreeSet<&str> = d.resources.keys().map(String::as_str).collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml lists every manifest and only those"
    );
    assert_eq!(
        d.get("Namespace", &d.kustomization.namespace).kind,
        "Namespace"
    );
    let images: BTreeSet<&str> = d
        .kustomization
        .images
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    for (pod, spec) in d.pods() {
        for c in &spec.containers {
            assert!(
                images.contains(c.image.as_str()),
                "{pod}: image {} has no entry under images",
                c.image
            );
        }
    }

    // The Service reaches the coordinator's named ports.
    let (_, coordinator) = d.pod(COORDINATOR.0, COORDINATOR.1);
    let service = d.get("Service", COORDINATOR.1);
    for p in &service.spec.ports {
        coordinator.port(&p.target_port);
    }
    let env = d.env(
        coordinator,
        "stylefarm-coordinator-0",
        &|_, _| unreachable!(),
    );
    assert_eq!(port_of(&env["STYLEFARM_LISTEN"]), coordinator.port("grpc"));
    assert_eq!(
        port_of(&env["STYLEFARM_METRICS_LISTEN"]),
        coordinator.port("metrics")
    );

    // The coordinator's database is on its persistent claim, not the container's disk.
    let (mount, _) = coordinator
        .mount_of(&env["STYLEFARM_DB"])
        .expect("STYLEFARM_DB is on a mount");
    let claims: Vec<&str> = d
        .get(COORDINATOR.0, COORDINATOR.1)
        .spec
        .volume_claim_templates
        .iter()
        .map(|c| c.metadata.name.as_str())
        .collect();
    assert!(
        claims.contains(&mount.name.as_str()),
        "the database is on {}, not a claim ({claims:?})",
        mount.name
    );
    assert!(!mount.read_only);

    // Workers reach the coordinator through the Service.
    let (worker_pod, worker) = d.pod(WORKER.0, WORKER.1);
    let secret = |name: &str, key: &str| format!("{name}/{key}");
    let wenv = d.env(worker, "stylefarm-worker-abc", &secret);
    let grpc = service
        .spec
        .ports
        .iter()
        .find(|p| p.name == "grpc")
        .expect("grpc port");
    assert_eq!(
        wenv["STYLEFARM_COORDINATOR"],
        format!("http://{}:{}", service.metadata.name, grpc.port)
    );
    assert_eq!(
        wenv["STYLEFARM_WORKER_NAME"], "stylefarm-worker-abc",
        "workers are named after their pods"
    );

    // Kubernetes waits for the worker's drain before it kills the pod, with time to spare
    // for the hand-back calls after the grace period's checkpoint.
    let drain_ms: u64 = wenv["STYLEFARM_GRACE_MS"].parse().expect("grace ms");
    assert!(
        drain_ms + 15_000 <= worker_pod.grace_seconds() * 1000,
        "STYLEFARM_GRACE_MS {drain_ms} leaves too little of terminationGracePeriodSeconds {}",
        worker_pod.grace_seconds()
    );

    // The weights the worker loads are the file the job writes, on the same claim.
    let (wmount, wrest) = worker
        .mount_of(&wenv["STYLEFARM_WEIGHTS"])
        .expect("weights on a mount");
    assert!(wmount.read_only, "workers mount the weights read-only");
    let (job_pod, job) = d.pod(WEIGHTS_JOB.0, WEIGHTS_JOB.1);
    let jenv = d.env(job, "stylefarm-weights-xyz", &secret);
    let (jmount, jrest) = job
        .mount_of(&jenv["XDG_CACHE_HOME"])
        .expect("the job's cache is on a mount");
    let claim = |pod: &stylefarm_deploy::PodSpec, m: &str| {
        pod.volume(m)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .expect("a claim")
    };
    assert_eq!(
        claim(worker_pod, &wmount.name),
        claim(job_pod, &jmount.name),
        "worker and job share the weights claim"
    );
    let written = [jrest, FETCHED_VGG19]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    assert_eq!(wrest, written, "the worker loads what the job writes");
    assert_eq!(
        binary(job),
        (
            "stylefarm".into(),
            vec!["weights".into(), "fetch".into(), "vgg19".into()]
        )
    );
    let claim_name = claim(worker_pod, &wmount.name);
    assert_eq!(
        d.get("PersistentVolumeClaim", &claim_name).kind,
        "PersistentVolumeClaim"
    );

    // The S3 secret key is a file from the Secret the access key comes from.
    let (volume, _) = worker_pod
        .secret_file(worker, &wenv["STYLEFARM_S3_SECRET_KEY_FILE"])
        .expect("STYLEFARM_S3_SECRET_KEY_FILE is an item of a mounted Secret");
    let access = &wenv["STYLEFARM_S3_ACCESS_KEY"];
    assert_eq!(access.split('/').next(), Some(volume.secret_name.as_str()));

    // README.md tells how to create that Secret, with these keys.
    let readme = std::fs::read_to_string(d.dir.join("README.md")).expect("deploy/README.md");
    let keys = volume
        .items
        .iter()
        .map(|i| i.key.as_str())
        .chain(access.split('/').nth(1));
    for needle in keys.chain([volume.secret_name.as_str()]) {
        assert!(readme.contains(needle), "deploy/README.md names {needle}");
    }
}

/// Every STYLEFARM_* variable a manifest sets is one its binary reads: clap would
/// silently ignore a misspelt one and run on the default.
#[test]
fn every_variable_is_one_the_binary_reads() {
    let d = deploy();
    for (pod, spec) in d.pods() {
        for c in &spec.containers {
            let (bin, args) = binary(c);
            let sub: Vec<&str> = args
                .iter()
                .map(String::as_str)
                .take_while(|a| !a.starts_with('-'))
                .collect();
            let help = Command::new(workspace_bin(&bin))
                .args(&sub)
                .arg("--help")
                .output()
                .expect("--help runs");
            assert!(
                help.status.success(),
                "{pod}: {bin} {sub:?} --help: {}",
                String::from_utf8_lossy(&help.stderr)
            );
            let help = String::from_utf8_lossy(&help.stdout);
            let known: BTreeSet<&str> = help
                .split("[env: ")
                .skip(1)
                .filter_map(|s| s.split(['=', ']']).next())
                .collect();
            let env = d.env(c, "pod", &|_, _| String::new());
            for name in env.keys().filter(|k| k.starts_with("STYLEFARM_")) {
                assert!(
                    known.contains(name.as_str()),
                    "{pod}: {bin} does not read {name} (it reads {known:?})"
                );
            }
        }
    }
}

/// Runs `bin` with exactly `env` (and PATH, HOME), nothing inherited.
fn spawn(bin: &str, env: &BTreeMap<String, String>) -> Proc {
    Proc::spawn(
        Command::new(workspace_bin(bin))
            .env_clear()
            .envs(env)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    )
}

/// Replaces `path`'s mount point in container `c` by `root`, keeping the path below it.
fn local(c: &Container, path: &str, root: &Path) -> PathBuf {
    let (m, rest) = c
        .mount_of(path)
        .unwrap_or_else(|| panic!("{path} is on no mount of {}", c.name));
    root.join(&m.name).join(rest)
}

#[test]
fn the_farm_runs_as_deployed() {
    let d = deploy();
    let garage = Garage::start();
    let dir = tempfile::tempdir().expect("tempdir");

    // The coordinator as the StatefulSet runs it; only its listen addresses (port 0, so
    // tests never collide) and its volume (a folder here) differ.
    let (cpod, c) = d.pod(COORDINATOR.0, COORDINATOR.1);
    let mut cenv = d.env(c, "stylefarm-coordinator-0", &|_, _| unreachable!());
    let db = local(c, &cenv["STYLEFARM_DB"], dir.path());
    std::fs::create_dir_all(db.parent().expect("db folder")).expect("volume");
    let ready = dir.path().join("coordinator.ready");
    let listens = [
        ("STYLEFARM_LISTEN", "grpc"),
        ("STYLEFARM_METRICS_LISTEN", "metrics"),
    ];
    for (var, _) in listens {
        cenv.insert(var.into(), "127.0.0.1:0".into());
    }
    cenv.insert("STYLEFARM_DB".into(), db.display().to_string());
    cenv.insert("STYLEFARM_READY_FILE".into(), ready.display().to_string());
    let (bin, args) = binary(c);
    assert!(args.is_empty());
    let mut coordinator = spawn(&bin, &cenv);
    let body = poll_file(&ready, Duration::from_secs(30));
    let bound = |key: &str| ready_field(&body, key);
    let by_port: BTreeMap<u16, String> = [
        (c.port("grpc"), bound("grpc")),
        (c.port("metrics"), bound("metrics")),
    ]
    .into();

    // Every probe answers 200 on the port it names.
    for (kind, probe) in c.probes() {
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{kind} is an HTTP probe"));
        let addr = &by_port[&c.port(&get.port)];
        let (status, _) = http_get(addr, &get.path);
        assert!(
            status.ends_with(" 200 OK"),
            "{kind} GET {}:{} answered {status}",
            get.port,
            get.path
        );
    }

    // A worker as the Deployment runs it, against the real S3 server. What differs: the
    // coordinator's and the S3 server's addresses, the bucket, the region, its volumes
    // (folders here) and the device (this machine may have no GPU; the manifest asks
    // for CUDA and the worker would refuse to start).
    let (wpod, w) = d.pod(WORKER.0, WORKER.1);
    let secrets: BTreeMap<String, String> = [
        (
            "stylefarm-s3/access-key-id".to_owned(),
            garage.access_key.clone(),
        ),
        (
            "stylefarm-s3/secret-access-key".to_owned(),
            garage.secret_key.clone(),
        ),
    ]
    .into();
    let secret = |name: &str, key: &str| secrets[&format!("{name}/{key}")].clone();
    let mut wenv = d.env(w, "stylefarm-worker-7d9f-abcde", &secret);
    let secret_file = local(w, &wenv["STYLEFARM_S3_SECRET_KEY_FILE"], dir.path());
    std::fs::create_dir_all(secret_file.parent().expect("folder")).expect("volume");
    let (_, item) = wpod
        .secret_file(w, &wenv["STYLEFARM_S3_SECRET_KEY_FILE"])
        .expect("secret item");
    std::fs::write(&secret_file, secret("stylefarm-s3", &item.key)).expect("secret file");
    let weights = local(w, &wenv["STYLEFARM_WEIGHTS"], dir.path());
    std::fs::create_dir_all(weights.parent().expect("folder")).expect("volume");
    let real = real_weights();
    std::fs::copy(&real, &weights).expect("weights");
    assert!(
        wenv["STYLEFARM_STORAGE"].starts_with("s3://"),
        "workers use S3"
    );
    assert_eq!(wenv["STYLEFARM_DEVICE"], "cuda");
    let storage = format!("s3://{}/farm", garage.bucket);
    for (k, v) in [
        ("STYLEFARM_COORDINATOR", bound("grpc")),
        ("STYLEFARM_S3_ENDPOINT", garage.endpoint.clone()),
        ("STYLEFARM_STORAGE", storage.clone()),
        ("STYLEFARM_S3_REGION", "garage".into()),
        (
            "STYLEFARM_S3_SECRET_KEY_FILE",
            secret_file.display().to_string(),
        ),
        ("STYLEFARM_WEIGHTS", weights.display().to_string()),
        ("STYLEFARM_DEVICE", "cpu".into()),
    ] {
        let v = if k == "STYLEFARM_COORDINATOR" {
            format!("http://{v}")
        } else {
            v
        };
        wenv.insert(k.into(), v);
    }
    let (bin, args) = binary(w);
    assert!(args.is_empty());
    let mut worker = spawn(&bin, &wenv);

    // A user submits a small batch with the CLI and watches it finish.
    let manifest = dir.path().join("small.yaml");
    std::fs::write(
        &manifest,
        format!(
            "batch: deployed\ndefaults:\n  size: 48\n  iterations: 6\njobs:\n  - content: {}\n    style: {}\n",
            shared().join("fixtures/content/tubingen.jpg").display(),
            shared().join("fixtures/styles/starry_night.jpg").display()
        ),
    )
    .expect("manifest");
    let cli = |args: &[&str]| {
        let out = output_within(
            Command::new(workspace_bin("stylefarm"))
                .args(args)
                .args(["--coordinator", &format!("http://{}", bound("grpc"))])
                .env_remove("STYLEFARM_COORDINATOR")
                .env_remove("STYLEFARM_STORAGE")
                .env("STYLEFARM_WEIGHTS", &weights),
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "stylefarm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let m = manifest.display().to_string();
    let batch = cli(&[
        "submit",
        &m,
        "--storage",
        &storage,
        "--s3-endpoint",
        &garage.endpoint,
        "--s3-region",
        "garage",
        "--s3-path-style",
        "--s3-access-key",
        &garage.access_key,
        "--s3-secret-key",
        &garage.secret_key,
    ]);
    cli(&["watch", &batch]);
    let status = cli(&["status", &batch, "--json"]);
    assert!(status.contains("succeeded"), "{status}");

    // A rollout or drain: SIGTERM, and each process exits 0 inside its pod's grace period.
    worker.signal("TERM");
    let s = worker.wait_within(Duration::from_secs(wpod.grace_seconds()));
    assert!(s.success(), "worker exited {s}");
    coordinator.signal("TERM");
    let s = coordinator.wait_within(Duration::from_secs(cpod.grace_seconds()));
    assert!(s.success(), "coordinator exited {s}");
}
