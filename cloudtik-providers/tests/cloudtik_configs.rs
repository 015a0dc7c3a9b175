//! Configs in CloudTik's format load unchanged: the provider defaults are deep-merged
//! under them as CloudTik does, templates resolve by CloudTik's names, the local
//! provider's workspace defaults to `default`, and what this build cannot run (runtimes
//! it does not have, container mode) is said, never silently accepted.
//!
//! The configs are in `tests/cloudtik_configs/<provider>/`, our own files in the shapes
//! of CloudTik's examples.

use std::path::{Path, PathBuf};

use cloudtik_core::ErrorKind;
use cloudtik_core::config::ConfigLoader;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cloudtik_configs")
}

fn loader() -> ConfigLoader {
    cloudtik_providers::config_loader().with_env_template_dirs(false)
}

/// Every config file under `tests/cloudtik_configs`, sorted.
fn config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for provider in std::fs::read_dir(dir()).unwrap() {
        let provider = provider.unwrap().path();
        if !provider.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&provider).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                files.push(f);
            }
        }
    }
    files.sort();
    files
}

/// The `runtime.types` a file lists, read from the file itself.
/// The runtimes a config lists that this build does not have, with their index.
fn listed_runtimes(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    v["runtime"]["types"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().unwrap().to_string())
                .enumerate()
                .filter(|(_, t)| !cloudtik_runtime::BUILTIN.contains(&t.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_cloudtik_format_config_loads_unchanged() {
    let files = config_files();
    assert!(files.len() >= 17, "found only {} configs", files.len());
    for provider in ["aws", "gcp", "azure", "virtual", "local"] {
        assert!(
            files.iter().any(|f| f.parent().unwrap().ends_with(provider)),
            "no {provider} config"
        );
    }
    for file in files {
        let name = file.display().to_string();
        let provider = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let checked = loader()
            .check_cluster_file(&file)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = &checked.config;
        assert_eq!(c.provider.provider_type, provider, "{name}");
        // head_node_type and the default types come from the provider defaults, each
        // with a node_config, whatever the file left out.
        assert_eq!(c.head_node_type, "head.default", "{name}");
        for t in ["head.default", "worker.default"] {
            let nt = c
                .available_node_types
                .get(t)
                .unwrap_or_else(|| panic!("{name}: no {t}"));
            assert!(!nt.node_config.is_empty(), "{name}: {t} has no node_config");
        }
        assert!(c.min_workers_of("worker.default") >= 1, "{name}");

        // Runtimes this build does not have: one warning each, naming its index, and
        // `load` (what `start` uses) refuses the config with the first of them.
        let listed = listed_runtimes(&file);
        assert_eq!(
            checked.warnings.len(),
            listed.len(),
            "{name}: {:?}",
            checked.warnings
        );
        for (w, (i, rt)) in checked.warnings.iter().zip(&listed) {
            assert_eq!(w.kind(), ErrorKind::InvalidConfig);
            assert_eq!(
                w.location().unwrap().path,
                format!("runtime.types[{i}]"),
                "{name}"
            );
            assert!(
                w.message()
                    .contains(&format!("runtime `{rt}` is not available in this build")),
                "{name}: {w}"
            );
            assert!(w.location().unwrap().line.is_some(), "{name}: {w} has no line");
        }
        match loader().load_cluster_file(&file) {
            Ok(_) => assert!(listed.is_empty(), "{name}: loaded with runtimes {listed:?}"),
            Err(e) => {
                assert!(!listed.is_empty(), "{name}: {e}");
                assert_eq!(
                    e.location().unwrap().path,
                    format!("runtime.types[{}]", listed[0].0),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn defaults_fill_what_a_config_leaves_out() {
    // Only worker.default and its count: the head's type, both node_configs and the
    // head_node_type are the virtual provider's defaults.
    let c = loader()
        .check_cluster_file(dir().join("virtual/workers-only-runtimes.yaml"))
        .unwrap()
        .config;
    assert_eq!(c.min_workers_of("worker.default"), 4);
    assert_eq!(
        c.available_node_types["head.default"].node_config["instance_type"]["CPU"],
        1
    );
    // A node_config the user gives is merged over the defaults', key by key.
    let c = loader()
        .load_cluster_file(dir().join("virtual/data-disks.yaml"))
        .unwrap();
    let w = &c.available_node_types["worker.default"].node_config;
    assert_eq!(w["data_disks"].as_array().unwrap().len(), 2);
    assert_eq!(w["instance_type"]["memory"], "1G");
    let c = loader()
        .check_cluster_file(dir().join("virtual/disks-runtimes.yaml"))
        .unwrap()
        .config;
    let h = &c.available_node_types["head.default"].node_config;
    assert_eq!(h["data_disks"], serde_json::json!(["/mnt/cloudtik"]));
    assert_eq!(h["instance_type"]["CPU"], 1, "the defaults' instance type stays");
    // Templates and defaults together: aws/standard's instance type, the user's count.
    let c = loader()
        .load_cluster_file(dir().join("aws/standard.yaml"))
        .unwrap();
    assert_eq!(c.min_workers_of("worker.default"), 2);
    assert_eq!(c.provider.extra["region"], "eu-west-1");
}

#[test]
fn local_configs_use_the_default_workspace() {
    for f in ["local/hosts.yaml", "local/instance-types.yaml"] {
        let c = loader().load_cluster_file(dir().join(f)).unwrap();
        assert_eq!(c.workspace_name, "default", "{f}");
    }
    // A name the config gives wins.
    let c = loader()
        .load_cluster_str(
            "c.yaml",
            "cluster_name: c\nworkspace_name: mine\nprovider:\n  type: local\n  nodes:\n    - ip: 10.0.0.1\n",
        )
        .unwrap();
    assert_eq!(c.workspace_name, "mine");
    // Other providers keep asking for one.
    let e = loader()
        .load_cluster_str("c.yaml", "cluster_name: c\nprovider: {type: virtual}\n")
        .unwrap_err();
    assert_eq!(e.location().unwrap().path, "workspace_name");
}

#[test]
fn an_undefined_local_instance_type_is_a_warning_then_refused_by_load() {
    // CloudTik's own local example names `my_instance_type` but defines
    // `your_instance_type`: CloudTik accepts it and fails when the cluster starts.
    let yaml = "cluster_name: c\nprovider:\n  type: local\n  nodes:\n    - ip: node_1_ip\n      instance_type: mine\n\
                \x20 instance_types:\n    yours: {CPU: 4, memory: 4G}\n\
                available_node_types:\n  worker.default:\n    node_config:\n      instance_type: mine\n    min_workers: 1\n";
    let checked = loader().check_cluster_str("c.yaml", yaml).unwrap();
    let paths: Vec<&str> = checked
        .warnings
        .iter()
        .map(|w| w.location().unwrap().path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "provider.nodes[0].instance_type",
            "available_node_types.\"worker.default\".node_config.instance_type"
        ]
    );
    assert!(
        checked.warnings[0].message().contains("default, yours"),
        "{}",
        checked.warnings[0]
    );
    let e = loader().load_cluster_str("c.yaml", yaml).unwrap_err();
    assert_eq!(e.location().unwrap().path, "provider.nodes[0].instance_type");
    assert_eq!(e.location().unwrap().line, Some(6));
}

#[test]
fn default_node_types_join_a_config_that_names_others_and_say_so() {
    // CloudTik's semantics: the defaults' head.default and worker.default stay.
    let yaml = "cluster_name: c\nworkspace_name: w\nprovider: {type: aws, region: us-east-1}\n\
                available_node_types:\n  head.big:\n    node_config: {InstanceType: m5.4xlarge}\n\
                \x20 worker.big:\n    min_workers: 2\n    node_config: {InstanceType: m5.4xlarge}\n\
                head_node_type: head.big\n";
    let checked = loader().check_cluster_str("cluster.yaml", yaml).unwrap();
    let c = &checked.config;
    let mut names: Vec<&str> = c.available_node_types.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["head.big", "head.default", "worker.big", "worker.default"]
    );
    assert_eq!(c.head_node_type, "head.big");
    assert_eq!(
        c.min_workers_of("worker.default"),
        1,
        "the aws defaults' min_workers"
    );
    let sources = checked.merged.node_type_sources();
    assert_eq!(sources["worker.big"], ["cluster.yaml"]);
    assert_eq!(sources["worker.default"], ["<built-in template aws/defaults>"]);
    assert!(
        checked
            .merged
            .is_provider_defaults("<built-in template aws/defaults>")
    );
    assert!(!checked.merged.is_provider_defaults("cluster.yaml"));
    // A template in between is a source too, after the defaults and before the file.
    let c = loader()
        .check_cluster_file(dir().join("aws/standard.yaml"))
        .unwrap();
    let s = c.merged.node_type_sources();
    assert_eq!(
        s["worker.default"].first().unwrap(),
        "<built-in template aws/defaults>"
    );
    assert!(
        s["worker.default"]
            .iter()
            .any(|x| x == "<built-in template aws/standard>"),
        "{s:?}"
    );
    assert!(s["worker.default"].last().unwrap().ends_with("aws/standard.yaml"));
}

#[test]
fn container_mode_needs_an_image_per_node_type() {
    let base = "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\n";
    let e = loader()
        .check_cluster_str("c.yaml", &format!("{base}docker:\n  enabled: true\n"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert_eq!(e.location().unwrap().path, "docker.image");
    assert!(e.message().contains("needs the image"), "{e}");
    let e = loader()
        .check_cluster_str(
            "c.yaml",
            &format!("{base}available_node_types:\n  worker.default:\n    docker: {{enabled: true}}\n"),
        )
        .unwrap_err();
    assert_eq!(
        e.location().unwrap().path,
        "available_node_types.\"worker.default\".docker.image"
    );
    // One node type in a container, with its own image; the head on its host.
    let c = loader()
        .load_cluster_str(
            "c.yaml",
            &format!(
                "{base}docker:\n  worker_run_options: [--shm-size=1g]\navailable_node_types:\n  worker.default:\n    \
                 docker: {{enabled: true, image: img}}\n"
            ),
        )
        .unwrap();
    assert!(c.container_mode("worker.default") && !c.container_mode("head.default"));
    let w = c.docker_for("worker.default").unwrap();
    assert_eq!(w.image.as_deref(), Some("img"));
    assert_eq!(w.worker_run_options, vec!["--shm-size=1g"]);
    let spec = cloudtik_core::cluster::container::container_spec(
        &c,
        cloudtik_core::NodeKind::Worker,
        "worker.default",
    )
    .unwrap()
    .unwrap();
    assert!(spec.run_command().contains("--shm-size=1g") && spec.run_command().contains(" img "));
    assert!(
        cloudtik_core::cluster::container::container_spec(&c, cloudtik_core::NodeKind::Head, "head.default")
            .unwrap()
            .is_none()
    );
    // A node type's docker key of the wrong shape names its path.
    let e = loader()
        .check_cluster_str(
            "c.yaml",
            &format!("{base}available_node_types:\n  worker.default:\n    docker: {{run_options: 3}}\n"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("worker.default"), "{e}");
    // false, or an image alone, is fine (CloudTik's examples set docker.image).
    loader()
        .load_cluster_str(
            "c.yaml",
            &format!("{base}docker:\n  enabled: false\n  image: x\n"),
        )
        .unwrap();
}

#[test]
fn a_template_of_another_provider_is_refused() {
    let e = loader()
        .load_cluster_str(
            "c.yaml",
            "from: aws/standard\ncluster_name: c\nworkspace_name: w\nprovider:\n  type: gcp\n  region: us-central1\n  availability_zone: us-central1-a\n  project_id: p\n",
        )
        .unwrap_err();
    assert_eq!(e.location().unwrap().path, "from");
    assert_eq!(e.location().unwrap().line, Some(1));
    assert!(e.message().contains("is for provider `aws`"), "{e}");
    assert!(e.message().contains("`gcp`"), "{e}");
}

#[test]
fn runtimes_in_node_types_are_warned_once_and_kept() {
    let yaml = "cluster_name: c\nworkspace_name: w\nprovider: {type: virtual}\nruntime:\n  types: [hdfs, yarn]\n\
                available_node_types:\n  worker.default:\n    runtime:\n      types: [yarn]\n";
    let checked = loader().check_cluster_str("c.yaml", yaml).unwrap();
    assert_eq!(checked.warnings.len(), 2, "{:?}", checked.warnings);
    assert_eq!(checked.config.runtime.types, ["hdfs", "yarn"]);
    let w = &checked.config.available_node_types["worker.default"];
    assert_eq!(w.runtime.as_ref().unwrap().types, ["yarn"]);
}
