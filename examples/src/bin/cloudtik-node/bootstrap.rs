//! The bootstrap config file: what the head (and every node) is told about its cluster.

use std::path::Path;

use cloudtik_core::Resources;
use serde::Deserialize;

/// The default port of the state store's redis-server (CloudTik's).
pub(crate) const DEFAULT_REDIS_PORT: u16 = 6789;

/// The bootstrap config file, YAML or JSON (JSON is YAML). Every field is optional;
/// command-line flags override it. Unknown fields are refused.
///
/// ```yaml
/// cluster_name: demo            # shown in logs
/// head_ip: 10.0.0.5             # the head's internal address: redis-server binds to it (and loopback)
/// redis_port: 6789              # the state store's port (default 6789)
/// redis_address: 10.0.0.5:6789  # where agents find the state store (default head_ip:redis_port)
/// redis_password: "..."         # agents: the password (the head keeps its own in --dir)
/// encryption_key: "..."         # 64 hex digits: the cluster's key for runtime config and secrets
/// node_type: worker.default     # the agent's node type
/// head_node_type: head.default  # the head's node type
/// heartbeat_interval_s: 1       # seconds between heartbeats
/// report_interval_s: 5          # seconds between metrics and process-health reports
/// resources: {GPU: 1}           # replace or add to the detected CPU and memory
/// processes: [spark-worker]     # processes whose health to report, besides the core ones
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BootstrapConfig {
    pub(crate) cluster_name: Option<String>,
    pub(crate) head_ip: Option<String>,
    pub(crate) redis_port: Option<u16>,
    pub(crate) redis_address: Option<String>,
    pub(crate) redis_password: Option<String>,
    pub(crate) encryption_key: Option<String>,
    pub(crate) node_type: Option<String>,
    pub(crate) head_node_type: Option<String>,
    pub(crate) heartbeat_interval_s: Option<f64>,
    pub(crate) report_interval_s: Option<f64>,
    pub(crate) resources: Option<Resources>,
    pub(crate) processes: Vec<String>,
}

impl BootstrapConfig {
    /// Reads the file, or the empty config when no file is given.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(BootstrapConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the bootstrap config {}: {e}", path.display()))?;
        serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid bootstrap config {}: {e}", path.display()))
    }

    /// Where agents find the state store: `redis_address`, else `head_ip:redis_port`.
    pub(crate) fn redis_address(&self) -> Option<String> {
        self.redis_address.clone().or_else(|| {
            self.head_ip
                .as_ref()
                .map(|ip| format!("{ip}:{}", self.redis_port.unwrap_or(DEFAULT_REDIS_PORT)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_and_json_and_refuses_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("b.yaml");
        std::fs::write(
            &yaml,
            "head_ip: 10.0.0.5\nresources: {GPU: 1}\nprocesses: [spark-worker]\n",
        )
        .unwrap();
        let b = BootstrapConfig::load(Some(&yaml)).unwrap();
        assert_eq!(b.redis_address().as_deref(), Some("10.0.0.5:6789"));
        assert_eq!(b.resources.unwrap().gpu(), 1.0);
        let json = dir.path().join("b.json");
        std::fs::write(&json, r#"{"redis_address": "h:1", "heartbeat_interval_s": 0.5}"#).unwrap();
        let b = BootstrapConfig::load(Some(&json)).unwrap();
        assert_eq!(b.redis_address().as_deref(), Some("h:1"));
        assert_eq!(b.heartbeat_interval_s, Some(0.5));
        std::fs::write(&json, r#"{"redis_adress": "h:1"}"#).unwrap();
        let e = BootstrapConfig::load(Some(&json)).unwrap_err().to_string();
        assert!(e.contains("redis_adress"), "{e}");
        assert!(BootstrapConfig::load(None).unwrap().redis_address().is_none());
    }
}
