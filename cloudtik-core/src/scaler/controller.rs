//! The controller loop: CloudTik's cluster controller (ClusterScaler + NodeLauncher),
//! level-triggered and crash-safe.
//!
//! Each [`Controller::run_pass`]:
//!
//! 1. collects the launches and setup runs that finished since the last pass;
//! 2. **snapshots**: one provider listing of the cluster's nodes, and one batched read
//!    each of heartbeats, resource demands, resource requests and pending launches;
//! 3. **reconciles** launches: a pending launch whose call is not running in this process
//!    (it was made by a controller that crashed) is finished: its nodes are adopted like
//!    any other, and its record is removed once they are being set up; a worker that is
//!    still `uninitialized`, carries a launch token nobody recorded and is older than
//!    [`ControllerConfig::untracked_grace`] is a leak and is terminated;
//! 4. **plans** with the pure [`plan`](super::plan()) (backed-off node types are capped at
//!    what they have, so demand goes to other types);
//! 5. **applies**: terminations in batches, launches (each recorded in the state store
//!    *before* the provider call, with a fresh token the provider uses for
//!    idempotency), setup runs for new workers, recovery runs for workers whose heartbeat
//!    is lost: one recovery run per loss; a worker whose heartbeat is still lost a
//!    heartbeat timeout after its recovery started is terminated and replaced, whether
//!    the recovery finished or still runs (e.g. waiting for SSH to a frozen node: that
//!    run is cancelled); a worker that heartbeats again within that time is kept;
//! 6. **publishes** a [`ScalingStatus`] to the state store.
//!
//! Nothing is carried from one pass to the next that the next pass could not rebuild
//! from the provider and the store, except what only makes things more conservative
//! after a restart (how long a node has been idle or unreachable starts counting again).
//!
//! # One controller at a time
//!
//! With [`Controller::with_lease`], controllers of one cluster (e.g. two `cloudtik-node
//! head` processes after two concurrent starts) share it through a lease in the state
//! store ([`Lease`]): one acts, the others stand by.
//!
//! * Each pass first renews the lease ([`Controller::lead`]); a standby tries to acquire
//!   it on each tick instead ("standing by (lease held by X until T)") and takes over once
//!   it expires: [`LeaseConfig::ttl`] (30 s) after the holder's last renewal, or at once
//!   when the holder released it at shutdown. Renewals happen every pass
//!   ([`ControllerConfig::update_interval`], 5 s).
//! * The holder acts only while its last renewal is less than `ttl - margin` (20 s) old,
//!   and steps down (cancelling its setup runs) when a renewal says another controller
//!   holds the lease.
//! * **Fencing.** Every acquisition takes a larger token. Launch records are written with
//!   a compare-token-then-write in the store ([`StateStore::put_pending_launch_fenced`];
//!   the record keeps the token); right before each `create_nodes` (in the launch task),
//!   each `terminate_nodes` batch and the setup runs of a pass (which write node tags), the
//!   controller checks its lease is valid locally and its token is current in the store
//!   ([`StateStore::check_fence`]). A stale controller's steps are refused.
//! * **The remaining window.** The [`NodeProvider`] calls are not themselves conditional
//!   on the token (clouds have no such precondition): a call that passed its check may
//!   still run after the lease moved, if the holder was frozen for more than `margin`
//!   between the check and the call, or a call was already in flight. Its nodes are then
//!   adopted (their launch record exists) or, without a record, removed as untracked after
//!   the grace period; a setup run that already started keeps writing its node's tags
//!   until it ends or the controller steps down.
//!
//! # Crash safety
//!
//! Dropping the controller anywhere leaves: nodes that exist (adopted by the next
//! controller), pending-launch records (finished by the next controller), and no node
//! that nobody will account for. A launch call that a crashed controller made and that
//! completes only after the next controller started (possible with real clouds) creates
//! nodes with an unknown token; they are terminated after the grace period, so there are
//! no leaks, at the cost of a short-lived extra node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::clock::{Clock, TokioClock};
use super::inputs::ScalingInputs;
use super::launcher::{LaunchGate, Launcher, LauncherConfig};
use super::planner::{ClusterSnapshot, DemandShape, NodeSnapshot, ScalingPlan, plan};
use super::policy::{POLICY_TIMEOUT, ScalingPolicy, ScalingState};
use super::setup::{NodeSetup, SetupMode};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeInfo, NodeKind, NodeStatus, Tags, tags};
use crate::provider::{LaunchRequest, NodeProvider, new_launch_token};
use crate::state::{
    CONTROLLER_LEASE, ClusterEvent, EventSeverity, Fence, Lease, LeaseAcquire, NodeHeartbeat, PendingLaunch,
    StateStore, StateStoreExt,
};

