//! `status`: the provider's nodes joined with the head's state store.

use std::collections::BTreeMap;

use crate::scaler::{DemandShape, ScalingStatus, read_scaling_status};

use super::{ManagedCluster, now_secs};
use crate::error::Result;
use crate::node::{NodeKind, NodeStatus, tags};
use crate::operations::{ClusterState, ClusterStatus, ControllerSummary, NodeSummary, head_services_problem};

use crate::resources::Resources;
use crate::state::{NodeHeartbeat, StateStore};

impl ManagedCluster {
    /// What `cloudtik status` shows: the nodes with their heartbeats and resources, the
    /// controller's published scaling status, and notes on what is wrong.
    pub(super) async fn cluster_status(&self) -> Result<ClusterStatus> {
        let nodes = self.nodes().await?;
        let mut notes = Vec::new();
        let mut heartbeats: BTreeMap<String, NodeHeartbeat> = BTreeMap::new();
        let mut scaling: Option<ScalingStatus> = None;
        let mut store_error: Option<String> = None;
        let mut lease = None;
        let mut processes: BTreeMap<String, crate::state::NodeProcesses> = BTreeMap::new();
        let head_listed = nodes.iter().any(|n| n.kind() == Some(NodeKind::Head));
        if head_listed {
            match self.store().await {
                Ok(store) => {
                    match store.all_heartbeats().await {
                        Ok(h) => heartbeats = h,
                        Err(e) => {
                            notes.push(format!("cannot read heartbeats: {e:#}"));
                            store_error = Some(format!("{e:#}"));
                        }
                    }
                    match store.lease(crate::state::CONTROLLER_LEASE).await {
                        Ok(l) => lease = l,
                        Err(e) => store_error = Some(format!("{e:#}")),
                    }
                    match read_scaling_status(store.as_ref()).await {
                        Ok(s) => scaling = s,
                        Err(e) => notes.push(format!("cannot read the controller's status: {e:#}")),
                    }
                    match store.all_node_processes().await {
                        Ok(p) => processes = p,
                        Err(e) => notes.push(format!("cannot read the nodes' process health: {e:#}")),
                    }
                }
                Err(e) => store_error = Some(format!("{e:#}")),
            }
        }
        let now = now_secs();
        let controller = lease.as_ref().map(|l| ControllerSummary::of(l, now));
        let summaries: Vec<NodeSummary> = nodes
            .iter()
            .map(|n| {
                let hb = heartbeats.get(&n.id);
                let node_type = n.node_type().unwrap_or_default().to_string();
                let resources = hb.map(|h| h.total_resources.clone()).unwrap_or_else(|| {
                    self.config
                        .available_node_types
                        .get(&node_type)
                        .and_then(|t| t.resources.clone())
                        .unwrap_or_default()
                });
                NodeSummary {
                    id: n.id.clone(),
                    kind: n.kind().unwrap_or(NodeKind::Worker),
                    node_type,
                    status: n.status(),
                    internal_ip: n.internal_ip.clone(),
                    external_ip: n.external_ip.clone(),
                    last_error: n
                        .tag(tags::LAST_ERROR)
                        .filter(|e| !e.is_empty())
                        .map(str::to_string),
                    resources,
                    available: hb.map(|h| h.available_resources.clone()),
                    heartbeat_age_secs: hb.map(|h| (now - h.heartbeat_time).max(0.0)),
                    down_processes: processes
                        .get(&n.id)
                        .filter(|_| hb.is_some_and(|h| !h.is_lost(now, self.settings.heartbeat_timeout)))
                        .map(|p| {
                            p.processes
                                .iter()
                                .filter(|(_, s)| !s.is_healthy())
                                .map(|(k, s)| (k.clone(), *s))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        for n in &summaries {
            for (name, state) in &n.down_processes {
                notes.push(format!(
                    "process {name} is {} on node {} ({}); its supervisor restarts it, see its log in \
                     ~/cloudtik/logs on the node",
                    serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    n.id,
                    n.internal_ip.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(err) = scaling.as_ref().and_then(|s| s.policy_error.as_deref()) {
            notes.push(format!("the scaling policy fails: {err}"));
        }
        let head_ok = summaries
            .iter()
            .any(|s| s.kind == NodeKind::Head && s.status == Some(NodeStatus::UpToDate));
        let head_heartbeat_age = summaries
            .iter()
            .find(|s| s.kind == NodeKind::Head)
            .and_then(|s| s.heartbeat_age_secs);
        let problem = head_services_problem(
            head_listed,
            store_error.as_deref().map_or(Ok(()), Err),
            controller.as_ref(),
            head_heartbeat_age,
            crate::state::DEFAULT_HEARTBEAT_TIMEOUT,
        );
        let state = if summaries.is_empty() {
            ClusterState::Stopped
        } else if head_ok && problem.is_none() {
            ClusterState::Running
        } else {
            ClusterState::Unhealthy
        };
        let shapes = |pick: fn(&ScalingStatus) -> &Vec<DemandShape>| -> Vec<Resources> {
            scaling
                .as_ref()
                .map(|s| {
                    pick(s)
                        .iter()
                        .flat_map(|d| std::iter::repeat_n(d.shape.clone(), d.count))
                        .collect()
                })
                .unwrap_or_default()
        };
        let pending_launches = scaling.as_ref().map(|s| s.launching.clone()).unwrap_or_default();
        if let Some(err) = scaling.as_ref().and_then(|s| s.pass_error.as_deref()) {
            notes.push(format!("the controller's last pass failed: {err}"));
        }
        for (t, e) in scaling.iter().flat_map(|s| &s.launch_errors) {
            notes.push(format!("launching {t} failed: {e}"));
        }
        Ok(ClusterStatus {
            cluster_name: self.config.cluster_name.clone(),
            state,
            nodes: summaries,
            pending_launches,
            demands: shapes(|s| &s.unfulfilled),
            infeasible: shapes(|s| &s.infeasible),
            notes,
            controller,
            problem,
        })
    }
}
