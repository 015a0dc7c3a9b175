//! One full controller pass over 10,000 fake nodes (no provider latency): list, read
//! 10,000 heartbeats, plan, apply (nothing to do at steady state), publish the status.
//! Target: under 250 ms, and the process under 200 MB.

use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::node::tags;
use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{Controller, ControllerConfig, LaunchSpec, MarkUpToDate, ScalingInputs};
use cloudtik_core::state::{InMemoryStore, NodeHeartbeat, StateStore};
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::{LaunchRequest, NodeKind, NodeProvider, ProviderCapabilities, Resources, Tags};
use criterion::{Criterion, criterion_group, criterion_main};

const NODES: usize = 10_000;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn bench_controller(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rss_before = rss_mb();
    let worker = Resources::from_pairs([("CPU", 8.0), ("memory", 32e9)]);
    let inputs = ScalingInputs::new(
        ScalingConfig::new("head", NODES)
            .with_node_type("worker", NodeTypeConfig::new(worker.clone(), NODES))
            .with_upscaling_speed(1.0)
            .with_idle_timeout(Duration::from_secs(3600)),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h"));
    let provider = Arc::new(
        FakeProvider::new("bench")
            .with_capabilities(ProviderCapabilities::default().with_max_launch_batch(NODES)),
    );
    let store = Arc::new(InMemoryStore::new());
    let mut controller = rt.block_on(async {
        let mut t = Tags::new();
        t.insert(tags::NODE_KIND.into(), NodeKind::Worker.as_str().into());
        t.insert(tags::USER_NODE_TYPE.into(), "worker".into());
        t.insert(tags::NODE_STATUS.into(), "up-to-date".into());
        t.insert(tags::LAUNCH_CONFIG.into(), "h".into());
        let out = provider
            .create_nodes(&LaunchRequest::new("worker", serde_json::json!({}), t, NODES))
            .await
            .unwrap();
        let now = cloudtik_core::state::unix_now();
        for (i, n) in out.nodes.iter().enumerate() {
            let mut available = worker.clone();
            available.set("CPU", (i % 8) as f64);
            store
                .put_heartbeat(&NodeHeartbeat {
                    node_id: n.id.clone(),
                    node_ip: n.internal_ip.clone().unwrap_or_default(),
                    node_kind: NodeKind::Worker,
                    node_type: "worker".into(),
                    seq_id: None,
                    heartbeat_time: now,
                    total_resources: worker.clone(),
                    available_resources: available,
                })
                .await
                .unwrap();
        }
        let setup = Arc::new(MarkUpToDate::new(Arc::clone(&provider)));
        let mut c = Controller::new(
            inputs,
            ControllerConfig::default(),
            Arc::clone(&provider),
            Arc::clone(&store),
            setup,
        );
        c.run_pass().await.unwrap();
        c
    });
    c.bench_function("controller/pass over 10000 fake nodes", |b| {
        b.iter(|| {
            let r = rt.block_on(controller.run_pass()).unwrap();
            assert!(r.launched.is_empty() && r.terminated.is_empty());
        })
    });
    println!(
        "controller/pass over 10000 fake nodes: resident memory {:.0} MB (before the cluster was built: {:.0} MB)",
        rss_mb(),
        rss_before
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_controller
}
criterion_main!(benches);