/// Controller settings. Defaults are CloudTik's.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ControllerConfig {
    /// Time between passes (CloudTik: 5 s).
    pub update_interval: Duration,
    /// A node without a heartbeat for this long is lost (CloudTik: 30 s).
    pub heartbeat_timeout: Duration,
    /// How long an `uninitialized` worker with an unknown launch token may exist before
    /// it is terminated as a leak.
    pub untracked_grace: Duration,
    /// A worker still not up to date this long after it was first listed, with no setup
    /// run going, is terminated.
    pub setup_timeout: Duration,
    /// Setup runs at once at most (CloudTik: 50).
    pub max_concurrent_setups: usize,
    /// How launches are made.
    pub launcher: LauncherConfig,
    /// How long shutdown waits for launch calls in flight.
    pub shutdown_timeout: Duration,
    /// Between passes, how often the scaling policy (if any) is asked whether new work
    /// is waiting; more demands than the last pass saw start a pass at once, so a
    /// runtime's demand reaches the launcher within about this long plus a pass, not an
    /// `update_interval` later. `None`: only the regular passes.
    pub demand_poll_interval: Option<Duration>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            update_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            untracked_grace: Duration::from_secs(300),
            setup_timeout: Duration::from_secs(1800),
            max_concurrent_setups: 50,
            launcher: LauncherConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
            demand_poll_interval: Some(Duration::from_secs(1)),
        }
    }
}

impl ControllerConfig {
    /// Sets `update_interval`.
    pub fn with_update_interval(mut self, d: Duration) -> Self {
        self.update_interval = d;
        self
    }
    /// Sets `heartbeat_timeout`.
    pub fn with_heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }
    /// Sets `untracked_grace`.
    pub fn with_untracked_grace(mut self, d: Duration) -> Self {
        self.untracked_grace = d;
        self
    }
    /// Sets `setup_timeout`.
    pub fn with_setup_timeout(mut self, d: Duration) -> Self {
        self.setup_timeout = d;
        self
    }
    /// Sets `max_concurrent_setups`.
    pub fn with_max_concurrent_setups(mut self, n: usize) -> Self {
        self.max_concurrent_setups = n.max(1);
        self
    }
    /// Sets `demand_poll_interval` (`None`: no polling between passes).
    pub fn with_demand_poll_interval(mut self, d: Option<Duration>) -> Self {
        self.demand_poll_interval = d;
        self
    }
    /// Sets the launcher settings.
    pub fn with_launcher(mut self, l: LauncherConfig) -> Self {
        self.launcher = l;
        self
    }
}

/// How a controller makes sure it is the only one acting on its cluster: a lease in the
/// state store (see [`Lease`]) that it renews every pass; see the module docs, "One
/// controller at a time".
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// The lease's name ([`CONTROLLER_LEASE`]).
    pub name: String,
    /// This controller's holder id, unique per process ([`LeaseConfig::unique_holder`]).
    pub holder: String,
    /// How long the lease lasts after each renewal (30 s): a controller that stops
    /// renewing (killed, frozen, cut off from the store) is replaced by a standby about
    /// this long after its last renewal.
    pub ttl: Duration,
    /// The holder stops acting when its last renewal is `ttl - margin` old (10 s), so it
    /// stops before the lease could expire for a standby.
    pub margin: Duration,
}

impl LeaseConfig {
    /// The controller lease for `holder`, with a 30 s time to live and a 10 s margin.
    pub fn new(holder: impl Into<String>) -> Self {
        LeaseConfig {
            name: CONTROLLER_LEASE.to_string(),
            holder: holder.into(),
            ttl: Duration::from_secs(30),
            margin: Duration::from_secs(10),
        }
    }

    /// A holder id unique to this process: `<host>:<pid>:<random>`.
    pub fn unique_holder(host: &str) -> String {
        let random: String = new_launch_token()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        format!("{host}:{}:{random}", std::process::id())
    }

    /// Sets `ttl` and `margin` (the margin is kept below the ttl).
    pub fn with_ttl(mut self, ttl: Duration, margin: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self.margin = margin.min(self.ttl / 2);
        self
    }
}

/// The lease this controller holds, shared with its launch calls (which check the fence
/// right before calling the provider).
#[derive(Debug)]
struct Leadership {
    config: LeaseConfig,
    held: std::sync::Mutex<Option<Lease>>,
    clock: Arc<dyn Clock>,
}

impl Leadership {
    fn held(&self) -> Option<Lease> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, lease: Option<Lease>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }

    /// The fence to act with, when this controller holds the lease and renewed it
    /// recently enough; else the error of a refused step.
    fn fence(&self, op: &'static str) -> Result<Fence> {
        let now = self.clock.unix_now();
        match self.held() {
            Some(l) if l.valid_locally(now, self.config.margin) => Ok(l.fence()),
            Some(l) => Err(Error::new(
                crate::ErrorKind::Conflict,
                format!(
                    "fenced: the controller lease (token {}) was last renewed {:.0}s ago; not acting until it is renewed",
                    l.token,
                    now - l.renewed_at
                ),
            )
            .with_operation(op)),
            None => Err(Error::new(
                crate::ErrorKind::Conflict,
                "fenced: this controller does not hold the controller lease",
            )
            .with_operation(op)),
        }
    }

    /// [`fence`](Self::fence), then the store's check that the token is still current.
    async fn check<S: StateStore + ?Sized>(&self, store: &S, op: &'static str) -> Result<Fence> {
        let fence = self.fence(op)?;
        store
            .check_fence(&fence)
            .await
            .map_err(|e| e.with_operation(op))?;
        Ok(fence)
    }
}

