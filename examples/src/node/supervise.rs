//! `cloudtik-node supervise`: runs one service of the node (the head's services or a
//! worker's agent) and starts it again whenever it exits, with exponential backoff,
//! until the supervisor is stopped.
//!
//! A service is described by a *service file* (JSON, mode 0600) written when the node is
//! set up: the command line, the environment it needs (the agent's state-store password)
//! and its log. The node's init starts a supervisor for every service file at boot (a
//! restart policy plus the container's command on the virtual provider, a systemd unit on
//! VMs), so a rebooted node runs its services again with no command from the user.
//!
//! ```text
//! cloudtik-node supervise --service-file ~/cloudtik/services/head.json \
//!     --log-file ~/cloudtik/logs/head.log -- /cloudtik/bin/cloudtik-node head --dir ...   # write, then run
//! cloudtik-node supervise --service-file ~/cloudtik/services/head.json               # run (at boot)
//! ```
//!
//! Guarantees:
//! * the service runs in its own process group; when it exits, whatever it left in that
//!   group (a redis-server whose parent was killed) is killed, so no orphan outlives it;
//! * after an exit the service starts again after 1 s, doubling after each quick exit up
//!   to 30 s, back to 1 s once a run lasted a minute; the log states the real delay;
//! * SIGTERM (or ctrl-c) stops the supervisor: it sends SIGTERM to the service, waits up
//!   to 25 s, then kills its process group, and restarts nothing meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{Shutdown, wait_shutdown};

/// How long the supervisor waits for the service to exit after SIGTERM before killing it.
const STOP_GRACE: Duration = Duration::from_secs(25);

#[derive(Debug, Args)]
pub(crate) struct SuperviseArgs {
    /// The service file: read it, or write it first when a command follows `--`.
    #[arg(long, value_name = "FILE")]
    pub(crate) service_file: PathBuf,
    /// With a command: the log the service's output (and the supervisor's) is appended to.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// With a command: an environment variable whose current value the service gets
    /// (repeat for several); kept in the service file (mode 0600).
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Write the service file and exit (an init system runs the supervisor).
    #[arg(long, requires = "command")]
    write_only: bool,
    /// The service's program and arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// One supervised service, as kept in its service file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceSpec {
    /// The service's name (the file's stem), for logs.
    pub(crate) name: String,
    /// The program and its arguments.
    pub(crate) argv: Vec<String>,
    /// Environment variables set for the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) env: BTreeMap<String, String>,
    /// Where the service's output goes (appended); none: the supervisor's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) log: Option<PathBuf>,
}

impl ServiceSpec {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the service file {}", path.display()))?;
        let spec: ServiceSpec = serde_json::from_str(&text)
            .with_context(|| format!("invalid service file {}", path.display()))?;
        if spec.argv.is_empty() {
            bail!("the service file {} names no command", path.display());
        }
        Ok(spec)
    }

    /// Writes the file readable by its owner only, replacing it atomically.
    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// The service to run: the one the flags describe (written to the service file first),
/// else the one in the file. `Ok(None)`: written, nothing to run (`--write-only`).
pub(crate) fn resolve(args: &SuperviseArgs) -> anyhow::Result<Option<ServiceSpec>> {
    if args.command.is_empty() {
        return ServiceSpec::load(&args.service_file).map(Some);
    }
    let name = args
        .service_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("service")
        .to_string();
    let mut env = BTreeMap::new();
    for var in &args.env {
        if let Ok(v) = std::env::var(var) {
            env.insert(var.clone(), v);
        }
    }
    let spec = ServiceSpec {
        name,
        argv: args.command.clone(),
        env,
        log: args.log_file.clone(),
    };
    spec.write(&args.service_file)?;
    Ok((!args.write_only).then_some(spec))
}

/// Opens a log for appending (making its folder).
pub(crate) fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot open the log {}", path.display()))
}

