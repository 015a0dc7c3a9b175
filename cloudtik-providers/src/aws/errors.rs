//! EC2 errors as [`cloudtik_core::Error`]s, and the bounded retry of the temporary ones.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use backon::Retryable;
use cloudtik_core::{Error, ErrorKind};

/// How the provider retries EC2 calls that failed with a rate limit or a transient
/// failure: exponential backoff with jitter, a bounded number of times.
///
/// The SDK's own retries are switched off for clients the provider builds, so this
/// policy is the only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first try (0 = no retry).
    pub max_retries: usize,
    /// The delay before the first retry; it doubles with each retry.
    pub min_delay: Duration,
    /// The largest delay between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Sets `max_retries`.
    #[must_use]
    pub fn with_max_retries(mut self, v: usize) -> Self {
        self.max_retries = v;
        self
    }

    /// Sets `min_delay`.
    #[must_use]
    pub fn with_min_delay(mut self, v: Duration) -> Self {
        self.min_delay = v;
        self
    }

    /// Sets `max_delay`.
    #[must_use]
    pub fn with_max_delay(mut self, v: Duration) -> Self {
        self.max_delay = v;
        self
    }

    /// The delay before retry number `retry` (from 1): `min_delay` doubled per retry,
    /// capped at `max_delay`, then stretched by `jitter` (0 to 1: up to twice as long).
    /// The one place the AWS code computes a retry delay (the rate-limited and transient
    /// retries of [`run_when`](Self::run_when), and the lost launch answers of `create_nodes`).
    pub(crate) fn delay(&self, retry: usize, jitter: f32) -> Duration {
        let failures = u32::try_from(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        let delay = cloudtik_core::backoff::Backoff::new(self.min_delay, self.max_delay).delay(failures);
        delay.saturating_add(delay.mul_f32(jitter.clamp(0.0, 1.0)))
    }

    /// The jittered delays of the retries, one per retry.
    fn backoff(self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        (1..=self.max_retries).map(move |retry| self.delay(retry, jitter()))
    }

    /// Runs `call` until it succeeds, fails with an error `retried` does not accept, or
    /// the retries ran out (a retried error is then marked persistent). The call layer
    /// chooses `retried`: rate limits and transient failures, or rate limits only.
    pub(crate) async fn run_when<T, F, Fut>(&self, call: F, retried: fn(&Error) -> bool) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        call.retry(self.backoff())
            .when(retried)
            .notify(|e: &Error, delay: Duration| {
                tracing::debug!(error = %cloudtik_core::Report(&e), ?delay, "retrying an AWS call");
            })
            .await
            .map_err(|e| if retried(&e) { e.set_persistent() } else { e })
    }
}

/// A random jitter from 0 to 1 (no cryptographic quality needed: it only spreads the
/// retries of concurrent callers apart).
fn jitter() -> f32 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        >> 40;
    bits as f32 / (1u64 << 24) as f32
}

/// The kinds the provider retries itself.
pub(crate) fn is_retried(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::RateLimited | ErrorKind::Transient)
}

/// Only rate limits: the call was refused before EC2 acted on it, so repeating a call
/// that creates something cannot create it twice.
pub(crate) fn is_rate_limited(e: &Error) -> bool {
    e.kind() == ErrorKind::RateLimited
}

/// The EC2 error code of an error made by [`classify_sdk_error`], if EC2 answered one.
pub(crate) fn ec2_code(e: &Error) -> Option<&str> {
    e.context_value("code")
}

/// The kind of an EC2 error code (and HTTP status, for codes nobody lists).
pub fn classify_code(code: &str, http_status: Option<u16>) -> ErrorKind {
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "TooManyRequestsException"
        | "SlowDown" => ErrorKind::RateLimited,
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientAddressCapacity"
        | "InsufficientFreeAddressesInSubnet"
        | "SpotMaxPriceTooLow" => ErrorKind::Capacity,
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" | "OptInRequired" | "Blocked" => {
            ErrorKind::PermissionDenied
        }
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "MissingAuthenticationToken"
        | "UnrecognizedClientException" => ErrorKind::Unauthenticated,
        "IdempotentParameterMismatch"
        | "IncorrectInstanceState"
        | "IncorrectState"
        | "DependencyViolation"
        | "Resource.AlreadyAssociated"
        | "InvalidPermission.Duplicate"
        | "DeleteConflict" => ErrorKind::Conflict,
        "NoSuchEntity" | "NoSuchBucket" => ErrorKind::NotFound,
        "EntityAlreadyExists" | "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" => ErrorKind::AlreadyExists,
        "Forbidden" => ErrorKind::PermissionDenied,
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => ErrorKind::Transient,
        "MissingParameter" | "UnknownParameter" | "ValidationError" => ErrorKind::InvalidConfig,
        "MaxSpotInstanceCountExceeded" => ErrorKind::Quota,
        c if c.ends_with("LimitExceeded") || c.ends_with("QuotaExceeded") => ErrorKind::Quota,
        c if c.ends_with("NotFound") => ErrorKind::NotFound,
        c if c.starts_with("Invalid") => ErrorKind::InvalidConfig,
        _ => match http_status {
            Some(s) if s >= 500 => ErrorKind::Transient,
            Some(429) => ErrorKind::RateLimited,
            // Answers without a body (S3's HeadBucket) have no code.
            Some(403) => ErrorKind::PermissionDenied,
            Some(404) => ErrorKind::NotFound,
            _ => ErrorKind::Unexpected,
        },
    }
}