/// Counters since the controller started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerCounters {
    /// Passes run.
    pub passes: u64,
    /// Passes that failed (e.g. the provider listing failed).
    pub failed_passes: u64,
    /// Nodes requested from the provider.
    pub nodes_requested: u64,
    /// Nodes the provider created.
    pub nodes_launched: u64,
    /// Launch calls that failed or fell short.
    pub launch_failures: u64,
    /// Nodes terminated.
    pub nodes_terminated: u64,
    /// Setup runs that succeeded.
    pub setups_succeeded: u64,
    /// Setup runs that failed.
    pub setups_failed: u64,
    /// Recovery runs started.
    pub recoveries: u64,
    /// Leaked nodes terminated.
    pub leaks_terminated: u64,
}

/// One node in the [`ScalingStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node type.
    pub node_type: String,
    /// Head or worker.
    pub kind: NodeKind,
    /// Setup status.
    pub status: Option<NodeStatus>,
    /// Internal IP.
    pub ip: Option<String>,
    /// What the controller is doing with it (`setting-up`, `recovering`, `idle`, `lost`...).
    pub activity: String,
    /// Last error recorded on the node.
    pub last_error: Option<String>,
}

/// What the controller publishes after every pass (`cloudtik status` prints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingStatus {
    /// When, in unix seconds.
    pub time: f64,
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, NodeReport>,
    /// Nodes being launched per type.
    pub launching: BTreeMap<String, usize>,
    /// Node types backed off after capacity or quota failures, with seconds left.
    pub backed_off: BTreeMap<String, f64>,
    /// Demands no node type can hold.
    pub infeasible: Vec<DemandShape>,
    /// Feasible demands waiting (limits, upscaling cap, backoff).
    pub unfulfilled: Vec<DemandShape>,
    /// The last launch failure per type.
    pub launch_errors: BTreeMap<String, String>,
    /// The error of the last pass, if it failed.
    pub pass_error: Option<String>,
    /// Counters.
    pub counters: ControllerCounters,
    /// The scaling policy's name, if the controller has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_policy: Option<String>,
    /// The policy's last error, while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
}

/// What one pass did, for tests and embedding programs.
#[derive(Debug, Clone, PartialEq)]
pub struct PassReport {
    /// The plan of the pass.
    pub plan: ScalingPlan,
    /// Nodes requested from the provider in this pass, per type.
    pub launched: BTreeMap<String, usize>,
    /// Nodes terminated in this pass, with the reason.
    pub terminated: Vec<(NodeId, String)>,
    /// Setup runs started (full and recovery).
    pub setups_started: Vec<(NodeId, SetupMode)>,
}

type SetupDone = (NodeId, SetupMode, Result<()>);

/// The autoscaler loop, generic over the provider, the state store and the node setup.
#[derive(Debug)]
pub struct Controller<P, S, U> {
    cluster_name: String,
    inputs: ScalingInputs,
    config: ControllerConfig,
    provider: Arc<P>,
    store: Arc<S>,
    setup: Arc<U>,
    clock: Arc<dyn Clock>,
    launcher: Launcher<P>,
    setups: JoinSet<SetupDone>,
    setting_up: BTreeMap<NodeId, SetupMode>,
    setup_aborts: HashMap<NodeId, AbortHandle>,
    setup_permits: Arc<Semaphore>,
    first_seen: HashMap<NodeId, Instant>,
    idle_since: HashMap<NodeId, SystemTime>,
    recovered_at: HashMap<NodeId, Instant>,
    doomed: BTreeMap<NodeId, String>,
    launch_errors: BTreeMap<String, String>,
    counters: ControllerCounters,
    leadership: Option<Arc<Leadership>>,
    standing_by_for: Option<String>,
    policy: Option<Arc<dyn ScalingPolicy>>,
    policy_error: Option<String>,
    /// How many demands the policy gave in the last pass.
    policy_demands: usize,
}

