//! Unit tests of every planner rule, and property tests on random snapshots.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn res(pairs: &[(&str, f64)]) -> Resources {
    Resources::from_pairs(pairs.iter().copied())
}

fn cpu(n: f64) -> Resources {
    res(&[("CPU", n)])
}

fn ty(resources: Resources, min_workers: usize, max_workers: usize) -> NodeTypeConfig {
    NodeTypeConfig {
        resources,
        min_workers,
        max_workers,
        launch_priority: 0,
    }
}

fn config(types: Vec<(&str, NodeTypeConfig)>) -> ScalingConfig {
    ScalingConfig {
        node_types: types.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
        head_node_type: "head".into(),
        max_workers: 1000,
        upscaling_speed: 1000.0,
        idle_timeout: Duration::ZERO,
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
}

fn launches(p: &ScalingPlan) -> Vec<(&str, usize)> {
    p.to_launch.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

fn terminated(p: &ScalingPlan) -> Vec<(&str, TerminationReason)> {
    p.to_terminate
        .iter()
        .map(|t| (t.node_id.as_str(), t.reason))
        .collect()
}

fn snapshot(nodes: Vec<NodeSnapshot>, demands: Vec<Resources>) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes,
        demands,
        ..ClusterSnapshot::default()
    }
}

fn idle(mut n: NodeSnapshot, minutes: u64) -> NodeSnapshot {
    n.idle_since = Some(now() - Duration::from_secs(minutes * 60));
    n
}

fn cpu_config() -> ScalingConfig {
    config(vec![(
        "cpu",
        ty(res(&[("CPU", 8.0), ("memory", 32.0 * GIB)]), 0, 100),
    )])
}

#[test]
fn demands_go_to_running_nodes_first() {
    let c = cpu_config();
    let s = snapshot(
        vec![NodeSnapshot::worker("w1", "cpu", Some(cpu(3.0)))],
        vec![cpu(1.0), cpu(1.0), cpu(1.0)],
    );
    let p = plan(&c, &s, now());
    assert!(p.to_launch.is_empty());
    assert_eq!(p.unfulfilled_count(), 0);
    // One more demand than fits: one node.
    let s = snapshot(s.nodes, vec![cpu(1.0); 4]);
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 1)]);
}

#[test]
fn booting_nodes_and_launches_in_flight_count_with_full_resources() {
    let c = cpu_config();
    let mut s = snapshot(vec![NodeSnapshot::worker("w1", "cpu", None)], vec![cpu(1.0); 16]);
    s.launching.insert("cpu".into(), 1);
    let p = plan(&c, &s, now());
    assert!(p.to_launch.is_empty(), "{p:?}");
    s.demands.push(cpu(1.0));
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 1)]);
}

#[test]
fn new_nodes_are_packed_first_fit_decreasing() {
    let c = cpu_config();
    // 3 x 5 CPUs and 3 x 3 CPUs: pairs of (5, 3) fill three 8-CPU nodes exactly.
    let mut d = vec![cpu(3.0); 3];
    d.extend(vec![cpu(5.0); 3]);
    assert_eq!(launches(&plan(&c, &snapshot(vec![], d), now())), vec![("cpu", 3)]);
}

#[test]
fn the_head_holds_no_demand_and_is_never_terminated() {
    let mut c = config(vec![("head", ty(cpu(64.0), 0, 0)), ("cpu", ty(cpu(8.0), 0, 10))]);
    c.idle_timeout = Duration::from_secs(60);
    let mut head = idle(NodeSnapshot::head("h", "head"), 600);
    head.available = Some(cpu(64.0));
    head.launch_hash_current = false;
    let s = snapshot(vec![head], vec![cpu(1.0)]);
    let p = plan(&c, &s, now());
    assert_eq!(launches(&p), vec![("cpu", 1)]);
    assert!(p.to_terminate.is_empty());
}

