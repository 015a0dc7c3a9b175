//! A provider of your own, registered in a [`ProviderRegistry`] next to the built-in
//! ones, named by a config's `provider.type`, and run through the library: `start`,
//! `scale` and `stop` of a cluster whose head's controller uses it too.
//!
//! ```sh
//! scripts/build-node-image.sh                      # the node image, once
//! cargo run -p cloudtik-examples --example custom_provider
//! ```
//!
//! The `lab` provider is built on the virtual provider (Docker on this machine), as a
//! company's provider might be built on a cloud's: it tags every node it launches with
//! the lab's owner (`provider.owner`, a key the provider checks) and refuses configs
//! without one.
//!
//! The head's controller makes the workers, so the head must know the `lab` provider
//! too: this program is also the cluster's node program. Run as `cloudtik-node` (the
//! virtual provider mounts it into every node under that name), it is
//! [`NodeProgram`] with this program's registry. The program starts a cluster, asks for
//! one worker with `scale`, checks that the head's controller launched it with the lab's
//! tag, and stops the cluster and its workspace. Exit code 0 when all held.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::cluster::{ClusterDir, ClusterSettings, ManagedCluster, ManagedWorkspace};
use cloudtik_core::config::{ClusterConfig, ConfigLoader, ProviderSection, WorkspaceConfig};
use cloudtik_core::operations::{ScaleRequest, StartOptions, StopOptions};
use cloudtik_core::provider::{
    LaunchOutcome, LaunchRequest, ProviderCapabilities, ProviderFactory, ProviderPlace, ProviderRegistry,
    TagUpdate,
};
use cloudtik_core::{
    Cluster, DeleteWorkspaceOptions, Error, ErrorKind, NodeId, NodeInfo, NodeProvider, Result, Tags,
    Workspace, WorkspaceProvider,
};
use cloudtik_examples::node::NodeProgram;
use cloudtik_providers::VirtualFactory;

/// The tag the lab puts on its nodes.
const OWNER_TAG: &str = "lab-owner";

/// The `lab` provider type.
#[derive(Debug)]
struct LabFactory;

impl LabFactory {
    /// The config as the virtual provider it is built on reads it.
    fn as_virtual(config: &ClusterConfig) -> ClusterConfig {
        let mut c = config.clone();
        c.provider.provider_type = "virtual".into();
        c
    }

    fn owner(section: &ProviderSection) -> Result<String> {
        match section.extra.get("owner").and_then(|v| v.as_str()) {
            Some(o) if !o.trim().is_empty() => Ok(o.to_string()),
            _ => Err(Error::config(
                "provider.owner",
                "expected the lab's owner (a non-empty string): every lab node is tagged with it",
            )),
        }
    }
}

#[cloudtik_core::async_trait]
impl ProviderFactory for LabFactory {
    fn provider_type(&self) -> &str {
        "lab"
    }

    fn configure_loader(&self, loader: ConfigLoader) -> ConfigLoader {
        let defaults = cloudtik_core::config::template::built_in_defaults("virtual")
            .unwrap_or_default()
            .replace("type: virtual", "type: lab");
        loader
            .with_provider_defaults("lab", defaults)
            .with_provider_validator("lab", |section| Self::owner(section).map(|_| ()))
    }

    fn prepare_config(&self, config: &mut ClusterConfig) -> Result<()> {
        cloudtik_providers::virtual_provider::bootstrap_resources(config)
    }

    async fn node_provider(
        &self,
        config: &ClusterConfig,
        place: &ProviderPlace,
    ) -> Result<Arc<dyn NodeProvider>> {
        let inner = VirtualFactory
            .node_provider(&Self::as_virtual(config), place)
            .await?;
        Ok(Arc::new(LabNodeProvider {
            inner,
            owner: Self::owner(&config.provider)?,
        }))
    }

    async fn workspace_provider(&self, config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
        let mut c = config.clone();
        c.provider.provider_type = "virtual".into();
        VirtualFactory.workspace_provider(&c).await
    }

    fn head_config(&self, config: &ClusterConfig) -> Result<ClusterConfig> {
        let mut c = VirtualFactory.head_config(&Self::as_virtual(config))?;
        c.provider.provider_type = "lab".into();
        Ok(c)
    }

    fn node_binary_on_nodes(&self, config: &ClusterConfig) -> String {
        VirtualFactory.node_binary_on_nodes(config)
    }

    fn installs_node_program(&self, config: &ClusterConfig) -> bool {
        VirtualFactory.installs_node_program(config)
    }

    fn use_local_node_binary(
        &self,
        config: &mut ClusterConfig,
        find: &dyn Fn() -> Result<PathBuf>,
    ) -> Result<()> {
        VirtualFactory.use_local_node_binary(config, find)
    }
}

/// The lab's nodes: the virtual provider's, each tagged with the lab's owner at launch.
#[derive(Debug)]
struct LabNodeProvider {
    inner: Arc<dyn NodeProvider>,
    owner: String,
}

