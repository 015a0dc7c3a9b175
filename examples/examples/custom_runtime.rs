//! A runtime of your own, registered next to the built-in ones, reaching every node of
//! a cluster on the virtual provider (Docker on this machine).
//!
//! ```sh
//! cargo build -p cloudtik-examples --bins          # cloudtik-node, which runs on the nodes
//! scripts/build-node-image.sh                      # the node image, once
//! cargo run -p cloudtik-examples --example custom_runtime
//! ```
//!
//! The `hello` runtime writes a greeting file on every node in its setup commands and
//! runs a small web server on the head in its start commands; it declares that server
//! as a service, so its endpoint is known. The program starts a cluster with one
//! worker, checks the greeting on each node (the worker is set up by the head's
//! controller, which learns the runtime from the data `start` sends it), fetches the
//! head's page, and stops the cluster and its workspace. Exit code 0 when all held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloudtik_core::cluster::{ClusterDir, ClusterSettings, ManagedCluster, ManagedWorkspace};
use cloudtik_core::operations::{ExecOptions, NodeTarget, StartOptions, StopOptions};
use cloudtik_core::runtime::{NodeScope, Protocol, RuntimeCommands, ServiceSpec, config_path};
use cloudtik_core::{
    Cluster, DeleteWorkspaceOptions, Error, NodeKind, Result, Runtime, RuntimeRegistry, Workspace,
};
use cloudtik_providers::ProviderPlace;

/// The runtime: a greeting on every node, a web server on the head.
#[derive(Debug)]
struct Hello;

impl Runtime for Hello {
    fn name(&self) -> &str {
        "hello"
    }

    fn config_defaults(&self) -> serde_json::Value {
        serde_json::json!({"greeting": "hello", "port": 8099})
    }

    fn validate(&self, section: &serde_json::Value) -> Result<()> {
        match section.get("port").and_then(serde_json::Value::as_u64) {
            Some(p) if (1024..=65535).contains(&p) => Ok(()),
            _ => Err(Error::config(
                config_path("hello", "port"),
                "expected a port 1024-65535",
            )),
        }
    }

    fn commands(&self, kind: NodeKind, section: &serde_json::Value) -> RuntimeCommands {
        let greeting = section["greeting"].as_str().unwrap_or("hello");
        let port = section["port"].as_u64().unwrap_or(8099);
        let mut c = RuntimeCommands::default();
        c.setup = vec![format!(
            "mkdir -p ~/hello && echo \"{greeting} from $CLOUDTIK_NODE_TYPE\" > ~/hello/greeting.txt"
        )];
        if kind == NodeKind::Head {
            // A pid file, not `pkill -f`: this very shell's command line names the server.
            c.start = vec![format!(
                "cd ~/hello && {{ [ -f pid ] && kill $(cat pid) 2>/dev/null; \
                 nohup setsid python3 -m http.server {port} >/dev/null 2>&1 < /dev/null & echo $! > pid; }}"
            )];
            c.stop = vec![
                "[ -f ~/hello/pid ] && kill $(cat ~/hello/pid) 2>/dev/null; rm -f ~/hello/pid".to_string(),
            ];
        }
        c
    }

    fn services(&self, section: &serde_json::Value) -> Vec<ServiceSpec> {
        let port = section["port"].as_u64().unwrap_or(8099) as u16;
        vec![
            ServiceSpec::new("hello-web", port)
                .with_protocol(Protocol::Http)
                .with_scope(NodeScope::Head),
        ]
    }

    fn environment(&self, _kind: NodeKind, section: &serde_json::Value) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "HELLO_GREETING".to_string(),
            section["greeting"].as_str().unwrap_or("hello").to_string(),
        )])
    }
}

const CLUSTER: &str = r#"
cluster_name: hello
workspace_name: hello-ws
provider:
  type: virtual
auth:
  ssh_user: root
max_workers: 1
available_node_types:
  head.default:
    node_config:
      instance_type: {CPU: 1, memory: 512M}
  worker.default:
    min_workers: 1
    node_config:
      instance_type: {CPU: 1, memory: 512M}