#[test]
fn gpu_types_are_kept_for_gpu_work() {
    let c = config(vec![
        ("cpu", ty(cpu(8.0), 0, 10)),
        ("gpu", ty(res(&[("CPU", 8.0), ("GPU", 1.0)]), 0, 10)),
    ]);
    let p = plan(&c, &snapshot(vec![], vec![cpu(1.0); 8]), now());
    assert_eq!(launches(&p), vec![("cpu", 1)]);
    let p = plan(
        &c,
        &snapshot(vec![], vec![res(&[("CPU", 1.0), ("GPU", 1.0)])]),
        now(),
    );
    assert_eq!(launches(&p), vec![("gpu", 1)]);
    // A CPU demand only a GPU type can hold still gets one.
    let p = plan(&c, &snapshot(vec![], vec![cpu(1.0); 8]), now());
    assert_eq!(launches(&p), vec![("cpu", 1)]);
    let c = config(vec![
        ("cpu", ty(cpu(4.0), 0, 10)),
        ("gpu", ty(res(&[("CPU", 8.0), ("GPU", 1.0)]), 0, 10)),
    ]);
    let p = plan(&c, &snapshot(vec![], vec![cpu(6.0)]), now());
    assert_eq!(launches(&p), vec![("gpu", 1)]);
    // The CPU type at its maximum: CPU work waits instead of spilling onto new GPU nodes.
    let c = config(vec![
        ("cpu", ty(cpu(8.0), 0, 1)),
        ("gpu", ty(res(&[("CPU", 8.0), ("GPU", 1.0)]), 0, 10)),
    ]);
    let p = plan(&c, &snapshot(vec![], vec![cpu(8.0); 3]), now());
    assert_eq!(launches(&p), vec![("cpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 2);
    // ...but a GPU node added for GPU work takes CPU work alongside.
    let p = plan(
        &c,
        &snapshot(vec![], vec![cpu(8.0), cpu(8.0), res(&[("GPU", 1.0)])]),
        now(),
    );
    assert_eq!(launches(&p), vec![("cpu", 1), ("gpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 0);
    // GPU work is packed first, so larger CPU work cannot take the CPUs of the GPU node the
    // GPU demand needs (it did when shapes were sorted by raw sums: then the GPU node would
    // have held only CPU work and the GPU demand waited too). The CPU work beyond the CPU
    // type's maximum waits.
    let c = config(vec![
        ("cpu", ty(res(&[("CPU", 8.0), ("memory", 32.0)]), 0, 1)),
        (
            "gpu",
            ty(res(&[("CPU", 8.0), ("GPU", 1.0), ("memory", 32.0)]), 0, 10),
        ),
    ]);
    let mut d = vec![res(&[("CPU", 8.0), ("memory", 1.0)]); 3];
    d.push(res(&[("CPU", 1.0), ("GPU", 1.0)]));
    let p = plan(&c, &snapshot(vec![], d), now());
    assert_eq!(launches(&p), vec![("cpu", 1), ("gpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 2);
}

#[test]
fn gpu_nodes_are_planned_for_gpu_work_whatever_the_types_are_called() {
    // Memory-heavy CPU work and 7 GPU demands. With the GPU type first by name, the final
    // packing used to put the CPU work (raw bytes made it look largest) onto the new GPU
    // nodes first and then topped up GPU nodes for the GPU demands left over.
    let gpu = res(&[("CPU", 8.0), ("GPU", 1.0), ("memory", 32.0 * GIB)]);
    let big = res(&[("CPU", 16.0), ("memory", 64.0 * GIB)]);
    let small = res(&[("CPU", 4.0), ("memory", 16.0 * GIB)]);
    let mut d = vec![res(&[("CPU", 2.0), ("memory", 4.0 * GIB)]); 40];
    d.extend(vec![res(&[("CPU", 1.0), ("memory", 2.0 * GIB)]); 64]);
    d.extend(vec![res(&[("CPU", 1.0), ("GPU", 1.0)]); 7]);
    d.extend(vec![cpu(1.0); 100]);
    let mut plans = Vec::new();
    for [g, b, s] in [
        ["worker.gpu", "worker.cpu16", "worker.cpu4"],
        ["a.gpu", "worker.cpu16", "worker.cpu4"],
        ["gpu.default", "b", "a"],
        ["0", "z.big", "m.small"],
    ] {
        let c = config(vec![
            (g, ty(gpu.clone(), 0, 50)),
            (b, ty(big.clone(), 0, 400)),
            (s, ty(small.clone(), 0, 400)),
        ]);
        let p = plan(&c, &snapshot(vec![], d.clone()), now());
        assert_eq!(p.to_launch[g], 7, "{g}: {p:?}");
        assert_eq!(p.unfulfilled_count(), 0);
        plans.push([g, b, s].map(|t| p.to_launch.get(t).copied().unwrap_or(0)));
    }
    assert!(plans.iter().all(|p| *p == plans[0]), "{plans:?}");
}

#[test]
fn one_more_node_is_added_when_it_takes_work_off_a_later_type() {
    let c = config(vec![
        ("a.cpu", ty(res(&[("CPU", 4.0), ("memory", 8.0)]), 0, 1)),
        (
            "c.gpu",
            ty(res(&[("CPU", 8.0), ("GPU", 1.0), ("memory", 32.0)]), 0, 1),
        ),
    ]);
    let mut d = vec![res(&[("CPU", 2.0), ("memory", 4.0)]); 4];
    d.push(res(&[("CPU", 1.0), ("GPU", 1.0)]));
    let s = ClusterSnapshot {
        demands: d,
        requests: vec![res(&[("CPU", 2.0), ("GPU", 1.0)])],
        ..ClusterSnapshot::default()
    };
    // The request launches a GPU node; the CPU work fills its CPUs, and what is left (the GPU
    // demand) fits no type with room. But an a.cpu node, first in the final packing's type
    // order, takes two of the CPU demands off the GPU node, which then holds the GPU demand.
    let p = plan(&c, &s, now());
    assert_eq!(launches(&p), vec![("a.cpu", 1), ("c.gpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 0);
}

#[test]
fn a_top_up_node_that_places_nothing_does_not_keep_out_one_that_would() {
    let mut c = config(vec![
        ("a.cpu", ty(res(&[("CPU", 4.0), ("memory", 8.0)]), 0, 2)),
        ("b.big", ty(res(&[("CPU", 16.0), ("memory", 64.0)]), 2, 3)),
        (
            "c.gpu",
            ty(res(&[("CPU", 8.0), ("GPU", 2.0), ("memory", 32.0)]), 0, 1),
        ),
        ("d.tiny", ty(res(&[("CPU", 1.5), ("memory", 0.0)]), 0, 3)),
    ]);
    c.max_workers = 8;
    let mut d = vec![res(&[("CPU", 2.0), ("memory", 4.0)]); 8];
    d.extend(vec![cpu(1.0); 3]);
    d.extend(vec![cpu(0.5); 5]);
    d.extend(vec![res(&[("CPU", 1.0), ("GPU", 1.0)]); 2]);
    d.extend(vec![cpu(3.0); 6]);
    d.push(res(&[("CPU", 12.0), ("memory", 32.0)]));
    // The top-up kept choosing a second a.cpu node for a CPU3 demand left over, which filled
    // the global max, placed nothing more in the final packing and was dropped again, round
    // after round; the third b.big node that places everything was never tried.
    let p = plan(&c, &snapshot(vec![], d), now());
    assert_eq!(launches(&p), vec![("b.big", 3), ("c.gpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 0);
}

#[test]
fn the_type_using_more_of_the_demand_kinds_and_better_utilized_wins() {
    let c = config(vec![
        ("big", ty(res(&[("CPU", 16.0), ("memory", 64.0 * GIB)]), 0, 10)),
        ("small", ty(res(&[("CPU", 4.0), ("memory", 16.0 * GIB)]), 0, 10)),
    ]);
    // 4 CPUs and 16 GiB: the small type is fully used, the big one a quarter.
    let d = vec![res(&[("CPU", 1.0), ("memory", 4.0 * GIB)]); 4];
    assert_eq!(
        launches(&plan(&c, &snapshot(vec![], d), now())),
        vec![("small", 1)]
    );
    // 16 such demands: one big node is fully used and beats four small ones round by round.
    let d = vec![res(&[("CPU", 1.0), ("memory", 4.0 * GIB)]); 16];
    assert_eq!(launches(&plan(&c, &snapshot(vec![], d), now())), vec![("big", 1)]);
}

#[test]
fn type_and_global_max_bound_demand_launches() {
    let mut c = config(vec![("a", ty(cpu(1.0), 0, 3)), ("b", ty(cpu(1.0), 0, 10))]);
    c.max_workers = 5;
    let s = snapshot(
        vec![NodeSnapshot::worker("w1", "a", Some(Resources::new()))],
        vec![cpu(1.0); 20],
    );
    let p = plan(&c, &s, now());
    assert_eq!(p.launch_count(), 4);
    assert!(p.to_launch.get("a").copied().unwrap_or(0) <= 2);
    assert_eq!(p.unfulfilled_count(), 16);
    assert_eq!(
        p.unfulfilled,
        vec![DemandShape {
            shape: cpu(1.0),
            count: 16
        }]
    );
}

#[test]
fn min_workers_are_clamped_by_type_and_global_max() {
    let mut c = config(vec![("a", ty(cpu(1.0), 5, 3)), ("b", ty(cpu(1.0), 4, 10))]);
    c.max_workers = 6;
    let p = plan(&c, &ClusterSnapshot::default(), now());
    // a: min(5, 3) = 3; b: 4. The types differ only in max_workers: b, with the larger,
    // comes first in type order and gets its 4; the global room leaves a 2.
    assert_eq!(launches(&p), vec![("a", 2), ("b", 4)]);
    // A higher priority type gets its min first when the global room is short.
    c.node_types.get_mut("b").unwrap().launch_priority = 1;
    let p = plan(&c, &ClusterSnapshot::default(), now());
    // Only the top priority launches in a round.
    assert_eq!(launches(&p), vec![("b", 4)]);
}

#[test]
fn min_workers_and_requests_bypass_the_upscaling_cap() {
    let mut c = config(vec![("cpu", ty(cpu(1.0), 12, 100))]);
    c.upscaling_speed = 1.0;
    let p = plan(&c, &ClusterSnapshot::default(), now());
    assert_eq!(launches(&p), vec![("cpu", 12)]);
    c.node_types.get_mut("cpu").unwrap().min_workers = 0;
    let s = ClusterSnapshot {
        requests: vec![cpu(1.0); 9],
        ..ClusterSnapshot::default()
    };
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 9)]);
    // Demands as well: the 9 request nodes count against the cap of 5, so no more launch.
    let s = ClusterSnapshot {
        demands: vec![cpu(1.0); 50],
        ..s
    };
    let p = plan(&c, &s, now());
    assert_eq!(launches(&p), vec![("cpu", 9)]);
    assert_eq!(p.unfulfilled_count(), 41);
}

#[test]
fn the_upscaling_cap_limits_demand_launches_per_type() {
    let mut c = config(vec![("cpu", ty(cpu(1.0), 0, 1000))]);
    c.upscaling_speed = 1.0;
    // Nothing running: max(5, 1.0 * 1) = 5.
    assert_eq!(
        launches(&plan(&c, &snapshot(vec![], vec![cpu(1.0); 50]), now())),
        vec![("cpu", 5)]
    );
    // 10 running (full), 2 booting, 3 launching: max(5, 10) - 5 = 5.
    let mut nodes: Vec<NodeSnapshot> = (0..10)
        .map(|i| NodeSnapshot::worker(format!("r{i}"), "cpu", Some(Resources::new())))
        .collect();
    nodes.push(NodeSnapshot::worker("b1", "cpu", None));
    nodes.push(NodeSnapshot::worker("b2", "cpu", None));
    let mut s = snapshot(nodes, vec![cpu(1.0); 50]);
    s.launching.insert("cpu".into(), 3);
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 5)]);
    c.upscaling_speed = 2.5;
    // max(5, 25) - 5 = 20.
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 20)]);
    // Min launches count against the cap but are not cut: min 8 with 12 counted -> none.
    c.upscaling_speed = 1.0;
    c.node_types.get_mut("cpu").unwrap().min_workers = 20;
    // 15 counted, min 20: 5 min launches; cap 10 - 5 in flight = 5, all used by min.
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 5)]);
}

#[test]
fn capped_cpu_work_waits_instead_of_spilling_onto_gpu_nodes() {
    let mut c = config(vec![
        ("cpu", ty(cpu(8.0), 0, 100)),
        ("gpu", ty(res(&[("CPU", 8.0), ("GPU", 1.0)]), 0, 100)),
    ]);
    c.upscaling_speed = 1.0;
    let p = plan(&c, &snapshot(vec![], vec![cpu(8.0); 100]), now());
    assert_eq!(launches(&p), vec![("cpu", 5)]);
    assert_eq!(p.unfulfilled_count(), 95);
}

#[test]
fn capped_work_waits_instead_of_moving_onto_a_type_with_room() {
    let mut c = config(vec![
        ("large", ty(cpu(16.0), 0, 100)),
        ("small", ty(cpu(4.0), 0, 100)),
    ]);
    let d = vec![cpu(1.0); 200];
    // Uncapped: full large nodes (a tie with full small ones, broken by name) while 16 are
    // left, then small ones for the last 8.
    let u = plan(&c, &snapshot(vec![], d.clone()), now());
    assert_eq!(launches(&u), vec![("large", 12), ("small", 2)]);
    // Capped at 5 per type: large is cut to 5 and its work waits; small, with room under its
    // own cap, still launches only its 2 (it used to take 3 more of the large type's work).
    c.upscaling_speed = 1.0;
    let p = plan(&c, &snapshot(vec![], d), now());
    assert_eq!(launches(&p), vec![("large", 5), ("small", 2)]);
    assert_eq!(p.unfulfilled_count(), 200 - 5 * 16 - 2 * 4);
}

#[test]
fn a_type_cut_to_nothing_by_the_cap_still_holds_lower_priorities_back() {
    let mut c = config(vec![("h", ty(cpu(8.0), 0, 100)), ("l", ty(cpu(8.0), 2, 100))]);
    c.node_types.get_mut("h").unwrap().launch_priority = 1;
    c.upscaling_speed = 1.0;
    let mut s = snapshot(vec![], vec![cpu(8.0); 20]);
    s.launching.insert("h".into(), 5);
    // Without the cap, h launches for the 15 demands its 5 launches in flight leave, and l's
    // min waits for a later round (rule 5). With it, h's allowance is 5 - 5 = 0: its work
    // waits, and so does l's min, as it would without the cap.
    let mut fast = c.clone();
    fast.upscaling_speed = 1e9;
    assert_eq!(launches(&plan(&fast, &s, now())), vec![("h", 15)]);
    let p = plan(&c, &s, now());
    assert!(p.to_launch.is_empty(), "{p:?}");
    assert_eq!(p.unfulfilled_count(), 15);
    // Once h has nothing to launch, l's min launches.
    s.demands.truncate(5);
    assert_eq!(launches(&plan(&c, &s, now())), vec![("l", 2)]);
}

#[test]
fn only_the_highest_launch_priority_launches() {
    let mut c = config(vec![
        ("cpu", ty(cpu(8.0), 0, 10)),
        ("gpu", ty(res(&[("CPU", 8.0), ("GPU", 1.0)]), 0, 10)),
    ]);
    c.node_types.get_mut("gpu").unwrap().launch_priority = 5;
    let d = vec![cpu(8.0), res(&[("CPU", 8.0), ("GPU", 1.0)])];
    let p = plan(&c, &snapshot(vec![], d.clone()), now());
    assert_eq!(launches(&p), vec![("gpu", 1)]);
    assert_eq!(p.unfulfilled_count(), 1);
    // The next round: the gpu launch is in flight, so the cpu type launches.
    let mut s = snapshot(vec![], d);
    s.launching.insert("gpu".into(), 1);
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 1)]);
}

