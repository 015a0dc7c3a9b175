//! The provider traits: [`NodeProvider`] (nodes of one cluster) and
//! [`WorkspaceProvider`] (the shared network, firewall and identities of a workspace).
//!
//! # Contract
//!
//! The required methods are few and batch-shaped; conveniences such as
//! [`NodeProviderExt::terminate_node`] live in an extension trait that is implemented
//! for every provider and must not be implemented by hand.
//!
//! * **Namespacing.** A node provider serves one cluster: every listing is limited to
//!   nodes tagged `cloudtik-cluster-name=<cluster>`.
//! * **Tags at launch.** [`NodeProvider::create_nodes`] sets all tags in the launch call
//!   itself, never afterwards, so a node is never visible untagged.
//! * **Idempotent launches.** Every [`LaunchRequest`] carries a token. The provider tags
//!   each node with it (`cloudtik-launch-token`) and passes it as the cloud's client
//!   token where the API has one. A request repeated with the same token never creates
//!   more than `count` nodes in total for that token: it returns the nodes that already
//!   exist for the token and creates at most the missing ones.
//! * **Partial launches.** A launch that created some but not all nodes returns `Ok`
//!   with the created nodes and the error that stopped the rest in
//!   [`LaunchOutcome::shortfall`]. A launch that created nothing returns `Err`.
//! * **Idempotent terminate.** Terminating a node that is gone already succeeds.
//! * **Errors** carry an [`ErrorKind`](crate::ErrorKind): capacity and quota errors make
//!   the autoscaler back the node type off; rate-limit and transient errors are retried.

mod registry;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::node::{NodeId, NodeInfo, NodeKind, Tags, tags};
use crate::resources::Resources;

pub use registry::{ProviderFactory, ProviderPlace, ProviderRegistry};

/// What a provider can do, declared up front instead of failing at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderCapabilities {
    /// The cloud API deduplicates launches by a client token (EC2 `ClientToken`).
    pub native_idempotency_token: bool,
    /// Spot / preemptible nodes can be requested.
    pub spot: bool,
    /// Stopped nodes can be kept and restarted (`cache_stopped_nodes`).
    pub stop_nodes: bool,
    /// Largest number of nodes one `create_nodes` call may ask for.
    pub max_launch_batch: usize,
    /// Largest number of ids one `terminate_nodes` call takes.
    pub max_terminate_batch: usize,
    /// Largest number of nodes one `set_node_tags` call takes.
    pub max_tag_batch: usize,
}

impl Default for ProviderCapabilities {
    fn default() -> Self {
        ProviderCapabilities {
            native_idempotency_token: false,
            spot: false,
            stop_nodes: false,
            max_launch_batch: 100,
            max_terminate_batch: 1000,
            max_tag_batch: 1000,
        }
    }
}

impl ProviderCapabilities {
    /// Sets `native_idempotency_token`.
    pub fn with_native_idempotency_token(mut self, v: bool) -> Self {
        self.native_idempotency_token = v;
        self
    }
    /// Sets `spot`.
    pub fn with_spot(mut self, v: bool) -> Self {
        self.spot = v;
        self
    }
    /// Sets `stop_nodes`.
    pub fn with_stop_nodes(mut self, v: bool) -> Self {
        self.stop_nodes = v;
        self
    }
    /// Sets `max_launch_batch`.
    pub fn with_max_launch_batch(mut self, v: usize) -> Self {
        self.max_launch_batch = v.max(1);
        self
    }
    /// Sets `max_terminate_batch`.
    pub fn with_max_terminate_batch(mut self, v: usize) -> Self {
        self.max_terminate_batch = v.max(1);
        self
    }
    /// Sets `max_tag_batch`.
    pub fn with_max_tag_batch(mut self, v: usize) -> Self {
        self.max_tag_batch = v.max(1);
        self
    }
}

/// A request to launch `count` nodes of one node type ([`LaunchRequest::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LaunchRequest {
    /// The node type name (from `available_node_types`).
    pub node_type: String,
    /// The provider-specific `node_config` of the type, after bootstrap.
    pub node_config: serde_json::Value,
    /// Tags to set in the launch call. The provider adds the cluster name and the token.
    pub tags: Tags,
    /// How many nodes to launch.
    pub count: usize,
    /// Idempotency token: a repeated request with the same token creates no duplicates.
    pub token: String,
    /// Resources of the node type, for providers that size nodes from them.
    pub resources: Resources,
}

