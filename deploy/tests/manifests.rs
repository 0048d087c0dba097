//! The Kubernetes manifests against the binaries they run. Kubernetes' schema is
//! `make deploy-check`'s job; these tests catch what a schema cannot: a variable no
//! binary reads (clap ignores unknown ones silently), a probe on a path or port the
//! coordinator does not serve, a grace period shorter than the worker's drain, a weights
//! path the job does not write, state on a volume that does not persist, a key or token
//! file that is not a read-only Secret, a NetworkPolicy that lets more in than it says.
//! The last test runs the coordinator and a worker with the environment the manifests
//! give them (TLS, tokens), against a real S3 server, and renders a job through them
//! with the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use stylefarm_deploy::{Container, Deploy, PodSpec};
use stylefarm_testkit::fixtures::{real_weights, shared};
use stylefarm_testkit::garage::Garage;
use stylefarm_testkit::pki::{tokens, Pki};
use stylefarm_testkit::process::{
    http_get, https_get, output_within, poll_file, ready_field, workspace_bin, Proc,
};

const COORDINATOR: (&str, &str) = ("StatefulSet", "stylefarm-coordinator");
const WORKER: (&str, &str) = ("Deployment", "stylefarm-worker");
const WEIGHTS_JOB: (&str, &str) = ("Job", "stylefarm-weights");
const WEB: (&str, &str) = ("Deployment", "stylefarm-web");
/// The file `stylefarm weights fetch vgg19` writes into its cache folder.
const FETCHED_VGG19: &str = "stylefarm/weights/vgg19-torchvision.safetensors";
/// The label studios put on the pods that submit (README.md).
const SUBMITTER_LABEL: &str = "stylefarm.io/submitter";

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

/// The host of `https://HOST:PORT`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split([':', '/']).next().unwrap_or_default()
}

/// `STYLEFARM_*_FILE` variables: the files a binary reads keys, tokens or certificates
/// from (the coordinator's ready file is one it writes).
fn is_file_setting(name: &str) -> bool {
    name.starts_with("STYLEFARM_") && name.ends_with("_FILE") && name != "STYLEFARM_READY_FILE"
}

