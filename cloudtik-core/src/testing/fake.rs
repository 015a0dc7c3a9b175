//! [`FakeCloud`] and [`FakeProvider`]: nodes in memory, with failure injection.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeInfo, NodeState, Tags, tags};
use crate::provider::{LaunchOutcome, LaunchRequest, NodeProvider, ProviderCapabilities, TagUpdate};

use super::fake_workspace::{FakeWorkspaceProvider, WorkspaceState};

/// The `provider_type` of the fake providers.
const PROVIDER_TYPE: &str = "fake";

/// Prefix of fake node ids: nodes are `fake-1`, `fake-2`, ... in launch order.
const ID_PREFIX: &str = "fake-";

/// An in-memory cloud: the nodes of every cluster on it, the workspaces, the injected
/// failures and the call counters.
///
/// Clones share the same cloud. Hand out [`FakeProvider`]s (one per cluster) with
/// [`FakeCloud::node_provider`] and [`FakeWorkspaceProvider`]s with
/// [`FakeCloud::workspace_provider`].
#[derive(Clone, Default)]
pub struct FakeCloud {
    shared: Arc<Shared>,
}

impl fmt::Debug for FakeCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeCloud")
            .field("nodes", &self.node_count())
            .finish_non_exhaustive()
    }
}

impl FakeCloud {
    /// An empty cloud.
    pub fn new() -> Self {
        Self::default()
    }

    /// A node provider for `cluster` on this cloud, with default capabilities.
    pub fn node_provider(&self, cluster: impl Into<String>) -> FakeProvider {
        FakeProvider {
            cloud: self.clone(),
            cluster: cluster.into(),
            capabilities: ProviderCapabilities::default(),
        }
    }

    /// A workspace provider for `workspace` on this cloud. Every cluster on the cloud
    /// counts as running in the workspace.
    pub fn workspace_provider(&self, workspace: impl Into<String>) -> FakeWorkspaceProvider {
        FakeWorkspaceProvider::new(self.clone(), workspace.into())
    }

    /// Live (non-terminated) nodes in all clusters.
    pub fn node_count(&self) -> usize {
        self.lock().clusters.values().map(|c| c.nodes.len()).sum()
    }

