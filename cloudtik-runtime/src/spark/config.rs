//! The `runtime.spark` config section: its keys, defaults and validation.

use cloudtik_core::runtime::config_path;
use cloudtik_core::{Error, Result};
use serde_json::{Value, json};

/// The runtime's name, also the key of its config section.
pub const NAME: &str = "spark";

/// The pyspark version installed by default (pip; the newest 3.5.x).
pub const DEFAULT_VERSION: &str = "3.5.9";

/// The Debian package of the Java runtime installed by default.
pub const DEFAULT_JAVA_PACKAGE: &str = "openjdk-17-jre-headless";

/// The master's RPC port (`spark://<head>:7077`).
pub const DEFAULT_MASTER_PORT: u16 = 7077;

/// The master's web UI and JSON API (`/json/`) port.
pub const DEFAULT_MASTER_UI_PORT: u16 = 8080;

/// The worker's web UI port.
pub const DEFAULT_WORKER_UI_PORT: u16 = 8081;

/// The history server's web UI port.
pub const DEFAULT_HISTORY_UI_PORT: u16 = 18080;

/// The share of a worker node's memory offered to executors by default.
pub const DEFAULT_WORKER_MEMORY_RATIO: f64 = 0.75;

/// The memory of an executor by default (`spark.executor.memory`): small enough that an
/// executor fits the worker of a small node (an application whose executors fit no
/// worker waits forever).
pub const DEFAULT_EXECUTOR_MEMORY: &str = "512m";

/// The settings of `runtime.spark`, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkConfig {
    /// `version`: the pyspark version installed with pip (default [`DEFAULT_VERSION`]).
    pub version: String,
    /// `java_package`: the Debian package providing `java` (default
    /// [`DEFAULT_JAVA_PACKAGE`]).
    pub java_package: String,
    /// `master_port`: the master's RPC port.
    pub master_port: u16,
    /// `master_ui_port`: the master's web UI (and JSON API) port.
    pub master_ui_port: u16,
    /// `worker_ui_port`: each worker's web UI port.
    pub worker_ui_port: u16,
    /// `history_server`: run the history server on the head.
    pub history_server: bool,
    /// `history_ui_port`: the history server's port.
    pub history_ui_port: u16,
    /// `worker_memory_ratio`: share of a worker node's memory (0 to 1] its Spark worker
    /// offers to executors.
    pub worker_memory_ratio: f64,
    /// `executor_memory`: `spark.executor.memory` of applications (a Spark size such as
    /// `512m` or `1g`).
    pub executor_memory: String,
}

impl Default for SparkConfig {
    fn default() -> Self {
        SparkConfig {
            version: DEFAULT_VERSION.to_string(),
            java_package: DEFAULT_JAVA_PACKAGE.to_string(),
            master_port: DEFAULT_MASTER_PORT,
            master_ui_port: DEFAULT_MASTER_UI_PORT,
            worker_ui_port: DEFAULT_WORKER_UI_PORT,
            history_server: true,
            history_ui_port: DEFAULT_HISTORY_UI_PORT,
            worker_memory_ratio: DEFAULT_WORKER_MEMORY_RATIO,
            executor_memory: DEFAULT_EXECUTOR_MEMORY.to_string(),
        }
    }
}

/// The section's defaults, as [`Runtime::config_defaults`](cloudtik_core::Runtime::config_defaults) returns them.
pub fn defaults() -> Value {
    let d = SparkConfig::default();
    json!({
        "version": d.version,
        "java_package": d.java_package,
        "master_port": d.master_port,
        "master_ui_port": d.master_ui_port,
        "worker_ui_port": d.worker_ui_port,
        "history_server": d.history_server,
        "history_ui_port": d.history_ui_port,
        "worker_memory_ratio": d.worker_memory_ratio,
        "executor_memory": d.executor_memory,
    })
}

/// The keys the section accepts.
pub const KEYS: &[&str] = &[
    "version",
    "java_package",
    "master_port",
    "master_ui_port",
    "worker_ui_port",
    "history_server",
    "history_ui_port",
    "worker_memory_ratio",
    "executor_memory",
];

