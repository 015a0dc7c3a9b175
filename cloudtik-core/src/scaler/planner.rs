//! The pure planner: from a scaling config, a cluster snapshot and the current time to a
//! [`ScalingPlan`] (nodes to launch, nodes to terminate with a reason, nodes to update or
//! recover, infeasible and unfulfilled demands). No I/O; the controller loop applies the plan.
//!
//! # Rules, in the order they are applied
//!
//! **Terminations** (CloudTik's "enforce constraints"). The head is never terminated and
//! unmanaged nodes are ignored. Each worker, in this order:
//! 1. type not in the config: [`TerminationReason::TypeRemoved`];
//! 2. launch hash not current: [`TerminationReason::OutdatedLaunchHash`];
//! 3. status `update-failed`: [`TerminationReason::UpdateFailed`] (CloudTik terminates a node
//!    whose update failed; the min_workers/demand rules then replace it if needed).
//!
//! The other workers are ranked by recency: busy nodes (`idle_since` is `None`) first, then by
//! `idle_since`, most recent first, then by id. Per type, workers past the type's
//! `max_workers` in that ranking are terminated ([`TerminationReason::AboveTypeMax`]). The
//! first effective-min (see below) workers of each type in the ranking are protected, and
//! so is every worker that receives part of a persistent request when the requests are packed
//! (first fit, largest first) onto an idle copy of the head and the ranked workers. A worker
//! idle for at least `idle_timeout` that is not protected is terminated
//! ([`TerminationReason::Idle`]). If more workers remain than the global `max_workers`, the
//! excess goes ([`TerminationReason::AboveGlobalMax`]): unprotected before request-protected
//! before min-protected, least recently used first. Counts of existing nodes decide these
//! limits; launches in flight cannot be cancelled and are not counted here.
//!
//! **Launches** (CloudTik's ResourceDemandScheduler). Counts per type below are the workers kept
//! plus launches in flight.
//! 1. *min_workers*: each type is raised to its effective min, `min(min_workers, max_workers,
//!    global max_workers)`, within the global room; when the global room cannot hold every
//!    type's min, types with a higher `launch_priority` come first, then in type order.
//! 2. *requests*: the persistent requests are packed onto an idle copy of the cluster (the head
//!    at its type's full resources if the head type is configured, the workers kept, launches in
//!    flight and the min launches, all at full type resources); nodes are chosen for what does not
//!    fit (step 4's choice).
//! 3. *demands* are packed onto the available resources of running workers, then booting
//!    workers (`available: None`) and launches in flight at full type resources, then the nodes of
//!    steps 1-2 at full resources. Never onto the head.
//! 4. *choice of new nodes* for what is left: greedily, the type with the best score for what
//!    one empty node of it would hold by first fit of the remaining demands. GPU nodes are
//!    kept for GPU work: a GPU node is added only if it would hold a demand that needs a GPU,
//!    or one that no type without GPUs (and with `max_workers` above zero) could ever hold;
//!    other work may then share it. So CPU work waits for CPU nodes rather than spilling
//!    onto new GPU nodes when the CPU type is at its maximum. Among eligible types: a GPU type only
//!    scores well if it would hold GPU demands, then the number of the type's resource kinds the
//!    held demands use, then the lowest and the mean utilization of the type's resources
//!    (plain fractions; Ray weighs them by amount, which would let memory bytes dominate). Ties
//!    go to the type first in type order (below). Never above a type's or the global max. The
//!    upscaling cap plays no part here: it comes last (rule 7).
//! 5. *launch_priority*: only the types with the highest `launch_priority` among those with
//!    something to launch launch in this round; the others wait for a later round (by then the
//!    launches of this round are in flight and count as capacity).
//! 6. *final packing, top-up and minimality*: the requests and demands are finally packed onto
//!    the new nodes in type order (after the existing capacity as in steps 2-3), which can
//!    differ from the greedy order of step 4. What that leaves unplaced gets another round of
//!    step 4 (then rule 5 again). Step 4 only sees what is left, but one more node can also
//!    place more demands by taking work off the nodes of types after it in that order (a CPU
//!    node taking CPU work off a GPU node, which then holds a waiting GPU demand): while one
//!    more launch of a type within the limits and rule 5 (the priority of what launches) would
//!    place more demands (and no fewer requests) in that packing, the one that places the most
//!    is added (ties: type order); a GPU type only if it places more GPU work (rule 4). Then a
//!    launch is dropped while dropping it keeps every type at its effective min and places as
//!    many requests and as many demands. Adding and dropping alternate until neither changes
//!    anything (each addition places more demands, each drop saves a node). Top-up, adding and
//!    dropping make a round; a round that ends where it started is the last, and there are at
//!    most four; usually one.
//! 7. *upscaling cap*, per type: it limits speed, never choice (as in CloudTik and Ray). Rules
//!    1-6 plan without it; then each type launches `min(planned, max(allowed, protected))`,
//!    where `allowed = max(5, floor(upscaling_speed * max(running, 1))) - (in flight +
//!    booting)` and `protected` is the larger of the type's min launches (step 1) and its new
//!    nodes that hold requests in the final packing (its first ones; the nodes after them can
//!    go without moving a request). So min and request launches count against the cap but are
//!    never cut by it. What the cut nodes would hold stays unplaced (reported as unfulfilled)
//!    and waits for a later round, when this round's launches count as capacity; it is never
//!    re-planned onto another type that still has room, and a type cut to nothing still holds
//!    lower priorities back (rule 5). As first fit is not monotone, launches that then place
//!    nothing the others would not are dropped as in rule 6.
//!
//! So no single planned launch can be removed without breaking a min, a request or a demand's
//! placement, and with the cap and priorities out of the way no single extra launch within the
//! limits would place one more demand, except a GPU node that would place no more GPU work
//! (rule 4: the CPU work it would hold waits, even when GPU work that needs no GPU stays
//! unplaced because first fit would give that node's CPUs to larger CPU demands first). Both
//! by the packing described here; first fit is a heuristic, so a cleverer packing could sometimes do with fewer nodes. The cap
//! only cuts: a plan launches no type more often, and no more nodes in all, than the same
//! snapshot would with the cap out of the way.
//!
//! **Time**: `idle_since` and `now` are wall-clock times ([`SystemTime`]) because idle times
//! come from heartbeats of other machines.
//!
//! **Type order**, where types are packed or compared in turn: no plan depends on what the
//! types are called (`gpu.default`, `worker.a100`, ...), only on what they are. Types without
//! GPUs come first (so that in the final packing, work that needs no GPU fills the new CPU
//! nodes before the new GPU nodes, whose GPUs the GPU work needs), then larger nodes (the sum
//! of the type's amounts, each as a fraction of the largest amount of that resource in a type),
//! then by resources, `launch_priority`, `max_workers` and `min_workers`; the name decides only
//! between types that differ in nothing else.
//!
//! Demands and requests are grouped by identical shape and packed first-fit-decreasing: shapes
//! that need a GPU first (the scarce resource: they take the GPUs before other work takes the
//! CPUs next to them), then more resource kinds (as Ray), then the larger size, each amount as
//! a fraction of the largest amount of its resource in a type (Ray sums raw amounts, so memory
//! bytes outweigh CPUs and GPUs); nodes are grouped by identical free capacity. A demand is **infeasible** when it fits the full resources of no node type
//! whose `max_workers` is above zero; infeasible demands are reported and take part in nothing
//! else. A request is infeasible when it fits neither such a type nor the head. Demands that are
//! feasible but stay unplaced (limits, cap, priority) are reported as unfulfilled.
//!
//! **Updates**: kept workers with status `uninitialized` need an updater
//! ([`ScalingPlan::to_update`]); kept workers that are `up-to-date` but whose heartbeat the
//! snapshot marks lost need a recovery run of their start commands
//! ([`ScalingPlan::to_recover`]). The controller knows which updaters already run and filters.

