//! [`InMemoryStore`]: the state store in the process's memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::lease::check_lease_args;
use super::model::{
    ClusterEvent, NodeHeartbeat, NodeMetrics, NodeProcesses, PendingLaunch, ResourceDemands, ResourceRequest,
    StandingRequests, check_key,
};
use super::{DEFAULT_EVENT_CAPACITY, Fence, Lease, LeaseAcquire, StateStore};
use crate::error::Result;
use crate::node::NodeId;

/// The state store in memory: the same behaviour as [`RedisStore`](super::RedisStore),
/// for tests and for a controller embedded in a process without Redis. Nothing survives
/// the process; values are not encrypted (they never leave the process).
#[derive(Debug)]
pub struct InMemoryStore {
    tables: Mutex<Tables>,
    event_capacity: usize,
}

#[derive(Debug, Default)]
struct Tables {
    heartbeats: BTreeMap<NodeId, NodeHeartbeat>,
    metrics: BTreeMap<NodeId, NodeMetrics>,
    processes: BTreeMap<NodeId, NodeProcesses>,
    demands: Option<ResourceDemands>,
    requests: StandingRequests,
    pending: BTreeMap<String, PendingLaunch>,
    scaling_status: Option<serde_json::Value>,
    runtime_config: BTreeMap<Option<String>, serde_json::Value>,
    secrets: BTreeMap<String, Vec<u8>>,
    events: VecDeque<ClusterEvent>,
    leases: BTreeMap<String, Lease>,
    lease_tokens: BTreeMap<String, u64>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        InMemoryStore::new()
    }
}

impl InMemoryStore {
    /// An empty store keeping [`DEFAULT_EVENT_CAPACITY`] events.
    pub fn new() -> Self {
        InMemoryStore::with_event_capacity(DEFAULT_EVENT_CAPACITY)
    }

    /// An empty store keeping at most `capacity` events (at least 1).
    pub fn with_event_capacity(capacity: usize) -> Self {
        InMemoryStore {
            tables: Mutex::new(Tables::default()),
            event_capacity: capacity.max(1),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a table half-written (every
        // update is a single insert or remove), so a poisoned lock is still usable.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for InMemoryStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn event_capacity(&self) -> usize {
        self.event_capacity
    }

    async fn put_heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<()> {
        check_key("put_heartbeat", "node id", &heartbeat.node_id)?;
        self.tables()
            .heartbeats
            .insert(heartbeat.node_id.clone(), heartbeat.clone());
        Ok(())
    }

    async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        let t = self.tables();
        Ok(ids
            .iter()
            .filter_map(|id| t.heartbeats.get(id).map(|hb| (id.clone(), hb.clone())))
            .collect())
    }

    async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        Ok(self.tables().heartbeats.clone())
    }

    async fn put_node_metrics(&self, node_id: &str, metrics: &NodeMetrics) -> Result<()> {
        check_key("put_node_metrics", "node id", node_id)?;
        self.tables().metrics.insert(node_id.to_string(), metrics.clone());
        Ok(())
    }

    async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>> {
        Ok(self.tables().metrics.clone())
    }

    async fn put_node_processes(&self, node_id: &str, processes: &NodeProcesses) -> Result<()> {
        check_key("put_node_processes", "node id", node_id)?;
        self.tables()
            .processes
            .insert(node_id.to_string(), processes.clone());
        Ok(())
    }

    async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>> {
        Ok(self.tables().processes.clone())
    }

    async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()> {
        let mut t = self.tables();
        for id in ids {
            t.heartbeats.remove(id);
            t.metrics.remove(id);
            t.processes.remove(id);
        }
        Ok(())
    }

    async fn set_resource_demands(&self, demands: &ResourceDemands) -> Result<()> {
        self.tables().demands = Some(demands.clone());
        Ok(())
    }

    async fn resource_demands(&self) -> Result<Option<ResourceDemands>> {
        Ok(self.tables().demands.clone())
    }

    async fn submit_resource_request(&self, request: &ResourceRequest) -> Result<()> {
        request.validate()?;
        self.tables().requests.merge(request);
        Ok(())
    }

    async fn resource_requests(&self) -> Result<StandingRequests> {
        Ok(self.tables().requests.clone())
    }

    async fn put_pending_launch(&self, token: &str, launch: &PendingLaunch) -> Result<()> {
        check_key("put_pending_launch", "launch token", token)?;
        self.tables().pending.insert(token.to_string(), launch.clone());
        Ok(())
    }

