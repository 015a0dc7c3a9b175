//! The cluster state store: the shared state of a cluster that node agents write and the
//! cluster controller reads (CloudTik keeps it in Redis on the head).
//!
//! [`StateStore`] is the trait; [`InMemoryStore`] keeps everything in the process (tests, a
//! controller embedded without Redis) and [`RedisStore`] keeps it in a primary redis-server
//! plus optional extra shards. Both pass the same behavioural test suite.
//!
//! # Tables
//!
//! | table | key | writer | methods |
//! |---|---|---|---|
//! | node heartbeats and resources | node id | node agent, every second | [`put_heartbeat`](StateStore::put_heartbeat), [`all_heartbeats`](StateStore::all_heartbeats) |
//! | node metrics | node id | node agent, every few seconds | [`put_node_metrics`](StateStore::put_node_metrics), [`all_node_metrics`](StateStore::all_node_metrics) |
//! | process health | node id | node agent | [`put_node_processes`](StateStore::put_node_processes), [`all_node_processes`](StateStore::all_node_processes) |
//! | resource demands | (one value) | scaling policy | [`set_resource_demands`](StateStore::set_resource_demands) |
//! | resource requests (durable) | resource id | the `scale` API | [`submit_resource_request`](StateStore::submit_resource_request) |
//! | pending launches (durable) | launch token | autoscaler, before and after a launch call | [`put_pending_launch`](StateStore::put_pending_launch) |
//! | scaling status | (one value) | controller | [`set_scaling_status`](StateStore::set_scaling_status) |
//! | runtime config (encrypted) | node type or none | controller | [`set_runtime_config`](StateStore::set_runtime_config) |
//! | secrets (encrypted) | name | head | [`set_secret`](StateStore::set_secret) |
//! | events (bounded, newest last) | position | anyone | [`push_event`](StateStore::push_event) |
//! | leases (with fencing tokens; see [`Lease`]) | lease name | the cluster controller | [`try_acquire_lease`](StateStore::try_acquire_lease), [`renew_lease`](StateStore::renew_lease), [`lease`](StateStore::lease) |
//!
//! Rows of the node tables stay until [`StateStore::remove_nodes`] removes them (the
//! controller does so for nodes its provider no longer lists); a node whose heartbeat is
//! older than the controller's timeout is lost ([`NodeHeartbeat::is_lost`];
//! [`read_node_liveness`] reads every heartbeat in one batch and splits the nodes into
//! alive and lost).
//!
//! # Redis key layout
//!
//! Every key starts with `cloudtik:`. Values are JSON (UTF-8) unless marked sealed or
//! compact.
//!
//! | key | type | shard | content |
//! |---|---|---|---|
//! | `cloudtik:nodes:heartbeat` | hash | data shard of each node | field node id → [`NodeHeartbeat`], compact (below) |
//! | `cloudtik:nodes:metrics` | hash | data shard of each node | field node id → [`NodeMetrics`] |
//! | `cloudtik:nodes:processes` | hash | data shard of each node | field node id → [`NodeProcesses`] |
//! | `cloudtik:resource_demands` | string | primary | [`ResourceDemands`] |
//! | `cloudtik:resource_requests` | hash | primary | field resource id → JSON array of [`Resources`] bundles |
//! | `cloudtik:resource_requests:time` | string | primary | `request_time` of the last request merged |
//! | `cloudtik:pending_launches` | hash | primary | field launch token → [`PendingLaunch`] |
//! | `cloudtik:scaling_status` | string | primary | the controller's report (any JSON) |
//! | `cloudtik:runtime_config` | string, sealed | primary | the runtime config for every node type |
//! | `cloudtik:runtime_config:<node type>` | string, sealed | primary | the runtime config of one node type |
//! | `cloudtik:secret:<name>` | string, sealed | primary | a secret's bytes |
//! | `cloudtik:events` | list | primary | [`ClusterEvent`]s, oldest first, trimmed to the capacity |
//! | `cloudtik:lease:<name>` | hash | primary | a [`Lease`]: fields `holder`, `token`, `acquired_at`, `renewed_at`, `expires_at` (numbers as decimal text) |
//! | `cloudtik:lease:<name>:token` | string | primary | the lease's token counter (`INCR` on each new acquisition) |
//! | `cloudtik:shards` | string | primary | JSON array of the extra shards' `host:port`, published by the head ([`RedisStore::publish_shards`]) |
//!
//! **Shards.** The primary holds the cluster-wide keys. The node tables are split over
//! the *data shards*: the extra shards when there are any, else the primary alone (as in
//! CloudTik, where the primary registers itself as the only shard). All rows of one node
//! live on one data shard, chosen by [`shard_index`]: the 64-bit FNV-1a hash of the node
//! id's UTF-8 bytes, modulo the number of data shards. FNV-1a is fixed by its
//! specification (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), so the
//! mapping is the same on every platform and in every version of this crate. Every
//! store of a cluster must use the same shard list in the same order: the head publishes
//! it (`cloudtik:shards`) and agents connect with `discover_shards`. Rows written under
//! another shard list are not read; agents write them again at their next report.
//!
//! **Batch reads.** [`StateStore::all_heartbeats`] sends one `HVALS` per data shard (a
//! heartbeat row holds its node id, so the fields need not be read) and the other `all_*`
//! reads one `HGETALL` per data shard, to all shards at once; [`StateStore::heartbeats`]
//! sends one `HMGET` per shard for the ids on that shard. Never one round trip per node.
//!
//! **Heartbeat rows** are compact, because the controller reads all of them every pass:
//! about 120 bytes for a node with two resources, where JSON took about 260. All numbers
//! are little-endian; `str` is a u16 byte length and that many bytes of UTF-8; `res` is a
//! u16 count, then per resource a `str` name and an f64 amount.
//!
//! | bytes | content |
//! |---|---|
//! | 1 | format tag `0xC1` |
//! | 1 | node kind: 0 head, 1 worker, 2 unmanaged |
//! | 1 | flags: bit 0 set when `seq_id` is present; other bits 0 |
//! | 4 | `seq_id` (u32; 0 when absent) |
//! | 8 | `heartbeat_time` (f64) |
//! | str | `node_id` (the same as the hash field) |
//! | str | `node_ip` |
//! | str | `node_type` |
//! | res | `total_resources` |
//! | res | `available_resources` |
//!
//! Nothing follows the last field. A row longer than the format allows (a string over
//! 65,535 bytes) is refused with `InvalidConfig`. Rows starting with `{` are JSON
//! [`NodeHeartbeat`]s, as earlier builds wrote them, and are still read.
//!
//! **Sealed values** are AES-256-GCM encrypted with the cluster's [`EncryptionKey`]:
//! one version byte (`1`), a random 96-bit nonce per value, then the ciphertext with its
//! tag. The Redis key name is the associated data, so a sealed value copied to another
//! key does not decrypt.
//!
//! **Durability.** Resource requests and pending launches must survive a restart of
//! redis-server: [`RedisServerConfig`] renders the configuration we run redis-server with
//! (append-only file, `appendfsync everysec`, a password, protected mode, bound to the
//! head's internal address and loopback). A stopped or restarted redis-server loses
//! nothing it acknowledged; what a *killed* one may lose depends on [`AppendFsync`]:
//! nothing with `always`, and with `everysec` the writes of the last ~2 s only when the
//! disk was too slow to keep up. The rendered config needs redis-server 7.0 or newer.

