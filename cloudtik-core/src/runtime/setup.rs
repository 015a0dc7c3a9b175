//! How a cluster's runtimes join a node's setup: their commands, environment, processes,
//! endpoints and scaling policy, in runtime order.
//!
//! A node's commands are, per phase (CloudTik's order):
//!
//! | phase | order |
//! |---|---|
//! | setup | the runtimes' install then setup commands, in start order; then the user's |
//! | start | the core services; the runtimes' start commands, in start order; the user's |
//! | stop | the user's; the runtimes' stop commands, in reverse start order |

use std::collections::BTreeMap;
use std::sync::Arc;

use super::node::{NODE_BINARY_ENV, NodeRuntimeConfig, RUNTIME_CONFIG_ENV};
use super::{ProcessSpec, RuntimeCommands, RuntimeRegistry};
use crate::config::ClusterConfig;
use crate::error::Result;
use crate::node::NodeKind;
use crate::scaler::policy::ScalingPolicy;

/// The runtimes of one node type, resolved against a registry.
#[derive(Debug, Clone)]
pub struct NodeRuntimes<'a> {
    registry: &'a RuntimeRegistry,
    config: NodeRuntimeConfig,
}

impl<'a> NodeRuntimes<'a> {
    /// The runtimes of `node_type` in `config` (its own `runtime.types`, else the
    /// cluster's), with their sections. Names the registry lacks are left out: the
    /// config loader refused them already.
    pub fn of(registry: &'a RuntimeRegistry, config: &ClusterConfig, node_type: &str) -> Self {
        let types: Vec<String> = config
            .runtime_types_of(node_type)
            .iter()
            .filter(|t| registry.get(t).is_some())
            .cloned()
            .collect();
        let sections = types
            .iter()
            .map(|t| {
                let section = config
                    .runtime
                    .sections
                    .get(t)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                (t.clone(), section)
            })
            .collect();
        NodeRuntimes {
            registry,
            config: NodeRuntimeConfig::new(config.cluster_name.clone(), types, sections),
        }
    }

    /// True when the node has no runtime.
    pub fn is_empty(&self) -> bool {
        self.config.types.is_empty()
    }

    /// The node's runtime settings, as the node receives them.
    pub fn config(&self) -> &NodeRuntimeConfig {
        &self.config
    }

    fn each(&self) -> impl Iterator<Item = (&Arc<dyn super::Runtime>, serde_json::Value)> + '_ {
        self.config
            .types
            .iter()
            .filter_map(|t| self.registry.get(t).map(|r| (r, self.config.section(t))))
    }

    /// The commands of a node of `kind`: install, setup and start in start order, stop
    /// in reverse.
    pub fn commands(&self, kind: NodeKind) -> RuntimeCommands {
        let mut out = RuntimeCommands::default();
        let mut stops = Vec::new();
        for (r, section) in self.each() {
            let c = r.commands(kind, &section);
            out.install.extend(c.install);
            out.setup.extend(c.setup);
            out.start.extend(c.start);
            stops.push(c.stop);
        }
        for s in stops.into_iter().rev() {
            out.stop.extend(s);
        }
        out
    }

    /// The environment of every command on a node of `kind`: each runtime's
    /// [`environment`](super::Runtime::environment) (later runtimes win), plus the
    /// runtime settings ([`RUNTIME_CONFIG_ENV`]) when there are runtimes.
    pub fn environment(&self, kind: NodeKind) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        if self.is_empty() {
            return Ok(env);
        }
        for (r, section) in self.each() {
            env.extend(r.environment(kind, &section));
        }
        let json = serde_json::to_string(&self.config).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Unexpected,
                "cannot serialize the runtime config",
            )
            .with_source(e)
        })?;
        env.insert(RUNTIME_CONFIG_ENV.to_string(), json);
        Ok(env)
    }

    /// The processes the agent of a node of `kind` checks.
    pub fn processes(&self, kind: NodeKind) -> Vec<ProcessSpec> {
        self.each()
            .flat_map(|(r, _)| r.processes())
            .filter(|p| p.scope.includes(kind))
            .collect()
    }

    /// Per runtime, its endpoints given the head's address.
    pub fn endpoints(&self, head_ip: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        self.each()
            .map(|(r, section)| (r.name().to_string(), r.endpoints(&section, head_ip)))
            .filter(|(_, e)| !e.is_empty())
            .collect()
    }

    /// Per runtime, the services it offers.
    pub fn services(&self) -> BTreeMap<String, Vec<super::ServiceSpec>> {
        self.each()
            .map(|(r, section)| (r.name().to_string(), r.services(&section)))
            .collect()
    }

    /// What the head's controller publishes in the state store as the cluster's runtime
    /// config ([`StateStore::set_runtime_config`](crate::state::StateStore::set_runtime_config),
    /// encrypted with the cluster's key): the runtimes in start order, their sections,
    /// their services and their endpoints given the head's address.
    pub fn published(&self, head_ip: &str) -> serde_json::Value {
        serde_json::json!({
            "types": self.config.types,
            "sections": self.config.sections,
            "services": self.services(),
            "endpoints": self.endpoints(head_ip),
        })
    }

    /// The scaling policy of the first runtime (in start order) that has one.
    pub fn scaling_policy(&self, head_ip: &str) -> Option<Arc<dyn ScalingPolicy>> {
        self.each()
            .find_map(|(r, section)| r.scaling_policy(&section, head_ip))
    }
}

