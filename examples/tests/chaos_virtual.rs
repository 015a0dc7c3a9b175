//! Issue 12's chaos suite, end to end on the virtual provider with the real `cloudtik` and
//! `cloudtik-node` binaries, the real node image and the local Docker engine. One cluster
//! (1 CPU / 512M nodes, at most 4 workers) goes through the faults in sequence:
//!
//! 1. the controller (`cloudtik-node head`) killed with `kill -9` during a scale-up, while
//!    the new workers are being launched and set up;
//! 2. redis-server killed with `kill -9`;
//! 3. redis-server frozen with SIGSTOP past the heartbeat timeout and the lease's TTL,
//!    then resumed;
//! 4. a worker container paused (`docker pause`) past the heartbeat timeout: replaced;
//! 5. two `cloudtik start` and two `cloudtik scale` at once on the running cluster.
//!
//! After each fault the cluster must converge within a bound to the requested number of
//! workers, up to date and heartbeating, with the head's services healthy (`status` exits
//! 0: one controller holds a live lease), exactly one `cloudtik-node head` process in the
//! cluster, no worker container beyond the request, and every worker that was not faulted
//! still there (no healthy worker terminated). Stop and workspace delete leave nothing.
//!
//! `kill -9` of the head at rest and `docker restart` of the head are `e2e_head_recovery`.
//! The scenarios' durations are printed (`eprintln`, shown with `--nocapture`).
//!
//! Needs Docker and the node image (see `e2e_virtual`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, docker, node_image, require_docker, workers};
use serde_json::Value;

/// The bound of a convergence (the lease's TTL, 30 s, and a launch with setup fit
/// easily).
const CONVERGE_LIMIT: Duration = Duration::from_secs(150);
/// The bound of replacing a paused worker: the heartbeat timeout (30 s), the recovery
/// run's heartbeat timeout (30 s more), then a launch with setup.
const REPLACE_LIMIT: Duration = Duration::from_secs(210);
/// How long a converged cluster must stay as it is (two controller passes and more).
const STABLE_FOR: Duration = Duration::from_secs(12);
/// How long it must stay as it is after the state store's faults: longer than the
/// heartbeat timeout (30 s), so a worker wrongly taken for lost would be replaced within it.
const STABLE_AFTER_STORE_FAULT: Duration = Duration::from_secs(45);

/// `status --json` and its exit code (6: the head's services are down).
fn status(env: &Env, file: &Path) -> (i32, Option<Value>) {
    let (code, out, _) = env.run(&["status", file.to_str().unwrap(), "--json"]);
    (code, serde_json::from_str(&out).ok())
}

/// Names of this cluster's containers of `kind` (`head` or `worker`), running or not.
fn kind_containers(env: &Env, kind: &str) -> BTreeSet<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=cloudtik-workspace-name={}", env.workspace),
        "--filter",
        &format!("label=cloudtik-cluster-name={}", env.cluster),
        "--filter",
        &format!("label=cloudtik-node-kind={kind}"),
        "--format",
        "{{.Names}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The pids of `cloudtik-node head` in a container.
