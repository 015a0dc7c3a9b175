//! The typed cluster config: CloudTik's YAML keys, as they are.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::node::NodeKind;
use crate::resources::Resources;

/// Default `max_workers` when neither the config nor its templates set one (CloudTik's).
pub const DEFAULT_MAX_WORKERS: u32 = 32;
/// Default `idle_timeout_minutes`.
pub const DEFAULT_IDLE_TIMEOUT_MINUTES: f64 = 5.0;
/// Default `upscaling_speed`.
pub const DEFAULT_UPSCALING_SPEED: f64 = 1.0;

/// A cluster config, as read from CloudTik's YAML after `from:` templates and defaults
/// are merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The cluster's name, unique within its workspace.
    pub cluster_name: String,
    /// The workspace the cluster runs in.
    pub workspace_name: String,
    /// The template this config inherits (`aws/standard`, a user template), already applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The most workers the cluster may have, over all node types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
    /// Minutes a worker may stay idle before it is terminated (0 = never). Overrides
    /// `options.idle_timeout_minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<f64>,
    /// How fast the autoscaler adds nodes, relative to the nodes of a type running.
    /// Overrides `options.upscaling_speed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaling_speed: Option<f64>,
    /// Tunables of the cluster.
    #[serde(default)]
    pub options: ClusterOptions,
    /// Which provider runs the nodes, with its own keys.
    pub provider: ProviderSection,
    /// How to reach the nodes over SSH.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The node types, by name.
    #[serde(default)]
    pub available_node_types: BTreeMap<String, NodeTypeConfig>,
    /// The node type of the head; must be one of `available_node_types`.
    #[serde(default)]
    pub head_node_type: String,
    /// Files to copy to every node: remote path -> local path.
    #[serde(default)]
    pub file_mounts: BTreeMap<String, String>,
    /// Files the head syncs to workers when they change.
    #[serde(default)]
    pub cluster_synced_files: Vec<String>,
    /// Keep syncing file mounts after setup.
    #[serde(default)]
    pub file_mounts_sync_continuously: bool,
    /// rsync `--exclude` patterns.
    #[serde(default)]
    pub rsync_exclude: Vec<String>,
    /// Files whose patterns rsync reads as filters (`.gitignore`).
    #[serde(default)]
    pub rsync_filter: Vec<String>,
    /// Commands run first on every node, on the host.
    #[serde(default)]
    pub initialization_commands: Vec<String>,
    /// Initialization commands of the head only.
    #[serde(default)]
    pub head_initialization_commands: Vec<String>,
    /// Initialization commands of workers only.
    #[serde(default)]
    pub worker_initialization_commands: Vec<String>,
    /// Setup commands of every node.
    #[serde(default)]
    pub setup_commands: Vec<String>,
    /// Setup commands of the head only.
    #[serde(default)]
    pub head_setup_commands: Vec<String>,
    /// Setup commands of workers only.
    #[serde(default)]
    pub worker_setup_commands: Vec<String>,
    /// Commands run after setup, on every node.
    #[serde(default)]
    pub bootstrap_commands: Vec<String>,
    /// Start commands of every node.
    #[serde(default)]
    pub start_commands: Vec<String>,
    /// Start commands of the head only.
    #[serde(default)]
    pub head_start_commands: Vec<String>,
    /// Start commands of workers only.
    #[serde(default)]
    pub worker_start_commands: Vec<String>,
    /// Stop commands of every node (run in reverse order).
    #[serde(default)]
    pub stop_commands: Vec<String>,
    /// Stop commands of the head only.
    #[serde(default)]
    pub head_stop_commands: Vec<String>,
    /// Stop commands of workers only.
    #[serde(default)]
    pub worker_stop_commands: Vec<String>,
    /// Container execution mode.
    #[serde(default)]
    pub docker: DockerConfig,
    /// The runtimes the cluster runs (`types: [spark]`) and their settings.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Encryption settings of the runtime config shared through the state store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Value>,
    /// Set on configs that were bootstrapped already (the head's copy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrapped: bool,
    /// Internal: commands merged by group (CloudTik writes this into the head's copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_commands: Option<Value>,
    /// Internal: do not restart services on the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_restart: Option<bool>,
    /// Internal: only restart services on the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_only: Option<bool>,
    /// Internal: the head's node config as started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_node: Option<Value>,
    /// Internal: run no cluster controller on the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_controller_on_head: Option<bool>,
}