/// Exponential backoff between restarts (the curve of [`cloudtik_core::backoff`]):
/// `initial`, doubled after each quick exit up to `max`, and back to `initial` after a
/// run of at least `reset_after`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    curve: cloudtik_core::backoff::Backoff,
    reset_after: Duration,
    quick_exits: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            curve: cloudtik_core::backoff::Backoff::new(initial, max),
            reset_after,
            quick_exits: 0,
        }
    }

    /// The services' default: 1 s, doubling up to 30 s, reset after a minute's run.
    pub(crate) fn services() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }

    /// The delay before the next start, after a run that lasted `ran_for`. Callers log
    /// and wait exactly this.
    pub(crate) fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.quick_exits = 0;
        }
        let delay = self.curve.delay(self.quick_exits);
        self.quick_exits = self.quick_exits.saturating_add(1);
        delay
    }
}

/// Sends `signal` to the process group `pgid`; false when there is none left.
fn signal_group(pgid: u32, signal: rustix::process::Signal) -> bool {
    match rustix::process::Pid::from_raw(pgid as i32) {
        Some(pid) => rustix::process::kill_process_group(pid, signal).is_ok(),
        None => false,
    }
}

/// The live (not zombie) members of the process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command's closing parenthesis: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            state != "Z" && state != "X" && pgrp == Some(pgid)
        })
        .collect()
}

