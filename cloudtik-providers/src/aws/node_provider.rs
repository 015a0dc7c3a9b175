//! [`AwsNodeProvider`]: the nodes of one cluster as EC2 instances.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
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

use super::errors::{ec2_code, is_rate_limited};
use super::node_config::{BlockDeviceMapping, Ec2NodeConfig, SpotMarketOptions};
use super::rate_limit::RateLimiter;
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
    client: Client,
    /// The default image, looked up once (shared with [`AwsNodeProvider::for_cluster`]).
    default_image: Arc<tokio::sync::OnceCell<String>>,
    /// The client-side rate limit (shared with [`AwsNodeProvider::for_cluster`]).
    limiter: Arc<RateLimiter>,
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
        client: Client,
        default_image: Arc<tokio::sync::OnceCell<String>>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Inner {
            cluster: cluster.to_string(),
            settings,
            client,
            default_image,
            limiter,
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

/// How a launch asks EC2 for instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Market {
    /// On-demand instances.
    OnDemand,
    /// Spot because of `prefer_spot`: a spot capacity or price error launches the rest
    /// on-demand.
    SpotOrOnDemand,
    /// Spot because the node type's `node_config.InstanceMarketOptions` says so: no
    /// fallback.
    SpotOnly,
}

/// The market a launch starts in: the node type's own spot request wins; otherwise
/// `prefer_spot` asks for spot unless a spot shortage of the instance type was seen
/// less than `backoff` before `now`.
fn initial_market(
    explicit_spot: bool,
    prefer_spot: bool,
    last_shortage: Option<Instant>,
    now: Instant,
    backoff: Duration,
) -> Market {
    if explicit_spot {
        Market::SpotOnly
    } else if prefer_spot && last_shortage.is_none_or(|at| now.saturating_duration_since(at) >= backoff) {
        Market::SpotOrOnDemand
    } else {
        Market::OnDemand
    }
}

/// The last spot shortage (capacity or price error) per instance type.
#[derive(Debug, Default)]
struct SpotShortages(HashMap<String, Instant>);

/// `set_node_tags` calls gathered for one batch.
#[derive(Debug, Default)]
struct TagQueue {
    /// Each call's updates and where its result goes.
    waiting: Vec<(Vec<TagUpdate>, tokio::sync::oneshot::Sender<Result<()>>)>,
    /// A task is gathering calls and will send them.
    gathering: bool,
}

