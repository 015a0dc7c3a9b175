//! The fake workspace provider: ordered creation, resumable create and delete,
//! existence, and deletion refused while clusters run.

use cloudtik_core::testing::{DEFAULT_RESOURCES, FakeCloud};
use cloudtik_core::{
    DeleteWorkspaceOptions, ErrorKind, LaunchRequest, NodeProvider, NodeProviderExt, Tags,
    WorkspaceExistence, WorkspaceProvider,
};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn creates_every_resource_once_in_order() {
    let cloud = FakeCloud::new();
    let ws = cloud.workspace_provider("ws");
    assert_eq!(ws.provider_type(), "fake");
    assert_eq!(ws.workspace_name(), "ws");
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    ws.create_workspace().await.unwrap();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    assert_eq!(ws.existing_resources(), names(DEFAULT_RESOURCES));
    // Create is get-or-create: running it again creates nothing.
    ws.create_workspace().await.unwrap();
    for resource in DEFAULT_RESOURCES {
        assert_eq!(ws.creations(resource), 1, "{resource}");
    }
    let info = ws.workspace_info().await.unwrap();
    assert_eq!(info["workspace_name"], "ws");
    assert_eq!(info["resources"]["network"], "fake-network-ws");
    // Another handle for the same name sees the same workspace.
    assert_eq!(
        cloud
            .workspace_provider("ws")
            .workspace_existence()
            .await
            .unwrap(),
        WorkspaceExistence::Completed
    );
    assert_eq!(
        cloud
            .workspace_provider("other")
            .workspace_existence()
            .await
            .unwrap(),
        WorkspaceExistence::NotExist
    );
}

#[tokio::test]
async fn a_failed_create_is_continued_where_it_stopped() {
    let ws = FakeCloud::new().workspace_provider("ws");
    ws.fail_create_at("firewall", ErrorKind::Transient);
    let err = ws.create_workspace().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.context_value("step"), Some("firewall"));
    assert_eq!(err.operation(), Some("create_workspace"));
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: names(&["firewall", "identities", "storage"])
        }
    );
    ws.create_workspace().await.unwrap();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    assert_eq!(ws.creations("network"), 1);
    assert_eq!(ws.creations("subnets"), 1);
    assert_eq!(ws.creations("firewall"), 1);
    assert_eq!(ws.creations("storage"), 1);
}

#[tokio::test]
async fn delete_is_refused_while_clusters_have_nodes() {
    let cloud = FakeCloud::new();
    let ws = cloud.workspace_provider("ws");
    ws.create_workspace().await.unwrap();
    let cluster = cloud.node_provider("analytics");
    let outcome = cluster
        .create_nodes(&LaunchRequest::new("cpu", serde_json::json!({}), Tags::new(), 1))
        .await
        .unwrap();
    assert_eq!(ws.list_clusters().await.unwrap(), ["analytics"]);
    let err = ws
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("analytics"), "{err}");
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );

    cluster.terminate_node(&outcome.nodes[0].id).await.unwrap();
    assert!(ws.list_clusters().await.unwrap().is_empty());
    ws.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    // The managed storage stays unless asked for.
    assert_eq!(ws.existing_resources(), names(&["storage"]));
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: names(&["network", "subnets", "firewall", "identities"])
        }
    );
    ws.delete_workspace(DeleteWorkspaceOptions::default().with_delete_managed_storage(true))
        .await
        .unwrap();
    assert_eq!(
        ws.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    // Deleting what does not exist succeeds.
    ws.delete_workspace(DeleteWorkspaceOptions::default().with_delete_managed_storage(true))
        .await
        .unwrap();
    assert_eq!(ws.deletions("network"), 1);
}

#[tokio::test]
async fn a_failed_delete_is_continued_where_it_stopped() {
    let ws = FakeCloud::new().workspace_provider("ws");
    ws.create_workspace().await.unwrap();
    ws.fail_delete_at("subnets", ErrorKind::Conflict);
    let all = DeleteWorkspaceOptions::default().with_delete_managed_storage(true);
    let err = ws.delete_workspace(all).await.unwrap_err();
    assert_eq!(err.context_value("step"), Some("subnets"));
    // Deleted in reverse order up to the failed step.
    assert_eq!(ws.existing_resources(), names(&["network", "subnets"]));
    ws.delete_workspace(all).await.unwrap();
    assert!(ws.existing_resources().is_empty());
    for resource in DEFAULT_RESOURCES {
        assert_eq!(ws.deletions(resource), 1, "{resource}");
    }
}

#[tokio::test]
async fn update_needs_an_existing_workspace() {
    let ws = FakeCloud::new().workspace_provider("ws");
    let err = ws.update_workspace().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    ws.fail_create_at("subnets", ErrorKind::Quota);
    assert!(ws.create_workspace().await.is_err());
    // Incomplete workspaces can be updated.
    ws.update_workspace().await.unwrap();
    ws.create_workspace().await.unwrap();
    ws.update_workspace().await.unwrap();
    assert_eq!(ws.updates(), 2);
}

#[tokio::test]
async fn resources_can_be_chosen() {
    let ws = FakeCloud::new()
        .workspace_provider("ws")
        .with_resources(["vpc", "subnet", "bucket"], Some("bucket"));
    assert_eq!(ws.resources(), names(&["vpc", "subnet", "bucket"]));
    ws.create_workspace().await.unwrap();
    ws.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(ws.existing_resources(), names(&["bucket"]));

    let plain = FakeCloud::new()
        .workspace_provider("p")
        .with_resources(["vpc"], None);
    plain.create_workspace().await.unwrap();
    plain
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        plain.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
}
