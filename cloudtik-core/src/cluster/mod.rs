//! The cluster and workspace operations on a provider: [`ManagedCluster`] implements
//! [`Cluster`](crate::Cluster) (`cloudtik start|stop|status|exec|...`), [`ManagedWorkspace`] implements
//! [`Workspace`](crate::Workspace).
//!
//! # How a cluster starts
//!
//! [`Cluster::start`](crate::Cluster::start) runs on the user's machine. It
//! 1. finds the head (the node tagged `cloudtik-node-kind=head`); a head whose launch hash
//!    is outdated is terminated and replaced;
//! 2. launches a head if there is none, with a launch token recorded in the cluster's
//!    local folder ([`ClusterDir`]) *before* the provider call, so a start killed halfway
//!    and run again adopts the node that call made instead of making a second head;
//! 3. sets the head up with the [node updater](crate::updater::NodeUpdater) over SSH:
//!    the cluster config the head's controller runs with (`cloudtik/cluster.json`), its
//!    bootstrap config ([`HeadBootstrap`]: state store password and encryption key,
//!    paths), the cluster's key pair (for the head to reach workers), the user's file
//!    mounts, initialization, setup and start commands, and last the core start command:
//!    `cloudtik-node head` in the background (redis-server, the head's agent and the
//!    [controller](crate::scaler::Controller));
//! 4. waits until the head's state store answers and the head's agent heartbeats.
//!
//! The head's controller then launches the workers and sets them up with
//! [`SshNodeSetup`]; their agents heartbeat into the head's store.
//!
//! The other operations read the provider's listing and the head's state store: this
//! machine reaches the store directly at the head's internal address when the head has
//! no external one (the virtual provider), else through an SSH port forward to the head.

pub mod container;
#[cfg(feature = "ssh")]
mod host_keys;
mod layout;
#[cfg(feature = "redis")]
mod local_dir;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod managed;
#[cfg(feature = "ssh")]
mod node_setup;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod operations;
mod scale;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod settings;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod start;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod status;
#[cfg(all(feature = "ssh", feature = "redis"))]
mod stop;
mod workspace;

#[cfg(feature = "ssh")]
pub use host_keys::pinned_ssh_options;
pub use layout::{DEFAULT_REDIS_PORT, HeadBootstrap, NodeLayout, env};
#[cfg(feature = "redis")]
pub use local_dir::{ClusterDir, ClusterLock, ClusterSecrets};
#[cfg(all(feature = "ssh", feature = "redis"))]
pub use managed::ManagedCluster;
#[cfg(feature = "ssh")]
pub use node_setup::SshNodeSetup;
pub use scale::resource_request;
#[cfg(all(feature = "ssh", feature = "redis"))]
pub use settings::ClusterSettings;
pub use workspace::ManagedWorkspace;

/// Seconds since the Unix epoch, as the state store's records keep time.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
