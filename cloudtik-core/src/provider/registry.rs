//! The provider registry: one place that maps `provider.type` to the code that makes
//! its providers, for the CLI, the head and embedding programs alike.
//!
//! Each provider type is a [`ProviderFactory`]; a [`ProviderRegistry`] holds the ones a
//! program knows. `cloudtik_providers::register_builtin` registers the built-in ones
//! its cargo features enable; a program registers its own next to them, and a config
//! whose `provider.type` names one then works like any other: config loading (its
//! defaults and key checks, [`ProviderFactory::configure_loader`]), `start`, the head's
//! controller (when the head runs a node program with the same registry), `stop`.
//!
//! ```
//! use std::sync::Arc;
//! use cloudtik_core::config::ClusterConfig;
//! use cloudtik_core::provider::{ProviderFactory, ProviderPlace, ProviderRegistry};
//! use cloudtik_core::{NodeProvider, Result};
//!
//! #[derive(Debug)]
//! struct MyCloud;
//!
//! #[cloudtik_core::async_trait]
//! impl ProviderFactory for MyCloud {
//!     fn provider_type(&self) -> &str {
//!         "my-cloud"
//!     }
//!     async fn node_provider(&self, config: &ClusterConfig, _place: &ProviderPlace) -> Result<Arc<dyn NodeProvider>> {
//!         // Your cloud's NodeProvider; here the in-memory fake (feature `testing`).
//!         Ok(Arc::new(cloudtik_core::testing::FakeProvider::new(&config.cluster_name)))
//!     }
//! }
//!
//! let mut registry = ProviderRegistry::new();
//! registry.register(MyCloud);
//! assert!(registry.get("my-cloud").is_ok());
//! assert!(registry.get("other").unwrap_err().to_string().contains("my-cloud"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use super::{NodeProvider, WorkspaceProvider};
use crate::config::{ClusterConfig, ConfigLoader, WorkspaceConfig};
use crate::error::{Error, ErrorKind, Result};

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

/// Makes the providers of one `provider.type`. Only
/// [`provider_type`](Self::provider_type) and [`node_provider`](Self::node_provider) are
/// required; the rest default to "nothing to do".
#[async_trait]
pub trait ProviderFactory: Debug + Send + Sync + 'static {
    /// The `provider.type` this factory serves, e.g. `aws`.
    fn provider_type(&self) -> &str;

    /// Teaches a config loader this provider: its defaults (`with_provider_defaults`) and
    /// the checks of its own keys (`with_provider_validator`). Default: unchanged.
    fn configure_loader(&self, loader: ConfigLoader) -> ConfigLoader {
        loader
    }

    /// Fills in what the provider knows of a cluster config before it is used, with no
    /// cloud call (e.g. node types' resources from a local table). Runs on the user's
    /// machine and again in the head. Default: nothing.
    fn prepare_config(&self, config: &mut ClusterConfig) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// [`prepare_config`](Self::prepare_config), plus what needs the provider's API (the
    /// workspace's network and identities, instance types' resources). Runs on the
    /// user's machine before `start`. Default: `prepare_config`.
    async fn bootstrap_config(&self, config: &mut ClusterConfig) -> Result<()> {
        self.prepare_config(config)
    }

    /// The node provider of `config`'s cluster, made where `place` says.
    async fn node_provider(
        &self,
        config: &ClusterConfig,
        place: &ProviderPlace,
    ) -> Result<Arc<dyn NodeProvider>>;

    /// The workspace provider of `config`'s workspace. Default: an
    /// [`ErrorKind::Unsupported`] error (the provider has no workspaces).
    async fn workspace_provider(&self, config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
        let _ = config;
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("the `{}` provider has no workspaces", self.provider_type()),
        )
        .with_context("path", "provider.type"))
    }

    /// The cluster config the head's controller runs with (the provider may need other
    /// paths or sockets inside the head). Default: the same config.
    fn head_config(&self, config: &ClusterConfig) -> Result<ClusterConfig> {
        Ok(config.clone())
    }

    /// Where the node program (`cloudtik-node`) is on the cluster's nodes. Default:
    /// [`DEFAULT_INSTALL_PATH`](crate::updater::bootstrap::DEFAULT_INSTALL_PATH), where
    /// setup installs it.
    fn node_binary_on_nodes(&self, config: &ClusterConfig) -> String {
        let _ = config;
        crate::updater::bootstrap::DEFAULT_INSTALL_PATH.to_string()
    }

    /// Whether setup installs the node program (and the head's `redis-server`) on nodes
    /// that lack them or hold another build, as on a cloud's stock images (see
    /// [`NodeBootstrap`](crate::updater::NodeBootstrap)). Default: true. A provider
    /// whose nodes come with them (the virtual provider mounts this machine's program
    /// into nodes of an image with redis) says false.
    fn installs_node_program(&self, config: &ClusterConfig) -> bool {
        let _ = config;
        true
    }

    /// For a provider that copies or mounts the node program from this machine into
    /// nodes (the virtual provider): records in `config` the program `find` locates,
    /// unless the config names one. `find`'s error (no node program here) is returned
    /// only when the provider needs it. Default: nothing (nodes have their own).
    fn use_local_node_binary(
        &self,
        config: &mut ClusterConfig,
        find: &dyn Fn() -> Result<std::path::PathBuf>,
    ) -> Result<()> {
        let _ = (config, find);
        Ok(())
    }
}

/// The provider types a program knows, by `provider.type`.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    factories: BTreeMap<String, Arc<dyn ProviderFactory>>,
    unavailable: BTreeMap<String, String>,
}

