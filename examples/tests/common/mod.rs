//! The harness of the end-to-end tests (`e2e_virtual`, `e2e_head_recovery`): Docker
//! helpers, the node image, a test's workspace and cluster files, the `cloudtik` runner
//! and waits.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const CLOUDTIK: &str = env!("CARGO_BIN_EXE_cloudtik");

pub(crate) fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

pub(crate) fn docker_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Docker available, or the reason the test cannot run (a failure under CI=true).
pub(crate) fn require_docker() -> bool {
    if docker_ok() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Docker is not running: the end-to-end test needs it (CI=true)");
    }
    eprintln!("SKIPPED: Docker is not running (set CI=true to make this a failure)");
    false
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The node image's name, built when missing.
pub(crate) fn node_image() -> String {
    let script = repo_root().join("scripts/build-node-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-tag")
        .output()
        .expect("the build script runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !docker(&["image", "inspect", &image]).status.success() {
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("the build script runs");
        assert!(status.success(), "building the node image failed");
    }
    image
}

/// A cluster and workspace of this test, with its own state folders.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) workspace: String,
    pub(crate) cluster: String,
}

impl Env {
    pub(crate) fn new(tag: &str) -> Env {
        let id = format!("{tag}{}", std::process::id() % 100_000);
        Env {
            dir: tempfile::tempdir().unwrap(),
            workspace: format!("e2e-ws-{id}"),
            cluster: format!("c{id}"),
        }
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("virtual")
    }

    pub(crate) fn workspace_file(&self) -> PathBuf {
        let p = self.dir.path().join("workspace.yaml");
        std::fs::write(
            &p,
            format!(
                "workspace_name: {}\nprovider:\n  type: virtual\n  state_dir: {}\n",
                self.workspace,
                self.state_dir().display()
            ),
        )
        .unwrap();
        p
    }

    /// A cluster config with `provider_extra` added to the provider section and
    /// `node_config` as the instance type of every node type.
    pub(crate) fn cluster_file(&self, name: &str, provider_extra: &str, instance: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "cluster_name: {cluster}\nworkspace_name: {ws}\nprovider:\n  type: virtual\n  state_dir: {state}\n{provider_extra}\
                 auth:\n  ssh_user: root\nmax_workers: 6\nidle_timeout_minutes: 0.2\n\
                 available_node_types:\n  head.default:\n    node_config:\n      instance_type: {instance}\n\
                 \x20 worker.default:\n    min_workers: 2\n    max_workers: 6\n    node_config:\n      instance_type: {instance}\n\
                 head_node_type: head.default\nsetup_commands:\n  - echo set up > /tmp/setup-ran\n",
                cluster = self.cluster,
                ws = self.workspace,
                state = self.state_dir().display(),
            ),
        )
        .unwrap();
        p
    }

    pub(crate) fn cloudtik(&self) -> Command {
        let mut c = Command::new(CLOUDTIK);
        c.env("CLOUDTIK_HOME", self.dir.path().join("home"))
            .env("CLOUDTIK_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// Runs `cloudtik args...`; returns (exit code, stdout, stderr).
    pub(crate) fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cloudtik().args(args).output().expect("cloudtik runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub(crate) fn run_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "cloudtik {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }

    pub(crate) fn status(&self, file: &Path) -> Value {
        serde_json::from_str(&self.run_ok(&["status", file.to_str().unwrap(), "--json"])).unwrap()
    }

    /// Containers of this test's cluster (running or not).
    pub(crate) fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={}-{}-", self.workspace, self.cluster),
            "--format",
            "{{.Names}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub(crate) fn network_exists(&self) -> bool {
        docker(&["network", "inspect", &format!("cloudtik-{}", self.workspace)])
            .status
            .success()
    }

    /// A cluster config of 1 CPU / 512M nodes on `image`: the head and one worker at
    /// least, `max_workers` at most, no idle removal during a test.
    pub(crate) fn small_cluster_file(&self, name: &str, image: &str, max_workers: u32) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "cluster_name: {cluster}\nworkspace_name: {ws}\nprovider:\n  type: virtual\n  state_dir: {state}\n  image: {image}\n\
                 auth:\n  ssh_user: root\nmax_workers: {max_workers}\nidle_timeout_minutes: 30\n\
                 available_node_types:\n  head.default:\n    node_config:\n      instance_type: {{CPU: 1, memory: 512M}}\n\
                 \x20 worker.default:\n    min_workers: 1\n    max_workers: {max_workers}\n    node_config:\n      instance_type: {{CPU: 1, memory: 512M}}\n\
                 head_node_type: head.default\n",
                cluster = self.cluster,
                ws = self.workspace,
                state = self.state_dir().display(),
            ),
        )
        .unwrap();
        p
    }

    /// After `stop` and `workspace delete`: no network, volume or local process of the
    /// test's cluster is left.
    pub(crate) fn assert_nothing_left(&self) {
        assert!(!self.network_exists());
        let volumes = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=cloudtik-cluster-name={}", self.cluster),
        ]);
        assert!(String::from_utf8_lossy(&volumes.stdout).trim().is_empty());
        let ps = Command::new("pgrep")
            .args(["-f", &self.cluster])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
            "no process of the cluster is left on this machine"
        );
    }

    /// Removes whatever a failed run left (best effort).
    pub(crate) fn cleanup(&self) {
        for c in self.containers() {
            docker(&["rm", "-f", "-v", &c]);
        }
        docker(&["network", "rm", &format!("cloudtik-{}", self.workspace)]);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Up-to-date workers and their ids, from `status --json`.
pub(crate) fn workers(status: &Value) -> Vec<(String, String, Option<f64>)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "worker")
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap_or("-").to_string(),
                n["heartbeat_age_secs"].as_f64(),
            )
        })
        .collect()
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            None => return,
            Some(s) => last = s,
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}
