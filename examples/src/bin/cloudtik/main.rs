//! `cloudtik`: the command line of CloudTik for Rust, built on the library.
//!
//! Cluster commands follow CloudTik's: `cloudtik start|stop|status|info|exec|attach|
//! rsync-up|rsync-down|submit|scale|head-ip|worker-ips|kill-node|monitor|wait-for-ready
//! FILE` and `cloudtik workspace create|delete|update|info FILE`. Long steps show progress
//! on stderr; results go to stdout, as tables or, with `--json`, as JSON.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 the command line is wrong; 3 the
//! config is invalid; 4 timed out (e.g. `wait-for-ready`); 5 not confirmed; 6 the
//! cluster's head services are down (`status`: the state store cannot be reached, or no
//! controller holds a live lease). `exec` and `submit` exit with the command's exit code.

mod cluster_cmd;
mod config_cmd;
mod debug_cmd;
mod ui;
mod workspace_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code of a failed operation.
const EXIT_FAILED: u8 = 1;
/// Exit code of an invalid config.
const EXIT_INVALID_CONFIG: u8 = 3;
/// Exit code of an operation that timed out.
const EXIT_TIMEOUT: u8 = 4;
/// Exit code when the user did not confirm.
const EXIT_NOT_CONFIRMED: u8 = 5;

#[derive(Debug, Parser)]
#[command(name = "cloudtik", version, about = "Create and scale clusters for analytics and AI", long_about = None)]
struct Cli {
    /// Log level or filter for diagnostics on stderr (e.g. `debug`, `cloudtik_core=trace`).
    #[arg(long, global = true, env = "CLOUDTIK_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and show cluster configs.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Diagnostics of the autoscaler.
    #[command(subcommand)]
    Debug(debug_cmd::DebugCommand),
    /// Create, delete, update and show workspaces.
    #[command(subcommand)]
    Workspace(workspace_cmd::WorkspaceCommand),
    #[command(flatten)]
    Cluster(cluster_cmd::ClusterCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd).map(|()| 0),
        Command::Debug(cmd) => debug_cmd::run(cmd).map(|()| 0),
        Command::Workspace(cmd) => block_on(workspace_cmd::run(cmd)),
        Command::Cluster(cmd) => block_on(cluster_cmd::run(cmd)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(if e.context_value("aborted").is_some() {
                EXIT_NOT_CONFIRMED
            } else if e.kind() == cloudtik_core::ErrorKind::InvalidConfig {
                EXIT_INVALID_CONFIG
            } else if e.kind() == cloudtik_core::ErrorKind::Timeout {
                EXIT_TIMEOUT
            } else {
                EXIT_FAILED
            })
        }
    }
}

fn block_on<F: std::future::Future<Output = cloudtik_core::Result<u8>>>(f: F) -> cloudtik_core::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            cloudtik_core::Error::new(cloudtik_core::ErrorKind::Unexpected, "cannot start the runtime")
                .with_source(e)
        })?;
    runtime.block_on(f)
}

/// What to do next, for errors where we can tell.
fn hint(e: &cloudtik_core::Error) -> Option<String> {
    use cloudtik_core::ErrorKind::*;
    match e.kind() {
        InvalidConfig => Some(
            "fix the value at the path shown; `cloudtik config show FILE` prints the config after templates and defaults"
                .into(),
        ),
        _ if e.context_value("aborted").is_some() => None,
        NotFound => Some("check the names and paths in the message; `cloudtik status FILE` shows the cluster".into()),
        Transient => Some("this may pass: try again; if it persists, check the service named above".into()),
        Timeout => Some("`cloudtik status FILE` and `cloudtik monitor FILE` show what the cluster is doing".into()),
        Unauthenticated | PermissionDenied => Some("check the credentials and permissions named above".into()),
        Capacity => Some("use a smaller node type or free resources, then run the command again".into()),
        _ => None,
    }
}