#[cloudtik_core::async_trait]
impl NodeProvider for LabNodeProvider {
    fn provider_type(&self) -> &str {
        "lab"
    }
    fn cluster_name(&self) -> &str {
        self.inner.cluster_name()
    }
    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }
    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        self.inner.list_nodes(filters).await
    }
    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        let mut request = request.clone();
        request.tags.insert(OWNER_TAG.into(), self.owner.clone());
        self.inner.create_nodes(&request).await
    }
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        self.inner.set_node_tags(updates).await
    }
    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        self.inner.terminate_nodes(ids).await
    }
    async fn remove_stopped_nodes(&self) -> Result<usize> {
        self.inner.remove_stopped_nodes().await
    }
    async fn host_keys(&self, node: &NodeInfo) -> Result<Option<Vec<String>>> {
        self.inner.host_keys(node).await
    }
}

/// The program's providers: the built-in ones and the lab.
fn providers() -> ProviderRegistry {
    let mut registry = cloudtik_providers::builtin_registry();
    registry.register(LabFactory);
    registry
}

const CLUSTER: &str = "\
cluster_name: lab-demo
workspace_name: lab-ws
provider:
  type: lab
  owner: data-team
max_workers: 2
available_node_types:
  worker.default:
    min_workers: 0
";

fn main() -> ExitCode {
    // On the nodes this program is `cloudtik-node`, with the lab provider.
    let exe = std::env::args().next().unwrap_or_default();
    if exe.ends_with("cloudtik-node") {
        return NodeProgram::builtin().with_providers(providers()).main();
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(demo()) {
        Ok(()) => {
            println!("custom provider: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom provider: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<()> {
    let providers = providers();
    let loader = providers.configure_loader(cloudtik_providers::config_loader());

    // The provider checks its own keys when the config loads.
    let err = loader
        .load_cluster_str("no-owner.yaml", &CLUSTER.replace("  owner: data-team\n", ""))
        .expect_err("a lab config without an owner is refused");
    println!("refused as expected: {err:#}");
    if err.location().map(|l| l.path.as_str()) != Some("provider.owner") {
        return Err(Error::new(ErrorKind::Unexpected, format!("wrong error: {err:#}")));
    }

    let mut config = loader.load_cluster_str("lab.yaml", CLUSTER)?;
    let ws_config = loader.load_workspace_str(
        "lab-ws.yaml",
        "workspace_name: lab-ws\nprovider:\n  type: lab\n  owner: data-team\n",
    )?;
    let workspace = ManagedWorkspace::new("lab-ws", providers.workspace_provider(&ws_config).await?);
    workspace.create().await?;

    // This program is the node program: the virtual provider mounts it into every node.
    let this = || {
        std::env::current_exe()
            .map_err(|e| Error::new(ErrorKind::Unexpected, "no program path").with_source(e))
    };
    providers.use_local_node_binary(&mut config, &this)?;
    let dir = ClusterDir::new(ClusterDir::default_base(), &config);
    dir.prepare_auth(&mut config)?;
    providers.bootstrap_config(&mut config).await?;
    let settings = ClusterSettings::new(dir, providers.node_binary_on_nodes(&config)?)
        .with_head_config(providers.head_config(&config)?)
        .with_runtimes(Arc::new(cloudtik_runtime::builtin_registry()));
    let provider = providers.node_provider(&config, &ProviderPlace::Client).await?;
    let cluster = ManagedCluster::new(config, provider.clone(), settings);

    let outcome = run(&cluster, provider.as_ref()).await;
    // Whatever happened: stop the cluster and delete the workspace.
    let stopped = cluster.stop(&StopOptions::default()).await;
    let deleted = workspace.delete(DeleteWorkspaceOptions::default()).await;
    outcome?;
    stopped?;
    deleted?;
    let left = provider.list_nodes(&Tags::new()).await?;
    if !left.is_empty() {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("{} node(s) left after stop", left.len()),
        ));
    }
    Ok(())
}

async fn run(cluster: &ManagedCluster, provider: &dyn NodeProvider) -> Result<()> {
    cluster.start(&StartOptions::default()).await?;
    println!("started the head");
    let mut scale = ScaleRequest::default();
    scale.workers = Some(1);
    cluster.scale(&scale).await?;
    cluster.wait_for_ready(1, Duration::from_secs(300)).await?;

    // The head was launched here and the worker by the head's controller: both through
    // the lab provider, so both carry the owner.
    let nodes = provider.list_nodes(&Tags::new()).await?;
    for n in &nodes {
        println!(
            "{} ({}): {OWNER_TAG}={}",
            n.id,
            n.node_type().unwrap_or("?"),
            n.tag(OWNER_TAG).unwrap_or("-")
        );
    }
    let workers = nodes
        .iter()
        .filter(|n| n.kind() == Some(cloudtik_core::NodeKind::Worker))
        .count();
    if nodes.len() != 2 || workers != 1 || nodes.iter().any(|n| n.tag(OWNER_TAG) != Some("data-team")) {
        return Err(Error::new(
            ErrorKind::Unexpected,
            "expected a head and one worker, both tagged by the lab provider",
        ));
    }
    Ok(())
}
