//! The controller's rules as a pure function: [`reconcile`] takes what a pass
//! [`Observed`] (the provider's listing, the store's rows, what this process has in
//! flight), what the controller carries between passes ([`Memory`]) and the time, and
//! returns the [`Decisions`] the controller then applies. No I/O, no sleeps, no clock
//! reads: the same inputs always give the same decisions, so each rule is unit-tested
//! without a cloud, a store or a runtime.
//!
//! # Rules, in the order they are applied
//!
//! 1. **Memory** keeps only listed nodes; a node listed for the first time is
//!    remembered as first seen now.
//! 2. **Finished launches.** A pending-launch record whose call does not run in this
//!    process (a crashed controller made it, or it returned) is finished once each of
//!    its listed nodes is past `uninitialized` or being set up: the record is removed.
//! 3. **Leaks.** A worker still `uninitialized`, with no setup run, whose launch token
//!    (or lack of one) matches no record nor call in flight, listed for at least
//!    [`ControllerConfig::untracked_grace`]: [`TerminationCause::Leaked`].
//! 4. **Liveness** (with [`Liveness::Heartbeats`]). A worker without a heartbeat newer
//!    than the heartbeat timeout, that heartbeated before or was listed for a timeout,
//!    is *silent*. A silent `up-to-date` worker is lost: the planner lists it for
//!    recovery, which starts unless one was started and the worker has not spoken since.
//!    Silent a heartbeat timeout after its recovery started:
//!    [`TerminationCause::HeartbeatLost`] (its recovery run, if still going, is
//!    cancelled). Heartbeating again ends the recovery period: the worker is kept. With
//!    [`Liveness::ProviderOnly`] no worker is silent.
//! 5. **Plan.** The pure planner runs on the snapshot (idle times from the agents or
//!    the scaling policy; backed-off node types capped at what they have, so demand
//!    goes to other types); its terminations are [`TerminationCause::ScaleDown`] or
//!    [`TerminationCause::SetupFailed`], and its launches of types not backed off and
//!    with launch parameters are made.
//! 6. **Failed recoveries** remembered since the last pass:
//!    [`TerminationCause::RecoveryFailed`].
//! 7. **Stuck setups.** A worker not up to date, with no setup run, listed for at least
//!    [`ControllerConfig::setup_timeout`]: [`TerminationCause::SetupStuck`].
//! 8. **Setups.** Every worker not terminated, not complete, with no setup run, and
//!    tracked (past `uninitialized`, or its launch token known) gets a full setup run;
//!    lost workers get their recovery run.
//!
//! A node is terminated once per pass, for the first of its causes in this order.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use cloudtik_core::Resources;
//! use cloudtik_core::scaler::{
//!     ControllerConfig, LaunchSpec, Memory, NodeTypeConfig, Observed, ScalingConfig, ScalingInputs, reconcile,
//! };
//!
//! let worker = NodeTypeConfig::new(Resources::from_pairs([("CPU", 4.0)]), 4).with_min_workers(2);
//! let inputs = ScalingInputs::new(ScalingConfig::new("head", 4).with_node_type("worker", worker))
//!     .with_launch("worker", LaunchSpec::new(serde_json::json!({}), "h1"));
//! // An empty cluster, seen by a new controller: two workers to launch.
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let d = reconcile(&ControllerConfig::default(), &Observed::new(inputs), &Memory::new(), now);
//! assert_eq!(d.launch["worker"], 2);
//! assert!(d.terminate.is_empty());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::ControllerConfig;
#[cfg(doc)]
use super::config::Liveness;
use crate::node::{NodeId, NodeInfo, NodeKind, NodeStatus, tags};
use crate::resources::Resources;
use crate::scaler::inputs::ScalingInputs;
use crate::scaler::planner::{ClusterSnapshot, NodeSnapshot, ScalingPlan, TerminationReason, plan};
use crate::scaler::policy::ScalingState;
use crate::scaler::setup::SetupMode;
use crate::state::{NodeHeartbeat, PendingLaunch};

