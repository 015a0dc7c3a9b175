//! The operations a user runs on a cluster and on a workspace: the [`Cluster`] and
//! [`Workspace`] traits, and their options.
//!
//! The CLI (`cloudtik start|stop|status|exec|...`) is a thin layer over these traits, and
//! a service embedding the SDK calls them the same way. The options follow CloudTik's
//! command-line flags.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::error::Result;
use crate::node::{NodeId, NodeKind, NodeStatus};
use crate::provider::{DeleteWorkspaceOptions, WorkspaceExistence};
use crate::resources::Resources;

/// Options of [`Cluster::start`] (`cloudtik start`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartOptions {
    /// Override `min_workers` of every worker type.
    pub min_workers: Option<u32>,
    /// Override the global `max_workers`.
    pub max_workers: Option<u32>,
    /// Do not restart services on an existing head (setup commands only).
    pub no_restart: bool,
    /// Only restart services on an existing head (start commands only).
    pub restart_only: bool,
}

/// Options of [`Cluster::stop`] (`cloudtik stop`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopOptions {
    /// Terminate workers only; keep the head.
    pub workers_only: bool,
    /// Keep `min_workers` workers of each type.
    pub keep_min_workers: bool,
    /// Skip stop commands; terminate at once.
    pub hard: bool,
    /// Keep the cluster's key pair and secrets on this machine when the cluster is gone
    /// (by default a stop that leaves no node removes them; see
    /// `cloudtik_core::cluster::ClusterDir::remove_secrets`).
    pub keep_secrets: bool,
}

/// Which nodes a command addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeTarget {
    /// The head (the default).
    #[default]
    Head,
    /// The node with this internal IP.
    Ip(String),
    /// Every node, head first.
    All,
}

/// How to run a command with [`Cluster::exec`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExecOptions {
    /// The nodes to run on.
    pub target: NodeTarget,
    /// Run detached in a tmux session.
    pub tmux: bool,
    /// Run detached in a screen session.
    pub screen: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Also stream every node's output here as it comes.
    pub output: Option<tokio::sync::mpsc::UnboundedSender<crate::command::OutputLine>>,
}

/// The outcome of a command on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The node.
    pub node_id: NodeId,
    /// Its internal IP.
    pub node_ip: Option<String>,
    /// The exit code (None when killed by a signal or detached).
    pub exit_code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

/// A persistent resource request (`cloudtik scale`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScaleRequest {
    /// Keep this many workers (of `worker_type`, which must be given when there are
    /// several worker types).
    pub workers: Option<u32>,
    /// The worker type of `workers`.
    pub worker_type: Option<String>,
    /// Keep this many CPUs in the cluster.
    pub cpus: Option<u32>,
    /// Keep this many GPUs in the cluster.
    pub gpus: Option<u32>,
    /// Keep these resources in the cluster.
    pub resources: Option<Resources>,
    /// Keep room for these bundles (each must fit on one node).
    pub bundles: Vec<Resources>,
    /// Only scale up: do nothing if the cluster already has this much.
    pub up_only: bool,
    /// Replace earlier requests instead of merging with them.
    pub override_previous: bool,
}

/// How a cluster is doing as a whole (CloudTik's `info` status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// No node is running.
    Stopped,
    /// The head is not up to date, workers run without a head, or the head's services
    /// are down (see [`ClusterStatus::problem`]).
    Unhealthy,
    /// The head is up to date.
    Running,
}

/// One node in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The provider's id.
    pub id: NodeId,
    /// Head or worker.
    pub kind: NodeKind,
    /// The node type.
    pub node_type: String,
    /// Setup status.
    pub status: Option<NodeStatus>,
    /// Internal IP.
    pub internal_ip: Option<String>,
    /// External IP.
    pub external_ip: Option<String>,
    /// The last update error, if any (failing command, exit code, output tail).
    pub last_error: Option<String>,
    /// Total resources of the node.
    pub resources: Resources,
    /// Resources not in use, from the node's last heartbeat.
    pub available: Option<Resources>,
    /// Seconds since the node's last heartbeat.
    pub heartbeat_age_secs: Option<f64>,
    /// Processes the node should run (core and runtime ones) that its agent found not
    /// running at its last report, with their state (`missing`, `zombie`...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub down_processes: std::collections::BTreeMap<String, crate::state::ProcessState>,
}

