//! The node agent: what runs on every node of a cluster and tells the controller the
//! node is alive, what it has, how loaded it is, and whether its processes run.
//!
//! [`NodeAgent`] is a library type: embed it in any tokio program and run it with
//! [`NodeAgent::run`] and a shutdown future. It writes to a [`StateStore`]:
//!
//! * a **heartbeat** every [`heartbeat_interval`](AgentConfig::heartbeat_interval)
//!   (default 1 s): node id, IP, kind, type, sequence id, total and available
//!   resources, time ([`NodeHeartbeat`]);
//! * every [`report_interval`](AgentConfig::report_interval) (default 5 s) the node's
//!   **metrics** (CPU utilisation, load average, memory, disk, disk and network bytes per
//!   second, from `/proc` and `statvfs`) and the **health of the processes** the node
//!   should run ([`AgentConfig::processes`]: the core services plus each runtime's).
//!
//! Total resources come from the config, from the host, or both: the host's CPUs and
//! memory are detected with cgroup limits respected (see [`DetectedResources`]), and
//! every resource named in [`AgentConfig::resources`] replaces or adds to them.
//!
//! # Failures
//!
//! The loop never stops on a store error. A failed write is retried at the next
//! attempt, with the wait between attempts doubling from the interval up to
//! [`max_backoff`](AgentConfig::max_backoff) while the failures last; each write is
//! bounded by [`write_timeout`](AgentConfig::write_timeout). The first failure of a
//! streak is logged at `warn`, the rest at `debug`, and the recovery at `info`. With a
//! [`RedisStore`](crate::state::RedisStore), whose connections reconnect by themselves,
//! heartbeats resume within about `max_backoff` of Redis coming back.
//!
//! # Shutdown
//!
//! When the shutdown future completes, [`run`](NodeAgent::run) returns at once
//! (abandoning a write in flight). It removes nothing: the node's rows stay, and the
//! controller sees the node as gone when its heartbeat grows older than the timeout
//! ([`classify_nodes`](crate::state::classify_nodes)).
//!
//! # Cost
//!
//! The agent keeps one heartbeat row, one metrics row, one process map and one read
//! buffer, and reuses them every tick; reading the host happens on the calling task
//! (reads of `/proc` do not block). Measured in the `cloudtik-node agent` binary on a
//! current-thread runtime: see the README's performance section.

mod host;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

pub use host::{DetectedResources, HostPaths};

use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeId, NodeKind};
use crate::resources::Resources;
use crate::state::{NodeHeartbeat, NodeMetrics, NodeProcesses, StateStore, unix_now};
use host::HostProbe;

/// The processes every node runs: the node agent (`cloudtik-node`).
pub const CORE_PROCESSES: &[&str] = &["cloudtik-node"];

/// The processes the head runs besides the core ones: the state store (`redis-server`).
pub const HEAD_PROCESSES: &[&str] = &["redis-server"];

/// How the node agent identifies its node and how often it reports.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The provider's id of the node.
    pub node_id: NodeId,
    /// The node's address inside the cluster's network.
    pub node_ip: String,
    /// Head, worker or unmanaged.
    pub node_kind: NodeKind,
    /// The node type (`available_node_types` key).
    pub node_type: String,
    /// The node's sequence id in the cluster, if it has one.
    pub seq_id: Option<u32>,
    /// Resources that replace or add to the detected ones (e.g. `{"GPU": 1}`).
    pub resources: Resources,
    /// Detect CPUs and memory from the host (default true). When false, the total
    /// resources are exactly [`resources`](Self::resources).
    pub detect_resources: bool,
    /// How often to write the heartbeat (default 1 s).
    pub heartbeat_interval: Duration,
    /// How often to write metrics and process health (default 5 s).
    pub report_interval: Duration,
    /// The longest wait between attempts while writes fail (default 5 s).
    pub max_backoff: Duration,
    /// How long one write may take before it counts as failed (default 10 s).
    pub write_timeout: Duration,
    /// The names of the processes whose health to report.
    pub processes: Vec<String>,
    /// Processes found by their command line: `(name shown, text the command line
    /// contains)` (a runtime's Java daemons all have the name `java`).
    pub command_line_processes: Vec<(String, String)>,
    /// Where to read the host's state.
    pub host: HostPaths,
}

