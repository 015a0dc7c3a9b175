//! The rows and values of the state store's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeKind};
use crate::resources::Resources;

/// Now, in seconds since the Unix epoch (the time unit of every table, as in CloudTik).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Refuses an empty row key (node id, launch token, secret name) with `InvalidConfig`.
pub(crate) fn check_key(op: &'static str, what: &'static str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(
            Error::new(ErrorKind::InvalidConfig, format!("the {what} must not be empty")).with_operation(op),
        );
    }
    Ok(())
}

/// A node's heartbeat row: who the node is, what it has, and when it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// The provider's id of the node.
    pub node_id: NodeId,
    /// The node's address inside the cluster's network.
    pub node_ip: String,
    /// Head, worker or unmanaged.
    pub node_kind: NodeKind,
    /// The node type (`available_node_types` key).
    pub node_type: String,
    /// The node's sequence id in the cluster, if it has one (the head is 1).
    #[serde(default)]
    pub seq_id: Option<u32>,
    /// When the agent wrote the row, in unix seconds.
    pub heartbeat_time: f64,
    /// The node's total resources.
    #[serde(default)]
    pub total_resources: Resources,
    /// The node's resources not in use.
    #[serde(default)]
    pub available_resources: Resources,
}

impl NodeHeartbeat {
    /// True when the heartbeat is older than `timeout` at time `now` (unix seconds).
    pub fn is_lost(&self, now: f64, timeout: Duration) -> bool {
        now - self.heartbeat_time > timeout.as_secs_f64()
    }
}

/// A node's load and usage, as the agent measured it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeMetrics {
    /// When measured, in unix seconds.
    pub time: f64,
    /// CPUs the node may use (cgroup limits respected).
    pub cpu_count: f64,
    /// CPU utilization over the last interval, 0 to 100 (of `cpu_count`).
    pub cpu_percent: f64,
    /// Load average over 1, 5 and 15 minutes.
    pub load_avg: [f64; 3],
    /// Memory the node may use, bytes.
    pub memory_total: u64,
    /// Memory available, bytes.
    pub memory_available: u64,
    /// Size of the node's data disk, bytes.
    pub disk_total: u64,
    /// Bytes used on the data disk.
    pub disk_used: u64,
    /// Disk reads, bytes per second.
    pub disk_read_bytes_per_sec: f64,
    /// Disk writes, bytes per second.
    pub disk_write_bytes_per_sec: f64,
    /// Network receive, bytes per second.
    pub network_recv_bytes_per_sec: f64,
    /// Network send, bytes per second.
    pub network_sent_bytes_per_sec: f64,
}

/// The state of a process a node should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Running on a CPU.
    Running,
    /// Sleeping, waiting for an event.
    Sleeping,
    /// Idle (a kernel thread state).
    Idle,
    /// Waking up.
    Waking,
    /// Stopped by a signal or a debugger.
    Stopped,
    /// Exited, not reaped by its parent.
    Zombie,
    /// Dead.
    Dead,
    /// Not found on the node.
    Missing,
    /// A state this version does not know.
    #[serde(other)]
    Unknown,
}

impl ProcessState {
    /// True for the states CloudTik's health check accepts: running, sleeping, idle, waking.
    pub fn is_healthy(self) -> bool {
        matches!(
            self,
            ProcessState::Running | ProcessState::Sleeping | ProcessState::Idle | ProcessState::Waking
        )
    }
}

/// The health of the processes a node should run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeProcesses {
    /// When the processes were checked, in unix seconds.
    pub state_time: f64,
    /// Process name to state.
    pub processes: BTreeMap<String, ProcessState>,
}

impl NodeProcesses {
    /// True when every process is in a healthy state.
    pub fn all_healthy(&self) -> bool {
        self.processes.values().all(|s| s.is_healthy())
    }
}

/// The scaling policy's current resource demands: one bundle per task or actor waiting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceDemands {
    /// When the demands were computed, in unix seconds.
    pub time: f64,
    /// The demands.
    pub demands: Vec<Resources>,
}

/// One bundle of a resource request. Unlike [`Resources`], zero amounts are kept: a
/// zero amount names a resource id to clear (`scale --cpus 0`).
pub type RequestBundle = BTreeMap<String, f64>;

/// A request of the `scale` API: `{request_time, requests, override}` as in CloudTik.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// When the request was made, in unix seconds.
    pub request_time: f64,
    /// The requested bundles, e.g. `[{"CPU": 4}, {"CPU": 4}]` or `[{"worker.cpu": 3}]`.
    pub requests: Vec<RequestBundle>,
    /// Replace every standing request instead of merging.
    #[serde(rename = "override")]
    pub override_all: bool,
}

impl ResourceRequest {
    /// Checks that every amount is finite and not negative.
    pub fn validate(&self) -> Result<()> {
        for (i, bundle) in self.requests.iter().enumerate() {
            for (name, amount) in bundle {
                if !amount.is_finite() || *amount < 0.0 {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("resource request bundle {i}: amount of {name:?} must be a finite number >= 0, got {amount}"),
                    )
                    .with_operation("submit_resource_request"));
                }
                if name.is_empty() {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("resource request bundle {i}: empty resource name"),
                    )
                    .with_operation("submit_resource_request"));
                }
            }
        }
        Ok(())
    }

    /// The request grouped by resource id: every id the request names (even with zero
    /// amounts only), with the bundles of that id that ask for something.
    pub fn grouped(&self) -> BTreeMap<String, Vec<Resources>> {
        let mut groups: BTreeMap<String, Vec<Resources>> = BTreeMap::new();
        for bundle in &self.requests {
            if bundle.is_empty() {
                continue;
            }
            let group = groups.entry(resource_id(bundle)).or_default();
            let resources: Resources = bundle.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            if !resources.is_empty() {
                group.push(resources);
            }
        }
        groups
    }
}

