//! `cloudtik-node` run as on a cluster: `head` starts and supervises a real redis-server,
//! an `agent` process heartbeats into it, and SIGTERM stops both cleanly, leaving no
//! redis-server behind. A wrong password fails at once with a clear message.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cloudtik_core::state::{EncryptionKey, RedisAddress, RedisStore, RedisStoreConfig, StateStore, unix_now};

const NODE: &str = env!("CARGO_BIN_EXE_cloudtik-node");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) on drop if the test fails before it stops it.
struct Proc(Option<Child>);

impl Proc {
    fn start(args: &[&str], log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(NODE)
            .args(args)
            .env_remove("CLOUDTIK_REDIS_PASSWORD")
            .env("CLOUDTIK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cloudtik-node starts");
        Proc(Some(child))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Waits for the exit, for at most `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cloudtik-node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// True while a process with this pid exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids of redis-servers listening on `port` (their title names the port).
fn redis_servers_on(port: u16) -> Vec<u32> {
    let needle = format!(":{port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.contains("redis-server") && cmd.contains(&needle) && alive(*pid)
        })
        .collect()
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls the store until all of `ids` have a heartbeat newer than `after`.
fn wait_for_heartbeats(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    ids: &[&str],
    after: f64,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let rows = rt.block_on(store.all_heartbeats()).unwrap_or_default();
        if ids
            .iter()
            .all(|id| rows.get(*id).is_some_and(|hb| hb.heartbeat_time > after))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh heartbeats of {ids:?} within {limit:?}; rows: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn head_supervises_redis_agent_heartbeats_and_sigterm_stops_both() {
    let dir = tempfile::tempdir().unwrap();
    let head_dir = dir.path().join("head");
    let port = free_port();
    let boot = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &boot,
        format!("cluster_name: test\nhead_ip: 127.0.0.1\nredis_port: {port}\nhead_node_type: head.default\nnode_type: worker.default\nheartbeat_interval_s: 0.5\n"),
    )
    .unwrap();
    let boot_s = boot.to_str().unwrap();
    let mut head = Proc::start(
        &[
            "head",
            "--dir",
            head_dir.to_str().unwrap(),
            "--bootstrap-config",
            boot_s,
            "--node-id",
            "head-1",
        ],
        &dir.path().join("head.log"),
    );
    let password = wait_for_file(&head_dir.join("redis-password"), Duration::from_secs(20));
    assert_eq!(password.len(), 64, "a generated password");
    let redis_pid: u32 = wait_for_file(&head_dir.join("redis-server.pid"), Duration::from_secs(20))
        .parse()
        .unwrap();
    let conf = std::fs::read_to_string(head_dir.join("redis.conf")).unwrap();
    assert!(
        conf.contains("protected-mode yes") && conf.contains("appendonly yes"),
        "{conf}"
    );
    assert!(conf.contains("\nbind 127.0.0.1\n"), "{conf}");

    // The agent reads the address from the bootstrap file and the password from the
    // environment; flags override the file (--node-type).
    let mut agent = {
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(NODE)
            .args([
                "agent",
                "--bootstrap-config",
                boot_s,
                "--node-id",
                "worker-1",
                "--node-type",
                "worker.big",
                "--resources",
                r#"{"GPU": 2}"#,
            ])
            .env("CLOUDTIK_REDIS_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(Some(child))
    };

    let store_config = RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), EncryptionKey::generate())
        .with_password(password.clone());
    // One runtime for the store: its connections live on it.
    let rt = runtime();
    let store = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rt.block_on(RedisStore::connect(store_config.clone())) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "cannot reach the head's redis: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let start = unix_now();
    wait_for_heartbeats(
        &rt,
        &store,
        &["head-1", "worker-1"],
        start,
        Duration::from_secs(20),
    );
    let rows = rt.block_on(store.all_heartbeats()).unwrap();
    let w = &rows["worker-1"];
    assert_eq!(w.node_type, "worker.big");
    assert_eq!(w.total_resources.gpu(), 2.0);
    assert!(w.total_resources.cpu() >= 1.0);
    assert_eq!(rows["head-1"].node_type, "head.default");
    assert_eq!(rows["head-1"].node_kind, cloudtik_core::NodeKind::Head);
    assert_eq!(redis_servers_on(port), vec![redis_pid]);

    // The supervisor restarts a killed redis-server; the agents' heartbeats resume.
    let pid = rustix::process::Pid::from_raw(redis_pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let killed = unix_now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_pid = loop {
        let s = std::fs::read_to_string(head_dir.join("redis-server.pid")).unwrap_or_default();
        if let Ok(p) = s.trim().parse::<u32>()
            && p != redis_pid
            && alive(p)
        {
            break p;
        }
        assert!(Instant::now() < deadline, "redis-server was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_for_heartbeats(
        &rt,
        &store,
        &["head-1", "worker-1"],
        killed,
        Duration::from_secs(30),
    );

    // SIGTERM stops both cleanly; no redis-server is left.
    agent.sigterm();
    head.sigterm();
    let a = agent.wait(Duration::from_secs(15));
    let h = head.wait(Duration::from_secs(30));
    let head_log = std::fs::read_to_string(dir.path().join("head.log")).unwrap_or_default();
    assert!(a.success(), "agent: {a}");
    assert!(h.success(), "head: {h}\n{head_log}");
    assert!(!alive(new_pid), "redis-server {new_pid} outlived the head");
    assert!(redis_servers_on(port).is_empty());
    assert!(head_log.contains("redis-server stopped"), "{head_log}");
    // The agent removed nothing: its rows stay for the controller to age out. The
    // data survive in the append-only file: a new head on the same dir serves them.
    let mut head2 = Proc::start(
        &[
            "head",
            "--dir",
            head_dir.to_str().unwrap(),
            "--bootstrap-config",
            boot_s,
            "--node-id",
            "head-1",
        ],
        &dir.path().join("head2.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        if let Ok(s) = rt.block_on(RedisStore::connect(store_config.clone()))
            && let Ok(rows) = rt.block_on(s.all_heartbeats())
        {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "the second head's redis did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        rows.contains_key("worker-1"),
        "the stopped agent's row is kept: {rows:?}"
    );
    head2.sigterm();
    let h2 = head2.wait(Duration::from_secs(30));
    let log2 = std::fs::read_to_string(dir.path().join("head2.log")).unwrap_or_default();
    assert!(h2.success(), "second head: {h2}\n{log2}");
    assert!(redis_servers_on(port).is_empty());
}

#[test]
fn agent_with_a_wrong_password_fails_fast_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let head_dir = dir.path().join("head");
    let port = free_port();
    let mut head = Proc::start(
        &[
            "head",
            "--dir",
            head_dir.to_str().unwrap(),
            "--redis-port",
            &port.to_string(),
            "--node-id",
            "h",
        ],
        &dir.path().join("head.log"),
    );
    wait_for_file(&head_dir.join("redis-server.pid"), Duration::from_secs(20));
    // Wait until redis answers (the head's agent writes its heartbeat).
    let password = wait_for_file(&head_dir.join("redis-password"), Duration::from_secs(20));
    let config = RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), EncryptionKey::generate())
        .with_password(password);
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(RedisStore::connect(config.clone())).is_err() {
        assert!(Instant::now() < deadline, "the head's redis did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let log = dir.path().join("agent.log");
    let mut agent = Proc::start(
        &[
            "agent",
            "--redis-address",
            &format!("127.0.0.1:{port}"),
            "--redis-password",
            "wrong",
            "--node-id",
            "w",
        ],
        &log,
    );
    let status = agent.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("unauthenticated") && err.contains("password"),
        "{err}"
    );
    assert!(err.contains("--redis-password"), "the hint names the flag: {err}");

    head.sigterm();
    assert!(head.wait(Duration::from_secs(30)).success());
    assert!(redis_servers_on(port).is_empty());
}

/// `cloudtik-node runtime start` of a runtime whose process cannot start (Spark's master
/// on a machine without Spark): the command fails naming the process, the node and the
/// last lines of the process's log; `runtime stop` then stops its supervisor and removes
/// its service file. A runtime name this program lacks is refused with the list it has.
#[test]
fn a_runtime_process_that_does_not_start_is_named_with_its_log() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let config = serde_json::json!({
        "cluster_name": "c",
        "types": ["spark"],
        "sections": {"spark": {"history_server": false, "master_port": free_port(), "master_ui_port": free_port()}},
    })
    .to_string();
    let run = |args: &[&str]| {
        Command::new(NODE)
            .args(args)
            .env("HOME", home_s)
            .env("CLOUDTIK_RUNTIME_CONFIG", &config)
            .env("CLOUDTIK_NODE_IP", "127.0.0.1")
            .env("CLOUDTIK_NODE_BINARY", NODE)
            .output()
            .unwrap()
    };
    let out = run(&["runtime", "start", "spark", "--head", "--ready-timeout", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("runtime spark: process spark-master did not start on node 127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("spark-master.log"), "{err}");
    // The log's last lines are in the message: the supervisor says what failed.
    let log = std::fs::read_to_string(home.path().join("cloudtik/logs/spark-master.log")).unwrap();
    let last = log.lines().last().unwrap_or_default();
    assert!(!last.is_empty() && err.contains(last.trim()), "{err}\n---\n{log}");
    let service = home.path().join("cloudtik/services/spark-master.json");
    assert!(service.exists());

    let out = run(&["runtime", "stop", "spark", "--head"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!service.exists(), "a stopped service does not come back at boot");
    let ps = Command::new("pgrep")
        .args(["-f", &format!("supervise --service-file {}", service.display())])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "the supervisor is stopped"
    );

    let out = run(&["runtime", "install", "hdfs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("runtime `hdfs` is not available") && err.contains("ray, spark"),
        "{err}"
    );
}