impl AgentConfig {
    /// A config with the defaults: detect resources, heartbeat every second, report
    /// every 5 s, watch [`CORE_PROCESSES`] (plus [`HEAD_PROCESSES`] on the head).
    pub fn new(
        node_id: impl Into<NodeId>,
        node_ip: impl Into<String>,
        node_kind: NodeKind,
        node_type: impl Into<String>,
    ) -> Self {
        let mut processes: Vec<String> = CORE_PROCESSES.iter().map(|s| s.to_string()).collect();
        if node_kind == NodeKind::Head {
            processes.extend(HEAD_PROCESSES.iter().map(|s| s.to_string()));
        }
        AgentConfig {
            node_id: node_id.into(),
            node_ip: node_ip.into(),
            node_kind,
            node_type: node_type.into(),
            seq_id: None,
            resources: Resources::new(),
            detect_resources: true,
            heartbeat_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            processes,
            command_line_processes: Vec::new(),
            host: HostPaths::default(),
        }
    }

    /// Adds process names to watch (a runtime's processes); names already listed are
    /// not repeated.
    pub fn with_processes<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for n in names {
            let n = n.into();
            if !self.processes.contains(&n) {
                self.processes.push(n);
            }
        }
        self
    }

    /// Adds a runtime's processes ([`ProcessSpec`](crate::runtime::ProcessSpec)): by
    /// command line when the spec says so, else by name.
    pub fn with_process_specs<'a>(
        mut self,
        specs: impl IntoIterator<Item = &'a crate::runtime::ProcessSpec>,
    ) -> Self {
        for spec in specs {
            if spec.match_command_line {
                let entry = (spec.name.clone(), spec.pattern.clone());
                if !self.command_line_processes.contains(&entry) {
                    self.command_line_processes.push(entry);
                }
            } else if !self.processes.contains(&spec.pattern) {
                self.processes.push(spec.pattern.clone());
            }
        }
        self
    }

    /// Checks the config: a node id, a node type and non-zero intervals.
    pub fn validate(&self) -> Result<()> {
        if self.node_id.trim().is_empty() {
            return Err(Error::config("node_id", "the node id must not be empty"));
        }
        if self.node_type.trim().is_empty() {
            return Err(Error::config("node_type", "the node type must not be empty"));
        }
        for (path, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("report_interval", self.report_interval),
            ("write_timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(path, "must be longer than zero"));
            }
        }
        for (name, amount) in self.resources.iter() {
            if !amount.is_finite() || amount < 0.0 {
                return Err(Error::config(
                    format!("resources.{name}"),
                    format!("must be a finite number >= 0, got {amount}"),
                ));
            }
        }
        Ok(())
    }
}

/// Counters of what the agent did, readable while it runs ([`NodeAgent::stats`]).
#[derive(Debug, Default)]
pub struct AgentStats {
    heartbeats: AtomicU64,
    heartbeat_failures: AtomicU64,
    reports: AtomicU64,
    report_failures: AtomicU64,
    failure_streaks: AtomicU64,
}

impl AgentStats {
    /// Heartbeats written.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Heartbeat writes that failed or timed out.
    pub fn heartbeat_failures(&self) -> u64 {
        self.heartbeat_failures.load(Ordering::Relaxed)
    }

    /// Reports (metrics and process health) written.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }

    /// Report writes that failed or timed out.
    pub fn report_failures(&self) -> u64 {
        self.report_failures.load(Ordering::Relaxed)
    }

    /// Streaks of failed writes (each logged once at `warn`), heartbeats and reports
    /// counted apart.
    pub fn failure_streaks(&self) -> u64 {
        self.failure_streaks.load(Ordering::Relaxed)
    }
}

/// Sets the resources the node has free, for the heartbeat. Cloned handles share
/// the value; the agent reads it at each heartbeat.
#[derive(Debug, Clone)]
pub struct AvailableResources(Arc<std::sync::Mutex<Option<Resources>>>);