/// What a pass saw: one snapshot of the provider, the state store and this process.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Observed {
    /// The scaling inputs (node types, limits, launch parameters) of this pass.
    pub inputs: ScalingInputs,
    /// The provider's listing of the cluster's non-terminated nodes.
    pub nodes: Vec<NodeInfo>,
    /// The heartbeat rows in the store, by node id.
    pub heartbeats: BTreeMap<NodeId, NodeHeartbeat>,
    /// The pending-launch records in the store, by launch token.
    pub pending_launches: BTreeMap<String, PendingLaunch>,
    /// Resource demands (the store's and the scaling policy's).
    pub demands: Vec<Resources>,
    /// Persistent resource requests (`scale`).
    pub requests: Vec<Resources>,
    /// The scaling policy's view of nodes (by internal IP); empty without a policy.
    pub policy: ScalingState,
    /// Launch calls running in this process: launch token -> (node type, count).
    pub launches_in_flight: BTreeMap<String, (String, usize)>,
    /// Setup runs going in this process.
    pub setups_running: BTreeMap<NodeId, SetupMode>,
    /// Node types backed off after capacity or quota failures.
    pub backed_off: BTreeSet<String>,
}

impl Observed {
    /// An empty observation (no node, no row) for `inputs`.
    pub fn new(inputs: ScalingInputs) -> Self {
        Observed {
            inputs,
            nodes: Vec::new(),
            heartbeats: BTreeMap::new(),
            pending_launches: BTreeMap::new(),
            demands: Vec::new(),
            requests: Vec::new(),
            policy: ScalingState::default(),
            launches_in_flight: BTreeMap::new(),
            setups_running: BTreeMap::new(),
            backed_off: BTreeSet::new(),
        }
    }

    /// Adds a listed node.
    #[must_use]
    pub fn with_node(mut self, node: NodeInfo) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds a heartbeat row.
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: NodeHeartbeat) -> Self {
        self.heartbeats.insert(heartbeat.node_id.clone(), heartbeat);
        self
    }

    /// Adds a pending-launch record.
    #[must_use]
    pub fn with_pending_launch(mut self, token: impl Into<String>, launch: PendingLaunch) -> Self {
        self.pending_launches.insert(token.into(), launch);
        self
    }

    /// Adds a launch call in flight in this process.
    #[must_use]
    pub fn with_launch_in_flight(
        mut self,
        token: impl Into<String>,
        node_type: impl Into<String>,
        count: usize,
    ) -> Self {
        self.launches_in_flight
            .insert(token.into(), (node_type.into(), count));
        self
    }

    /// Adds a setup run going in this process.
    #[must_use]
    pub fn with_setup_running(mut self, node: impl Into<NodeId>, mode: SetupMode) -> Self {
        self.setups_running.insert(node.into(), mode);
        self
    }

    /// Adds resource demands.
    #[must_use]
    pub fn with_demands(mut self, demands: impl IntoIterator<Item = Resources>) -> Self {
        self.demands.extend(demands);
        self
    }

    /// Sets the scaling policy's answer.
    #[must_use]
    pub fn with_policy(mut self, policy: ScalingState) -> Self {
        self.policy = policy;
        self
    }

    /// Marks a node type backed off.
    #[must_use]
    pub fn with_backed_off(mut self, node_type: impl Into<String>) -> Self {
        self.backed_off.insert(node_type.into());
        self
    }
}

/// What the controller carries from one pass to the next. All of it only makes the
/// controller more conservative after a restart (an empty memory waits longer before
/// terminating), so it is never persisted.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Memory {
    /// When each listed node was first listed by this controller.
    pub first_seen: BTreeMap<NodeId, SystemTime>,
    /// Since when each node is idle.
    pub idle_since: BTreeMap<NodeId, SystemTime>,
    /// When the recovery run of each lost node started.
    pub recovery_started: BTreeMap<NodeId, SystemTime>,
    /// Recovery runs that failed since the last pass, with their error.
    pub failed_recoveries: BTreeMap<NodeId, String>,
}

impl Memory {
    /// An empty memory (a new controller's).
    pub fn new() -> Self {
        Self::default()
    }
}

