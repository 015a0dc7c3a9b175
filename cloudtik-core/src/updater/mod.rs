//! [`NodeUpdater`]: sets a node up and walks its status tag through CloudTik's state machine.
//!
//! ```text
//! uninitialized -> waiting-for-ssh -> syncing-files -> setting-up -> (start commands) -> up-to-date
//!                        |                 |               |                |
//!                        +-----------------+---------------+----------------+--> update-failed
//! ```
//!
//! * **waiting-for-ssh**: `uptime` on the node (10 s timeout) every 5 s until it answers,
//!   up to a deadline (900 s). Refused connections, time-outs and failed logins are
//!   retried; a changed host key or a node that is gone ends the wait at once.
//! * **bootstrap** (full updates of a plan with a [`NodeBootstrap`], every time): the
//!   node program and the core's packages are installed where missing or of another
//!   build (see [`bootstrap`]); the status is `setting-up` while anything is installed.
//!   Errors name the phase `bootstrapping` and the `step`.
//! * When the node's `cloudtik-runtime-config` and `cloudtik-file-mounts-contents` tags
//!   already match the plan's hashes (and, in container mode, the container runs), file
//!   sync and setup are skipped: only the start commands run.
//! * **syncing-files**: every file mount is uploaded (rsync with the cluster's excludes
//!   and filters).
//! * **setting-up**: initialization commands (on the host, 30 tries), the container
//!   (container mode), then setup commands (5 tries).
//! * Start commands (3 tries), with no status change; then **up-to-date**, with the hash
//!   tags written.
//! * Any failure sets **update-failed** and the `cloudtik-last-error` tag (a one-line
//!   summary), and returns the error with the failing command, its exit code and the
//!   tail of its output as context (`command`, `exit_code`, `output_tail`), plus `node`
//!   and `phase`.
//!
//! [`UpdateMode::Recovery`] runs the start commands only (a node whose processes died).
//! All tags are written through the provider's `set_node_tags`.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::command::{
    CommandRunner, CommandRunnerExt, CommandSpec, DockerRunner, OutputLine, RetryPolicy, RunEnv, SyncOptions,
};
use crate::config::{ClusterConfig, ClusterOptions, CommandPhase, runtime_hashes};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, NodeStatus, Tags, tags};
use crate::provider::{NodeProvider, NodeProviderExt};

pub mod bootstrap;
pub use bootstrap::{NodeBinary, NodeBootstrap, NodePackage};

/// Longest `cloudtik-last-error` tag value written (cloud tag values are limited; AWS: 256).
pub const MAX_LAST_ERROR_LEN: usize = 250;

/// The runners of one node: the host's, and in container mode the container's.
#[derive(Debug, Clone)]
pub struct NodeRunners {
    /// Runs commands on the node's host.
    pub host: Arc<dyn CommandRunner>,
    /// Container execution mode: the node's container (wrapping `host`).
    pub container: Option<Arc<DockerRunner>>,
}

impl NodeRunners {
    /// Host mode: every command on the host.
    pub fn host(runner: Arc<dyn CommandRunner>) -> Self {
        NodeRunners {
            host: runner,
            container: None,
        }
    }

    /// Container mode.
    pub fn container(host: Arc<dyn CommandRunner>, container: Arc<DockerRunner>) -> Self {
        NodeRunners {
            host,
            container: Some(container),
        }
    }

    /// The runner of setup and start commands and file mounts: the container's in
    /// container mode, else the host's.
    pub fn main(&self) -> Arc<dyn CommandRunner> {
        match &self.container {
            Some(c) => c.clone(),
            None => self.host.clone(),
        }
    }
}

/// Makes the runners of a node. Called again on every try while waiting for SSH, so a
/// factory may connect eagerly and fail with a retryable error.
#[async_trait]
pub trait RunnerFactory: Send + Sync + 'static {
    /// The runners for `node`.
    async fn runners_for(&self, node: &NodeInfo) -> Result<NodeRunners>;
}

