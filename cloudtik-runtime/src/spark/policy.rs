//! Spark's scaling policy: executors Spark applications want and the workers' use,
//! from the master's and the drivers' REST APIs.
//!
//! Each pass the controller asks [`SparkScalingPolicy::scaling_state`], which
//!
//! 1. reads the master's `GET http://<head>:<master_ui_port>/json/`: every `ALIVE`
//!    worker becomes a node state keyed by its `host` (workers are started with
//!    `--host <node ip>`), with `coresfree` CPUs and `memoryfree` MiB free, in use
//!    while `coresused > 0` (an executor runs there, so the node is never idle);
//! 2. finds the running drivers at `http://<head>:4040..=4043/api/v1/applications`
//!    (applications are submitted on the head in client mode; a refused connection
//!    means no driver on that port) and, for each application with an attempt not
//!    completed, reads its active stages, executors and environment;
//! 3. turns each application's backlog into executor demands ([`app_demand`]).
//!
//! [`scaling_state`] is the pure part (documents in, [`ScalingState`] out); the
//! policy only fetches the documents. The master not answering is an error (the
//! controller logs it and goes on without the policy this pass); a driver not answering
//! only leaves its application out.

use std::collections::BTreeSet;
use std::time::Duration;

use cloudtik_core::resources::{CPU, MEMORY};
use cloudtik_core::scaler::policy::{NodeResourceState, ScalingPolicy, ScalingState};
use cloudtik_core::{Resources, Result};
use serde_json::Value;

use super::config::parse_spark_memory;
use crate::http::get_json;

/// The driver UI ports probed for running applications (Spark's `spark.ui.port`,
/// 4040, and the next ones a second and later driver on the head take).
pub const DRIVER_UI_PORTS: std::ops::RangeInclusive<u16> = 4040..=4043;

/// The timeout of each HTTP request (the controller gives a policy 4 s in all; the
/// requests of a pass run concurrently, at most three rounds deep).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1200);

const MIB: f64 = 1024.0 * 1024.0;

/// The documents of one running application, from its driver's REST API
/// (`/api/v1/applications/<id>/...`).
#[derive(Debug, Clone, PartialEq)]
pub struct DriverApp {
    /// The application's id (`app-...`), the same at the master.
    pub id: String,
    /// `stages?status=active`: a list of stages.
    pub stages: Value,
    /// `executors`: a list of executors, the driver's included (id `driver`).
    pub executors: Value,
    /// `environment`: an object whose `sparkProperties` is a list of `[key, value]`.
    pub environment: Value,
}

/// The ids of the applications in a driver's `/api/v1/applications` answer that have
/// an attempt not completed.
pub fn running_app_ids(applications: &Value) -> Vec<String> {
    applications
        .as_array()
        .into_iter()
        .flatten()
        .filter(|app| {
            app["attempts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t["completed"].as_bool() == Some(false)))
        })
        .filter_map(|app| app["id"].as_str().map(str::to_string))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The value of Spark property `key` in an `environment` document.
pub fn spark_property<'a>(environment: &'a Value, key: &str) -> Option<&'a str> {
    environment["sparkProperties"]
        .as_array()?
        .iter()
        .find(|p| p[0].as_str() == Some(key))
        .and_then(|p| p[1].as_str())
}

/// What an application wants: `count` more executors, each needing `bundle`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDemand {
    /// How many executors more.
    pub count: usize,
    /// One executor's resources: `CPU` = its cores, `memory` = its memory in bytes.
    pub bundle: Resources,
}