    async fn remove_pending_launch(&self, token: &str) -> Result<()> {
        self.tables().pending.remove(token);
        Ok(())
    }

    async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>> {
        Ok(self.tables().pending.clone())
    }

    async fn set_scaling_status(&self, status: &serde_json::Value) -> Result<()> {
        self.tables().scaling_status = Some(status.clone());
        Ok(())
    }

    async fn scaling_status(&self) -> Result<Option<serde_json::Value>> {
        Ok(self.tables().scaling_status.clone())
    }

    async fn set_runtime_config(&self, node_type: Option<&str>, config: &serde_json::Value) -> Result<()> {
        self.tables()
            .runtime_config
            .insert(node_type.map(str::to_string), config.clone());
        Ok(())
    }

    async fn runtime_config(&self, node_type: Option<&str>) -> Result<Option<serde_json::Value>> {
        Ok(self
            .tables()
            .runtime_config
            .get(&node_type.map(str::to_string))
            .cloned())
    }

    async fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        check_key("set_secret", "secret name", name)?;
        self.tables().secrets.insert(name.to_string(), value.to_vec());
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tables().secrets.get(name).cloned())
    }

    async fn push_event(&self, event: &ClusterEvent) -> Result<()> {
        let mut t = self.tables();
        t.events.push_back(event.clone());
        while t.events.len() > self.event_capacity {
            t.events.pop_front();
        }
        Ok(())
    }

    async fn events(&self, limit: usize) -> Result<Vec<ClusterEvent>> {
        let t = self.tables();
        let skip = t.events.len().saturating_sub(limit);
        Ok(t.events.iter().skip(skip).cloned().collect())
    }

    async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: f64,
        ttl: Duration,
    ) -> Result<LeaseAcquire> {
        check_lease_args("try_acquire_lease", name, holder, ttl)?;
        let expires_at = now + ttl.as_secs_f64();
        let mut t = self.tables();
        if let Some(cur) = t.leases.get_mut(name) {
            if cur.holder == holder && !cur.is_expired(now) {
                cur.renewed_at = now;
                cur.expires_at = expires_at;
                return Ok(LeaseAcquire::Acquired(cur.clone()));
            }
            if !cur.is_expired(now) {
                return Ok(LeaseAcquire::HeldBy(cur.clone()));
            }
        }
        let counter = t.lease_tokens.entry(name.to_string()).or_insert(0);
        *counter += 1;
        let lease = Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token: *counter,
            acquired_at: now,
            renewed_at: now,
            expires_at,
        };
        t.leases.insert(name.to_string(), lease.clone());
        Ok(LeaseAcquire::Acquired(lease))
    }

    async fn renew_lease(&self, fence: &Fence, now: f64, ttl: Duration) -> Result<Option<Lease>> {
        check_lease_args("renew_lease", &fence.lease, &fence.holder, ttl)?;
        let mut t = self.tables();
        match t.leases.get_mut(&fence.lease) {
            Some(cur) if cur.holder == fence.holder && cur.token == fence.token => {
                cur.renewed_at = now;
                cur.expires_at = now + ttl.as_secs_f64();
                Ok(Some(cur.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn release_lease(&self, fence: &Fence) -> Result<bool> {
        let mut t = self.tables();
        if fence.is_current(t.leases.get(&fence.lease)) {
            t.leases.remove(&fence.lease);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        Ok(self.tables().leases.get(name).cloned())
    }

    async fn put_pending_launch_fenced(
        &self,
        fence: &Fence,
        token: &str,
        launch: &PendingLaunch,
    ) -> Result<()> {
        let op = "put_pending_launch_fenced";
        check_key(op, "launch token", token)?;
        let mut t = self.tables();
        let current = t.leases.get(&fence.lease);
        if !fence.is_current(current) {
            return Err(fence.refused(op, current));
        }
        t.pending.insert(token.to_string(), launch.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_passes_the_behavioural_suite() {
        let store = InMemoryStore::with_event_capacity(super::super::suite::EVENT_CAPACITY);
        super::super::suite::run_all(&store).await;
    }

    #[tokio::test]
    async fn in_memory_store_passes_the_suite_as_arc_dyn() {
        let store: std::sync::Arc<dyn StateStore> = std::sync::Arc::new(InMemoryStore::with_event_capacity(
            super::super::suite::EVENT_CAPACITY,
        ));
        super::super::suite::run_all(&store).await;
    }
}
