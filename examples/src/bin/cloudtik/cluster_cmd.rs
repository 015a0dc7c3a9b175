//! The cluster commands: `cloudtik start|stop|status|info|exec|attach|rsync-up|rsync-down|
//! submit|scale|head-ip|worker-ips|kill-node|monitor|wait-for-ready FILE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use cloudtik_core::cluster::{ClusterDir, ClusterLock, ClusterSettings, ManagedCluster};
use cloudtik_core::command::OutputStream;
use cloudtik_core::config::ClusterConfig;
use cloudtik_core::operations::{ExecOptions, NodeTarget, ScaleRequest, StartOptions, StopOptions};
use cloudtik_core::updater::{NodeBinary, NodeBootstrap};
use cloudtik_core::{Cluster, Error, ErrorKind, NodeKind, Resources, Result};
use cloudtik_providers::{ProviderPlace, ProviderRegistry};

use crate::ui::{self, Progress};

/// Which node(s) a command addresses.
#[derive(Debug, Args, Clone)]
pub(crate) struct TargetArgs {
    /// The node with this IP (default: the head).
    #[arg(long, value_name = "IP", conflicts_with = "all_nodes")]
    node_ip: Option<String>,
    /// Every node, head first.
    #[arg(long)]
    all_nodes: bool,
}

