//! `cloudtik-node head`: the state store's redis-server (configured, started, supervised,
//! stopped), the head's agent, and the place of the cluster controller.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use cloudtik_core::NodeKind;
use cloudtik_core::agent::NodeAgent;
use cloudtik_core::cluster::{NodeLayout, SshNodeSetup};
use cloudtik_core::command::SshOptions;
use cloudtik_core::config::ClusterConfig;
use cloudtik_core::provider::ProviderPlace;
use cloudtik_core::scaler::{Controller, ControllerConfig, ScalingInputs};
use cloudtik_core::state::{
    CONTROLLER_LEASE, EncryptionKey, RedisAddress, RedisServerConfig, RedisStoreConfig, StateStore,
    generate_password,
};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::bootstrap::{BootstrapConfig, DEFAULT_REDIS_PORT};
use super::supervise::Backoff;
use super::{HeadArgs, NodeProgram, Shutdown, agent_config, connect_store, wait_shutdown};

/// The cluster controller of the autoscaler, run by the head next to its agent on the
/// state store the head supervises. [`run`] takes an `Option<Box<dyn HeadController>>`:
/// `main` passes [`ClusterController`] when the bootstrap config names a cluster config,
/// else `None` (the head then runs the state store and its agent only). The controller
/// must return once `shutdown` flips to true.
#[async_trait]
pub(crate) trait HeadController: Send {
    /// Runs the controller loop until shutdown.
    async fn run(&self, store: Arc<dyn StateStore>, shutdown: Shutdown) -> anyhow::Result<()>;
}

