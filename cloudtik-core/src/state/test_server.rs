//! A real redis-server for tests: found on `PATH`, on a free port, in a temporary
//! directory, configured by [`RedisServerConfig`], killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{AppendFsync, RedisAddress, RedisServerConfig};

/// A redis-server started by a test.
#[derive(Debug)]
pub(crate) struct TestRedis {
    pub(crate) port: u16,
    pub(crate) password: String,
    appendfsync: AppendFsync,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The redis-server binary, or a panic that says how to install it.
fn redis_server_binary() -> PathBuf {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    find_redis_server(std::env::var_os("PATH"), ci).unwrap_or_else(|message| panic!("{message}"))
}

/// Looks for `redis-server` in the directories of `path`; the error says how to get it,
/// and says that CI needs it when `ci` is set.
fn find_redis_server(path: Option<std::ffi::OsString>, ci: bool) -> Result<PathBuf, String> {
    let found = path.and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Ok(p),
        None if ci => Err(
            "redis-server is not on PATH, and CI=true: the state store tests need a real \
             redis-server. Install it in the CI image with `apt-get install -y redis-server`."
                .to_string(),
        ),
        None => Err(
            "redis-server is not on PATH: the state store tests need a real redis-server. \
             Run `apt-get install -y redis-server` (do not start it; the tests start their own)."
                .to_string(),
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

impl TestRedis {
    /// Starts a redis-server with `password` and our default config, and waits until
    /// it answers.
    pub(crate) async fn start(password: &str) -> TestRedis {
        TestRedis::start_with(password, AppendFsync::default()).await
    }

    /// Starts a redis-server with `password` and `appendfsync`, and waits until it answers.
    pub(crate) async fn start_with(password: &str, appendfsync: AppendFsync) -> TestRedis {
        let mut r = TestRedis {
            port: free_port(),
            password: password.to_string(),
            appendfsync,
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
        };
        r.start_again().await;
        r
    }

    /// The server's address.
    pub(crate) fn address(&self) -> RedisAddress {
        RedisAddress::new("127.0.0.1", self.port)
    }

    /// Kills the server at once (SIGKILL): no shutdown, no final fsync.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server the way a supervisor does (SIGTERM): Redis writes and syncs its
    /// append-only file before it exits.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -TERM failed");
            let status = child.wait().expect("redis-server exits");
            assert!(status.success(), "redis-server shut down cleanly: {status}");
        }
    }

    /// Starts the server again on the same port with the same directory (after
    /// [`kill`](Self::kill) or [`stop`](Self::stop)), and waits until it answers, having
    /// loaded its data.
    pub(crate) async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("the data directory");
        let config_path = self.dir.path().join("redis.conf");
        RedisServerConfig::new(self.port, self.password.clone(), &data)
            .with_logfile(self.dir.path().join("redis.log"))
            .with_appendfsync(self.appendfsync)
            .write_to(&config_path)
            .expect("the redis-server config");
        let child = Command::new(redis_server_binary())
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until `AUTH` + `PING` answer `+PONG` (not `-LOADING`), for at most 20 s.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!("redis-server exited with {status}; its log:\n{log}");
            }
            if self.answers_ping().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 20 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()?;
            let pw = &self.password;
            let cmd = format!(
                "*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n*1\r\n$4\r\nPING\r\n",
                pw.len()
            );
            s.write_all(cmd.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            while !(buf.ends_with(b"\r\n") && buf.split(|b| *b == b'\n').count() > 2) {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(buf.ends_with(b"+PONG\r\n"))
        };
        tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// A plain redis client connection to the server, to look at raw keys.
    pub(crate) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            "127.0.0.1".into(),
            self.port,
        ))
        .unwrap()
        .set_redis_settings(redis::RedisConnectionInfo::default().set_password(&self.password));
        redis::Client::open(info)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_redis_server_fails_with_instructions() {
        let empty = tempfile::tempdir().unwrap();
        let path = Some(empty.path().as_os_str().to_owned());
        let ci = find_redis_server(path.clone(), true).unwrap_err();
        assert!(
            ci.contains("CI=true") && ci.contains("apt-get install -y redis-server"),
            "{ci}"
        );
        let local = find_redis_server(path, false).unwrap_err();
        assert!(local.contains("apt-get install -y redis-server"), "{local}");
        assert!(find_redis_server(None, false).is_err());

        let with = tempfile::tempdir().unwrap();
        std::fs::write(with.path().join("redis-server"), b"").unwrap();
        let path = std::env::join_paths([empty.path(), with.path()]).unwrap();
        assert_eq!(
            find_redis_server(Some(path), true).unwrap(),
            with.path().join("redis-server")
        );
    }
}
