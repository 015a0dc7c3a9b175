//! The controller loop: CloudTik's cluster controller (ClusterScaler + NodeLauncher),
//! level-triggered and crash-safe.
//!
//! Each [`Controller::run_pass`] is **observe -> decide -> apply**, like the pure
//! [`plan`](super::plan()) it uses:
//!
//! 1. collects the launches and setup runs that finished since the last pass;
//! 2. **observes** ([`Observed`]): one provider listing of the cluster's nodes, and one
//!    batched read each of heartbeats, resource demands, resource requests and pending
//!    launches, the scaling policy's answer, and what this process has in flight;
//! 3. **decides** with the pure [`reconcile()`] (no I/O, no clock: its rules are listed and
//!    unit-tested in [`reconcile`](mod@reconcile)): a pending launch whose call is not
//!    running in this process (it was made by a controller that crashed) is finished: its
//!    nodes are adopted like any other, and its record is removed once they are being set
//!    up; a worker that is still `uninitialized`, carries a launch token nobody recorded
//!    and is older than [`ControllerConfig::untracked_grace`] is a leak; the planner
//!    plans (backed-off node types are capped at what they have, so demand goes to other
//!    types); lost heartbeats, stuck and failed setups are judged (see [`Liveness`]).
//!    Every termination carries a typed [`TerminationCause`];
//! 4. **applies** the [`Decisions`]: terminations in batches, launches (each recorded in
//!    the state store *before* the provider call, with a fresh token the provider uses
//!    for idempotency), setup runs for new workers, recovery runs for workers whose
//!    heartbeat is lost: one recovery run per loss; a worker whose heartbeat is still
//!    lost a heartbeat timeout after its recovery started is terminated and replaced,
//!    whether the recovery finished or still runs (e.g. waiting for SSH to a frozen node:
//!    that run is cancelled); a worker that heartbeats again within that time is kept;
//! 5. **publishes** a [`ScalingStatus`] to the state store (read it with
//!    [`read_scaling_status`]) and to the watch of a [`ControllerHandle`].
//!
//! Nothing is carried from one pass to the next that the next pass could not rebuild
//! from the provider and the store, except what only makes things more conservative
//! after a restart ([`Memory`]: how long a node has been idle or unreachable starts
//! counting again).
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

mod apply;
mod config;
mod handle;
mod leadership;
pub mod reconcile;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use super::clock::{Clock, TokioClock};
use super::inputs::ScalingInputs;
use super::launcher::{LaunchGate, Launcher};
use super::policy::{POLICY_TIMEOUT, ScalingPolicy, ScalingState};
use super::setup::{NodeSetup, SetupMode};
use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeId;
use crate::provider::NodeProvider;
use crate::state::{EventSeverity, Fence, Lease, LeaseAcquire, StateStore};

pub use config::{ControllerConfig, LeaseConfig, Liveness};
pub use handle::ControllerHandle;
use leadership::Leadership;
pub use reconcile::{Decisions, Memory, Observed, TerminationCause, reconcile};
pub use status::{
    ControllerCounters, NodeReport, PassReport, SCALING_STATUS_KEY, ScalingStatus, TerminationRecord,
    read_scaling_status,
};

type SetupDone = (NodeId, SetupMode, Result<()>);

/// The autoscaler loop, generic over the provider, the state store and the node setup.
///
/// Each may be a concrete type or a trait object: `Controller::new` takes an
/// `Arc<dyn NodeProvider>` and an `Arc<dyn StateStore>` as they are
/// (`Controller<dyn NodeProvider, dyn StateStore, U>`).
#[derive(Debug)]
pub struct Controller<P: ?Sized, S: ?Sized, U: ?Sized> {
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
    /// What the rules carry from one pass to the next.
    memory: Memory,
    launch_errors: BTreeMap<String, String>,
    counters: ControllerCounters,
    /// The latest terminations, for the status.
    recent_terminations: Vec<TerminationRecord>,
    leadership: Option<Arc<Leadership>>,
    standing_by_for: Option<String>,
    policy: Option<Arc<dyn ScalingPolicy>>,
    policy_error: Option<String>,
    /// How many demands the policy gave in the last pass.
    policy_demands: usize,
    /// The latest status, for watchers ([`Controller::subscribe`]).
    status_tx: watch::Sender<Option<ScalingStatus>>,
}

