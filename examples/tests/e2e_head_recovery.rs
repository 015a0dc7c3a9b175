//! Issue 12 end to end, with the real `cloudtik` and `cloudtik-node` binaries, the real
//! node image and the local Docker engine: after `kill -9` of the head's service process
//! and after `docker restart` of the head container, the state store and the controller
//! come back with no command from the user, and scaling works again; `status` shows one
//! controller; stop and workspace delete leave nothing.
//!
//! The measured recovery times are printed (`eprintln`, shown with `--nocapture` or when
//! the test fails).
//!
//! Needs Docker and the node image (see `e2e_virtual`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Env, docker, node_image, require_docker, workers};
use serde_json::Value;

/// How long the head's services may take to come back (the issue: within a minute; a
/// worker launch and setup comes on top, so the extra worker gets twice that).
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// `status --json` when it answers: exit code 0 means the store answers, a controller
/// holds a live lease and the head's agent heartbeats; and the controller is not
/// `old_holder` (the one before the failure) and renewed its lease lately.
fn healthy_status(env: &Env, file: &Path, old_holder: Option<&str>) -> Option<Value> {
    let (code, out, _) = env.run(&["status", file.to_str().unwrap(), "--json"]);
    if code != 0 {
        return None;
    }
    let status: Value = serde_json::from_str(&out).ok()?;
    let controller = &status["controller"];
    let holder = controller["holder"].as_str()?;
    (Some(holder) != old_holder
        && controller["expires_in_secs"].as_f64().is_some_and(|s| s > 0.0)
        && controller["renewed_age_secs"].as_f64().is_some_and(|a| a < 15.0))
    .then_some(status)
}

