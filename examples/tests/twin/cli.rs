//! Running the `cloudtik` CLI against a cloud twin: its own state folder, the twin's
//! stand-in credentials, and waits that show the cluster's status and the head's log
//! when they time out.
#![allow(dead_code)] // each test uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CLOUDTIK: &str = env!("CARGO_BIN_EXE_cloudtik");

/// moto's Ubuntu Deep Learning AMI (any AMI moto knows will do: the twin runs its own image).
pub(crate) const AMI: &str = "ami-dca37ea5";

/// The `cloudtik` CLI with its own state folder (`CLOUDTIK_HOME`), for one twin.
pub(crate) struct Cli {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) endpoint: String,
}

impl Cli {
    /// A CLI with a fresh state folder, for the twin at `endpoint`.
    pub(crate) fn new(endpoint: &str) -> Cli {
        // The twin's credentials (moto takes any).
        Cli {
            dir: tempfile::tempdir().unwrap(),
            endpoint: endpoint.to_string(),
        }
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new(CLOUDTIK);
        c.env("CLOUDTIK_HOME", self.dir.path().join("home"))
            .env("CLOUDTIK_LOG", "warn")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> (i32, String, String) {
        let start = Instant::now();
        let out = self.cmd().args(args).output().expect("cloudtik runs");
        if args[0] != "status" {
            eprintln!(
                "TIMING cloudtik {} took {:.1} s",
                args[0],
                start.elapsed().as_secs_f64()
            );
        }
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub(crate) fn run_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "cloudtik {args:?} failed:\n{out}\n{err}");
        out
    }

    pub(crate) fn status(&self, file: &Path) -> Value {
        let out = self.run_ok(&["status", file.to_str().unwrap(), "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    pub(crate) fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Waits for `check` to give a value (every 3 s), printing a `TIMING` line; after
/// `limit` it panics with the cluster's status and the tail of the head's log.
pub(crate) fn wait_until<T>(
    cli: &Cli,
    file: &Path,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            eprintln!("TIMING {what}: {:.1} s", start.elapsed().as_secs_f64());
            return v;
        }
        if start.elapsed() > limit {
            let f = file.to_str().unwrap();
            let (_, status, _) = cli.run(&["status", f]);
            let (_, log, err) = cli.run(&["exec", f, "tail -n 60 ~/cloudtik/logs/head.log"]);
            panic!("timed out after {limit:?} waiting for {what}\nstatus:\n{status}\nhead log:\n{log}{err}");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The provider section of a cluster or workspace on the AWS twin at `endpoint`, in the
/// working VPC `working_vpc` (made by `AwsTwin::create_working_vpc`): only private IPs
/// are reachable from this machine.
pub(crate) fn aws_provider(endpoint: &str, working_vpc: &str) -> String {
    format!(
        "provider:\n  type: aws\n  region: us-east-1\n  endpoint_url: {endpoint}\n  use_internal_ips: true\n  \
         working_vpc_id: {working_vpc}\n"
    )
}

/// The nodes of `status --json`.
pub(crate) fn nodes(status: &Value) -> Vec<Value> {
    status["nodes"].as_array().cloned().unwrap_or_default()
}

/// Workers (of `node_type`, or of every type) up to date with a recent heartbeat: (id, ip).
pub(crate) fn live_workers(status: &Value, node_type: Option<&str>) -> Vec<(String, String)> {
    nodes(status)
        .iter()
        .filter(|n| {
            n["kind"] == "worker"
                && node_type.is_none_or(|t| n["node_type"] == t)
                && n["status"] == "up-to-date"
                && n["heartbeat_age_secs"].as_f64().is_some_and(|a| a < 30.0)
        })
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["internal_ip"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The package cache the end-to-end tests share (`~/.cloudtik/package-cache`, the
/// virtual provider's), for the twin's instances.
pub(crate) fn shared_package_cache() -> super::PackageCache {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    super::PackageCache::new(home.join(".cloudtik/package-cache")).expect("the package cache folder")
}