/// What a batch of tag writes did to each node.
#[derive(Debug, Default)]
struct TagWrites {
    /// Nodes that are not live instances of the cluster.
    missing: BTreeSet<String>,
    /// Nodes whose tags could not be written, with the error (shared by the nodes of
    /// one call).
    failed: BTreeMap<String, Arc<Error>>,
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
        let client = ec2_client(builder, &settings);
        let limiter = Arc::new(RateLimiter::new(settings.rate_limits));
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner::new(cluster, settings, client, Arc::default(), limiter)),
        })
    }

    /// A provider for another cluster, sharing the client and settings.
    pub fn for_cluster(&self, cluster: &str) -> Result<Self> {
        check_cluster_name(cluster)?;
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner::new(
                cluster,
                self.inner.settings.clone(),
                self.inner.client.clone(),
                self.inner.default_image.clone(),
                self.inner.limiter.clone(),
            )),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &AwsSettings {
        &self.inner.settings
    }

    /// The resources of EC2 instance types, from `DescribeInstanceTypes` (one call per
    /// 100 types; duplicates are asked for once): `CPU` is the default vCPU count,
    /// `memory` the memory in bytes (MiB × 1024 × 1024) and `GPU` the sum of the GPU
    /// counts, when the type has GPUs.
    ///
    /// A type EC2 does not know is a [`NotFound`](ErrorKind::NotFound) error with the
    /// unknown types in the `instance_types` context; to name them, each type of a call
    /// EC2 refused with `InvalidInstanceType` is asked for on its own.
    pub async fn instance_type_resources(
        &self,
        instance_types: &[String],
    ) -> Result<BTreeMap<String, cloudtik_core::Resources>> {
        let wanted: Vec<String> = instance_types
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut found = BTreeMap::new();
        let mut unknown = Vec::new();
        for chunk in wanted.chunks(DESCRIBE_TYPES_BATCH) {
            match self.describe_instance_types(chunk).await {
                Ok(answered) => found.extend(answered),
                Err(e) if is_invalid_instance_type(&e) => {
                    for t in chunk {
                        match self.describe_instance_types(std::slice::from_ref(t)).await {
                            Ok(answered) => found.extend(answered),
                            Err(e) if is_invalid_instance_type(&e) => unknown.push(t.clone()),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unknown.extend(wanted.iter().filter(|t| !found.contains_key(*t)).cloned());
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "EC2 does not know the instance type(s) {} in region {}",
                    unknown.join(", "),
                    self.inner.settings.region
                ),
            )
            .with_operation("instance_type_resources")
            .with_context("call", "DescribeInstanceTypes")
            .with_context("instance_types", unknown.join(",")));
        }
        Ok(found)
    }

    /// One `DescribeInstanceTypes` call (all pages) for `types`.
    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<BTreeMap<String, cloudtik_core::Resources>> {
        use cloudtik_core::resources::{CPU, GPU, MEMORY};
        let mut out = BTreeMap::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = self
                .inner
                .client
                .describe_instance_types()
                .set_instance_types(Some(
                    types.iter().map(|t| InstanceType::from(t.as_str())).collect(),
                ))
                .set_next_token(next_token.clone());
            let page = self
                .call("instance_type_resources", "DescribeInstanceTypes", || {
                    request.clone().send()
                })
                .await
                .map_err(|e| e.with_context("instance_types", types.join(",")))?;
            for info in page.instance_types() {
                let Some(name) = info.instance_type() else {
                    continue;
                };
                let mut r = cloudtik_core::Resources::new();
                if let Some(v) = info.v_cpu_info().and_then(|v| v.default_v_cpus()) {
                    r.set(CPU, f64::from(v));
                }
                if let Some(mib) = info.memory_info().and_then(|m| m.size_in_mib()) {
                    r.set(MEMORY, (mib * 1024 * 1024) as f64);
                }
                let gpus: i32 = info
                    .gpu_info()
                    .map(|g| g.gpus().iter().filter_map(|d| d.count()).sum())
                    .unwrap_or(0);
                if gpus > 0 {
                    r.set(GPU, f64::from(gpus));
                }
                out.insert(name.as_str().to_string(), r);
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next_token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Fills in the `resources` of each node type of `config` that sets none, from
    /// `DescribeInstanceTypes` for its `node_config.InstanceType` (one call for all the
    /// types, see [`instance_type_resources`](Self::instance_type_resources)). Types
    /// with `resources` set are left as they are. A node type without an
    /// `InstanceType`, or with one EC2 does not know, is an
    /// [`InvalidConfig`](ErrorKind::InvalidConfig) error at
    /// `available_node_types.<name>.node_config.InstanceType`.
    pub async fn bootstrap_resources(&self, config: &mut cloudtik_core::config::ClusterConfig) -> Result<()> {
        let mut needed: BTreeMap<String, String> = BTreeMap::new();
        for (name, t) in &config.available_node_types {
            if t.resources.is_some() {
                continue;
            }
            let path = format!("available_node_types.{name}.node_config.InstanceType");
            match t.node_config.get("InstanceType") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    needed.insert(name.clone(), s.clone());
                }
                _ => {
                    return Err(Error::config(
                        path,
                        "an instance type is required to know the node type's resources (or set `resources`)",
                    ));
                }
            }
        }
        if needed.is_empty() {
            return Ok(());
        }
        let types: Vec<String> = needed.values().cloned().collect();
        let resources = match self.instance_type_resources(&types).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound && e.context_value("instance_types").is_some() => {
                let unknown: BTreeSet<&str> = e
                    .context_value("instance_types")
                    .unwrap_or_default()
                    .split(',')
                    .collect();
                let Some((name, t)) = needed.iter().find(|(_, t)| unknown.contains(t.as_str())) else {
                    return Err(e);
                };
                return Err(Error::config(
                    format!("available_node_types.{name}.node_config.InstanceType"),
                    format!(
                        "EC2 does not know the instance type `{t}` in region {}",
                        self.inner.settings.region
                    ),
                )
                .with_context("call", "DescribeInstanceTypes"));
            }
            Err(e) => return Err(e),
        };
        for (name, t) in &needed {
            if let (Some(node_type), Some(r)) = (config.available_node_types.get_mut(name), resources.get(t))
            {
                node_type.resources = Some(r.clone());
            }
        }
        Ok(())
    }

    /// The image launched when a `node_config` has no `ImageId`: the newest (by
    /// `CreationDate`) available x86_64 image named like [`AwsSettings::image_name`] owned
    /// by [`AwsSettings::image_owners`], looked up once per provider. None found is
    /// `NotFound`, naming the region and the filter.
    pub async fn default_image_id(&self) -> Result<String> {
        self.inner
            .default_image
            .get_or_try_init(|| async {
                let owners = &self.inner.settings.image_owners;
                let name = &self.inner.settings.image_name;
                let answer = self
                    .call("default_image", "DescribeImages", || {
                        self.inner
                            .client
                            .describe_images()
                            .set_owners(Some(owners.clone()))
                            .filters(filter("name", [name.as_str()]))
                            .filters(filter("architecture", ["x86_64"]))
                            .filters(filter("state", ["available"]))
                            .send()
                    })
                    .await?;
                answer
                    .images()
                    .iter()
                    .filter_map(|i| Some((i.creation_date()?, i.image_id()?)))
                    .max()
                    .map(|(_, id)| id.to_string())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "no default image in region {}: DescribeImages found no available \
                                 x86_64 image named {name} owned by {}; set \
                                 node_config.ImageId",
                                self.inner.settings.region,
                                owners.join(", ")
                            ),
                        )
                        .with_operation("default_image")
                    })
            })
            .await
            .cloned()
    }

    /// The EC2 client (shared by clones).
    pub(crate) fn ec2(&self) -> &Client {
        &self.inner.client
    }

    /// Runs one EC2 call with the provider's retry policy, classifying its errors.
    pub(crate) async fn call<T, E, F, Fut>(
        &self,
        operation: &'static str,
        call: &'static str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.inner
            .settings
            .retry
            .run(|| {
                let fut = f();
                let limiter = &self.inner.limiter;
                async move {
                    limiter.acquire(call).await;
                    fut.await.map_err(|e| limiter.classify(e, operation, call))
                }
            })
            .await
    }

    /// Every instance that matches `filters`, reading all pages.
    async fn describe(&self, operation: &'static str, filters: Vec<Filter>) -> Result<Vec<Instance>> {
        let mut instances = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = self
                .inner
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .max_results(self.inner.settings.page_size)
                .set_next_token(next_token.clone());
            let page = self
                .call(operation, "DescribeInstances", || request.clone().send())
                .await
                .map_err(|e| e.with_context("cluster", &self.inner.cluster))?;
            for reservation in page.reservations() {
                instances.extend(reservation.instances().iter().cloned());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next_token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(instances)
    }

    /// The ids among `ids` that are instances of this cluster in one of `states`.
    async fn existing_ids(
        &self,
        operation: &'static str,
        ids: &[String],
        states: &[&str],
    ) -> Result<BTreeSet<String>> {
        Ok(self
            .live_instances(operation, ids, states)
            .await?
            .into_keys()
            .collect())
    }

    /// The instances among `ids` that are this cluster's, in one of `states`, by id.
    async fn live_instances(
        &self,
        operation: &'static str,
        ids: &[String],
        states: &[&str],
    ) -> Result<BTreeMap<String, Instance>> {
        let mut found = BTreeMap::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filters = vec![
                filter("instance-id", chunk.iter().cloned()),
                filter(
                    format!("tag:{}", tags::CLUSTER_NAME),
                    [self.inner.cluster.clone()],
                ),
                filter("instance-state-name", states.iter().copied()),
            ];
            for instance in self.describe(operation, filters).await? {
                if let Some(id) = instance.instance_id() {
                    found.insert(id.to_string(), instance);
                }
            }
        }
        Ok(found)
    }

    /// The cluster's stopped (and stopping) instances: the nodes `cache_stopped_nodes`
    /// keeps for reuse, and any the cluster's owner stopped. One `DescribeInstances`
    /// listing; `list_nodes` never shows them.
    pub async fn stopped_nodes(&self) -> Result<Vec<NodeInfo>> {
        let filters = vec![
            filter(
                format!("tag:{}", tags::CLUSTER_NAME),
                [self.inner.cluster.clone()],
            ),
            filter("instance-state-name", STOPPED_STATES),
        ];
        Ok(self
            .describe("stopped_nodes", filters)
            .await?
            .iter()
            .filter_map(node_info)
            .filter(|n| n.tag(tags::CLUSTER_NAME) == Some(self.inner.cluster.as_str()))
            .collect())
    }

    /// Terminates the cluster's stopped instances for good and returns their ids.
    ///
    /// With [`AwsSettings::cache_stopped_nodes`], `terminate_nodes` (the autoscaler
    /// scaling down, `cloudtik stop`) only stops instances; this is what removes them,
    /// e.g. before the workspace is deleted (which is refused while they exist).
    /// `TerminateInstances` in chunks of 1,000; instances gone meanwhile are skipped.
    pub async fn terminate_stopped_nodes(&self) -> Result<Vec<NodeId>> {
        const OP: &str = "terminate_stopped_nodes";
        let ids: Vec<NodeId> = self.stopped_nodes().await?.into_iter().map(|n| n.id).collect();
        self.act_chunked(OP, Action::Terminate, &ids).await?;
        Ok(ids)
    }

    /// Runs `action` on `ids` in chunks of 1,000. A `NotFound` answer (an instance
    /// vanished since it was described) is retried once with the instances that still
    /// live; a second one means they are gone.
    async fn act_chunked(&self, op: &'static str, action: Action, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(EC2_BATCH) {
            let mut targets = chunk.to_vec();
            for attempt in 0..2 {
                match self.act(op, action, &targets).await {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        if attempt == 1 {
                            break;
                        }
                        targets = self
                            .existing_ids(op, &targets, &LIVE_STATES)
                            .await?
                            .into_iter()
                            .collect();
                        if targets.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        return Err(e
                            .with_context("cluster", &self.inner.cluster)
                            .with_context("nodes", targets.join(",")));
                    }
                }
            }
        }
        Ok(())
    }

    /// One `TerminateInstances`, `StopInstances` or `StartInstances` call on `ids`.
    async fn act(&self, op: &'static str, action: Action, ids: &[String]) -> Result<()> {
        let ids = Some(ids.to_vec());
        let client = &self.inner.client;
        match action {
            Action::Terminate => {
                let request = client.terminate_instances().set_instance_ids(ids);
                self.call(op, "TerminateInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
            Action::Stop => {
                let request = client.stop_instances().set_instance_ids(ids);
                self.call(op, "StopInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
            Action::Start => {
                let request = client.start_instances().set_instance_ids(ids);
                self.call(op, "StartInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
        }
    }

    /// With `cache_stopped_nodes`: starts up to `wanted` of the cluster's stopped
    /// instances whose node kind, launch hash and node type equal the request's, after
    /// tagging them with `launch_tags` (the new token among them). Instances already
    /// tagged with the request's token come first: they are the ones a launch that
    /// stopped between `CreateTags` and `StartInstances` had picked. Returns the
    /// started nodes; none when the request lacks one of the three tags.
    async fn reuse_stopped(
        &self,
        request: &LaunchRequest,
        launch_tags: &Tags,
        wanted: usize,
    ) -> Result<Vec<NodeInfo>> {
        const OP: &str = "create_nodes";
        let mut ec2_filters = vec![
            filter(
                format!("tag:{}", tags::CLUSTER_NAME),
                [self.inner.cluster.clone()],
            ),
            filter("instance-state-name", ["stopped"]),
        ];
        for key in REUSE_TAGS {
            let Some(value) = request.tags.get(key) else {
                return Ok(Vec::new());
            };
            ec2_filters.push(filter(format!("tag:{key}"), [value.clone()]));
        }
        let _one_at_a_time = self.inner.reuse.lock().await;
        let mut candidates: Vec<NodeInfo> = self
            .describe(OP, ec2_filters)
            .await?
            .iter()
            .filter_map(node_info)
            .filter(|n| {
                n.state == NodeState::Stopped
                    && n.tag(tags::CLUSTER_NAME) == Some(self.inner.cluster.as_str())
                    && REUSE_TAGS
                        .iter()
                        .all(|k| n.tag(k) == request.tags.get(*k).map(String::as_str))
            })
            .collect();
        // The token's own first, then by id (a stable choice).
        candidates.sort_by_key(|n| {
            (
                n.tag(tags::LAUNCH_TOKEN) != Some(request.token.as_str()),
                n.id.clone(),
            )
        });
        candidates.truncate(wanted);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let per_node: BTreeMap<String, Tags> = candidates
            .iter()
            .map(|n| (n.id.clone(), launch_tags.clone()))
            .collect();
        self.inner.known().extend(per_node.keys().cloned());
        let writes = self.write_tags(OP, &per_node).await;
        if let Some(e) = writes.failed.values().next() {
            return Err(duplicate(e));
        }
        candidates.retain(|n| !writes.missing.contains(&n.id));
        let ids: Vec<String> = candidates.iter().map(|n| n.id.clone()).collect();
        self.act(OP, Action::Start, &ids)
            .await
            .map_err(|e| e.with_context("nodes", ids.join(",")))?;
        tracing::debug!(nodes = %ids.join(","), "started stopped instances for a launch");
        for node in &mut candidates {
            node.state = NodeState::Pending;
            node.tags.extend(launch_tags.clone());
        }
        Ok(candidates)
    }

    /// Writes tags: one `CreateTags` per distinct (key, value) across the nodes, in
    /// chunks of 1,000 (`cloudtik-node-name` also sets `Name`). Ids the provider has not
    /// seen alive are described first (one call per 200); those that are not live
    /// instances of the cluster are `missing`. A `CreateTags` that EC2 refuses because an
    /// instance is gone (`InvalidInstanceID.NotFound`) is sent again once without the
    /// gone ones.
    async fn write_tags(&self, op: &'static str, per_node: &BTreeMap<String, Tags>) -> TagWrites {
        let mut writes = TagWrites::default();
        let unknown: Vec<String> = {
            let known = self.inner.known();
            per_node
                .keys()
                .filter(|id| !known.contains(*id))
                .cloned()
                .collect()
        };
        if !unknown.is_empty() {
            match self.existing_ids(op, &unknown, &LIVE_STATES).await {
                Ok(found) => {
                    writes
                        .missing
                        .extend(unknown.iter().filter(|id| !found.contains(*id)).cloned());
                    self.inner.known().extend(found);
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for id in per_node.keys() {
                        writes.failed.insert(id.clone(), e.clone());
                    }
                    return writes;
                }
            }
        }
        let mut groups: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for (id, node_tags) in per_node.iter().filter(|(id, _)| !writes.missing.contains(*id)) {
            for (k, v) in node_tags {
                groups
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(id.clone());
                if k == tags::NODE_NAME && !node_tags.contains_key(NAME_TAG) {
                    groups.entry((NAME_TAG, v.as_str())).or_default().push(id.clone());
                }
            }
        }
        for ((key, value), nodes) in &groups {
            for chunk in nodes.chunks(EC2_BATCH) {
                let mut targets: Vec<String> = chunk
                    .iter()
                    .filter(|id| !writes.missing.contains(*id))
                    .cloned()
                    .collect();
                for attempt in 0..2 {
                    if targets.is_empty() {
                        break;
                    }
                    match self.create_tags(op, key, value, &targets).await {
                        Ok(()) => break,
                        Err(e) if e.kind() == ErrorKind::NotFound && attempt == 0 => {
                            match self.existing_ids(op, &targets, &LIVE_STATES).await {
                                Ok(found) => {
                                    let mut known = self.inner.known();
                                    for id in targets.iter().filter(|id| !found.contains(*id)) {
                                        known.remove(id);
                                        writes.missing.insert(id.clone());
                                    }
                                    targets.retain(|id| found.contains(id));
                                }
                                Err(e) => {
                                    let e = Arc::new(e);
                                    for id in &targets {
                                        writes.failed.insert(id.clone(), e.clone());
                                    }
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            let e = Arc::new(e);
                            for id in &targets {
                                writes.failed.insert(id.clone(), e.clone());
                            }
                            break;
                        }
                    }
                }
            }
        }
        writes
    }

    /// One `CreateTags` call setting `key` = `value` on `ids`.
    async fn create_tags(&self, op: &'static str, key: &str, value: &str, ids: &[String]) -> Result<()> {
        let request = self
            .inner
            .client
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .tags(Tag::builder().key(key).value(value).build());
        self.call(op, "CreateTags", || request.clone().send())
            .await
            .map(drop)
            .map_err(|e| {
                e.with_context("cluster", &self.inner.cluster)
                    .with_context("tag", key)
                    .with_context("nodes", ids.join(","))
            })
    }

    /// Sends the queued `set_node_tags` calls of one batch and answers each caller:
    /// later calls win over earlier ones for the same node and key; a caller fails only
    /// for its own nodes (`NotFound` naming its missing nodes, or the error of a
    /// `CreateTags` that carried one of its nodes).
    async fn send_tag_batch(&self, batch: Vec<(Vec<TagUpdate>, tokio::sync::oneshot::Sender<Result<()>>)>) {
        const OP: &str = "set_node_tags";
        let mut per_node: BTreeMap<String, Tags> = BTreeMap::new();
        for (updates, _) in &batch {
            for u in updates {
                per_node
                    .entry(u.node_id.clone())
                    .or_default()
                    .extend(u.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        tracing::debug!(
            calls = batch.len(),
            nodes = per_node.len(),
            "sending a batch of tag updates"
        );
        let writes = self.write_tags(OP, &per_node).await;
        for (updates, answer) in batch {
            let ids: BTreeSet<&str> = updates.iter().map(|u| u.node_id.as_str()).collect();
            let result = if let Some(e) = ids.iter().find_map(|id| writes.failed.get(*id)) {
                Err(duplicate(e))
            } else {
                let missing: Vec<&str> = ids
                    .iter()
                    .copied()
                    .filter(|id| writes.missing.contains(*id))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "no pending, running or stopped instance of cluster {} has id {}",
                            self.inner.cluster,
                            missing.join(", ")
                        ),
                    )
                    .with_operation(OP)
                    .with_context("nodes", missing.join(",")))
                }
            };
            // The caller may have gone (its future dropped): nothing to answer then.
            let _ = answer.send(result);
        }
    }

    /// The tags a launch sets: the request's, the cluster name, the token, and `Name`.
    fn launch_tags(&self, request: &LaunchRequest) -> Tags {
        let mut all = request.tags.clone();
        all.insert(tags::CLUSTER_NAME.to_string(), self.inner.cluster.clone());
        all.insert(tags::LAUNCH_TOKEN.to_string(), request.token.clone());
        if let Some(name) = request.tags.get(tags::NODE_NAME) {
            all.entry(NAME_TAG.to_string()).or_insert_with(|| name.clone());
        }
        all
    }

    /// One `RunInstances` call for up to `count` instances in `subnet`, as spot
    /// instances with `spot`'s options when given.
    async fn run_instances(
        &self,
        config: &Ec2NodeConfig,
        subnet: Option<&str>,
        spot: Option<&SpotMarketOptions>,
        count: usize,
        client_token: &str,
        launch_tags: &Tags,
    ) -> Result<Vec<Instance>> {
        const OP: &str = "create_nodes";
        let max_count = i32::try_from(count).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot launch {count} instances in one call"),
            )
            .with_operation(OP)
        })?;
        let tag_list: Vec<Tag> = launch_tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let mut request = self
            .inner
            .client
            .run_instances()
            .set_image_id(config.image_id.clone())
            .instance_type(InstanceType::from(config.instance_type.as_str()))
            .min_count(1)
            .max_count(max_count)
            .client_token(client_token)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tag_list))
                    .build(),
            )
            .set_subnet_id(subnet.map(str::to_string))
            .set_key_name(config.key_name.clone())
            .set_user_data(config.user_data.clone())
            .set_ebs_optimized(config.ebs_optimized);
        if let Some(options) = spot {
            let mut market = InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot);
            if options != &SpotMarketOptions::default() {
                market = market.spot_options(
                    aws_sdk_ec2::types::SpotMarketOptions::builder()
                        .set_max_price(options.max_price.clone())
                        .set_spot_instance_type(
                            options.spot_instance_type.as_deref().map(SpotInstanceType::from),
                        )
                        .set_instance_interruption_behavior(
                            options
                                .instance_interruption_behavior
                                .as_deref()
                                .map(InstanceInterruptionBehavior::from),
                        )
                        .build(),
                );
            }
            request = request.instance_market_options(market.build());
        }
        for m in &config.block_device_mappings {
            request = request.block_device_mappings(block_device_mapping(m));
        }
        if !config.security_group_ids.is_empty() {
            request = request.set_security_group_ids(Some(config.security_group_ids.clone()));
        }
        if config.iam_instance_profile_arn.is_some() || config.iam_instance_profile_name.is_some() {
            request = request.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .set_arn(config.iam_instance_profile_arn.clone())
                    .set_name(config.iam_instance_profile_name.clone())
                    .build(),
            );
        }
        // Only throttled calls are repeated here (EC2 did not act on them). A call whose
        // answer was lost may have launched instances: create_nodes lists the token's
        // instances again before it asks for more.
        let output = self
            .inner
            .settings
            .retry
            .run_when(
                || {
                    let fut = request.clone().send();
                    let limiter = &self.inner.limiter;
                    async move {
                        limiter.acquire("RunInstances").await;
                        fut.await.map_err(|e| limiter.classify(e, OP, "RunInstances"))
                    }
                },
                is_rate_limited,
            )
            .await
            .map_err(|e| {
                e.with_context("cluster", &self.inner.cluster)
                    .with_context("instance_type", &config.instance_type)
                    .with_context("subnet", subnet.unwrap_or("default"))
                    .with_context("market", if spot.is_some() { "spot" } else { "on-demand" })
            })?;
        Ok(output.instances().to_vec())
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
        let mut ec2_filters = vec![
            filter(
                format!("tag:{}", tags::CLUSTER_NAME),
                [self.inner.cluster.clone()],
            ),
            filter("instance-state-name", LISTED_STATES),
        ];
        for (k, v) in filters {
            ec2_filters.push(filter(format!("tag:{k}"), [v.clone()]));
        }
        let instances = self.describe("list_nodes", ec2_filters).await?;
        // EC2 filter values are patterns (`*`, `?`); apply the filters exactly again.
        let nodes: Vec<NodeInfo> = instances
            .iter()
            .filter_map(node_info)
            .filter(|n| {
                matches!(n.state, NodeState::Pending | NodeState::Running)
                    && n.tag(tags::CLUSTER_NAME) == Some(self.inner.cluster.as_str())
                    && n.matches(filters)
            })
            .collect();
        let mut known = self.inner.known();
        if filters.is_empty() {
            known.clear();
        }
        known.extend(nodes.iter().map(|n| n.id.clone()));
        Ok(nodes)
    }

    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        const OP: &str = "create_nodes";
        let with_request = |e: Error| {
            e.with_operation(OP)
                .with_context("node_type", &request.node_type)
                .with_context("token", &request.token)
        };
        if request.count == 0 {
            return Ok(LaunchOutcome {
                nodes: Vec::new(),
                shortfall: None,
            });
        }
        if request.token.is_empty()
            || request.token.len() > MAX_TOKEN_LEN
            || !request
                .token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(with_request(Error::new(
                ErrorKind::InvalidConfig,
                format!("a launch token must be 1 to {MAX_TOKEN_LEN} ASCII letters, digits or dashes"),
            )));
        }
        let mut config = Ec2NodeConfig::from_value(&request.node_config).map_err(with_request)?;
        let launch_tags = self.launch_tags(request);

        let mut token_filter = Tags::new();
        token_filter.insert(tags::LAUNCH_TOKEN.to_string(), request.token.clone());
        let mut nodes = self.list_nodes(&token_filter).await.map_err(with_request)?;
        if nodes.len() >= request.count {
            return Ok(LaunchOutcome {
                nodes,
                shortfall: None,
            });
        }
        if self.inner.settings.cache_stopped_nodes {
            // A failed reuse is not the launch's failure: new instances are launched
            // instead (a re-run with the token finds what the reuse did start).
            match self
                .reuse_stopped(request, &launch_tags, request.count - nodes.len())
                .await
            {
                Ok(started) => {
                    for node in started {
                        if !nodes.iter().any(|n| n.id == node.id) {
                            nodes.push(node);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reusing stopped instances failed; launching new ones");
                }
            }
            if nodes.len() >= request.count {
                return Ok(LaunchOutcome {
                    nodes,
                    shortfall: None,
                });
            }
        }
        if config.image_id.is_none() {
            config.image_id = Some(self.default_image_id().await.map_err(with_request)?);
        }
        let subnets: Vec<Option<&str>> = if config.subnet_ids.is_empty() {
            vec![None]
        } else {
            config.subnet_ids.iter().map(|s| Some(s.as_str())).collect()
        };
        // EC2 may create fewer than MaxCount instances without an error; the rest is
        // asked for again until an error stops it (each call creates at least one
        // instance or fails, so this ends). A capacity error moves on to the next subnet.
        let mut subnet_index = 0;
        let last_shortage = self.spot_shortage(&config.instance_type);
        let mut market = initial_market(
            config.spot.is_some(),
            self.inner.settings.prefer_spot,
            last_shortage,
            Instant::now(),
            self.inner.settings.spot_backoff,
        );
        if market == Market::OnDemand && self.inner.settings.prefer_spot && config.spot.is_none() {
            tracing::debug!(
                instance_type = %config.instance_type,
                "a recent spot shortage of the instance type: launching on-demand"
            );
        }
        let default_spot = SpotMarketOptions::default();
        let mut failure = None;
        let mut lost_answers = 0;
        while nodes.len() < request.count {
            let have = nodes.len();
            let spot = match market {
                Market::OnDemand => None,
                Market::SpotOrOnDemand => Some(config.spot.as_ref().unwrap_or(&default_spot)),
                Market::SpotOnly => config.spot.as_ref(),
            };
            let suffix = if spot.is_some() { "s" } else { "" };
            let client_token = format!("{}-{have}-{subnet_index}{suffix}", request.token);
            match self
                .run_instances(
                    &config,
                    subnets[subnet_index],
                    spot,
                    request.count - have,
                    &client_token,
                    &launch_tags,
                )
                .await
            {
                Ok(instances) => {
                    failure = None;
                    for instance in &instances {
                        if let Some(mut node) = node_info(instance) {
                            // RunInstances need not answer the tags; they are the ones sent.
                            node.tags = launch_tags.clone();
                            if !nodes.iter().any(|n| n.id == node.id) {
                                nodes.push(node);
                            }
                        }
                    }
                    if nodes.len() == have {
                        failure = Some(with_request(
                            Error::new(
                                ErrorKind::Capacity,
                                format!(
                                    "EC2 RunInstances created no new instance of the {} missing",
                                    request.count - have
                                ),
                            )
                            .with_context("call", "RunInstances")
                            .with_context("instance_type", &config.instance_type),
                        ));
                        break;
                    }
                }
                Err(e) if market == Market::SpotOrOnDemand && is_spot_shortage(&e) => {
                    tracing::debug!(error = %e, "no spot capacity; launching the rest on-demand");
                    self.record_spot_shortage(&config.instance_type, Instant::now());
                    market = Market::OnDemand;
                }
                // The call failed in transit (its answer may be lost after EC2 launched
                // instances): wait, list the token's instances again, and go on with the
                // ones still missing. EC2 answers a repeated ClientToken with the first
                // call's instances; the listing covers servers that ignore ClientToken.
                Err(e)
                    if e.kind() == ErrorKind::Transient
                        && lost_answers < self.inner.settings.retry.max_retries =>
                {
                    lost_answers += 1;
                    tracing::debug!(error = %e, "RunInstances failed in transit; listing the launch token again");
                    tokio::time::sleep(self.inner.settings.retry.delay(lost_answers)).await;
                    for node in self.list_nodes(&token_filter).await.map_err(with_request)? {
                        if !nodes.iter().any(|n| n.id == node.id) {
                            nodes.push(node);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Capacity && subnet_index + 1 < subnets.len() => {
                    tracing::debug!(error = %e, "no capacity in a subnet; trying the next one");
                    subnet_index += 1;
                }
                Err(e) => {
                    failure = Some(with_request(e));
                    break;
                }
            }
        }
        self.inner.known().extend(nodes.iter().map(|n| n.id.clone()));
        if nodes.is_empty() {
            return Err(failure.unwrap_or_else(|| {
                with_request(Error::new(
                    ErrorKind::Unexpected,
                    "EC2 RunInstances answered no instances and no error",
                ))
            }));
        }
        let shortfall = if nodes.len() >= request.count {
            None
        } else {
            failure
        };
        Ok(LaunchOutcome { nodes, shortfall })
    }

    /// Sets tags, coalescing concurrent calls: the first call waits
    /// [`AwsSettings::tag_batch_window`] for others, then the updates of every call
    /// queued meanwhile go out together, one `CreateTags` per distinct (key, value)
    /// (see the module docs). Each caller gets its own result. The identity tags
    /// (cluster name, launch token) are refused.
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        const OP: &str = "set_node_tags";
        if updates.is_empty() {
            return Ok(());
        }
        for update in updates {
            if let Some(key) = IDENTITY_TAGS.iter().find(|k| update.tags.contains_key(**k)) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("tag {key} names the node's cluster or launch and cannot change after launch"),
                )
                .with_operation(OP)
                .with_context("node", &update.node_id));
            }
        }
        let (answer, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.inner.tag_queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push((updates.to_vec(), answer));
            !std::mem::replace(&mut queue.gathering, true)
        };
        if lead {
            // A task of its own, so that the batch is sent even if this caller's
            // future is dropped while it waits.
            let this = self.clone();
            tokio::spawn(async move {
                let window = this.inner.settings.tag_batch_window;
                if window.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(window).await;
                }
                let batch = {
                    let mut queue = this.inner.tag_queue.lock().unwrap_or_else(|e| e.into_inner());
                    queue.gathering = false;
                    std::mem::take(&mut queue.waiting)
                };
                this.send_tag_batch(batch).await;
            });
        }
        result.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "the batch of tag updates for cluster {} ended without an answer",
                    self.inner.cluster
                ),
            )
            .with_operation(OP))
        })
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
                    tracing::debug!(error = %e, "EC2 refused to stop instances; terminating them");
                    self.act_chunked(OP, Action::Terminate, chunk).await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.act_chunked(OP, Action::Terminate, &terminate).await
    }
}

