//! The Ray runtime: a Ray head on the cluster's head, a Ray worker on every worker
//! node that joins it, and a scaling policy that adds workers for the tasks Ray is
//! waiting to place.
//!
//! **What runs where.** On the head, the service `ray-head` runs
//! `ray start --head --block`: Ray's GCS (`gcs_server`), the raylet, the dashboard, the
//! Ray client server and Ray's read-only monitor (which gathers the load the scaling
//! policy reads; it launches nothing). On each worker, `ray-worker` runs
//! `ray start --address <head>:<port> --block`: a raylet that joins the head. Both stay
//! in the foreground under the node's supervisor, which restarts them when they die;
//! SIGTERM (`cloudtik stop`, `cloudtik-node runtime stop ray`) makes Ray drain and stop
//! every Ray process of the node in a few seconds. Logs: `~/cloudtik/logs/ray-head.log` /
//! `ray-worker.log`, and Ray's own under `/tmp/ray/session_latest/logs`.
//!
//! **Ports** (config keys in brackets): GCS 6379 (`port`), dashboard 8265
//! (`dashboard_port`, on all interfaces: the controller reads it), Ray client 10001
//! (`client_port`), the raylet's node manager 8077 (`node_manager_port`, pinned so that
//! start can wait for it on workers), the dashboard agent 52365, and random ports for
//! the object manager and Ray's workers: the nodes must reach each other on all ports
//! (as on one Docker network or one VPC subnet).
//!
//! **CPUs.** Each node offers Ray its CPUs (`--num-cpus`: the node's CPUs, cgroup
//! limits respected, at least 1). The head keeps its CPUs, as in CloudTik and Ray's
//! own cluster launcher, so a one-node cluster runs tasks; set `head_cpus: 0` to keep
//! tasks off the head (then the head only schedules).
//!
//! **Install.** Debian's `python3` and `python3-venv`, then `ray[default]==<version>`
//! with pip into the node's venv `/opt/cloudtik/venv` ([`PythonEnv::node`]); both are
//! skipped when already there. Configure writes nothing: Ray is set up by its
//! command-line flags.
//!
//! **Commands** see the venv first on the `PATH`, so `python` and `ray` are the
//! venv's: on the head a job connects with `ray.init(address="auto")`, and `ray
//! status` shows the cluster.
//!
//! **Scaling** ([`RayScalingPolicy`]): the controller reads Ray's pending demands and
//! per-node usage from the dashboard every pass, adds workers for tasks that wait, and
//! never takes away a node that runs a task or holds an actor. `scaling: false` leaves
//! the cluster to CloudTik's load-based policy.
//!
//! Config (`runtime.ray`), with its defaults:
//!
//! ```yaml
//! runtime:
//!   types: [ray]
//!   ray:
//!     version: "2.60.0"            # pip ray[default]==<version>
//!     port: 6379                   # GCS
//!     dashboard_port: 8265
//!     client_port: 10001
//!     node_manager_port: 8077
//!     head_cpus: null              # null: the head's CPUs; 0: no tasks on the head
//!     object_store_memory_ratio: null   # null: Ray's default (30% of memory)
//!     scaling: true                # scale on Ray's demands
//! ```

pub mod policy;

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudtik_core::runtime::{
    NodeContext, NodeScope, NodeService, ProcessSpec, Protocol, RuntimeCommands, ServiceSpec, config_path,
};
use cloudtik_core::scaler::policy::ScalingPolicy;
use cloudtik_core::{Error, NodeKind, Result, Runtime};
use serde_json::{Value, json};

pub use policy::RayScalingPolicy;

use crate::packages::{self, PythonEnv};

/// The runtime's name.
pub const NAME: &str = "ray";

/// The Ray version installed by default.
pub const DEFAULT_VERSION: &str = "2.60.0";

/// Ray's GCS port by default.
pub const DEFAULT_PORT: u16 = 6379;

/// The dashboard's port by default.
pub const DEFAULT_DASHBOARD_PORT: u16 = 8265;

/// The Ray client server's port by default.
pub const DEFAULT_CLIENT_PORT: u16 = 10001;

/// The raylet's node manager port by default.
pub const DEFAULT_NODE_MANAGER_PORT: u16 = 8077;

/// The service name of the head's Ray processes.
pub const HEAD_SERVICE: &str = "ray-head";

/// The service name of a worker's Ray processes.
pub const WORKER_SERVICE: &str = "ray-worker";

