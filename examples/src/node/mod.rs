//! `cloudtik-node`: what runs on every node of a cluster, as a library: [`NodeProgram`].
//!
//! The `cloudtik-node` binary is `NodeProgram::builtin().main()`. A program with
//! providers or runtimes of its own builds its node program with them
//! ([`NodeProgram::with_providers`], [`NodeProgram::with_runtimes`]) and ships it as the
//! cluster's node program: the head's controller then makes nodes with the program's
//! provider, and nodes run its runtimes' on-node logic (see the example
//! `custom_provider`).
//!
//! * `cloudtik-node agent` runs the node agent: it heartbeats into the head's state store
//!   every second and reports metrics and process health every few seconds.
//! * `cloudtik-node head` runs the head's services: it writes the redis-server config
//!   (random password kept in `--dir`, bound to the head's internal address and loopback,
//!   protected mode, append-only file), starts and supervises redis-server (restarted with
//!   backoff if it dies), and runs the agent of the head in the same process, and, when
//!   the bootstrap config names a `cluster_config`, the cluster controller of the
//!   autoscaler (workers launched through the provider inside the head and set up over
//!   SSH with the key the bootstrap config names).
//! * `cloudtik-node supervise --service-file FILE [--log-file LOG --env NAME.. -- COMMAND..]`
//!   runs one of the node's services (`head` or `agent`), described by a service file
//!   (written from the command after `--`, or read at boot), and starts it again with
//!   backoff whenever it exits; the service's process group is killed when it dies, so it
//!   leaves no orphan. SIGTERM stops the supervisor and its service. The node's init runs
//!   it (see `cloudtik_core::cluster::NodeLayout`).
//!
//! Both read defaults from the bootstrap config file (`--bootstrap-config FILE`), and
//! flags override it. The file is YAML or JSON; every field is optional and unknown
//! fields are refused:
//!
//! ```yaml
//! cluster_name: demo            # shown in logs
//! head_ip: 10.0.0.5             # the head's internal address: redis-server binds to it (and loopback)
//! redis_port: 6789              # the state store's port (default 6789)
//! redis_address: 10.0.0.5:6789  # where agents find the state store (default head_ip:redis_port)
//! redis_password: "..."         # agents: the password (the head generates its own into --dir)
//! encryption_key: "..."         # 64 hex digits: the cluster's key for runtime config and secrets
//! node_type: worker.default     # the agent's node type
//! head_node_type: head.default  # the head's node type
//! heartbeat_interval_s: 1       # seconds between heartbeats
//! report_interval_s: 5          # seconds between metrics and process-health reports
//! resources: {GPU: 1}           # replace or add to the detected CPU and memory
//! processes: [spark-worker]     # processes whose health to report, besides the core ones
//! # The head's controller (all set by `cloudtik start`):
//! cluster_config: /root/cloudtik/cluster.json     # run the autoscaler for this cluster config
//! ssh_private_key: /root/cloudtik/keys/cluster_key # reach workers with this key
//! ssh_public_key: /root/cloudtik/keys/cluster_key.pub
//! known_hosts: /root/cloudtik/known_hosts         # pin workers' host keys here
//! node_binary: /cloudtik/bin/cloudtik-node        # the program on workers
//! controller_interval_s: 5                        # seconds between controller passes
//! heartbeat_timeout_s: 30                         # a node silent this long is lost
//! ```
//!
//! The head keeps in `--dir`: `redis-password` and `encryption-key` (mode 0600, made on
//! the first start and reused after), `redis.conf` (0600), `redis-data/` (the
//! append-only file), `redis.log` and `redis-server.pid`. redis-server gets SIGTERM when
//! the head dies, however it dies (`setpriv --pdeathsig`), and a head stops a
//! redis-server still serving its data (left by an earlier head) before it starts its own.
//! Both stop on SIGTERM or ctrl-c; the agent leaves its rows in the store (the controller
//! ages them out), and the head stops redis-server with SIGTERM so it syncs its
//! append-only file.
//!
//! Exit codes: 0 stopped cleanly; 1 failed (e.g. the state store refused the password);
//! 2 the command line is wrong.

mod bootstrap;
mod head;
mod runtime_cmd;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cloudtik_core::agent::{AgentConfig, NodeAgent};
use cloudtik_core::provider::ProviderRegistry;
use cloudtik_core::runtime::RuntimeRegistry;
use cloudtik_core::state::{EncryptionKey, RedisAddress, RedisStore, RedisStoreConfig};
use cloudtik_core::{ErrorKind, NodeKind, Resources};
use tokio::sync::watch;
use tracing::{info, warn};

use bootstrap::BootstrapConfig;

#[derive(Debug, Parser)]
#[command(name = "cloudtik-node", version, about = "The node agent and head services of a CloudTik cluster", long_about = None)]
struct Cli {
    /// Log level or filter for diagnostics on stderr (e.g. `info`, `cloudtik_core=debug`).
    #[arg(long, global = true, env = "CLOUDTIK_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent: heartbeat, resources, metrics and process health.
    Agent(AgentArgs),
    /// Run the head's services: redis-server (supervised), the head's agent and the controller.
    Head(HeadArgs),
    /// Run a service of the node (from its service file) and restart it whenever it exits.
    Supervise(supervise::SuperviseArgs),
    /// A runtime's logic on this node: install, configure, start or stop (run by the
    /// node's setup, start and stop commands).
    Runtime(runtime_cmd::RuntimeArgs),
}

