//! The Spark runtime: **Spark standalone** (not YARN).
//!
//! CloudTik runs Spark on YARN with HDFS. No Hadoop distribution is installable from the
//! registries this crate uses (apt and pip), so this runtime runs Spark's own cluster
//! manager instead: a standalone master on the head and a standalone worker on every
//! worker node. Applications are submitted on the head (`cloudtik submit`, client
//! mode) with `spark.master` preset.
//!
//! | node | service (under the node's supervisor) | port (config key, default) |
//! |---|---|---|
//! | head | `spark-master` (`org.apache.spark.deploy.master.Master`) | `master_port` 7077 (RPC), `master_ui_port` 8080 (web UI, JSON API `/json/`) |
//! | head | `spark-history` (`org.apache.spark.deploy.history.HistoryServer`), when `history_server` | `history_ui_port` 18080 |
//! | worker | `spark-worker` (`org.apache.spark.deploy.worker.Worker`) | `worker_ui_port` 8081 |
//!
//! Drivers on the head serve their UI and REST API on 4040 (4041... for more).
//!
//! **Install** (`cloudtik-node runtime install spark`, idempotent): the Debian packages
//! `java_package` (default `openjdk-17-jre-headless`), `python3` and `python3-venv`; the
//! pip package `pyspark==<version>` (default 3.5.9, which bundles Spark's jars and
//! scripts) into the node's venv `/opt/cloudtik/venv`; a link
//! `/opt/cloudtik/spark` (`SPARK_HOME`) to the installed `pyspark` package folder.
//!
//! **Configure**: `/opt/cloudtik/spark-conf/spark-defaults.conf` (`spark.master
//! spark://<head>:<master_port>`, event logs in `~/cloudtik/runtime/spark/events` for
//! the history server, `spark.executor.memory` = `executor_memory`, the venv's Python)
//! and `spark-env.sh`, from the templates in `templates/spark/`.
//!
//! **Environment** of every command on the nodes: `SPARK_HOME`, `SPARK_CONF_DIR`,
//! `PYSPARK_PYTHON` and a `PATH` with the venv first, so `spark-submit`, `pyspark` and
//! `python` (with pyspark importable) are found.
//!
//! A worker offers `floor(CPUs)` cores (at least 1) and `worker_memory_ratio` (default
//! 0.75) of its node's memory to executors. The scaling policy ([`policy`]) asks for
//! executors that running applications' backlogs want and keeps workers running
//! executors in use.

pub mod config;
pub mod policy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudtik_core::runtime::{
    NodeContext, NodeScope, NodeService, ProcessSpec, Protocol, RuntimeCommands, ServiceSpec,
};
use cloudtik_core::scaler::policy::ScalingPolicy;
use cloudtik_core::{Error, ErrorKind, NodeKind, Result, Runtime};

pub use config::SparkConfig;
pub use policy::SparkScalingPolicy;

use crate::packages::{PythonEnv, apt_install};
use crate::template::render;

/// `SPARK_HOME` on every node: a link to the venv's `pyspark` package folder.
pub const SPARK_HOME: &str = "/opt/cloudtik/spark";

/// `SPARK_CONF_DIR` on every node.
pub const SPARK_CONF_DIR: &str = "/opt/cloudtik/spark-conf";

/// The `PATH` of the nodes' commands and of Spark's processes: the venv first.
pub const NODE_PATH: &str =
    "/opt/cloudtik/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Python of the node's venv (pyspark importable), used by drivers and executors.
pub const PYTHON: &str = "/opt/cloudtik/venv/bin/python";

/// The heap of each Spark daemon (master, worker, history server): `SPARK_DAEMON_MEMORY`.
pub const DAEMON_MEMORY: &str = "512m";

/// The smallest memory a worker offers, MiB.
const MIN_WORKER_MEMORY_MIB: u64 = 256;

const SPARK_DEFAULTS_TEMPLATE: &str = include_str!("../../templates/spark/spark-defaults.conf");
const SPARK_ENV_TEMPLATE: &str = include_str!("../../templates/spark/spark-env.sh");

