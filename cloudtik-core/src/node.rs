//! What a node is to the SDK: its id, kind, status, tags and addresses.
//!
//! Tag names are CloudTik's (`cloudtik-cluster-name`, `cloudtik-node-kind`, ...), so a
//! cluster started by the Python original can be listed by this SDK and the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// CloudTik's tag names.
pub mod tags {
    /// The node's name (`cloudtik-<cluster>-head`, `cloudtik-<cluster>-worker`).
    pub const NODE_NAME: &str = "cloudtik-node-name";
    /// The cluster the node belongs to.
    pub const CLUSTER_NAME: &str = "cloudtik-cluster-name";
    /// The workspace (set by the local, virtual and on-premise providers).
    pub const WORKSPACE_NAME: &str = "cloudtik-workspace-name";
    /// `head`, `worker` or `unmanaged`.
    pub const NODE_KIND: &str = "cloudtik-node-kind";
    /// The node type name of `available_node_types`.
    pub const USER_NODE_TYPE: &str = "cloudtik-user-node-type";
    /// The node's setup status (see [`NodeStatus`](super::NodeStatus)).
    pub const NODE_STATUS: &str = "cloudtik-node-status";
    /// Hash of the launch config; a node whose hash differs is outdated.
    pub const LAUNCH_CONFIG: &str = "cloudtik-launch-config";
    /// Hash of the runtime config (setup commands, runtimes, file mounts).
    pub const RUNTIME_CONFIG: &str = "cloudtik-runtime-config";
    /// Hash of the file-mount contents.
    pub const FILE_MOUNTS_CONTENTS: &str = "cloudtik-file-mounts-contents";
    /// Sequence id of the node in the cluster (the head is 1).
    pub const NODE_SEQ_ID: &str = "cloudtik-node-seq-id";
    /// Quorum generation id.
    pub const QUORUM_ID: &str = "cloudtik-quorum-id";
    /// Quorum join state: `init`, `success`, `failed`.
    pub const QUORUM_JOIN: &str = "cloudtik-quorum-join";
    /// The launch token of the request that created the node (ours; CloudTik has none).
    /// Lets a restarted controller adopt nodes of launches it recorded.
    pub const LAUNCH_TOKEN: &str = "cloudtik-launch-token";
    /// The last update error of the node, short form (ours).
    pub const LAST_ERROR: &str = "cloudtik-last-error";
}

/// Tags of a node: string keys to string values.
pub type Tags = BTreeMap<String, String>;

/// A node's id as its provider names it (instance id, container id, host ip).
pub type NodeId = String;

/// The role of a node in its cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// The head: runs the state store, the cluster controller and the runtimes' masters.
    Head,
    /// A worker, launched and terminated by the autoscaler.
    Worker,
    /// A node in the cluster's network that CloudTik does not manage.
    Unmanaged,
}

impl NodeKind {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Head => "head",
            NodeKind::Worker => "worker",
            NodeKind::Unmanaged => "unmanaged",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "head" => Ok(NodeKind::Head),
            "worker" => Ok(NodeKind::Worker),
            "unmanaged" => Ok(NodeKind::Unmanaged),
            other => Err(Error::new(
                ErrorKind::Unexpected,
                format!("unknown node kind {other:?}: expected head, worker or unmanaged"),
            )),
        }
    }
}

/// The setup status of a node, CloudTik's state machine:
/// `uninitialized -> waiting-for-ssh -> syncing-files -> setting-up -> up-to-date`, or
/// `update-failed` from any step.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    /// Launched; no updater has touched it yet.
    Uninitialized,
    /// Waiting until SSH answers.
    WaitingForSsh,
    /// Uploading file mounts.
    SyncingFiles,
    /// Running initialization and setup commands.
    SettingUp,
    /// Setup and start commands succeeded with the current config.
    UpToDate,
    /// A step failed; the node's last error says which.
    UpdateFailed,
}

