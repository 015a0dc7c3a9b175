//! Exponential backoff: the one place the SDK computes how long to wait before trying
//! again, and retries a fallible async call.
//!
//! Every wait that grows with failures uses [`Backoff`]: the node agent's heartbeat
//! writes while the state store is down, the launcher's backoff of a node type after a
//! capacity or quota failure, and the cloud calls' retries (AWS), through
//! [`Backoff::retry`].
//!
//! ```
//! use std::time::Duration;
//! use cloudtik_core::backoff::Backoff;
//!
//! let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
//! assert_eq!(b.delay(0), Duration::from_millis(200));
//! assert_eq!(b.delay(2), Duration::from_millis(800));
//! assert_eq!(b.delay(9), Duration::from_secs(1)); // capped
//! ```

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::Error;

/// A delay that starts at `initial` and doubles per failure up to `max`, with an
/// optional number of retries for [`retry`](Backoff::retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_retries: usize,
    jitter: bool,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure, never above `max` (nor below
    /// `initial`); 3 retries with jitter for [`retry`](Backoff::retry).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            max_retries: 3,
            jitter: true,
        }
    }

    /// Sets how many times [`retry`](Backoff::retry) tries again after the first call.
    pub fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets whether [`retry`](Backoff::retry) randomises its waits (on by default, so
    /// callers that failed together do not retry together).
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How many retries [`retry`](Backoff::retry) makes.
    pub fn max_retries(&self) -> usize {
        self.max_retries
    }

    /// The delay after `failures` failures in a row beyond the first: `initial` for 0,
    /// then doubled each time, capped at `max`. Without jitter: a pure function, for
    /// waits a caller schedules itself.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The same curve as a `backon` builder, for callers that retry with `backon`.
    pub fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_max_times(self.max_retries);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// Runs `call` until it succeeds, fails with an error `retried` refuses, or the
    /// retries ran out; an error that ran out of retries is marked
    /// [persistent](Error::set_persistent). `notify` sees each failure that is retried
    /// and the wait before the next try.
    pub async fn retry<T, F, Fut>(
        &self,
        call: F,
        retried: fn(&Error) -> bool,
        notify: impl FnMut(&Error, Duration),
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        call.retry(self.builder())
            .when(retried)
            .notify(notify)
            .await
            .map_err(|e| if retried(&e) { e.set_persistent() } else { e })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{ErrorKind, ErrorStatus};

    #[test]
    fn delay_doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_secs(30), Duration::from_secs(600));
        let delays: Vec<u64> = (0..7).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(600), "no overflow");
    }

    #[test]
    fn max_is_never_below_initial() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.max(), Duration::from_secs(5));
        assert_eq!(b.delay(3), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_success_refusal_or_exhaustion() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).with_max_retries(2);
        let calls = AtomicUsize::new(0);
        let mut notified = 0;
        // Always transient: 1 call + 2 retries, then persistent.
        let e = b
            .retry(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(Error::new(ErrorKind::Transient, "flaky"))
                },
                Error::is_retryable,
                |_, _| notified += 1,
            )
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(notified, 2);
        assert_eq!(e.status(), ErrorStatus::Persistent);

        // A refused error is returned at once, unchanged.
        calls.store(0, Ordering::SeqCst);
        let e = b
            .retry(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(Error::new(ErrorKind::PermissionDenied, "no"))
                },
                Error::is_retryable,
                |_, _| {},
            )
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(e.status(), ErrorStatus::Permanent);

        // Success after one failure.
        calls.store(0, Ordering::SeqCst);
        let v = b
            .retry(
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(Error::new(ErrorKind::RateLimited, "slow down"))
                    } else {
                        Ok(7)
                    }
                },
                Error::is_retryable,
                |_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(v, 7);
    }
}
