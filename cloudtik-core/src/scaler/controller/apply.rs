//! The I/O of a pass: observing the provider and the store, applying the
//! [`Decisions`] of [`reconcile`], and publishing the status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use super::Controller;
use super::reconcile::{Decisions, Observed, TerminationCause, reconcile};
use super::status::{NodeReport, PassReport, RECENT_TERMINATIONS, ScalingStatus, TerminationRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeInfo, NodeKind, NodeStatus, Tags, tags};
use crate::provider::{LaunchRequest, NodeProvider, new_launch_token};
use crate::scaler::launcher::LaunchDone;
use crate::scaler::planner::ScalingPlan;
use crate::scaler::setup::{NodeSetup, SetupMode};
use crate::state::{ClusterEvent, EventSeverity, PendingLaunch, StateStore, StateStoreExt};

impl<P, S, U> Controller<P, S, U>
where
    P: NodeProvider + ?Sized,
    S: StateStore + ?Sized,
    U: NodeSetup + ?Sized,
{
    pub(super) async fn pass(&mut self) -> Result<PassReport> {
        let now_i = Instant::now();
        let now = self.clock.now();

        // 1. What finished.
        for d in self.launcher.finished() {
            self.launch_finished(d, now_i).await;
        }
        self.collect_setups();

        // 2. Observe.
        let observed = self
            .observe(now_i)
            .instrument(tracing::debug_span!("observe"))
            .await?;

        // 3. Decide.
        let decisions = tracing::debug_span!("reconcile")
            .in_scope(|| reconcile(&self.config, &observed, &self.memory, now));
        tracing::debug!(
            terminate = decisions.terminate.len(),
            launch = decisions.launch.values().sum::<usize>(),
            setups = decisions.setups.len(),
            recoveries = decisions.recoveries.len(),
            "decided"
        );

        // 4. Apply, 5. publish.
        self.apply(observed, decisions)
            .instrument(tracing::debug_span!("apply"))
            .await
    }

    /// One snapshot of the provider, the store, the policy and this process.
    async fn observe(&mut self, now: Instant) -> Result<Observed> {
        let nodes = self.provider.list_nodes(&Tags::new()).await?;
        let heartbeats = self.store.all_heartbeats().await?;
        let mut demands = self
            .store
            .resource_demands()
            .await?
            .map(|d| d.demands)
            .unwrap_or_default();
        let requests = self.store.requested_bundles().await?;
        let pending = self.store.pending_launches().await?;
        let policy = self.policy_state().await;
        self.policy_demands = policy.demands.len();
        demands.extend(policy.demands.iter().cloned());
        let mut observed = Observed::new(self.inputs.clone());
        observed.nodes = nodes;
        observed.heartbeats = heartbeats;
        observed.pending_launches = pending;
        observed.demands = demands;
        observed.requests = requests;
        observed.policy = policy;
        observed.launches_in_flight = self.launcher.in_flight.clone();
        observed.setups_running = self.setting_up.clone();
        observed.backed_off = self
            .launcher
            .backoff
            .keys()
            .filter(|t| self.launcher.is_backed_off(t, now))
            .cloned()
            .collect();
        Ok(observed)
    }

    async fn apply(&mut self, observed: Observed, d: Decisions) -> Result<PassReport> {
        let now_s = self.clock.unix_now();
        let Decisions {
            plan,
            finished_launches,
            cancel_setups,
            terminate,
            launch,
            setups,
            recoveries,
            gone,
            notes,
            memory,
        } = d;
        self.memory = memory;

        // Records of finished launches.
        for token in &finished_launches {
            self.store.remove_pending_launch(token).await?;
        }

        // Terminations.
        for id in &cancel_setups {
            if let Some(h) = self.setup_aborts.remove(id) {
                h.abort();
                self.setting_up.remove(id);
            }
        }
        self.counters.leaks_terminated += terminate
            .iter()
            .filter(|(_, c)| matches!(c, TerminationCause::Leaked { .. }))
            .count() as u64;
        self.terminate(&terminate, now_s).await;

        // Launches.
        let launched = self.launch(&launch, now_s).await?;

        // Setup runs: new workers, workers a crashed controller left half set up, and recoveries.
        let mut wanted: Vec<(NodeId, SetupMode)> =
            setups.into_iter().map(|id| (id, SetupMode::Full)).collect();
        wanted.extend(recoveries.iter().map(|id| (id.clone(), SetupMode::Recovery)));
        if !wanted.is_empty()
            && let Err(e) = self.fenced("set_up").await
        {
            tracing::warn!(error = %crate::Report(&e), "not starting setup runs");
            wanted.clear();
        }
        let by_id: HashMap<&str, &NodeInfo> = observed.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut setups_started = Vec::new();
        for (id, mode) in wanted {
            if self.setting_up.contains_key(&id) {
                continue;
            }
            let Some(node) = by_id.get(id.as_str()) else {
                continue;
            };
            if mode == SetupMode::Recovery {
                self.counters.recoveries += 1;
            }
            self.start_setup((*node).clone(), mode);
            setups_started.push((id, mode));
        }
        // A recovery decided but not started is not remembered as started.
        let started: BTreeSet<&NodeId> = setups_started.iter().map(|(id, _)| id).collect();
        for id in recoveries.iter().filter(|id| !started.contains(id)) {
            self.memory.recovery_started.remove(id);
        }

        // Rows of nodes that are gone.
        if let Some(l) = &self.leadership {
            l.fence("publish")?;
        }
        if !gone.is_empty() {
            self.store.remove_nodes(&gone).await?;
        }

        // Publish.
        let reports = self.node_reports(&observed.nodes, &notes);
        let status = self.status_report(reports, &plan, None);
        self.publish(status).await?;
        Ok(PassReport {
            plan,
            launched,
            terminated: terminate,
            setups_started,
        })
    }

    /// Records and starts the launches; the nodes requested per type.
    async fn launch(
        &mut self,
        launch: &BTreeMap<String, usize>,
        now_s: f64,
    ) -> Result<BTreeMap<String, usize>> {
        let mut launched = BTreeMap::new();
        let batch = self.launcher.batch_size();
        for (node_type, &count) in launch {
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
                    tracing::warn!(error = %crate::Report(&e), "cannot record a pending launch; launching nothing this pass");
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
        Ok(launched)
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
                    tracing::warn!(node = %id, ?mode, error = %crate::Report(&e), "node setup failed");
                    if mode == SetupMode::Recovery {
                        self.memory.failed_recoveries.insert(id, format!("{e:#}"));
                    }
                }
            }
        }
    }

    pub(super) async fn launch_finished(&mut self, d: LaunchDone, now: Instant) {
        self.counters.nodes_launched += d.created as u64;
        match &d.error {
            None => {
                self.launcher.succeeded(&d.node_type);
                self.launch_errors.remove(&d.node_type);
            }
            Some(e) => {
                self.counters.launch_failures += 1;
                let mut msg = format!(
                    "launching {} node(s) of type {} created {}: {e:#}",
                    d.requested, d.node_type, d.created
                );
                if e.is_capacity_or_quota() {
                    let delay = self.launcher.back_off(&d.node_type, now);
                    msg += &format!("; backing off {} for {}s", d.node_type, delay.as_secs());
                }
                self.launch_errors.insert(d.node_type.clone(), format!("{e:#}"));
                self.event(EventSeverity::Warning, msg).await;
            }
        }
        if d.created == 0 {
            // Nothing to adopt: the record can go now (a failure leaves no node).
            if let Err(e) = self.store.remove_pending_launch(&d.token).await {
                tracing::warn!(error = %crate::Report(&e), "cannot remove a pending launch record; the next pass retries");
            }
        }
    }

    async fn terminate(&mut self, nodes: &[(NodeId, TerminationCause)], now_s: f64) {
        if nodes.is_empty() {
            return;
        }
        for (id, cause) in nodes {
            tracing::info!(node = %id, cause = cause.label(), reason = %cause, "terminating node");
        }
        let batch = self.provider.capabilities().max_terminate_batch.max(1);
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| id.clone()).collect();
        let mut done: BTreeSet<NodeId> = BTreeSet::new();
        for chunk in ids.chunks(batch) {
            if let Err(e) = self.fenced("terminate_nodes").await {
                tracing::warn!(error = %crate::Report(&e), count = chunk.len(), "not terminating nodes");
                break;
            }
            match self.provider.terminate_nodes(chunk).await {
                Ok(()) => {
                    self.counters.nodes_terminated += chunk.len() as u64;
                    done.extend(chunk.iter().cloned());
                    if let Err(e) = self.store.remove_nodes(chunk).await {
                        tracing::warn!(error = %crate::Report(&e), "cannot remove rows of terminated nodes");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::Report(&e), count = chunk.len(), "terminating nodes failed; retrying next pass");
                    self.event(
                        EventSeverity::Warning,
                        format!("terminating {} node(s) failed: {e:#}", chunk.len()),
                    )
                    .await;
                }
            }
        }
        for (id, cause) in nodes.iter().filter(|(id, _)| done.contains(id)) {
            self.recent_terminations
                .push(TerminationRecord::new(now_s, id.clone(), cause));
        }
        let excess = self.recent_terminations.len().saturating_sub(RECENT_TERMINATIONS);
        self.recent_terminations.drain(..excess);
        let mut reasons: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (id, cause) in nodes {
            reasons.entry(cause.to_string()).or_default().push(id);
        }
        for (why, ids) in reasons {
            self.event(
                EventSeverity::Info,
                format!("Removing {} node(s) ({}): {why}", ids.len(), ids.join(", ")),
            )
            .await;
        }
    }

    fn node_reports(
        &self,
        nodes: &[NodeInfo],
        notes: &BTreeMap<NodeId, String>,
    ) -> BTreeMap<NodeId, NodeReport> {
        nodes
            .iter()
            .filter_map(|n| {
                let kind = n.kind()?;
                let activity = match self.setting_up.get(&n.id) {
                    Some(SetupMode::Full) => "setting-up",
                    Some(SetupMode::Recovery) => "recovering",
                    None if self.memory.recovery_started.contains_key(&n.id) => "lost",
                    None if self.memory.idle_since.contains_key(&n.id) => "idle",
                    None => "active",
                };
                let mut report = NodeReport::new(n.node_type().unwrap_or_default(), kind, activity);
                report.status = n.status();
                report.ip = n.internal_ip.clone();
                report.last_error = n.tag(tags::LAST_ERROR).map(str::to_string);
                report.note = notes.get(&n.id).cloned();
                Some((n.id.clone(), report))
            })
            .collect()
    }

    pub(super) fn status_report(
        &self,
        nodes: BTreeMap<NodeId, NodeReport>,
        plan: &ScalingPlan,
        pass_error: Option<String>,
    ) -> ScalingStatus {
        let now = Instant::now();
        let mut s = ScalingStatus::new(self.clock.unix_now());
        s.nodes = nodes;
        s.launching = self.launcher.in_flight_by_type();
        s.backed_off = self
            .launcher
            .backoff
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(t, b)| (t.clone(), b.until.duration_since(now).as_secs_f64()))
            .collect();
        s.infeasible = plan.infeasible.clone();
        s.unfulfilled = plan.unfulfilled.clone();
        s.launch_errors = self.launch_errors.clone();
        s.pass_error = pass_error;
        s.counters = self.counters.clone();
        s.scaling_policy = self.policy.as_ref().map(|p| p.name().to_string());
        s.policy_error = self.policy_error.clone();
        s.recent_terminations = self.recent_terminations.clone();
        s
    }

    /// Writes the status to the store and to the watchers.
    pub(super) async fn publish(&self, status: ScalingStatus) -> Result<()> {
        let v = serde_json::to_value(&status).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot encode the scaling status: {e:#}"),
            )
        })?;
        self.status_tx.send_replace(Some(status));
        self.store.set_scaling_status(&v).await
    }

    pub(super) async fn event(&self, severity: EventSeverity, message: String) {
        tracing::info!(%message, "cluster event");
        let ev = ClusterEvent {
            time: self.clock.unix_now(),
            severity,
            source: "controller".into(),
            message,
        };
        if let Err(e) = self.store.push_event(&ev).await {
            tracing::debug!(error = %crate::Report(&e), "cannot record an event");
        }
    }
}
