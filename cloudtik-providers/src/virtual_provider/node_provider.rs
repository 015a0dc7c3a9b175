//! [`VirtualNodeProvider`]: the nodes of one cluster as containers.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
    EndpointSettings, HostConfig, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use cloudtik_core::config::ClusterConfig;
use cloudtik_core::node::tags;
use cloudtik_core::{
    Error, ErrorKind, LaunchOutcome, LaunchRequest, NodeId, NodeInfo, NodeProvider, NodeState,
    ProviderCapabilities, Result, TagUpdate, Tags,
};
use futures::{StreamExt, TryStreamExt};

use super::docker::{DockerClient, is_status};
use super::tag_store::{Overlay, TagStore};
use super::{
    DOCKER_SOCKET_IN_HEAD, InstanceType, NODE_BINARY_IN_NODE, NODE_IMAGE_BUILD_COMMAND, NODE_IMAGE_REPO,
    PROVIDER_TYPE, VirtualSettings, check_name, data_disk_bases, network_name,
};

/// Labels with this prefix are the provider's own, not tags.
pub(crate) const INTERNAL_LABEL_PREFIX: &str = "org.cloudtik.";
/// Internal label: the instance type name of the container (`2CPU-4G`).
const INSTANCE_TYPE_LABEL: &str = "org.cloudtik.virtual.instance-type";
/// Where data disk N is mounted in a node.
const DATA_DISK_MOUNT_PREFIX: &str = "/mnt/cloudtik/data_disk_";
/// Tags that name the node's place; `set_node_tags` may not change them.
const IDENTITY_TAGS: [&str; 3] = [tags::CLUSTER_NAME, tags::WORKSPACE_NAME, tags::LAUNCH_TOKEN];

/// The nodes of one cluster: Docker containers on the workspace's bridge network.
///
/// See the [module docs](super) for names, labels, the tag overlay and the cleanup
/// contract. Cheap to clone; clones share the Docker connection.
///
/// ```no_run
/// # async fn demo() -> cloudtik_core::Result<()> {
/// use cloudtik_core::{LaunchRequest, NodeProvider, Tags};
/// use cloudtik_providers::virtual_provider::{VirtualNodeProvider, VirtualSettings};
///
/// let provider = VirtualNodeProvider::new("dev", "demo", VirtualSettings::default())?;
/// let config = serde_json::json!({"instance_type": {"CPU": 1, "memory": "1G"}});
/// let outcome = provider
///     .create_nodes(&LaunchRequest::new("worker.default", config, Tags::new(), 2))
///     .await?;
/// println!("{} nodes", outcome.nodes.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct VirtualNodeProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    workspace: String,
    cluster: String,
    settings: VirtualSettings,
    docker: Arc<DockerClient>,
    tags: TagStore,
}

/// What one container of a launch is made from.
#[derive(Debug)]
struct NodeSpec {
    image: String,
    labels: HashMap<String, String>,
    instance: InstanceType,
    data_disks: Vec<PathBuf>,
    is_head: bool,
}

impl VirtualNodeProvider {
    /// A provider for `cluster` in `workspace`. Connects to Docker on first use.
    pub fn new(workspace: &str, cluster: &str, settings: VirtualSettings) -> Result<Self> {
        check_name("workspace name", workspace)?;
        check_name("cluster name", cluster)?;
        let docker = Arc::new(DockerClient::new(settings.docker_socket.clone()));
        Ok(Self::with_client(workspace, cluster, settings, docker))
    }

    /// A provider for the cluster of a cluster config (`workspace_name`, `cluster_name`,
    /// `provider`, and `auth.ssh_public_key` as the key authorized on nodes).
    pub fn from_cluster_config(config: &ClusterConfig) -> Result<Self> {
        let settings = VirtualSettings::from_cluster_config(config)?;
        Self::new(&config.workspace_name, &config.cluster_name, settings)
    }

    pub(crate) fn with_client(
        workspace: &str,
        cluster: &str,
        settings: VirtualSettings,
        docker: Arc<DockerClient>,
    ) -> Self {
        let tags = TagStore::new(settings.cluster_state_dir(workspace, cluster));
        VirtualNodeProvider {
            inner: Arc::new(Inner {
                workspace: workspace.to_string(),
                cluster: cluster.to_string(),
                settings,
                docker,
                tags,
            }),
        }
    }

    /// A provider for another cluster of the same workspace, sharing the connection.
    pub fn for_cluster(&self, cluster: &str) -> Result<Self> {
        check_name("cluster name", cluster)?;
        Ok(Self::with_client(
            &self.inner.workspace,
            cluster,
            self.inner.settings.clone(),
            self.inner.docker.clone(),
        ))
    }

    /// The workspace.
    pub fn workspace_name(&self) -> &str {
        &self.inner.workspace
    }

    /// The resolved settings.
    pub fn settings(&self) -> &VirtualSettings {
        &self.inner.settings
    }