/// Flags of the agent, shared by `agent` and `head`.
#[derive(Debug, Args)]
struct NodeArgs {
    /// The bootstrap config file (YAML or JSON) to read defaults from.
    #[arg(long, value_name = "FILE")]
    bootstrap_config: Option<PathBuf>,
    /// The node's id (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// The node's internal address (default: the bootstrap `head_ip` on the head, else 127.0.0.1).
    #[arg(long)]
    node_ip: Option<String>,
    /// The node type (default: the bootstrap `node_type`, or `head_node_type` on the head).
    #[arg(long)]
    node_type: Option<String>,
    /// The node's sequence id in the cluster.
    #[arg(long)]
    seq_id: Option<u32>,
    /// Resources as JSON, replacing or adding to the detected CPU and memory, e.g. '{"GPU": 1}'.
    #[arg(long, value_name = "JSON")]
    resources: Option<String>,
    /// Do not detect CPU and memory; report exactly --resources.
    #[arg(long)]
    no_detect: bool,
    /// Seconds between heartbeats (default 1).
    #[arg(long, value_name = "SECONDS")]
    heartbeat_interval: Option<f64>,
    /// Seconds between metrics and process-health reports (default 5).
    #[arg(long, value_name = "SECONDS")]
    report_interval: Option<f64>,
    /// A process whose health to report (repeat for several), besides the core ones.
    #[arg(long = "process", value_name = "NAME")]
    processes: Vec<String>,
}

#[derive(Debug, Args)]
struct AgentArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The state store's primary, host:port (default: the bootstrap `redis_address`).
    #[arg(long)]
    redis_address: Option<String>,
    /// The state store's password (default: the bootstrap `redis_password`).
    #[arg(long, env = "CLOUDTIK_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// The node kind: head, worker or unmanaged.
    #[arg(long, default_value = "worker")]
    node_kind: NodeKind,
}

#[derive(Debug, Args)]
struct HeadArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The head's directory: the password, the encryption key, the redis-server config,
    /// data and log live here.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The state store's port (default: the bootstrap `redis_port`, else 6789).
    #[arg(long)]
    redis_port: Option<u16>,
    /// The redis-server program.
    #[arg(long, default_value = "redis-server", value_name = "PATH")]
    redis_server: PathBuf,
}

/// The `cloudtik-node` program with the providers and runtimes it knows.
#[derive(Debug, Clone)]
pub struct NodeProgram {
    providers: Arc<ProviderRegistry>,
    runtimes: Arc<RuntimeRegistry>,
}

impl NodeProgram {
    /// The program with the built-in providers and runtimes of this build.
    pub fn builtin() -> Self {
        NodeProgram {
            providers: Arc::new(cloudtik_providers::builtin_registry()),
            runtimes: Arc::new(cloudtik_runtime::builtin_registry()),
        }
    }

    /// Uses `providers` for the head's controller (`provider.type` of the cluster config).
    #[must_use]
    pub fn with_providers(mut self, providers: ProviderRegistry) -> Self {
        self.providers = Arc::new(providers);
        self
    }

    /// Uses `runtimes` for `cloudtik-node runtime ...`, the agent's processes and the
    /// head's published runtimes.
    #[must_use]
    pub fn with_runtimes(mut self, runtimes: RuntimeRegistry) -> Self {
        self.runtimes = Arc::new(runtimes);
        self
    }

    /// Runs the command line of this process; returns the exit code (0 stopped cleanly,
    /// 1 failed, 2 the command line is wrong).
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// Runs the command line `args` (the first is the program's name).
    pub fn main_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = match Cli::try_parse_from(args) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
        };
        run(self, cli)
    }
}

