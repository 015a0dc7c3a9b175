//! Which nodes are alive, by the age of their heartbeats: what the controller reads each
//! pass to find lost nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{NodeHeartbeat, StateStore};
use crate::error::Result;
use crate::node::NodeId;

/// How old a heartbeat may be before its node is lost, unless configured otherwise
/// (30 s, as in CloudTik).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// The nodes of a heartbeat snapshot, split by heartbeat age.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLiveness {
    /// Nodes whose heartbeat is at most the timeout old, by id.
    pub alive: BTreeMap<NodeId, NodeHeartbeat>,
    /// Nodes whose heartbeat is older than the timeout (or whose time is not a finite
    /// number), by id.
    pub lost: BTreeMap<NodeId, NodeHeartbeat>,
}

impl NodeLiveness {
    /// Ids of the lost nodes.
    pub fn lost_ids(&self) -> Vec<NodeId> {
        self.lost.keys().cloned().collect()
    }

    /// True when `node_id` has a heartbeat no older than the timeout.
    pub fn is_alive(&self, node_id: &str) -> bool {
        self.alive.contains_key(node_id)
    }
}

/// Splits heartbeat rows into alive and lost nodes at time `now` (unix seconds).
///
/// A node is lost when `now - heartbeat_time > timeout` (exactly `timeout` old is still
/// alive), or when its heartbeat time is NaN or infinite. A heartbeat from the future
/// (a node whose clock runs ahead) counts as alive. Pure: no I/O, no clock.
pub fn classify_nodes(
    heartbeats: BTreeMap<NodeId, NodeHeartbeat>,
    now: f64,
    timeout: Duration,
) -> NodeLiveness {
    let mut out = NodeLiveness::default();
    for (id, hb) in heartbeats {
        if !hb.heartbeat_time.is_finite() || hb.is_lost(now, timeout) {
            out.lost.insert(id, hb);
        } else {
            out.alive.insert(id, hb);
        }
    }
    out
}

/// Reads every heartbeat with one batched read ([`StateStore::all_heartbeats`]: one
/// `HVALS` per shard) and classifies the nodes with [`classify_nodes`].
pub async fn read_node_liveness(store: &dyn StateStore, now: f64, timeout: Duration) -> Result<NodeLiveness> {
    Ok(classify_nodes(store.all_heartbeats().await?, now, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeKind;
    use crate::resources::Resources;
    use crate::state::InMemoryStore;

    fn hb(id: &str, time: f64) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: id.into(),
            node_ip: "10.0.0.1".into(),
            node_kind: NodeKind::Worker,
            node_type: "worker".into(),
            seq_id: None,
            heartbeat_time: time,
            total_resources: Resources::new(),
            available_resources: Resources::new(),
        }
    }

    fn rows(rows: &[(&str, f64)]) -> BTreeMap<NodeId, NodeHeartbeat> {
        rows.iter().map(|(id, t)| (id.to_string(), hb(id, *t))).collect()
    }

    #[test]
    fn splits_by_age_with_the_boundary_alive() {
        let now = 1000.0;
        let l = classify_nodes(
            rows(&[
                ("fresh", 999.5),
                ("edge", 970.0),
                ("old", 969.9),
                ("ancient", 0.0),
                ("future", 1005.0),
                ("nan", f64::NAN),
                ("inf", f64::INFINITY),
            ]),
            now,
            DEFAULT_HEARTBEAT_TIMEOUT,
        );
        assert_eq!(l.alive.keys().collect::<Vec<_>>(), ["edge", "fresh", "future"]);
        assert_eq!(l.lost_ids(), ["ancient", "inf", "nan", "old"]);
        assert!(l.is_alive("edge") && !l.is_alive("old") && !l.is_alive("missing"));
        // The rows are kept whole.
        assert_eq!(l.alive["fresh"], hb("fresh", 999.5));
    }

    #[test]
    fn the_timeout_is_configurable() {
        let r = rows(&[("a", 95.0), ("b", 80.0)]);
        let short = classify_nodes(r.clone(), 100.0, Duration::from_secs(10));
        assert_eq!(short.lost_ids(), ["b"]);
        let long = classify_nodes(r.clone(), 100.0, Duration::from_secs(60));
        assert!(long.lost.is_empty());
        assert_eq!(long.alive.len(), 2);
        let zero = classify_nodes(r, 100.0, Duration::ZERO);
        assert_eq!(zero.lost_ids(), ["a", "b"]);
        assert!(classify_nodes(BTreeMap::new(), 1.0, Duration::ZERO) == NodeLiveness::default());
    }

    #[tokio::test]
    async fn reads_every_heartbeat_from_the_store() {
        let store = InMemoryStore::new();
        for (id, t) in [("a", 100.0), ("b", 50.0), ("c", 99.0)] {
            store.put_heartbeat(&hb(id, t)).await.unwrap();
        }
        let l = read_node_liveness(&store, 100.0, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(l.alive.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(l.lost_ids(), ["b"]);
    }
}
