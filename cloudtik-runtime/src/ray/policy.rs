//! Ray's scaling policy: the controller scales on what Ray's scheduler is waiting for.
//!
//! Every pass the controller asks Ray's dashboard on the head for the cluster's load
//! (`GET http://<head>:<dashboard_port>/api/cluster_status`, the data `ray status`
//! shows; it is there without Ray's own autoscaler, whose read-only monitor `ray start
//! --head` runs by default). The answer's `loadMetricsReport` becomes a
//! [`ScalingState`] ([`scaling_state_from_cluster_status`]):
//!
//! * **Demands** — every `[shape, count]` of `resourceDemand` (tasks and actors waiting
//!   for a node, feasible or not) is `count` bundles of `shape`. Placement groups that
//!   wait (`pgDemand`, `[{bundles: [[shape, count], ...], strategy}, count]`) add their
//!   bundles: one demand per bundle, except `STRICT_PACK` groups, whose bundles must
//!   share one node and are summed into one demand. (`SPREAD` / `STRICT_SPREAD` cannot
//!   be said to the planner; their bundles are separate demands, which a planner packing
//!   them onto fewer nodes may under-provision for `STRICT_SPREAD`.) `requestDemand`
//!   (`ray.autoscaler.sdk.request_resources`, a floor for the cluster's size rather
//!   than waiting work) is ignored, as CloudTik's Python policy ignores it.
//! * **Node states** — every node of `usageByNode` (`{resource: [used, total]}`) is
//!   keyed by the IP of its `node:<ip>` resource; its free resources are `total - used`
//!   and it is in use while any schedulable resource (not `node:*` nor the object
//!   store) is used, i.e. while it runs a task or holds an actor.
//!
//! Ray's names map to CloudTik's: `CPU`, `GPU` and `memory` (bytes) are the same names
//! ([`resources::CPU`], [`resources::GPU`], [`resources::MEMORY`]); Ray-internal
//! resources (`node:*`, `object_store_memory`, `accelerator_type:*`) are dropped; custom
//! resources keep their names. The dashboard camel-cases the keys of `usageByNode`, so
//! a custom resource `my_res` shows there as `myRes` (a cluster scaling on custom
//! resources should name them without underscores).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cloudtik_core::resources::{self, Resources};
use cloudtik_core::scaler::policy::{NodeResourceState, ScalingPolicy, ScalingState};
use cloudtik_core::{Error, ErrorKind, Result};
use serde_json::Value;

/// The dashboard path of the cluster's load.
pub const CLUSTER_STATUS_PATH: &str = "/api/cluster_status";

/// How long the policy waits for the dashboard.
pub const CLUSTER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Demands past this many are dropped (as CloudTik's Python policy bounds them), so a
/// job submitting a million tasks does not slow the planner down.
pub const MAX_DEMANDS: usize = 1000;

/// Ray's scaling policy: demands and node states from Ray's dashboard on the head (see
/// the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RayScalingPolicy {
    head_ip: String,
    dashboard_port: u16,
}

impl RayScalingPolicy {
    /// The policy of the Ray cluster whose dashboard listens on `head_ip:dashboard_port`.
    pub fn new(head_ip: impl Into<String>, dashboard_port: u16) -> Self {
        RayScalingPolicy {
            head_ip: head_ip.into(),
            dashboard_port,
        }
    }

    /// The head's address.
    pub fn head_ip(&self) -> &str {
        &self.head_ip
    }

    /// The dashboard's port.
    pub fn dashboard_port(&self) -> u16 {
        self.dashboard_port
    }
}

#[async_trait]
impl ScalingPolicy for RayScalingPolicy {
    fn name(&self) -> &str {
        "ray"
    }

