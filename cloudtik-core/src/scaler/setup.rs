//! How the controller sets nodes up: the [`NodeSetup`] trait it calls for new workers
//! and for recovering lost ones.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::node::{NodeInfo, NodeStatus, Tags, tags};
use crate::provider::{NodeProvider, NodeProviderExt};

/// What a setup run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupMode {
    /// A new or outdated node: wait for SSH, sync files, run setup and start commands.
    Full,
    /// A node whose heartbeat was lost: run its start commands again.
    Recovery,
}

/// Sets nodes up. The node updater over SSH implements it; the controller only calls it.
///
/// # Contract
///
/// A run moves the node's `cloudtik-node-status` tag along the state machine and ends
/// with `up-to-date` (returning `Ok`) or `update-failed` (returning the error). It must
/// give up by itself within its own timeouts; the controller does not cancel runs
/// except at shutdown, and a cancelled run leaves the node for the next controller.
#[async_trait]
pub trait NodeSetup: Debug + Send + Sync + 'static {
    /// Sets `node` up.
    async fn set_up(&self, node: &NodeInfo, mode: SetupMode) -> Result<()>;
}

/// Setup switched off (CloudTik's `disable_node_updaters`): a node counts as up to date
/// as soon as it is listed. For providers whose nodes set themselves up (e.g. from
/// cloud-init) and for tests of the autoscaler alone.
#[derive(Debug, Clone)]
pub struct MarkUpToDate<P> {
    provider: P,
}

impl<P> MarkUpToDate<P> {
    /// Marks nodes up to date through `provider`.
    pub fn new(provider: P) -> Self {
        MarkUpToDate { provider }
    }
}

#[async_trait]
impl<P: NodeProvider> NodeSetup for MarkUpToDate<P> {
    async fn set_up(&self, node: &NodeInfo, _mode: SetupMode) -> Result<()> {
        let mut t = Tags::new();
        t.insert(
            tags::NODE_STATUS.to_string(),
            NodeStatus::UpToDate.as_str().to_string(),
        );
        self.provider.set_tags(&node.id, t).await
    }
}
