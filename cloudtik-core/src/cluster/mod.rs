//! The cluster and workspace operations on a provider: [`ManagedCluster`] implements
//! [`Cluster`] (`cloudtik start|stop|status|exec|...`), [`ManagedWorkspace`] implements
//! [`Workspace`].
//!
//! # How a cluster starts
//!
//! [`Cluster::start`] runs on the user's machine. It
//! 1. finds the head (the node tagged `cloudtik-node-kind=head`); a head whose launch hash
//!    is outdated is terminated and replaced;
//! 2. launches a head if there is none, with a launch token recorded in the cluster's
//!    local folder ([`ClusterDir`]) *before* the provider call, so a start killed halfway
//!    and run again adopts the node that call made instead of making a second head;
//! 3. sets the head up with the [node updater](crate::updater::NodeUpdater) over SSH:
//!    the cluster config the head's controller runs with (`cloudtik/cluster.json`), its
//!    bootstrap config ([`HeadBootstrap`]: state store password and encryption key,
//!    paths), the cluster's key pair (for the head to reach workers), the user's file
//!    mounts, initialization, setup and start commands, and last the core start command:
//!    `cloudtik-node head` in the background (redis-server, the head's agent and the
//!    [controller](crate::scaler::Controller));
//! 4. waits until the head's state store answers and the head's agent heartbeats.
//!
//! The head's controller then launches the workers and sets them up with
//! [`SshNodeSetup`]; their agents heartbeat into the head's store.
//!
//! The other operations read the provider's listing and the head's state store: this
//! machine reaches the store directly at the head's internal address when the head has
//! no external one (the virtual provider), else through an SSH port forward to the head.

mod host_keys;
mod layout;
mod local_dir;
mod node_setup;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

pub use host_keys::pinned_ssh_options;
pub use layout::{DEFAULT_REDIS_PORT, HeadBootstrap, NodeLayout, env};
pub use local_dir::{ClusterDir, ClusterLock, ClusterSecrets};
pub use node_setup::SshNodeSetup;

use crate::command::{
    CommandRunner, CommandSpec, JumpHost, OutputLine, SshOptions, SshRunner, SyncOptions, shell_quote,
};
use crate::config::{ClusterConfig, CommandPhase, launch_hash};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, NodeStatus, Tags, tags};
use crate::operations::{
    Cluster, ClusterState, ClusterStatus, ControllerSummary, ExecOptions, ExecResult, NodeSummary,
    NodeTarget, ScaleRequest, StartOptions, StopOptions, Workspace, head_services_problem,
};
use crate::provider::{
    DeleteWorkspaceOptions, LaunchRequest, NodeProvider, NodeProviderExt, WorkspaceExistence,
    WorkspaceProvider, new_launch_token,
};
use crate::resources::Resources;
use crate::runtime::{NodeRuntimes, RuntimeRegistry};
use crate::scaler::inputs::node_type_marker;
use crate::state::{
    NodeHeartbeat, RedisAddress, RedisStore, RedisStoreConfig, RequestBundle, ResourceRequest, StateStore,
    StateStoreExt,
};
use crate::updater::{NodeRunners, NodeUpdater, UpdatePlan, UpdaterOptions};

/// How a [`ManagedCluster`] runs, besides its config and provider.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterSettings {
    /// The cluster's local folder (key pair, known hosts, secrets).
    pub dir: ClusterDir,
    /// The `cloudtik-node` program on nodes.
    pub node_binary: String,
    /// The cluster config the head's controller runs with (the provider may need other
    /// paths inside the head); `None`: the same config.
    pub head_config: Option<ClusterConfig>,
    /// Timing and retries of the head's setup.
    pub updater: UpdaterOptions,
    /// Seconds between the head controller's passes.
    pub controller_interval: Duration,
    /// A node without a heartbeat for this long is lost.
    pub heartbeat_timeout: Duration,
    /// How long `start` waits for the head's state store and agent after setup.
    pub head_ready_timeout: Duration,
    /// Progress messages (steps of long operations), if someone shows them.
    pub progress: Option<mpsc::UnboundedSender<String>>,
    /// Output of the head's setup commands, if someone shows it.
    pub output: Option<mpsc::UnboundedSender<OutputLine>>,
    /// The runtimes nodes run (their commands join node setup); default: none.
    pub runtimes: Arc<RuntimeRegistry>,
}

impl ClusterSettings {
    /// Settings with the cluster's folder `dir` and `cloudtik-node` at `node_binary` on
    /// nodes; SSH waits up to 2 minutes, the controller runs every 5 s, heartbeats time
    /// out after 30 s.
    pub fn new(dir: ClusterDir, node_binary: impl Into<String>) -> Self {
        ClusterSettings {
            dir,
            node_binary: node_binary.into(),
            head_config: None,
            updater: UpdaterOptions::default()
                .with_ssh_wait(Duration::from_secs(120), Duration::from_secs(1)),
            controller_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            head_ready_timeout: Duration::from_secs(60),
            progress: None,
            output: None,
            runtimes: Arc::new(RuntimeRegistry::new()),
        }
    }

    /// Sets the runtimes whose commands join node setup (the registry the config was
    /// loaded with).
    #[must_use]
    pub fn with_runtimes(mut self, runtimes: Arc<RuntimeRegistry>) -> Self {
        self.runtimes = runtimes;
        self
    }

    /// Sets the config the head receives.
    #[must_use]
    pub fn with_head_config(mut self, config: ClusterConfig) -> Self {
        self.head_config = Some(config);
        self
    }

    /// Sets the updater options of the head's setup.
    #[must_use]
    pub fn with_updater(mut self, options: UpdaterOptions) -> Self {
        self.updater = options;
        self
    }

    /// Sets the controller's pass interval and the heartbeat timeout.
    #[must_use]
    pub fn with_controller_timing(mut self, interval: Duration, heartbeat_timeout: Duration) -> Self {
        self.controller_interval = interval;
        self.heartbeat_timeout = heartbeat_timeout;
        self
    }

