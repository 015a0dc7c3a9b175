//! [`ClusterSettings`]: how a [`ManagedCluster`](super::ManagedCluster) runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ClusterDir;
use crate::command::OutputLine;
use crate::config::ClusterConfig;
use crate::runtime::RuntimeRegistry;
use crate::updater::{NodeBootstrap, UpdaterOptions};

/// How a [`ManagedCluster`](super::ManagedCluster) runs, besides its config and provider.
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
    /// Installs the node program on the head (and `redis-server`) where missing or of
    /// another build, and has the head do so on workers with its own program; `None`:
    /// nodes come with them (the virtual provider mounts this machine's program).
    pub bootstrap: Option<NodeBootstrap>,
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
            bootstrap: None,
        }
    }

    /// Installs the node program and the head's packages on stock nodes (see
    /// [`ClusterSettings::bootstrap`]).
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: NodeBootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
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
