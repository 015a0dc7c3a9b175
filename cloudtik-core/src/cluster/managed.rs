//! [`ManagedCluster`]: the cluster of a config on a provider, its nodes and its connections
//! to them (SSH runners, the head's state store).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;

use super::{ClusterSettings, DEFAULT_REDIS_PORT, NodeLayout, pinned_ssh_options};
use crate::command::{CommandRunner, JumpHost, SshOptions, SshRunner};
use crate::config::ClusterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, Tags};
use crate::operations::NodeTarget;
use crate::provider::NodeProvider;
use crate::runtime::NodeRuntimes;
use crate::state::{RedisAddress, RedisStore, RedisStoreConfig, StateStore};

/// A cluster on a provider: the [`Cluster`](crate::Cluster) operations.
pub struct ManagedCluster {
    pub(super) config: ClusterConfig,
    pub(super) provider: Arc<dyn NodeProvider>,
    pub(super) settings: ClusterSettings,
    pub(super) runners: Mutex<HashMap<String, Arc<SshRunner>>>,
    pub(super) store: Mutex<Option<Arc<dyn StateStore>>>,
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

impl ManagedCluster {
    /// The cluster of `config` on `provider`. `config.auth` must name the private key
    /// (see [`ClusterDir::prepare_auth`](super::ClusterDir::prepare_auth)).
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

    /// The head's layout (paths on the head, core commands); in container mode, inside
    /// its container.
    pub fn layout(&self) -> NodeLayout {
        NodeLayout::new(
            super::container::layout_user(&self.config, &self.config.head_node_type),
            self.settings.node_binary.clone(),
        )
    }

    pub(super) fn progress(&self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::info!(cluster = %self.config.cluster_name, "{msg}");
        if let Some(tx) = &self.settings.progress {
            let _ = tx.send(msg);
        }
    }

    pub(super) fn use_internal_ips(&self) -> bool {
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

    pub(super) async fn require_head(&self) -> Result<NodeInfo> {
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
    pub(super) fn ssh_address(&self, node: &NodeInfo) -> Result<String> {
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

    pub(super) fn ssh_options(&self) -> Result<SshOptions> {
        SshOptions::from_auth(&self.config.auth, self.settings.dir.known_hosts())
    }

    /// The runner of `node`: [`ssh_runner_for`](Self::ssh_runner_for), wrapped in the
    /// node's container in container mode (see [`container`](super::container)).
    pub async fn runner_for(
        &self,
        node: &NodeInfo,
        head: Option<&NodeInfo>,
    ) -> Result<Arc<dyn CommandRunner>> {
        let ssh: Arc<dyn CommandRunner> = self.ssh_runner_for(node, head).await?;
        let kind = node.kind().unwrap_or(NodeKind::Worker);
        let node_type = node.node_type().unwrap_or_default();
        Ok(super::container::node_runners(&self.config, kind, node_type, ssh)?.main())
    }

    /// The SSH runner of `node`, with the cluster's key and pinned host keys (cached:
    /// commands to one node share one connection), for what only SSH does (an
    /// interactive `attach`). Workers are reached through the head when the head has an
    /// external address and `use_internal_ips` is off.
    pub async fn ssh_runner_for(&self, node: &NodeInfo, head: Option<&NodeInfo>) -> Result<Arc<SshRunner>> {
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
        runners.insert(node.id.clone(), Arc::clone(&runner));
        Ok(runner)
    }

    pub(super) async fn targets(&self, target: &NodeTarget) -> Result<(Vec<NodeInfo>, Option<NodeInfo>)> {
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

    /// The head's state store (its Redis, reached directly or through an SSH port
    /// forward), connected on first use.
    pub async fn store(&self) -> Result<Arc<dyn StateStore>> {
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
        let store: Arc<dyn StateStore> = Arc::new(RedisStore::connect(config).await.map_err(|e| {
            e.with_context(
                "hint",
                "the head's state store is not reachable: is the cluster started?",
            )
        })?);
        *guard = Some(store.clone());
        Ok(store)
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
    /// ([`ClusterDir::remove_secrets`](super::ClusterDir::remove_secrets)), saying so; for a cluster that is gone.
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
}

pub(super) fn free_local_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot find a free local port").with_source(e))?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}
