//! [`AwsNodeProvider`]: the nodes of one cluster as EC2 instances.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceMarketOptionsRequest, InstanceStateName,
    InstanceType, MarketType, ResourceType, Tag, TagSpecification,
};
use cloudtik_core::node::tags;
use cloudtik_core::{
    Error, ErrorKind, LaunchOutcome, LaunchRequest, NodeId, NodeInfo, NodeProvider, NodeState,
    ProviderCapabilities, Result, TagUpdate, Tags,
};

use super::errors::{classify_sdk_error, ec2_code, is_rate_limited};
use super::node_config::Ec2NodeConfig;
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
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner {
                cluster: cluster.to_string(),
                settings,
                client,
                default_image: Arc::default(),
            }),
        })
    }

    /// A provider for another cluster, sharing the client and settings.
    pub fn for_cluster(&self, cluster: &str) -> Result<Self> {
        check_cluster_name(cluster)?;
        Ok(AwsNodeProvider {
            inner: Arc::new(Inner {
                cluster: cluster.to_string(),
                settings: self.inner.settings.clone(),
                client: self.inner.client.clone(),
                default_image: self.inner.default_image.clone(),
            }),
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
                async move { fut.await.map_err(|e| classify_sdk_error(e, operation, call)) }
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
        let mut found = BTreeSet::new();
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
                    found.insert(id.to_string());
                }
            }
        }
        Ok(found)
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
    /// instances when `spot`.
    async fn run_instances(
        &self,
        config: &Ec2NodeConfig,
        subnet: Option<&str>,
        spot: bool,
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
        if spot {
            request = request.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
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
                    async move { fut.await.map_err(|e| classify_sdk_error(e, OP, "RunInstances")) }
                },
                is_rate_limited,
            )
            .await
            .map_err(|e| {
                e.with_context("cluster", &self.inner.cluster)
                    .with_context("instance_type", &config.instance_type)
                    .with_context("subnet", subnet.unwrap_or("default"))
                    .with_context("market", if spot { "spot" } else { "on-demand" })
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
        Ok(instances
            .iter()
            .filter_map(node_info)
            .filter(|n| {
                matches!(n.state, NodeState::Pending | NodeState::Running)
                    && n.tag(tags::CLUSTER_NAME) == Some(self.inner.cluster.as_str())
                    && n.matches(filters)
            })
            .collect())
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
        let mut spot = self.inner.settings.prefer_spot;
        let mut failure = None;
        let mut lost_answers = 0;
        while nodes.len() < request.count {
            let have = nodes.len();
            let market = if spot { "s" } else { "" };
            let client_token = format!("{}-{have}-{subnet_index}{market}", request.token);
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
                Err(e) if spot && is_spot_shortage(&e) => {
                    tracing::debug!(error = %e, "no spot capacity; launching the rest on-demand");
                    spot = false;
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
        let ids: Vec<String> = updates
            .iter()
            .map(|u| u.node_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let existing = self.existing_ids(OP, &ids, &LIVE_STATES).await?;

        // One CreateTags per distinct (key, value) across the nodes.
        let mut groups: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for update in updates.iter().filter(|u| existing.contains(&u.node_id)) {
            for (k, v) in &update.tags {
                groups
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(update.node_id.clone());
                if k == tags::NODE_NAME {
                    groups
                        .entry((NAME_TAG, v.as_str()))
                        .or_default()
                        .push(update.node_id.clone());
                }
            }
        }
        for ((key, value), nodes) in &groups {
            for chunk in nodes.chunks(EC2_BATCH) {
                let request = self
                    .inner
                    .client
                    .create_tags()
                    .set_resources(Some(chunk.to_vec()))
                    .tags(Tag::builder().key(*key).value(*value).build());
                self.call(OP, "CreateTags", || request.clone().send())
                    .await
                    .map_err(|e| {
                        e.with_context("cluster", &self.inner.cluster)
                            .with_context("tag", key)
                            .with_context("nodes", chunk.join(","))
                    })?;
            }
        }
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !existing.contains(*id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no pending, running or stopped instance of cluster {} has id {}",
                    self.inner.cluster,
                    missing.join(", ")
                ),
            )
            .with_operation(OP)
            .with_context("nodes", missing.join(",")));
        }
        Ok(())
    }

    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        const OP: &str = "terminate_nodes";
        if ids.is_empty() {
            return Ok(());
        }
        // Only instances of this cluster that still live are terminated; ids that are
        // gone (or never were this cluster's) are skipped, which makes terminate
        // idempotent and keeps other clusters' instances safe.
        let live: Vec<String> = self
            .existing_ids(OP, ids, &LIVE_STATES)
            .await?
            .into_iter()
            .collect();
        for chunk in live.chunks(EC2_BATCH) {
            let mut targets = chunk.to_vec();
            // A NotFound answer (an instance vanished since the describe) is retried
            // once with the instances that still live; a second one means they are gone.
            for attempt in 0..2 {
                let request = self
                    .inner
                    .client
                    .terminate_instances()
                    .set_instance_ids(Some(targets.clone()));
                match self
                    .call(OP, "TerminateInstances", || request.clone().send())
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        if attempt == 1 {
                            break;
                        }
                        targets = self
                            .existing_ids(OP, &targets, &LIVE_STATES)
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
