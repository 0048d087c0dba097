//! `stylefarm weights fetch` up to the network: torchvision-layout VGG19 checkpoints
//! written by PyTorch itself (the legacy format torchvision's published files use, and
//! the zip format), served over HTTP on loopback, checked against the hash in their
//! name and converted; then the failure modes (wrong hash, no network).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Writes random VGG19 weights (features plus a small classifier) with torch.save in
/// both formats, and the expected features as safetensors.
fn checkpoints(dir: &Path) {
    let script = r#"
import sys, collections, torch
from safetensors.torch import save_file
torch.manual_seed(7)
cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M']
sd, i, c = collections.OrderedDict(), 0, 3
for v in cfg:
    if v == 'M':
        i += 1
        continue
    sd[f'features.{i}.weight'] = torch.randn(v, c, 3, 3)
    # A non-contiguous view, as some checkpoints hold: it must be read through its strides.
    sd[f'features.{i}.bias'] = torch.randn(2, v).t()[:, 1]
    i, c = i + 2, v
sd['classifier.0.weight'] = torch.randn(10, 64)
sd['classifier.0.bias'] = torch.randn(10)
out = sys.argv[1]
torch.save(sd, out + '/legacy.pth', _use_new_zipfile_serialization=False)
torch.save(sd, out + '/zip.pth')
save_file({k: v.contiguous() for k, v in sd.items() if k.startswith('features.')}, out + '/expected.safetensors')
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let status = Command::new(python)
        .args(["-c", script])
        .arg(dir)
        .status()
        .expect("python");
    assert!(status.success());
}

/// Serves one file at any path, for `hits` requests.
fn serve(bytes: Vec<u8>, hits: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(hits) {
            let mut s = stream.expect("accept");
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&bytes);
        }
    });
    port
}

fn named(dir: &Path, file: &str) -> (PathBuf, String) {
    let bytes = std::fs::read(dir.join(file)).expect("checkpoint");
    let prefix = hex::encode(Sha256::digest(&bytes))[..8].to_owned();
    let path = dir.join(format!("vgg19-{prefix}.pth"));
    std::fs::copy(dir.join(file), &path).expect("copy");
    (path, prefix)
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

fn fetch(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylefarm"))
        .args(["weights", "fetch", "vgg19"])
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("runs")
}

fn assert_converted(out: &Output, dir: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.ends_with("stylefarm/weights/vgg19-torchvision.safetensors"),
        "{}",
        path.display()
    );
    let info = stylefarm_weights::WeightsInfo::inspect(&path).expect("readable");
    assert_eq!(info.architecture.name(), "vgg19");
    assert_eq!(info.convention.name(), "torchvision");
    assert!(info.layers.iter().any(|l| l == "relu5_4"));
    let got = std::fs::read(&path).expect("read");
    let want = std::fs::read(dir.join("expected.safetensors")).expect("read");
    let got = safetensors::SafeTensors::deserialize(&got).expect("safetensors");
    let want = safetensors::SafeTensors::deserialize(&want).expect("safetensors");
    assert_eq!(
        got.len(),
        32,
        "16 convolutions, weight and bias; no classifier"
    );
    for (name, w) in want.tensors() {
        let g = got.tensor(&name).expect(&name);
        assert_eq!(g.shape(), w.shape(), "{name}");
        assert!(g.data() == w.data(), "{name}: values differ");
    }
}

#[test]
fn fetch_downloads_checks_and_converts_torchvision_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    checkpoints(dir.path());

    // The legacy format over HTTP, from a mirror, vouched for by its whole hash.
    let (legacy, prefix) = named(dir.path(), "legacy.pth");
    let legacy_sha = sha256_of(&legacy);
    let port = serve(std::fs::read(&legacy).expect("read"), 2);
    let url = format!("http://127.0.0.1:{port}/models/vgg19-{prefix}.pth");
    let cache = dir.path().join("cache");
    assert_converted(
        &fetch(&cache, &["--url", &url, "--sha256", &legacy_sha]),
        dir.path(),
    );

    // The zip format from a local copy (offline).
    let (zip, _) = named(dir.path(), "zip.pth");
    let zip_sha = sha256_of(&zip);
    let zip_arg = zip.to_str().expect("utf-8");
    assert_converted(
        &fetch(&cache, &["--from", zip_arg, "--sha256", &zip_sha]),
        dir.path(),
    );

    // A file named after its own hash is still not torchvision's: the published hash
    // is checked, never the one in the name given.
    let out = fetch(&cache, &["--from", zip_arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not start with dcbb9e9d") && err.contains("vgg19-dcbb9e9d.pth"),
        "{err}"
    );
    let out = fetch(&cache, &["--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not start with dcbb9e9d"), "{err}");

    // A whole hash that does not match is refused, and so is one that is not a hash.
    let out = fetch(&cache, &["--from", zip_arg, "--sha256", &legacy_sha]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("is not the {legacy_sha}")), "{err}");
    let out = fetch(&cache, &["--from", zip_arg, "--sha256", &prefix]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("64 hex digits"),
        "a prefix is not enough"
    );

    // No network: the message says how to supply the file instead.
    let out = fetch(&cache, &["--url", "http://127.0.0.1:1/vgg19-dcbb9e9d.pth"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot download") && err.contains("--from FILE"),
        "{err}"
    );

    // Not a checkpoint at all.
    let junk = dir.path().join("vgg19-junk.pth");
    std::fs::write(&junk, b"not a checkpoint").expect("write");
    let out = fetch(&cache, &["--from", junk.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dcbb9e9d"),
        "the published hash is checked"
    );
}