/// The `provider` section: a `type` plus keys only that provider reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderSection {
    /// `virtual`, `local`, `aws`, `gcp`, `azure`, ...
    #[serde(rename = "type")]
    pub provider_type: String,
    /// Use internal IPs only (the working machine is inside the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_internal_ips: Option<bool>,
    /// The provider's own keys, kept for it to parse.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ProviderSection {
    /// The provider's keys as one JSON object, `type` included.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Parses the section into a provider's own config type, with errors naming
    /// `provider.<key>`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        let v = self.to_value();
        super::typed::from_value(&v, &super::path::YamlPath::root().key("provider"))
    }

    /// Writes a provider's own config type back into the section: the keys it
    /// serializes replace the section's (`type` stays as it is). The typed way to
    /// change a provider's settings, e.g. for the config the head gets.
    pub fn set_typed<T: Serialize>(&mut self, typed: &T) -> crate::Result<()> {
        let value = serde_json::to_value(typed).map_err(|e| {
            crate::Error::new(crate::ErrorKind::Unexpected, "cannot write provider settings").with_source(e)
        })?;
        let Value::Object(map) = value else {
            return Err(crate::Error::new(
                crate::ErrorKind::Unexpected,
                "provider settings must serialize to a mapping",
            ));
        };
        for (k, v) in map {
            match k.as_str() {
                "type" => {}
                "use_internal_ips" => self.use_internal_ips = v.as_bool(),
                _ => {
                    self.extra.insert(k, v);
                }
            }
        }
        Ok(())
    }
}

/// The `auth` section: how to reach nodes over SSH.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The user to log in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// Path of the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_private_key: Option<String>,
    /// Path of the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// SSH port (22 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// A `ProxyCommand` for reaching nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_proxy_command: Option<String>,
}

/// One entry of `available_node_types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeConfig {
    /// The provider's launch parameters (instance type, image, disks...).
    pub node_config: Map<String, Value>,
    /// Workers of this type kept running at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<u32>,
    /// Workers of this type allowed at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
    /// Resources of one node of this type (detected from the provider when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Higher priorities launch first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_priority: Option<i32>,
    /// Initialization commands of workers of this type (replace the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_initialization_commands: Option<Vec<String>>,
    /// Setup commands of workers of this type (replace the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_setup_commands: Option<Vec<String>>,
    /// Bootstrap commands of this type (replace the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_commands: Option<Vec<String>>,
    /// Start commands of workers of this type (replace the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_start_commands: Option<Vec<String>>,
    /// Stop commands of workers of this type (replace the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_stop_commands: Option<Vec<String>>,
    /// Runtime settings of this type, merged over the global `runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSection>,
    /// Docker settings of this type, merged over the global `docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Map<String, Value>>,
}

/// The `options` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterOptions {
    /// See [`ClusterConfig::upscaling_speed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaling_speed: Option<f64>,
    /// See [`ClusterConfig::idle_timeout_minutes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<f64>,
    /// Hold lower launch priorities until higher ones are up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_with_strong_priority: Option<bool>,
    /// Reuse the lowest free sequence id for new nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_node_seq_id: Option<bool>,
    /// Retry failed setup commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_setup_command: Option<bool>,
    /// Retry failed start commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_start_command: Option<bool>,
    /// Number of retries of a retried command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_retries: Option<u32>,
    /// Seconds between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<f64>,
    /// Other options, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `docker` section: container execution mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DockerConfig {
    /// Run the node's commands in a container.
    #[serde(default)]
    pub enabled: bool,
    /// The image of every node's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The head's image, if different.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_image: Option<String>,
    /// The workers' image, if different.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_image: Option<String>,
    /// The container's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Pull the image before running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_before_run: Option<bool>,
    /// Extra `docker run` options of every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_options: Vec<String>,
    /// Extra `docker run` options of the head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_run_options: Vec<String>,
    /// Extra `docker run` options of workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_run_options: Vec<String>,
    /// Initialization commands run on the host before the container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initialization_commands: Vec<String>,
    /// Host initialization commands of the head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_initialization_commands: Vec<String>,
    /// Host initialization commands of workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_initialization_commands: Vec<String>,
    /// Other docker keys, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `runtime` section: which runtimes run and their settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RuntimeSection {
    /// Runtime names, e.g. `[hdfs, spark]`.
    #[serde(default)]
    pub types: Vec<String>,
    /// Environment variables for every node command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, Value>,
    /// One section per runtime (`spark: {...}`), plus `scaling`.
    #[serde(flatten)]
    pub sections: Map<String, Value>,
}

/// The command lists of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandPhase {
    /// `initialization_commands`
    Initialization,
    /// `setup_commands` (then `bootstrap_commands`)
    Setup,
    /// `start_commands`
    Start,
    /// `stop_commands`
    Stop,
}