/// Why the controller terminates a node. Its `Display` is the reason shown in logs,
/// events and the [`ScalingStatus`](super::ScalingStatus).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminationCause {
    /// An `uninitialized` worker no launch record nor call accounts for, listed longer
    /// than the untracked grace (e.g. created by a launch call that completed after its
    /// controller crashed).
    Leaked {
        /// Its launch token, if it has one.
        launch_token: Option<String>,
        /// How long it has been listed.
        age: Duration,
    },
    /// Its heartbeat is still lost a heartbeat timeout after its recovery run started.
    HeartbeatLost {
        /// How old its last heartbeat is; `None` when it never sent one.
        last_heartbeat: Option<Duration>,
        /// How long ago its recovery run started.
        since_recovery: Duration,
    },
    /// Its recovery run failed.
    RecoveryFailed {
        /// The run's error.
        error: String,
    },
    /// Not up to date long after it was first listed, with no setup run going.
    SetupStuck {
        /// Its status.
        status: NodeStatus,
        /// How long it has been listed.
        age: Duration,
    },
    /// Its setup failed (status `update-failed`).
    SetupFailed,
    /// The planner's decision: idle, above a limit, outdated launch config, or type
    /// removed from the config.
    ScaleDown {
        /// The planner's reason.
        reason: TerminationReason,
    },
}

impl TerminationCause {
    /// The cause for a planner termination.
    pub fn from_plan(reason: TerminationReason) -> Self {
        match reason {
            TerminationReason::UpdateFailed => TerminationCause::SetupFailed,
            reason => TerminationCause::ScaleDown { reason },
        }
    }

    /// A short, stable label (`leaked`, `heartbeat-lost`, `recovery-failed`,
    /// `setup-stuck`, `setup-failed`, `scale-down`) for metrics and grouping.
    pub fn label(&self) -> &'static str {
        match self {
            TerminationCause::Leaked { .. } => "leaked",
            TerminationCause::HeartbeatLost { .. } => "heartbeat-lost",
            TerminationCause::RecoveryFailed { .. } => "recovery-failed",
            TerminationCause::SetupStuck { .. } => "setup-stuck",
            TerminationCause::SetupFailed => "setup-failed",
            TerminationCause::ScaleDown { .. } => "scale-down",
        }
    }
}

/// What to tell the embedder of a node that never heartbeated.
pub(super) const NO_AGENT_HINT: &str =
    "is cloudtik-node's agent running on it? set Liveness::ProviderOnly for clusters without agents";

impl fmt::Display for TerminationCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| d.as_secs();
        match self {
            TerminationCause::Leaked {
                launch_token: Some(t),
                age,
            } => write!(
                f,
                "leaked: uninitialized worker with launch token {t} that no launch record accounts for, listed for {}s",
                s(age)
            ),
            TerminationCause::Leaked {
                launch_token: None,
                age,
            } => write!(
                f,
                "leaked: uninitialized worker without a launch token, listed for {}s",
                s(age)
            ),
            TerminationCause::HeartbeatLost {
                last_heartbeat: Some(last),
                since_recovery,
            } => write!(
                f,
                "heartbeat lost: last heartbeat {}s ago, still none {}s after its recovery run started",
                s(last),
                s(since_recovery)
            ),
            TerminationCause::HeartbeatLost {
                last_heartbeat: None,
                since_recovery,
            } => write!(
                f,
                "heartbeat lost: no heartbeat ever received ({NO_AGENT_HINT}), still none {}s after its recovery run started",
                s(since_recovery)
            ),
            TerminationCause::RecoveryFailed { error } => write!(f, "recovery failed: {error:#}"),
            TerminationCause::SetupStuck { status, age } => write!(
                f,
                "setup stuck: still {status} {}s after it was first listed, with no setup run going",
                s(age)
            ),
            TerminationCause::SetupFailed => f.write_str("setup failed (update-failed)"),
            TerminationCause::ScaleDown { reason } => f.write_str(match reason {
                TerminationReason::Idle => "scale down: idle longer than the idle timeout",
                TerminationReason::OutdatedLaunchHash => {
                    "scale down: launched with an outdated launch config"
                }
                TerminationReason::TypeRemoved => "scale down: its node type is no longer in the config",
                TerminationReason::AboveTypeMax => "scale down: above its node type's max_workers",
                TerminationReason::AboveGlobalMax => "scale down: above the cluster's max_workers",
                TerminationReason::UpdateFailed => "setup failed (update-failed)",
            }),
        }
    }
}

