//! What the controller needs of a cluster config: the planner's [`ScalingConfig`], and
//! for every node type its launch parameters and launch hash.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::planner::{NodeTypeConfig, ScalingConfig};
use crate::config::{ClusterConfig, launch_hash};
use crate::error::{Error, Result};

/// The resource every worker of `node_type` holds one of, so that `scale --workers N
/// --worker-type T` is a request of `N` bundles `{"node-type:T": 1}`: exactly `N` workers
/// of that type, never the head. Agents do not report it; only the planner's view of a
/// type's full resources (where requests are packed) carries it.
pub fn node_type_marker(node_type: &str) -> String {
    format!("node-type:{node_type}")
}

/// Launch parameters of one node type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LaunchSpec {
    /// The provider's `node_config`.
    pub node_config: Value,
    /// Its launch hash (`cloudtik-launch-config`).
    pub launch_hash: String,
}

impl LaunchSpec {
    /// The launch parameters `node_config` with their launch hash.
    pub fn new(node_config: Value, launch_hash: impl Into<String>) -> Self {
        LaunchSpec {
            node_config,
            launch_hash: launch_hash.into(),
        }
    }
}

/// The controller's view of a cluster config.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScalingInputs {
    /// The planner's config.
    pub scaling: ScalingConfig,
    /// Launch parameters per node type.
    pub launch: BTreeMap<String, LaunchSpec>,
}

impl ScalingInputs {
    /// Inputs with the planner's `scaling` config and no launch parameters yet.
    pub fn new(scaling: ScalingConfig) -> Self {
        ScalingInputs {
            scaling,
            launch: BTreeMap::new(),
        }
    }

    /// Adds the launch parameters of `node_type`.
    #[must_use]
    pub fn with_launch(mut self, node_type: impl Into<String>, spec: LaunchSpec) -> Self {
        self.launch.insert(node_type.into(), spec);
        self
    }

    /// Derives the inputs from a loaded cluster config. Every worker type needs its
    /// `resources` (providers fill them in at bootstrap); a type without them is an
    /// error naming it.
    pub fn from_cluster_config(config: &ClusterConfig) -> Result<Self> {
        let mut node_types = BTreeMap::new();
        let mut launch = BTreeMap::new();
        for (name, t) in &config.available_node_types {
            let node_config = Value::Object(t.node_config.clone());
            let hash = launch_hash(&node_config, &config.auth)?;
            launch.insert(
                name.clone(),
                LaunchSpec {
                    node_config,
                    launch_hash: hash,
                },
            );
            let mut resources = match &t.resources {
                Some(r) => r.clone(),
                None if *name == config.head_node_type => Default::default(),
                None => {
                    return Err(Error::config(
                        format!(
                            "available_node_types.{}.resources",
                            crate::config::YamlPath::root().key(name)
                        ),
                        "the autoscaler needs the resources of each worker type (CPU, memory, GPU); \
                         the provider detects them at bootstrap, or set them here",
                    ));
                }
            };
            if *name != config.head_node_type {
                resources.set(&node_type_marker(name), 1.0);
            }
            node_types.insert(
                name.clone(),
                NodeTypeConfig {
                    resources,
                    min_workers: config.min_workers_of(name) as usize,
                    max_workers: config.max_workers_of(name) as usize,
                    launch_priority: t.launch_priority.unwrap_or(0),
                },
            );
        }
        let idle = config.idle_timeout_minutes();
        Ok(ScalingInputs {
            scaling: ScalingConfig {
                node_types,
                head_node_type: config.head_node_type.clone(),
                max_workers: config.max_workers() as usize,
                upscaling_speed: config.upscaling_speed(),
                idle_timeout: Duration::from_secs_f64(idle * 60.0),
            },
            launch,
        })
    }
}
