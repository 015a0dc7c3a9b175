//! The autoscaler's controller embedded in a program of yours: no head node, no
//! `cloudtik-node` agents, no Redis. The program holds the provider and an in-memory
//! state store, runs the controller with a handle, watches its typed status, gives it
//! new inputs while it runs and shuts it down.
//!
//! ```sh
//! scripts/build-node-image.sh                      # the node image, once
//! cargo run -p cloudtik-examples --example embedded_controller
//! ```
//!
//! Nodes are containers of the virtual provider (Docker on this machine). Without
//! agents nothing heartbeats, so the controller runs with [`Liveness::ProviderOnly`]
//! (nodes the provider lists as running are alive) and without node setup
//! ([`MarkUpToDate`]: a listed node is ready, as for nodes that set themselves up from
//! their image or cloud-init). The program asks for two workers, waits until the status
//! shows them up to date, lowers the minimum while the controller runs, shuts it down
//! and removes the nodes. Without agents nothing reports load, so the controller never
//! counts a node idle (a `ScalingPolicy` could tell it). Exit code 0 when all held.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::provider::ProviderPlace;
use cloudtik_core::scaler::{
    Controller, ControllerConfig, ControllerHandle, Liveness, MarkUpToDate, ScalingInputs, ScalingStatus,
};
use cloudtik_core::state::{InMemoryStore, StateStore};
use cloudtik_core::{Error, ErrorKind, NodeKind, NodeProvider, NodeStatus, Result, Tags};

const CLUSTER: &str = "\
cluster_name: embedded
workspace_name: embedded-ws
provider:
  type: virtual
max_workers: 3
idle_timeout_minutes: 0
available_node_types:
  worker.default:
    min_workers: 0
";

/// The inputs of the loaded config with `min_workers` of the worker type.
fn inputs(config: &cloudtik_core::config::ClusterConfig, min_workers: u32) -> Result<ScalingInputs> {
    let mut c = config.clone();
    if let Some(t) = c.available_node_types.get_mut("worker.default") {
        t.min_workers = Some(min_workers);
    }
    ScalingInputs::from_cluster_config(&c)
}

/// Workers the status shows up to date.
fn ready_workers(status: &ScalingStatus) -> usize {
    status
        .nodes
        .values()
        .filter(|n| n.kind == NodeKind::Worker && n.status == Some(NodeStatus::UpToDate))
        .count()
}

/// Waits until the published status satisfies `done`, asking for a pass each second.
async fn wait_for(
    handle: &ControllerHandle,
    what: &str,
    done: impl Fn(&ScalingStatus) -> bool,
) -> Result<()> {
    let mut status = handle.status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = status.borrow_and_update().as_ref()
            && done(s)
        {
            println!(
                "{what}: {} worker(s) up to date after {} passes",
                ready_workers(s),
                s.counters.passes
            );
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("{what}: not within 2 minutes"),
            ));
        }
        handle.trigger_pass();
        let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => {
            println!("embedded controller: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embedded controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<()> {
    let providers = cloudtik_providers::builtin_registry();
    let loader = providers.configure_loader(cloudtik_providers::config_loader());
    let mut config = loader.load_cluster_str("embedded.yaml", CLUSTER)?;
    providers.prepare_config(&mut config)?;
    let ws_config = loader.load_workspace_str(
        "embedded-ws.yaml",
        "workspace_name: embedded-ws\nprovider:\n  type: virtual\n",
    )?;
    let workspace = providers.workspace_provider(&ws_config).await?;
    workspace.create_workspace().await?;

    let provider: Arc<dyn NodeProvider> = providers.node_provider(&config, &ProviderPlace::Client).await?;
    let outcome = run(&config, Arc::clone(&provider)).await;

    // Whatever happened: no node and no network left.
    let left = provider.list_nodes(&Tags::new()).await?;
    let ids: Vec<_> = left.iter().map(|n| n.id.clone()).collect();
    provider.terminate_nodes(&ids).await?;
    workspace.delete_workspace(Default::default()).await?;
    outcome?;
    let after = provider.list_nodes(&Tags::new()).await?;
    if !after.is_empty() {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("{} node(s) left at the end", after.len()),
        ));
    }
    Ok(())
}

async fn run(config: &cloudtik_core::config::ClusterConfig, provider: Arc<dyn NodeProvider>) -> Result<()> {
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let setup = Arc::new(MarkUpToDate::new(Arc::clone(&provider)));
    let controller_config = ControllerConfig::default()
        .with_update_interval(Duration::from_secs(30))
        .with_liveness(Liveness::ProviderOnly);
    let controller: Controller<dyn NodeProvider, dyn StateStore, _> =
        Controller::new(inputs(config, 0)?, controller_config, provider, store, setup);
    let handle = controller.spawn();

    handle.set_inputs(inputs(config, 2)?);
    wait_for(&handle, "two workers asked for", |s| ready_workers(s) == 2).await?;

    // Without agents nothing reports load, so the controller never counts a node idle
    // (a scaling policy could); the program removes its nodes itself at the end.
    handle.set_inputs(inputs(config, 1)?);
    handle.trigger_pass();
    let status = handle
        .latest_status()
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, "no status"))?;
    if ready_workers(&status) < 2 {
        return Err(Error::new(ErrorKind::Unexpected, "the workers went away"));
    }

    let counters = handle.shutdown().await?;
    println!(
        "{} passes, {} node(s) launched, {} terminated",
        counters.passes, counters.nodes_requested, counters.nodes_terminated
    );
    Ok(())
}
