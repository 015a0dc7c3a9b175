//! What the controller reports: the [`ScalingStatus`] it publishes to the state store
//! after every pass (and to a [`ControllerHandle`](super::ControllerHandle)'s watch),
//! [`read_scaling_status`] to read it back, the [`ControllerCounters`] and the
//! [`PassReport`] of one pass.
//!
//! The status is JSON in the store. Every field reads with a default when it is
//! missing, so a `cloudtik status` of one version reads the status of a head of another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::reconcile::TerminationCause;
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeKind, NodeStatus};
use crate::scaler::planner::{DemandShape, ScalingPlan};
use crate::scaler::setup::SetupMode;
use crate::state::StateStore;

/// The state store key the status is kept under (in the Redis store).
pub const SCALING_STATUS_KEY: &str = "cloudtik:scaling_status";

/// How many recent terminations the status keeps.
pub(super) const RECENT_TERMINATIONS: usize = 20;

/// Counters since the controller started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ControllerCounters {
    /// Passes run.
    pub passes: u64,
    /// Passes that failed (e.g. the provider listing failed).
    pub failed_passes: u64,
    /// Nodes requested from the provider.
    pub nodes_requested: u64,
    /// Nodes the provider created.
    pub nodes_launched: u64,
    /// Launch calls that failed or fell short.
    pub launch_failures: u64,
    /// Nodes terminated.
    pub nodes_terminated: u64,
    /// Setup runs that succeeded.
    pub setups_succeeded: u64,
    /// Setup runs that failed.
    pub setups_failed: u64,
    /// Recovery runs started.
    pub recoveries: u64,
    /// Leaked nodes terminated.
    pub leaks_terminated: u64,
}

/// One node in the [`ScalingStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NodeReport {
    /// Node type.
    pub node_type: String,
    /// Head or worker.
    pub kind: NodeKind,
    /// Setup status.
    pub status: Option<NodeStatus>,
    /// Internal IP.
    pub ip: Option<String>,
    /// What the controller is doing with it (`setting-up`, `recovering`, `idle`, `lost`...).
    pub activity: String,
    /// Last error recorded on the node.
    pub last_error: Option<String>,
    /// Why the controller considers it lost, or anything else worth knowing (e.g. "no
    /// heartbeat ever received from node X: is cloudtik-node's agent running on it?").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Default for NodeReport {
    fn default() -> Self {
        NodeReport {
            node_type: String::new(),
            kind: NodeKind::Worker,
            status: None,
            ip: None,
            activity: String::new(),
            last_error: None,
            note: None,
        }
    }
}

impl NodeReport {
    /// A report of a node of `node_type` and `kind`, with `activity`.
    pub fn new(node_type: impl Into<String>, kind: NodeKind, activity: impl Into<String>) -> Self {
        NodeReport {
            node_type: node_type.into(),
            kind,
            activity: activity.into(),
            ..Default::default()
        }
    }
}

/// A node the controller terminated, in the [`ScalingStatus`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TerminationRecord {
    /// When, in unix seconds.
    pub time: f64,
    /// The node.
    pub node_id: NodeId,
    /// Why ([`TerminationCause`]'s text).
    pub reason: String,
    /// The cause's label ([`TerminationCause::label`]).
    pub cause: String,
}

impl TerminationRecord {
    /// The record of `node_id` terminated at `time` for `cause`.
    pub fn new(time: f64, node_id: impl Into<NodeId>, cause: &TerminationCause) -> Self {
        TerminationRecord {
            time,
            node_id: node_id.into(),
            reason: cause.to_string(),
            cause: cause.label().to_string(),
        }
    }
}

/// What the controller publishes after every pass (`cloudtik status` prints it; read it
/// with [`read_scaling_status`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ScalingStatus {
    /// When, in unix seconds.
    pub time: f64,
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, NodeReport>,
    /// Nodes being launched per type.
    pub launching: BTreeMap<String, usize>,
    /// Node types backed off after capacity or quota failures, with seconds left.
    pub backed_off: BTreeMap<String, f64>,
    /// Demands no node type can hold.
    pub infeasible: Vec<DemandShape>,
    /// Feasible demands waiting (limits, upscaling cap, backoff).
    pub unfulfilled: Vec<DemandShape>,
    /// The last launch failure per type.
    pub launch_errors: BTreeMap<String, String>,
    /// The error of the last pass, if it failed.
    pub pass_error: Option<String>,
    /// Counters.
    pub counters: ControllerCounters,
    /// The scaling policy's name, if the controller has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling_policy: Option<String>,
    /// The policy's last error, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
    /// The latest terminations (up to 20), oldest first, with their reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_terminations: Vec<TerminationRecord>,
}

impl ScalingStatus {
    /// An empty status at `time` (unix seconds).
    pub fn new(time: f64) -> Self {
        ScalingStatus {
            time,
            ..Default::default()
        }
    }
}