#[cfg(feature = "redis")]
mod crypto;
mod lease;
mod liveness;
mod memory;
mod model;
#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
mod row;
mod server;

#[cfg(all(test, feature = "redis"))]
mod redis_tests;
#[cfg(test)]
mod suite;
#[cfg(all(test, feature = "redis"))]
pub(crate) mod test_server;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::node::NodeId;
use crate::resources::Resources;

#[cfg(feature = "redis")]
pub use crypto::EncryptionKey;
pub use lease::{CONTROLLER_LEASE, Fence, Lease, LeaseAcquire};
pub use liveness::{DEFAULT_HEARTBEAT_TIMEOUT, NodeLiveness, classify_nodes, read_node_liveness};
pub use memory::InMemoryStore;
#[cfg(all(feature = "ssh", feature = "redis"))]
pub(crate) use model::resource_id;
pub use model::{
    ClusterEvent, EventSeverity, NodeHeartbeat, NodeMetrics, NodeProcesses, PendingLaunch, ProcessState,
    RequestBundle, ResourceDemands, ResourceRequest, StandingRequests, unix_now,
};
#[cfg(feature = "redis")]
pub use redis_store::{RedisAddress, RedisStore, RedisStoreConfig};
pub use server::{AppendFsync, RedisServerConfig, generate_password};

/// How many events a store keeps unless configured otherwise.
pub const DEFAULT_EVENT_CAPACITY: usize = 1000;

