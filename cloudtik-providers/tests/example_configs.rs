//! The example configs of every provider load, merge and validate.

use std::path::PathBuf;

use cloudtik_core::NodeKind;
use cloudtik_core::config::{CommandPhase, launch_hash, runtime_hashes};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/configs")
        .join(name)
}

#[test]
fn every_provider_example_loads() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    for (file, provider, workers) in [
        ("virtual.yaml", "virtual", vec![("worker.default", 2)]),
        ("local.yaml", "local", vec![("worker.default", 2)]),
        ("aws.yaml", "aws", vec![("worker.default", 3)]),
        (
            "gcp.yaml",
            "gcp",
            vec![("worker.default", 2), ("worker.highmem", 0)],
        ),
        ("azure.yaml", "azure", vec![("worker.default", 1)]),
    ] {
        let c = loader
            .load_cluster_file(example(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.provider.provider_type, provider, "{file}");
        assert!(c.available_node_types.contains_key(&c.head_node_type), "{file}");
        for (t, min) in workers {
            assert_eq!(c.min_workers_of(t), min, "{file} {t}");
        }
        // launch hashes of the head exist and differ from a worker's only if node configs differ
        let head = &c.available_node_types[&c.head_node_type];
        let h = launch_hash(&serde_json::Value::Object(head.node_config.clone()), &c.auth);
        if c.auth.ssh_private_key.is_none() {
            assert_eq!(h.unwrap().len(), 40, "{file}");
        }
    }
}

#[test]
fn templates_and_plus_plus_merge_as_cloudtik_does() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    let c = loader.load_cluster_file(example("aws.yaml")).unwrap();
    // from aws/standard: the head type and its instance type
    assert_eq!(
        c.available_node_types["head.default"].node_config["InstanceType"],
        "m5.2xlarge"
    );
    // the user's worker override merged into the template's worker type
    let w = &c.available_node_types["worker.default"];
    assert_eq!(w.max_workers, Some(20));
    assert_eq!(w.node_config["InstanceType"], "m5.2xlarge");
    // provider defaults merged under the user's provider keys
    assert_eq!(c.provider.extra["region"], "us-east-1");
    assert_eq!(c.provider.extra["cache_stopped_nodes"], false);
    assert_eq!(c.provider.extra["prefer_spot_node"], true);
    // setup_commands++ appended to the defaults' (empty) list
    assert_eq!(
        c.commands(CommandPhase::Setup, NodeKind::Worker, "worker.default"),
        vec!["pip install pyarrow".to_string()]
    );
    assert!(c.runtime.types.is_empty());
    assert_eq!(c.idle_timeout_minutes(), 5.0);
}

#[test]
fn user_template_folders_come_before_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("aws")).unwrap();
    std::fs::write(
        dir.path().join("aws/standard.yaml"),
        "from: aws/base\navailable_node_types:\n  worker.default:\n    node_config:\n      InstanceType: c5.large\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("aws/base.yaml"),
        "available_node_types:\n  head.default:\n    node_config:\n      InstanceType: c5.xlarge\nhead_node_type: head.default\n",
    )
    .unwrap();
    let loader = cloudtik_providers::config_loader()
        .with_env_template_dirs(false)
        .with_template_dir(dir.path());
    let c = loader.load_cluster_file(example("aws.yaml")).unwrap();
    assert_eq!(
        c.available_node_types["worker.default"].node_config["InstanceType"],
        "c5.large"
    );
    assert_eq!(
        c.available_node_types["head.default"].node_config["InstanceType"],
        "c5.xlarge"
    );

    // A user aws/standard that inherits the built-in aws/latest/standard, which says
    // `from: aws/standard`, finds the user's template again: a cycle, reported as such.
    std::fs::write(
        dir.path().join("aws/standard.yaml"),
        "from: aws/latest/standard\n",
    )
    .unwrap();
    let e = loader.load_cluster_file(example("aws.yaml")).unwrap_err();
    assert!(
        e.message()
            .contains("cycle: aws/standard -> aws/latest/standard -> aws/standard"),
        "{e}"
    );
}