/// The Spark runtime (standalone master, workers and history server; see the
/// [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spark;

/// Where applications write their event logs on a node (`<runtime_dir>/events`), read
/// by the history server on the head.
pub fn event_log_dir(node: &NodeContext) -> PathBuf {
    node.runtime_dir.join("events")
}

/// The memory a worker on `node` offers to executors, MiB: `ratio` of the node's
/// memory, at least 256; `None` when the node's memory is unknown (Spark then offers
/// all but 1 GiB).
pub fn worker_memory_mib(node: &NodeContext, ratio: f64) -> Option<u64> {
    if node.memory == 0 {
        return None;
    }
    let mib = (node.memory as f64 * ratio / (1024.0 * 1024.0)).floor() as u64;
    Some(mib.max(MIN_WORKER_MEMORY_MIB))
}

/// The cores a worker on `node` offers: its CPUs rounded down, at least 1.
pub fn worker_cores(node: &NodeContext) -> u64 {
    (node.cpus.floor() as u64).max(1)
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new(ErrorKind::Unexpected, format!("{what}: {e:#}"))
}

/// Runs `program args` and returns its trimmed standard output, or an error with its
/// standard error.
async fn output(program: &Path, args: &[&str], what: &str) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(io_error(format!("{what}: cannot run {}", program.display())))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Points `link` at `target`, replacing an older link (atomically, through a rename).
fn link(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = link.with_extension("cloudtik-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_error(format!(
        "cannot link {} to {}",
        tmp.display(),
        target.display()
    )))?;
    std::fs::rename(&tmp, link).map_err(io_error(format!("cannot replace {}", link.display())))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_error(format!("cannot write {}", path.display())))
}

impl Spark {
    /// The text of `spark-defaults.conf` on `node`.
    pub fn spark_defaults(node: &NodeContext) -> Result<String> {
        let c = SparkConfig::of(&node.section);
        let values = BTreeMap::from([
            ("head_ip", node.head_ip.clone()),
            ("master_port", c.master_port.to_string()),
            (
                "event_log_dir",
                event_log_dir(node).to_string_lossy().into_owned(),
            ),
            ("history_ui_port", c.history_ui_port.to_string()),
            ("executor_memory", c.executor_memory.clone()),
            ("python", PYTHON.to_string()),
        ]);
        render(SPARK_DEFAULTS_TEMPLATE, &values)
    }

    /// The text of `spark-env.sh`.
    pub fn spark_env() -> Result<String> {
        let values = BTreeMap::from([
            ("spark_home", SPARK_HOME.to_string()),
            ("python", PYTHON.to_string()),
            ("daemon_memory", DAEMON_MEMORY.to_string()),
        ]);
        render(SPARK_ENV_TEMPLATE, &values)
    }

    fn service(name: &str, argv: Vec<String>, node: &NodeContext, port: u16) -> NodeService {
        NodeService::new(name, argv)
            .with_env("SPARK_HOME", SPARK_HOME)
            .with_env("SPARK_CONF_DIR", SPARK_CONF_DIR)
            .with_env("SPARK_LOCAL_IP", node.node_ip.clone())
            .with_env("SPARK_DAEMON_MEMORY", DAEMON_MEMORY)
            .with_env("PYSPARK_PYTHON", PYTHON)
            .with_env("PATH", NODE_PATH)
            .with_ready_port(port)
    }
}

fn spark_class(main: &str) -> Vec<String> {
    vec![format!("{SPARK_HOME}/bin/spark-class"), main.to_string()]
}

#[async_trait::async_trait]
impl Runtime for Spark {
    fn name(&self) -> &str {
        config::NAME
    }

    /// See [`config::defaults`].
    fn config_defaults(&self) -> serde_json::Value {
        config::defaults()
    }

    /// See [`SparkConfig::from_section`].
    fn validate(&self, section: &serde_json::Value) -> Result<()> {
        SparkConfig::from_section(section).map(|_| ())
    }

