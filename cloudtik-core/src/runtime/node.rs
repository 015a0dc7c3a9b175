//! What a runtime does on a node: the context its on-node logic runs with, the services
//! it asks the node to supervise, and the commands that call that logic.
//!
//! As in CloudTik (`cloudtik runtime install|configure|services <name> [--head]`), a
//! built-in runtime's commands call the node program, which runs the runtime's Rust
//! code on the node:
//!
//! ```text
//! "$CLOUDTIK_NODE_BINARY" runtime install spark --head     # setup, once per config
//! "$CLOUDTIK_NODE_BINARY" runtime configure spark --head   # setup
//! "$CLOUDTIK_NODE_BINARY" runtime start spark --head       # start
//! "$CLOUDTIK_NODE_BINARY" runtime stop spark --head        # stop (reverse order)
//! ```
//!
//! The node program learns the cluster's runtime settings from
//! [`RUNTIME_CONFIG_ENV`] (a [`NodeRuntimeConfig`] as JSON), which the updater sets on
//! every command of a node with runtimes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeKind;

/// The environment variable holding the node's [`NodeRuntimeConfig`] as JSON.
pub const RUNTIME_CONFIG_ENV: &str = "CLOUDTIK_RUNTIME_CONFIG";

/// The environment variable holding the path of `cloudtik-node` on the node.
pub const NODE_BINARY_ENV: &str = "CLOUDTIK_NODE_BINARY";

/// A phase of a runtime's on-node logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodePhase {
    /// Install the software (idempotent: a second run installs nothing).
    Install,
    /// Write the config files.
    Configure,
    /// Start the services under the node's supervisor.
    Start,
    /// Stop the services.
    Stop,
}

impl NodePhase {
    /// The phase's name on the command line (`install`, `configure`, `start`, `stop`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Install => "install",
            NodePhase::Configure => "configure",
            NodePhase::Start => "start",
            NodePhase::Stop => "stop",
        }
    }
}

/// The command that runs `phase` of runtime `name` on a node of `kind` through the node
/// program: `"$CLOUDTIK_NODE_BINARY" runtime <phase> <name> [--head]`.
pub fn node_command(phase: NodePhase, name: &str, kind: NodeKind) -> String {
    let head = if kind == NodeKind::Head { " --head" } else { "" };
    format!(
        "\"${NODE_BINARY_ENV}\" runtime {} {}{head}",
        phase.as_str(),
        crate::command::shell_quote(name)
    )
}

/// The runtime settings a node receives in [`RUNTIME_CONFIG_ENV`]: the runtimes of its
/// node type in start order and each one's config section (defaults merged, validated).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRuntimeConfig {
    /// The cluster's name.
    pub cluster_name: String,
    /// The node's runtimes, in start order.
    pub types: Vec<String>,
    /// Each runtime's section (`runtime.<name>`).
    #[serde(default)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

impl NodeRuntimeConfig {
    /// The settings of `types` with `sections`.
    pub fn new(
        cluster_name: impl Into<String>,
        types: Vec<String>,
        sections: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        NodeRuntimeConfig {
            cluster_name: cluster_name.into(),
            types,
            sections,
        }
    }

    /// Reads [`RUNTIME_CONFIG_ENV`] from this process's environment.
    pub fn from_env() -> Result<Self> {
        let text = std::env::var(RUNTIME_CONFIG_ENV).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{RUNTIME_CONFIG_ENV} is not set: runtime commands run in a node's setup, \
                     which sets it (run them through `cloudtik start`, or set it by hand)"
                ),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{RUNTIME_CONFIG_ENV} is not a runtime config: {e:#}"),
            )
        })
    }

    /// The section of runtime `name` (`Null` when it has none).
    pub fn section(&self, name: &str) -> serde_json::Value {
        self.sections
            .get(name)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Where and as what a runtime's on-node logic runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeContext {
    /// Head or worker.
    pub kind: NodeKind,
    /// The node type.
    pub node_type: String,
    /// The node's internal address.
    pub node_ip: String,
    /// The head's internal address.
    pub head_ip: String,
    /// The cluster's name.
    pub cluster_name: String,
    /// The runtime's config section (defaults merged, validated).
    pub section: serde_json::Value,
    /// The runtime's own folder on the node (`~/cloudtik/runtime/<name>`): its software,
    /// config files and data go here.
    pub runtime_dir: PathBuf,
    /// The folder of the node's logs (`~/cloudtik/logs`).
    pub log_dir: PathBuf,
    /// CPUs the node may use (cgroup limits respected).
    pub cpus: f64,
    /// Memory the node may use, bytes.
    pub memory: u64,
}

impl NodeContext {
    /// A context; `runtime_dir` and `log_dir` are set from `cloudtik_dir`
    /// (`~/cloudtik`) and the runtime's name.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: NodeKind,
        node_type: impl Into<String>,
        node_ip: impl Into<String>,
        head_ip: impl Into<String>,
        cluster_name: impl Into<String>,
        runtime: &str,
        section: serde_json::Value,
        cloudtik_dir: impl Into<PathBuf>,
    ) -> Self {
        let dir: PathBuf = cloudtik_dir.into();
        NodeContext {
            kind,
            node_type: node_type.into(),
            node_ip: node_ip.into(),
            head_ip: head_ip.into(),
            cluster_name: cluster_name.into(),
            section,
            runtime_dir: dir.join("runtime").join(runtime),
            log_dir: dir.join("logs"),
            cpus: 1.0,
            memory: 0,
        }
    }

    /// Sets the node's CPUs and memory (bytes).
    #[must_use]
    pub fn with_resources(mut self, cpus: f64, memory: u64) -> Self {
        self.cpus = cpus;
        self.memory = memory;
        self
    }

    /// True on the head.
    pub fn is_head(&self) -> bool {
        self.kind == NodeKind::Head
    }
}

/// A long-running process of a runtime, run and restarted by the node's supervisor
/// (`cloudtik-node supervise`), so a process that dies comes back by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeService {
    /// The service's name, unique on the node (e.g. `spark-master`).
    pub name: String,
    /// The program and its arguments; it must stay in the foreground.
    pub argv: Vec<String>,
    /// Environment variables of the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A TCP port the service listens on once ready: start waits for it.
    #[serde(default)]
    pub ready_port: Option<u16>,
}

impl NodeService {
    /// A service running `argv`.
    pub fn new<S: Into<String>>(name: impl Into<String>, argv: impl IntoIterator<Item = S>) -> Self {
        NodeService {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            ready_port: None,
        }
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the port to wait for.
    #[must_use]
    pub fn with_ready_port(mut self, port: u16) -> Self {
        self.ready_port = Some(port);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_commands_call_the_node_program() {
        assert_eq!(
            node_command(NodePhase::Install, "spark", NodeKind::Head),
            "\"$CLOUDTIK_NODE_BINARY\" runtime install spark --head"
        );
        assert_eq!(
            node_command(NodePhase::Stop, "ray", NodeKind::Worker),
            "\"$CLOUDTIK_NODE_BINARY\" runtime stop ray"
        );
    }

    #[test]
    fn runtime_config_round_trips() {
        let c = NodeRuntimeConfig::new(
            "c1",
            vec!["spark".into()],
            BTreeMap::from([("spark".to_string(), serde_json::json!({"version": "3.5.1"}))]),
        );
        let back: NodeRuntimeConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.section("spark")["version"], "3.5.1");
        assert!(back.section("ray").is_null());
    }
}