/// The resource id of a bundle: its resource names, sorted, joined by `,` (e.g. `CPU`,
/// `CPU,GPU`, `worker.cpu`).
pub(crate) fn resource_id(bundle: &RequestBundle) -> String {
    let names: BTreeSet<&str> = bundle.keys().map(String::as_str).collect();
    names.into_iter().collect::<Vec<_>>().join(",")
}

/// The resource requests in force: the merge of every `scale` request so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandingRequests {
    /// `request_time` of the last request merged (0 when none).
    pub request_time: f64,
    /// Bundles by resource id (see [`StandingRequests::merge`]).
    pub by_id: BTreeMap<String, Vec<Resources>>,
}

impl StandingRequests {
    /// Merges a request, CloudTik's rules (§8 of the reference notes):
    ///
    /// * Bundles are grouped by *resource id*, the sorted names of the resources they
    ///   ask for (`{CPU: 4}` has id `CPU`; `{worker.cpu: 3}` has id `worker.cpu`).
    /// * Without `override`, the request's groups replace the standing groups with the
    ///   same id; groups of other ids stay. With `override`, the request replaces all.
    /// * Zero amounts are dropped, and a bundle left empty is dropped: a request of
    ///   `[{CPU: 0}]` clears the standing `CPU` requests.
    pub fn merge(&mut self, request: &ResourceRequest) {
        if request.override_all {
            self.by_id.clear();
        }
        for (id, bundles) in request.grouped() {
            if bundles.is_empty() {
                self.by_id.remove(&id);
            } else {
                self.by_id.insert(id, bundles);
            }
        }
        self.request_time = request.request_time;
    }

    /// Every standing bundle, ordered by resource id.
    pub fn bundles(&self) -> Vec<Resources> {
        self.by_id.values().flatten().cloned().collect()
    }

    /// True when nothing is requested.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A launch the autoscaler is making: written before the provider call, removed after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLaunch {
    /// The node type launched.
    pub node_type: String,
    /// How many nodes.
    pub count: usize,
    /// When the launch was recorded, in unix seconds.
    pub created_time: f64,
    /// The fencing token of the controller that recorded it (see
    /// [`Fence`](super::Fence)); absent in records of unfenced writers and earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSeverity {
    /// Progress.
    Info,
    /// Something went wrong and was handled.
    Warning,
    /// Something failed.
    Error,
}

/// An event of the cluster, e.g. "Adding 3 node(s) of type worker.cpu".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// When it happened, in unix seconds.
    pub time: f64,
    /// How serious it is.
    pub severity: EventSeverity,
    /// Who reported it (`controller`, `agent:<node id>`, ...).
    pub source: String,
    /// What happened.
    pub message: String,
}

impl ClusterEvent {
    /// An event happening now.
    pub fn now(severity: EventSeverity, source: impl Into<String>, message: impl Into<String>) -> Self {
        ClusterEvent {
            time: unix_now(),
            severity,
            source: source.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bundles: &[&[(&str, f64)]], override_all: bool) -> ResourceRequest {
        ResourceRequest {
            request_time: 1.0,
            requests: bundles
                .iter()
                .map(|b| b.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .collect(),
            override_all,
        }
    }

    #[test]
    fn merge_replaces_same_ids_keeps_others_and_override_replaces_all() {
        let mut s = StandingRequests::default();
        s.merge(&req(&[&[("CPU", 4.0)], &[("CPU", 4.0)]], false));
        s.merge(&req(&[&[("worker.gpu", 2.0)]], false));
        assert_eq!(s.bundles().len(), 3);
        s.merge(&req(&[&[("CPU", 8.0)]], false));
        assert_eq!(
            s.bundles(),
            vec![
                Resources::from_pairs([("CPU", 8.0)]),
                Resources::from_pairs([("worker.gpu", 2.0)])
            ]
        );
        s.merge(&req(&[&[("CPU", 0.0)]], false));
        assert_eq!(s.bundles(), vec![Resources::from_pairs([("worker.gpu", 2.0)])]);
        s.merge(&req(&[&[("GPU", 1.0)]], true));
        assert_eq!(s.bundles(), vec![Resources::from_pairs([("GPU", 1.0)])]);
        s.merge(&req(&[], true));
        assert!(s.is_empty());
    }

    #[test]
    fn validation_rejects_negative_and_nan() {
        assert!(req(&[&[("CPU", -1.0)]], false).validate().is_err());
        assert!(req(&[&[("CPU", f64::NAN)]], false).validate().is_err());
        assert!(req(&[&[("CPU", 0.0)]], false).validate().is_ok());
    }

    #[test]
    fn request_json_uses_cloudtik_field_names() {
        let r = req(&[&[("CPU", 2.0)]], true);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["override"], serde_json::json!(true));
        assert_eq!(v["requests"][0]["CPU"], serde_json::json!(2.0));
        let unknown: ProcessState = serde_json::from_str("\"disk-sleep\"").unwrap();
        assert_eq!(unknown, ProcessState::Unknown);
    }
}