/// What `cloudtik status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster_name: String,
    /// Overall state.
    pub state: ClusterState,
    /// Every non-terminated node, head first.
    pub nodes: Vec<NodeSummary>,
    /// Launches in flight per node type.
    pub pending_launches: std::collections::BTreeMap<String, usize>,
    /// Resource demands waiting for room.
    pub demands: Vec<Resources>,
    /// Demands that no node type can hold.
    pub infeasible: Vec<Resources>,
    /// What could not be read or went wrong (e.g. the state store not reachable, the
    /// controller's last launch error).
    pub notes: Vec<String>,
    /// The cluster controller, from its lease in the state store (its heartbeat), when
    /// one holds it.
    #[serde(default)]
    pub controller: Option<ControllerSummary>,
    /// Why the head's services are down, when they are ([`head_services_problem`]); the
    /// state is then [`ClusterState::Unhealthy`] and `cloudtik status` exits non-zero.
    #[serde(default)]
    pub problem: Option<String>,
}

/// The cluster controller in a [`ClusterStatus`]: who holds the controller lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerSummary {
    /// The holder (`<head ip>:<pid>:<random>`).
    pub holder: String,
    /// The lease's fencing token (grows with each new holder).
    pub token: u64,
    /// Seconds since the controller last renewed its lease (its heartbeat; every pass).
    pub renewed_age_secs: f64,
    /// Seconds until the lease expires (negative: expired).
    pub expires_in_secs: f64,
}

impl ControllerSummary {
    /// The summary of `lease` at `now` (unix seconds).
    pub fn of(lease: &crate::state::Lease, now: f64) -> Self {
        ControllerSummary {
            holder: lease.holder.clone(),
            token: lease.token,
            renewed_age_secs: (now - lease.renewed_at).max(0.0),
            expires_in_secs: lease.expires_at - now,
        }
    }
}

/// Why the head's services are down, or `None` when they run: what `cloudtik status`
/// decides from what it read. `store` is the state store's answer (an error when it
/// could not be reached or read); `lease` the controller lease; `head_heartbeat_age` the
/// age of the head agent's heartbeat; `heartbeat_timeout` when a heartbeat counts as
/// lost. A cluster without a head has no services to judge (`None`).
pub fn head_services_problem(
    head_listed: bool,
    store: std::result::Result<(), &str>,
    lease: Option<&ControllerSummary>,
    head_heartbeat_age: Option<f64>,
    heartbeat_timeout: Duration,
) -> Option<String> {
    if !head_listed {
        return None;
    }
    if let Err(e) = store {
        return Some(format!("the head's state store is not reachable: {e:#}"));
    }
    let problem = match lease {
        None => "no cluster controller is running (nobody holds the controller lease)".to_string(),
        Some(c) if c.expires_in_secs <= 0.0 => format!(
            "the cluster controller is down: {} last renewed its lease {:.0}s ago",
            c.holder, c.renewed_age_secs
        ),
        Some(_) => match head_heartbeat_age {
            Some(age) if age > heartbeat_timeout.as_secs_f64() => {
                format!("the head's agent is down: its last heartbeat is {age:.0}s old")
            }
            None => "the head's agent has never heartbeated".to_string(),
            Some(_) => return None,
        },
    };
    Some(problem)
}

/// A cluster: the operations of `cloudtik start|stop|status|exec|...`.
#[async_trait]
pub trait Cluster: std::fmt::Debug + Send + Sync {
    /// The cluster's config, after templates, defaults and bootstrap.
    fn config(&self) -> &ClusterConfig;

    /// Creates or updates the head, sets it up and starts its services; the head's
    /// controller then brings the workers. Running it again continues where an
    /// interrupted start stopped and creates no duplicates.
    async fn start(&self, options: &StartOptions) -> Result<()>;

    /// Runs stop commands and terminates nodes; checks by listing that none is left.
    /// A stop that leaves the cluster without nodes also removes what this machine kept
    /// of it (key pair, secrets, known hosts) unless [`StopOptions::keep_secrets`].
    async fn stop(&self, options: &StopOptions) -> Result<()>;

