//! Logging set-up shared by every binary: `tracing` to stderr, plain or JSON lines,
//! filtered by `RUST_LOG` when it is set.

/// Installs the global subscriber with `default_level` (e.g. `info`) unless `RUST_LOG`
/// says otherwise. The AWS SDK's own warnings (a kilobyte each, repeating what our
/// storage errors say in a line) show only at debug level or through `RUST_LOG`.
pub fn init(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(default_level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests that start several servers in one process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `level`, with the AWS SDK's crates held to errors unless `level` is debug or finer.
fn default_filter(level: &str) -> String {
    if matches!(level, "debug" | "trace") {
        level.to_owned()
    } else {
        format!("{level},aws_config=error,aws_smithy_runtime=error,aws_sdk_s3=error")
    }
}
