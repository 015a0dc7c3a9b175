//! # cloudtik-core
//!
//! The core of CloudTik for Rust, an embeddable SDK that creates and scales clusters on
//! clouds: typed cluster configs that read CloudTik's YAML, the [`NodeProvider`] and
//! [`WorkspaceProvider`] traits that clouds implement, the runtime trait and registry,
//! and one [`Error`] type with kinds and retryability.
//!
//! This crate compiles no cloud SDK; providers live in `cloudtik-providers`, each behind
//! its own cargo feature.
#![warn(missing_docs)]

pub mod error;
pub mod node;
pub mod provider;
pub mod resources;
pub mod scaler;

pub use error::{ConfigLocation, Error, ErrorKind, ErrorStatus, Result};
pub use node::{NodeId, NodeInfo, NodeKind, NodeState, NodeStatus, Tags};
pub use provider::{
    DeleteWorkspaceOptions, LaunchOutcome, LaunchRequest, NodeProvider, NodeProviderExt,
    ProviderCapabilities, TagUpdate, WorkspaceExistence, WorkspaceProvider,
};
pub use resources::Resources;
