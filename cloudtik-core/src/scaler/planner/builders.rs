//! Constructors and builders of the planner's inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ClusterSnapshot, NodeSnapshot, NodeTypeConfig, ScalingConfig};
use crate::resources::Resources;

impl NodeTypeConfig {
    /// A type whose nodes have `resources`, with no minimum, at most `max_workers` and
    /// launch priority 0.
    pub fn new(resources: Resources, max_workers: usize) -> Self {
        NodeTypeConfig {
            resources,
            min_workers: 0,
            max_workers,
            launch_priority: 0,
        }
    }

    /// Sets `min_workers`.
    #[must_use]
    pub fn with_min_workers(mut self, n: usize) -> Self {
        self.min_workers = n;
        self
    }

    /// Sets `max_workers`.
    #[must_use]
    pub fn with_max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }

    /// Sets `launch_priority`.
    #[must_use]
    pub fn with_launch_priority(mut self, p: i32) -> Self {
        self.launch_priority = p;
        self
    }
}

impl ScalingConfig {
    /// A config with no node type yet, the head of type `head_node_type`, at most
    /// `max_workers` workers, upscaling speed 1 and CloudTik's 5-minute idle timeout.
    pub fn new(head_node_type: impl Into<String>, max_workers: usize) -> Self {
        ScalingConfig {
            node_types: BTreeMap::new(),
            head_node_type: head_node_type.into(),
            max_workers,
            upscaling_speed: 1.0,
            idle_timeout: Duration::from_secs(300),
        }
    }

    /// Adds (or replaces) the node type `name`.
    #[must_use]
    pub fn with_node_type(mut self, name: impl Into<String>, node_type: NodeTypeConfig) -> Self {
        self.node_types.insert(name.into(), node_type);
        self
    }

    /// Sets `upscaling_speed`.
    #[must_use]
    pub fn with_upscaling_speed(mut self, speed: f64) -> Self {
        self.upscaling_speed = speed;
        self
    }

    /// Sets `idle_timeout` (zero: idle workers are never terminated).
    #[must_use]
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
}

impl ClusterSnapshot {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node.
    #[must_use]
    pub fn with_node(mut self, node: NodeSnapshot) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds `count` launches of `node_type` in flight.
    #[must_use]
    pub fn with_launching(mut self, node_type: impl Into<String>, count: usize) -> Self {
        *self.launching.entry(node_type.into()).or_insert(0) += count;
        self
    }

    /// Adds resource demands.
    #[must_use]
    pub fn with_demands(mut self, demands: impl IntoIterator<Item = Resources>) -> Self {
        self.demands.extend(demands);
        self
    }

    /// Adds persistent resource requests.
    #[must_use]
    pub fn with_requests(mut self, requests: impl IntoIterator<Item = Resources>) -> Self {
        self.requests.extend(requests);
        self
    }
}