/// Reads the [`ScalingStatus`] the controller published in `store`; `None` while no
/// controller has published one.
///
/// # Errors
///
/// The store's error when it cannot be read; an [`ErrorKind::InvalidConfig`] error naming
/// the key and what failed to parse when the value is not a scaling status.
pub async fn read_scaling_status(store: &dyn StateStore) -> Result<Option<ScalingStatus>> {
    let Some(value) = store
        .scaling_status()
        .await
        .map_err(|e| e.with_operation("read_scaling_status"))?
    else {
        return Ok(None);
    };
    parse_scaling_status(value).map(Some)
}

/// Parses a published status value.
pub(super) fn parse_scaling_status(value: serde_json::Value) -> Result<ScalingStatus> {
    serde_json::from_value(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("the scaling status in the state store ({SCALING_STATUS_KEY}) is corrupt: {e:#}"),
        )
        .with_operation("read_scaling_status")
        .with_context("key", SCALING_STATUS_KEY)
    })
}

/// What one pass did, for tests and embedding programs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PassReport {
    /// The plan of the pass.
    pub plan: ScalingPlan,
    /// Nodes requested from the provider in this pass, per type.
    pub launched: BTreeMap<String, usize>,
    /// Nodes terminated in this pass, with the cause.
    pub terminated: Vec<(NodeId, TerminationCause)>,
    /// Setup runs started (full and recovery).
    pub setups_started: Vec<(NodeId, SetupMode)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::InMemoryStore;

    fn sample() -> ScalingStatus {
        let mut s = ScalingStatus::new(1_800_000_000.5);
        let mut n = NodeReport::new("worker.cpu", NodeKind::Worker, "lost");
        n.status = Some(NodeStatus::UpToDate);
        n.ip = Some("10.0.0.3".into());
        n.note = Some("no heartbeat ever received from node i-1 in 40s".into());
        s.nodes.insert("i-1".into(), n);
        s.nodes
            .insert("h".into(), NodeReport::new("head", NodeKind::Head, "active"));
        s.launching.insert("worker.cpu".into(), 2);
        s.backed_off.insert("worker.gpu".into(), 12.5);
        s.launch_errors.insert("worker.gpu".into(), "capacity".into());
        s.pass_error = Some("listing failed".into());
        s.counters.passes = 7;
        s.scaling_policy = Some("spark".into());
        s.recent_terminations
            .push(TerminationRecord::new(1.0, "i-0", &TerminationCause::SetupFailed));
        s
    }

    #[test]
    fn the_status_round_trips_through_json() {
        let s = sample();
        let v = serde_json::to_value(&s).unwrap();
        let back: ScalingStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        // Fields keep their names.
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "time",
            "nodes",
            "launching",
            "backed_off",
            "infeasible",
            "unfulfilled",
            "launch_errors",
            "pass_error",
            "counters",
            "scaling_policy",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        assert_eq!(v["nodes"]["i-1"]["activity"], "lost");
        assert_eq!(v["counters"]["passes"], 7);
    }

    #[test]
    fn older_and_newer_status_json_reads() {
        // An older head: no policy, no notes, no recent terminations, fewer counters.
        let old = serde_json::json!({
            "time": 5.0,
            "nodes": {"i-1": {"node_type": "w", "kind": "worker", "status": "up-to-date",
                               "ip": null, "activity": "active", "last_error": null}},
            "launching": {}, "backed_off": {}, "infeasible": [], "unfulfilled": [],
            "launch_errors": {}, "pass_error": null,
            "counters": {"passes": 3}
        });
        let s = parse_scaling_status(old).unwrap();
        assert_eq!(s.counters.passes, 3);
        assert_eq!(s.nodes["i-1"].status, Some(NodeStatus::UpToDate));
        // A newer head: fields this build does not know.
        let new = serde_json::json!({"time": 6.0, "something_new": [1, 2], "nodes": {}});
        assert_eq!(parse_scaling_status(new).unwrap().time, 6.0);
    }

    #[tokio::test]
    async fn read_scaling_status_reads_none_a_status_and_names_a_corrupt_one() {
        let store = InMemoryStore::new();
        assert_eq!(read_scaling_status(&store).await.unwrap(), None);
        let s = sample();
        store
            .set_scaling_status(&serde_json::to_value(&s).unwrap())
            .await
            .unwrap();
        assert_eq!(read_scaling_status(&store).await.unwrap(), Some(s));
        store
            .set_scaling_status(&serde_json::json!({"time": "yesterday"}))
            .await
            .unwrap();
        let e = read_scaling_status(&store).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let text = format!("{e:#}");
        assert!(text.contains(SCALING_STATUS_KEY), "{text}");
        assert!(text.contains("corrupt"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
    }
}