/// Runs `controller` until shutdown; when it fails, logs why and runs it again after
/// 10 s (the state store and the head's agent keep running meanwhile).
async fn supervise_controller(
    controller: Box<dyn HeadController>,
    store: Arc<dyn StateStore>,
    shutdown: Shutdown,
) {
    loop {
        match controller.run(store.clone(), shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => {
                error!(error = %format!("{e:#}"), "the cluster controller failed; restarting it in 10 s")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = wait_shutdown(shutdown.clone()) => return,
        }
    }
}

/// The autoscaler's controller for the cluster config the bootstrap file names: the
/// provider inside the head ([`ProviderPlace::Head`]), workers set up over SSH with the
/// cluster's key ([`SshNodeSetup`]), state in the head's store.
pub(crate) struct ClusterController {
    config: ClusterConfig,
    boot: BootstrapConfig,
    head_ip: String,
    redis_port: u16,
    program: NodeProgram,
}

impl ClusterController {
    /// The controller of the bootstrap config's cluster, or `None` when it names none.
    pub(crate) fn from_bootstrap(args: &HeadArgs, program: &NodeProgram) -> anyhow::Result<Option<Self>> {
        let boot = BootstrapConfig::load(args.node.bootstrap_config.as_deref())?;
        let Some(path) = boot.cluster_config.clone() else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the cluster config {}", path.display()))?;
        // Checked as `cloudtik start` checked it (types, limits, the provider's keys).
        let loader = program
            .providers
            .configure_loader(cloudtik_providers::config_loader());
        let mut config: ClusterConfig =
            loader.load_resolved_cluster_str(&path.display().to_string(), &text)?;
        // `cloudtik start` filled in the node types' resources (from DescribeInstanceTypes on
        // AWS); this fills only what needs no cloud call.
        program.providers.prepare_config(&mut config)?;
        let head_ip = args
            .node
            .node_ip
            .clone()
            .or_else(|| boot.head_ip.clone())
            .context("the controller needs the head's IP: --node-ip or head_ip in the bootstrap config")?;
        let redis_port = args.redis_port.or(boot.redis_port).unwrap_or(DEFAULT_REDIS_PORT);
        Ok(Some(ClusterController {
            config,
            boot,
            head_ip,
            redis_port,
            program: program.clone(),
        }))
    }
}

#[async_trait]
impl HeadController for ClusterController {
    async fn run(&self, store: Arc<dyn StateStore>, shutdown: Shutdown) -> anyhow::Result<()> {
        let config = self.config.clone();
        let boot = &self.boot;
        let head_ip = self.head_ip.clone();
        let redis_port = self.redis_port;
        let authorized_key = match &boot.ssh_public_key {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the public key {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let provider = self
            .program
            .providers
            .node_provider(&config, &ProviderPlace::Head { authorized_key })
            .await?;
        let inputs = ScalingInputs::from_cluster_config(&config)?;
        let known_hosts = boot
            .known_hosts
            .clone()
            .unwrap_or_else(|| PathBuf::from("known_hosts"));
        // The key as the head has it (the config names the path on the user's machine).
        let mut auth = config.auth.clone();
        if let Some(key) = &boot.ssh_private_key {
            auth.ssh_private_key = Some(key.display().to_string());
        }
        let ssh = SshOptions::from_auth(&auth, known_hosts)?;
        let layout_binary = boot
            .node_binary
            .clone()
            .unwrap_or_else(|| cloudtik_core::updater::bootstrap::DEFAULT_INSTALL_PATH.into());
        let layout = NodeLayout::new(&ssh.user, layout_binary.clone());
        let password = boot.redis_password.clone().unwrap_or_default();
        // The built-in runtimes, plus those the program that started the cluster
        // registered (sent as data next to the cluster config).
        let mut registry = (*self.program.runtimes).clone();
        if let Some(dir) = boot.cluster_config.as_deref().and_then(|p| p.parent()) {
            let file = dir.join("runtimes.json");
            if let Ok(text) = std::fs::read_to_string(&file) {
                let snapshots: Vec<cloudtik_core::runtime::snapshot::RuntimeSnapshot> =
                    serde_json::from_str(&text)
                        .with_context(|| format!("invalid runtimes file {}", file.display()))?;
                let added = cloudtik_core::runtime::snapshot::register_missing(&mut registry, snapshots);
                if !added.is_empty() {
                    info!(runtimes = ?added, "runtimes from the cluster's starter");
                }
            }
        }
        let registry = Arc::new(registry);
        let runtimes = cloudtik_core::runtime::NodeRuntimes::of(&registry, &config, &config.head_node_type);
        // The runtimes' scaling policy, else CloudTik's default from the agents' load.
        let policy: Arc<dyn cloudtik_core::scaler::ScalingPolicy> = match runtimes.scaling_policy(&head_ip) {
            Some(p) => p,
            None => Arc::new(cloudtik_core::scaler::LoadScalingPolicy::new(store.clone())),
        };
        info!(policy = policy.name(), "scaling policy");
        // The runtimes, their services and endpoints, for discovery (`cloudtik info`).
        if let Err(e) = store
            .set_runtime_config(None, &runtimes.published(&head_ip))
            .await
        {
            warn!(error = %cloudtik_core::Report(&e), "cannot publish the runtime config; going on");
        }
        let setup = SshNodeSetup::new(
            provider.clone(),
            Arc::new(config),
            ssh,
            layout,
            head_ip,
            redis_port,
            password,
        )
        .with_runtimes(registry);
        // Workers from stock images get this program (the head's own build).
        let setup = if boot.install_node_program == Some(true) {
            let binary = cloudtik_core::updater::NodeBinary::current_exe()?;
            setup.with_bootstrap(cloudtik_core::updater::NodeBootstrap::new(
                cloudtik_core::updater::NodeBootstrap::install_path_for(layout_binary.as_str()),
                binary,
            ))
        } else {
            setup
        };
        let mut cc = ControllerConfig::default();
        if let Some(s) = boot.controller_interval_s.filter(|s| *s > 0.0) {
            cc = cc.with_update_interval(Duration::from_secs_f64(s));
        }
        if let Some(s) = boot.heartbeat_timeout_s.filter(|s| *s > 0.0) {
            cc = cc.with_heartbeat_timeout(Duration::from_secs_f64(s));
        }
        // One controller at a time: a second head process on this cluster (two concurrent
        // `cloudtik start`) stands by until this one's lease expires. The holder id is
        // fixed for the process, so a controller restarted by `supervise_controller`
        // takes its own lease back at once.
        static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let holder = HOLDER.get_or_init(|| cloudtik_core::scaler::LeaseConfig::unique_holder(&self.head_ip));
        release_dead_local_lease(store.as_ref(), &self.head_ip, holder).await;
        info!(cluster = %provider.cluster_name(), %holder, "starting the cluster controller");
        let controller = Controller::new(inputs, cc, provider, store, Arc::new(setup))
            .with_lease(cloudtik_core::scaler::LeaseConfig::new(holder.clone()))
            .with_scaling_policy(policy);
        let counters = controller.run(wait_shutdown(shutdown)).await?;
        info!(
            passes = counters.passes,
            launched = counters.nodes_launched,
            "the cluster controller stopped"
        );
        Ok(())
    }
}

/// Releases the controller lease when an earlier `cloudtik-node head` of this node holds
/// it and is dead (killed with `kill -9`, or gone with a restarted container), so this
/// process takes over at once instead of standing by until the lease expires (30 s).
/// Only a holder on this head's IP (`<head ip>:<pid>:<random>`) whose process is gone
/// (no `cloudtik-node head` with that pid here, or the pid is this process's own) is
/// released, compare-and-delete on its token; a live second head keeps its lease.
async fn release_dead_local_lease(store: &dyn StateStore, head_ip: &str, own_holder: &str) {
    let lease = match store.lease(CONTROLLER_LEASE).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %cloudtik_core::Report(&e), "cannot read the controller lease");
            return;
        }
    };
    if lease.holder == own_holder {
        return;
    }
    let Some(pid) = local_holder_pid(&lease.holder, head_ip) else {
        return;
    };
    if pid != std::process::id() && is_head_process(pid) {
        return;
    }
    match store.release_lease(&lease.fence()).await {
        Ok(true) => info!(
            holder = %lease.holder,
            token = lease.token,
            "released the controller lease of a dead head process of this node"
        ),
        Ok(false) => {}
        Err(e) => {
            warn!(error = %cloudtik_core::Report(&e), "cannot release the controller lease of a dead head process")
        }
    }
}

