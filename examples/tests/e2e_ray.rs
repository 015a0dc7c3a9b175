//! The Ray runtime end to end, with the real `cloudtik` and `cloudtik-node` binaries,
//! the node image, the local Docker engine and Ray from the package index: a virtual
//! cluster with `runtime.types: [ray]` (head, 1-CPU workers, `min_workers: 1`,
//! `max_workers: 4`, `idle_timeout_minutes: 1`) starts with Ray installed and running on
//! every node; a submitted job (`ray.init(address="auto")`) runs more 1-CPU tasks than
//! the cluster holds, and the controller adds workers because of Ray's pending demand
//! alone (no `scale`); every task finishes (no retries allowed, so a worker taken away
//! under a task fails the job) and ran on three workers at least; no worker is removed
//! while it runs a task; after the idle timeout the cluster is back to one worker;
//! `cloudtik stop` runs Ray's stop on the nodes (the head's raylet goes away while its
//! container still runs) and nothing is left.
//!
//! Timings are printed as `TIMING` lines. Needs Docker, the node image (built when
//! missing) and the package index this machine uses (pip settings go to the nodes; the
//! provider's package cache keeps Ray's wheels for the next run). Without Docker the test
//! fails under `CI=true` and says so otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Env, docker, node_image, require_docker, wait_until};
use serde_json::Value;

/// Tasks the job runs, one CPU each, and how long each sleeps: 400 CPU-seconds, well
/// past what the head and the first worker (2 CPUs) finish before new workers join
/// (the first ~60 s after the submit, the third ~110 s on a warm package cache).
const TASKS: usize = 20;
const TASK_SECS: u32 = 20;

const JOB: &str = r#"
import json, sys, time
import ray

tasks, secs = int(sys.argv[1]), float(sys.argv[2])
ray.init(address="auto")

# No retries: a node taken away under a task fails the job.
@ray.remote(num_cpus=1, max_retries=0)
def work(i):
    start = time.time()
    time.sleep(secs)
    return {"i": i, "ip": ray.util.get_node_ip_address(), "start": start, "end": time.time()}

t0 = time.time()
refs = [work.remote(i) for i in range(tasks)]
print("SUBMITTED", tasks, flush=True)
results = ray.get(refs)
print("RESULT " + json.dumps({"results": results, "secs": time.time() - t0}), flush=True)
"#;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn timing(what: &str, since: Instant) {
    println!("TIMING {what}: {:.1} s", since.elapsed().as_secs_f64());
}

/// The cluster config: Ray on a 1-CPU / 3G head and 1-CPU / 2G workers.
fn ray_cluster_file(env: &Env, image: &str) -> std::path::PathBuf {
    let p = env.dir.path().join("ray-cluster.yaml");
    std::fs::write(
        &p,
        format!(
            "cluster_name: {cluster}\nworkspace_name: {ws}\nprovider:\n  type: virtual\n  state_dir: {state}\n  image: {image}\n\
             auth:\n  ssh_user: root\nmax_workers: 4\nidle_timeout_minutes: 1\n\
             runtime:\n  types: [ray]\n\
             available_node_types:\n  head.default:\n    node_config:\n      instance_type: {{CPU: 1, memory: 3G}}\n\
             \x20 worker.default:\n    min_workers: 1\n    max_workers: 4\n    node_config:\n      instance_type: {{CPU: 1, memory: 2G}}\n\
             head_node_type: head.default\n",
            cluster = env.cluster,
            ws = env.workspace,
            state = env.state_dir().display(),
        ),
    )
    .unwrap();
    p
}

/// A node of `status --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    id: String,
    ip: String,
    status: String,
}

