//! [`VirtualWorkspaceProvider`]: a workspace as a Docker bridge network.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::ListContainersOptionsBuilder;
use cloudtik_core::config::WorkspaceConfig;
use cloudtik_core::node::tags;
use cloudtik_core::{
    DeleteWorkspaceOptions, Error, ErrorKind, NodeProvider, Result, WorkspaceExistence, WorkspaceProvider,
};
use serde_json::json;

use super::docker::{DockerClient, is_status};
use super::node_provider::VirtualNodeProvider;
use super::{PROVIDER_TYPE, VirtualSettings, bridge_interface_name, check_name, network_name};

/// Label on the networks this provider creates.
const MANAGED_LABEL: &str = "org.cloudtik.virtual.managed";

/// A workspace of the virtual provider: the Docker bridge network `cloudtik-<workspace>`
/// (and the workspace's state folder).
///
/// * **Create** makes the network when it is missing (idempotent; a concurrent create
///   is not an error), with the bridge interface `tik-<hash>` and `provider.subnet` when
///   set.
/// * **Existence** is `Completed` when the network exists, else `NotExist`.
/// * **Delete** first removes the workspace's node containers that were stopped from
///   outside (exited or dead, see the [module docs](super#containers-stopped-from-outside)),
///   then is refused with [`ErrorKind::Conflict`] while any container is attached
///   to the network (naming the clusters); it removes the network and the workspace's
///   state folder, and succeeds when they are gone already.
#[derive(Debug, Clone)]
pub struct VirtualWorkspaceProvider {
    workspace: String,
    settings: VirtualSettings,
    docker: Arc<DockerClient>,
}

impl VirtualWorkspaceProvider {
    /// A provider for `workspace`. Connects to Docker on first use.
    pub fn new(workspace: &str, settings: VirtualSettings) -> Result<Self> {
        check_name("workspace name", workspace)?;
        Ok(VirtualWorkspaceProvider {
            workspace: workspace.to_string(),
            docker: Arc::new(DockerClient::new(settings.docker_socket.clone())),
            settings,
        })
    }

    /// A provider for the workspace of a workspace config.
    pub fn from_workspace_config(config: &WorkspaceConfig) -> Result<Self> {
        let settings = VirtualSettings::from_provider_section(&config.provider)?;
        Self::new(&config.workspace_name, settings)
    }

    /// The name of the workspace's network.
    pub fn network_name(&self) -> String {
        network_name(&self.workspace)
    }

    /// The resolved settings.
    pub fn settings(&self) -> &VirtualSettings {
        &self.settings
    }

    async fn docker(&self, operation: &'static str) -> Result<&Docker> {
        self.docker.get(operation).await
    }

    /// Removes the exited and dead node containers of the workspace's clusters (stopped
    /// from outside), as terminate would, with no grace: the workspace is being deleted.
    async fn remove_stopped_nodes(&self, docker: &Docker, operation: &'static str) -> Result<()> {
        let filters = HashMap::from([
            (
                "label",
                vec![format!("{}={}", tags::WORKSPACE_NAME, self.workspace)],
            ),
            ("status", vec!["exited".to_string(), "dead".to_string()]),
        ]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.docker.error(e, operation))?;
        let clusters: BTreeSet<String> = list
            .into_iter()
            .filter_map(|c| c.labels.and_then(|l| l.get(tags::CLUSTER_NAME).cloned()))
            .filter(|c| check_name("cluster name", c).is_ok())
            .collect();
        for cluster in clusters {
            let provider = VirtualNodeProvider::with_client(
                &self.workspace,
                &cluster,
                self.settings.clone(),
                self.docker.clone(),
            );
            let removed = provider.remove_stopped_nodes().await?;
            tracing::info!(cluster = %cluster, removed, "removed node containers stopped from outside");
        }
        Ok(())
    }

    /// Names of the containers attached to the network, with their cluster labels.
    async fn attached(
        &self,
        docker: &Docker,
        operation: &'static str,
    ) -> Result<Vec<(String, Option<String>)>> {
        let filters = HashMap::from([("network", vec![self.network_name()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.docker.error(e, operation))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .or(c.id)
                    .unwrap_or_default();
                let cluster = c.labels.and_then(|l| l.get(tags::CLUSTER_NAME).cloned());
                (name, cluster)
            })
            .collect())
    }
}

/// The first host address of an IPv4 subnet, which Docker gives the bridge by default.
fn first_host(subnet: &str) -> Option<String> {
    let (ip, bits) = subnet.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    Some(std::net::Ipv4Addr::from((u32::from(ip) & mask) + 1).to_string())
}