/// What a pass decided; the controller applies it in this order: records, memory,
/// cancellations, terminations, launches, setups, rows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Decisions {
    /// The planner's plan (for the status and the pass report).
    pub plan: ScalingPlan,
    /// Pending-launch records to remove (their launches are finished).
    pub finished_launches: Vec<String>,
    /// Setup runs to cancel (recoveries given up on nodes about to be terminated).
    pub cancel_setups: Vec<NodeId>,
    /// Nodes to terminate, each once, with its cause.
    pub terminate: Vec<(NodeId, TerminationCause)>,
    /// Nodes to launch per type (backed-off types and types without launch parameters
    /// left out).
    pub launch: BTreeMap<String, usize>,
    /// Workers to set up (full runs).
    pub setups: Vec<NodeId>,
    /// Lost workers to recover (recovery runs).
    pub recoveries: Vec<NodeId>,
    /// Heartbeat rows of nodes no longer listed, to remove.
    pub gone: Vec<NodeId>,
    /// Notes for the status, per node (e.g. why its heartbeat counts as lost).
    pub notes: BTreeMap<NodeId, String>,
    /// The memory for the next pass. It already counts the recoveries decided here as
    /// started; the controller forgets those it could not start.
    pub memory: Memory,
}

impl Decisions {
    /// The setup runs to start: full runs, then recoveries.
    pub fn setup_runs(&self) -> Vec<(NodeId, SetupMode)> {
        self.setups
            .iter()
            .map(|id| (id.clone(), SetupMode::Full))
            .chain(self.recoveries.iter().map(|id| (id.clone(), SetupMode::Recovery)))
            .collect()
    }