fn bad(key: &str, expected: &str) -> Error {
    Error::config(config_path(NAME, key), format!("expected {expected}"))
}

fn port(section: &serde_json::Map<String, Value>, key: &str, default: u16) -> Result<u16> {
    match section.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p as u16)
            .ok_or_else(|| bad(key, &format!("a port number from 1 to 65535, got {v}"))),
    }
}

fn string(section: &serde_json::Map<String, Value>, key: &str, default: &str) -> Result<String> {
    match section.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(v) => Err(bad(key, &format!("a non-empty string, got {v}"))),
    }
}

/// Parses a Spark memory size (`spark.executor.memory` syntax: `512m`, `1g`, `2048`
/// meaning MiB) into bytes.
pub fn parse_spark_memory(text: &str) -> Option<f64> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse::<f64>().ok().map(|mib| mib * 1024.0 * 1024.0);
    }
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.ends_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(&t);
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

impl SparkConfig {
    /// Reads and checks a section (`Null` means all defaults). Errors are
    /// [`Error::config`] errors naming `runtime.spark.<key>`: an unknown key, a value of
    /// the wrong type or out of range, two of the head's ports equal.
    pub fn from_section(section: &Value) -> Result<Self> {
        let empty = serde_json::Map::new();
        let map = match section {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(Error::config(
                    format!("runtime.{NAME}"),
                    format!("expected a mapping of Spark settings, got {other}"),
                ));
            }
        };
        if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(Error::config(
                config_path(NAME, unknown),
                format!("unknown key; expected one of {}", KEYS.join(", ")),
            ));
        }
        let d = SparkConfig::default();
        let version = string(map, "version", &d.version)?;
        if !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')
            || !version.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(bad(
                "version",
                &format!("a pyspark version such as {DEFAULT_VERSION}, got {version:?}"),
            ));
        }
        let java_package = string(map, "java_package", &d.java_package)?;
        if !java_package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.:".contains(c))
        {
            return Err(bad(
                "java_package",
                &format!("a Debian package name such as {DEFAULT_JAVA_PACKAGE}, got {java_package:?}"),
            ));
        }
        let history_server = match map.get("history_server") {
            None | Some(Value::Null) => d.history_server,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad("history_server", &format!("true or false, got {v}"))),
        };
        let worker_memory_ratio = match map.get("worker_memory_ratio") {
            None | Some(Value::Null) => d.worker_memory_ratio,
            Some(v) => v.as_f64().filter(|r| *r > 0.0 && *r <= 1.0).ok_or_else(|| {
                bad(
                    "worker_memory_ratio",
                    &format!("a number above 0 and at most 1, got {v}"),
                )
            })?,
        };
        let executor_memory = string(map, "executor_memory", &d.executor_memory)?;
        if parse_spark_memory(&executor_memory).is_none_or(|b| b < 32.0 * 1024.0 * 1024.0) {
            return Err(bad(
                "executor_memory",
                &format!("a Spark memory size of at least 32m such as 512m or 1g, got {executor_memory:?}"),
            ));
        }
        let c = SparkConfig {
            version,
            java_package,
            master_port: port(map, "master_port", d.master_port)?,
            master_ui_port: port(map, "master_ui_port", d.master_ui_port)?,
            worker_ui_port: port(map, "worker_ui_port", d.worker_ui_port)?,
            history_server,
            history_ui_port: port(map, "history_ui_port", d.history_ui_port)?,
            worker_memory_ratio,
            executor_memory,
        };
        let mut head_ports = vec![
            ("master_port", c.master_port),
            ("master_ui_port", c.master_ui_port),
        ];
        if c.history_server {
            head_ports.push(("history_ui_port", c.history_ui_port));
        }
        for (i, (key, p)) in head_ports.iter().enumerate() {
            if let Some((other, _)) = head_ports[..i].iter().find(|(_, q)| q == p) {
                return Err(bad(key, &format!("a port other than {other}'s ({p})")));
            }
        }
        Ok(c)
    }

    /// The section's settings, or the defaults when it cannot be read (the config
    /// loader validated it already).
    pub fn of(section: &Value) -> Self {
        Self::from_section(section).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(err: &Error) -> String {
        err.location().map(|l| l.path.clone()).unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid_and_null_means_defaults() {
        assert_eq!(
            SparkConfig::from_section(&defaults()).unwrap(),
            SparkConfig::default()
        );
        assert_eq!(
            SparkConfig::from_section(&Value::Null).unwrap(),
            SparkConfig::default()
        );
        let c = SparkConfig::from_section(&json!({"version": "3.5.3", "history_server": false, "worker_memory_ratio": 1, "executor_memory": "1g"})).unwrap();
        assert_eq!(c.version, "3.5.3");
        assert!(!c.history_server);
        assert_eq!(c.worker_memory_ratio, 1.0);
        assert_eq!(c.executor_memory, "1g");
    }

    #[test]
    fn unknown_keys_and_wrong_values_name_their_path() {
        let cases = [
            (
                json!({"verison": "3.5.9"}),
                "runtime.spark.verison",
                "unknown key",
            ),
            (
                json!({"version": 3.5}),
                "runtime.spark.version",
                "expected a non-empty string",
            ),
            (
                json!({"version": "latest"}),
                "runtime.spark.version",
                "expected a pyspark version",
            ),
            (
                json!({"java_package": "a b"}),
                "runtime.spark.java_package",
                "expected a Debian package",
            ),
            (
                json!({"master_port": 0}),
                "runtime.spark.master_port",
                "expected a port",
            ),
            (
                json!({"master_ui_port": "8080"}),
                "runtime.spark.master_ui_port",
                "expected a port",
            ),
            (
                json!({"worker_ui_port": 70000}),
                "runtime.spark.worker_ui_port",
                "expected a port",
            ),
            (
                json!({"history_server": "yes"}),
                "runtime.spark.history_server",
                "expected true or false",
            ),
            (
                json!({"worker_memory_ratio": 0}),
                "runtime.spark.worker_memory_ratio",
                "expected a number",
            ),
            (
                json!({"worker_memory_ratio": 1.5}),
                "runtime.spark.worker_memory_ratio",
                "expected a number",
            ),
            (
                json!({"executor_memory": "lots"}),
                "runtime.spark.executor_memory",
                "expected a Spark memory",
            ),
            (
                json!({"executor_memory": "1k"}),
                "runtime.spark.executor_memory",
                "expected a Spark memory",
            ),
            (
                json!({"history_ui_port": 8080}),
                "runtime.spark.history_ui_port",
                "other than master_ui_port",
            ),
        ];
        for (section, path, message) in cases {
            let err = SparkConfig::from_section(&section).unwrap_err();
            assert_eq!(err.kind(), cloudtik_core::ErrorKind::InvalidConfig, "{section}");
            assert_eq!(path_of(&err), path, "{section}: {err:#}");
            assert!(err.to_string().contains(message), "{section}: {err:#}");
        }
        // The history port may clash when there is no history server.
        SparkConfig::from_section(&json!({"history_server": false, "history_ui_port": 8080})).unwrap();
        assert!(SparkConfig::from_section(&json!([1])).is_err());
    }

    #[test]
    fn spark_memory_sizes() {
        let mib = 1024.0 * 1024.0;
        assert_eq!(parse_spark_memory("512m"), Some(512.0 * mib));
        assert_eq!(parse_spark_memory("1g"), Some(1024.0 * mib));
        assert_eq!(parse_spark_memory("2GB"), Some(2048.0 * mib));
        assert_eq!(parse_spark_memory("2048"), Some(2048.0 * mib));
        assert_eq!(parse_spark_memory("1.5g"), None);
        assert_eq!(parse_spark_memory("m"), None);
        assert_eq!(parse_spark_memory(""), None);
    }
}