    /// Nodes, their status and last error, resources and demands.
    async fn status(&self) -> Result<ClusterStatus>;

    /// Runs a shell command on the target nodes.
    async fn exec(&self, command: &str, options: &ExecOptions) -> Result<Vec<ExecResult>>;

    /// Copies a local file or folder to the target nodes.
    async fn rsync_up(&self, local: &Path, remote: &str, target: &NodeTarget) -> Result<()>;

    /// Copies a file or folder from one node to the local machine.
    async fn rsync_down(&self, remote: &str, local: &Path, target: &NodeTarget) -> Result<()>;

    /// Records a persistent resource request for the autoscaler.
    async fn scale(&self, request: &ScaleRequest) -> Result<()>;

    /// The head's IP (public unless `use_internal_ips`).
    async fn head_ip(&self) -> Result<Option<String>>;

    /// The workers' internal IPs.
    async fn worker_ips(&self) -> Result<Vec<String>>;

    /// Terminates one node (the autoscaler replaces it if needed).
    async fn kill_node(&self, target: &NodeTarget) -> Result<()>;

    /// Waits until the head and at least `min_workers` workers are up to date.
    async fn wait_for_ready(&self, min_workers: u32, timeout: Duration) -> Result<()>;
}

/// A workspace: the operations of `cloudtik workspace create|delete|update|info`.
#[async_trait]
pub trait Workspace: std::fmt::Debug + Send + Sync {
    /// The workspace's name.
    fn name(&self) -> &str;

    /// Creates what is missing; see [`WorkspaceProvider`](crate::WorkspaceProvider) for
    /// the cleanup contract.
    async fn create(&self) -> Result<()>;

    /// Deletes the workspace; refused while clusters run in it.
    async fn delete(&self, options: DeleteWorkspaceOptions) -> Result<()>;

    /// Re-applies firewall rules and managed storage.
    async fn update(&self) -> Result<()>;

    /// How complete the workspace is.
    async fn existence(&self) -> Result<WorkspaceExistence>;

    /// Provider facts of the workspace.
    async fn info(&self) -> Result<serde_json::Value>;

    /// Clusters running in the workspace.
    async fn list_clusters(&self) -> Result<Vec<String>>;
}

#[cfg(test)]
mod head_services_tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn live(age: f64) -> ControllerSummary {
        ControllerSummary {
            holder: "10.0.0.2:41:abcd".into(),
            token: 3,
            renewed_age_secs: age,
            expires_in_secs: 30.0 - age,
        }
    }

    #[test]
    fn a_running_head_with_a_live_controller_has_no_problem() {
        assert_eq!(
            head_services_problem(true, Ok(()), Some(&live(4.0)), Some(1.0), T),
            None
        );
        // Without a head there is nothing to judge.
        assert_eq!(head_services_problem(false, Err("refused"), None, None, T), None);
    }

    #[test]
    fn an_unreachable_store_is_a_problem() {
        let p = head_services_problem(true, Err("connection refused"), None, None, T).unwrap();
        assert!(
            p.contains("state store is not reachable") && p.contains("connection refused"),
            "{p}"
        );
    }

    #[test]
    fn no_controller_or_a_stale_lease_is_a_problem() {
        let p = head_services_problem(true, Ok(()), None, Some(1.0), T).unwrap();
        assert!(p.contains("no cluster controller"), "{p}");
        // kill -9 of the head: the lease is not renewed and expires.
        let p = head_services_problem(true, Ok(()), Some(&live(54.0)), Some(54.0), T).unwrap();
        assert!(p.contains("controller is down") && p.contains("54s ago"), "{p}");
    }

    #[test]
    fn a_silent_head_agent_is_a_problem() {
        let p = head_services_problem(true, Ok(()), Some(&live(2.0)), Some(54.0), T).unwrap();
        assert!(p.contains("agent is down") && p.contains("54s"), "{p}");
        assert!(head_services_problem(true, Ok(()), Some(&live(2.0)), None, T).is_some());
    }
}