#[async_trait]
impl<F> RunnerFactory for F
where
    F: Fn(&NodeInfo) -> Result<NodeRunners> + Send + Sync + 'static,
{
    async fn runners_for(&self, node: &NodeInfo) -> Result<NodeRunners> {
        self(node)
    }
}

/// What to run on a node, with the hashes that say whether setup must run again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdatePlan {
    /// Initialization commands, run on the host.
    pub initialization_commands: Vec<String>,
    /// Setup commands (bootstrap commands included).
    pub setup_commands: Vec<String>,
    /// Start commands.
    pub start_commands: Vec<String>,
    /// File mounts: node path -> local path.
    pub file_mounts: BTreeMap<String, PathBuf>,
    /// Excludes and filters of the file mounts.
    pub sync_options: SyncOptions,
    /// Environment variables of every command.
    pub env: BTreeMap<String, String>,
    /// The runtime hash (`cloudtik-runtime-config`).
    pub runtime_hash: String,
    /// The file-mount contents hash (`cloudtik-file-mounts-contents`).
    pub file_mounts_contents_hash: String,
    /// What to install on the node before anything else (none: the image has it).
    pub bootstrap: Option<NodeBootstrap>,
}

impl UpdatePlan {
    /// The plan of a node of `kind` and `node_type` in `config`: its commands, file
    /// mounts, rsync excludes and filters, `runtime.envs`, and hashes.
    pub fn from_config(config: &ClusterConfig, kind: NodeKind, node_type: &str) -> Result<Self> {
        let hashes = runtime_hashes(config, kind, node_type)?;
        let env = config
            .runtime
            .envs
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let mut initialization_commands = config.commands(CommandPhase::Initialization, kind, node_type);
        let docker = config.docker_for(node_type)?;
        if docker.enabled {
            initialization_commands.extend(docker.initialization_commands.iter().cloned());
            initialization_commands.extend(
                match kind {
                    NodeKind::Head => &docker.head_initialization_commands,
                    _ => &docker.worker_initialization_commands,
                }
                .iter()
                .cloned(),
            );
        }
        Ok(UpdatePlan {
            initialization_commands,
            setup_commands: config.commands(CommandPhase::Setup, kind, node_type),
            start_commands: config.commands(CommandPhase::Start, kind, node_type),
            file_mounts: config
                .file_mounts
                .iter()
                .map(|(remote, local)| (remote.clone(), crate::config::hash::expand_home(local)))
                .collect(),
            sync_options: SyncOptions::default()
                .with_exclude(config.rsync_exclude.iter().cloned())
                .with_filter(config.rsync_filter.iter().cloned()),
            env,
            runtime_hash: hashes.runtime_hash,
            file_mounts_contents_hash: hashes.file_mounts_contents_hash,
            bootstrap: None,
        })
    }

