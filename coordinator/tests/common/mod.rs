//! Shared by the coordinator's tests and benchmark: valid requests, a coordinator
//! process on port 0, and gRPC clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// A valid job spec named `name`.
pub fn spec(name: &str) -> v1::JobSpec {
    let object = |c: char| v1::ObjectRef {
        uri: format!("s3://inputs/{c}"),
        sha256: c.to_string().repeat(64),
    };
    v1::JobSpec {
        name: name.to_owned(),
        content: Some(object('a')),
        styles: vec![v1::StyleRef {
            image: Some(object('b')),
            weight: 1.0,
        }],
        init_image: None,
        params: Some(v1::RenderParams {
            size: Some(64),
            iterations: Some(20),
            ..Default::default()
        }),
        weights_sha256: "c".repeat(64),
        output_key: String::new(),
    }
}

/// A submission of `n` valid jobs.
pub fn submit(token: &str, priority: i32, n: usize) -> v1::SubmitBatchRequest {
    v1::SubmitBatchRequest {
        name: format!("batch-{token}"),
        client_token: token.to_owned(),
        priority,
        max_attempts: 0,
        jobs: (0..n).map(|i| spec(&format!("out{i:05}"))).collect(),
    }
}

/// A registration with the current protocol version.
pub fn register(name: &str) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        name: name.to_owned(),
        device: "cpu".into(),
        gpu_model: String::new(),
        gpu_memory_bytes: 0,
        slots: 1,
        protocol_version: stylefarm_proto::PROTOCOL_VERSION,
    }
}

/// A `stylefarm-coordinator` process on loopback port 0.
pub struct Coordinator {
    pub child: Child,
    pub grpc: String,
    pub metrics: String,
}

impl Coordinator {
    /// Starts the binary on `db` and waits (polling its ready file) until it serves.
    pub fn start(db: &Path, extra: &[&str]) -> Self {
        let ready = db.with_extension(format!("ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(env!("CARGO_BIN_EXE_stylefarm-coordinator"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(db)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start stylefarm-coordinator");
        let body = poll_file(&ready, Duration::from_secs(30));
        let json: serde_json::Value = serde_json::from_str(&body).expect("ready file is JSON");
        let addr = |k: &str| json[k].as_str().expect("address").to_owned();
        Self {
            child,
            grpc: format!("http://{}", addr("grpc")),
            metrics: addr("metrics"),
        }
    }

    pub async fn client(&self) -> StyleFarmClient<Channel> {
        StyleFarmClient::connect(self.grpc.clone())
            .await
            .expect("connect")
    }

    pub async fn worker(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::connect(self.grpc.clone())
            .await
            .expect("connect")
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// GET on the operations port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("connect http");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a file to appear and returns its contents.
pub fn poll_file(path: &PathBuf, timeout: Duration) -> String {
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