#[test]
fn requests_pack_on_an_idle_copy_and_add_nodes() {
    let c = config(vec![("head", ty(cpu(4.0), 0, 0)), ("cpu", ty(cpu(8.0), 0, 10))]);
    // The worker is fully used, but requests count its full resources, and the head's.
    let s = ClusterSnapshot {
        nodes: vec![
            NodeSnapshot::head("h", "head"),
            NodeSnapshot::worker("w1", "cpu", Some(Resources::new())),
        ],
        requests: vec![cpu(4.0); 5],
        ..ClusterSnapshot::default()
    };
    // head 1 + w1 2 = 3 placed, 2 left: one node.
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 1)]);
    // Requests are capacity: demands use the request-driven nodes.
    let s = ClusterSnapshot {
        demands: vec![cpu(8.0)],
        ..s
    };
    assert_eq!(launches(&plan(&c, &s, now())), vec![("cpu", 1)]);
}

#[test]
fn infeasible_demands_are_reported_and_never_launched_for() {
    let c = config(vec![
        ("cpu", ty(res(&[("CPU", 8.0), ("memory", 0.0)]), 0, 10)),
        ("never", ty(cpu(64.0), 0, 0)),
    ]);
    let d = vec![
        cpu(16.0),
        res(&[("CPU", 1.0), ("memory", 1.0)]),
        res(&[("TPU", 1.0)]),
        cpu(16.0),
        cpu(1.0),
    ];
    let p = plan(&c, &snapshot(vec![], d), now());
    assert_eq!(launches(&p), vec![("cpu", 1)]);
    assert_eq!(p.infeasible_count(), 4);
    assert!(p.infeasible.contains(&DemandShape {
        shape: cpu(16.0),
        count: 2
    }));
    assert!(p.infeasible.contains(&DemandShape {
        shape: res(&[("TPU", 1.0)]),
        count: 1
    }));
    assert_eq!(p.unfulfilled_count(), 0);
}

