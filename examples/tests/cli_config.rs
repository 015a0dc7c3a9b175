//! The `cloudtik config` commands, run as a user would.

use std::process::Command;

fn cloudtik(args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_cloudtik")).args(args))
}

/// `cloudtik args...` with `HOME` at `home` (where it keeps `~/.cloudtik`).
fn cloudtik_home(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_cloudtik"))
        .args(args)
        .env("HOME", home))
}

/// Runs `cmd` without user template folders; returns (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
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

/// Files and folders under `dir`, for "nothing was made" checks.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn runtimes_this_build_lacks_are_warned_by_validate_and_refused_by_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("spark.yaml");
    std::fs::write(
        &f,
        "cluster_name: c\nworkspace_name: w\nprovider:\n  type: virtual\nruntime:\n  types: [hdfs, yarn]\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = cloudtik(&["config", "validate", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        err.contains("warning: invalid config at runtime.types[0] (")
            && err.contains("runtime `hdfs` is not available"),
        "{err}"
    );
    assert!(
        err.contains("runtime.types[1]") && err.contains("`yarn`"),
        "{err}"
    );
    assert!(err.contains("`cloudtik start` refuses"), "{err}");
    let (code, out, _) = cloudtik(&["config", "validate", "--json", f]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["usable"], false);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 2);
    // show warns too, and still shows the config with its runtimes
    let (code, out, err) = cloudtik(&["config", "show", f]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("runtime `hdfs` is not available"), "{err}");
    assert!(out.contains("- yarn"), "{out}");

    // start refuses before anything is made: exit 3, the path, nothing under HOME.
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = cloudtik_home(home.path(), &["start", f, "--yes"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("runtime.types[0]") && err.contains("`hdfs`"),
        "{err}"
    );
    assert_eq!(tree(home.path()), Vec::<String>::new());
}

#[test]
fn start_of_a_local_cluster_says_the_provider_is_not_built_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("local.yaml");
    std::fs::write(
        &f,
        "cluster_name: c\nprovider:\n  type: local\n  nodes:\n    - ip: 10.0.0.1\n    - ip: 10.0.0.2\n\
         available_node_types:\n  worker.default:\n    min_workers: 1\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = cloudtik(&["config", "validate", "--json", f]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["workspace_name"], "default");
    assert_eq!(v["usable"], true);
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = cloudtik_home(home.path(), &["start", f, "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("the `local` provider is not built yet"), "{err}");
    assert!(err.contains("provider.type"), "{err}");
    assert_eq!(tree(home.path()), Vec::<String>::new());
}

#[test]
fn validate_and_show_tell_where_each_node_type_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("types.yaml");
    std::fs::write(
        &f,
        "from: aws/standard\ncluster_name: c\nworkspace_name: w\nprovider: {type: aws, region: us-east-1}\n\
         available_node_types:\n  worker.big:\n    min_workers: 1\n    node_config: {InstanceType: m5.4xlarge}\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = cloudtik(&["config", "validate", f]);
    assert_eq!(code, 0, "{err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("worker.big").contains("types.yaml"), "{out}");
    assert!(
        row("worker.default").contains("aws/defaults (built-in) < aws/standard (built-in)"),
        "{out}"
    );
    assert!(row("head.default").contains("(head)"), "{out}");
    // worker.default comes from the defaults and the template only, with a worker: a note.
    assert!(
        !err.contains("note:"),
        "aws/standard defines worker.default: no note expected\n{err}"
    );
    let g = dir.path().join("gcp.yaml");
    std::fs::write(
        &g,
        "cluster_name: c\nworkspace_name: w\nprovider: {type: gcp, region: us-central1, availability_zone: us-central1-a, project_id: p}\n\
         available_node_types:\n  worker.big:\n    node_config: {machineType: n2-standard-16}\n",
    )
    .unwrap();
    let (code, _, err) = cloudtik(&["config", "validate", g.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "note: node type `worker.default` comes from the provider defaults (gcp/defaults (built-in))"
        ),
        "{err}"
    );
    let (code, out, _) = cloudtik(&["config", "show", g.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("#   worker.default: gcp/defaults (built-in)\n"),
        "{out}"
    );
    assert!(out.contains("#   worker.big: "), "{out}");
}

#[test]
fn a_worker_type_larger_than_the_machine_is_refused_by_validate_and_start() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("huge.yaml");
    std::fs::write(
        &file,
        "cluster_name: huge\nworkspace_name: ws\nprovider: {type: virtual}\nauth: {ssh_user: root}\n\
         available_node_types:\n  head.default: {node_config: {instance_type: {CPU: 1, memory: 512M}}}\n\
         \x20 big: {min_workers: 1, node_config: {instance_type: {CPU: 100000, memory: 512M}}}\n\
         head_node_type: head.default\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // validate: a valid file that cannot run here is a warning (exit 0, "usable": false);
    // start refuses it (exit 3) before anything is made.
    let (code, out, _) = cloudtik_home(home.path(), &["config", "validate", "--json", f]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["usable"], false);
    for (args, want) in [(vec!["config", "validate", f], 0), (vec!["start", f, "--yes"], 3)] {
        let (code, out, err) = cloudtik_home(home.path(), &args);
        assert_eq!(code, want, "{args:?}: {out}\n{err}");
        assert!(
            err.contains("available_node_types.big.node_config.instance_type.CPU"),
            "{args:?}: {err}"
        );
        assert!(err.contains("this machine has"), "{err}");
        assert!(err.contains("huge.yaml"), "the file is named: {err}");
    }
    // Nothing was made for the refused start.
    assert!(!home.path().join(".cloudtik").exists(), "{:?}", tree(home.path()));
}