impl LaunchRequest {
    /// A request with a fresh random token.
    pub fn new(
        node_type: impl Into<String>,
        node_config: serde_json::Value,
        tags: Tags,
        count: usize,
    ) -> Self {
        LaunchRequest {
            node_type: node_type.into(),
            node_config,
            tags,
            count,
            token: new_launch_token(),
            resources: Resources::new(),
        }
    }

    /// Sets the token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets the resources.
    #[must_use]
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }
}

/// A new random launch token (a UUID v4 without dashes: 32 hex characters, within
/// EC2's 64-character `ClientToken` limit and valid as a label value everywhere).
pub fn new_launch_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What a launch created ([`LaunchOutcome::new`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct LaunchOutcome {
    /// The nodes that exist for the request's token (created now or by an earlier try).
    pub nodes: Vec<NodeInfo>,
    /// Why fewer than `count` nodes exist, when they do.
    pub shortfall: Option<crate::Error>,
}

impl LaunchOutcome {
    /// The nodes that exist for the request's token and, when they are fewer than
    /// asked for, why.
    pub fn new(nodes: Vec<NodeInfo>, shortfall: Option<crate::Error>) -> Self {
        LaunchOutcome { nodes, shortfall }
    }

    /// True when the request was fulfilled partly.
    pub fn is_partial(&self) -> bool {
        self.shortfall.is_some()
    }
}

/// Tags to set on one node; existing tags not named here stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TagUpdate {
    /// The node.
    pub node_id: NodeId,
    /// Tags to add or overwrite.
    pub tags: Tags,
}

impl TagUpdate {
    /// Sets `tags` on `node_id`.
    pub fn new(node_id: impl Into<NodeId>, tags: Tags) -> Self {
        TagUpdate {
            node_id: node_id.into(),
            tags,
        }
    }
}

/// Nodes of one cluster on one provider.
///
/// See the [module docs](self) for the contract every implementation keeps, and
/// `cloudtik_core::testing::conformance` (feature `testing`) for the suite that checks it.
#[async_trait]
pub trait NodeProvider: Debug + Send + Sync + 'static {
    /// The provider type as in `provider.type` (`virtual`, `aws`, ...).
    fn provider_type(&self) -> &str;

    /// The cluster this provider serves.
    fn cluster_name(&self) -> &str;

    /// What the provider can do.
    fn capabilities(&self) -> ProviderCapabilities;

    /// The cluster's non-terminated (pending or running) nodes that carry every tag in
    /// `filters`. One call lists them all (paginating inside); callers cache the result
    /// for a controller pass rather than calling per node.
    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>>;

    /// Launches nodes; see the module docs for tags, tokens and partial launches.
    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome>;

    /// Sets tags on nodes, batched. Nodes that do not exist are an error of kind
    /// `NotFound` naming them, after the others were updated.
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()>;

    /// Terminates nodes. Ids that are already gone are not an error.
    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()>;

    /// Removes what is left of the cluster's nodes that stopped outside the provider's
    /// control and are no nodes any more (not listed), e.g. a virtual node's container
    /// stopped with `docker stop`; answers how many. A full `cluster stop` calls it, so
    /// nothing of the cluster is left. The default has nothing to remove (`Ok(0)`).
    async fn remove_stopped_nodes(&self) -> Result<usize> {
        Ok(0)
    }

    /// The SSH host public keys of `node`, as the provider can tell them without an SSH
    /// connection to it (lines `<type> <base64> [comment]`, as in a `.pub` file), so the
    /// first connection checks the key it is shown (`StrictHostKeyChecking=yes`) instead
    /// of trusting it.
    ///
    /// # Behavior
    ///
    /// * `Ok(None)` (the default): the provider cannot tell; callers trust the key on
    ///   first use (`accept-new`) and log that they do.
    /// * `Ok(Some(keys))`: the node's keys; a provider may wait a bounded time for a
    ///   node that is still booting to have them.
    /// * `Err`: the provider should be able to tell but could not (the node is gone, or
    ///   did not make its keys in time); callers do not connect.
    async fn host_keys(&self, node: &NodeInfo) -> Result<Option<Vec<String>>> {
        let _ = node;
        Ok(None)
    }
}

/// Conveniences over [`NodeProvider`], implemented for every provider.
///
/// Do not implement this trait yourself.
#[async_trait]
pub trait NodeProviderExt: NodeProvider {
    /// Terminates one node.
    async fn terminate_node(&self, id: &str) -> Result<()> {
        self.terminate_nodes(&[id.to_string()]).await
    }