impl NodeStatus {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Uninitialized => "uninitialized",
            NodeStatus::WaitingForSsh => "waiting-for-ssh",
            NodeStatus::SyncingFiles => "syncing-files",
            NodeStatus::SettingUp => "setting-up",
            NodeStatus::UpToDate => "up-to-date",
            NodeStatus::UpdateFailed => "update-failed",
        }
    }

    /// `up-to-date` and `update-failed` are completed: no updater is working on the node.
    pub fn is_completed(self) -> bool {
        matches!(self, NodeStatus::UpToDate | NodeStatus::UpdateFailed)
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "uninitialized" => NodeStatus::Uninitialized,
            "waiting-for-ssh" => NodeStatus::WaitingForSsh,
            "syncing-files" => NodeStatus::SyncingFiles,
            "setting-up" => NodeStatus::SettingUp,
            "up-to-date" => NodeStatus::UpToDate,
            "update-failed" => NodeStatus::UpdateFailed,
            other => {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("unknown node status {other:?}"),
                ));
            }
        })
    }
}

/// The provider's view of a node's machine: is it booting, running, going away?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Requested, not running yet.
    Pending,
    /// Running.
    Running,
    /// Stopping or stopped (cached stopped nodes); not listed as non-terminated by default.
    Stopped,
    /// Terminating or terminated.
    Terminated,
}

/// A node as a provider lists it: built with [`NodeInfo::new`] and the `with_*` setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The provider's id of the node.
    pub id: NodeId,
    /// The machine's state.
    pub state: NodeState,
    /// All tags, including CloudTik's.
    pub tags: Tags,
    /// The address inside the cluster's network.
    pub internal_ip: Option<String>,
    /// The public address, if any.
    pub external_ip: Option<String>,
    /// The provider's instance type, if it has one.
    pub instance_type: Option<String>,
}

impl NodeInfo {
    /// A node with its id, state and tags, and no addresses or instance type yet.
    pub fn new(id: impl Into<NodeId>, state: NodeState, tags: Tags) -> Self {
        NodeInfo {
            id: id.into(),
            state,
            tags,
            internal_ip: None,
            external_ip: None,
            instance_type: None,
        }
    }

    /// Sets the address inside the cluster's network.
    #[must_use]
    pub fn with_internal_ip(mut self, ip: Option<String>) -> Self {
        self.internal_ip = ip;
        self
    }

    /// Sets the public address.
    #[must_use]
    pub fn with_external_ip(mut self, ip: Option<String>) -> Self {
        self.external_ip = ip;
        self
    }

    /// Sets the provider's instance type.
    #[must_use]
    pub fn with_instance_type(mut self, instance_type: Option<String>) -> Self {
        self.instance_type = instance_type;
        self
    }

    /// The value of a tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The node's kind from its `cloudtik-node-kind` tag.
    pub fn kind(&self) -> Option<NodeKind> {
        self.tag(tags::NODE_KIND).and_then(|k| k.parse().ok())
    }

    /// The node's status from its `cloudtik-node-status` tag.
    pub fn status(&self) -> Option<NodeStatus> {
        self.tag(tags::NODE_STATUS).and_then(|k| k.parse().ok())
    }

    /// The node type (`cloudtik-user-node-type`).
    pub fn node_type(&self) -> Option<&str> {
        self.tag(tags::USER_NODE_TYPE)
    }

    /// True when every filter tag is present with the same value.
    pub fn matches(&self, filters: &Tags) -> bool {
        filters.iter().all(|(k, v)| self.tags.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_tag_values() {
        for s in [
            NodeStatus::Uninitialized,
            NodeStatus::WaitingForSsh,
            NodeStatus::SyncingFiles,
            NodeStatus::SettingUp,
            NodeStatus::UpToDate,
            NodeStatus::UpdateFailed,
        ] {
            assert_eq!(s.as_str().parse::<NodeStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert!("running".parse::<NodeStatus>().is_err());
        for k in [NodeKind::Head, NodeKind::Worker, NodeKind::Unmanaged] {
            assert_eq!(k.as_str().parse::<NodeKind>().unwrap(), k);
        }
    }
}
