//! The rules of [`reconcile`], one at a time: no I/O, no sleeps, times are values.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::reconcile::NO_AGENT_HINT;
use super::*;
use crate::node::{NodeInfo, NodeKind, NodeState, NodeStatus, Tags, tags};
use crate::resources::Resources;
use crate::scaler::inputs::LaunchSpec;
use crate::scaler::planner::{NodeTypeConfig, ScalingConfig, TerminationReason};
use crate::scaler::policy::{NodeResourceState, ScalingState};
use crate::state::{NodeHeartbeat, PendingLaunch};

const T0: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn cpu() -> Resources {
    Resources::from_pairs([("CPU", 4.0)])
}

/// One worker type, `min_workers` of it at least, 10 at most; idle nodes go after 10 min.
fn inputs(min_workers: usize) -> ScalingInputs {
    ScalingInputs::new(
        ScalingConfig::new("head", 10)
            .with_node_type(
                "worker",
                NodeTypeConfig::new(cpu(), 10).with_min_workers(min_workers),
            )
            .with_idle_timeout(secs(600)),
    )
    .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h1"))
}

fn worker(id: &str, status: NodeStatus, token: Option<&str>) -> NodeInfo {
    let mut t = Tags::new();
    t.insert(tags::NODE_KIND.into(), NodeKind::Worker.as_str().into());
    t.insert(tags::USER_NODE_TYPE.into(), "worker".into());
    t.insert(tags::NODE_STATUS.into(), status.as_str().into());
    t.insert(tags::LAUNCH_CONFIG.into(), "h1".into());
    if let Some(token) = token {
        t.insert(tags::LAUNCH_TOKEN.into(), token.into());
    }
    NodeInfo {
        id: id.into(),
        state: NodeState::Running,
        tags: t,
        internal_ip: Some(format!("10.0.0.{}", id.len())),
        external_ip: None,
        instance_type: None,
    }
}

fn up(id: &str) -> NodeInfo {
    worker(id, NodeStatus::UpToDate, None)
}

/// A heartbeat of `id` sent at `secs`, the node busy (nothing free).
fn beat(id: &str, secs: u64) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: id.into(),
        node_ip: "10.0.0.1".into(),
        node_kind: NodeKind::Worker,
        node_type: "worker".into(),
        seq_id: None,
        heartbeat_time: (T0 + secs) as f64,
        total_resources: cpu(),
        available_resources: Resources::new(),
    }
}

fn record(count: usize) -> PendingLaunch {
    PendingLaunch {
        node_type: "worker".into(),
        count,
        created_time: T0 as f64,
        fence_token: None,
    }
}

/// A memory in which every node of `observed` was first seen at `secs`.
fn seen_at(observed: &Observed, secs: u64) -> Memory {
    let mut m = Memory::new();
    for n in &observed.nodes {
        m.first_seen.insert(n.id.clone(), at(secs));
    }
    m
}

fn config() -> ControllerConfig {
    ControllerConfig::default()
}

fn decide(observed: &Observed, memory: &Memory, now: u64) -> Decisions {
    reconcile(&config(), observed, memory, at(now))
}

// ---- leaks ----

#[test]
fn an_unrecorded_uninitialized_worker_is_a_leak_after_the_grace() {
    let o = Observed::new(inputs(0)).with_node(worker("w", NodeStatus::Uninitialized, Some("t-lost")));
    let m = seen_at(&o, 0);
    let grace = config().untracked_grace.as_secs();
    let before = decide(&o, &m, grace - 1);
    assert!(before.terminate.is_empty(), "{:?}", before.terminate);
    assert!(before.setups.is_empty(), "an untracked node is not set up");
    let after = decide(&o, &m, grace);
    assert_eq!(
        after.terminate,
        vec![(
            "w".to_string(),
            TerminationCause::Leaked {
                launch_token: Some("t-lost".into()),
                age: secs(grace),
            }
        )]
    );
    assert!(after.termination_of("w").unwrap().to_string().contains("t-lost"));
    // A new controller's memory starts the grace again.
    assert!(decide(&o, &Memory::new(), grace).terminate.is_empty());
}

#[test]
fn a_worker_without_a_launch_token_is_a_leak_too() {
    let o = Observed::new(inputs(0)).with_node(worker("w", NodeStatus::Uninitialized, None));
    let d = decide(&o, &seen_at(&o, 0), 300);
    assert_eq!(
        d.termination_of("w"),
        Some(&TerminationCause::Leaked {
            launch_token: None,
            age: secs(300)
        })
    );
    assert_eq!(d.termination_of("w").unwrap().label(), "leaked");
}

