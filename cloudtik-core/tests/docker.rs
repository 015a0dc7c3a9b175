//! DockerRunner against the local Docker engine, with an image built locally.

use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::command::{
    CommandRunner, CommandRunnerExt, CommandSpec, ContainerSpec, ContainerStart, DockerRunner, LocalRunner,
    RunEnv, SyncOptions,
};
use cloudtik_core::node::tags;
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::testing::docker::{IMAGE_MARKER, TestImage, docker_available};
use cloudtik_core::updater::{
    NodeBinary, NodeBootstrap, NodeRunners, NodeUpdater, UpdatePlan, UpdaterOptions,
};
use cloudtik_core::{LaunchRequest, NodeInfo, NodeProvider, NodeProviderExt, NodeStatus, Tags};

fn spec(image: &TestImage, suffix: &str, staging: &std::path::Path) -> ContainerSpec {
    ContainerSpec::new(image.container_name(suffix), image.name())
        .with_pull_before_run(false)
        .with_capabilities(["NET_ADMIN"])
        .with_stop_timeout(Duration::from_secs(1))
        .with_staging_dir(staging.display().to_string())
}

fn docker_output(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn runs_commands_in_the_container_syncs_files_and_restarts_on_changes() {
    if !docker_available() {
        return;
    }
    let image = TestImage::build("ctk-test-runner").expect("build the test image");
    let dir = tempfile::tempdir().unwrap();
    let host: Arc<dyn CommandRunner> = Arc::new(LocalRunner::new());
    let runner = DockerRunner::new(host.clone(), spec(&image, "a", &dir.path().join("staging")));

    assert!(!runner.container_running().await.unwrap());
    assert_eq!(runner.start_container().await.unwrap(), ContainerStart::Started);
    assert_eq!(
        runner.start_container().await.unwrap(),
        ContainerStart::AlreadyRunning
    );
    let caps = docker_output(&["inspect", "-f", "{{.HostConfig.CapAdd}}", &runner.spec().name]);
    assert!(caps.contains("NET_ADMIN"), "{caps}");

    // The image has a marker file; the host has none.
    let probe = format!("if test -e {IMAGE_MARKER}; then echo container; else echo host; fi");
    let probe = probe.as_str();
    assert_eq!(runner.run_output(probe).await.unwrap(), "container\n");
    let on_host = runner
        .run_checked(&CommandSpec::new(probe).run_env(RunEnv::Host))
        .await
        .unwrap();
    assert_eq!(on_host.stdout, "host\n");
    // run_env auto sends `docker ...` to the host.
    let ps = runner
        .run_output("docker ps --format '{{.Names}}'")
        .await
        .unwrap();
    assert!(ps.contains(&runner.spec().name), "{ps}");

    // Environment variables reach the container; secrets stay masked; exit codes pass through.
    let out = runner
        .run(
            &CommandSpec::new("echo \"$GREETING from $HOME\"; echo \"$DB_PASSWORD\" >&2; exit 4")
                .env("GREETING", "hello")
                .env("DB_PASSWORD", "hunter2"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(4));
    assert_eq!(out.stdout, "hello from /root\n");
    assert_eq!(out.stderr, "******\n");

    // Files in and out, with excludes, `~` being the container's home.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "A").unwrap();
    std::fs::write(src.join("sub/b.txt"), "B").unwrap();
    std::fs::write(src.join("skip.log"), "no").unwrap();
    runner
        .upload(&src, "~/data", &SyncOptions::default().with_exclude(["*.log"]))
        .await
        .unwrap();
    assert_eq!(
        runner
            .run_output("cat /root/data/a.txt /root/data/sub/b.txt")
            .await
            .unwrap(),
        "AB"
    );
    assert!(
        !runner
            .run(&CommandSpec::new("cat /root/data/skip.log"))
            .await
            .unwrap()
            .success()
    );
    runner
        .upload(&src.join("a.txt"), "/opt/app/conf/a.txt", &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(runner.run_output("cat /opt/app/conf/a.txt").await.unwrap(), "A");
    let back = dir.path().join("back");
    runner
        .download("~/data", &back, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(back.join("sub/b.txt")).unwrap(), "B");
    assert!(!back.join("skip.log").exists());
    let one = dir.path().join("one/a.txt");
    runner
        .download("/opt/app/conf/a.txt", &one, &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "A");

    // New mounts: the container is replaced, and the mount is there.
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("m.txt"), "mounted").unwrap();
    let runner2 = DockerRunner::new(
        host.clone(),
        spec(&image, "a", &dir.path().join("staging")).with_mount(mount.display().to_string(), "/mnt/m"),
    );
    assert_eq!(
        runner2.start_container().await.unwrap(),
        ContainerStart::Restarted
    );
    assert_eq!(runner2.run_output("cat /mnt/m/m.txt").await.unwrap(), "mounted");
    assert!(
        !runner2
            .run(&CommandSpec::new("cat /root/data/a.txt"))
            .await
            .unwrap()
            .success(),
        "a replaced container starts fresh"
    );

    // A new image (another tag): replaced again.
    let retagged = format!("{}:retagged", image.name().split(':').next().unwrap());
    assert!(
        std::process::Command::new("docker")
            .args(["tag", image.name(), &retagged])
            .status()
            .unwrap()
            .success()
    );
    let mut s3 =
        spec(&image, "a", &dir.path().join("staging")).with_mount(mount.display().to_string(), "/mnt/m");
    s3.image = retagged.clone();
    let runner3 = DockerRunner::new(host.clone(), s3);
    assert_eq!(
        runner3.start_container().await.unwrap(),
        ContainerStart::Restarted
    );
    assert_eq!(
        docker_output(&["inspect", "-f", "{{.Config.Image}}", &runner3.spec().name]),
        retagged
    );

    // Teardown stops (and removes) it; stopping again is fine.
    runner3.stop_container().await.unwrap();
    assert!(!runner3.container_running().await.unwrap());
    runner3.stop_container().await.unwrap();
    assert_eq!(
        docker_output(&["ps", "-aq", "--filter", &format!("name={}", runner3.spec().name)]),
        ""
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_in_the_container_fails() {
    if !docker_available() {
        return;
    }
    let image = TestImage::build("ctk-test-timeout").expect("build the test image");
    let dir = tempfile::tempdir().unwrap();
    let runner = DockerRunner::new(Arc::new(LocalRunner::new()), spec(&image, "t", dir.path()));
    runner.start_container().await.unwrap();
    let err = runner
        .run(&CommandSpec::new("sleep 30").timeout(Some(Duration::from_millis(500))))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cloudtik_core::ErrorKind::Timeout, "{err}");
    runner.stop_container().await.unwrap();
}

#[tokio::test]
async fn the_updater_sets_up_a_container_node_and_notices_a_missing_container() {
    if !docker_available() {
        return;
    }
    let image = TestImage::build("ctk-test-updater").expect("build the test image");
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::new("c1");
    let mut t = Tags::new();
    t.insert(
        tags::NODE_STATUS.into(),
        NodeStatus::Uninitialized.as_str().into(),
    );
    let id = provider
        .create_nodes(&LaunchRequest::new("worker", serde_json::json!({}), t, 1))
        .await
        .unwrap()
        .nodes[0]
        .id
        .clone();

    let host: Arc<dyn CommandRunner> = Arc::new(LocalRunner::new());
    let container = Arc::new(DockerRunner::new(
        host.clone(),
        spec(&image, "node", &dir.path().join("staging")),
    ));
    let (h, c) = (host.clone(), container.clone());
    let factory = move |_: &NodeInfo| Ok(NodeRunners::container(h.clone(), c.clone()));

    let host_marker = dir.path().join("host-init");
    let mount_src = dir.path().join("conf");
    std::fs::create_dir_all(&mount_src).unwrap();
    std::fs::write(mount_src.join("app.conf"), "x=1\n").unwrap();
    // The node program to install in the container (a script standing in for it).
    let program = dir.path().join("fake-node");
    std::fs::write(&program, "#!/bin/sh\necho fake-node 1.0\n").unwrap();
    let plan = UpdatePlan::default()
        .with_bootstrap(NodeBootstrap::new(
            "/usr/local/bin/fake-node",
            NodeBinary::local(&program),
        ))
        .with_initialization_commands([format!("touch {}", host_marker.display())])
        .with_setup_commands(["cat /root/conf/app.conf > /root/setup-ran"])
        .with_start_commands(["echo started >> /root/starts"])
        .with_file_mount("/root/conf", &mount_src)
        .with_hashes("h1", "m1");
    let options = UpdaterOptions::default()
        .with_ssh_wait(Duration::from_secs(30), Duration::from_millis(100))
        .with_retry_interval(Duration::from_millis(10));
    let updater = NodeUpdater::new(Arc::new(provider.clone()), factory, &id, plan, options);

    let outcome = updater.update().await.unwrap();
    assert!(outcome.setup_ran);
    assert!(host_marker.exists(), "initialization commands run on the host");
    assert_eq!(
        container.run_output("cat /root/setup-ran").await.unwrap(),
        "x=1\n"
    );
    let n = provider.node(&id).await.unwrap().unwrap();
    assert_eq!(n.status(), Some(NodeStatus::UpToDate));
    // Container mode: the node program went into the container, not onto the host.
    assert_eq!(
        container.run_output("/usr/local/bin/fake-node").await.unwrap(),
        "fake-node 1.0\n"
    );
    assert!(!std::path::Path::new("/usr/local/bin/fake-node").exists());

    // Hashes match and the container runs: start commands only.
    assert!(!updater.update().await.unwrap().setup_ran);
    assert_eq!(
        container.run_output("cat /root/starts").await.unwrap(),
        "started\nstarted\n"
    );

    // The container is gone (a stopped and resumed node): setup runs again despite the hashes.
    container.stop_container().await.unwrap();
    assert!(updater.update().await.unwrap().setup_ran);
    assert_eq!(
        container.run_output("cat /root/setup-ran").await.unwrap(),
        "x=1\n"
    );
    container.stop_container().await.unwrap();
}
