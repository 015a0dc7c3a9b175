//! [`AwsNodeProvider`]: the nodes of one cluster as EC2 instances.

mod instance_types;
mod instances;
mod launch;
mod tagging;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceLifecycleType,
    InstanceMarketOptionsRequest, InstanceStateName, InstanceType, MarketType, ResourceType,
    SpotInstanceType, Tag, TagSpecification,
};
use cloudtik_core::node::tags;
use cloudtik_core::{
    Error, ErrorKind, LaunchOutcome, LaunchRequest, NodeId, NodeInfo, NodeProvider, NodeState,
    ProviderCapabilities, Result, TagUpdate, Tags,
};

use self::instances::{Action, split_for_cache};
use self::launch::SpotShortages;
use self::tagging::{TagQueue, duplicate};
use super::call::{Call, Calls, SdkFuture, filter};
use super::errors::ec2_code;
use super::node_config::{BlockDeviceMapping, Ec2NodeConfig, SpotMarketOptions};
use super::{AwsSettings, EC2_BATCH, PROVIDER_TYPE, ec2_client};

/// Tags that name the node's place; `set_node_tags` may not change them.
const IDENTITY_TAGS: [&str; 2] = [tags::CLUSTER_NAME, tags::LAUNCH_TOKEN];
/// EC2's tag that consoles show as the instance's name; set from `cloudtik-node-name`.
const NAME_TAG: &str = "Name";
/// Most values one `DescribeInstances` filter takes.
const FILTER_VALUES: usize = 200;
/// The longest launch token: EC2's `ClientToken` holds 64 characters and the provider
/// appends `-<existing>-<subnet>` (and `s` for a spot launch).
const MAX_TOKEN_LEN: usize = 40;
/// States of instances that are listed.
const LISTED_STATES: [&str; 2] = ["pending", "running"];
/// Most instance types one `DescribeInstanceTypes` call takes.
const DESCRIBE_TYPES_BATCH: usize = 100;
/// States of instances that can still be terminated or tagged.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// States of instances kept by `cache_stopped_nodes` (or stopped by someone else).
const STOPPED_STATES: [&str; 2] = ["stopping", "stopped"];
/// The tags a stopped instance must share with a launch request to be reused: the same
/// node kind, node type and launch hash (CloudTik's rule).
const REUSE_TAGS: [&str; 3] = [tags::NODE_KIND, tags::LAUNCH_CONFIG, tags::USER_NODE_TYPE];

/// The nodes of one cluster as EC2 instances.
///
/// See the [module docs](super) for the calls made, launch tokens and retries. Cheap to
/// clone; clones share the EC2 client.
///
/// ```no_run
/// # async fn demo() -> cloudtik_core::Result<()> {
/// use cloudtik_core::{LaunchRequest, NodeProvider, Tags};
/// use cloudtik_providers::aws::{AwsNodeProvider, AwsSettings};
///
/// let provider = AwsNodeProvider::new("demo", AwsSettings::new("us-east-1")).await?;
/// let config = serde_json::json!({"InstanceType": "m5.large", "ImageId": "ami-0abcdef1234567890"});
/// let outcome = provider
///     .create_nodes(&LaunchRequest::new("worker.default", config, Tags::new(), 2))
///     .await?;
/// println!("{} nodes", outcome.nodes.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AwsNodeProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: String,
    settings: AwsSettings,
    /// The EC2 client, retries and client-side rate limit (shared with
    /// [`AwsNodeProvider::for_cluster`]).
    calls: Calls,
    /// The default image, looked up once (shared with [`AwsNodeProvider::for_cluster`]).
    default_image: Arc<tokio::sync::OnceCell<String>>,
    /// Ids of this cluster's instances seen alive in listings and launches:
    /// `set_node_tags` describes only the ids not in here. An unfiltered listing
    /// replaces the set; filtered listings and launches add to it; terminates remove.
    known: Mutex<HashSet<String>>,
    /// When spot launches of each instance type last lacked capacity or price.
    spot_shortages: Mutex<SpotShortages>,
    /// `set_node_tags` calls waiting to be sent together.
    tag_queue: Mutex<TagQueue>,
    /// One reuse of stopped instances at a time, so two launches do not start the same
    /// instance for two tokens.
    reuse: tokio::sync::Mutex<()>,
}