    /// Names of the clusters that have live nodes, sorted.
    pub fn cluster_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lock()
            .clusters
            .iter()
            .filter(|(_, c)| !c.nodes.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    fn lock(&self) -> MutexGuard<'_, CloudState> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn workspaces(&self) -> MutexGuard<'_, HashMap<String, WorkspaceState>> {
        self.shared
            .workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where [`FakeProvider::hold_creates`] holds `create_nodes` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStage {
    /// Before the cloud acts: a caller dropped here launched nothing.
    BeforeCreate,
    /// After the nodes exist in the cloud, before the answer returns: a caller dropped
    /// here launched nodes it never heard of (the case a restarted controller must adopt).
    AfterCreate,
}

/// How many calls of each method the cloud answered (failed ones included), over all
/// clusters and handles of the cloud.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `list_nodes` calls.
    pub list: u64,
    /// `create_nodes` calls.
    pub create: u64,
    /// `set_node_tags` calls.
    pub set_tags: u64,
    /// `terminate_nodes` calls.
    pub terminate: u64,
}

/// An in-memory [`NodeProvider`] for one cluster, with failure injection.
///
/// # Behaviour
///
/// * Nodes get ids `fake-1`, `fake-2`, ... (unique on the cloud, in launch order),
///   internal IPs in `10.0.0.0/8` derived from the id, no external IP, and the instance
///   type from the `InstanceType` or `instance_type` key of the node config.
/// * A launch sets the request's tags plus `cloudtik-cluster-name` and
///   `cloudtik-launch-token`. Nodes are `Running` at once, or `Pending` for the first
///   few list calls of their cluster (see [`FakeProvider::set_pending_lists`]).
/// * Tokens: the cloud remembers every node launched with a token, also after it is
///   gone. A request repeated with the same token creates only `count` minus the nodes
///   launched with the token before, and answers with those of them still alive. When
///   the answer would hold no node and something stopped the launch, it is an `Err`.
/// * Batch limits of [`ProviderCapabilities`] are enforced: a call over a limit fails
///   with [`ErrorKind::Unexpected`] and changes nothing.
/// * Ids of other clusters on the same cloud are unknown to this provider: listing
///   never shows them, tagging them is `NotFound`, terminating them does nothing.
///
/// # Failure injection
///
/// Every knob is a method taking `&self`, thread-safe, effective at once on every handle
/// of the cloud (clones, [`FakeProvider::for_cluster`]), so a test can arm failures while
/// a controller runs. Setting a knob replaces its earlier setting;
/// [`FakeProvider::clear_faults`] resets them all. Injected errors carry the given
/// kind (with its default retry status), the operation and `provider: fake`.
///
/// Listing, answering and counting are O(nodes of the cluster); lookups by id are
/// O(log nodes), so the fake handles clusters of 10,000 nodes and more.
#[derive(Clone)]
pub struct FakeProvider {
    cloud: FakeCloud,
    cluster: String,
    capabilities: ProviderCapabilities,
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProvider")
            .field("cluster", &self.cluster)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// A provider for `cluster` on a new, empty cloud.
    pub fn new(cluster: impl Into<String>) -> Self {
        FakeCloud::new().node_provider(cluster)
    }

    /// Sets the capabilities this handle declares and enforces (batch limits).
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: ProviderCapabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// A provider for another cluster on the same cloud, with the same capabilities.
    pub fn for_cluster(&self, cluster: impl Into<String>) -> FakeProvider {
        FakeProvider {
            cloud: self.cloud.clone(),
            cluster: cluster.into(),
            capabilities: self.capabilities,
        }
    }

    /// The cloud this provider works on.
    pub fn cloud(&self) -> &FakeCloud {
        &self.cloud
    }

    // ---- failure injection -------------------------------------------------------

    /// The next `calls` `list_nodes` calls fail with `kind`.
    pub fn fail_list(&self, calls: usize, kind: ErrorKind) {
        self.cloud.lock().faults.list = CountedFault::new(calls, kind);
    }

    /// The next `calls` `create_nodes` calls fail with `kind` and create nothing.
    pub fn fail_create(&self, calls: usize, kind: ErrorKind) {
        self.cloud.lock().faults.set_create(None, calls, kind);
    }

    /// The next `calls` `create_nodes` calls for `node_type` fail with `kind` and create
    /// nothing; calls for other node types are not affected and do not count.
    pub fn fail_create_for_type(&self, node_type: impl Into<String>, calls: usize, kind: ErrorKind) {
        self.cloud
            .lock()
            .faults
            .set_create(Some(node_type.into()), calls, kind);
    }

    /// The next `calls` `create_nodes` calls create at most `max_nodes` nodes each; a
    /// call that wanted more reports the rest as a shortfall of `kind` (or fails with
    /// `kind` when it has no node to answer with).
    pub fn fail_create_partially(&self, calls: usize, max_nodes: usize, kind: ErrorKind) {
        self.cloud.lock().faults.partial = (calls > 0).then_some(PartialFault {
            remaining: calls,
            max_nodes,
            kind,
        });
    }

    /// The next `calls` `set_node_tags` calls fail with `kind` and change nothing.
    pub fn fail_set_tags(&self, calls: usize, kind: ErrorKind) {
        self.cloud.lock().faults.set_tags = CountedFault::new(calls, kind);
    }

    /// The next `calls` `terminate_nodes` calls fail with `kind` and terminate nothing.
    pub fn fail_terminate(&self, calls: usize, kind: ErrorKind) {
        self.cloud.lock().faults.terminate = CountedFault::new(calls, kind);
    }

    /// Every `create_nodes` call sleeps `delay` (with `tokio::time::sleep`, so paused
    /// test time applies) before the cloud acts. Zero turns the delay off.
    pub fn set_create_delay(&self, delay: Duration) {
        self.cloud.lock().faults.create_delay = delay;
    }

    /// Nodes launched from now on are `Pending` for the first `lists` successful
    /// `list_nodes` calls of their cluster, then `Running`. Zero (the default) makes
    /// them `Running` at once.
    pub fn set_pending_lists(&self, lists: u64) {
        self.cloud.lock().faults.pending_lists = lists;
    }

    /// At most `limit` live nodes of `node_type` on the whole cloud; `None` lifts the
    /// limit. A launch beyond it creates what fits and reports the rest as a shortfall
    /// of kind [`ErrorKind::Capacity`] (an `Err` when nothing fits).
    pub fn set_capacity(&self, node_type: impl Into<String>, limit: Option<usize>) {
        let mut state = self.cloud.lock();
        let node_type = node_type.into();
        match limit {
            Some(limit) => state.faults.capacity.insert(node_type, limit),
            None => state.faults.capacity.remove(&node_type),
        };
    }

    /// Holds `create_nodes` calls at `stage` until [`release_creates`](Self::release_creates).
    /// Calls already past the stage are not affected. Dropping a held call (aborting
    /// the task) is how tests crash a controller in the middle of a launch.
    pub fn hold_creates(&self, stage: GateStage) {
        self.cloud.shared.gate.held.send_replace(Some(stage));
    }

    /// Lets held `create_nodes` calls go on.
    pub fn release_creates(&self) {
        self.cloud.shared.gate.held.send_replace(None);
    }

    /// How many `create_nodes` calls wait at the gate now.
    pub fn creates_at_gate(&self) -> usize {
        *self.cloud.shared.gate.waiting.borrow()
    }

    /// Waits until at least `calls` `create_nodes` calls wait at the gate.
    pub async fn wait_for_creates_at_gate(&self, calls: usize) {
        let mut waiting = self.cloud.shared.gate.waiting.subscribe();
        // The sender lives in the cloud we hold, so the channel cannot close.
        let _ = waiting.wait_for(|n| *n >= calls).await;
    }

    /// Removes a node of this cluster from the cloud, as if the cloud lost it; no call
    /// is counted. Returns whether the node existed.
    pub fn kill_node(&self, id: &str) -> bool {
        let mut state = self.cloud.lock();
        state.remove_node(&self.cluster, id)
    }

    /// Resets every injected failure, the create delay, pending lists and capacity
    /// limits, and releases held creates. Nodes and counters stay.
    pub fn clear_faults(&self) {
        self.cloud.lock().faults = Faults::default();
        self.release_creates();
    }

    // ---- inspection --------------------------------------------------------------

    /// Calls answered so far, per method, on the whole cloud.
    pub fn calls(&self) -> CallCounts {
        self.cloud.lock().calls
    }

    /// Nodes ever created on the whole cloud (terminated and killed ones included).
    pub fn nodes_created(&self) -> u64 {
        self.cloud.lock().nodes_created
    }

    /// Live nodes of this cluster.
    pub fn node_count(&self) -> usize {
        self.cloud
            .lock()
            .clusters
            .get(&self.cluster)
            .map_or(0, |c| c.nodes.len())
    }

    /// The live nodes of this cluster as `list_nodes` would show them, without counting
    /// a call, injecting failures or advancing pending nodes.
    pub fn snapshot(&self) -> Vec<NodeInfo> {
        let state = self.cloud.lock();
        state.clusters.get(&self.cluster).map_or_else(Vec::new, |c| {
            c.nodes
                .iter()
                .map(|(seq, node)| node.info(*seq, c.list_calls))
                .collect()
        })
    }

    // ---- the cloud's side of create ----------------------------------------------

    fn launch(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        let mut guard = self.cloud.lock();
        let state = &mut *guard;
        if let Some(kind) = state.faults.take_create_fault(&request.node_type) {
            return Err(injected(kind, "create_nodes").with_context("node_type", &request.node_type));
        }
        let partial = state.faults.take_partial();
        let pending_lists = state.faults.pending_lists;
        let capacity = state.faults.capacity.get(&request.node_type).copied();
        let live_of_type = state.live_by_type.get(&request.node_type).copied().unwrap_or(0);

        let cluster = state.clusters.entry(self.cluster.clone()).or_default();
        let launched_before = cluster.by_token.get(&request.token).map_or(0, Vec::len);
        let wanted = request.count.saturating_sub(launched_before);
        let mut to_create = wanted;
        let mut shortfall = None;
        if let Some((max_nodes, kind)) = partial
            && to_create > max_nodes
        {
            to_create = max_nodes;
            shortfall = Some(
                injected(kind, "create_nodes")
                    .with_context("created", max_nodes)
                    .with_context("requested", wanted),
            );
        }
        if let Some(limit) = capacity {
            let room = limit.saturating_sub(live_of_type);
            if to_create > room {
                to_create = room;
                shortfall = Some(
                    Error::new(
                        ErrorKind::Capacity,
                        format!("no capacity for node type {}: limit {limit}", request.node_type),
                    )
                    .with_operation("create_nodes")
                    .with_context("provider", PROVIDER_TYPE)
                    .with_context("node_type", &request.node_type),
                );
            }
        }

        let instance_type = ["InstanceType", "instance_type"]
            .iter()
            .find_map(|k| request.node_config.get(k).and_then(|v| v.as_str()))
            .map(str::to_string);
        let mut node_tags = request.tags.clone();
        node_tags.insert(tags::CLUSTER_NAME.to_string(), self.cluster.clone());
        node_tags.insert(tags::LAUNCH_TOKEN.to_string(), request.token.clone());
        let token_seqs = cluster.by_token.entry(request.token.clone()).or_default();
        for _ in 0..to_create {
            state.next_seq += 1;
            let seq = state.next_seq;
            token_seqs.push(seq);
            cluster.nodes.insert(
                seq,
                FakeNode {
                    node_type: request.node_type.clone(),
                    tags: node_tags.clone(),
                    instance_type: instance_type.clone(),
                    pending_until_list: (pending_lists > 0).then_some(cluster.list_calls + pending_lists),
                },
            );
        }
        state.nodes_created += to_create as u64;
        *state.live_by_type.entry(request.node_type.clone()).or_default() += to_create;

        let nodes: Vec<NodeInfo> = token_seqs
            .iter()
            .filter_map(|seq| cluster.nodes.get(seq).map(|n| n.info(*seq, cluster.list_calls)))
            .collect();
        match shortfall {
            Some(err) if nodes.is_empty() => Err(err),
            shortfall => Ok(LaunchOutcome::new(nodes, shortfall)),
        }
    }
}

#[async_trait]
impl NodeProvider for FakeProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn cluster_name(&self) -> &str {
        &self.cluster
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.capabilities
    }

    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        let mut state = self.cloud.lock();
        state.calls.list += 1;
        if let Some(kind) = CountedFault::take(&mut state.faults.list) {
            return Err(injected(kind, "list_nodes"));
        }
        let Some(cluster) = state.clusters.get_mut(&self.cluster) else {
            return Ok(Vec::new());
        };
        cluster.list_calls += 1;
        let list_calls = cluster.list_calls;
        Ok(cluster
            .nodes
            .iter()
            .filter(|(_, node)| filters.iter().all(|(k, v)| node.tags.get(k) == Some(v)))
            .map(|(seq, node)| node.info(*seq, list_calls))
            .collect())
    }

    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        let delay = {
            let mut state = self.cloud.lock();
            state.calls.create += 1;
            state.faults.create_delay
        };
        check_batch(
            "create_nodes",
            request.count,
            self.capabilities.max_launch_batch,
            "max_launch_batch",
        )?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.cloud.shared.gate.pass(GateStage::BeforeCreate).await;
        let result = self.launch(request);
        self.cloud.shared.gate.pass(GateStage::AfterCreate).await;
        result
    }

    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        let mut guard = self.cloud.lock();
        let state = &mut *guard;
        state.calls.set_tags += 1;
        check_batch(
            "set_node_tags",
            updates.len(),
            self.capabilities.max_tag_batch,
            "max_tag_batch",
        )?;
        if let Some(kind) = CountedFault::take(&mut state.faults.set_tags) {
            return Err(injected(kind, "set_node_tags"));
        }
        let mut cluster = state.clusters.get_mut(&self.cluster);
        let mut missing: Vec<&str> = Vec::new();
        for update in updates {
            let node = parse_id(&update.node_id)
                .and_then(|seq| cluster.as_deref_mut().and_then(|c| c.nodes.get_mut(&seq)));
            match node {
                Some(node) => node
                    .tags
                    .extend(update.tags.iter().map(|(k, v)| (k.clone(), v.clone()))),
                None if !missing.contains(&update.node_id.as_str()) => missing.push(&update.node_id),
                None => {}
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            let ids = missing.join(", ");
            Err(Error::new(ErrorKind::NotFound, format!("no such node: {ids}"))
                .with_operation("set_node_tags")
                .with_context("provider", PROVIDER_TYPE)
                .with_context("node_ids", ids))
        }
    }

    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        let mut state = self.cloud.lock();
        state.calls.terminate += 1;
        check_batch(
            "terminate_nodes",
            ids.len(),
            self.capabilities.max_terminate_batch,
            "max_terminate_batch",
        )?;
        if let Some(kind) = CountedFault::take(&mut state.faults.terminate) {
            return Err(injected(kind, "terminate_nodes"));
        }
        for id in ids {
            state.remove_node(&self.cluster, id);
        }
        Ok(())
    }
}

