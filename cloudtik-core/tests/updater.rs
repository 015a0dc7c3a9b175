//! NodeUpdater on the fake provider, with the local runner and with real sshd.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudtik_core::command::{CommandRunner, LocalRunner, SshRunner};
use cloudtik_core::node::tags;
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::testing::sshd::{SshKeyPair, SshdServer, free_port, sshd_available};
use cloudtik_core::updater::{NodeRunners, NodeUpdater, UpdateMode, UpdatePlan, UpdaterOptions};
use cloudtik_core::{ErrorKind, LaunchRequest, NodeInfo, NodeProvider, NodeProviderExt, NodeStatus, Tags};

async fn launch(provider: &FakeProvider) -> String {
    let mut t = Tags::new();
    t.insert(
        tags::NODE_STATUS.into(),
        NodeStatus::Uninitialized.as_str().into(),
    );
    let outcome = provider
        .create_nodes(&LaunchRequest::new("worker.cpu", serde_json::json!({}), t, 1))
        .await
        .unwrap();
    outcome.nodes[0].id.clone()
}

async fn node(provider: &FakeProvider, id: &str) -> NodeInfo {
    provider.node(id).await.unwrap().unwrap()
}

fn local_factory() -> impl Fn(&NodeInfo) -> cloudtik_core::Result<NodeRunners> + Send + Sync + 'static {
    |_: &NodeInfo| Ok(NodeRunners::host(Arc::new(LocalRunner::new())))
}

fn fast() -> UpdaterOptions {
    UpdaterOptions::default()
        .with_ssh_wait(Duration::from_secs(60), Duration::from_millis(200))
        .with_retry_interval(Duration::from_millis(10))
}

/// A plan whose commands append to `<dir>/log`, so tests see what ran and in which order.
fn logging_plan(dir: &std::path::Path) -> UpdatePlan {
    let log = dir.join("log");
    let mounts_src = dir.join("mount-src");
    std::fs::create_dir_all(&mounts_src).unwrap();
    std::fs::write(mounts_src.join("app.conf"), "answer=42\n").unwrap();
    std::fs::write(mounts_src.join("junk.tmp"), "junk").unwrap();
    UpdatePlan::default()
        .with_initialization_commands([format!("echo init >> {}", log.display())])
        .with_setup_commands([format!(
            "cat {}/mounted/app.conf >> {}",
            dir.display(),
            log.display()
        )])
        .with_start_commands([format!("echo \"start $ROLE\" >> {}", log.display())])
        .with_env("ROLE", "worker")
        .with_file_mount(format!("{}/mounted", dir.display()), mounts_src)
        .with_sync_options(cloudtik_core::command::SyncOptions::default().with_exclude(["*.tmp"]))
        .with_hashes("runtime-hash-1", "mounts-hash-1")
}

fn read_log(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn full_update_then_start_only_when_hashes_match() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = logging_plan(dir.path());
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        local_factory(),
        &id,
        plan.clone(),
        fast(),
    );
    let outcome = updater.update().await.unwrap();
    assert!(outcome.setup_ran);
    assert_eq!(outcome.commands_run, 3);
    assert_eq!(read_log(dir.path()), vec!["init", "answer=42", "start worker"]);
    assert!(
        !dir.path().join("mounted/junk.tmp").exists(),
        "excluded file was synced"
    );
    let n = node(&provider, &id).await;
    assert_eq!(n.status(), Some(NodeStatus::UpToDate));
    assert_eq!(n.tag(tags::RUNTIME_CONFIG), Some("runtime-hash-1"));
    assert_eq!(n.tag(tags::FILE_MOUNTS_CONTENTS), Some("mounts-hash-1"));

    // Same hashes: no sync, no setup; start commands run again.
    let outcome = updater.update().await.unwrap();
    assert!(!outcome.setup_ran);
    assert_eq!(outcome.commands_run, 1);
    assert_eq!(
        read_log(dir.path()),
        vec!["init", "answer=42", "start worker", "start worker"]
    );

    // A new runtime hash: setup runs again.
    let plan2 = plan.with_hashes("runtime-hash-2", "mounts-hash-1");
    let updater2 = NodeUpdater::new(Arc::new(provider.clone()), local_factory(), &id, plan2, fast());
    assert!(updater2.update().await.unwrap().setup_ran);
    assert_eq!(
        node(&provider, &id).await.tag(tags::RUNTIME_CONFIG),
        Some("runtime-hash-2")
    );
}