fn head_pids(container: &str) -> Vec<String> {
    let out = docker(&["exec", container, "pgrep", "-f", "cloudtik-node head"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The pids of redis-server in a container.
fn redis_pids(container: &str) -> Vec<String> {
    let out = docker(&["exec", container, "pgrep", "-x", "redis-server"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn head_of(env: &Env) -> String {
    let heads = kind_containers(env, "head");
    assert_eq!(heads.len(), 1, "one head container: {heads:?}");
    heads.into_iter().next().unwrap()
}

/// What is wrong with the cluster against `n` workers, without those of `gone` (None:
/// converged).
fn check(env: &Env, file: &Path, n: usize, gone: &BTreeSet<String>) -> Option<String> {
    let (code, s) = status(env, file);
    let Some(s) = s else {
        return Some(format!("status exit {code}, no JSON"));
    };
    if code != 0 {
        return Some(format!("status exit {code}: {}", s["problem"]));
    }
    let c = &s["controller"];
    if !(c["expires_in_secs"].as_f64().is_some_and(|x| x > 0.0)
        && c["renewed_age_secs"].as_f64().is_some_and(|a| a < 15.0))
    {
        return Some(format!("controller not live: {c}"));
    }
    let heads: Vec<&Value> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "head")
        .collect();
    if heads.len() != 1 {
        return Some(format!("{} heads in status", heads.len()));
    }
    let w = workers(&s);
    let ready = w
        .iter()
        .filter(|(_, st, hb)| st == "up-to-date" && hb.is_some_and(|a| a < 15.0))
        .count();
    if w.len() != n || ready != n {
        return Some(format!("workers {w:?}, want {n} up to date and heartbeating"));
    }
    let containers = kind_containers(env, "worker");
    if containers.len() != n {
        return Some(format!("worker containers {containers:?}, want {n}"));
    }
    if let Some(g) = gone.iter().find(|g| containers.contains(*g)) {
        return Some(format!("the faulted worker {g} is still there"));
    }
    None
}

/// Panics when a worker of `keep` is no longer there (a healthy worker terminated).
fn assert_kept(env: &Env, keep: &BTreeSet<String>, what: &str) {
    let containers = kind_containers(env, "worker");
    let lost: Vec<&String> = keep.iter().filter(|k| !containers.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{what}: healthy workers terminated: {lost:?} (workers now {containers:?})"
    );
}

/// Waits until the cluster has converged to `n` workers, keeping `keep` all along and
/// without the workers of `gone`, within `limit` of `since`, then checks it stays so for
/// `stable_for`, with one head process in the cluster. Answers the time since `since` to
/// convergence.
#[allow(clippy::too_many_arguments)]
fn converge(
    env: &Env,
    file: &Path,
    what: &str,
    since: Instant,
    limit: Duration,
    stable_for: Duration,
    n: usize,
    keep: &BTreeSet<String>,
    gone: &BTreeSet<String>,
) -> Duration {
    let took = loop {
        assert_kept(env, keep, what);
        let problem = check(env, file, n, gone);
        let Some(problem) = problem else {
            break since.elapsed();
        };
        assert!(
            since.elapsed() < limit,
            "{what}: not converged to {n} workers within {limit:?}: {problem}\n{}",
            env.run(&["status", file.to_str().unwrap()]).1
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    // Stable: no late duplicate, no late termination.
    let stable = Instant::now();
    while stable.elapsed() < stable_for {
        std::thread::sleep(Duration::from_secs(3));
        assert_kept(env, keep, what);
        if let Some(problem) = check(env, file, n, gone) {
            panic!("{what}: converged after {took:?} but not stable: {problem}");
        }
    }
    // One controller: one `cloudtik-node head` process in the cluster, on the head, and
    // it holds the lease.
    let head = head_of(env);
    let pids = head_pids(&head);
    assert_eq!(pids.len(), 1, "{what}: one head process: {pids:?}");
    for w in kind_containers(env, "worker") {
        assert!(head_pids(&w).is_empty(), "{what}: a head process on worker {w}");
    }
    let (_, s) = status(env, file);
    let holder = s.unwrap()["controller"]["holder"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        holder.contains(&format!(":{}:", pids[0])),
        "{what}: the head process {} holds the lease: {holder}",
        pids[0]
    );
    took
}

/// Sends SIGCONT to the head's redis-server when dropped (also when a check fails).
struct Resume<'a>(&'a str);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        docker(&["exec", self.0, "pkill", "-CONT", "-x", "redis-server"]);
    }
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cloudtik()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cluster_converges_after_every_fault_with_no_duplicate_and_no_healthy_worker_lost() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("x");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    let file = env.small_cluster_file("chaos", &image, 4);
    let f = file.to_str().unwrap();
    let none = BTreeSet::new();
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    let t = Instant::now();
    env.run_ok(&["workspace", "create", ws, "--yes"]);
    env.run_ok(&["start", f, "--yes", "--wait-for-workers", "1", "--timeout", "300"]);
    let took = converge(
        &env,
        &file,
        "start",
        t,
        CONVERGE_LIMIT,
        STABLE_FOR,
        1,
        &none,
        &none,
    );
    timings.push(("start: head + 1 worker", took));
    eprintln!(
        "CHAOS start: converged to 1 worker in {:.1} s",
        took.as_secs_f64()
    );

    // 1. The controller killed during a scale-up: as soon as a new worker's container
    // exists, while the controller sets it up.
    let head = head_of(&env);
    let before = kind_containers(&env, "worker");
    let old_pids = head_pids(&head);
    let t = Instant::now();
    env.run_ok(&["scale", f, "--workers", "3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let launched = loop {
        let now = kind_containers(&env, "worker");
        if now.len() > before.len() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no worker launched within 60 s of the scale"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = docker(&["exec", &head, "pkill", "-9", "-f", "cloudtik-node head"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "CHAOS controller killed {:.1} s after the scale, with {} worker container(s)",
        t.elapsed().as_secs_f64(),
        launched.len()
    );
    let took = converge(
        &env,
        &file,
        "controller killed during a scale-up",
        t,
        CONVERGE_LIMIT,
        STABLE_FOR,
        3,
        &before,
        &none,
    );
    assert_ne!(
        head_pids(&head),
        old_pids,
        "the head process was killed and started again"
    );
    timings.push(("controller killed during a scale-up to 3", took));
    eprintln!(
        "CHAOS controller killed during a scale-up: converged to 3 workers {:.1} s after the scale",
        took.as_secs_f64()
    );

    // 2. redis-server killed: the head starts it again on its data; no worker is lost.
    let before = kind_containers(&env, "worker");
    let redis_before = redis_pids(&head);
    assert_eq!(redis_before.len(), 1, "one redis-server: {redis_before:?}");
    let t = Instant::now();
    let out = docker(&["exec", &head, "pkill", "-9", "-x", "redis-server"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took = converge(
        &env,
        &file,
        "redis killed",
        t,
        CONVERGE_LIMIT,
        STABLE_AFTER_STORE_FAULT,
        3,
        &before,
        &none,
    );
    let redis_after = redis_pids(&head);
    assert_eq!(redis_after.len(), 1, "one redis-server: {redis_after:?}");
    assert_ne!(redis_after, redis_before, "redis-server was started again");
    timings.push(("redis-server killed", took));
    eprintln!(
        "CHAOS redis killed: converged {:.1} s after the kill",
        took.as_secs_f64()
    );

    // 3. redis-server frozen past the heartbeat timeout (30 s) and the lease (30 s), then
    // resumed: every heartbeat looks old at once, yet no worker is terminated.
    let before = kind_containers(&env, "worker");
    let t = Instant::now();
    {
        let out = docker(&["exec", &head, "pkill", "-STOP", "-x", "redis-server"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let _resume = Resume(&head);
        std::thread::sleep(Duration::from_secs(40));
        assert_kept(&env, &before, "redis frozen");
    }
    let resumed = Instant::now();
    let took = converge(
        &env,
        &file,
        "redis SIGSTOPped 40 s",
        resumed,
        CONVERGE_LIMIT,
        STABLE_AFTER_STORE_FAULT,
        3,
        &before,
        &none,
    );
    timings.push(("redis-server SIGSTOP 40 s (after SIGCONT)", took));
    eprintln!(
        "CHAOS redis SIGSTOPped 40 s: converged {:.1} s after the SIGCONT ({:.1} s after the SIGSTOP)",
        took.as_secs_f64(),
        (resumed - t + took).as_secs_f64()
    );

    // 4. A worker paused past the heartbeat timeout: replaced, the others kept.
    let mut others = kind_containers(&env, "worker");
    let victim = others.pop_first().unwrap();
    let t = Instant::now();
    let out = docker(&["pause", &victim]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = BTreeSet::from([victim.clone()]);
    let took = converge(
        &env,
        &file,
        "a worker paused",
        t,
        REPLACE_LIMIT,
        STABLE_FOR,
        3,
        &others,
        &gone,
    );
    timings.push(("a worker paused: replaced", took));
    eprintln!(
        "CHAOS worker {victim} paused: replaced, converged {:.1} s after the pause",
        took.as_secs_f64()
    );

    // 5. Two `start` and two `scale` at once on the running cluster.
    let before = kind_containers(&env, "worker");
    let pids_before = head_pids(&head);
    let t = Instant::now();
    let children = vec![
        spawn(&env, &["start", f, "--yes"]),
        spawn(&env, &["scale", f, "--workers", "4"]),
        spawn(&env, &["start", f, "--yes"]),
        spawn(&env, &["scale", f, "--workers", "4"]),
    ];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent command failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let commands_took = t.elapsed();
    let took = converge(
        &env,
        &file,
        "two starts and two scales",
        t,
        CONVERGE_LIMIT,
        STABLE_FOR,
        4,
        &before,
        &none,
    );
    assert_eq!(head_of(&env), head, "the same head");
    let pids_after = head_pids(&head);
    assert_ne!(pids_after, pids_before, "start restarted the head's service");
    eprintln!("CHAOS the head process before the starts: {pids_before:?}, after: {pids_after:?}");
    timings.push(("two start + two scale to 4 at once", took));
    eprintln!(
        "CHAOS two starts and two scales at once: the commands took {:.1} s, converged to 4 workers {:.1} s after they began",
        commands_took.as_secs_f64(),
        took.as_secs_f64()
    );

    // Stop, then delete the workspace: nothing of ours is left.
    let t = Instant::now();
    env.run_ok(&["stop", f, "--yes"]);
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
    env.assert_nothing_left();
    let all = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=cloudtik-workspace-name={}", env.workspace),
    ]);
    assert!(String::from_utf8_lossy(&all.stdout).trim().is_empty());
    timings.push(("stop + workspace delete", t.elapsed()));
    eprintln!("CHAOS summary:");
    for (what, took) in &timings {
        eprintln!("CHAOS   {what}: {:.1} s", took.as_secs_f64());
    }
}
