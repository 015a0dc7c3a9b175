//! The `aws` provider: the nodes of a cluster as EC2 instances (CloudTik's AWS node
//! provider, reference §3), on [aws-sdk-ec2](aws_sdk_ec2); and the workspace they run in
//! ([`AwsWorkspaceProvider`]: VPC, subnets, gateways, security group, VPC peering with
//! the working VPC for `use_internal_ips`, IAM roles and the managed S3 bucket, on EC2,
//! IAM and S3).
//!
//! * **List**: `DescribeInstances` filtered on `tag:cloudtik-cluster-name`, one
//!   `tag:<key>` filter per requested tag, and `instance-state-name` pending or running;
//!   all pages are read (page size [`AwsSettings::page_size`]).
//! * **Launch**: `RunInstances` with `MinCount` 1 and `MaxCount` the missing count,
//!   every tag (the request's, the cluster name, the launch token, and `Name` from
//!   `cloudtik-node-name`) in `TagSpecifications`, so no instance is ever untagged. When
//!   EC2 creates fewer instances than `MaxCount` without an error, the rest is asked for
//!   again; when a call fails after some instances exist, the launch is partial: `Ok`
//!   with a shortfall. An `Insufficient*Capacity` error moves on to the next of
//!   `node_config.SubnetIds`. With [`AwsSettings::prefer_spot`] (`prefer_spot_node`)
//!   instances are launched as spot (`InstanceMarketOptions.MarketType` `spot`); a spot
//!   capacity or price error (`InsufficientInstanceCapacity`, `SpotMaxPriceTooLow`,
//!   `MaxSpotInstanceCountExceeded`) launches the rest of the request on-demand, in the
//!   same subnet.
//! * **Image**: a `node_config` without `ImageId` launches the newest available x86_64
//!   image named like [`DEFAULT_IMAGE_NAME`] owned by [`AwsSettings::image_owners`]
//!   (Canonical's Ubuntu 22.04), found with `DescribeImages` once per provider; none
//!   found is a `NotFound` error naming the region and the filter.
//! * **Tags**: `CreateTags`, one call per distinct (key, value) across the nodes of a
//!   batch, in chunks of 1,000 instances.
//! * **Instance types**: `DescribeInstanceTypes`, one call for up to 100 types, gives
//!   the `resources` (CPU = vCPUs, memory in bytes, GPU count) that
//!   [`AwsNodeProvider::bootstrap_resources`] fills into node types that set none.
//! * **Terminate**: `TerminateInstances` in chunks of 1,000 ids; ids that are gone are
//!   skipped, so terminating twice succeeds.
//!
//! # Launch tokens and `ClientToken`
//!
//! A launch first lists the cluster's instances tagged with the request's token and
//! creates only the missing ones. Each `RunInstances` call carries the `ClientToken`
//! `<token>-<number of instances of the token that exist>-<subnet index>` (with `s`
//! appended for a spot launch): a call
//! repeated after a lost answer (or after a crash, before the new instances show in the
//! list) is answered by EC2 with the instances of the first call instead of creating
//! more, while a call after a partial launch (more instances exist, so a new client
//! token) can create the rest. `RunInstances` itself is repeated only after a rate
//! limit (EC2 did not act on the call); after a failure in transit (the answer may be
//! lost after instances were launched) the provider waits, lists the token's instances
//! again and asks only for the missing ones, a bounded number of times. (moto 5.2
//! ignores `ClientToken`, so against moto the listing alone keeps launches free of
//! duplicates; `tests/aws_fault_moto.rs` checks that through a faulty proxy.)
//!
//! # Errors and retries
//!
//! EC2 error codes become [`ErrorKind`](cloudtik_core::ErrorKind)s (see
//! [`classify_code`]); every error names the provider operation and the EC2 call.
//! Rate-limited and transient failures are retried inside the provider with jittered
//! exponential backoff, a bounded number of times ([`RetryPolicy`]); the SDK's own
//! retries are switched off so there is one policy only.
//!
//! Before each try, a call waits for a token of the provider's client-side rate limit
//! ([`RateLimits`], EC2's own bucket sizes by default), and a throttled call empties its
//! bucket so that every caller of the provider slows down, not only the one refused.
//!
//! # Credentials and endpoint
//!
//! Credentials come from the standard AWS chain (environment, profile, SSO, instance
//! role). The region is `provider.region`; `provider.endpoint_url` points the client at
//! an EC2-compatible server such as moto.

mod errors;
mod node_config;
mod node_provider;
mod rate_limit;
mod workspace;

use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;

pub use errors::{RetryPolicy, classify_code, classify_sdk_error};
pub use node_config::{Ec2NodeConfig, SUPPORTED_KEYS};
pub use node_provider::AwsNodeProvider;
pub use rate_limit::{RateLimit, RateLimits};
pub use workspace::{AwsWorkspaceOptions, AwsWorkspaceProvider, VpcPeering, WorkspaceVpc};