/// Fails a call of `n` items over the provider's `limit` of `max`.
fn check_batch(operation: &'static str, n: usize, max: usize, limit: &str) -> Result<()> {
    if n > max {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("{n} items in one call exceed the provider's {limit} of {max}"),
        )
        .with_operation(operation)
        .with_context("provider", PROVIDER_TYPE));
    }
    Ok(())
}

fn injected(kind: ErrorKind, operation: &'static str) -> Error {
    Error::new(kind, "injected failure")
        .with_operation(operation)
        .with_context("provider", PROVIDER_TYPE)
}

/// The sequence number of a canonical fake id (`fake-12`; not `fake-012`).
fn parse_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix(ID_PREFIX)?;
    if digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// Internal IP of node `seq`: `10.0.0.0` plus `seq`.
fn internal_ip(seq: u64) -> String {
    let n = seq & 0x00ff_ffff;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<CloudState>,
    workspaces: Mutex<HashMap<String, WorkspaceState>>,
    gate: Gate,
}

#[derive(Debug, Default)]
struct CloudState {
    next_seq: u64,
    clusters: HashMap<String, ClusterNodes>,
    /// Live nodes per node type over all clusters, for capacity limits.
    live_by_type: HashMap<String, usize>,
    faults: Faults,
    calls: CallCounts,
    nodes_created: u64,
}