#[test]
fn odd_amounts_neither_panic_nor_fit_everywhere() {
    let c = config(vec![("cpu", ty(cpu(8.0), 0, 10))]);
    let d = vec![
        res(&[("CPU", f64::NAN), ("memory", -1.0)]),
        cpu(f64::INFINITY),
        res(&[("CPU", 1.0), ("memory", -4.0)]),
    ];
    let p = plan(
        &c,
        &snapshot(vec![NodeSnapshot::worker("w", "cpu", Some(cpu(f64::NAN)))], d),
        now(),
    );
    // NaN and negative amounts count as zero: the first demand needs nothing, the infinite one
    // fits no type, the third needs one CPU and the NaN-reporting node has none.
    assert_eq!(p.infeasible_count(), 1);
    assert_eq!(launches(&p), vec![("cpu", 1)]);
}

#[test]
fn a_type_with_zero_memory_is_legal() {
    let c = config(vec![("tiny", ty(res(&[("CPU", 2.0), ("memory", 0.0)]), 0, 10))]);
    let p = plan(&c, &snapshot(vec![], vec![cpu(1.0); 3]), now());
    assert_eq!(launches(&p), vec![("tiny", 2)]);
}

#[test]
fn outdated_removed_and_failed_workers_are_terminated() {
    let c = config(vec![("cpu", ty(cpu(8.0), 1, 10))]);
    let mut outdated = NodeSnapshot::worker("old", "cpu", Some(cpu(8.0)));
    outdated.launch_hash_current = false;
    let mut failed = NodeSnapshot::worker("bad", "cpu", None);
    failed.status = NodeStatus::UpdateFailed;
    let gone = NodeSnapshot::worker("gone", "removed", Some(cpu(1.0)));
    let mut unmanaged = NodeSnapshot::worker("u", "removed", None);
    unmanaged.kind = NodeKind::Unmanaged;
    let p = plan(
        &c,
        &snapshot(vec![outdated, failed, gone, unmanaged], vec![]),
        now(),
    );
    assert_eq!(
        terminated(&p),
        vec![
            ("old", TerminationReason::OutdatedLaunchHash),
            ("bad", TerminationReason::UpdateFailed),
            ("gone", TerminationReason::TypeRemoved),
        ]
    );
    // The min worker is replaced.
    assert_eq!(launches(&p), vec![("cpu", 1)]);
}

#[test]
fn idle_workers_go_after_the_timeout_but_not_below_min_or_requests() {
    let mut c = config(vec![("cpu", ty(cpu(8.0), 1, 10))]);
    c.idle_timeout = Duration::from_secs(10 * 60);
    let nodes = vec![
        idle(NodeSnapshot::worker("a", "cpu", Some(cpu(8.0))), 30),
        idle(NodeSnapshot::worker("b", "cpu", Some(cpu(8.0))), 20),
        idle(NodeSnapshot::worker("c", "cpu", Some(cpu(8.0))), 5),
        idle(NodeSnapshot::worker("d", "cpu", Some(cpu(8.0))), 40),
        NodeSnapshot::worker("e", "cpu", Some(cpu(2.0))),
    ];
    // Ranked: e (busy), c, b, a, d. Min 1 protects e; c is not idle long enough.
    let p = plan(&c, &snapshot(nodes.clone(), vec![]), now());
    assert_eq!(
        terminated(&p),
        vec![
            ("b", TerminationReason::Idle),
            ("a", TerminationReason::Idle),
            ("d", TerminationReason::Idle)
        ]
    );
    // Requests for 3 nodes' worth protect e, c and b.
    let s = ClusterSnapshot {
        requests: vec![cpu(8.0); 3],
        ..snapshot(nodes.clone(), vec![])
    };
    let p = plan(&c, &s, now());
    assert_eq!(
        terminated(&p),
        vec![("a", TerminationReason::Idle), ("d", TerminationReason::Idle)]
    );
    // With min 3: e, c, b are protected by min.
    c.node_types.get_mut("cpu").unwrap().min_workers = 3;
    assert_eq!(
        terminated(&plan(&c, &snapshot(nodes.clone(), vec![]), now())).len(),
        2
    );
    // A zero timeout turns idle termination off.
    c.idle_timeout = Duration::ZERO;
    assert!(plan(&c, &snapshot(nodes, vec![]), now()).to_terminate.is_empty());
}

