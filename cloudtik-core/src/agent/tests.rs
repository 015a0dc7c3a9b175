//! The node agent against the in-memory store with paused time and a fake host tree,
//! and against a real redis-server that is killed and restarted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use async_trait::async_trait;

use super::*;
use crate::state::{
    ClusterEvent, InMemoryStore, PendingLaunch, ProcessState, ResourceDemands, ResourceRequest,
    StandingRequests, StateStoreExt,
};

/// Writes `text` to `root/rel`, creating directories.
fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const NET_HEADER: &str =
    "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n";

/// A fake host: 8 CPUs, 16 GiB, cgroup v2 with this process in `/kubepods/pod1`, where
/// the pod allows 2.5 CPUs and its parent 6 GiB; processes `cloudtik-node` (sleeping),
/// `redis-server` (running) and a zombie `spark-worker`.
fn fake_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut stat = String::from("cpu  1000 0 1000 8000 0 0 0 0 0 0\n");
    for i in 0..8 {
        stat.push_str(&format!("cpu{i} 100 0 100 1000 0 0 0 0 0 0\n"));
    }
    stat.push_str("intr 1 2 3\nctxt 5\n");
    put(r, "proc/stat", &stat);
    put(
        r,
        "proc/meminfo",
        "MemTotal:       16777216 kB\nMemFree:         1000000 kB\nMemAvailable:    8388608 kB\n",
    );
    put(r, "proc/loadavg", "1.50 0.75 0.25 2/300 4242\n");
    put(
        r,
        "proc/diskstats",
        "   8       0 sda 10 0 1000 0 20 0 2000 0 0 0 0\n",
    );
    put(
        r,
        "proc/net/dev",
        &format!(
            "{NET_HEADER}    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 10000 1 0 0 0 0 0 0 20000 1 0 0 0 0 0 0\n"
        ),
    );
    put(r, "proc/self/cgroup", "0::/kubepods/pod1\n");
    put(r, "proc/100/comm", "cloudtik-node\n");
    put(r, "proc/100/stat", "100 (cloudtik-node) S 1 100 100");
    put(r, "proc/200/comm", "redis-server\n");
    put(r, "proc/200/stat", "200 (redis-server) R 1 200 200");
    put(r, "proc/300/comm", "spark-worker\n");
    put(r, "proc/300/stat", "300 (spark-worker) Z 1 300 300");
    put(r, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
    put(r, "sys/fs/cgroup/cpu.max", "max 100000\n");
    put(r, "sys/fs/cgroup/kubepods/cpu.max", "400000 100000\n");
    put(r, "sys/fs/cgroup/kubepods/memory.max", "6442450944\n");
    put(r, "sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000\n");
    put(r, "sys/fs/cgroup/kubepods/pod1/memory.max", "max\n");
    put(r, "sys/fs/cgroup/kubepods/pod1/memory.current", "1073741824\n");
    put(
        r,
        "sys/fs/cgroup/kubepods/pod1/cpu.stat",
        "usage_usec 1000000\nuser_usec 1\n",
    );
    dir
}