#[test]
fn a_recorded_in_flight_or_running_worker_is_no_leak() {
    let recorded = Observed::new(inputs(0))
        .with_node(worker("a", NodeStatus::Uninitialized, Some("t-rec")))
        .with_pending_launch("t-rec", record(1));
    let in_flight = Observed::new(inputs(0))
        .with_node(worker("a", NodeStatus::Uninitialized, Some("t-fly")))
        .with_launch_in_flight("t-fly", "worker", 1);
    let setting_up = Observed::new(inputs(0))
        .with_node(worker("a", NodeStatus::Uninitialized, Some("t-lost")))
        .with_setup_running("a", SetupMode::Full);
    for o in [recorded, in_flight, setting_up] {
        let d = decide(&o, &seen_at(&o, 0), 10_000);
        assert!(
            !matches!(d.termination_of("a"), Some(TerminationCause::Leaked { .. })),
            "{o:?}: {:?}",
            d.terminate
        );
    }
}

// ---- heartbeats ----

#[test]
fn a_lost_heartbeat_gets_one_recovery_then_the_worker_is_replaced() {
    // Heartbeats stop at 0; timeout 30 s.
    let o = Observed::new(inputs(1))
        .with_node(up("w"))
        .with_heartbeat(beat("w", 0));
    let m = seen_at(&o, 0);
    let fresh = decide(&o, &m, 30);
    assert!(fresh.recoveries.is_empty() && fresh.notes.is_empty());

    let lost = decide(&o, &m, 31);
    assert_eq!(lost.recoveries, vec!["w".to_string()]);
    assert_eq!(lost.setup_runs(), vec![("w".to_string(), SetupMode::Recovery)]);
    assert_eq!(lost.memory.recovery_started.get("w"), Some(&at(31)));
    assert!(lost.notes["w"].contains("heartbeat lost"), "{:?}", lost.notes);
    assert!(lost.terminate.is_empty());

    // The recovery runs (e.g. waits for SSH); no second one, nothing terminated yet.
    let o = o.with_setup_running("w", SetupMode::Recovery);
    let waiting = decide(&o, &lost.memory, 60);
    assert!(waiting.recoveries.is_empty() && waiting.terminate.is_empty());

    // A heartbeat timeout after the recovery started: terminated, its run cancelled.
    let replaced = decide(&o, &waiting.memory, 61);
    assert_eq!(
        replaced.terminate,
        vec![(
            "w".to_string(),
            TerminationCause::HeartbeatLost {
                last_heartbeat: Some(secs(61)),
                since_recovery: secs(30),
            }
        )]
    );
    assert_eq!(replaced.cancel_setups, vec!["w".to_string()]);
    let why = replaced.terminate[0].1.to_string();
    assert!(
        why.contains("last heartbeat 61s ago") && why.contains("30s after its recovery"),
        "{why}"
    );
}

#[test]
fn a_recovery_that_finished_without_a_heartbeat_still_ends_in_replacement() {
    let o = Observed::new(inputs(1))
        .with_node(worker("w", NodeStatus::WaitingForSsh, None))
        .with_heartbeat(beat("w", 0));
    let mut m = seen_at(&o, 0);
    m.recovery_started.insert("w".into(), at(31));
    let d = decide(&o, &m, 61);
    assert!(matches!(
        d.termination_of("w"),
        Some(TerminationCause::HeartbeatLost { .. })
    ));
    assert!(d.cancel_setups.is_empty(), "no run to cancel");
    assert!(d.setups.is_empty(), "a terminated node is not set up");
}

#[test]
fn a_heartbeat_back_within_the_timeout_keeps_the_worker() {
    let o = Observed::new(inputs(1))
        .with_node(up("w"))
        .with_heartbeat(beat("w", 50));
    let mut m = seen_at(&o, 0);
    m.recovery_started.insert("w".into(), at(31));
    let d = decide(&o, &m, 61);
    assert!(d.terminate.is_empty(), "{:?}", d.terminate);
    assert!(d.recoveries.is_empty());
    assert!(d.notes.is_empty());
    assert!(!d.memory.recovery_started.contains_key("w"), "the loss is over");
    // Lost again later: a new recovery.
    let again = decide(&o, &d.memory, 81);
    assert_eq!(again.recoveries, vec!["w".to_string()]);
}

#[test]
fn a_failed_recovery_terminates_the_worker_once() {
    let o = Observed::new(inputs(1))
        .with_node(up("w"))
        .with_heartbeat(beat("w", 100));
    let mut m = seen_at(&o, 0);
    m.failed_recoveries.insert("w".into(), "ssh: timed out".into());
    m.failed_recoveries.insert("gone".into(), "ssh: timed out".into());
    let d = decide(&o, &m, 100);
    assert_eq!(
        d.terminate,
        vec![(
            "w".to_string(),
            TerminationCause::RecoveryFailed {
                error: "ssh: timed out".into()
            }
        )]
    );
    assert!(d.memory.failed_recoveries.is_empty());
}

