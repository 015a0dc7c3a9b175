//! [`ManagedWorkspace`]: the [`Workspace`] operations on a provider.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::Result;
use crate::operations::Workspace;
use crate::provider::{DeleteWorkspaceOptions, WorkspaceExistence, WorkspaceProvider};

/// A workspace on a provider: the [`Workspace`] operations.
#[derive(Debug, Clone)]
pub struct ManagedWorkspace {
    name: String,
    provider: Arc<dyn WorkspaceProvider>,
}

impl ManagedWorkspace {
    /// The workspace `name` on `provider`.
    pub fn new(name: impl Into<String>, provider: Arc<dyn WorkspaceProvider>) -> Self {
        ManagedWorkspace {
            name: name.into(),
            provider,
        }
    }
}

#[async_trait]
impl Workspace for ManagedWorkspace {
    fn name(&self) -> &str {
        &self.name
    }
    async fn create(&self) -> Result<()> {
        self.provider.create_workspace().await
    }
    async fn delete(&self, options: DeleteWorkspaceOptions) -> Result<()> {
        self.provider.delete_workspace(options).await
    }
    async fn update(&self) -> Result<()> {
        self.provider.update_workspace().await
    }
    async fn existence(&self) -> Result<WorkspaceExistence> {
        self.provider.workspace_existence().await
    }
    async fn info(&self) -> Result<Value> {
        self.provider.workspace_info().await
    }
    async fn list_clusters(&self) -> Result<Vec<String>> {
        self.provider.list_clusters().await
    }
}
