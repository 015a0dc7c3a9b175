//! Runtimes (Spark, HDFS, Redis, ...): what a runtime declares, and the registry that
//! looks them up by name and orders them.
//!
//! A cluster lists its runtimes as `runtime.types: [hdfs, spark]`; each has an optional
//! config section `runtime.<name>`. [`RuntimeRegistry::order`] turns the list into the
//! order in which runtimes are installed, configured and started (stopped in reverse):
//!
//! * **Required runtimes** ([`Runtime::required`]) are added when missing, transitively,
//!   each just before the first runtime that needs it. A cycle of requirements is an error.
//! * **Dependencies** ([`Runtime::dependencies`]) are soft: a dependency that is in the
//!   list goes before its dependent; one that is not is ignored. Two names are special:
//!   [`DEPENDS_ON_ALL`] puts a runtime after every other one, [`DEPENDS_ON_NONE`] before
//!   every other one (a system runtime such as a service registry). A cycle is an error.
//! * Otherwise the user's order is kept: the result is the topological order that is
//!   smallest when runtimes are compared by their position in the expanded list.

pub mod node;
pub mod setup;
pub mod snapshot;

pub use node::{NodeContext, NodePhase, NodeRuntimeConfig, NodeService, node_command};
pub use setup::{NodeRuntimes, apply_to_plan};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt::{self, Debug};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeKind;
use crate::scaler::policy::ScalingPolicy;

/// The dependency name that puts a runtime after all others.
pub const DEPENDS_ON_ALL: &str = "all";

/// The dependency name that puts a runtime before all others (a system runtime).
pub const DEPENDS_ON_NONE: &str = "none";

/// The YAML path of key `key` in the config section of runtime `runtime`:
/// `runtime.<runtime>.<key>`, for [`Error::config`] in [`Runtime::validate`].
pub fn config_path(runtime: &str, key: &str) -> String {
    format!("runtime.{runtime}.{key}")
}

/// Which nodes of a cluster something applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeScope {
    /// The head only.
    Head,
    /// Workers only.
    Workers,
    /// Every node.
    All,
}

impl NodeScope {
    /// True when a node of `kind` is in scope. Unmanaged nodes are in no scope.
    pub fn includes(self, kind: NodeKind) -> bool {
        match (self, kind) {
            (_, NodeKind::Unmanaged) => false,
            (NodeScope::All, _) => true,
            (NodeScope::Head, NodeKind::Head) => true,
            (NodeScope::Workers, NodeKind::Worker) => true,
            _ => false,
        }
    }
}

/// The protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// Plain TCP.
    Tcp,
    /// UDP.
    Udp,
    /// HTTP over TCP.
    Http,
    /// HTTPS over TCP.
    Https,
}

/// A service a runtime offers, published for discovery by other runtimes and clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceSpec {
    /// The service's name, unique within the runtime (e.g. `hdfs-namenode`).
    pub name: String,
    /// The port it listens on.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// The nodes it runs on.
    pub scope: NodeScope,
}

impl ServiceSpec {
    /// A TCP service on the head.
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        ServiceSpec {
            name: name.into(),
            port,
            protocol: Protocol::Tcp,
            scope: NodeScope::Head,
        }
    }

    /// Sets the protocol.
    #[must_use]
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the nodes the service runs on.
    #[must_use]
    pub fn with_scope(mut self, scope: NodeScope) -> Self {
        self.scope = scope;
        self
    }
}

/// A process the node agent checks is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessSpec {
    /// The name shown in health reports (e.g. `NameNode`).
    pub name: String,
    /// The text to look for: in the process name, or in the whole command line when
    /// `match_command_line` is set.
    pub pattern: String,
    /// Match `pattern` against the command line rather than the process name.
    pub match_command_line: bool,
    /// The nodes the process runs on.
    pub scope: NodeScope,
}

impl ProcessSpec {
    /// A process found by its name (`comm`, as `ps` shows it).
    pub fn named(name: impl Into<String>, scope: NodeScope) -> Self {
        let name = name.into();
        ProcessSpec {
            pattern: name.clone(),
            name,
            match_command_line: false,
            scope,
        }
    }

