//! [`RedisStore`] on real redis-servers started by the tests: the behavioural suite,
//! sharding, encryption at rest, a wrong password, and a restart under load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::redis_store::{HEARTBEATS, METRICS, PROCESSES, RUNTIME_CONFIG, SECRET_PREFIX};
use super::suite;
use super::test_server::TestRedis;
use super::*;
use crate::error::ErrorKind;

/// Bounds every test so that none can hang.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn config(primary: &TestRedis, key: &EncryptionKey) -> RedisStoreConfig {
    RedisStoreConfig::new(primary.address(), key.clone())
        .with_password(primary.password.clone())
        .with_event_capacity(suite::EVENT_CAPACITY)
}

#[tokio::test]
async fn redis_store_passes_the_behavioural_suite() {
    tokio::time::timeout(TEST_LIMIT, async {
        let server = TestRedis::start(&generate_password()).await;
        let store = RedisStore::connect(config(&server, &EncryptionKey::generate()))
            .await
            .unwrap();
        assert_eq!(store.data_shards(), vec![server.address()]);
        suite::run_all(&store).await;

        // Without extra shards the published list is empty and discovery uses the primary.
        store.publish_shards().await.unwrap();
        let discovering =
            RedisStore::connect(config(&server, &EncryptionKey::generate()).with_discover_shards(true))
                .await
                .unwrap();
        assert_eq!(discovering.data_shards(), vec![server.address()]);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn sharded_store_spreads_node_rows_and_batch_reads_return_all() {
    tokio::time::timeout(TEST_LIMIT, async {
        let password = generate_password();
        let primary = TestRedis::start(&password).await;
        let shard1 = TestRedis::start(&password).await;
        let shard2 = TestRedis::start(&password).await;
        let store = RedisStore::connect(
            config(&primary, &EncryptionKey::generate())
                .with_shard(shard1.address())
                .with_shard(shard2.address()),
        )
        .await
        .unwrap();
        assert_eq!(store.data_shards(), vec![shard1.address(), shard2.address()]);

        // The whole suite passes on the sharded store too.
        suite::run_all(&store).await;

        let n = 300;
        for i in 0..n {
            let id = format!("i-{i:05}");
            store.put_heartbeat(&suite::heartbeat(i, 100.0)).await.unwrap();
            store.put_node_metrics(&id, &suite::metrics(i)).await.unwrap();
            store.put_node_processes(&id, &suite::processes(i)).await.unwrap();
        }
        // Every row is on the shard the documented hash names, and nowhere else.
        let mut on_shard = Vec::new();
        for server in [&shard1, &shard2] {
            let mut raw = server.raw().await;
            let hb: HashMap<String, Vec<u8>> = raw.hgetall(HEARTBEATS).await.unwrap();
            for id in hb.keys() {
                assert_eq!(
                    store.shard_of(id),
                    &server.address(),
                    "row {id} is on the wrong shard"
                );
            }
            let metrics_len: usize = raw.hlen(METRICS).await.unwrap();
            let processes_len: usize = raw.hlen(PROCESSES).await.unwrap();
            assert_eq!(metrics_len, hb.len());
            assert_eq!(processes_len, hb.len());
            on_shard.push(hb.len());
        }
        assert_eq!(on_shard.iter().sum::<usize>(), n);
        assert!(
            on_shard.iter().all(|&c| c > n / 4),
            "rows spread over the shards: {on_shard:?}"
        );
        let mut raw_primary = primary.raw().await;
        let on_primary: usize = raw_primary.hlen(HEARTBEATS).await.unwrap();
        assert_eq!(on_primary, 0, "node rows live on the extra shards only");

        // Batch reads return everything from every shard.
        let tables = store.node_tables().await.unwrap();
        assert_eq!(tables.heartbeats.len(), n);
        assert_eq!(tables.metrics.len(), n);
        assert_eq!(tables.processes.len(), n);
        assert_eq!(tables.heartbeats["i-00123"], suite::heartbeat(123, 100.0));
        let some_ids: Vec<String> = (0..n).step_by(7).map(|i| format!("i-{i:05}")).collect();
        let some = store.heartbeats(&some_ids).await.unwrap();
        assert_eq!(some.len(), some_ids.len());

        // A store that knows only the primary finds the shards the head published, and
        // puts rows where the head reads them.
        let agent_config = || {
            RedisStoreConfig::new(primary.address(), EncryptionKey::generate())
                .with_password(password.clone())
                .with_discover_shards(true)
        };
        let before = RedisStore::connect(agent_config()).await.unwrap();
        assert_eq!(
            before.data_shards(),
            vec![primary.address()],
            "nothing published yet"
        );
        store.publish_shards().await.unwrap();
        let agent = RedisStore::connect(agent_config()).await.unwrap();
        assert_eq!(agent.data_shards(), store.data_shards());
        agent.put_heartbeat(&suite::heartbeat(n, 200.0)).await.unwrap();
        assert_eq!(
            store.heartbeat(&format!("i-{n:05}")).await.unwrap(),
            Some(suite::heartbeat(n, 200.0))
        );
        store.remove_node(&format!("i-{n:05}")).await.unwrap();

        // Removal reaches every shard.
        let all_ids: Vec<String> = (0..n).map(|i| format!("i-{i:05}")).collect();
        store.remove_nodes(&all_ids).await.unwrap();
        assert_eq!(store.node_tables().await.unwrap(), NodeTables::default());
        store.ping().await.unwrap();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn heartbeat_rows_are_compact_and_json_rows_of_earlier_builds_still_read() {
    tokio::time::timeout(TEST_LIMIT, async {
        let server = TestRedis::start(&generate_password()).await;
        let store = RedisStore::connect(config(&server, &EncryptionKey::generate()))
            .await
            .unwrap();
        let mut raw = server.raw().await;

        // The stored row is the compact format, not JSON.
        let new = suite::heartbeat(1, 100.0);
        store.put_heartbeat(&new).await.unwrap();
        let stored: Vec<u8> = raw.hget(HEARTBEATS, &new.node_id).await.unwrap();
        assert_eq!(stored[0], 0xC1);
        assert!(stored.len() < 100, "{} bytes", stored.len());

        // A JSON row, as earlier builds wrote it, is read by both batch reads.
        let old = suite::heartbeat(2, 90.0);
        let _: () = raw
            .hset(HEARTBEATS, &old.node_id, serde_json::to_vec(&old).unwrap())
            .await
            .unwrap();
        let all = store.all_heartbeats().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&new.node_id], new);
        assert_eq!(all[&old.node_id], old);
        let some = store
            .heartbeats(&[old.node_id.clone(), new.node_id.clone()])
            .await
            .unwrap();
        assert_eq!(some, all);

        // A damaged row fails the reads as Unexpected; it does not vanish silently.
        let mut cut = stored.clone();
        cut.truncate(stored.len() - 1);
        let _: () = raw.hset(HEARTBEATS, "i-damaged", cut).await.unwrap();
        let e = store.all_heartbeats().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unexpected);
        assert!(e.to_string().contains("cut short"), "{e:#}");
        let e = store.heartbeat("i-damaged").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unexpected);

        // A string the row cannot hold is refused before anything is written.
        let mut huge = suite::heartbeat(3, 100.0);
        huge.node_type = "t".repeat(70_000);
        let e = store.put_heartbeat(&huge).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("node_type"), "{e:#}");
        assert_eq!(store.heartbeat(&huge.node_id).await.unwrap(), None);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn runtime_config_and_secrets_are_encrypted_at_rest_and_need_the_key() {
    tokio::time::timeout(TEST_LIMIT, async {
        let server = TestRedis::start(&generate_password()).await;
        let key = EncryptionKey::generate();
        let store = RedisStore::connect(config(&server, &key)).await.unwrap();
        let conf = serde_json::json!({"spark": {"password": "plain-text-secret-value"}});
        store.set_runtime_config(None, &conf).await.unwrap();
        store.set_runtime_config(Some("worker.cpu"), &conf).await.unwrap();
        store.set_secret("token", b"another-secret-value").await.unwrap();

        let mut raw = server.raw().await;
        for k in [
            RUNTIME_CONFIG.to_string(),
            format!("{RUNTIME_CONFIG}:worker.cpu"),
            format!("{SECRET_PREFIX}token"),
        ] {
            let stored: Vec<u8> = raw.get(&k).await.unwrap();
            assert!(!stored.is_empty(), "{k} is stored");
            assert!(
                !stored.windows(12).any(|w| w == b"secret-value"),
                "{k} is not in plain text"
            );
        }

        // Another key cannot read them, with a clear error.
        let other = RedisStore::connect(config(&server, &EncryptionKey::generate()))
            .await
            .unwrap();
        let err = other.runtime_config(None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(
            err.to_string().contains("wrong cluster encryption key"),
            "{err:#}"
        );
        assert_eq!(
            other.secret("token").await.unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );

        // A sealed value copied under another key does not open.
        let sealed: Vec<u8> = raw.get(RUNTIME_CONFIG).await.unwrap();
        let _: () = raw
            .set(format!("{RUNTIME_CONFIG}:worker.gpu"), sealed)
            .await
            .unwrap();
        let err = store.runtime_config(Some("worker.gpu")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);

        assert_eq!(store.runtime_config(None).await.unwrap(), Some(conf));
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn wrong_or_missing_password_is_unauthenticated_not_a_hang() {
    tokio::time::timeout(TEST_LIMIT, async {
        let server = TestRedis::start("the-right-password").await;
        let key = EncryptionKey::generate();

        let wrong = RedisStoreConfig::new(server.address(), key.clone()).with_password("a-wrong-password");
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(wrong))
            .await
            .expect("a wrong password fails, it does not hang")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err:#}");
        assert!(err.to_string().contains("password"), "{err:#}");
        assert!(
            !err.to_string().contains("a-wrong-password"),
            "the password is not shown: {err:#}"
        );
        eprintln!("wrong password refused after {:?}", started.elapsed());

        let missing = RedisStoreConfig::new(server.address(), key.clone());
        let err = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(missing))
            .await
            .expect("a missing password fails, it does not hang")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err:#}");

        // Nothing listening: a transient error, also without hanging.
        let port = server.port;
        drop(server);
        let gone = RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), key).with_password("x");
        let err = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(gone))
            .await
            .expect("an unreachable server fails, it does not hang")
            .unwrap_err();
        assert!(err.is_retryable(), "{err:#}");
    })
    .await
    .expect("the test finished in time");
}

/// What the writer loop got acknowledged.
#[derive(Debug, Default)]
struct Acked {
    launches: Vec<String>,
    requests: Vec<String>,
    heartbeats: usize,
    errors: usize,
    last_ok: Option<Instant>,
}

#[tokio::test]
async fn redis_stopped_and_restarted_under_load_loses_no_request_or_pending_launch() {
    // Our default config (appendfsync everysec); a supervisor's restart (SIGTERM).
    restart_under_load(AppendFsync::EverySec, false).await;
}

#[tokio::test]
async fn redis_killed_and_restarted_under_load_loses_no_request_or_pending_launch() {
    // SIGKILL: nothing acknowledged may be lost with appendfsync always. (With everysec,
    // Redis may hold acknowledged writes in memory for up to 2 s while a slow fsync
    // runs, so a kill can lose them: see AppendFsync.)
    restart_under_load(AppendFsync::Always, true).await;
}

/// A writer loop runs while redis-server goes away (killed or stopped) and comes back on
/// the same port with the same directory. Writes resume, and every acknowledged pending
/// launch and resource request is still there.
async fn restart_under_load(appendfsync: AppendFsync, kill: bool) {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut server = TestRedis::start_with(&generate_password(), appendfsync).await;
        let store = Arc::new(
            RedisStore::connect(
                config(&server, &EncryptionKey::generate())
                    .with_timeouts(Duration::from_millis(500), Duration::from_secs(1)),
            )
            .await
            .unwrap(),
        );
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

        // The writer: an agent's heartbeat plus a durable write per round; it records what
        // Redis acknowledged and keeps going through errors, as the agent and controller do.
        let writer = {
            let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let token = format!("launch-{i}");
                    let launch = PendingLaunch {
                        node_type: "worker.cpu".into(),
                        count: 1,
                        created_time: unix_now(),
                        fence_token: None,
                    };
                    let request_id = format!("res{i}");
                    let request = ResourceRequest {
                        request_time: unix_now(),
                        requests: vec![[(request_id.clone(), 1.0)].into_iter().collect()],
                        override_all: false,
                    };
                    let hb = suite::heartbeat(i % 10, unix_now());
                    let r1 = store.put_pending_launch(&token, &launch).await;
                    let r2 = store.submit_resource_request(&request).await;
                    let r3 = store.put_heartbeat(&hb).await;
                    {
                        let mut a = acked.lock().unwrap();
                        if r1.is_ok() {
                            a.launches.push(token);
                        }
                        if r2.is_ok() {
                            a.requests.push(request_id);
                        }
                        if r3.is_ok() {
                            a.heartbeats += 1;
                        }
                        if r1.is_ok() && r2.is_ok() && r3.is_ok() {
                            a.last_ok = Some(Instant::now());
                        } else {
                            a.errors += 1;
                            for e in [r1.err(), r2.err(), r3.err()].into_iter().flatten() {
                                assert!(e.is_retryable(), "a restart gives retryable errors only: {e:#}");
                            }
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        let wait_for = |what: &'static str, f: Box<dyn Fn(&Acked) -> bool + Send>| {
            let acked = acked.clone();
            async move {
                loop {
                    if f(&acked.lock().unwrap()) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            .then_timeout(what)
        };

        wait_for("writes before the restart", Box::new(|a| a.launches.len() >= 50)).await;
        if kill {
            server.kill();
        } else {
            server.stop();
        }
        let killed_at = Instant::now();
        wait_for("errors while Redis is down", Box::new(|a| a.errors > 0)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.start_again().await;
        let restarted_at = Instant::now();
        wait_for(
            "writes to resume after the restart",
            Box::new(move |a| a.last_ok.is_some_and(|t| t > restarted_at)),
        )
        .await;
        eprintln!(
            "Redis down for {:?}; writes resumed {:?} after it answered again",
            restarted_at - killed_at,
            acked.lock().unwrap().last_ok.unwrap() - restarted_at
        );
        let before = acked.lock().unwrap().launches.len();
        wait_for(
            "more writes after the restart",
            Box::new(move |a| a.launches.len() >= before + 20),
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();

        let a = std::mem::take(&mut *acked.lock().unwrap());
        let launches = store.pending_launches().await.unwrap();
        let lost_launches: Vec<&String> = a.launches.iter().filter(|t| !launches.contains_key(*t)).collect();
        let requests = store.resource_requests().await.unwrap();
        let lost_requests: Vec<&String> = a.requests.iter().filter(|id| !requests.by_id.contains_key(*id)).collect();
        assert!(
            lost_launches.is_empty() && lost_requests.is_empty(),
            "acknowledged writes were lost: pending launches {lost_launches:?}, resource requests {lost_requests:?} \
             (of {} and {} acknowledged; {} rounds had errors)",
            a.launches.len(),
            a.requests.len(),
            a.errors
        );
        assert!(a.heartbeats > 0);
        assert_eq!(store.all_heartbeats().await.unwrap().len(), 10);
    })
    .await
    .expect("the test finished in time");
}

/// Bounds a wait inside a test with a message naming what was awaited.
trait ThenTimeout: std::future::Future<Output = ()> + Sized {
    async fn then_timeout(self, what: &'static str) {
        if tokio::time::timeout(Duration::from_secs(30), self).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

impl<F: std::future::Future<Output = ()>> ThenTimeout for F {}
