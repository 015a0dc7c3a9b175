//! The autoscaler's controller loop driving the AWS node provider against moto (harness:
//! `tests/moto`, see the docs of `aws_moto.rs`): a cluster scales from 0 to 200 workers
//! and back to its min (0), and nothing is left behind.
//!
//! Node setup is [`MarkUpToDate`] (moto's instances cannot be reached over SSH). There
//! are no node agents either, so the test writes the heartbeats an idle agent would
//! (all resources available) for the cluster's up-to-date workers before every pass:
//! without them a worker is neither idle (it could never be scaled down) nor, with a
//! long heartbeat timeout, lost. A counting proxy sits between the provider and moto
//! and the test prints the EC2 calls of every pass.
#![cfg(feature = "aws")]

#[path = "moto/counting_proxy.rs"]
mod counting_proxy;
mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudtik_core::node::tags;
use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Clock, Controller, ControllerConfig, LaunchSpec, LauncherConfig, MarkUpToDate, ScalingInputs, TokioClock,
};
use cloudtik_core::state::{InMemoryStore, NodeHeartbeat, StateStore};
use cloudtik_core::{NodeKind, NodeProvider, NodeStatus, Resources, Tags};
use cloudtik_providers::aws::AwsNodeProvider;
use counting_proxy::{CountingProxy, counts};
use moto::{raw_client, sdk_config, settings, start_moto};
use serde_json::json;

const CLUSTER: &str = "scale";
const WORKER: &str = "worker.default";
const TARGET: usize = 200;

fn worker_resources() -> Resources {
    Resources::from_pairs([("CPU", 2.0), ("memory", 1e9)])
}

fn inputs(image: &str, min_workers: usize) -> ScalingInputs {
    let worker = NodeTypeConfig::new(worker_resources(), TARGET).with_min_workers(min_workers);
    ScalingInputs::new(
        ScalingConfig::new("head", TARGET)
            .with_node_type("head", NodeTypeConfig::new(Resources::new(), 0))
            .with_node_type(WORKER, worker)
            .with_upscaling_speed(1.0)
            .with_idle_timeout(Duration::from_secs(2)),
    )
    .with_launch(
        WORKER,
        LaunchSpec::new(
            json!({"InstanceType": "t3.micro", "ImageId": image}),
            "launch-hash-1",
        ),
    )
}

/// Idle heartbeats for the cluster's up-to-date workers.
async fn heartbeats(provider: &AwsNodeProvider, store: &InMemoryStore, clock: &TokioClock) -> usize {
    let nodes = provider.list_nodes(&Tags::new()).await.unwrap();
    let now = clock.unix_now();
    let mut n = 0;
    for node in nodes
        .iter()
        .filter(|n| n.kind() == Some(NodeKind::Worker) && n.status() == Some(NodeStatus::UpToDate))
    {
        store
            .put_heartbeat(&NodeHeartbeat {
                node_id: node.id.clone(),
                node_ip: node.internal_ip.clone().unwrap_or_default(),
                node_kind: NodeKind::Worker,
                node_type: WORKER.into(),
                seq_id: None,
                heartbeat_time: now,
                total_resources: worker_resources(),
                available_resources: worker_resources(),
            })
            .await
            .unwrap();
        n += 1;
    }
    n
}

