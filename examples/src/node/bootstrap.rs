//! The bootstrap config file: what the head (and every node) is told about its cluster.
//! Its format is the SDK's [`HeadBootstrap`](cloudtik_core::cluster::HeadBootstrap); see there for every field.

pub(crate) use cloudtik_core::cluster::DEFAULT_REDIS_PORT;
/// The bootstrap config file, YAML or JSON (JSON is YAML). Every field is optional;
/// command-line flags override it. Unknown fields are refused.
pub(crate) use cloudtik_core::cluster::HeadBootstrap as BootstrapConfig;

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
        assert!(e.contains("redis_adress"), "{e:#}");
        assert!(BootstrapConfig::load(None).unwrap().redis_address().is_none());
        assert_eq!(DEFAULT_REDIS_PORT, 6789);
    }
}
