//! The `cloudtik config` commands, run as a user would.

use std::process::Command;

fn cloudtik(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudtik"))
        .args(args)
        .env_remove("CLOUDTIK_USER_TEMPLATES")
        .output()
        .expect("run cloudtik");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example(name: &str) -> String {
    format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_every_example() {
    for f in ["virtual.yaml", "local.yaml", "aws.yaml", "gcp.yaml", "azure.yaml"] {
        let (code, out, err) = cloudtik(&["config", "validate", &example(f)]);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.contains("valid"), "{out}");
    }
    let (code, out, _) = cloudtik(&["config", "validate", "--json", &example("virtual.yaml")]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["min_workers"], 2);
    assert_eq!(v["provider"], "virtual");
}

#[test]
fn show_prints_the_merged_config() {
    let (code, out, err) = cloudtik(&["config", "show", &example("aws.yaml")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(
        v["available_node_types"]["head.default"]["node_config"]["InstanceType"],
        "m5.2xlarge"
    );
    assert_eq!(v["setup_commands"], serde_json::json!(["pip install pyarrow"]));
    let (code, out, _) = cloudtik(&["config", "show", "--json", &example("aws.yaml")]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j, v);
}

#[test]
fn bad_input_exits_non_zero_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nmax_workers: lots\n",
    )
    .unwrap();
    let (code, out, err) = cloudtik(&["config", "validate", f.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(out.is_empty());
    assert!(err.contains("invalid config at max_workers"), "{err}");
    assert!(err.contains("bad.yaml:4:1"), "{err}");
    assert!(err.contains("hint:"), "{err}");

    let (code, _, err) = cloudtik(&["config", "show", "/nonexistent/cluster.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the config file"), "{err}");

    let (code, _, _) = cloudtik(&["config", "frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn schema_is_printed() {
    let (code, out, _) = cloudtik(&["config", "schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["title"], "ClusterConfig");
}
