//! The scenario JSON of `cloudtik debug plan SCENARIO.json`: a scaling config and a cluster
//! snapshot in one document, planned with [`plan`], answered with a
//! [`ScenarioResult`] (`{"to_launch": {"<type>": n}, "infeasible_count": k}`).
//!
//! ```
//! use cloudtik_core::scaler::Scenario;
//!
//! let scenario = Scenario::from_json(r#"{
//!     "node_types": {"worker.cpu": {"resources": {"CPU": 8, "memory": 34359738368},
//!                                   "min_workers": 0, "max_workers": 1000}},
//!     "head_node_type": "head.default", "max_workers": 20000, "upscaling_speed": 1.0,
//!     "nodes": [{"id": "n-1", "ip": "10.0.0.1", "node_type": "worker.cpu", "kind": "worker",
//!                "status": "up-to-date", "available": {"CPU": 2.0, "memory": 1073741824}}],
//!     "launching": {"worker.cpu": 1},
//!     "demands": [{"CPU": 1}, {"CPU": 1, "GPU": 1}],
//!     "requests": []
//! }"#).unwrap();
//! let result = scenario.plan();
//! assert_eq!(serde_json::to_string(&result).unwrap(), r#"{"to_launch":{},"infeasible_count":1}"#);
//! ```
//!
//! Beyond the issue's form, a few optional fields make every rule reachable from a scenario:
//! `launch_priority` of a node type (default 0), `idle_timeout_minutes` (default 0, off), and
//! per node `launch_hash_current` (default true), `idle_seconds` (idle for that long at the
//! scenario's instant; default: in use) and `heartbeat_lost` (default false). A node's
//! `status` defaults to `up-to-date` and `available` to `null` (booting). Unknown fields are
//! errors, so a misspelt field does not silently change the plan.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::planner::{ClusterSnapshot, NodeSnapshot, NodeTypeConfig, ScalingConfig, ScalingPlan, plan};
use crate::error::{Error, Result};
use crate::node::{NodeKind, NodeStatus};
use crate::resources::Resources;

/// A node type of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioNodeType {
    /// Resources of one node (memory in bytes).
    pub resources: Resources,
    /// Workers kept at least (default 0).
    #[serde(default)]
    pub min_workers: usize,
    /// Workers at most.
    pub max_workers: usize,
    /// Launch priority (default 0).
    #[serde(default)]
    pub launch_priority: i32,
}

/// A node of a scenario (the head included, with `"kind": "head"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioNode {
    /// The node's id.
    pub id: String,
    /// Its internal IP.
    #[serde(default)]
    pub ip: Option<String>,
    /// Its node type.
    pub node_type: String,
    /// `head`, `worker` or `unmanaged`.
    pub kind: NodeKind,
    /// Setup status (default `up-to-date`).
    #[serde(default = "up_to_date")]
    pub status: NodeStatus,
    /// Unused resources, or `null` while booting (counts with full type resources).
    #[serde(default)]
    pub available: Option<Resources>,
    /// False when the node was launched with an outdated config (default true).
    #[serde(default = "yes")]
    pub launch_hash_current: bool,
    /// Seconds the node has been idle at the scenario's instant; absent when in use.
    #[serde(default)]
    pub idle_seconds: Option<f64>,
    /// True when the node's heartbeat is lost (default false).
    #[serde(default)]
    pub heartbeat_lost: bool,
}

fn up_to_date() -> NodeStatus {
    NodeStatus::UpToDate
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// A scaling config and a cluster snapshot, as `cloudtik debug plan` reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Node types by name.
    pub node_types: BTreeMap<String, ScenarioNodeType>,
    /// The head's type; may be absent from `node_types` (then the head holds nothing).
    pub head_node_type: String,
    /// Global max workers.
    pub max_workers: usize,
    /// Upscaling speed (default 1.0).
    #[serde(default = "one")]
    pub upscaling_speed: f64,
    /// Idle timeout in minutes; 0 (the default) turns idle termination off.
    #[serde(default)]
    pub idle_timeout_minutes: f64,
    /// Every node, the head included.
    #[serde(default)]
    pub nodes: Vec<ScenarioNode>,
    /// Launches in flight per type.
    #[serde(default)]
    pub launching: BTreeMap<String, usize>,
    /// Resource demands.
    #[serde(default)]
    pub demands: Vec<Resources>,
    /// Persistent resource requests.
    #[serde(default)]
    pub requests: Vec<Resources>,
}

/// What `cloudtik debug plan` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScenarioResult {
    /// Nodes to launch per type (only types with a count above zero).
    pub to_launch: BTreeMap<String, usize>,
    /// Number of demands that fit no node type.
    pub infeasible_count: usize,
}

