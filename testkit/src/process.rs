//! The farm's own binaries as child processes: found beside the test executable, started
//! on loopback port 0, their addresses read from the ready file they write.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stylefarm_net::ClientAuth;

use crate::pki::{tokens, Pki, Tokens};

/// A workspace binary (`stylefarm-coordinator`, `stylefarm-worker`, `stylefarm`) from the
/// target directory the tests were built into. `cargo test --workspace` (and so
/// `make test`) builds every binary before running any test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --release --workspace --bins` (make test does)",
        bin.display()
    );
    bin
}

/// Longest a test waits for a process it asked to end (a drain's grace is 30 s).
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` with its stdout discarded.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
        )
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; panics if it is still running after `within`
    /// (the process is then killed by the drop; its log is what it wrote to stderr,
    /// which the test's output holds).
    pub fn wait_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "process {} is still running after {within:?} (its log is above)",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Proc::wait_within`] [`WAIT_LIMIT`]: what tests call after asking a process to
    /// end (this shadows `Child::wait`, so no test waits without a bound).
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        Ok(self.wait_within(WAIT_LIMIT))
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `stylefarm-coordinator` process on loopback port 0: over TLS with tokens unless
/// started with `--insecure`.
pub struct CoordinatorProc {
    /// The process.
    pub proc: Proc,
    /// `https://127.0.0.1:PORT` of its gRPC service (`http://` when insecure).
    pub grpc: String,
    /// `127.0.0.1:PORT` of its operations (metrics, health) endpoint.
    pub metrics: String,
    /// Its certificates and tokens (none when insecure).
    pub security: Option<Security>,
}

/// A secure coordinator's CA, certificates and tokens.
pub struct Security {
    /// Certificates.
    pub pki: Pki,
    /// Identities.
    pub tokens: Tokens,
}

impl CoordinatorProc {
    /// Starts the binary on the database `db` and waits (polling its ready file) until
    /// it serves. Unless `extra` holds `--insecure` it serves TLS with a certificate
    /// and tokens kept beside `db` (made on first use), so a restart on the same `db`
    /// is the same farm to its clients.
    pub fn start(binary: &Path, db: &Path, extra: &[&str]) -> Self {
        Self::start_on(binary, db, "127.0.0.1:0", extra)
    }

    /// [`CoordinatorProc::start`] with its gRPC service on `listen` (a restart on the
    /// port it had, so clients that know its address find it again).
    pub fn start_on(binary: &Path, db: &Path, listen: &str, extra: &[&str]) -> Self {
        let ready = db.with_extension(format!("ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let security = (!extra.contains(&"--insecure")).then(|| {
            let dir = db.with_extension("security");
            Security {
                pki: Pki::new(&dir.join("pki")),
                tokens: tokens(&dir.join("tokens")),
            }
        });
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(db)
            .arg("--ready-file")
            .arg(&ready);
        if let Some(s) = &security {
            cmd.arg("--tls-cert-file")
                .arg(&s.pki.cert)
                .arg("--tls-key-file")
                .arg(&s.pki.key)
                .arg("--tokens-file")
                .arg(&s.tokens.file);
        }
        let proc = Proc::spawn(cmd.args(extra).env("RUST_LOG", "warn"));
        let body = poll_file(&ready, Duration::from_secs(30));
        let scheme = if security.is_some() { "https" } else { "http" };
        Self {
            grpc: format!("{scheme}://{}", ready_field(&body, "grpc")),
            metrics: ready_field(&body, "metrics"),
            proc,
            security,
        }
    }

    /// The flags that make a `stylefarm` or `stylefarm-worker` process reach this
    /// coordinator as `identity` (one of [`crate::pki::IDENTITIES`]).
    pub fn client_flags(&self, identity: &str) -> Vec<String> {
        let mut flags = vec![format!("--coordinator={}", self.grpc)];
        if let Some(s) = &self.security {
            flags.push(format!("--tls-ca-file={}", s.pki.ca.display()));
            flags.push(format!(
                "--token-file={}",
                s.tokens.token_file(identity).display()
            ));
        }
        flags
    }

    /// A `stylefarm-worker` process of this farm (as `worker`) named `name`: on CPU with
    /// one thread, `weights`, and the storage `storage` flags name.
    pub fn worker(&self, name: &str, weights: &Path, storage: &[String]) -> Proc {
        Proc::spawn(
            Command::new(workspace_bin("stylefarm-worker"))
                .args(self.client_flags("worker"))
                .args(["--device=cpu", &format!("--name={name}"), "--threads=1"])
                .arg("--weights")
                .arg(weights)
                .args(storage)
                .env("RUST_LOG", "warn"),
        )
    }

    /// How an in-process client reaches it as `identity`.
    #[allow(clippy::expect_used)]
    pub fn auth(&self, identity: &str) -> ClientAuth {
        match &self.security {
            Some(s) => ClientAuth::with_ca(&s.pki.ca, Some(s.tokens.token(identity))).expect("CA"),
            None => ClientAuth::default(),
        }
    }

    /// GET on the operations port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        http_get(&self.metrics, path)
    }
}

/// A bound address from a coordinator's ready file (`{"grpc":"127.0.0.1:PORT",...}`).
pub fn ready_field(body: &str, key: &str) -> String {
    let tag = format!("\"{key}\":\"");
    let at = body
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} in the ready file {body}"))
        + tag.len();
    body[at..].split('"').next().unwrap_or_default().to_owned()
}

/// A plain HTTP/1.1 GET on `addr`; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    status_and_body(&out)
}

/// An HTTP/1.1 answer's status line and body.
fn status_and_body(answer: &str) -> (String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// An HTTPS/1.1 GET on `addr` (an IP address and port) trusting only the CA in `ca`
/// (PEM); returns (status line, body).
pub fn https_get(addr: &str, path: &str, ca: &Path) -> (String, String) {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read the CA");
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name = rustls_pki_types::ServerName::try_from(host).expect("a server name");
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect https");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    // A server that closes without close_notify still sent what it sent.
    let _ = s.read_to_end(&mut raw);
    status_and_body(&String::from_utf8_lossy(&raw))
}

/// Waits for a file to appear (written whole, by rename) and returns its contents.
pub fn poll_file(path: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to its end like `Command::output`, but bounded: past `limit` the
/// process is killed and the test fails with what it printed, so a hung command (a
/// `watch` whose worker died, say) fails the test instead of hanging it.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => std::process::Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not end within {limit:?}; killed.\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}