/// The pid of a lease holder `<head ip>:<pid>:<random>` on `head_ip`.
fn local_holder_pid(holder: &str, head_ip: &str) -> Option<u32> {
    let rest = holder.strip_prefix(head_ip)?.strip_prefix(':')?;
    let (pid, random) = rest.split_once(':')?;
    if random.contains(':') {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs `cloudtik-node ... head` here.
fn is_head_process(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == b"head"),
        // Unreadable but there: assume it is alive.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Where the head keeps its files.
struct HeadFiles {
    password: PathBuf,
    key: PathBuf,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pid: PathBuf,
}

impl HeadFiles {
    fn in_dir(dir: &Path) -> Self {
        HeadFiles {
            password: dir.join("redis-password"),
            key: dir.join("encryption-key"),
            config: dir.join("redis.conf"),
            data: dir.join("redis-data"),
            log: dir.join("redis.log"),
            pid: dir.join("redis-server.pid"),
        }
    }
}

/// Reads a secret from `path`, or makes one with `make` and writes it there, readable by
/// its owner only.
fn read_or_create_secret(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = make();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(secret)
}

/// Runs the head until `shutdown`; `controller` is the autoscaler's controller loop, if
/// one is plugged in.
pub(crate) async fn run(
    args: HeadArgs,
    shutdown: Shutdown,
    controller: Option<Box<dyn HeadController>>,
    program: &NodeProgram,
) -> anyhow::Result<()> {
    let boot = BootstrapConfig::load(args.node.bootstrap_config.as_deref())?;
    let head_ip = args.node.node_ip.clone().or_else(|| boot.head_ip.clone());
    let agent = agent_config(
        &args.node,
        &boot,
        NodeKind::Head,
        head_ip.as_deref(),
        &program.runtimes,
    )?;
    let port = args.redis_port.or(boot.redis_port).unwrap_or(DEFAULT_REDIS_PORT);

    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let files = HeadFiles::in_dir(&args.dir);
    std::fs::create_dir_all(&files.data)?;
    let password = match &boot.redis_password {
        Some(p) => p.clone(),
        None => read_or_create_secret(&files.password, generate_password)?,
    };
    let key = match &boot.encryption_key {
        Some(hex) => EncryptionKey::from_hex(hex)?,
        None => EncryptionKey::from_hex(&read_or_create_secret(&files.key, || {
            EncryptionKey::generate().to_hex()
        })?)?,
    };
    let mut server = RedisServerConfig::new(port, password.clone(), &files.data).with_logfile(&files.log);
    if let Some(ip) = &head_ip {
        server = server.with_bind(ip.clone());
    }
    server.write_to(&files.config)?;
    info!(
        cluster = boot.cluster_name.as_deref().unwrap_or("-"),
        port,
        bind = %server.bind_addresses().join(" "),
        "starting the state store"
    );

    // A redis-server of a previous head (killed before it could stop it) would hold the
    // port and the append-only file: stop it first.
    stop_stale_redis(&files.data).await;
    // redis-server, supervised until shutdown; a failure to start it at all is fatal.
    let first = spawn_redis(&args.redis_server, &files)?;
    let supervisor = tokio::spawn(supervise_redis(
        first,
        args.redis_server.clone(),
        files.config.clone(),
        files.pid.clone(),
        shutdown.clone(),
    ));

    let result = async {
        let store_config =
            RedisStoreConfig::new(RedisAddress::new("127.0.0.1", port), key).with_password(password);
        let Some(store) = connect_store(store_config, Duration::from_secs(30), &shutdown)
            .await
            .context("the state store did not come up")?
        else {
            return Ok(());
        };
        store.publish_shards().await?;
        let store: Arc<dyn StateStore> = Arc::new(store);
        info!(node_id = %agent.node_id, "state store up; starting the head's agent");
        let agent = NodeAgent::new(agent, store.clone())?;
        let agent_run = agent.run(wait_shutdown(shutdown.clone()));
        match controller {
            Some(c) => {
                tokio::join!(agent_run, supervise_controller(c, store, shutdown.clone()));
                Ok(())
            }
            None => {
                agent_run.await;
                Ok(())
            }
        }
    }
    .await;
    if result.is_err() {
        // The head failed before shutdown was asked for: stop redis-server too. Aborting
        // the supervisor drops its child, which kills redis-server (`kill_on_drop`).
        supervisor.abort();
    }
    match supervisor.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %format!("{e:#}"), "supervising redis-server failed"),
        Err(e) if e.is_cancelled() => {}
        Err(e) => error!(error = %cloudtik_core::Report(&e), "the redis-server supervisor panicked"),
    }
    result
}

