//! Property tests: any input to the config loader gives a config or an error, never a
//! panic, and every error of kind InvalidConfig carries a location.

use cloudtik_core::ErrorKind;
use proptest::prelude::*;
use serde_json::{Value, json};

fn loader() -> cloudtik_core::config::ConfigLoader {
    cloudtik_providers::config_loader().with_env_template_dirs(false)
}

fn check(text_or_bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, text_or_bytes).unwrap();
    if let Err(e) = loader().load_cluster_file(&file) {
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.location().is_some(), "config error without a location: {e}");
        assert!(!e.to_string().is_empty());
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-zA-Z0-9_. +-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_+]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys of a valid config where a random value is planted.
const PATHS: &[&[&str]] = &[
    &["max_workers"],
    &["auth"],
    &["auth", "ssh_port"],
    &["provider"],
    &["provider", "type"],
    &["available_node_types"],
    &["available_node_types", "worker.default"],
    &["available_node_types", "worker.default", "min_workers"],
    &["available_node_types", "worker.default", "node_config"],
    &["available_node_types", "worker.default", "resources"],
    &["head_node_type"],
    &["setup_commands"],
    &["setup_commands++"],
    &["docker"],
    &["runtime"],
    &["options"],
    &["file_mounts"],
    &["from"],
    &["unknown_key"],
];

fn planted(path: &[&str], v: Value) -> Value {
    let mut base = json!({
        "cluster_name": "c", "workspace_name": "w", "provider": {"type": "virtual"},
        "available_node_types": {
            "head.default": {"node_config": {}},
            "worker.default": {"node_config": {}, "min_workers": 1}
        },
        "head_node_type": "head.default"
    });
    let mut cur = &mut base;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == path.len() - 1 {
            cur[*k] = v;
            break;
        }
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert(json!({}));
    }
    base
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&bytes);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z_:\\-\\[\\]{}&*!|>'\" \n\t#0-9.+?,<]{0,300}") {
        check(text.as_bytes());
    }

    #[test]
    fn random_values_at_config_paths_never_panic(idx in 0..PATHS.len(), v in arb_json()) {
        let doc = planted(PATHS[idx], v);
        let yaml = serde_yaml_ng::to_string(&doc).unwrap();
        check(yaml.as_bytes());
    }
}
