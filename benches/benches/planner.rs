//! The pure planner on clusters of 100 nodes / 1,000 demands, 1,000 / 10,000 and
//! 10,000 / 100,000: three worker types (one with GPUs), running nodes with varied free
//! resources, some booting, launches in flight, mixed demand shapes with a few infeasible ones,
//! and a few persistent requests.
//!
//! `planner_capped_mix` plans issue 11's shape where the upscaling cap binds: per 96 nodes,
//! 57 running 4-CPU nodes, 30 running 16-CPU nodes (one more launching) and 9 GPU nodes, with
//! 991 mostly 1-CPU demands; scaled by 1, 10 and 100.
//!
//! Targets on a 2-core machine: 1,000 / 10,000 under 10 ms, 10,000 / 100,000 under 100 ms.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use cloudtik_core::Resources;
use cloudtik_core::scaler::{ClusterSnapshot, NodeSnapshot, NodeTypeConfig, ScalingConfig, plan};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// A small deterministic generator (64-bit LCG), so every run plans the same cluster.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn res(pairs: &[(&str, f64)]) -> Resources {
    Resources::from_pairs(pairs.iter().copied())
}

fn config() -> ScalingConfig {
    let t = NodeTypeConfig::new;
    let mut node_types = BTreeMap::new();
    node_types.insert(
        "head.default".to_string(),
        t(res(&[("CPU", 8.0), ("memory", 32.0 * GIB)]), 0),
    );
    node_types.insert(
        "worker.cpu".to_string(),
        t(res(&[("CPU", 8.0), ("memory", 32.0 * GIB)]), 20_000),
    );
    node_types.insert(
        "worker.mem".to_string(),
        t(res(&[("CPU", 16.0), ("memory", 128.0 * GIB)]), 20_000),
    );
    node_types.insert(
        "worker.gpu".to_string(),
        t(res(&[("CPU", 16.0), ("GPU", 4.0), ("memory", 64.0 * GIB)]), 5_000),
    );
    node_types
        .into_iter()
        .fold(ScalingConfig::new("head.default", 50_000), |c, (name, t)| {
            c.with_node_type(name, t)
        })
        .with_upscaling_speed(1.0)
        .with_idle_timeout(Duration::from_secs(5 * 60))
}

