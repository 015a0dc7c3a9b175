//! The AWS node provider's client-side rate limit, against moto: concurrent callers of
//! one provider send no more requests than the token bucket allows, and clones and
//! providers for other clusters share the bucket. (The moto harness: see `aws_moto.rs`.)
#![cfg(feature = "aws")]

mod moto;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use cloudtik_core::{NodeProvider, Tags};
use cloudtik_providers::aws::{AwsNodeProvider, RateLimit, RateLimits};
use moto::{sdk_config, settings, start_moto};

/// When each EC2 request of one action left the client.
#[derive(Debug, Clone)]
struct SendTimes {
    action: &'static str,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Intercept for SendTimes {
    fn name(&self) -> &'static str {
        "SendTimes"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let wanted = format!("Action={}", self.action);
        if String::from_utf8_lossy(body).split('&').any(|kv| kv == wanted) {
            self.times.lock().unwrap().push(Instant::now());
        }
        Ok(())
    }
}

/// Checks that the `k`-th request (from 0) left at least `(k - burst) / rate` seconds
/// after the first: a bucket of `burst` tokens refilled at `rate` per second allows no
/// more. (A lower bound only: a slow machine spaces requests further apart.)
fn assert_within_bucket(times: &[Instant], burst: usize, rate: f64) {
    let mut times = times.to_vec();
    times.sort();
    let first = times[0];
    for (k, t) in times.iter().enumerate().skip(burst) {
        let min = Duration::from_secs_f64((k - burst) as f64 / rate);
        // 5 ms of slack for the clocks of the bucket and the interceptor.
        assert!(
            t.duration_since(first) + Duration::from_millis(5) >= min,
            "request {k} left {:?} after the first, sooner than the bucket allows ({min:?})",
            t.duration_since(first)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_listings_are_spaced_by_the_client_side_rate_limit() {
    let Some(moto) = start_moto() else { return };
    let times = Arc::new(Mutex::new(Vec::new()));
    let interceptor = SendTimes {
        action: "DescribeInstances",
        times: times.clone(),
    };
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(interceptor);
    let (burst, rate) = (2, 10);
    let limits = RateLimits::unlimited().with_non_mutating(Some(RateLimit::new(burst, rate)));
    let p = AwsNodeProvider::from_ec2_config(
        "rate-limited",
        ec2_config,
        settings(&moto.url).with_rate_limits(limits),
    )
    .unwrap();
    // Half of the callers use a provider for another cluster: it shares the bucket.
    let other = p.for_cluster("rate-limited-too").unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let p = if i % 2 == 0 { p.clone() } else { other.clone() };
        tasks.spawn(async move { p.list_nodes(&Tags::new()).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().unwrap().is_empty());
    }
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 12, "one DescribeInstances per listing");
    assert_within_bucket(&times, burst as usize, f64::from(rate));

    // Mutating calls have their own bucket: with none set, terminate is not held up
    // by the listings' debt.
    p.terminate_nodes(&["i-00000000000000000".to_string()])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_waits_for_a_token_when_the_bucket_is_empty() {
    let Some(moto) = start_moto() else { return };
    let limits = RateLimits::unlimited().with_non_mutating(Some(RateLimit::new(1, 1)));
    let p = AwsNodeProvider::from_sdk_config(
        "one-per-second",
        &sdk_config(&moto.url).await,
        settings(&moto.url).with_rate_limits(limits),
    )
    .unwrap();
    // The first listing spends the one token; the second waits for the next, which
    // comes a second after the first was taken (after `started`).
    let started = Instant::now();
    p.list_nodes(&Tags::new()).await.unwrap();
    p.list_nodes(&Tags::new()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(990),
        "two listings took {:?}, less than the second's wait for a token",
        started.elapsed()
    );
}
