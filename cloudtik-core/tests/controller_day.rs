//! A simulated day of the controller loop against the fake provider, on tokio's paused
//! clock: demand rises, nodes launch, a node type fails with capacity errors and is
//! backed off, a node stops heartbeating and is replaced, demand falls and idle nodes go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudtik_core::node::tags;
use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Clock, Controller, ControllerConfig, LaunchSpec, MarkUpToDate, ScalingInputs, ScalingStatus, TokioClock,
};
use cloudtik_core::state::{InMemoryStore, NodeHeartbeat, ResourceDemands, StateStore};
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::{ErrorKind, NodeKind, NodeStatus, Resources};

const STEP: Duration = Duration::from_secs(10);

fn cpu() -> Resources {
    Resources::from_pairs([("CPU", 8.0), ("memory", 32e9)])
}
fn gpu() -> Resources {
    Resources::from_pairs([("CPU", 8.0), ("GPU", 1.0), ("memory", 32e9)])
}

fn inputs() -> ScalingInputs {
    let scaling = ScalingConfig::new("head", 30)
        .with_node_type("head", NodeTypeConfig::new(Resources::new(), 0))
        .with_node_type("worker.cpu", NodeTypeConfig::new(cpu(), 20).with_min_workers(1))
        .with_node_type("worker.gpu", NodeTypeConfig::new(gpu(), 4))
        .with_idle_timeout(Duration::from_secs(600));
    ["head", "worker.cpu", "worker.gpu"]
        .iter()
        .fold(ScalingInputs::new(scaling), |inputs, t| {
            inputs.with_launch(
                *t,
                LaunchSpec::new(serde_json::json!({"t": t}), format!("hash-{t}")),
            )
        })
}

struct Task {
    needs: Resources,
    duration: Duration,
}

/// A tiny cluster: a queue of tasks placed first-fit on up-to-date workers, whose agents
/// report heartbeats with what is free, and resource demands for what waits.
struct Sim {
    provider: FakeProvider,
    store: Arc<InMemoryStore>,
    clock: TokioClock,
    queue: Vec<Task>,
    running: HashMap<String, Vec<(Resources, SystemTime)>>,
    dead: BTreeSet<String>,
}

impl Sim {
    async fn step(&mut self) {
        let now = self.clock.now();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let nodes = self.provider.snapshot();
        let alive: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        self.running.retain(|id, _| alive.contains(id));
        for tasks in self.running.values_mut() {
            tasks.retain(|(_, end)| *end > now);
        }
        for n in &nodes {
            if n.kind() != Some(NodeKind::Worker)
                || n.status() != Some(NodeStatus::UpToDate)
                || self.dead.contains(&n.id)
            {
                continue;
            }
            let total = if n.node_type() == Some("worker.gpu") {
                gpu()
            } else {
                cpu()
            };
            let tasks = self.running.entry(n.id.clone()).or_default();
            let mut free = total.clone();
            for (r, _) in tasks.iter() {
                free.subtract(r);
            }
            let mut i = 0;
            while i < self.queue.len() {
                if free.fits(&self.queue[i].needs) {
                    let t = self.queue.remove(i);
                    free.subtract(&t.needs);
                    tasks.push((t.needs, now + t.duration));
                } else {
                    i += 1;
                }
            }
            self.store
                .put_heartbeat(&NodeHeartbeat {
                    node_id: n.id.clone(),
                    node_ip: n.internal_ip.clone().unwrap_or_default(),
                    node_kind: NodeKind::Worker,
                    node_type: n.node_type().unwrap_or_default().to_string(),
                    seq_id: None,
                    heartbeat_time: now_s,
                    total_resources: total,
                    available_resources: free,
                })
                .await
                .unwrap();
        }
        let demands = self.queue.iter().map(|t| t.needs.clone()).collect();
        self.store
            .set_resource_demands(&ResourceDemands { time: now_s, demands })
            .await
            .unwrap();
    }

