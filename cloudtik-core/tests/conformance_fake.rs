//! The conformance suite against the fake provider, and against deliberately broken
//! providers to show that each check catches the bug it is about.

use std::sync::Arc;

use async_trait::async_trait;
use cloudtik_core::testing::FakeProvider;
use cloudtik_core::testing::conformance::{self, CheckOutcome, ConformanceConfig, run_all};
use cloudtik_core::{
    ErrorKind, LaunchOutcome, LaunchRequest, NodeId, NodeInfo, NodeProvider, ProviderCapabilities, Result,
    TagUpdate, Tags,
};

const CHECKS: [&str; 8] = [
    "launch_with_tags",
    "list_with_filters",
    "cluster_isolation",
    "batch_tag_update",
    "idempotent_launch_retry",
    "set_tags_on_missing_node",
    "idempotent_terminate",
    "partial_launch",
];

fn config_for(provider: &FakeProvider) -> ConformanceConfig {
    let hook = provider.clone();
    ConformanceConfig::new("worker.default", serde_json::json!({"InstanceType": "m5.large"}))
        .with_missing_node_id("fake-999999")
        .with_partial_launch(move || {
            let p = hook.clone();
            Box::pin(async move { p.fail_create_partially(1, 1, ErrorKind::Capacity) })
        })
}

#[tokio::test]
async fn fake_provider_passes_the_whole_suite() {
    let provider = FakeProvider::new("conformance");
    let other = provider.for_cluster("conformance-other");
    let report = run_all(&provider, Some(&other), &config_for(&provider)).await;
    report.assert_passed();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, CHECKS);
    assert!(
        report.checks.iter().all(|c| c.outcome == CheckOutcome::Passed),
        "{report}"
    );
    // Every check cleaned up after itself, on both clusters.
    assert_eq!(provider.cloud().node_count(), 0);
    assert!(provider.nodes_created() > 0);
}

#[tokio::test]
async fn fake_provider_passes_as_a_trait_object() {
    let fake = FakeProvider::new("dyn").with_capabilities(
        ProviderCapabilities::default()
            .with_max_launch_batch(3)
            .with_max_tag_batch(2)
            .with_max_terminate_batch(2),
    );
    let provider: Arc<dyn NodeProvider> = Arc::new(fake.clone());
    let other: Arc<dyn NodeProvider> = Arc::new(fake.for_cluster("dyn-other"));
    let report = run_all(provider.as_ref(), Some(other.as_ref()), &config_for(&fake)).await;
    report.assert_passed();
    // `Arc<dyn NodeProvider>` is itself a provider.
    let report = run_all(&provider, None, &config_for(&fake)).await;
    report.assert_passed();
    assert_eq!(fake.cloud().node_count(), 0);
}

#[tokio::test]
async fn checks_run_one_by_one() {
    let provider = FakeProvider::new("single");
    let other = provider.for_cluster("single-other");
    let config = config_for(&provider);
    conformance::launch_with_tags(&provider, &config).await.unwrap();
    conformance::list_with_filters(&provider, &config).await.unwrap();
    conformance::cluster_isolation(&provider, &other, &config)
        .await
        .unwrap();
    conformance::batch_tag_update(&provider, &config).await.unwrap();
    conformance::idempotent_launch_retry(&provider, &config)
        .await
        .unwrap();
    conformance::set_tags_on_missing_node(&provider, &config)
        .await
        .unwrap();
    conformance::idempotent_terminate(&provider, &config)
        .await
        .unwrap();
    let arm = config.arm_partial_launch.clone().unwrap();
    conformance::partial_launch(&provider, &config, arm.as_ref())
        .await
        .unwrap();
    assert_eq!(provider.cloud().node_count(), 0);
}

#[tokio::test]
async fn missing_second_provider_and_hook_are_skipped_not_failed() {
    let provider = FakeProvider::new("skips");
    let report = run_all(
        &provider,
        None,
        &ConformanceConfig::new("t", serde_json::json!({})),
    )
    .await;
    assert!(report.passed(), "{report}");
    assert!(matches!(
        report.outcome("cluster_isolation"),
        Some(CheckOutcome::Skipped(_))
    ));
    assert!(matches!(
        report.outcome("partial_launch"),
        Some(CheckOutcome::Skipped(_))
    ));
    assert!(report.to_string().contains("SKIP partial_launch"));
}

#[tokio::test]
async fn isolation_check_rejects_a_second_handle_of_the_same_cluster() {
    let provider = FakeProvider::new("same");
    let config = config_for(&provider);
    let failure = conformance::cluster_isolation(&provider, &provider.clone(), &config)
        .await
        .unwrap_err();
    assert_eq!(failure.check, "cluster_isolation");
    assert!(failure.message.contains("same cluster"), "{failure}");
}

#[tokio::test]
async fn a_hook_that_arms_nothing_fails_the_partial_launch_check() {
    let provider = FakeProvider::new("no-arm");
    let config = ConformanceConfig::new("t", serde_json::json!({}));
    let failure = conformance::partial_launch(&provider, &config, &|| Box::pin(async {}))
        .await
        .unwrap_err();
    assert!(failure.message.contains("no shortfall"), "{failure}");
    assert_eq!(provider.node_count(), 0, "the check cleans up after failing");
}