/// Waits until `status` is healthy with a controller other than `old_holder`; answers
/// the time it took and the status.
fn wait_healthy(
    env: &Env,
    file: &Path,
    old_holder: Option<&str>,
    since: Instant,
    what: &str,
) -> (Duration, Value) {
    loop {
        if let Some(status) = healthy_status(env, file, old_holder) {
            return (since.elapsed(), status);
        }
        assert!(
            since.elapsed() < RECOVERY_LIMIT,
            "{what}: the head's services are not back within {RECOVERY_LIMIT:?}: {}",
            env.run(&["status", file.to_str().unwrap()]).1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the head's state store answers again: a new redis-server (not
/// `old_redis`) runs and `status` reaches the store; answers the time it took.
fn wait_store_back(env: &Env, file: &Path, head: &str, old_redis: &str, since: Instant) -> Duration {
    loop {
        let redis = redis_pid(head);
        if redis.as_deref().is_some_and(|p| p != old_redis) {
            let (_, out, err) = env.run(&["status", file.to_str().unwrap(), "--json"]);
            if !out.contains("state store is not reachable") && !err.contains("state store is not reachable")
            {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < RECOVERY_LIMIT,
            "the head's state store is not back within {RECOVERY_LIMIT:?}: {}",
            env.run(&["status", file.to_str().unwrap()]).1
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The pid of redis-server in the head container.
fn redis_pid(head: &str) -> Option<String> {
    let out = docker(&["exec", head, "pgrep", "-x", "redis-server"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// The pids of `cloudtik-node head` in the head container.
fn head_pids(head: &str) -> Vec<String> {
    let out = docker(&["exec", head, "pgrep", "-f", "cloudtik-node head"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Scales to `n` workers and waits until they are ready; answers the time it took.
fn scale_and_wait(env: &Env, f: &str, file: &Path, n: usize) -> Duration {
    let t = Instant::now();
    env.run_ok(&["scale", f, "--workers", &n.to_string()]);
    env.run_ok(&[
        "wait-for-ready",
        f,
        "--min-workers",
        &n.to_string(),
        "--timeout",
        "180",
    ]);
    let took = t.elapsed();
    let w = workers(&env.status(file));
    assert_eq!(w.len(), n, "{w:?}");
    assert!(
        w.iter()
            .all(|(_, s, hb)| s == "up-to-date" && hb.is_some_and(|a| a < 15.0)),
        "workers up to date and heartbeating: {w:?}"
    );
    took
}

#[test]
fn the_head_recovers_from_kill_9_and_docker_restart_with_no_command() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("r");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    let file = env.small_cluster_file("recovery", &image, 3);
    let f = file.to_str().unwrap();

    env.run_ok(&["workspace", "create", ws, "--yes"]);
    env.run_ok(&["start", f, "--yes", "--wait-for-workers", "1", "--timeout", "300"]);
    env.run_ok(&["wait-for-ready", f, "--min-workers", "1", "--timeout", "180"]);
    let (_, status) = wait_healthy(&env, &file, None, Instant::now(), "after start");
    let first_holder = status["controller"]["holder"].as_str().unwrap().to_string();
    let head = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "head")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = head_pids(&head);
    assert_eq!(before.len(), 1, "one head process: {before:?}");

    // kill -9 of the head's service process: its supervisor starts it again.
    let redis = redis_pid(&head).expect("redis-server runs on the head");
    let killed = Instant::now();
    let out = docker(&["exec", &head, "pkill", "-9", "-f", "cloudtik-node head"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kill_store = wait_store_back(&env, &file, &head, &redis, killed);
    let (kill_store_back, status) = wait_healthy(&env, &file, Some(&first_holder), killed, "after kill -9");
    let after = head_pids(&head);
    assert_eq!(after.len(), 1, "one head process: {after:?}");
    assert_ne!(after, before, "the head process was killed and started again");
    let holder = status["controller"]["holder"].as_str().unwrap().to_string();
    assert!(
        holder.contains(&format!(":{}:", after[0])),
        "the new head controls: {holder}"
    );
    let kill_scaled = scale_and_wait(&env, f, &file, 2);
    let kill_total = killed.elapsed();
    assert!(
        kill_total < 2 * RECOVERY_LIMIT,
        "the extra worker took {kill_total:?}"
    );
    eprintln!(
        "RECOVERY kill -9: store back after {:.1} s, the controller acting after {:.1} s; the 2nd worker ready {:.1} s after the scale ({:.1} s after the kill)",
        kill_store.as_secs_f64(),
        kill_store_back.as_secs_f64(),
        kill_scaled.as_secs_f64(),
        kill_total.as_secs_f64()
    );

    // docker restart of the head container: its command starts the supervisor again.
    // (`docker restart` returns once the container runs again, its old processes gone;
    // pids in the new pid namespace may repeat the old ones.)
    let restarted = Instant::now();
    let out = docker(&["restart", &head]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restart_store = wait_store_back(&env, &file, &head, "-", restarted);
    let (restart_store_back, status) =
        wait_healthy(&env, &file, Some(&holder), restarted, "after docker restart");
    let heads: Vec<&Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "head")
        .collect();
    assert_eq!(heads.len(), 1, "the same head: {status}");
    assert_eq!(heads[0]["id"], head.as_str(), "{status}");
    let pids = head_pids(&head);
    assert_eq!(pids.len(), 1, "one head process: {pids:?}");
    let restart_scaled = scale_and_wait(&env, f, &file, 3);
    let restart_total = restarted.elapsed();
    assert!(
        restart_total < 2 * RECOVERY_LIMIT,
        "the extra worker took {restart_total:?}"
    );
    eprintln!(
        "RECOVERY docker restart: store back after {:.1} s, the controller acting after {:.1} s; the 3rd worker ready {:.1} s after the scale ({:.1} s after the restart)",
        restart_store.as_secs_f64(),
        restart_store_back.as_secs_f64(),
        restart_scaled.as_secs_f64(),
        restart_total.as_secs_f64()
    );

    // One controller: the lease has one holder, the head's process, and no other head
    // process stands by anywhere in the cluster.
    let status = env.status(&file);
    let holder = status["controller"]["holder"].as_str().unwrap_or_default();
    assert!(holder.contains(&format!(":{}:", pids[0])), "{status}");
    for n in status["nodes"].as_array().unwrap() {
        let id = n["id"].as_str().unwrap();
        let expected = usize::from(id == head);
        assert_eq!(head_pids(id).len(), expected, "head processes on {id}");
    }
    assert_eq!(workers(&status).len(), 3, "{status}");

    // Stop, then delete the workspace: nothing of ours is left.
    env.run_ok(&["stop", f, "--yes"]);
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
    env.assert_nothing_left();
}
