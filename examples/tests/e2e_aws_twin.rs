//! A whole cluster on AWS, end to end, on this machine: the `cloudtik` CLI against the
//! AWS cloud twin (`tests/twin/`: moto behind a proxy that makes every EC2 instance a
//! container of a stock Debian image with sshd and sudo only, at its private IP).
//!
//! `workspace create` -> `start` (the head is bootstrapped over SSH: this build's
//! `cloudtik-node` uploaded, `redis-server` from Debian's packages; then set up with the
//! Spark runtime) -> the head's controller launches the minimum worker through the twin's
//! EC2 API, bootstraps it with its own program, sets it up, and it heartbeats and
//! registers with the Spark master -> `scale --workers 2` -> a worker instance
//! terminated behind the cluster's back (EC2 `TerminateInstances`) is replaced ->
//! `start` again with an older `cloudtik-node` put on the head: it is upgraded ->
//! `stop` -> `workspace delete` -> no instance, container, VPC or key pair is left
//! running.
//!
//! The instances share the package cache of the end-to-end tests
//! (`~/.cloudtik/package-cache`, as the virtual provider's nodes do), so a warm run
//! downloads nothing. Needs Docker, debootstrap (the twin image) and moto; without them
//! the test fails under `CI=true` and is skipped (saying so) otherwise.
#![cfg(feature = "aws")]

mod twin;

use std::time::Duration;

use serde_json::Value;
use twin::aws::{AwsTwin, AwsTwinOptions};
use twin::cli::{AMI, Cli, aws_provider, live_workers, nodes, shared_package_cache, wait_until};

