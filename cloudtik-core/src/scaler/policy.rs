//! Scaling policies (CloudTik's `ScalingPolicy`): what a cluster's runtimes need, asked
//! by the controller every pass.
//!
//! A policy returns a [`ScalingState`]: **resource demands** (one bundle per unit of
//! waiting work, e.g. an executor Spark wants or a Ray task that has no place), and the
//! **resource state of each node** it knows (keyed by the node's internal IP): what is
//! free and whether the node is in use. The controller adds the demands to those in the
//! state store and, for a node the policy reports, uses the policy's free resources
//! instead of the agent's, so a node running a runtime's work is never idle.
//!
//! A runtime chooses its policy ([`Runtime::scaling_policy`]); a cluster whose runtimes
//! have none gets [`LoadScalingPolicy`], CloudTik's default: a node is in use while its
//! CPU utilisation is above a threshold.
//!
//! [`Runtime::scaling_policy`]: crate::runtime::Runtime::scaling_policy

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::resources::{self, Resources};
use crate::state::StateStore;

/// What a node's runtimes use of it, as a policy sees it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NodeResourceState {
    /// The node's free resources, as the runtime counts them.
    pub available: Resources,
    /// True while the runtime runs work on the node (it must not be taken away).
    pub in_use: bool,
}

impl NodeResourceState {
    /// A node with `available` free, in use or not.
    pub fn new(available: Resources, in_use: bool) -> Self {
        NodeResourceState { available, in_use }
    }
}

/// A policy's answer for one pass.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ScalingState {
    /// Work waiting for room: one bundle each.
    pub demands: Vec<Resources>,
    /// Per node internal IP: its resource state.
    pub nodes: BTreeMap<String, NodeResourceState>,
}

impl ScalingState {
    /// An empty state: no demand, no node.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count` demands of `bundle`.
    #[must_use]
    pub fn with_demands(mut self, bundle: &Resources, count: usize) -> Self {
        self.demands.extend(std::iter::repeat_n(bundle.clone(), count));
        self
    }

    /// Sets the state of the node at `ip`.
    #[must_use]
    pub fn with_node(mut self, ip: impl Into<String>, state: NodeResourceState) -> Self {
        self.nodes.insert(ip.into(), state);
        self
    }
}

/// A cluster's scaling policy, polled by the controller every pass (keep it quick: it
/// gets [`POLICY_TIMEOUT`] before the pass goes on without it).
#[async_trait]
pub trait ScalingPolicy: Debug + Send + Sync + 'static {
    /// The policy's name, for logs and `status` (e.g. `spark`).
    fn name(&self) -> &str;

    /// The demands and node states now. An error is logged and the pass goes on with
    /// the demands of the state store and the agents' resources.
    async fn scaling_state(&self) -> Result<ScalingState>;
}

/// How long the controller waits for a policy's answer.
pub const POLICY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// CloudTik's in-use CPU load threshold: a node is in use while it uses more than this
/// share of its CPUs.
pub const DEFAULT_IN_USE_CPU_THRESHOLD: f64 = 0.10;

/// CloudTik's default policy (`ScalingWithResources`), from the agents' metrics: a node
/// uses `ceil(utilisation)` of its CPUs and is in use while its utilisation per CPU is
/// above [`DEFAULT_IN_USE_CPU_THRESHOLD`]. No demands.
///
/// Unlike CloudTik, which reads the host's load average, the utilisation is the
/// agent's CPU measure, which respects the node's cgroup: containers of one machine
/// share a load average, not a cgroup.
#[derive(Debug, Clone)]
pub struct LoadScalingPolicy<S: ?Sized> {
    store: Arc<S>,
    threshold: f64,
}

impl<S: StateStore + ?Sized> LoadScalingPolicy<S> {
    /// The policy over the metrics in `store`.
    pub fn new(store: Arc<S>) -> Self {
        LoadScalingPolicy {
            store,
            threshold: DEFAULT_IN_USE_CPU_THRESHOLD,
        }
    }

    /// Sets the in-use threshold (share of the CPUs, 0 to 1).
    #[must_use]
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }
}