/// Splits live instances into those to stop and those to terminate: with caching,
/// pending and running on-demand instances are stopped, spot instances terminated, and
/// stopping or stopped ones left alone; without, all are terminated.
fn split_for_cache(live: &BTreeMap<String, Instance>, cache: bool) -> (Vec<String>, Vec<String>) {
    if !cache {
        return (Vec::new(), live.keys().cloned().collect());
    }
    let mut stop = Vec::new();
    let mut terminate = Vec::new();
    for (id, instance) in live {
        let state = instance.state().and_then(|s| s.name());
        if matches!(
            state,
            Some(InstanceStateName::Stopping | InstanceStateName::Stopped)
        ) {
            continue;
        }
        if instance.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
            terminate.push(id.clone());
        } else {
            stop.push(id.clone());
        }
    }
    (stop, terminate)
}

/// An instance call of [`AwsNodeProvider::act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Terminate,
    Stop,
    Start,
}

/// A copy of `e` for one more caller (an [`Error`] is not `Clone`): kind, status,
/// message, operation, context and the source's text.
fn duplicate(e: &Error) -> Error {
    let mut copy = Error::new(e.kind(), e.message());
    copy = match e.status() {
        cloudtik_core::ErrorStatus::Permanent => copy.set_permanent(),
        cloudtik_core::ErrorStatus::Temporary => copy.set_temporary(),
        cloudtik_core::ErrorStatus::Persistent => copy.set_persistent(),
    };
    if let Some(op) = e.operation() {
        copy = copy.with_operation(op);
    }
    for (k, v) in e.context() {
        copy = copy.with_context(k, v);
    }
    if let Some(location) = e.location() {
        copy = copy.with_location(location.clone());
    }
    if let Some(source) = std::error::Error::source(e) {
        copy = copy.with_source(source.to_string());
    }
    copy
}

