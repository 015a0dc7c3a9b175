//! Container execution mode (`docker.enabled: true` for one worker type) end to end on
//! the AWS cloud twin (`tests/twin/`), on nodes that run their own Docker engine.
//!
//! The head runs in host mode on a stock twin instance (bootstrapped over SSH as in
//! `e2e_aws_twin.rs`). The worker type `worker.default` has
//! `docker: {enabled: true, image: <the node image>, pull_before_run: false}`: on its
//! stock instance the head's controller installs Docker (`docker.io`, a background
//! `dockerd`: the twin has no systemd), runs `docker.worker_initialization_commands` on
//! the host, which load the image from the archive the twin mounts at
//! `/var/lib/twin-images` (no registry is reachable: it stands in for the registry a
//! real node pulls from), starts the container, bootstraps `cloudtik-node` in it and
//! starts the agent there. Checked: the worker heartbeats; `exec --node-ip` runs in the
//! container (its pid 1 is Docker's init, its cgroup under the instance engine's
//! `cgroup-parent`); `rsync-up`/`rsync-down` reach the container's filesystem and not
//! the instance's; a script runs on the worker (`submit` targets the head only: it is
//! submitted there, and the same script is copied to the worker and run with `exec`).
//!
//! Bad input, in the same cluster: the worker type `worker.badimage` names an image its
//! node does not have and cannot pull (`pull_before_run: true`, no load command): its
//! setup fails, and its `last_error` tag and the head's log name the node, the step
//! `start container` and what to do.
//!
//! Then `scale --workers 2` adds a second container worker, and a container worker's
//! instance terminated behind the cluster's back (EC2 `TerminateInstances`) is replaced
//! by another container worker.
//!
//! Then `stop` -> `workspace delete` -> no twin container, network, volume (the nodes'
//! `/var/lib/docker`) or cgroup folder is left.
//!
//! `runtime.types: []`: no runtime, to keep it short. Needs Docker, debootstrap (the twin
//! image) and moto; without them the test fails under `CI=true` and is skipped (saying
//! so) otherwise.
#![cfg(feature = "aws")]

mod twin;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use twin::TWIN_IMAGES_DIR;
use twin::aws::{AwsTwin, AwsTwinOptions};
use twin::cli::{AMI, Cli, aws_provider, live_workers, nodes, shared_package_cache, wait_until};

/// An image no node has and no registry serves.
const MISSING_IMAGE: &str = "cloudtik-twin-missing-image:none";

fn cloudtik_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cloudtik")
}