    fn commands(&self, kind: NodeKind, _section: &serde_json::Value) -> RuntimeCommands {
        RuntimeCommands::node_program(config::NAME, kind)
    }

    fn services(&self, section: &serde_json::Value) -> Vec<ServiceSpec> {
        let c = SparkConfig::of(section);
        let mut out = vec![
            ServiceSpec::new("spark-master", c.master_port),
            ServiceSpec::new("spark-master-ui", c.master_ui_port).with_protocol(Protocol::Http),
        ];
        if c.history_server {
            out.push(ServiceSpec::new("spark-history", c.history_ui_port).with_protocol(Protocol::Http));
        }
        out.push(
            ServiceSpec::new("spark-worker-ui", c.worker_ui_port)
                .with_protocol(Protocol::Http)
                .with_scope(NodeScope::Workers),
        );
        out
    }

    fn environment(&self, _kind: NodeKind, _section: &serde_json::Value) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("SPARK_HOME".to_string(), SPARK_HOME.to_string()),
            ("SPARK_CONF_DIR".to_string(), SPARK_CONF_DIR.to_string()),
            ("PYSPARK_PYTHON".to_string(), PYTHON.to_string()),
            ("PATH".to_string(), NODE_PATH.to_string()),
        ])
    }

    /// The master and the worker. The history server is not listed: this list does not
    /// see the config, and a disabled history server would show as a dead process (the
    /// node's supervisor restarts it all the same).
    fn processes(&self) -> Vec<ProcessSpec> {
        vec![
            ProcessSpec::command_line(
                "spark-master",
                "org.apache.spark.deploy.master.Master",
                NodeScope::Head,
            ),
            ProcessSpec::command_line(
                "spark-worker",
                "org.apache.spark.deploy.worker.Worker",
                NodeScope::Workers,
            ),
        ]
    }

    /// `spark-master: spark://<head>:7077`, `spark-master-ui: http://<head>:8080` and,
    /// when enabled, `spark-history: http://<head>:18080`.
    fn endpoints(&self, section: &serde_json::Value, head_ip: &str) -> BTreeMap<String, String> {
        let c = SparkConfig::of(section);
        let mut out = BTreeMap::from([
            (
                "spark-master".to_string(),
                format!("spark://{head_ip}:{}", c.master_port),
            ),
            (
                "spark-master-ui".to_string(),
                format!("http://{head_ip}:{}", c.master_ui_port),
            ),
        ]);
        if c.history_server {
            out.insert(
                "spark-history".to_string(),
                format!("http://{head_ip}:{}", c.history_ui_port),
            );
        }
        out
    }

    /// A [`SparkScalingPolicy`] reading the master at `head_ip`.
    fn scaling_policy(&self, section: &serde_json::Value, head_ip: &str) -> Option<Arc<dyn ScalingPolicy>> {
        let c = SparkConfig::of(section);
        Some(Arc::new(SparkScalingPolicy::new(head_ip, c.master_ui_port)))
    }

    async fn install(&self, node: &NodeContext) -> Result<()> {
        let c = SparkConfig::of(&node.section);
        apt_install(&[
            c.java_package.clone(),
            "python3".to_string(),
            "python3-venv".to_string(),
        ])
        .await?;
        let venv = PythonEnv::node();
        venv.pip_install(&[format!("pyspark=={}", c.version)]).await?;
        let package = output(
            &venv.bin("python"),
            &[
                "-c",
                "import os, pyspark; print(os.path.dirname(pyspark.__file__))",
            ],
            "finding the pyspark package",
        )
        .await?;
        let package = PathBuf::from(package);
        if !package.join("bin").join("spark-class").exists() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("pyspark at {} has no bin/spark-class", package.display()),
            ));
        }
        link(&package, Path::new(SPARK_HOME))?;
        Ok(())
    }

    async fn configure(&self, node: &NodeContext) -> Result<()> {
        let conf = Path::new(SPARK_CONF_DIR);
        std::fs::create_dir_all(conf).map_err(io_error(format!("cannot make {}", conf.display())))?;
        let events = event_log_dir(node);
        std::fs::create_dir_all(&events).map_err(io_error(format!("cannot make {}", events.display())))?;
        write(&conf.join("spark-defaults.conf"), &Self::spark_defaults(node)?)?;
        write(&conf.join("spark-env.sh"), &Self::spark_env()?)?;
        Ok(())
    }

    fn node_services(&self, node: &NodeContext) -> Vec<NodeService> {
        let c = SparkConfig::of(&node.section);
        let ip = node.node_ip.clone();
        if node.is_head() {
            let mut argv = spark_class("org.apache.spark.deploy.master.Master");
            argv.extend([
                "--host".to_string(),
                ip.clone(),
                "--port".to_string(),
                c.master_port.to_string(),
                "--webui-port".to_string(),
                c.master_ui_port.to_string(),
            ]);
            let mut out = vec![Self::service("spark-master", argv, node, c.master_port)];
            if c.history_server {
                let opts = format!(
                    "-Dspark.history.fs.logDirectory=file:{} -Dspark.history.ui.port={}",
                    event_log_dir(node).display(),
                    c.history_ui_port
                );
                out.push(
                    Self::service(
                        "spark-history",
                        spark_class("org.apache.spark.deploy.history.HistoryServer"),
                        node,
                        c.history_ui_port,
                    )
                    .with_env("SPARK_HISTORY_OPTS", opts),
                );
            }
            out
        } else {
            let mut argv = spark_class("org.apache.spark.deploy.worker.Worker");
            argv.extend([
                format!("spark://{}:{}", node.head_ip, c.master_port),
                "--host".to_string(),
                ip,
                "--cores".to_string(),
                worker_cores(node).to_string(),
            ]);
            if let Some(mib) = worker_memory_mib(node, c.worker_memory_ratio) {
                argv.extend(["--memory".to_string(), format!("{mib}m")]);
            }
            argv.extend(["--webui-port".to_string(), c.worker_ui_port.to_string()]);
            vec![Self::service("spark-worker", argv, node, c.worker_ui_port)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(kind: NodeKind, section: serde_json::Value) -> NodeContext {
        NodeContext::new(
            kind,
            "t",
            "10.0.0.5",
            "10.0.0.2",
            "c",
            "spark",
            section,
            "/home/u/cloudtik",
        )
        .with_resources(1.5, 2 << 30)
    }

    #[test]
    fn commands_call_the_node_program() {
        let c = Spark.commands(NodeKind::Head, &json!({}));
        assert_eq!(
            c.install,
            vec!["\"$CLOUDTIK_NODE_BINARY\" runtime install spark --head"]
        );
        assert_eq!(
            c.setup,
            vec!["\"$CLOUDTIK_NODE_BINARY\" runtime configure spark --head"]
        );
        assert_eq!(
            c.start,
            vec!["\"$CLOUDTIK_NODE_BINARY\" runtime start spark --head"]
        );
        assert_eq!(
            c.stop,
            vec!["\"$CLOUDTIK_NODE_BINARY\" runtime stop spark --head"]
        );
        let w = Spark.commands(NodeKind::Worker, &json!({}));
        assert_eq!(w.start, vec!["\"$CLOUDTIK_NODE_BINARY\" runtime start spark"]);
    }

    #[test]
    fn the_head_runs_master_and_history_and_workers_join_it() {
        let head = Spark.node_services(&ctx(NodeKind::Head, config::defaults()));
        assert_eq!(head.len(), 2);
        assert_eq!(head[0].name, "spark-master");
        assert_eq!(
            head[0].argv,
            [
                "/opt/cloudtik/spark/bin/spark-class",
                "org.apache.spark.deploy.master.Master",
                "--host",
                "10.0.0.5",
                "--port",
                "7077",
                "--webui-port",
                "8080"
            ]
        );
        assert_eq!(head[0].ready_port, Some(7077));
        assert_eq!(head[0].env["SPARK_LOCAL_IP"], "10.0.0.5");
        assert_eq!(head[0].env["SPARK_CONF_DIR"], SPARK_CONF_DIR);
        assert!(head[0].env["PATH"].starts_with("/opt/cloudtik/venv/bin:"));
        assert_eq!(head[1].name, "spark-history");
        assert_eq!(head[1].ready_port, Some(18080));
        assert!(head[1].env["SPARK_HISTORY_OPTS"].contains("file:/home/u/cloudtik/runtime/spark/events"));
        let no_history = Spark.node_services(&ctx(NodeKind::Head, json!({"history_server": false})));
        assert_eq!(no_history.len(), 1);

        let worker = Spark.node_services(&ctx(NodeKind::Worker, json!({"worker_memory_ratio": 0.5})));
        assert_eq!(worker.len(), 1);
        assert_eq!(
            worker[0].argv[1..],
            [
                "org.apache.spark.deploy.worker.Worker",
                "spark://10.0.0.2:7077",
                "--host",
                "10.0.0.5",
                "--cores",
                "1",
                "--memory",
                "1024m",
                "--webui-port",
                "8081"
            ]
        );
        assert_eq!(worker[0].ready_port, Some(8081));
        // Unknown memory: Spark's own default.
        let unknown = ctx(NodeKind::Worker, json!({})).with_resources(0.5, 0);
        assert_eq!(worker_cores(&unknown), 1);
        assert_eq!(worker_memory_mib(&unknown, 0.75), None);
        assert!(
            !Spark.node_services(&unknown)[0]
                .argv
                .contains(&"--memory".to_string())
        );
    }

    #[test]
    fn config_files_name_the_master_and_the_event_logs() {
        let text = Spark::spark_defaults(&ctx(NodeKind::Worker, json!({"executor_memory": "600m"}))).unwrap();
        assert!(
            text.contains("spark.master                     spark://10.0.0.2:7077\n"),
            "{text}"
        );
        assert!(
            text.contains("spark.eventLog.dir               file:/home/u/cloudtik/runtime/spark/events\n")
        );
        assert!(text.contains("spark.executor.memory            600m\n"));
        assert!(text.contains("spark.pyspark.python             /opt/cloudtik/venv/bin/python\n"));
        let env = Spark::spark_env().unwrap();
        assert!(env.contains("export SPARK_HOME=/opt/cloudtik/spark\n"), "{env}");
    }

    #[test]
    fn services_endpoints_environment_and_processes() {
        let s = Spark.services(&config::defaults());
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "spark-master",
                "spark-master-ui",
                "spark-history",
                "spark-worker-ui"
            ]
        );
        assert_eq!(s[3].scope, NodeScope::Workers);
        assert_eq!(s[1].protocol, Protocol::Http);
        assert_eq!(Spark.services(&json!({"history_server": false})).len(), 3);
        let e = Spark.endpoints(&config::defaults(), "10.0.0.2");
        assert_eq!(e["spark-master"], "spark://10.0.0.2:7077");
        assert_eq!(e["spark-master-ui"], "http://10.0.0.2:8080");
        assert_eq!(e["spark-history"], "http://10.0.0.2:18080");
        let env = Spark.environment(NodeKind::Worker, &json!({}));
        assert_eq!(env["SPARK_HOME"], "/opt/cloudtik/spark");
        assert_eq!(env["PATH"], NODE_PATH);
        assert!(env.values().all(|v| !v.contains('$')));
        let p = Spark.processes();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.match_command_line));
        assert_eq!(
            Spark.scaling_policy(&json!({}), "10.0.0.2").unwrap().name(),
            "spark"
        );
    }

    #[test]
    fn validation_goes_through_the_config() {
        assert!(Spark.validate(&Spark.config_defaults()).is_ok());
        let err = Spark.validate(&json!({"nope": 1})).unwrap_err();
        assert!(err.to_string().contains("unknown key"), "{err:#}");
    }

    #[test]
    fn links_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, l) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("spark"),
        );
        link(&a, &l).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), a);
        link(&b, &l).unwrap();
        link(&b, &l).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), b);
    }
}