/// The instant a scenario is planned at (idle times are relative to it).
const SCENARIO_EPOCH_SECS: u64 = 2_000_000_000;

fn check_resources(path: &str, r: &Resources) -> Result<()> {
    for (name, amount) in r.iter() {
        if !amount.is_finite() || amount < 0.0 {
            return Err(Error::config(
                format!("{path}.{name}"),
                format!("expected a non-negative amount, found {amount}"),
            ));
        }
    }
    Ok(())
}

impl Scenario {
    /// Parses and checks a scenario. Errors are config errors that name the JSON path of the
    /// offending value (`nodes[2].kind`, `demands[0].CPU`, ...).
    pub fn from_json(text: &str) -> Result<Scenario> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Error::config(path, e.into_inner().to_string())
        })?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<()> {
        if !self.upscaling_speed.is_finite() || self.upscaling_speed < 0.0 {
            return Err(Error::config("upscaling_speed", "expected a non-negative number"));
        }
        if !self.idle_timeout_minutes.is_finite() || self.idle_timeout_minutes < 0.0 {
            return Err(Error::config(
                "idle_timeout_minutes",
                "expected a non-negative number",
            ));
        }
        for (name, t) in &self.node_types {
            check_resources(&format!("node_types.{name}.resources"), &t.resources)?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(a) = &n.available {
                check_resources(&format!("nodes[{i}].available"), a)?;
            }
            if n.idle_seconds.is_some_and(|s| !s.is_finite() || s < 0.0) {
                return Err(Error::config(
                    format!("nodes[{i}].idle_seconds"),
                    "expected a non-negative number",
                ));
            }
        }
        for (i, d) in self.demands.iter().enumerate() {
            check_resources(&format!("demands[{i}]"), d)?;
        }
        for (i, d) in self.requests.iter().enumerate() {
            check_resources(&format!("requests[{i}]"), d)?;
        }
        Ok(())
    }

    /// The instant the scenario is planned at.
    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(SCENARIO_EPOCH_SECS)
    }

    /// The scaling config of the scenario.
    pub fn scaling_config(&self) -> ScalingConfig {
        ScalingConfig {
            node_types: self
                .node_types
                .iter()
                .map(|(name, t)| {
                    (
                        name.clone(),
                        NodeTypeConfig {
                            resources: t.resources.clone(),
                            min_workers: t.min_workers,
                            max_workers: t.max_workers,
                            launch_priority: t.launch_priority,
                        },
                    )
                })
                .collect(),
            head_node_type: self.head_node_type.clone(),
            max_workers: self.max_workers,
            upscaling_speed: self.upscaling_speed,
            idle_timeout: Duration::from_secs_f64(self.idle_timeout_minutes * 60.0),
        }
    }

    /// The cluster snapshot of the scenario.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let now = self.now();
        ClusterSnapshot {
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeSnapshot {
                    id: n.id.clone(),
                    ip: n.ip.clone(),
                    node_type: n.node_type.clone(),
                    kind: n.kind,
                    status: n.status,
                    available: n.available.clone(),
                    launch_hash_current: n.launch_hash_current,
                    idle_since: n.idle_seconds.map(|s| now - Duration::from_secs_f64(s)),
                    heartbeat_lost: n.heartbeat_lost,
                })
                .collect(),
            launching: self.launching.clone(),
            demands: self.demands.clone(),
            requests: self.requests.clone(),
        }
    }

    /// The full plan of the scenario.
    pub fn scaling_plan(&self) -> ScalingPlan {
        plan(&self.scaling_config(), &self.snapshot(), self.now())
    }

    /// What `cloudtik debug plan` prints for the scenario.
    pub fn plan(&self) -> ScenarioResult {
        let p = self.scaling_plan();
        ScenarioResult {
            infeasible_count: p.infeasible_count(),
            to_launch: p.to_launch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn scenario_file(name: &str) -> String {
        let path = format!("{}/../examples/scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e:#}"))
    }

    fn expect(name: &str, to_launch: &[(&str, usize)], infeasible_count: usize) {
        let s = Scenario::from_json(&scenario_file(name)).unwrap();
        let got = s.plan();
        let want = ScenarioResult {
            to_launch: to_launch.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            infeasible_count,
        };
        assert_eq!(got, want, "{name}");
    }

    #[test]
    fn cpu_scale_up() {
        // 30 demands {CPU 1, 1 GiB} (two kinds: packed first) and one {CPU 4}. Existing capacity
        // in order: n-1 has 2 CPUs free, n-2 none, n-3 is booting (8), one launch in flight (8):
        // 18 small demands placed, 12 left, and the {CPU 4} finds no room. The head holds no
        // demand. New 8-CPU nodes: the first takes 8 small ones, the second the last 4 and the
        // {CPU 4}: 2 nodes. Cap: max(5, 1.0 * 2 running) - (1 launching + 1 booting) = 3 >= 2.
        expect("cpu-scale-up.json", &[("worker.cpu", 2)], 0);
    }

    #[test]
    fn gpu_mix_with_infeasible() {
        // 3 x {CPU 2, GPU 1}, 30 x {CPU 1}, 2 x {GPU 4} (more GPUs than any type) and {TPU 1}
        // (no type has TPUs): 3 infeasible. Round 1: a gpu node (8 CPU, 2 GPU) would hold 2 GPU
        // demands + 4 CPU demands (uses CPU and GPU: 2 matching kinds) against a cpu node's 8 CPU
        // demands (1 kind): gpu. Round 2: gpu again (1 GPU demand + 6 CPU demands). Then only
        // CPU demands (20) are left: a GPU type holding no GPU work scores below the cpu type:
        // ceil(20 / 8) = 3 cpu nodes. Caps: 5 per type (nothing running).
        expect("gpu-mix.json", &[("worker.cpu", 3), ("worker.gpu", 2)], 3);
    }

    #[test]
    fn min_workers_and_requests() {
        // worker.cpu has min 2 and one running worker: 1 min launch. Requests, on an idle copy:
        // {CPU 1, 64 GiB} fits neither the head (16 GiB) nor an 8-CPU/32 GiB worker, and the five
        // {CPU 4}: head 1, w-1 2, the min launch 2: all placed. The big-memory request needs a
        // worker.mem (128 GiB): 1 launch. The head type's max_workers is 0: never launched.
        expect(
            "min-and-requests.json",
            &[("worker.cpu", 1), ("worker.mem", 1)],
            0,
        );
    }

    #[test]
    fn upscaling_cap() {
        // 100 x {CPU 1}; 4 running workers are full, 2 launches in flight hold 8: 92 left, 23
        // four-CPU nodes wanted. Cap: max(5, floor(2.0 * 4 running)) - 2 in flight = 6.
        expect("upscaling-cap.json", &[("worker.cpu", 6)], 0);
    }

    #[test]
    fn upscaling_cap_limits_speed_never_choice() {
        // The shape of issue 11: 57 running 4-CPU nodes (full but every sixth, 1 CPU free),
        // 30 running 16-CPU nodes (2 CPUs free each) and one launching, 9 GPU nodes (3 CPUs
        // free, GPUs in use); 880 x {CPU 1}, 64 x {CPU 1, 2 GiB}, 40 x {CPU 2, 4 GiB}, 7 x
        // {CPU 1, GPU 1}. Without the cap: 53 cpu16, 4 cpu4 and 7 gpu nodes. The cap cuts
        // cpu16 to max(5, 30 running) - 1 launching = 29; cpu4 (allowance 57) and gpu (9)
        // launch what they would have anyway. Their spare allowance used to take the cut
        // cpu16 work: 57 cpu4 nodes.
        let name = "upscaling-cap-mixed.json";
        expect(
            name,
            &[("worker.cpu16", 29), ("worker.cpu4", 4), ("worker.gpu", 7)],
            0,
        );
        let mut s = Scenario::from_json(&scenario_file(name)).unwrap();
        let capped = s.scaling_plan();
        s.upscaling_speed = 1e9;
        let uncapped = s.scaling_plan();
        assert_eq!(
            uncapped.to_launch,
            BTreeMap::from([
                ("worker.cpu16".to_string(), 53),
                ("worker.cpu4".to_string(), 4),
                ("worker.gpu".to_string(), 7)
            ])
        );
        for (t, n) in &capped.to_launch {
            assert!(
                *n <= uncapped.to_launch[t],
                "{t}: {n} > {}",
                uncapped.to_launch[t]
            );
        }
        // The cut work waits: 24 cpu16 nodes' worth of demands.
        assert_eq!(uncapped.unfulfilled_count(), 0);
        assert!(capped.unfulfilled_count() > 0);
    }

    /// The scenario text with node type names replaced, all at once (`from` to `to`).
    fn renamed(text: &str, renames: &[(&str, &str)]) -> String {
        let mut out = text.to_string();
        for (i, (from, _)) in renames.iter().enumerate() {
            out = out.replace(&format!("\"{from}\""), &format!("\"@{i}@\""));
        }
        for (i, (_, to)) in renames.iter().enumerate() {
            out = out.replace(&format!("\"@{i}@\""), &format!("\"{to}\""));
        }
        out
    }

    #[test]
    fn the_plan_does_not_depend_on_type_names() {
        // The mixed scenario once planned 12 GPU nodes for its 7 GPU demands when the GPU
        // type's name sorted first: the final packing tried the new GPU nodes first, and
        // memory-heavy CPU shapes (raw bytes made them look largest) took their CPUs before
        // the GPU demands came. Whatever the types are called, the plan is the same.
        let name = "upscaling-cap-mixed.json";
        let text = scenario_file(name);
        let renamings: [&[(&str, &str)]; 4] = [
            &[("worker.gpu", "a.gpu")],
            &[("worker.gpu", "gpu.default"), ("head.default", "zz.head")],
            &[("worker.cpu16", "worker.cpu4"), ("worker.cpu4", "worker.cpu16")],
            &[
                ("worker.gpu", "head.default"),
                ("head.default", "worker.cpu16"),
                ("worker.cpu16", "worker.gpu"),
            ],
        ];
        for renames in renamings {
            let back = |t: &str| {
                renames
                    .iter()
                    .find(|(_, to)| *to == t)
                    .map_or(t.to_string(), |(from, _)| from.to_string())
            };
            let mut s = Scenario::from_json(&renamed(&text, renames)).unwrap();
            for (speed, want) in [(1.0, [29, 4, 7]), (1e9, [53, 4, 7])] {
                s.upscaling_speed = speed;
                let p = s.scaling_plan();
                let got: BTreeMap<String, usize> = p.to_launch.iter().map(|(t, n)| (back(t), *n)).collect();
                let want: BTreeMap<String, usize> = ["worker.cpu16", "worker.cpu4", "worker.gpu"]
                    .iter()
                    .zip(want)
                    .map(|(t, n)| (t.to_string(), n))
                    .collect();
                assert_eq!(got, want, "{renames:?}, upscaling_speed {speed}");
                assert_eq!(p.infeasible_count(), 0);
            }
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let s = Scenario::from_json(
            r#"{"node_types": {"worker.cpu": {"resources": {"CPU": 8, "memory": 34359738368}, "min_workers": 0, "max_workers": 1000}},
             "head_node_type": "head.default", "max_workers": 20000, "upscaling_speed": 1.0,
             "nodes": [{"id": "n-1", "ip": "10.0.0.1", "node_type": "worker.cpu", "kind": "worker", "status": "up-to-date",
                        "available": {"CPU": 2.0, "memory": 1073741824}}],
             "launching": {"worker.cpu": 3},
             "demands": [{"CPU": 1}, {"CPU": 1, "GPU": 1}],
             "requests": [{"CPU": 1}]}"#,
        )
        .unwrap();
        // The CPU demand fits n-1; the GPU demand fits no type. The request fits an idle n-1.
        assert_eq!(
            s.plan(),
            ScenarioResult {
                to_launch: BTreeMap::new(),
                infeasible_count: 1
            }
        );
        assert_eq!(
            serde_json::to_string(&s.plan()).unwrap(),
            r#"{"to_launch":{},"infeasible_count":1}"#
        );
    }

    #[test]
    fn errors_name_the_json_path() {
        let base = |nodes: &str, demands: &str| {
            format!(
                r#"{{"node_types": {{"w": {{"resources": {{"CPU": 8}}, "max_workers": 10}}}},
                    "head_node_type": "h", "max_workers": 10, "nodes": {nodes}, "demands": {demands}}}"#
            )
        };
        let e = Scenario::from_json(&base(
            r#"[{"id": "a", "node_type": "w", "kind": "worker"}, {"id": "b", "node_type": "w", "kind": "boss"}]"#,
            "[]",
        ))
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert_eq!(e.location().unwrap().path, "nodes[1].kind");
        let e = Scenario::from_json(&base("[]", r#"[{"CPU": 1}, {"CPU": -2}]"#)).unwrap_err();
        assert_eq!(e.location().unwrap().path, "demands[1].CPU");
        let e = Scenario::from_json(&base(
            r#"[{"id": "a", "node_type": "w", "kind": "worker", "avail": null}]"#,
            "[]",
        ))
        .unwrap_err();
        assert_eq!(e.location().unwrap().path, "nodes[0].avail");
        assert!(e.to_string().contains("avail"), "{e:#}");
        let e = Scenario::from_json(r#"{"node_types": {}}"#).unwrap_err();
        assert!(e.to_string().contains("head_node_type"), "{e:#}");
        let e = Scenario::from_json("not json").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    }
}