/// The JSON of `http://host:port/path`, if it answers.
fn get_json(host: &str, port: u16, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{host}:{port}").parse().ok()?, Duration::from_secs(3))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Spark workers ALIVE at the master on the head.
fn spark_workers(head_ip: &str) -> Vec<String> {
    get_json(head_ip, 8080, "/json/")
        .and_then(|m| m["workers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|w| w["state"] == "ALIVE")
        .map(|w| w["host"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spark_cluster_on_the_aws_twin_from_stock_images() {
    let options = AwsTwinOptions {
        package_cache: Some(shared_package_cache()),
        ..AwsTwinOptions::default()
    };
    let Some(twin) = AwsTwin::start(None, options).await else {
        return;
    };
    let working_vpc = twin.create_working_vpc().await;
    let cli = Cli::new(twin.endpoint_url());
    let id = std::process::id() % 100_000;
    let ws = format!("twin-ws-{id}");
    let provider = aws_provider(&cli.endpoint, &working_vpc);
    let ws_file = cli.file("workspace.yaml", &format!("workspace_name: {ws}\n{provider}"));
    let cluster_file = cli.file(
        "cluster.yaml",
        &format!(
            "cluster_name: twin{id}\nworkspace_name: {ws}\n{provider}auth:\n  ssh_user: ubuntu\n\
             max_workers: 3\nidle_timeout_minutes: 10\nhead_node_type: head.default\n\
             available_node_types:\n  head.default:\n    node_config: {{InstanceType: t3.large, ImageId: {AMI}}}\n\
             \x20 worker.default:\n    min_workers: 1\n    max_workers: 3\n    node_config: {{InstanceType: t3.large, ImageId: {AMI}}}\n\
             runtime:\n  types: [spark]\n  spark:\n    executor_memory: 512m\n"
        ),
    );
    let ws_path = ws_file.to_str().unwrap();
    let file = cluster_file.to_str().unwrap();

    cli.run_ok(&["workspace", "create", ws_path, "--yes"]);

    // A stock image becomes the head: bootstrapped, set up, services up.
    let (code, out, err) = cli.run(&["start", file, "--yes"]);
    assert_eq!(
        code,
        0,
        "start failed:\n{out}\n{err}\ntwin failures: {:?}",
        twin.failures()
    );
    let status = cli.status(&cluster_file);
    let head = nodes(&status)
        .into_iter()
        .find(|n| n["kind"] == "head")
        .unwrap_or_else(|| panic!("no head in {status}"));
    let head_ip = head["internal_ip"].as_str().unwrap_or_default().to_string();
    let (_, version, _) = cli.run(&["exec", file, "cloudtik-node --version; command -v redis-server"]);
    assert!(
        version.contains("cloudtik-node") && version.contains("redis-server"),
        "{version}"
    );

    // The controller launches the minimum worker through the twin's EC2 API; it is
    // bootstrapped with the head's program, heartbeats, and registers with Spark.
    let first = wait_until(
        &cli,
        &cluster_file,
        "the first worker heartbeats",
        Duration::from_secs(420),
        || {
            let w = live_workers(&cli.status(&cluster_file), None);
            (w.len() == 1).then(|| w[0].clone())
        },
    );
    wait_until(
        &cli,
        &cluster_file,
        "the Spark master shows the worker",
        Duration::from_secs(300),
        || (spark_workers(&head_ip).len() == 1).then_some(()),
    );

    // scale: two workers.
    cli.run_ok(&["scale", file, "--workers", "2"]);
    wait_until(
        &cli,
        &cluster_file,
        "two workers heartbeat",
        Duration::from_secs(600),
        || (live_workers(&cli.status(&cluster_file), None).len() == 2).then_some(()),
    );

    // A worker instance terminated behind the cluster's back is replaced.
    twin.raw_client()
        .await
        .terminate_instances()
        .instance_ids(&first.0)
        .send()
        .await
        .expect("TerminateInstances");
    assert!(
        !twin.instances().iter().any(|i| i.id == first.0),
        "the terminated instance's container is gone"
    );
    let workers = wait_until(
        &cli,
        &cluster_file,
        "a replacement worker heartbeats",
        Duration::from_secs(600),
        || {
            let w = live_workers(&cli.status(&cluster_file), None);
            (w.len() == 2 && w.iter().all(|(i, _)| *i != first.0)).then_some(w)
        },
    );
    // The master shows exactly the live workers (the terminated one's registration
    // times out; moto may give the replacement the same IP).
    wait_until(
        &cli,
        &cluster_file,
        "the Spark master shows the two live workers",
        Duration::from_secs(300),
        || {
            let mut alive = spark_workers(&head_ip);
            alive.sort();
            let mut ips: Vec<String> = workers.iter().map(|(_, ip)| ip.clone()).collect();
            ips.sort();
            (alive == ips).then_some(())
        },
    );

    // An older cloudtik-node on the head is upgraded at the next start.
    cli.run_ok(&[
        "exec",
        file,
        "printf '#!/bin/sh\\necho cloudtik-node 0.0.1\\n' > /tmp/old && sudo install -m 0755 /tmp/old /usr/local/bin/cloudtik-node.old \
         && sudo cp /usr/local/bin/cloudtik-node.old /usr/local/bin/cloudtik-node.stage && sudo mv /usr/local/bin/cloudtik-node.stage /usr/local/bin/cloudtik-node",
    ]);
    let (_, old, _) = cli.run(&["exec", file, "cloudtik-node --version"]);
    assert!(old.contains("0.0.1"), "{old}");
    let (code, out, err) = cli.run(&["start", file, "--yes"]);
    assert_eq!(code, 0, "the second start failed:\n{out}\n{err}");
    let (_, new, _) = cli.run(&["exec", file, "cloudtik-node --version"]);
    assert!(!new.contains("0.0.1") && new.contains("cloudtik-node"), "{new}");

    // stop, then workspace delete: nothing is left.
    cli.run_ok(&["stop", file, "--yes"]);
    wait_until(
        &cli,
        &cluster_file,
        "every instance's container is gone",
        Duration::from_secs(120),
        || twin.instances().is_empty().then_some(()),
    );
    cli.run_ok(&["workspace", "delete", ws_path, "--yes"]);
    let ec2 = twin.raw_client().await;
    let left = ec2.describe_instances().send().await.unwrap();
    let running: Vec<String> = left
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
        .map(|i| i.instance_id().unwrap_or_default().to_string())
        .collect();
    assert!(running.is_empty(), "instances left: {running:?}");
    let vpcs = ec2.describe_vpcs().send().await.unwrap();
    let ours: Vec<String> = vpcs
        .vpcs()
        .iter()
        .filter(|v| {
            v.tags()
                .iter()
                .any(|t| t.value().is_some_and(|v| v.contains(&ws)))
        })
        .map(|v| v.vpc_id().unwrap_or_default().to_string())
        .collect();
    assert!(ours.is_empty(), "the workspace's VPC is left: {ours:?}");
    assert!(twin.failures().is_empty(), "{:?}", twin.failures());
    twin.cleanup().expect("the twin cleans up");
    drop(head);
}