    /// Sets tags on one node.
    async fn set_tags(&self, id: &str, tags: Tags) -> Result<()> {
        self.set_node_tags(&[TagUpdate {
            node_id: id.to_string(),
            tags,
        }])
        .await
    }

    /// Lists the cluster's nodes of one kind.
    async fn list_nodes_of_kind(&self, kind: NodeKind) -> Result<Vec<NodeInfo>> {
        let mut filters = Tags::new();
        filters.insert(tags::NODE_KIND.to_string(), kind.as_str().to_string());
        self.list_nodes(&filters).await
    }

    /// The head node, if one is running or pending.
    async fn head_node(&self) -> Result<Option<NodeInfo>> {
        Ok(self.list_nodes_of_kind(NodeKind::Head).await?.into_iter().next())
    }

    /// One node by id, if it is non-terminated.
    async fn node(&self, id: &str) -> Result<Option<NodeInfo>> {
        Ok(self
            .list_nodes(&Tags::new())
            .await?
            .into_iter()
            .find(|n| n.id == id))
    }
}

impl<T: NodeProvider + ?Sized> NodeProviderExt for T {}

#[async_trait]
impl<T: NodeProvider + ?Sized> NodeProvider for Arc<T> {
    fn provider_type(&self) -> &str {
        (**self).provider_type()
    }
    fn cluster_name(&self) -> &str {
        (**self).cluster_name()
    }
    fn capabilities(&self) -> ProviderCapabilities {
        (**self).capabilities()
    }
    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        (**self).list_nodes(filters).await
    }
    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        (**self).create_nodes(request).await
    }
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        (**self).set_node_tags(updates).await
    }
    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        (**self).terminate_nodes(ids).await
    }
    async fn host_keys(&self, node: &NodeInfo) -> Result<Option<Vec<String>>> {
        (**self).host_keys(node).await
    }
    async fn remove_stopped_nodes(&self) -> Result<usize> {
        (**self).remove_stopped_nodes().await
    }
}

/// How complete a workspace is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkspaceExistence {
    /// Nothing of the workspace exists.
    NotExist,
    /// Every resource of the workspace exists.
    Completed,
    /// Some resources exist; `missing` names the others.
    Incomplete {
        /// The resources that are missing, in creation order.
        missing: Vec<String>,
    },
}

/// Options of [`WorkspaceProvider::delete_workspace`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteWorkspaceOptions {
    /// Also delete the managed cloud storage (bucket) of the workspace.
    pub delete_managed_storage: bool,
}

impl DeleteWorkspaceOptions {
    /// Sets `delete_managed_storage`.
    pub fn with_delete_managed_storage(mut self, v: bool) -> Self {
        self.delete_managed_storage = v;
        self
    }
}

/// The shared resources of a workspace: network, firewall, identities, storage.
///
/// # Cleanup contract
///
/// * **Expected flow.** `create_workspace` runs idempotent get-or-create steps in a fixed
///   order; `delete_workspace` runs the reverse order.
/// * **Guarantees.** A failed create names the step that failed and leaves the steps
///   before it in place; running create again continues from the failed step. Delete
///   tolerates missing pieces, so it can be run again after a failure, and deleting a
///   workspace that does not exist succeeds.
/// * **Assumptions.** Resources are found by deterministic name and workspace tag, so no
///   local state is needed; every await is a cancellation point, and a cancelled call is
///   repaired by running it again.
#[async_trait]
pub trait WorkspaceProvider: Debug + Send + Sync + 'static {
    /// The provider type as in `provider.type`.
    fn provider_type(&self) -> &str;

    /// The workspace's name.
    fn workspace_name(&self) -> &str;

    /// Creates what is missing of the workspace.
    async fn create_workspace(&self) -> Result<()>;

    /// Deletes the workspace. Fails with `Conflict` while clusters run in it.
    async fn delete_workspace(&self, options: DeleteWorkspaceOptions) -> Result<()>;

    /// Re-applies what can change after creation (firewall rules, managed storage).
    async fn update_workspace(&self) -> Result<()>;

    /// How complete the workspace is.
    async fn workspace_existence(&self) -> Result<WorkspaceExistence>;

    /// Provider-specific facts of the workspace (network id, address range, storage URI).
    async fn workspace_info(&self) -> Result<serde_json::Value>;

    /// Names of the clusters that have running nodes in the workspace.
    async fn list_clusters(&self) -> Result<Vec<String>>;
}
