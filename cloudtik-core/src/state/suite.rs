//! The behavioural test suite every [`StateStore`] passes: async functions taking
//! `&dyn StateStore`, run against the in-memory store and a real redis-server.
//!
//! Each function expects the tables it uses to be empty when it starts and leaves them
//! as it found them, so [`run_all`] can run them one after the other on one fresh store.
//! Stores must be created with an event capacity of [`EVENT_CAPACITY`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::error::ErrorKind;
use crate::node::NodeKind;

/// The event capacity the suite expects.
pub(crate) const EVENT_CAPACITY: usize = 5;

pub(crate) fn heartbeat(i: usize, time: f64) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: format!("i-{i:05}"),
        node_ip: format!("10.0.{}.{}", i / 250, i % 250 + 1),
        node_kind: if i == 0 { NodeKind::Head } else { NodeKind::Worker },
        node_type: if i.is_multiple_of(2) {
            "worker.cpu".into()
        } else {
            "worker.gpu".into()
        },
        seq_id: Some(i as u32 + 1),
        heartbeat_time: time,
        total_resources: Resources::from_pairs([("CPU", 4.0), ("memory", 8.0 * 1024.0 * 1024.0 * 1024.0)]),
        available_resources: Resources::from_pairs([("CPU", (i % 4) as f64)]),
    }
}

pub(crate) fn metrics(i: usize) -> NodeMetrics {
    NodeMetrics {
        time: 1000.0 + i as f64,
        cpu_count: 4.0,
        cpu_percent: 12.5,
        load_avg: [0.5, 0.25, i as f64],
        memory_total: 8 << 30,
        memory_available: 4 << 30,
        disk_total: 100 << 30,
        disk_used: 10 << 30,
        disk_read_bytes_per_sec: 1.0,
        disk_write_bytes_per_sec: 2.0,
        network_recv_bytes_per_sec: 3.0,
        network_sent_bytes_per_sec: 4.5,
    }
}

