//! Helpers of the virtual provider's Docker tests: the docker CLI, the tiny test image,
//! and a per-test workspace that cleans up after itself.
#![allow(dead_code, unreachable_pub)] // each test file uses a part; items are shared with the test files

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use cloudtik_core::node::tags;
use cloudtik_core::provider::new_launch_token;
use cloudtik_core::{DeleteWorkspaceOptions, LaunchRequest, NodeKind, NodeStatus, Tags, WorkspaceProvider};
use cloudtik_providers::virtual_provider::{
    VirtualNodeProvider, VirtualSettings, VirtualWorkspaceProvider, network_name,
};
use serde_json::json;

/// Label on the filler containers of the partial-launch hook.
pub const FILLER_LABEL: &str = "cloudtik-test-filler";

pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI runs")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// True when Docker answers; panics when it does not and `CI=true`.
pub fn docker_reachable() -> bool {
    static REACHABLE: OnceLock<bool> = OnceLock::new();
    let ok = *REACHABLE.get_or_init(|| {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "Docker is not reachable (`docker info` failed) and CI=true: the virtual provider tests need a \
                 running Docker engine; start it (`sudo systemctl start docker` or `sudo dockerd &`)"
            );
        }
        eprintln!(
            "SKIPPED: Docker is not reachable (`docker info` failed); set CI=true to make this a failure"
        );
    }
    ok
}

/// The tiny test image: `/bin/sleep`, its shared libraries and those of this test
/// binary (so the binary can run inside a node when mounted there), command
/// `sleep infinity`. Tagged by a hash of the files, built only when missing.
pub fn test_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let sleep = std::fs::canonicalize("/bin/sleep").expect("/bin/sleep exists");
            let mut files = vec![(sleep.clone(), PathBuf::from("/bin/sleep"))];
            let exe = std::env::current_exe().expect("the test binary's path");
            for binary in [&sleep, &exe] {
                let ldd = Command::new("ldd").arg(binary).output().expect("ldd runs");
                for token in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
                    if token.starts_with('/') && !files.iter().any(|(_, to)| to == Path::new(token)) {
                        files.push((PathBuf::from(token), PathBuf::from(token)));
                    }
                }
            }
            files.sort_by(|a, b| a.1.cmp(&b.1));
            let digest = {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                for (from, to) in &files {
                    h.update(to.to_string_lossy().as_bytes());
                    h.update(
                        std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())),
                    );
                }
                hex::encode(h.finalize())
            };
            let image = format!("cloudtik-test-sleep:{}", &digest[..12]);
            if docker(&["image", "inspect", &image]).status.success() {
                return image;
            }
            let root = tempfile::tempdir().unwrap();
            for (from, to) in &files {
                copy_into(root.path(), from, to);
            }
            let mut tar = Command::new("tar")
                .args(["-C"])
                .arg(root.path())
                .args(["-c", "."])
                .stdout(Stdio::piped())
                .spawn()
                .expect("tar runs");
            let import = Command::new("docker")
                .args([
                    "import",
                    "--change",
                    r#"CMD ["/bin/sleep", "infinity"]"#,
                    "-",
                    &image,
                ])
                .stdin(tar.stdout.take().expect("tar stdout"))
                .output()
                .expect("docker import runs");
            assert!(tar.wait().expect("tar ends").success(), "tar failed");
            assert!(
                import.status.success(),
                "docker import failed: {}",
                String::from_utf8_lossy(&import.stderr)
            );
            image
        })
        .clone()
}

pub fn copy_into(root: &Path, from: &Path, as_path: &Path) {
    let dest = root.join(as_path.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copying {} failed: {e}", from.display()));
}

/// One test's workspace: a unique name, a state folder, settings; cleans up on drop.
pub struct TestEnv {
    pub workspace: String,
    pub state: tempfile::TempDir,
    pub settings: VirtualSettings,
}

impl TestEnv {
    pub fn new() -> Option<TestEnv> {
        Self::with_subnet(None)
    }

    pub fn with_subnet(subnet: Option<String>) -> Option<TestEnv> {
        if !docker_reachable() {
            return None;
        }
        let workspace = format!("vt{}", &new_launch_token()[..8]);
        let state = tempfile::tempdir().unwrap();
        let mut settings = VirtualSettings::default()
            .with_state_dir(state.path())
            .with_image(test_image())
            .with_stop_timeout_seconds(0);
        if let Some(subnet) = subnet {
            settings = settings.with_subnet(subnet);
        }
        Some(TestEnv {
            workspace,
            state,
            settings,
        })
    }

    pub fn workspace(&self) -> VirtualWorkspaceProvider {
        VirtualWorkspaceProvider::new(&self.workspace, self.settings.clone()).unwrap()
    }

    pub fn provider(&self, cluster: &str) -> VirtualNodeProvider {
        VirtualNodeProvider::new(&self.workspace, cluster, self.settings.clone()).unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join(&self.workspace)
    }

    /// Containers of this workspace (nodes and fillers), by the CLI.
    pub fn leftover_containers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for filter in [
            format!("label={}={}", tags::WORKSPACE_NAME, self.workspace),
            format!("label={FILLER_LABEL}={}", self.workspace),
        ] {
            let out = docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
            names.extend(out.lines().map(str::to_string));
        }
        names
    }

    pub fn network_exists(&self) -> bool {
        docker(&["network", "inspect", &network_name(&self.workspace)])
            .status
            .success()
    }

    /// Asserts that no container, network or state folder of the workspace is left.
    pub fn assert_nothing_left(&self) {
        assert_eq!(
            self.leftover_containers(),
            Vec::<String>::new(),
            "containers left"
        );
        assert!(
            !self.network_exists(),
            "network {} left",
            network_name(&self.workspace)
        );
        assert!(
            !self.state_dir().exists(),
            "state folder {} left",
            self.state_dir().display()
        );
    }

    /// Deletes the workspace through the provider and checks nothing is left.
    pub async fn delete_and_check(&self) {
        self.workspace()
            .delete_workspace(DeleteWorkspaceOptions::default())
            .await
            .expect("deleting the workspace");
        self.assert_nothing_left();
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Only matters when a test failed half-way: remove what it left.
        let names = self.leftover_containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(names.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let _ = docker(&["network", "rm", &network_name(&self.workspace)]);
    }
}

pub fn node_config() -> serde_json::Value {
    json!({"instance_type": {"CPU": 0.5, "memory": "64M"}})
}

pub fn request(kind: NodeKind, count: usize, config: serde_json::Value) -> LaunchRequest {
    let mut t = Tags::new();
    t.insert(tags::NODE_KIND.into(), kind.as_str().into());
    t.insert(tags::USER_NODE_TYPE.into(), format!("{kind}.default"));
    t.insert(
        tags::NODE_STATUS.into(),
        NodeStatus::Uninitialized.as_str().into(),
    );
    LaunchRequest::new(format!("{kind}.default"), config, t, count)
}

pub fn container_id(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.Id}}", name])
}

/// A random /29 (5 addresses for containers) in 10.213.0.0/16.
pub fn small_subnet() -> String {
    let token = new_launch_token();
    let a = u8::from_str_radix(&token[..2], 16).unwrap();
    let b = u8::from_str_radix(&token[2..4], 16).unwrap() & 0xf8;
    format!("10.213.{a}.{b}/29")
}