impl TargetArgs {
    fn target(&self) -> NodeTarget {
        match (&self.node_ip, self.all_nodes) {
            (Some(ip), _) => NodeTarget::Ip(ip.clone()),
            (None, true) => NodeTarget::All,
            (None, false) => NodeTarget::Head,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Create or update a cluster: launch and set up the head; its controller brings the workers.
    Start {
        /// The cluster config file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// Override min_workers of every worker type.
        #[arg(long)]
        min_workers: Option<u32>,
        /// Override the global max_workers.
        #[arg(long)]
        max_workers: Option<u32>,
        /// Do not restart the head's services (setup only).
        #[arg(long)]
        no_restart: bool,
        /// Only restart the head's services (no setup commands).
        #[arg(long, conflicts_with = "no_restart")]
        restart_only: bool,
        /// After the head is up, wait until this many workers are up to date and heartbeating.
        #[arg(long, value_name = "N")]
        wait_for_workers: Option<u32>,
        /// Seconds to wait for --wait-for-workers.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Show the output of the head's setup commands.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Stop commands, then terminate the cluster's nodes.
    Stop {
        /// The cluster config file.
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// Terminate workers only; keep the head.
        #[arg(long)]
        workers_only: bool,
        /// Keep min_workers workers of each type.
        #[arg(long)]
        keep_min_workers: bool,
        /// Skip stop commands.
        #[arg(long)]
        hard: bool,
        /// Keep the cluster's key pair and secrets on this machine when no node is left
        /// (by default they are removed with the cluster).
        #[arg(long)]
        keep_secrets: bool,
    },
    /// Nodes, their status and last error, resources and demands.
    Status {
        /// The cluster config file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cluster in short: state, head, worker counts, resources.
    Info {
        /// The cluster config file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a shell command on the head or other nodes; exits with its exit code.
    Exec {
        /// The cluster config file.
        file: PathBuf,
        /// The command line.
        cmd: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Run detached in a tmux session.
        #[arg(long, conflicts_with = "screen")]
        tmux: bool,
        /// Run detached in a screen session.
        #[arg(long)]
        screen: bool,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open a shell on the head (or --node-ip).
    Attach {
        /// The cluster config file.
        file: PathBuf,
        /// The node with this IP (default: the head).
        #[arg(long, value_name = "IP")]
        node_ip: Option<String>,
        /// Forward this local port to the same port on the node (repeatable).
        #[arg(short = 'p', long = "port-forward", value_name = "PORT")]
        port_forward: Vec<u16>,
    },
    /// Copy a local file or folder to the nodes.
    RsyncUp {
        /// The cluster config file.
        file: PathBuf,
        /// Local source.
        source: PathBuf,
        /// Target path on the nodes.
        target: String,
        #[command(flatten)]
        nodes: TargetArgs,
    },
    /// Copy a file or folder from a node (default: the head).
    RsyncDown {
        /// The cluster config file.
        file: PathBuf,
        /// Source path on the node.
        source: String,
        /// Local target.
        target: PathBuf,
        /// The node with this IP (default: the head).
        #[arg(long, value_name = "IP")]
        node_ip: Option<String>,
    },
    /// Upload a script to the head and run it (.py with python3, .sh with bash, else as is).
    Submit {
        /// The cluster config file.
        file: PathBuf,
        /// The script.
        script: PathBuf,
        /// Arguments of the script.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        script_args: Vec<String>,
        /// Run detached in a tmux session.
        #[arg(long, conflicts_with = "screen")]
        tmux: bool,
        /// Run detached in a screen session.
        #[arg(long)]
        screen: bool,
    },
    /// Ask the autoscaler to keep resources or workers (a persistent request).
    Scale {
        /// The cluster config file.
        file: PathBuf,
        /// Keep this many workers (of --worker-type).
        #[arg(long)]
        workers: Option<u32>,
        /// The worker type of --workers (required when there are several).
        #[arg(long)]
        worker_type: Option<String>,
        /// Keep this many CPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// Keep this many GPUs.
        #[arg(long)]
        gpus: Option<u32>,
        /// Keep these resources, as JSON: '{"CPU": 8, "memory": 34359738368}'.
        #[arg(long, value_name = "JSON")]
        resources: Option<String>,
        /// Keep room for these bundles, as a JSON list: '[{"CPU": 4}, {"GPU": 1}]'.
        #[arg(long, value_name = "JSON")]
        bundles: Option<String>,
        /// Only scale up: never lower what is requested now.
        #[arg(long)]
        up_only: bool,
        /// Replace every earlier request instead of merging.
        #[arg(long = "override")]
        override_previous: bool,
    },
    /// Print the head's IP.
    HeadIp {
        /// The cluster config file.
        file: PathBuf,
    },
    /// Print the workers' IPs, one per line.
    WorkerIps {
        /// The cluster config file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Terminate a worker (the autoscaler replaces it if needed).
    KillNode {
        /// The cluster config file.
        file: PathBuf,
        /// The worker's IP.
        #[arg(long, value_name = "IP")]
        node_ip: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Follow the head's log (the controller's decisions, launches, setups).
    Monitor {
        /// The cluster config file.
        file: PathBuf,
        /// Lines of history to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
        /// Print the history and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Wait until the head and N workers are up to date and heartbeating.
    WaitForReady {
        /// The cluster config file.
        file: PathBuf,
        /// Workers to wait for (default: the sum of min_workers).
        #[arg(long)]
        min_workers: Option<u32>,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

/// Whether a command may launch nodes (only `start` does: the head; workers are
/// launched by the head's controller with the config `start` uploaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Launches {
    Yes,
    No,
}

/// Loads a cluster config and prepares what every cluster command needs: the key pair,
/// provider resources, the `cloudtik-node` program for virtual nodes.
///
/// The provider's bootstrap ties node types to the workspace (on AWS: its subnets,
/// security group and profiles). A command that launches nothing still works when that
/// fails because the workspace is missing or incomplete (e.g. `stop` after a partial
/// `workspace delete`): it says so on stderr and goes on with the config as written.
pub(crate) async fn open_cluster(
    file: &Path,
    progress: Option<&Progress>,
    launches: Launches,
) -> Result<ManagedCluster> {
    Ok(open_cluster_inner(file, progress, launches, false).await?.cluster)
}

/// A cluster opened by a command that changes it, holding the cluster's lock.
pub(crate) struct Opened {
    pub(crate) cluster: ManagedCluster,
    /// Held until the command ends.
    _lock: Option<ClusterLock>,
    /// The cluster's local folder was made by this command.
    pub(crate) new_folder: bool,
}

/// How long a command waits for another one that holds the cluster's lock
/// (`CLOUDTIK_LOCK_TIMEOUT` seconds, default 30 minutes: a start can take that long).
fn lock_timeout() -> Duration {
    std::env::var("CLOUDTIK_LOCK_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(30 * 60), Duration::from_secs)
}

/// [`open_cluster`] for commands that change the cluster (`start`, `stop`, `kill-node`):
/// first takes the cluster's lock on this machine, waiting while another such command
/// holds it, so two of them never make keys, secrets or heads at once.
pub(crate) async fn open_cluster_for_change(
    file: &Path,
    progress: Option<&Progress>,
    launches: Launches,
) -> Result<Opened> {
    open_cluster_inner(file, progress, launches, true).await
}

async fn open_cluster_inner(
    file: &Path,
    progress: Option<&Progress>,
    launches: Launches,
    lock: bool,
) -> Result<Opened> {
    let providers = cloudtik_providers::builtin_registry();
    let loader = providers.configure_loader(cloudtik_providers::config_loader());
    let mut config: ClusterConfig = match launches {
        // What would run must be what the config asks for.
        Launches::Yes => loader.load_cluster_file(file)?,
        // A cluster that exists is stopped, shown and used with what this build has.
        Launches::No => {
            let checked = loader.check_cluster_file(file)?;
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            checked.config
        }
    };
    providers.get(&config.provider.provider_type)?;
    let dir = ClusterDir::new(ClusterDir::default_base(), &config);
    let lock = if lock {
        let say = |pid: Option<u32>| {
            let msg = format!(
                "waiting for another cloudtik command on cluster {}{}",
                config.cluster_name,
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            );
            match progress {
                Some(p) => p.say(msg),
                None => eprintln!("{msg}"),
            }
        };
        Some(dir.lock(lock_timeout(), say).await?)
    } else {
        None
    };
    let new_folder = !dir.exists();
    dir.prepare_auth(&mut config)?;
    let opened = open_prepared(&providers, config, dir.clone(), progress, launches).await;
    let cluster = match opened {
        Ok(c) => c,
        Err(e) => {
            // Nothing was launched: what this command made here goes again.
            if new_folder {
                let _ = dir.remove_secrets();
            }
            return Err(e);
        }
    };
    // A command that launches nothing made the folder only to read the config (the
    // key pair is part of it): a cluster without nodes keeps nothing here.
    if new_folder && launches == Launches::No && cluster.nodes().await.is_ok_and(|n| n.is_empty()) {
        let _ = dir.remove_secrets();
    }
    Ok(Opened {
        cluster,
        _lock: lock,
        new_folder,
    })
}

async fn open_prepared(
    providers: &ProviderRegistry,
    mut config: ClusterConfig,
    dir: ClusterDir,
    progress: Option<&Progress>,
    launches: Launches,
) -> Result<ManagedCluster> {
    // A provider that mounts or copies the node program into nodes uses this build's.
    providers.use_local_node_binary(&mut config, &sibling_node_binary)?;
    // Nodes reach the package indexes as this machine does (pip index, CA bundle, proxies).
    cloudtik_runtime::machine::MachinePackageSettings::detect().apply(&mut config);
    match providers.bootstrap_config(&mut config).await {
        Ok(()) => {}
        Err(e) if launches == Launches::No && e.context_value("workspace").is_some() => {
            eprintln!("warning: {e:#}; going on without the workspace's settings (only `start` needs them)");
            providers.prepare_config(&mut config)?;
        }
        Err(e) => return Err(e),
    }
    let head_config = providers.head_config(&config)?;
    let provider = providers.node_provider(&config, &ProviderPlace::Client).await?;
    let mut settings = ClusterSettings::new(dir, providers.node_binary_on_nodes(&config)?)
        .with_head_config(head_config)
        .with_runtimes(Arc::new(cloudtik_runtime::builtin_registry()));
    if let Some(p) = progress {
        settings = settings.with_progress(p.sender()).with_output(p.output());
    }
    if providers.installs_node_program(&config)? && launches == Launches::Yes {
        let bootstrap = node_bootstrap(&settings.node_binary)?;
        settings = settings.with_bootstrap(bootstrap);
    }
    Ok(ManagedCluster::new(config, provider, settings))
}

/// After a failed `start` that made the cluster's folder: remove it when no node was
/// made, else say where it is and why it stays.
async fn forget_failed_start(cluster: &ManagedCluster, file: &Path) {
    let dir = cluster.settings().dir.path().display().to_string();
    match cluster.nodes().await {
        Ok(nodes) if nodes.is_empty() => match cluster.settings().dir.remove_secrets() {
            Ok(_) => eprintln!("note: the failed start made no node; removed what it made in {dir}"),
            Err(e) => eprintln!("note: could not remove {dir}: {e:#}"),
        },
        Ok(nodes) => eprintln!(
            "note: kept the cluster's key pair and secrets in {dir}: the start made {} node(s); \
             `cloudtik stop {} --yes` terminates them and removes the folder",
            nodes.len(),
            file.display()
        ),
        Err(e) => eprintln!(
            "note: kept the cluster's key pair and secrets in {dir}: cannot tell whether the start made a node \
             ({e:#}); `cloudtik stop {} --yes` terminates any and removes the folder",
            file.display()
        ),
    }
}

/// Environment variables naming a `cloudtik-node` for another CPU architecture:
/// `CLOUDTIK_NODE_BINARY_<ARCH>` (`CLOUDTIK_NODE_BINARY_AARCH64`).
const NODE_BINARY_ENV_PREFIX: &str = "CLOUDTIK_NODE_BINARY_";

/// What setup installs on stock nodes: this build's `cloudtik-node` (next to this
/// program), plus programs for other architectures from `CLOUDTIK_NODE_BINARY_<ARCH>`.
fn node_bootstrap(node_binary: &str) -> Result<NodeBootstrap> {
    let mut b = NodeBootstrap::new(
        NodeBootstrap::install_path_for(node_binary),
        NodeBinary::local(sibling_node_binary()?),
    );
    for (key, value) in std::env::vars_os() {
        let Some(arch) = key.to_str().and_then(|k| k.strip_prefix(NODE_BINARY_ENV_PREFIX)) else {
            continue;
        };
        let path = PathBuf::from(value);
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{key:?} names {}, which is not a file", path.display()),
            ));
        }
        b = b.with_binary(NodeBinary::for_arch(path, arch.to_ascii_lowercase()));
    }
    Ok(b)
}

/// The `cloudtik-node` next to this program (what `cargo build` puts there).
fn sibling_node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot find this program's path").with_source(e))?;
    let candidate = exe.with_file_name("cloudtik-node");
    if candidate.is_file() {
        return Ok(candidate);
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "`cloudtik-node` is not next to this program ({}): build it with `cargo build --bin cloudtik-node`, \
             or set provider.node_binary to a cloudtik-node program for Linux",
            candidate.display()
        ),
    ))
}

/// `exec` of `cmd` on the head, its output streamed.
fn exec_on_head(file: PathBuf, cmd: String, tmux: bool, screen: bool) -> ClusterCommand {
    ClusterCommand::Exec {
        file,
        cmd,
        target: TargetArgs {
            node_ip: None,
            all_nodes: false,
        },
        tmux,
        screen,
        timeout: None,
        json: false,
    }
}

fn node_target(node_ip: Option<String>) -> NodeTarget {
    node_ip.map_or(NodeTarget::Head, NodeTarget::Ip)
}

/// Runs a cluster command; the exit code on success (exec passes its command's on).
pub(crate) async fn run(cmd: ClusterCommand) -> Result<u8> {
    match cmd {
        ClusterCommand::Start {
            file,
            yes,
            min_workers,
            max_workers,
            no_restart,
            restart_only,
            wait_for_workers,
            timeout,
            verbose,
        } => {
            let progress = Progress::start(verbose);
            let opened = match open_cluster_for_change(&file, Some(&progress), Launches::Yes).await {
                Ok(o) => o,
                Err(e) => {
                    progress.finish().await;
                    return Err(e);
                }
            };
            let new_folder = opened.new_folder;
            let result = async {
                let cluster = &opened.cluster;
                let c = cluster.config();
                let existing = cluster.head().await?;
                let question = match &existing {
                    Some(h) => format!("Update the cluster {} (head {})?", c.cluster_name, h.id),
                    None => format!(
                        "Start the cluster {} ({} provider, workspace {}, {} to {} workers)?",
                        c.cluster_name,
                        c.provider.provider_type,
                        c.workspace_name,
                        c.sum_min_workers(),
                        c.max_workers()
                    ),
                };
                ui::confirm(&question, yes)?;
                let mut options = StartOptions::default();
                options.min_workers = min_workers;
                options.max_workers = max_workers;
                options.no_restart = no_restart;
                options.restart_only = restart_only;
                cluster.start(&options).await?;
                if let Some(n) = wait_for_workers {
                    progress.say(format!("waiting for {n} workers to be up to date"));
                    cluster.wait_for_ready(n, Duration::from_secs(timeout)).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            progress.finish().await;
            if result.is_err() && new_folder {
                forget_failed_start(&opened.cluster, &file).await;
            }
            result?;
            let cluster = &opened.cluster;
            let head_ip = cluster.head_ip().await?.unwrap_or_default();
            let name = &cluster.config().cluster_name;
            println!("Cluster {name} is up; its head is at {head_ip}.");
            println!("  status:    cloudtik status {}", file.display());
            println!("  a shell:   cloudtik attach {}", file.display());
            println!(
                "  run:       cloudtik exec {} 'uptime' --all-nodes",
                file.display()
            );
            println!("  stop:      cloudtik stop {} --yes", file.display());
            Ok(0)
        }
        ClusterCommand::Stop {
            file,
            yes,
            workers_only,
            keep_min_workers,
            hard,
            keep_secrets,
        } => {
            let progress = Progress::start(false);
            let mut dir = None;
            let result = async {
                let opened = open_cluster_for_change(&file, Some(&progress), Launches::No).await?;
                let cluster = &opened.cluster;
                // Only a folder that was there before says what became of it.
                dir = (!opened.new_folder).then(|| cluster.settings().dir.clone());
                let nodes = cluster.nodes().await?;
                if nodes.is_empty() {
                    progress.say(format!("cluster {} has no nodes", cluster.config().cluster_name));
                    if !keep_secrets {
                        cluster.forget_secrets()?;
                    }
                    return Ok(());
                }
                let what = if workers_only { "the workers of" } else { "" };
                ui::confirm(
                    &format!(
                        "Stop {what} the cluster {} ({} node(s))?",
                        cluster.config().cluster_name,
                        nodes.len()
                    ),
                    yes,
                )?;
                let mut options = StopOptions::default();
                options.workers_only = workers_only;
                options.keep_min_workers = keep_min_workers;
                options.hard = hard;
                options.keep_secrets = keep_secrets;
                cluster.stop(&options).await
            }
            .await;
            progress.finish().await;
            result?;
            println!("Stopped.");
            if let Some(dir) = dir.filter(|_| !workers_only) {
                if dir.exists() && keep_secrets {
                    println!(
                        "Kept the cluster's key pair and secrets in {} (--keep-secrets); delete the folder when \
                         you no longer need them.",
                        dir.path().display()
                    );
                } else if !dir.exists() {
                    println!(
                        "Removed the cluster's key pair, secrets and known hosts from {}.",
                        dir.path().display()
                    );
                }
            }
            Ok(0)
        }
        ClusterCommand::Status { file, json } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let status = cluster.status().await?;
            // The head's services down (store unreachable, no live controller): exit 6.
            let code = if status.problem.is_some() {
                SERVICES_DOWN
            } else {
                0
            };
            if json {
                ui::print_json(&status)?;
                return Ok(code);
            }
            println!(
                "Cluster {}: {}",
                status.cluster_name,
                serde_json::to_value(status.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
            let rows = status
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        n.kind.as_str().to_string(),
                        n.node_type.clone(),
                        n.status
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_else(|| "-".into()),
                        n.internal_ip.clone().unwrap_or_else(|| "-".into()),
                        resources_cell(&n.resources, n.available.as_ref()),
                        n.heartbeat_age_secs
                            .map(|a| format!("{a:.0}s ago"))
                            .unwrap_or_else(|| "-".into()),
                        n.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            println!(
                "{}",
                ui::table(
                    &[
                        "NODE",
                        "KIND",
                        "TYPE",
                        "STATUS",
                        "IP",
                        "RESOURCES (free/total)",
                        "HEARTBEAT",
                        "LAST ERROR"
                    ],
                    rows
                )
            );
            if !status.pending_launches.is_empty() {
                let l: Vec<String> = status
                    .pending_launches
                    .iter()
                    .map(|(t, n)| format!("{n} x {t}"))
                    .collect();
                println!("Launching: {}", l.join(", "));
            }
            if !status.demands.is_empty() {
                println!("Demands waiting: {}", shapes(&status.demands));
            }
            if !status.infeasible.is_empty() {
                println!(
                    "Infeasible demands (no node type fits): {}",
                    shapes(&status.infeasible)
                );
            }
            match &status.controller {
                Some(c) if c.expires_in_secs > 0.0 => println!(
                    "Controller: {} (lease token {}), last renewed {:.0}s ago",
                    c.holder, c.token, c.renewed_age_secs
                ),
                Some(c) => println!(
                    "Controller: none acting; {} (lease token {}) last renewed {:.0}s ago and its lease expired",
                    c.holder, c.token, c.renewed_age_secs
                ),
                None => {}
            }
            for note in &status.notes {
                println!("Note: {note}");
            }
            if let Some(problem) = &status.problem {
                eprintln!("error: {problem}");
                eprintln!(
                    "hint: `cloudtik monitor {f}` shows the head's log; `cloudtik start {f} --restart-only` restarts the head's services",
                    f = file.display()
                );
            }
            Ok(code)
        }
        ClusterCommand::Info { file, json } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let status = cluster.status().await?;
            let workers: Vec<_> = status.nodes.iter().filter(|n| n.kind != NodeKind::Head).collect();
            let ready = workers
                .iter()
                .filter(|n| n.status == Some(cloudtik_core::NodeStatus::UpToDate))
                .count();
            let mut total = Resources::new();
            let mut free = Resources::new();
            for n in &status.nodes {
                total.add(&n.resources);
                if let Some(a) = &n.available {
                    free.add(a);
                }
            }
            let head = status.nodes.iter().find(|n| n.kind == NodeKind::Head);
            let head_ip = head.and_then(|h| h.internal_ip.clone());
            let (runtimes, mut endpoints) = cluster.runtime_endpoints(head_ip.as_deref().unwrap_or("<head>"));
            // What the head published wins: it is what runs.
            let published = match head {
                Some(_) => cluster.published_runtimes().await.ok().flatten(),
                None => None,
            };
            if let Some(e) = published
                .as_ref()
                .and_then(|p| serde_json::from_value(p["endpoints"].clone()).ok())
            {
                endpoints = e;
            }
            let info = serde_json::json!({
                "cluster_name": status.cluster_name,
                "state": status.state,
                "head_ip": head.and_then(|h| h.internal_ip.clone()),
                "workers": workers.len(),
                "workers_ready": ready,
                "resources_total": total,
                "resources_available": free,
                "pending_launches": status.pending_launches,
                "runtimes": runtimes,
                "endpoints": endpoints,
                "services": published.as_ref().map(|p| p["services"].clone()),
            });
            if json {
                ui::print_json(&info)?;
            } else {
                println!("Cluster:   {}", status.cluster_name);
                println!("State:     {}", info["state"].as_str().unwrap_or("-"));
                println!("Head:      {}", info["head_ip"].as_str().unwrap_or("-"));
                println!("Workers:   {ready} ready of {}", workers.len());
                println!("Resources: {}", resources_cell(&total, Some(&free)));
                if !runtimes.is_empty() {
                    println!("Runtimes:  {}", runtimes.join(", "));
                }
                for (runtime, list) in &endpoints {
                    for (name, address) in list {
                        println!("  {runtime:<8} {name:<20} {address}");
                    }
                }
            }
            Ok(0)
        }
        ClusterCommand::Exec {
            file,
            cmd,
            target,
            tmux,
            screen,
            timeout,
            json,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let target = target.target();
            let single = target != NodeTarget::All;
            let mut options = ExecOptions::default();
            options.target = target;
            options.tmux = tmux;
            options.screen = screen;
            options.timeout = timeout.map(Duration::from_secs);
            // One node: stream its output as it comes.
            let printer = if single && !json {
                let (tx, mut rx) =
                    tokio::sync::mpsc::unbounded_channel::<cloudtik_core::command::OutputLine>();
                options.output = Some(tx);
                Some(tokio::spawn(async move {
                    while let Some(l) = rx.recv().await {
                        match l.stream {
                            OutputStream::Stdout => println!("{}", l.line),
                            OutputStream::Stderr => eprintln!("{}", l.line),
                        }
                    }
                }))
            } else {
                None
            };
            let results = cluster.exec(&cmd, &options).await;
            drop(options);
            if let Some(p) = printer {
                let _ = p.await;
            }
            let results = results?;
            if json {
                ui::print_json(&results)?;
            } else if !single {
                for r in &results {
                    println!(
                        "--- {} ({}) exit {}",
                        r.node_id,
                        r.node_ip.as_deref().unwrap_or("-"),
                        r.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string())
                    );
                    print!("{}", r.stdout);
                    eprint!("{}", r.stderr);
                }
            }
            let worst = results
                .iter()
                .map(|r| r.exit_code.unwrap_or(1))
                .find(|c| *c != 0)
                .unwrap_or(0);
            Ok(u8::try_from(worst).unwrap_or(1))
        }
        ClusterCommand::Attach {
            file,
            node_ip,
            port_forward,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let nodes = cluster.nodes().await?;
            let head = nodes.iter().find(|n| n.kind() == Some(NodeKind::Head)).cloned();
            let node = match &node_ip {
                None => head.clone(),
                Some(ip) => nodes
                    .iter()
                    .find(|n| n.internal_ip.as_deref() == Some(ip.as_str()))
                    .cloned(),
            }
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such node: see `cloudtik status`"))?;
            let runner = cluster.ssh_runner_for(&node, head.as_ref()).await?;
            let rsh = runner.ssh_command().await?;
            let mut line = format!("{rsh} -tt");
            for p in port_forward {
                line.push_str(&format!(" -L {p}:localhost:{p}"));
            }
            line.push(' ');
            line.push_str(runner.host());
            // Container mode: the shell is the container's.
            let kind = node.kind().unwrap_or(NodeKind::Worker);
            if let Some(spec) = cloudtik_core::cluster::container::container_spec(
                cluster.config(),
                kind,
                node.node_type().unwrap_or_default(),
            )? {
                let inner = format!(
                    "{} exec -it {} sh -c 'command -v bash >/dev/null && exec bash -l || exec sh -l'",
                    spec.docker_command,
                    cloudtik_core::command::shell_quote(&spec.name)
                );
                line.push(' ');
                line.push_str(&cloudtik_core::command::shell_quote(&inner));
            }
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&line)
                .status()
                .await
                .map_err(|e| Error::new(ErrorKind::Unexpected, "cannot run ssh").with_source(e))?;
            Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
        }
        ClusterCommand::RsyncUp {
            file,
            source,
            target,
            nodes,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            cluster.rsync_up(&source, &target, &nodes.target()).await?;
            Ok(0)
        }
        ClusterCommand::RsyncDown {
            file,
            source,
            target,
            node_ip,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            cluster
                .rsync_down(&source, &target, &node_target(node_ip))
                .await?;
            Ok(0)
        }
        ClusterCommand::Submit {
            file,
            script,
            script_args,
            tmux,
            screen,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let name = script
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::new(ErrorKind::InvalidConfig, "the script needs a file name"))?
                .to_string();
            if !script.is_file() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("the script {} does not exist", script.display()),
                ));
            }
            let remote = format!("{}/jobs/{name}", cluster.layout().dir());
            cluster.rsync_up(&script, &remote, &NodeTarget::Head).await?;
            let quoted = cloudtik_core::command::shell_quote(&remote);
            let runner = if name.ends_with(".py") {
                format!("python3 {quoted}")
            } else if name.ends_with(".sh") {
                format!("bash {quoted}")
            } else {
                format!("chmod +x {quoted} && {quoted}")
            };
            let args: Vec<String> = script_args
                .iter()
                .map(|a| cloudtik_core::command::shell_quote(a))
                .collect();
            let cmd = format!(
                "cd {}/jobs && {runner} {}",
                cluster.layout().dir(),
                args.join(" ")
            );
            Box::pin(run(exec_on_head(file, cmd, tmux, screen))).await
        }
        ClusterCommand::Scale {
            file,
            workers,
            worker_type,
            cpus,
            gpus,
            resources,
            bundles,
            up_only,
            override_previous,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let mut r = ScaleRequest::default();
            r.workers = workers;
            r.worker_type = worker_type;
            r.cpus = cpus;
            r.gpus = gpus;
            r.resources = resources
                .map(|j| {
                    serde_json::from_str::<Resources>(&j).map_err(|e| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!("--resources is not a JSON object of amounts: {e:#}"),
                        )
                    })
                })
                .transpose()?;
            r.bundles = bundles
                .map(|j| {
                    serde_json::from_str::<Vec<Resources>>(&j).map_err(|e| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!("--bundles is not a JSON list of objects of amounts: {e:#}"),
                        )
                    })
                })
                .transpose()?
                .unwrap_or_default();
            r.up_only = up_only;
            r.override_previous = override_previous;
            cluster.scale(&r).await?;
            println!(
                "Requested; the controller acts on it within its next pass (`cloudtik status` shows it)."
            );
            Ok(0)
        }
        ClusterCommand::HeadIp { file } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            println!("{}", cluster.head_ip().await?.unwrap_or_default());
            Ok(0)
        }
        ClusterCommand::WorkerIps { file, json } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let ips = cluster.worker_ips().await?;
            if json {
                ui::print_json(&ips)?;
            } else {
                for ip in ips {
                    println!("{ip}");
                }
            }
            Ok(0)
        }
        ClusterCommand::KillNode { file, node_ip, yes } => {
            let opened = open_cluster_for_change(&file, None, Launches::No).await?;
            let cluster = &opened.cluster;
            ui::confirm(&format!("Terminate the node {node_ip}?"), yes)?;
            cluster.kill_node(&NodeTarget::Ip(node_ip.clone())).await?;
            println!("Terminated {node_ip}.");
            Ok(0)
        }
        ClusterCommand::Monitor {
            file,
            lines,
            no_follow,
        } => {
            let log = open_cluster(&file, None, Launches::No).await?.layout().head_log();
            let quoted = cloudtik_core::command::shell_quote(&log);
            let cmd = if no_follow {
                format!("tail -n {lines} {quoted}")
            } else {
                format!("tail -n {lines} -F {quoted}")
            };
            Box::pin(run(exec_on_head(file, cmd, false, false))).await
        }
        ClusterCommand::WaitForReady {
            file,
            min_workers,
            timeout,
        } => {
            let cluster = open_cluster(&file, None, Launches::No).await?;
            let n = min_workers.unwrap_or_else(|| cluster.config().sum_min_workers());
            cluster.wait_for_ready(n, Duration::from_secs(timeout)).await?;
            println!("Ready: the head and {n} worker(s) are up to date and heartbeating.");
            Ok(0)
        }
    }
}

/// The exit code of `status` when the head's services are down (the state store cannot
/// be reached, or no controller holds a live lease).
const SERVICES_DOWN: u8 = 6;

fn resources_cell(total: &Resources, free: Option<&Resources>) -> String {
    let mut parts = Vec::new();
    for (name, amount) in total.iter() {
        if name.starts_with("node-type:") {
            continue;
        }
        let fmt = |v: f64| {
            if name == "memory" {
                ui::bytes(v)
            } else {
                format!("{v}")
            }
        };
        match free {
            Some(f) => parts.push(format!("{name} {}/{}", fmt(f.get(name)), fmt(amount))),
            None => parts.push(format!("{name} {}", fmt(amount))),
        }
    }
    parts.join(", ")
}

fn shapes(list: &[Resources]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in list {
        let s = r.to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some(c) => c.1 += 1,
            None => counts.push((s, 1)),
        }
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} x {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}
