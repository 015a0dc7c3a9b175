//! The typed workspace config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cluster::ProviderSection;
use super::path::YamlPath;
use crate::error::Result;

/// A workspace config: the shared network, firewall and identities clusters run in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkspaceConfig {
    /// The workspace's name.
    pub workspace_name: String,
    /// The template this config inherits, already applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The provider and its workspace keys (`allowed_ssh_sources`, `managed_cloud_storage`, ...).
    pub provider: ProviderSection,
}

impl WorkspaceConfig {
    pub(crate) fn from_merged(v: &Value) -> Result<Self> {
        let ws: WorkspaceConfig = super::typed::from_value(v, &YamlPath::root())?;
        super::validate::check_name(&ws.workspace_name, "workspace_name")?;
        Ok(ws)
    }
}