fn config(host: &Path) -> AgentConfig {
    let mut c = AgentConfig::new("node-1", "10.0.0.7", NodeKind::Worker, "worker.cpu")
        .with_processes(["spark-worker", "spark-history"]);
    c.host = HostPaths::under(host);
    c.seq_id = Some(3);
    c
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[test]
fn detects_resources_with_cgroup_v2_limits_of_the_cgroup_and_its_ancestors() {
    let host = fake_host();
    let agent = NodeAgent::new(config(host.path()), Arc::new(InMemoryStore::new())).unwrap();
    let d = agent.detected_resources();
    assert_eq!(d.cpus, 2.5);
    assert_eq!(d.memory, 6 * (1 << 30));
    assert!(d.limited_by_cgroup);
    assert_eq!(
        agent.total_resources(),
        &Resources::from_pairs([("CPU", 2.5), ("memory", 6.0 * GIB)])
    );

    // Without limits, the host's 8 CPUs and 16 GiB; config resources replace and add.
    let r = host.path();
    put(r, "sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
    put(r, "sys/fs/cgroup/kubepods/pod1/cpu.max", "max 100000\n");
    put(r, "sys/fs/cgroup/kubepods/memory.max", "max\n");
    let mut c = config(r);
    c.resources = Resources::from_pairs([("GPU", 1.0), ("CPU", 4.0)]);
    let agent = NodeAgent::new(c, Arc::new(InMemoryStore::new())).unwrap();
    assert!(!agent.detected_resources().limited_by_cgroup);
    assert_eq!(agent.detected_resources().cpus, 8.0);
    assert_eq!(
        agent.total_resources(),
        &Resources::from_pairs([("CPU", 4.0), ("GPU", 1.0), ("memory", 16.0 * GIB)])
    );

    // Detection off: exactly the configured resources.
    let mut c = config(r);
    c.detect_resources = false;
    c.resources = Resources::from_pairs([("CPU", 2.0)]);
    let agent = NodeAgent::new(c, Arc::new(InMemoryStore::new())).unwrap();
    assert_eq!(agent.total_resources(), &Resources::from_pairs([("CPU", 2.0)]));
}

#[test]
fn detects_resources_with_cgroup_v1_limits() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, "proc/stat", "cpu  1 1 1 1\ncpu0 1\ncpu1 1\ncpu2 1\ncpu3 1\n");
    put(
        r,
        "proc/meminfo",
        "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
    );
    put(
        r,
        "proc/self/cgroup",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
    );
    put(
        r,
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
        "150000\n",
    );
    put(
        r,
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
        "100000\n",
    );
    put(r, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put(r, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put(
        r,
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
        "2147483648\n",
    );
    // "No limit" in version 1 is a huge number.
    put(
        r,
        "sys/fs/cgroup/memory/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    let mut probe = HostProbe::new(HostPaths::under(r));
    let d = probe.detect_resources();
    assert_eq!((d.cpus, d.memory, d.limited_by_cgroup), (1.5, 2 << 30, true));

    // A missing cgroup tree and a missing /proc: one CPU, no memory, no panic.
    let empty = tempfile::tempdir().unwrap();
    let d = HostProbe::new(HostPaths::under(empty.path())).detect_resources();
    assert_eq!((d.cpus, d.memory, d.limited_by_cgroup), (1.0, 0, false));
}

#[tokio::test(start_paused = true)]
async fn metrics_are_rates_over_the_interval_and_processes_are_found() {
    let host = fake_host();
    let r = host.path();
    let mut probe = HostProbe::new(HostPaths::under(r));
    let detected = probe.detect_resources();
    let mut m = NodeMetrics::default();
    probe.sample_metrics(1000.0, detected, &mut m);
    assert_eq!(m.time, 1000.0);
    assert_eq!(m.cpu_count, 2.5);
    assert_eq!(m.cpu_percent, 0.0, "no rate on the first sample");
    assert_eq!(m.load_avg, [1.5, 0.75, 0.25]);
    assert_eq!(m.memory_total, 6 << 30);
    assert_eq!(m.memory_available, 5 << 30, "the cgroup limit minus its usage");
    assert!(m.disk_total > 0 && m.disk_used <= m.disk_total);

    tokio::time::advance(Duration::from_secs(5)).await;
    // In 5 s the pod used 5 CPU-seconds (of 2.5 CPUs: 40 %), read 5120 bytes, wrote
    // 10240, received 500 and sent 1000 bytes.
    put(r, "sys/fs/cgroup/kubepods/pod1/cpu.stat", "usage_usec 6000000\n");
    put(
        r,
        "proc/diskstats",
        "   8       0 sda 10 0 1010 0 20 0 2020 0 0 0 0\n",
    );
    put(
        r,
        "proc/net/dev",
        &format!(
            "{NET_HEADER}    lo: 999999 1 0 0 0 0 0 0 999999 1 0 0 0 0 0 0\n  eth0: 10500 1 0 0 0 0 0 0 21000 1 0 0 0 0 0 0\n"
        ),
    );
    probe.sample_metrics(1005.0, detected, &mut m);
    assert!((m.cpu_percent - 40.0).abs() < 1e-9, "{}", m.cpu_percent);
    assert_eq!(m.disk_read_bytes_per_sec, 1024.0);
    assert_eq!(m.disk_write_bytes_per_sec, 2048.0);
    assert_eq!(m.network_recv_bytes_per_sec, 100.0);
    assert_eq!(m.network_sent_bytes_per_sec, 200.0);

    // Without a CPU limit, utilisation comes from /proc/stat: 1000 busy of 4000 jiffies.
    let no_limit = tempfile::tempdir().unwrap();
    let n = no_limit.path();
    put(n, "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1\ncpu1 1\n");
    let mut probe = HostProbe::new(HostPaths::under(n));
    let detected = probe.detect_resources();
    probe.sample_metrics(1.0, detected, &mut m);
    put(
        n,
        "proc/stat",
        "cpu  600 0 600 3800 0 0 0 0 0 0\ncpu0 1\ncpu1 1\n",
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    probe.sample_metrics(6.0, detected, &mut m);
    assert_eq!(m.cpu_count, 2.0);
    assert!((m.cpu_percent - 25.0).abs() < 1e-9, "{}", m.cpu_percent);

    let mut probe = HostProbe::new(HostPaths::under(r));
    let names: Vec<String> = ["cloudtik-node", "redis-server", "spark-worker", "spark-history"]
        .map(String::from)
        .to_vec();
    let mut states = BTreeMap::new();
    states.insert("gone-from-the-list".to_string(), ProcessState::Running);
    probe.check_processes(&names, &mut states);
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        [
            ("cloudtik-node".to_string(), ProcessState::Sleeping),
            ("redis-server".to_string(), ProcessState::Running),
            ("spark-history".to_string(), ProcessState::Missing),
            ("spark-worker".to_string(), ProcessState::Zombie),
        ]
    );
}

#[test]
fn long_process_names_match_by_comm_prefix_and_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    // The kernel truncates comm to 15 bytes.
    put(r, "proc/10/comm", "cloudtik-contro\n");
    put(r, "proc/10/cmdline", "/usr/bin/cloudtik-controller\0--x\0");
    put(r, "proc/10/stat", "10 (cloudtik-contro) S 1");
    put(r, "proc/11/comm", "cloudtik-contro\n");
    put(r, "proc/11/cmdline", "/usr/bin/cloudtik-control-other\0");
    put(r, "proc/11/stat", "11 (cloudtik-contro) R 1");
    let mut probe = HostProbe::new(HostPaths::under(r));
    let names = vec![
        "cloudtik-controller".to_string(),
        "cloudtik-control-x".to_string(),
    ];
    let mut states = BTreeMap::new();
    probe.check_processes(&names, &mut states);
    assert_eq!(states["cloudtik-controller"], ProcessState::Sleeping);
    assert_eq!(states["cloudtik-control-x"], ProcessState::Missing);
}

#[test]
fn runtime_processes_match_by_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, "proc/20/comm", "java\n");
    put(
        r,
        "proc/20/cmdline",
        "/usr/bin/java\0-cp\0/x/jars/*\0org.apache.spark.deploy.master.Master\0--host\0h\0",
    );
    put(r, "proc/20/stat", "20 (java) S 1");
    put(r, "proc/21/comm", "java\n");
    put(
        r,
        "proc/21/cmdline",
        "/usr/bin/java\0org.apache.spark.deploy.worker.Worker\0",
    );
    put(r, "proc/21/stat", "21 (java) Z 1");
    let mut probe = HostProbe::new(HostPaths::under(r));
    let patterns = vec![
        (
            "spark-master".to_string(),
            "org.apache.spark.deploy.master.Master".to_string(),
        ),
        (
            "spark-worker".to_string(),
            "org.apache.spark.deploy.worker.Worker".to_string(),
        ),
        (
            "spark-history".to_string(),
            "org.apache.spark.deploy.history.HistoryServer".to_string(),
        ),
    ];
    let mut states = BTreeMap::from([("cloudtik-node".to_string(), ProcessState::Running)]);
    probe.check_command_lines(&patterns, &mut states);
    assert_eq!(states["spark-master"], ProcessState::Sleeping);
    assert_eq!(states["spark-worker"], ProcessState::Zombie);
    assert_eq!(states["spark-history"], ProcessState::Missing);
    // Entries of other checks stay.
    assert_eq!(states["cloudtik-node"], ProcessState::Running);
    // A spec routes to the right check.
    let c = AgentConfig::new("n", "10.0.0.1", NodeKind::Worker, "w").with_process_specs(&[
        crate::runtime::ProcessSpec::command_line(
            "spark-worker",
            "Worker",
            crate::runtime::NodeScope::Workers,
        ),
        crate::runtime::ProcessSpec::named("raylet", crate::runtime::NodeScope::All),
    ]);
    assert_eq!(
        c.command_line_processes,
        vec![("spark-worker".to_string(), "Worker".to_string())]
    );
    assert!(c.processes.contains(&"raylet".to_string()));
}