/// The executors an application wants beyond those it has.
///
/// * pending tasks = Σ over active stages of `numTasks - numCompletedIndices -
///   numActiveTasks` (never below 0);
/// * free task slots = Σ over the active executors (not the driver) of `maxTasks -
///   activeTasks` (never below 0);
/// * an executor runs `spark.executor.cores / spark.task.cpus` tasks at once
///   (`spark.executor.cores` defaults to `default_cores`, the workers' cores in
///   standalone mode; `spark.task.cpus` to 1);
/// * more executors = ⌈max(0, pending − free) / tasks per executor⌉, capped by
///   `spark.cores.max / spark.executor.cores` and, with dynamic allocation, by
///   `spark.dynamicAllocation.maxExecutors`, less the executors it has;
/// * an application the master lists as `WAITING` (`master_waiting`) with no executor
///   wants at least one (it cannot start anything).
///
/// Each executor needs `spark.executor.memory` (default 1g) of memory.
pub fn app_demand(app: &DriverApp, default_cores: f64, master_waiting: bool) -> AppDemand {
    let env = &app.environment;
    let prop_f64 = |key: &str| spark_property(env, key).and_then(|v| v.trim().parse::<f64>().ok());
    let cores = prop_f64("spark.executor.cores")
        .filter(|c| *c >= 1.0)
        .unwrap_or(default_cores.max(1.0))
        .floor();
    let task_cpus = prop_f64("spark.task.cpus").filter(|c| *c >= 1.0).unwrap_or(1.0);
    let slots_per_executor = (cores / task_cpus).floor().max(1.0);
    let memory = spark_property(env, "spark.executor.memory")
        .and_then(parse_spark_memory)
        .unwrap_or(1024.0 * MIB);

    let pending: f64 = app
        .stages
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (num(&s["numTasks"]) - num(&s["numCompletedIndices"]) - num(&s["numActiveTasks"])).max(0.0))
        .sum();
    let executors: Vec<&Value> = app
        .executors
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["id"].as_str() != Some("driver") && e["isActive"].as_bool() != Some(false))
        .collect();
    let free: f64 = executors
        .iter()
        .map(|e| {
            let max = e["maxTasks"]
                .as_f64()
                .unwrap_or_else(|| (num(&e["totalCores"]) / task_cpus).floor());
            (max - num(&e["activeTasks"])).max(0.0)
        })
        .sum();
    let current = executors.len() as f64;

    let mut wanted = ((pending - free).max(0.0) / slots_per_executor).ceil();
    if let Some(max_cores) = prop_f64("spark.cores.max") {
        wanted = wanted.min(((max_cores / cores).floor() - current).max(0.0));
    }
    let dynamic = spark_property(env, "spark.dynamicAllocation.enabled")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if dynamic && let Some(max) = prop_f64("spark.dynamicAllocation.maxExecutors") {
        wanted = wanted.min((max - current).max(0.0));
    }
    if master_waiting && current == 0.0 {
        wanted = wanted.max(1.0);
    }
    let bundle = Resources::from_pairs([(CPU, cores), (MEMORY, memory)]);
    AppDemand {
        count: wanted as usize,
        bundle,
    }
}

/// The scaling state from the master's `/json/` document and the running
/// applications' driver documents (see the [module docs](self)).
///
/// An application the master lists as `WAITING` whose driver was not read (its UI is
/// off or on another port) wants one executor of the master's `memoryperexecutor`
/// and one core.
///
/// The head (`head_ip`), which runs no Spark worker, has no CPU or memory for
/// executors: demands are never counted as fitting there.
pub fn scaling_state(master: &Value, apps: &[DriverApp], head_ip: Option<&str>) -> ScalingState {
    let mut state = ScalingState::new();
    if let Some(head) = head_ip {
        state = state.with_node(
            head,
            NodeResourceState::new(Resources::from_pairs([(CPU, 0.0), (MEMORY, 0.0)]), false),
        );
    }
    let alive: Vec<&Value> = master["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"].as_str() == Some("ALIVE"))
        .collect();
    for w in &alive {
        let Some(host) = w["host"].as_str() else { continue };
        let entry = state.nodes.entry(host.to_string()).or_insert_with(|| {
            NodeResourceState::new(Resources::from_pairs([(CPU, 0.0), (MEMORY, 0.0)]), false)
        });
        entry
            .available
            .set(CPU, entry.available.get(CPU) + num(&w["coresfree"]).max(0.0));
        entry.available.set(
            MEMORY,
            entry.available.get(MEMORY) + num(&w["memoryfree"]).max(0.0) * MIB,
        );
        entry.in_use |= num(&w["coresused"]) > 0.0;
    }
    let worker_cores = alive.iter().map(|w| num(&w["cores"])).fold(0.0, f64::max);

    let master_apps: Vec<&Value> = master["activeapps"].as_array().into_iter().flatten().collect();
    let waiting: BTreeSet<&str> = master_apps
        .iter()
        .filter(|a| a["state"].as_str() == Some("WAITING"))
        .filter_map(|a| a["id"].as_str())
        .collect();
    let mut seen = BTreeSet::new();
    for app in apps {
        seen.insert(app.id.as_str());
        let d = app_demand(app, worker_cores.max(1.0), waiting.contains(app.id.as_str()));
        state = state.with_demands(&d.bundle, d.count);
    }
    for a in master_apps {
        let Some(id) = a["id"].as_str() else { continue };
        if waiting.contains(id) && !seen.contains(id) && num(&a["cores"]) == 0.0 {
            let memory = num(&a["memoryperexecutor"]).max(1.0) * MIB;
            state = state.with_demands(&Resources::from_pairs([(CPU, 1.0), (MEMORY, memory)]), 1);
        }
    }
    state
}

