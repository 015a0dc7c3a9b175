//! # cloudtik-core
//!
//! The core of CloudTik for Rust, an embeddable SDK that creates and scales clusters on
//! clouds: typed cluster configs that read CloudTik's YAML, the [`NodeProvider`] and
//! [`WorkspaceProvider`] traits that clouds implement, the [`Runtime`] trait and [`RuntimeRegistry`],
//! the [`Cluster`] and [`Workspace`] traits of the operations users run, the cluster's
//! shared state ([`state::StateStore`], in Redis or in memory), the node agent
//! ([`agent::NodeAgent`]) that heartbeats into it, and one [`Error`] type with
//! kinds and retryability.
//!
//! Nodes are set up by the [`updater::NodeUpdater`] through a [`command::CommandRunner`]:
//! over SSH (one ControlMaster per node, host keys pinned in the cluster's known-hosts
//! file), in the node's container (`docker exec`), or on this machine.
//!
//! This crate compiles no cloud SDK; providers live in `cloudtik-providers`, each behind
//! its own cargo feature.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `ssh` | yes | `command::SshRunner` (openssh, sftp), `cluster::SshNodeSetup` |
//! | `redis` | yes | `state::RedisStore` and sealed values (AES-256-GCM), `cluster::ClusterDir` |
//! | `testing` | no | the module `testing` (below) |
//!
//! With both `ssh` and `redis`, `cluster::ManagedCluster` implements [`Cluster`]. Without
//! them the crate still has configs, the planner, the [controller](scaler::Controller),
//! the in-memory state store, the node agent and every trait: `default-features = false`
//! is the core for a program that brings its own runner or store.
//!
//! The cargo feature `testing` adds the module `testing`: an in-memory fake cloud with failure
//! injection, the conformance suite every provider must pass, and harnesses that start
//! real sshd servers (also in network namespaces) and build a local Docker image.
#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod cluster;
pub mod command;
pub mod config;
pub mod error;
pub mod node;
pub mod operations;
pub mod provider;
pub mod resources;
pub mod runtime;
pub mod scaler;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod updater;

/// The attribute the library's async traits ([`NodeProvider`], [`Runtime`],
/// [`scaler::ScalingPolicy`], ...) are written with: put `#[cloudtik_core::async_trait]`
/// on an `impl` of one of them that has async methods, with no dependency of your own.
pub use async_trait::async_trait;
pub use error::{ConfigLocation, Error, ErrorKind, ErrorStatus, Report, Result};
pub use node::{NodeId, NodeInfo, NodeKind, NodeState, NodeStatus, Tags};
pub use operations::{Cluster, Workspace};
pub use provider::{
    DeleteWorkspaceOptions, LaunchOutcome, LaunchRequest, NodeProvider, NodeProviderExt,
    ProviderCapabilities, ProviderFactory, ProviderRegistry, TagUpdate, WorkspaceExistence,
    WorkspaceProvider,
};
pub use resources::Resources;
pub use runtime::{Runtime, RuntimeRegistry};