    /// The cluster's state folder (the tag overlay and numbered data disks live here).
    pub fn cluster_state_dir(&self) -> PathBuf {
        self.inner
            .settings
            .cluster_state_dir(&self.inner.workspace, &self.inner.cluster)
    }

    /// The file of the tag overlay.
    pub fn tag_overlay_path(&self) -> PathBuf {
        self.inner.tags.path()
    }

    async fn docker(&self, operation: &'static str) -> Result<&Docker> {
        self.inner.docker.get(operation).await
    }

    fn err(&self, e: bollard::errors::Error, operation: &'static str) -> Error {
        self.inner.docker.error(e, operation)
    }

    /// The labels every container of this cluster has.
    fn base_label_filters(&self) -> Vec<String> {
        vec![
            format!("{}={}", tags::WORKSPACE_NAME, self.inner.workspace),
            format!("{}={}", tags::CLUSTER_NAME, self.inner.cluster),
        ]
    }

    /// The cluster's containers that carry every label in `extra` (all states).
    async fn containers(
        &self,
        extra: &[(&str, &str)],
        operation: &'static str,
    ) -> Result<Vec<ContainerSummary>> {
        let docker = self.docker(operation).await?;
        let mut labels = self.base_label_filters();
        labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err(e, operation))
    }

    /// A container as a node, or `None` when it is stopped or going away.
    fn to_node(&self, c: &ContainerSummary, overlay: &Overlay) -> Option<NodeInfo> {
        let state = match c.state? {
            ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::RESTARTING => NodeState::Pending,
            ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED => NodeState::Running,
            _ => return None,
        };
        let id = c.id.as_deref()?;
        let name = container_name(c)?;
        let labels = c.labels.clone().unwrap_or_default();
        let instance_type = labels.get(INSTANCE_TYPE_LABEL).cloned();
        let mut node_tags: Tags = labels
            .into_iter()
            .filter(|(k, _)| !k.starts_with(INTERNAL_LABEL_PREFIX))
            .collect();
        if let Some(extra) = overlay.nodes.get(id) {
            node_tags.extend(extra.clone());
        }
        let network = network_name(&self.inner.workspace);
        let internal_ip = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&network))
            .and_then(|e| e.ip_address.clone())
            .filter(|ip| !ip.is_empty());
        Some(
            NodeInfo::new(name, state, node_tags)
                .with_internal_ip(internal_ip)
                .with_instance_type(instance_type),
        )
    }

    /// Lists nodes: filters on labels no overlay entry overrides go to Docker; all filters
    /// are applied again after the overlay is merged.
    async fn list(&self, filters: &Tags, operation: &'static str) -> Result<Vec<NodeInfo>> {
        let overlay = self.inner.tags.read()?;
        let overridden = overlay.overridden_keys();
        let pushed: Vec<(&str, &str)> = filters
            .iter()
            .filter(|(k, _)| !overridden.contains(k.as_str()) && !k.starts_with(INTERNAL_LABEL_PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut containers = self.containers(&pushed, operation).await?;
        if containers.iter().any(is_stopped) {
            let grace = self.inner.settings.exited_node_grace;
            match self.remove_stopped(&containers, Some(grace), operation).await {
                Ok(removed) if !removed.is_empty() => {
                    containers.retain(|c| c.id.as_ref().is_none_or(|id| !removed.contains(id)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %cloudtik_core::Report(&e), "removing containers stopped from outside failed; the next listing tries again")
                }
            }
        }
        if pushed.is_empty() && !overlay.nodes.is_empty() {
            let alive: BTreeSet<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
            if overlay.nodes.keys().any(|id| !alive.contains(id)) {
                // Entries of containers removed from outside: drop them under the lock
                // (the garbage collection lists again, so it never drops a new entry).
                self.collect_garbage(operation).await?;
            }
        }
        Ok(containers
            .iter()
            .filter_map(|c| self.to_node(c, &overlay))
            .filter(|n| n.matches(filters))
            .collect())
    }

    /// Removes the cluster's containers that are exited or dead, and whose
    /// `State.FinishedAt` is older than `older_than` when it is given, as
    /// `terminate_nodes` does (data-disk folders, overlay entries). Answers the ids of the
    /// containers removed. See the [module docs](super#containers-stopped-from-outside).
    async fn remove_stopped(
        &self,
        containers: &[ContainerSummary],
        older_than: Option<Duration>,
        operation: &'static str,
    ) -> Result<BTreeSet<String>> {
        let docker = self.docker(operation).await?;
        let mut doomed = Vec::new();
        for c in containers.iter().filter(|c| is_stopped(c)) {
            let Some(id) = c.id.as_deref() else { continue };
            if let Some(grace) = older_than {
                // Ask again: the summary may be old, and only the inspect tells FinishedAt.
                let info = match docker.inspect_container(id, None).await {
                    Ok(info) => info,
                    Err(e) if is_status(&e, 404) => continue,
                    Err(e) => return Err(self.err(e, operation).with_context("container", id)),
                };
                let state = info.state.unwrap_or_default();
                let stopped = matches!(
                    state.status,
                    Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD)
                ) && !state.running.unwrap_or(false)
                    && !state.restarting.unwrap_or(false);
                let finished = state.finished_at.as_deref().and_then(parse_docker_time);
                let age = finished.and_then(|f| std::time::SystemTime::now().duration_since(f).ok());
                if !stopped || age.is_none_or(|a| a < grace) {
                    continue;
                }
                tracing::info!(
                    container = %container_name(c).unwrap_or_else(|| id.to_string()),
                    finished_at = state.finished_at.as_deref().unwrap_or("?"),
                    "removing a node container stopped from outside (exited longer than {grace:?} ago)"
                );
            }
            doomed.push(id.to_string());
        }
        if doomed.is_empty() {
            return Ok(BTreeSet::new());
        }
        self.terminate_nodes(&doomed).await?;
        Ok(doomed.into_iter().collect())
    }

    async fn collect_garbage(&self, operation: &'static str) -> Result<()> {
        let lock = self.inner.tags.lock().await?;
        let alive: BTreeSet<String> = self
            .containers(&[], operation)
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        let mut overlay = self.inner.tags.read()?;
        if overlay.retain_alive(&alive) {
            self.inner.tags.write(&lock, &overlay)?;
        }
        Ok(())
    }

    fn spec(&self, request: &LaunchRequest) -> Result<NodeSpec> {
        let settings = &self.inner.settings;
        let config = &request.node_config;
        if !config.is_object() && !config.is_null() {
            return Err(Error::config("node_config", "expected a mapping"));
        }
        let image = match config.get("image") {
            None | Some(serde_json::Value::Null) => settings.image.clone(),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(v) => {
                return Err(Error::config(
                    "node_config.image",
                    format!("expected an image name, found {v}"),
                ));
            }
        };
        let instance = InstanceType::from_node_config(config)?;
        let data_disks = data_disk_bases(config, &self.cluster_state_dir())?;
        let mut labels: HashMap<String, String> = request.tags.clone().into_iter().collect();
        for key in labels.keys() {
            if key.starts_with(INTERNAL_LABEL_PREFIX) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "tag `{key}` uses the prefix {INTERNAL_LABEL_PREFIX}, which the virtual provider keeps for itself"
                    ),
                ));
            }
        }
        labels.insert(tags::WORKSPACE_NAME.into(), self.inner.workspace.clone());
        labels.insert(tags::CLUSTER_NAME.into(), self.inner.cluster.clone());
        labels.insert(tags::LAUNCH_TOKEN.into(), request.token.clone());
        if let Some(name) = instance.name() {
            labels.insert(INSTANCE_TYPE_LABEL.into(), name);
        }
        let is_head = request.tags.get(tags::NODE_KIND).map(String::as_str) == Some("head");
        Ok(NodeSpec {
            image,
            labels,
            instance,
            data_disks,
            is_head,
        })
    }

    /// Checks what would make every create fail, before creating anything: the image,
    /// the workspace network, and limits larger than the machine.
    async fn preflight(&self, docker: &Docker, spec: &NodeSpec) -> Result<()> {
        const OP: &str = "create_nodes";
        if let Err(e) = docker.inspect_image(&spec.image).await {
            if is_status(&e, 404) {
                let how = if spec.image.starts_with(&format!("{NODE_IMAGE_REPO}:")) {
                    format!(
                        "build it with `{NODE_IMAGE_BUILD_COMMAND}` (it is built locally from Debian packages)"
                    )
                } else {
                    format!(
                        "pull or build it first (`docker pull {}`), or set provider.image",
                        spec.image
                    )
                };
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the node image {} does not exist on this machine: {how}",
                        spec.image
                    ),
                )
                .with_operation(OP)
                .with_context("image", &spec.image));
            }
            return Err(self.err(e, OP));
        }
        let network = network_name(&self.inner.workspace);
        if let Err(e) = docker.inspect_network(&network, None).await {
            if is_status(&e, 404) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the workspace network {network} does not exist: create the workspace `{}` first \
                         (`cloudtik workspace create`)",
                        self.inner.workspace
                    ),
                )
                .with_operation(OP));
            }
            return Err(self.err(e, OP));
        }
        if let (true, Some(port)) = (spec.is_head, self.inner.settings.port_mapping_base)
            && let Err(e) = std::net::TcpListener::bind(("0.0.0.0", port))
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "port {port} of this machine, where the head's SSH port would be published                      (provider.enable_port_mapping), is in use ({e:#}): free it, or set                      provider.port_mapping_base to a free port"
                ),
            )
            .set_permanent()
            .with_operation(OP)
            .with_context("port", port.to_string()));
        }
        if spec.instance.cpus.is_some() || spec.instance.memory_bytes.is_some() {
            let info = docker.info().await.map_err(|e| self.err(e, OP))?;
            if let (Some(want), Some(have)) = (spec.instance.cpus, info.ncpu)
                && want > have as f64
            {
                return Err(Error::new(
                    ErrorKind::Capacity,
                    format!(
                        "the instance type asks for {want} CPUs but this machine has {have}: lower \
                         node_config.instance_type.CPU to at most {have}"
                    ),
                )
                .set_permanent()
                .with_operation(OP));
            }
            if let (Some(want), Some(have)) = (spec.instance.memory_bytes, info.mem_total)
                && want > have
            {
                return Err(Error::new(
                    ErrorKind::Capacity,
                    format!(
                        "the instance type asks for {:.1} GiB of memory but this machine has {:.1} GiB: lower \
                         node_config.instance_type.memory",
                        want as f64 / (1u64 << 30) as f64,
                        have as f64 / (1u64 << 30) as f64
                    ),
                )
                .set_permanent()
                .with_operation(OP));
            }
        }
        Ok(())
    }

    /// Creates and starts one container; on failure removes what it made.
    async fn create_one(&self, docker: &Docker, spec: &NodeSpec) -> Result<String> {
        const OP: &str = "create_nodes";
        let settings = &self.inner.settings;
        let network = network_name(&self.inner.workspace);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let name = format!(
                "{}-{}-{:08x}",
                self.inner.workspace,
                self.inner.cluster,
                rand::random::<u32>()
            );
            let mut binds = Vec::new();
            let mut disks = Vec::new();
            for (i, base) in spec.data_disks.iter().enumerate() {
                let dir = base.join(&name);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    remove_dirs(&disks);
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        format!("cannot create the data disk folder {}", dir.display()),
                    )
                    .with_source(e)
                    .with_operation(OP));
                }
                binds.push(format!("{}:{DATA_DISK_MOUNT_PREFIX}{}", dir.display(), i + 1));
                disks.push(dir);
            }
            if spec.is_head && settings.mount_docker_socket {
                let state = self.cluster_state_dir();
                if let Err(e) = std::fs::create_dir_all(&state) {
                    remove_dirs(&disks);
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        format!("cannot create the state folder {}", state.display()),
                    )
                    .with_source(e)
                    .with_operation(OP));
                }
                binds.push(format!(
                    "{}:{DOCKER_SOCKET_IN_HEAD}",
                    settings.docker_socket.display()
                ));
                binds.push(format!("{0}:{0}", state.display()));
            }
            if let Some(binary) = &settings.node_binary {
                binds.push(node_binary_bind(binary));
            }
            if let Some(cache) = &settings.package_cache {
                for (dir, target) in super::PACKAGE_CACHE_MOUNTS {
                    let host = cache.join(dir);
                    if let Err(e) = std::fs::create_dir_all(&host) {
                        remove_dirs(&disks);
                        return Err(Error::new(
                            ErrorKind::Unexpected,
                            format!("cannot create the package cache folder {}", host.display()),
                        )
                        .with_source(e)
                        .with_context("path", "provider.package_cache")
                        .with_operation(OP));
                    }
                    binds.push(format!("{}:{target}", host.display()));
                }
            }
            let mut env = vec![
                format!("CLOUDTIK_NODE_NAME={name}"),
                format!("CLOUDTIK_CLUSTER_NAME={}", self.inner.cluster),
                format!("CLOUDTIK_WORKSPACE_NAME={}", self.inner.workspace),
            ];
            if let Some(key) = &settings.authorized_key {
                env.push(format!("CLOUDTIK_AUTHORIZED_KEY={key}"));
            }
            let published = match (spec.is_head, settings.port_mapping_base) {
                (true, Some(port)) => Some(port),
                _ => None,
            };
            let body = ContainerCreateBody {
                exposed_ports: published.map(|_| vec!["22/tcp".to_string()]),
                image: Some(spec.image.clone()),
                cmd: node_image_command(&spec.image),
                hostname: Some(name.chars().take(63).collect()),
                labels: Some(spec.labels.clone()),
                env: Some(env),
                host_config: Some(HostConfig {
                    nano_cpus: spec.instance.cpus.map(|c| (c * 1e9) as i64),
                    memory: spec.instance.memory_bytes,
                    binds: (!binds.is_empty()).then_some(binds),
                    port_bindings: published.map(|port| {
                        HashMap::from([(
                            "22/tcp".to_string(),
                            Some(vec![PortBinding {
                                host_ip: Some("0.0.0.0".into()),
                                host_port: Some(port.to_string()),
                            }]),
                        )])
                    }),
                    network_mode: Some(network.clone()),
                    // A node comes back after `docker restart`, a daemon restart or a
                    // host reboot, and starts its services at boot (see
                    // `node_image_command`). Termination removes the container itself
                    // (auto-remove cannot go with a restart policy).
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    cap_add: Some(vec!["NET_ADMIN".into(), "SYS_NICE".into()]),
                    ipc_mode: Some("private".into()),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        network.clone(),
                        EndpointSettings {
                            aliases: Some(vec![name.clone()]),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            let created = match docker.create_container(Some(options), body).await {
                Ok(c) => c,
                Err(e) => {
                    remove_dirs(&disks);
                    if is_status(&e, 409) && attempt < 3 {
                        continue; // a name collision: draw another suffix
                    }
                    return Err(self.err(e, OP).with_context("container", &name));
                }
            };
            if let Err(e) = docker.start_container(&created.id, None).await {
                let err = self.err(e, OP).with_context("container", &name);
                if let Err(cleanup) = self.remove_container(docker, &created.id).await {
                    tracing::warn!(container = %name, error = %cleanup, "removing a container that failed to start failed");
                }
                remove_dirs(&disks);
                return Err(err);
            }
            return Ok(name);
        }
    }

    /// Removes a container (stopping it first) and waits until it is gone.
    async fn remove_container(&self, docker: &Docker, id: &str) -> Result<()> {
        const OP: &str = "terminate_nodes";
        let stop = StopContainerOptionsBuilder::default()
            .t(self.inner.settings.stop_timeout_seconds as i32)
            .build();
        match docker.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            // 304: not running; 404: gone (auto-removed after the stop, or never there).
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            // 409: a removal is in progress.
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(self.err(e, OP).with_context("container", id)),
        }
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(id, Some(remove)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(self.err(e, OP).with_context("container", id)),
        }
        // The stop makes Docker remove an auto-remove container in the background: wait
        // until it is gone, so its network endpoint is released when we return.
        for _ in 0..200 {
            match docker.inspect_container(id, None).await {
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => return Err(self.err(e, OP).with_context("container", id)),
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!("container {id} was still there 10 s after its removal"),
        )
        .with_operation(OP))
    }

    /// Terminates one container by name or id; gone already is success.
    async fn terminate_one(&self, docker: &Docker, id: &str) -> Result<Option<String>> {
        const OP: &str = "terminate_nodes";
        let info = match docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(self.err(e, OP).with_context("node", id)),
        };
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(tags::CLUSTER_NAME) != Some(&self.inner.cluster)
            || labels.get(tags::WORKSPACE_NAME) != Some(&self.inner.workspace)
        {
            // Not a node of this cluster: as far as this provider knows, it does not exist.
            return Ok(None);
        }
        let container_id = info.id.clone().unwrap_or_else(|| id.to_string());
        let name = info
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let disks: Vec<PathBuf> = info
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.destination
                    .as_deref()
                    .is_some_and(|d| d.starts_with(DATA_DISK_MOUNT_PREFIX))
            })
            .filter_map(|m| m.source.map(PathBuf::from))
            // Only folders this provider made for the container (`<base>/<container name>`).
            .filter(|p| !name.is_empty() && p.file_name().is_some_and(|f| f == name.as_str()))
            .collect();
        self.remove_container(docker, &container_id).await?;
        if !self.inner.settings.permanent_data_volumes {
            remove_dirs(&disks);
        }
        Ok(Some(container_id))
    }
}

