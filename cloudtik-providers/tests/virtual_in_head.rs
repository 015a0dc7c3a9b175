//! The virtual provider used from inside a head container, as the head's controller will
//! use it: the head gets the host's Docker socket and the cluster's state folder (same
//! path) mounted, and starts a sibling worker through the socket; the host then sees the
//! worker and the tags the head set (the overlay is shared).
//!
//! This file is its own test binary (`harness = false`). Run normally, it launches a head
//! container with this very binary mounted as the node binary
//! (`provider.node_binary`), then runs it inside the head with `CLOUDTIK_IN_HEAD_TEST=1`,
//! where it acts as the controller.

mod common;

use cloudtik_core::node::tags;
use cloudtik_core::{NodeKind, NodeProvider, NodeProviderExt, NodeStatus, Tags, WorkspaceProvider};
use cloudtik_providers::virtual_provider::{
    DOCKER_SOCKET_IN_HEAD, NODE_BINARY_IN_NODE, VirtualNodeProvider, VirtualSettings,
};
use common::{TestEnv, docker, request, test_image};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("CLOUDTIK_IN_HEAD_TEST").is_ok_and(|v| v == "1") {
        rt.block_on(in_the_head());
    } else {
        rt.block_on(on_the_host());
        println!("virtual_in_head: passed");
    }
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// Inside the head container: list the cluster, launch a worker, tag it.
async fn in_the_head() {
    let settings = VirtualSettings::default()
        .with_docker_socket(DOCKER_SOCKET_IN_HEAD)
        .with_state_dir(var("TEST_STATE_DIR"))
        .with_image(var("TEST_IMAGE"))
        .with_stop_timeout_seconds(0);
    let provider = VirtualNodeProvider::new(&var("TEST_WORKSPACE"), &var("TEST_CLUSTER"), settings).unwrap();
    let head = provider.head_node().await.unwrap().expect("the head sees itself");
    assert_eq!(head.id, var("TEST_HEAD"));
    let worker = provider
        .create_nodes(&request(NodeKind::Worker, 1, serde_json::json!({})))
        .await
        .unwrap()
        .nodes
        .remove(0);
    let mut up = Tags::new();
    up.insert(tags::NODE_STATUS.into(), NodeStatus::UpToDate.as_str().into());
    provider.set_tags(&worker.id, up).await.unwrap();
    println!("WORKER={}", worker.id);
}

/// On the host: a head with the socket, the binary run inside it, and the result seen from here.
async fn on_the_host() {
    let Some(mut env) = TestEnv::new() else { return };
    let exe = std::env::current_exe().unwrap();
    env.settings = env.settings.clone().with_node_binary(&exe);
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("inhead");
    let head = provider
        .create_nodes(&request(NodeKind::Head, 1, serde_json::json!({})))
        .await
        .unwrap()
        .nodes
        .remove(0);
    let out = docker(&[
        "exec",
        "-e",
        "CLOUDTIK_IN_HEAD_TEST=1",
        "-e",
        &format!("TEST_WORKSPACE={}", env.workspace),
        "-e",
        "TEST_CLUSTER=inhead",
        "-e",
        &format!("TEST_STATE_DIR={}", env.state.path().display()),
        "-e",
        &format!("TEST_IMAGE={}", test_image()),
        "-e",
        &format!("TEST_HEAD={}", head.id),
        &head.id,
        NODE_BINARY_IN_NODE,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the provider failed inside the head:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WORKER="))
        .expect("the head printed its worker")
        .to_string();
    let nodes = provider.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let seen = nodes
        .iter()
        .find(|n| n.id == worker)
        .expect("the host sees the head's worker");
    assert_eq!(seen.kind(), Some(NodeKind::Worker));
    assert_eq!(
        seen.status(),
        Some(NodeStatus::UpToDate),
        "the head's tag update is not visible on the host"
    );
    // Only the head has the socket.
    let worker_binds = common::docker_ok(&["inspect", "-f", "{{json .HostConfig.Binds}}", &worker]);
    assert!(!worker_binds.contains("docker.sock"), "{worker_binds}");
    let ids: Vec<String> = nodes.into_iter().map(|n| n.id).collect();
    provider.terminate_nodes(&ids).await.unwrap();
    env.delete_and_check().await;
}
