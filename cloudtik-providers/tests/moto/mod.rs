//! The moto harness shared by the AWS test files: a venv with `moto[server]` (see the
//! docs of `aws_moto.rs`), one `moto_server` per test on a free loopback port, and
//! clients pointed at it.
#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use cloudtik_providers::aws::{AwsSettings, RetryPolicy};

/// Only one test at a time creates the virtual environment.
static VENV_LOCK: Mutex<()> = Mutex::new(());

/// A running moto server, killed on drop.
pub struct Moto {
    child: Child,
    /// The server's endpoint, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOUDTIK_MOTO_VENV") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("cloudtik-moto-venv")
}

pub fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `moto_server` of the venv, creating the venv and installing moto when missing.
pub fn moto_server_binary() -> Result<PathBuf, String> {
    let _guard = VENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = venv_dir();
    let server = venv.join("bin").join("moto_server");
    if server.exists() {
        return Ok(server);
    }
    if !venv.join("bin").join("pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).map_err(|e| {
            format!(
                "creating a Python venv at {} (needs python3 with venv): {e}",
                venv.display()
            )
        })?;
    }
    run(Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", "moto[server]"]))
        .map_err(|e| format!("installing moto[server] into {}: {e}", venv.display()))?;
    if server.exists() {
        Ok(server)
    } else {
        Err(format!(
            "pip installed moto[server] but {} is missing",
            server.display()
        ))
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// True when the server answers an HTTP request on `port`.
pub fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

pub fn start_moto_at(server: &Path) -> Result<Moto, String> {
    let port = free_port();
    let mut child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // AWS's managed IAM policies (the workspace roles attach some) are opt-in.
        .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", server.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("moto_server exited with {status} before answering"));
        }
        if answers(port) {
            return Ok(Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("moto_server did not answer on port {port} within 60 s"))
}

/// A fresh moto server, or `None` (with a message) when moto cannot be set up outside CI.
pub fn start_moto() -> Option<Moto> {
    let started = moto_server_binary().and_then(|server| start_moto_at(&server));
    match started {
        Ok(moto) => Some(moto),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("moto is required when CI=true: {e}")
        }
        Err(e) => {
            eprintln!("skipping: moto is not available: {e}");
            None
        }
    }
}

pub async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .endpoint_url(url)
        .load()
        .await
}

pub fn settings(url: &str) -> AwsSettings {
    AwsSettings::new("us-east-1").with_endpoint_url(url).with_retry(
        RetryPolicy::default()
            .with_max_retries(3)
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(100)),
    )
}

/// A raw EC2 client on moto, for what the provider does not do.
pub async fn raw_client(moto: &Moto) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(&moto.url).await)
}

/// Records the `Action` and the body of every EC2 request.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<(String, String)>>>);

impl CallLog {
    pub fn count(&self, action: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(a, _)| a == action).count()
    }

    /// The bodies of the requests of `action`, URL-decoded.
    pub fn bodies(&self, action: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, b)| b.replace("%2F", "/").replace("%3A", ":"))
            .collect()
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let body = String::from_utf8_lossy(body);
        if let Some(action) = body.split('&').find_map(|kv| kv.strip_prefix("Action=")) {
            self.0
                .lock()
                .unwrap()
                .push((action.to_string(), body.to_string()));
        }
        Ok(())
    }
}
