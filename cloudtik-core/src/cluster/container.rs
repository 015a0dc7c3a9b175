//! Container execution mode on a cluster (`docker.enabled: true`, per node type): which
//! nodes run their commands in a container, and the runners that reach it.
//!
//! A node in container mode runs every setup, start and stop command, its services
//! (agent, head services, runtimes) and what `exec`, `rsync-up`/`rsync-down`, `submit`
//! and `attach` do in one container on the node, started from the node type's image
//! (`docker.head_image`/`docker.worker_image`, else `docker.image`) with its run options
//! (`docker.run_options` plus `head_run_options`/`worker_run_options`), host network and
//! IPC. Only `initialization_commands` and the `docker` section's initialization
//! commands run on the host, before the container starts.
//!
//! Docker is installed on the host when it lacks it (see
//! [`NodeBootstrap`](crate::updater::NodeBootstrap)); the SSH user runs it with
//! `sudo -n` unless it is root. In the container, commands run as the image's user
//! (root for the images CloudTik uses), so the node's CloudTik folder is root's
//! (`/root/cloudtik`).

use std::sync::Arc;

use crate::command::{CommandRunner, ContainerSpec, DockerRunner};
use crate::config::ClusterConfig;
use crate::error::Result;
use crate::node::NodeKind;
use crate::updater::NodeRunners;

/// The container of nodes of `kind` and `node_type`, or `None` when they run in host
/// mode.
pub fn container_spec(
    config: &ClusterConfig,
    kind: NodeKind,
    node_type: &str,
) -> Result<Option<ContainerSpec>> {
    let docker = config.docker_for(node_type)?;
    if !docker.enabled {
        return Ok(None);
    }
    let mut spec = ContainerSpec::from_config(&docker, kind)?;
    if config.auth.ssh_user.as_deref().unwrap_or("root") != "root" {
        spec.docker_command = "sudo -n docker".into();
    }
    Ok(Some(spec))
}

/// The runners of a node of `kind` and `node_type` whose host `host` reaches: the
/// container's in container mode.
pub fn node_runners(
    config: &ClusterConfig,
    kind: NodeKind,
    node_type: &str,
    host: Arc<dyn CommandRunner>,
) -> Result<NodeRunners> {
    Ok(match container_spec(config, kind, node_type)? {
        Some(spec) => NodeRunners::container(host.clone(), Arc::new(DockerRunner::new(host, spec))),
        None => NodeRunners::host(host),
    })
}

/// The user whose home holds the node's CloudTik folder: root in container mode, else
/// the SSH user.
pub fn layout_user<'a>(config: &'a ClusterConfig, node_type: &str) -> &'a str {
    if config.container_mode(node_type) {
        "root"
    } else {
        config.auth.ssh_user.as_deref().unwrap_or("root")
    }
}
