//! Runtimes as data, for a head whose node program lacks them.
//!
//! The head's controller sets workers up with the runtimes *its* registry knows: the
//! built-in ones of `cloudtik-node`. A runtime an embedder registered in their own
//! program would reach the head (set up by that program) but not the workers. So
//! `start` sends the head a [`RuntimeSnapshot`] of every runtime of the cluster (its
//! commands, environment, processes and services for each node kind, as computed from
//! the cluster's config), and the head registers the snapshots of the runtimes it does
//! not have ([`register_missing`]). A snapshot does not run on-node logic of its own:
//! what reaches workers is what the runtime's commands do.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ProcessSpec, Runtime, RuntimeCommands, RuntimeRegistry, ServiceSpec};
use crate::config::ClusterConfig;
use crate::node::NodeKind;

/// A runtime as computed for one cluster config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RuntimeSnapshot {
    /// The runtime's name.
    pub name: String,
    /// Its dependencies (ordering).
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Its required runtimes.
    #[serde(default)]
    pub required: Vec<String>,
    /// Its commands on the head.
    pub head_commands: RuntimeCommands,
    /// Its commands on workers.
    pub worker_commands: RuntimeCommands,
    /// Its environment on the head.
    #[serde(default)]
    pub head_env: BTreeMap<String, String>,
    /// Its environment on workers.
    #[serde(default)]
    pub worker_env: BTreeMap<String, String>,
    /// Its processes.
    #[serde(default)]
    pub processes: Vec<ProcessSpec>,
    /// Its services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

impl RuntimeSnapshot {
    /// The snapshot of `runtime` with its config section `section`.
    pub fn of(runtime: &dyn Runtime, section: &serde_json::Value) -> Self {
        RuntimeSnapshot {
            name: runtime.name().to_string(),
            dependencies: runtime.dependencies(),
            required: runtime.required(),
            head_commands: runtime.commands(NodeKind::Head, section),
            worker_commands: runtime.commands(NodeKind::Worker, section),
            head_env: runtime.environment(NodeKind::Head, section),
            worker_env: runtime.environment(NodeKind::Worker, section),
            processes: runtime.processes(),
            services: runtime.services(section),
        }
    }
}

impl Runtime for RuntimeSnapshot {
    fn name(&self) -> &str {
        &self.name
    }
    fn dependencies(&self) -> Vec<String> {
        self.dependencies.clone()
    }
    fn required(&self) -> Vec<String> {
        self.required.clone()
    }
    fn commands(&self, kind: NodeKind, _section: &serde_json::Value) -> RuntimeCommands {
        match kind {
            NodeKind::Head => self.head_commands.clone(),
            _ => self.worker_commands.clone(),
        }
    }
    fn services(&self, _section: &serde_json::Value) -> Vec<ServiceSpec> {
        self.services.clone()
    }
    fn environment(&self, kind: NodeKind, _section: &serde_json::Value) -> BTreeMap<String, String> {
        match kind {
            NodeKind::Head => self.head_env.clone(),
            _ => self.worker_env.clone(),
        }
    }
    fn processes(&self) -> Vec<ProcessSpec> {
        self.processes.clone()
    }
}

/// Snapshots of every runtime `config` names (the cluster's and its node types'), in
/// `registry`.
pub fn snapshots(registry: &RuntimeRegistry, config: &ClusterConfig) -> Vec<RuntimeSnapshot> {
    let mut names: Vec<&String> = config.runtime.types.iter().collect();
    for t in config.available_node_types.values() {
        if let Some(r) = &t.runtime {
            names.extend(r.types.iter());
        }
    }
    let mut out: Vec<RuntimeSnapshot> = Vec::new();
    for name in names {
        if out.iter().any(|s| &s.name == name) {
            continue;
        }
        if let Some(r) = registry.get(name) {
            let section = config
                .runtime
                .sections
                .get(name)
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            out.push(RuntimeSnapshot::of(r.as_ref(), &section));
        }
    }
    out
}

/// Registers each snapshot whose name `registry` does not have; returns their names.
pub fn register_missing(registry: &mut RuntimeRegistry, snapshots: Vec<RuntimeSnapshot>) -> Vec<String> {
    let mut added = Vec::new();
    for s in snapshots {
        if registry.get(&s.name).is_none() {
            let name = s.name.clone();
            if registry.register(Arc::new(s)).is_ok() {
                added.push(name);
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Hello;

    impl Runtime for Hello {
        fn name(&self) -> &str {
            "hello"
        }
        fn commands(&self, kind: NodeKind, section: &serde_json::Value) -> RuntimeCommands {
            RuntimeCommands {
                setup: vec![format!(
                    "echo {} {kind}",
                    section["greeting"].as_str().unwrap_or("hi")
                )],
                ..Default::default()
            }
        }
        fn services(&self, _: &serde_json::Value) -> Vec<ServiceSpec> {
            vec![ServiceSpec::new("hello", 8099)]
        }
    }

    #[test]
    fn a_snapshot_acts_as_its_runtime_did_and_fills_only_gaps() {
        let section = serde_json::json!({"greeting": "hey"});
        let snap = RuntimeSnapshot::of(&Hello, &section);
        let back: RuntimeSnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        assert_eq!(
            back.commands(NodeKind::Worker, &serde_json::Value::Null).setup,
            vec!["echo hey worker".to_string()]
        );
        assert_eq!(back.services(&serde_json::Value::Null)[0].port, 8099);

        let mut registry = RuntimeRegistry::new();
        registry.register(Arc::new(Hello)).unwrap();
        let other = RuntimeSnapshot {
            name: "other".into(),
            ..snap.clone()
        };
        let added = register_missing(&mut registry, vec![snap, other]);
        assert_eq!(added, vec!["other".to_string()]);
        // The registry's own runtime stays.
        assert!(format!("{:?}", registry.get("hello").unwrap()).starts_with("Hello"));
    }
}