/// The anonymous volumes of the twin's instance containers.
fn volumes_of(containers: &[String]) -> Vec<String> {
    if containers.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
    ];
    args.extend(containers.iter().map(String::as_str));
    twin::docker(&args)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_mode_workers_on_nodes_with_their_own_docker() {
    let t0 = Instant::now();
    let Some(node_image) = twin::required(
        "the node image (scripts/build-node-image.sh)",
        twin::ensure_node_image(),
    ) else {
        return;
    };
    let archives = cloudtik_dir().join("twin-images");
    let archive = twin::save_image_archive(&node_image, &archives).expect("docker save of the node image");
    eprintln!(
        "TIMING node image archive {archive}: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let options = AwsTwinOptions {
        package_cache: Some(shared_package_cache()),
        node_engine: true,
        image_archives: Some(archives),
        ..AwsTwinOptions::default()
    };
    let Some(twin) = AwsTwin::start(None, options).await else {
        return;
    };
    let network = twin.host().network().name().to_string();
    let working_vpc = twin.create_working_vpc().await;
    let cli = Cli::new(twin.endpoint_url());
    let id = std::process::id() % 100_000;
    let ws = format!("twin-dind-ws-{id}");
    let provider = aws_provider(twin.endpoint_url(), &working_vpc);
    let ws_file = cli.file("workspace.yaml", &format!("workspace_name: {ws}\n{provider}"));
    let load = format!(
        "sudo docker image inspect {node_image} >/dev/null 2>&1 || sudo docker load -i {TWIN_IMAGES_DIR}/{archive}"
    );
    let cluster_file = cli.file(
        "cluster.yaml",
        &format!(
            "cluster_name: dind{id}\nworkspace_name: {ws}\n{provider}auth:\n  ssh_user: ubuntu\n\
             max_workers: 4\nidle_timeout_minutes: 10\nhead_node_type: head.default\n\
             available_node_types:\n  head.default:\n    node_config: {{InstanceType: t3.large, ImageId: {AMI}}}\n\
             \x20 worker.default:\n    min_workers: 1\n    max_workers: 2\n    node_config: {{InstanceType: t3.large, ImageId: {AMI}}}\n\
             \x20   docker:\n      enabled: true\n      image: {node_image}\n      pull_before_run: false\n\
             \x20     worker_initialization_commands:\n        - \"{load}\"\n\
             \x20 worker.badimage:\n    min_workers: 1\n    max_workers: 1\n    node_config: {{InstanceType: t3.large, ImageId: {AMI}}}\n\
             \x20   docker:\n      enabled: true\n      image: {MISSING_IMAGE}\n      pull_before_run: true\n\
             runtime:\n  types: []\n"
        ),
    );
    let ws_path = ws_file.to_str().unwrap();
    let file = cluster_file.to_str().unwrap();

    cli.run_ok(&["workspace", "create", ws_path, "--yes"]);
    let (code, out, err) = cli.run(&["start", file, "--yes"]);
    if code != 0 {
        let (_, log, log_err) = cli.run(&["exec", file, "tail -n 80 ~/cloudtik/logs/*.log; ps -ef"]);
        panic!(
            "start failed:\n{out}\n{err}\ntwin failures: {:?}\nthe head's logs:\n{log}{log_err}",
            twin.failures()
        );
    }

    // The container worker: Docker on its host, the container, cloudtik-node inside, a heartbeat.
    let (worker_id, worker_ip) = wait_until(
        &cli,
        &cluster_file,
        "the container worker heartbeats",
        Duration::from_secs(600),
        || {
            live_workers(&cli.status(&cluster_file), Some("worker.default"))
                .into_iter()
                .next()
        },
    );
    let twin_container = twin.host().container_name(&worker_id);
    let mut volumes = volumes_of(std::slice::from_ref(&twin_container));
    assert!(
        !volumes.is_empty(),
        "the node-engine instance has its /var/lib/docker volume"
    );

    // exec --node-ip runs in the container.
    let out = cli.run_ok(&[
        "exec",
        file,
        "--node-ip",
        &worker_ip,
        "cat /proc/1/cgroup; echo pid1=$(tr '\\0' ' ' </proc/1/cmdline); hostname; test -f /.dockerenv && echo in-container; \
         command -v cloudtik-node; echo home=$HOME; id -un",
    ]);
    eprintln!("exec on the worker:\n{out}");
    assert!(
        out.contains(&format!("/{twin_container}/")),
        "pid 1's cgroup is under the instance engine's cgroup-parent /{twin_container}: {out}"
    );
    assert!(
        out.contains("pid1=/sbin/docker-init"),
        "pid 1 is the container's init: {out}"
    );
    assert!(
        out.contains("in-container") && out.contains("home=/root"),
        "{out}"
    );
    // The host (the instance) is not in its engine's container: pid 1 is sshd.
    let host_pid1 = twin::docker(&[
        "exec",
        &twin_container,
        "sh",
        "-c",
        "tr '\\0' ' ' </proc/1/cmdline",
    ])
    .unwrap();
    assert!(host_pid1.contains("sshd"), "{host_pid1}");
    let inner = twin::docker(&[
        "exec",
        &twin_container,
        "docker",
        "ps",
        "--format",
        "{{.Names}} {{.Image}}",
    ])
    .unwrap();
    assert!(inner.contains(&format!("cloudtik-node {node_image}")), "{inner}");

    // rsync-up / rsync-down reach the container's filesystem, not the instance's.
    let probe = cli.file("probe.txt", &format!("dind probe {id}\n"));
    cli.run_ok(&[
        "rsync-up",
        file,
        probe.to_str().unwrap(),
        "/root/dind-probe.txt",
        "--node-ip",
        &worker_ip,
    ]);
    let in_container = twin::docker(&[
        "exec",
        &twin_container,
        "docker",
        "exec",
        "cloudtik-node",
        "cat",
        "/root/dind-probe.txt",
    ])
    .expect("the file is in the container");
    assert_eq!(in_container, format!("dind probe {id}\n"));
    assert!(
        twin::docker(&["exec", &twin_container, "test", "-e", "/root/dind-probe.txt"]).is_err(),
        "the file must not be on the instance's own filesystem"
    );
    cli.run_ok(&[
        "exec",
        file,
        "--node-ip",
        &worker_ip,
        "echo from-the-container > /root/dind-down.txt",
    ]);
    let down = cli.dir.path().join("down.txt");
    cli.run_ok(&[
        "rsync-down",
        file,
        "/root/dind-down.txt",
        down.to_str().unwrap(),
        "--node-ip",
        &worker_ip,
    ]);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "from-the-container\n");

    // A script: `submit` goes to the head; on the worker it is copied and run with exec.
    let script = cli.file(
        "hello.sh",
        "#!/bin/sh\necho \"hello from $(id -un) pid1=$(tr '\\0' ' ' </proc/1/cmdline)\"\n",
    );
    let out = cli.run_ok(&["submit", file, script.to_str().unwrap()]);
    assert!(
        out.contains("hello from ubuntu") && out.contains("sshd"),
        "submit on the head (host mode): {out}"
    );
    cli.run_ok(&[
        "rsync-up",
        file,
        script.to_str().unwrap(),
        "/tmp/hello.sh",
        "--node-ip",
        &worker_ip,
    ]);
    let out = cli.run_ok(&["exec", file, "--node-ip", &worker_ip, "sh /tmp/hello.sh"]);
    assert!(
        out.contains("hello from root pid1=/sbin/docker-init"),
        "the script on the worker: {out}"
    );

    // Bad input: the image is missing on the node and cannot be pulled.
    let bad = wait_until(
        &cli,
        &cluster_file,
        "the bad-image worker fails naming the node and what to do",
        Duration::from_secs(600),
        || {
            nodes(&cli.status(&cluster_file)).into_iter().find(|n| {
                n["node_type"] == "worker.badimage"
                    && n["status"] == "update-failed"
                    && n["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot start the container"))
            })
        },
    );
    let bad_id = bad["id"].as_str().unwrap().to_string();
    let last_error = bad["last_error"].as_str().unwrap();
    eprintln!("the bad worker's last error: {last_error}");
    assert!(
        last_error.contains(&bad_id)
            && last_error.contains(MISSING_IMAGE)
            && last_error.contains("docker load"),
        "{last_error}"
    );
    let (_, log, _) = cli.run(&[
        "exec",
        file,
        &format!("grep -F 'start container' ~/cloudtik/logs/head.log | grep -F {bad_id} | tail -n 3"),
    ]);
    eprintln!("the head's log on it:\n{log}");
    assert!(
        log.contains(&bad_id) && log.contains("start container") && log.contains("docker load"),
        "the head's log names the node, the step and what to do: {log}"
    );
    // scale: a second container worker.
    cli.run_ok(&["scale", file, "--workers", "2", "--worker-type", "worker.default"]);
    wait_until(
        &cli,
        &cluster_file,
        "two container workers heartbeat",
        Duration::from_secs(600),
        || (live_workers(&cli.status(&cluster_file), Some("worker.default")).len() == 2).then_some(()),
    );
    // A container worker's instance terminated behind the cluster's back is replaced,
    // in container mode again.
    let containers: Vec<String> = twin.instances().into_iter().map(|i| i.container).collect();
    volumes.extend(volumes_of(&containers));
    twin.raw_client()
        .await
        .terminate_instances()
        .instance_ids(&worker_id)
        .send()
        .await
        .expect("TerminateInstances");
    let workers = wait_until(
        &cli,
        &cluster_file,
        "a replacement container worker heartbeats",
        Duration::from_secs(600),
        || {
            let w = live_workers(&cli.status(&cluster_file), Some("worker.default"));
            (w.len() == 2 && w.iter().all(|(i, _)| *i != worker_id)).then_some(w)
        },
    );
    for (_, ip) in &workers {
        let out = cli.run_ok(&[
            "exec",
            file,
            "--node-ip",
            ip,
            "test -f /.dockerenv && echo in-container",
        ]);
        assert!(out.contains("in-container"), "{ip}: {out}");
    }

    let containers: Vec<String> = twin.instances().into_iter().map(|i| i.container).collect();
    volumes.extend(volumes_of(&containers));
    volumes.sort();
    volumes.dedup();

    // stop, then workspace delete: nothing is left.
    cli.run_ok(&["stop", file, "--yes"]);
    wait_until(
        &cli,
        &cluster_file,
        "every instance's container is gone",
        Duration::from_secs(120),
        || twin.instances().is_empty().then_some(()),
    );
    cli.run_ok(&["workspace", "delete", ws_path, "--yes"]);
    assert!(twin.failures().is_empty(), "{:?}", twin.failures());
    twin.cleanup().expect("the twin cleans up");
    let left: Vec<String> = volumes
        .iter()
        .filter(|v| twin::docker(&["volume", "inspect", v.as_str()]).is_ok())
        .cloned()
        .collect();
    assert!(left.is_empty(), "volumes left: {left:?}");
    assert!(
        twin::all_twin_networks().unwrap().iter().all(|n| *n != network),
        "the twin network is left"
    );
    assert!(
        twin::all_twin_containers()
            .unwrap()
            .iter()
            .all(|c| !c.container.starts_with(&network)),
        "twin containers are left"
    );
    let cgroups = twin::leftover_cgroup_folders(&format!("{network}-"));
    assert!(cgroups.is_empty(), "cgroup folders left: {cgroups:?}");
    eprintln!("TIMING whole test: {:.1} s", t0.elapsed().as_secs_f64());
}