    /// Sets the initialization commands.
    #[must_use]
    pub fn with_initialization_commands<S: Into<String>>(mut self, c: impl IntoIterator<Item = S>) -> Self {
        self.initialization_commands = c.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the setup commands.
    #[must_use]
    pub fn with_setup_commands<S: Into<String>>(mut self, c: impl IntoIterator<Item = S>) -> Self {
        self.setup_commands = c.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the start commands.
    #[must_use]
    pub fn with_start_commands<S: Into<String>>(mut self, c: impl IntoIterator<Item = S>) -> Self {
        self.start_commands = c.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a file mount.
    #[must_use]
    pub fn with_file_mount(mut self, remote: impl Into<String>, local: impl Into<PathBuf>) -> Self {
        self.file_mounts.insert(remote.into(), local.into());
        self
    }

    /// Sets the sync options.
    #[must_use]
    pub fn with_sync_options(mut self, o: SyncOptions) -> Self {
        self.sync_options = o;
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Installs the node program and packages first (see [`bootstrap`]).
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: NodeBootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// Sets the hashes.
    #[must_use]
    pub fn with_hashes(
        mut self,
        runtime_hash: impl Into<String>,
        file_mounts_contents_hash: impl Into<String>,
    ) -> Self {
        self.runtime_hash = runtime_hash.into();
        self.file_mounts_contents_hash = file_mounts_contents_hash.into();
        self
    }
}

/// What the updater does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// The whole state machine (setup skipped when the hashes match).
    #[default]
    Full,
    /// Start commands only (recovering a node whose processes died).
    Recovery,
}

/// Timing and retries of the updater.
#[derive(Clone)]
#[non_exhaustive]
pub struct UpdaterOptions {
    /// Give up waiting for SSH after this long (CloudTik: 900 s).
    pub ssh_deadline: Duration,
    /// Wait between SSH checks (5 s).
    pub ssh_check_interval: Duration,
    /// Timeout of one SSH check (`uptime`, 10 s).
    pub ssh_check_timeout: Duration,
    /// Timeout of each setup or start command (`None`: none).
    pub command_timeout: Option<Duration>,
    /// Retries of initialization commands (30 tries, 5 s apart).
    pub initialization_retry: RetryPolicy,
    /// Retries of setup commands (5 tries).
    pub setup_retry: RetryPolicy,
    /// Retries of start commands (3 tries).
    pub start_retry: RetryPolicy,
    /// Full or recovery.
    pub mode: UpdateMode,
    /// Also stream every command's output here.
    pub output: Option<mpsc::UnboundedSender<OutputLine>>,
}

impl Debug for UpdaterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdaterOptions")
            .field("ssh_deadline", &self.ssh_deadline)
            .field("ssh_check_interval", &self.ssh_check_interval)
            .field("ssh_check_timeout", &self.ssh_check_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("initialization_retry", &self.initialization_retry)
            .field("setup_retry", &self.setup_retry)
            .field("start_retry", &self.start_retry)
            .field("mode", &self.mode)
            .field("streamed", &self.output.is_some())
            .finish()
    }
}

impl Default for UpdaterOptions {
    fn default() -> Self {
        UpdaterOptions {
            ssh_deadline: Duration::from_secs(900),
            ssh_check_interval: Duration::from_secs(5),
            ssh_check_timeout: Duration::from_secs(10),
            command_timeout: None,
            initialization_retry: RetryPolicy::INITIALIZATION,
            setup_retry: RetryPolicy::SETUP,
            start_retry: RetryPolicy::START,
            mode: UpdateMode::Full,
            output: None,
        }
    }
}

impl UpdaterOptions {
    /// Defaults, with `options.number_of_retries` and `options.retry_interval` of the
    /// cluster applied to setup and start commands.
    pub fn from_cluster_options(options: &ClusterOptions) -> Self {
        let mut o = UpdaterOptions::default();
        if let Some(n) = options.number_of_retries {
            o.setup_retry.tries = n.max(1);
            o.start_retry.tries = n.max(1);
        }
        if let Some(secs) = options.retry_interval.filter(|s| s.is_finite() && *s >= 0.0) {
            let d = Duration::from_secs_f64(secs);
            o.initialization_retry.interval = d;
            o.setup_retry.interval = d;
            o.start_retry.interval = d;
        }
        o
    }

    /// Sets the SSH deadline and check interval.
    #[must_use]
    pub fn with_ssh_wait(mut self, deadline: Duration, interval: Duration) -> Self {
        self.ssh_deadline = deadline;
        self.ssh_check_interval = interval;
        self
    }

    /// Sets the same retry interval for every phase.
    #[must_use]
    pub fn with_retry_interval(mut self, d: Duration) -> Self {
        self.initialization_retry.interval = d;
        self.setup_retry.interval = d;
        self.start_retry.interval = d;
        self
    }

    /// Sets the tries of initialization, setup and start commands.
    #[must_use]
    pub fn with_tries(mut self, initialization: u32, setup: u32, start: u32) -> Self {
        self.initialization_retry.tries = initialization.max(1);
        self.setup_retry.tries = setup.max(1);
        self.start_retry.tries = start.max(1);
        self
    }

    /// Sets the timeout of each command.
    #[must_use]
    pub fn with_command_timeout(mut self, t: Option<Duration>) -> Self {
        self.command_timeout = t;
        self
    }

    /// Sets the mode.
    #[must_use]
    pub fn with_mode(mut self, mode: UpdateMode) -> Self {
        self.mode = mode;
        self
    }

    /// Streams command output to `tx`.
    #[must_use]
    pub fn with_output(mut self, tx: mpsc::UnboundedSender<OutputLine>) -> Self {
        self.output = Some(tx);
        self
    }
}

/// What a successful update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The node.
    pub node_id: String,
    /// File sync and setup ran (false: skipped because the hashes matched, or recovery).
    pub setup_ran: bool,
    /// Commands that ran to success.
    pub commands_run: usize,
}

/// Sets one node up; see the [module docs](self).
pub struct NodeUpdater<F: RunnerFactory> {
    provider: Arc<dyn NodeProvider>,
    factory: F,
    node_id: String,
    plan: UpdatePlan,
    options: UpdaterOptions,
}

impl<F: RunnerFactory> Debug for NodeUpdater<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeUpdater")
            .field("node_id", &self.node_id)
            .field("plan", &self.plan)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A phase of an update, named in errors as the status it ran under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WaitingForSsh,
    Bootstrapping,
    SyncingFiles,
    SettingUp,
    Starting,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::WaitingForSsh => "waiting-for-ssh",
            Phase::Bootstrapping => "bootstrapping",
            Phase::SyncingFiles => "syncing-files",
            Phase::SettingUp => "setting-up",
            Phase::Starting => "start-commands",
        }
    }
}