    /// Sends progress messages to `tx`.
    #[must_use]
    pub fn with_progress(mut self, tx: mpsc::UnboundedSender<String>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// Sends the head setup's command output to `tx`.
    #[must_use]
    pub fn with_output(mut self, tx: mpsc::UnboundedSender<OutputLine>) -> Self {
        self.output = Some(tx);
        self
    }
}

/// A cluster on a provider: the [`Cluster`] operations.
pub struct ManagedCluster {
    config: ClusterConfig,
    provider: Arc<dyn NodeProvider>,
    settings: ClusterSettings,
    runners: Mutex<HashMap<String, Arc<SshRunner>>>,
    store: Mutex<Option<Arc<RedisStore>>>,
}

impl std::fmt::Debug for ManagedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedCluster")
            .field("cluster", &self.config.cluster_name)
            .field("workspace", &self.config.workspace_name)
            .field("provider", &self.provider.provider_type())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl ManagedCluster {
    /// The cluster of `config` on `provider`. `config.auth` must name the private key
    /// (see [`ClusterDir::prepare_auth`]).
    pub fn new(config: ClusterConfig, provider: Arc<dyn NodeProvider>, settings: ClusterSettings) -> Self {
        ManagedCluster {
            config,
            provider,
            settings,
            runners: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
        }
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn NodeProvider> {
        &self.provider
    }

    /// The settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The node layout (paths on nodes, core commands).
    pub fn layout(&self) -> NodeLayout {
        NodeLayout::new(
            self.config.auth.ssh_user.as_deref().unwrap_or("root"),
            self.settings.node_binary.clone(),
        )
    }

    fn progress(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::info!(cluster = %self.config.cluster_name, "{msg}");
        if let Some(tx) = &self.settings.progress {
            let _ = tx.send(msg);
        }
    }

    fn use_internal_ips(&self) -> bool {
        self.config.provider.use_internal_ips.unwrap_or(false)
    }

    /// Every non-terminated node of the cluster, head first.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let mut nodes = self.provider.list_nodes(&Tags::new()).await?;
        nodes.sort_by_key(|n| (n.kind() != Some(NodeKind::Head), n.id.clone()));
        Ok(nodes)
    }

    /// The head, if the cluster has one.
    pub async fn head(&self) -> Result<Option<NodeInfo>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.kind() == Some(NodeKind::Head)))
    }

    async fn require_head(&self) -> Result<NodeInfo> {
        self.head().await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "cluster {} has no head node: start it with `cloudtik start`",
                    self.config.cluster_name
                ),
            )
        })
    }

    /// The address this machine reaches `node` at over SSH.
    fn ssh_address(&self, node: &NodeInfo) -> Result<String> {
        let addr = if self.use_internal_ips() {
            node.internal_ip.clone()
        } else if node.kind() == Some(NodeKind::Head) {
            node.external_ip.clone().or_else(|| node.internal_ip.clone())
        } else {
            node.internal_ip.clone()
        };
        addr.ok_or_else(|| {
            Error::new(
                ErrorKind::Transient,
                format!("node {} has no IP address yet", node.id),
            )
        })
    }

    fn ssh_options(&self) -> Result<SshOptions> {
        SshOptions::from_auth(&self.config.auth, self.settings.dir.known_hosts())
    }

    /// The SSH runner of `node` (cached: commands to one node share one connection).
    /// Workers are reached through the head when the head has an external address and
    /// `use_internal_ips` is off.
    pub async fn runner_for(&self, node: &NodeInfo, head: Option<&NodeInfo>) -> Result<Arc<SshRunner>> {
        let mut runners = self.runners.lock().await;
        if let Some(r) = runners.get(&node.id) {
            return Ok(r.clone());
        }
        let mut options = pinned_ssh_options(self.provider.as_ref(), node, self.ssh_options()?).await?;
        if node.kind() != Some(NodeKind::Head)
            && !self.use_internal_ips()
            && let Some(ext) = head.and_then(|h| h.external_ip.clone())
        {
            let jump = JumpHost {
                host: ext,
                port: options.port,
                user: options.user.clone(),
            };
            options = options.with_jump(jump);
        }
        let runner = Arc::new(SshRunner::new(self.ssh_address(node)?, options)?);
        runners.insert(node.id.clone(), runner.clone());
        Ok(runner)
    }

    async fn targets(&self, target: &NodeTarget) -> Result<(Vec<NodeInfo>, Option<NodeInfo>)> {
        let nodes = self.nodes().await?;
        let head = nodes.iter().find(|n| n.kind() == Some(NodeKind::Head)).cloned();
        let picked: Vec<NodeInfo> = match target {
            NodeTarget::Head => head.clone().into_iter().collect(),
            NodeTarget::All => nodes.clone(),
            NodeTarget::Ip(ip) => nodes
                .iter()
                .filter(|n| n.internal_ip.as_deref() == Some(ip) || n.external_ip.as_deref() == Some(ip))
                .cloned()
                .collect(),
        };
        if picked.is_empty() {
            let msg = match target {
                NodeTarget::Ip(ip) => format!(
                    "no node of cluster {} has the IP {ip}: see `cloudtik status`",
                    self.config.cluster_name
                ),
                _ => format!(
                    "cluster {} has no running node: start it with `cloudtik start`",
                    self.config.cluster_name
                ),
            };
            return Err(Error::new(ErrorKind::NotFound, msg));
        }
        Ok((picked, head))
    }

    /// The head's state store, connected on first use.
    pub async fn store(&self) -> Result<Arc<RedisStore>> {
        let mut guard = self.store.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let head = self.require_head().await?;
        let secrets = self.settings.dir.secrets()?;
        let address = if head.external_ip.is_none() || self.use_internal_ips() {
            let ip = head
                .internal_ip
                .clone()
                .ok_or_else(|| Error::new(ErrorKind::Transient, "the head has no IP address yet"))?;
            RedisAddress::new(ip, DEFAULT_REDIS_PORT)
        } else {
            let runner = self.runner_for(&head, Some(&head)).await?;
            let port = free_local_port()?;
            runner.forward_port(port, "127.0.0.1", DEFAULT_REDIS_PORT).await?;
            RedisAddress::new("127.0.0.1", port)
        };
        let config = RedisStoreConfig::new(address, secrets.key()?)
            .with_password(secrets.redis_password)
            .with_timeouts(Duration::from_secs(3), Duration::from_secs(10));
        let store = Arc::new(RedisStore::connect(config).await.map_err(|e| {
            e.with_context(
                "hint",
                "the head's state store is not reachable: is the cluster started?",
            )
        })?);
        *guard = Some(store.clone());
        Ok(store)
    }

    fn head_launch_tags(&self, hash: &str) -> Tags {
        let mut t = Tags::new();
        t.insert(tags::NODE_KIND.into(), NodeKind::Head.as_str().into());
        t.insert(tags::USER_NODE_TYPE.into(), self.config.head_node_type.clone());
        t.insert(
            tags::NODE_STATUS.into(),
            NodeStatus::Uninitialized.as_str().into(),
        );
        t.insert(tags::LAUNCH_CONFIG.into(), hash.into());
        t.insert(
            tags::NODE_NAME.into(),
            format!("cloudtik-{}-head", self.config.cluster_name),
        );
        t
    }

    async fn launch_head(&self, node_config: Value, hash: &str) -> Result<NodeInfo> {
        let token = self
            .settings
            .dir
            .head_launch_token()
            .unwrap_or_else(new_launch_token);
        self.settings.dir.record_head_launch(&token)?;
        self.progress("launching the head node");
        let resources = self
            .config
            .available_node_types
            .get(&self.config.head_node_type)
            .and_then(|t| t.resources.clone())
            .unwrap_or_default();
        let request = LaunchRequest::new(
            self.config.head_node_type.clone(),
            node_config,
            self.head_launch_tags(hash),
            1,
        )
        .with_token(token)
        .with_resources(resources);
        let outcome = self
            .provider
            .create_nodes(&request)
            .await
            .map_err(|e| e.with_context("node", "head"))?;
        match outcome.nodes.into_iter().next() {
            Some(n) => Ok(n),
            None => Err(outcome.shortfall.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    "the provider launched no head node and said nothing",
                )
            })),
        }
    }

    async fn wait_for_ip(&self, mut node: NodeInfo) -> Result<NodeInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while node.internal_ip.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the head {} got no IP address within 2 minutes", node.id),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            node =
                self.provider.node(&node.id).await?.ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, format!("the head {} is gone", node.id))
                })?;
        }
        Ok(node)
    }

    /// The head's config with the start options applied.
    fn head_cluster_config(&self, options: &StartOptions) -> ClusterConfig {
        let mut c = self
            .settings
            .head_config
            .clone()
            .unwrap_or_else(|| self.config.clone());
        if let Some(min) = options.min_workers {
            for (name, t) in c.available_node_types.iter_mut() {
                if *name != c.head_node_type {
                    t.min_workers = Some(min);
                }
            }
        }
        if let Some(max) = options.max_workers {
            c.max_workers = Some(max);
        }
        // Paths as the head has them: the key pair it receives, and the file mounts at
        // the paths they were synced to on the head (CloudTik's rule: workers get their
        // file mounts from the head). The launch hash hashes key contents, not paths,
        // so the head computes the same hashes.
        let layout = self.layout();
        c.auth.ssh_private_key = Some(layout.private_key_file());
        if c.auth.ssh_public_key.is_some() {
            c.auth.ssh_public_key = Some(layout.public_key_file());
        }
        c.file_mounts = c.file_mounts.keys().map(|r| (r.clone(), r.clone())).collect();
        c
    }

    /// The files the head receives, in a temporary folder: node path -> local path.
    fn head_files(
        &self,
        head: &NodeInfo,
        options: &StartOptions,
        secrets: &ClusterSecrets,
        tmp: &Path,
    ) -> Result<BTreeMap<String, std::path::PathBuf>> {
        let layout = self.layout();
        let io = |e: std::io::Error| {
            Error::new(ErrorKind::Unexpected, "cannot write the head's files").with_source(e)
        };
        let mut files = BTreeMap::new();
        let cluster = tmp.join("cluster.json");
        let json = serde_json::to_vec_pretty(&self.head_cluster_config(options)).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot serialize the cluster config").with_source(e)
        })?;
        std::fs::write(&cluster, json).map_err(io)?;
        files.insert(layout.cluster_file(), cluster);

        let snapshots = crate::runtime::snapshot::snapshots(&self.settings.runtimes, &self.config);
        if !snapshots.is_empty() {
            let runtimes = tmp.join("runtimes.json");
            let json = serde_json::to_vec_pretty(&snapshots).map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot serialize the runtimes").with_source(e)
            })?;
            std::fs::write(&runtimes, json).map_err(io)?;
            files.insert(layout.runtimes_file(), runtimes);
        }

        let boot = HeadBootstrap {
            cluster_name: Some(self.config.cluster_name.clone()),
            head_ip: head.internal_ip.clone(),
            redis_port: Some(DEFAULT_REDIS_PORT),
            redis_password: Some(secrets.redis_password.clone()),
            encryption_key: Some(secrets.encryption_key.clone()),
            head_node_type: Some(self.config.head_node_type.clone()),
            cluster_config: Some(layout.cluster_file().into()),
            ssh_private_key: Some(layout.private_key_file().into()),
            ssh_public_key: Some(layout.public_key_file().into()),
            known_hosts: Some(layout.known_hosts_file().into()),
            node_binary: Some(self.settings.node_binary.clone()),
            controller_interval_s: Some(self.settings.controller_interval.as_secs_f64()),
            heartbeat_timeout_s: Some(self.settings.heartbeat_timeout.as_secs_f64()),
            ..Default::default()
        };
        let boot_file = tmp.join("bootstrap.yaml");
        let text = serde_yaml_ng::to_string(&boot).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot serialize the bootstrap config").with_source(e)
        })?;
        local_dir::write_private(&boot_file, text.as_bytes())?;
        files.insert(layout.bootstrap_file(), boot_file);

        let private = self.ssh_options()?.private_key;
        let key = tmp.join("cluster_key");
        let bytes = std::fs::read(&private).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot read the private key {}", private.display()),
            )
            .with_source(e)
            .with_context("path", "auth.ssh_private_key")
        })?;
        local_dir::write_private(&key, &bytes)?;
        files.insert(layout.private_key_file(), key);
        if let Some(public) = &self.config.auth.ssh_public_key {
            let public = crate::config::hash::expand_home(public);
            let pub_file = tmp.join("cluster_key.pub");
            std::fs::copy(&public, &pub_file).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cannot read the public key {}", public.display()),
                )
                .with_source(e)
                .with_context("path", "auth.ssh_public_key")
            })?;
            files.insert(layout.public_key_file(), pub_file);
        }
        Ok(files)
    }

    async fn update_head(&self, head: &NodeInfo, options: &StartOptions) -> Result<()> {
        let secrets = self.settings.dir.secrets()?;
        let tmp = tempfile::tempdir().map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot make a temporary folder").with_source(e)
        })?;
        let files = self.head_files(head, options, &secrets, tmp.path())?;
        let layout = self.layout();
        let mut plan = UpdatePlan::from_config(&self.config, NodeKind::Head, &self.config.head_node_type)?;
        // The generated files count in the file-mount hash: a changed config or new
        // secrets make setup run again (and the files go up again).
        let mut hasher_input = plan.file_mounts_contents_hash.clone();
        for (remote, local) in &files {
            hasher_input.push_str(remote);
            hasher_input.push_str(&hex::encode(sha1_of_file(local)?));
            plan.file_mounts.insert(remote.clone(), local.clone());
        }
        plan.file_mounts_contents_hash =
            hex::encode(<sha1::Sha1 as sha1::Digest>::digest(hasher_input.as_bytes()));
        if options.restart_only {
            plan.initialization_commands.clear();
            plan.setup_commands.clear();
        }
        let runtimes = NodeRuntimes::of(&self.settings.runtimes, &self.config, &self.config.head_node_type);
        crate::runtime::apply_to_plan(
            &mut plan,
            &runtimes,
            NodeKind::Head,
            vec![layout.head_start_command()],
            &self.settings.node_binary,
        )?;
        if options.restart_only {
            plan.setup_commands.clear();
        }
        if options.no_restart {
            plan.start_commands.clear();
        }
        plan.env.insert(env::NODE_ID.into(), head.id.clone());
        plan.env
            .insert(env::NODE_IP.into(), head.internal_ip.clone().unwrap_or_default());
        plan.env
            .insert(env::NODE_TYPE.into(), self.config.head_node_type.clone());
        plan.env
            .insert(env::HEAD_IP.into(), head.internal_ip.clone().unwrap_or_default());
        plan.env
            .insert(env::REDIS_PORT.into(), DEFAULT_REDIS_PORT.to_string());

        let address = self.ssh_address(head)?;
        let ssh = pinned_ssh_options(self.provider.as_ref(), head, self.ssh_options()?).await?;
        let factory = move |_: &NodeInfo| -> Result<NodeRunners> {
            Ok(NodeRunners::host(Arc::new(SshRunner::new(
                address.clone(),
                ssh.clone(),
            )?)))
        };
        let mut updater_options = self.settings.updater.clone();
        if let Some(tx) = &self.settings.output {
            updater_options = updater_options.with_output(tx.clone());
        }
        self.progress("setting up the head node");
        NodeUpdater::new(
            self.provider.clone(),
            factory,
            head.id.clone(),
            plan,
            updater_options,
        )
        .update()
        .await?;
        Ok(())
    }

    async fn start_head(&self, options: &StartOptions) -> Result<()> {
        let head_type = self
            .config
            .available_node_types
            .get(&self.config.head_node_type)
            .ok_or_else(|| Error::config("head_node_type", "names no entry of available_node_types"))?;
        let node_config = Value::Object(head_type.node_config.clone());
        let hash = launch_hash(&node_config, &self.config.auth)?;
        self.progress("looking for the head node");
        let heads = self.provider.list_nodes_of_kind(NodeKind::Head).await?;
        let mut head = None;
        for h in heads {
            if head.is_none() && h.tag(tags::LAUNCH_CONFIG) == Some(hash.as_str()) {
                head = Some(h);
            } else {
                self.progress(format!(
                    "terminating the head {} (its launch config changed or it is a duplicate)",
                    h.id
                ));
                self.provider.terminate_node(&h.id).await?;
            }
        }
        let unfinished = self.settings.dir.head_launch_token();
        let head = match head {
            // A launch of ours that was interrupted (the node may be created but not
            // started): make the same launch again, which finishes it.
            Some(h) if unfinished.is_some() && h.tag(tags::LAUNCH_TOKEN) == unfinished.as_deref() => {
                self.progress(format!(
                    "finishing the interrupted launch of the head node {}",
                    h.id
                ));
                self.launch_head(node_config, &hash).await?
            }
            Some(h) => {
                self.progress(format!("found the head node {}", h.id));
                h
            }
            None => self.launch_head(node_config, &hash).await?,
        };
        let head = self.wait_for_ip(head).await?;
        self.runners.lock().await.remove(&head.id);
        self.update_head(&head, options).await?;
        if !options.no_restart {
            self.wait_for_head_services(&head).await?;
        }
        self.settings.dir.clear_head_launch();
        self.progress(format!(
            "the head {} is up at {}",
            head.id,
            head.internal_ip.as_deref().unwrap_or("?")
        ));
        Ok(())
    }

    async fn stop_nodes(&self, options: &StopOptions) -> Result<()> {
        let nodes = self.nodes().await?;
        let head = nodes.iter().find(|n| n.kind() == Some(NodeKind::Head)).cloned();
        if !options.workers_only
            && let Some(h) = &head
        {
            // The controller first, so it replaces no worker we terminate.
            self.progress("stopping the head's services");
            if let Ok(r) = self.runner_for(h, Some(h)).await {
                let spec = CommandSpec::new(self.layout().stop_service_command("head"))
                    .timeout(Some(Duration::from_secs(40)));
                if let Err(e) = r.run(&spec).await {
                    tracing::warn!(error = %e, "stopping the head's services failed; terminating anyway");
                }
            }
        }
        let mut workers: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.kind() != Some(NodeKind::Head))
            .cloned()
            .collect();
        if options.keep_min_workers {
            let mut kept: BTreeMap<String, u32> = BTreeMap::new();
            workers.sort_by_key(|n| n.status() != Some(NodeStatus::UpToDate));
            workers.retain(|n| {
                let t = n.node_type().unwrap_or_default().to_string();
                let min = self.config.min_workers_of(&t);
                let k = kept.entry(t).or_insert(0);
                if *k < min {
                    *k += 1;
                    false
                } else {
                    true
                }
            });
        }
        let mut doomed = workers.clone();
        if !options.workers_only {
            doomed.extend(head.clone());
        }
        if !options.hard {
            let mut runs = tokio::task::JoinSet::new();
            for n in &doomed {
                let kind = n.kind().unwrap_or(NodeKind::Worker);
                let node_type = n.node_type().unwrap_or_default();
                let mut commands = self.config.commands(CommandPhase::Stop, kind, node_type);
                let runtimes = NodeRuntimes::of(&self.settings.runtimes, &self.config, node_type);
                commands.extend(runtimes.commands(kind).stop);
                if commands.is_empty() {
                    continue;
                }
                let mut env = runtimes.environment(kind)?;
                env.insert(
                    crate::runtime::node::NODE_BINARY_ENV.to_string(),
                    self.settings.node_binary.clone(),
                );
                let Ok(runner) = self.runner_for(n, head.as_ref()).await else {
                    continue;
                };
                let id = n.id.clone();
                runs.spawn(async move {
                    for c in commands {
                        let spec = CommandSpec::new(c)
                            .envs(env.clone())
                            .timeout(Some(Duration::from_secs(60)));
                        if let Err(e) = runner.run(&spec).await {
                            tracing::warn!(node = %id, error = %e, "a stop command failed");
                        }
                    }
                });
            }
            while runs.join_next().await.is_some() {}
        }
        self.runners.lock().await.clear();
        *self.store.lock().await = None;
        let ids: Vec<String> = doomed.iter().map(|n| n.id.clone()).collect();
        if !ids.is_empty() {
            self.progress(format!("terminating {} node(s)", ids.len()));
            self.provider.terminate_nodes(&ids).await?;
        }
        // Check by listing that none is left.
        let left: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| ids.contains(&n.id))
            .map(|n| n.id)
            .collect();
        if !left.is_empty() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "nodes still listed after terminate: {}; run stop again",
                    left.join(", ")
                ),
            ));
        }
        if !options.workers_only {
            // Containers (or instances) of nodes stopped from outside, which no listing
            // shows: the user is tearing the cluster down, so they go too.
            match self.provider.remove_stopped_nodes().await {
                Ok(0) => {}
                Ok(n) => self.progress(format!("removed {n} node(s) stopped from outside")),
                Err(e) => return Err(e),
            }
            self.settings.dir.clear_head_launch();
            if !options.keep_secrets && self.nodes().await?.is_empty() {
                self.forget_secrets()?;
            }
        }
        Ok(())
    }

    /// The cluster's runtimes (of the head's node type) in start order and, per
    /// runtime, its endpoints given the head's address (`cloudtik info`).
    pub fn runtime_endpoints(
        &self,
        head_ip: &str,
    ) -> (Vec<String>, BTreeMap<String, BTreeMap<String, String>>) {
        let runtimes = NodeRuntimes::of(&self.settings.runtimes, &self.config, &self.config.head_node_type);
        (runtimes.config().types.clone(), runtimes.endpoints(head_ip))
    }

    /// The runtime config the head's controller published in the state store (runtimes,
    /// sections, services, endpoints); `None` when it published none.
    pub async fn published_runtimes(&self) -> Result<Option<Value>> {
        self.store().await?.runtime_config(None).await
    }

    /// Removes the cluster's key pair and secrets from this machine
    /// ([`ClusterDir::remove_secrets`]), saying so; for a cluster that is gone.
    pub fn forget_secrets(&self) -> Result<Vec<std::path::PathBuf>> {
        let removed = self.settings.dir.remove_secrets()?;
        if !removed.is_empty() {
            let names: Vec<String> = removed
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            self.progress(format!(
                "removed the cluster's {} from {}",
                names.join(", "),
                self.settings.dir.path().display()
            ));
        }
        Ok(removed)
    }

    /// Waits until the head's state store answers, the head's agent heartbeats and a
    /// cluster controller holds a live controller lease.
    async fn wait_for_head_services(&self, head: &NodeInfo) -> Result<()> {
        self.progress("waiting for the head's services");
        let deadline = tokio::time::Instant::now() + self.settings.head_ready_timeout;
        loop {
            *self.store.lock().await = None;
            let last = match self.store().await {
                Ok(store) => match store.heartbeat(&head.id).await {
                    Ok(Some(hb)) if !hb.is_lost(now_secs(), self.settings.heartbeat_timeout) => {
                        // The controller heartbeats through its lease.
                        match store.lease(crate::state::CONTROLLER_LEASE).await {
                            Ok(Some(l)) if !l.is_expired(now_secs()) => return Ok(()),
                            Ok(_) => Error::new(ErrorKind::Transient, "no cluster controller is acting yet"),
                            Err(e) => e,
                        }
                    }
                    Ok(_) => Error::new(ErrorKind::Transient, "no heartbeat from the head's agent yet"),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() > deadline {
                let layout = self.layout();
                let mut err = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the head's services did not come up within {:?}; see {} on the head \
                         (`cloudtik monitor`)",
                        self.settings.head_ready_timeout,
                        layout.head_log()
                    ),
                );
                err = err.with_context("last_error", last);
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn count_bundle(name: &str, n: u32) -> Vec<RequestBundle> {
    if n == 0 {
        return vec![BTreeMap::from([(name.to_string(), 0.0)])];
    }
    (0..n)
        .map(|_| BTreeMap::from([(name.to_string(), 1.0)]))
        .collect()
}

/// The worker type `scale --workers` means.
fn scale_worker_type(config: &ClusterConfig, given: Option<&str>) -> Result<String> {
    let workers: Vec<&String> = config
        .available_node_types
        .keys()
        .filter(|n| **n != config.head_node_type)
        .collect();
    match given {
        Some(t) if workers.iter().any(|w| *w == t) => Ok(t.to_string()),
        Some(t) => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "`{t}` is not a worker type of this cluster; worker types: {}",
                workers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
        None if workers.len() == 1 => Ok(workers[0].clone()),
        None => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the cluster has several worker types ({}): say which with --worker-type",
                workers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The resource request a [`ScaleRequest`] stands for in `config`'s cluster: `--workers N`
/// is `N` bundles of the worker type's marker resource ([`node_type_marker`]), `--cpus N`
/// and `--gpus N` are `N` bundles of one CPU or GPU, `--resources` one bundle per unit
/// of each integral amount, `--bundles` as given; zero clears the standing request of
/// that resource.
pub fn resource_request(config: &ClusterConfig, request: &ScaleRequest) -> Result<ResourceRequest> {
    let mut bundles: Vec<RequestBundle> = Vec::new();
    if let Some(n) = request.workers {
        let t = scale_worker_type(config, request.worker_type.as_deref())?;
        bundles.extend(count_bundle(&node_type_marker(&t), n));
    }
    if let Some(n) = request.cpus {
        bundles.extend(count_bundle("CPU", n));
    }
    if let Some(n) = request.gpus {
        bundles.extend(count_bundle("GPU", n));
    }
    if let Some(r) = &request.resources {
        for (name, amount) in r.iter() {
            if amount.fract() == 0.0 && amount <= 10_000.0 {
                bundles.extend(count_bundle(name, amount as u32));
            } else {
                bundles.push(BTreeMap::from([(name.to_string(), amount)]));
            }
        }
    }
    for b in &request.bundles {
        bundles.push(b.iter().map(|(k, v)| (k.to_string(), v)).collect());
    }
    if bundles.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "nothing to scale: give --workers, --cpus, --gpus, --resources or --bundles",
        ));
    }
    let r = ResourceRequest {
        request_time: now_secs(),
        requests: bundles,
        override_all: request.override_previous,
    };
    r.validate()?;
    Ok(r)
}

fn sha1_of_file(path: &Path) -> Result<Vec<u8>> {
    use sha1::Digest;
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(ErrorKind::Unexpected, format!("cannot read {}", path.display())).with_source(e)
    })?;
    Ok(sha1::Sha1::digest(&bytes).to_vec())
}

