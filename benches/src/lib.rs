//! Shared helpers of the criterion benches.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudtik_core::state::{
    EncryptionKey, RedisAddress, RedisServerConfig, RedisStore, RedisStoreConfig, generate_password,
};

/// A redis-server started by a bench: on a free port, in a temporary directory, with
/// the config `cloudtik-node head` uses. Killed on drop.
#[derive(Debug)]
pub struct BenchRedis {
    /// The TCP port.
    pub port: u16,
    /// The password.
    pub password: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BenchRedis {
    /// Starts redis-server (from `PATH`) and waits until it answers, for at most 20 s.
    pub fn start(rt: &tokio::runtime::Runtime) -> (BenchRedis, RedisStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let password = generate_password();
        let data: PathBuf = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("the data directory");
        let conf = dir.path().join("redis.conf");
        RedisServerConfig::new(port, password.clone(), &data)
            .with_logfile(dir.path().join("redis.log"))
            .write_to(&conf)
            .expect("the redis-server config");
        let child = Command::new("redis-server")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install -y redis-server)");
        let server = BenchRedis {
            port,
            password,
            child,
            _dir: dir,
        };
        let config = RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), EncryptionKey::generate())
            .with_password(server.password.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        let store = loop {
            match rt.block_on(RedisStore::connect(config.clone())) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("redis-server did not come up: {e}"),
            }
        };
        (server, store)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Fields after the name: state is field 3 of stat; utime and stime are 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(11) + ticks(12);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(total as f64 / hz as f64)
}