/// Adds `runtimes`' commands and environment to the update plan of a node of `kind`
/// (see the [module docs](self)): `core_start` are the core services' start commands,
/// run before the runtimes'. Sets [`NODE_BINARY_ENV`] to `node_binary`.
pub fn apply_to_plan(
    plan: &mut crate::updater::UpdatePlan,
    runtimes: &NodeRuntimes<'_>,
    kind: NodeKind,
    core_start: Vec<String>,
    node_binary: &str,
) -> Result<()> {
    let commands = runtimes.commands(kind);
    let mut setup = commands.install;
    setup.extend(commands.setup);
    setup.append(&mut plan.setup_commands);
    plan.setup_commands = setup;
    let mut start = core_start;
    start.extend(commands.start);
    start.append(&mut plan.start_commands);
    plan.start_commands = start;
    for (k, v) in runtimes.environment(kind)? {
        plan.env.insert(k, v);
    }
    plan.env
        .insert(NODE_BINARY_ENV.to_string(), node_binary.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{NodePhase, Runtime, node_command};

    #[derive(Debug)]
    struct Rt(&'static str, Vec<&'static str>);

    impl Runtime for Rt {
        fn name(&self) -> &str {
            self.0
        }
        fn dependencies(&self) -> Vec<String> {
            self.1.iter().map(|s| s.to_string()).collect()
        }
        fn commands(&self, kind: NodeKind, _: &serde_json::Value) -> RuntimeCommands {
            RuntimeCommands {
                install: vec![node_command(NodePhase::Install, self.0, kind)],
                setup: vec![node_command(NodePhase::Configure, self.0, kind)],
                start: vec![node_command(NodePhase::Start, self.0, kind)],
                stop: vec![node_command(NodePhase::Stop, self.0, kind)],
            }
        }
        fn environment(&self, _: NodeKind, section: &serde_json::Value) -> BTreeMap<String, String> {
            BTreeMap::from([(
                format!("{}_HOME", self.0.to_uppercase()),
                section["home"].as_str().unwrap_or("-").to_string(),
            )])
        }
    }

    fn config(yaml: &str) -> ClusterConfig {
        let mut registry = RuntimeRegistry::new();
        registry.register(Arc::new(Rt("zk", vec![]))).unwrap();
        registry.register(Arc::new(Rt("kafka", vec!["zk"]))).unwrap();
        crate::config::ConfigLoader::new()
            .with_runtimes(Arc::new(registry))
            .load_cluster_str("test.yaml", yaml)
            .unwrap()
    }

    #[test]
    fn runtime_commands_go_between_the_core_and_the_users_in_runtime_order() {
        let mut registry = RuntimeRegistry::new();
        registry.register(Arc::new(Rt("zk", vec![]))).unwrap();
        registry.register(Arc::new(Rt("kafka", vec!["zk"]))).unwrap();
        let c = config(
            "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nhead_node_type: head\navailable_node_types:\n  head: {node_config: {}}\n  worker: {node_config: {}}\nsetup_commands: [user-setup]\n\
             start_commands: [user-start]\nruntime:\n  types: [kafka, zk]\n  kafka: {home: /k}\n",
        );
        let rts = NodeRuntimes::of(&registry, &c, &c.head_node_type);
        assert_eq!(rts.config().types, vec!["zk", "kafka"]);
        let mut plan =
            crate::updater::UpdatePlan::from_config(&c, NodeKind::Head, &c.head_node_type).unwrap();
        apply_to_plan(&mut plan, &rts, NodeKind::Head, vec!["core".into()], "/bin/node").unwrap();
        assert_eq!(
            plan.setup_commands,
            vec![
                node_command(NodePhase::Install, "zk", NodeKind::Head),
                node_command(NodePhase::Install, "kafka", NodeKind::Head),
                node_command(NodePhase::Configure, "zk", NodeKind::Head),
                node_command(NodePhase::Configure, "kafka", NodeKind::Head),
                "user-setup".to_string(),
            ]
        );
        assert_eq!(plan.start_commands[0], "core");
        assert_eq!(
            plan.start_commands[1],
            node_command(NodePhase::Start, "zk", NodeKind::Head)
        );
        assert_eq!(plan.start_commands.last().unwrap(), "user-start");
        assert_eq!(plan.env["KAFKA_HOME"], "/k");
        assert_eq!(plan.env[NODE_BINARY_ENV], "/bin/node");
        let sent: NodeRuntimeConfig = serde_json::from_str(&plan.env[RUNTIME_CONFIG_ENV]).unwrap();
        assert_eq!(sent.types, vec!["zk", "kafka"]);
        assert_eq!(sent.section("kafka")["home"], "/k");
        let published = rts.published("10.0.0.1");
        assert_eq!(published["types"], serde_json::json!(["zk", "kafka"]));
        assert_eq!(published["sections"]["kafka"]["home"], "/k");
        assert!(published["services"]["zk"].as_array().unwrap().is_empty());
        // Stop: reverse runtime order.
        assert_eq!(
            rts.commands(NodeKind::Worker).stop,
            vec![
                node_command(NodePhase::Stop, "kafka", NodeKind::Worker),
                node_command(NodePhase::Stop, "zk", NodeKind::Worker),
            ]
        );
    }

    #[test]
    fn a_node_without_runtimes_gets_no_runtime_settings() {
        let registry = RuntimeRegistry::new();
        let c = crate::config::ConfigLoader::new()
            .load_cluster_str("test.yaml", "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nhead_node_type: head\navailable_node_types:\n  head: {node_config: {}}\n  worker: {node_config: {}}\n")
            .unwrap();
        let rts = NodeRuntimes::of(&registry, &c, &c.head_node_type);
        assert!(rts.is_empty());
        assert!(rts.environment(NodeKind::Head).unwrap().is_empty());
        assert!(rts.scaling_policy("10.0.0.1").is_none());
    }
}