/// The `PATH` of the node's commands and Ray's processes: the venv first.
pub const PATH: &str = "/opt/cloudtik/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Ray runtime (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ray;

/// The `runtime.ray` section, with defaults for the keys it does not set.
#[derive(Debug, Clone, PartialEq)]
pub struct RaySettings {
    /// The Ray version (`ray[default]==<version>`).
    pub version: String,
    /// The GCS port.
    pub port: u16,
    /// The dashboard's port.
    pub dashboard_port: u16,
    /// The Ray client server's port.
    pub client_port: u16,
    /// The raylet's node manager port.
    pub node_manager_port: u16,
    /// The CPUs the head offers Ray; `None`: the head's CPUs.
    pub head_cpus: Option<u32>,
    /// The share of a node's memory for Ray's object store; `None`: Ray's default.
    pub object_store_memory_ratio: Option<f64>,
    /// Scale on Ray's demands ([`RayScalingPolicy`]); else CloudTik's load-based policy.
    pub scaling: bool,
}

impl Default for RaySettings {
    fn default() -> Self {
        RaySettings {
            version: DEFAULT_VERSION.to_string(),
            port: DEFAULT_PORT,
            dashboard_port: DEFAULT_DASHBOARD_PORT,
            client_port: DEFAULT_CLIENT_PORT,
            node_manager_port: DEFAULT_NODE_MANAGER_PORT,
            head_cpus: None,
            object_store_memory_ratio: None,
            scaling: true,
        }
    }
}

const KEYS: &[&str] = &[
    "version",
    "port",
    "dashboard_port",
    "client_port",
    "node_manager_port",
    "head_cpus",
    "object_store_memory_ratio",
    "scaling",
];

impl RaySettings {
    /// The settings of a `runtime.ray` section (`Null`: no section, all defaults).
    /// Errors name the key: `runtime.ray.<key>`, for an unknown key or a value of the
    /// wrong type or range.
    pub fn from_section(section: &Value) -> Result<Self> {
        let mut s = RaySettings::default();
        let map = match section {
            Value::Null => return Ok(s),
            Value::Object(map) => map,
            _ => {
                return Err(Error::config(
                    format!("runtime.{NAME}"),
                    "expected a mapping of Ray settings",
                ));
            }
        };
        for (key, value) in map {
            let err = |what: &str| Error::config(config_path(NAME, key), format!("expected {what}"));
            let port = || {
                value
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err("a port number (1-65535)"))
            };
            match key.as_str() {
                "version" => {
                    s.version = match value {
                        Value::String(v) if valid_version(v) => v.clone(),
                        // A YAML `2.60` is a number: take its text.
                        Value::Number(n) => n.to_string(),
                        _ => return Err(err("a Ray version such as \"2.60.0\"")),
                    };
                }
                "port" => s.port = port()?,
                "dashboard_port" => s.dashboard_port = port()?,
                "client_port" => s.client_port = port()?,
                "node_manager_port" => s.node_manager_port = port()?,
                "head_cpus" => {
                    s.head_cpus = match value {
                        Value::Null => None,
                        v => Some(
                            v.as_u64()
                                .and_then(|n| u32::try_from(n).ok())
                                .ok_or_else(|| err("a whole number of CPUs (0 or more), or null"))?,
                        ),
                    };
                }
                "object_store_memory_ratio" => {
                    s.object_store_memory_ratio =
                        match value {
                            Value::Null => None,
                            v => Some(v.as_f64().filter(|r| *r > 0.0 && *r <= 0.8).ok_or_else(|| {
                                err("a share of the memory above 0 and at most 0.8, or null")
                            })?),
                        };
                }
                "scaling" => s.scaling = value.as_bool().ok_or_else(|| err("true or false"))?,
                _ => {
                    return Err(Error::config(
                        config_path(NAME, key),
                        format!("unknown Ray setting; expected one of: {}", KEYS.join(", ")),
                    ));
                }
            }
        }
        let ports = [
            ("port", s.port),
            ("dashboard_port", s.dashboard_port),
            ("client_port", s.client_port),
            ("node_manager_port", s.node_manager_port),
        ];
        for (i, (key, p)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
                return Err(Error::config(
                    config_path(NAME, key),
                    format!("expected a port other than {other}'s ({p})"),
                ));
            }
        }
        Ok(s)
    }

    /// The pip requirement that installs Ray.
    pub fn requirement(&self) -> String {
        format!("ray[default]=={}", self.version)
    }
}