    /// Fetches the cluster's load from the dashboard; an unreachable dashboard, or an
    /// answer that is not a cluster status, is an error.
    async fn scaling_state(&self) -> Result<ScalingState> {
        let status = crate::http::get_json(
            &self.head_ip,
            self.dashboard_port,
            CLUSTER_STATUS_PATH,
            CLUSTER_STATUS_TIMEOUT,
        )
        .await
        .map_err(|e| e.with_operation("ray_scaling_state"))?;
        scaling_state_from_cluster_status(&status)
    }
}

/// The [`ScalingState`] of an answer of Ray's dashboard to `GET /api/cluster_status`
/// (see the [module docs](self)). Fails when the answer is not a successful cluster
/// status (`result` not true, or no `data.clusterStatus.loadMetricsReport`).
pub fn scaling_state_from_cluster_status(status: &Value) -> Result<ScalingState> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Unexpected,
            format!("Ray's {CLUSTER_STATUS_PATH} answer {why}"),
        )
    };
    if status.get("result").and_then(Value::as_bool) != Some(true) {
        let msg = status.get("msg").and_then(Value::as_str).unwrap_or("");
        return Err(bad(&format!("is not a success: {msg}")));
    }
    let report = status
        .pointer("/data/clusterStatus/loadMetricsReport")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad("has no data.clusterStatus.loadMetricsReport"))?;

    let mut state = ScalingState::new();
    for (shape, count) in shapes_with_counts(report.get("resourceDemand")) {
        push_demands(&mut state.demands, &shape, count);
    }
    for (group, count) in entries(report.get("pgDemand")) {
        let strategy = group.get("strategy").and_then(Value::as_str).unwrap_or("PACK");
        let bundles = shapes_with_counts(group.get("bundles"));
        if strategy.eq_ignore_ascii_case("STRICT_PACK") {
            let mut sum = Resources::new();
            for (shape, n) in &bundles {
                for (name, amount) in shape.iter() {
                    sum.set(name, sum.get(name) + amount * *n as f64);
                }
            }
            push_demands(&mut state.demands, &sum, count);
        } else {
            for _ in 0..count.min(MAX_DEMANDS) {
                for (shape, n) in &bundles {
                    push_demands(&mut state.demands, shape, *n);
                }
            }
        }
    }

    if let Some(nodes) = report.get("usageByNode").and_then(Value::as_object) {
        for usage in nodes.values() {
            if let Some((ip, node)) = node_state(usage) {
                state.nodes.insert(ip, node);
            }
        }
    }
    Ok(state)
}

fn push_demands(demands: &mut Vec<Resources>, shape: &Resources, count: usize) {
    if shape.is_empty() {
        return;
    }
    let room = MAX_DEMANDS.saturating_sub(demands.len());
    demands.extend(std::iter::repeat_n(shape.clone(), count.min(room)));
}

/// The `[x, count]` pairs of a list.
fn entries(list: Option<&Value>) -> impl Iterator<Item = (&Value, usize)> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pair = entry.as_array()?;
            let count = pair.get(1)?.as_f64()?;
            (count > 0.0).then(|| (&pair[0], count as usize))
        })
}

/// The `[shape, count]` pairs of a list, shapes in CloudTik's names.
fn shapes_with_counts(list: Option<&Value>) -> Vec<(Resources, usize)> {
    entries(list)
        .filter_map(|(shape, count)| Some((shape_resources(shape.as_object()?), count)))
        .collect()
}

/// True for Ray's internal resources, which are no scaling resources.
fn is_internal(name: &str) -> bool {
    name.starts_with("node:")
        || name.starts_with("accelerator_type:")
        || name.starts_with("acceleratorType:")
        || name == "object_store_memory"
        || name == "objectStoreMemory"
}

/// A Ray resource shape in CloudTik's names.
fn shape_resources(shape: &serde_json::Map<String, Value>) -> Resources {
    let mut r = Resources::new();
    for (name, amount) in shape {
        if is_internal(name) {
            continue;
        }
        if let Some(amount) = amount.as_f64().filter(|a| *a > 0.0) {
            r.set(resource_name(name), amount);
        }
    }
    r
}

