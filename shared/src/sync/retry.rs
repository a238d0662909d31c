//! The retry policy for Google calls: exponential backoff with full jitter, bounded by the time the
//! invocation has left (the Lambda context's deadline minus a safety margin).

use std::{future::Future, time::Duration};

use rand::Rng;
use tokio::time::Instant;

use crate::metrics::{self, Metric};

/// Errors that say whether another attempt can help.
pub trait Retryable {
    fn is_retryable(&self) -> bool;

    /// The least wait the failed call's answer asked for (Google's `Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First backoff ceiling; doubled after each failed attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Time kept free before the deadline: one more call may take up to the client timeout, and
    /// the handler still has to write the sync state and answer.
    pub safety_margin: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            max_attempts: 8,
            safety_margin: crate::calendar::DEFAULT_TIMEOUT + Duration::from_secs(2),
        }
    }
}

/// When the invocation must have answered.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// From `Context::deadline` (milliseconds since the Unix epoch). A context without one (0, as
    /// in hand-made test events) gets `fallback` from now.
    pub fn from_lambda_ms(deadline_ms: u64, fallback: Duration) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if deadline_ms == 0 {
            return Self(Instant::now() + fallback);
        }
        Self(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
    }

    pub fn in_(duration: Duration) -> Self {
        Self(Instant::now() + duration)
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` (attempt counts from 1): uniform in
    /// `0..=min(cap, base * 2^(attempt-1))` ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }

    /// Runs `op` until it succeeds, fails for good, runs out of attempts, or another attempt would
    /// end too close to the deadline. Returns the last error then.
    pub async fn run<T, E, F, Fut>(&self, deadline: Deadline, mut op: F) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_retryable() || attempt >= self.max_attempts => {
                    return Err(error);
                }
                Err(error) => {
                    // Never sooner than the answer asked; if that is past the deadline, the
                    // record fails now and its redelivery comes later anyway.
                    let wait = self
                        .backoff(attempt)
                        .max(error.retry_after().unwrap_or_default());
                    if Instant::now() + wait + self.safety_margin > deadline.0 {
                        tracing::warn!(attempt, %error, "no time left for another attempt");
                        return Err(error);
                    }
                    // Debug: the record's one INFO line is its outcome; `Retries` counts these.
                    tracing::debug!(attempt, %error, wait_ms = wait.as_millis() as u64, "retrying");
                    metrics::count(Metric::Retries);
                    metrics::add(Metric::BackoffTime, wait.as_secs_f64() * 1000.0);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E(bool);
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e{}", self.0)
        }
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_attempts: 5,
            safety_margin: Duration::from_millis(10),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let ceiling = (200u64 << (attempt - 1).min(10)).min(5000);
            assert!(p.backoff(attempt) <= Duration::from_millis(ceiling));
        }
    }

    /// Retryable, asking for a wait of its own.
    #[derive(Debug)]
    struct AskedToWait(Duration);
    impl Retryable for AskedToWait {
        fn is_retryable(&self) -> bool {
            true
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(self.0)
        }
    }
    impl std::fmt::Display for AskedToWait {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "retry after {:?}", self.0)
        }
    }

    #[tokio::test]
    async fn waits_at_least_what_the_answer_asked() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), AskedToWait> = quick()
            .run(Deadline::in_(Duration::from_secs(5)), || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(AskedToWait(Duration::from_millis(300)))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(result.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A wait past the deadline: give up at once rather than overrun it.
        calls.store(0, Ordering::SeqCst);
        let started = Instant::now();
        let too_long: Result<(), AskedToWait> = quick()
            .run(Deadline::in_(Duration::from_secs(1)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(AskedToWait(Duration::from_secs(60)))
            })
            .await;
        assert!(too_long.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, E> = quick()
            .run(Deadline::in_(Duration::from_secs(5)), || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 { Err(E(true)) } else { Ok(n) }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn stops_on_final_errors_attempt_limit_and_deadline() {
        let calls = AtomicU32::new(0);
        let final_error: Result<(), E> = quick()
            .run(Deadline::in_(Duration::from_secs(5)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(false))
            })
            .await;
        assert!(final_error.is_err());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

        let always: Result<(), E> = quick()
            .run(Deadline::in_(Duration::from_secs(5)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(true))
            })
            .await;
        assert!(always.is_err());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 5);

        let no_time: Result<(), E> = quick()
            .run(Deadline::in_(Duration::from_millis(5)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E(true))
            })
            .await;
        assert!(no_time.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
