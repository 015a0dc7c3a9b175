//! The virtual provider against the real local Docker engine.
//!
//! The nodes run a tiny image the harness builds in a second with `docker import` from a
//! root filesystem holding `/bin/sleep` and its shared libraries (not the debootstrap
//! node image, so the tests stay fast); the image is kept between runs, tagged by a
//! hash of the `sleep` binary. Every test uses its own workspace name and state folder,
//! removes its containers and network, and checks by listing that nothing is left.
//!
//! Without a reachable Docker the tests are skipped with a message, unless `CI=true`:
//! then they fail.
#![cfg(feature = "virtual")]

mod common;

use common::{
    FILLER_LABEL, TestEnv, container_id, docker, docker_ok, node_config, request, small_subnet, test_image,
};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cloudtik_core::node::tags;
use cloudtik_core::provider::new_launch_token;
use cloudtik_core::testing::conformance::{ConformanceConfig, run_all};
use cloudtik_core::{
    DeleteWorkspaceOptions, ErrorKind, NodeKind, NodeProvider, NodeProviderExt, NodeStatus, Tags,
    WorkspaceExistence, WorkspaceProvider,
};
use cloudtik_providers::virtual_provider::{VirtualNodeProvider, network_name};
use serde_json::json;

#[tokio::test]
async fn conformance_against_the_docker_engine() {
    let Some(env) = TestEnv::with_subnet(Some(small_subnet())) else {
        return;
    };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("conformance");
    let other = env.provider("conformance-other");

    // The partial launch: fill the network's addresses with containers that are not
    // nodes, leaving exactly one free, so a launch of 3 gets one node and a capacity
    // shortfall from Docker's address allocator.
    let fillers = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook_fillers = fillers.clone();
    let network = network_name(&env.workspace);
    let workspace = env.workspace.clone();
    let image = test_image();
    let config = ConformanceConfig::new("worker.default", node_config())
        .with_missing_node_id(format!("{}-conformance-00000000", env.workspace))
        .with_partial_launch(move || {
            let fillers = hook_fillers.clone();
            let (network, workspace, image) = (network.clone(), workspace.clone(), image.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    for i in 0.. {
                        let name = format!("{workspace}-filler-{i}");
                        let out = docker(&[
                            "run",
                            "-d",
                            "--name",
                            &name,
                            "--network",
                            &network,
                            "--label",
                            &format!("{FILLER_LABEL}={workspace}"),
                            &image,
                        ]);
                        fillers.lock().unwrap().push(name.clone());
                        if !out.status.success() {
                            let err = String::from_utf8_lossy(&out.stderr).to_string();
                            assert!(
                                err.contains("no available IPv4 addresses"),
                                "filler {name} failed: {err}"
                            );
                            docker_ok(&["rm", "-f", &name]);
                            let last = format!("{workspace}-filler-{}", i - 1);
                            docker_ok(&["rm", "-f", &last]);
                            break;
                        }
                        assert!(i < 64, "the /29 network took 64 containers");
                    }
                })
                .await
                .unwrap();
            })
        });
    let report = run_all(&provider, Some(&other), &config).await;
    let names = fillers.lock().unwrap().clone();
    for name in names {
        let _ = docker(&["rm", "-f", &name]);
    }
    println!("{report}");
    report.assert_passed();
    assert!(
        matches!(
            report.outcome("partial_launch"),
            Some(cloudtik_core::testing::conformance::CheckOutcome::Passed)
        ),
        "the partial launch check did not run: {report}"
    );
    assert!(provider.list_nodes(&Tags::new()).await.unwrap().is_empty());
    env.delete_and_check().await;
}

