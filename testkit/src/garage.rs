//! A real S3 server for tests: Garage, single node, on loopback.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stylefarm_storage::{ObjectUrl, RetryPolicy, S3Options};

/// The Garage release `make garage` builds.
pub const GARAGE_VERSION: &str = "2.5.0";

/// A running Garage with one bucket and one key that may use it.
pub struct Garage {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    admin_port: u16,
}

/// The garage binary: `STYLEFARM_GARAGE`, else the cache `make garage` fills.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STYLEFARM_GARAGE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join(format!("stylefarm/garage-{GARAGE_VERSION}/bin/garage"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn hex_of(seed: &str, len: usize) -> String {
    let mut out = String::new();
    let mut n = 0u32;
    while out.len() < len {
        out.push_str(&hex::encode(Sha256::digest(format!("{seed}-{n}"))));
        n += 1;
    }
    out.truncate(len);
    out
}

/// Why a start did not come up.
enum Start {
    /// The process exited at once: most likely a port taken since it was chosen.
    Exited(std::process::ExitStatus),
}

impl Garage {
    /// Starts a fresh server and waits until its bucket answers. Garage binds its own
    /// ports, so they are chosen free just before; a port taken in between makes the
    /// server exit at once, and the start is tried again on new ports.
    pub fn start() -> Self {
        let binary = binary();
        assert!(
            binary.is_file(),
            "no garage binary at {} (run `make garage`, which builds Garage {GARAGE_VERSION} once into the cache, or set STYLEFARM_GARAGE)",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = format!("{}-{:?}", std::process::id(), Instant::now());
        let config = dir.path().join("garage.toml");
        let mut g = Self {
            child: None,
            binary,
            config,
            _dir: dir,
            endpoint: String::new(),
            bucket: "stylefarm-test".into(),
            access_key: format!("GK{}", hex_of(&format!("key-{seed}"), 24)),
            secret_key: hex_of(&format!("secret-{seed}"), 64),
            admin_port: 0,
        };
        for attempt in 1.. {
            let (s3, rpc, admin) = (free_port(), free_port(), free_port());
            let body = format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                meta = g._dir.path().join("meta").display(),
                data = g._dir.path().join("data").display(),
                secret = hex_of(&format!("rpc-{seed}"), 64),
            );
            std::fs::write(&g.config, body).expect("write garage config");
            g.endpoint = format!("http://127.0.0.1:{s3}");
            g.admin_port = admin;
            match g.spawn() {
                Ok(()) => break,
                Err(Start::Exited(status)) if attempt < 5 => {
                    eprintln!(
                        "garage exited at start ({status}), trying other ports: {}",
                        g.log_tail()
                    );
                }
                Err(Start::Exited(status)) => {
                    panic!(
                        "garage exited at start 5 times ({status}): {}",
                        g.log_tail()
                    )
                }
            }
        }
        g
    }

    fn log(&self) -> PathBuf {
        self._dir.path().join("garage.log")
    }

    /// The end of the server's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("log {}:\n{}", self.log().display(), &text[start..])
    }

    fn spawn(&mut self) -> Result<(), Start> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("garage log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls the server until its bucket exists (the CLI asks it over RPC); an early
    /// exit is returned, a server that never answers fails with its log.
    fn wait_ready(&mut self) -> Result<(), Start> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(Start::Exited(status));
                }
            }
            let ok = Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(["bucket", "info", &self.bucket])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "garage did not serve bucket {} within 60 s (admin port {}); {}",
                self.bucket,
                self.admin_port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (its data stays); [`Garage::resume`] starts it again on the
    /// same ports.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped server again, on the same ports (its clients know them). A port
    /// still held (by the old process's sockets, or taken meanwhile) makes the start
    /// exit; it is tried again for up to 30 s.
    pub fn resume(&mut self) {
        if self.child.is_some() {
            return;
        }
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(Start::Exited(status)) => assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "garage could not start again on its ports within 30 s ({status}): {}",
                    self.log_tail()
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// S3 options for this server with the given retry deadline.
    pub fn options(&self, deadline: Duration) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("garage".into()),
            path_style: true,
            access_key: Some(self.access_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            retry: RetryPolicy {
                deadline,
                ..RetryPolicy::default()
            },
            ..S3Options::default()
        }
    }

    /// The flags that make a `stylefarm` or `stylefarm-worker` process use
    /// `s3://BUCKET/prefix` on this server as its storage.
    pub fn storage_flags(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--storage={}", self.root(prefix)),
            format!("--s3-endpoint={}", self.endpoint),
            "--s3-region=garage".into(),
            "--s3-path-style".into(),
            format!("--s3-access-key={}", self.access_key),
            format!("--s3-secret-key={}", self.secret_key),
        ]
    }

    /// A key of its own that may only read the bucket (what the web interface is
    /// given), created on first use: (access key id, secret key).
    pub fn read_only_key(&self) -> (String, String) {
        let id = format!("GK{}", hex_of(&format!("read-{}", self.access_key), 24));
        let secret = hex_of(&format!("read-secret-{}", self.secret_key), 64);
        let garage = |args: &[&str]| {
            let out = Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("run garage");
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || text.contains("already exists"),
                "garage {args:?}: {text}"
            );
        };
        garage(&["key", "import", "--yes", "-n", "read-only", &id, &secret]);
        garage(&["bucket", "allow", "--read", &self.bucket, "--key", &id]);
        (id, secret)
    }

    /// [`Garage::storage_flags`] with [`Garage::read_only_key`].
    pub fn read_only_flags(&self, prefix: &str) -> Vec<String> {
        let (id, secret) = self.read_only_key();
        let mut flags = self.storage_flags(prefix);
        flags.truncate(flags.len() - 2);
        flags.push(format!("--s3-access-key={id}"));
        flags.push(format!("--s3-secret-key={secret}"));
        flags
    }

    /// `s3://BUCKET/prefix`.
    pub fn root(&self, prefix: &str) -> ObjectUrl {
        ObjectUrl::parse(&format!("s3://{}/{prefix}", self.bucket)).expect("valid url")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