mod builders;
mod packing;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::node::{NodeId, NodeKind, NodeStatus};
use crate::resources::Resources;

use packing::{BinGroup, Bins, Shapes, Space, TypeCap, fit_count, take};

/// One node type of the scaling config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeTypeConfig {
    /// Resources of one node of the type (memory in bytes; a zero amount is legal).
    pub resources: Resources,
    /// Workers of the type kept at least; clamped by `max_workers` and the global max.
    pub min_workers: usize,
    /// Workers of the type at most.
    pub max_workers: usize,
    /// Types with a higher priority launch first (see the module docs, rule 5).
    pub launch_priority: i32,
}

/// What the planner needs of a cluster's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScalingConfig {
    /// The node types by name.
    pub node_types: BTreeMap<String, NodeTypeConfig>,
    /// The head's node type; it may be absent from `node_types`, then the head holds nothing.
    pub head_node_type: String,
    /// Workers of all types at most (the head is not counted).
    pub max_workers: usize,
    /// Scales the per-type cap on demand-driven launches in flight.
    pub upscaling_speed: f64,
    /// How long a worker stays idle before it is terminated; zero turns idle termination off.
    pub idle_timeout: Duration,
}

/// A node of the cluster as the planner sees it ([`NodeSnapshot::worker`],
/// [`NodeSnapshot::head`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeSnapshot {
    /// The provider's id.
    pub id: NodeId,
    /// The internal IP, if known yet.
    pub ip: Option<String>,
    /// The node type name.
    pub node_type: String,
    /// Head, worker or unmanaged (unmanaged nodes are ignored).
    pub kind: NodeKind,
    /// The setup status.
    pub status: NodeStatus,
    /// Unused resources as last reported, or `None` while the node has not reported yet
    /// (booting): then it counts with its type's full resources.
    pub available: Option<Resources>,
    /// False when the node's launch-config hash differs from the current config's.
    pub launch_hash_current: bool,
    /// Since when the node is idle, or `None` when it is in use (or its use is unknown).
    pub idle_since: Option<SystemTime>,
    /// True when the node's heartbeat is lost (no heartbeat within the timeout).
    pub heartbeat_lost: bool,
}

