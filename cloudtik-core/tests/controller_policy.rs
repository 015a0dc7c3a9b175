//! The controller with a runtime's scaling policy, against the fake provider on tokio's
//! paused clock: the policy's demands launch workers, a node the policy reports in use
//! is never idle (while one it does not report goes after the idle timeout), a failing
//! policy is reported and the pass goes on, and new demand starts a pass at once rather
//! than at the next interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Clock, Controller, ControllerConfig, LaunchSpec, MarkUpToDate, NodeResourceState, ScalingInputs,
    ScalingPolicy, ScalingState, TokioClock,
};
use cloudtik_core::state::{InMemoryStore, NodeHeartbeat, StateStore};
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::{Error, ErrorKind, NodeKind, NodeStatus, Resources};

fn one_cpu() -> Resources {
    Resources::from_pairs([("CPU", 1.0)])
}

fn inputs() -> ScalingInputs {
    ScalingInputs::new(
        ScalingConfig::new("head", 4)
            .with_node_type("worker", NodeTypeConfig::new(one_cpu(), 4))
            .with_upscaling_speed(10.0)
            .with_idle_timeout(Duration::from_secs(60)),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "hash-worker"))
}

/// A policy whose answer the test sets.
#[derive(Debug)]
struct Scripted {
    state: Mutex<Result<ScalingState, String>>,
}

impl Scripted {
    fn new() -> Self {
        Scripted {
            state: Mutex::new(Ok(ScalingState::new())),
        }
    }
    fn set(&self, state: ScalingState) {
        *self.state.lock().unwrap() = Ok(state);
    }
    fn fail(&self, msg: &str) {
        *self.state.lock().unwrap() = Err(msg.to_string());
    }
}

// The library's re-export: no async-trait dependency of one's own is needed.
#[cloudtik_core::async_trait]
impl ScalingPolicy for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn scaling_state(&self) -> cloudtik_core::Result<ScalingState> {
        self.state
            .lock()
            .unwrap()
            .clone()
            .map_err(|m| Error::new(ErrorKind::Transient, m))
    }
}

/// Heartbeats of every up-to-date worker: all free, as a bare agent reports.
async fn heartbeat(provider: &FakeProvider, store: &InMemoryStore, clock: &TokioClock) {
    let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    for n in provider.snapshot() {
        if n.kind() != Some(NodeKind::Worker) || n.status() != Some(NodeStatus::UpToDate) {
            continue;
        }
        store
            .put_heartbeat(&NodeHeartbeat {
                node_id: n.id.clone(),
                node_ip: n.internal_ip.clone().unwrap_or_default(),
                node_kind: NodeKind::Worker,
                node_type: "worker".into(),
                seq_id: None,
                heartbeat_time: now,
                total_resources: one_cpu(),
                available_resources: one_cpu(),
            })
            .await
            .unwrap();
    }
}

fn workers(provider: &FakeProvider) -> Vec<(String, String)> {
    provider
        .snapshot()
        .into_iter()
        .filter(|n| n.kind() == Some(NodeKind::Worker))
        .map(|n| (n.id.clone(), n.internal_ip.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn policy_demands_launch_and_a_node_in_use_is_never_idle() {
    let provider = FakeProvider::new("policy");
    let store = Arc::new(InMemoryStore::new());
    let clock = TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let p = Arc::new(provider.clone());
    let policy = Arc::new(Scripted::new());
    policy.set(ScalingState::new().with_demands(&one_cpu(), 2));
    let mut controller = Controller::new(
        inputs(),
        ControllerConfig::default(),
        Arc::clone(&p),
        Arc::clone(&store),
        Arc::new(MarkUpToDate::new(Arc::clone(&p))),
    )
    .with_clock(Arc::new(clock))
    .with_scaling_policy(policy.clone());

    // Nothing in the store asks for workers: the policy's demands alone launch two.
    let report = controller.run_pass().await.unwrap();
    assert_eq!(report.launched.get("worker"), Some(&2), "{report:?}");
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(5)).await;
        heartbeat(&provider, &store, &clock).await;
        controller.run_pass().await.unwrap();
    }
    let nodes = workers(&provider);
    assert_eq!(nodes.len(), 2);

    // The runtime runs work on the first: in use, no free CPU. The second it does not
    // report, so its agent's heartbeat (all free) counts: idle.
    let (busy_id, busy_ip) = nodes[0].clone();
    let (idle_id, _) = nodes[1].clone();
    policy.set(ScalingState::new().with_node(
        busy_ip,
        NodeResourceState::new(Resources::from_pairs([("CPU", 0.0)]), true),
    ));
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(5)).await;
        heartbeat(&provider, &store, &clock).await;
        controller.run_pass().await.unwrap();
    }
    let left: Vec<String> = workers(&provider).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        left,
        vec![busy_id.clone()],
        "the idle worker goes, the busy one stays"
    );
    assert_ne!(busy_id, idle_id);

    // A failing policy: the pass goes on with the agents' view, and says why.
    policy.fail("master unreachable");
    tokio::time::advance(Duration::from_secs(5)).await;
    heartbeat(&provider, &store, &clock).await;
    controller.run_pass().await.unwrap();
    let status = store.scaling_status().await.unwrap().unwrap();
    assert_eq!(status["scaling_policy"], "scripted");
    assert!(
        status["policy_error"]
            .as_str()
            .unwrap()
            .contains("master unreachable"),
        "{status}"
    );
}

#[tokio::test(start_paused = true)]
async fn new_demand_starts_a_pass_at_once() {
    let provider = FakeProvider::new("poll");
    let store = Arc::new(InMemoryStore::new());
    let p = Arc::new(provider.clone());
    let policy = Arc::new(Scripted::new());
    policy.set(ScalingState::new());
    // Passes a minute apart; the policy polled every second.
    let config = ControllerConfig::default()
        .with_update_interval(Duration::from_secs(60))
        .with_demand_poll_interval(Some(Duration::from_secs(1)));
    let controller = Controller::new(
        inputs(),
        config,
        Arc::clone(&p),
        Arc::clone(&store),
        Arc::new(MarkUpToDate::new(Arc::clone(&p))),
    )
    .with_scaling_policy(policy.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(workers(&provider).is_empty());
    policy.set(ScalingState::new().with_demands(&one_cpu(), 3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        workers(&provider).len(),
        3,
        "launched within seconds of the demand, not at the next pass a minute later"
    );
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}
