//! The main job end to end, with the real `cloudtik` and `cloudtik-node` binaries, the
//! real node image and the local Docker engine: workspace create -> a start killed
//! halfway, then run again -> head + 2 workers up to date and heartbeating -> exec on
//! all nodes -> `scale --workers 4` -> a worker container killed from outside is
//! replaced -> the request dropped and the idle timeout -> back to 2 -> stop ->
//! workspace delete -> nothing of ours left.
//!
//! And bad input, each a clear error with nothing left half-made: a missing image, an
//! instance type larger than the machine, the head's published port in use, Docker not
//! reachable.
//!
//! Needs Docker and the node image (built here with `scripts/build-node-image.sh` when
//! missing, which needs debootstrap). Without Docker the test fails under `CI=true` and
//! says so otherwise.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, docker, node_image, require_docker, wait_until, workers};
use serde_json::Value;

#[test]
fn a_cluster_starts_scales_heals_shrinks_and_leaves_nothing() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("a");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    let file = env.cluster_file(
        "cluster",
        &format!("  image: {image}\n"),
        "{CPU: 1, memory: 512M}",
    );
    let f = file.to_str().unwrap();

    env.run_ok(&["workspace", "create", ws, "--yes"]);
    assert!(env.network_exists());
    // Creating it again is fine.
    env.run_ok(&["workspace", "create", ws, "--yes"]);

    // A start killed halfway: as soon as the head's container exists.
    let mut child = env
        .cloudtik()
        .args(["start", f, "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.containers().is_empty() {
        assert!(Instant::now() < deadline, "no head container within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first_head = env.containers();
    assert_eq!(first_head.len(), 1, "{first_head:?}");

    // Run again: the same head, set up, and two workers from the head's controller.
    env.run_ok(&["start", f, "--yes", "--wait-for-workers", "2", "--timeout", "240"]);
    let status = env.status(&file);
    assert_eq!(status["state"], "running", "{status}");
    let heads: Vec<&Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "head")
        .collect();
    assert_eq!(heads.len(), 1, "exactly one head: {status}");
    assert_eq!(
        heads[0]["id"],
        first_head[0].as_str(),
        "the interrupted start's head was adopted"
    );
    let w = workers(&status);
    assert_eq!(w.len(), 2, "{status}");
    assert!(
        w.iter()
            .all(|(_, s, hb)| s == "up-to-date" && hb.is_some_and(|a| a < 10.0)),
        "workers up to date and heartbeating: {w:?}"
    );

    // exec on every node: each runs as itself (the hostname is the node id).
    let out = env.run_ok(&[
        "exec",
        f,
        "hostname && cat /tmp/setup-ran",
        "--all-nodes",
        "--json",
    ]);
    let results: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(results.len(), 3);
    for r in &results {
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(
            r["stdout"].as_str().unwrap(),
            format!("{}\nset up\n", r["node_id"].as_str().unwrap())
        );
    }
    // A failing command's exit code is the CLI's.
    let (code, _, _) = env.run(&["exec", f, "exit 7"]);
    assert_eq!(code, 7);

    // Detached in tmux and screen sessions.
    env.run_ok(&["exec", f, "echo t > /tmp/tmux-ran", "--tmux"]);
    env.run_ok(&["exec", f, "echo s > /tmp/screen-ran", "--screen"]);
    wait_until(
        "the tmux and screen commands ran",
        Duration::from_secs(20),
        || {
            let (code, out, _) = env.run(&["exec", f, "cat /tmp/tmux-ran /tmp/screen-ran"]);
            (code == 0 && out == "t\ns\n")
                .then_some(())
                .map_or_else(|| Some(out), |_| None)
        },
    );
    // attach: a shell on the head (fed from a pipe here).
    let mut attach = env
        .cloudtik()
        .args(["attach", f])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = attach.stdin.take().unwrap();
        stdin.write_all(b"echo attached-$(hostname)\nexit\n").unwrap();
    }
    let out = attach.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("attached-{}", first_head[0])), "{text}");

    // head-ip, worker-ips, info.
    let head_ip = env.run_ok(&["head-ip", f]).trim().to_string();
    assert_eq!(Some(head_ip.as_str()), heads[0]["internal_ip"].as_str());
    let ips: Vec<String> = serde_json::from_str(&env.run_ok(&["worker-ips", f, "--json"])).unwrap();
    assert_eq!(ips.len(), 2, "{ips:?}");
    let info: Value = serde_json::from_str(&env.run_ok(&["info", f, "--json"])).unwrap();
    assert_eq!(info["workers_ready"], 2, "{info}");
    assert_eq!(info["resources_total"]["CPU"], 3.0, "{info}");

    // rsync-up to every node, rsync-down from a worker, submit a script to the head.
    let local = env.dir.path().join("up");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("data.txt"), "payload\n").unwrap();
    env.run_ok(&["rsync-up", f, local.to_str().unwrap(), "/tmp/up", "--all-nodes"]);
    let down = env.dir.path().join("down");
    env.run_ok(&[
        "rsync-down",
        f,
        "/tmp/up/data.txt",
        down.to_str().unwrap(),
        "--node-ip",
        &ips[1],
    ]);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "payload\n");
    let script = env.dir.path().join("job.sh");
    std::fs::write(&script, "echo \"job $1 on $(hostname)\"\n").unwrap();
    let out = env.run_ok(&["submit", f, script.to_str().unwrap(), "42"]);
    assert_eq!(
        out.trim(),
        format!("job 42 on {}", heads[0]["id"].as_str().unwrap())
    );
    // monitor shows the head's log: the controller runs there.
    let log = env.run_ok(&["monitor", f, "--no-follow", "-n", "500"]);
    assert!(log.contains("starting the cluster controller"), "{log}");

    // scale --workers 4.
    env.run_ok(&["scale", f, "--workers", "4"]);
    env.run_ok(&["wait-for-ready", f, "--min-workers", "4", "--timeout", "180"]);
    let w = workers(&env.status(&file));
    assert_eq!(w.len(), 4, "{w:?}");

    // A worker container killed from outside is replaced.
    let victim = w[0].0.clone();
    assert!(docker(&["kill", &victim]).status.success());
    wait_until("the killed worker replaced", Duration::from_secs(180), || {
        let w = workers(&env.status(&file));
        let up = w.iter().filter(|(_, s, _)| s == "up-to-date").count();
        let gone = !w.iter().any(|(id, _, _)| *id == victim);
        (up == 4 && gone)
            .then_some(())
            .map_or_else(|| Some(format!("{w:?}")), |_| None)
    });

    // kill-node terminates a worker by IP; the head's controller replaces it.
    let w = workers(&env.status(&file));
    let status = env.status(&file);
    let victim_ip = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == w[1].0.as_str())
        .and_then(|n| n["internal_ip"].as_str())
        .unwrap()
        .to_string();
    env.run_ok(&["kill-node", f, "--node-ip", &victim_ip, "--yes"]);
    assert!(!workers(&env.status(&file)).iter().any(|(id, _, _)| *id == w[1].0));
    let (code, _, err) = env.run(&["kill-node", f, "--node-ip", &head_ip, "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("is the head"), "{err}");

    // The request dropped and the idle timeout passed: back to min_workers.
    env.run_ok(&["scale", f, "--workers", "0"]);
    wait_until("back to 2 workers", Duration::from_secs(180), || {
        let w = workers(&env.status(&file));
        (w.len() == 2)
            .then_some(())
            .map_or_else(|| Some(format!("{w:?}")), |_| None)
    });

    // Stop, then delete the workspace: nothing of ours is left.
    env.run_ok(&["stop", f, "--yes"]);
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    let status = env.status(&file);
    assert_eq!(status["state"], "stopped");
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
    env.assert_nothing_left();
    // Deleting again is fine.
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("b");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    env.run_ok(&["workspace", "create", ws, "--yes"]);

    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing-image",
            "  image: cloudtik-node:does-not-exist\n".to_string(),
            "{CPU: 1, memory: 512M}",
            "does not exist on this machine",
        ),
        (
            "too-large",
            format!("  image: {image}\n"),
            "{CPU: 4096, memory: 512M}",
            "this machine has",
        ),
        (
            "no-docker",
            format!("  image: {image}\n  docker_socket: /nonexistent/docker.sock\n"),
            "{CPU: 1, memory: 512M}",
            "Docker is not reachable",
        ),
    ];
    // The head's published port in use.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let port_case = (
        "port-in-use",
        format!("  image: {image}\n  enable_port_mapping: true\n  port_mapping_base: {port}\n"),
        "{CPU: 1, memory: 512M}",
        "is in use",
    );
    for (name, extra, instance, expected) in cases.into_iter().chain([port_case]) {
        let file = env.cluster_file(name, &extra, instance);
        let (code, out, err) = env.run(&["start", file.to_str().unwrap(), "--yes"]);
        assert_ne!(code, 0, "{name}: start must fail\n{out}\n{err}");
        assert!(
            err.contains(expected),
            "{name}: the error says what is wrong: {err}"
        );
        assert!(err.contains("error:"), "{name}: {err}");
        assert!(
            env.containers().is_empty(),
            "{name}: nothing left: {:?}",
            env.containers()
        );
        let folder = env
            .dir
            .path()
            .join("home/clusters")
            .join(&env.workspace)
            .join(&env.cluster);
        // (Without Docker nobody can tell whether a node was made: the folder may stay,
        // and a note says where and why.)
        assert!(
            !folder.exists() || (name == "no-docker" && err.contains("note: kept")),
            "{name}: no folder left: {err}"
        );
        let _ = std::fs::remove_dir_all(&folder);
    }
    drop(busy);
    // A config error names the YAML path and exits 3.
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "cluster_name: x\nworkspace_name: {}\nprovider: {{type: virtual}}\nauth: {{ssh_user: root}}\n\
             available_node_types:\n  h: {{node_config: {{instance_type: {{CPU: many}}}}}}\nhead_node_type: h\n",
            env.workspace
        ),
    )
    .unwrap();
    let (code, _, err) = env.run(&["start", bad.to_str().unwrap(), "--yes"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("instance_type.CPU"), "{err}");
    // Without --yes and no terminal: refused, exit 5, nothing made.
    let file = env.cluster_file("no-yes", &format!("  image: {image}\n"), "{CPU: 1, memory: 512M}");
    let (code, _, err) = env.run(&["start", file.to_str().unwrap()]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(env.containers().is_empty());
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
}

/// The key (second field) of `<host> <type> <key>` lines of `known_hosts` for `host`.
fn pinned_keys(known_hosts: &str, host: &str) -> Vec<String> {
    known_hosts
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(host))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

/// A node's ed25519 host key as its container has it.
fn container_host_key(id: &str) -> String {
    let out = docker(&["exec", id, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn concurrent_starts_pinned_host_keys_and_no_secrets_left() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("k");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    env.run_ok(&["workspace", "create", ws, "--yes"]);
    let file = env.dir.path().join("small.yaml");
    std::fs::write(
        &file,
        format!(
            "cluster_name: {cluster}\nworkspace_name: {ws}\nprovider:\n  type: virtual\n  state_dir: {state}\n  image: {image}\n\
             auth:\n  ssh_user: root\nmax_workers: 1\n\
             available_node_types:\n  head.default:\n    node_config:\n      instance_type: {{CPU: 1, memory: 512M}}\n\
             \x20 worker.default:\n    min_workers: 1\n    max_workers: 1\n    node_config:\n      instance_type: {{CPU: 1, memory: 512M}}\n\
             head_node_type: head.default\n",
            cluster = env.cluster,
            ws = env.workspace,
            state = env.state_dir().display(),
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Two starts of a new cluster at once: one waits for the other, both succeed.
    let spawn = || {
        env.cloudtik()
            .args(["start", f, "--yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut stderr = String::new();
    for o in [&a, &b] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "both starts succeed:\n{}\n{err}",
            String::from_utf8_lossy(&o.stdout)
        );
        stderr.push_str(&err);
    }
    assert!(
        stderr.contains("waiting for another cloudtik command on cluster"),
        "the second start says it waits: {stderr}"
    );
    env.run_ok(&["wait-for-ready", f, "--min-workers", "1", "--timeout", "300"]);
    let status = env.status(&file);
    let heads = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "head")
        .count();
    assert_eq!(heads, 1, "one head: {status}");

    // Host keys were pinned from the containers before the first connection: the head's
    // on this machine, the worker's on the head.
    let node_id = |kind: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == kind)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (head, worker) = (node_id("head"), node_id("worker"));
    let cluster_dir = env
        .dir
        .path()
        .join("home/clusters")
        .join(&env.workspace)
        .join(&env.cluster);
    let known_hosts = cluster_dir.join("known_hosts");
    let local = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        pinned_keys(&local, &head).contains(&container_host_key(&head)),
        "{local}"
    );
    let on_head = docker(&["exec", &head, "sh", "-c", "cat ~/cloudtik/known_hosts"]);
    let on_head = String::from_utf8_lossy(&on_head.stdout);
    assert!(
        pinned_keys(&on_head, &worker).contains(&container_host_key(&worker)),
        "the head pinned the worker's key: {on_head}"
    );

    // A host key other than the pinned one is refused.
    let other = env.dir.path().join("other_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(keygen.success());
    let other_key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key = other_key.split_whitespace().nth(1).unwrap();
    let tampered: String = local
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(head.as_str()))
        .map(|l| format!("{l}\n"))
        .chain([format!("{head} ssh-ed25519 {other_key}\n")])
        .collect();
    std::fs::write(&known_hosts, tampered).unwrap();
    let (code, out, err) = env.run(&["exec", f, "true"]);
    assert_ne!(code, 0, "a changed host key is refused: {out}\n{err}");
    assert!(err.contains("host key"), "{err}");
    std::fs::write(&known_hosts, &local).unwrap();
    env.run_ok(&["exec", f, "true"]);

    // Stop keeps the secrets only when asked, and says where; else removes them.
    let out = env.run_ok(&["stop", f, "--yes", "--keep-secrets"]);
    assert!(
        out.contains("Kept the cluster's key pair and secrets in"),
        "{out}"
    );
    assert!(cluster_dir.join("secrets.json").exists());
    assert!(cluster_dir.join("id_ed25519").exists());
    let out = env.run_ok(&["stop", f, "--yes"]);
    assert!(out.contains("Removed the cluster's key pair"), "{out}");
    assert!(!cluster_dir.exists(), "nothing of the cluster is left here");

    // Workspace delete removes what clusters of the workspace left here.
    let ghost = cluster_dir.with_file_name("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::write(ghost.join("secrets.json"), "{}").unwrap();
    let out = env.run_ok(&["workspace", "delete", ws, "--yes"]);
    assert!(out.contains("cluster ghost"), "{out}");
    assert!(!ghost.exists());
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}