impl NodeSnapshot {
    /// A worker of `node_type`, up to date, reporting `available`, in use, with a current
    /// launch hash and a live heartbeat.
    pub fn worker(id: impl Into<NodeId>, node_type: impl Into<String>, available: Option<Resources>) -> Self {
        NodeSnapshot {
            id: id.into(),
            ip: None,
            node_type: node_type.into(),
            kind: NodeKind::Worker,
            status: NodeStatus::UpToDate,
            available,
            launch_hash_current: true,
            idle_since: None,
            heartbeat_lost: false,
        }
    }

    /// The head, of `node_type`, up to date.
    pub fn head(id: impl Into<NodeId>, node_type: impl Into<String>) -> Self {
        NodeSnapshot {
            kind: NodeKind::Head,
            ..NodeSnapshot::worker(id, node_type, None)
        }
    }
}

/// The state of the cluster at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ClusterSnapshot {
    /// Every non-terminated node, the head included.
    pub nodes: Vec<NodeSnapshot>,
    /// Launches requested but not listed as nodes yet, per type.
    pub launching: BTreeMap<String, usize>,
    /// Resource demands: one bag per task or actor waiting.
    pub demands: Vec<Resources>,
    /// Persistent resource requests (the `scale` API): the cluster is kept at least this big.
    pub requests: Vec<Resources>,
}

/// Why a node is terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationReason {
    /// Idle longer than the idle timeout.
    Idle,
    /// Launched with a config whose launch hash is no longer current.
    OutdatedLaunchHash,
    /// Its node type is no longer in the config.
    TypeRemoved,
    /// More workers of its type than the type's `max_workers`.
    AboveTypeMax,
    /// More workers than the global `max_workers`.
    AboveGlobalMax,
    /// Its setup failed.
    UpdateFailed,
}

/// A node to terminate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Termination {
    /// The node's id.
    pub node_id: NodeId,
    /// The node's type.
    pub node_type: String,
    /// Why.
    pub reason: TerminationReason,
}

/// A distinct demand (or request) shape and how many demands have it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DemandShape {
    /// The resources of one demand.
    pub shape: Resources,
    /// How many demands have this shape.
    pub count: usize,
}

/// What to do in this pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScalingPlan {
    /// Nodes to launch per type; only types with a count above zero.
    pub to_launch: BTreeMap<String, usize>,
    /// Nodes to terminate, each with its reason.
    pub to_terminate: Vec<Termination>,
    /// Workers that need an updater (status `uninitialized`).
    pub to_update: Vec<NodeId>,
    /// Up-to-date workers whose heartbeat is lost: rerun their start commands.
    pub to_recover: Vec<NodeId>,
    /// Demands that fit no node type: never launched for.
    pub infeasible: Vec<DemandShape>,
    /// Requests that fit no node type nor the head.
    pub infeasible_requests: Vec<DemandShape>,
    /// Feasible demands left unplaced by this plan (limits, upscaling cap, launch priority).
    pub unfulfilled: Vec<DemandShape>,
}

impl ScalingPlan {
    /// Number of infeasible demands.
    pub fn infeasible_count(&self) -> usize {
        self.infeasible.iter().map(|d| d.count).sum()
    }

    /// Number of feasible demands left unplaced.
    pub fn unfulfilled_count(&self) -> usize {
        self.unfulfilled.iter().map(|d| d.count).sum()
    }

    /// Total number of nodes to launch.
    pub fn launch_count(&self) -> usize {
        self.to_launch.values().sum()
    }
}

/// The effective min of every type (config order): `min(min_workers, max_workers, global max)`.
pub fn effective_min(config: &ScalingConfig) -> BTreeMap<&str, usize> {
    config
        .node_types
        .iter()
        .map(|(n, t)| {
            (
                n.as_str(),
                t.min_workers.min(t.max_workers).min(config.max_workers),
            )
        })
        .collect()
}

/// Plans one pass of the autoscaler; see the module docs for the rules. Pure: no I/O, and the
/// same inputs always give the same plan.
pub fn plan(config: &ScalingConfig, snapshot: &ClusterSnapshot, now: SystemTime) -> ScalingPlan {
    Planner::new(config, snapshot).run(now)
}

/// Per-type facts of one pass, in type order (see [`type_order`]).
struct TypeInfo<'a> {
    name: &'a str,
    config: &'a NodeTypeConfig,
    cap: Box<[f64]>,
    eff_min: usize,
}

/// A worker that survives the type checks, with its protections.
struct Kept {
    node: usize,
    ty: usize,
    min_protected: bool,
    request_protected: bool,
}

/// Demands or requests after grouping: feasible shapes (sorted) and infeasible ones.
struct Sorted {
    shapes: Shapes,
    infeasible: Vec<DemandShape>,
}

struct Planner<'a> {
    config: &'a ScalingConfig,
    snapshot: &'a ClusterSnapshot,
    space: Space,
    /// The types in type order.
    types: Vec<TypeInfo<'a>>,
    /// Indices into `types`, in name order (to look types up by name).
    by_name: Vec<usize>,
    /// Each resource's largest amount in a node type (1 where none has it).
    scale: Vec<f64>,
    head_cap: Option<Box<[f64]>>,
}