impl<F: RunnerFactory> NodeUpdater<F> {
    /// An updater of `node_id` on `provider`, reaching the node through `factory`.
    pub fn new(
        provider: Arc<dyn NodeProvider>,
        factory: F,
        node_id: impl Into<String>,
        plan: UpdatePlan,
        options: UpdaterOptions,
    ) -> Self {
        NodeUpdater {
            provider,
            factory,
            node_id: node_id.into(),
            plan,
            options,
        }
    }

    /// Runs the update. On failure the node is tagged `update-failed` with a short
    /// `cloudtik-last-error`, and the error is returned with context `node` and
    /// `phase` (plus `command`, `exit_code`, `output_tail` for a failed command).
    pub async fn update(&self) -> Result<UpdateOutcome> {
        let span = tracing::info_span!("node_update", node = %self.node_id);
        let mut phase = Phase::WaitingForSsh;
        let result = self.do_update(&mut phase).instrument(span).await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(err) => {
                let err = err
                    .with_context("node", &self.node_id)
                    .with_context("phase", phase.as_str());
                let mut short = format!("{}: {}", phase.as_str(), err.message().replace(['\n', '\r'], " "));
                if short.chars().count() > MAX_LAST_ERROR_LEN {
                    short = short.chars().take(MAX_LAST_ERROR_LEN - 3).collect::<String>() + "...";
                }
                let mut t = Tags::new();
                t.insert(tags::NODE_STATUS.into(), NodeStatus::UpdateFailed.as_str().into());
                t.insert(tags::LAST_ERROR.into(), short);
                if let Err(tag_err) = self.provider.set_tags(&self.node_id, t).await {
                    tracing::warn!(node = %self.node_id, error = %tag_err, "cannot tag the node update-failed");
                }
                tracing::warn!(node = %self.node_id, error = %crate::Report(&err), "node update failed");
                Err(err)
            }
        }
    }

    async fn set_status(&self, status: NodeStatus) -> Result<()> {
        let mut t = Tags::new();
        t.insert(tags::NODE_STATUS.into(), status.as_str().into());
        self.provider.set_tags(&self.node_id, t).await
    }

    async fn current_node(&self) -> Result<NodeInfo> {
        self.provider.node(&self.node_id).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("node {} is terminated or gone", self.node_id),
            )
        })
    }

    async fn do_update(&self, phase: &mut Phase) -> Result<UpdateOutcome> {
        self.set_status(NodeStatus::WaitingForSsh).await?;
        let (node, runners) = self.wait_for_ssh().await?;
        let main = runners.main();
        let mut commands_run = 0;

        if self.options.mode == UpdateMode::Recovery {
            *phase = Phase::Starting;
            commands_run += self
                .run_all(
                    &*main,
                    &self.plan.start_commands,
                    self.options.start_retry,
                    RunEnv::Auto,
                )
                .await?;
            self.finish(false).await?;
            return Ok(UpdateOutcome {
                node_id: self.node_id.clone(),
                setup_ran: false,
                commands_run,
            });
        }

        // Host mode: the node program and packages on the host. Container mode: Docker
        // on the host now, the rest in the container once it runs.
        let container_mode = runners.container.is_some();
        if let Some(bootstrap) = &self.plan.bootstrap {
            *phase = Phase::Bootstrapping;
            if container_mode {
                let docker = NodeBootstrap::packages_only([NodePackage::docker()]);
                self.bootstrap(&docker, &*runners.host).await?;
            } else {
                self.bootstrap(bootstrap, &*runners.host).await?;
            }
        }
        let mut container_bootstrapped = false;

        let hashes_match = node.tag(tags::RUNTIME_CONFIG) == Some(self.plan.runtime_hash.as_str())
            && node.tag(tags::FILE_MOUNTS_CONTENTS) == Some(self.plan.file_mounts_contents_hash.as_str());
        let container_missing = match &runners.container {
            Some(c) => !c.container_running().await?,
            None => false,
        };
        let setup = !hashes_match || container_missing;
        if setup {
            *phase = Phase::SyncingFiles;
            self.set_status(NodeStatus::SyncingFiles).await?;
            // Host mode: file mounts go to the host. Container mode: into the container
            // once it runs.
            if !container_mode {
                for (remote, local) in &self.plan.file_mounts {
                    runners
                        .host
                        .upload(local, remote, &self.plan.sync_options)
                        .await?;
                }
            }

            *phase = Phase::SettingUp;
            self.set_status(NodeStatus::SettingUp).await?;
            commands_run += self
                .run_all(
                    &*runners.host,
                    &self.plan.initialization_commands,
                    self.options.initialization_retry,
                    RunEnv::Host,
                )
                .await?;
            if let Some(container) = &runners.container {
                container.start_container().await.map_err(|e| {
                    let image = container.spec().image.clone();
                    let hint = Error::new(
                        e.kind(),
                        format!(
                            "cannot start the container from image {image} on node {}: the node's Docker \
                             must have the image or pull it; load it in `docker.initialization_commands` \
                             (`docker load -i <file>`) or push it to a registry the node reaches",
                            self.node_id
                        ),
                    );
                    hint.with_source(e).with_context("step", "start container")
                })?;
                if let Some(bootstrap) = &self.plan.bootstrap {
                    *phase = Phase::Bootstrapping;
                    self.bootstrap(bootstrap, &**container).await?;
                    container_bootstrapped = true;
                    *phase = Phase::SettingUp;
                }
                for (remote, local) in &self.plan.file_mounts {
                    container.upload(local, remote, &self.plan.sync_options).await?;
                }
            }
            commands_run += self
                .run_all(
                    &*main,
                    &self.plan.setup_commands,
                    self.options.setup_retry,
                    RunEnv::Auto,
                )
                .await?;
        }

        if container_mode
            && !container_bootstrapped
            && let Some(bootstrap) = &self.plan.bootstrap
        {
            *phase = Phase::Bootstrapping;
            self.bootstrap(bootstrap, &*main).await?;
        }

        *phase = Phase::Starting;
        commands_run += self
            .run_all(
                &*main,
                &self.plan.start_commands,
                self.options.start_retry,
                RunEnv::Auto,
            )
            .await?;
        self.finish(true).await?;
        Ok(UpdateOutcome {
            node_id: self.node_id.clone(),
            setup_ran: setup,
            commands_run,
        })
    }

    /// Runs `bootstrap` through `runner` (setting `setting-up` when it installs anything).
    async fn bootstrap(&self, bootstrap: &NodeBootstrap, runner: &dyn CommandRunner) -> Result<()> {
        let (facts, plan) = bootstrap.probe(&self.node_id, runner).await?;
        if plan.is_empty() {
            return Ok(());
        }
        self.set_status(NodeStatus::SettingUp).await?;
        let done = bootstrap
            .apply(&self.node_id, runner, &facts, &plan, self.options.output.as_ref())
            .await?;
        tracing::info!(
            node = %self.node_id,
            on = %runner.describe(),
            packages = ?done.packages,
            from = done.binary_from.as_deref().unwrap_or("none"),
            installed = done.binary_installed.as_deref().unwrap_or("kept"),
            "bootstrapped the node"
        );
        Ok(())
    }

    async fn finish(&self, write_hashes: bool) -> Result<()> {
        let mut t = Tags::new();
        t.insert(tags::NODE_STATUS.into(), NodeStatus::UpToDate.as_str().into());
        t.insert(tags::LAST_ERROR.into(), String::new());
        if write_hashes {
            t.insert(tags::RUNTIME_CONFIG.into(), self.plan.runtime_hash.clone());
            t.insert(
                tags::FILE_MOUNTS_CONTENTS.into(),
                self.plan.file_mounts_contents_hash.clone(),
            );
        }
        self.provider.set_tags(&self.node_id, t).await
    }

    async fn run_all(
        &self,
        runner: &dyn CommandRunner,
        commands: &[String],
        retry: RetryPolicy,
        run_env: RunEnv,
    ) -> Result<usize> {
        for command in commands {
            let mut spec = CommandSpec::new(command.clone())
                .envs(self.plan.env.clone())
                .timeout(self.options.command_timeout)
                .run_env(run_env);
            if let Some(tx) = &self.options.output {
                spec = spec.stream_to(tx.clone());
            }
            runner.run_with_retry(&spec, retry).await?;
        }
        Ok(commands.len())
    }

    /// Waits until `uptime` runs on the node; see the module docs.
    async fn wait_for_ssh(&self) -> Result<(NodeInfo, NodeRunners)> {
        let deadline = tokio::time::Instant::now() + self.options.ssh_deadline;
        loop {
            let node = self.current_node().await?;
            let err = match self.try_ssh(&node).await {
                Ok(runners) => return Ok((node, runners)),
                Err(e) => e,
            };
            if matches!(
                err.kind(),
                ErrorKind::PermissionDenied | ErrorKind::InvalidConfig | ErrorKind::NotFound
            ) {
                return Err(err);
            }
            if tokio::time::Instant::now() + self.options.ssh_check_interval > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "node {} did not answer over SSH within {:?}: check that it booted and runs sshd, that \
                         its firewall (security group) lets this machine reach its SSH port, and that \
                         `auth.ssh_user` and the key are the image's",
                        self.node_id, self.options.ssh_deadline
                    ),
                )
                .with_context("last_error", err));
            }
            tracing::debug!(node = %self.node_id, error = %crate::Report(&err), "SSH not ready yet");
            tokio::time::sleep(self.options.ssh_check_interval).await;
        }
    }

    async fn try_ssh(&self, node: &NodeInfo) -> Result<NodeRunners> {
        let runners = self.factory.runners_for(node).await?;
        runners
            .host
            .run_checked(
                &CommandSpec::new("uptime")
                    .timeout(Some(self.options.ssh_check_timeout))
                    .run_env(RunEnv::Host),
            )
            .await?;
        Ok(runners)
    }
}