/// Kills what is left of the process group `pgid` (the service's children): SIGTERM,
/// then SIGKILL to whatever is still there after `grace`. Zombies (exited, waiting for
/// init to reap them) count as gone.
async fn reap_group(name: &str, pgid: u32, grace: Duration) {
    use rustix::process::Signal;
    if group_members(pgid).is_empty() {
        return;
    }
    warn!(
        service = name,
        pgid, "the service left processes behind; stopping them"
    );
    signal_group(pgid, Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if group_members(pgid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warn!(
        service = name,
        pgid, "processes left by the service did not stop within {grace:?}; killing them"
    );
    signal_group(pgid, Signal::KILL);
}

fn spawn(spec: &ServiceSpec) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .stdin(Stdio::null())
        // Its own process group, so what it leaves behind can be found and stopped.
        .process_group(0)
        .kill_on_drop(false);
    match &spec.log {
        Some(log) => {
            let f = open_log(log)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", spec.argv[0]))
}

/// Runs `spec` until `shutdown`, starting it again after every exit (see the module docs).
pub(crate) async fn run(spec: ServiceSpec, shutdown: Shutdown) -> anyhow::Result<()> {
    run_with(spec, shutdown, Backoff::services(), STOP_GRACE).await
}

pub(crate) async fn run_with(
    spec: ServiceSpec,
    shutdown: Shutdown,
    mut backoff: Backoff,
    grace: Duration,
) -> anyhow::Result<()> {
    let name = spec.name.clone();
    info!(service = %name, command = %spec.argv.join(" "), "supervising");
    loop {
        let started = Instant::now();
        let delay = match spawn(&spec) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                info!(service = %name, pid, "started");
                tokio::select! {
                    biased;
                    () = wait_shutdown(shutdown.clone()) => {
                        stop(&name, &mut child, pid, grace).await;
                        return Ok(());
                    }
                    status = child.wait() => {
                        let ran_for = started.elapsed();
                        // The service is gone: so must be anything it left in its group.
                        reap_group(&name, pid, Duration::from_secs(10)).await;
                        let delay = backoff.delay_after(ran_for);
                        match status {
                            Ok(status) => warn!(
                                service = %name, %status, ran_for = ?ran_for,
                                "the service exited; starting it again in {delay:?}"
                            ),
                            Err(e) => warn!(
                                service = %name, error = %cloudtik_core::Report(&e),
                                "lost track of the service; starting it again in {delay:?}"
                            ),
                        }
                        delay
                    }
                }
            }
            Err(e) => {
                let delay = backoff.delay_after(Duration::ZERO);
                error!(service = %name, error = %format!("{e:#}"), "cannot start the service; trying again in {delay:?}");
                delay
            }
        };
        tokio::select! {
            biased;
            () = wait_shutdown(shutdown.clone()) => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// SIGTERM to the service, then SIGKILL to its group after `grace`.
async fn stop(name: &str, child: &mut tokio::process::Child, pid: u32, grace: Duration) {
    use rustix::process::Signal;
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => info!(service = %name, %status, "the service stopped"),
        Ok(Err(e)) => warn!(service = %name, error = %cloudtik_core::Report(&e), "waiting for the service"),
        Err(_) => {
            warn!(service = %name, "the service did not stop within {grace:?}; killing it");
            signal_group(pid, Signal::KILL);
            let _ = child.wait().await;
        }
    }
    reap_group(name, pid, Duration::from_secs(5)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::services();
        let quick = Duration::from_millis(100);
        let delays: Vec<u64> = (0..7).map(|_| b.delay_after(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        // A run of a minute or more: the next delay is the initial one, whatever came before.
        assert_eq!(b.delay_after(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(b.delay_after(quick), Duration::from_secs(2));
    }

    #[test]
    fn service_files_round_trip_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services/agent.json");
        let spec = ServiceSpec {
            name: "agent".into(),
            argv: vec!["/bin/true".into(), "x y".into()],
            env: BTreeMap::from([("CLOUDTIK_REDIS_PASSWORD".into(), "secret".into())]),
            log: Some(dir.path().join("agent.log")),
        };
        spec.write(&path).unwrap();
        assert_eq!(ServiceSpec::load(&path).unwrap(), spec);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, r#"{"name":"x","argv":[]}"#).unwrap();
        assert!(ServiceSpec::load(&path).is_err());
    }

    fn shell(name: &str, script: &str, log: &Path) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: BTreeMap::from([("SV_TEST".into(), "yes".into())]),
            log: Some(log.to_path_buf()),
        }
    }

    fn count_lines(path: &Path, needle: &str) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// A service that exits at once is started again with growing delays; stopping the
    /// supervisor stops the service and starts nothing more.
    #[tokio::test]
    async fn a_dying_service_is_restarted_and_stop_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("svc.log");
        let spec = shell("svc", "echo run $SV_TEST; exit 3", &log);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let backoff = Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(80),
            Duration::from_secs(60),
        );
        let task = tokio::spawn(run_with(spec, rx, backoff, Duration::from_secs(5)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while count_lines(&log, "run yes") < 4 {
            assert!(
                Instant::now() < deadline,
                "not restarted: {:?}",
                std::fs::read_to_string(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the supervisor stops")
            .unwrap()
            .unwrap();
        let runs = count_lines(&log, "run yes");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count_lines(&log, "run yes"), runs, "started again after stop");
    }

    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    /// A service killed with SIGKILL leaves a child behind: the supervisor kills the
    /// child before starting the service again. Stop ends a service ignoring SIGTERM.
    #[tokio::test]
    async fn orphans_of_a_killed_service_are_stopped_and_stop_escalates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("svc.log");
        let pids = dir.path().join("pids");
        // The service starts a child (sleep) and records both pids, then waits, ignoring
        // SIGTERM (set after the fork: an ignored signal is inherited).
        let script = format!(
            "sleep 300 & trap '' TERM; echo \"$$ $!\" >> {p}; wait",
            p = pids.display()
        );
        let spec = shell("svc", &script, &log);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(50),
            Duration::from_secs(60),
        );
        let task = tokio::spawn(run_with(spec, rx, backoff, Duration::from_millis(500)));
        let read_pids = || -> Vec<(u32, u32)> {
            std::fs::read_to_string(&pids)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(' ')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_pids().is_empty() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (service, child) = read_pids()[0];
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(service as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        while read_pids().len() < 2 {
            assert!(Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child), "the killed service's child {child} outlived it");
        let (service2, child2) = read_pids()[1];
        // The service ignores SIGTERM (its sleep does not): stop kills the group.
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the supervisor stops")
            .unwrap()
            .unwrap();
        assert!(!alive(service2) && !alive(child2));
    }
}
