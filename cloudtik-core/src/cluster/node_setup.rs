//! [`SshNodeSetup`]: how the head's controller sets workers up, with the node updater
//! over SSH.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::layout::{NodeLayout, env};
use crate::command::{SshOptions, SshRunner};
use crate::config::ClusterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind};
use crate::provider::NodeProvider;
use crate::runtime::{NodeRuntimes, RuntimeRegistry};
use crate::scaler::{NodeSetup, SetupMode};
use crate::updater::{NodeBootstrap, NodeRunners, NodeUpdater, UpdateMode, UpdatePlan, UpdaterOptions};

/// Sets workers up over SSH: the node updater with the worker's commands of the cluster
/// config, then the core start command that runs the node's agent (`cloudtik-node
/// agent`, reporting to the head's state store under the node's provider id).
///
/// Every command gets `CLOUDTIK_NODE_ID`, `CLOUDTIK_NODE_IP`, `CLOUDTIK_NODE_TYPE`,
/// `CLOUDTIK_HEAD_IP`, `CLOUDTIK_REDIS_PORT` and `CLOUDTIK_REDIS_PASSWORD` (masked in
/// every log line) besides `runtime.envs`.
pub struct SshNodeSetup {
    provider: Arc<dyn NodeProvider>,
    config: Arc<ClusterConfig>,
    ssh: SshOptions,
    layout: NodeLayout,
    head_ip: String,
    redis_port: u16,
    redis_password: String,
    options: UpdaterOptions,
    runtimes: Arc<RuntimeRegistry>,
    bootstrap: Option<NodeBootstrap>,
}

impl std::fmt::Debug for SshNodeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshNodeSetup")
            .field("cluster", &self.config.cluster_name)
            .field("head_ip", &self.head_ip)
            .field("redis_port", &self.redis_port)
            .finish_non_exhaustive()
    }
}

impl SshNodeSetup {
    /// Setup of `config`'s workers on `provider`, reaching them with `ssh`, running
    /// `layout`'s agent against the state store at `head_ip:redis_port`.
    pub fn new(
        provider: Arc<dyn NodeProvider>,
        config: Arc<ClusterConfig>,
        ssh: SshOptions,
        layout: NodeLayout,
        head_ip: impl Into<String>,
        redis_port: u16,
        redis_password: impl Into<String>,
    ) -> Self {
        let mut options = UpdaterOptions::from_cluster_options(&config.options);
        // A check is one `uptime` over a new connection: cheap enough to try every
        // second, which matters for nodes that boot in a second (containers).
        options.ssh_check_interval = std::time::Duration::from_secs(1);
        SshNodeSetup {
            provider,
            config,
            ssh,
            layout,
            head_ip: head_ip.into(),
            redis_port,
            redis_password: redis_password.into(),
            options,
            runtimes: Arc::new(RuntimeRegistry::new()),
            bootstrap: None,
        }
    }

    /// Installs the node program (and packages) on workers that lack them or hold
    /// another build, before their setup (see [`NodeBootstrap`]).
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: NodeBootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// Sets the runtimes whose commands join the workers' setup.
    #[must_use]
    pub fn with_runtimes(mut self, runtimes: Arc<RuntimeRegistry>) -> Self {
        self.runtimes = runtimes;
        self
    }

    /// Replaces the updater's timing and retries.
    #[must_use]
    pub fn with_updater_options(mut self, options: UpdaterOptions) -> Self {
        self.options = options;
        self
    }

    /// The plan of `node`: its type's commands, the agent's start and its runtimes'
    /// commands (see [`apply_to_plan`](crate::runtime::apply_to_plan)).
    pub fn plan_for(&self, node: &NodeInfo) -> Result<UpdatePlan> {
        let node_type = node.node_type().unwrap_or_default();
        let mut plan = UpdatePlan::from_config(&self.config, NodeKind::Worker, node_type)?;
        let runtimes = NodeRuntimes::of(&self.runtimes, &self.config, node_type);
        let layout = self.layout_for(node_type);
        crate::runtime::apply_to_plan(
            &mut plan,
            &runtimes,
            NodeKind::Worker,
            vec![layout.agent_start_command()],
            layout.node_binary(),
        )?;
        for (k, v) in self.env_for(node) {
            plan.env.insert(k, v);
        }
        plan.bootstrap = self.bootstrap.clone();
        Ok(plan)
    }

    /// The layout of workers of `node_type`: root's in container mode.
    fn layout_for(&self, node_type: &str) -> NodeLayout {
        if self.config.container_mode(node_type) {
            NodeLayout::new("root", self.layout.node_binary())
        } else {
            self.layout.clone()
        }
    }

    fn env_for(&self, node: &NodeInfo) -> BTreeMap<String, String> {
        BTreeMap::from([
            (env::NODE_ID.to_string(), node.id.clone()),
            (
                env::NODE_IP.to_string(),
                node.internal_ip.clone().unwrap_or_default(),
            ),
            (
                env::NODE_TYPE.to_string(),
                node.node_type().unwrap_or_default().to_string(),
            ),
            (env::HEAD_IP.to_string(), self.head_ip.clone()),
            (env::REDIS_PORT.to_string(), self.redis_port.to_string()),
            (env::REDIS_PASSWORD.to_string(), self.redis_password.clone()),
        ])
    }
}

#[async_trait]
impl NodeSetup for SshNodeSetup {
    async fn set_up(&self, node: &NodeInfo, mode: SetupMode) -> Result<()> {
        let plan = self.plan_for(node)?;
        // Pinned before the updater's first connection (from the provider where it can
        // tell the key); the updater's runners then accept only that key.
        let ssh = super::pinned_ssh_options(self.provider.as_ref(), node, self.ssh.clone()).await?;
        let config = self.config.clone();
        let factory = move |n: &NodeInfo| -> Result<NodeRunners> {
            let ip = n.internal_ip.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::Transient,
                    format!("node {} has no internal IP yet", n.id),
                )
            })?;
            let options = ssh.clone().with_host_key_alias(n.id.clone());
            let host: Arc<dyn crate::command::CommandRunner> = Arc::new(SshRunner::new(ip, options)?);
            super::container::node_runners(
                &config,
                n.kind().unwrap_or(NodeKind::Worker),
                n.node_type().unwrap_or_default(),
                host,
            )
        };
        let options = self.options.clone().with_mode(match mode {
            SetupMode::Full => UpdateMode::Full,
            SetupMode::Recovery => UpdateMode::Recovery,
        });
        NodeUpdater::new(self.provider.clone(), factory, node.id.clone(), plan, options)
            .update()
            .await
            .map(|_| ())
    }
}
