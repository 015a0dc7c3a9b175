//! # cloudtik-providers
//!
//! The providers of CloudTik for Rust, one module each: `virtual` (Docker containers on
//! this machine, the default), `local` (a static list of hosts), and the clouds `aws`,
//! `gcp` and `azure`, each behind the cargo feature of the same name so that a build
//! compiles only the cloud SDKs it needs.
//!
//! Every provider's config keys are typed and checked here whatever the features, so a
//! config for any provider can be validated anywhere: [`config_loader`] returns a
//! [`ConfigLoader`] with all of them registered.
#![warn(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod provider_config;
pub mod providers;
#[cfg(feature = "virtual")]
pub mod virtual_provider;

use cloudtik_core::config::ConfigLoader;

pub use providers::{
    ProviderPlace, bootstrap_cluster_config, bootstrap_cluster_config_async, head_cluster_config,
    node_binary_on_nodes, node_provider, workspace_provider,
};

/// A config loader that knows every provider's keys and the built-in runtimes
/// ([`cloudtik_runtime::register_builtin`]).
pub fn config_loader() -> ConfigLoader {
    provider_config::register_validators(ConfigLoader::new())
        .with_runtimes(std::sync::Arc::new(cloudtik_runtime::builtin_registry()))
}