/// The command that prints a node's SSH host public keys once its sshd made them (the
/// node image makes them with `ssh-keygen -A` at start, ed25519 last).
const HOST_KEYS_COMMAND: &str =
    "test -s /etc/ssh/ssh_host_ed25519_key.pub && cat /etc/ssh/ssh_host_*_key.pub";
/// How long [`VirtualNodeProvider::host_keys`] waits for a starting node to make its keys.
const HOST_KEYS_WAIT: Duration = Duration::from_secs(60);

impl VirtualNodeProvider {
    /// The node's host keys if it has made them (a `docker exec` of [`HOST_KEYS_COMMAND`]);
    /// `Ok(None)` while the container starts or has not made them yet.
    async fn read_host_keys(&self, docker: &Docker, id: &str) -> Result<Option<Vec<String>>> {
        const OP: &str = "host_keys";
        let container = match docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) if is_status(&e, 404) => {
                return Err(
                    Error::new(ErrorKind::NotFound, format!("node {id} does not exist")).with_operation(OP),
                );
            }
            Err(e) => return Err(self.err(e, OP)),
        };
        let labels = container
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(tags::CLUSTER_NAME) != Some(&self.inner.cluster)
            || labels.get(tags::WORKSPACE_NAME) != Some(&self.inner.workspace)
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("node {id} is not a node of cluster {}", self.inner.cluster),
            )
            .with_operation(OP));
        }
        if !container.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return Ok(None);
        }
        let exec = bollard::models::ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["sh".into(), "-c".into(), HOST_KEYS_COMMAND.into()]),
            ..Default::default()
        };
        let created = match docker.create_exec(id, exec).await {
            Ok(c) => c,
            // Not running (any more, or not yet).
            Err(e) if is_status(&e, 409) => return Ok(None),
            Err(e) => return Err(self.err(e, OP)),
        };
        let mut stdout = String::new();
        match docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.err(e, OP))?
        {
            bollard::exec::StartExecResults::Attached { mut output, .. } => {
                while let Some(item) = output.next().await {
                    if let bollard::container::LogOutput::StdOut { message } =
                        item.map_err(|e| self.err(e, OP))?
                    {
                        stdout.push_str(&String::from_utf8_lossy(&message));
                    }
                }
            }
            bollard::exec::StartExecResults::Detached => return Ok(None),
        }
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| self.err(e, OP))?;
        if inspected.exit_code != Some(0) {
            return Ok(None);
        }
        let keys: Vec<String> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        Ok((!keys.is_empty()).then_some(keys))
    }
}