pub(crate) fn processes(i: usize) -> NodeProcesses {
    let mut p = BTreeMap::new();
    p.insert("cloudtik-node".to_string(), ProcessState::Running);
    p.insert(
        "spark-worker".to_string(),
        if i.is_multiple_of(3) {
            ProcessState::Missing
        } else {
            ProcessState::Sleeping
        },
    );
    NodeProcesses {
        state_time: 1000.0 + i as f64,
        processes: p,
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<NodeId> {
    range.map(|i| format!("i-{i:05}")).collect()
}

/// Heartbeats: upsert, batch reads of all and of some, lost nodes, removal.
pub(crate) async fn heartbeats(store: &dyn StateStore) {
    assert!(store.all_heartbeats().await.unwrap().is_empty());
    for i in 0..50 {
        store.put_heartbeat(&heartbeat(i, 100.0)).await.unwrap();
    }
    // upsert replaces the row
    let mut fresh = heartbeat(7, 200.0);
    fresh.available_resources = Resources::from_pairs([("CPU", 0.5)]);
    store.put_heartbeat(&fresh).await.unwrap();

    let all = store.all_heartbeats().await.unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(all["i-00007"], fresh);
    assert_eq!(all["i-00003"], heartbeat(3, 100.0));
    assert_eq!(all["i-00000"].node_kind, NodeKind::Head);

    let mut wanted = ids(10..20);
    wanted.push("no-such-node".to_string());
    let some = store.heartbeats(&wanted).await.unwrap();
    assert_eq!(some.len(), 10);
    assert_eq!(some["i-00012"], heartbeat(12, 100.0));
    assert!(store.heartbeats(&[]).await.unwrap().is_empty());
    assert_eq!(store.heartbeat("i-00007").await.unwrap(), Some(fresh));
    assert_eq!(store.heartbeat("no-such-node").await.unwrap(), None);

    let lost = store.lost_nodes(150.0, Duration::from_secs(30)).await.unwrap();
    assert_eq!(lost.len(), 49);
    assert!(!lost.contains(&"i-00007".to_string()));

    let mut nameless = heartbeat(1, 1.0);
    nameless.node_id.clear();
    assert_eq!(
        store.put_heartbeat(&nameless).await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        store.put_node_metrics("", &metrics(1)).await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        store
            .put_node_processes("", &processes(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(store.all_heartbeats().await.unwrap().len(), 50);

    store.remove_nodes(&ids(0..50)).await.unwrap();
    store.remove_node("no-such-node").await.unwrap();
    assert!(store.all_heartbeats().await.unwrap().is_empty());
}

/// Every field of a heartbeat row comes back exactly as written, in the batch reads of
/// all and of some: no sequence id, each node kind, no resources, fractional and huge
/// amounts, non-ASCII names, an IPv6 address.
pub(crate) async fn heartbeat_rows_keep_every_field(store: &dyn StateStore) {
    let mut rows = Vec::new();
    for (i, kind) in [NodeKind::Head, NodeKind::Worker, NodeKind::Unmanaged]
        .into_iter()
        .enumerate()
    {
        let mut hb = heartbeat(i, 1_764_000_000.123_456_7 + i as f64);
        hb.node_kind = kind;
        rows.push(hb);
    }
    rows[0].seq_id = None;
    rows[1].total_resources = Resources::new();
    rows[1].available_resources = Resources::new();
    rows[2].node_id = "projects/p/zones/z/instances/ñode-2".into();
    rows[2].node_ip = "fd00::2".into();
    rows[2].node_type = "wörker.gpu".into();
    rows[2].seq_id = Some(u32::MAX);
    rows[2].total_resources = Resources::from_pairs([
        ("CPU", 0.25),
        ("GPU", 8.0),
        ("memory", 1.5e15),
        ("accelerator_type:A100", 1.0),
        ("node:10.0.0.3", 1e-3),
    ]);
    for hb in &rows {
        store.put_heartbeat(hb).await.unwrap();
    }
    let ids: Vec<NodeId> = rows.iter().map(|hb| hb.node_id.clone()).collect();
    let want: BTreeMap<NodeId, NodeHeartbeat> = rows.into_iter().map(|hb| (hb.node_id.clone(), hb)).collect();
    assert_eq!(store.all_heartbeats().await.unwrap(), want);
    assert_eq!(store.heartbeats(&ids).await.unwrap(), want);
    store.remove_nodes(&ids).await.unwrap();
    assert!(store.all_heartbeats().await.unwrap().is_empty());
}

/// Metrics and process health rows, read together with heartbeats; removal of a node
/// removes its rows from every node table.
pub(crate) async fn node_metrics_and_processes(store: &dyn StateStore) {
    for i in 0..20 {
        store.put_heartbeat(&heartbeat(i, 100.0)).await.unwrap();
        store
            .put_node_metrics(&format!("i-{i:05}"), &metrics(i))
            .await
            .unwrap();
        store
            .put_node_processes(&format!("i-{i:05}"), &processes(i))
            .await
            .unwrap();
    }
    let tables = store.node_tables().await.unwrap();
    assert_eq!(tables.heartbeats.len(), 20);
    assert_eq!(tables.metrics.len(), 20);
    assert_eq!(tables.processes.len(), 20);
    assert_eq!(tables.metrics["i-00011"], metrics(11));
    assert_eq!(tables.processes["i-00003"], processes(3));
    assert!(!tables.processes["i-00003"].all_healthy());
    assert!(tables.processes["i-00004"].all_healthy());

    store.remove_nodes(&ids(0..10)).await.unwrap();
    let tables = store.node_tables().await.unwrap();
    assert_eq!(tables.heartbeats.len(), 10);
    assert_eq!(tables.metrics.len(), 10);
    assert_eq!(tables.processes.len(), 10);
    assert!(!tables.metrics.contains_key("i-00001"));
    store.remove_nodes(&ids(10..20)).await.unwrap();
    assert_eq!(store.node_tables().await.unwrap(), NodeTables::default());
}

/// Resource demands: unset, set, replaced.
pub(crate) async fn resource_demands(store: &dyn StateStore) {
    assert_eq!(store.resource_demands().await.unwrap(), None);
    let d1 = ResourceDemands {
        time: 1.0,
        demands: vec![Resources::from_pairs([("CPU", 1.0)]); 3],
    };
    store.set_resource_demands(&d1).await.unwrap();
    assert_eq!(store.resource_demands().await.unwrap(), Some(d1));
    let d2 = ResourceDemands {
        time: 2.0,
        demands: vec![Resources::from_pairs([("GPU", 1.0), ("CPU", 2.0)])],
    };
    store.set_resource_demands(&d2).await.unwrap();
    assert_eq!(store.resource_demands().await.unwrap(), Some(d2));
    store
        .set_resource_demands(&ResourceDemands::default())
        .await
        .unwrap();
}

fn request(time: f64, bundles: &[&[(&str, f64)]], override_all: bool) -> ResourceRequest {
    ResourceRequest {
        request_time: time,
        requests: bundles
            .iter()
            .map(|b| b.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .collect(),
        override_all,
    }
}

/// Resource requests merge by resource id; override replaces all; invalid input is refused.
pub(crate) async fn resource_requests(store: &dyn StateStore) {
    assert!(store.resource_requests().await.unwrap().is_empty());
    store
        .submit_resource_request(&request(1.0, &[&[("CPU", 4.0)], &[("CPU", 4.0)]], false))
        .await
        .unwrap();
    store
        .submit_resource_request(&request(2.0, &[&[("worker.gpu", 2.0)]], false))
        .await
        .unwrap();
    let s = store.resource_requests().await.unwrap();
    assert_eq!(s.request_time, 2.0);
    assert_eq!(s.bundles().len(), 3);

    // same id replaced, other ids kept
    store
        .submit_resource_request(&request(3.0, &[&[("CPU", 8.0)]], false))
        .await
        .unwrap();
    assert_eq!(
        store.requested_bundles().await.unwrap(),
        vec![
            Resources::from_pairs([("CPU", 8.0)]),
            Resources::from_pairs([("worker.gpu", 2.0)])
        ]
    );
    // zero clears the id
    store
        .submit_resource_request(&request(4.0, &[&[("CPU", 0.0)]], false))
        .await
        .unwrap();
    assert_eq!(
        store.requested_bundles().await.unwrap(),
        vec![Resources::from_pairs([("worker.gpu", 2.0)])]
    );
    // override replaces everything
    store
        .submit_resource_request(&request(5.0, &[&[("GPU", 1.0), ("CPU", 2.0)]], true))
        .await
        .unwrap();
    let s = store.resource_requests().await.unwrap();
    assert_eq!(s.request_time, 5.0);
    assert_eq!(s.by_id.keys().collect::<Vec<_>>(), vec!["CPU,GPU"]);

    let err = store
        .submit_resource_request(&request(6.0, &[&[("CPU", -1.0)]], false))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_eq!(store.resource_requests().await.unwrap().request_time, 5.0);

    store.clear_resource_requests().await.unwrap();
    assert!(store.resource_requests().await.unwrap().is_empty());
}

/// Pending launches: put, list, count by type, remove (idempotent).
pub(crate) async fn pending_launches(store: &dyn StateStore) {
    assert!(store.pending_launches().await.unwrap().is_empty());
    let a = PendingLaunch {
        node_type: "worker.cpu".into(),
        count: 3,
        created_time: 10.0,
        fence_token: None,
    };
    let b = PendingLaunch {
        node_type: "worker.gpu".into(),
        count: 1,
        created_time: 11.0,
        fence_token: None,
    };
    let c = PendingLaunch {
        node_type: "worker.cpu".into(),
        count: 2,
        created_time: 12.0,
        fence_token: None,
    };
    store.put_pending_launch("tok-a", &a).await.unwrap();
    store.put_pending_launch("tok-b", &b).await.unwrap();
    store.put_pending_launch("tok-c", &c).await.unwrap();
    let all = store.pending_launches().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["tok-b"], b);
    let counts = store.pending_launch_counts().await.unwrap();
    assert_eq!(counts["worker.cpu"], 5);
    assert_eq!(counts["worker.gpu"], 1);

    store.remove_pending_launch("tok-a").await.unwrap();
    store.remove_pending_launch("tok-a").await.unwrap();
    let all = store.pending_launches().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["tok-b", "tok-c"]);
    store.remove_pending_launch("tok-b").await.unwrap();
    store.remove_pending_launch("tok-c").await.unwrap();
    let err = store.put_pending_launch("", &a).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(store.pending_launches().await.unwrap().is_empty());
}

/// Scaling status: unset, set, replaced.
pub(crate) async fn scaling_status(store: &dyn StateStore) {
    assert_eq!(store.scaling_status().await.unwrap(), None);
    let s1 =
        json!({"time": 1.5, "controller_pid": 42, "cluster_scaler_report": {"active": {"worker.cpu": 2}}});
    store.set_scaling_status(&s1).await.unwrap();
    assert_eq!(store.scaling_status().await.unwrap(), Some(s1));
    let s2 = json!({"time": 2.5});
    store.set_scaling_status(&s2).await.unwrap();
    assert_eq!(store.scaling_status().await.unwrap(), Some(s2));
}

/// Runtime config for all node types and per node type, with fallback; secrets.
pub(crate) async fn runtime_config_and_secrets(store: &dyn StateStore) {
    assert_eq!(store.runtime_config(None).await.unwrap(), None);
    assert_eq!(store.runtime_config_for("worker.cpu").await.unwrap(), None);
    let global = json!({"runtime": {"types": ["spark"]}, "password": "p@ss"});
    let gpu = json!({"runtime": {"types": ["spark", "ray"]}});
    store.set_runtime_config(None, &global).await.unwrap();
    store.set_runtime_config(Some("worker.gpu"), &gpu).await.unwrap();
    assert_eq!(store.runtime_config(None).await.unwrap(), Some(global.clone()));
    assert_eq!(
        store.runtime_config(Some("worker.gpu")).await.unwrap(),
        Some(gpu.clone())
    );
    assert_eq!(store.runtime_config(Some("worker.cpu")).await.unwrap(), None);
    assert_eq!(
        store.runtime_config_for("worker.cpu").await.unwrap(),
        Some(global)
    );
    assert_eq!(store.runtime_config_for("worker.gpu").await.unwrap(), Some(gpu));

    assert_eq!(store.secret("aws").await.unwrap(), None);
    store.set_secret("aws", b"\x00key\xffbytes").await.unwrap();
    assert_eq!(
        store.secret("aws").await.unwrap(),
        Some(b"\x00key\xffbytes".to_vec())
    );
    store.set_secret("aws", b"rotated").await.unwrap();
    assert_eq!(
        store.set_secret("", b"x").await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(store.secret("aws").await.unwrap(), Some(b"rotated".to_vec()));
}

/// Events: newest last, bounded by the capacity.
pub(crate) async fn events(store: &dyn StateStore) {
    assert_eq!(store.event_capacity(), EVENT_CAPACITY);
    assert!(store.events(10).await.unwrap().is_empty());
    let make = |i: usize| ClusterEvent {
        time: i as f64,
        severity: if i.is_multiple_of(2) {
            EventSeverity::Info
        } else {
            EventSeverity::Warning
        },
        source: "controller".into(),
        message: format!("event {i}"),
    };
    for i in 0..3 {
        store.push_event(&make(i)).await.unwrap();
    }
    assert_eq!(store.events(10).await.unwrap(), vec![make(0), make(1), make(2)]);
    assert_eq!(store.events(2).await.unwrap(), vec![make(1), make(2)]);
    assert!(store.events(0).await.unwrap().is_empty());
    for i in 3..9 {
        store.push_event(&make(i)).await.unwrap();
    }
    let kept = store.events(100).await.unwrap();
    assert_eq!(kept, (4..9).map(make).collect::<Vec<_>>());
}

/// Runs every function of the suite on one fresh store.
pub(crate) async fn run_all(store: &dyn StateStore) {
    store.ping().await.unwrap();
    heartbeats(store).await;
    heartbeat_rows_keep_every_field(store).await;
    node_metrics_and_processes(store).await;
    resource_demands(store).await;
    resource_requests(store).await;
    pending_launches(store).await;
    scaling_status(store).await;
    runtime_config_and_secrets(store).await;
    events(store).await;
    leases(store).await;
    fenced_pending_launches(store).await;
}

/// Leases: acquire, held by another, renew, expiry takeover with a larger token, stale
/// renewals and releases refused, release lets another holder in at once.
pub(crate) async fn leases(store: &dyn StateStore) {
    let ttl = Duration::from_secs(30);
    assert_eq!(store.lease("ctl").await.unwrap(), None);

    // A takes it.
    let LeaseAcquire::Acquired(a) = store.try_acquire_lease("ctl", "a", 1000.0, ttl).await.unwrap() else {
        panic!("a free lease is acquired");
    };
    assert_eq!(
        (a.holder.as_str(), a.acquired_at, a.renewed_at, a.expires_at),
        ("a", 1000.0, 1000.0, 1030.0)
    );
    assert!(a.token >= 1);
    assert_eq!(store.lease("ctl").await.unwrap(), Some(a.clone()));
    store.check_fence(&a.fence()).await.unwrap();

    // B is refused while it runs, and told who holds it until when.
    match store.try_acquire_lease("ctl", "b", 1029.5, ttl).await.unwrap() {
        LeaseAcquire::HeldBy(l) => assert_eq!(l, a),
        other => panic!("b must not get a held lease: {other:?}"),
    }
    // A acquiring again renews (same token).
    let LeaseAcquire::Acquired(a2) = store.try_acquire_lease("ctl", "a", 1005.25, ttl).await.unwrap() else {
        panic!("the holder keeps its lease");
    };
    assert_eq!(
        (a2.token, a2.renewed_at, a2.expires_at),
        (a.token, 1005.25, 1035.25)
    );
    // Renewal moves the expiry; B is still refused.
    let r = store.renew_lease(&a.fence(), 1010.5, ttl).await.unwrap().unwrap();
    assert_eq!(
        (r.token, r.acquired_at, r.renewed_at, r.expires_at),
        (a.token, 1000.0, 1010.5, 1040.5)
    );
    assert!(matches!(
        store.try_acquire_lease("ctl", "b", 1040.0, ttl).await.unwrap(),
        LeaseAcquire::HeldBy(_)
    ));

    // It expires: B takes over with a larger token.
    let LeaseAcquire::Acquired(b) = store.try_acquire_lease("ctl", "b", 1040.5, ttl).await.unwrap() else {
        panic!("an expired lease is taken over");
    };
    assert_eq!(b.holder, "b");
    assert!(b.token > a.token, "tokens grow: {} then {}", a.token, b.token);
    // A is fenced: no renewal, no release, no check, no fenced write.
    assert_eq!(store.renew_lease(&a.fence(), 1041.0, ttl).await.unwrap(), None);
    assert!(!store.release_lease(&a.fence()).await.unwrap());
    let err = store.check_fence(&a.fence()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("held by b"), "{err:#}");
    assert_eq!(store.lease("ctl").await.unwrap(), Some(b.clone()));

    // B releases: the lease is free at once, and the next token is larger still, also
    // for the same holder name.
    assert!(store.release_lease(&b.fence()).await.unwrap());
    assert_eq!(store.lease("ctl").await.unwrap(), None);
    assert_eq!(store.renew_lease(&b.fence(), 1042.0, ttl).await.unwrap(), None);
    let LeaseAcquire::Acquired(a3) = store.try_acquire_lease("ctl", "a", 1042.0, ttl).await.unwrap() else {
        panic!("a released lease is free");
    };
    assert!(a3.token > b.token);
    assert!(
        store.check_fence(&a.fence()).await.is_err(),
        "an old token of the same holder is stale"
    );
    // The holder may renew its expired lease while nobody took it.
    let late = store
        .renew_lease(&a3.fence(), 2000.0, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((late.token, late.expires_at), (a3.token, 2030.0));
    // Leases are independent by name.
    assert!(matches!(
        store.try_acquire_lease("other", "b", 2000.0, ttl).await.unwrap(),
        LeaseAcquire::Acquired(_)
    ));
    let other = store.lease("other").await.unwrap().unwrap();
    assert!(store.release_lease(&other.fence()).await.unwrap());
    assert!(store.release_lease(&a3.fence()).await.unwrap());

    // Invalid arguments.
    for (name, holder, ttl) in [("", "a", ttl), ("ctl", "", ttl), ("ctl", "a", Duration::ZERO)] {
        let err = store.try_acquire_lease(name, holder, 1.0, ttl).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    }
    // Fractional times survive the store exactly.
    let LeaseAcquire::Acquired(f) = store
        .try_acquire_lease("ctl", "a", 1_764_590_000.123_456, Duration::from_millis(15_500))
        .await
        .unwrap()
    else {
        panic!("free");
    };
    assert_eq!(store.lease("ctl").await.unwrap(), Some(f.clone()));
    assert_eq!(f.expires_at, 1_764_590_000.123_456 + 15.5);
    assert!(f.valid_locally(1_764_590_000.123_456 + 10.0, Duration::from_secs(5)));
    assert!(!f.valid_locally(1_764_590_000.123_456 + 10.6, Duration::from_secs(5)));
    assert!(store.release_lease(&f.fence()).await.unwrap());
}

/// Fenced launch records: written with a current fence, refused (and not written) with a
/// stale one; the record keeps its fence token.
pub(crate) async fn fenced_pending_launches(store: &dyn StateStore) {
    let ttl = Duration::from_secs(30);
    let LeaseAcquire::Acquired(a) = store.try_acquire_lease("ctl", "a", 100.0, ttl).await.unwrap() else {
        panic!("free");
    };
    let launch = PendingLaunch {
        node_type: "worker.cpu".into(),
        count: 2,
        created_time: 100.0,
        fence_token: Some(a.token),
    };
    store
        .put_pending_launch_fenced(&a.fence(), "tok-a", &launch)
        .await
        .unwrap();
    assert_eq!(store.pending_launches().await.unwrap()["tok-a"], launch);

    let LeaseAcquire::Acquired(b) = store.try_acquire_lease("ctl", "b", 131.0, ttl).await.unwrap() else {
        panic!("expired");
    };
    let err = store
        .put_pending_launch_fenced(&a.fence(), "tok-stale", &launch)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("fenced"), "{err:#}");
    let all = store.pending_launches().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["tok-a"]);
    assert!(
        store
            .put_pending_launch_fenced(&b.fence(), "", &launch)
            .await
            .is_err()
    );

    store.remove_pending_launch("tok-a").await.unwrap();
    assert!(store.release_lease(&b.fence()).await.unwrap());
}
