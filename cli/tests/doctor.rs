//! `stylefarm doctor` on this machine, against a real coordinator (TLS and tokens) and
//! a local storage folder: each role's checks, each failure with its fix, `--json`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use stylefarm_testkit::process::{output_within, workspace_bin, CoordinatorProc};

mod common;

fn doctor(cache: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stylefarm"));
    c.arg("doctor")
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("STYLEFARM_WEIGHTS")
        .env_remove("STYLEFARM_COORDINATOR")
        .env_remove("STYLEFARM_STORAGE")
        .env_remove("STYLEFARM_TOKEN_FILE");
    output_within(&mut c, Duration::from_secs(120))
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of check `name`.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

#[test]
fn doctor_checks_each_role_and_says_what_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty-cache");
    let weights = common::weights();
    let weights = weights.to_str().expect("utf-8");

    // Render: libtorch and weights.
    let o = doctor(&empty, &["--weights", weights]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        line(&text, "libtorch").starts_with("ok") && text.contains("2.13.0"),
        "{text}"
    );
    assert!(
        line(&text, "weights").starts_with("ok")
            && line(&text, "weights").contains("vgg19, caffe convention, layers conv1_1..pool3")
            && line(&text, "weights")
                .contains("name none use content relu3_2 and style relu1_1,relu2_1,relu3_1"),
        "{text}"
    );
    assert!(line(&text, "coordinator").starts_with("skip"), "{text}");
    assert!(
        line(&text, "disk").contains("free for this folder"),
        "{text}"
    );
    assert!(line(&text, "cuda").starts_with("warn") || line(&text, "cuda").starts_with("ok"));

    // No weights anywhere: the check fails with the way to get them; exit 1.
    let o = doctor(&empty, &[]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(line(&text, "weights").starts_with("FAIL"), "{text}");
    assert!(
        text.contains("fix: `stylefarm weights fetch vgg19`"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not ready to render: weights failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Submit and worker against a coordinator over TLS with tokens, local storage.
    let coordinator = CoordinatorProc::start(
        &workspace_bin("stylefarm-coordinator"),
        &dir.path().join("c.db"),
        &[],
    );
    let store = dir.path().join("store");
    let storage = format!("--storage={}", store.display());
    let as_who = |who: &str, role: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![format!("--role={role}"), format!("--weights={weights}")];
        // A token given in `extra` stands for the identity's own.
        let own_token = !extra.iter().any(|e| e.starts_with("--token-file="));
        args.extend(
            coordinator
                .client_flags(who)
                .into_iter()
                .filter(|f| own_token || !f.starts_with("--token-file")),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        doctor(&empty, &args)
    };
    let o = as_who("alice", "submit", &[&storage]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        line(&text, "coordinator").contains("reachable over TLS; coordinator ")
            && line(&text, "coordinator").contains(
                " speaking stylefarm.v1; token of alice (submitter): accepted as a submitter"
            ),
        "{text}"
    );
    assert!(
        line(&text, "storage").contains("wrote, read back and removed a test object"),
        "{text}"
    );
    assert!(store.is_dir(), "the probe went through the storage folder");
    assert!(
        !store.join("doctor").exists(),
        "the test object and its folder are gone"
    );
    let o = as_who("worker", "worker", &[&storage]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        line(&text, "coordinator").contains("token of worker (worker): accepted as a worker"),
        "{text}"
    );

    // A submitter's token on a worker, no storage, and an unknown token: each named.
    let o = as_who("alice", "worker", &[]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        line(&text, "coordinator").starts_with("FAIL")
            && line(&text, "coordinator").ends_with("token of alice (submitter): not a worker"),
        "{text}"
    );
    assert!(
        text.contains("fix: use a token whose identity has the worker role"),
        "{text}"
    );
    assert!(line(&text, "storage").starts_with("FAIL"), "{text}");
    let bogus = dir.path().join("bogus.token");
    std::fs::write(&bogus, format!("sft_{}\n", "0".repeat(64))).expect("token");
    let token = format!("--token-file={}", bogus.display());
    let o = as_who("alice", "submit", &[&storage, &token]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        line(&text, "coordinator").contains("token refused"),
        "{text}"
    );

    // Nobody there, as JSON.
    let o = doctor(
        &empty,
        &[
            "--role=submit",
            "--json",
            "--weights",
            weights,
            "--coordinator=http://127.0.0.1:1",
            &storage,
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&out(&o)).expect("JSON");
    assert_eq!(json["role"], "submit");
    assert_eq!(json["ok"], false);
    let checks = json["checks"].as_array().expect("checks");
    let coord = checks
        .iter()
        .find(|c| c["check"] == "coordinator")
        .expect("coordinator");
    assert_eq!(coord["status"], "fail");
    assert_eq!(coord["needed"], true);
    assert!(
        coord["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unreachable")),
        "{coord}"
    );
    assert!(coord["fix"]
        .as_str()
        .is_some_and(|f| f.contains("--coordinator")));
}
