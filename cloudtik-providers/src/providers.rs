//! Providers by `provider.type`: what the CLI, the head and embedding programs call to
//! get the provider of a config without naming it.

use std::sync::Arc;

use cloudtik_core::config::{ClusterConfig, WorkspaceConfig};
use cloudtik_core::{Error, ErrorKind, NodeProvider, Result, WorkspaceProvider};

/// Where a provider runs: on the user's machine, or inside the cluster's head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderPlace {
    /// On the machine that starts the cluster (the CLI, an embedding service).
    #[default]
    Client,
    /// Inside the head node, for its controller.
    Head {
        /// The public key to authorize on the workers it launches.
        authorized_key: Option<String>,
    },
}

/// Provider types whose configs this crate checks but whose nodes it cannot run yet.
const NOT_BUILT_YET: [&str; 3] = ["local", "gcp", "azure"];

/// Checks that this build can run nodes of `provider_type`, before anything is made for
/// a cluster: an error ([`ErrorKind::Unsupported`], path `provider.type`) says why not
/// (a provider not built yet, a cargo feature not enabled, an unknown type).
pub fn check_node_provider(provider_type: &str) -> Result<()> {
    #[cfg(feature = "virtual")]
    if provider_type == crate::virtual_provider::PROVIDER_TYPE {
        return Ok(());
    }
    #[cfg(feature = "aws")]
    if provider_type == crate::aws::PROVIDER_TYPE {
        return Ok(());
    }
    Err(unsupported(provider_type, "nodes"))
}

fn unsupported(provider_type: &str, what: &str) -> Error {
    let known = ["virtual", "aws", "gcp", "azure", "local"];
    let msg = if NOT_BUILT_YET.contains(&provider_type) {
        format!(
            "the `{provider_type}` provider is not built yet: its configs are checked, but its {what} \
             cannot be made; clusters run on the `virtual` and `aws` providers today"
        )
    } else if known.contains(&provider_type) {
        format!(
            "{what} of provider `{provider_type}` are not available in this build \
             (enable the cargo feature `{provider_type}` of cloudtik-providers)"
        )
    } else {
        format!(
            "unknown provider type `{provider_type}`: expected one of {}",
            known.join(", ")
        )
    };
    Error::new(ErrorKind::Unsupported, msg).with_context("path", "provider.type")
}

/// Fills in what the provider knows of a cluster config before it is used: for the
/// virtual provider, each node type's `resources` (CPU and memory) from its
/// `node_config.instance_type`, or this machine's when the type sets no limit.
pub fn bootstrap_cluster_config(config: &mut ClusterConfig) -> Result<()> {
    #[cfg(feature = "virtual")]
    if config.provider.provider_type == crate::virtual_provider::PROVIDER_TYPE {
        return crate::virtual_provider::bootstrap_resources(config);
    }
    let _ = config;
    Ok(())
}

/// [`bootstrap_cluster_config`], plus what needs the provider's API. For the `aws`
/// provider (see `aws::AwsClusterBootstrap`): the workspace named by `workspace_name`
/// must be complete; each node type's `node_config` gets the workspace's subnets
/// (public for the head, private for workers), security group and instance profile, and
/// the cluster's key pair (`auth.ssh_public_key`, imported into EC2 once), where the user
/// did not set them; and each node type's `resources` (CPU, memory, GPU) from EC2's
/// `DescribeInstanceTypes` for its `node_config.InstanceType`, when the type sets none.
/// Credentials come from the standard AWS chain.
pub async fn bootstrap_cluster_config_async(config: &mut ClusterConfig) -> Result<()> {
    #[cfg(feature = "aws")]
    if config.provider.provider_type == crate::aws::PROVIDER_TYPE {
        let bootstrap = crate::aws::AwsClusterBootstrap::from_cluster_config(config).await?;
        return bootstrap.bootstrap(config).await;
    }
    bootstrap_cluster_config(config)
}

/// The node provider of `config`'s cluster.
pub async fn node_provider(config: &ClusterConfig, place: ProviderPlace) -> Result<Arc<dyn NodeProvider>> {
    let t = config.provider.provider_type.as_str();
    #[cfg(feature = "virtual")]
    if t == crate::virtual_provider::PROVIDER_TYPE {
        use crate::virtual_provider::{DOCKER_SOCKET_IN_HEAD, VirtualNodeProvider, VirtualSettings};
        let settings = match place {
            ProviderPlace::Client => VirtualSettings::from_cluster_config(config)?,
            ProviderPlace::Head { authorized_key } => {
                let mut s = VirtualSettings::from_provider_section(&config.provider)?
                    .with_docker_socket(DOCKER_SOCKET_IN_HEAD);
                s.authorized_key = authorized_key;
                s
            }
        };
        return Ok(Arc::new(VirtualNodeProvider::new(
            &config.workspace_name,
            &config.cluster_name,
            settings,
        )?));
    }
    #[cfg(feature = "aws")]
    if t == "aws" {
        let _ = &place;
        return Ok(Arc::new(
            crate::aws::AwsNodeProvider::from_cluster_config(config).await?,
        ));
    }
    let _ = place;
    Err(unsupported(t, "nodes"))
}

/// The workspace provider of `config`'s workspace.
pub async fn workspace_provider(config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
    let t = config.provider.provider_type.as_str();
    #[cfg(feature = "virtual")]
    if t == crate::virtual_provider::PROVIDER_TYPE {
        return Ok(Arc::new(
            crate::virtual_provider::VirtualWorkspaceProvider::from_workspace_config(config)?,
        ));
    }
    #[cfg(feature = "aws")]
    if t == "aws" {
        return Ok(Arc::new(
            crate::aws::AwsWorkspaceProvider::from_workspace_config(config).await?,
        ));
    }
    Err(unsupported(t, "workspaces"))
}

/// The cluster config the head's controller gets: for the virtual provider, the state
/// folder as an absolute host path (the head sees it at the same path) and the Docker
/// socket where the head has it.
pub fn head_cluster_config(config: &ClusterConfig) -> Result<ClusterConfig> {
    let mut c = config.clone();
    #[cfg(feature = "virtual")]
    if c.provider.provider_type == crate::virtual_provider::PROVIDER_TYPE {
        use crate::virtual_provider::{DOCKER_SOCKET_IN_HEAD, VirtualSettings};
        let settings = VirtualSettings::from_provider_section(&c.provider)?;
        c.provider.extra.insert(
            "state_dir".into(),
            settings.state_dir.display().to_string().into(),
        );
        c.provider
            .extra
            .insert("docker_socket".into(), DOCKER_SOCKET_IN_HEAD.into());
        if let Some(b) = &settings.node_binary {
            c.provider
                .extra
                .insert("node_binary".into(), b.display().to_string().into());
        }
    }
    Ok(c)
}

/// Where the `cloudtik-node` program is on the nodes of `config`'s cluster: mounted at
/// `/cloudtik/bin/cloudtik-node` on virtual nodes, else on the `PATH`.
pub fn node_binary_on_nodes(config: &ClusterConfig) -> String {
    #[cfg(feature = "virtual")]
    if config.provider.provider_type == crate::virtual_provider::PROVIDER_TYPE {
        return crate::virtual_provider::NODE_BINARY_IN_NODE.to_string();
    }
    let _ = config;
    "cloudtik-node".to_string()
}