/// CloudTik's name of a Ray resource (the common ones have the same names).
fn resource_name(ray: &str) -> &str {
    match ray {
        "CPU" => resources::CPU,
        "GPU" => resources::GPU,
        "memory" => resources::MEMORY,
        other => other,
    }
}

/// A node's IP and state from its `usageByNode` entry (`{resource: [used, total]}`);
/// `None` when it has no `node:<ip>` resource.
fn node_state(usage: &Value) -> Option<(String, NodeResourceState)> {
    let usage = usage.as_object()?;
    let ip = usage.keys().find_map(|k| {
        let ip = k.strip_prefix("node:")?;
        (!ip.is_empty() && !ip.starts_with("__") && ip != "InternalHead").then(|| ip.to_string())
    })?;
    let mut totals: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (name, pair) in usage {
        if is_internal(name) {
            continue;
        }
        let Some(pair) = pair.as_array() else { continue };
        let used = pair.first().and_then(Value::as_f64).unwrap_or(0.0);
        let total = pair.get(1).and_then(Value::as_f64).unwrap_or(0.0);
        totals.insert(resource_name(name), (used, total));
    }
    let in_use = totals.values().any(|(used, _)| *used > 0.0);
    let available = totals
        .iter()
        .map(|(name, (used, total))| (*name, (total - used).max(0.0)))
        .collect();
    Some((ip, NodeResourceState::new(available, in_use)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/ray/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn cpus(n: f64) -> Resources {
        Resources::from_pairs([(resources::CPU, n)])
    }

    #[test]
    fn waiting_tasks_are_demands_and_the_busy_head_is_in_use() {
        // Captured from Ray 2.60: a 1-CPU head running one task, five more waiting.
        let state = scaling_state_from_cluster_status(&fixture("one-node-pending.json")).unwrap();
        assert_eq!(state.demands, vec![cpus(1.0); 5]);
        assert_eq!(state.nodes.len(), 1);
        let head = &state.nodes["192.0.2.2"];
        assert!(head.in_use);
        assert_eq!(head.available.get(resources::CPU), 0.0);
        assert_eq!(head.available.get(resources::MEMORY), 16935128269.0);
        // Ray-internal resources are dropped (and a zero amount is no entry).
        assert_eq!(head.available.len(), 1, "{:?}", head.available);
    }

    #[test]
    fn placement_groups_add_their_bundles() {
        // Captured: three tasks waiting and a SPREAD group of {CPU: 1} and {CPU: 2}.
        let state = scaling_state_from_cluster_status(&fixture("one-node-placement-group.json")).unwrap();
        let mut expected = vec![cpus(1.0); 3];
        expected.extend([cpus(1.0), cpus(2.0)]);
        assert_eq!(state.demands, expected);

        let strict = json!({"result": true, "data": {"clusterStatus": {"loadMetricsReport": {
            "resourceDemand": [],
            "pgDemand": [[{"bundles": [[{"CPU": 1.0, "GPU": 1.0}, 2], [{"CPU": 2.0}, 1]],
                           "strategy": "STRICT_PACK"}, 2]],
        }}}});
        let state = scaling_state_from_cluster_status(&strict).unwrap();
        let bundle = Resources::from_pairs([(resources::CPU, 4.0), (resources::GPU, 2.0)]);
        assert_eq!(state.demands, vec![bundle.clone(), bundle]);
    }

    #[test]
    fn nodes_are_keyed_by_ip_and_idle_ones_are_free() {
        // The shape of a head (no CPUs for tasks) and two workers, one of them busy.
        let status = json!({"result": true, "msg": "Got cluster status.", "data": {"clusterStatus": {
        "loadMetricsReport": {
            "resourceDemand": [[{"CPU": 1.0, "memory": 1073741824.0}, 2], [{"custom": 1.0}, 1]],
            "pgDemand": [],
            "requestDemand": [[{"CPU": 8.0}, 1]],
            "usageByNode": {
                "aa": {"node:__internal_head__": [0.0, 1.0], "node:InternalHead": [0.0, 1.0],
                       "node:10.0.0.1": [0.0, 1.0], "memory": [0.0, 1e9],
                       "objectStoreMemory": [0.0, 5e8]},
                "bb": {"node:10.0.0.2": [0.0, 1.0], "CPU": [2.0, 2.0], "GPU": [0.0, 1.0],
                       "memory": [0.0, 2e9], "objectStoreMemory": [1e6, 5e8],
                       "accelerator_type:T4": [0.0, 1.0]},
                "cc": {"node:10.0.0.3": [0.0, 1.0], "CPU": [0.0, 2.0], "memory": [0.0, 2e9],
                       "objectStoreMemory": [1e6, 5e8]},
                "no-ip": {"CPU": [1.0, 1.0]}
            }
        }}}});
        let state = scaling_state_from_cluster_status(&status).unwrap();
        let task = Resources::from_pairs([(resources::CPU, 1.0), (resources::MEMORY, 1073741824.0)]);
        assert_eq!(
            state.demands,
            vec![task.clone(), task, Resources::from_pairs([("custom", 1.0)])]
        );
        assert_eq!(
            state.nodes.keys().collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        let head = &state.nodes["10.0.0.1"];
        assert!(!head.in_use);
        assert_eq!(head.available.get(resources::CPU), 0.0);
        let busy = &state.nodes["10.0.0.2"];
        assert!(busy.in_use);
        assert_eq!(busy.available.get(resources::CPU), 0.0);
        assert_eq!(busy.available.get(resources::GPU), 1.0);
        assert_eq!(busy.available.get("accelerator_type:T4"), 0.0);
        // Objects in the object store do not make a node in use.
        let idle = &state.nodes["10.0.0.3"];
        assert!(!idle.in_use);
        assert_eq!(idle.available.get(resources::CPU), 2.0);
        assert_eq!(idle.available.get(resources::MEMORY), 2e9);
    }

    #[test]
    fn demands_are_bounded() {
        let status = json!({"result": true, "data": {"clusterStatus": {"loadMetricsReport": {
            "resourceDemand": [[{"CPU": 1.0}, 5000], [{"CPU": 2.0}, 10]],
            "pgDemand": [[{"bundles": [[{"CPU": 1.0}, 1]], "strategy": "PACK"}, 100000]],
        }}}});
        let state = scaling_state_from_cluster_status(&status).unwrap();
        assert_eq!(state.demands.len(), MAX_DEMANDS);
    }

    #[test]
    fn answers_that_are_no_cluster_status_are_errors() {
        for bad in [
            json!({"result": false, "msg": "Failed to get cluster status"}),
            json!({"result": true, "data": {}}),
            json!([1, 2]),
        ] {
            let err = scaling_state_from_cluster_status(&bad).unwrap_err();
            assert!(err.to_string().contains(CLUSTER_STATUS_PATH), "{err:#}");
        }
        // An empty report (no node yet) is an empty state.
        let empty = json!({"result": true, "data": {"clusterStatus": {"loadMetricsReport": {}}}});
        assert_eq!(
            scaling_state_from_cluster_status(&empty).unwrap(),
            ScalingState::new()
        );
    }

    #[tokio::test]
    async fn an_unreachable_dashboard_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let policy = RayScalingPolicy::new("127.0.0.1", port);
        assert_eq!(policy.name(), "ray");
        assert!(policy.scaling_state().await.is_err());
    }

    #[tokio::test]
    async fn the_policy_reads_the_dashboard() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = std::fs::read_to_string(format!(
            "{}/tests/fixtures/ray/one-node-pending.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /api/cluster_status "));
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let state = RayScalingPolicy::new("127.0.0.1", port)
            .scaling_state()
            .await
            .unwrap();
        assert_eq!(state.demands.len(), 5);
        assert!(state.nodes["192.0.2.2"].in_use);
    }
}