/// Contract violations a [`Broken`] provider commits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    /// Drops the caller's tags (keeps only cluster name and token).
    DropsTagsAtLaunch,
    /// Launches with a fresh token every time: retries duplicate nodes.
    IgnoresToken,
    /// Lists every node of the cluster whatever the filters.
    IgnoresFilters,
    /// Lists nodes of every cluster on the cloud.
    ListsOtherClusters,
    /// Applies only the first update of a batch.
    TagsOnlyFirstOfBatch,
    /// Answers Ok to tag updates of missing nodes.
    SetTagsOnMissingIsOk,
    /// Fails to terminate ids it does not know.
    TerminateUnknownFails,
    /// Answers a partial launch with an error.
    PartialLaunchIsErr,
}

/// A provider that wraps the fake and breaks the contract in one way.
#[derive(Debug)]
struct Broken {
    inner: FakeProvider,
    other: FakeProvider,
    bug: Bug,
}

#[async_trait]
impl NodeProvider for Broken {
    fn provider_type(&self) -> &str {
        "broken"
    }
    fn cluster_name(&self) -> &str {
        self.inner.cluster_name()
    }
    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }
    async fn list_nodes(&self, filters: &Tags) -> Result<Vec<NodeInfo>> {
        match self.bug {
            Bug::IgnoresFilters => {
                // Still honours the run tag, so the suite's cleanup stays contained.
                let run: Tags = filters
                    .iter()
                    .filter(|(k, _)| k.as_str() == conformance::RUN_TAG)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.inner.list_nodes(&run).await
            }
            Bug::ListsOtherClusters => {
                let mut nodes = self.inner.list_nodes(filters).await?;
                let mut without_cluster = filters.clone();
                without_cluster.remove(cloudtik_core::node::tags::CLUSTER_NAME);
                nodes.extend(self.other.list_nodes(&without_cluster).await?);
                Ok(nodes)
            }
            _ => self.inner.list_nodes(filters).await,
        }
    }
    async fn create_nodes(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        let mut request = request.clone();
        match self.bug {
            Bug::DropsTagsAtLaunch => {
                request.tags.retain(|k, _| k.as_str() == conformance::RUN_TAG);
            }
            Bug::IgnoresToken => request.token = cloudtik_core::provider::new_launch_token(),
            _ => {}
        }
        let outcome = self.inner.create_nodes(&request).await?;
        if self.bug == Bug::PartialLaunchIsErr
            && let Some(err) = outcome.shortfall
        {
            return Err(err);
        }
        Ok(outcome)
    }
    async fn set_node_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        match self.bug {
            Bug::TagsOnlyFirstOfBatch => self.inner.set_node_tags(&updates[..updates.len().min(1)]).await,
            Bug::SetTagsOnMissingIsOk => {
                let known: Vec<String> = self.inner.snapshot().into_iter().map(|n| n.id).collect();
                let present: Vec<TagUpdate> = updates
                    .iter()
                    .filter(|u| known.contains(&u.node_id))
                    .cloned()
                    .collect();
                self.inner.set_node_tags(&present).await
            }
            _ => self.inner.set_node_tags(updates).await,
        }
    }
    async fn terminate_nodes(&self, ids: &[NodeId]) -> Result<()> {
        if self.bug == Bug::TerminateUnknownFails {
            let known: Vec<String> = self.inner.snapshot().into_iter().map(|n| n.id).collect();
            if let Some(unknown) = ids.iter().find(|id| !known.contains(id)) {
                return Err(cloudtik_core::Error::new(
                    ErrorKind::NotFound,
                    format!("no node {unknown}"),
                ));
            }
        }
        self.inner.terminate_nodes(ids).await
    }
}

#[tokio::test]
async fn each_check_catches_the_bug_it_is_about() {
    let cases = [
        (Bug::DropsTagsAtLaunch, "launch_with_tags"),
        (Bug::IgnoresToken, "idempotent_launch_retry"),
        (Bug::IgnoresFilters, "list_with_filters"),
        (Bug::ListsOtherClusters, "cluster_isolation"),
        (Bug::TagsOnlyFirstOfBatch, "batch_tag_update"),
        (Bug::SetTagsOnMissingIsOk, "set_tags_on_missing_node"),
        (Bug::TerminateUnknownFails, "idempotent_terminate"),
        (Bug::PartialLaunchIsErr, "partial_launch"),
    ];
    for (bug, check) in cases {
        let inner = FakeProvider::new("broken");
        let other = inner.for_cluster("broken-other");
        let broken = Broken {
            inner: inner.clone(),
            other: other.clone(),
            bug,
        };
        let report = run_all(&broken, Some(&other), &config_for(&inner)).await;
        assert!(
            matches!(report.outcome(check), Some(CheckOutcome::Failed(_))),
            "{bug:?} should fail {check}:\n{report}"
        );
        assert!(!report.passed());
        assert!(report.to_string().contains(&format!("FAIL {check}")), "{report}");
        let leaked: Vec<String> = inner.snapshot().into_iter().map(|n| n.id).collect();
        assert!(leaked.is_empty(), "{bug:?}: the suite leaked nodes {leaked:?}");
        assert_eq!(
            other.node_count(),
            0,
            "{bug:?}: leaked nodes on the other cluster"
        );
    }
}

#[tokio::test]
#[should_panic(expected = "FAIL idempotent_terminate")]
async fn assert_passed_panics_with_the_report() {
    let inner = FakeProvider::new("panics");
    let broken = Broken {
        other: inner.for_cluster("x"),
        inner: inner.clone(),
        bug: Bug::TerminateUnknownFails,
    };
    run_all(&broken, None, &config_for(&inner)).await.assert_passed();
}
