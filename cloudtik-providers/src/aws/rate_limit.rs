//! The client-side rate limit of EC2 calls: token buckets like EC2's own, so a provider
//! slows itself down before EC2 throttles it, and all of its callers slow down together
//! once EC2 did throttle one of them.
//!
//! EC2 meters API requests per account and region in token buckets, one for the
//! non-mutating actions (`Describe*`) and one for the mutating ones (`RunInstances`,
//! `CreateTags`, ...): a bucket holds up to `burst` tokens, each request takes one, and
//! tokens come back at `per_second`. [`RateLimits::default`] uses EC2's documented
//! defaults (non-mutating: 100 and 20 per second; mutating: 200 and 5 per second).
//!
//! A request that finds its bucket empty waits for its token (requests queue in the
//! order they asked) instead of being sent and refused. When EC2 still answers
//! `RequestLimitExceeded` (other programs share the account's buckets), the bucket is
//! emptied, so every caller waits for a fresh token, on top of the failed call's own
//! jittered backoff.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Most requests sent at once after a quiet period (at least 1).
    pub burst: u32,
    /// Requests per second in the long run (at least 1).
    pub per_second: u32,
}

impl RateLimit {
    /// A bucket of `burst` tokens refilled at `per_second` (each at least 1).
    pub fn new(burst: u32, per_second: u32) -> Self {
        RateLimit {
            burst: burst.max(1),
            per_second: per_second.max(1),
        }
    }
}

/// The client-side limits of a provider's EC2 calls; `None` sends calls as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimits {
    /// `Describe*` calls.
    pub non_mutating: Option<RateLimit>,
    /// Every other call (`RunInstances`, `CreateTags`, `TerminateInstances`, ...).
    pub mutating: Option<RateLimit>,
}

impl Default for RateLimits {
    /// EC2's default buckets of an account: non-mutating 100 and 20 per second,
    /// mutating 200 and 5 per second.
    fn default() -> Self {
        RateLimits {
            non_mutating: Some(RateLimit::new(100, 20)),
            mutating: Some(RateLimit::new(200, 5)),
        }
    }
}

impl RateLimits {
    /// No client-side limit (EC2's throttling and the retries remain).
    pub fn unlimited() -> Self {
        RateLimits {
            non_mutating: None,
            mutating: None,
        }
    }

    /// Sets the limit of `Describe*` calls.
    #[must_use]
    pub fn with_non_mutating(mut self, limit: Option<RateLimit>) -> Self {
        self.non_mutating = limit;
        self
    }

    /// Sets the limit of the other calls.
    #[must_use]
    pub fn with_mutating(mut self, limit: Option<RateLimit>) -> Self {
        self.mutating = limit;
        self
    }
}

/// Whether an EC2 call (its API name) counts against the non-mutating bucket.
pub(crate) fn is_non_mutating(call: &str) -> bool {
    call.starts_with("Describe")
}

/// The tokens of one bucket at one instant. Tokens may go below zero: each is a
/// request that reserved a token not yet refilled and waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BucketState {
    tokens: f64,
    at: Instant,
}

impl BucketState {
    fn full(limit: RateLimit, now: Instant) -> Self {
        BucketState {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Refills up to `now`, never above `burst`.
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        self.at = self.at.max(now);
    }

    /// Takes one token at `now` and says how long the request waits for it.
    fn reserve(&mut self, limit: RateLimit, now: Instant) -> Duration {
        self.refill(limit, now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / f64::from(limit.per_second))
        }
    }

    /// EC2 throttled a request: no token is left at `now` (debts are kept).
    fn drain(&mut self, limit: RateLimit, now: Instant) {
        self.refill(limit, now);
        self.tokens = self.tokens.min(0.0);
    }
}

#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    state: Mutex<BucketState>,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            state: Mutex::new(BucketState::full(limit, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The buckets of one provider (shared by its clones and by
/// [`AwsNodeProvider::for_cluster`](super::AwsNodeProvider::for_cluster)).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    non_mutating: Option<Bucket>,
    mutating: Option<Bucket>,
}

