//! Crash safety: the controller is dropped at random points (while the fake cloud injects
//! failures and slow creates, and sometimes holds a create after the cloud acted), then a
//! new controller starts on the same cloud and state store. Across 200 seeds: no node is
//! launched twice, none leaks, and the cluster converges.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cloudtik_core::node::tags;
use cloudtik_core::scaler::Clock;
use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Controller, ControllerConfig, LaunchSpec, LauncherConfig, NodeSetup, ScalingInputs, SetupMode, TokioClock,
};
use cloudtik_core::state::{InMemoryStore, NodeHeartbeat, StateStore};
use cloudtik_core::testing::{FakeProvider, GateStage};
use cloudtik_core::{ErrorKind, NodeKind, NodeProvider, NodeStatus, Resources};
use cloudtik_core::{NodeInfo, NodeProviderExt, Tags};

const TARGET: usize = 7;
const INTERVAL: Duration = Duration::from_secs(5);

/// A small deterministic generator (xorshift64*), so every seed replays exactly.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn inputs() -> ScalingInputs {
    let worker = NodeTypeConfig::new(Resources::from_pairs([("CPU", 4.0)]), 20).with_min_workers(TARGET);
    ScalingInputs::new(
        ScalingConfig::new("head", 20)
            .with_node_type("worker", worker)
            .with_idle_timeout(Duration::ZERO),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h1"))
}

/// A setup that takes a while: it waits, marks the node `waiting-for-ssh`, waits again and
/// marks it `up-to-date`, so a crash can land in either step.
#[derive(Debug)]
struct SlowSetup(FakeProvider, u64);

#[async_trait::async_trait]
impl NodeSetup for SlowSetup {
    async fn set_up(&self, node: &NodeInfo, _mode: SetupMode) -> cloudtik_core::Result<()> {
        let jitter = node.id.bytes().map(u64::from).sum::<u64>() ^ self.1;
        tokio::time::sleep(Duration::from_millis(jitter % 3000)).await;
        let mut t = Tags::new();
        t.insert(
            tags::NODE_STATUS.into(),
            NodeStatus::WaitingForSsh.as_str().into(),
        );
        self.0.set_tags(&node.id, t.clone()).await?;
        tokio::time::sleep(Duration::from_millis(1000 + jitter % 4000)).await;
        t.insert(tags::NODE_STATUS.into(), NodeStatus::UpToDate.as_str().into());
        self.0.set_tags(&node.id, t).await
    }
}

fn controller(
    provider: &FakeProvider,
    store: &Arc<InMemoryStore>,
    clock: TokioClock,
) -> Controller<FakeProvider, InMemoryStore, SlowSetup> {
    let p = Arc::new(provider.clone());
    let config = ControllerConfig::default()
        .with_update_interval(INTERVAL)
        .with_untracked_grace(Duration::from_secs(60))
        .with_launcher(
            LauncherConfig::default()
                .with_batch_size(3)
                .with_max_concurrent(2)
                .with_backoff(Duration::from_secs(10), Duration::from_secs(40)),
        );
    let seed = provider.cluster_name().len() as u64;
    Controller::new(
        inputs(),
        config,
        Arc::clone(&p),
        Arc::clone(store),
        Arc::new(SlowSetup(provider.clone(), seed)),
    )
    .with_clock(Arc::new(clock))
}

/// The agents of the up-to-date nodes: one heartbeat each.
async fn beat(provider: &FakeProvider, store: &InMemoryStore, clock: &TokioClock) {
    for n in provider.snapshot() {
        if n.status() != Some(NodeStatus::UpToDate) {
            continue;
        }
        let r = Resources::from_pairs([("CPU", 4.0)]);
        store
            .put_heartbeat(&NodeHeartbeat {
                node_id: n.id.clone(),
                node_ip: n.internal_ip.clone().unwrap_or_default(),
                node_kind: NodeKind::Worker,
                node_type: "worker".into(),
                seq_id: None,
                heartbeat_time: clock.unix_now(),
                total_resources: r.clone(),
                available_resources: Resources::new(),
            })
            .await
            .unwrap();
    }
}

async fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed);
    let provider = FakeProvider::new(format!("crash-{seed}"));
    let store = Arc::new(InMemoryStore::new());
    let clock = TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    provider.set_create_delay(Duration::from_millis(rng.below(4000)));
    match rng.below(4) {
        0 => provider.fail_create(1 + rng.below(3) as usize, ErrorKind::Capacity),
        1 => provider.fail_create(1 + rng.below(3) as usize, ErrorKind::Transient),
        2 => provider.fail_create_partially(1, 1 + rng.below(2) as usize, ErrorKind::Capacity),
        _ => {}
    }
    if rng.below(3) == 0 {
        provider.fail_list(1, ErrorKind::RateLimited);
    }
    let crashes = 1 + rng.below(3);
    for _ in 0..crashes {
        let hold = rng.below(3) == 0;
        if hold {
            // The cloud creates the nodes but the call does not return before the crash.
            provider.hold_creates(GateStage::AfterCreate);
        }
        let c = controller(&provider, &store, clock);
        let task = tokio::spawn(c.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(rng.below(25_000))).await;
        for _ in 0..rng.below(20) {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        if hold {
            provider.release_creates();
        }
    }

    // A last controller runs on a healthy cloud until the cluster settles.
    provider.clear_faults();
    provider.set_create_delay(Duration::ZERO);
    let mut c = controller(&provider, &store, clock);
    let mut settled = false;
    for _ in 0..60 {
        beat(&provider, &store, &clock).await;
        let _ = c.run_pass().await;
        tokio::time::sleep(INTERVAL).await;
        let nodes = provider.snapshot();
        let up = nodes
            .iter()
            .filter(|n| n.status() == Some(NodeStatus::UpToDate))
            .count();
        if nodes.len() == TARGET && up == TARGET && store.pending_launches().await.unwrap().is_empty() {
            settled = true;
            break;
        }
    }
    let nodes = provider.snapshot();
    assert!(
        settled,
        "seed {seed}: did not converge: {} nodes, {:?}",
        nodes.len(),
        c.counters()
    );
    assert!(nodes.iter().all(|n| n.kind() == Some(NodeKind::Worker)));
    // No duplicates and no leaks: every node ever created is one of the cluster's nodes
    // now, except leaks a controller found and terminated (none are expected here).
    assert_eq!(
        provider.nodes_created() as usize,
        TARGET + c.counters().leaks_terminated as usize,
        "seed {seed}: created {} nodes for a target of {TARGET}",
        provider.nodes_created()
    );
    assert_eq!(
        c.counters().leaks_terminated,
        0,
        "seed {seed}: a node went untracked"
    );
}

#[tokio::test(start_paused = true)]
async fn crash_anywhere_200_seeds() {
    for seed in 0..200 {
        run_seed(seed).await;
    }
}

/// A launch call that hangs is given up after the launcher's call timeout; the type
/// launches again on the next passes and the cluster still converges.
#[tokio::test(start_paused = true)]
async fn a_hanging_launch_call_times_out() {
    let provider = FakeProvider::new("hang");
    let store = Arc::new(InMemoryStore::new());
    provider.hold_creates(GateStage::BeforeCreate);
    let p = Arc::new(provider.clone());
    let config = ControllerConfig::default()
        .with_update_interval(INTERVAL)
        .with_launcher(
            LauncherConfig::default()
                .with_batch_size(10)
                .with_call_timeout(Duration::from_secs(30)),
        );
    let clock = TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let mut c = Controller::new(
        inputs(),
        config,
        Arc::clone(&p),
        Arc::clone(&store),
        Arc::new(SlowSetup(provider.clone(), 1)),
    )
    .with_clock(Arc::new(clock));
    // Launch calls hang while the gate holds them; they are given up after 30 s.
    for _ in 0..10 {
        let _ = c.run_pass().await;
        tokio::time::sleep(INTERVAL).await;
    }
    assert!(c.counters().launch_failures >= 1, "{:?}", c.counters());
    assert!(provider.snapshot().is_empty());
    // Once the cloud answers again, the cluster converges, and the abandoned calls
    // created nothing.
    provider.release_creates();
    for _ in 0..20 {
        beat(&provider, &store, &clock).await;
        let _ = c.run_pass().await;
        tokio::time::sleep(INTERVAL).await;
    }
    assert_eq!(provider.snapshot().len(), TARGET);
    assert_eq!(
        provider.nodes_created() as usize,
        TARGET,
        "{:?} {:?}",
        c.counters(),
        provider.calls()
    );
}