impl Inner {
    fn new(
        cluster: &str,
        settings: AwsSettings,
        calls: Calls,
        default_image: Arc<tokio::sync::OnceCell<String>>,
    ) -> Self {
        Inner {
            cluster: cluster.to_string(),
            settings,
            calls,
            default_image,
            known: Mutex::default(),
            spot_shortages: Mutex::default(),
            tag_queue: Mutex::default(),
            reuse: tokio::sync::Mutex::new(()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AwsNodeProvider {
    /// A provider for `cluster`, with credentials from the standard AWS chain and the
    /// region and endpoint of `settings`.
    pub async fn new(cluster: &str, settings: AwsSettings) -> Result<Self> {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(cluster, &sdk_config, settings)
    }

    /// A provider for the cluster of a cluster config (`cluster_name`, and
    /// `provider.region` / `provider.endpoint_url`).
    pub async fn from_cluster_config(config: &cloudtik_core::config::ClusterConfig) -> Result<Self> {
        let aws: crate::provider_config::AwsProviderConfig = config.provider.parse()?;
        Self::new(&config.cluster_name, AwsSettings::from_provider_config(&aws)).await
    }

    /// A provider for `cluster` from an SDK config the caller loaded (credentials,
    /// HTTP client). See [`from_ec2_config`](Self::from_ec2_config) for what `settings`
    /// overrides.
    pub fn from_sdk_config(
        cluster: &str,
        sdk_config: &aws_config::SdkConfig,
        settings: AwsSettings,
    ) -> Result<Self> {
        Self::from_ec2_config(cluster, aws_sdk_ec2::config::Builder::from(sdk_config), settings)
    }

    /// A provider for `cluster` from an EC2 client config (e.g. with interceptors). The
    /// region and endpoint of `settings` win over the config's; the SDK's retries are
    /// switched off in favour of `settings.retry`, and time-outs are set (10 s to
    /// connect, 60 s per attempt).
    pub fn from_ec2_config(
        cluster: &str,
        builder: aws_sdk_ec2::config::Builder,
        settings: AwsSettings,
    ) -> Result<Self> {
        check_cluster_name(cluster)?;
        let calls = Calls::new(
            ec2_client(builder, &settings),
            settings.retry,
            settings.rate_limits,
        )
        .with_page_size(settings.page_size);
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner::new(cluster, settings, calls, Arc::default())),
        })
    }

    /// A provider for another cluster, sharing the client and settings.
    pub fn for_cluster(&self, cluster: &str) -> Result<Self> {
        check_cluster_name(cluster)?;
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner::new(
                cluster,
                self.inner.settings.clone(),
                self.inner.calls.clone(),
                self.inner.default_image.clone(),
            )),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &AwsSettings {
        &self.inner.settings
    }

    /// The EC2 client (shared by clones).
    pub(crate) fn ec2(&self) -> &Client {
        self.inner.calls.ec2()
    }

    /// The call layer (shared by clones).
    pub(crate) fn calls(&self) -> &Calls {
        &self.inner.calls
    }

    /// Runs one EC2 call with the provider's retry policy and rate limit, classifying
    /// its errors.
    pub(crate) async fn call<T, F, Fut>(&self, operation: &'static str, call: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        self.inner.calls.run(Call::ec2(operation, call), f).await
    }

    /// The cluster's instances in one of `states` that also match `filters` (all
    /// pages): listed with the cluster's tag, and kept only when they carry it exactly.
    async fn cluster_instances(
        &self,
        operation: &'static str,
        states: &[&str],
        filters: impl IntoIterator<Item = Filter>,
    ) -> Result<Vec<Instance>> {
        let states = filter("instance-state-name", states.iter().copied());
        self.inner
            .calls
            .tagged(
                operation,
                (tags::CLUSTER_NAME, &self.inner.cluster),
                std::iter::once(states).chain(filters),
            )
            .await
            .map_err(|e| e.with_context("cluster", &self.inner.cluster))
    }
}

#[async_trait]
impl NodeProvider for AwsNodeProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn cluster_name(&self) -> &str {
        &self.inner.cluster
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
            .with_native_idempotency_token(true)
            .with_max_launch_batch(EC2_BATCH)
            .with_max_terminate_batch(EC2_BATCH)
            .with_max_tag_batch(EC2_BATCH)
            .with_spot(true)
            .with_stop_nodes(self.inner.settings.cache_stopped_nodes)
    }

    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        let tag_filters: Vec<Filter> = filters
            .iter()
            .map(|(k, v)| filter(format!("tag:{k}"), [v.clone()]))
            .collect();
        let instances = self
            .cluster_instances("list_nodes", &LISTED_STATES, tag_filters)
            .await?;
        // EC2 filter values are patterns (`*`, `?`); apply the filters exactly again.
        let nodes: Vec<NodeInfo> = instances
            .iter()
            .filter_map(node_info)
            .filter(|n| matches!(n.state, NodeState::Pending | NodeState::Running) && n.matches(filters))
            .collect();
        let mut known = self.inner.known();
        if filters.is_empty() {
            known.clear();
        }
        known.extend(nodes.iter().map(|n| n.id.clone()));
        Ok(nodes)
    }

    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        self.launch(request).await
    }

    /// Sets tags, coalescing concurrent calls: the first call waits
    /// [`AwsSettings::tag_batch_window`] for others, then the updates of every call
    /// queued meanwhile go out together, one `CreateTags` per distinct (key, value)
    /// (see the module docs). Each caller gets its own result. The identity tags
    /// (cluster name, launch token) are refused.
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        self.queue_tags(updates).await
    }

    /// Terminates nodes; with [`AwsSettings::cache_stopped_nodes`] stops them instead,
    /// except spot instances (EC2 cannot stop one-time spot instances), which are
    /// terminated. Instances already stopping or stopped are left as they are; a pending
    /// instance EC2 refuses to stop (`IncorrectInstanceState`) is terminated.
    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        const OP: &str = "terminate_nodes";
        if ids.is_empty() {
            return Ok(());
        }
        // Only instances of this cluster that still live are terminated; ids that are
        // gone (or never were this cluster's) are skipped, which makes terminate
        // idempotent and keeps other clusters' instances safe.
        let live = self.live_instances(OP, ids, &LIVE_STATES).await?;
        {
            let mut known = self.inner.known();
            for id in ids {
                known.remove(id);
            }
        }
        let (stop, terminate) = split_for_cache(&live, self.inner.settings.cache_stopped_nodes);
        for chunk in stop.chunks(EC2_BATCH) {
            match self.act_chunked(OP, Action::Stop, chunk).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    tracing::debug!(error = %cloudtik_core::Report(&e), "EC2 refused to stop instances; terminating them");
                    self.act_chunked(OP, Action::Terminate, chunk).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.act_chunked(OP, Action::Terminate, &terminate).await
    }
}

fn check_cluster_name(cluster: &str) -> Result<()> {
    if cluster.is_empty() || cluster.len() > 255 {
        return Err(Error::config(
            "cluster_name",
            "must be 1 to 255 characters (an EC2 tag value)",
        ));
    }
    Ok(())
}

/// An instance as a node; `None` without an id.
fn node_info(instance: &Instance) -> Option<NodeInfo> {
    let id = instance.instance_id()?.to_string();
    let state = match instance.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Running) => NodeState::Running,
        Some(InstanceStateName::Stopping | InstanceStateName::Stopped) => NodeState::Stopped,
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => NodeState::Terminated,
        _ => NodeState::Pending,
    };
    let tags = instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect();
    Some(
        NodeInfo::new(id, state, tags)
            .with_internal_ip(instance.private_ip_address().map(str::to_string))
            .with_external_ip(instance.public_ip_address().map(str::to_string))
            .with_instance_type(instance.instance_type().map(|t| t.as_str().to_string())),
    )
}