#[test]
fn excess_workers_go_least_recently_used_first_and_min_last() {
    let mut c = config(vec![("a", ty(cpu(8.0), 1, 2)), ("b", ty(cpu(8.0), 0, 10))]);
    c.max_workers = 2;
    let nodes = vec![
        idle(NodeSnapshot::worker("a1", "a", Some(cpu(8.0))), 1),
        idle(NodeSnapshot::worker("a2", "a", Some(cpu(8.0))), 2),
        idle(NodeSnapshot::worker("a3", "a", Some(cpu(8.0))), 3),
        idle(NodeSnapshot::worker("b1", "b", Some(cpu(8.0))), 0),
        NodeSnapshot::worker("b2", "b", Some(cpu(8.0))),
    ];
    let p = plan(&c, &snapshot(nodes, vec![]), now());
    // a3 is over a's max. Then 4 remain for a global max of 2: a1 is a's min; unprotected
    // a2, then b1 go (least recently used first), b2 (busy) stays.
    assert_eq!(
        terminated(&p),
        vec![
            ("a3", TerminationReason::AboveTypeMax),
            ("a2", TerminationReason::AboveGlobalMax),
            ("b1", TerminationReason::AboveGlobalMax),
        ]
    );
    assert!(p.to_launch.is_empty());
}

#[test]
fn uninitialized_workers_need_updates_and_lost_ones_recovery() {
    let c = cpu_config();
    let mut fresh = NodeSnapshot::worker("fresh", "cpu", None);
    fresh.status = NodeStatus::Uninitialized;
    let mut lost = NodeSnapshot::worker("lost", "cpu", Some(cpu(8.0)));
    lost.heartbeat_lost = true;
    let mut lost_updating = NodeSnapshot::worker("busy", "cpu", None);
    lost_updating.status = NodeStatus::SettingUp;
    lost_updating.heartbeat_lost = true;
    let p = plan(&c, &snapshot(vec![fresh, lost, lost_updating], vec![]), now());
    assert_eq!(p.to_update, vec!["fresh".to_string()]);
    assert_eq!(p.to_recover, vec!["lost".to_string()]);
}

// ---------------------------------------------------------------------------------------------
// Property tests

const TYPES: [&str; 4] = ["a.cpu", "b.big", "c.gpu", "d.tiny"];

fn type_caps() -> [Resources; 4] {
    [
        res(&[("CPU", 4.0), ("memory", 8.0)]),
        res(&[("CPU", 16.0), ("memory", 64.0)]),
        res(&[("CPU", 8.0), ("GPU", 2.0), ("memory", 32.0)]),
        // Memory 0 is legal.
        res(&[("CPU", 1.5), ("memory", 0.0)]),
    ]
}

fn shapes() -> Vec<Resources> {
    vec![
        cpu(1.0),
        res(&[("CPU", 2.0), ("memory", 4.0)]),
        res(&[("CPU", 1.0), ("GPU", 1.0)]),
        res(&[("GPU", 4.0)]),
        res(&[("CPU", 12.0), ("memory", 32.0)]),
        res(&[("TPU", 1.0)]),
        res(&[("CPU", 3.0)]),
        res(&[("CPU", 0.5)]),
    ]
}

prop_compose! {
    fn arb_type()(min in 0usize..4, max in 0usize..6, prio in 0i32..2) -> (usize, usize, i32) {
        (min, max, prio)
    }
}

prop_compose! {
    fn arb_node()(
        t in 0usize..5,
        avail in 0usize..4,
        current in prop::bool::weighted(0.9),
        status in 0usize..10,
        idle in 0usize..4,
        lost in prop::bool::weighted(0.1),
    ) -> (usize, usize, bool, usize, usize, bool) {
        (t, avail, current, status, idle, lost)
    }
}

#[derive(Debug, Clone)]
struct Case {
    config: ScalingConfig,
    snapshot: ClusterSnapshot,
}

fn arb_case(equal_priorities: bool, fast: bool) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(arb_type(), 4),
        0usize..16,
        any::<bool>(),
        prop::collection::vec(arb_node(), 0..10),
        prop::collection::vec(0usize..3, 4),
        prop::collection::vec(0usize..8, 0..40),
        prop::collection::vec(0usize..3, 0..4),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            move |(types, global, head_typed, nodes, launching, demands, requests, speed, idle_on)| {
                let caps = type_caps();
                let mut node_types: BTreeMap<String, NodeTypeConfig> = TYPES
                    .iter()
                    .zip(&types)
                    .zip(&caps)
                    .map(|((n, (min, max, prio)), cap)| {
                        (
                            n.to_string(),
                            NodeTypeConfig {
                                resources: cap.clone(),
                                min_workers: *min,
                                max_workers: *max,
                                launch_priority: if equal_priorities { 0 } else { *prio },
                            },
                        )
                    })
                    .collect();
                if head_typed {
                    node_types.insert("head".into(), ty(res(&[("CPU", 4.0), ("memory", 8.0)]), 0, 0));
                }
                let config = ScalingConfig {
                    node_types,
                    head_node_type: "head".into(),
                    max_workers: global,
                    upscaling_speed: if fast { 1e9 } else { [0.5, 1.0, 1e9][speed] },
                    idle_timeout: if idle_on {
                        Duration::from_secs(30 * 60)
                    } else {
                        Duration::ZERO
                    },
                };
                let mut snap_nodes = vec![NodeSnapshot::head("head-0", "head")];
                for (i, (t, avail, current, status, idle_for, lost)) in nodes.into_iter().enumerate() {
                    let name = if t < 4 { TYPES[t] } else { "z.removed" };
                    let cap = if t < 4 { caps[t].clone() } else { cpu(2.0) };
                    let available = match avail {
                        0 => None,
                        1 => Some(cap.clone()),
                        2 => Some(Resources::from_pairs(
                            cap.iter().map(|(k, v)| (k, (v / 2.0).floor())),
                        )),
                        _ => Some(Resources::new()),
                    };
                    let mut n = NodeSnapshot::worker(format!("w{i:02}"), name, available);
                    n.launch_hash_current = current;
                    n.status = match status {
                        0 => NodeStatus::Uninitialized,
                        1 => NodeStatus::UpdateFailed,
                        _ => NodeStatus::UpToDate,
                    };
                    n.idle_since = match idle_for {
                        0 => None,
                        k => Some(now() - Duration::from_secs([0, 5, 31, 90][k] * 60)),
                    };
                    n.heartbeat_lost = lost;
                    snap_nodes.push(n);
                }
                let all = shapes();
                let req_shapes = [cpu(4.0), cpu(16.0), res(&[("CPU", 2.0), ("GPU", 1.0)])];
                let snapshot = ClusterSnapshot {
                    nodes: snap_nodes,
                    launching: TYPES
                        .iter()
                        .zip(launching)
                        .filter(|(_, n)| *n > 0)
                        .map(|(t, n)| (t.to_string(), n))
                        .collect(),
                    demands: demands.into_iter().map(|i| all[i].clone()).collect(),
                    requests: requests.into_iter().map(|i| req_shapes[i].clone()).collect(),
                };
                Case { config, snapshot }
            },
        )
}