#[tokio::test]
async fn a_failing_setup_command_marks_the_node_update_failed_with_its_stderr() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let dir = tempfile::tempdir().unwrap();
    let tries = dir.path().join("tries");
    let plan = UpdatePlan::default()
        .with_setup_commands([
            "true".to_string(),
            format!(
                "echo try >> {}; echo 'installing...'; echo 'E: disk full on /dev/sda1' >&2; exit 7",
                tries.display()
            ),
        ])
        .with_start_commands([format!("touch {}/started", dir.path().display())])
        .with_hashes("h", "m");
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        local_factory(),
        &id,
        plan,
        fast().with_tries(1, 3, 1),
    );
    let err = updater.update().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommandFailed, "{err}");
    assert_eq!(err.context_value("exit_code"), Some("7"));
    assert_eq!(err.context_value("phase"), Some("setting-up"));
    assert_eq!(err.context_value("node"), Some(id.as_str()));
    assert!(err.context_value("command").unwrap().contains("exit 7"));
    assert!(
        err.context_value("output_tail")
            .unwrap()
            .contains("E: disk full on /dev/sda1"),
        "{err:?}"
    );
    // Retried as configured, and start commands never ran.
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 3);
    assert!(!dir.path().join("started").exists());

    let n = node(&provider, &id).await;
    assert_eq!(n.status(), Some(NodeStatus::UpdateFailed));
    let last = n.tag(tags::LAST_ERROR).unwrap();
    assert!(last.starts_with("setting-up: "), "{last}");
    assert!(last.contains("exited with 7"), "{last}");
    assert!(last.contains("E: disk full on /dev/sda1"), "{last}");
    assert!(last.len() <= cloudtik_core::updater::MAX_LAST_ERROR_LEN);
    // The hashes were not written: the next update sets up again.
    assert_eq!(n.tag(tags::RUNTIME_CONFIG), None);
}

#[tokio::test]
async fn recovery_runs_start_commands_only() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let dir = tempfile::tempdir().unwrap();
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        local_factory(),
        &id,
        logging_plan(dir.path()),
        fast().with_mode(UpdateMode::Recovery),
    );
    let outcome = updater.update().await.unwrap();
    assert!(!outcome.setup_ran);
    assert_eq!(read_log(dir.path()), vec!["start worker"]);
    let n = node(&provider, &id).await;
    assert_eq!(n.status(), Some(NodeStatus::UpToDate));
    assert_eq!(
        n.tag(tags::RUNTIME_CONFIG),
        None,
        "recovery does not claim the setup ran"
    );
}

#[tokio::test]
async fn a_terminated_node_ends_the_update() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let killer = provider.clone();
    let kill_id = id.clone();
    // SSH never answers; the node disappears while the updater waits.
    let factory = move |_: &NodeInfo| {
        if c.fetch_add(1, Ordering::SeqCst) == 1 {
            killer.kill_node(&kill_id);
        }
        Err(cloudtik_core::Error::new(
            ErrorKind::Transient,
            "connection refused",
        ))
    };
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        factory,
        &id,
        UpdatePlan::default(),
        fast(),
    );
    let err = updater.update().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.context_value("phase"), Some("waiting-for-ssh"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn waiting_for_ssh_gives_up_at_the_deadline_with_the_last_error() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let factory = |_: &NodeInfo| -> cloudtik_core::Result<NodeRunners> {
        Err(cloudtik_core::Error::new(
            ErrorKind::Transient,
            "connection refused",
        ))
    };
    let options = fast().with_ssh_wait(Duration::from_millis(300), Duration::from_millis(100));
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        factory,
        &id,
        UpdatePlan::default(),
        options,
    );
    let err = updater.update().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.context_value("last_error")
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!(
        node(&provider, &id).await.status(),
        Some(NodeStatus::UpdateFailed)
    );
}