#[tokio::test]
async fn workspace_lifecycle() {
    let Some(env) = TestEnv::with_subnet(Some(small_subnet())) else {
        return;
    };
    let ws = env.workspace();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    let e = ws.workspace_info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    ws.create_workspace().await.unwrap();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    ws.create_workspace().await.unwrap(); // idempotent
    ws.update_workspace().await.unwrap();
    let info = ws.workspace_info().await.unwrap();
    let network_id = info["network_id"].as_str().unwrap();
    assert_eq!(network_id, container_id(&network_name(&env.workspace)));
    assert_eq!(info["subnet"].as_str(), env.settings.subnet.as_deref());
    assert!(
        info["gateway"].as_str().is_some_and(|g| g.starts_with("10.213.")),
        "{info}"
    );
    assert_eq!(
        info["bridge_interface"].as_str().map(str::len),
        Some(15),
        "{info}"
    );
    assert_eq!(ws.list_clusters().await.unwrap(), Vec::<String>::new());
    ws.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    ws.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap(); // again
    env.assert_nothing_left();
}

#[tokio::test]
async fn delete_is_refused_while_a_cluster_has_containers() {
    let Some(env) = TestEnv::new() else { return };
    let ws = env.workspace();
    ws.create_workspace().await.unwrap();
    let provider = env.provider("busy");
    let nodes = provider
        .create_nodes(&request(NodeKind::Worker, 1, node_config()))
        .await
        .unwrap()
        .nodes;
    assert_eq!(ws.list_clusters().await.unwrap(), vec!["busy".to_string()]);
    let e = ws
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("busy"), "{e}");
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    provider.terminate_node(&nodes[0].id).await.unwrap();
    assert_eq!(ws.list_clusters().await.unwrap(), Vec::<String>::new());
    env.delete_and_check().await;
}

#[tokio::test]
async fn the_tag_overlay_survives_a_new_provider_and_filters_see_it() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("overlay");
    let outcome = provider
        .create_nodes(&request(NodeKind::Worker, 2, node_config()))
        .await
        .unwrap();
    assert_eq!(outcome.nodes.len(), 2);
    let (a, b) = (outcome.nodes[0].id.clone(), outcome.nodes[1].id.clone());
    for n in &outcome.nodes {
        assert!(
            n.id.starts_with(&format!("{}-overlay-", env.workspace)),
            "{}",
            n.id
        );
        assert_eq!(n.id.len(), env.workspace.len() + "-overlay-".len() + 8);
        assert!(n.internal_ip.is_some(), "{n:?}");
        assert_eq!(n.instance_type.as_deref(), Some("0.5CPU-64M"));
    }
    let mut up = Tags::new();
    up.insert(tags::NODE_STATUS.into(), NodeStatus::UpToDate.as_str().into());
    provider.set_tags(&a, up.clone()).await.unwrap();
    assert!(provider.tag_overlay_path().exists());

    let fresh = env.provider("overlay");
    let listed = fresh.list_nodes(&up).await.unwrap();
    assert_eq!(listed.iter().map(|n| &n.id).collect::<Vec<_>>(), vec![&a]);
    assert_eq!(listed[0].status(), Some(NodeStatus::UpToDate));
    let mut uninit = Tags::new();
    uninit.insert(
        tags::NODE_STATUS.into(),
        NodeStatus::Uninitialized.as_str().into(),
    );
    let listed = fresh.list_nodes(&uninit).await.unwrap();
    assert_eq!(listed.iter().map(|n| &n.id).collect::<Vec<_>>(), vec![&b]);
    // The label is fixed at creation: Docker still has the launch value.
    let label = docker_ok(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"cloudtik-node-status\"}}",
        &a,
    ]);
    assert_eq!(label, "uninitialized");
    // Setting a tag back to its label value removes the overlay entry.
    fresh.set_tags(&a, uninit.clone()).await.unwrap();
    assert!(!fresh.tag_overlay_path().exists());
    assert_eq!(fresh.list_nodes(&uninit).await.unwrap().len(), 2);

    fresh.terminate_nodes(&[a, b]).await.unwrap();
    assert!(fresh.list_nodes(&Tags::new()).await.unwrap().is_empty());
    env.delete_and_check().await;
}