/// Independent facts about a case and its plan, computed with `Resources` directly.
struct Facts<'a> {
    case: &'a Case,
    /// Kept workers, in the planner's documented recency ranking.
    kept: Vec<&'a NodeSnapshot>,
}

impl<'a> Facts<'a> {
    fn new(case: &'a Case, plan: &'a ScalingPlan) -> Self {
        let gone: Vec<&str> = plan.to_terminate.iter().map(|t| t.node_id.as_str()).collect();
        let mut kept: Vec<&NodeSnapshot> = case
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Worker && !gone.contains(&n.id.as_str()))
            .collect();
        kept.sort_by(|x, y| {
            (x.idle_since.is_some(), Reverse(x.idle_since), &x.id).cmp(&(
                y.idle_since.is_some(),
                Reverse(y.idle_since),
                &y.id,
            ))
        });
        Facts { case, kept }
    }

    fn cap(&self, t: &str) -> &Resources {
        &self.case.config.node_types[t].resources
    }

    fn kept_of(&self, t: &str) -> usize {
        self.kept.iter().filter(|n| n.node_type == t).count()
    }

    fn launching_of(&self, t: &str) -> usize {
        self.case.snapshot.launching.get(t).copied().unwrap_or(0)
    }

    fn total_after(&self, launches: &BTreeMap<String, usize>) -> usize {
        self.kept.len()
            + self.case.snapshot.launching.values().sum::<usize>()
            + launches.values().sum::<usize>()
    }

    fn eff_min(&self, t: &str) -> usize {
        let ty = &self.case.config.node_types[t];
        ty.min_workers
            .min(ty.max_workers)
            .min(self.case.config.max_workers)
    }

    fn feasible_demand(&self, d: &Resources) -> bool {
        self.case
            .config
            .node_types
            .values()
            .any(|t| t.max_workers > 0 && t.resources.fits(d))
    }

    fn head_cap(&self) -> Option<&Resources> {
        self.case.config.node_types.get("head").map(|t| &t.resources)
    }

    /// Demand bins: running workers' available, booting workers and launches at full resources,
    /// grouped by identical capacity in order of first appearance.
    fn demand_bins(&self) -> Vec<Resources> {
        let mut list: Vec<Resources> = self.kept.iter().filter_map(|n| n.available.clone()).collect();
        list.extend(
            self.kept
                .iter()
                .filter(|n| n.available.is_none())
                .map(|n| self.cap(&n.node_type).clone()),
        );
        list.extend(self.new_bins(&self.case.snapshot.launching));
        group_in_order(list)
    }

    /// Request bins: the head, kept workers and launches at full resources, grouped.
    fn request_bins(&self) -> Vec<Resources> {
        let mut list = Vec::new();
        if let Some(h) = self.head_cap() {
            list.push(h.clone());
        }
        list.extend(self.kept.iter().map(|n| self.cap(&n.node_type).clone()));
        list.extend(self.new_bins(&self.case.snapshot.launching));
        group_in_order(list)
    }

    /// Each resource's largest amount in a node type.
    fn scale(&self) -> BTreeMap<String, f64> {
        let mut scale: BTreeMap<String, f64> = BTreeMap::new();
        for t in self.case.config.node_types.values() {
            for (k, v) in t.resources.iter() {
                let s = scale.entry(k.to_string()).or_insert(0.0);
                *s = s.max(v);
            }
        }
        scale
    }

    /// A bag's amounts as fractions of their resource's largest amount in a type, summed.
    fn size(&self, r: &Resources) -> f64 {
        let scale = self.scale();
        r.iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| v / scale.get(k).copied().filter(|s| *s > 0.0).unwrap_or(1.0))
            .sum()
    }

    /// Nodes at full resources, `launches[t]` of each type, in the documented type order:
    /// without GPUs first, then larger (by [`Facts::size`]) first. The generated types differ
    /// in that much.
    fn new_bins(&self, launches: &BTreeMap<String, usize>) -> Vec<Resources> {
        let mut types: Vec<&String> = launches
            .keys()
            .filter(|t| self.case.config.node_types.contains_key(*t))
            .collect();
        types.sort_by(|a, b| {
            let (ca, cb) = (self.cap(a), self.cap(b));
            (ca.gpu() > 0.0)
                .cmp(&(cb.gpu() > 0.0))
                .then(self.size(cb).total_cmp(&self.size(ca)))
        });
        let mut v = Vec::new();
        for t in types {
            v.extend(std::iter::repeat_n(self.cap(t).clone(), launches[t]));
        }
        v
    }

    fn sorted(&self, items: &[Resources], extra: Option<&Resources>) -> Vec<Resources> {
        let mut v: Vec<Resources> = items
            .iter()
            .filter(|d| !d.is_empty() && (self.feasible_demand(d) || extra.is_some_and(|e| e.fits(d))))
            .cloned()
            .collect();
        v.sort_by(|a, b| ffd_order(a, b, self.size(a), self.size(b)));
        v
    }

    fn demands_placed(&self, launches: &BTreeMap<String, usize>) -> usize {
        let mut bins = self.demand_bins();
        bins.extend(self.new_bins(launches));
        first_fit(&mut bins, &self.sorted(&self.case.snapshot.demands, None))
    }

    /// Work a GPU node may be added for (rule 4): a demand that needs a GPU, or one that no
    /// usable type without GPUs could hold.
    fn gpu_work(&self, d: &Resources) -> bool {
        d.gpu() > 0.0
            || !self
                .case
                .config
                .node_types
                .values()
                .any(|t| t.max_workers > 0 && t.resources.gpu() == 0.0 && t.resources.fits(d))
    }

    /// How many of the demands placed (as in [`Facts::demands_placed`]) are GPU work.
    fn gpu_work_placed(&self, launches: &BTreeMap<String, usize>) -> usize {
        let mut bins = self.demand_bins();
        bins.extend(self.new_bins(launches));
        let items = self.sorted(&self.case.snapshot.demands, None);
        let mut placed = 0;
        for d in &items {
            if let Some(b) = bins.iter_mut().find(|b| b.fits(d)) {
                b.subtract(d);
                placed += usize::from(self.gpu_work(d));
            }
        }
        placed
    }

    fn requests_placed(&self, launches: &BTreeMap<String, usize>) -> usize {
        let mut bins = self.request_bins();
        bins.extend(self.new_bins(launches));
        first_fit(
            &mut bins,
            &self.sorted(&self.case.snapshot.requests, self.head_cap()),
        )
    }
}

