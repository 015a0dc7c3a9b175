//! The built-in providers as [`ProviderFactory`]s: [`register_builtin`] adds the ones
//! this build's cargo features enable to a [`ProviderRegistry`], and says why the others
//! are missing (a feature not enabled, a provider not built yet).
//!
//! ```
//! let registry = cloudtik_providers::builtin_registry();
//! assert!(registry.get("virtual").is_ok());
//! let err = registry.get("gcp").unwrap_err();
//! assert!(err.to_string().contains("not built yet"));
//! ```

use cloudtik_core::provider::ProviderRegistry;
#[cfg(any(feature = "virtual", feature = "aws"))]
use cloudtik_core::{
    NodeProvider, Result, WorkspaceProvider,
    config::{ClusterConfig, WorkspaceConfig},
    provider::{ProviderFactory, ProviderPlace},
};
#[cfg(any(feature = "virtual", feature = "aws"))]
use std::sync::Arc;

/// Provider types whose configs this crate checks but whose nodes it cannot run yet.
const NOT_BUILT_YET: [&str; 3] = ["local", "gcp", "azure"];

/// Registers the built-in providers of this build: `virtual` and `aws` with their cargo
/// features; `local`, `gcp` and `azure` (and a built-in type whose feature is off) as
/// unavailable, with the reason.
pub fn register_builtin(registry: &mut ProviderRegistry) -> &mut ProviderRegistry {
    for t in NOT_BUILT_YET {
        registry.register_unavailable(
            t,
            "is not built yet: its configs are checked, but its nodes and workspaces cannot be made; \
             clusters run on the `virtual` and `aws` providers today",
        );
    }
    for t in ["virtual", "aws"] {
        registry.register_unavailable(
            t,
            format!("is not in this build: enable the cargo feature `{t}` of cloudtik-providers"),
        );
    }
    #[cfg(feature = "virtual")]
    registry.register(VirtualFactory);
    #[cfg(feature = "aws")]
    registry.register(AwsFactory);
    registry
}

/// A registry with the built-in providers ([`register_builtin`]).
pub fn builtin_registry() -> ProviderRegistry {
    let mut r = ProviderRegistry::new();
    register_builtin(&mut r);
    r
}

/// The `virtual` provider: Docker containers on this machine.
#[cfg(feature = "virtual")]
#[derive(Debug, Clone, Copy, Default)]
pub struct VirtualFactory;

#[cfg(feature = "virtual")]
#[async_trait::async_trait]
impl ProviderFactory for VirtualFactory {
    fn provider_type(&self) -> &str {
        crate::virtual_provider::PROVIDER_TYPE
    }

    /// Each node type's `resources` (CPU and memory) from its
    /// `node_config.instance_type`, or this machine's when the type sets no limit.
    fn prepare_config(&self, config: &mut ClusterConfig) -> Result<()> {
        crate::virtual_provider::bootstrap_resources(config)
    }

    async fn node_provider(
        &self,
        config: &ClusterConfig,
        place: &ProviderPlace,
    ) -> Result<Arc<dyn NodeProvider>> {
        use crate::virtual_provider::{DOCKER_SOCKET_IN_HEAD, VirtualNodeProvider, VirtualSettings};
        let settings = match place {
            ProviderPlace::Head { authorized_key } => {
                let mut s = VirtualSettings::from_provider_section(&config.provider)?
                    .with_docker_socket(DOCKER_SOCKET_IN_HEAD);
                s.authorized_key = authorized_key.clone();
                s
            }
            _ => VirtualSettings::from_cluster_config(config)?,
        };
        Ok(Arc::new(VirtualNodeProvider::new(
            &config.workspace_name,
            &config.cluster_name,
            settings,
        )?))
    }

    async fn workspace_provider(&self, config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
        Ok(Arc::new(
            crate::virtual_provider::VirtualWorkspaceProvider::from_workspace_config(config)?,
        ))
    }