/// Spark's [`ScalingPolicy`]: reads the master and the drivers on the head.
#[derive(Debug, Clone)]
pub struct SparkScalingPolicy {
    head_ip: String,
    master_ui_port: u16,
    driver_ports: Vec<u16>,
    timeout: Duration,
}

impl SparkScalingPolicy {
    /// The policy of a cluster whose head is `head_ip` and whose master serves its UI
    /// on `master_ui_port`.
    pub fn new(head_ip: impl Into<String>, master_ui_port: u16) -> Self {
        SparkScalingPolicy {
            head_ip: head_ip.into(),
            master_ui_port,
            driver_ports: DRIVER_UI_PORTS.collect(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Sets the ports probed for drivers (default [`DRIVER_UI_PORTS`]).
    #[must_use]
    pub fn with_driver_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.driver_ports = ports.into_iter().collect();
        self
    }

    /// The documents of the running applications of the driver on `port` (none when
    /// nothing answers there).
    async fn driver_apps(&self, port: u16) -> Vec<DriverApp> {
        let host = self.head_ip.as_str();
        let t = self.timeout;
        let Ok(list) = get_json(host, port, "/api/v1/applications", t).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for id in running_app_ids(&list) {
            let base = format!("/api/v1/applications/{id}");
            let stages_path = format!("{base}/stages?status=active");
            let executors_path = format!("{base}/executors");
            let environment_path = format!("{base}/environment");
            let (stages, executors, environment) = tokio::join!(
                get_json(host, port, &stages_path, t),
                get_json(host, port, &executors_path, t),
                get_json(host, port, &environment_path, t),
            );
            match (stages, executors, environment) {
                (Ok(stages), Ok(executors), Ok(environment)) => out.push(DriverApp {
                    id,
                    stages,
                    executors,
                    environment,
                }),
                (s, x, e) => {
                    let err = [s.err(), x.err(), e.err()].into_iter().flatten().next();
                    tracing::debug!(app = %id, port, error = ?err, "skipping a Spark application whose driver did not answer");
                }
            }
        }
        out
    }
}

#[async_trait::async_trait]
impl ScalingPolicy for SparkScalingPolicy {
    fn name(&self) -> &str {
        "spark"
    }

    async fn scaling_state(&self) -> Result<ScalingState> {
        let master = get_json(&self.head_ip, self.master_ui_port, "/json/", self.timeout);
        let mut drivers = tokio::task::JoinSet::new();
        for &port in &self.driver_ports {
            let this = self.clone();
            drivers.spawn(async move { this.driver_apps(port).await });
        }
        let master = master.await.map_err(|e| e.with_context("policy", "spark"))?;
        let mut apps = Vec::new();
        while let Some(found) = drivers.join_next().await {
            apps.extend(found.unwrap_or_default());
        }
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        apps.dedup_by(|a, b| a.id == b.id);
        Ok(scaling_state(&master, &apps, Some(&self.head_ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/spark/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn env(props: &[(&str, &str)]) -> Value {
        json!({"sparkProperties": props.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()})
    }

    fn stage(tasks: u32, active: u32, done: u32) -> Value {
        json!({"numTasks": tasks, "numActiveTasks": active, "numCompleteTasks": done, "numCompletedIndices": done})
    }

    fn executor(id: &str, max: u32, active: u32) -> Value {
        json!({"id": id, "isActive": true, "totalCores": max, "maxTasks": max, "activeTasks": active})
    }

    #[test]
    fn a_running_app_with_a_backlog_wants_executors_and_its_worker_is_in_use() {
        // Real documents: 20 tasks of 2 s on one 1-core executor, and a second app
        // (2g executors) the 768m worker cannot take: WAITING with no executor.
        let master = fixture("master.json");
        let running = DriverApp {
            id: "app-20261201142606-0000".into(),
            stages: fixture("stages-running.json"),
            executors: fixture("executors-running.json"),
            environment: fixture("environment.json"),
        };
        assert_eq!(
            running_app_ids(&fixture("applications.json")),
            vec![running.id.clone()]
        );
        let state = scaling_state(&master, std::slice::from_ref(&running), None);
        let worker = &state.nodes["127.0.0.1"];
        assert!(worker.in_use);
        assert_eq!(worker.available.get(CPU), 0.0);
        assert_eq!(worker.available.get(MEMORY), 256.0 * MIB);
        // 20 tasks, 1 active: 19 pending, no free slot, 1 task per executor. The
        // waiting app's driver was not read: one executor of its 2 GiB.
        let one = Resources::from_pairs([(CPU, 1.0), (MEMORY, 512.0 * MIB)]);
        let waiting = Resources::from_pairs([(CPU, 1.0), (MEMORY, 2048.0 * MIB)]);
        assert_eq!(state.demands.iter().filter(|d| **d == one).count(), 19);
        assert_eq!(state.demands.iter().filter(|d| **d == waiting).count(), 1);
        assert_eq!(state.demands.len(), 20);
    }

    #[test]
    fn a_waiting_app_with_no_executor_wants_one_at_least() {
        let app = DriverApp {
            id: "app-20261201142622-0001".into(),
            stages: fixture("stages-waiting.json"),
            executors: fixture("executors-waiting.json"),
            environment: env(&[("spark.executor.memory", "2g")]),
        };
        // 20 pending tasks, executors of the workers' cores (1).
        let d = app_demand(&app, 1.0, true);
        assert_eq!(d.count, 20);
        assert_eq!(d.bundle.get(MEMORY), 2048.0 * MIB);
        // Nothing pending (between stages) but waiting with no executor: one.
        let idle = DriverApp {
            stages: json!([]),
            ..app
        };
        assert_eq!(app_demand(&idle, 1.0, true).count, 1);
        assert_eq!(app_demand(&idle, 1.0, false).count, 0);
    }

    #[test]
    fn free_slots_cores_and_caps_bound_the_demand() {
        let base = DriverApp {
            id: "a".into(),
            stages: json!([stage(30, 4, 6), stage(10, 0, 0)]),
            // Two 4-core executors, one with a free slot; activeTasks above maxTasks
            // counts as none free.
            executors: json!([executor("driver", 0, 0), executor("0", 4, 3), executor("1", 4, 5)]),
            environment: env(&[("spark.executor.cores", "4"), ("spark.executor.memory", "1g")]),
        };
        // pending = (30-6-4) + 10 = 30, free = 1: 29 tasks / 4 per executor = 8.
        let d = app_demand(&base, 1.0, false);
        assert_eq!(d.count, 8);
        assert_eq!(
            d.bundle,
            Resources::from_pairs([(CPU, 4.0), (MEMORY, 1024.0 * MIB)])
        );
        // Two CPUs per task: 2 tasks per executor.
        let mut two = base.clone();
        two.environment = env(&[("spark.executor.cores", "4"), ("spark.task.cpus", "2")]);
        assert_eq!(app_demand(&two, 1.0, false).count, 15);
        assert_eq!(
            app_demand(&two, 1.0, false).bundle.get(MEMORY),
            1024.0 * MIB,
            "default 1g"
        );
        // spark.cores.max 16: 4 executors in all, 2 more.
        let mut capped = base.clone();
        capped.environment = env(&[("spark.executor.cores", "4"), ("spark.cores.max", "16")]);
        assert_eq!(app_demand(&capped, 1.0, false).count, 2);
        // Dynamic allocation up to 3 executors: 1 more; its max ignored when off.
        let mut dynamic = base.clone();
        dynamic.environment = env(&[
            ("spark.executor.cores", "4"),
            ("spark.dynamicAllocation.enabled", "true"),
            ("spark.dynamicAllocation.maxExecutors", "3"),
        ]);
        assert_eq!(app_demand(&dynamic, 1.0, false).count, 1);
        let mut off = dynamic.clone();
        off.environment = env(&[
            ("spark.executor.cores", "4"),
            ("spark.dynamicAllocation.maxExecutors", "3"),
        ]);
        assert_eq!(app_demand(&off, 1.0, false).count, 8);
        // No spark.executor.cores: the workers' cores.
        let mut default_cores = base.clone();
        default_cores.environment = json!({"sparkProperties": []});
        assert_eq!(app_demand(&default_cores, 2.0, false).count, 15);
        assert_eq!(app_demand(&default_cores, 2.0, false).bundle.get(CPU), 2.0);
        // Enough free slots: nothing.
        let mut quiet = base;
        quiet.stages = json!([stage(10, 8, 1), stage(1, 0, 0)]);
        quiet.executors = json!([executor("0", 8, 8), executor("1", 4, 0)]);
        assert_eq!(app_demand(&quiet, 1.0, false).count, 0);
    }

    #[test]
    fn dead_workers_are_left_out_and_idle_ones_are_free() {
        let master = json!({
            "workers": [
                {"host": "10.0.0.3", "cores": 2, "coresused": 0, "coresfree": 2, "memory": 1536, "memoryused": 0, "memoryfree": 1536, "state": "ALIVE"},
                {"host": "10.0.0.4", "cores": 2, "coresused": 2, "coresfree": 0, "memory": 1536, "memoryused": 1024, "memoryfree": 512, "state": "DEAD"},
            ],
            "activeapps": [],
        });
        let state = scaling_state(&master, &[], Some("10.0.0.2"));
        assert_eq!(state.nodes.len(), 2);
        let head = &state.nodes["10.0.0.2"];
        assert!(!head.in_use && head.available.get(CPU) == 0.0 && head.available.get(MEMORY) == 0.0);
        let n = &state.nodes["10.0.0.3"];
        assert!(!n.in_use);
        assert_eq!(n.available.get(CPU), 2.0);
        assert_eq!(n.available.get(MEMORY), 1536.0 * MIB);
        assert!(state.demands.is_empty());
        assert_eq!(scaling_state(&json!({}), &[], None), ScalingState::new());
    }

    #[test]
    fn only_running_attempts_count() {
        let apps = json!([
            {"id": "a", "attempts": [{"completed": true}]},
            {"id": "b", "attempts": [{"completed": true}, {"completed": false}]},
            {"id": "c"},
        ]);
        assert_eq!(running_app_ids(&apps), vec!["b".to_string()]);
        assert!(running_app_ids(&json!({"not": "a list"})).is_empty());
    }

    /// Serves `routes` (path -> JSON body; anything else 404) until the test ends.
    async fn serve(routes: Vec<(String, Value)>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                    let answer = match routes.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => {
                            let body = body.to_string();
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        }
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn the_policy_reads_the_master_and_the_drivers() {
        let id = "app-20261201142606-0000";
        let base = format!("/api/v1/applications/{id}");
        let master = serve(vec![("/json/".into(), fixture("master.json"))]).await;
        let driver = serve(vec![
            ("/api/v1/applications".into(), fixture("applications.json")),
            (
                format!("{base}/stages?status=active"),
                fixture("stages-running.json"),
            ),
            (format!("{base}/executors"), fixture("executors-running.json")),
            (format!("{base}/environment"), fixture("environment.json")),
        ])
        .await;
        // A driver port whose app API fails is skipped.
        let broken = serve(vec![(
            "/api/v1/applications".into(),
            json!([{"id": "x", "attempts": [{"completed": false}]}]),
        )])
        .await;
        let policy = SparkScalingPolicy::new("127.0.0.1", master).with_driver_ports([driver, broken]);
        let state = policy.scaling_state().await.unwrap();
        let expected = scaling_state(
            &fixture("master.json"),
            &[DriverApp {
                id: id.into(),
                stages: fixture("stages-running.json"),
                executors: fixture("executors-running.json"),
                environment: fixture("environment.json"),
            }],
            Some("127.0.0.1"),
        );
        assert_eq!(state, expected);
        assert_eq!(state.demands.len(), 20);
    }

    #[tokio::test]
    async fn an_unreachable_master_is_an_error_and_absent_drivers_are_skipped() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let policy = SparkScalingPolicy::new("127.0.0.1", port).with_driver_ports([port]);
        let started = std::time::Instant::now();
        assert!(policy.scaling_state().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