#[test]
fn invalid_configs_are_refused() {
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let base = AgentConfig::new("n", "1.2.3.4", NodeKind::Head, "head");
    assert!(base.processes.contains(&"redis-server".to_string()));
    let mut c = base.clone();
    c.node_id = " ".into();
    assert_eq!(
        NodeAgent::new(c, store.clone()).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    let mut c = base.clone();
    c.heartbeat_interval = Duration::ZERO;
    assert!(NodeAgent::new(c, store.clone()).is_err());
    let mut c = base.clone();
    c.node_type = String::new();
    assert!(NodeAgent::new(c, store.clone()).is_err());
    let mut c = base;
    c.resources = Resources::from_pairs([("CPU", f64::NAN)]);
    assert!(NodeAgent::new(c, store).is_err());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_every_interval_reports_every_few_seconds_and_stops_cleanly() {
    let host = fake_host();
    let store = Arc::new(InMemoryStore::new());
    let mut c = config(host.path());
    c.heartbeat_interval = Duration::from_secs(1);
    c.report_interval = Duration::from_secs(5);
    let agent = NodeAgent::new(c, store.clone()).unwrap();
    let available = agent.available_resources();
    let stats = agent.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    // Ticks at 0, 1, ..., 10 s: 11 heartbeats; reports at 0, 5 and 10 s.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(stats.heartbeats(), 11);
    assert_eq!(stats.reports(), 3);
    assert_eq!((stats.heartbeat_failures(), stats.failure_streaks()), (0, 0));

    let hb = store.heartbeat("node-1").await.unwrap().expect("a heartbeat row");
    assert_eq!(hb.node_ip, "10.0.0.7");
    assert_eq!(hb.node_kind, NodeKind::Worker);
    assert_eq!(hb.node_type, "worker.cpu");
    assert_eq!(hb.seq_id, Some(3));
    assert!(hb.heartbeat_time > 0.0);
    assert_eq!(
        hb.total_resources,
        Resources::from_pairs([("CPU", 2.5), ("memory", 6.0 * GIB)])
    );
    assert_eq!(hb.available_resources, hb.total_resources);

    let tables = store.node_tables().await.unwrap();
    let m = &tables.metrics["node-1"];
    assert_eq!(m.cpu_count, 2.5);
    assert_eq!(m.load_avg, [1.5, 0.75, 0.25]);
    let p = &tables.processes["node-1"];
    assert_eq!(p.processes["cloudtik-node"], ProcessState::Sleeping);
    assert_eq!(p.processes["spark-worker"], ProcessState::Zombie);
    assert_eq!(p.processes["spark-history"], ProcessState::Missing);
    assert!(!p.all_healthy());

    // Available resources set by the embedding program show in the next heartbeat.
    available.set(Resources::from_pairs([("CPU", 1.0)]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hb = store.heartbeat("node-1").await.unwrap().unwrap();
    assert_eq!(hb.available_resources, Resources::from_pairs([("CPU", 1.0)]));
    available.clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hb = store.heartbeat("node-1").await.unwrap().unwrap();
    assert_eq!(hb.available_resources, hb.total_resources);

    // Shutdown: the agent returns and leaves its rows for the controller to age out.
    stop.send(()).unwrap();
    let final_stats = task.await.unwrap();
    assert_eq!(final_stats.heartbeats(), 13);
    let tables = store.node_tables().await.unwrap();
    assert!(tables.heartbeats.contains_key("node-1"));
    assert!(tables.metrics.contains_key("node-1"));
    assert!(tables.processes.contains_key("node-1"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stats.heartbeats(), 13, "nothing runs after shutdown");
}

/// An in-memory store whose node-table writes fail while `failing` is set.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: InMemoryStore,
    failing: AtomicBool,
    attempts: AtomicU64,
}

impl FlakyStore {
    fn check(&self) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            Err(Error::new(ErrorKind::Transient, "cannot reach Redis (test)"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl StateStore for FlakyStore {
    async fn ping(&self) -> Result<()> {
        self.check()
    }
    fn event_capacity(&self) -> usize {
        self.inner.event_capacity()
    }
    async fn put_heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<()> {
        self.check()?;
        self.inner.put_heartbeat(heartbeat).await
    }
    async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        self.inner.heartbeats(ids).await
    }
    async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
        self.inner.all_heartbeats().await
    }
    async fn put_node_metrics(&self, node_id: &str, metrics: &NodeMetrics) -> Result<()> {
        self.check()?;
        self.inner.put_node_metrics(node_id, metrics).await
    }
    async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>> {
        self.inner.all_node_metrics().await
    }
    async fn put_node_processes(&self, node_id: &str, processes: &NodeProcesses) -> Result<()> {
        self.check()?;
        self.inner.put_node_processes(node_id, processes).await
    }
    async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>> {
        self.inner.all_node_processes().await
    }
    async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()> {
        self.inner.remove_nodes(ids).await
    }
    async fn set_resource_demands(&self, demands: &ResourceDemands) -> Result<()> {
        self.inner.set_resource_demands(demands).await
    }
    async fn resource_demands(&self) -> Result<Option<ResourceDemands>> {
        self.inner.resource_demands().await
    }
    async fn submit_resource_request(&self, request: &ResourceRequest) -> Result<()> {
        self.inner.submit_resource_request(request).await
    }
    async fn resource_requests(&self) -> Result<StandingRequests> {
        self.inner.resource_requests().await
    }
    async fn put_pending_launch(&self, token: &str, launch: &PendingLaunch) -> Result<()> {
        self.inner.put_pending_launch(token, launch).await
    }
    async fn remove_pending_launch(&self, token: &str) -> Result<()> {
        self.inner.remove_pending_launch(token).await
    }
    async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>> {
        self.inner.pending_launches().await
    }
    async fn set_scaling_status(&self, status: &serde_json::Value) -> Result<()> {
        self.inner.set_scaling_status(status).await
    }
    async fn scaling_status(&self) -> Result<Option<serde_json::Value>> {
        self.inner.scaling_status().await
    }
    async fn set_runtime_config(&self, node_type: Option<&str>, config: &serde_json::Value) -> Result<()> {
        self.inner.set_runtime_config(node_type, config).await
    }
    async fn runtime_config(&self, node_type: Option<&str>) -> Result<Option<serde_json::Value>> {
        self.inner.runtime_config(node_type).await
    }
    async fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.set_secret(name, value).await
    }
    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.secret(name).await
    }
    async fn push_event(&self, event: &ClusterEvent) -> Result<()> {
        self.inner.push_event(event).await
    }
    async fn events(&self, limit: usize) -> Result<Vec<ClusterEvent>> {
        self.inner.events(limit).await
    }
}

#[tokio::test(start_paused = true)]
async fn store_failures_back_off_count_one_streak_and_heartbeats_resume() {
    let host = fake_host();
    let store = Arc::new(FlakyStore::default());
    let mut c = config(host.path());
    c.report_interval = Duration::from_secs(100);
    c.max_backoff = Duration::from_secs(4);
    let agent = NodeAgent::new(c, store.clone()).unwrap();
    let stats = agent.stats();
    let task = tokio::spawn(agent.run(std::future::pending()));

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(stats.heartbeats(), 3);

    // The store fails for 20 s: heartbeat attempts back off (2 s, 4 s, 4 s, ...), far
    // fewer than the 20 a 1 s rhythm would make, in one streak.
    store.failing.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let failures = stats.heartbeat_failures();
    assert!((4..=8).contains(&failures), "{failures} failed attempts in 20 s");
    assert_eq!(stats.failure_streaks(), 1);
    assert_eq!(stats.heartbeats(), 3);

    // Once the store works, the next attempt (within max_backoff) succeeds and the
    // 1 s rhythm returns.
    store.failing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resumed = stats.heartbeats();
    assert!(resumed >= 4, "heartbeats resumed: {resumed}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(stats.heartbeats(), resumed + 10);
    assert_eq!(stats.failure_streaks(), 1);
    assert!(!task.is_finished());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_write_times_out_and_shutdown_interrupts_it() {
    /// A store whose heartbeat writes never answer.
    #[derive(Debug, Default)]
    struct Hanging(FlakyStore);
    #[async_trait]
    impl StateStore for Hanging {
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
        fn event_capacity(&self) -> usize {
            1
        }
        async fn put_heartbeat(&self, _: &NodeHeartbeat) -> Result<()> {
            self.0.attempts.fetch_add(1, Ordering::Relaxed);
            std::future::pending().await
        }
        async fn heartbeats(&self, ids: &[NodeId]) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
            self.0.heartbeats(ids).await
        }
        async fn all_heartbeats(&self) -> Result<BTreeMap<NodeId, NodeHeartbeat>> {
            self.0.all_heartbeats().await
        }
        async fn put_node_metrics(&self, id: &str, m: &NodeMetrics) -> Result<()> {
            self.0.put_node_metrics(id, m).await
        }
        async fn all_node_metrics(&self) -> Result<BTreeMap<NodeId, NodeMetrics>> {
            self.0.all_node_metrics().await
        }
        async fn put_node_processes(&self, id: &str, p: &NodeProcesses) -> Result<()> {
            self.0.put_node_processes(id, p).await
        }
        async fn all_node_processes(&self) -> Result<BTreeMap<NodeId, NodeProcesses>> {
            self.0.all_node_processes().await
        }
        async fn remove_nodes(&self, ids: &[NodeId]) -> Result<()> {
            self.0.remove_nodes(ids).await
        }
        async fn set_resource_demands(&self, d: &ResourceDemands) -> Result<()> {
            self.0.set_resource_demands(d).await
        }
        async fn resource_demands(&self) -> Result<Option<ResourceDemands>> {
            self.0.resource_demands().await
        }
        async fn submit_resource_request(&self, r: &ResourceRequest) -> Result<()> {
            self.0.submit_resource_request(r).await
        }
        async fn resource_requests(&self) -> Result<StandingRequests> {
            self.0.resource_requests().await
        }
        async fn put_pending_launch(&self, t: &str, l: &PendingLaunch) -> Result<()> {
            self.0.put_pending_launch(t, l).await
        }
        async fn remove_pending_launch(&self, t: &str) -> Result<()> {
            self.0.remove_pending_launch(t).await
        }
        async fn pending_launches(&self) -> Result<BTreeMap<String, PendingLaunch>> {
            self.0.pending_launches().await
        }
        async fn set_scaling_status(&self, s: &serde_json::Value) -> Result<()> {
            self.0.set_scaling_status(s).await
        }
        async fn scaling_status(&self) -> Result<Option<serde_json::Value>> {
            self.0.scaling_status().await
        }
        async fn set_runtime_config(&self, t: Option<&str>, c: &serde_json::Value) -> Result<()> {
            self.0.set_runtime_config(t, c).await
        }
        async fn runtime_config(&self, t: Option<&str>) -> Result<Option<serde_json::Value>> {
            self.0.runtime_config(t).await
        }
        async fn set_secret(&self, n: &str, v: &[u8]) -> Result<()> {
            self.0.set_secret(n, v).await
        }
        async fn secret(&self, n: &str) -> Result<Option<Vec<u8>>> {
            self.0.secret(n).await
        }
        async fn push_event(&self, e: &ClusterEvent) -> Result<()> {
            self.0.push_event(e).await
        }
        async fn events(&self, l: usize) -> Result<Vec<ClusterEvent>> {
            self.0.events(l).await
        }
    }

    let host = fake_host();
    let store = Arc::new(Hanging::default());
    let mut c = config(host.path());
    c.write_timeout = Duration::from_secs(3);
    c.max_backoff = Duration::from_secs(2);
    let agent = NodeAgent::new(c, store.clone()).unwrap();
    let stats = agent.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    // Each write hangs until its 3 s timeout; the loop goes on.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert!(stats.heartbeat_failures() >= 2, "{}", stats.heartbeat_failures());
    assert_eq!(stats.heartbeats(), 0);
    // Shutdown in the middle of a hanging write returns at once.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_millis(10), task)
        .await
        .expect("the agent stops without waiting for the write")
        .unwrap();
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::state::test_server::TestRedis;
    use crate::state::{EncryptionKey, RedisStore, RedisStoreConfig, generate_password};

    /// Kills redis-server (SIGKILL) under a running agent and starts it again on the
    /// same port: heartbeats resume within a few seconds.
    #[tokio::test]
    async fn heartbeats_resume_after_redis_is_killed_and_restarted() {
        tokio::time::timeout(Duration::from_secs(90), async {
            let host = fake_host();
            let mut server = TestRedis::start(&generate_password()).await;
            let config = RedisStoreConfig::new(server.address(), EncryptionKey::generate())
                .with_password(server.password.clone())
                .with_timeouts(Duration::from_secs(1), Duration::from_secs(2));
            let store = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
            let mut c = config_for(host.path());
            c.max_backoff = Duration::from_secs(2);
            let agent = NodeAgent::new(c, store.clone()).unwrap();
            let stats = agent.stats();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(agent.run(async {
                let _ = stopped.await;
            }));

            let reader = RedisStore::connect(config).await.unwrap();
            wait_for_heartbeat_after(&reader, 0.0, Duration::from_secs(10)).await;

            server.kill();
            // Let the agent notice: at least one failed write.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while stats.heartbeat_failures() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no failure seen while Redis was down"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            server.start_again().await;
            let restarted = unix_now();
            // Generous bound; the agent's max_backoff is 2 s.
            wait_for_heartbeat_after(&reader, restarted, Duration::from_secs(20)).await;
            assert!(stats.failure_streaks() >= 1);

            stop.send(()).unwrap();
            task.await.unwrap();
            // The row is still there after shutdown.
            assert!(reader.heartbeat("node-1").await.unwrap().is_some());
        })
        .await
        .expect("the test finished in time");
    }

    fn config_for(host: &Path) -> AgentConfig {
        config(host)
    }

    /// Polls until node-1's heartbeat time is later than `after`, for at most `limit`.
    async fn wait_for_heartbeat_after(store: &RedisStore, after: f64, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(hb)) = store.heartbeat("node-1").await
                && hb.heartbeat_time > after
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no heartbeat newer than {after} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_wrong_password_is_a_clear_error_not_a_hang() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let server = TestRedis::start(&generate_password()).await;
            let config = RedisStoreConfig::new(server.address(), EncryptionKey::generate())
                .with_password("not-the-password");
            let err = RedisStore::connect(config).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err:#}");
            assert!(err.to_string().contains("password"), "{err:#}");
        })
        .await
        .expect("the connect failed in time");
    }
}