/// An exited or dead container (by its summary).
fn is_stopped(c: &ContainerSummary) -> bool {
    matches!(
        c.state,
        Some(ContainerSummaryStateEnum::EXITED) | Some(ContainerSummaryStateEnum::DEAD)
    )
}

/// A Docker timestamp (`2026-12-01T12:20:00.123456789Z`, RFC 3339 in UTC, as in
/// `State.FinishedAt`); `None` for another form or Docker's zero time (year 1).
fn parse_docker_time(text: &str) -> Option<std::time::SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        format!("{digits:0<9}").parse().ok()?
    };
    Some(std::time::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

fn container_name(c: &ContainerSummary) -> Option<String> {
    c.names
        .as_ref()?
        .iter()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.contains('/'))
        .map(str::to_string)
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(folder = %dir.display(), error = %cloudtik_core::Report(&e), "could not remove a data disk folder");
        }
    }
}

fn first_error(errors: Vec<Error>) -> Option<Error> {
    let count = errors.len();
    let mut iter = errors.into_iter();
    let first = iter.next()?;
    Some(if count > 1 {
        first.with_context("failed_creates", count)
    } else {
        first
    })
}

#[async_trait]
impl NodeProvider for VirtualNodeProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn cluster_name(&self) -> &str {
        &self.inner.cluster
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
            .with_max_launch_batch(100)
            .with_max_terminate_batch(100)
            .with_max_tag_batch(1000)
    }

    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        self.list(filters, "list_nodes").await
    }

    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        const OP: &str = "create_nodes";
        if request.token.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "a launch needs a token").with_operation(OP));
        }
        let spec = self.spec(request).map_err(|e| e.with_operation(OP))?;
        let docker = self.docker(OP).await?;
        let token_filter = [(tags::LAUNCH_TOKEN, request.token.as_str())];
        let _launch_lock = self.inner.tags.launch_lock().await?;

        // Containers of an earlier try with this token: adopt the live ones; start the
        // ones a cancelled try created but did not start.
        let mut have = 0usize;
        for c in self.containers(&token_filter, OP).await? {
            match c.state {
                Some(ContainerSummaryStateEnum::RUNNING)
                | Some(ContainerSummaryStateEnum::RESTARTING)
                | Some(ContainerSummaryStateEnum::PAUSED) => have += 1,
                Some(ContainerSummaryStateEnum::CREATED) => {
                    let Some(id) = c.id.as_deref() else { continue };
                    match docker.start_container(id, None).await {
                        Ok(()) => have += 1,
                        Err(e) => {
                            tracing::warn!(container = %id, error = %cloudtik_core::Report(&e), "an unstarted container of an earlier try did not start; removing it");
                            self.terminate_one(docker, id).await?;
                        }
                    }
                }
                _ => {}
            }
        }
        let missing = request.count.saturating_sub(have);
        let mut errors = Vec::new();
        if missing > 0 {
            self.preflight(docker, &spec).await?;
            let results: Vec<Result<String>> = futures::stream::iter(0..missing)
                .map(|_| self.create_one(docker, &spec))
                .buffer_unordered(self.inner.settings.max_concurrency)
                .collect()
                .await;
            for r in results {
                match r {
                    Ok(name) => tracing::debug!(container = %name, "node created"),
                    Err(e) => errors.push(e),
                }
            }
        }
        let overlay = self.inner.tags.read()?;
        let nodes: Vec<NodeInfo> = self
            .containers(&token_filter, OP)
            .await?
            .iter()
            .filter_map(|c| self.to_node(c, &overlay))
            .collect();
        let shortfall = match first_error(errors) {
            Some(e) if nodes.is_empty() => return Err(e),
            Some(e) => Some(e),
            None if nodes.len() < request.count => Some(
                Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "{} of {} containers stopped right after they started; check the image's command \
                         (`docker logs` shows nothing once a container is removed, so run the image by hand)",
                        request.count - nodes.len(),
                        request.count
                    ),
                )
                .with_operation(OP),
            ),
            None => None,
        };
        if nodes.is_empty()
            && let Some(e) = shortfall
        {
            return Err(e);
        }
        Ok(LaunchOutcome::new(nodes, shortfall))
    }

    /// Read from the container through the Docker Engine (`docker exec cat
    /// /etc/ssh/ssh_host_*_key.pub`), so the first SSH connection checks the key. Waits
    /// up to a minute for a starting container to make its keys.
    async fn host_keys(&self, node: &NodeInfo) -> Result<Option<Vec<String>>> {
        const OP: &str = "host_keys";
        let docker = self.docker(OP).await?;
        let deadline = tokio::time::Instant::now() + HOST_KEYS_WAIT;
        loop {
            if let Some(keys) = self.read_host_keys(docker, &node.id).await? {
                return Ok(Some(keys));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "node {} made no SSH host keys within {HOST_KEYS_WAIT:?} (`{HOST_KEYS_COMMAND}` \
                         in the container failed); is it running the node image's sshd?",
                        node.id
                    ),
                )
                .with_operation(OP));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        const OP: &str = "set_node_tags";
        if updates.is_empty() {
            return Ok(());
        }
        for update in updates {
            for key in IDENTITY_TAGS {
                if update.tags.contains_key(key) {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "tag {key} names the node's cluster or launch and cannot change after launch"
                        ),
                    )
                    .with_operation(OP)
                    .with_context("node", &update.node_id));
                }
            }
            if let Some(key) = update.tags.keys().find(|k| k.starts_with(INTERNAL_LABEL_PREFIX)) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("tag `{key}` uses the prefix {INTERNAL_LABEL_PREFIX}, which the virtual provider keeps for itself"),
                )
                .with_operation(OP));
            }
        }
        let lock = self.inner.tags.lock().await?;
        let containers = self.containers(&[], OP).await?;
        let mut overlay = self.inner.tags.read()?;
        let alive: BTreeSet<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
        overlay.retain_alive(&alive);
        let mut missing = Vec::new();
        for update in updates {
            let found = containers.iter().find(|c| {
                self.to_node(c, &Overlay::default()).is_some()
                    && (container_name(c).as_deref() == Some(update.node_id.as_str())
                        || c.id.as_deref() == Some(update.node_id.as_str()))
            });
            let Some((id, labels)) =
                found.and_then(|c| Some((c.id.clone()?, c.labels.clone().unwrap_or_default())))
            else {
                missing.push(update.node_id.clone());
                continue;
            };
            let entry = overlay.nodes.entry(id.clone()).or_default();
            for (k, v) in &update.tags {
                if labels.get(k) == Some(v) {
                    entry.remove(k); // the label says it already
                } else {
                    entry.insert(k.clone(), v.clone());
                }
            }
            if entry.is_empty() {
                overlay.nodes.remove(&id);
            }
        }
        self.inner.tags.write(&lock, &overlay)?;
        drop(lock);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no node {} in cluster {}; the other nodes were updated",
                    missing.join(", "),
                    self.inner.cluster
                ),
            )
            .with_operation(OP))
        }
    }

    /// Removes the cluster's exited and dead containers (stopped from outside, e.g. with
    /// `docker stop`) at once, with no grace; a full `cloudtik stop` calls it.
    async fn remove_stopped_nodes(&self) -> Result<usize> {
        const OP: &str = "remove_stopped_nodes";
        let containers = self.containers(&[], OP).await?;
        Ok(self.remove_stopped(&containers, None, OP).await?.len())
    }

    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        const OP: &str = "terminate_nodes";
        if ids.is_empty() {
            return Ok(());
        }
        let docker = self.docker(OP).await?;
        let removed: Vec<Option<String>> = futures::stream::iter(ids.iter().cloned())
            .map(|id| async move { self.terminate_one(docker, &id).await })
            .buffer_unordered(self.inner.settings.max_concurrency)
            .try_collect()
            .await?;
        let removed: BTreeSet<String> = removed.into_iter().flatten().collect();
        if !removed.is_empty() {
            let lock = self.inner.tags.lock().await?;
            let mut overlay = self.inner.tags.read()?;
            let before = overlay.nodes.len();
            overlay.nodes.retain(|id, _| !removed.contains(id));
            if overlay.nodes.len() != before {
                self.inner.tags.write(&lock, &overlay)?;
            }
        }
        Ok(())
    }
}