#[test]
fn hashes_ignore_key_order_and_layout() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    let a = "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nsetup_commands: [echo a]\n\
             available_node_types:\n  head.default:\n    node_config: {instance_type: {CPU: 1, memory: 1G}}\n\
             head_node_type: head.default\n";
    let b = "head_node_type:    head.default\navailable_node_types:\n  head.default:\n    node_config:\n\
             \x20     instance_type:\n        memory: 1G\n        CPU: 1\nsetup_commands:\n  - echo a\n\
             provider:\n  type: virtual\nworkspace_name: w\ncluster_name: c\n";
    let ca = loader.load_cluster_str("a.yaml", a).unwrap();
    let cb = loader.load_cluster_str("b.yaml", b).unwrap();
    let nc = |c: &cloudtik_core::config::ClusterConfig| {
        serde_json::Value::Object(c.available_node_types["head.default"].node_config.clone())
    };
    assert_eq!(
        launch_hash(&nc(&ca), &ca.auth).unwrap(),
        launch_hash(&nc(&cb), &cb.auth).unwrap()
    );
    let ha = runtime_hashes(&ca, NodeKind::Head, "head.default").unwrap();
    let hb = runtime_hashes(&cb, NodeKind::Head, "head.default").unwrap();
    assert_eq!(ha, hb);
    // and a real change changes them
    let c2 = loader
        .load_cluster_str("c.yaml", &a.replace("echo a", "echo b"))
        .unwrap();
    assert_ne!(
        runtime_hashes(&c2, NodeKind::Head, "head.default")
            .unwrap()
            .runtime_hash,
        ha.runtime_hash
    );
    let c3 = loader
        .load_cluster_str("d.yaml", &a.replace("CPU: 1", "CPU: 2"))
        .unwrap();
    assert_ne!(
        launch_hash(&nc(&c3), &c3.auth).unwrap(),
        launch_hash(&nc(&ca), &ca.auth).unwrap()
    );
}

#[test]
fn file_mount_contents_change_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "one").unwrap();
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    let yaml = format!(
        "cluster_name: c\nworkspace_name: w\nprovider: {{type: virtual}}\nfile_mounts:\n  /data: {}\n",
        dir.path().display()
    );
    let c = loader.load_cluster_str("a.yaml", &yaml).unwrap();
    let h1 = runtime_hashes(&c, NodeKind::Worker, "worker.default").unwrap();
    std::fs::write(dir.path().join("f.txt"), "two").unwrap();
    let h2 = runtime_hashes(&c, NodeKind::Worker, "worker.default").unwrap();
    assert_ne!(h1.file_mounts_contents_hash, h2.file_mounts_contents_hash);
    assert_eq!(h1.runtime_hash, h2.runtime_hash);
    std::fs::remove_file(dir.path().join("f.txt")).unwrap();
    std::fs::remove_dir(dir.path()).unwrap();
    let e = runtime_hashes(&c, NodeKind::Worker, "worker.default").unwrap_err();
    assert!(e.location().unwrap().path.starts_with("file_mounts"), "{e}");
}

#[test]
fn workspace_examples_load() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    let ws = loader
        .load_workspace_file(example("virtual-workspace.yaml"))
        .unwrap();
    assert_eq!(ws.workspace_name, "local-ws");
    let ws = loader.load_workspace_file(example("aws-workspace.yaml")).unwrap();
    assert_eq!(ws.provider.provider_type, "aws");
}

/// Every node type of the AWS example and of every built-in AWS template has a
/// `node_config` the AWS provider can launch (CloudTik's templates set
/// `BlockDeviceMappings`, which an earlier provider refused).
#[cfg(feature = "aws")]
#[test]
fn aws_node_configs_of_examples_and_templates_are_launchable() {
    let loader = cloudtik_providers::config_loader().with_env_template_dirs(false);
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![example("aws.yaml")];
    let templates: Vec<&str> = cloudtik_core::config::template::built_in_template_names()
        .into_iter()
        .filter(|n| n.starts_with("aws/"))
        .collect();
    assert_eq!(templates.len(), 31, "{templates:?}");
    for template in templates {
        let f = dir.path().join(format!("{}.yaml", template.replace('/', "-")));
        std::fs::write(
            &f,
            format!("from: {template}\ncluster_name: t\nworkspace_name: w\nprovider:\n  type: aws\n  region: us-east-1\n"),
        )
        .unwrap();
        files.push(f);
    }
    for file in files {
        let c = loader
            .load_cluster_file(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (name, t) in &c.available_node_types {
            let config = serde_json::Value::Object(t.node_config.clone());
            let parsed = cloudtik_providers::aws::Ec2NodeConfig::from_value(&config)
                .unwrap_or_else(|e| panic!("{} {name}: {e}", file.display()));
            assert!(!parsed.instance_type.is_empty());
        }
    }
}