fn snapshot(nodes: usize, demands: usize, rng: &mut Lcg) -> ClusterSnapshot {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let mut list = vec![NodeSnapshot::head("head-0", "head.default")];
    for i in 0..nodes {
        let (ty, cpu, mem, gpu) = match rng.next(10) {
            0..=5 => ("worker.cpu", 8, 32, 0),
            6..=8 => ("worker.mem", 16, 128, 0),
            _ => ("worker.gpu", 16, 64, 4),
        };
        let available = if rng.next(20) == 0 {
            None
        } else {
            let mut r = res(&[
                ("CPU", rng.next(cpu + 1) as f64),
                // Reported in MiB steps: nearly every node's free capacity is distinct.
                ("memory", rng.next(mem * 1024 + 1) as f64 * MIB),
            ]);
            if gpu > 0 {
                r.set("GPU", rng.next(gpu + 1) as f64);
            }
            Some(r)
        };
        let mut n = NodeSnapshot::worker(format!("node-{i:06}"), ty, available);
        n.ip = Some(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
        if rng.next(10) == 0 {
            n.idle_since = Some(now - Duration::from_secs(rng.next(600)));
        }
        list.push(n);
    }
    let shapes = [
        res(&[("CPU", 1.0)]),
        res(&[("CPU", 1.0), ("memory", 2.0 * GIB)]),
        res(&[("CPU", 2.0), ("memory", 8.0 * GIB)]),
        res(&[("CPU", 4.0), ("memory", 48.0 * GIB)]),
        res(&[("CPU", 0.5)]),
        res(&[("CPU", 1.0), ("GPU", 1.0), ("memory", 4.0 * GIB)]),
        res(&[("CPU", 8.0), ("GPU", 4.0), ("memory", 32.0 * GIB)]),
    ];
    let infeasible = [res(&[("GPU", 8.0)]), res(&[("TPU", 1.0)])];
    let demands: Vec<Resources> = (0..demands)
        .map(|_| {
            if rng.next(1000) == 0 {
                infeasible[rng.next(2) as usize].clone()
            } else {
                shapes[rng.next(shapes.len() as u64) as usize].clone()
            }
        })
        .collect();
    let mut launching = BTreeMap::new();
    launching.insert("worker.cpu".to_string(), nodes / 100);
    launching.insert("worker.gpu".to_string(), nodes / 500);
    let snapshot = list
        .into_iter()
        .fold(ClusterSnapshot::new(), ClusterSnapshot::with_node);
    launching
        .into_iter()
        .fold(snapshot, |s, (t, n)| s.with_launching(t, n))
        .with_demands(demands)
        .with_requests(vec![res(&[("CPU", 8.0)]); 16])
}

fn bench_planner(c: &mut Criterion) {
    let config = config();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let mut group = c.benchmark_group("planner");
    for (nodes, demands) in [(100, 1_000), (1_000, 10_000), (10_000, 100_000)] {
        let snap = snapshot(nodes, demands, &mut Lcg(42));
        let p = plan(&config, &snap, now);
        // What the plan says, once per size, so the bench shows it plans real work.
        eprintln!(
            "{nodes} nodes / {demands} demands: launch {:?}, terminate {}, infeasible {}, unfulfilled {}",
            p.to_launch,
            p.to_terminate.len(),
            p.infeasible_count(),
            p.unfulfilled_count()
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{nodes}n_{demands}d")),
            &snap,
            |b, snap| b.iter(|| plan(black_box(&config), black_box(snap), now)),
        );
    }
    group.finish();
}

/// Issue 11's shape, `scale` times: the 16-CPU type's cap binds, the others' do not.
fn capped_mix(scale: usize) -> (ScalingConfig, ClusterSnapshot) {
    let t = NodeTypeConfig::new;
    let mut node_types = BTreeMap::new();
    node_types.insert(
        "worker.cpu16".to_string(),
        t(res(&[("CPU", 16.0), ("memory", 64.0 * GIB)]), 400 * scale),
    );
    node_types.insert(
        "worker.cpu4".to_string(),
        t(res(&[("CPU", 4.0), ("memory", 16.0 * GIB)]), 400 * scale),
    );
    node_types.insert(
        "worker.gpu".to_string(),
        t(
            res(&[("CPU", 8.0), ("GPU", 1.0), ("memory", 32.0 * GIB)]),
            50 * scale,
        ),
    );
    let config = node_types
        .into_iter()
        .fold(
            ScalingConfig::new("head.default", 1000 * scale),
            |c, (name, t)| c.with_node_type(name, t),
        )
        .with_upscaling_speed(1.0)
        .with_idle_timeout(Duration::ZERO);
    let mut nodes = vec![NodeSnapshot::head("head-0", "head.default")];
    // Full 4-CPU nodes but every sixth, which has one CPU free.
    for i in 0..57 * scale {
        let free = res(&[("CPU", if i % 6 == 0 { 1.0 } else { 0.0 }), ("memory", 2.0 * GIB)]);
        nodes.push(NodeSnapshot::worker(
            format!("s-{i:06}"),
            "worker.cpu4",
            Some(free),
        ));
    }
    let mut add = |prefix: &str, n: usize, ty: &str, free: Resources| {
        for i in 0..n {
            nodes.push(NodeSnapshot::worker(
                format!("{prefix}-{i:06}"),
                ty,
                Some(free.clone()),
            ));
        }
    };
    add(
        "l",
        30 * scale,
        "worker.cpu16",
        res(&[("CPU", 2.0), ("memory", 8.0 * GIB)]),
    );
    add(
        "g",
        9 * scale,
        "worker.gpu",
        res(&[("CPU", 3.0), ("GPU", 0.0), ("memory", 12.0 * GIB)]),
    );
    let mut demands = Vec::new();
    for (shape, n) in [
        (res(&[("CPU", 1.0)]), 880),
        (res(&[("CPU", 1.0), ("memory", 2.0 * GIB)]), 64),
        (res(&[("CPU", 2.0), ("memory", 4.0 * GIB)]), 40),
        (res(&[("CPU", 1.0), ("GPU", 1.0)]), 7),
    ] {
        demands.extend(std::iter::repeat_n(shape, n * scale));
    }
    let snapshot = nodes
        .into_iter()
        .fold(ClusterSnapshot::new(), ClusterSnapshot::with_node)
        .with_launching("worker.cpu16", scale)
        .with_demands(demands);
    (config, snapshot)
}

fn bench_capped_mix(c: &mut Criterion) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let mut group = c.benchmark_group("planner_capped_mix");
    for scale in [1, 10, 100] {
        let (config, snap) = capped_mix(scale);
        let p = plan(&config, &snap, now);
        let mut fast = config.clone();
        fast.upscaling_speed = 1e9;
        let u = plan(&fast, &snap, now);
        eprintln!(
            "capped mix x{scale} ({} nodes / {} demands): launch {:?} (uncapped {:?}), unfulfilled {}",
            snap.nodes.len() - 1,
            snap.demands.len(),
            p.to_launch,
            u.to_launch,
            p.unfulfilled_count()
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{}n_{}d", snap.nodes.len() - 1, snap.demands.len())),
            &snap,
            |b, snap| b.iter(|| plan(black_box(&config), black_box(snap), now)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_planner, bench_capped_mix);
criterion_main!(benches);
