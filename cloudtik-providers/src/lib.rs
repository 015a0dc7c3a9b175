//! # cloudtik-providers
//!
//! The providers of CloudTik for Rust, one module each behind the cargo feature of the
//! same name, so that a build compiles only the SDKs it needs: `virtual` (Docker
//! containers on this machine, the default) and `aws` (Amazon EC2). [`register_builtin`]
//! registers them in a [`ProviderRegistry`], where a program adds its own.
//!
//! `local`, `gcp` and `azure` are not built yet: their configs are checked (below), and
//! asking the registry for them says so.
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

pub use cloudtik_core::provider::{ProviderFactory, ProviderPlace, ProviderRegistry};
#[cfg(feature = "aws")]
pub use providers::AwsFactory;
#[cfg(feature = "virtual")]
pub use providers::VirtualFactory;
pub use providers::{builtin_registry, register_builtin};

/// A config loader that knows every built-in provider's keys and the built-in runtimes
/// ([`cloudtik_runtime::register_builtin`]). A program with providers of its own teaches
/// it those with [`ProviderRegistry::configure_loader`].
pub fn config_loader() -> ConfigLoader {
    provider_config::register_validators(ConfigLoader::new())
        .with_runtimes(std::sync::Arc::new(cloudtik_runtime::builtin_registry()))
}
