//! The head's services under `cloudtik-node supervise`, with a real redis-server:
//! a head killed with SIGKILL leaves no redis-server behind, a redis-server left on the
//! head's data by an earlier head is stopped before the new head starts its own, the
//! supervisor starts a killed head again (which serves the store again), and stopping
//! the supervisor stops everything.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use cloudtik_core::state::{EncryptionKey, RedisAddress, RedisStore, RedisStoreConfig, StateStore};

const NODE: &str = env!("CARGO_BIN_EXE_cloudtik-node");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "redis-server is not installed");
        eprintln!("skipping: redis-server is not installed");
    }
    found
}

/// Killed (SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, signal);
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

/// Live processes whose command line contains all of `needles`.
fn processes_with(needles: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n)) && alive(*pid)
        })
        .collect()
}

fn redis_servers_on(port: u16) -> Vec<u32> {
    processes_with(&["redis-server", &format!(":{port}")])
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The redis-server pid the head recorded, once it is alive.
fn wait_for_redis(head_dir: &Path, port: u16, not: &[u32], log: &Path) -> u32 {
    let mut pid = 0;
    let what = format!("a new redis-server (log {})", log.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_until(&what, Duration::from_secs(30), || {
        if Instant::now() > deadline {
            panic!(
                "no new redis-server within 20 s; {}:\n{}\nredis.log:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default(),
                std::fs::read_to_string(head_dir.join("redis.log")).unwrap_or_default()
            );
        }
        let s = std::fs::read_to_string(head_dir.join("redis-server.pid")).unwrap_or_default();
        match s.trim().parse::<u32>() {
            Ok(p) if !not.contains(&p) && alive(p) && redis_servers_on(port).contains(&p) => {
                pid = p;
                true
            }
            _ => false,
        }
    });
    pid
}

/// The store answers with the head's password.
fn store_answers(head_dir: &Path, port: u16) -> bool {
    let Ok(password) = std::fs::read_to_string(head_dir.join("redis-password")) else {
        return false;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), EncryptionKey::generate())
        .with_password(password.trim());
    rt.block_on(async {
        match RedisStore::connect(config).await {
            Ok(store) => store.all_heartbeats().await.is_ok(),
            Err(_) => false,
        }
    })
}

fn head_args(head_dir: &Path, boot: &Path) -> Vec<String> {
    [
        NODE,
        "head",
        "--dir",
        head_dir.to_str().unwrap(),
        "--bootstrap-config",
        boot.to_str().unwrap(),
        "--node-id",
        "head-1",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn killed_heads_leave_no_redis_stale_ones_are_stopped_and_the_supervisor_restarts_the_head() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let head_dir = dir.path().join("head");
    let port = free_port();
    let boot = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &boot,
        format!("cluster_name: test\nhead_ip: 127.0.0.1\nredis_port: {port}\nheartbeat_interval_s: 0.5\n"),
    )
    .unwrap();
    let args = head_args(&head_dir, &boot);
    let spawn_head = |log: &str| {
        Proc(
            Command::new(&args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };

    // 1. A head killed with SIGKILL takes its redis-server with it.
    let head = spawn_head("head1.log");
    let redis1 = wait_for_redis(&head_dir, port, &[], &dir.path().join("head1.log"));
    signal(head.0.id(), rustix::process::Signal::KILL);
    wait_until(
        "the killed head's redis-server to exit",
        Duration::from_secs(15),
        || !alive(redis1),
    );
    drop(head);

    // 2. A redis-server left on the head's data (as by a head killed on a system
    //    without setpriv) is stopped by the next head, which serves the store itself.
    let orphan = Proc(
        Command::new("redis-server")
            .arg(head_dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let orphan_pid = orphan.0.id();
    wait_until(
        "the stale redis-server to listen",
        Duration::from_secs(10),
        || redis_servers_on(port).contains(&orphan_pid),
    );
    let head = spawn_head("head2.log");
    let redis2 = wait_for_redis(
        &head_dir,
        port,
        &[redis1, orphan_pid],
        &dir.path().join("head2.log"),
    );
    let log2 = std::fs::read_to_string(dir.path().join("head2.log")).unwrap();
    assert!(log2.contains("of a previous head"), "{log2}");
    // The orphan exited (a zombie of this test until dropped).
    assert_eq!(redis_servers_on(port), vec![redis2]);
    wait_until("the store to answer", Duration::from_secs(20), || {
        store_answers(&head_dir, port)
    });
    signal(head.0.id(), rustix::process::Signal::TERM);
    wait_until("the head to stop", Duration::from_secs(20), || {
        !alive(head.0.id())
    });
    drop(head);
    drop(orphan);
    assert!(redis_servers_on(port).is_empty());

    // 3. Under `cloudtik-node supervise`: a head killed with SIGKILL is started again
    //    (and its redis-server with it) with no command; SIGTERM to the supervisor
    //    stops everything and nothing starts again.
    let service_file = dir.path().join("services/head.json");
    let log = dir.path().join("logs/head.log");
    let mut sv_args = vec![
        "supervise".to_string(),
        "--service-file".into(),
        service_file.to_str().unwrap().into(),
        "--log-file".into(),
        log.to_str().unwrap().into(),
        "--".into(),
    ];
    sv_args.extend(args.iter().cloned());
    let supervisor = Proc(
        Command::new(NODE)
            .args(&sv_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let redis3 = wait_for_redis(&head_dir, port, &[redis1, redis2], &log);
    // The head's own process (the supervisor's command line names it too).
    let head_pids = || {
        processes_with(&[head_dir.to_str().unwrap()])
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(&format!("{NODE}\0head\0")))
            })
            .collect::<Vec<_>>()
    };
    let heads = head_pids();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let killed_at = Instant::now();
    signal(heads[0], rustix::process::Signal::KILL);
    let redis4 = wait_for_redis(&head_dir, port, &[redis1, redis2, redis3], &log);
    wait_until("the store to answer again", Duration::from_secs(30), || {
        store_answers(&head_dir, port)
    });
    eprintln!(
        "store back {:?} after the SIGKILL of the head",
        killed_at.elapsed()
    );
    assert!(!alive(redis3), "the killed head's redis-server is gone");
    assert_eq!(redis_servers_on(port), vec![redis4]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the service exited; starting it again in 1s"),
        "{text}"
    );
    // The service file keeps the command for the node's init.
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&service_file).unwrap()).unwrap();
    assert_eq!(spec["argv"][1], "head");

    signal(supervisor.0.id(), rustix::process::Signal::TERM);
    wait_until("the supervisor to stop", Duration::from_secs(30), || {
        !alive(supervisor.0.id())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(head_pids().is_empty(), "a head is running after the stop");
    assert!(
        redis_servers_on(port).is_empty(),
        "a redis-server is running after the stop"
    );
    drop(supervisor);
}