fn spawn_redis(binary: &Path, files: &HeadFiles) -> anyhow::Result<Child> {
    spawn_redis_with(binary, &files.config, &files.pid)
}

/// `setpriv` of util-linux, which can set a parent-death signal before it execs a program.
fn find_setpriv() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("setpriv"))
        .find(|p| p.is_file())
}

/// Starts redis-server on `config`. It gets SIGTERM when the head dies, however it dies
/// (`setpriv --pdeathsig TERM`, where util-linux's setpriv exists; this crate forbids the
/// `unsafe` a `prctl` in `pre_exec` needs), so a killed head leaves no redis-server
/// behind; `kill_on_drop` covers a head that fails without dying.
fn spawn_redis_with(binary: &Path, config: &Path, pid_file: &Path) -> anyhow::Result<Child> {
    let mut command = match find_setpriv() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(binary);
            c
        }
        None => {
            warn!("setpriv (util-linux) is not installed: redis-server would outlive a killed head");
            Command::new(binary)
        }
    };
    let child = command
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} (is redis-server installed?)", binary.display()))?;
    if let Some(pid) = child.id() {
        std::fs::write(pid_file, format!("{pid}\n")).ok();
    }
    Ok(child)
}

/// Keeps redis-server running until shutdown: restarts it when it exits, waiting 1 s,
/// then twice as long after each quick death up to 30 s (back to 1 s after it ran for a
/// minute); the log states the delay it then waits. On shutdown, stops it with SIGTERM
/// (it syncs its append-only file) and, if it has not exited after 10 s, kills it.
async fn supervise_redis(
    first: Child,
    binary: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::services();
    let mut child = Some(first);
    let mut started = Instant::now();
    loop {
        let delay = if let Some(running) = child.as_mut() {
            tokio::select! {
                status = running.wait() => {
                    let delay = backoff.delay_after(started.elapsed());
                    match status {
                        Ok(status) => warn!(%status, "redis-server exited; restarting it in {delay:?}"),
                        Err(e) => warn!(error = %cloudtik_core::Report(&e), "lost track of redis-server; restarting it in {delay:?}"),
                    }
                    delay
                }
                () = wait_shutdown(shutdown.clone()) => {
                    stop_redis(running).await;
                    let _ = std::fs::remove_file(&pid_file);
                    return Ok(());
                }
            }
        } else {
            let delay = backoff.delay_after(Duration::ZERO);
            warn!("trying to start redis-server again in {delay:?}");
            delay
        };
        child = None;
        let _ = std::fs::remove_file(&pid_file);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wait_shutdown(shutdown.clone()) => return Ok(()),
        }
        started = Instant::now();
        match spawn_redis_with(&binary, &config, &pid_file) {
            Ok(c) => child = Some(c),
            // Keep trying: the binary may come back (a package upgrade).
            Err(e) => error!(error = %format!("{e:#}"), "cannot restart redis-server"),
        }
    }
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The redis-servers serving `data_dir` (redis-server runs in its `dir`): those of this
/// head's folder, whoever started them.
fn redis_servers_in(data_dir: &Path) -> Vec<u32> {
    let Ok(data_dir) = data_dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "redis-server")
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
                && process_alive(*pid)
        })
        .collect()
}