impl ProviderRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        ProviderRegistry::default()
    }

    /// Registers `factory` under its provider type, replacing one of the same type.
    pub fn register(&mut self, factory: impl ProviderFactory) -> &mut Self {
        self.register_arc(Arc::new(factory))
    }

    /// Registers a shared factory.
    pub fn register_arc(&mut self, factory: Arc<dyn ProviderFactory>) -> &mut Self {
        let t = factory.provider_type().to_string();
        self.unavailable.remove(&t);
        self.factories.insert(t, factory);
        self
    }

    /// Records a provider type this program knows of but cannot run, and why, as the end
    /// of a sentence that starts "the `<type>` provider " (e.g. "is not in this build:
    /// enable the cargo feature `aws`"): asking for it then says so instead of
    /// "unknown".
    pub fn register_unavailable(&mut self, provider_type: &str, why: impl Into<String>) -> &mut Self {
        if !self.factories.contains_key(provider_type) {
            self.unavailable.insert(provider_type.to_string(), why.into());
        }
        self
    }

    /// The registered provider types, sorted.
    pub fn provider_types(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// The factory of `provider_type`, or an [`ErrorKind::Unsupported`] error at
    /// `provider.type` that says why there is none and which types there are.
    pub fn get(&self, provider_type: &str) -> Result<&Arc<dyn ProviderFactory>> {
        if let Some(f) = self.factories.get(provider_type) {
            return Ok(f);
        }
        let known = self.provider_types().join(", ");
        let msg = match self.unavailable.get(provider_type) {
            Some(why) => format!("the `{provider_type}` provider {why}"),
            None => format!("unknown provider type `{provider_type}`: this program knows {known}"),
        };
        Err(Error::new(ErrorKind::Unsupported, msg).with_context("path", "provider.type"))
    }

    /// A config loader taught every registered provider
    /// ([`ProviderFactory::configure_loader`]).
    pub fn configure_loader(&self, loader: ConfigLoader) -> ConfigLoader {
        self.factories
            .values()
            .fold(loader, |loader, f| f.configure_loader(loader))
    }

    /// [`ProviderFactory::prepare_config`] of the config's provider.
    pub fn prepare_config(&self, config: &mut ClusterConfig) -> Result<()> {
        self.get(&config.provider.provider_type)?.prepare_config(config)
    }

    /// [`ProviderFactory::bootstrap_config`] of the config's provider.
    pub async fn bootstrap_config(&self, config: &mut ClusterConfig) -> Result<()> {
        let factory = self.get(&config.provider.provider_type)?.clone();
        factory.bootstrap_config(config).await
    }

    /// [`ProviderFactory::node_provider`] of the config's provider.
    pub async fn node_provider(
        &self,
        config: &ClusterConfig,
        place: &ProviderPlace,
    ) -> Result<Arc<dyn NodeProvider>> {
        self.get(&config.provider.provider_type)?
            .node_provider(config, place)
            .await
    }

    /// [`ProviderFactory::workspace_provider`] of the config's provider.
    pub async fn workspace_provider(&self, config: &WorkspaceConfig) -> Result<Arc<dyn WorkspaceProvider>> {
        self.get(&config.provider.provider_type)?
            .workspace_provider(config)
            .await
    }

    /// [`ProviderFactory::head_config`] of the config's provider.
    pub fn head_config(&self, config: &ClusterConfig) -> Result<ClusterConfig> {
        self.get(&config.provider.provider_type)?.head_config(config)
    }

    /// [`ProviderFactory::use_local_node_binary`] of the config's provider.
    pub fn use_local_node_binary(
        &self,
        config: &mut ClusterConfig,
        find: &dyn Fn() -> Result<std::path::PathBuf>,
    ) -> Result<()> {
        self.get(&config.provider.provider_type)?
            .use_local_node_binary(config, find)
    }

    /// [`ProviderFactory::installs_node_program`] of the config's provider.
    pub fn installs_node_program(&self, config: &ClusterConfig) -> Result<bool> {
        Ok(self
            .get(&config.provider.provider_type)?
            .installs_node_program(config))
    }

    /// [`ProviderFactory::node_binary_on_nodes`] of the config's provider.
    pub fn node_binary_on_nodes(&self, config: &ClusterConfig) -> Result<String> {
        Ok(self
            .get(&config.provider.provider_type)?
            .node_binary_on_nodes(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Named(&'static str);

    #[async_trait]
    impl ProviderFactory for Named {
        fn provider_type(&self) -> &str {
            self.0
        }
        async fn node_provider(&self, _: &ClusterConfig, _: &ProviderPlace) -> Result<Arc<dyn NodeProvider>> {
            Err(Error::new(ErrorKind::Unexpected, "not in this test"))
        }
    }

    #[test]
    fn lookups_name_what_is_known_and_why_a_type_is_missing() {
        let mut r = ProviderRegistry::new();
        r.register(Named("b")).register(Named("a"));
        r.register_unavailable("gcp", "is not built yet");
        r.register_unavailable("a", "is ignored: `a` is registered");
        assert_eq!(r.provider_types(), ["a", "b"]);
        assert_eq!(r.get("a").unwrap().provider_type(), "a");

        let e = r.get("gcp").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string().contains("the `gcp` provider is not built yet"),
            "{e:#}"
        );
        assert_eq!(e.context_value("path"), Some("provider.type"));

        let e = r.get("zzz").unwrap_err();
        assert!(e.to_string().contains("unknown provider type `zzz`"), "{e:#}");
        assert!(e.to_string().contains("a, b"), "{e:#}");

        // Registering a type after it was marked unavailable makes it available.
        r.register(Named("gcp"));
        assert!(r.get("gcp").is_ok());
    }
}
