//! `cloudtik debug plan`, run as a user would, on the shipped scenarios and the issue's example.

use std::process::Command;

fn plan(file: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudtik"))
        .args(["debug", "plan", file])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_issue_example_plans_as_the_rules_say() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.json");
    // One worker.cpu node (8 CPU) with 2 CPU free, 3 launching; demands: one CPU task (fits
    // the free node) and one GPU task (no type has GPUs: infeasible); one CPU request
    // (fits the idle copy of the cluster). Nothing to launch, one infeasible demand.
    std::fs::write(
        &f,
        r#"{"node_types": {"worker.cpu": {"resources": {"CPU": 8, "memory": 34359738368}, "min_workers": 0, "max_workers": 1000}},
            "head_node_type": "head.default", "max_workers": 20000, "upscaling_speed": 1.0,
            "nodes": [{"id": "n-1", "ip": "10.0.0.1", "node_type": "worker.cpu", "kind": "worker", "status": "up-to-date",
                       "available": {"CPU": 2.0, "memory": 1073741824}}],
            "launching": {"worker.cpu": 3},
            "demands": [{"CPU": 1}, {"CPU": 1, "GPU": 1}],
            "requests": [{"CPU": 1}]}"#,
    )
    .unwrap();
    let (code, out, err) = plan(f.to_str().unwrap());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"to_launch": {}, "infeasible_count": 1}));
}

#[test]
fn shipped_scenarios_run() {
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, out, err) = plan(path.to_str().unwrap());
        assert_eq!(code, 0, "{}: {err}", path.display());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            v["to_launch"].is_object() && v["infeasible_count"].is_u64(),
            "{out}"
        );
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn a_broken_scenario_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(
        &f,
        r#"{"node_types": {"w": {"resources": {"CPU": "eight"}}}, "head_node_type": "h"}"#,
    )
    .unwrap();
    let (code, _, err) = plan(f.to_str().unwrap());
    assert_ne!(code, 0);
    assert!(err.contains("node_types"), "{err}");
}