    /// The state folder and the package cache as absolute host paths (the head sees
    /// them at the same paths: it makes workers with the host's folders), the Docker
    /// socket where the head has it, and the host's node program.
    fn head_config(&self, config: &ClusterConfig) -> Result<ClusterConfig> {
        use crate::provider_config::VirtualProviderConfig;
        use crate::virtual_provider::{DOCKER_SOCKET_IN_HEAD, VirtualSettings};
        let settings = VirtualSettings::from_provider_section(&config.provider)?;
        let mut typed: VirtualProviderConfig = config.provider.parse()?;
        typed.state_dir = Some(settings.state_dir.display().to_string());
        typed.docker_socket = Some(DOCKER_SOCKET_IN_HEAD.to_string());
        typed.node_binary = settings.node_binary.as_ref().map(|b| b.display().to_string());
        // "" (sharing off) stays as it is.
        typed.package_cache = Some(
            settings
                .package_cache
                .as_ref()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default(),
        );
        let mut c = config.clone();
        c.provider.set_typed(&typed)?;
        Ok(c)
    }

    /// Mounted at `/cloudtik/bin/cloudtik-node` on every node.
    fn node_binary_on_nodes(&self, _config: &ClusterConfig) -> String {
        crate::virtual_provider::NODE_BINARY_IN_NODE.to_string()
    }

    /// No: nodes mount this machine's program, and the node image has redis.
    fn installs_node_program(&self, _config: &ClusterConfig) -> bool {
        false
    }

    /// `provider.node_binary`, unless the config names one.
    fn use_local_node_binary(
        &self,
        config: &mut ClusterConfig,
        find: &dyn Fn() -> Result<std::path::PathBuf>,
    ) -> Result<()> {
        if !config.provider.extra.contains_key("node_binary") {
            let path = find()?;
            config
                .provider
                .extra
                .insert("node_binary".into(), path.display().to_string().into());
        }
        Ok(())
    }
}

/// The `aws` provider: Amazon EC2, with its workspaces (VPC, subnets, security group,
/// IAM roles, S3 bucket).
#[cfg(feature = "aws")]
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsFactory;

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl ProviderFactory for AwsFactory {
    fn provider_type(&self) -> &str {
        crate::aws::PROVIDER_TYPE
    }

    /// The workspace named by `workspace_name` must be complete; each node type's
    /// `node_config` gets the workspace's subnets (public for the head, private for
    /// workers), security group and instance profile, and the cluster's key pair
    /// (`auth.ssh_public_key`, imported into EC2 once), where the user did not set them;
    /// and each node type's `resources` (CPU, memory, GPU) from EC2's
    /// `DescribeInstanceTypes` for its `node_config.InstanceType`, when the type sets
    /// none. Credentials come from the standard AWS chain.
    async fn bootstrap_config(&self, config: &mut ClusterConfig) -> Result<()> {
        let bootstrap = crate::aws::AwsClusterBootstrap::from_cluster_config(config).await?;
        bootstrap.bootstrap(config).await
    }

    async fn node_provider(
        &self,
        config: &ClusterConfig,
        _place: &ProviderPlace,
    ) -> Result<Arc<dyn NodeProvider>> {
        Ok(Arc::new(
            crate::aws::AwsNodeProvider::from_cluster_config(config).await?,
        ))
    }

    async fn workspace_provider(&self, config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
        Ok(Arc::new(
            crate::aws::AwsWorkspaceProvider::from_workspace_config(config).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_types_say_why() {
        let r = builtin_registry();
        for t in NOT_BUILT_YET {
            let e = r.get(t).unwrap_err();
            assert!(e.to_string().contains("not built yet"), "{e:#}");
        }
        #[cfg(not(feature = "aws"))]
        assert!(
            r.get("aws")
                .unwrap_err()
                .to_string()
                .contains("cargo feature `aws`")
        );
        #[cfg(feature = "aws")]
        assert!(r.get("aws").is_ok());
        let e = r.get("openstack").unwrap_err();
        assert!(e.to_string().contains("unknown provider type"), "{e:#}");
    }
}