#[tokio::test]
async fn a_container_removed_from_outside_leaves_the_list() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("killed");
    let nodes = provider
        .create_nodes(&request(NodeKind::Worker, 2, node_config()))
        .await
        .unwrap()
        .nodes;
    let (a, b) = (nodes[0].id.clone(), nodes[1].id.clone());
    let a_id = container_id(&a);
    let mut t = Tags::new();
    t.insert(tags::LAST_ERROR.into(), "none".into());
    provider.set_tags(&a, t.clone()).await.unwrap();
    provider.set_tags(&b, t.clone()).await.unwrap();
    assert!(
        std::fs::read_to_string(provider.tag_overlay_path())
            .unwrap()
            .contains(&a_id)
    );

    docker_ok(&["rm", "-f", &a]);
    let listed = provider.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(listed.iter().map(|n| &n.id).collect::<Vec<_>>(), vec![&b]);
    // The unfiltered list dropped the dead container's overlay entry.
    let overlay = std::fs::read_to_string(provider.tag_overlay_path()).unwrap();
    assert!(!overlay.contains(&a_id), "{overlay}");
    assert!(overlay.contains(&container_id(&b)), "{overlay}");
    let e = provider.set_tags(&a, t).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(&a), "{e}");
    provider.terminate_node(&a).await.unwrap();
    provider.terminate_node(&b).await.unwrap();
    assert!(!provider.tag_overlay_path().exists());
    env.delete_and_check().await;
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error_and_leaves_nothing() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("noimage");
    let missing = format!("cloudtik-test-missing:{}", &new_launch_token()[..8]);
    let e = provider
        .create_nodes(&request(
            NodeKind::Worker,
            2,
            json!({"image": missing, "data_disks": 1}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let text = e.to_string();
    assert!(
        text.contains(&missing) && text.contains("pull or build"),
        "{text}"
    );
    // The node image of this build names the script that builds it.
    let e = provider
        .create_nodes(&request(
            NodeKind::Worker,
            1,
            json!({"image": "cloudtik-node:000000000000"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("scripts/build-node-image.sh"), "{e}");
    assert_eq!(env.leftover_containers(), Vec::<String>::new());
    assert!(!env.state_dir().join("noimage").join("disks").exists());
    env.delete_and_check().await;
}

#[tokio::test]
async fn an_instance_type_larger_than_the_machine_is_refused() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("huge");
    let e = provider
        .create_nodes(&request(
            NodeKind::Worker,
            1,
            json!({"instance_type": {"CPU": 4096}}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Capacity);
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("asks for 4096 CPUs"), "{e}");
    let e = provider
        .create_nodes(&request(
            NodeKind::Worker,
            1,
            json!({"instance_type": {"CPU": 1, "memory": "100T"}}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Capacity);
    assert!(e.to_string().contains("GiB of memory"), "{e}");
    assert_eq!(env.leftover_containers(), Vec::<String>::new());
    env.delete_and_check().await;
}

#[tokio::test]
async fn launching_without_the_workspace_says_to_create_it() {
    let Some(env) = TestEnv::new() else { return };
    let provider = env.provider("nows");
    let e = provider
        .create_nodes(&request(NodeKind::Worker, 1, node_config()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("workspace create"), "{e}");
    assert_eq!(env.leftover_containers(), Vec::<String>::new());
}

#[tokio::test]
async fn heads_get_the_docker_socket_and_data_disks_are_host_folders() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("disks");
    let head = provider
        .create_nodes(&request(NodeKind::Head, 1, json!({"data_disks": 2})))
        .await
        .unwrap()
        .nodes
        .remove(0);
    let worker = provider
        .create_nodes(&request(NodeKind::Worker, 1, json!({"data_disks": 1})))
        .await
        .unwrap()
        .nodes
        .remove(0);
    let binds = |name: &str| -> BTreeSet<String> {
        serde_json::from_str::<Vec<String>>(&docker_ok(&[
            "inspect",
            "-f",
            "{{json .HostConfig.Binds}}",
            name,
        ]))
        .unwrap_or_default()
        .into_iter()
        .collect()
    };
    let state = provider.cluster_state_dir();
    let head_binds = binds(&head.id);
    let socket = format!("{}:/var/run/docker.sock", env.settings.docker_socket.display());
    assert!(head_binds.contains(&socket), "{head_binds:?}");
    assert!(
        head_binds.contains(&format!("{0}:{0}", state.display())),
        "{head_binds:?}"
    );
    let disk1 = state.join("disks/data_disk_1").join(&head.id);
    let disk2 = state.join("disks/data_disk_2").join(&head.id);
    assert!(
        head_binds.contains(&format!("{}:/mnt/cloudtik/data_disk_1", disk1.display())),
        "{head_binds:?}"
    );
    assert!(disk1.is_dir() && disk2.is_dir());
    let worker_binds = binds(&worker.id);
    assert!(
        !worker_binds.iter().any(|b| b.contains("docker.sock")),
        "{worker_binds:?}"
    );
    let worker_disk = state.join("disks/data_disk_1").join(&worker.id);
    std::fs::write(worker_disk.join("data"), b"x").unwrap();
    // Limits come from the instance type only when it is set.
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", &worker.id]),
        "0"
    );

    provider
        .terminate_nodes(&[head.id.clone(), worker.id.clone()])
        .await
        .unwrap();
    assert!(!disk1.exists() && !disk2.exists() && !worker_disk.exists());

    // With permanent_data_volumes the folders outlive the node (here: until the
    // workspace, whose state folder holds numbered disks, is deleted).
    let keep = VirtualNodeProvider::new(
        &env.workspace,
        "disks",
        env.settings.clone().with_permanent_data_volumes(true),
    )
    .unwrap();
    let kept = keep
        .create_nodes(&request(NodeKind::Worker, 1, json!({"data_disks": 1})))
        .await
        .unwrap()
        .nodes
        .remove(0);
    keep.terminate_node(&kept.id).await.unwrap();
    assert!(state.join("disks/data_disk_1").join(&kept.id).is_dir());
    env.delete_and_check().await;
}

#[tokio::test]
async fn limits_and_idempotent_retries_reach_docker() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let provider = env.provider("limits");
    let req = request(NodeKind::Worker, 2, node_config());
    let first = provider.create_nodes(&req).await.unwrap();
    assert_eq!(first.nodes.len(), 2);
    let name = &first.nodes[0].id;
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", name]),
        "500000000"
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", name]),
        (64u64 << 20).to_string()
    );
    // One of the two is removed from outside: the retry with the same token makes one
    // more, never a third.
    docker_ok(&["rm", "-f", name]);
    let retry = provider.create_nodes(&req).await.unwrap();
    assert_eq!(retry.nodes.len(), 2);
    assert!(retry.nodes.iter().any(|n| n.id == first.nodes[1].id));
    let again = provider.create_nodes(&req).await.unwrap();
    let ids =
        |o: &cloudtik_core::LaunchOutcome| o.nodes.iter().map(|n| n.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&again), ids(&retry));
    // Two concurrent calls with one token (a CLI run again while the first still runs)
    // create 3 nodes, not 6.
    let req3 = request(NodeKind::Worker, 3, node_config());
    let other = env.provider("limits");
    let (x, y) = tokio::join!(provider.create_nodes(&req3), other.create_nodes(&req3));
    assert_eq!(ids(&x.unwrap()), ids(&y.unwrap()));
    let mut by_token = Tags::new();
    by_token.insert(tags::LAUNCH_TOKEN.into(), req3.token.clone());
    assert_eq!(provider.list_nodes(&by_token).await.unwrap().len(), 3);
    let all: Vec<String> = provider
        .list_nodes(&Tags::new())
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    provider.terminate_nodes(&all).await.unwrap();
    provider.terminate_nodes(&all).await.unwrap();
    env.delete_and_check().await;
}

/// Whether a container (by name) exists, in any state.
fn container_exists(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.Id}}", name]).status.success()
}

#[tokio::test]
async fn a_container_stopped_from_outside_is_removed_after_the_grace() {
    let Some(env) = TestEnv::new() else { return };
    env.workspace().create_workspace().await.unwrap();
    let grace = std::time::Duration::from_secs(3);
    let settings = env.settings.clone().with_exited_node_grace(grace);
    let provider = VirtualNodeProvider::new(&env.workspace, "stopped", settings.clone()).unwrap();
    let nodes = provider
        .create_nodes(&request(
            NodeKind::Worker,
            3,
            json!({"instance_type": {"CPU": 0.5, "memory": "64M"}, "data_disks": 1}),
        ))
        .await
        .unwrap()
        .nodes;
    let (a, b, c) = (nodes[0].id.clone(), nodes[1].id.clone(), nodes[2].id.clone());
    let a_id = container_id(&a);
    let a_disk = env.state_dir().join("stopped/disks/data_disk_1").join(&a);
    assert!(a_disk.is_dir(), "{}", a_disk.display());
    let mut t = Tags::new();
    t.insert(tags::LAST_ERROR.into(), "none".into());
    provider.set_tags(&a, t).await.unwrap();

    // Killed from outside: Docker keeps it (restart policy unless-stopped, no auto-remove)
    // as an exited container. Fresh: not a node, but not removed either.
    docker_ok(&["kill", &a]);
    let listed = provider.list_nodes(&Tags::new()).await.unwrap();
    let ids: BTreeSet<&String> = listed.iter().map(|n| &n.id).collect();
    assert_eq!(ids, BTreeSet::from([&b, &c]));
    assert!(container_exists(&a), "a fresh exited container was removed");
    // Older than the grace: the next listing removes it like a terminate.
    tokio::time::sleep(grace + std::time::Duration::from_millis(500)).await;
    assert_eq!(provider.list_nodes(&Tags::new()).await.unwrap().len(), 2);
    assert!(
        !container_exists(&a),
        "an exited container older than the grace stayed"
    );
    assert!(!a_disk.exists(), "its data disk stayed");
    let overlay = std::fs::read_to_string(provider.tag_overlay_path()).unwrap_or_default();
    assert!(!overlay.contains(&a_id), "{overlay}");

    // A container that restarts (stopped, then started: exited for a moment) is never
    // removed by listings meanwhile, even with a grace this short.
    let lister = {
        let provider = provider.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                provider.list_nodes(&Tags::new()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    docker_ok(&["restart", "-t", "0", &b]);
    lister.await.unwrap();
    assert!(container_exists(&b));
    let listed = provider.list_nodes(&Tags::new()).await.unwrap();
    assert!(listed.iter().any(|n| n.id == b), "{listed:?}");

    // A full stop removes exited containers at once, with no grace (the default 30 s
    // provider would keep them from listings).
    let patient = VirtualNodeProvider::new(&env.workspace, "stopped", env.settings.clone()).unwrap();
    docker_ok(&["stop", "-t", "0", &c]);
    assert_eq!(patient.list_nodes(&Tags::new()).await.unwrap().len(), 1);
    assert!(container_exists(&c));
    assert_eq!(patient.remove_stopped_nodes().await.unwrap(), 1);
    assert!(!container_exists(&c));
    assert_eq!(patient.remove_stopped_nodes().await.unwrap(), 0);
    patient.terminate_node(&b).await.unwrap();

    // Workspace delete removes exited containers of any of its clusters at once.
    let other = env.provider("other");
    let d = other
        .create_nodes(&request(NodeKind::Head, 1, node_config()))
        .await
        .unwrap()
        .nodes[0]
        .id
        .clone();
    docker_ok(&["kill", &d]);
    env.delete_and_check().await;
    assert!(!container_exists(&d));
}