/// The command of a container of the node image: the image's own (host keys, the
/// authorized key, then sshd in the foreground as PID 1, which reaps orphans), plus a
/// `cloudtik-node supervise` for every service file the node's setup wrote (see
/// [`cloudtik_core::cluster::NodeLayout::boot_command`]), so a restarted node runs its
/// head or agent again with no command. `None` (the image's own) for other images.
fn node_image_command(image: &str) -> Option<Vec<String>> {
    if !image.starts_with(&format!("{NODE_IMAGE_REPO}:")) {
        return None;
    }
    let boot = cloudtik_core::cluster::NodeLayout::new("root", NODE_BINARY_IN_NODE).boot_command();
    let script = format!(
        "mkdir -p /run/sshd /root/.ssh && ssh-keygen -A >/dev/null && if [ -n \"$CLOUDTIK_AUTHORIZED_KEY\" ]; then \
         grep -qxF \"$CLOUDTIK_AUTHORIZED_KEY\" /root/.ssh/authorized_keys 2>/dev/null || \
         echo \"$CLOUDTIK_AUTHORIZED_KEY\" >> /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys; fi; \
         {boot}; exec /usr/sbin/sshd -D -e"
    );
    Some(vec!["/bin/sh".into(), "-c".into(), script])
}

/// The bind mount of the `cloudtik-node` program: its folder when the file is named
/// `cloudtik-node` (so a rebuilt binary, which `cargo` writes as a new file, shows in
/// running nodes: a file bind mount would keep the old one), else the file itself.
fn node_binary_bind(binary: &std::path::Path) -> String {
    let in_node = std::path::Path::new(NODE_BINARY_IN_NODE);
    match (binary.file_name(), binary.parent(), in_node.parent()) {
        (Some(name), Some(dir), Some(node_dir)) if name == "cloudtik-node" && !dir.as_os_str().is_empty() => {
            format!("{}:{}:ro", dir.display(), node_dir.display())
        }
        _ => format!("{}:{NODE_BINARY_IN_NODE}:ro", binary.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_docker_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = VirtualSettings::default()
            .with_docker_socket(dir.path().join("no-docker.sock"))
            .with_state_dir(dir.path());
        let provider = VirtualNodeProvider::new("ws", "c", settings).unwrap();
        let e = provider.list_nodes(&Tags::new()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("Docker is not reachable"), "{text}");
        assert!(text.contains("no-docker.sock"), "{text}");
        assert_eq!(e.operation(), Some("list_nodes"));
        let request = LaunchRequest::new("w", serde_json::json!({}), Tags::new(), 1);
        let e = provider.create_nodes(&request).await.unwrap_err();
        assert!(e.to_string().contains("Docker is not reachable"), "{e:#}");
        assert!(
            !dir.path().join("ws").exists(),
            "a failed call made state folders"
        );
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener); // the file stays, nobody accepts
        let settings = VirtualSettings::default()
            .with_docker_socket(&path)
            .with_state_dir(dir.path());
        let provider = VirtualNodeProvider::new("ws", "c", settings).unwrap();
        let e = provider.list_nodes(&Tags::new()).await.unwrap_err();
        assert!(e.to_string().contains("Docker is not reachable"), "{e:#}");
    }

    #[test]
    fn docker_times_parse() {
        let t = |s: &str| parse_docker_time(s).map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            t("2026-12-01T12:20:05.5Z"),
            Some(Duration::new(1_796_127_605, 500_000_000))
        );
        assert_eq!(
            t("2000-03-01T00:00:00.123456789Z"),
            Some(Duration::new(951_868_800, 123_456_789))
        );
        assert_eq!(t("0001-01-01T00:00:00Z"), None);
        assert_eq!(t("2026-12-01 12:20:05"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(VirtualNodeProvider::new("ws", "bad/name", VirtualSettings::default()).is_err());
        assert!(VirtualNodeProvider::new("", "c", VirtualSettings::default()).is_err());
    }

    #[test]
    fn specs_label_every_tag_and_refuse_internal_ones() {
        let dir = tempfile::tempdir().unwrap();
        let provider =
            VirtualNodeProvider::new("ws", "c", VirtualSettings::default().with_state_dir(dir.path()))
                .unwrap();
        let mut t = Tags::new();
        t.insert(tags::NODE_KIND.into(), "head".into());
        let request = LaunchRequest::new(
            "head.default",
            serde_json::json!({"instance_type": {"CPU": 1, "memory": "512M"}, "image": "img:1", "data_disks": 1}),
            t.clone(),
            1,
        );
        let spec = provider.spec(&request).unwrap();
        assert_eq!(spec.image, "img:1");
        assert!(spec.is_head);
        assert_eq!(spec.labels.get(tags::CLUSTER_NAME).map(String::as_str), Some("c"));
        assert_eq!(
            spec.labels.get(tags::WORKSPACE_NAME).map(String::as_str),
            Some("ws")
        );
        assert_eq!(spec.labels.get(tags::LAUNCH_TOKEN), Some(&request.token));
        assert_eq!(
            spec.labels.get(INSTANCE_TYPE_LABEL).map(String::as_str),
            Some("1CPU-512M")
        );
        assert_eq!(spec.data_disks, vec![dir.path().join("ws/c/disks/data_disk_1")]);
        t.insert("org.cloudtik.virtual.x".into(), "y".into());
        let request = LaunchRequest::new("w", serde_json::json!({}), t, 1);
        assert_eq!(
            provider.spec(&request).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
    }
}
