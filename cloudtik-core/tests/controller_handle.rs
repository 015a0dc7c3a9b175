//! The controller as an embedder runs it: built from `Arc<dyn NodeProvider>` and
//! `Arc<dyn StateStore>` as they are, spawned with a handle (status watch, a pass on
//! demand, new inputs, shutdown), on clusters without `cloudtik-node` agents: with
//! `Liveness::ProviderOnly` healthy nodes stay; with the default heartbeat liveness they
//! are replaced, and the status says why.

use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Controller, ControllerConfig, ControllerHandle, LaunchSpec, Liveness, MarkUpToDate, ScalingInputs,
    read_scaling_status,
};
use cloudtik_core::state::{InMemoryStore, StateStore};
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::{NodeProvider, NodeStatus, Resources};

fn inputs(min_workers: usize) -> ScalingInputs {
    let worker = NodeTypeConfig::new(Resources::from_pairs([("CPU", 4.0)]), 10).with_min_workers(min_workers);
    ScalingInputs::new(
        ScalingConfig::new("head", 10)
            .with_node_type("worker", worker)
            .with_idle_timeout(Duration::ZERO),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h1"))
}

/// A controller over trait objects, as an embedder holds its provider and store.
fn spawn(
    fake: &FakeProvider,
    store: Arc<dyn StateStore>,
    config: ControllerConfig,
    min: usize,
) -> ControllerHandle {
    let provider: Arc<dyn NodeProvider> = Arc::new(fake.clone());
    let setup = Arc::new(MarkUpToDate::new(Arc::clone(&provider)));
    let controller: Controller<dyn NodeProvider, dyn StateStore, _> =
        Controller::new(inputs(min), config, provider, store, setup);
    controller.spawn()
}

fn up_to_date(fake: &FakeProvider) -> usize {
    fake.snapshot()
        .iter()
        .filter(|n| n.status() == Some(NodeStatus::UpToDate))
        .count()
}

#[tokio::test(start_paused = true)]
async fn the_handle_watches_status_triggers_passes_and_replaces_inputs() {
    let fake = FakeProvider::new("handle");
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    // Passes only once an hour, unless asked.
    let config = ControllerConfig::default()
        .with_update_interval(Duration::from_secs(3600))
        .with_liveness(Liveness::ProviderOnly);
    let handle = spawn(&fake, Arc::clone(&store), config, 1);
    let mut status = handle.status();

    // The first pass runs at once and publishes its status.
    status.changed().await.unwrap();
    let first = status.borrow_and_update().clone().expect("a status");
    assert_eq!(first.counters.passes, 1);
    assert_eq!(first.counters.nodes_requested, 1);

    // Each asked-for pass runs within a second (not an hour): the node is adopted and
    // set up.
    let mut passes = 1;
    while up_to_date(&fake) < 1 {
        handle.trigger_pass();
        tokio::time::timeout(Duration::from_secs(1), status.changed())
            .await
            .expect("a pass within a second of the trigger")
            .unwrap();
        passes += 1;
        assert!(passes < 10, "the node never came up: {:?}", fake.snapshot());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // New inputs: 3 workers.
    handle.set_inputs(inputs(3));
    for _ in 0..10 {
        if up_to_date(&fake) == 3 {
            break;
        }
        handle.trigger_pass();
        tokio::time::timeout(Duration::from_secs(1), status.changed())
            .await
            .expect("a pass within a second of the trigger")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up_to_date(&fake), 3, "{:?}", fake.snapshot());

    // The watch and the store hold the same status.
    let latest = handle.latest_status().unwrap();
    assert_eq!(
        read_scaling_status(store.as_ref()).await.unwrap(),
        Some(latest.clone())
    );
    assert_eq!(latest.nodes.len(), 3);
    assert!(latest.nodes.values().all(|n| n.note.is_none()));

    let counters = handle.shutdown().await.unwrap();
    assert_eq!(counters.passes, latest.counters.passes);
    assert_eq!(counters.nodes_launched, 3);
    assert_eq!(counters.nodes_terminated, 0);
}

/// Runs a controller without agents for 3 minutes (heartbeat timeout 30 s); the notes
/// seen in its status, and its handle.
async fn without_agents(liveness: Liveness) -> (FakeProvider, Vec<String>, ControllerHandle) {
    let fake = FakeProvider::new("no-agents");
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let config = ControllerConfig::default()
        .with_update_interval(Duration::from_secs(5))
        .with_heartbeat_timeout(Duration::from_secs(30))
        .with_liveness(liveness);
    let handle = spawn(&fake, store, config, 2);
    let mut notes = Vec::new();
    for _ in 0..36 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(s) = handle.latest_status() {
            notes.extend(s.nodes.values().filter_map(|n| n.note.clone()));
        }
    }
    (fake, notes, handle)
}

#[tokio::test(start_paused = true)]
async fn provider_only_liveness_keeps_healthy_nodes_without_agents() {
    let (fake, notes, handle) = without_agents(Liveness::ProviderOnly).await;
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(up_to_date(&fake), 2);
    let status = handle.latest_status().unwrap();
    assert!(
        status.recent_terminations.is_empty(),
        "{:?}",
        status.recent_terminations
    );
    let c = handle.shutdown().await.unwrap();
    assert_eq!(fake.nodes_created(), 2, "nothing replaced: {c:?}");
    assert_eq!((c.recoveries, c.nodes_terminated), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_liveness_without_agents_says_why_it_replaces_nodes() {
    let (fake, notes, handle) = without_agents(Liveness::Heartbeats).await;
    let hint =
        "is cloudtik-node's agent running on it? set Liveness::ProviderOnly for clusters without agents";
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("no heartbeat ever received from node") && n.contains(hint)),
        "{notes:?}"
    );
    let status = handle.latest_status().unwrap();
    let t = status.recent_terminations.first().expect("nodes were replaced");
    assert_eq!(t.cause, "heartbeat-lost");
    assert!(
        t.reason.contains("no heartbeat ever received") && t.reason.contains(hint),
        "{t:?}"
    );
    let c = handle.shutdown().await.unwrap();
    assert!(c.recoveries >= 2 && c.nodes_terminated >= 2, "{c:?}");
    assert!(fake.nodes_created() > 2);
}

/// A controller over concrete types (`Arc<FakeProvider>`) keeps working, and an
/// `Arc<dyn NodeProvider>` wrapped once more is fine too.
#[tokio::test(start_paused = true)]
async fn concrete_and_doubly_wrapped_providers_still_work() {
    let fake = FakeProvider::new("concrete");
    let store = Arc::new(InMemoryStore::new());
    let mut c = Controller::new(
        inputs(1),
        ControllerConfig::default().with_liveness(Liveness::ProviderOnly),
        Arc::new(fake.clone()),
        Arc::clone(&store),
        Arc::new(MarkUpToDate::new(fake.clone())),
    );
    for _ in 0..3 {
        c.run_pass().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(up_to_date(&fake), 1);
    // The same cluster taken over by a controller over `Arc<Arc<dyn NodeProvider>>`.
    let dynamic: Arc<dyn NodeProvider> = Arc::new(fake.clone());
    let mut wrapped = Controller::new(
        inputs(1),
        ControllerConfig::default().with_liveness(Liveness::ProviderOnly),
        Arc::new(Arc::clone(&dynamic)),
        store,
        Arc::new(MarkUpToDate::new(dynamic)),
    );
    for _ in 0..3 {
        let r = wrapped.run_pass().await.unwrap();
        assert!(r.launched.is_empty() && r.terminated.is_empty(), "{r:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!((up_to_date(&fake), fake.nodes_created()), (1, 1));
}