/// The type order: the order in which the new nodes of each type are packed (rule 6), and the
/// tie-break of every choice between types. It depends on what the types are, never on what
/// they are called, unless two types differ in nothing but their names: types without GPUs
/// first (so work that does not need a GPU goes to them before new GPU nodes), then larger
/// nodes first (the sum of the type's amounts, each as a fraction of the resource's largest
/// amount in a type), then the larger resource vector (in resource name order), then the
/// higher `launch_priority`, the larger `max_workers` and `min_workers`, and last the name.
fn type_order(a: &TypeInfo, b: &TypeInfo, gpu: Option<usize>, scale: &[f64]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let size = |c: &[f64]| c.iter().zip(scale).map(|(x, s)| x / s).sum::<f64>();
    packing::is_gpu(&a.cap, gpu)
        .cmp(&packing::is_gpu(&b.cap, gpu))
        .then_with(|| size(&b.cap).total_cmp(&size(&a.cap)))
        .then_with(|| {
            a.cap
                .iter()
                .zip(&b.cap)
                .map(|(x, y)| y.total_cmp(x))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
        })
        .then(b.config.launch_priority.cmp(&a.config.launch_priority))
        .then(b.config.max_workers.cmp(&a.config.max_workers))
        .then(b.config.min_workers.cmp(&a.config.min_workers))
        .then(a.name.cmp(b.name))
}

impl<'a> Planner<'a> {
    fn new(config: &'a ScalingConfig, snapshot: &'a ClusterSnapshot) -> Self {
        let mut names: Vec<String> = Vec::new();
        for t in config.node_types.values() {
            names.extend(t.resources.iter().map(|(n, _)| n.to_string()));
        }
        // Names a node reports that its type lacks (rare) join the space too.
        let type_space = Space::new(names.clone());
        for n in &snapshot.nodes {
            if let Some(a) = &n.available {
                for (name, _) in a.iter() {
                    if type_space.find(name).is_none() && !names.iter().any(|k| k == name) {
                        names.push(name.to_string());
                    }
                }
            }
        }
        let space = Space::new(names);
        let eff = effective_min(config);
        let mut types: Vec<TypeInfo> = config
            .node_types
            .iter()
            .map(|(name, t)| TypeInfo {
                name,
                config: t,
                cap: space.vector(&t.resources),
                eff_min: eff[name.as_str()],
            })
            .collect();
        let scale = packing::scale(space.dim(), types.iter().map(|t| &t.cap[..]));
        types.sort_by(|a, b| type_order(a, b, space.gpu(), &scale));
        let mut by_name: Vec<usize> = (0..types.len()).collect();
        by_name.sort_by(|a, b| types[*a].name.cmp(types[*b].name));
        let head_cap = config
            .node_types
            .get(&config.head_node_type)
            .map(|t| space.vector(&t.resources));
        Planner {
            config,
            snapshot,
            space,
            types,
            by_name,
            scale,
            head_cap,
        }
    }