impl CloudState {
    fn remove_node(&mut self, cluster: &str, id: &str) -> bool {
        let Some(seq) = parse_id(id) else {
            return false;
        };
        let Some(node) = self.clusters.get_mut(cluster).and_then(|c| c.nodes.remove(&seq)) else {
            return false;
        };
        if let Some(live) = self.live_by_type.get_mut(&node.node_type) {
            *live = live.saturating_sub(1);
        }
        true
    }
}

#[derive(Debug, Default)]
struct ClusterNodes {
    /// Live nodes by sequence number (the number in the id), so listing is in launch order.
    nodes: BTreeMap<u64, FakeNode>,
    /// Every node launched with a token, live or gone.
    by_token: HashMap<String, Vec<u64>>,
    /// Successful `list_nodes` calls of this cluster, the clock of pending nodes.
    list_calls: u64,
}

#[derive(Debug)]
struct FakeNode {
    node_type: String,
    tags: Tags,
    instance_type: Option<String>,
    /// The node is pending while the cluster's list count is at most this; `None` when
    /// it was running from the start.
    pending_until_list: Option<u64>,
}

impl FakeNode {
    fn info(&self, seq: u64, list_calls: u64) -> NodeInfo {
        NodeInfo {
            id: format!("{ID_PREFIX}{seq}"),
            state: if self.pending_until_list.is_some_and(|until| list_calls <= until) {
                NodeState::Pending
            } else {
                NodeState::Running
            },
            tags: self.tags.clone(),
            internal_ip: Some(internal_ip(seq)),
            external_ip: None,
            instance_type: self.instance_type.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    list: Option<CountedFault>,
    create: Vec<CreateFault>,
    partial: Option<PartialFault>,
    set_tags: Option<CountedFault>,
    terminate: Option<CountedFault>,
    capacity: HashMap<String, usize>,
    create_delay: Duration,
    pending_lists: u64,
}

impl Faults {
    fn set_create(&mut self, node_type: Option<String>, calls: usize, kind: ErrorKind) {
        self.create.retain(|f| f.node_type != node_type);
        if let Some(fault) = CountedFault::new(calls, kind) {
            self.create.push(CreateFault { node_type, fault });
        }
    }

    /// The kind of the first armed create fault that applies to `node_type`, used up by one.
    fn take_create_fault(&mut self, node_type: &str) -> Option<ErrorKind> {
        let i = self
            .create
            .iter()
            .position(|f| f.node_type.as_deref().is_none_or(|t| t == node_type))?;
        let kind = self.create[i].fault.kind;
        self.create[i].fault.remaining -= 1;
        if self.create[i].fault.remaining == 0 {
            self.create.remove(i);
        }
        Some(kind)
    }

    fn take_partial(&mut self) -> Option<(usize, ErrorKind)> {
        let fault = self.partial.as_mut()?;
        let taken = (fault.max_nodes, fault.kind);
        fault.remaining -= 1;
        if fault.remaining == 0 {
            self.partial = None;
        }
        Some(taken)
    }
}

#[derive(Debug, Clone, Copy)]
struct CountedFault {
    remaining: usize,
    kind: ErrorKind,
}

impl CountedFault {
    fn new(calls: usize, kind: ErrorKind) -> Option<Self> {
        (calls > 0).then_some(CountedFault {
            remaining: calls,
            kind,
        })
    }

    /// Uses up one call of the fault in `slot`, returning its kind.
    fn take(slot: &mut Option<Self>) -> Option<ErrorKind> {
        let fault = slot.as_mut()?;
        let kind = fault.kind;
        fault.remaining -= 1;
        if fault.remaining == 0 {
            *slot = None;
        }
        Some(kind)
    }
}

#[derive(Debug)]
struct CreateFault {
    node_type: Option<String>,
    fault: CountedFault,
}

#[derive(Debug)]
struct PartialFault {
    remaining: usize,
    max_nodes: usize,
    kind: ErrorKind,
}

/// Holds `create_nodes` calls at a stage until released.
#[derive(Debug)]
struct Gate {
    held: watch::Sender<Option<GateStage>>,
    waiting: watch::Sender<usize>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            held: watch::Sender::new(None),
            waiting: watch::Sender::new(0),
        }
    }
}

impl Gate {
    async fn pass(&self, stage: GateStage) {
        let mut held = self.held.subscribe();
        let held_here = *held.borrow_and_update() == Some(stage);
        if !held_here {
            return;
        }
        let _waiting = WaitingGuard::enter(&self.waiting);
        // The sender lives as long as `self`, so the channel cannot close.
        let _ = held.wait_for(|h| *h != Some(stage)).await;
    }
}

/// Counts a call waiting at the gate, also when its future is dropped while waiting.
struct WaitingGuard<'a>(&'a watch::Sender<usize>);

impl<'a> WaitingGuard<'a> {
    fn enter(waiting: &'a watch::Sender<usize>) -> Self {
        waiting.send_modify(|n| *n += 1);
        WaitingGuard(waiting)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_ips_are_canonical() {
        assert_eq!(parse_id("fake-12"), Some(12));
        assert_eq!(parse_id("fake-012"), None);
        assert_eq!(parse_id("fake-"), None);
        assert_eq!(parse_id("i-123"), None);
        assert_eq!(internal_ip(1), "10.0.0.1");
        assert_eq!(internal_ip(256 + 2), "10.0.1.2");
        assert_eq!(internal_ip(70_000), "10.1.17.112");
    }
}
