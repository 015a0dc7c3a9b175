//! The `aws` provider: the nodes of a cluster as EC2 instances (CloudTik's AWS node
//! provider, reference §3), on [aws-sdk-ec2](aws_sdk_ec2); the workspace they run in
//! ([`AwsWorkspaceProvider`]: VPC, subnets, gateways, security group, IAM roles and the
//! managed S3 bucket, on EC2, IAM and S3); and the cluster bootstrap that ties a cluster's
//! node types to that workspace ([`AwsClusterBootstrap`], CloudTik's `bootstrap_aws`:
//! subnets, security group, instance profiles and the cluster's key pair, run by
//! [`bootstrap_cluster_config_async`](crate::bootstrap_cluster_config_async)).
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
//!   image named like [`AwsSettings::image_name`] owned by [`AwsSettings::image_owners`]
//!   (default: Canonical's Ubuntu 22.04, [`DEFAULT_IMAGE_NAME`]; `provider.image_owners`
//!   and `provider.image_name` in a config, keys of this SDK, not CloudTik's), found with
//!   `DescribeImages` once per provider; none found is a `NotFound` error naming the
//!   region and the filter.
//! * **Tags**: `CreateTags`, one call per distinct (key, value) across the nodes of a
//!   batch, in chunks of 1,000 instances.
//! * **Instance types**: `DescribeInstanceTypes`, one call for up to 100 types, gives
//!   the `resources` (CPU = vCPUs, memory in bytes, GPU count) that
//!   [`AwsNodeProvider::bootstrap_resources`] fills into node types that set none.
//! * **Terminate**: `TerminateInstances` in chunks of 1,000 ids; ids that are gone are
//!   skipped, so terminating twice succeeds.
//! * **Bootstrap** ([`AwsClusterBootstrap`]): the workspace must be complete; node types
//!   get its subnets, security group and instance profile where they set none, and
//!   `KeyName` the cluster's key pair (`ImportKeyPair` once, then found with
//!   `DescribeKeyPairs`); user-set subnets and groups must be in the workspace's VPC.
//!   Not built: CloudTik's launch templates, `worker_role_for_cloud_storage: false`
//!   (workers always get the worker profile), managed storage and database settings, and
//!   pinning `ImageId` at bootstrap (the default image is looked up at launch).
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
//! # Credentials and endpoint
//!
//! Credentials come from the standard AWS chain (environment, profile, SSO, instance
//! role). The region is `provider.region`; `provider.endpoint_url` points the client at
//! an EC2-compatible server such as moto.

mod cluster_bootstrap;
mod errors;
mod node_config;
mod node_provider;
mod workspace;

use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;

pub use cluster_bootstrap::{AwsClusterBootstrap, WorkspaceResources, key_pair_name};
pub use errors::{RetryPolicy, classify_code, classify_sdk_error};
pub use node_config::{Ec2NodeConfig, SUPPORTED_KEYS};
pub use node_provider::AwsNodeProvider;
pub use workspace::{AwsWorkspaceOptions, AwsWorkspaceProvider, WorkspaceVpc};

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
    /// Launch spot instances first (`provider.prefer_spot_node`), falling back to
    /// on-demand for the rest of a launch when EC2 has no spot capacity or price.
    pub prefer_spot: bool,
    /// The owners (`Owners` of `DescribeImages`) whose images are searched for the
    /// default image, used when a `node_config` has no `ImageId`: the newest available
    /// x86_64 image named like [`DEFAULT_IMAGE_NAME`]. Default: Canonical
    /// ([`CANONICAL_OWNER`]); `provider.image_owners` in a config.
    pub image_owners: Vec<String>,
    /// The name pattern (`name` filter of `DescribeImages`) of the default image.
    /// Default: [`DEFAULT_IMAGE_NAME`]; `provider.image_name` in a config.
    pub image_name: String,
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
            prefer_spot: false,
            image_owners: vec![CANONICAL_OWNER.to_string()],
            image_name: DEFAULT_IMAGE_NAME.to_string(),
        }
    }

    /// Settings from the `provider` section of a config: `region`, `endpoint_url`,
    /// `prefer_spot_node`, `image_owners` and `image_name` (the last two are this SDK's
    /// keys, not CloudTik's).
    pub fn from_provider_config(config: &crate::provider_config::AwsProviderConfig) -> Self {
        let mut settings = AwsSettings::new(config.region.clone());
        settings.endpoint_url = config.endpoint_url.clone();
        settings.prefer_spot = config.prefer_spot_node.unwrap_or(false);
        if let Some(owners) = config.image_owners.as_ref().filter(|o| !o.is_empty()) {
            settings.image_owners = owners.clone();
        }
        if let Some(name) = &config.image_name {
            settings.image_name = name.clone();
        }
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

    /// Sets the name pattern of the default image.
    #[must_use]
    pub fn with_image_name(mut self, name: impl Into<String>) -> Self {
        self.image_name = name.into();
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
