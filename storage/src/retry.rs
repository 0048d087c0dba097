//! Retrying transient failures with capped exponential backoff and jitter, until a
//! deadline. Permanent failures return at once.

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
    /// Worth another try (with a description for the log and the final error).
    Transient(String),
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
    loop {
        attempts += 1;
        match attempt().await {
            Attempt::Ok(v) => return Outcome::Ok(v),
            Attempt::Permanent(e) => return Outcome::Permanent(e),
            Attempt::Transient(why) => {
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
                tracing::warn!(object = what, attempt = attempts, cause = %why, retry_in_ms = jittered.as_millis() as u64, "storage request failed; retrying");
                tokio::time::sleep(jittered).await;
                wait = (wait * 2).min(policy.max_backoff);
            }
        }
    }
}