impl AvailableResources {
    /// Reports `available` from the next heartbeat on.
    pub fn set(&self, available: Resources) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(available);
    }

    /// Goes back to reporting the total resources as available.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The node agent. See the [module docs](self).
#[derive(Debug)]
pub struct NodeAgent {
    config: AgentConfig,
    store: Arc<dyn StateStore>,
    probe: HostProbe,
    detected: DetectedResources,
    heartbeat: NodeHeartbeat,
    available: AvailableResources,
    stats: Arc<AgentStats>,
}

/// A streak of failed writes of one kind, and the wait before the next attempt.
#[derive(Debug)]
struct Streak {
    what: &'static str,
    failures: u32,
    since: Option<Instant>,
}

impl Streak {
    fn new(what: &'static str) -> Self {
        Streak {
            what,
            failures: 0,
            since: None,
        }
    }

    /// Records a failure; logs the first of a streak at `warn`.
    fn fail(&mut self, error: &Error, stats: &AgentStats) {
        if self.failures == 0 {
            self.since = Some(Instant::now());
            stats.failure_streaks.fetch_add(1, Ordering::Relaxed);
            warn!(error = %crate::Report(&error), "node agent: writing the {} failed; retrying with backoff (logged once until it works again)", self.what);
        } else {
            debug!(error = %crate::Report(&error), failures = self.failures + 1, "node agent: writing the {} failed again", self.what);
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// Records a success; logs the end of a streak.
    fn succeed(&mut self) {
        if self.failures > 0 {
            let secs = self.since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            info!(
                failures = self.failures,
                "node agent: writing the {} works again after {secs:.1} s", self.what
            );
        }
        self.failures = 0;
        self.since = None;
    }

    /// The wait before the next attempt: `interval` while all is well, then doubling
    /// per failure up to `max` (never below `interval`).
    fn next_delay(&self, interval: Duration, max: Duration) -> Duration {
        if self.failures == 0 {
            return interval;
        }
        crate::backoff::Backoff::new(interval, max).delay(self.failures)
    }
}

impl NodeAgent {
    /// An agent for `config` writing to `store`. Detects the host's resources now
    /// (unless [`detect_resources`](AgentConfig::detect_resources) is off).
    pub fn new(config: AgentConfig, store: Arc<dyn StateStore>) -> Result<Self> {
        config.validate()?;
        let mut probe = HostProbe::new(config.host.clone());
        let detected = if config.detect_resources {
            probe.detect_resources()
        } else {
            DetectedResources {
                cpus: config.resources.cpu(),
                memory: config.resources.memory().max(0.0) as u64,
                limited_by_cgroup: false,
            }
        };
        let mut total = if config.detect_resources {
            detected.to_resources()
        } else {
            Resources::new()
        };
        for (name, amount) in config.resources.iter() {
            total.set(name, amount);
        }
        let heartbeat = NodeHeartbeat {
            node_id: config.node_id.clone(),
            node_ip: config.node_ip.clone(),
            node_kind: config.node_kind,
            node_type: config.node_type.clone(),
            seq_id: config.seq_id,
            heartbeat_time: 0.0,
            available_resources: total.clone(),
            total_resources: total,
        };
        Ok(NodeAgent {
            config,
            store,
            probe,
            detected,
            heartbeat,
            available: AvailableResources(Arc::new(std::sync::Mutex::new(None))),
            stats: Arc::new(AgentStats::default()),
        })
    }

    /// The config.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// What was detected on the host (or taken from the config when detection is off).
    pub fn detected_resources(&self) -> DetectedResources {
        self.detected
    }

    /// The total resources the heartbeat reports.
    pub fn total_resources(&self) -> &Resources {
        &self.heartbeat.total_resources
    }

    /// A handle to set the resources reported as available (by default the total).
    pub fn available_resources(&self) -> AvailableResources {
        self.available.clone()
    }

    /// The agent's counters, shared with the running agent.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Writes one heartbeat now.
    pub async fn write_heartbeat(&mut self) -> Result<()> {
        self.heartbeat.heartbeat_time = unix_now();
        {
            let available = self.available.0.lock().unwrap_or_else(|p| p.into_inner());
            match &*available {
                Some(a) if *a != self.heartbeat.available_resources => {
                    self.heartbeat.available_resources = a.clone();
                }
                Some(_) => {}
                None => {
                    if self.heartbeat.available_resources != self.heartbeat.total_resources {
                        self.heartbeat.available_resources = self.heartbeat.total_resources.clone();
                    }
                }
            }
        }
        let write = self.store.put_heartbeat(&self.heartbeat);
        bounded(self.config.write_timeout, "put_heartbeat", write).await
    }

    /// Samples metrics and process health into `metrics` and `processes` and writes
    /// both.
    async fn write_report(&mut self, metrics: &mut NodeMetrics, processes: &mut NodeProcesses) -> Result<()> {
        let now = unix_now();
        self.probe.sample_metrics(now, self.detected, metrics);
        self.probe
            .check_processes(&self.config.processes, &mut processes.processes);
        self.probe
            .check_command_lines(&self.config.command_line_processes, &mut processes.processes);
        processes.state_time = now;
        let id = self.config.node_id.as_str();
        let timeout = self.config.write_timeout;
        let store = &self.store;
        let (m, p) = tokio::join!(
            bounded(timeout, "put_node_metrics", store.put_node_metrics(id, metrics)),
            bounded(
                timeout,
                "put_node_processes",
                store.put_node_processes(id, processes)
            ),
        );
        m.and(p)
    }

    /// Runs the agent until `shutdown` completes: heartbeats, metrics and process
    /// health as described in the [module docs](self). Returns the counters. Never
    /// fails on store errors; they are logged and retried.
    pub async fn run<F>(mut self, shutdown: F) -> Arc<AgentStats>
    where
        F: Future<Output = ()>,
    {
        let stats = self.stats.clone();
        let span = tracing::info_span!("node_agent", node_id = %self.config.node_id);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut metrics = NodeMetrics::default();
        let mut processes = NodeProcesses::default();
        let mut hb = Streak::new("heartbeat");
        let mut report = Streak::new("metrics and process health");
        let start = Instant::now();
        let mut next_hb = start;
        let mut next_report = start;
        info!(
            node_id = %self.config.node_id,
            total = %self.heartbeat.total_resources,
            "node agent started"
        );
        loop {
            let work = async {
                let due = next_hb.min(next_report);
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                if now >= next_hb {
                    match self.write_heartbeat().await {
                        Ok(()) => {
                            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                            hb.succeed();
                        }
                        Err(e) => {
                            self.stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                            hb.fail(&e, &self.stats);
                        }
                    }
                    let delay = hb.next_delay(self.config.heartbeat_interval, self.config.max_backoff);
                    next_hb = next_deadline(next_hb, delay, Instant::now());
                }
                if now >= next_report {
                    match self.write_report(&mut metrics, &mut processes).await {
                        Ok(()) => {
                            self.stats.reports.fetch_add(1, Ordering::Relaxed);
                            report.succeed();
                        }
                        Err(e) => {
                            self.stats.report_failures.fetch_add(1, Ordering::Relaxed);
                            report.fail(&e, &self.stats);
                        }
                    }
                    let delay = report.next_delay(self.config.report_interval, self.config.max_backoff);
                    next_report = next_deadline(next_report, delay, Instant::now());
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = work.instrument(span.clone()) => {}
            }
        }
        info!(node_id = %self.config.node_id, heartbeats = stats.heartbeats(), "node agent stopped");
        stats
    }
}

/// The next deadline `delay` after `prev`, keeping a fixed rhythm; when the work ran
/// past it (a slow write), the next attempt is `delay` from now instead of a burst.
fn next_deadline(prev: Instant, delay: Duration, now: Instant) -> Instant {
    let next = prev + delay;
    if next <= now { now + delay } else { next }
}

/// Bounds a store call by `timeout`.
async fn bounded<F>(timeout: Duration, op: &'static str, call: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("the state store did not answer within {timeout:?}"),
        )
        .with_operation(op)),
    }
}

#[cfg(test)]
mod tests;