fn free_local_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot find a free local port").with_source(e))?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}

#[async_trait]
impl Cluster for ManagedCluster {
    fn config(&self) -> &ClusterConfig {
        &self.config
    }

    async fn start(&self, options: &StartOptions) -> Result<()> {
        let span = tracing::info_span!("cluster_start", cluster = %self.config.cluster_name);
        tracing::Instrument::instrument(self.start_head(options), span).await
    }

    async fn stop(&self, options: &StopOptions) -> Result<()> {
        let span = tracing::info_span!("cluster_stop", cluster = %self.config.cluster_name);
        tracing::Instrument::instrument(self.stop_nodes(options), span).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        let nodes = self.nodes().await?;
        let mut notes = Vec::new();
        let mut heartbeats: BTreeMap<String, NodeHeartbeat> = BTreeMap::new();
        let mut scaling: Option<Value> = None;
        let mut store_error: Option<String> = None;
        let mut lease = None;
        let mut processes: BTreeMap<String, crate::state::NodeProcesses> = BTreeMap::new();
        let head_listed = nodes.iter().any(|n| n.kind() == Some(NodeKind::Head));
        if head_listed {
            match self.store().await {
                Ok(store) => {
                    match store.all_heartbeats().await {
                        Ok(h) => heartbeats = h,
                        Err(e) => {
                            notes.push(format!("cannot read heartbeats: {e}"));
                            store_error = Some(e.to_string());
                        }
                    }
                    match store.lease(crate::state::CONTROLLER_LEASE).await {
                        Ok(l) => lease = l,
                        Err(e) => store_error = Some(e.to_string()),
                    }
                    match store.scaling_status().await {
                        Ok(s) => scaling = s,
                        Err(e) => notes.push(format!("cannot read the controller's status: {e}")),
                    }
                    match store.all_node_processes().await {
                        Ok(p) => processes = p,
                        Err(e) => notes.push(format!("cannot read the nodes' process health: {e}")),
                    }
                }
                Err(e) => store_error = Some(e.to_string()),
            }
        }
        let now = now_secs();
        let controller = lease.as_ref().map(|l| ControllerSummary::of(l, now));
        let summaries: Vec<NodeSummary> = nodes
            .iter()
            .map(|n| {
                let hb = heartbeats.get(&n.id);
                let node_type = n.node_type().unwrap_or_default().to_string();
                let resources = hb.map(|h| h.total_resources.clone()).unwrap_or_else(|| {
                    self.config
                        .available_node_types
                        .get(&node_type)
                        .and_then(|t| t.resources.clone())
                        .unwrap_or_default()
                });
                NodeSummary {
                    id: n.id.clone(),
                    kind: n.kind().unwrap_or(NodeKind::Worker),
                    node_type,
                    status: n.status(),
                    internal_ip: n.internal_ip.clone(),
                    external_ip: n.external_ip.clone(),
                    last_error: n
                        .tag(tags::LAST_ERROR)
                        .filter(|e| !e.is_empty())
                        .map(str::to_string),
                    resources,
                    available: hb.map(|h| h.available_resources.clone()),
                    heartbeat_age_secs: hb.map(|h| (now - h.heartbeat_time).max(0.0)),
                    down_processes: processes
                        .get(&n.id)
                        .filter(|_| hb.is_some_and(|h| !h.is_lost(now, self.settings.heartbeat_timeout)))
                        .map(|p| {
                            p.processes
                                .iter()
                                .filter(|(_, s)| !s.is_healthy())
                                .map(|(k, s)| (k.clone(), *s))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        for n in &summaries {
            for (name, state) in &n.down_processes {
                notes.push(format!(
                    "process {name} is {} on node {} ({}); its supervisor restarts it, see its log in \
                     ~/cloudtik/logs on the node",
                    serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    n.id,
                    n.internal_ip.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(err) = scaling
            .as_ref()
            .and_then(|s| s.get("policy_error"))
            .and_then(Value::as_str)
        {
            notes.push(format!("the scaling policy fails: {err}"));
        }
        let head_ok = summaries
            .iter()
            .any(|s| s.kind == NodeKind::Head && s.status == Some(NodeStatus::UpToDate));
        let head_heartbeat_age = summaries
            .iter()
            .find(|s| s.kind == NodeKind::Head)
            .and_then(|s| s.heartbeat_age_secs);
        let problem = head_services_problem(
            head_listed,
            store_error.as_deref().map_or(Ok(()), Err),
            controller.as_ref(),
            head_heartbeat_age,
            crate::state::DEFAULT_HEARTBEAT_TIMEOUT,
        );
        let state = if summaries.is_empty() {
            ClusterState::Stopped
        } else if head_ok && problem.is_none() {
            ClusterState::Running
        } else {
            ClusterState::Unhealthy
        };
        let shapes = |key: &str| -> Vec<Resources> {
            scaling
                .as_ref()
                .and_then(|s| s.get(key))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .flat_map(|d| {
                            let shape: Resources = d
                                .get("shape")
                                .and_then(|s| serde_json::from_value(s.clone()).ok())
                                .unwrap_or_default();
                            let count = d.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
                            std::iter::repeat_n(shape, count)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let pending_launches = scaling
            .as_ref()
            .and_then(|s| s.get("launching"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        if let Some(err) = scaling
            .as_ref()
            .and_then(|s| s.get("pass_error"))
            .and_then(Value::as_str)
        {
            notes.push(format!("the controller's last pass failed: {err}"));
        }
        if let Some(errs) = scaling
            .as_ref()
            .and_then(|s| s.get("launch_errors"))
            .and_then(Value::as_object)
        {
            for (t, e) in errs {
                notes.push(format!(
                    "launching {t} failed: {}",
                    e.as_str().unwrap_or_default()
                ));
            }
        }
        Ok(ClusterStatus {
            cluster_name: self.config.cluster_name.clone(),
            state,
            nodes: summaries,
            pending_launches,
            demands: shapes("unfulfilled"),
            infeasible: shapes("infeasible"),
            notes,
            controller,
            problem,
        })
    }

    async fn exec(&self, command: &str, options: &ExecOptions) -> Result<Vec<ExecResult>> {
        let (nodes, head) = self.targets(&options.target).await?;
        let command = if options.tmux {
            format!(
                "tmux new -d -s cloudtik-{} {}",
                now_secs() as u64,
                shell_quote(&format!("{command}; exec bash"))
            )
        } else if options.screen {
            format!(
                "screen -dmS cloudtik-{} bash -c {}",
                now_secs() as u64,
                shell_quote(&format!("{command}; exec bash"))
            )
        } else {
            command.to_string()
        };
        let mut runs = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let runner = self.runner_for(n, head.as_ref()).await?;
            // The node's runtimes' environment: their programs on the PATH (`python3`
            // with pyspark or ray importable), their homes.
            let kind = n.kind().unwrap_or(NodeKind::Worker);
            let env = NodeRuntimes::of(
                &self.settings.runtimes,
                &self.config,
                n.node_type().unwrap_or_default(),
            )
            .environment(kind)?;
            let mut spec = CommandSpec::new(command.clone())
                .envs(env)
                .timeout(options.timeout);
            if let Some(tx) = &options.output {
                spec = spec.stream_to(tx.clone());
            }
            let node = n.clone();
            runs.spawn(async move {
                let out = runner.run(&spec).await;
                (i, node, out)
            });
        }
        let mut results: Vec<(usize, ExecResult)> = Vec::new();
        while let Some(joined) = runs.join_next().await {
            let (i, node, out) = joined
                .map_err(|e| Error::new(ErrorKind::Unexpected, "an exec task failed").with_source(e))?;
            let out = out.map_err(|e| e.with_context("node", &node.id))?;
            results.push((
                i,
                ExecResult {
                    node_id: node.id,
                    node_ip: node.internal_ip,
                    exit_code: out.exit_code,
                    stdout: out.stdout,
                    stderr: out.stderr,
                },
            ));
        }
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    async fn rsync_up(&self, local: &Path, remote: &str, target: &NodeTarget) -> Result<()> {
        let (nodes, head) = self.targets(target).await?;
        let options = SyncOptions::default()
            .with_exclude(self.config.rsync_exclude.iter().cloned())
            .with_filter(self.config.rsync_filter.iter().cloned());
        for n in &nodes {
            let runner = self.runner_for(n, head.as_ref()).await?;
            runner
                .upload(local, remote, &options)
                .await
                .map_err(|e| e.with_context("node", &n.id))?;
        }
        Ok(())
    }

    async fn rsync_down(&self, remote: &str, local: &Path, target: &NodeTarget) -> Result<()> {
        let (nodes, head) = self.targets(target).await?;
        let n = &nodes[0];
        let runner = self.runner_for(n, head.as_ref()).await?;
        runner
            .download(remote, local, &SyncOptions::default())
            .await
            .map_err(|e| e.with_context("node", &n.id))
    }

    async fn scale(&self, request: &ScaleRequest) -> Result<()> {
        let r = resource_request(&self.config, request)?;
        let store = self.store().await?;
        if request.up_only && !r.override_all {
            // Up only: a group is sent only where it asks for more than stands now.
            let standing = store.resource_requests().await?;
            let mut kept = Vec::new();
            for (id, bundles) in r.grouped() {
                let now = standing.by_id.get(&id).map_or(0, Vec::len);
                if bundles.len() > now {
                    kept.extend(
                        r.requests
                            .iter()
                            .filter(|b| crate::state::resource_id(b) == id)
                            .cloned(),
                    );
                }
            }
            if kept.is_empty() {
                self.progress("the cluster already requests at least this much (--up-only)");
                return Ok(());
            }
            let r = ResourceRequest { requests: kept, ..r };
            return store.submit_resource_request(&r).await;
        }
        store.submit_resource_request(&r).await
    }

    async fn head_ip(&self) -> Result<Option<String>> {
        let head = self.require_head().await?;
        Ok(if self.use_internal_ips() {
            head.internal_ip
        } else {
            head.external_ip.or(head.internal_ip)
        })
    }

    async fn worker_ips(&self) -> Result<Vec<String>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.kind() != Some(NodeKind::Head))
            .filter_map(|n| n.internal_ip)
            .collect())
    }

    async fn kill_node(&self, target: &NodeTarget) -> Result<()> {
        let (nodes, _) = match target {
            NodeTarget::Ip(_) => self.targets(target).await?,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "say which node to kill by its IP (--node-ip)",
                ));
            }
        };
        for n in &nodes {
            if n.kind() == Some(NodeKind::Head) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "{} is the head: stop the cluster with `cloudtik stop` instead",
                        n.id
                    ),
                ));
            }
        }
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        self.runners.lock().await.retain(|id, _| !ids.contains(id));
        self.provider.terminate_nodes(&ids).await
    }

    async fn wait_for_ready(&self, min_workers: u32, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let nodes = self.nodes().await?;
            let ready = |n: &NodeInfo| n.status() == Some(NodeStatus::UpToDate);
            let head_ready = nodes.iter().any(|n| n.kind() == Some(NodeKind::Head) && ready(n));
            let workers: Vec<&NodeInfo> = nodes
                .iter()
                .filter(|n| n.kind() != Some(NodeKind::Head) && ready(n))
                .collect();
            let mut heartbeating = 0;
            if head_ready && workers.len() >= min_workers as usize {
                *self.store.lock().await = None;
                if let Ok(store) = self.store().await {
                    let hbs = store.all_heartbeats().await.unwrap_or_default();
                    heartbeating = workers
                        .iter()
                        .filter(|w| {
                            hbs.get(&w.id)
                                .is_some_and(|h| !h.is_lost(now_secs(), self.settings.heartbeat_timeout))
                        })
                        .count();
                    if heartbeating >= min_workers as usize {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "after {timeout:?}: head {}, {} of {min_workers} workers up to date ({heartbeating} \
                         heartbeating); see `cloudtik status` and `cloudtik monitor`",
                        if head_ready {
                            "up to date"
                        } else {
                            "not up to date"
                        },
                        workers.len()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A workspace on a provider: the [`Workspace`] operations.
#[derive(Debug, Clone)]
pub struct ManagedWorkspace {
    name: String,
    provider: Arc<dyn WorkspaceProvider>,
}

impl ManagedWorkspace {
    /// The workspace `name` on `provider`.
    pub fn new(name: impl Into<String>, provider: Arc<dyn WorkspaceProvider>) -> Self {
        ManagedWorkspace {
            name: name.into(),
            provider,
        }
    }
}

#[async_trait]
impl Workspace for ManagedWorkspace {
    fn name(&self) -> &str {
        &self.name
    }
    async fn create(&self) -> Result<()> {
        self.provider.create_workspace().await
    }
    async fn delete(&self, options: DeleteWorkspaceOptions) -> Result<()> {
        self.provider.delete_workspace(options).await
    }
    async fn update(&self) -> Result<()> {
        self.provider.update_workspace().await
    }
    async fn existence(&self) -> Result<WorkspaceExistence> {
        self.provider.workspace_existence().await
    }
    async fn info(&self) -> Result<Value> {
        self.provider.workspace_info().await
    }
    async fn list_clusters(&self) -> Result<Vec<String>> {
        self.provider.list_clusters().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(worker_types: &[&str]) -> ClusterConfig {
        let mut yaml = String::from(
            "cluster_name: c\nworkspace_name: w\nprovider: {type: local}\nauth: {ssh_user: root}\n\
             available_node_types:\n  head.default: {node_config: {}, resources: {CPU: 4}}\n",
        );
        for t in worker_types {
            yaml.push_str(&format!(
                "  {t}: {{node_config: {{}}, resources: {{CPU: 2}}, max_workers: 10}}\n"
            ));
        }
        yaml.push_str("head_node_type: head.default\n");
        crate::config::ConfigLoader::new()
            .load_cluster_str("t.yaml", &yaml)
            .unwrap()
    }

    fn scale() -> ScaleRequest {
        ScaleRequest::default()
    }

    #[test]
    fn workers_are_marker_bundles_of_the_only_or_named_type() {
        // The provider defaults' worker.default joins any config (CloudTik's merge), so
        // the only worker type is worker.default itself.
        let c = config(&["worker.default"]);
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(3),
                ..scale()
            },
        )
        .unwrap();
        assert_eq!(r.requests.len(), 3);
        assert!(
            r.requests
                .iter()
                .all(|b| b.get("node-type:worker.default") == Some(&1.0) && b.len() == 1)
        );
        // Zero clears the type's request.
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(0),
                ..scale()
            },
        )
        .unwrap();
        assert_eq!(
            r.requests,
            vec![BTreeMap::from([("node-type:worker.default".to_string(), 0.0)])]
        );

        let c = config(&["worker.a", "worker.b"]);
        let e = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(1),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--worker-type"), "{e}");
        let e = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(1),
                worker_type: Some("head.default".into()),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("worker.a, worker.b, worker.default"),
            "{e}"
        );
        // As in CloudTik, a config naming one type of its own has two worker types.
        let e = resource_request(
            &config(&["worker.a"]),
            &ScaleRequest {
                workers: Some(1),
                ..scale()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--worker-type"), "{e}");
        let r = resource_request(
            &c,
            &ScaleRequest {
                workers: Some(2),
                worker_type: Some("worker.b".into()),
                ..scale()
            },
        )
        .unwrap();
        assert!(r.requests.iter().all(|b| b.contains_key("node-type:worker.b")));
    }

    #[test]
    fn cpus_gpus_resources_and_bundles_become_bundles() {
        let c = config(&["w"]);
        let r = resource_request(
            &c,
            &ScaleRequest {
                cpus: Some(2),
                gpus: Some(1),
                resources: Some(Resources::from_pairs([("memory", 1.5), ("disk", 2.0)])),
                bundles: vec![Resources::from_pairs([("CPU", 4.0), ("GPU", 1.0)])],
                override_previous: true,
                ..scale()
            },
        )
        .unwrap();
        let count = |name: &str| {
            r.requests
                .iter()
                .filter(|b| b.contains_key(name) && b.len() == 1)
                .count()
        };
        assert_eq!(count("CPU"), 2);
        assert_eq!(count("GPU"), 1);
        assert_eq!(count("disk"), 2, "integral amounts are unit bundles");
        assert!(r.requests.iter().any(|b| b.get("memory") == Some(&1.5)));
        assert!(r.requests.iter().any(|b| b.len() == 2));
        assert!(r.override_all);
        let e = resource_request(&c, &scale()).unwrap_err();
        assert!(e.to_string().contains("nothing to scale"), "{e}");
        let e = resource_request(
            &c,
            &ScaleRequest {
                resources: Some(Resources::from_pairs([("CPU", f64::NAN)])),
                ..scale()
            },
        );
        assert!(e.is_err());
    }
}