fn nodes_of(status: &Value, kind: &str) -> Vec<Node> {
    status["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|n| n["kind"] == kind)
        .map(|n| Node {
            id: n["id"].as_str().unwrap_or("").to_string(),
            ip: n["internal_ip"].as_str().unwrap_or("").to_string(),
            status: n["status"].as_str().unwrap_or("-").to_string(),
        })
        .collect()
}

/// `status --json`, or `None` when the CLI fails (a poll during changes may).
fn try_status(env: &Env, file: &str) -> Option<Value> {
    let (code, out, _) = env.run(&["status", file, "--json"]);
    (code == 0).then(|| serde_json::from_str(&out).ok()).flatten()
}

/// A worker that left while the job ran: last seen at `seen`, gone at `gone` (unix s).
#[derive(Debug, Clone)]
struct Departure {
    node: Node,
    seen: f64,
    gone: f64,
}

#[test]
fn ray_scales_on_its_demand_and_leaves_nothing() {
    if !require_docker() {
        return;
    }
    let image = node_image();
    let env = Env::new("ray");
    env.cleanup();
    let ws = env.workspace_file();
    let ws = ws.to_str().unwrap();
    let file = ray_cluster_file(&env, &image);
    let f = file.to_str().unwrap();
    let all = Instant::now();

    env.run_ok(&["workspace", "create", ws, "--yes"]);
    let t = Instant::now();
    env.run_ok(&["start", f, "--yes", "--wait-for-workers", "1", "--timeout", "900"]);
    timing("start (head + 1 worker, Ray installed and running)", t);

    // Ray runs on both nodes: its processes, the info endpoints, one Ray cluster of 2.
    let status = env.status(&file);
    let head = nodes_of(&status, "head").pop().expect("a head");
    assert_eq!(nodes_of(&status, "worker").len(), 1, "{status}");
    let info: Value = serde_json::from_str(&env.run_ok(&["info", f, "--json"])).unwrap();
    assert_eq!(info["runtimes"], serde_json::json!(["ray"]), "{info}");
    let endpoints = &info["endpoints"]["ray"];
    assert_eq!(
        endpoints["ray-dashboard"],
        format!("http://{}:8265", head.ip),
        "{info}"
    );
    assert_eq!(endpoints["ray-address"], format!("{}:6379", head.ip), "{info}");
    assert_eq!(
        endpoints["ray-client"],
        format!("ray://{}:10001", head.ip),
        "{info}"
    );
    let out = env.run_ok(&[
        "exec",
        f,
        "pgrep -x raylet >/dev/null && echo raylet",
        "--all-nodes",
        "--json",
    ]);
    let results: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(results.len(), 2, "{out}");
    assert!(results.iter().all(|r| r["stdout"] == "raylet\n"), "{out}");
    assert_eq!(
        env.run_ok(&["exec", f, "pgrep -x gcs_server >/dev/null && echo gcs"])
            .trim(),
        "gcs"
    );
    let alive = env.run_ok(&[
        "exec",
        f,
        "python -c 'import ray; ray.init(address=\"auto\", logging_level=\"ERROR\"); \
         print(\"ALIVE\", sum(1 for n in ray.nodes() if n[\"Alive\"]))' 2>/dev/null",
    ]);
    assert!(alive.contains("ALIVE 2"), "{alive}");

    // The job, with no `scale`: Ray's pending tasks must bring workers.
    let job = env.dir.path().join("job.py");
    std::fs::write(&job, JOB).unwrap();
    let t = Instant::now();
    let mut child = env
        .cloudtik()
        .args([
            "submit",
            f,
            job.to_str().unwrap(),
            &TASKS.to_string(),
            &TASK_SECS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Watch the workers while the job runs: the most at once, when each count was first
    // reached, and who left.
    let mut seen: BTreeMap<String, (Node, f64)> = BTreeMap::new();
    let mut departures: Vec<Departure> = Vec::new();
    let mut most = 1usize;
    let mut ever: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    let exit = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "the job did not end within 900 s");
        if let Some(status) = try_status(&env, f) {
            let t_now = now();
            let workers = nodes_of(&status, "worker");
            let ready = workers.iter().filter(|w| w.status == "up-to-date").count();
            if ready > most {
                most = ready;
                timing(&format!("job: {ready} workers up to date"), t);
            }
            let ids: BTreeSet<String> = workers.iter().map(|w| w.id.clone()).collect();
            for (id, (node, last)) in &seen {
                if !ids.contains(id) {
                    departures.push(Departure {
                        node: node.clone(),
                        seen: *last,
                        gone: t_now,
                    });
                }
            }
            seen.retain(|id, _| ids.contains(id));
            for w in workers {
                ever.insert(w.id.clone());
                seen.insert(w.id.clone(), (w, t_now));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    timing("job (submit to the last task's result)", t);
    assert!(
        exit.success(),
        "the job failed ({exit}):\nstdout: {out}\nstderr: {err}"
    );
    let result: Value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\nstdout: {out}\nstderr: {err}"));
    let tasks = result["results"].as_array().unwrap();
    assert_eq!(tasks.len(), TASKS, "{result}");
    let ips: BTreeSet<&str> = tasks.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    let worker_ips: BTreeSet<&str> = ips.iter().copied().filter(|ip| *ip != head.ip).collect();
    println!(
        "job: {TASKS} tasks of {TASK_SECS} s in {:.1} s on {} nodes ({} workers); most workers at once: {most}; \
         workers seen: {}; left during the job: {}",
        result["secs"].as_f64().unwrap_or(0.0),
        ips.len(),
        worker_ips.len(),
        ever.len(),
        departures.len()
    );
    assert!(most >= 3, "Ray's demand brought workers: at most {most} at once");
    assert!(worker_ips.len() >= 3, "tasks ran on 3 workers at least: {ips:?}");
    // No worker left while it ran a task (the job would have failed too: no retries).
    for d in &departures {
        for task in tasks.iter().filter(|r| r["ip"] == d.node.ip.as_str()) {
            let (start, end) = (task["start"].as_f64().unwrap(), task["end"].as_f64().unwrap());
            assert!(
                end <= d.seen || start >= d.gone,
                "worker {} ({}) left between {} and {} while task {task} ran",
                d.node.id,
                d.node.ip,
                d.seen,
                d.gone
            );
        }
    }

    // Idle: back to min_workers after the idle timeout (1 minute).
    let t = Instant::now();
    wait_until("back to 1 worker", Duration::from_secs(300), || {
        let w = try_status(&env, f).map(|s| nodes_of(&s, "worker"));
        match w {
            Some(w) if w.len() == 1 => None,
            other => Some(format!("{other:?}")),
        }
    });
    timing("back to 1 worker after the job", t);

    // Stop: Ray's stop runs on the nodes (the head's raylet goes while its container
    // still runs), then the nodes go.
    let watching = Arc::new(AtomicBool::new(true));
    let observed = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (watching, observed, head_id) = (watching.clone(), observed.clone(), head.id.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::SeqCst) {
                let out = Command::new("docker")
                    .args([
                        "exec",
                        &head_id,
                        "sh",
                        "-c",
                        "pgrep -x raylet >/dev/null && echo up || echo down",
                    ])
                    .output();
                if let Ok(out) = out
                    && out.status.success()
                {
                    observed
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let t = Instant::now();
    env.run_ok(&["stop", f, "--yes"]);
    timing("stop", t);
    watching.store(false, Ordering::SeqCst);
    watcher.join().unwrap();
    let observed = observed.lock().unwrap().clone();
    assert!(
        observed.iter().any(|o| o == "down"),
        "the head's raylet was stopped before its container went: {observed:?}"
    );
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    assert_eq!(env.status(&file)["state"], "stopped");
    env.run_ok(&["workspace", "delete", ws, "--yes"]);
    env.assert_nothing_left();
    let left = docker(&["ps", "-a", "-q", "--filter", &format!("name={}", env.cluster)]);
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());
    timing("the whole test", all);
}