fn group_in_order(list: Vec<Resources>) -> Vec<Resources> {
    let mut groups: Vec<(Resources, usize)> = Vec::new();
    for r in list {
        match groups.iter_mut().find(|g| g.0 == r) {
            Some(g) => g.1 += 1,
            None => groups.push((r, 1)),
        }
    }
    groups
        .into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r, n))
        .collect()
}

/// GPU work first, then more kinds, then larger sizes (normalized, `size_a` and `size_b`),
/// then the larger `(name, amount)` list.
fn ffd_order(a: &Resources, b: &Resources, size_a: f64, size_b: f64) -> Ordering {
    (b.gpu() > 0.0)
        .cmp(&(a.gpu() > 0.0))
        .then(b.len().cmp(&a.len()))
        .then(size_b.total_cmp(&size_a))
        .then_with(|| {
            for ((na, va), (nb, vb)) in a.iter().zip(b.iter()) {
                match nb.cmp(na).then(vb.total_cmp(&va)) {
                    Ordering::Equal => continue,
                    o => return o,
                }
            }
            Ordering::Equal
        })
}

/// Per-demand first fit.
fn first_fit(bins: &mut [Resources], items: &[Resources]) -> usize {
    let mut placed = 0;
    for d in items {
        if let Some(b) = bins.iter_mut().find(|b| b.fits(d)) {
            b.subtract(d);
            placed += 1;
        }
    }
    placed
}

fn with_one_less(launches: &BTreeMap<String, usize>, t: &str) -> BTreeMap<String, usize> {
    let mut l = launches.clone();
    *l.get_mut(t).unwrap() -= 1;
    l.retain(|_, n| *n > 0);
    l
}