    fn workers(&self, node_type: &str) -> usize {
        self.provider
            .snapshot()
            .iter()
            .filter(|n| n.kind() == Some(NodeKind::Worker) && n.node_type() == Some(node_type))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn a_day_of_scaling() {
    let provider = FakeProvider::new("day");
    let store = Arc::new(InMemoryStore::new());
    let clock = TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let p = Arc::new(provider.clone());
    let config = ControllerConfig::default()
        .with_update_interval(STEP)
        .with_heartbeat_timeout(Duration::from_secs(30))
        .with_untracked_grace(Duration::from_secs(120));
    let mut controller = Controller::new(
        inputs(),
        config,
        Arc::clone(&p),
        Arc::clone(&store),
        Arc::new(MarkUpToDate::new(Arc::clone(&p))),
    )
    .with_clock(Arc::new(clock));
    let mut sim = Sim {
        provider: provider.clone(),
        store: Arc::clone(&store),
        clock,
        queue: Vec::new(),
        running: HashMap::new(),
        dead: BTreeSet::new(),
    };

    let mut saw_backoff = false;
    let mut gpu_calls_while_backed_off = 0;
    let mut dead_node = None;
    let mut max_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let day = 24 * 3600 / STEP.as_secs();
    for step in 0..day {
        let t = step * STEP.as_secs();
        match t {
            3600 => sim.queue.extend((0..60).map(|_| Task {
                needs: Resources::from_pairs([("CPU", 4.0)]),
                duration: Duration::from_secs(7200),
            })),
            7200 => {
                provider.fail_create_for_type("worker.gpu", 2, ErrorKind::Capacity);
                sim.queue.extend((0..4).map(|_| Task {
                    needs: Resources::from_pairs([("CPU", 1.0), ("GPU", 1.0)]),
                    duration: Duration::from_secs(3600),
                }));
            }
            14400 => {
                let victim = provider
                    .snapshot()
                    .into_iter()
                    .find(|n| n.node_type() == Some("worker.cpu") && n.status() == Some(NodeStatus::UpToDate))
                    .unwrap();
                sim.dead.insert(victim.id.clone());
                dead_node = Some(victim.id);
            }
            _ => {}
        }
        sim.step().await;
        let creates_before = provider.calls().create;
        controller.run_pass().await.unwrap();
        tokio::time::sleep(STEP).await;
        let status: ScalingStatus =
            serde_json::from_value(store.scaling_status().await.unwrap().unwrap()).unwrap();
        if (7190..7300).contains(&t) {
            eprintln!(
                "t={t} gpu={} launching={:?} backed={:?} errs={:?} calls={:?} unf={:?}",
                sim.workers("worker.gpu"),
                status.launching,
                status.backed_off,
                status.launch_errors,
                provider.calls(),
                status.unfulfilled
            );
        }
        if status.backed_off.contains_key("worker.gpu") {
            saw_backoff = true;
            gpu_calls_while_backed_off += provider.calls().create - creates_before;
        }
        for ty in ["worker.cpu", "worker.gpu"] {
            let n = sim.workers(ty);
            let m = max_seen.entry(ty).or_insert(0);
            *m = (*m).max(n);
        }
        match t {
            3000 => assert_eq!(sim.workers("worker.cpu"), 1, "min_workers before any demand"),
            5400 => {
                assert_eq!(
                    sim.workers("worker.cpu"),
                    20,
                    "demand fills worker.cpu up to its max"
                );
                assert!(!sim.queue.is_empty(), "more demand than max allows stays queued");
            }
            10800 => assert!(
                sim.workers("worker.gpu") >= 1,
                "GPU nodes launched after the backoff"
            ),
            16200 => {
                let dead = dead_node.clone().unwrap();
                assert!(
                    provider.snapshot().iter().all(|n| n.id != dead),
                    "the silent node was replaced"
                );
            }
            _ => {}
        }
    }
    assert!(saw_backoff, "capacity errors backed worker.gpu off");
    assert_eq!(gpu_calls_while_backed_off, 0, "no launch of a backed-off type");
    assert!(
        sim.queue.is_empty() && sim.running.values().all(Vec::is_empty),
        "all work done"
    );
    assert_eq!(
        sim.workers("worker.cpu"),
        1,
        "back to min_workers at the end of the day"
    );
    assert_eq!(sim.workers("worker.gpu"), 0);
    assert_eq!(max_seen["worker.cpu"], 20, "never above max_workers");
    assert!(max_seen["worker.gpu"] <= 4);
    let c = controller.counters();
    assert!(c.recoveries >= 1, "the silent node got a recovery run first");
    assert_eq!(c.leaks_terminated, 0);
    assert_eq!(c.nodes_launched, provider.nodes_created());
    // every node ever created is accounted for: alive now, or terminated by the controller
    assert_eq!(
        provider.nodes_created(),
        c.nodes_terminated + provider.node_count() as u64
    );
    // status tags of every listed worker are up to date
    assert!(
        provider
            .snapshot()
            .iter()
            .all(|n| n.tag(tags::NODE_STATUS) == Some("up-to-date"))
    );
}
