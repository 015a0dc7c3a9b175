//! [`FakeWorkspaceProvider`]: a workspace of named in-memory resources.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::provider::{DeleteWorkspaceOptions, WorkspaceExistence, WorkspaceProvider};

use super::fake::FakeCloud;

const PROVIDER_TYPE: &str = "fake";

/// The resources of a fake workspace unless [`FakeWorkspaceProvider::with_resources`]
/// says otherwise, in creation order.
pub const DEFAULT_RESOURCES: &[&str] = &["network", "subnets", "firewall", "identities", "storage"];

/// The managed storage among [`DEFAULT_RESOURCES`].
const DEFAULT_MANAGED_STORAGE: &str = "storage";

/// An in-memory [`WorkspaceProvider`]: a workspace is a list of named resources that
/// `create_workspace` creates in order and `delete_workspace` deletes in reverse.
///
/// # Behaviour
///
/// * Create is get-or-create per resource: a re-run after a failure creates only what
///   is missing, continuing where the failed run stopped ([`creations`](Self::creations)
///   shows how often each resource was created).
/// * Delete is refused with [`ErrorKind::Conflict`] while any cluster of the cloud has
///   live nodes (a fake cloud is one workspace). It keeps the managed storage unless
///   asked to delete it, and tolerates missing resources.
/// * Existence: nothing created is `NotExist`, everything `Completed`, anything else
///   `Incomplete` naming the missing resources in creation order (so a workspace
///   deleted without its storage is `Incomplete`).
/// * `update_workspace` fails with [`ErrorKind::NotFound`] when nothing exists.
///
/// State lives in the [`FakeCloud`] under the workspace name: clones and other handles
/// for the same name see the same workspace.
#[derive(Clone)]
pub struct FakeWorkspaceProvider {
    cloud: FakeCloud,
    name: String,
    resources: Vec<String>,
    managed_storage: Option<String>,
}

impl fmt::Debug for FakeWorkspaceProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeWorkspaceProvider")
            .field("name", &self.name)
            .field("resources", &self.resources)
            .field("managed_storage", &self.managed_storage)
            .finish_non_exhaustive()
    }
}

/// The shared state of one fake workspace.
#[derive(Debug, Default)]
pub(super) struct WorkspaceState {
    existing: BTreeSet<String>,
    creations: HashMap<String, usize>,
    deletions: HashMap<String, usize>,
    updates: usize,
    fail_create_at: Option<(String, ErrorKind)>,
    fail_delete_at: Option<(String, ErrorKind)>,
}

impl FakeWorkspaceProvider {
    pub(super) fn new(cloud: FakeCloud, name: String) -> Self {
        FakeWorkspaceProvider {
            cloud,
            name,
            resources: DEFAULT_RESOURCES.iter().map(|r| r.to_string()).collect(),
            managed_storage: Some(DEFAULT_MANAGED_STORAGE.to_string()),
        }
    }

    /// Sets the resources, in creation order, and which of them (if any) is the managed
    /// storage that only `delete_managed_storage` deletes.
    #[must_use]
    pub fn with_resources<S: Into<String>>(
        mut self,
        resources: impl IntoIterator<Item = S>,
        managed_storage: Option<&str>,
    ) -> Self {
        self.resources = resources.into_iter().map(Into::into).collect();
        self.managed_storage = managed_storage.map(str::to_string);
        self
    }

    /// The resources in creation order.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// The next `create_workspace` that reaches `resource` fails with `kind` before
    /// creating it; the resources before it stay.
    pub fn fail_create_at(&self, resource: impl Into<String>, kind: ErrorKind) {
        self.with_state(|s| s.fail_create_at = Some((resource.into(), kind)));
    }

    /// The next `delete_workspace` that reaches `resource` fails with `kind` before
    /// deleting it; the resources deleted before it stay deleted.
    pub fn fail_delete_at(&self, resource: impl Into<String>, kind: ErrorKind) {
        self.with_state(|s| s.fail_delete_at = Some((resource.into(), kind)));
    }

    /// How many times `resource` was created.
    pub fn creations(&self, resource: &str) -> usize {
        self.with_state(|s| s.creations.get(resource).copied().unwrap_or(0))
    }

    /// How many times `resource` was deleted.
    pub fn deletions(&self, resource: &str) -> usize {
        self.with_state(|s| s.deletions.get(resource).copied().unwrap_or(0))
    }