#[tokio::test]
async fn waits_for_sshd_that_comes_up_late() {
    if !sshd_available() {
        return;
    }
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let key = Arc::new(SshKeyPair::generate().unwrap());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let port = free_port().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));

    let (k, d, a) = (key.clone(), dir.clone(), attempts.clone());
    let factory = move |_: &NodeInfo| -> cloudtik_core::Result<NodeRunners> {
        a.fetch_add(1, Ordering::SeqCst);
        let options =
            cloudtik_core::command::SshOptions::new("root", k.private_key(), d.path().join("known_hosts"))
                .with_port(port)
                .with_control_dir(d.path());
        let runner: Arc<dyn CommandRunner> = Arc::new(SshRunner::new("127.0.0.1", options)?);
        Ok(NodeRunners::host(runner))
    };
    let marker = dir.path().join("started");
    let plan = UpdatePlan::default()
        .with_setup_commands(["uptime"])
        .with_start_commands([format!("touch {}", marker.display())])
        .with_hashes("h", "m");
    let updater = NodeUpdater::new(Arc::new(provider.clone()), factory, &id, plan, fast());
    let task = tokio::spawn(async move { updater.update().await });

    // The node answers only after a few refused tries.
    while attempts.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node(&provider, &id).await.status(),
        Some(NodeStatus::WaitingForSsh)
    );
    let server = SshdServer::builder().port(port).start(&key).unwrap();
    let outcome = task.await.unwrap().unwrap();
    assert!(outcome.setup_ran);
    assert!(marker.exists());
    assert_eq!(node(&provider, &id).await.status(), Some(NodeStatus::UpToDate));
    drop(server);
}

#[tokio::test]
async fn a_command_past_its_timeout_fails_the_update() {
    let provider = FakeProvider::new("c1");
    let id = launch(&provider).await;
    let plan = UpdatePlan::default()
        .with_start_commands(["sleep 30"])
        .with_hashes("h", "m");
    let updater = NodeUpdater::new(
        Arc::new(provider.clone()),
        local_factory(),
        &id,
        plan,
        fast()
            .with_tries(1, 1, 1)
            .with_command_timeout(Some(Duration::from_millis(300))),
    );
    let err = updater.update().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.context_value("phase"), Some("start-commands"));
    let n = node(&provider, &id).await;
    assert_eq!(n.status(), Some(NodeStatus::UpdateFailed));
    assert!(n.tag(tags::LAST_ERROR).unwrap().contains("sleep 30"));
}

#[test]
fn plan_from_config_takes_commands_envs_excludes_and_hashes() {
    let yaml = r#"
cluster_name: demo
workspace_name: ws
provider: {type: local}
auth: {ssh_user: ubuntu}
available_node_types:
  head.default: {node_config: {}}
  worker.default: {node_config: {}, min_workers: 1}
head_node_type: head.default
rsync_exclude: ["*.pyc"]
rsync_filter: [".gitignore"]
initialization_commands: ["echo init"]
setup_commands: ["echo setup"]
worker_setup_commands: ["echo worker-setup"]
start_commands: ["echo start"]
runtime: {envs: {DB_PASSWORD: hunter2, PORT: 8080}}
"#;
    let config = cloudtik_core::config::ConfigLoader::new()
        .load_cluster_str("cluster.yaml", yaml)
        .unwrap();
    let plan = UpdatePlan::from_config(&config, cloudtik_core::NodeKind::Worker, "worker.default").unwrap();
    assert_eq!(plan.initialization_commands, vec!["echo init"]);
    assert_eq!(plan.setup_commands, vec!["echo setup", "echo worker-setup"]);
    assert_eq!(plan.start_commands, vec!["echo start"]);
    assert_eq!(plan.env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(plan.sync_options.exclude, vec!["*.pyc"]);
    assert_eq!(plan.sync_options.filter, vec![".gitignore"]);
    let hashes =
        cloudtik_core::config::runtime_hashes(&config, cloudtik_core::NodeKind::Worker, "worker.default")
            .unwrap();
    assert_eq!(plan.runtime_hash, hashes.runtime_hash);
}
