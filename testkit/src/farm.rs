//! Talking to the farm in tests and benchmarks: valid requests (job specs, submissions,
//! registrations) and the coordinator binary on port 0 with its gRPC clients.

use std::path::Path;

use stylefarm_net::client::Channel;
use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;

use crate::process::{workspace_bin, CoordinatorProc};

/// A wire job spec: one content, one style, `size` and `iterations`, and the layers the
/// partial real weights hold (relu1_1, relu2_1, relu3_1; relu3_2).
pub fn wire_spec(
    name: &str,
    content: &v1::ObjectRef,
    style: &v1::ObjectRef,
    weights_sha256: &str,
    size: u32,
    iterations: u32,
) -> v1::JobSpec {
    let layer = |l: &str| v1::LayerWeight {
        layer: l.into(),
        weight: 1.0,
    };
    v1::JobSpec {
        name: name.into(),
        content: Some(content.clone()),
        styles: vec![v1::StyleRef {
            image: Some(style.clone()),
            weight: 1.0,
        }],
        init_image: None,
        params: Some(v1::RenderParams {
            size: Some(size),
            iterations: Some(iterations),
            content_layers: vec![layer("relu3_2")],
            style_layers: vec![layer("relu1_1"), layer("relu2_1"), layer("relu3_1")],
            ..Default::default()
        }),
        weights_sha256: weights_sha256.into(),
        output_key: String::new(),
        after: Vec::new(),
        previous: None,
    }
}

/// A valid job spec named `name` over made-up inputs (for the coordinator alone: no
/// worker reads them).
pub fn spec(name: &str) -> v1::JobSpec {
    let object = |c: char| v1::ObjectRef {
        uri: format!("s3://inputs/{c}"),
        sha256: c.to_string().repeat(64),
        ..Default::default()
    };
    let mut spec = wire_spec(name, &object('a'), &object('b'), &"c".repeat(64), 64, 20);
    if let Some(p) = spec.params.as_mut() {
        p.content_layers.clear();
        p.style_layers.clear();
    }
    spec
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

/// A batch with every one of its jobs, read a page at a time as GetBatch answers.
pub async fn whole_batch(client: &mut StyleFarmClient<Channel>, batch: &str) -> v1::Batch {
    let mut token = String::new();
    let mut whole: Option<v1::Batch> = None;
    loop {
        let page = client
            .get_batch(v1::GetBatchRequest {
                batch_id: batch.into(),
                include_jobs: true,
                page_size: 0,
                page_token: token,
            })
            .await
            .expect("get batch")
            .into_inner();
        token = page.next_page_token.clone();
        match whole.as_mut() {
            None => whole = Some(page),
            Some(w) => w.jobs.extend(page.jobs),
        }
        if token.is_empty() {
            let mut w = whole.expect("a page");
            w.next_page_token.clear();
            return w;
        }
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
        max_job_memory_bytes: 0,
    }
}

/// The workspace's `stylefarm-coordinator` binary, on loopback port 0.
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
        Self(CoordinatorProc::start(
            &workspace_bin("stylefarm-coordinator"),
            db,
            extra,
        ))
    }

    /// A client of the client service, as `admin`.
    pub async fn client(&self) -> StyleFarmClient<Channel> {
        self.client_as("admin").await
    }

    /// A client of the client service, as `identity`.
    pub async fn client_as(&self, identity: &str) -> StyleFarmClient<Channel> {
        StyleFarmClient::new(self.channel(identity).await)
    }

    /// A client of the worker service, as `worker`.
    pub async fn worker(&self) -> WorkerServiceClient<Channel> {
        self.worker_as("worker").await
    }

    /// A client of the worker service, as `identity`.
    pub async fn worker_as(&self, identity: &str) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel(identity).await)
    }

    /// A connection as `identity`.
    pub async fn channel(&self, identity: &str) -> Channel {
        self.auth(identity)
            .connect(&self.grpc)
            .await
            .expect("connect")
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.0.proc.kill9();
    }
}