// ---- liveness ----

#[test]
fn a_worker_that_never_heartbeated_is_named_with_the_agent_hint() {
    let o = Observed::new(inputs(1)).with_node(up("w"));
    let m = seen_at(&o, 0);
    assert!(decide(&o, &m, 29).notes.is_empty(), "listed less than a timeout");
    let lost = decide(&o, &m, 30);
    let note = &lost.notes["w"];
    assert!(
        note.starts_with("no heartbeat ever received from node w in 30s"),
        "{note}"
    );
    assert!(note.contains(NO_AGENT_HINT), "{note}");
    assert!(note.contains("Liveness::ProviderOnly"), "{note}");
    assert_eq!(lost.recoveries, vec!["w".to_string()]);
    let replaced = decide(&o, &lost.memory, 60);
    let cause = replaced.termination_of("w").unwrap();
    assert_eq!(
        cause,
        &TerminationCause::HeartbeatLost {
            last_heartbeat: None,
            since_recovery: secs(30)
        }
    );
    let why = cause.to_string();
    assert!(why.contains("no heartbeat ever received"), "{why}");
    assert!(why.contains("is cloudtik-node's agent running on it?"), "{why}");
}

#[test]
fn provider_only_liveness_trusts_the_provider() {
    let cfg = config().with_liveness(Liveness::ProviderOnly);
    let o = Observed::new(inputs(1))
        .with_node(up("never"))
        .with_node(up("stale"))
        .with_heartbeat(beat("stale", 0));
    let mut m = seen_at(&o, 0);
    // A recovery remembered from before the switch is forgotten.
    m.recovery_started.insert("stale".into(), at(31));
    for now in [31, 61, 10_000] {
        let d = reconcile(&cfg, &o, &m, at(now));
        assert!(d.terminate.is_empty(), "{now}: {:?}", d.terminate);
        assert!(d.recoveries.is_empty() && d.notes.is_empty(), "{now}: {d:?}");
        assert!(d.plan.to_recover.is_empty());
        assert!(d.memory.recovery_started.is_empty());
        m = d.memory;
    }
}

#[test]
fn provider_only_liveness_uses_the_policy_for_idleness() {
    let cfg = config().with_liveness(Liveness::ProviderOnly);
    let n = up("w");
    let ip = n.internal_ip.clone().unwrap();
    let o = Observed::new(inputs(0))
        .with_node(n)
        .with_policy(ScalingState::new().with_node(ip, NodeResourceState::new(cpu(), false)));
    let d = reconcile(&cfg, &o, &seen_at(&o, 0), at(100));
    assert_eq!(d.memory.idle_since.get("w"), Some(&at(100)));
    // Idle past the idle timeout: scaled down.
    let later = reconcile(&cfg, &o, &d.memory, at(700));
    assert_eq!(
        later.termination_of("w"),
        Some(&TerminationCause::ScaleDown {
            reason: TerminationReason::Idle
        })
    );
    // Without agents nor a policy, a node is never idle.
    let bare = Observed::new(inputs(0)).with_node(up("w"));
    let d = reconcile(&cfg, &bare, &seen_at(&bare, 0), at(10_000));
    assert!(d.memory.idle_since.is_empty() && d.terminate.is_empty());
}

// ---- setups ----

#[test]
fn a_stuck_setup_is_terminated_after_the_setup_timeout() {
    let o = Observed::new(inputs(1)).with_node(worker("w", NodeStatus::WaitingForSsh, None));
    let m = seen_at(&o, 0);
    let timeout = config().setup_timeout.as_secs();
    let before = decide(&o, &m, timeout - 1);
    assert!(before.terminate.is_empty());
    assert_eq!(
        before.setups,
        vec!["w".to_string()],
        "left half set up: set up again"
    );
    let after = decide(&o, &m, timeout);
    assert_eq!(
        after.termination_of("w"),
        Some(&TerminationCause::SetupStuck {
            status: NodeStatus::WaitingForSsh,
            age: secs(timeout)
        })
    );
    assert!(after.setups.is_empty());
    // A setup run going is not stuck.
    let running = o.with_setup_running("w", SetupMode::Full);
    assert!(decide(&running, &m, timeout).terminate.is_empty());
}

