//! One controller at a time: controllers sharing a cluster through the controller lease
//! (two `cloudtik-node head` after two concurrent starts), on the fake cloud with paused
//! tokio time. Also: a frozen ("paused") worker and the recovery rule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cloudtik_core::node::tags;
use cloudtik_core::scaler::planner::{NodeTypeConfig, ScalingConfig};
use cloudtik_core::scaler::{
    Clock, Controller, ControllerConfig, LaunchSpec, LeaseConfig, MarkUpToDate, NodeSetup, ScalingInputs,
    SetupMode, TokioClock,
};
use cloudtik_core::state::{CONTROLLER_LEASE, InMemoryStore, LeaseAcquire, NodeHeartbeat, StateStore};
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::{ErrorKind, NodeInfo, NodeKind, NodeProviderExt, NodeStatus, Resources, Tags};

const INTERVAL: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(30);
const MARGIN: Duration = Duration::from_secs(10);
const BASE_S: u64 = 1_800_000_000;

fn inputs(min: usize, max: usize) -> ScalingInputs {
    let worker = NodeTypeConfig::new(Resources::from_pairs([("CPU", 4.0)]), max).with_min_workers(min);
    ScalingInputs::new(
        ScalingConfig::new("head", max)
            .with_node_type("worker", worker)
            .with_idle_timeout(Duration::ZERO),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h1"))
}

fn clock_at(offset_s: u64) -> TokioClock {
    TokioClock::starting_at(UNIX_EPOCH + Duration::from_secs(BASE_S + offset_s))
}

type Ctl<U> = Controller<FakeProvider, InMemoryStore, U>;

fn leased<U: NodeSetup>(
    provider: &FakeProvider,
    store: &Arc<InMemoryStore>,
    setup: U,
    holder: &str,
    clock: TokioClock,
    min_max: (usize, usize),
) -> Ctl<U> {
    Controller::new(
        inputs(min_max.0, min_max.1),
        ControllerConfig::default().with_update_interval(INTERVAL),
        Arc::new(provider.clone()),
        Arc::clone(store),
        Arc::new(setup),
    )
    .with_clock(Arc::new(clock))
    .with_lease(LeaseConfig::new(holder).with_ttl(TTL, MARGIN))
}

/// The agents: one heartbeat per listed worker, except the frozen ones.
async fn beat(provider: &FakeProvider, store: &InMemoryStore, clock: &TokioClock, frozen: &BTreeSet<String>) {
    for n in provider.snapshot() {
        if frozen.contains(&n.id) {
            continue;
        }
        store
            .put_heartbeat(&NodeHeartbeat {
                node_id: n.id.clone(),
                node_ip: n.internal_ip.clone().unwrap_or_default(),
                node_kind: NodeKind::Worker,
                node_type: "worker".into(),
                seq_id: None,
                heartbeat_time: clock.unix_now(),
                total_resources: Resources::from_pairs([("CPU", 4.0)]),
                available_resources: Resources::new(),
            })
            .await
            .unwrap();
    }
}

/// Two controllers started at the same moment on one cluster (the issue: two `cloudtik
/// start` left two heads' controllers acting, 9 workers for `max_workers: 6`, healthy ones
/// removed as above the type's max): one acts, the other stands by; the worker count never
/// goes above 6 and nothing is terminated. When the acting one dies without releasing
/// (kill -9), the standby takes over within the lease's time to live and acts (it
/// replaces a worker the cloud lost).
#[tokio::test(start_paused = true)]
async fn two_controllers_one_acts_the_standby_takes_over_when_it_dies() {
    let provider = FakeProvider::new("two-heads");
    let store = Arc::new(InMemoryStore::new());
    let clock = clock_at(0);
    let mut handles = BTreeMap::new();
    let mut stops = BTreeMap::new();
    for holder in ["head-a", "head-b"] {
        let c = leased(
            &provider,
            &store,
            MarkUpToDate::new(provider.clone()),
            holder,
            clock,
            (6, 6),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.insert(holder, tx);
        handles.insert(
            holder,
            tokio::spawn(c.run(async move {
                let _ = rx.await;
            })),
        );
    }
    let none = BTreeSet::new();
    let mut most = 0;
    for _ in 0..60 {
        beat(&provider, &store, &clock, &none).await;
        most = most.max(provider.snapshot().len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(provider.snapshot().len(), 6);
    assert_eq!(most, 6, "never more than max_workers");
    assert_eq!(provider.nodes_created(), 6, "{:?}", provider.calls());
    assert_eq!(provider.calls().terminate, 0, "nothing was terminated");
    let first = store.lease(CONTROLLER_LEASE).await.unwrap().expect("a holder");
    let (acting, standby) = if first.holder == "head-a" {
        ("head-a", "head-b")
    } else {
        ("head-b", "head-a")
    };

    // kill -9 of the acting one: its task is dropped, the lease is not released.
    handles.remove(acting).unwrap().abort();
    let died = clock.unix_now();
    provider.kill_node(&provider.snapshot()[0].id);
    let mut took_over = None;
    for _ in 0..90 {
        beat(&provider, &store, &clock, &none).await;
        most = most.max(provider.snapshot().len());
        if took_over.is_none() {
            let now = store.lease(CONTROLLER_LEASE).await.unwrap().unwrap();
            if now.holder == standby {
                assert!(now.token > first.token, "a new acquisition, a larger token");
                took_over = Some(clock.unix_now() - died);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = took_over.expect("the standby took over");
    assert!(
        took <= (TTL + INTERVAL + Duration::from_secs(1)).as_secs_f64(),
        "took over {took}s after the holder died"
    );
    assert_eq!(provider.snapshot().len(), 6, "the lost worker was replaced");
    assert_eq!(most, 6);
    assert_eq!(provider.nodes_created(), 7);

    // A graceful stop releases the lease.
    let _ = stops.remove(standby).unwrap().send(());
    let counters = handles.remove(standby).unwrap().await.unwrap().unwrap();
    assert_eq!(counters.nodes_requested, 1, "{counters:?}");
    assert_eq!(store.lease(CONTROLLER_LEASE).await.unwrap(), None);
}

/// A stale controller (its clock says its lease is still valid, but another controller
/// took it over) is refused by the store: no launch record, no launch, no termination.
#[tokio::test(start_paused = true)]
async fn a_stale_controller_is_fenced() {
    let provider = FakeProvider::new("stale");
    let store = Arc::new(InMemoryStore::new());
    // A's clock is 60 s behind B's, so A still trusts a lease B sees as expired.
    let mut a = leased(
        &provider,
        &store,
        MarkUpToDate::new(provider.clone()),
        "a",
        clock_at(0),
        (2, 4),
    );
    let b_clock = clock_at(60);
    let mut b = leased(
        &provider,
        &store,
        MarkUpToDate::new(provider.clone()),
        "b",
        b_clock,
        (2, 4),
    );

    // A standby refuses to run a pass at all.
    let err = b.run_pass().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);

    assert!(a.lead().await);
    let token_a = a.lease().unwrap().token;
    // A records its launch (with its token) and spawns the call; before the call runs,
    // B takes the lease over.
    let report = a.run_pass().await.unwrap();
    assert_eq!(report.launched["worker"], 2);
    let pending = store.pending_launches().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending.values().next().unwrap().fence_token, Some(token_a));
    assert!(b.lead().await, "B sees A's lease expired and takes it");
    assert!(b.lease().unwrap().token > token_a);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        provider.nodes_created(),
        0,
        "A's launch call was refused before the provider call"
    );
    assert_eq!(provider.calls().create, 0);

    // A's next steps are refused by the store: a launch record, terminations.
    let err = a.run_pass().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    // Only A's own record (whose call never ran) is there; B adopts or clears it.
    assert!(
        store
            .pending_launches()
            .await
            .unwrap()
            .values()
            .all(|p| p.fence_token == Some(token_a))
    );

    // B acts: it launches the workers.
    for _ in 0..6 {
        let _ = b.run_pass().await;
        beat(&provider, &store, &b_clock, &BTreeSet::new()).await;
        tokio::time::sleep(INTERVAL).await;
        assert!(b.lead().await);
    }
    assert_eq!(provider.snapshot().len(), 2);
    // A, still believing it holds the lease, wants them gone (its max is now 0): refused.
    a.set_inputs(inputs(0, 0));
    let terminated_before = provider.calls().terminate;
    let _ = a.run_pass().await;
    assert_eq!(
        provider.calls().terminate,
        terminated_before,
        "no terminate call from A"
    );
    assert_eq!(provider.snapshot().len(), 2);
    // When A renews, it learns it lost the lease and stands by.
    assert!(!a.lead().await);
    assert_eq!(a.lease(), None);
    assert!(matches!(
        store.try_acquire_lease(CONTROLLER_LEASE, "c", b_clock.unix_now(), TTL).await.unwrap(),
        LeaseAcquire::HeldBy(l) if l.holder == "b"
    ));
}

/// A setup whose recovery runs wait for SSH while the node is frozen, as on a paused
/// container: it sets `waiting-for-ssh` and returns only once the node thaws.
#[derive(Debug, Clone)]
struct FreezableSetup {
    provider: FakeProvider,
    frozen: Arc<Mutex<BTreeSet<String>>>,
}

#[async_trait::async_trait]
impl NodeSetup for FreezableSetup {
    async fn set_up(&self, node: &NodeInfo, _mode: SetupMode) -> cloudtik_core::Result<()> {
        let mut t = Tags::new();
        t.insert(
            tags::NODE_STATUS.into(),
            NodeStatus::WaitingForSsh.as_str().into(),
        );
        self.provider.set_tags(&node.id, t.clone()).await?;
        while self.frozen.lock().unwrap().contains(&node.id) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        t.insert(tags::NODE_STATUS.into(), NodeStatus::UpToDate.as_str().into());
        self.provider.set_tags(&node.id, t).await
    }
}

/// Freezes one of 3 workers for `pause` (heartbeat timeout 30 s) and runs 4 minutes; the
/// ids of the workers at the end and the controller's recovery count.
async fn freeze_a_worker_for(pause: Duration) -> (String, Vec<String>, u64) {
    let provider = FakeProvider::new("paused");
    let store = Arc::new(InMemoryStore::new());
    let clock = clock_at(0);
    let frozen = Arc::new(Mutex::new(BTreeSet::new()));
    let setup = FreezableSetup {
        provider: provider.clone(),
        frozen: Arc::clone(&frozen),
    };
    let mut c = Controller::new(
        inputs(3, 3),
        ControllerConfig::default()
            .with_update_interval(INTERVAL)
            .with_heartbeat_timeout(Duration::from_secs(30)),
        Arc::new(provider.clone()),
        Arc::clone(&store),
        Arc::new(setup),
    )
    .with_clock(Arc::new(clock));
    let mut victim = String::new();
    let mut frozen_at = None;
    for second in 0..240u64 {
        if second == 20 {
            victim = provider.snapshot()[0].id.clone();
            frozen.lock().unwrap().insert(victim.clone());
            frozen_at = Some(second);
        }
        if frozen_at.is_some_and(|f| second == f + pause.as_secs()) {
            frozen.lock().unwrap().remove(&victim);
        }
        let f = frozen.lock().unwrap().clone();
        beat(&provider, &store, &clock, &f).await;
        if second % INTERVAL.as_secs() == 0 {
            let _ = c.run_pass().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ids = provider.snapshot().into_iter().map(|n| n.id).collect();
    (victim, ids, c.counters().recoveries)
}

/// A worker frozen for 60 s (twice the heartbeat timeout) gets a recovery run; it
/// heartbeats again within a heartbeat timeout of that run, so it is kept.
#[tokio::test(start_paused = true)]
async fn a_worker_paused_briefly_is_recovered_and_kept() {
    let (victim, ids, recoveries) = freeze_a_worker_for(Duration::from_secs(60)).await;
    assert_eq!(recoveries, 1);
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&victim), "the thawed worker is kept: {ids:?}");
}

/// A worker frozen for 125 s gets a recovery run, which waits for SSH; still lost a
/// heartbeat timeout later, it is terminated (the waiting recovery is given up) and
/// replaced.
#[tokio::test(start_paused = true)]
async fn a_worker_paused_long_is_replaced_one_timeout_after_its_recovery() {
    let (victim, ids, recoveries) = freeze_a_worker_for(Duration::from_secs(125)).await;
    assert_eq!(recoveries, 1);
    assert_eq!(ids.len(), 3, "replaced: {ids:?}");
    assert!(!ids.contains(&victim), "the frozen worker is gone: {ids:?}");
}