impl ClusterConfig {
    /// The effective idle timeout in minutes (top level, then `options`, then 5).
    pub fn idle_timeout_minutes(&self) -> f64 {
        self.idle_timeout_minutes
            .or(self.options.idle_timeout_minutes)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_MINUTES)
    }

    /// The effective upscaling speed (top level, then `options`, then 1.0).
    pub fn upscaling_speed(&self) -> f64 {
        self.upscaling_speed
            .or(self.options.upscaling_speed)
            .unwrap_or(DEFAULT_UPSCALING_SPEED)
    }

    /// The effective global `max_workers`: as set, or the larger of the sum of
    /// `min_workers` and 32.
    pub fn max_workers(&self) -> u32 {
        self.max_workers
            .unwrap_or_else(|| self.sum_min_workers().max(DEFAULT_MAX_WORKERS))
    }

    /// Sum of `min_workers` of the worker node types.
    pub fn sum_min_workers(&self) -> u32 {
        self.available_node_types
            .iter()
            .filter(|(name, _)| **name != self.head_node_type)
            .map(|(_, t)| t.min_workers.unwrap_or(0))
            .fold(0u32, u32::saturating_add)
    }

    /// `min_workers` of a type (0 for the head type).
    pub fn min_workers_of(&self, node_type: &str) -> u32 {
        if node_type == self.head_node_type {
            return 0;
        }
        self.available_node_types
            .get(node_type)
            .and_then(|t| t.min_workers)
            .unwrap_or(0)
    }

    /// `max_workers` of a type: as set, else the global maximum (0 for the head type).
    pub fn max_workers_of(&self, node_type: &str) -> u32 {
        if node_type == self.head_node_type {
            return 0;
        }
        self.available_node_types
            .get(node_type)
            .and_then(|t| t.max_workers)
            .unwrap_or_else(|| self.max_workers())
    }

    /// The `docker` section of `node_type`: its own `docker` keys merged over the global
    /// section (a key it sets replaces the global one). An error names the node type's
    /// `docker` path when its keys do not fit the section.
    pub fn docker_for(&self, node_type: &str) -> crate::Result<DockerConfig> {
        let Some(own) = self
            .available_node_types
            .get(node_type)
            .and_then(|t| t.docker.as_ref())
            .filter(|d| !d.is_empty())
        else {
            return Ok(self.docker.clone());
        };
        let mut merged = match serde_json::to_value(&self.docker) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in own {
            merged.insert(k.clone(), v.clone());
        }
        serde_json::from_value(Value::Object(merged)).map_err(|e| {
            crate::Error::config(
                format!("available_node_types.{node_type}.docker"),
                format!("does not fit the docker section: {e}"),
            )
        })
    }

    /// True when nodes of `node_type` run their commands in a container.
    pub fn container_mode(&self, node_type: &str) -> bool {
        self.docker_for(node_type).is_ok_and(|d| d.enabled)
    }

    /// The commands of a phase for a node of `kind` and `node_type`, in order: the
    /// global list, then the head or worker list (a node type's own worker list
    /// replaces the global worker list), then for setup the bootstrap commands.
    pub fn commands(&self, phase: CommandPhase, kind: NodeKind, node_type: &str) -> Vec<String> {
        let t = self.available_node_types.get(node_type);
        let head = kind == NodeKind::Head;
        let (common, head_list, worker_list, type_list) = match phase {
            CommandPhase::Initialization => (
                &self.initialization_commands,
                &self.head_initialization_commands,
                &self.worker_initialization_commands,
                t.and_then(|t| t.worker_initialization_commands.as_ref()),
            ),
            CommandPhase::Setup => (
                &self.setup_commands,
                &self.head_setup_commands,
                &self.worker_setup_commands,
                t.and_then(|t| t.worker_setup_commands.as_ref()),
            ),
            CommandPhase::Start => (
                &self.start_commands,
                &self.head_start_commands,
                &self.worker_start_commands,
                t.and_then(|t| t.worker_start_commands.as_ref()),
            ),
            CommandPhase::Stop => (
                &self.stop_commands,
                &self.head_stop_commands,
                &self.worker_stop_commands,
                t.and_then(|t| t.worker_stop_commands.as_ref()),
            ),
        };
        let mut out = common.clone();
        if head {
            out.extend(head_list.iter().cloned());
        } else {
            out.extend(type_list.unwrap_or(worker_list).iter().cloned());
        }
        if phase == CommandPhase::Setup {
            let bootstrap = t
                .and_then(|t| t.bootstrap_commands.as_ref())
                .unwrap_or(&self.bootstrap_commands);
            out.extend(bootstrap.iter().cloned());
        }
        out
    }

    /// The runtime types of a node type: its own `runtime.types` if set, else the cluster's.
    pub fn runtime_types_of(&self, node_type: &str) -> &[String] {
        match self
            .available_node_types
            .get(node_type)
            .and_then(|t| t.runtime.as_ref())
        {
            Some(r) if !r.types.is_empty() => &r.types,
            _ => &self.runtime.types,
        }
    }
}