/// Every instance of the cluster moto knows, in any state: (id, state, launch token).
async fn all_instances(direct: &aws_sdk_ec2::Client) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut pages = direct
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", tags::CLUSTER_NAME))
                .values(CLUSTER)
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for i in page.unwrap().reservations().iter().flat_map(|r| r.instances()) {
            let token = i
                .tags()
                .iter()
                .find(|t| t.key() == Some(tags::LAUNCH_TOKEN))
                .and_then(|t| t.value())
                .unwrap_or("")
                .to_string();
            out.push((
                i.instance_id().unwrap_or("").to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                token,
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_scales_0_to_200_and_back_on_moto_leaving_nothing_behind() {
    let Some(moto) = start_moto() else { return };
    let proxy = CountingProxy::start(&moto.url).await;
    let provider = Arc::new(
        AwsNodeProvider::from_sdk_config(CLUSTER, &sdk_config(&proxy.url).await, settings(&proxy.url))
            .unwrap(),
    );
    // The test's own listings (for heartbeats) go to moto directly, so the proxy counts
    // only the controller's calls.
    let observer =
        AwsNodeProvider::from_sdk_config(CLUSTER, &sdk_config(&moto.url).await, settings(&moto.url)).unwrap();
    let direct = raw_client(&moto).await;
    let image = direct.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();

    let store = Arc::new(InMemoryStore::new());
    let clock = TokioClock::new();
    let config = ControllerConfig::default()
        .with_heartbeat_timeout(Duration::from_secs(600))
        .with_launcher(
            LauncherConfig::default()
                .with_batch_size(50)
                .with_max_concurrent(10)
                .with_calls_per_second(0.0),
        );
    let mut controller = Controller::new(
        inputs(&image, TARGET),
        config,
        Arc::clone(&provider),
        Arc::clone(&store),
        Arc::new(MarkUpToDate::new(Arc::clone(&provider))),
    )
    .with_clock(Arc::new(clock));

    let started = Instant::now();
    let mut phase_up = true;
    let mut passes = 0;
    let mut max_workers_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "the cluster did not converge in time");
        let up = heartbeats(&observer, &store, &clock).await;
        let mark = proxy.mark();
        let report = controller.run_pass().await.unwrap();
        passes += 1;
        let listed = observer.list_nodes(&Tags::new()).await.unwrap();
        let workers = listed
            .iter()
            .filter(|n| n.kind() == Some(NodeKind::Worker))
            .count();
        max_workers_seen = max_workers_seen.max(workers);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = counts(&proxy.calls_since(mark));
        eprintln!(
            "pass {passes}: {workers} workers listed, {up} up to date; launched {:?}, terminated {}; calls until the next pass {calls:?}",
            report.launched,
            report.terminated.len()
        );
        if phase_up && up == TARGET && workers == TARGET {
            eprintln!("up: {TARGET} workers up to date after {:?}", started.elapsed());
            phase_up = false;
            controller.set_inputs(inputs(&image, 0));
        } else if !phase_up && workers == 0 {
            eprintln!("down: 0 workers after {:?}", started.elapsed());
            break;
        }
    }
    controller.shutdown().await;
    assert_eq!(max_workers_seen, TARGET, "never more workers than asked for");

    // Nothing left behind, and every instance ever created was one the controller asked
    // for: TARGET in all, none of a token beyond its batch.
    let instances = all_instances(&direct).await;
    let live: Vec<_> = instances
        .iter()
        .filter(|(_, s, _)| matches!(s.as_str(), "pending" | "running" | "stopping" | "stopped"))
        .collect();
    assert!(live.is_empty(), "instances left behind: {live:?}");
    let ids: BTreeSet<&str> = instances.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), TARGET, "duplicate instances were created");
    let mut by_token: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, token) in &instances {
        *by_token.entry(token.as_str()).or_insert(0) += 1;
    }
    assert!(!by_token.contains_key(""), "an instance without a launch token");
    assert!(
        by_token.values().all(|n| *n <= 50),
        "a launch token has more instances than its batch: {by_token:?}"
    );
    let c = controller.counters();
    assert_eq!(c.nodes_requested, TARGET as u64, "{c:?}");
    assert_eq!(c.nodes_launched, TARGET as u64, "{c:?}");
    assert_eq!(c.nodes_terminated, TARGET as u64, "{c:?}");
    assert_eq!(c.leaks_terminated, 0, "{c:?}");
    let total = counts(&proxy.calls());
    eprintln!("{passes} passes; EC2 calls in all: {total:?}");
    assert_eq!(
        total.get("DescribeInstances/Listing").copied().unwrap_or(0),
        passes,
        "one cluster listing per pass"
    );
}
