//! The `aws` provider: the nodes of a cluster as EC2 instances (CloudTik's AWS node
//! provider, reference §3), on [aws-sdk-ec2](aws_sdk_ec2); the workspace they run in
//! ([`AwsWorkspaceProvider`]: VPC, subnets, gateways, security group, VPC peering with
//! the working VPC for `use_internal_ips`, IAM roles and the managed S3 bucket, on EC2,
//! IAM and S3); and the cluster bootstrap that ties a cluster's
//! node types to that workspace ([`AwsClusterBootstrap`], CloudTik's `bootstrap_aws`:
//! subnets, security group, instance profiles and the cluster's key pair, run by
//! [`AwsFactory`](crate::AwsFactory)'s `bootstrap_config`).
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
//!   `node_config.SubnetIds`.
//! * **Spot**: with [`AwsSettings::prefer_spot`] (`prefer_spot_node`) instances are
//!   launched as spot (`InstanceMarketOptions.MarketType` `spot`); a spot capacity or
//!   price error (`InsufficientInstanceCapacity`, `SpotMaxPriceTooLow`,
//!   `MaxSpotInstanceCountExceeded`) launches the rest of the request on-demand, in the
//!   same subnet, and launches of that instance type go on-demand directly for
//!   [`AwsSettings::spot_backoff`] (5 minutes). A node type whose
//!   `node_config.InstanceMarketOptions` asks for spot ([`SpotMarketOptions`]: `MaxPrice`,
//!   `SpotInstanceType` `one-time`, `InstanceInterruptionBehavior` `terminate`) is
//!   launched as spot with those options and never falls back to on-demand.
//! * **Cached stopped nodes**: with [`AwsSettings::cache_stopped_nodes`]
//!   (`cache_stopped_nodes`), `terminate_nodes` sends `StopInstances` (chunks of 1,000)
//!   instead of `TerminateInstances`, except for spot instances (read from the
//!   instance's `InstanceLifecycle`), which are terminated. A launch first looks for the
//!   cluster's stopped instances with the request's `cloudtik-node-kind`,
//!   `cloudtik-launch-config` and `cloudtik-user-node-type` (one `DescribeInstances`),
//!   tags up to the missing count with the request's tags and new launch token
//!   (`CreateTags` per distinct (key, value)), starts them (`StartInstances`), and
//!   launches only the rest. Stopped instances already tagged with the token (a launch
//!   that stopped between `CreateTags` and `StartInstances`) are taken first, so a
//!   re-run never starts or creates more than `count` for a token. Cached instances go
//!   for good only through [`AwsNodeProvider::terminate_stopped_nodes`] (listed by
//!   [`AwsNodeProvider::stopped_nodes`]); workspace delete is refused while they exist
//!   and says so.
//! * **Image**: a `node_config` without `ImageId` launches the newest available x86_64
//!   image named like [`AwsSettings::image_name`] owned by [`AwsSettings::image_owners`]
//!   (default: Canonical's Ubuntu 22.04, [`DEFAULT_IMAGE_NAME`]; `provider.image_owners`
//!   and `provider.image_name` in a config, keys of this SDK, not CloudTik's), found with
//!   `DescribeImages` once per provider; none found is a `NotFound` error naming the
//!   region and the filter.
//! * **Tags**: `CreateTags`, one call per distinct (key, value) across the nodes of a
//!   batch, in chunks of 1,000 instances. Concurrent `set_node_tags` calls are
//!   coalesced: the first waits [`AwsSettings::tag_batch_window`] (100 ms), then sends
//!   the updates of every call queued meanwhile together, and each caller gets its own
//!   result (a missing node fails only the call that named it). Ids of the cluster's
//!   instances seen in listings and launches are remembered, so only ids not seen are
//!   checked with a `DescribeInstances` by id; a `CreateTags` EC2 refuses because an
//!   instance is gone (`InvalidInstanceID.NotFound`) is sent again without it, and the
//!   gone node is `NotFound` for its caller. (A node terminated by someone else since
//!   the last listing may be tagged without an error until the next unfiltered
//!   listing.)
//! * **Instance types**: `DescribeInstanceTypes`, one call for up to 100 types, gives
//!   the `resources` (CPU = vCPUs, memory in bytes, GPU count) that
//!   [`AwsNodeProvider::bootstrap_resources`] fills into node types that set none.
//! * **Terminate**: `TerminateInstances` in chunks of 1,000 ids (`StopInstances` with
//!   cached stopped nodes, above); ids that are gone are skipped, so terminating twice
//!   succeeds.
//! * **Bootstrap** ([`AwsClusterBootstrap`]): the workspace must be complete; node types
//!   get its subnets, security group and instance profile where they set none, and
//!   `KeyName` the cluster's key pair (`ImportKeyPair` once, then found with
//!   `DescribeKeyPairs`); user-set subnets and groups must be in the workspace's VPC.
//!   Not built: CloudTik's launch templates, `worker_role_for_cloud_storage: false`
//!   (workers always get the worker profile), managed storage and database settings, and
//!   pinning `ImageId` at bootstrap (the default image is looked up at launch).
//! * **Host keys**: not told ([`NodeProvider::host_keys`](cloudtik_core::NodeProvider::host_keys)
//!   is `None`): an instance's SSH host key is trusted on its first connection
//!   (`StrictHostKeyChecking=accept-new`), pinned from then on, and a warning says so.
//!   Reading it from `GetConsoleOutput` (cloud-init prints it) or injecting a host key made
//!   by the SDK through user data would pin it beforehand; neither is built, as neither can
//!   be tested against moto here.
//!
//! # Not built
//!
//! Persistent spot requests (`SpotInstanceType: persistent`: terminating the instance
//! would not end the request) and `stop`/`hibernate` interruption behaviour;
//! `permanent_data_volumes`. `prefer_spot_node` applies to every launch (CloudTik: to
//! worker node types only, and `prefer_spot_node: false` there removes a node type's
//! spot options; here a node type's own `InstanceMarketOptions` always wins).
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
//! Before each try, an EC2 call waits for a token of the provider's client-side rate
//! limit ([`RateLimits`], EC2's own bucket sizes by default), and a throttled call
//! empties its bucket so that every caller of the provider slows down, not only the one
//! refused.
//!
//! The node provider, the workspace provider (EC2, IAM and S3) and the cluster bootstrap
//! make every call through one call layer: rate limit (EC2 calls, with the
//! [`AwsSettings::rate_limits`] of each provider), retries, error mapping, and the
//! reading of all pages of a listing. IAM and S3 calls are retried alike but not metered
//! (their quotas are not EC2's buckets).
//!
//! # Credentials and endpoint
//!
//! Credentials come from the standard AWS chain (environment, profile, SSO, instance
//! role). The region is `provider.region`; `provider.endpoint_url` points the client at
//! an EC2-compatible server such as moto.