/// The labels of a workload's pods.
fn pod_labels<'a>(d: &'a Deploy, (kind, name): (&str, &str)) -> &'a BTreeMap<String, String> {
    &d.get(kind, name)
        .spec
        .template
        .as_ref()
        .unwrap_or_else(|| panic!("{kind} {name} has no pod template"))
        .metadata
        .labels
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
    let (coordinator_pod, coordinator) = d.pod(COORDINATOR.0, COORDINATOR.1);
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
    // Over TLS, by the Service's namespaced name (the certificate's, cert-manager/).
    assert_eq!(
        wenv["STYLEFARM_COORDINATOR"],
        format!(
            "https://{}.{}.svc:{}",
            service.metadata.name, d.kustomization.namespace, grpc.port
        )
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

    // TLS and tokens: the coordinator serves a certificate and checks tokens, the worker
    // presents a token and checks the certificate against a CA. Certificate and key are
    // one Secret's, so they change together.
    for (pod, c, env, vars) in [
        (
            coordinator_pod,
            coordinator,
            &env,
            &[
                "STYLEFARM_TLS_CERT_FILE",
                "STYLEFARM_TLS_KEY_FILE",
                "STYLEFARM_TOKENS_FILE",
            ][..],
        ),
        (
            worker_pod,
            worker,
            &wenv,
            &["STYLEFARM_TOKEN_FILE", "STYLEFARM_TLS_CA_FILE"][..],
        ),
    ] {
        for var in vars {
            let path = env
                .get(*var)
                .unwrap_or_else(|| panic!("{}: {var} is set", c.name));
            assert!(
                pod.secret_file(c, path).is_some(),
                "{}: {var}={path} is a key of a mounted Secret",
                c.name
            );
        }
    }
    let secret_of = |var: &str| {
        coordinator_pod
            .secret_file(coordinator, &env[var])
            .map(|(s, _)| s.secret_name.clone())
    };
    assert_eq!(
        secret_of("STYLEFARM_TLS_CERT_FILE"),
        secret_of("STYLEFARM_TLS_KEY_FILE")
    );

    // The web interface: served on its named port over HTTPS with a certificate of its
    // own, probed there, reaching the coordinator as the workers do, and reading storage
    // with a key of its own (one that may only read), not the workers'.
    let (web_pod, web) = d.pod(WEB.0, WEB.1);
    let webenv = d.env(web, "stylefarm-web-abc", &secret);
    assert_eq!(port_of(&webenv["STYLEFARM_WEB_LISTEN"]), web.port("https"));
    for p in &d.get("Service", WEB.1).spec.ports {
        assert_eq!(web.port(&p.target_port), web.port("https"));
    }
    let mut probes = 0;
    for (kind, probe) in web.probes() {
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("web {kind} is HTTP"));
        assert_eq!(
            (
                get.path.as_str(),
                web.port(&get.port),
                get.scheme.as_deref()
            ),
            ("/healthz", web.port("https"), Some("HTTPS")),
            "web {kind}"
        );
        probes += 1;
    }
    assert!(probes > 0, "the web interface is probed");
    assert_eq!(
        webenv["STYLEFARM_COORDINATOR"],
        wenv["STYLEFARM_COORDINATOR"]
    );
    let web_secret = |var: &str| {
        web_pod
            .secret_file(web, &webenv[var])
            .map(|(s, _)| s.secret_name.clone())
            .unwrap_or_else(|| panic!("web: {var} is a Secret's"))
    };
    assert_eq!(
        web_secret("STYLEFARM_WEB_CERT_FILE"),
        web_secret("STYLEFARM_WEB_KEY_FILE")
    );
    assert_ne!(
        Some(web_secret("STYLEFARM_WEB_CERT_FILE")),
        secret_of("STYLEFARM_TLS_CERT_FILE"),
        "the coordinator's key stays in its own pod"
    );
    let web_access = &webenv["STYLEFARM_S3_ACCESS_KEY"];
    assert_eq!(
        web_access.split('/').next(),
        Some(web_secret("STYLEFARM_S3_SECRET_KEY_FILE").as_str())
    );
    assert_ne!(
        web_access.split('/').next(),
        access.split('/').next(),
        "the web interface has a storage key of its own, not the workers'"
    );

    // README.md tells how to create every Secret a pod uses, with its keys.
    let readme = std::fs::read_to_string(d.dir.join("README.md")).expect("deploy/README.md");
    let mut needles: BTreeSet<&str> = access.split('/').chain(web_access.split('/')).collect();
    for (_, spec) in d.pods() {
        for secret in spec.volumes.iter().filter_map(|v| v.secret.as_ref()) {
            needles.insert(&secret.secret_name);
            needles.extend(secret.items.iter().map(|i| i.key.as_str()));
        }
    }
    for needle in needles {
        assert!(readme.contains(needle), "deploy/README.md names {needle}");
    }
}

/// Every key, token and certificate a container reads is a file of a Secret mounted
/// read-only into that container, readable by the pod's group only; and no manifest
/// turns the coordinator's TLS and tokens off.
#[test]
fn every_file_setting_is_a_read_only_secret() {
    let d = deploy();
    for (pod, spec) in d.pods() {
        for c in &spec.containers {
            let env = d.env(c, "pod", &|name, key| format!("{name}/{key}"));
            for (name, path) in env.iter().filter(|(k, _)| is_file_setting(k)) {
                let (mount, _) = c
                    .mount_of(path)
                    .unwrap_or_else(|| panic!("{pod}: {name}={path} is on no mount"));
                assert!(
                    spec.secret_file(c, path).is_some(),
                    "{pod}: {name}={path} is not a key of a Secret mounted at {}",
                    mount.mount_path
                );
            }
            for name in env.keys() {
                assert!(
                    !name.starts_with("STYLEFARM_INSECURE"),
                    "{pod}: {name} is for development, not a cluster"
                );
            }
            for m in &c.volume_mounts {
                let Some(secret) = spec.volume(&m.name).and_then(|v| v.secret.as_ref()) else {
                    continue;
                };
                let name = &secret.secret_name;
                assert!(m.read_only, "{pod}: Secret {name} is mounted read-only");
                // Kubernetes' default is 0644. (YAML's 0440 is decimal 440 to some
                // parsers: the manifests write 288, which reads as 0440 everywhere.)
                let mode = secret.default_mode.unwrap_or(0o644);
                assert_eq!(
                    mode & !0o440,
                    0,
                    "{pod}: Secret {name}'s files are {mode:#o}; at most 0440"
                );
                // Secret files are root's; the non-root process reads them as their group.
                assert!(
                    spec.security_context
                        .as_ref()
                        .and_then(|s| s.fs_group)
                        .is_some(),
                    "{pod}: mounts Secret {name} but sets no fsGroup to read it with"
                );
            }
        }
    }
}