/// A version is digits, letters, dots (no spaces or pip operators).
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        && v.starts_with(|c: char| c.is_ascii_digit())
}

/// The CPUs a node offers Ray: its CPUs rounded down, at least 1.
fn node_cpus(cpus: f64) -> u64 {
    if cpus.is_finite() && cpus >= 1.0 {
        cpus.floor() as u64
    } else {
        1
    }
}

impl Ray {
    /// The services of a node with context `node` and settings `s`.
    pub fn services_of(node: &NodeContext, s: &RaySettings) -> Vec<NodeService> {
        let ray = PythonEnv::node().bin("ray").to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec![ray, "start".into()];
        let mut arg = |k: &str, v: String| {
            argv.push(k.to_string());
            argv.push(v);
        };
        let name;
        let ready;
        if node.is_head() {
            name = HEAD_SERVICE;
            ready = s.dashboard_port;
            let cpus = s.head_cpus.map_or_else(|| node_cpus(node.cpus), u64::from);
            arg("--node-ip-address", node.node_ip.clone());
            arg("--port", s.port.to_string());
            arg("--dashboard-host", "0.0.0.0".into());
            arg("--dashboard-port", s.dashboard_port.to_string());
            arg("--ray-client-server-port", s.client_port.to_string());
            arg("--node-manager-port", s.node_manager_port.to_string());
            arg("--num-cpus", cpus.to_string());
        } else {
            name = WORKER_SERVICE;
            ready = s.node_manager_port;
            arg("--address", format!("{}:{}", node.head_ip, s.port));
            arg("--node-ip-address", node.node_ip.clone());
            arg("--node-manager-port", s.node_manager_port.to_string());
            arg("--num-cpus", node_cpus(node.cpus).to_string());
        }
        if let Some(ratio) = s.object_store_memory_ratio
            && node.memory > 0
        {
            // Ray refuses less than 75 MiB.
            let bytes = ((node.memory as f64 * ratio) as u64).max(80 << 20);
            arg("--object-store-memory", bytes.to_string());
        }
        if node.is_head() {
            argv.push("--head".into());
        }
        argv.push("--block".into());
        argv.push("--disable-usage-stats".into());
        vec![
            NodeService::new(name, argv)
                .with_env("PATH", PATH)
                .with_env("RAY_USAGE_STATS_ENABLED", "0")
                .with_ready_port(ready),
        ]
    }
}

#[async_trait::async_trait]
impl Runtime for Ray {
    fn name(&self) -> &str {
        NAME
    }

    /// The defaults of every key (see the [module docs](self)).
    fn config_defaults(&self) -> Value {
        let d = RaySettings::default();
        json!({
            "version": d.version,
            "port": d.port,
            "dashboard_port": d.dashboard_port,
            "client_port": d.client_port,
            "node_manager_port": d.node_manager_port,
            "head_cpus": null,
            "object_store_memory_ratio": null,
            "scaling": d.scaling,
        })
    }

    /// Refuses unknown keys, values of the wrong type and ports used twice.
    fn validate(&self, section: &Value) -> Result<()> {
        RaySettings::from_section(section).map(|_| ())
    }

    /// `cloudtik-node runtime install|configure|start|stop ray [--head]`.
    fn commands(&self, kind: NodeKind, _section: &Value) -> RuntimeCommands {
        RuntimeCommands::node_program(NAME, kind)
    }

    /// `ray-gcs` (TCP), `ray-dashboard` (HTTP) and `ray-client` (TCP), on the head.
    fn services(&self, section: &Value) -> Vec<ServiceSpec> {
        let s = RaySettings::from_section(section).unwrap_or_default();
        vec![
            ServiceSpec::new("ray-gcs", s.port),
            ServiceSpec::new("ray-dashboard", s.dashboard_port).with_protocol(Protocol::Http),
            ServiceSpec::new("ray-client", s.client_port),
        ]
    }

    /// `PATH` with the venv first (literal: no variable is expanded).
    fn environment(&self, _kind: NodeKind, _section: &Value) -> BTreeMap<String, String> {
        BTreeMap::from([("PATH".to_string(), PATH.to_string())])
    }

    /// `raylet` on every node, `gcs_server` on the head (their process names).
    fn processes(&self) -> Vec<ProcessSpec> {
        vec![
            ProcessSpec::named("raylet", NodeScope::All),
            ProcessSpec::named("gcs_server", NodeScope::Head),
        ]
    }