/// The provider type name, as in `provider.type`.
pub const PROVIDER_TYPE: &str = "aws";

/// Most instances one `TerminateInstances` or `CreateTags` call takes.
pub const EC2_BATCH: usize = 1000;

/// How the AWS node provider talks to EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsSettings {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// An EC2-compatible endpoint (moto) instead of AWS's.
    pub endpoint_url: Option<String>,
    /// The page size of `DescribeInstances` (EC2 takes 5 to 1,000).
    pub page_size: i32,
    /// Retries of rate-limited and transient failures.
    pub retry: RetryPolicy,
    /// The client-side rate limit of the node provider's EC2 calls (default: EC2's
    /// default buckets; see [`RateLimits`]).
    pub rate_limits: RateLimits,
    /// Launch spot instances first (`provider.prefer_spot_node`), falling back to
    /// on-demand for the rest of a launch when EC2 has no spot capacity or price.
    pub prefer_spot: bool,
    /// The owners (`Owners` of `DescribeImages`) whose images are searched for the
    /// default image, used when a `node_config` has no `ImageId`: the newest available
    /// x86_64 image named like [`DEFAULT_IMAGE_NAME`]. Default: Canonical
    /// ([`CANONICAL_OWNER`]).
    pub image_owners: Vec<String>,
}

/// The AWS account of Canonical, the publisher of the Ubuntu images.
pub const CANONICAL_OWNER: &str = "099720109477";

/// The name pattern (`name` filter of `DescribeImages`) of the default image: Ubuntu
/// 22.04 server for amd64 on SSD-backed HVM.
pub const DEFAULT_IMAGE_NAME: &str = "ubuntu/images/hvm-ssd*/ubuntu-*-22.04-amd64-server-*";

impl AwsSettings {
    /// Settings for `region` with AWS's endpoint, pages of 1,000 and the default retries.
    pub fn new(region: impl Into<String>) -> Self {
        AwsSettings {
            region: region.into(),
            endpoint_url: None,
            page_size: 1000,
            retry: RetryPolicy::default(),
            rate_limits: RateLimits::default(),
            prefer_spot: false,
            image_owners: vec![CANONICAL_OWNER.to_string()],
        }
    }

    /// Settings from the `provider` section of a config.
    pub fn from_provider_config(config: &crate::provider_config::AwsProviderConfig) -> Self {
        let mut settings = AwsSettings::new(config.region.clone());
        settings.endpoint_url = config.endpoint_url.clone();
        settings.prefer_spot = config.prefer_spot_node.unwrap_or(false);
        settings
    }

    /// Sets the endpoint.
    #[must_use]
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sets the `DescribeInstances` page size, clamped to EC2's 5..=1000.
    #[must_use]
    pub fn with_page_size(mut self, size: i32) -> Self {
        self.page_size = size.clamp(5, 1000);
        self
    }

    /// Launches spot instances first, falling back to on-demand.
    #[must_use]
    pub fn with_prefer_spot(mut self, prefer_spot: bool) -> Self {
        self.prefer_spot = prefer_spot;
        self
    }

    /// Sets the owners whose images are searched for the default image (e.g. `self`).
    #[must_use]
    pub fn with_image_owners<S: Into<String>>(mut self, owners: impl IntoIterator<Item = S>) -> Self {
        self.image_owners = owners.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the client-side rate limits ([`RateLimits::unlimited`] switches them off).
    #[must_use]
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// An EC2 client from `builder` with the region and endpoint of `settings`, the SDK's
/// retries switched off (the provider retries with `settings.retry`) and time-outs set
/// (10 s to connect, 60 s per attempt).
pub(crate) fn ec2_client(
    builder: aws_sdk_ec2::config::Builder,
    settings: &AwsSettings,
) -> aws_sdk_ec2::Client {
    let mut builder = builder
        .region(aws_config::Region::new(settings.region.clone()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(url) = &settings.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    aws_sdk_ec2::Client::from_conf(builder.build())
}

/// An IAM client from `builder`, set up as [`ec2_client`] does (IAM is global; the
/// region only picks the partition's endpoint).
pub(crate) fn iam_client(
    builder: aws_sdk_iam::config::Builder,
    settings: &AwsSettings,
) -> aws_sdk_iam::Client {
    let mut builder = builder
        .region(aws_config::Region::new(settings.region.clone()))
        .retry_config(aws_sdk_iam::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_iam::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(url) = &settings.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    aws_sdk_iam::Client::from_conf(builder.build())
}

/// An S3 client from `builder`, set up as [`ec2_client`] does; with an endpoint
/// override (moto) it addresses buckets by path, not by host name.
pub(crate) fn s3_client(builder: aws_sdk_s3::config::Builder, settings: &AwsSettings) -> aws_sdk_s3::Client {
    let mut builder = builder
        .region(aws_config::Region::new(settings.region.clone()))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(url) = &settings.endpoint_url {
        builder = builder.endpoint_url(url.clone()).force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}