/// The NetworkPolicy isolates the coordinator: gRPC from the workers, the web interface
/// and pods labelled as submitters, metrics from the monitoring namespace, nothing else.
#[test]
fn only_workers_submitters_and_monitoring_reach_the_coordinator() {
    let d = deploy();
    let (_, c) = d.pod(COORDINATOR.0, COORDINATOR.1);
    let coordinator = pod_labels(&d, COORDINATOR);
    let worker = pod_labels(&d, WORKER);
    let selecting: Vec<_> = d
        .resources
        .values()
        .filter(|r| r.kind == "NetworkPolicy")
        .filter(|r| {
            r.spec
                .pod_selector
                .as_ref()
                .expect("a NetworkPolicy selects pods")
                .matches(coordinator)
        })
        .collect();
    assert_eq!(
        selecting.len(),
        1,
        "one NetworkPolicy selects the coordinator"
    );
    let policy = selecting[0];
    let name = &policy.metadata.name;
    assert!(
        !policy
            .spec
            .pod_selector
            .as_ref()
            .is_some_and(|s| s.matches(worker)),
        "{name} selects the coordinator only"
    );
    assert!(
        policy.spec.policy_types.iter().any(|t| t == "Ingress"),
        "{name} is an ingress policy"
    );

    // Who reaches which port.
    let mut allowed: BTreeMap<u16, Vec<&stylefarm_deploy::Peer>> = BTreeMap::new();
    for rule in &policy.spec.ingress {
        assert!(
            !rule.from.is_empty(),
            "{name}: a rule without from admits anyone"
        );
        assert!(
            !rule.ports.is_empty(),
            "{name}: a rule without ports opens every port"
        );
        for p in &rule.ports {
            assert!(p.end_port.is_none(), "{name}: single ports, no ranges");
            assert_eq!(p.protocol.as_deref().unwrap_or("TCP"), "TCP");
            let port = c.port(p.port.as_deref().expect("a rule names its ports"));
            allowed.entry(port).or_default().extend(&rule.from);
        }
    }
    let (grpc, metrics) = (c.port("grpc"), c.port("metrics"));
    assert_eq!(
        allowed.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([grpc, metrics]),
        "{name} opens gRPC and metrics, nothing else"
    );

    // gRPC: pods chosen by label (an ipBlock for clients outside the cluster is the
    // documented addition), among them this namespace's workers and the submitters.
    for peer in &allowed[&grpc] {
        assert!(
            peer.ip_block.is_some()
                || peer
                    .pod_selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty()),
            "{name}: gRPC peers are labelled pods: {peer:?}"
        );
    }
    assert!(
        allowed[&grpc].iter().any(|p| p.namespace_selector.is_none()
            && p.pod_selector.as_ref().is_some_and(|s| s.matches(worker))),
        "{name}: the workers reach gRPC"
    );
    let web = pod_labels(&d, WEB);
    assert!(
        allowed[&grpc].iter().any(|p| p.namespace_selector.is_none()
            && p.pod_selector.as_ref().is_some_and(|s| s.matches(web))),
        "{name}: the web interface reaches gRPC"
    );
    let submitter = BTreeMap::from([(SUBMITTER_LABEL.to_owned(), "true".to_owned())]);
    assert!(
        allowed[&grpc].iter().any(|p| p
            .pod_selector
            .as_ref()
            .is_some_and(|s| s.match_labels == submitter)),
        "{name}: pods labelled {SUBMITTER_LABEL}: \"true\" reach gRPC"
    );

    // Metrics: every pod of the monitoring namespace, nothing else.
    let monitoring = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        "monitoring".to_owned(),
    )]);
    match &allowed[&metrics][..] {
        [peer] => {
            assert_eq!(
                peer.namespace_selector.as_ref().map(|s| &s.match_labels),
                Some(&monitoring),
                "{name}: metrics from the monitoring namespace"
            );
            assert!(peer.ip_block.is_none());
        }
        peers => panic!("{name}: metrics from the monitoring namespace only: {peers:?}"),
    }

    let readme = std::fs::read_to_string(d.dir.join("README.md")).expect("deploy/README.md");
    for needle in [SUBMITTER_LABEL, "ipBlock", name.as_str()] {
        assert!(readme.contains(needle), "deploy/README.md names {needle}");
    }
}

