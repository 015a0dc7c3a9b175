//! A loader with a runtime registry orders runtimes, merges their defaults and lets them
//! validate their sections.

use std::sync::Arc;

use cloudtik_core::config::ConfigLoader;
use cloudtik_core::runtime::config_path;
use cloudtik_core::{Error, Result, Runtime, RuntimeRegistry};
use serde_json::{Value, json};

#[derive(Debug)]
struct Hdfs;
impl Runtime for Hdfs {
    fn name(&self) -> &str {
        "hdfs"
    }
    fn config_defaults(&self) -> Value {
        json!({"replication": 3, "port": 9000})
    }
    fn validate(&self, section: &Value) -> Result<()> {
        match section["replication"].as_u64() {
            Some(1..=10) => Ok(()),
            _ => Err(Error::config(
                config_path("hdfs", "replication"),
                "must be a whole number from 1 to 10",
            )),
        }
    }
}

#[derive(Debug)]
struct Spark;
impl Runtime for Spark {
    fn name(&self) -> &str {
        "spark"
    }
    fn dependencies(&self) -> Vec<String> {
        vec!["hdfs".into()]
    }
}

fn loader() -> ConfigLoader {
    let mut registry = RuntimeRegistry::new();
    registry.register(Arc::new(Hdfs)).unwrap();
    registry.register(Arc::new(Spark)).unwrap();
    ConfigLoader::new()
        .with_env_template_dirs(false)
        .with_runtimes(Arc::new(registry))
}

const BASE: &str = "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\n";

#[test]
fn runtimes_are_ordered_and_defaults_merged() {
    let c = loader()
        .load_cluster_str(
            "c.yaml",
            &format!("{BASE}runtime:\n  types: [spark, hdfs]\n  hdfs:\n    port: 8020\n"),
        )
        .unwrap();
    assert_eq!(c.runtime.types, vec!["hdfs", "spark"]);
    assert_eq!(
        c.runtime.sections["hdfs"],
        json!({"replication": 3, "port": 8020})
    );
}

#[test]
fn runtime_errors_name_their_path_and_line() {
    let e = loader()
        .load_cluster_str(
            "c.yaml",
            &format!("{BASE}runtime:\n  types: [hdfs]\n  hdfs:\n    replication: 0\n"),
        )
        .unwrap_err();
    let loc = e.location().unwrap();
    assert_eq!(loc.path, "runtime.hdfs.replication");
    assert_eq!(loc.line, Some(7));
    let e = loader()
        .load_cluster_str("c.yaml", &format!("{BASE}runtime:\n  types: [hdfs, presto]\n"))
        .unwrap_err();
    assert_eq!(e.location().unwrap().path, "runtime.types[1]");
    assert!(
        e.to_string()
            .contains("runtime `presto` is not available in this build; available runtimes: "),
        "{e}"
    );
}