    /// `ray-dashboard: http://<head>:8265`, `ray-address: <head>:6379` (for `ray start
    /// --address` and `ray.init(address=...)` on the cluster's network), `ray-client:
    /// ray://<head>:10001`.
    fn endpoints(&self, section: &Value, head_ip: &str) -> BTreeMap<String, String> {
        let s = RaySettings::from_section(section).unwrap_or_default();
        BTreeMap::from([
            (
                "ray-dashboard".to_string(),
                format!("http://{head_ip}:{}", s.dashboard_port),
            ),
            ("ray-address".to_string(), format!("{head_ip}:{}", s.port)),
            (
                "ray-client".to_string(),
                format!("ray://{head_ip}:{}", s.client_port),
            ),
        ])
    }

    /// [`RayScalingPolicy`] on the head's dashboard, unless `scaling: false`.
    fn scaling_policy(&self, section: &Value, head_ip: &str) -> Option<Arc<dyn ScalingPolicy>> {
        let s = RaySettings::from_section(section).unwrap_or_default();
        s.scaling
            .then(|| Arc::new(RayScalingPolicy::new(head_ip, s.dashboard_port)) as Arc<dyn ScalingPolicy>)
    }

    /// `python3`, `python3-venv`, then `ray[default]==<version>` into the node's venv.
    async fn install(&self, node: &NodeContext) -> Result<()> {
        let s = RaySettings::from_section(&node.section)?;
        packages::apt_install(&["python3".to_string(), "python3-venv".to_string()]).await?;
        PythonEnv::node().pip_install(&[s.requirement()]).await
    }

    /// Nothing to write: Ray is set up by its command line. Checks the settings.
    async fn configure(&self, node: &NodeContext) -> Result<()> {
        RaySettings::from_section(&node.section).map(|_| ())
    }