/// The resource state of a node from its agent's metrics (see [`LoadScalingPolicy`]).
pub fn load_node_state(metrics: &crate::state::NodeMetrics, threshold: f64) -> NodeResourceState {
    let cpus = metrics.cpu_count.max(0.0);
    let used_cpus = cpus * (metrics.cpu_percent / 100.0).clamp(0.0, 1.0);
    let in_use = cpus > 0.0 && used_cpus / cpus > threshold;
    let used = if in_use { used_cpus.ceil().min(cpus) } else { 0.0 };
    let mut available = Resources::new();
    available.set(resources::CPU, (cpus - used).max(0.0));
    if metrics.memory_total > 0 {
        available.set(resources::MEMORY, metrics.memory_available as f64);
    }
    NodeResourceState { available, in_use }
}

#[async_trait]
impl<S: StateStore + ?Sized> ScalingPolicy for LoadScalingPolicy<S> {
    fn name(&self) -> &str {
        "load"
    }

    async fn scaling_state(&self) -> Result<ScalingState> {
        let heartbeats = self.store.all_heartbeats().await?;
        let metrics = self.store.all_node_metrics().await?;
        let mut state = ScalingState::new();
        for (id, m) in &metrics {
            let Some(hb) = heartbeats.get(id) else { continue };
            let mut node = load_node_state(m, self.threshold);
            // Memory is not a scaling resource of this policy: keep the agent's.
            let mem = hb.available_resources.get(resources::MEMORY);
            if mem > 0.0 {
                node.available.set(resources::MEMORY, mem);
            }
            state.nodes.insert(hb.node_ip.clone(), node);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeMetrics;

    fn metrics(cpus: f64, percent: f64) -> NodeMetrics {
        NodeMetrics {
            cpu_count: cpus,
            cpu_percent: percent,
            memory_total: 1 << 30,
            memory_available: 1 << 29,
            ..Default::default()
        }
    }

    #[test]
    fn a_quiet_node_is_free_and_a_busy_one_in_use() {
        let quiet = load_node_state(&metrics(4.0, 2.0), DEFAULT_IN_USE_CPU_THRESHOLD);
        assert!(!quiet.in_use);
        assert_eq!(quiet.available.get(resources::CPU), 4.0);
        // 1.2 CPUs of 4 busy: 2 CPUs in use.
        let busy = load_node_state(&metrics(4.0, 30.0), DEFAULT_IN_USE_CPU_THRESHOLD);
        assert!(busy.in_use);
        assert_eq!(busy.available.get(resources::CPU), 2.0);
        let full = load_node_state(&metrics(1.0, 100.0), DEFAULT_IN_USE_CPU_THRESHOLD);
        assert!(full.in_use);
        assert_eq!(full.available.get(resources::CPU), 0.0);
    }

    #[tokio::test]
    async fn the_load_policy_reads_the_agents_rows() {
        use crate::state::{InMemoryStore, NodeHeartbeat};
        let store = Arc::new(InMemoryStore::new());
        let hb = NodeHeartbeat {
            node_id: "n1".into(),
            node_ip: "10.0.0.2".into(),
            node_kind: crate::node::NodeKind::Worker,
            node_type: "w".into(),
            seq_id: None,
            heartbeat_time: crate::state::unix_now(),
            total_resources: Resources::from_pairs([(resources::CPU, 2.0)]),
            available_resources: Resources::from_pairs([(resources::CPU, 2.0), (resources::MEMORY, 100.0)]),
        };
        store.put_heartbeat(&hb).await.unwrap();
        store.put_node_metrics("n1", &metrics(2.0, 75.0)).await.unwrap();
        let state = LoadScalingPolicy::new(store).scaling_state().await.unwrap();
        let n = &state.nodes["10.0.0.2"];
        assert!(n.in_use);
        assert_eq!(n.available.get(resources::CPU), 0.0);
        assert_eq!(n.available.get(resources::MEMORY), 100.0);
        assert!(state.demands.is_empty());
    }
}