#[async_trait]
impl WorkspaceProvider for VirtualWorkspaceProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn workspace_name(&self) -> &str {
        &self.workspace
    }

    async fn create_workspace(&self) -> Result<()> {
        const OP: &str = "create_workspace";
        let docker = self.docker(OP).await?;
        let name = self.network_name();
        match docker.inspect_network(&name, None).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {
                let request = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([
                        (tags::WORKSPACE_NAME.to_string(), self.workspace.clone()),
                        (MANAGED_LABEL.to_string(), "true".to_string()),
                    ])),
                    options: Some(HashMap::from([(
                        "com.docker.network.bridge.name".to_string(),
                        bridge_interface_name(&self.workspace),
                    )])),
                    ipam: self.settings.subnet.as_ref().map(|subnet| Ipam {
                        config: Some(vec![IpamConfig {
                            subnet: Some(subnet.clone()),
                            gateway: first_host(subnet),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => tracing::info!(network = %name, "workspace network created"),
                    // Created by a concurrent call in the meantime.
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => {
                        let mut err = self.docker.error(e, OP).with_context("network", &name);
                        if format!("{err:#}").contains("overlap") {
                            err = Error::new(
                                ErrorKind::Conflict,
                                format!(
                                    "the subnet of network {name} overlaps another network: set provider.subnet \
                                     to a free range"
                                ),
                            )
                            .with_operation(OP)
                            .with_source(err);
                        }
                        return Err(err);
                    }
                }
            }
            Err(e) => return Err(self.docker.error(e, OP).with_context("network", &name)),
        }
        let dir = self.settings.workspace_state_dir(&self.workspace);
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot create the workspace state folder {}", dir.display()),
            )
            .with_operation(OP)
            .with_source(e)
        })?;
        Ok(())
    }

    async fn delete_workspace(&self, _options: DeleteWorkspaceOptions) -> Result<()> {
        const OP: &str = "delete_workspace";
        let docker = self.docker(OP).await?;
        let name = self.network_name();
        self.remove_stopped_nodes(docker, OP).await?;
        let attached = self.attached(docker, OP).await?;
        if !attached.is_empty() {
            let clusters: BTreeSet<&str> = attached.iter().filter_map(|(_, c)| c.as_deref()).collect();
            let others: Vec<&str> = attached
                .iter()
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let mut what = Vec::new();
            if !clusters.is_empty() {
                what.push(format!(
                    "clusters {} (stop them first: `cloudtik stop`)",
                    clusters.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            if !others.is_empty() {
                what.push(format!(
                    "containers {} that are not CloudTik nodes (disconnect or remove them)",
                    others.join(", ")
                ));
            }
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "workspace {} still has {} container(s) on network {name}: {}",
                    self.workspace,
                    attached.len(),
                    what.join("; ")
                ),
            )
            .with_operation(OP));
        }
        match docker.remove_network(&name).await {
            Ok(()) => tracing::info!(network = %name, "workspace network removed"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.docker.error(e, OP).with_context("network", &name)),
        }
        let dir = self.settings.workspace_state_dir(&self.workspace);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("cannot remove the workspace state folder {}", dir.display()),
                )
                .with_operation(OP)
                .with_source(e));
            }
        }
        Ok(())
    }

    async fn update_workspace(&self) -> Result<()> {
        // Nothing of a bridge network changes after creation; re-create what is missing.
        self.create_workspace().await
    }

    async fn workspace_existence(&self) -> Result<WorkspaceExistence> {
        const OP: &str = "workspace_existence";
        let docker = self.docker(OP).await?;
        match docker.inspect_network(&self.network_name(), None).await {
            Ok(_) => Ok(WorkspaceExistence::Completed),
            Err(e) if is_status(&e, 404) => Ok(WorkspaceExistence::NotExist),
            Err(e) => Err(self.docker.error(e, OP)),
        }
    }

    async fn workspace_info(&self) -> Result<serde_json::Value> {
        const OP: &str = "workspace_info";
        let docker = self.docker(OP).await?;
        let name = self.network_name();
        let network = docker.inspect_network(&name, None).await.map_err(|e| {
            if is_status(&e, 404) {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "workspace {} does not exist (no network {name}): create it with `cloudtik workspace create`",
                        self.workspace
                    ),
                )
                .with_operation(OP)
            } else {
                self.docker.error(e, OP)
            }
        })?;
        let ipam = network
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().next())
            .unwrap_or_default();
        let bridge = network
            .options
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned());
        Ok(json!({
            "provider": PROVIDER_TYPE,
            "workspace_name": self.workspace,
            "network_name": name,
            "network_id": network.id,
            "driver": network.driver,
            "subnet": ipam.subnet,
            "gateway": ipam.gateway.or_else(|| ipam.subnet.as_deref().and_then(first_host)),
            "bridge_interface": bridge,
            "state_dir": self.settings.workspace_state_dir(&self.workspace),
            "docker_socket": self.settings.docker_socket,
        }))
    }

    async fn list_clusters(&self) -> Result<Vec<String>> {
        const OP: &str = "list_clusters";
        let docker = self.docker(OP).await?;
        let filters = HashMap::from([(
            "label",
            vec![format!("{}={}", tags::WORKSPACE_NAME, self.workspace)],
        )]);
        let options = ListContainersOptionsBuilder::default().filters(&filters).build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.docker.error(e, OP))?;
        let clusters: BTreeSet<String> = list
            .into_iter()
            .filter_map(|c| c.labels.and_then(|l| l.get(tags::CLUSTER_NAME).cloned()))
            .collect();
        Ok(clusters.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_host_address() {
        assert_eq!(first_host("10.213.19.40/29").as_deref(), Some("10.213.19.41"));
        assert_eq!(first_host("172.18.0.0/16").as_deref(), Some("172.18.0.1"));
        assert_eq!(first_host("10.0.0.7/24").as_deref(), Some("10.0.0.1"));
        assert_eq!(first_host("10.0.0.0/31"), None);
        assert_eq!(first_host("nonsense"), None);
    }
}