    fn type_of(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|t| self.types[*t].name.cmp(name))
            .ok()
            .map(|i| self.by_name[i])
    }

    /// Groups and sorts `demands`; shapes fitting no launchable type (nor `extra`, for
    /// requests: the head) are set apart as infeasible.
    fn sort(&self, demands: &[Resources], extra: Option<&[f64]>) -> Sorted {
        let grouped = packing::group(&self.space, demands);
        let mut infeasible: Vec<DemandShape> = grouped
            .unknown
            .into_iter()
            .map(|(shape, count)| DemandShape { shape, count })
            .collect();
        let mut shapes = Shapes::default();
        for (v, c) in grouped.shapes.vectors.into_iter().zip(grouped.shapes.counts) {
            let feasible = self
                .types
                .iter()
                .filter(|t| t.config.max_workers > 0)
                .map(|t| &t.cap[..])
                .chain(extra)
                .any(|cap| fit_count(cap, &v, 1) == 1);
            if feasible {
                shapes.vectors.push(v);
                shapes.counts.push(c);
            } else {
                infeasible.push(DemandShape {
                    shape: self.space.resources(&v),
                    count: c,
                });
            }
        }
        shapes.sort(self.space.gpu(), &self.scale);
        Sorted { shapes, infeasible }
    }

    /// Node groups for `launches[t]` new nodes of each type, in type order.
    fn new_bins(&self, launches: &[usize]) -> Vec<BinGroup> {
        self.types
            .iter()
            .zip(launches)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| BinGroup {
                free: t.cap.clone(),
                count: *n,
            })
            .collect()
    }

    /// How many of `residual` the new nodes `launches` hold.
    fn placed_on_new(&self, launches: &[usize], shapes: &Shapes, residual: &[usize]) -> usize {
        let mut groups = self.new_bins(launches);
        let mut counts = residual.to_vec();
        packing::pack(&mut groups, &shapes.vectors, &mut counts)
    }

    /// How many of `residual` the new nodes `launches` hold: in all, and of the shapes marked
    /// in `gpu_work`.
    fn placed_on_new_split(
        &self,
        launches: &[usize],
        shapes: &Shapes,
        residual: &[usize],
        gpu_work: &[bool],
    ) -> (usize, usize) {
        let mut groups = self.new_bins(launches);
        let mut counts = residual.to_vec();
        let all = packing::pack(&mut groups, &shapes.vectors, &mut counts);
        let gpu = (0..counts.len())
            .filter(|s| gpu_work[*s])
            .map(|s| residual[s] - counts[s])
            .sum();
        (all, gpu)
    }

    fn run(self, now: SystemTime) -> ScalingPlan {
        let nodes = &self.snapshot.nodes;
        let nt = self.types.len();
        let mut plan = ScalingPlan::default();
        let terminate = |plan: &mut ScalingPlan, i: usize, reason: TerminationReason| {
            plan.to_terminate.push(Termination {
                node_id: nodes[i].id.clone(),
                node_type: nodes[i].node_type.clone(),
                reason,
            });
        };

        // Terminations by type, launch hash and status.
        let mut heads = 0usize;
        let mut valid: Vec<(usize, usize)> = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            match n.kind {
                NodeKind::Head => heads += 1,
                NodeKind::Unmanaged => {}
                NodeKind::Worker => match self.type_of(&n.node_type) {
                    None => terminate(&mut plan, i, TerminationReason::TypeRemoved),
                    Some(_) if !n.launch_hash_current => {
                        terminate(&mut plan, i, TerminationReason::OutdatedLaunchHash)
                    }
                    Some(_) if n.status == NodeStatus::UpdateFailed => {
                        terminate(&mut plan, i, TerminationReason::UpdateFailed)
                    }
                    Some(t) => valid.push((i, t)),
                },
            }
        }
        // Recency: busy first, then most recently idle, then id.
        valid.sort_by(|a, b| {
            let (x, y) = (&nodes[a.0], &nodes[b.0]);
            (x.idle_since.is_some(), Reverse(x.idle_since), &x.id).cmp(&(
                y.idle_since.is_some(),
                Reverse(y.idle_since),
                &y.id,
            ))
        });
        let mut per_type = vec![0usize; nt];
        let mut kept: Vec<Kept> = Vec::with_capacity(valid.len());
        for (i, t) in valid {
            per_type[t] += 1;
            if per_type[t] > self.types[t].config.max_workers {
                terminate(&mut plan, i, TerminationReason::AboveTypeMax);
                continue;
            }
            kept.push(Kept {
                node: i,
                ty: t,
                min_protected: per_type[t] <= self.types[t].eff_min,
                request_protected: false,
            });
        }

        // Requests protect the workers they need on an idle copy of the cluster.
        let head_cap = if heads > 0 { self.head_cap.as_deref() } else { None };
        let requests = self.sort(&self.snapshot.requests, head_cap);
        {
            let mut counts = requests.shapes.counts.clone();
            let mut left: usize = counts.iter().sum();
            let mut free = vec![0.0; self.space.dim()];
            let mut fill = |cap: &[f64], counts: &mut [usize]| -> usize {
                free.copy_from_slice(cap);
                let mut placed = 0;
                for (v, c) in requests.shapes.vectors.iter().zip(counts.iter_mut()) {
                    let k = fit_count(&free, v, *c);
                    if k > 0 {
                        take(&mut free, v, k);
                        *c -= k;
                        placed += k;
                    }
                }
                placed
            };
            if let Some(cap) = head_cap {
                for _ in 0..heads {
                    left -= fill(cap, &mut counts);
                }
            }
            for k in kept.iter_mut() {
                if left == 0 {
                    break;
                }
                let placed = fill(&self.types[k.ty].cap, &mut counts);
                if placed > 0 {
                    left -= placed;
                    k.request_protected = true;
                }
            }
        }

        // Idle workers.
        if !self.config.idle_timeout.is_zero() {
            kept.retain(|k| {
                let n = &nodes[k.node];
                let idle = !k.min_protected
                    && !k.request_protected
                    && n.idle_since.is_some_and(|t| {
                        now.duration_since(t).unwrap_or(Duration::ZERO) >= self.config.idle_timeout
                    });
                if idle {
                    terminate(&mut plan, k.node, TerminationReason::Idle);
                }
                !idle
            });
        }

        // The global max: unprotected first, then request-protected, then min-protected, each
        // least recently used first.
        if kept.len() > self.config.max_workers {
            let excess = kept.len() - self.config.max_workers;
            let mut order: Vec<usize> = (0..kept.len()).collect();
            order.sort_by_key(|r| (kept[*r].min_protected, kept[*r].request_protected, Reverse(*r)));
            let mut gone = vec![false; kept.len()];
            for r in order.into_iter().take(excess) {
                gone[r] = true;
                terminate(&mut plan, kept[r].node, TerminationReason::AboveGlobalMax);
            }
            let mut r = 0;
            kept.retain(|_| {
                r += 1;
                !gone[r - 1]
            });
        }

        // Updates and recoveries, in snapshot order.
        let mut kept_nodes: Vec<usize> = kept.iter().map(|k| k.node).collect();
        kept_nodes.sort_unstable();
        for i in kept_nodes {
            let n = &nodes[i];
            if n.status == NodeStatus::Uninitialized {
                plan.to_update.push(n.id.clone());
            } else if n.status == NodeStatus::UpToDate && n.heartbeat_lost {
                plan.to_recover.push(n.id.clone());
            }
        }

        // Counts, rooms and what is in flight.
        let mut kept_of = vec![0usize; nt];
        let mut running_of = vec![0usize; nt];
        let mut booting_of = vec![0usize; nt];
        for k in &kept {
            kept_of[k.ty] += 1;
            if nodes[k.node].available.is_some() {
                running_of[k.ty] += 1;
            } else {
                booting_of[k.ty] += 1;
            }
        }
        let mut launching_of = vec![0usize; nt];
        let mut launching_total = 0usize;
        for (name, n) in &self.snapshot.launching {
            launching_total += n;
            if let Some(t) = self.type_of(name) {
                launching_of[t] += n;
            }
        }
        let count_of: Vec<usize> = (0..nt).map(|t| kept_of[t] + launching_of[t]).collect();
        let mut room: Vec<usize> = (0..nt)
            .map(|t| self.types[t].config.max_workers.saturating_sub(count_of[t]))
            .collect();
        let mut global_room = self
            .config
            .max_workers
            .saturating_sub(kept.len() + launching_total);

        // 1. min_workers, higher launch priority first when the global room is short.
        let mut by_priority: Vec<usize> = (0..nt).collect();
        by_priority.sort_by_key(|t| (Reverse(self.types[*t].config.launch_priority), *t));
        let mut min_launch = vec![0usize; nt];
        for t in by_priority {
            let n = self.types[t]
                .eff_min
                .saturating_sub(count_of[t])
                .min(room[t])
                .min(global_room);
            min_launch[t] = n;
            room[t] -= n;
            global_room -= n;
        }

        // 2. Persistent requests on an idle copy of the cluster.
        let mut idle_bins = Bins::default();
        if let Some(cap) = head_cap {
            idle_bins.add(cap, heads);
        }
        for k in &kept {
            idle_bins.add(&self.types[k.ty].cap, 1);
        }
        for (t, n) in launching_of.iter().enumerate() {
            idle_bins.add(&self.types[t].cap, *n);
        }
        let mut idle_groups = idle_bins.into_groups();
        let mut req_residual = requests.shapes.counts.clone();
        packing::pack(&mut idle_groups, &requests.shapes.vectors, &mut req_residual);
        let mut counts = req_residual.clone();
        packing::pack(
            &mut self.new_bins(&min_launch),
            &requests.shapes.vectors,
            &mut counts,
        );
        let req_launch = self.choose(&mut room, &mut global_room, &requests.shapes, &mut counts);

        // 3. Demands on running, booting and launching nodes, then on the new nodes so far.
        let demands = self.sort(&self.snapshot.demands, None);
        let mut bins = Bins::default();
        let mut full_vec = vec![0.0; self.space.dim()];
        for k in &kept {
            if let Some(a) = &nodes[k.node].available {
                self.space.load(a, &mut full_vec);
                bins.add(&full_vec, 1);
            }
        }
        for k in &kept {
            if nodes[k.node].available.is_none() {
                bins.add(&self.types[k.ty].cap, 1);
            }
        }
        for (t, n) in launching_of.iter().enumerate() {
            bins.add(&self.types[t].cap, *n);
        }
        let mut groups = bins.into_groups();
        let mut dem_residual = demands.shapes.counts.clone();
        packing::pack(&mut groups, &demands.shapes.vectors, &mut dem_residual);
        let so_far: Vec<usize> = (0..nt).map(|t| min_launch[t] + req_launch[t]).collect();
        let mut counts = dem_residual.clone();
        packing::pack(&mut self.new_bins(&so_far), &demands.shapes.vectors, &mut counts);
        // 4. New nodes for the rest, within the limits but not the cap (rule 7 comes last).
        let dem_launch = self.choose(&mut room, &mut global_room, &demands.shapes, &mut counts);
        let mut launches: Vec<usize> = (0..nt).map(|t| so_far[t] + dem_launch[t]).collect();

        // 5. Only the highest launch priority with something to launch.
        if self.keep_top_priority(&mut launches).is_none() {
            // Nothing to launch at all.
            return self.finish(plan, &launches, demands, requests, dem_residual);
        }

        // 6. The new nodes, in type order, are what requests and demands are finally packed
        // on. That packing can differ from the greedy one's: top up what it leaves unplaced
        // (chosen as in step 4, then filtered as in step 5), add single nodes that place more
        // and drop launches nothing needs, until stable.
        let global_base = kept.len() + launching_total;
        let dem_gpu_work =
            packing::gpu_work(&self.type_caps(&room), &demands.shapes.vectors, self.space.gpu());
        let mut req_placed = self.placed_on_new(&launches, &requests.shapes, &req_residual);
        let mut dem_placed = self.placed_on_new(&launches, &demands.shapes, &dem_residual);
        for _round in 0..4 {
            let start = launches.clone();
            for (shapes, residual) in [
                (&requests.shapes, &req_residual),
                (&demands.shapes, &dem_residual),
            ] {
                let mut counts = residual.clone();
                packing::pack(&mut self.new_bins(&launches), &shapes.vectors, &mut counts);
                if counts.iter().all(|c| *c == 0) {
                    continue;
                }
                let mut room: Vec<usize> = (0..nt)
                    .map(|t| {
                        let ty = &self.types[t];
                        ty.config.max_workers.saturating_sub(count_of[t] + launches[t])
                    })
                    .collect();
                let mut global = self
                    .config
                    .max_workers
                    .saturating_sub(global_base + launches.iter().sum::<usize>());
                let added = self.choose(&mut room, &mut global, shapes, &mut counts);
                for (l, a) in launches.iter_mut().zip(added) {
                    *l += a;
                }
            }
            // What the top-up chose for a lower priority waits, as in rule 5.
            self.keep_top_priority(&mut launches);
            if launches != start {
                req_placed = self.placed_on_new(&launches, &requests.shapes, &req_residual);
                dem_placed = self.placed_on_new(&launches, &demands.shapes, &dem_residual);
            }
            // Then, until neither changes anything: one more node, and drops. Each added node
            // places more demands and each drop saves a node placing no fewer, so this ends.
            loop {
                // One more node of a type can place more demands than step 4 sees in what is
                // left: in the final packing's type order it can take work off the nodes of
                // later types (a CPU node taking CPU work off a GPU node, which then holds a
                // waiting GPU demand). Add the one that places the most while one does.
                let mut grown = false;
                let (_, mut gpu_placed) =
                    self.placed_on_new_split(&launches, &demands.shapes, &dem_residual, &dem_gpu_work);
                while global_base + launches.iter().sum::<usize>() < self.config.max_workers {
                    let top = (0..nt)
                        .filter(|t| launches[*t] > 0)
                        .map(|t| self.types[t].config.launch_priority)
                        .max();
                    let mut best: Option<(usize, usize, usize)> = None;
                    for t in 0..nt {
                        let ty = &self.types[t];
                        if top.is_some_and(|p| ty.config.launch_priority != p)
                            || count_of[t] + launches[t] >= ty.config.max_workers
                        {
                            continue;
                        }
                        launches[t] += 1;
                        let (d, g) = self.placed_on_new_split(
                            &launches,
                            &demands.shapes,
                            &dem_residual,
                            &dem_gpu_work,
                        );
                        let r = self.placed_on_new(&launches, &requests.shapes, &req_residual);
                        launches[t] -= 1;
                        // Rule 4: a GPU node only for more GPU work.
                        let gpu_ok = !packing::is_gpu(&ty.cap, self.space.gpu()) || g > gpu_placed;
                        if d > dem_placed && r >= req_placed && gpu_ok && best.is_none_or(|(_, bd, _)| d > bd)
                        {
                            best = Some((t, d, g));
                        }
                    }
                    let Some((t, d, g)) = best else { break };
                    launches[t] += 1;
                    (dem_placed, gpu_placed) = (d, g);
                    req_placed = self.placed_on_new(&launches, &requests.shapes, &req_residual);
                    grown = true;
                }
                let dropped = self.drop_unneeded(
                    &mut launches,
                    &count_of,
                    (&requests.shapes, &req_residual),
                    (&demands.shapes, &dem_residual),
                    (&mut req_placed, &mut dem_placed),
                );
                if !grown && !dropped {
                    break;
                }
            }
            // A top-up that only added what was dropped again would repeat.
            if launches == start {
                break;
            }
        }

        // 7. The upscaling cap limits speed, never choice: each type launches at most its
        // allowance of what the plan so far (without the cap) launches of it; what the cut
        // nodes would hold waits for a later round instead of moving onto another type. The
        // type's min launches and its new nodes that hold requests count against the
        // allowance but are never cut (the first such nodes of the type in the final packing:
        // cutting only nodes after them leaves every request where it was).
        let req_nodes = self.nodes_used(&launches, &requests.shapes, &req_residual);
        let mut capped = launches.clone();
        for t in 0..nt {
            let scaled = (self.config.upscaling_speed * running_of[t].max(1) as f64).floor();
            let cap = 5usize.max(if scaled.is_finite() { scaled as usize } else { 0 });
            let allowed = cap.saturating_sub(launching_of[t] + booting_of[t]);
            capped[t] = launches[t].min(allowed.max(min_launch[t]).max(req_nodes[t]));
        }
        if capped != launches {
            // First fit is not monotone: with fewer nodes of one type, a node of another can
            // end up placing nothing that the others would not. Drop such launches.
            let mut req_placed = self.placed_on_new(&capped, &requests.shapes, &req_residual);
            let mut dem_placed = self.placed_on_new(&capped, &demands.shapes, &dem_residual);
            while self.drop_unneeded(
                &mut capped,
                &count_of,
                (&requests.shapes, &req_residual),
                (&demands.shapes, &dem_residual),
                (&mut req_placed, &mut dem_placed),
            ) {}
        }
        self.finish(plan, &capped, demands, requests, dem_residual)
    }

    /// Drops launches nothing needs: per type, one at a time while the type stays at its
    /// effective min and the new nodes still place as many requests and demands as `placed`
    /// (requests, demands; updated). `count_of` is each type's workers kept plus launches in
    /// flight. Returns true when something was dropped.
    fn drop_unneeded(
        &self,
        launches: &mut [usize],
        count_of: &[usize],
        (req_shapes, req_residual): (&Shapes, &[usize]),
        (dem_shapes, dem_residual): (&Shapes, &[usize]),
        (req_placed, dem_placed): (&mut usize, &mut usize),
    ) -> bool {
        let mut dropped = false;
        for t in 0..launches.len() {
            while launches[t] > 0 && count_of[t] + launches[t] > self.types[t].eff_min {
                launches[t] -= 1;
                let r = self.placed_on_new(launches, req_shapes, req_residual);
                let d = self.placed_on_new(launches, dem_shapes, dem_residual);
                if r >= *req_placed && d >= *dem_placed {
                    (*req_placed, *dem_placed) = (r, d);
                    dropped = true;
                } else {
                    launches[t] += 1;
                    break;
                }
            }
        }
        dropped
    }

    /// Per type, how many of the new nodes `launches` hold part of `residual` in the final
    /// packing (type order, as [`Planner::placed_on_new`]). First fit fills a type's identical
    /// empty nodes in order, so these are the type's first nodes, and any after them can go
    /// without moving anything: the least number of the type's nodes that place as many.
    fn nodes_used(&self, launches: &[usize], shapes: &Shapes, residual: &[usize]) -> Vec<usize> {
        let mut counts = residual.to_vec();
        let mut used = vec![0; launches.len()];
        // First fit over a list of node groups is first fit over each group in turn.
        let place = |t: usize, n: usize, counts: &mut [usize]| {
            let mut group = vec![BinGroup {
                free: self.types[t].cap.clone(),
                count: n,
            }];
            packing::pack(&mut group, &shapes.vectors, counts)
        };
        for (t, n) in launches.iter().enumerate() {
            if *n == 0 || counts.iter().all(|c| *c == 0) {
                continue;
            }
            let mut after = counts.clone();
            let all = place(t, *n, &mut after);
            if all == 0 {
                continue;
            }
            // Placed on the first m nodes grows with m up to `all`, reached at m = used.
            let (mut lo, mut hi) = (1, *n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if place(t, mid, &mut counts.clone()) == all {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            used[t] = lo;
            counts = after;
        }
        used
    }

    /// Rule 5: zeroes the launches of types below the highest priority that launches; returns
    /// that priority.
    fn keep_top_priority(&self, launches: &mut [usize]) -> Option<i32> {
        let top = (0..launches.len())
            .filter(|t| launches[*t] > 0)
            .map(|t| self.types[t].config.launch_priority)
            .max()?;
        for (t, n) in launches.iter_mut().enumerate() {
            if self.types[t].config.launch_priority < top {
                *n = 0;
            }
        }
        Some(top)
    }

    /// Fills in the launches, the unfulfilled and the infeasible demands.
    fn finish(
        &self,
        mut plan: ScalingPlan,
        launches: &[usize],
        demands: Sorted,
        requests: Sorted,
        dem_residual: Vec<usize>,
    ) -> ScalingPlan {
        // What stays unplaced.
        let mut counts = dem_residual;
        packing::pack(&mut self.new_bins(launches), &demands.shapes.vectors, &mut counts);
        plan.unfulfilled = demands
            .shapes
            .vectors
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c > 0)
            .map(|(v, c)| DemandShape {
                shape: self.space.resources(v),
                count: *c,
            })
            .collect();
        plan.infeasible = demands.infeasible;
        plan.infeasible_requests = requests.infeasible;
        plan.to_launch = self
            .types
            .iter()
            .zip(launches)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.name.to_string(), *n))
            .collect();
        plan
    }

    /// The node types as the greedy choice sees them, with the given rooms.
    fn type_caps(&self, room: &[usize]) -> Vec<TypeCap> {
        self.types
            .iter()
            .zip(room)
            .map(|(t, r)| TypeCap {
                cap: t.cap.clone(),
                room: *r,
                usable: t.config.max_workers > 0,
            })
            .collect()
    }

    /// Step 4: new nodes for `counts` (updated to what stays unplaced) within the rooms.
    fn choose(
        &self,
        room: &mut [usize],
        global_room: &mut usize,
        shapes: &Shapes,
        counts: &mut [usize],
    ) -> Vec<usize> {
        let mut caps = self.type_caps(room);
        let added = packing::choose(&mut caps, *global_room, &shapes.vectors, counts, self.space.gpu());
        for (r, a) in room.iter_mut().zip(&added) {
            *r -= a;
        }
        *global_room -= added.iter().sum::<usize>();
        added
    }
}

#[cfg(test)]
mod tests;