impl RateLimiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        RateLimiter {
            non_mutating: limits.non_mutating.map(Bucket::new),
            mutating: limits.mutating.map(Bucket::new),
        }
    }

    fn bucket(&self, call: &str) -> Option<&Bucket> {
        if is_non_mutating(call) {
            self.non_mutating.as_ref()
        } else {
            self.mutating.as_ref()
        }
    }

    /// Waits for a token for one request of `call`.
    pub(crate) async fn acquire(&self, call: &str) {
        let Some(bucket) = self.bucket(call) else {
            return;
        };
        let wait = bucket.lock().reserve(bucket.limit, Instant::now());
        if !wait.is_zero() {
            tracing::debug!(call, ?wait, "waiting for the client-side rate limit");
            tokio::time::sleep(wait).await;
        }
    }

    /// EC2 throttled a request of `call`: empties its bucket.
    pub(crate) fn throttled(&self, call: &str) {
        if let Some(bucket) = self.bucket(call) {
            bucket.lock().drain(bucket.limit, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_spaces_requests_by_the_rate() {
        let limit = RateLimit::new(3, 4);
        let t0 = Instant::now();
        let mut b = BucketState::full(limit, t0);
        let waits: Vec<Duration> = (0..6).map(|_| b.reserve(limit, t0)).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        // The 4th, 5th and 6th requests wait for 1, 2 and 3 refills of 0.25 s.
        for (i, w) in waits[3..].iter().enumerate() {
            let expected = 0.25 * (i + 1) as f64;
            assert!(
                (w.as_secs_f64() - expected).abs() < 1e-9,
                "request {}: {w:?}",
                i + 4
            );
        }
    }

    #[test]
    fn tokens_come_back_with_time_but_never_above_the_burst() {
        let limit = RateLimit::new(2, 10);
        let t0 = Instant::now();
        let mut b = BucketState::full(limit, t0);
        b.reserve(limit, t0);
        b.reserve(limit, t0);
        // 0.1 s later one token is back.
        assert_eq!(b.reserve(limit, t0 + secs(0.1)), Duration::ZERO);
        assert!(b.reserve(limit, t0 + secs(0.1)) > Duration::ZERO);
        // A long quiet period refills to the burst only.
        let later = t0 + secs(60.0);
        assert_eq!(b.reserve(limit, later), Duration::ZERO);
        assert_eq!(b.reserve(limit, later), Duration::ZERO);
        assert!(b.reserve(limit, later) > Duration::ZERO);
    }

    #[test]
    fn throttling_empties_the_bucket_and_keeps_debts() {
        let limit = RateLimit::new(10, 5);
        let t0 = Instant::now();
        let mut b = BucketState::full(limit, t0);
        b.drain(limit, t0);
        assert!((b.reserve(limit, t0).as_secs_f64() - 0.2).abs() < 1e-9);
        // A second drain does not forgive the request already waiting.
        b.drain(limit, t0);
        assert!((b.reserve(limit, t0).as_secs_f64() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn describe_calls_use_the_non_mutating_bucket() {
        assert!(is_non_mutating("DescribeInstances"));
        assert!(is_non_mutating("DescribeInstanceTypes"));
        assert!(!is_non_mutating("RunInstances"));
        assert!(!is_non_mutating("CreateTags"));
        let limiter = RateLimiter::new(RateLimits::unlimited().with_mutating(Some(RateLimit::new(1, 1))));
        assert!(limiter.bucket("DescribeInstances").is_none());
        assert!(limiter.bucket("TerminateInstances").is_some());
    }

    #[tokio::test]
    async fn acquire_waits_for_the_token() {
        let limiter =
            RateLimiter::new(RateLimits::unlimited().with_non_mutating(Some(RateLimit::new(1, 20))));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire("DescribeInstances").await;
        }
        // One token at once, then two refills of 50 ms each (a lower bound: a slow
        // machine only waits longer).
        assert!(
            start.elapsed() >= Duration::from_millis(99),
            "{:?}",
            start.elapsed()
        );
    }
}