/// The data shard (index into the data shards) that holds the rows of `key`: the 64-bit
/// FNV-1a hash of the key's UTF-8 bytes modulo `shards`. Stable across platforms and
/// versions. `shards` of 0 is treated as 1.
pub fn shard_index(key: &str, shards: usize) -> usize {
    (fnv1a64(key.as_bytes()) % shards.max(1) as u64) as usize
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shared state of one cluster.
///
/// # Contract
///
/// * **Object safe.** Hand stores around as `Arc<dyn StateStore>`.
/// * **Batch reads.** The `all_*` reads and [`heartbeats`](StateStore::heartbeats) read
///   every row they return with a bounded number of round trips (one per shard), never
///   one per node.
/// * **Upserts.** Every `put_*`/`set_*` replaces the row or value it names.
/// * **Idempotent removal.** Removing rows that do not exist succeeds.
/// * **Errors.** A store that cannot be reached returns errors of kind
///   [`Transient`](crate::ErrorKind::Transient) or [`Timeout`](crate::ErrorKind::Timeout)
///   (retry later); a refused password or a wrong encryption key gives
///   [`Unauthenticated`](crate::ErrorKind::Unauthenticated); invalid input gives
///   [`InvalidConfig`](crate::ErrorKind::InvalidConfig).
///
/// Conveniences are in [`StateStoreExt`].
#[async_trait]
pub trait StateStore: Debug + Send + Sync + 'static {
    /// Checks that the store answers (and, for Redis, that every shard does).
    async fn ping(&self) -> Result<()>;

    /// The largest number of events the store keeps; older ones are dropped.
    fn event_capacity(&self) -> usize;

    /// Writes a node's heartbeat row (its address, kind, type, resources and time).
    async fn put_heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<()>;

    /// The heartbeat rows of the given nodes; nodes without a row are left out.
    async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>>;

    /// Every heartbeat row.
    async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>>;

    /// Writes a node's metrics row.
    async fn put_node_metrics(&self, node_id: &str, metrics: &NodeMetrics) -> Result<()>;

    /// Every metrics row.
    async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>>;

    /// Writes a node's process health row.
    async fn put_node_processes(&self, node_id: &str, processes: &NodeProcesses) -> Result<()>;

    /// Every process health row.
    async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>>;

    /// Removes the heartbeat, metrics and process rows of the given nodes.
    async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()>;

    /// Replaces the scaling policy's current resource demands.
    async fn set_resource_demands(&self, demands: &ResourceDemands) -> Result<()>;

    /// The current resource demands, if any were set.
    async fn resource_demands(&self) -> Result<Option<ResourceDemands>>;

    /// Merges a `scale` request into the standing resource requests, atomically; see
    /// [`StandingRequests::merge`] for the rules. Durable.
    async fn submit_resource_request(&self, request: &ResourceRequest) -> Result<()>;

    /// The standing resource requests (empty when none were submitted).
    async fn resource_requests(&self) -> Result<StandingRequests>;

    /// Records a launch about to be made, under its launch token. Write it before the
    /// provider call and remove it after, so a restarted controller knows which launches
    /// may have created nodes. Durable.
    async fn put_pending_launch(&self, token: &str, launch: &PendingLaunch) -> Result<()>;

    /// Removes a pending launch; a missing token is not an error.
    async fn remove_pending_launch(&self, token: &str) -> Result<()>;

    /// Every pending launch, by token.
    async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>>;

    /// Replaces the controller's scaling status report.
    async fn set_scaling_status(&self, status: &serde_json::Value) -> Result<()>;

    /// The last scaling status report.
    async fn scaling_status(&self) -> Result<Option<serde_json::Value>>;

    /// Publishes the runtime config, for every node type (`None`) or one node type.
    /// Stored encrypted.
    async fn set_runtime_config(&self, node_type: Option<&str>, config: &serde_json::Value) -> Result<()>;

    /// The runtime config published for every node type (`None`) or exactly this node
    /// type (no fallback; see [`StateStoreExt::runtime_config_for`]).
    async fn runtime_config(&self, node_type: Option<&str>) -> Result<Option<serde_json::Value>>;

    /// Stores a secret. Stored encrypted.
    async fn set_secret(&self, name: &str, value: &[u8]) -> Result<()>;

    /// A secret, if set.
    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Appends an event; the oldest events beyond [`event_capacity`](Self::event_capacity)
    /// are dropped.
    async fn push_event(&self, event: &ClusterEvent) -> Result<()>;

    /// The newest `limit` events, oldest first (newest last).
    async fn events(&self, limit: usize) -> Result<Vec<ClusterEvent>>;

    /// Takes the lease `name` for `holder` when it is absent or expired at `now`, with
    /// the next fencing token, until `now + ttl`; when `holder` holds it already, renews
    /// it (same token). Atomic. See [`Lease`].
    ///
    /// The default refuses with [`Unsupported`](crate::ErrorKind::Unsupported).
    async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: f64,
        ttl: Duration,
    ) -> Result<LeaseAcquire> {
        let _ = (name, holder, now, ttl);
        Err(lease_unsupported("try_acquire_lease"))
    }

    /// Moves the lease's expiry to `now + ttl` when `fence` is still current (same holder
    /// and token); `None` when it is not (the lease was released, or another holder took
    /// it). A holder may renew a lease that expired as long as nobody took it. Atomic.
    async fn renew_lease(&self, fence: &Fence, now: f64, ttl: Duration) -> Result<Option<Lease>> {
        let _ = (fence, now, ttl);
        Err(lease_unsupported("renew_lease"))
    }

    /// Deletes the lease when `fence` is current, so another holder can take it at once;
    /// false when it was not current. The token counter stays. Atomic.
    async fn release_lease(&self, fence: &Fence) -> Result<bool> {
        let _ = fence;
        Err(lease_unsupported("release_lease"))
    }

    /// The lease `name` as stored, expired or not; `None` when nobody holds it.
    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let _ = name;
        Err(lease_unsupported("lease"))
    }

    /// Succeeds when `fence` is current; else an error of kind
    /// [`Conflict`](crate::ErrorKind::Conflict) (see [`Fence::refused`]). A holder calls it
    /// right before each step that has no fenced form (provider calls): the step may still
    /// run after another holder took over in between, which is the remaining window.
    async fn check_fence(&self, fence: &Fence) -> Result<()> {
        let current = self.lease(&fence.lease).await?;
        if fence.is_current(current.as_ref()) {
            Ok(())
        } else {
            Err(fence.refused("check_fence", current.as_ref()))
        }
    }

    /// [`put_pending_launch`](Self::put_pending_launch) when `fence` is current, in one
    /// atomic step; else an error of kind [`Conflict`](crate::ErrorKind::Conflict) and
    /// nothing is written.
    async fn put_pending_launch_fenced(
        &self,
        fence: &Fence,
        token: &str,
        launch: &PendingLaunch,
    ) -> Result<()> {
        let _ = (fence, token, launch);
        Err(lease_unsupported("put_pending_launch_fenced"))
    }
}

