//! The state store on a real redis-server started by the bench: the controller's
//! snapshot of 10,000 nodes' heartbeats (and, to split it, the `HVALS` reply alone), one
//! 1-second round of 10,000 agents' heartbeat writes (pipelined over one connection), one
//! agent's single write, and the share of a core redis-server and the writer use at
//! 10,000 heartbeats per second.

use std::time::{Duration, Instant};

use cloudtik_benches::{BenchRedis, cpu_time};
use cloudtik_core::state::{NodeHeartbeat, RedisStore, StateStore, unix_now};
use cloudtik_core::{NodeKind, Resources};
use criterion::{Criterion, criterion_group, criterion_main};

const NODES: usize = 10_000;

fn heartbeat(i: usize) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: format!("i-{i:017x}"),
        node_ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        node_kind: if i == 0 { NodeKind::Head } else { NodeKind::Worker },
        node_type: "worker.cpu".into(),
        seq_id: Some(i as u32 + 1),
        heartbeat_time: unix_now(),
        total_resources: Resources::from_pairs([("CPU", 16.0), ("memory", 64.0 * 1024.0 * 1024.0 * 1024.0)]),
        available_resources: Resources::from_pairs([
            ("CPU", (i % 16) as f64),
            ("memory", 32.0 * 1024.0 * 1024.0 * 1024.0),
        ]),
    }
}

/// One round: every node writes its heartbeat, all at once over the store's one
/// multiplexed connection (so the commands are pipelined).
async fn round(store: &RedisStore, rows: &mut [NodeHeartbeat]) {
    let now = unix_now();
    for r in rows.iter_mut() {
        r.heartbeat_time = now;
    }
    let writes = rows.iter().map(|r| store.put_heartbeat(r));
    futures::future::try_join_all(writes).await.unwrap();
}

fn bench_state_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, store) = BenchRedis::start(&rt);
    let mut rows: Vec<NodeHeartbeat> = (0..NODES).map(heartbeat).collect();
    rt.block_on(round(&store, &mut rows));
    assert_eq!(rt.block_on(store.all_heartbeats()).unwrap().len(), NODES);

    let mut group = c.benchmark_group("state_store");
    group.sample_size(20);
    group.bench_function("snapshot of 10,000 heartbeats (all_heartbeats)", |b| {
        b.iter(|| rt.block_on(store.all_heartbeats()).unwrap())
    });
    // What the snapshot spends in Redis, on loopback and parsing the reply: the same
    // `HVALS` of the heartbeat table (key layout in cloudtik_core::state) on a plain
    // connection, the rows left undecoded.
    let client =
        redis::Client::open(format!("redis://:{}@127.0.0.1:{}/", server.password, server.port)).unwrap();
    let mut conn = rt.block_on(client.get_multiplexed_async_connection()).unwrap();
    group.bench_function("the snapshot's HVALS reply alone (rows not decoded)", |b| {
        b.iter(|| {
            let reply: redis::Value = rt
                .block_on(
                    redis::cmd("HVALS")
                        .arg("cloudtik:nodes:heartbeat")
                        .query_async(&mut conn),
                )
                .unwrap();
            assert!(matches!(&reply, redis::Value::Array(rows) if rows.len() == NODES));
            reply
        })
    });
    group.bench_function("one round of 10,000 heartbeat writes (pipelined)", |b| {
        b.iter(|| rt.block_on(round(&store, &mut rows)))
    });
    let mut one = heartbeat(NODES + 1);
    group.sample_size(100);
    group.bench_function("one agent's heartbeat write (round trip)", |b| {
        b.iter(|| {
            one.heartbeat_time = unix_now();
            rt.block_on(store.put_heartbeat(&one)).unwrap()
        })
    });
    group.finish();

    // 10,000 agents at 1 Hz for 10 s: one round at the start of each second. The share
    // of a core is CPU time over wall time.
    let seconds = 10;
    let redis_pid = server.pid().to_string();
    let (redis0, self0, wall0) = (cpu_time(&redis_pid), cpu_time("self"), Instant::now());
    let mut slowest = Duration::ZERO;
    for s in 0..seconds {
        let started = Instant::now();
        rt.block_on(round(&store, &mut rows));
        slowest = slowest.max(started.elapsed());
        let next = wall0 + Duration::from_secs(s + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall = wall0.elapsed().as_secs_f64();
    let redis_share = (cpu_time(&redis_pid) - redis0).as_secs_f64() / wall * 100.0;
    let writer_share = (cpu_time("self") - self0).as_secs_f64() / wall * 100.0;
    println!(
        "state_store/10,000 agents at 1 Hz for {seconds} s: redis-server {redis_share:.1}% of a core, \
         writer {writer_share:.1}% of a core, slowest round {:.1} ms",
        slowest.as_secs_f64() * 1000.0
    );
    drop(store);
    drop(server);
}

criterion_group!(benches, bench_state_store);
criterion_main!(benches);
