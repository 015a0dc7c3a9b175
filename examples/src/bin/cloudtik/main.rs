//! `cloudtik`: the command line of CloudTik for Rust, built on the library.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 the command line is wrong; 3 the
//! config is invalid.

mod config_cmd;
mod debug_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code of a failed operation.
const EXIT_FAILED: u8 = 1;
/// Exit code of an invalid config.
const EXIT_INVALID_CONFIG: u8 = 3;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Debug(cmd) => debug_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(if e.kind() == cloudtik_core::ErrorKind::InvalidConfig {
                EXIT_INVALID_CONFIG
            } else {
                EXIT_FAILED
            })
        }
    }
}

/// What to do next, for errors where we can tell.
fn hint(e: &cloudtik_core::Error) -> Option<String> {
    use cloudtik_core::ErrorKind::*;
    match e.kind() {
        InvalidConfig => Some(
            "fix the value at the path shown; `cloudtik config show FILE` prints the config after templates and defaults"
                .into(),
        ),
        NotFound => Some("check the file path".into()),
        _ => None,
    }
}