proptest! {
    // 600 cases by default; PROPTEST_CASES=100000 for a deep run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600)
    ))]

    #[test]
    fn plans_respect_limits_min_and_feasibility(case in arb_case(false, false)) {
        let p = plan(&case.config, &case.snapshot, now());
        let f = Facts::new(&case, &p);
        let global = case.config.max_workers;
        // Termination bookkeeping.
        let mut ids: Vec<&str> = p.to_terminate.iter().map(|t| t.node_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), p.to_terminate.len());
        prop_assert!(!ids.contains(&"head-0"));
        prop_assert!(p.to_launch.values().all(|n| *n > 0));
        // Limits: what is kept never exceeds a max; launches never push past one.
        prop_assert!(f.kept.len() <= global);
        if p.launch_count() > 0 {
            prop_assert!(f.total_after(&p.to_launch) <= global);
        }
        for t in TYPES {
            let max = case.config.node_types[t].max_workers;
            prop_assert!(f.kept_of(t) <= max);
            let n = p.to_launch.get(t).copied().unwrap_or(0);
            if n > 0 {
                prop_assert!(f.kept_of(t) + f.launching_of(t) + n <= max, "{} above its max", t);
            }
        }
        // Min: met unless the global max is reached or a higher priority type launches, or
        // would without the cap (its work waits for it, and lower priorities wait too).
        let mut fast = case.config.clone();
        fast.upscaling_speed = 1e9;
        let uncapped = plan(&fast, &case.snapshot, now());
        for t in TYPES {
            let have = f.kept_of(t) + f.launching_of(t) + p.to_launch.get(t).copied().unwrap_or(0);
            let prio = case.config.node_types[t].launch_priority;
            let deferred = uncapped
                .to_launch
                .keys()
                .any(|u| case.config.node_types[u].launch_priority > prio);
            prop_assert!(
                have >= f.eff_min(t) || f.total_after(&p.to_launch) >= global || deferred,
                "{} below its min", t
            );
        }
        // Infeasible: exactly the demands no launchable type fits; they change no launch.
        for d in &p.infeasible {
            prop_assert!(!f.feasible_demand(&d.shape));
        }
        let infeasible_total = case.snapshot.demands.iter().filter(|d| !f.feasible_demand(d)).count();
        prop_assert_eq!(p.infeasible_count(), infeasible_total);
        let mut without = case.snapshot.clone();
        without.demands.retain(|d| f.feasible_demand(d));
        prop_assert_eq!(&plan(&case.config, &without, now()).to_launch, &p.to_launch);
        // The plan's own accounting agrees with per-demand first fit.
        let feasible = case.snapshot.demands.len() - infeasible_total;
        prop_assert_eq!(p.unfulfilled_count(), feasible - f.demands_placed(&p.to_launch));
        // Deterministic.
        prop_assert_eq!(&plan(&case.config, &case.snapshot, now()), &p);
    }

    /// The cap limits speed, never choice (rule 7): per type and in all, a plan launches at
    /// most what the same snapshot plans with the cap out of the way. Without requests, a type
    /// launches beyond its allowance only what its min needs.
    #[test]
    fn the_cap_limits_speed_never_choice(case in arb_case(false, false)) {
        let p = plan(&case.config, &case.snapshot, now());
        let mut fast = case.config.clone();
        fast.upscaling_speed = 1e9;
        let u = plan(&fast, &case.snapshot, now());
        for (t, n) in &p.to_launch {
            let un = u.to_launch.get(t).copied().unwrap_or(0);
            prop_assert!(*n <= un, "{} launches {} capped, {} uncapped: {:?} vs {:?}", t, n, un, p, u);
        }
        prop_assert!(p.launch_count() <= u.launch_count(), "{:?} vs {:?}", p, u);
        // The cap changes launches only.
        prop_assert_eq!(&p.to_terminate, &u.to_terminate);
        if case.snapshot.requests.is_empty() {
            let f = Facts::new(&case, &p);
            for (t, n) in &p.to_launch {
                let running = f.kept.iter().filter(|k| k.node_type == *t && k.available.is_some()).count();
                let booting = f.kept_of(t) - running;
                let scaled = (case.config.upscaling_speed * running.max(1) as f64).floor() as usize;
                let allowed = scaled.max(5).saturating_sub(f.launching_of(t) + booting);
                let min_need = f.eff_min(t).saturating_sub(f.kept_of(t) + f.launching_of(t));
                prop_assert!(*n <= allowed.max(min_need), "{} above its allowance {}: {:?}", t, allowed, p);
            }
        }
    }

    #[test]
    fn no_launch_is_superfluous(case in arb_case(false, false)) {
        let p = plan(&case.config, &case.snapshot, now());
        let f = Facts::new(&case, &p);
        let dem = f.demands_placed(&p.to_launch);
        let req = f.requests_placed(&p.to_launch);
        for (t, n) in &p.to_launch {
            let fewer = with_one_less(&p.to_launch, t);
            let breaks_min = f.kept_of(t) + f.launching_of(t) + n - 1 < f.eff_min(t);
            let breaks_requests = f.requests_placed(&fewer) < req;
            let breaks_demands = f.demands_placed(&fewer) < dem;
            prop_assert!(
                breaks_min || breaks_requests || breaks_demands,
                "one launch of {} is not needed: {:?}", t, p
            );
        }
    }

    /// No plan depends on what the node types are called: renaming them (a permutation of
    /// names, the head type staying the head) gives the same plan, mapped through the renaming.
    #[test]
    fn renaming_types_does_not_change_the_plan(
        case in arb_case(false, false),
        names in Just(vec!["0.gpu", "a.gpu", "gpu.default", "head.default", "worker.a100", "zz"])
            .prop_shuffle(),
    ) {
        let old: Vec<&str> = TYPES.iter().copied().chain(["head"]).collect();
        let to = |t: &str| old.iter().position(|o| *o == t).map_or(t.to_string(), |i| names[i].to_string());
        let back = |t: &str| names.iter().position(|n| *n == t).map_or(t.to_string(), |i| old[i].to_string());
        let mut renamed = case.clone();
        renamed.config.node_types = case.config.node_types.iter().map(|(t, c)| (to(t), c.clone())).collect();
        renamed.config.head_node_type = to(&case.config.head_node_type);
        for n in &mut renamed.snapshot.nodes {
            n.node_type = to(&n.node_type);
        }
        renamed.snapshot.launching = case.snapshot.launching.iter().map(|(t, n)| (to(t), *n)).collect();
        let p = plan(&case.config, &case.snapshot, now());
        let mut q = plan(&renamed.config, &renamed.snapshot, now());
        q.to_launch = q.to_launch.iter().map(|(t, n)| (back(t), *n)).collect();
        for t in &mut q.to_terminate {
            t.node_type = back(&t.node_type);
        }
        prop_assert_eq!(q.launch_count(), p.launch_count(), "{:?} vs {:?}", q, p);
        prop_assert_eq!(&q, &p);
    }

    /// "Every feasible demand is placed when limits allow": with the cap out of the way and one
    /// priority, unplaced demands mean that no launch the limits still allow would place one
    /// more demand (by the planner's first-fit-decreasing packing), GPU nodes excepted when
    /// they would hold no GPU work (rule 4). A heuristic packing can
    /// leave demands that a cleverer packing of the same nodes would place; with demands all
    /// of one shape it cannot, and then every unplaced demand fits only full types.
    #[test]
    fn feasible_demands_are_placed_when_limits_allow(case in arb_case(true, true)) {
        let p = plan(&case.config, &case.snapshot, now());
        let f = Facts::new(&case, &p);
        let global_full = f.total_after(&p.to_launch) >= case.config.max_workers;
        if p.unfulfilled_count() == 0 || global_full {
            return Ok(());
        }
        let placed = f.demands_placed(&p.to_launch);
        let one_shape = p.unfulfilled.len() == 1
            && case.snapshot.demands.iter().filter(|d| f.feasible_demand(d)).all(|d| *d == p.unfulfilled[0].shape);
        let gpu_work_placed = f.gpu_work_placed(&p.to_launch);
        for t in TYPES {
            let ty = &case.config.node_types[t];
            let have = f.kept_of(t) + f.launching_of(t) + p.to_launch.get(t).copied().unwrap_or(0);
            if have >= ty.max_workers {
                continue;
            }
            let mut more = p.to_launch.clone();
            *more.entry(t.to_string()).or_insert(0) += 1;
            // GPU nodes are kept for GPU work (rule 4): an extra GPU node is owed only if it
            // would hold GPU work. Whatever else it would hold is CPU work that waits for CPU
            // nodes, even while GPU work stays unplaced for other reasons (say, first fit puts
            // CPU work onto the GPU node first and fills its CPUs).
            if ty.resources.gpu() > 0.0 && f.gpu_work_placed(&more) <= gpu_work_placed {
                continue;
            }
            // At most as many: first fit is not monotone, so one more node early in the
            // packing's order can make later nodes hold less, and then fewer are placed.
            let with_more = f.demands_placed(&more);
            prop_assert!(
                with_more <= placed,
                "one more {} would place more: {} > {}: {:?}", t, with_more, placed, p
            );
            if one_shape {
                prop_assert!(!ty.resources.fits(&p.unfulfilled[0].shape), "{} has room: {:?}", t, p);
            }
        }
    }
}