impl<P, S, U> Controller<P, S, U>
where
    P: NodeProvider,
    S: StateStore,
    U: NodeSetup,
{
    /// A controller for the cluster of `provider`.
    pub fn new(
        inputs: ScalingInputs,
        config: ControllerConfig,
        provider: Arc<P>,
        store: Arc<S>,
        setup: Arc<U>,
    ) -> Self {
        Controller {
            cluster_name: provider.cluster_name().to_string(),
            launcher: Launcher::new(Arc::clone(&provider), config.launcher.clone()),
            setup_permits: Arc::new(Semaphore::new(config.max_concurrent_setups.max(1))),
            inputs,
            config,
            provider,
            store,
            setup,
            clock: Arc::new(TokioClock::new()),
            setups: JoinSet::new(),
            setting_up: BTreeMap::new(),
            setup_aborts: HashMap::new(),
            first_seen: HashMap::new(),
            idle_since: HashMap::new(),
            recovered_at: HashMap::new(),
            doomed: BTreeMap::new(),
            launch_errors: BTreeMap::new(),
            counters: ControllerCounters::default(),
            leadership: None,
            standing_by_for: None,
            policy: None,
            policy_error: None,
            policy_demands: 0,
        }
    }

    /// Asks `policy` for demands and node states every pass (see
    /// [`ScalingPolicy`]): its demands join the state store's, and a node it reports is
    /// free and idle as the policy says, not as its agent's heartbeat does.
    pub fn with_scaling_policy(mut self, policy: Arc<dyn ScalingPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The policy's state for this pass: empty without a policy, or when it failed or
    /// took longer than [`POLICY_TIMEOUT`] (logged once per streak of failures).
    async fn policy_state(&mut self) -> ScalingState {
        let Some(policy) = &self.policy else {
            return ScalingState::default();
        };
        match ask_policy(policy.as_ref()).await {
            Ok(state) => {
                if self.policy_error.take().is_some() {
                    tracing::info!(policy = policy.name(), "the scaling policy answers again");
                }
                state
            }
            Err(e) => {
                let msg = e.to_string();
                if self.policy_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(policy = policy.name(), error = %e, "the scaling policy failed; using the agents' resources this pass");
                }
                self.policy_error = Some(msg);
                ScalingState::default()
            }
        }
    }

    /// Uses another clock (tests pass one with a fixed start).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        if let Some(l) = self.leadership.take() {
            self = self.with_lease(l.config.clone());
        }
        self
    }

    /// Acts only while holding the controller lease in the state store (see the module
    /// docs, "One controller at a time"). Without it the controller acts unconditionally,
    /// as the only controller of its cluster.
    pub fn with_lease(mut self, config: LeaseConfig) -> Self {
        let leadership = Arc::new(Leadership {
            config,
            held: std::sync::Mutex::new(None),
            clock: Arc::clone(&self.clock),
        });
        let (l, store) = (Arc::clone(&leadership), Arc::clone(&self.store));
        self.launcher.gate = Some(LaunchGate(Arc::new(move || {
            let (l, store) = (Arc::clone(&l), Arc::clone(&store));
            Box::pin(async move { l.check(&*store, "create_nodes").await.map(|_| ()) })
        })));
        self.leadership = Some(leadership);
        self
    }

    /// The lease this controller holds, if it uses one and holds it.
    pub fn lease(&self) -> Option<Lease> {
        self.leadership.as_ref().and_then(|l| l.held())
    }

    /// Replaces the scaling inputs (after the config changed); takes effect next pass.
    pub fn set_inputs(&mut self, inputs: ScalingInputs) {
        self.inputs = inputs;
    }

    /// Counters since start.
    pub fn counters(&self) -> &ControllerCounters {
        &self.counters
    }

    /// Runs passes every `update_interval` until `shutdown` resolves, then shuts down
    /// gracefully: no new work is started, launch calls in flight are waited for (up to
    /// `shutdown_timeout`), setup runs are cancelled (the next controller resumes them).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<ControllerCounters> {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.config.update_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {}
                () = self.new_demand() => {
                    tracing::debug!("new demand from the scaling policy: a pass now");
                    ticker.reset();
                }
            }
            if self.leadership.is_some() && !self.lead().await {
                continue;
            }
            let span = tracing::info_span!("controller_pass", cluster = %self.cluster_name, pass = self.counters.passes);
            if let Err(e) = self.run_pass().instrument(span).await {
                tracing::warn!(error = %e, "controller pass failed; retrying next pass");
            }
        }
        self.shutdown().await;
        Ok(self.counters)
    }

    /// Completes when the scaling policy reports more demands than the last pass saw
    /// (polled every `demand_poll_interval`); never without a policy, polling, or the
    /// lease.
    async fn new_demand(&self) {
        let (Some(policy), Some(every)) = (self.policy.clone(), self.config.demand_poll_interval) else {
            return std::future::pending().await;
        };
        if self.leadership.is_some() && self.lease().is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(every).await;
            if let Ok(state) = ask_policy(policy.as_ref()).await
                && state.demands.len() > self.policy_demands
            {
                return;
            }
        }
    }

    /// Stops: waits for launch calls in flight, cancels setup runs and releases the
    /// controller lease (so a standby takes over at once).
    pub async fn shutdown(&mut self) {
        let done = self.launcher.drain(self.config.shutdown_timeout).await;
        let now = Instant::now();
        for d in done {
            self.launch_finished(d, now).await;
        }
        self.cancel_setups().await;
        if let Some(lease) = self.lease() {
            match self.store.release_lease(&lease.fence()).await {
                Ok(_) => tracing::info!(token = lease.token, "released the controller lease"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the controller lease; it expires by itself")
                }
            }
        }
        if let Some(l) = &self.leadership {
            l.set(None);
        }
    }

    async fn cancel_setups(&mut self) {
        self.setups.abort_all();
        while self.setups.join_next().await.is_some() {}
        self.setting_up.clear();
        self.setup_aborts.clear();
    }

    /// Renews or acquires the controller lease; true when this controller may act this
    /// pass. A controller that loses the lease steps down: its setup runs are cancelled
    /// and what it remembered of nodes is forgotten (the holder owns them now).
    pub async fn lead(&mut self) -> bool {
        let Some(l) = self.leadership.clone() else {
            return true;
        };
        let cfg = &l.config;
        let now = self.clock.unix_now();
        if let Some(held) = l.held() {
            match self.store.renew_lease(&held.fence(), now, cfg.ttl).await {
                Ok(Some(renewed)) => {
                    l.set(Some(renewed));
                    return true;
                }
                Ok(None) => {
                    tracing::warn!(
                        token = held.token,
                        "lost the controller lease to another controller; stepping down"
                    );
                    self.step_down().await;
                }
                Err(e) if held.valid_locally(now, cfg.margin) => {
                    tracing::warn!(error = %e, "cannot renew the controller lease; acting on while it is valid");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, age_s = now - held.renewed_at,
                        "cannot renew the controller lease in time; stepping down until the store answers");
                    self.step_down().await;
                    return false;
                }
            }
        }
        match self
            .store
            .try_acquire_lease(&cfg.name, &cfg.holder, now, cfg.ttl)
            .await
        {
            Ok(LeaseAcquire::Acquired(lease)) => {
                tracing::info!(holder = %lease.holder, token = lease.token, "acquired the controller lease; acting");
                self.standing_by_for = None;
                let token = lease.token;
                l.set(Some(lease));
                self.event(
                    EventSeverity::Info,
                    format!("Controller {} is acting (lease token {token})", cfg.holder),
                )
                .await;
                true
            }
            Ok(LeaseAcquire::HeldBy(other)) => {
                let msg = format!(
                    "standing by (lease held by {} until {:.0}s from now, token {})",
                    other.holder,
                    (other.expires_at - now).max(0.0),
                    other.token
                );
                if self.standing_by_for.as_deref() != Some(other.holder.as_str()) {
                    tracing::info!("{msg}");
                    self.standing_by_for = Some(other.holder);
                } else {
                    tracing::debug!("{msg}");
                }
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the state store for the controller lease; standing by");
                false
            }
        }
    }

    async fn step_down(&mut self) {
        if let Some(l) = &self.leadership {
            l.set(None);
        }
        self.cancel_setups().await;
        self.first_seen.clear();
        self.idle_since.clear();
        self.recovered_at.clear();
        self.doomed.clear();
    }

    /// Ok when this controller may act (no lease configured, or it holds the lease and
    /// the store says its token is current).
    async fn fenced(&self, op: &'static str) -> Result<Option<Fence>> {
        match &self.leadership {
            None => Ok(None),
            Some(l) => l.check(&*self.store, op).await.map(Some),
        }
    }

    /// Runs one pass; see the module docs.
    ///
    /// With a lease ([`with_lease`](Self::with_lease)), a controller that does not hold
    /// it (call [`lead`](Self::lead) first) refuses with [`Conflict`](crate::ErrorKind::Conflict)
    /// and does nothing.
    pub async fn run_pass(&mut self) -> Result<PassReport> {
        if let Some(l) = &self.leadership {
            l.fence("run_pass")?;
        }
        self.counters.passes += 1;
        match self.pass().await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.counters.failed_passes += 1;
                let status = self.status_report(
                    &BTreeMap::new(),
                    &[],
                    &ScalingPlan::default(),
                    Some(e.to_string()),
                );
                let _ = self.publish(&status).await;
                Err(e)
            }
        }
    }

    async fn pass(&mut self) -> Result<PassReport> {
        let now_i = Instant::now();
        let now = self.clock.now();
        let now_s = self.clock.unix_now();

        // 1. What finished.
        for d in self.launcher.finished() {
            self.launch_finished(d, now_i).await;
        }
        self.collect_setups();

        // 2. Snapshot.
        let nodes = self.provider.list_nodes(&Tags::new()).await?;
        let heartbeats = self.store.all_heartbeats().await?;
        let demands = self
            .store
            .resource_demands()
            .await?
            .map(|d| d.demands)
            .unwrap_or_default();
        let requests = self.store.requested_bundles().await?;
        let pending = self.store.pending_launches().await?;
        let policy = self.policy_state().await;
        self.policy_demands = policy.demands.len();
        let mut demands = demands;
        demands.extend(policy.demands.iter().cloned());

        let listed: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        self.first_seen.retain(|id, _| listed.contains(id.as_str()));
        self.idle_since.retain(|id, _| listed.contains(id.as_str()));
        self.recovered_at.retain(|id, _| listed.contains(id.as_str()));
        self.doomed.retain(|id, _| listed.contains(id.as_str()));
        for n in &nodes {
            self.first_seen.entry(n.id.clone()).or_insert(now_i);
        }

        // 3. Reconcile launches.
        let mut known_tokens: BTreeSet<String> = pending.keys().cloned().collect();
        known_tokens.extend(self.launcher.in_flight.keys().cloned());
        let mut by_token: BTreeMap<&str, Vec<&NodeInfo>> = BTreeMap::new();
        for n in &nodes {
            if let Some(t) = n.tag(tags::LAUNCH_TOKEN) {
                by_token.entry(t).or_default().push(n);
            }
        }
        for token in pending.keys() {
            if self.launcher.in_flight.contains_key(token) {
                continue;
            }
            let mine = by_token.get(token.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let settled = mine.iter().all(|n| {
                n.status().is_some_and(|s| s != NodeStatus::Uninitialized)
                    || self.setting_up.contains_key(&n.id)
            });
            if settled {
                self.store.remove_pending_launch(token).await?;
            }
        }
        let mut terminate: Vec<(NodeId, String)> = Vec::new();
        for n in &nodes {
            if n.kind() != Some(NodeKind::Worker) {
                continue;
            }
            let untracked = n.status().unwrap_or(NodeStatus::Uninitialized) == NodeStatus::Uninitialized
                && !self.setting_up.contains_key(&n.id)
                && !n
                    .tag(tags::LAUNCH_TOKEN)
                    .is_some_and(|t| known_tokens.contains(t))
                && self
                    .first_seen
                    .get(&n.id)
                    .is_some_and(|t| now_i.duration_since(*t) >= self.config.untracked_grace);
            if untracked {
                terminate.push((n.id.clone(), "untracked (leaked) node".into()));
                self.counters.leaks_terminated += 1;
            }
        }

        // 4. Plan.
        let timeout = self.config.heartbeat_timeout;
        let mut snapshot = ClusterSnapshot {
            demands,
            requests,
            ..Default::default()
        };
        let mut lost_after_recovery = Vec::new();
        for n in &nodes {
            let Some(kind) = n.kind() else { continue };
            let node_type = n.node_type().unwrap_or_default().to_string();
            let status = n.status().unwrap_or(NodeStatus::Uninitialized);
            let hb: Option<&NodeHeartbeat> = heartbeats.get(&n.id);
            let fresh = hb.filter(|h| !h.is_lost(now_s, timeout));
            // The policy's view of the node wins over the agent's.
            let by_policy = n.internal_ip.as_deref().and_then(|ip| policy.nodes.get(ip));
            let available = fresh.map(|h| match by_policy {
                Some(p) => {
                    // Resources the policy does not count stay as the agent reports them.
                    let mut a = h.available_resources.clone();
                    for (name, amount) in p.available.iter() {
                        a.set(name, amount);
                    }
                    a
                }
                None => h.available_resources.clone(),
            });
            let idle = match (fresh, by_policy) {
                (Some(_), Some(p)) => !p.in_use,
                (Some(h), None) => h.available_resources.fits(&h.total_resources),
                (None, _) => false,
            };
            if idle {
                self.idle_since.entry(n.id.clone()).or_insert(now);
            } else {
                self.idle_since.remove(&n.id);
            }
            let seen_for = self
                .first_seen
                .get(&n.id)
                .map(|t| now_i.duration_since(*t))
                .unwrap_or_default();
            let heartbeat_lost = kind == NodeKind::Worker
                && status == NodeStatus::UpToDate
                && fresh.is_none()
                && (hb.is_some() || seen_for >= timeout);
            // Once a recovery ran, the node is lost while its heartbeat is, whatever its
            // status tag says (the recovery run moves it to `waiting-for-ssh`, where it
            // stays while the node is frozen).
            let still_lost =
                kind == NodeKind::Worker && fresh.is_none() && (hb.is_some() || seen_for >= timeout);
            match self.recovered_at.get(&n.id) {
                Some(t) if still_lost && now_i.duration_since(*t) >= timeout => {
                    lost_after_recovery.push(n.id.clone());
                }
                Some(_) if !still_lost => {
                    self.recovered_at.remove(&n.id);
                }
                _ => {}
            }
            let launch_hash_current = kind != NodeKind::Worker
                || self
                    .inputs
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
                idle_since: self.idle_since.get(&n.id).copied(),
                heartbeat_lost,
            });
        }
        // Launch calls in flight count as capacity, less the nodes of theirs already listed.
        for (token, (node_type, count)) in &self.launcher.in_flight {
            let visible = by_token.get(token.as_str()).map_or(0, Vec::len);
            let left = count.saturating_sub(visible);
            if left > 0 {
                *snapshot.launching.entry(node_type.clone()).or_insert(0) += left;
            }
        }
        let mut scaling = self.inputs.scaling.clone();
        let mut have: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &snapshot.nodes {
            if n.kind == NodeKind::Worker {
                *have.entry(n.node_type.as_str()).or_insert(0) += 1;
            }
        }
        for (t, cfg) in scaling.node_types.iter_mut() {
            if self.launcher.is_backed_off(t, now_i) {
                let cap = have.get(t.as_str()).copied().unwrap_or(0)
                    + snapshot.launching.get(t).copied().unwrap_or(0);
                cfg.max_workers = cfg.max_workers.min(cap);
                cfg.min_workers = cfg.min_workers.min(cfg.max_workers);
            }
        }
        let plan = plan(&scaling, &snapshot, now);

        // 5. Apply: terminations.
        for t in &plan.to_terminate {
            terminate.push((t.node_id.clone(), format!("{:?}", t.reason)));
        }
        for id in lost_after_recovery {
            // A recovery still running (e.g. waiting for SSH to a frozen node) is given up.
            if let Some(h) = self.setup_aborts.remove(&id) {
                h.abort();
                self.setting_up.remove(&id);
            }
            terminate.push((
                id,
                "heartbeat still lost a heartbeat timeout after its recovery".into(),
            ));
        }
        for (id, why) in std::mem::take(&mut self.doomed) {
            terminate.push((id, why));
        }
        for n in &nodes {
            let status = n.status().unwrap_or(NodeStatus::Uninitialized);
            let stuck = n.kind() == Some(NodeKind::Worker)
                && !status.is_completed()
                && !self.setting_up.contains_key(&n.id)
                && self
                    .first_seen
                    .get(&n.id)
                    .is_some_and(|t| now_i.duration_since(*t) >= self.config.setup_timeout);
            if stuck {
                terminate.push((n.id.clone(), "setup timed out".into()));
            }
        }
        let mut seen = BTreeSet::new();
        terminate.retain(|(id, _)| seen.insert(id.clone()));
        self.terminate(&terminate).await;

        // Launches.
        let mut launched = BTreeMap::new();
        let batch = self.launcher.batch_size();
        for (node_type, &count) in &plan.to_launch {
            if self.launcher.is_backed_off(node_type, now_i) {
                continue;
            }
            let Some(spec) = self.inputs.launch.get(node_type) else {
                continue;
            };
            let resources = self
                .inputs
                .scaling
                .node_types
                .get(node_type)
                .map(|t| t.resources.clone())
                .unwrap_or_default();
            let mut left = count;
            while left > 0 {
                let n = left.min(batch);
                left -= n;
                let token = new_launch_token();
                let fence = match &self.leadership {
                    Some(l) => Some(l.fence("put_pending_launch")?),
                    None => None,
                };
                let record = PendingLaunch {
                    node_type: node_type.clone(),
                    count: n,
                    created_time: now_s,
                    fence_token: fence.as_ref().map(|f| f.token),
                };
                let written = match &fence {
                    Some(f) => self.store.put_pending_launch_fenced(f, &token, &record).await,
                    None => self.store.put_pending_launch(&token, &record).await,
                };
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot record a pending launch; launching nothing this pass");
                    return Err(e);
                }
                let mut t = Tags::new();
                t.insert(tags::NODE_KIND.into(), NodeKind::Worker.as_str().into());
                t.insert(tags::USER_NODE_TYPE.into(), node_type.clone());
                t.insert(
                    tags::NODE_STATUS.into(),
                    NodeStatus::Uninitialized.as_str().into(),
                );
                t.insert(tags::LAUNCH_CONFIG.into(), spec.launch_hash.clone());
                t.insert(
                    tags::NODE_NAME.into(),
                    format!("cloudtik-{}-worker", self.cluster_name),
                );
                let request = LaunchRequest::new(node_type.clone(), spec.node_config.clone(), t, n)
                    .with_token(token)
                    .with_resources(resources.clone());
                self.launcher.spawn(request);
                self.counters.nodes_requested += n as u64;
                *launched.entry(node_type.clone()).or_insert(0) += n;
            }
            self.event(
                EventSeverity::Info,
                format!("Adding {count} node(s) of type {node_type}"),
            )
            .await;
        }

        // Setup runs: new workers, workers a crashed controller left half set up, and recoveries.
        let terminated: BTreeSet<&str> = terminate.iter().map(|(id, _)| id.as_str()).collect();
        let mut setups_started = Vec::new();
        let mut wanted: Vec<(NodeId, SetupMode)> = Vec::new();
        for n in &nodes {
            if n.kind() != Some(NodeKind::Worker) || terminated.contains(n.id.as_str()) {
                continue;
            }
            let status = n.status().unwrap_or(NodeStatus::Uninitialized);
            let tracked = n
                .tag(tags::LAUNCH_TOKEN)
                .is_some_and(|t| known_tokens.contains(t))
                || status != NodeStatus::Uninitialized;
            if !status.is_completed() && tracked {
                wanted.push((n.id.clone(), SetupMode::Full));
            }
        }
        for id in &plan.to_recover {
            if !terminated.contains(id.as_str()) && !self.recovered_at.contains_key(id) {
                wanted.push((id.clone(), SetupMode::Recovery));
            }
        }
        let by_id: HashMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        if !wanted.is_empty()
            && let Err(e) = self.fenced("set_up").await
        {
            tracing::warn!(error = %e, "not starting setup runs");
            wanted.clear();
        }
        for (id, mode) in wanted {
            if self.setting_up.contains_key(&id) {
                continue;
            }
            let Some(node) = by_id.get(id.as_str()) else {
                continue;
            };
            if mode == SetupMode::Recovery {
                self.recovered_at.insert(id.clone(), now_i);
                self.counters.recoveries += 1;
            }
            self.start_setup((*node).clone(), mode);
            setups_started.push((id, mode));
        }

        // Rows of nodes that are gone.
        let gone: Vec<NodeId> = heartbeats
            .keys()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        if let Some(l) = &self.leadership {
            l.fence("publish")?;
        }
        if !gone.is_empty() {
            self.store.remove_nodes(&gone).await?;
        }

        // 6. Publish.
        let status = self.status_report(&self.node_reports(&nodes), &nodes, &plan, None);
        self.publish(&status).await?;
        Ok(PassReport {
            plan,
            launched,
            terminated: terminate,
            setups_started,
        })
    }

    fn start_setup(&mut self, node: NodeInfo, mode: SetupMode) {
        self.setting_up.insert(node.id.clone(), mode);
        let setup = Arc::clone(&self.setup);
        let permits = Arc::clone(&self.setup_permits);
        let span = tracing::info_span!("node_setup", node = %node.id, ?mode);
        let id = node.id.clone();
        let handle = self.setups.spawn(
            async move {
                let _permit = permits.acquire_owned().await;
                let r = setup.set_up(&node, mode).await;
                (node.id, mode, r)
            }
            .instrument(span),
        );
        self.setup_aborts.insert(id, handle);
    }

    fn collect_setups(&mut self) {
        while let Some(res) = self.setups.try_join_next() {
            let Ok((id, mode, r)) = res else { continue };
            self.setting_up.remove(&id);
            self.setup_aborts.remove(&id);
            match r {
                Ok(()) => self.counters.setups_succeeded += 1,
                Err(e) => {
                    self.counters.setups_failed += 1;
                    tracing::warn!(node = %id, ?mode, error = %e, "node setup failed");
                    if mode == SetupMode::Recovery {
                        self.doomed.insert(id, format!("recovery failed: {e}"));
                    }
                }
            }
        }
    }

    async fn launch_finished(&mut self, d: super::launcher::LaunchDone, now: Instant) {
        self.counters.nodes_launched += d.created as u64;
        match &d.error {
            None => {
                self.launcher.succeeded(&d.node_type);
                self.launch_errors.remove(&d.node_type);
            }
            Some(e) => {
                self.counters.launch_failures += 1;
                let mut msg = format!(
                    "launching {} node(s) of type {} created {}: {e}",
                    d.requested, d.node_type, d.created
                );
                if e.is_capacity_or_quota() {
                    let delay = self.launcher.back_off(&d.node_type, now);
                    msg += &format!("; backing off {} for {}s", d.node_type, delay.as_secs());
                }
                self.launch_errors.insert(d.node_type.clone(), e.to_string());
                self.event(EventSeverity::Warning, msg).await;
            }
        }
        if d.created == 0 {
            // Nothing to adopt: the record can go now (a failure leaves no node).
            if let Err(e) = self.store.remove_pending_launch(&d.token).await {
                tracing::warn!(error = %e, "cannot remove a pending launch record; the next pass retries");
            }
        }
    }

    async fn terminate(&mut self, nodes: &[(NodeId, String)]) {
        if nodes.is_empty() {
            return;
        }
        let batch = self.provider.capabilities().max_terminate_batch.max(1);
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| id.clone()).collect();
        for chunk in ids.chunks(batch) {
            if let Err(e) = self.fenced("terminate_nodes").await {
                tracing::warn!(error = %e, count = chunk.len(), "not terminating nodes");
                return;
            }
            match self.provider.terminate_nodes(chunk).await {
                Ok(()) => {
                    self.counters.nodes_terminated += chunk.len() as u64;
                    if let Err(e) = self.store.remove_nodes(chunk).await {
                        tracing::warn!(error = %e, "cannot remove rows of terminated nodes");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, count = chunk.len(), "terminating nodes failed; retrying next pass");
                    self.event(
                        EventSeverity::Warning,
                        format!("terminating {} node(s) failed: {e}", chunk.len()),
                    )
                    .await;
                }
            }
        }
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, why) in nodes {
            *reasons.entry(why.as_str()).or_insert(0) += 1;
        }
        for (why, n) in reasons {
            self.event(EventSeverity::Info, format!("Removing {n} node(s): {why}"))
                .await;
        }
    }

    fn node_reports(&self, nodes: &[NodeInfo]) -> BTreeMap<NodeId, NodeReport> {
        nodes
            .iter()
            .filter_map(|n| {
                let kind = n.kind()?;
                let activity = match self.setting_up.get(&n.id) {
                    Some(SetupMode::Full) => "setting-up",
                    Some(SetupMode::Recovery) => "recovering",
                    None if self.recovered_at.contains_key(&n.id) => "lost",
                    None if self.idle_since.contains_key(&n.id) => "idle",
                    None => "active",
                };
                Some((
                    n.id.clone(),
                    NodeReport {
                        node_type: n.node_type().unwrap_or_default().to_string(),
                        kind,
                        status: n.status(),
                        ip: n.internal_ip.clone(),
                        activity: activity.to_string(),
                        last_error: n.tag(tags::LAST_ERROR).map(str::to_string),
                    },
                ))
            })
            .collect()
    }

    fn status_report(
        &self,
        nodes: &BTreeMap<NodeId, NodeReport>,
        _listed: &[NodeInfo],
        plan: &ScalingPlan,
        pass_error: Option<String>,
    ) -> ScalingStatus {
        let now = Instant::now();
        ScalingStatus {
            time: self.clock.unix_now(),
            nodes: nodes.clone(),
            launching: self.launcher.in_flight_by_type(),
            backed_off: self
                .launcher
                .backoff
                .iter()
                .filter(|(_, b)| b.until > now)
                .map(|(t, b)| (t.clone(), b.until.duration_since(now).as_secs_f64()))
                .collect(),
            infeasible: plan.infeasible.clone(),
            unfulfilled: plan.unfulfilled.clone(),
            launch_errors: self.launch_errors.clone(),
            pass_error,
            counters: self.counters.clone(),
            scaling_policy: self.policy.as_ref().map(|p| p.name().to_string()),
            policy_error: self.policy_error.clone(),
        }
    }

    async fn publish(&self, status: &ScalingStatus) -> Result<()> {
        let v = serde_json::to_value(status).map_err(|e| {
            Error::new(
                crate::ErrorKind::Unexpected,
                format!("cannot encode the scaling status: {e}"),
            )
        })?;
        self.store.set_scaling_status(&v).await
    }

    async fn event(&self, severity: EventSeverity, message: String) {
        tracing::info!(%message, "cluster event");
        let ev = ClusterEvent {
            time: self.clock.unix_now(),
            severity,
            source: "controller".into(),
            message,
        };
        if let Err(e) = self.store.push_event(&ev).await {
            tracing::debug!(error = %e, "cannot record an event");
        }
    }
}

/// The policy's answer, or a timeout error after [`POLICY_TIMEOUT`].
async fn ask_policy(policy: &dyn ScalingPolicy) -> Result<ScalingState> {
    tokio::time::timeout(POLICY_TIMEOUT, policy.scaling_state())
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("no answer within {POLICY_TIMEOUT:?}"),
            ))
        })
}