fn lease_unsupported(op: &'static str) -> crate::Error {
    crate::Error::new(crate::ErrorKind::Unsupported, "this state store has no leases").with_operation(op)
}

/// Every node table at one moment, as the controller reads it each pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTables {
    /// Heartbeat rows by node id.
    pub heartbeats: BTreeMap<NodeId, NodeHeartbeat>,
    /// Metrics rows by node id.
    pub metrics: BTreeMap<NodeId, NodeMetrics>,
    /// Process health rows by node id.
    pub processes: BTreeMap<NodeId, NodeProcesses>,
}

/// Conveniences over [`StateStore`], implemented for every store.
///
/// Do not implement this trait yourself.
#[async_trait]
pub trait StateStoreExt: StateStore {
    /// One node's heartbeat row.
    async fn heartbeat(&self, id: &str) -> Result<Option<NodeHeartbeat>> {
        Ok(self.heartbeats(&[id.to_string()]).await?.remove(id))
    }

    /// Removes one node's rows.
    async fn remove_node(&self, id: &str) -> Result<()> {
        self.remove_nodes(&[id.to_string()]).await
    }

    /// Reads the three node tables concurrently.
    async fn node_tables(&self) -> Result<NodeTables> {
        let (heartbeats, metrics, processes) = futures::try_join!(
            self.all_heartbeats(),
            self.all_node_metrics(),
            self.all_node_processes()
        )?;
        Ok(NodeTables {
            heartbeats,
            metrics,
            processes,
        })
    }

    /// Ids of the nodes whose heartbeat is older than `timeout` at time `now` (unix seconds).
    async fn lost_nodes(&self, now: f64, timeout: Duration) -> Result<Vec<NodeId>> {
        Ok(self
            .all_heartbeats()
            .await?
            .into_iter()
            .filter(|(_, hb)| hb.is_lost(now, timeout))
            .map(|(id, _)| id)
            .collect())
    }

    /// The runtime config of a node type, falling back to the one for every node type.
    async fn runtime_config_for(&self, node_type: &str) -> Result<Option<serde_json::Value>> {
        match self.runtime_config(Some(node_type)).await? {
            Some(c) => Ok(Some(c)),
            None => self.runtime_config(None).await,
        }
    }

    /// Drops every standing resource request (an empty request with `override` set).
    async fn clear_resource_requests(&self) -> Result<()> {
        self.submit_resource_request(&ResourceRequest {
            request_time: unix_now(),
            requests: Vec::new(),
            override_all: true,
        })
        .await
    }