    /// A process shown as `name`, found by `pattern` in its command line (e.g. a Java
    /// daemon's main class).
    pub fn command_line(name: impl Into<String>, pattern: impl Into<String>, scope: NodeScope) -> Self {
        ProcessSpec {
            name: name.into(),
            pattern: pattern.into(),
            match_command_line: true,
            scope,
        }
    }
}

/// The shell commands a runtime runs on a node, per phase, in order: start from
/// [`RuntimeCommands::default`] and set the phases, or
/// [`RuntimeCommands::node_program`] for a runtime whose logic is Rust code run by the
/// node program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RuntimeCommands {
    /// Install software (once per node, before setup).
    pub install: Vec<String>,
    /// Configure the installed software (after install, whenever the runtime config changes).
    pub setup: Vec<String>,
    /// Start the services.
    pub start: Vec<String>,
    /// Stop the services (run in reverse runtime order when a cluster stops).
    pub stop: Vec<String>,
}

impl RuntimeCommands {
    /// The commands of a runtime whose logic runs in the node program
    /// ([`Runtime::install`], [`Runtime::configure`], [`Runtime::node_services`]): one
    /// [`node_command`] per phase for runtime `name` on a node of `kind`.
    pub fn node_program(name: &str, kind: NodeKind) -> Self {
        RuntimeCommands {
            install: vec![node_command(NodePhase::Install, name, kind)],
            setup: vec![node_command(NodePhase::Configure, name, kind)],
            start: vec![node_command(NodePhase::Start, name, kind)],
            stop: vec![node_command(NodePhase::Stop, name, kind)],
        }
    }

    /// True when there is no command in any phase.
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.setup.is_empty() && self.start.is_empty() && self.stop.is_empty()
    }
}

/// A runtime: software CloudTik installs, configures and runs on a cluster's nodes.
///
/// Only [`name`](Runtime::name) is required; every other method has a default that
/// declares nothing. The `section` arguments are the runtime's config section
/// (`runtime.<name>`) after its [`config_defaults`](Runtime::config_defaults) were
/// merged in and [`validate`](Runtime::validate) accepted it; `Value::Null` when the
/// cluster has no section.
#[async_trait]
pub trait Runtime: Debug + Send + Sync + 'static {
    /// The name used in `runtime.types` and as the config section key. Must not be
    /// [`DEPENDS_ON_ALL`] or [`DEPENDS_ON_NONE`].
    fn name(&self) -> &str;

    /// Runtimes this one should start after when they are in the same cluster (soft
    /// ordering; absent ones are ignored), or the special [`DEPENDS_ON_ALL`] /
    /// [`DEPENDS_ON_NONE`]. Default: none.
    fn dependencies(&self) -> Vec<String> {
        Vec::new()
    }

    /// Runtimes this one cannot work without; they are added to the cluster when
    /// missing. Requiring a runtime does not order it: list it in
    /// [`dependencies`](Runtime::dependencies) too if it must start first. Default: none.
    fn required(&self) -> Vec<String> {
        Vec::new()
    }

    /// Defaults of the config section, merged under `runtime.<name>` before
    /// validation (values the user set win). Default: an empty mapping.
    fn config_defaults(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }

    /// Checks the config section. Errors are [`Error::config`] errors naming the YAML
    /// path, built with [`config_path`]: `runtime.<name>.<key>`. Default: accepts all.
    fn validate(&self, section: &serde_json::Value) -> Result<()> {
        let _ = section;
        Ok(())
    }

    /// The commands to run on a node of `kind`. Default: none.
    fn commands(&self, kind: NodeKind, section: &serde_json::Value) -> RuntimeCommands {
        let _ = (kind, section);
        RuntimeCommands::default()
    }

    /// The services the runtime offers, for discovery. Default: none.
    fn services(&self, section: &serde_json::Value) -> Vec<ServiceSpec> {
        let _ = section;
        Vec::new()
    }

    /// Environment variables the runtime adds to every command on a node of `kind`.
    /// Default: none.
    fn environment(&self, kind: NodeKind, section: &serde_json::Value) -> BTreeMap<String, String> {
        let _ = (kind, section);
        BTreeMap::new()
    }

    /// Processes the node agent checks for health. Default: none.
    fn processes(&self) -> Vec<ProcessSpec> {
        Vec::new()
    }

    /// What `cloudtik info` shows of the runtime: endpoint name to address (web UIs,
    /// master URLs), given the head's address. Default: each head service, as
    /// `http://<head>:<port>` for HTTP and `<head>:<port>` otherwise.
    fn endpoints(&self, section: &serde_json::Value, head_ip: &str) -> BTreeMap<String, String> {
        self.services(section)
            .into_iter()
            .filter(|s| s.scope != NodeScope::Workers)
            .map(|s| {
                let address = match s.protocol {
                    Protocol::Http => format!("http://{head_ip}:{}", s.port),
                    Protocol::Https => format!("https://{head_ip}:{}", s.port),
                    _ => format!("{head_ip}:{}", s.port),
                };
                (s.name, address)
            })
            .collect()
    }

    /// The runtime's scaling policy, run by the controller on the head (whose internal
    /// address is `head_ip`). Default: none (the cluster gets the load-based one).
    fn scaling_policy(
        &self,
        section: &serde_json::Value,
        head_ip: &str,
    ) -> Option<std::sync::Arc<dyn ScalingPolicy>> {
        let _ = (section, head_ip);
        None
    }

    /// On the node (`cloudtik-node runtime install <name>`): installs the software.
    /// Must be idempotent: a second run on a set-up node installs nothing. Default:
    /// nothing.
    async fn install(&self, node: &NodeContext) -> Result<()> {
        let _ = node;
        Ok(())
    }

    /// On the node (`cloudtik-node runtime configure <name>`): writes the config files.
    /// Default: nothing.
    async fn configure(&self, node: &NodeContext) -> Result<()> {
        let _ = node;
        Ok(())
    }

    /// On the node (`cloudtik-node runtime start|stop <name>`): the long-running
    /// processes the node's supervisor runs and restarts. Default: none.
    fn node_services(&self, node: &NodeContext) -> Vec<NodeService> {
        let _ = node;
        Vec::new()
    }
}

