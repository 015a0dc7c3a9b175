//! The JSON Schema committed for editors is the one the types produce.

#[test]
fn committed_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/cluster.schema.json");
    let generated =
        serde_json::to_string_pretty(&cloudtik_core::config::cluster_config_schema()).unwrap() + "\n";
    if std::env::var_os("CLOUDTIK_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/cluster.schema.json is out of date: run `CLOUDTIK_UPDATE_SCHEMA=1 cargo test -p cloudtik-core --test schema`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let props = &schema["properties"];
    for key in [
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "docker",
    ] {
        assert!(props.get(key).is_some(), "schema lacks {key}");
    }
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
}