impl AwsNodeProvider {
    /// When a spot launch of `instance_type` last lacked capacity or price.
    fn spot_shortage(&self, instance_type: &str) -> Option<Instant> {
        self.inner
            .spot_shortages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(instance_type)
            .copied()
    }

    /// Remembers a spot shortage of `instance_type` at `at`.
    fn record_spot_shortage(&self, instance_type: &str, at: Instant) {
        self.inner
            .spot_shortages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .insert(instance_type.to_string(), at);
    }
}

/// Whether `e` is a spot launch's lack of capacity or price, after which the provider
/// launches on-demand.
fn is_spot_shortage(e: &Error) -> bool {
    e.kind() == ErrorKind::Capacity
        || ec2_code(e).is_some_and(|c| {
            matches!(
                c,
                "InsufficientInstanceCapacity" | "SpotMaxPriceTooLow" | "MaxSpotInstanceCountExceeded"
            )
        })
}

/// Whether `e` is EC2's refusal of an instance type name it does not know.
fn is_invalid_instance_type(e: &Error) -> bool {
    ec2_code(e).is_some_and(|c| c.starts_with("InvalidInstanceType"))
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

/// A `node_config.BlockDeviceMappings` item as the SDK's type.
fn block_device_mapping(m: &BlockDeviceMapping) -> aws_sdk_ec2::types::BlockDeviceMapping {
    let ebs = m.ebs.as_ref().map(|e| {
        aws_sdk_ec2::types::EbsBlockDevice::builder()
            .set_volume_size(e.volume_size)
            .set_volume_type(e.volume_type.as_deref().map(aws_sdk_ec2::types::VolumeType::from))
            .set_delete_on_termination(e.delete_on_termination)
            .set_iops(e.iops)
            .set_throughput(e.throughput)
            .set_encrypted(e.encrypted)
            .set_kms_key_id(e.kms_key_id.clone())
            .set_snapshot_id(e.snapshot_id.clone())
            .build()
    });
    aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name(&m.device_name)
        .set_virtual_name(m.virtual_name.clone())
        .set_no_device(m.no_device.clone())
        .set_ebs(ebs)
        .build()
}

/// An EC2 filter.
fn filter<V: Into<String>>(name: impl Into<String>, values: impl IntoIterator<Item = V>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
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
    Some(NodeInfo {
        id,
        state,
        tags,
        internal_ip: instance.private_ip_address().map(str::to_string),
        external_ip: instance.public_ip_address().map(str::to_string),
        instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::InstanceState;

    use super::*;

    #[test]
    fn a_spot_shortage_sends_prefer_spot_launches_on_demand_for_the_backoff() {
        let backoff = Duration::from_secs(300);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // No shortage seen: prefer_spot asks for spot, with fallback.
        assert_eq!(
            initial_market(false, true, None, at(0), backoff),
            Market::SpotOrOnDemand
        );
        // A shortage 10 s or 299 s ago: on-demand directly.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(10), backoff),
            Market::OnDemand
        );
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(299), backoff),
            Market::OnDemand
        );
        // After the backoff: spot again.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(300), backoff),
            Market::SpotOrOnDemand
        );
        // A zero backoff never skips spot.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(0), Duration::ZERO),
            Market::SpotOrOnDemand
        );
        // The node type's own spot request ignores shortages and never falls back.
        assert_eq!(
            initial_market(true, false, Some(at(0)), at(1), backoff),
            Market::SpotOnly
        );
        assert_eq!(
            initial_market(true, true, Some(at(0)), at(1), backoff),
            Market::SpotOnly
        );
        // Neither: on-demand.
        assert_eq!(
            initial_market(false, false, None, at(0), backoff),
            Market::OnDemand
        );
    }

    #[test]
    fn spot_shortages_are_remembered_per_instance_type() {
        let p = AwsNodeProvider::from_ec2_config(
            "shortages",
            aws_sdk_ec2::config::Builder::new()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest()),
            AwsSettings::new("us-east-1"),
        )
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(p.spot_shortage("m5.large"), None);
        p.record_spot_shortage("m5.large", t0);
        assert_eq!(p.spot_shortage("m5.large"), Some(t0));
        assert_eq!(p.spot_shortage("c5.large"), None);
    }

    fn instance(id: &str, state: InstanceStateName, spot: bool) -> Instance {
        let mut b = Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build());
        if spot {
            b = b.instance_lifecycle(InstanceLifecycleType::Spot);
        }
        b.build()
    }

    #[test]
    fn caching_stops_on_demand_instances_and_terminates_spot_ones() {
        let live: BTreeMap<String, Instance> = [
            instance("i-run", InstanceStateName::Running, false),
            instance("i-pending", InstanceStateName::Pending, false),
            instance("i-spot", InstanceStateName::Running, true),
            instance("i-stopped", InstanceStateName::Stopped, false),
            instance("i-stopping", InstanceStateName::Stopping, false),
        ]
        .into_iter()
        .map(|i| (i.instance_id().unwrap().to_string(), i))
        .collect();
        let (stop, terminate) = split_for_cache(&live, true);
        assert_eq!(stop, ["i-pending", "i-run"]);
        assert_eq!(terminate, ["i-spot"]);
        let (stop, terminate) = split_for_cache(&live, false);
        assert!(stop.is_empty());
        assert_eq!(terminate.len(), 5);
    }

    #[test]
    fn a_duplicated_error_keeps_kind_operation_and_context() {
        let e = Error::new(ErrorKind::PermissionDenied, "no")
            .with_operation("set_node_tags")
            .with_context("call", "CreateTags")
            .with_source("denied by policy");
        let d = duplicate(&e);
        assert_eq!(d.kind(), e.kind());
        assert_eq!(d.status(), e.status());
        assert_eq!(d.operation(), Some("set_node_tags"));
        assert_eq!(d.context_value("call"), Some("CreateTags"));
        assert_eq!(d.to_string(), e.to_string());
    }
}