head_node_type: head.default
runtime:
  types: [hello]
  hello:
    greeting: bonjour
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // One registry: the built-in runtimes and ours.
    let mut registry = RuntimeRegistry::new();
    cloudtik_runtime::register_builtin(&mut registry);
    registry.register(Arc::new(Hello))?;
    let registry = Arc::new(registry);
    let loader = cloudtik_providers::config_loader().with_runtimes(registry.clone());
    let mut config = loader.load_cluster_str("hello.yaml", CLUSTER)?;
    let ws_config = loader.load_workspace_str(
        "hello-ws.yaml",
        "workspace_name: hello-ws\nprovider:\n  type: virtual\n",
    )?;

    // The virtual provider mounts cloudtik-node into its nodes: the one built next to
    // this example (target/debug/cloudtik-node).
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(cloudtik_core::ErrorKind::Unexpected, e.to_string()))?;
    let node_binary = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("cloudtik-node"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                cloudtik_core::ErrorKind::NotFound,
                "cloudtik-node is not built: run `cargo build -p cloudtik-examples --bins` first",
            )
        })?;
    config
        .provider
        .extra
        .insert("node_binary".into(), node_binary.display().to_string().into());

    let providers = cloudtik_providers::builtin_registry();
    let workspace = ManagedWorkspace::new("hello-ws", providers.workspace_provider(&ws_config).await?);
    workspace.create().await?;

    let dir = ClusterDir::new(ClusterDir::default_base(), &config);
    dir.prepare_auth(&mut config)?;
    providers.bootstrap_config(&mut config).await?;
    let settings = ClusterSettings::new(dir, providers.node_binary_on_nodes(&config)?)
        .with_head_config(providers.head_config(&config)?)
        .with_runtimes(registry);
    let provider = providers.node_provider(&config, &ProviderPlace::Client).await?;
    let cluster = ManagedCluster::new(config, provider, settings);

    let outcome = run(&cluster).await;
    // Whatever happened: stop the cluster and delete the workspace.
    let stopped = cluster.stop(&StopOptions::default()).await;
    let deleted = workspace.delete(DeleteWorkspaceOptions::default()).await;
    outcome?;
    stopped?;
    deleted?;
    println!("custom runtime: ok");
    Ok(())
}

async fn run(cluster: &ManagedCluster) -> Result<()> {
    cluster.start(&StartOptions::default()).await?;
    cluster.wait_for_ready(1, Duration::from_secs(300)).await?;

    // The setup commands ran on the head and on the worker the controller set up.
    let mut options = ExecOptions::default();
    options.target = NodeTarget::All;
    let results = cluster
        .exec(
            "cat ~/hello/greeting.txt && echo \"env: $HELLO_GREETING\"",
            &options,
        )
        .await?;
    for r in &results {
        println!("{}: {}", r.node_id, r.stdout.trim().replace('\n', " | "));
        if r.exit_code != Some(0) || !r.stdout.contains("bonjour from") || !r.stdout.contains("env: bonjour")
        {
            return Err(Error::new(
                cloudtik_core::ErrorKind::Unexpected,
                format!("node {} has no greeting: {}", r.node_id, r.stdout),
            ));
        }
    }
    if results.len() != 2 {
        return Err(Error::new(
            cloudtik_core::ErrorKind::Unexpected,
            format!("expected the head and a worker, got {} node(s)", results.len()),
        ));
    }

    // The service: its endpoint, and the page it serves.
    let head_ip = cluster.head_ip().await?.unwrap_or_default();
    let (_, endpoints) = cluster.runtime_endpoints(&head_ip);
    let url = &endpoints["hello"]["hello-web"];
    println!("hello-web: {url}");
    let page = cluster
        .exec(
            "python3 -c \"import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())\" \
             http://127.0.0.1:8099/greeting.txt",
            &ExecOptions::default(),
        )
        .await?;
    if !page
        .first()
        .is_some_and(|r| r.stdout.contains("bonjour from head.default"))
    {
        return Err(Error::new(
            cloudtik_core::ErrorKind::Unexpected,
            format!("the head's page: {:?}", page.first().map(|r| &r.stdout)),
        ));
    }
    println!("page: {}", page[0].stdout.trim());
    Ok(())
}
