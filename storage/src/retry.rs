//! Retrying transient failures with capped exponential backoff and jitter, until a
//! deadline. Permanent failures return at once.
//!
//! Each retry logs one warning line (object, attempt, cause in a sentence); the full
//! error behind a cause is logged at debug level once, when that cause first appears.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First wait.
    pub initial: Duration,
    /// Longest single wait.
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
        }
    }
}

/// One attempt's outcome as the retry loop sees it.
pub enum Attempt<T, E> {
    /// Done.
    Ok(T),
    /// Worth another try.
    Transient {
        /// One sentence for the log line and the final error.
        cause: String,
        /// The whole error chain, for the debug log.
        detail: String,
    },
    /// Final.
    Permanent(E),
}

/// What the loop ended with.
pub enum Outcome<T, E> {
    /// Succeeded.
    Ok(T),
    /// A permanent failure.
    Permanent(E),
    /// Transient failures until the deadline.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
}

/// Runs `attempt` until it succeeds, fails permanently or the deadline passes.
pub async fn retry<T, E, F, Fut>(policy: RetryPolicy, what: &str, mut attempt: F) -> Outcome<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let start = Instant::now();
    let mut wait = policy.initial;
    let mut attempts = 0u32;
    // Jitter from the clock: enough to keep workers from retrying in step.
    let mut seed = u64::from(start.elapsed().subsec_nanos()) | 1;
    let mut last_cause = String::new();
    loop {
        attempts += 1;
        match attempt().await {
            Attempt::Ok(v) => return Outcome::Ok(v),
            Attempt::Permanent(e) => return Outcome::Permanent(e),
            Attempt::Transient { cause, detail } => {
                let why = sentence(&cause);
                if why != last_cause {
                    tracing::debug!(object = %what, attempt = attempts, error = %detail, "storage request failed");
                    last_cause.clone_from(&why);
                }
                let elapsed = start.elapsed();
                if elapsed + wait > policy.deadline {
                    return Outcome::GaveUp {
                        attempts,
                        elapsed,
                        last: why,
                    };
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let jittered = wait.mul_f64(0.5 + (seed % 1000) as f64 / 1000.0);
                tracing::warn!(object = %what, attempt = attempts, cause = %why, retry_in_ms = jittered.as_millis() as u64, "storage request failed; retrying");
                tokio::time::sleep(jittered).await;
                wait = (wait * 2).min(policy.max_backoff);
            }
        }
    }
}

/// Longest cause in a log line.
const MAX_CAUSE: usize = 200;

/// `cause` on one line of at most [`MAX_CAUSE`] characters.
pub fn sentence(cause: &str) -> String {
    let one_line = cause.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_CAUSE {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_CAUSE - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything a subscriber at `level` writes, as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    /// Fails `failures` times with a long multi-line error, then succeeds; returns
    /// the log at `level`.
    async fn log_of(level: tracing::Level, failures: u32) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let detail = format!(
            "dispatch failure: io error: {}\nConnection refused (os error 111)",
            "client error (Connect): ".repeat(200)
        );
        let mut n = 0;
        let outcome = retry(RetryPolicy::default(), "s3://b/k", || {
            n += 1;
            let fail = n <= failures;
            let detail = detail.clone();
            async move {
                if fail {
                    Attempt::<(), ()>::Transient {
                        cause: "connection failed:\n Connection refused (os error 111)".into(),
                        detail,
                    }
                } else {
                    Attempt::Ok(())
                }
            }
        })
        .await;
        assert!(matches!(outcome, Outcome::Ok(())));
        out.text()
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_logs_one_short_line_and_the_detail_once_at_debug() {
        let warn = log_of(tracing::Level::WARN, 4).await;
        let lines: Vec<&str> = warn.lines().collect();
        assert_eq!(lines.len(), 4, "one line per retry:\n{warn}");
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() < 300, "a short line: {line}");
            assert!(line.contains("object=s3://b/k"), "{line}");
            assert!(line.contains(&format!("attempt={}", i + 1)), "{line}");
            assert!(
                line.contains("connection failed: Connection refused (os error 111)"),
                "{line}"
            );
        }
        let debug = log_of(tracing::Level::DEBUG, 4).await;
        assert_eq!(
            debug.matches("client error (Connect)").count(),
            200,
            "the full error once:\n{debug}"
        );
    }

    #[test]
    fn causes_are_one_bounded_line() {
        assert_eq!(sentence("a\n  b\tc "), "a b c");
        let long = sentence(&"x ".repeat(500));
        assert_eq!(long.chars().count(), MAX_CAUSE);
        assert!(long.ends_with('…'));
    }
}