/// An SDK error of the EC2 call `call` as an [`Error`] of operation `operation`: the
/// kind from the error code (see [`classify_code`]), time-outs and connection failures
/// transient, and a message naming the call, the code and EC2's message.
pub fn classify_sdk_error<E>(
    err: SdkError<E, HttpResponse>,
    operation: &'static str,
    call: &'static str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    classify_service_error(err, "EC2", operation, call)
}

/// Like [`classify_sdk_error`] for a call of another AWS service (`IAM`), named so in
/// the message. The SDK crates share their error types, and the codes in
/// [`classify_code`] cover IAM's too.
pub(crate) fn classify_service_error<E>(
    err: SdkError<E, HttpResponse>,
    service: &'static str,
    operation: &'static str,
    call: &'static str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut ec2_code = None;
    let error_source = aws_sdk_ec2::error::DisplayErrorContext(&err).to_string();
    let (kind, detail) = match &err {
        SdkError::ServiceError(service) => {
            let status = u16::from(service.raw().status());
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let kind = classify_code(code, Some(status));
            if !code.is_empty() {
                ec2_code = Some(code.to_string());
            }
            let code = if code.is_empty() { "no error code" } else { code };
            (kind, format!("{code} (HTTP {status}): {message}"))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Transient, "the call timed out".to_string()),
        SdkError::DispatchFailure(failure) => {
            // A connection closed before the answer came (the SDK's "other" failure of
            // kind TransientError) is as passing as an I/O error or a time-out.
            // (aws-sdk-ec2 does not re-export the kind's type; its Debug name is the
            // variant's.)
            let transient_other = failure
                .as_other()
                .is_some_and(|k| format!("{k:?}") == "TransientError");
            // No credentials at all: the chain (env, profile, instance role) found none.
            let no_credentials = error_source.contains("loading credentials");
            if no_credentials {
                (
                    ErrorKind::Unauthenticated,
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws/credentials), or run where an instance role is attached"
                        .to_string(),
                )
            } else {
                let kind = if failure.is_timeout() || failure.is_io() || transient_other {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Unexpected
                };
                (kind, "the request could not be sent".to_string())
            }
        }
        SdkError::ResponseError(_) => (ErrorKind::Transient, "the response could not be read".to_string()),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::InvalidConfig,
            "the request could not be built".to_string(),
        ),
        _ => (ErrorKind::Unexpected, "an unknown SDK failure".to_string()),
    };
    let mut error = Error::new(kind, format!("{service} {call} failed: {detail}"))
        .with_operation(operation)
        .with_context("call", call);
    if let Some(code) = ec2_code {
        error = error.with_context("code", code);
    }
    error.with_source(error_source)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;
    use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<RunInstancesError, HttpResponse> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message(format!("message of {code}"))
            .build();
        SdkError::service_error(
            RunInstancesError::generic(meta),
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    #[test]
    fn service_errors_map_to_kinds_and_name_the_call() {
        let cases = [
            ("RequestLimitExceeded", 503, ErrorKind::RateLimited),
            ("Throttling", 400, ErrorKind::RateLimited),
            ("InsufficientInstanceCapacity", 500, ErrorKind::Capacity),
            ("InstanceLimitExceeded", 400, ErrorKind::Quota),
            ("VcpuLimitExceeded", 400, ErrorKind::Quota),
            ("UnauthorizedOperation", 403, ErrorKind::PermissionDenied),
            ("AuthFailure", 401, ErrorKind::Unauthenticated),
            ("InvalidInstanceID.NotFound", 400, ErrorKind::NotFound),
            ("NatGatewayNotFound", 400, ErrorKind::NotFound),
            ("DependencyViolation", 400, ErrorKind::Conflict),
            ("InvalidAMIID.Malformed", 400, ErrorKind::InvalidConfig),
            ("IdempotentParameterMismatch", 400, ErrorKind::Conflict),
            ("InternalError", 500, ErrorKind::Transient),
            ("SomethingNew", 503, ErrorKind::Transient),
            ("SomethingNew", 400, ErrorKind::Unexpected),
        ];
        for (code, status, kind) in cases {
            let e = classify_sdk_error(service_error(code, status), "create_nodes", "RunInstances");
            assert_eq!(e.kind(), kind, "{code} {status}: {e:#}");
            assert_eq!(e.operation(), Some("create_nodes"));
            let text = e.to_string();
            assert!(text.contains("RunInstances"), "{text}");
            assert!(text.contains(code), "{text}");
            assert!(text.contains(&format!("message of {code}")), "{text}");
            assert_eq!(ec2_code(&e), Some(code));
        }
    }

    #[test]
    fn retried_kinds_are_temporary_and_quota_is_not() {
        let rate = classify_sdk_error(
            service_error("RequestLimitExceeded", 503),
            "list_nodes",
            "DescribeInstances",
        );
        assert!(rate.is_retryable());
        let quota = classify_sdk_error(
            service_error("VcpuLimitExceeded", 400),
            "create_nodes",
            "RunInstances",
        );
        assert!(!quota.is_retryable());
        assert!(quota.is_capacity_or_quota());
    }

    #[test]
    fn timeouts_and_connection_failures_are_transient() {
        let timeout: SdkError<TerminateInstancesError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        let e = classify_sdk_error(timeout, "terminate_nodes", "TerminateInstances");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.to_string().contains("TerminateInstances"), "{e:#}");

        let io: SdkError<TerminateInstancesError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert_eq!(
            classify_sdk_error(io, "terminate_nodes", "TerminateInstances").kind(),
            ErrorKind::Transient
        );
        let connect_timeout: SdkError<TerminateInstancesError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into()));
        assert_eq!(
            classify_sdk_error(connect_timeout, "terminate_nodes", "TerminateInstances").kind(),
            ErrorKind::Transient
        );
    }

    #[test]
    fn the_delay_doubles_is_capped_and_jitter_stretches_it_up_to_twice() {
        let policy = RetryPolicy::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(500));
        let plain: Vec<u128> = (1..=5).map(|n| policy.delay(n, 0.0).as_millis()).collect();
        assert_eq!(plain, [100, 200, 400, 500, 500]);
        assert_eq!(policy.delay(2, 1.0).as_millis(), 400);
        assert_eq!(policy.delay(2, 0.5).as_millis(), 300);
        for delay in policy.backoff().take(3).zip([100, 200, 400]) {
            let (d, base) = (delay.0.as_millis(), delay.1);
            assert!((base..=2 * base).contains(&d), "{d} ms for a base of {base} ms");
        }
        assert_eq!(policy.with_max_retries(2).backoff().count(), 2);
    }

    #[tokio::test]
    async fn retry_stops_on_permanent_errors_and_is_bounded_on_temporary_ones() {
        let policy = RetryPolicy::default()
            .with_max_retries(3)
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(2));
        let mut tries = 0;
        let e = policy
            .run_when(
                || {
                    tries += 1;
                    async { Err::<(), _>(Error::new(ErrorKind::Transient, "flaky")) }
                },
                is_retried,
            )
            .await
            .unwrap_err();
        assert_eq!(tries, 4);
        assert_eq!(e.status(), cloudtik_core::ErrorStatus::Persistent);

        let mut tries = 0;
        let e = policy
            .run_when(
                || {
                    tries += 1;
                    async { Err::<(), _>(Error::new(ErrorKind::Quota, "vcpu")) }
                },
                is_retried,
            )
            .await
            .unwrap_err();
        assert_eq!(tries, 1);
        assert_eq!(e.kind(), ErrorKind::Quota);

        let mut tries = 0;
        let v = policy
            .run_when(
                || {
                    tries += 1;
                    let t = tries;
                    async move {
                        if t < 3 {
                            Err(Error::new(ErrorKind::RateLimited, "slow down"))
                        } else {
                            Ok(t)
                        }
                    }
                },
                is_retried,
            )
            .await
            .unwrap();
        assert_eq!(v, 3);
    }
}