    /// `ray-head` (ready when the dashboard listens) or `ray-worker` (ready when its
    /// raylet listens).
    fn node_services(&self, node: &NodeContext) -> Vec<NodeService> {
        let s = RaySettings::from_section(&node.section).unwrap_or_default();
        Ray::services_of(node, &s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: NodeKind, section: Value) -> NodeContext {
        NodeContext::new(
            kind,
            "t",
            "10.0.0.5",
            "10.0.0.1",
            "c",
            NAME,
            section,
            "/home/u/cloudtik",
        )
        .with_resources(2.7, 2 << 30)
    }

    #[test]
    fn defaults_validate_and_fill_every_key() {
        let defaults = Ray.config_defaults();
        Ray.validate(&defaults).unwrap();
        Ray.validate(&Value::Null).unwrap();
        assert_eq!(
            RaySettings::from_section(&defaults).unwrap(),
            RaySettings::default()
        );
        for key in KEYS {
            assert!(defaults.get(key).is_some(), "{key}");
        }
        assert_eq!(RaySettings::default().requirement(), "ray[default]==2.60.0");
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (section, key) in [
            (json!({"versoin": "2.60.0"}), "versoin"),
            (json!({"version": "2.60; rm -rf"}), "version"),
            (json!({"version": ["2"]}), "version"),
            (json!({"port": "6379"}), "port"),
            (json!({"dashboard_port": 70000}), "dashboard_port"),
            (json!({"client_port": 0}), "client_port"),
            (json!({"client_port": 6379}), "client_port"),
            (json!({"head_cpus": -1}), "head_cpus"),
            (json!({"head_cpus": 1.5}), "head_cpus"),
            (
                json!({"object_store_memory_ratio": 2}),
                "object_store_memory_ratio",
            ),
            (json!({"scaling": "yes"}), "scaling"),
        ] {
            let err = Ray.validate(&section).unwrap_err();
            assert_eq!(err.kind(), cloudtik_core::ErrorKind::InvalidConfig, "{section}");
            let path = format!("runtime.ray.{key}");
            assert_eq!(
                err.location().map(|l| l.path.as_str()),
                Some(path.as_str()),
                "{section}: {err:#}"
            );
            assert!(err.to_string().contains("expected"), "{err:#}");
        }
        assert!(Ray.validate(&json!([1])).is_err());
        let s =
            RaySettings::from_section(&json!({"version": 2.6, "head_cpus": 0, "scaling": false})).unwrap();
        assert_eq!(
            (s.version.as_str(), s.head_cpus, s.scaling),
            ("2.6", Some(0), false)
        );
    }

    #[test]
    fn commands_call_the_node_program() {
        let c = Ray.commands(NodeKind::Head, &Value::Null);
        assert_eq!(
            c.install,
            ["\"$CLOUDTIK_NODE_BINARY\" runtime install ray --head"]
        );
        assert_eq!(
            c.setup,
            ["\"$CLOUDTIK_NODE_BINARY\" runtime configure ray --head"]
        );
        assert_eq!(c.start, ["\"$CLOUDTIK_NODE_BINARY\" runtime start ray --head"]);
        assert_eq!(c.stop, ["\"$CLOUDTIK_NODE_BINARY\" runtime stop ray --head"]);
        let w = Ray.commands(NodeKind::Worker, &Value::Null);
        assert_eq!(w.start, ["\"$CLOUDTIK_NODE_BINARY\" runtime start ray"]);
    }

    #[test]
    fn the_head_runs_ray_start_head_in_the_foreground() {
        let services = Ray.node_services(&ctx(NodeKind::Head, Ray.config_defaults()));
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert_eq!(s.name, "ray-head");
        assert_eq!(s.ready_port, Some(8265));
        assert_eq!(
            s.argv.join(" "),
            "/opt/cloudtik/venv/bin/ray start --node-ip-address 10.0.0.5 --port 6379 \
             --dashboard-host 0.0.0.0 --dashboard-port 8265 --ray-client-server-port 10001 \
             --node-manager-port 8077 --num-cpus 2 --head --block --disable-usage-stats"
        );
        assert_eq!(s.env["PATH"], PATH);
        assert_eq!(s.env["RAY_USAGE_STATS_ENABLED"], "0");
        let no_tasks = Ray.node_services(&ctx(NodeKind::Head, json!({"head_cpus": 0})));
        assert!(no_tasks[0].argv.join(" ").contains("--num-cpus 0 "));
    }

    #[test]
    fn a_worker_joins_the_head() {
        let section = json!({"port": 7000, "object_store_memory_ratio": 0.25});
        let s = &Ray.node_services(&ctx(NodeKind::Worker, section))[0];
        assert_eq!(s.name, "ray-worker");
        assert_eq!(s.ready_port, Some(8077));
        assert_eq!(
            s.argv.join(" "),
            format!(
                "/opt/cloudtik/venv/bin/ray start --address 10.0.0.1:7000 --node-ip-address 10.0.0.5 \
                 --node-manager-port 8077 --num-cpus 2 --object-store-memory {} --block \
                 --disable-usage-stats",
                (2u64 << 30) / 4
            )
        );
        // Less than a CPU still offers one.
        let small = NodeContext::new(NodeKind::Worker, "t", "a", "b", "c", NAME, Value::Null, "/x")
            .with_resources(0.5, 0);
        assert!(
            Ray.node_services(&small)[0]
                .argv
                .join(" ")
                .contains("--num-cpus 1 ")
        );
    }

    #[test]
    fn services_endpoints_processes_and_environment() {
        let services = Ray.services(&Value::Null);
        let names: Vec<(&str, u16)> = services.iter().map(|s| (s.name.as_str(), s.port)).collect();
        assert_eq!(
            names,
            [("ray-gcs", 6379), ("ray-dashboard", 8265), ("ray-client", 10001)]
        );
        assert!(services.iter().all(|s| s.scope == NodeScope::Head));
        let e = Ray.endpoints(&Value::Null, "10.0.0.1");
        assert_eq!(e["ray-dashboard"], "http://10.0.0.1:8265");
        assert_eq!(e["ray-address"], "10.0.0.1:6379");
        assert_eq!(e["ray-client"], "ray://10.0.0.1:10001");
        let p = Ray.processes();
        assert_eq!(p[0], ProcessSpec::named("raylet", NodeScope::All));
        assert_eq!(p[1], ProcessSpec::named("gcs_server", NodeScope::Head));
        let env = Ray.environment(NodeKind::Worker, &Value::Null);
        assert!(env["PATH"].starts_with("/opt/cloudtik/venv/bin:"));
        assert!(!env["PATH"].contains('$'));
    }

    #[test]
    fn the_scaling_policy_reads_the_heads_dashboard() {
        let p = Ray
            .scaling_policy(&json!({"dashboard_port": 9000}), "10.0.0.1")
            .unwrap();
        assert_eq!(p.name(), "ray");
        assert!(format!("{p:?}").contains("10.0.0.1") && format!("{p:?}").contains("9000"));
        assert!(
            Ray.scaling_policy(&json!({"scaling": false}), "10.0.0.1")
                .is_none()
        );
    }
}