#[test]
fn which_workers_get_set_up() {
    let mut head = worker("head", NodeStatus::Uninitialized, None);
    head.tags
        .insert(tags::NODE_KIND.into(), NodeKind::Head.as_str().into());
    let o = Observed::new(inputs(0))
        .with_pending_launch("t-rec", record(1))
        .with_node(worker("recorded", NodeStatus::Uninitialized, Some("t-rec")))
        .with_node(worker("unknown", NodeStatus::Uninitialized, Some("t-x")))
        .with_node(worker("half", NodeStatus::SettingUp, None))
        .with_node(up("done"))
        .with_node(worker("failed", NodeStatus::UpdateFailed, None))
        .with_node(worker("running", NodeStatus::Uninitialized, Some("t-rec")))
        .with_setup_running("running", SetupMode::Full)
        .with_node(head);
    let m = seen_at(&o, 0);
    let d = decide(&o, &m, 10);
    assert_eq!(d.setups, vec!["recorded".to_string(), "half".to_string()]);
    assert!(d.recoveries.is_empty());
    assert_eq!(d.termination_of("failed"), Some(&TerminationCause::SetupFailed));
}

// ---- launches ----

#[test]
fn pending_launches_of_a_crashed_controller_are_finished() {
    // A crashed controller recorded t1 (one node listed, still uninitialized) and t2
    // (nothing listed: the call failed or never ran); this process runs t3.
    let o = Observed::new(inputs(3))
        .with_pending_launch("t1", record(1))
        .with_pending_launch("t2", record(2))
        .with_pending_launch("t3", record(2))
        .with_launch_in_flight("t3", "worker", 2)
        .with_node(worker("x", NodeStatus::Uninitialized, Some("t1")))
        .with_node(worker("y", NodeStatus::Uninitialized, Some("t3")));
    let m = seen_at(&o, 0);
    let d = decide(&o, &m, 5);
    assert_eq!(d.finished_launches, vec!["t2".to_string()]);
    assert_eq!(d.setups, vec!["x".to_string(), "y".to_string()], "adopted");
    // 2 listed + 1 of t3 still to come: min_workers 3 holds, nothing launches.
    assert!(d.launch.is_empty(), "{:?}", d.launch);
    assert!(d.terminate.is_empty());

    // Once x is being set up (or past uninitialized) t1 is finished.
    let o = o.with_setup_running("x", SetupMode::Full);
    let d = decide(&o, &m, 10);
    assert_eq!(d.finished_launches, vec!["t1".to_string(), "t2".to_string()]);
}

#[test]
fn backed_off_types_launch_nothing() {
    let o = Observed::new(inputs(2));
    let d = decide(&o, &Memory::new(), 0);
    assert_eq!(d.launch, BTreeMap::from([("worker".to_string(), 2)]));
    let d = decide(&o.with_backed_off("worker"), &Memory::new(), 0);
    assert!(d.launch.is_empty(), "{:?}", d.launch);
}

// ---- memory ----

#[test]
fn memory_keeps_listed_nodes_only_and_rows_of_gone_nodes_go() {
    let o = Observed::new(inputs(1))
        .with_node(up("w"))
        .with_heartbeat(beat("w", 10))
        .with_heartbeat(beat("gone", 0));
    let mut m = Memory::new();
    m.first_seen.insert("gone".into(), at(0));
    m.idle_since.insert("gone".into(), at(0));
    m.recovery_started.insert("gone".into(), at(0));
    let d = decide(&o, &m, 10);
    assert_eq!(d.memory.first_seen, BTreeMap::from([("w".to_string(), at(10))]));
    assert!(d.memory.idle_since.is_empty() && d.memory.recovery_started.is_empty());
    assert_eq!(d.gone, vec!["gone".to_string()]);
}

#[test]
fn a_node_is_terminated_once_for_its_first_cause() {
    // Outdated launch hash (planner) and stuck: the planner's cause comes first.
    let mut n = worker("w", NodeStatus::WaitingForSsh, None);
    n.tags.insert(tags::LAUNCH_CONFIG.into(), "old".into());
    let o = Observed::new(inputs(0)).with_node(n);
    let d = decide(&o, &seen_at(&o, 0), 10_000);
    assert_eq!(
        d.terminate,
        vec![(
            "w".to_string(),
            TerminationCause::ScaleDown {
                reason: TerminationReason::OutdatedLaunchHash
            }
        )]
    );
    assert_eq!(
        d.terminate[0].1.to_string(),
        "scale down: launched with an outdated launch config"
    );
}

#[test]
fn reconcile_is_deterministic() {
    let o = Observed::new(inputs(2))
        .with_node(up("a"))
        .with_heartbeat(beat("a", 0))
        .with_node(worker("b", NodeStatus::Uninitialized, Some("t")));
    let m = seen_at(&o, 0);
    assert_eq!(decide(&o, &m, 400), decide(&o, &m, 400));
}
