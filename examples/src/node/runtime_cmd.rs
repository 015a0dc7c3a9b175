//! `cloudtik-node runtime install|configure|start|stop <name> [--head]`: a runtime's
//! on-node logic (CloudTik's `cloudtik runtime install|configure|services`), run by the
//! node's setup, start and stop commands.
//!
//! The runtime settings come from `CLOUDTIK_RUNTIME_CONFIG` and the node's identity from
//! `CLOUDTIK_NODE_IP`, `CLOUDTIK_NODE_TYPE` and `CLOUDTIK_HEAD_IP`, which the node's
//! setup sets on every command. `start` runs each of the runtime's services under its
//! own supervisor (`cloudtik-node supervise`, restarted when it dies, started again at
//! boot) and waits until each listens on its port; a service that does not is reported
//! with its name, the node and the last lines of its log, and the command fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use cloudtik_core::agent::{DetectedResources, HostPaths};
use cloudtik_core::cluster::NodeLayout;
use cloudtik_core::runtime::{NodeContext, NodeRuntimeConfig, unknown_runtime_message};
use cloudtik_core::{NodeKind, RuntimeRegistry};
use tracing::info;

/// How long `start` waits for a service's port by default.
const READY_TIMEOUT_SECS: u64 = 180;

/// Lines of a failed service's log shown.
const LOG_TAIL: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Phase {
    /// Install the runtime's software (idempotent).
    Install,
    /// Write its config files.
    Configure,
    /// Start its services under the node's supervisor.
    Start,
    /// Stop its services.
    Stop,
}

#[derive(Debug, Args)]
pub(crate) struct RuntimeArgs {
    /// What to do.
    #[arg(value_enum)]
    phase: Phase,
    /// The runtime's name (e.g. spark, ray).
    name: String,
    /// This node is the head.
    #[arg(long)]
    head: bool,
    /// `start`: how long to wait for each service's port, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = READY_TIMEOUT_SECS)]
    ready_timeout: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The node's home folder, from `$HOME`.
fn home() -> String {
    env("HOME").unwrap_or_else(|| "/root".to_string())
}

pub(crate) async fn run(args: RuntimeArgs, registry: &RuntimeRegistry) -> anyhow::Result<()> {
    let runtime = registry
        .get(&args.name)
        .with_context(|| unknown_runtime_message(registry, &args.name))?;
    let config = NodeRuntimeConfig::from_env()?;
    let kind = if args.head {
        NodeKind::Head
    } else {
        NodeKind::Worker
    };
    let node_ip = env("CLOUDTIK_NODE_IP").unwrap_or_else(|| "127.0.0.1".to_string());
    let head_ip = env("CLOUDTIK_HEAD_IP").unwrap_or_else(|| node_ip.clone());
    let node_type = env("CLOUDTIK_NODE_TYPE").unwrap_or_default();
    let home = home();
    let dir = PathBuf::from(&home).join("cloudtik");
    let detected = DetectedResources::detect(HostPaths::default());
    let ctx = NodeContext::new(
        kind,
        node_type,
        node_ip.clone(),
        head_ip,
        config.cluster_name.clone(),
        &args.name,
        config.section(&args.name),
        dir,
    )
    .with_resources(detected.cpus, detected.memory);
    let binary = env(cloudtik_core::runtime::node::NODE_BINARY_ENV)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .context("cannot tell the path of cloudtik-node")?;
    let layout = NodeLayout::at_home(home, binary);
    let ready_timeout = Duration::from_secs(args.ready_timeout);
    match args.phase {
        Phase::Install => {
            info!(runtime = %args.name, "installing");
            runtime
                .install(&ctx)
                .await
                .with_context(|| format!("installing runtime {} on node {node_ip}", args.name))?;
        }
        Phase::Configure => {
            runtime
                .configure(&ctx)
                .await
                .with_context(|| format!("configuring runtime {} on node {node_ip}", args.name))?;
        }
        Phase::Start => {
            let services = runtime.node_services(&ctx);
            for s in &services {
                info!(service = %s.name, "starting");
                sh(&layout.runtime_service_start_command(s))
                    .await
                    .with_context(|| format!("starting {} of runtime {}", s.name, args.name))?;
            }
            for s in &services {
                let Some(port) = s.ready_port else { continue };
                if !cloudtik_runtime::packages::wait_for_port(&node_ip, port, ready_timeout).await
                    && !cloudtik_runtime::packages::wait_for_port("127.0.0.1", port, Duration::ZERO).await
                {
                    let log = layout.service_log(&s.name);
                    bail!(
                        "runtime {}: process {} did not start on node {node_ip} (nothing listens on port \
                         {port} after {}s); the last lines of {log}:\n{}",
                        args.name,
                        s.name,
                        ready_timeout.as_secs(),
                        tail(&log, LOG_TAIL)
                    );
                }
            }
            println!(
                "runtime {}: {} started",
                args.name,
                services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Phase::Stop => {
            for s in runtime.node_services(&ctx).iter().rev() {
                info!(service = %s.name, "stopping");
                sh(&layout.stop_service_command(&s.name)).await?;
                // A stopped service does not come back at boot.
                let _ = std::fs::remove_file(layout.service_file(&s.name));
            }
        }
    }
    Ok(())
}

async fn sh(script: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .await
        .context("cannot run sh")?;
    if !status.success() {
        bail!("the command failed ({status})");
    }
    Ok(())
}

/// The last `n` lines of the file at `path`, or a note that it cannot be read.
fn tail(path: &str, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {path}: {e:#})"),
    }
}
