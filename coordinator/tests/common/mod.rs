//! Shared by the coordinator's tests and benchmark: valid requests, a coordinator
//! process on port 0, and gRPC clients.
#![allow(dead_code)]

use std::path::Path;

pub use stylefarm_testkit::process::CoordinatorProc;

use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// A valid job spec named `name`.
pub fn spec(name: &str) -> v1::JobSpec {
    let object = |c: char| v1::ObjectRef {
        uri: format!("s3://inputs/{c}"),
        sha256: c.to_string().repeat(64),
        label: String::new(),
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

/// The `stylefarm-coordinator` binary of this package, on loopback port 0.
pub struct Coordinator(pub CoordinatorProc);

impl std::ops::Deref for Coordinator {
    type Target = CoordinatorProc;
    fn deref(&self) -> &CoordinatorProc {
        &self.0
    }
}

impl std::ops::DerefMut for Coordinator {
    fn deref_mut(&mut self) -> &mut CoordinatorProc {
        &mut self.0
    }
}

impl Coordinator {
    /// Starts the binary on `db` and waits until it serves.
    pub fn start(db: &Path, extra: &[&str]) -> Self {
        let bin = Path::new(env!("CARGO_BIN_EXE_stylefarm-coordinator"));
        Self(CoordinatorProc::start(bin, db, extra))
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
        self.0.proc.kill9();
    }
}