impl<P, S, U> Controller<P, S, U>
where
    P: NodeProvider + ?Sized,
    S: StateStore + ?Sized,
    U: NodeSetup + ?Sized,
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
            memory: Memory::default(),
            launch_errors: BTreeMap::new(),
            counters: ControllerCounters::default(),
            recent_terminations: Vec::new(),
            leadership: None,
            standing_by_for: None,
            policy: None,
            policy_error: None,
            policy_demands: 0,
            status_tx: watch::Sender::new(None),
        }
    }

    /// Asks `policy` for demands and node states every pass (see
    /// [`ScalingPolicy`]): its demands join the state store's, and a node it reports is
    /// free and idle as the policy says, not as its agent's heartbeat does.
    #[must_use]
    pub fn with_scaling_policy(mut self, policy: Arc<dyn ScalingPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Uses another clock (tests pass one with a fixed start).
    #[must_use]
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
    #[must_use]
    pub fn with_lease(mut self, config: LeaseConfig) -> Self {
        let leadership = Arc::new(Leadership::new(config, Arc::clone(&self.clock)));
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

    /// The controller's settings.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Counters since start.
    pub fn counters(&self) -> &ControllerCounters {
        &self.counters
    }

    /// What the controller remembers between passes.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// A watch of the status published after every pass (`None` before the first).
    pub fn subscribe(&self) -> watch::Receiver<Option<ScalingStatus>> {
        self.status_tx.subscribe()
    }

    /// Runs passes every `update_interval` until `shutdown` resolves, then shuts down
    /// gracefully: no new work is started, launch calls in flight are waited for (up to
    /// `shutdown_timeout`), setup runs are cancelled (the next controller resumes them).
    /// [`spawn`](Self::spawn) runs the same loop as a task with a handle.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<ControllerCounters> {
        self.run_loop(shutdown, None).await
    }

    /// The loop of [`run`](Self::run), also taking a handle's commands.
    async fn run_loop(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut commands: Option<mpsc::UnboundedReceiver<handle::Command>>,
    ) -> Result<ControllerCounters> {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.config.update_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let command = tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => None,
                () = self.new_demand() => {
                    tracing::debug!("new demand from the scaling policy: a pass now");
                    ticker.reset();
                    None
                }
                Some(c) = next_command(&mut commands) => Some(c),
            };
            match command {
                Some(handle::Command::SetInputs(inputs)) => {
                    tracing::info!("new scaling inputs; used from the next pass");
                    self.set_inputs(*inputs);
                    continue;
                }
                Some(handle::Command::Pass) => {
                    tracing::debug!("a pass was asked for");
                    ticker.reset();
                }
                None => {}
            }
            if self.leadership.is_some() && !self.lead().await {
                continue;
            }
            let span = tracing::info_span!("controller_pass", cluster = %self.cluster_name, pass = self.counters.passes);
            if let Err(e) = self.run_pass().instrument(span).await {
                tracing::warn!(error = %crate::Report(&e), "controller pass failed; retrying next pass");
            }
        }
        self.shutdown().await;
        Ok(self.counters)
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
                let msg = format!("{e:#}");
                if self.policy_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(policy = policy.name(), error = %crate::Report(&e), "the scaling policy failed; using the agents' resources this pass");
                }
                self.policy_error = Some(msg);
                ScalingState::default()
            }
        }
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
        let now = tokio::time::Instant::now();
        for d in done {
            self.launch_finished(d, now).await;
        }
        self.cancel_setups().await;
        if let Some(lease) = self.lease() {
            match self.store.release_lease(&lease.fence()).await {
                Ok(_) => tracing::info!(token = lease.token, "released the controller lease"),
                Err(e) => {
                    tracing::warn!(error = %crate::Report(&e), "cannot release the controller lease; it expires by itself")
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
                    tracing::warn!(error = %crate::Report(&e), "cannot renew the controller lease; acting on while it is valid");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::Report(&e), age_s = now - held.renewed_at,
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
                tracing::warn!(error = %crate::Report(&e), "cannot reach the state store for the controller lease; standing by");
                false
            }
        }
    }

    async fn step_down(&mut self) {
        if let Some(l) = &self.leadership {
            l.set(None);
        }
        self.cancel_setups().await;
        self.memory = Memory::default();
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
                let status = self.status_report(BTreeMap::new(), &Default::default(), Some(format!("{e:#}")));
                let _ = self.publish(status).await;
                Err(e)
            }
        }
    }
}

/// The next command of a handle; never without one (or once the handle is gone: its
/// shutdown signal then ends the loop).
async fn next_command(
    commands: &mut Option<mpsc::UnboundedReceiver<handle::Command>>,
) -> Option<handle::Command> {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(c) => Some(c),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
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