fn run(program: NodeProgram, cli: Cli) -> ExitCode {
    // `supervise` resolves its service first: its own log lines go to the service's log.
    let mut service = None;
    if let Command::Supervise(args) = &cli.command {
        match supervise::resolve(args) {
            Ok(Some(spec)) => service = Some(spec),
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    match service.as_ref().and_then(|s| s.log.as_deref()) {
        Some(log) => match supervise::open_log(log) {
            Ok(f) => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .init(),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // One thread: the agent is a few timers and a socket.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_on_signals()?;
        match cli.command {
            Command::Agent(args) => run_agent(args, shutdown, &program.runtimes).await,
            Command::Head(args) => {
                let controller = head::ClusterController::from_bootstrap(&args, &program)?
                    .map(|c| Box::new(c) as Box<dyn head::HeadController>);
                head::run(args, shutdown, controller, &program).await
            }
            Command::Runtime(args) => runtime_cmd::run(args, &program.runtimes).await,
            Command::Supervise(_) => match service {
                Some(spec) => supervise::run(spec, shutdown).await,
                None => Ok(()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A shutdown signal: flips to true on SIGTERM or ctrl-c.
type Shutdown = watch::Receiver<bool>;

/// Completes when `shutdown` flips to true (or its sender is gone).
async fn wait_shutdown(mut shutdown: Shutdown) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn shutdown_on_signals() -> anyhow::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: stopping"),
        }
        let _ = tx.send(true);
        // Keep the sender so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    Ok(rx)
}

/// The agent's config from the flags, then the bootstrap file, then the defaults.
fn agent_config(
    args: &NodeArgs,
    boot: &BootstrapConfig,
    kind: NodeKind,
    default_ip: Option<&str>,
    runtimes: &RuntimeRegistry,
) -> anyhow::Result<AgentConfig> {
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .context("no --node-id given and the host name is unknown")?,
    };
    let node_ip = args
        .node_ip
        .clone()
        .or_else(|| default_ip.map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let boot_type = if kind == NodeKind::Head {
        boot.head_node_type.clone()
    } else {
        boot.node_type.clone()
    };
    let node_type = args
        .node_type
        .clone()
        .or(boot_type)
        .unwrap_or_else(|| kind.as_str().to_string());
    let mut c = AgentConfig::new(node_id, node_ip, kind, node_type);
    c.seq_id = args.seq_id;
    c.resources = match &args.resources {
        Some(json) => {
            serde_json::from_str::<Resources>(json).context("--resources is not a JSON object of numbers")?
        }
        None => boot.resources.clone().unwrap_or_default(),
    };
    c.detect_resources = !args.no_detect;
    if let Some(s) = args.heartbeat_interval.or(boot.heartbeat_interval_s) {
        c.heartbeat_interval = seconds("--heartbeat-interval", s)?;
    }
    if let Some(s) = args.report_interval.or(boot.report_interval_s) {
        c.report_interval = seconds("--report-interval", s)?;
    }
    // The runtimes' processes, when the node's setup passed its runtime settings.
    if let Ok(node_runtimes) = cloudtik_core::runtime::NodeRuntimeConfig::from_env() {
        let specs: Vec<cloudtik_core::runtime::ProcessSpec> = node_runtimes
            .types
            .iter()
            .filter_map(|t| runtimes.get(t))
            .flat_map(|r| r.processes())
            .filter(|p| p.scope.includes(kind))
            .collect();
        c = c.with_process_specs(&specs);
    }
    c = c.with_processes(boot.processes.iter().cloned());
    c = c.with_processes(args.processes.iter().cloned());
    c.validate()?;
    Ok(c)
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !s.is_finite() || s <= 0.0 {
        bail!("{flag} must be a positive number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// The cluster's encryption key from the bootstrap file, or a new one (an agent never
/// reads sealed values, so any key will do for it).
fn encryption_key(boot: &BootstrapConfig) -> anyhow::Result<EncryptionKey> {
    match &boot.encryption_key {
        Some(hex) => {
            Ok(EncryptionKey::from_hex(hex).context("invalid encryption_key in the bootstrap config")?)
        }
        None => Ok(EncryptionKey::generate()),
    }
}

/// Connects to the state store, waiting (with backoff, up to `wait`) while it cannot be
/// reached; a refused password or a bad address fails at once. `None` when shutdown
/// came first.
async fn connect_store(
    config: RedisStoreConfig,
    wait: Duration,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<RedisStore>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match RedisStore::connect(config.clone()).await {
            Ok(store) => return Ok(Some(store)),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                if !logged {
                    warn!(error = %cloudtik_core::Report(&e), "the state store is not reachable yet; waiting for it");
                    logged = true;
                }
            }
            Err(e) if e.kind() == ErrorKind::Unauthenticated => {
                bail!(
                    "{e:#}\nhint: pass the cluster's password with --redis-password or CLOUDTIK_REDIS_PASSWORD"
                )
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wait_shutdown(shutdown.clone()) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn run_agent(args: AgentArgs, shutdown: Shutdown, runtimes: &RuntimeRegistry) -> anyhow::Result<()> {
    let boot = BootstrapConfig::load(args.node.bootstrap_config.as_deref())?;
    let config = agent_config(&args.node, &boot, args.node_kind, None, runtimes)?;
    let address = args
        .redis_address
        .clone()
        .or_else(|| boot.redis_address())
        .context("no --redis-address given and none in the bootstrap config")?;
    let address = RedisAddress::parse(&address)?;
    let mut store_config =
        RedisStoreConfig::new(address.clone(), encryption_key(&boot)?).with_discover_shards(true);
    if let Some(p) = args
        .redis_password
        .clone()
        .or_else(|| boot.redis_password.clone())
    {
        store_config = store_config.with_password(p);
    }
    // Workers may start before the head's state store: wait for it up to 10 minutes.
    let Some(store) = connect_store(store_config, Duration::from_secs(600), &shutdown).await? else {
        info!("stopped while waiting for the state store");
        return Ok(());
    };
    info!(redis = %address, node_id = %config.node_id, "connected to the state store");
    let agent = NodeAgent::new(config, Arc::new(store))?;
    agent.run(wait_shutdown(shutdown)).await;
    Ok(())
}
