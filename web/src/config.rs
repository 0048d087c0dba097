//! `stylefarm-web`'s flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use stylefarm_net::client::ClientArgs;
use stylefarm_storage::StorageArgs;

/// The farm's web interface: batches, jobs and workers, live, for whoever signs in with
/// a coordinator token.
#[derive(Debug, Clone, Parser)]
#[command(name = "stylefarm-web", version, about)]
pub struct WebConfig {
    /// Address to serve the interface on.
    #[arg(long, env = "STYLEFARM_WEB_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: String,

    /// The coordinator's gRPC address (https://HOST:PORT).
    #[arg(long, env = "STYLEFARM_COORDINATOR", value_name = "URL")]
    pub coordinator: String,

    /// How this process reaches the coordinator. It has no token of its own: every
    /// call carries the signed-in person's, so --token-file is refused.
    #[command(flatten)]
    pub client: ClientArgs,

    /// The farm's storage (the workers' --storage), read for previews, thumbnails, loss
    /// curves and downloads; read-only credentials are enough, and better.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Certificate chain (PEM) the interface is served with over HTTPS.
    #[arg(
        long,
        env = "STYLEFARM_WEB_CERT_FILE",
        value_name = "FILE",
        requires = "https_key_file"
    )]
    pub https_cert_file: Option<PathBuf>,

    /// Its private key (PEM).
    #[arg(
        long,
        env = "STYLEFARM_WEB_KEY_FILE",
        value_name = "FILE",
        requires = "https_cert_file"
    )]
    pub https_key_file: Option<PathBuf>,

    /// Serve plain HTTP (a TLS-terminating proxy in front, or loopback). Session
    /// cookies then lose their Secure flag. Without it, the certificate flags are
    /// required.
    #[arg(
        long,
        env = "STYLEFARM_WEB_INSECURE_HTTP",
        conflicts_with = "https_cert_file"
    )]
    pub insecure_http: bool,

    /// A signed-in session ends after this many minutes without a request.
    #[arg(
        long,
        env = "STYLEFARM_WEB_SESSION_IDLE_MINUTES",
        default_value_t = 720
    )]
    pub session_idle_minutes: u64,

    /// Once it serves, write `{"web":"HOST:PORT"}` here (for scripts and tests that
    /// listen on port 0).
    #[arg(long, env = "STYLEFARM_WEB_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Log as JSON lines.
    #[arg(long, env = "STYLEFARM_LOG_JSON")]
    pub log_json: bool,
}

impl WebConfig {
    /// How long a session lasts without a request.
    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_minutes.clamp(1, 30 * 24 * 60) * 60)
    }

    /// What is wrong with the flags together, in words.
    pub fn check(&self) -> Result<(), String> {
        if self.client.token_file.is_some() {
            return Err("--token-file: the web interface has no token of its own; each person signs in with theirs".into());
        }
        if self.https_cert_file.is_none() && !self.insecure_http {
            return Err("serving without TLS needs --insecure-http; give --https-cert-file and --https-key-file to serve HTTPS".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_required_and_read() {
        let base = [
            "stylefarm-web",
            "--coordinator",
            "https://c:50051",
            "--insecure-http",
        ];
        let err = WebConfig::try_parse_from(base).expect_err("no storage");
        assert!(err.to_string().contains("--storage"), "{err}");
        let c = WebConfig::try_parse_from(base.into_iter().chain([
            "--storage",
            "s3://b/p",
            "--s3-path-style",
        ]))
        .expect("parses");
        assert_eq!(
            (c.storage.storage.as_str(), c.storage.s3_path_style),
            ("s3://b/p", true)
        );
    }
}