/// Stops redis-servers left running on this head's data by a previous head (killed
/// before it could stop them, on a system without `setpriv`): SIGTERM, so they sync
/// their append-only file, then SIGKILL after 10 s. The new head starts its own.
async fn stop_stale_redis(data_dir: &Path) {
    use rustix::process::{Pid, Signal, kill_process};
    let stale = redis_servers_in(data_dir);
    if stale.is_empty() {
        return;
    }
    for pid in &stale {
        warn!(
            pid,
            "a redis-server of a previous head still serves this head's data; stopping it"
        );
        if let Some(p) = Pid::from_raw(*pid as i32) {
            let _ = kill_process(p, Signal::TERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stale.iter().any(|p| process_alive(*p)) {
        if Instant::now() >= deadline {
            for pid in stale.iter().filter(|p| process_alive(**p)) {
                warn!(pid, "the old redis-server did not stop within 10 s; killing it");
                if let Some(p) = Pid::from_raw(*pid as i32) {
                    let _ = kill_process(p, Signal::KILL);
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A killed process is gone once its parent (or init) reaps it: wait briefly for that.
    let deadline = Instant::now() + Duration::from_secs(2);
    while stale.iter().any(|p| process_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL after 10 s.
async fn stop_redis(child: &mut Child) {
    let Some(pid) = child.id() else {
        return;
    };
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) => info!(%status, "redis-server stopped"),
        Ok(Err(e)) => warn!(error = %cloudtik_core::Report(&e), "waiting for redis-server"),
        Err(_) => {
            warn!("redis-server did not stop within 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn only_holders_of_this_head_ip_name_a_local_pid() {
        assert_eq!(local_holder_pid("10.0.0.2:71:be206253", "10.0.0.2"), Some(71));
        assert_eq!(local_holder_pid("10.0.0.2:71:be206253", "10.0.0.20"), None);
        assert_eq!(local_holder_pid("10.0.0.20:71:be206253", "10.0.0.2"), None);
        assert_eq!(local_holder_pid("fd00::2:71:ab", "fd00::2"), Some(71));
        assert_eq!(local_holder_pid("10.0.0.2:x:ab", "10.0.0.2"), None);
        assert_eq!(local_holder_pid("someone-else", "10.0.0.2"), None);
    }

    /// Waits until a child just spawned shows its own command line: right after `spawn`
    /// returns, `/proc/<pid>/cmdline` can still be empty.
    fn wait_exec(pid: u32) {
        let start = std::time::Instant::now();
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "pid {pid} never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_dead_pid_or_another_program_is_no_head() {
        // This test program runs no `head` argument; a pid far above pid_max is gone. The
        // shell's command is not its last (`; exit 0`), so it stays `sh ... head` instead
        // of exec'ing `sleep`, as dash does with a last command.
        assert!(!is_head_process(std::process::id()));
        assert!(!is_head_process(u32::MAX - 1));
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 5; exit 0", "head"])
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_exec(pid);
        assert!(is_head_process(pid));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_head_process(pid));
    }

    #[tokio::test]
    async fn the_lease_of_a_dead_local_head_is_released_a_live_one_kept() {
        use cloudtik_core::state::{InMemoryStore, LeaseAcquire};
        let store = InMemoryStore::new();
        let acquire = |holder: String| {
            let store = &store;
            async move {
                store
                    .try_acquire_lease(CONTROLLER_LEASE, &holder, 1e10, Duration::from_secs(30))
                    .await
                    .unwrap()
            }
        };
        // A dead process of this head: released.
        let dead = format!("10.0.0.2:{}:aaaa", u32::MAX - 1);
        assert!(matches!(acquire(dead.clone()).await, LeaseAcquire::Acquired(_)));
        release_dead_local_lease(&store, "10.0.0.2", "10.0.0.2:1:me").await;
        assert!(store.lease(CONTROLLER_LEASE).await.unwrap().is_none());
        // A live head process of this node, and a head of another IP: kept.
        let mut live = std::process::Command::new("sh")
            .args(["-c", "sleep 5; exit 0", "head"])
            .spawn()
            .unwrap();
        wait_exec(live.id());
        for holder in [
            format!("10.0.0.2:{}:bbbb", live.id()),
            format!("10.0.0.3:{}:cccc", u32::MAX - 1),
        ] {
            assert!(matches!(acquire(holder.clone()).await, LeaseAcquire::Acquired(_)));
            release_dead_local_lease(&store, "10.0.0.2", "10.0.0.2:1:me").await;
            let lease = store.lease(CONTROLLER_LEASE).await.unwrap().unwrap();
            assert_eq!(lease.holder, holder);
            store.release_lease(&lease.fence()).await.unwrap();
        }
        live.kill().unwrap();
        live.wait().unwrap();
    }
}