    /// The cause of a node's termination in this pass, if it is terminated.
    pub fn termination_of(&self, id: &str) -> Option<&TerminationCause> {
        self.terminate.iter().find(|(n, _)| n == id).map(|(_, c)| c)
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Decides one pass; see the module docs for the rules. Pure: no I/O, no sleeps, no
/// clock reads; `now` is the controller's clock at the start of the pass.
pub fn reconcile(
    config: &ControllerConfig,
    observed: &Observed,
    memory: &Memory,
    now: SystemTime,
) -> Decisions {
    let o = observed;
    let now_s = unix(now);
    let since = |t: &SystemTime| now.duration_since(*t).unwrap_or(Duration::ZERO);

    // 1. Memory of listed nodes only.
    let listed: BTreeSet<&str> = o.nodes.iter().map(|n| n.id.as_str()).collect();
    let keep = |m: &BTreeMap<NodeId, SystemTime>| -> BTreeMap<NodeId, SystemTime> {
        m.iter()
            .filter(|(id, _)| listed.contains(id.as_str()))
            .map(|(id, t)| (id.clone(), *t))
            .collect()
    };
    let mut mem = Memory {
        first_seen: keep(&memory.first_seen),
        idle_since: keep(&memory.idle_since),
        recovery_started: keep(&memory.recovery_started),
        failed_recoveries: BTreeMap::new(),
    };
    for n in &o.nodes {
        mem.first_seen.entry(n.id.clone()).or_insert(now);
    }
    let age = |id: &str| mem.first_seen.get(id).map(since).unwrap_or_default();

    // 2. Finished launches.
    let mut known_tokens: BTreeSet<&str> = o.pending_launches.keys().map(String::as_str).collect();
    known_tokens.extend(o.launches_in_flight.keys().map(String::as_str));
    let mut by_token: BTreeMap<&str, Vec<&NodeInfo>> = BTreeMap::new();
    for n in &o.nodes {
        if let Some(t) = n.tag(tags::LAUNCH_TOKEN) {
            by_token.entry(t).or_default().push(n);
        }
    }
    let finished_launches = o
        .pending_launches
        .keys()
        .filter(|token| !o.launches_in_flight.contains_key(*token))
        .filter(|token| {
            by_token
                .get(token.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .all(|n| {
                    n.status().is_some_and(|s| s != NodeStatus::Uninitialized)
                        || o.setups_running.contains_key(&n.id)
                })
        })
        .cloned()
        .collect();

    // 3. Leaks.
    let mut terminate: Vec<(NodeId, TerminationCause)> = Vec::new();
    for n in &o.nodes {
        if n.kind() != Some(NodeKind::Worker) {
            continue;
        }
        let token = n.tag(tags::LAUNCH_TOKEN);
        let untracked = n.status().unwrap_or(NodeStatus::Uninitialized) == NodeStatus::Uninitialized
            && !o.setups_running.contains_key(&n.id)
            && !token.is_some_and(|t| known_tokens.contains(t))
            && age(&n.id) >= config.untracked_grace;
        if untracked {
            terminate.push((
                n.id.clone(),
                TerminationCause::Leaked {
                    launch_token: token.map(str::to_string),
                    age: age(&n.id),
                },
            ));
        }
    }

    // 4. Liveness, and the planner's snapshot.
    let timeout = config.heartbeat_timeout;
    let heartbeats_on = config.liveness.uses_heartbeats();
    let mut snapshot = ClusterSnapshot {
        demands: o.demands.clone(),
        requests: o.requests.clone(),
        ..Default::default()
    };
    let mut notes = BTreeMap::new();
    let mut lost_after_recovery = Vec::new();
    for n in &o.nodes {
        let Some(kind) = n.kind() else { continue };
        let node_type = n.node_type().unwrap_or_default().to_string();
        let status = n.status().unwrap_or(NodeStatus::Uninitialized);
        let hb: Option<&NodeHeartbeat> = o.heartbeats.get(&n.id);
        let fresh = hb.filter(|h| !h.is_lost(now_s, timeout));
        // The policy's view of the node wins over the agent's.
        let by_policy = n.internal_ip.as_deref().and_then(|ip| o.policy.nodes.get(ip));
        let available = match (fresh, by_policy) {
            (Some(h), Some(p)) => {
                // Resources the policy does not count stay as the agent reports them.
                let mut a = h.available_resources.clone();
                for (name, amount) in p.available.iter() {
                    a.set(name, amount);
                }
                Some(a)
            }
            (Some(h), None) => Some(h.available_resources.clone()),
            // Without agents, the policy's view is all there is.
            (None, Some(p)) if !heartbeats_on => Some(p.available.clone()),
            (None, _) => None,
        };
        let idle = match (fresh, by_policy) {
            (Some(_), Some(p)) => !p.in_use,
            (Some(h), None) => h.available_resources.fits(&h.total_resources),
            (None, Some(p)) if !heartbeats_on => !p.in_use,
            (None, _) => false,
        };
        if idle {
            mem.idle_since.entry(n.id.clone()).or_insert(now);
        } else {
            mem.idle_since.remove(&n.id);
        }
        let seen_for = age(&n.id);
        let silent = heartbeats_on
            && kind == NodeKind::Worker
            && fresh.is_none()
            && (hb.is_some() || seen_for >= timeout);
        // Once a recovery ran, the node is lost while its heartbeat is, whatever its
        // status tag says (the recovery run moves it to `waiting-for-ssh`, where it
        // stays while the node is frozen).
        let heartbeat_lost = silent && status == NodeStatus::UpToDate;
        match mem.recovery_started.get(&n.id) {
            Some(t) if silent && since(t) >= timeout => {
                lost_after_recovery.push((
                    n.id.clone(),
                    TerminationCause::HeartbeatLost {
                        last_heartbeat: hb
                            .map(|h| Duration::from_secs_f64((now_s - h.heartbeat_time).max(0.0))),
                        since_recovery: since(t),
                    },
                ));
            }
            Some(_) if !silent => {
                mem.recovery_started.remove(&n.id);
            }
            _ => {}
        }
        if silent {
            let note = match hb {
                None => format!(
                    "no heartbeat ever received from node {} in {}s: {NO_AGENT_HINT}",
                    n.id,
                    seen_for.as_secs()
                ),
                Some(h) => format!(
                    "heartbeat lost: last heartbeat {:.0}s ago (timeout {}s)",
                    now_s - h.heartbeat_time,
                    timeout.as_secs()
                ),
            };
            notes.insert(n.id.clone(), note);
        }
        let launch_hash_current = kind != NodeKind::Worker
            || o.inputs
                .launch
                .get(&node_type)
                .is_some_and(|l| n.tag(tags::LAUNCH_CONFIG) == Some(l.launch_hash.as_str()));
        snapshot.nodes.push(NodeSnapshot {
            id: n.id.clone(),
            ip: n.internal_ip.clone(),
            node_type,
            kind,
            status,
            available,
            launch_hash_current,
            idle_since: mem.idle_since.get(&n.id).copied(),
            heartbeat_lost,
        });
    }
    // Launch calls in flight count as capacity, less the nodes of theirs already listed.
    for (token, (node_type, count)) in &o.launches_in_flight {
        let visible = by_token.get(token.as_str()).map_or(0, Vec::len);
        let left = count.saturating_sub(visible);
        if left > 0 {
            *snapshot.launching.entry(node_type.clone()).or_insert(0) += left;
        }
    }

    // 5. Plan, with backed-off types capped at what they have.
    let mut scaling = o.inputs.scaling.clone();
    let mut have: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &snapshot.nodes {
        if n.kind == NodeKind::Worker {
            *have.entry(n.node_type.as_str()).or_insert(0) += 1;
        }
    }
    for (t, cfg) in scaling.node_types.iter_mut() {
        if o.backed_off.contains(t) {
            let cap =
                have.get(t.as_str()).copied().unwrap_or(0) + snapshot.launching.get(t).copied().unwrap_or(0);
            cfg.max_workers = cfg.max_workers.min(cap);
            cfg.min_workers = cfg.min_workers.min(cfg.max_workers);
        }
    }
    let plan = plan(&scaling, &snapshot, now);
    for t in &plan.to_terminate {
        terminate.push((t.node_id.clone(), TerminationCause::from_plan(t.reason)));
    }
    // A recovery still running (e.g. waiting for SSH to a frozen node) is given up.
    let mut cancel_setups = Vec::new();
    let mut running = o.setups_running.clone();
    for (id, cause) in lost_after_recovery {
        if running.remove(&id).is_some() {
            cancel_setups.push(id.clone());
        }
        terminate.push((id, cause));
    }

    // 6. Failed recoveries.
    for (id, error) in &memory.failed_recoveries {
        if listed.contains(id.as_str()) {
            terminate.push((
                id.clone(),
                TerminationCause::RecoveryFailed { error: error.clone() },
            ));
        }
    }

    // 7. Stuck setups.
    for n in &o.nodes {
        let status = n.status().unwrap_or(NodeStatus::Uninitialized);
        if n.kind() == Some(NodeKind::Worker)
            && !status.is_completed()
            && !running.contains_key(&n.id)
            && age(&n.id) >= config.setup_timeout
        {
            terminate.push((
                n.id.clone(),
                TerminationCause::SetupStuck {
                    status,
                    age: age(&n.id),
                },
            ));
        }
    }
    let mut seen = BTreeSet::new();
    terminate.retain(|(id, _)| seen.insert(id.clone()));

    let launch = plan
        .to_launch
        .iter()
        .filter(|(t, _)| !o.backed_off.contains(*t) && o.inputs.launch.contains_key(*t))
        .map(|(t, n)| (t.clone(), *n))
        .collect();

    // 8. Setups: new workers, workers a crashed controller left half set up, recoveries.
    let terminated: BTreeSet<&str> = terminate.iter().map(|(id, _)| id.as_str()).collect();
    let mut setups = Vec::new();
    for n in &o.nodes {
        if n.kind() != Some(NodeKind::Worker)
            || terminated.contains(n.id.as_str())
            || running.contains_key(&n.id)
        {
            continue;
        }
        let status = n.status().unwrap_or(NodeStatus::Uninitialized);
        let tracked = n
            .tag(tags::LAUNCH_TOKEN)
            .is_some_and(|t| known_tokens.contains(t))
            || status != NodeStatus::Uninitialized;
        if !status.is_completed() && tracked {
            setups.push(n.id.clone());
        }
    }
    let mut recoveries = Vec::new();
    for id in &plan.to_recover {
        if !terminated.contains(id.as_str())
            && !mem.recovery_started.contains_key(id)
            && !running.contains_key(id)
        {
            mem.recovery_started.insert(id.clone(), now);
            recoveries.push(id.clone());
        }
    }

    let gone = o
        .heartbeats
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .cloned()
        .collect();
    Decisions {
        plan,
        finished_launches,
        cancel_setups,
        terminate,
        launch,
        setups,
        recoveries,
        gone,
        notes,
        memory: mem,
    }
}