/// What to say of a runtime name that `registry` does not have: that this build lacks
/// it, and which runtimes it has.
pub fn unknown_runtime_message(registry: &RuntimeRegistry, name: &str) -> String {
    let known: Vec<&str> = registry.names().collect();
    if known.is_empty() {
        format!(
            "runtime `{name}` is not available in this build, which has no runtimes: \
             remove it from the list, or register a runtime of that name"
        )
    } else {
        format!(
            "runtime `{name}` is not available in this build; available runtimes: {}",
            known.join(", ")
        )
    }
}

/// Runtimes by name.
#[derive(Clone, Default)]
pub struct RuntimeRegistry {
    runtimes: BTreeMap<String, Arc<dyn Runtime>>,
}

impl Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeRegistry")
            .field("runtimes", &self.runtimes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RuntimeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `runtime` under its name, replacing (and returning) one registered
    /// under the same name. Fails with [`ErrorKind::Unexpected`] for an empty name or
    /// one of the special dependency names.
    pub fn register(&mut self, runtime: Arc<dyn Runtime>) -> Result<Option<Arc<dyn Runtime>>> {
        let name = runtime.name().to_string();
        if name.is_empty() || name == DEPENDS_ON_ALL || name == DEPENDS_ON_NONE {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("cannot register a runtime named {name:?}: the name is empty or reserved"),
            )
            .with_operation("register_runtime"));
        }
        Ok(self.runtimes.insert(name, runtime))
    }

    /// The runtime registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Runtime>> {
        self.runtimes.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.runtimes.keys().map(String::as_str)
    }

    /// How many runtimes are registered.
    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    /// True when no runtime is registered.
    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    /// The runtimes of `types` (the cluster's `runtime.types`) with required runtimes
    /// added, in start order; see the [module docs](self). Names listed twice count
    /// once.
    ///
    /// Errors, all [`ErrorKind::InvalidConfig`]: an unknown name (path
    /// `runtime.types[i]`), a required runtime that is not registered (path of the
    /// listed runtime that needs it), a cycle of requirements or dependencies (path
    /// `runtime.types`, naming the cycle as `a -> b -> a`), a runtime that depends on
    /// both `all` and `none`.
    pub fn order(&self, types: &[String]) -> Result<Vec<String>> {
        let listed = self.listed(types)?;
        let expanded = self.expand_required(&listed)?;
        self.sort_by_dependencies(&expanded)
    }

    /// The listed names, each once, in the user's order, with their index in `types`.
    fn listed<'a>(&self, types: &'a [String]) -> Result<Vec<(usize, &'a str)>> {
        let mut listed: Vec<(usize, &str)> = Vec::new();
        for (i, name) in types.iter().enumerate() {
            if !self.runtimes.contains_key(name) {
                return Err(Error::config(
                    format!("runtime.types[{i}]"),
                    unknown_runtime_message(self, name),
                ));
            }
            if !listed.iter().any(|(_, n)| n == name) {
                listed.push((i, name));
            }
        }
        Ok(listed)
    }

    /// Checks that every required runtime is registered and that requirements have no
    /// cycle, walking depth first from each listed runtime in order.
    fn check_required(&self, listed: &[(usize, &str)]) -> Result<()> {
        let mut visited: BTreeSet<String> = BTreeSet::new();
        for (i, name) in listed {
            self.walk_required(name, *i, &mut Vec::new(), &mut visited)?;
        }
        Ok(())
    }

    fn walk_required(
        &self,
        name: &str,
        listed_at: usize,
        path: &mut Vec<String>,
        visited: &mut BTreeSet<String>,
    ) -> Result<()> {
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut cycle: Vec<&str> = path[start..].iter().map(String::as_str).collect();
            cycle.push(name);
            return Err(Error::config(
                "runtime.types",
                format!("required runtimes form a cycle: {}", cycle.join(" -> ")),
            ));
        }
        if visited.contains(name) {
            return Ok(());
        }
        let Some(runtime) = self.runtimes.get(name) else {
            let requirer = path.last().map_or("", String::as_str);
            return Err(Error::config(
                format!("runtime.types[{listed_at}]"),
                format!("runtime {requirer:?} requires runtime {name:?}, which is not registered"),
            ));
        };
        path.push(name.to_string());
        for required in runtime.required() {
            self.walk_required(&required, listed_at, path, visited)?;
        }
        path.pop();
        visited.insert(name.to_string());
        Ok(())
    }

    /// The listed runtimes in order, each preceded by the required runtimes it brings
    /// in that are not listed (depth first, requirements before their requirer).
    /// Listed runtimes keep their own place: requiring is not ordering.
    fn expand_required(&self, listed: &[(usize, &str)]) -> Result<Vec<String>> {
        self.check_required(listed)?;
        let listed_names: BTreeSet<&str> = listed.iter().map(|(_, n)| *n).collect();
        let mut out: Vec<String> = Vec::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        for (_, name) in listed {
            self.add_with_required(name, &listed_names, &mut done, &mut out);
        }
        Ok(out)
    }

    /// Adds `name` after its unlisted requirements; `check_required` ruled out cycles
    /// and unknown names.
    fn add_with_required(
        &self,
        name: &str,
        listed: &BTreeSet<&str>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !done.insert(name.to_string()) {
            return;
        }
        if let Some(runtime) = self.runtimes.get(name) {
            for required in runtime.required() {
                if !listed.contains(required.as_str()) {
                    self.add_with_required(&required, listed, done, out);
                }
            }
        }
        out.push(name.to_string());
    }

    /// Stable topological sort of `runtimes` (all registered) by their dependencies.
    fn sort_by_dependencies(&self, runtimes: &[String]) -> Result<Vec<String>> {
        let n = runtimes.len();
        let position: HashMap<&str, usize> = runtimes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.as_str(), i))
            .collect();
        let mut first = vec![false; n];
        let mut last = vec![false; n];
        // after[i]: the runtimes that must come before runtime i.
        let mut after: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        for (i, name) in runtimes.iter().enumerate() {
            for dep in self.runtimes[name].dependencies() {
                match dep.as_str() {
                    DEPENDS_ON_ALL => last[i] = true,
                    DEPENDS_ON_NONE => first[i] = true,
                    other => {
                        if let Some(&j) = position.get(other)
                            && j != i
                        {
                            after[i].insert(j);
                        }
                    }
                }
            }
            if first[i] && last[i] {
                return Err(Error::config(
                    "runtime.types",
                    format!("runtime {name:?} depends on both {DEPENDS_ON_ALL:?} and {DEPENDS_ON_NONE:?}"),
                ));
            }
        }
        for i in 0..n {
            for j in 0..n {
                if (first[j] && !first[i]) || (last[i] && !last[j]) {
                    after[i].insert(j);
                }
            }
        }

        let mut before_count: Vec<usize> = after.iter().map(BTreeSet::len).collect();
        let mut unlocks: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, preds) in after.iter().enumerate() {
            for &j in preds {
                unlocks[j].push(i);
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| before_count[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(runtimes[i].clone());
            for &k in &unlocks[i] {
                before_count[k] -= 1;
                if before_count[k] == 0 {
                    ready.push(Reverse(k));
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }

        // Every runtime left waits for another one left: walk "comes after" links from
        // the first one left until a runtime repeats.
        let start = (0..n).find(|&i| before_count[i] > 0).unwrap_or(0);
        let mut walk = vec![start];
        let mut current = start;
        loop {
            let next = after[current]
                .iter()
                .copied()
                .find(|&j| before_count[j] > 0)
                .unwrap_or(start);
            if let Some(at) = walk.iter().position(|&w| w == next) {
                let mut cycle: Vec<&str> = walk[at..].iter().map(|&w| runtimes[w].as_str()).collect();
                cycle.push(runtimes[next].as_str());
                return Err(Error::config(
                    "runtime.types",
                    format!(
                        "runtime dependencies form a cycle: {} (each runtime must start after the next; \
                         {DEPENDS_ON_NONE:?} puts a runtime before all others, {DEPENDS_ON_ALL:?} after all others)",
                        cycle.join(" -> ")
                    ),
                ));
            }
            walk.push(next);
            current = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct TestRuntime {
        name: &'static str,
        dependencies: Vec<&'static str>,
        required: Vec<&'static str>,
    }

    impl Runtime for TestRuntime {
        fn name(&self) -> &str {
            self.name
        }
        fn dependencies(&self) -> Vec<String> {
            self.dependencies.iter().map(|s| s.to_string()).collect()
        }
        fn required(&self) -> Vec<String> {
            self.required.iter().map(|s| s.to_string()).collect()
        }
    }

    fn registry(runtimes: &[(&'static str, &[&'static str], &[&'static str])]) -> RuntimeRegistry {
        let mut registry = RuntimeRegistry::new();
        for (name, dependencies, required) in runtimes {
            registry
                .register(Arc::new(TestRuntime {
                    name,
                    dependencies: dependencies.to_vec(),
                    required: required.to_vec(),
                }))
                .unwrap();
        }
        registry
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn order(registry: &RuntimeRegistry, list: &[&str]) -> Vec<String> {
        registry.order(&names(list)).unwrap()
    }

    #[test]
    fn keeps_the_users_order_without_dependencies() {
        let r = registry(&[("a", &[], &[]), ("b", &[], &[]), ("c", &[], &[])]);
        assert_eq!(order(&r, &["c", "a", "b"]), names(&["c", "a", "b"]));
        assert_eq!(order(&r, &["b", "c", "b", "a"]), names(&["b", "c", "a"]));
        assert_eq!(order(&r, &[]), Vec::<String>::new());
    }

    #[test]
    fn listed_dependencies_go_first_and_absent_ones_are_ignored() {
        let r = registry(&[
            ("hdfs", &[], &[]),
            ("metastore", &["mysql"], &[]),
            ("mysql", &[], &[]),
            ("spark", &["hdfs", "metastore"], &[]),
            ("x", &[], &[]),
            ("y", &[], &[]),
        ]);
        assert_eq!(order(&r, &["spark", "hdfs"]), names(&["hdfs", "spark"]));
        assert_eq!(order(&r, &["spark"]), names(&["spark"]));
        // Smallest positions first whenever the dependencies allow.
        assert_eq!(
            order(&r, &["x", "spark", "y", "hdfs"]),
            names(&["x", "y", "hdfs", "spark"])
        );
        assert_eq!(
            order(&r, &["spark", "metastore", "mysql", "hdfs"]),
            names(&["mysql", "metastore", "hdfs", "spark"])
        );
    }

    #[test]
    fn required_runtimes_are_added_transitively_before_their_requirer() {
        let r = registry(&[
            ("spark", &[], &["yarn", "hadoop"]),
            ("yarn", &[], &["hadoop"]),
            ("hadoop", &[], &[]),
            ("ai", &[], &["mount"]),
            ("mount", &[], &[]),
        ]);
        assert_eq!(order(&r, &["spark"]), names(&["hadoop", "yarn", "spark"]));
        assert_eq!(
            order(&r, &["ai", "spark"]),
            names(&["mount", "ai", "hadoop", "yarn", "spark"])
        );
        // A diamond adds the shared requirement once, before both requirers.
        let diamond = registry(&[("x", &[], &["y", "z"]), ("y", &[], &["z"]), ("z", &[], &[])]);
        assert_eq!(order(&diamond, &["x"]), names(&["z", "y", "x"]));
        // A required runtime the user lists keeps the user's place: requiring is not ordering.
        assert_eq!(
            order(&r, &["spark", "hadoop"]),
            names(&["yarn", "spark", "hadoop"])
        );
    }

    #[test]
    fn required_and_dependency_together_orders_the_requirement_first() {
        let r = registry(&[("spark", &["hadoop"], &["hadoop"]), ("hadoop", &[], &[])]);
        assert_eq!(order(&r, &["spark", "hadoop"]), names(&["hadoop", "spark"]));
        assert_eq!(order(&r, &["spark"]), names(&["hadoop", "spark"]));
    }

    #[test]
    fn none_goes_first_and_all_goes_last() {
        let r = registry(&[
            ("consul", &["none"], &[]),
            ("dns", &["none", "consul"], &[]),
            ("prometheus", &["all"], &[]),
            ("grafana", &["all", "prometheus"], &[]),
            ("spark", &[], &[]),
            ("hdfs", &[], &[]),
        ]);
        assert_eq!(
            order(&r, &["grafana", "prometheus", "spark", "dns", "hdfs", "consul"]),
            names(&["consul", "dns", "spark", "hdfs", "prometheus", "grafana"])
        );
    }

    #[test]
    fn dependency_cycles_are_named() {
        let r = registry(&[("a", &["b"], &[]), ("b", &["a"], &[]), ("c", &[], &[])]);
        let err = r.order(&names(&["c", "a", "b"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert_eq!(err.location().unwrap().path, "runtime.types");
        assert!(err.message().contains("a -> b -> a"), "{err:#}");

        let r = registry(&[("a", &["b"], &[]), ("b", &["c"], &[]), ("c", &["a"], &[])]);
        let err = r.order(&names(&["a", "b", "c"])).unwrap_err();
        assert!(err.message().contains("a -> b -> c -> a"), "{err:#}");

        // A system runtime that depends on an ordinary one cannot go first.
        let r = registry(&[("sys", &["none", "b"], &[]), ("b", &[], &[])]);
        let err = r.order(&names(&["b", "sys"])).unwrap_err();
        assert!(err.message().contains("b -> sys -> b"), "{err:#}");

        let r = registry(&[("both", &["none", "all"], &[])]);
        let err = r.order(&names(&["both"])).unwrap_err();
        assert!(err.message().contains("both \"all\" and \"none\""), "{err:#}");
    }

    #[test]
    fn requirement_cycles_are_named() {
        let r = registry(&[("a", &[], &["b"]), ("b", &[], &["a"])]);
        let err = r.order(&names(&["a"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.message().contains("a -> b -> a"), "{err:#}");
        // Also when both are listed, and when the cycle closes through a listed runtime.
        let err = r.order(&names(&["b", "a"])).unwrap_err();
        assert!(err.message().contains("b -> a -> b"), "{err:#}");
        let r = registry(&[("a", &[], &["b"]), ("b", &[], &["c"]), ("c", &[], &["a"])]);
        let err = r.order(&names(&["a", "c"])).unwrap_err();
        assert!(err.message().contains("a -> b -> c -> a"), "{err:#}");
    }

    #[test]
    fn unknown_names_are_reported_at_their_index() {
        let r = registry(&[("spark", &[], &["yarn"]), ("hdfs", &[], &[])]);
        let err = r.order(&names(&["hdfs", "nope"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert_eq!(err.location().unwrap().path, "runtime.types[1]");
        assert!(
            err.message().contains("runtime `nope` is not available"),
            "{err:#}"
        );
        assert!(err.message().contains("hdfs, spark"), "{err:#}");

        let err = r.order(&names(&["hdfs", "spark"])).unwrap_err();
        assert_eq!(err.location().unwrap().path, "runtime.types[1]");
        assert!(err.message().contains("requires runtime \"yarn\""), "{err:#}");
    }

    #[test]
    fn reserved_names_cannot_be_registered() {
        let mut r = RuntimeRegistry::new();
        for name in ["all", "none", ""] {
            let err = r
                .register(Arc::new(TestRuntime {
                    name,
                    ..Default::default()
                }))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unexpected);
        }
        assert!(r.is_empty());
        let first: Arc<dyn Runtime> = Arc::new(TestRuntime {
            name: "a",
            ..Default::default()
        });
        assert!(r.register(first.clone()).unwrap().is_none());
        let replaced = r
            .register(Arc::new(TestRuntime {
                name: "a",
                dependencies: vec!["b"],
                ..Default::default()
            }))
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&replaced, &first));
        assert_eq!(r.len(), 1);
        assert_eq!(r.get("a").unwrap().dependencies(), names(&["b"]));
        assert_eq!(r.names().collect::<Vec<_>>(), vec!["a"]);
    }

    /// A runtime with config, commands, services and processes, as runtimes write them.
    #[derive(Debug)]
    struct Redis;

    impl Runtime for Redis {
        fn name(&self) -> &str {
            "redis"
        }
        fn config_defaults(&self) -> serde_json::Value {
            serde_json::json!({"port": 6379})
        }
        fn validate(&self, section: &serde_json::Value) -> Result<()> {
            match section.get("port").and_then(serde_json::Value::as_u64) {
                Some(p) if (1..=65535).contains(&p) => Ok(()),
                _ => Err(Error::config(
                    config_path(self.name(), "port"),
                    "expected a port number 1-65535",
                )),
            }
        }
        fn commands(&self, kind: NodeKind, _section: &serde_json::Value) -> RuntimeCommands {
            RuntimeCommands {
                start: vec![format!("redis-server --role {kind}")],
                ..Default::default()
            }
        }
        fn services(&self, section: &serde_json::Value) -> Vec<ServiceSpec> {
            let port = section["port"].as_u64().unwrap_or(6379) as u16;
            vec![ServiceSpec::new("redis", port).with_scope(NodeScope::All)]
        }
    }

    #[test]
    fn runtimes_declare_little_and_validation_names_the_yaml_path() {
        let redis = Redis;
        assert!(redis.validate(&redis.config_defaults()).is_ok());
        let err = redis.validate(&serde_json::json!({"port": 70000})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert_eq!(err.location().unwrap().path, "runtime.redis.port");
        assert_eq!(
            redis.commands(NodeKind::Worker, &serde_json::Value::Null).start,
            vec!["redis-server --role worker".to_string()]
        );
        let services = redis.services(&serde_json::json!({"port": 7000}));
        assert_eq!(services[0].port, 7000);
        assert_eq!(services[0].protocol, Protocol::Tcp);
        // Defaults declare nothing.
        assert!(redis.dependencies().is_empty() && redis.required().is_empty());
        assert!(redis.processes().is_empty());
        assert!(
            redis
                .environment(NodeKind::Head, &serde_json::Value::Null)
                .is_empty()
        );
        assert!(RuntimeCommands::default().is_empty());
        let minimal = TestRuntime {
            name: "m",
            ..Default::default()
        };
        assert_eq!(minimal.config_defaults(), serde_json::json!({}));
        assert!(
            minimal
                .commands(NodeKind::Head, &serde_json::Value::Null)
                .is_empty()
        );
        assert!(minimal.services(&serde_json::Value::Null).is_empty());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Per runtime `r<i>` its dependencies and required runtimes; then the indexes
        /// listed in `runtime.types`.
        type RegistrySpec = (Vec<(Vec<String>, Vec<String>)>, Vec<usize>);

        /// Runtime `i` may depend on and require only runtimes with a smaller index, so
        /// the graph has no cycle; `all`/`none` are sprinkled in.
        fn acyclic_registry() -> impl Strategy<Value = RegistrySpec> {
            (2usize..9).prop_flat_map(|n| {
                let runtimes = (0..n)
                    .map(|i| {
                        let deps = proptest::collection::vec(0..i.max(1), 0..3).prop_map(move |d| {
                            d.into_iter()
                                .filter(|&j| j < i)
                                .map(|j| format!("r{j}"))
                                .collect()
                        });
                        let special =
                            prop_oneof![4 => Just(None), 1 => Just(Some("all")), 1 => Just(Some("none"))];
                        let req = proptest::collection::vec(0..i.max(1), 0..2).prop_map(move |r| {
                            r.into_iter()
                                .filter(|&j| j < i)
                                .map(|j| format!("r{j}"))
                                .collect()
                        });
                        (deps, special, req).prop_map(
                            |(mut deps, special, req): (Vec<String>, _, Vec<String>)| {
                                if let Some(s) = special {
                                    deps.push(s.to_string());
                                }
                                (deps, req)
                            },
                        )
                    })
                    .collect::<Vec<_>>();
                (runtimes, proptest::collection::vec(0..n, 0..n + 2))
            })
        }

        #[derive(Debug)]
        struct OwnedRuntime {
            name: String,
            dependencies: Vec<String>,
            required: Vec<String>,
        }

        impl Runtime for OwnedRuntime {
            fn name(&self) -> &str {
                &self.name
            }
            fn dependencies(&self) -> Vec<String> {
                self.dependencies.clone()
            }
            fn required(&self) -> Vec<String> {
                self.required.clone()
            }
        }

        proptest! {
            #[test]
            fn order_is_a_dependency_respecting_closure((runtimes, list) in acyclic_registry()) {
                let mut registry = RuntimeRegistry::new();
                for (i, (dependencies, required)) in runtimes.into_iter().enumerate() {
                    registry
                        .register(Arc::new(OwnedRuntime { name: format!("r{i}"), dependencies, required }))
                        .unwrap();
                }
                let types: Vec<String> = list.iter().map(|i| format!("r{i}")).collect();
                let result = registry.order(&types);
                // `none` runtimes that depend on ordinary ones (or the reverse for `all`)
                // can form a cycle; then the error must name one.
                let ordered = match result {
                    Ok(ordered) => ordered,
                    Err(err) => {
                        prop_assert!(err.message().contains(" -> ") || err.message().contains("both"), "{}", err);
                        return Ok(());
                    }
                };
                let position: HashMap<&str, usize> = ordered.iter().enumerate().map(|(i, r)| (r.as_str(), i)).collect();
                prop_assert_eq!(position.len(), ordered.len(), "duplicates in {:?}", ordered);
                for t in &types {
                    prop_assert!(position.contains_key(t.as_str()), "{} missing from {:?}", t, ordered);
                }
                for name in &ordered {
                    let runtime = registry.get(name).unwrap();
                    for req in runtime.required() {
                        prop_assert!(position.contains_key(req.as_str()), "{} requires {} but {:?}", name, req, ordered);
                    }
                    for dep in runtime.dependencies() {
                        if let Some(&d) = position.get(dep.as_str()) {
                            prop_assert!(d < position[name.as_str()], "{} must follow {} in {:?}", name, dep, ordered);
                        }
                        if dep == "all" {
                            for other in &ordered {
                                if !registry.get(other).unwrap().dependencies().contains(&"all".to_string()) {
                                    prop_assert!(position[other.as_str()] < position[name.as_str()]);
                                }
                            }
                        }
                        if dep == "none" {
                            for other in &ordered {
                                if !registry.get(other).unwrap().dependencies().contains(&"none".to_string()) {
                                    prop_assert!(position[other.as_str()] > position[name.as_str()]);
                                }
                            }
                        }
                    }
                }
            }

            #[test]
            fn without_dependencies_the_order_is_the_users(list in proptest::collection::vec(0usize..6, 0..8)) {
                let r = registry(&[("r0", &[], &[]), ("r1", &[], &[]), ("r2", &[], &[]), ("r3", &[], &[]), ("r4", &[], &[]), ("r5", &[], &[])]);
                let types: Vec<String> = list.iter().map(|i| format!("r{i}")).collect();
                let mut expected: Vec<String> = Vec::new();
                for t in &types {
                    if !expected.contains(t) {
                        expected.push(t.clone());
                    }
                }
                prop_assert_eq!(r.order(&types).unwrap(), expected);
            }
        }
    }

    #[test]
    fn node_scopes() {
        assert!(NodeScope::All.includes(NodeKind::Head) && NodeScope::All.includes(NodeKind::Worker));
        assert!(NodeScope::Head.includes(NodeKind::Head) && !NodeScope::Head.includes(NodeKind::Worker));
        assert!(
            NodeScope::Workers.includes(NodeKind::Worker) && !NodeScope::Workers.includes(NodeKind::Head)
        );
        assert!(!NodeScope::All.includes(NodeKind::Unmanaged));
    }
}