mod call;
pub mod cluster_bootstrap;
mod errors;
mod node_config;
mod node_provider;
mod rate_limit;
mod workspace;

use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;

pub use cluster_bootstrap::{AwsClusterBootstrap, WorkspaceResources, key_pair_name};
pub use errors::{RetryPolicy, classify_code, classify_sdk_error};
pub use node_config::{
    BlockDeviceMapping, EBS_KEYS, EbsVolume, Ec2NodeConfig, SPOT_OPTION_KEYS, SUPPORTED_KEYS,
    SpotMarketOptions,
};
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
    /// ([`CANONICAL_OWNER`]); `provider.image_owners` in a config.
    pub image_owners: Vec<String>,
    /// Keep nodes for reuse (`provider.cache_stopped_nodes`): `terminate_nodes` stops
    /// on-demand instances instead of terminating them, and `create_nodes` starts
    /// stopped instances of the same node kind, node type and launch hash before it
    /// launches new ones. Spot instances are always terminated. Default `false` (also
    /// when the key is absent from the config; CloudTik's code defaults to `true`): a
    /// stopped instance still pays for its volumes, and the workspace cannot be
    /// deleted while it exists (see
    /// [`AwsNodeProvider::terminate_stopped_nodes`](crate::aws::AwsNodeProvider::terminate_stopped_nodes)).
    pub cache_stopped_nodes: bool,
    /// After a spot capacity or price error for an instance type, launches of that type
    /// that asked for spot only because of [`prefer_spot`](Self::prefer_spot) go
    /// on-demand directly for this long, instead of asking EC2 for spot again on every
    /// controller pass. Default 5 minutes; zero asks for spot every time.
    pub spot_backoff: Duration,
    /// How long the first of concurrent `set_node_tags` calls waits for others to join
    /// it, so that all of them are sent as one `CreateTags` per distinct (key, value).
    /// Default 100 ms (see [`DEFAULT_TAG_BATCH_WINDOW`]); zero still joins the calls
    /// already queued.
    pub tag_batch_window: Duration,
    /// The name pattern (`name` filter of `DescribeImages`) of the default image.
    /// Default: [`DEFAULT_IMAGE_NAME`]; `provider.image_name` in a config.
    pub image_name: String,
}

/// The default [`AwsSettings::tag_batch_window`]: 100 ms. CloudTik waits 1 s; node
/// setups that finish in the same controller pass call `set_node_tags` within a few
/// milliseconds of each other, so 100 ms gathers them while adding little latency to a
/// lone call (the CLI's head launch, a single node's status change).
pub const DEFAULT_TAG_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// The default [`AwsSettings::spot_backoff`]: 5 minutes.
pub const DEFAULT_SPOT_BACKOFF: Duration = Duration::from_secs(300);

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
            cache_stopped_nodes: false,
            spot_backoff: DEFAULT_SPOT_BACKOFF,
            tag_batch_window: DEFAULT_TAG_BATCH_WINDOW,
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
        settings.cache_stopped_nodes = config.cache_stopped_nodes.unwrap_or(false);
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

    /// Keeps stopped nodes for reuse (see [`cache_stopped_nodes`](Self::cache_stopped_nodes)).
    #[must_use]
    pub fn with_cache_stopped_nodes(mut self, cache: bool) -> Self {
        self.cache_stopped_nodes = cache;
        self
    }

    /// Sets how long a spot shortage of an instance type sends `prefer_spot` launches
    /// of that type on-demand (see [`spot_backoff`](Self::spot_backoff)).
    #[must_use]
    pub fn with_spot_backoff(mut self, backoff: Duration) -> Self {
        self.spot_backoff = backoff;
        self
    }

    /// Sets how long concurrent `set_node_tags` calls are gathered (see
    /// [`tag_batch_window`](Self::tag_batch_window)).
    #[must_use]
    pub fn with_tag_batch_window(mut self, window: Duration) -> Self {
        self.tag_batch_window = window;
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