    /// The number of nodes in flight per node type, summed over pending launches.
    async fn pending_launch_counts(&self) -> Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for launch in self.pending_launches().await?.into_values() {
            *counts.entry(launch.node_type).or_insert(0) += launch.count;
        }
        Ok(counts)
    }

    /// The standing requests flattened into bundles.
    async fn requested_bundles(&self) -> Result<Vec<Resources>> {
        Ok(self.resource_requests().await?.bundles())
    }
}

impl<T: StateStore + ?Sized> StateStoreExt for T {}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: StateStore + ?Sized> StateStore for Arc<T> {
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    fn event_capacity(&self) -> usize {
        (**self).event_capacity()
    }
    async fn put_heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<()> {
        (**self).put_heartbeat(heartbeat).await
    }
    async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        (**self).heartbeats(ids).await
    }
    async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        (**self).all_heartbeats().await
    }
    async fn put_node_metrics(&self, node_id: &str, metrics: &NodeMetrics) -> Result<()> {
        (**self).put_node_metrics(node_id, metrics).await
    }
    async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>> {
        (**self).all_node_metrics().await
    }
    async fn put_node_processes(&self, node_id: &str, processes: &NodeProcesses) -> Result<()> {
        (**self).put_node_processes(node_id, processes).await
    }
    async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>> {
        (**self).all_node_processes().await
    }
    async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()> {
        (**self).remove_nodes(ids).await
    }
    async fn set_resource_demands(&self, demands: &ResourceDemands) -> Result<()> {
        (**self).set_resource_demands(demands).await
    }
    async fn resource_demands(&self) -> Result<Option<ResourceDemands>> {
        (**self).resource_demands().await
    }
    async fn submit_resource_request(&self, request: &ResourceRequest) -> Result<()> {
        (**self).submit_resource_request(request).await
    }
    async fn resource_requests(&self) -> Result<StandingRequests> {
        (**self).resource_requests().await
    }
    async fn put_pending_launch(&self, token: &str, launch: &PendingLaunch) -> Result<()> {
        (**self).put_pending_launch(token, launch).await
    }
    async fn remove_pending_launch(&self, token: &str) -> Result<()> {
        (**self).remove_pending_launch(token).await
    }
    async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>> {
        (**self).pending_launches().await
    }
    async fn set_scaling_status(&self, status: &serde_json::Value) -> Result<()> {
        (**self).set_scaling_status(status).await
    }
    async fn scaling_status(&self) -> Result<Option<serde_json::Value>> {
        (**self).scaling_status().await
    }
    async fn set_runtime_config(&self, node_type: Option<&str>, config: &serde_json::Value) -> Result<()> {
        (**self).set_runtime_config(node_type, config).await
    }
    async fn runtime_config(&self, node_type: Option<&str>) -> Result<Option<serde_json::Value>> {
        (**self).runtime_config(node_type).await
    }
    async fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        (**self).set_secret(name, value).await
    }
    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        (**self).secret(name).await
    }
    async fn push_event(&self, event: &ClusterEvent) -> Result<()> {
        (**self).push_event(event).await
    }
    async fn events(&self, limit: usize) -> Result<Vec<ClusterEvent>> {
        (**self).events(limit).await
    }
    async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: f64,
        ttl: Duration,
    ) -> Result<LeaseAcquire> {
        (**self).try_acquire_lease(name, holder, now, ttl).await
    }
    async fn renew_lease(&self, fence: &Fence, now: f64, ttl: Duration) -> Result<Option<Lease>> {
        (**self).renew_lease(fence, now, ttl).await
    }
    async fn release_lease(&self, fence: &Fence) -> Result<bool> {
        (**self).release_lease(fence).await
    }
    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        (**self).lease(name).await
    }
    async fn check_fence(&self, fence: &Fence) -> Result<()> {
        (**self).check_fence(fence).await
    }
    async fn put_pending_launch_fenced(
        &self,
        fence: &Fence,
        token: &str,
        launch: &PendingLaunch,
    ) -> Result<()> {
        (**self).put_pending_launch_fenced(fence, token, launch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // Vectors from the FNV specification's test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shard_index_is_stable_and_in_range() {
        assert_eq!(shard_index("a", 1), 0);
        assert_eq!(shard_index("a", 0), 0);
        assert_eq!(shard_index("a", 3), (0xaf63dc4c8601ec8c_u64 % 3) as usize);
        let mut seen = [0usize; 3];
        for i in 0..300 {
            seen[shard_index(&format!("i-{i:08}"), 3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "keys spread over shards: {seen:?}");
    }
}