    /// How many `update_workspace` calls succeeded.
    pub fn updates(&self) -> usize {
        self.with_state(|s| s.updates)
    }

    /// The resources that exist now, in creation order.
    pub fn existing_resources(&self) -> Vec<String> {
        self.with_state(|s| {
            self.resources
                .iter()
                .filter(|r| s.existing.contains(*r))
                .cloned()
                .collect()
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut WorkspaceState) -> T) -> T {
        f(self.cloud.workspaces().entry(self.name.clone()).or_default())
    }

    fn step_error(&self, kind: ErrorKind, operation: &'static str, resource: &str) -> Error {
        Error::new(kind, "injected failure")
            .with_operation(operation)
            .with_context("provider", PROVIDER_TYPE)
            .with_context("workspace", &self.name)
            .with_context("step", resource)
    }
}

/// Takes the armed fault of `slot` if it is for `resource`.
fn take_fault_at(slot: &mut Option<(String, ErrorKind)>, resource: &str) -> Option<ErrorKind> {
    match slot {
        Some((at, kind)) if at == resource => {
            let kind = *kind;
            *slot = None;
            Some(kind)
        }
        _ => None,
    }
}

#[async_trait]
impl WorkspaceProvider for FakeWorkspaceProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn workspace_name(&self) -> &str {
        &self.name
    }

    async fn create_workspace(&self) -> Result<()> {
        self.with_state(|s| {
            for resource in &self.resources {
                if s.existing.contains(resource) {
                    continue;
                }
                if let Some(kind) = take_fault_at(&mut s.fail_create_at, resource) {
                    return Err(self.step_error(kind, "create_workspace", resource));
                }
                s.existing.insert(resource.clone());
                *s.creations.entry(resource.clone()).or_default() += 1;
            }
            Ok(())
        })
    }

    async fn delete_workspace(&self, options: DeleteWorkspaceOptions) -> Result<()> {
        let clusters = self.cloud.cluster_names();
        if !clusters.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "workspace {} has running clusters: {}; stop them first",
                    self.name,
                    clusters.join(", ")
                ),
            )
            .with_operation("delete_workspace")
            .with_context("provider", PROVIDER_TYPE));
        }
        self.with_state(|s| {
            for resource in self.resources.iter().rev() {
                let is_storage = self.managed_storage.as_ref() == Some(resource);
                if (is_storage && !options.delete_managed_storage) || !s.existing.contains(resource) {
                    continue;
                }
                if let Some(kind) = take_fault_at(&mut s.fail_delete_at, resource) {
                    return Err(self.step_error(kind, "delete_workspace", resource));
                }
                s.existing.remove(resource);
                *s.deletions.entry(resource.clone()).or_default() += 1;
            }
            Ok(())
        })
    }

    async fn update_workspace(&self) -> Result<()> {
        self.with_state(|s| {
            if !self.resources.iter().any(|r| s.existing.contains(r)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("workspace {} does not exist", self.name),
                )
                .with_operation("update_workspace")
                .with_context("provider", PROVIDER_TYPE));
            }
            s.updates += 1;
            Ok(())
        })
    }

    async fn workspace_existence(&self) -> Result<WorkspaceExistence> {
        let missing: Vec<String> = self.with_state(|s| {
            self.resources
                .iter()
                .filter(|r| !s.existing.contains(*r))
                .cloned()
                .collect()
        });
        Ok(if missing.is_empty() {
            WorkspaceExistence::Completed
        } else if missing.len() == self.resources.len() {
            WorkspaceExistence::NotExist
        } else {
            WorkspaceExistence::Incomplete { missing }
        })
    }

    async fn workspace_info(&self) -> Result<serde_json::Value> {
        let resources: serde_json::Map<String, serde_json::Value> = self
            .existing_resources()
            .into_iter()
            .map(|r| {
                let id = format!("fake-{r}-{}", self.name);
                (r, serde_json::Value::String(id))
            })
            .collect();
        Ok(serde_json::json!({
            "workspace_name": self.name,
            "provider": PROVIDER_TYPE,
            "resources": resources,
        }))
    }

    async fn list_clusters(&self) -> Result<Vec<String>> {
        Ok(self.cloud.cluster_names())
    }
}