/// The optional cert-manager component issues the Secret the coordinator mounts, for the
/// name the workers dial, from an Issuer of its own.
#[test]
fn the_cert_manager_component_issues_the_coordinators_certificate() {
    let d = deploy();
    let cm = Deploy::load(&d.dir.join("cert-manager")).expect("cert-manager/ parses");
    assert_eq!(cm.kustomization.kind, "Component");
    let listed: BTreeSet<&str> = cm
        .kustomization
        .resources
        .iter()
        .map(String::as_str)
        .collect();
    let files: BTreeSet<&str> = cm.resources.keys().map(String::as_str).collect();
    assert_eq!(
        listed, files,
        "cert-manager/ lists every manifest and only those"
    );
    let base = std::fs::read_to_string(d.dir.join("kustomization.yaml")).expect("kustomization");
    assert!(
        base.contains("components:") && base.contains("- cert-manager"),
        "kustomization.yaml shows how to enable cert-manager/"
    );

    let (cpod, c) = d.pod(COORDINATOR.0, COORDINATOR.1);
    let env = d.env(c, "stylefarm-coordinator-0", &|_, _| unreachable!());
    let (secret, _) = cpod
        .secret_file(c, &env["STYLEFARM_TLS_CERT_FILE"])
        .expect("the certificate is a Secret's");
    let cert = cm
        .resources
        .values()
        .find(|r| {
            r.kind == "Certificate"
                && r.spec.secret_name.as_deref() == Some(secret.secret_name.as_str())
        })
        .unwrap_or_else(|| panic!("a Certificate writes {}", secret.secret_name));
    let (_, w) = d.pod(WORKER.0, WORKER.1);
    let wenv = d.env(w, "stylefarm-worker-abc", &|name, key| {
        format!("{name}/{key}")
    });
    for host in [host_of(&wenv["STYLEFARM_COORDINATOR"]), "localhost"] {
        assert!(
            cert.spec.dns_names.iter().any(|n| n == host),
            "{} is for {host} (workers; `kubectl port-forward`)",
            cert.metadata.name
        );
    }
    let issuer = cert.spec.issuer_ref.as_ref().expect("issuerRef");
    assert_eq!(issuer.kind.as_deref(), Some("Issuer"));
    cm.get("Issuer", &issuer.name);
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

/// Writes each file `env`'s `STYLEFARM_*_FILE` variables name where `c`'s Secret
/// volumes would put it (under `root`), with the content `secrets` holds for that
/// Secret and key (`name/key`) and the volume's mode, and points the variable there.
fn mount_secrets(
    pod: &PodSpec,
    c: &Container,
    env: &mut BTreeMap<String, String>,
    root: &Path,
    secrets: &BTreeMap<String, String>,
) {
    let files: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| is_file_setting(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (var, path) in files {
        let (secret, item) = pod
            .secret_file(c, &path)
            .unwrap_or_else(|| panic!("{}: {var}={path} is no Secret's", c.name));
        let id = format!("{}/{}", secret.secret_name, item.key);
        let content = secrets
            .get(&id)
            .unwrap_or_else(|| panic!("the test has no {id} for {var}"));
        let file = local(c, &path, root);
        std::fs::create_dir_all(file.parent().expect("folder")).expect("volume");
        std::fs::write(&file, content).expect("secret file");
        let mode = secret.default_mode.unwrap_or(0o644);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("mode");
        env.insert(var, file.display().to_string());
    }
}

#[test]
fn the_farm_runs_as_deployed() {
    let d = deploy();
    let garage = Garage::start();
    let dir = tempfile::tempdir().expect("tempdir");

    // What the operator puts in the Secrets (README.md): a CA and the coordinator's
    // certificate for 127.0.0.1, the tokens file with the workers' and alice's
    // identities, the workers' token, the S3 keys.
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).expect("pki folder");
    let pki = Pki::new(&pki_dir);
    let tokens_dir = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens_dir).expect("tokens folder");
    let ids = tokens(&tokens_dir);
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (read_key, read_secret) = garage.read_only_key();
    let secrets: BTreeMap<String, String> = [
        ("stylefarm-s3/access-key-id", garage.access_key.clone()),
        ("stylefarm-web-s3/access-key-id", read_key),
        ("stylefarm-web-s3/secret-access-key", read_secret),
        ("stylefarm-web-tls/tls.crt", read(&pki.cert)),
        ("stylefarm-web-tls/tls.key", read(&pki.key)),
        ("stylefarm-s3/secret-access-key", garage.secret_key.clone()),
        ("stylefarm-coordinator-tls/tls.crt", read(&pki.cert)),
        ("stylefarm-coordinator-tls/tls.key", read(&pki.key)),
        ("stylefarm-ca/ca.crt", read(&pki.ca)),
        ("stylefarm-tokens/tokens", read(&ids.file)),
        (
            "stylefarm-worker-token/token",
            read(&ids.token_file("worker")),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let secret = |name: &str, key: &str| secrets[&format!("{name}/{key}")].clone();

    // The coordinator as the StatefulSet runs it; only its listen addresses (port 0, so
    // tests never collide) and its volumes (folders here) differ.
    let (cpod, c) = d.pod(COORDINATOR.0, COORDINATOR.1);
    let croot = dir.path().join("coordinator");
    let mut cenv = d.env(c, "stylefarm-coordinator-0", &secret);
    mount_secrets(cpod, c, &mut cenv, &croot, &secrets);
    let db = local(c, &cenv["STYLEFARM_DB"], &croot);
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

    // Every probe answers 200 on the port it names: plain HTTP, no certificate, no token.
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
    let coordinator_url = format!("https://{}", bound("grpc"));

    // The worker's volumes: its Secrets, and the weights the job would have fetched.
    let (wpod, w) = d.pod(WORKER.0, WORKER.1);
    let wroot = dir.path().join("worker");
    let mut wenv = d.env(w, "stylefarm-worker-7d9f-abcde", &secret);
    mount_secrets(wpod, w, &mut wenv, &wroot, &secrets);
    let weights = local(w, &wenv["STYLEFARM_WEIGHTS"], &wroot);
    std::fs::create_dir_all(weights.parent().expect("folder")).expect("volume");
    std::fs::copy(real_weights(), &weights).expect("weights");

    // A user (alice, a submitter) submits a small batch with the CLI, over TLS with her
    // token, before any worker runs, so that the job waits in the queue.
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
                .args(["--coordinator", &coordinator_url])
                .arg("--tls-ca-file")
                .arg(&pki.ca)
                .arg("--token-file")
                .arg(ids.token_file("alice"))
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
    let storage = format!("s3://{}/farm", garage.bucket);
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

    // Metrics are open to the monitoring namespace, unauthenticated: counts only, with
    // nothing of the queued batch (README.md).
    let (status, metrics) = http_get(&bound("metrics"), "/metrics");
    assert!(status.ends_with(" 200 OK"), "/metrics answered {status}");
    for private in [
        batch.as_str(),
        "deployed",
        "alice",
        "tubingen",
        "starry_night",
    ] {
        assert!(
            !metrics.contains(private),
            "/metrics shows {private}:\n{metrics}"
        );
    }

    // A worker as the Deployment runs it, against the real S3 server. What differs: the
    // coordinator's address (127.0.0.1, which the test certificate names) and the S3
    // server's, the bucket, the region, its volumes (folders here) and the device (this
    // machine may have no GPU; the manifest asks for CUDA and the worker would refuse
    // to start).
    assert!(
        wenv["STYLEFARM_STORAGE"].starts_with("s3://"),
        "workers use S3"
    );
    assert_eq!(wenv["STYLEFARM_DEVICE"], "cuda");
    assert!(
        wenv["STYLEFARM_COORDINATOR"].starts_with("https://"),
        "workers use TLS"
    );
    for (k, v) in [
        ("STYLEFARM_COORDINATOR", coordinator_url.clone()),
        ("STYLEFARM_S3_ENDPOINT", garage.endpoint.clone()),
        ("STYLEFARM_STORAGE", storage.clone()),
        ("STYLEFARM_S3_REGION", "garage".into()),
        ("STYLEFARM_WEIGHTS", weights.display().to_string()),
        ("STYLEFARM_DEVICE", "cpu".into()),
    ] {
        wenv.insert(k.into(), v);
    }
    let (bin, args) = binary(w);
    assert!(args.is_empty());
    let mut worker = spawn(&bin, &wenv);

    // The worker renders the batch; alice watches it finish.
    cli(&["watch", &batch]);
    let status = cli(&["status", &batch, "--json"]);
    assert!(status.contains("succeeded"), "{status}");

    // The web interface as its Deployment runs it (listening on port 0, the test's
    // coordinator and S3 server): its probe answers over HTTPS with its certificate,
    // and it serves the sign-in page.
    let (webpod, web) = d.pod(WEB.0, WEB.1);
    let webroot = dir.path().join("web");
    let mut webenv = d.env(web, "stylefarm-web-abc", &secret);
    mount_secrets(webpod, web, &mut webenv, &webroot, &secrets);
    let web_ready = dir.path().join("web.ready");
    for (k, v) in [
        ("STYLEFARM_WEB_LISTEN", "127.0.0.1:0".to_owned()),
        ("STYLEFARM_WEB_READY_FILE", web_ready.display().to_string()),
        ("STYLEFARM_COORDINATOR", coordinator_url.clone()),
        ("STYLEFARM_S3_ENDPOINT", garage.endpoint.clone()),
        ("STYLEFARM_STORAGE", storage.clone()),
        ("STYLEFARM_S3_REGION", "garage".into()),
    ] {
        webenv.insert(k.into(), v);
    }
    let (bin, args) = binary(web);
    assert!(args.is_empty());
    let mut web_proc = spawn(&bin, &webenv);
    let web_addr = ready_field(&poll_file(&web_ready, Duration::from_secs(30)), "web");
    for (kind, probe) in web.probes() {
        let path = &probe.http_get.as_ref().expect("HTTP probe").path;
        let (status, _) = https_get(&web_addr, path, &pki.ca);
        assert!(
            status.ends_with(" 200 OK"),
            "web {kind} GET {path} answered {status}"
        );
    }
    let (status, page) = https_get(&web_addr, "/login", &pki.ca);
    assert!(
        status.ends_with(" 200 OK") && page.contains("Sign in"),
        "{status}"
    );

    // A rollout or drain: SIGTERM, and each process exits 0 inside its pod's grace period.
    web_proc.signal("TERM");
    let s = web_proc.wait_within(Duration::from_secs(webpod.grace_seconds()));
    assert!(s.success(), "web exited {s}");
    worker.signal("TERM");
    let s = worker.wait_within(Duration::from_secs(wpod.grace_seconds()));
    assert!(s.success(), "worker exited {s}");
    coordinator.signal("TERM");
    let s = coordinator.wait_within(Duration::from_secs(cpod.grace_seconds()));
    assert!(s.success(), "coordinator exited {s}");
}
