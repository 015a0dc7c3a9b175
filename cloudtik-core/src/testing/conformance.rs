//! The provider conformance suite: checks of the [`NodeProvider`] contract (see the
//! [provider module docs](crate::provider)) that every provider must pass.
//!
//! Each check is a public async function taking `&dyn NodeProvider` and a
//! [`ConformanceConfig`]; [`run_all`] runs them all and returns a
//! [`ConformanceReport`]. Checks **return** their failure as a [`CheckFailure`] with a
//! message saying what was expected and what the provider did, rather than
//! panicking, so that `run_all` can run every check against a real cloud and report
//! all failures at once, and so that every check always cleans up. Call
//! [`ConformanceReport::assert_passed`] (or `.unwrap()` a single check) in a test.
//!
//! # Cleanup
//!
//! Every node a check launches carries a tag [`RUN_TAG`] with a value unique to that
//! run of the check. When the check ends, passed or failed, it lists the nodes with
//! that tag and terminates them, so nothing leaks even when a launch the check saw
//! fail created nodes after all. A cleanup that fails makes the check fail.
//!
//! # Assumptions
//!
//! * The provider accepts launches of up to 3 nodes, tag updates of 2 nodes and
//!   terminations of 2 nodes in one call (see [`ProviderCapabilities`](crate::ProviderCapabilities)).
//! * The first list after a launch shows the launched nodes (no eventual consistency
//!   to wait out) and a list after a terminate no longer shows them.
//! * [`partial_launch`] runs last in [`run_all`]: its hook may arm a fault that only a
//!   launch uses up.
//!
//! ```no_run
//! # async fn demo() {
//! use cloudtik_core::testing::FakeProvider;
//! use cloudtik_core::testing::conformance::{ConformanceConfig, run_all};
//! use cloudtik_core::ErrorKind;
//!
//! let provider = FakeProvider::new("conformance");
//! let other = provider.for_cluster("conformance-other");
//! let hook_provider = provider.clone();
//! let config = ConformanceConfig::new("worker.default", serde_json::json!({}))
//!     .with_partial_launch(move || {
//!         let p = hook_provider.clone();
//!         Box::pin(async move { p.fail_create_partially(1, 1, ErrorKind::Capacity) })
//!     });
//! run_all(&provider, Some(&other), &config).await.assert_passed();
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::ErrorKind;
use crate::node::{NodeInfo, NodeKind, NodeState, NodeStatus, Tags, tags};
use crate::provider::{LaunchRequest, NodeProvider, TagUpdate, new_launch_token};

/// Returns `Err(format!(...))` from the enclosing check body unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
/// The tag that marks the nodes of one run of one check, for cleanup.
pub const RUN_TAG: &str = "cloudtik-conformance-run";

/// An arbitrary (non-CloudTik) tag the checks set and filter on.
const EXTRA_TAG: &str = "cloudtik-conformance-extra";

/// A hook that arms a partial launch on the provider under test: the next
/// `create_nodes` call for 3 nodes must create at least one and fewer than 3 nodes and
/// report the rest as a shortfall. Only the test knows how to force that on a provider
/// (a fault knob on a fake, a quota on an emulator).
pub type ArmPartialLaunch = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the suite launches with.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConformanceConfig {
    /// The node type name of the launches.
    pub node_type: String,
    /// The provider's `node_config` for the launches (instance type, image, ...).
    pub node_config: serde_json::Value,
    /// An id in the provider's format that names no node, for the checks of
    /// terminate and tag updates on missing nodes.
    pub missing_node_id: String,
    /// Arms a partial launch; [`run_all`] skips [`partial_launch`] without it.
    pub arm_partial_launch: Option<ArmPartialLaunch>,
}

impl fmt::Debug for ConformanceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConformanceConfig")
            .field("node_type", &self.node_type)
            .field("node_config", &self.node_config)
            .field("missing_node_id", &self.missing_node_id)
            .field("arm_partial_launch", &self.arm_partial_launch.is_some())
            .finish()
    }
}

impl ConformanceConfig {
    /// Launches of `node_type` with `node_config`; the missing node id is
    /// `cloudtik-conformance-missing-node` and no partial-launch hook is set.
    pub fn new(node_type: impl Into<String>, node_config: serde_json::Value) -> Self {
        ConformanceConfig {
            node_type: node_type.into(),
            node_config,
            missing_node_id: "cloudtik-conformance-missing-node".to_string(),
            arm_partial_launch: None,
        }
    }

    /// Sets the id that names no node (use the provider's id format, e.g. `i-0000000000000000f`).
    #[must_use]
    pub fn with_missing_node_id(mut self, id: impl Into<String>) -> Self {
        self.missing_node_id = id.into();
        self
    }

    /// Sets the hook that arms a partial launch (see [`ArmPartialLaunch`]).
    #[must_use]
    pub fn with_partial_launch(
        mut self,
        arm: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.arm_partial_launch = Some(Arc::new(arm));
        self
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The check's name (its function's name).
    pub check: &'static str,
    /// What was expected and what the provider did.
    pub message: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance check {} failed: {}", self.check, self.message)
    }
}

impl std::error::Error for CheckFailure {}

/// The result of one check.
pub type CheckResult = Result<(), CheckFailure>;

/// How one check of [`run_all`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The provider behaved as the contract says.
    Passed,
    /// The provider did not; the message says how.
    Failed(String),
    /// The check did not run; the message says why.
    Skipped(String),
}

/// One line of a [`ConformanceReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The check's name.
    pub name: &'static str,
    /// How it ended.
    pub outcome: CheckOutcome,
}

/// What [`run_all`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// The provider type tested.
    pub provider_type: String,
    /// Every check in the order run.
    pub checks: Vec<CheckReport>,
}

impl ConformanceReport {
    /// True when no check failed (skipped checks do not fail a report).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckReport> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, CheckOutcome::Failed(_)))
    }

    /// The outcome of the check called `name`, if it is in the report.
    pub fn outcome(&self, name: &str) -> Option<&CheckOutcome> {
        self.checks.iter().find(|c| c.name == name).map(|c| &c.outcome)
    }

    /// Panics with the whole report when a check failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "provider conformance failed:\n{self}");
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of provider {}:", self.provider_type)?;
        for check in &self.checks {
            match &check.outcome {
                CheckOutcome::Passed => writeln!(f, "  PASS {}", check.name)?,
                CheckOutcome::Failed(m) => writeln!(f, "  FAIL {}: {m}", check.name)?,
                CheckOutcome::Skipped(m) => writeln!(f, "  SKIP {}: {m}", check.name)?,
            }
        }
        Ok(())
    }
}

/// Runs every check. `other_cluster` is a provider for a different cluster on the same
/// cloud, for [`cluster_isolation`]; without it, and without a partial-launch hook in
/// `config`, those checks are skipped.
pub async fn run_all(
    provider: &dyn NodeProvider,
    other_cluster: Option<&dyn NodeProvider>,
    config: &ConformanceConfig,
) -> ConformanceReport {
    let mut checks = Vec::new();
    let mut record = |name: &'static str, outcome: CheckOutcome| checks.push(CheckReport { name, outcome });
    record(
        "launch_with_tags",
        outcome(launch_with_tags(provider, config).await),
    );
    record(
        "list_with_filters",
        outcome(list_with_filters(provider, config).await),
    );
    record(
        "cluster_isolation",
        match other_cluster {
            Some(other) => outcome(cluster_isolation(provider, other, config).await),
            None => CheckOutcome::Skipped("no provider for a second cluster given".into()),
        },
    );
    record(
        "batch_tag_update",
        outcome(batch_tag_update(provider, config).await),
    );
    record(
        "idempotent_launch_retry",
        outcome(idempotent_launch_retry(provider, config).await),
    );
    record(
        "set_tags_on_missing_node",
        outcome(set_tags_on_missing_node(provider, config).await),
    );
    record(
        "idempotent_terminate",
        outcome(idempotent_terminate(provider, config).await),
    );
    record(
        "partial_launch",
        match &config.arm_partial_launch {
            Some(arm) => outcome(partial_launch(provider, config, arm.as_ref()).await),
            None => CheckOutcome::Skipped("no partial-launch hook in the config".into()),
        },
    );
    ConformanceReport {
        provider_type: provider.provider_type().to_string(),
        checks,
    }
}

/// Launched nodes carry every tag of the request plus the cluster name and the launch
/// token, in the launch answer and in the first list after the launch; kind, node type
/// and status read back from their tags; ids are distinct.
pub async fn launch_with_tags(provider: &dyn NodeProvider, config: &ConformanceConfig) -> CheckResult {
    let run = Run::new("launch_with_tags", provider, config);
    let result = async {
        let workers = run.request(NodeKind::Worker, 2, &[(EXTRA_TAG, "launch")]);
        let head = run.request(NodeKind::Head, 1, &[]);
        let launched_workers = run.launch_all(provider, &workers).await?;
        let launched_head = run.launch_all(provider, &head).await?;
        check_tags(
            &launched_workers,
            &workers,
            provider.cluster_name(),
            "the launch answer",
        )?;
        check_tags(
            &launched_head,
            &head,
            provider.cluster_name(),
            "the launch answer",
        )?;

        let listed = run.list(provider, &[]).await?;
        let (listed_workers, listed_head): (Vec<_>, Vec<_>) = listed
            .into_iter()
            .partition(|n| n.tag(tags::LAUNCH_TOKEN) == Some(workers.token.as_str()));
        ensure_same_ids(
            &listed_workers,
            &launched_workers,
            "the first list after the launch of 2 workers",
        )?;
        ensure_same_ids(
            &listed_head,
            &launched_head,
            "the first list after the launch of a head",
        )?;
        check_tags(
            &listed_workers,
            &workers,
            provider.cluster_name(),
            "the first list",
        )?;
        check_tags(&listed_head, &head, provider.cluster_name(), "the first list")?;
        for (nodes, kind) in [
            (&listed_workers, NodeKind::Worker),
            (&listed_head, NodeKind::Head),
        ] {
            for node in nodes {
                ensure!(
                    node.kind() == Some(kind),
                    "node {} lists kind {:?}, expected {kind}",
                    node.id,
                    node.kind()
                );
                ensure!(
                    node.node_type() == Some(config.node_type.as_str()),
                    "node {} lists node type {:?}, expected {:?}",
                    node.id,
                    node.node_type(),
                    config.node_type
                );
                ensure!(
                    node.status() == Some(NodeStatus::Uninitialized),
                    "node {} lists status {:?}, expected uninitialized",
                    node.id,
                    node.status()
                );
                ensure!(
                    matches!(node.state, NodeState::Pending | NodeState::Running),
                    "node {} is listed in state {:?}; list_nodes shows only pending or running nodes",
                    node.id,
                    node.state
                );
            }
        }
        let ids: BTreeSet<&str> = listed_workers
            .iter()
            .chain(&listed_head)
            .map(|n| n.id.as_str())
            .collect();
        ensure!(
            ids.len() == 3,
            "3 launched nodes have only {} distinct ids",
            ids.len()
        );
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// Filters on kind, node type and an arbitrary tag select exactly the matching nodes;
/// an unfiltered list shows only nodes of the provider's cluster.
pub async fn list_with_filters(provider: &dyn NodeProvider, config: &ConformanceConfig) -> CheckResult {
    let run = Run::new("list_with_filters", provider, config);
    let result = async {
        let head = run
            .launch_all(provider, &run.request(NodeKind::Head, 1, &[(EXTRA_TAG, "head")]))
            .await?;
        let workers_a = run
            .launch_all(provider, &run.request(NodeKind::Worker, 2, &[(EXTRA_TAG, "a")]))
            .await?;
        let workers_b = run
            .launch_all(provider, &run.request(NodeKind::Worker, 1, &[(EXTRA_TAG, "b")]))
            .await?;
        let all: Vec<NodeInfo> = head.iter().chain(&workers_a).chain(&workers_b).cloned().collect();
        let workers: Vec<NodeInfo> = workers_a.iter().chain(&workers_b).cloned().collect();
        let node_type = config.node_type.as_str();
        let cases: [FilterCase<'_>; 8] = [
            (&[], &all, "the run tag alone"),
            (&[(tags::NODE_KIND, "head")], &head, "kind head"),
            (&[(tags::NODE_KIND, "worker")], &workers, "kind worker"),
            (&[(tags::USER_NODE_TYPE, node_type)], &all, "the node type"),
            (
                &[(tags::USER_NODE_TYPE, "cloudtik-conformance-no-such-type")],
                &[],
                "a node type nobody has",
            ),
            (&[(EXTRA_TAG, "a")], &workers_a, "an arbitrary tag"),
            (
                &[(EXTRA_TAG, "b"), (tags::NODE_KIND, "worker")],
                &workers_b,
                "an arbitrary tag and kind worker",
            ),
            (
                &[(EXTRA_TAG, "a"), (tags::NODE_KIND, "head")],
                &[],
                "tags no node has together",
            ),
        ];
        for (filters, expected, what) in cases {
            let listed = run.list(provider, filters).await?;
            ensure_same_ids(
                &listed,
                expected,
                &format!("a list filtered by {what} {filters:?}"),
            )?;
        }
        let unfiltered = provider
            .list_nodes(&Tags::new())
            .await
            .map_err(|e| format!("list_nodes without filters failed: {e:#}"))?;
        for node in &all {
            ensure!(
                unfiltered.iter().any(|n| n.id == node.id),
                "a list without filters misses node {}",
                node.id
            );
        }
        for node in &unfiltered {
            ensure!(
                node.tag(tags::CLUSTER_NAME) == Some(provider.cluster_name()),
                "a list without filters shows node {} of cluster {:?}; expected only cluster {:?}",
                node.id,
                node.tag(tags::CLUSTER_NAME),
                provider.cluster_name()
            );
        }
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// Nodes of another cluster on the same cloud are never listed, not even when asked
/// for by their cluster tag. `other` must serve a different cluster on the same cloud.
pub async fn cluster_isolation(
    provider: &dyn NodeProvider,
    other: &dyn NodeProvider,
    config: &ConformanceConfig,
) -> CheckResult {
    let run = Run::new("cluster_isolation", provider, config);
    let result = async {
        ensure!(
            provider.cluster_name() != other.cluster_name(),
            "the second provider serves the same cluster {:?}; it must serve another cluster",
            other.cluster_name()
        );
        let ours = run
            .launch_all(provider, &run.request(NodeKind::Worker, 1, &[]))
            .await?;
        let theirs = run
            .launch_all(other, &run.request(NodeKind::Worker, 1, &[]))
            .await?;
        ensure_same_ids(&run.list(provider, &[]).await?, &ours, "our list by the run tag")?;
        ensure_same_ids(
            &run.list(other, &[]).await?,
            &theirs,
            "the other cluster's list by the run tag",
        )?;
        let by_their_name = run
            .list(provider, &[(tags::CLUSTER_NAME, other.cluster_name())])
            .await?;
        ensure_same_ids(
            &by_their_name,
            &[],
            "our list filtered by the other cluster's name",
        )?;
        let unfiltered = provider
            .list_nodes(&Tags::new())
            .await
            .map_err(|e| format!("list_nodes without filters failed: {e:#}"))?;
        ensure!(
            !unfiltered.iter().any(|n| n.id == theirs[0].id),
            "our list without filters shows node {} of cluster {:?}",
            theirs[0].id,
            other.cluster_name()
        );
        Ok(())
    }
    .await;
    run.finish(result, &[provider, other]).await
}

/// One `set_node_tags` call updates several nodes; tags not named stay as they were,
/// and nodes not in the call are untouched.
pub async fn batch_tag_update(provider: &dyn NodeProvider, config: &ConformanceConfig) -> CheckResult {
    let run = Run::new("batch_tag_update", provider, config);
    let result = async {
        let request = run.request(NodeKind::Worker, 3, &[(EXTRA_TAG, "before")]);
        let nodes = run.launch_all(provider, &request).await?;
        let updates = vec![
            TagUpdate::new(
                nodes[0].id.clone(),
                tag_map(&[
                    (tags::NODE_STATUS, NodeStatus::UpToDate.as_str()),
                    (tags::RUNTIME_CONFIG, "hash-0"),
                ]),
            ),
            TagUpdate::new(
                nodes[1].id.clone(),
                tag_map(&[
                    (tags::NODE_STATUS, NodeStatus::UpdateFailed.as_str()),
                    (EXTRA_TAG, "after"),
                ]),
            ),
        ];
        provider
            .set_node_tags(&updates)
            .await
            .map_err(|e| format!("set_node_tags on 2 nodes failed: {e:#}"))?;
        let listed = run.list(provider, &[]).await?;
        ensure_same_ids(&listed, &nodes, "the list after the tag update")?;
        for (i, node) in nodes.iter().enumerate() {
            let now = listed
                .iter()
                .find(|n| n.id == node.id)
                .ok_or_else(|| format!("node {} vanished", node.id))?;
            let mut expected = node.tags.clone();
            if let Some(update) = updates.get(i) {
                expected.extend(update.tags.clone());
            }
            ensure!(
                now.tags == expected,
                "node {} has tags {:?} after the update; expected {:?}",
                node.id,
                now.tags,
                expected
            );
        }
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// A launch repeated with the same token creates no more nodes and answers with the
/// same ids.
pub async fn idempotent_launch_retry(provider: &dyn NodeProvider, config: &ConformanceConfig) -> CheckResult {
    let run = Run::new("idempotent_launch_retry", provider, config);
    let result = async {
        let request = run.request(NodeKind::Worker, 2, &[]);
        let first = run.launch_all(provider, &request).await?;
        for attempt in 2..=3 {
            let again = provider
                .create_nodes(&request)
                .await
                .map_err(|e| format!("repeating a launch with the same token failed: {e:#}"))?;
            ensure!(
                again.shortfall.is_none(),
                "repeating a fulfilled launch reported a shortfall: {}",
                display_opt(&again.shortfall)
            );
            ensure_same_ids(
                &again.nodes,
                &first,
                &format!("the answer to try {attempt} with the same token"),
            )?;
        }
        let listed = run
            .list(provider, &[(tags::LAUNCH_TOKEN, request.token.as_str())])
            .await?;
        ensure_same_ids(&listed, &first, "the list by launch token after 3 tries")?;
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// `set_node_tags` on a missing node fails with `NotFound` naming it, after updating
/// the nodes that exist.
pub async fn set_tags_on_missing_node(
    provider: &dyn NodeProvider,
    config: &ConformanceConfig,
) -> CheckResult {
    let run = Run::new("set_tags_on_missing_node", provider, config);
    let result = async {
        let missing = config.missing_node_id.as_str();
        let update = |id: &str| TagUpdate::new(id.to_string(), tag_map(&[(EXTRA_TAG, "updated")]));
        match provider.set_node_tags(&[update(missing)]).await {
            Ok(()) => return Err(format!("set_node_tags on missing node {missing} succeeded; expected NotFound")),
            Err(e) => ensure!(
                e.kind() == ErrorKind::NotFound,
                "set_node_tags on missing node {missing} failed with kind {:?}; expected NotFound: {e:#}",
                e.kind()
            ),
        }
        let nodes = run
            .launch_all(provider, &run.request(NodeKind::Worker, 1, &[]))
            .await?;
        let node = &nodes[0];
        match provider.set_node_tags(&[update(&node.id), update(missing)]).await {
            Ok(()) => {
                return Err(format!(
                    "set_node_tags on node {} and missing node {missing} succeeded; expected NotFound",
                    node.id
                ));
            }
            Err(e) => {
                ensure!(
                    e.kind() == ErrorKind::NotFound,
                    "set_node_tags on an existing and a missing node failed with kind {:?}; expected NotFound: {e:#}",
                    e.kind()
                );
                ensure!(
                    e.to_string().contains(missing),
                    "the NotFound error does not name the missing node {missing}: {e:#}"
                );
            }
        }
        let listed = run.list(provider, &[]).await?;
        ensure_same_ids(&listed, &nodes, "the list after the failed batch")?;
        ensure!(
            listed[0].tag(EXTRA_TAG) == Some("updated"),
            "node {} was not updated by a batch that also named a missing node (its {EXTRA_TAG} is {:?})",
            node.id,
            listed[0].tag(EXTRA_TAG)
        );
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// Terminated nodes leave the list; terminating them again, or terminating an id that
/// never existed, succeeds.
pub async fn idempotent_terminate(provider: &dyn NodeProvider, config: &ConformanceConfig) -> CheckResult {
    let run = Run::new("idempotent_terminate", provider, config);
    let result = async {
        let nodes = run
            .launch_all(provider, &run.request(NodeKind::Worker, 2, &[]))
            .await?;
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        provider
            .terminate_nodes(&ids)
            .await
            .map_err(|e| format!("terminating 2 nodes failed: {e:#}"))?;
        ensure_same_ids(
            &run.list(provider, &[]).await?,
            &[],
            "the list after the terminate",
        )?;
        provider
            .terminate_nodes(&ids)
            .await
            .map_err(|e| format!("terminating 2 terminated nodes again failed: {e:#}"))?;
        provider
            .terminate_nodes(std::slice::from_ref(&config.missing_node_id))
            .await
            .map_err(|e| {
                format!(
                    "terminating missing node {} failed: {e:#}",
                    config.missing_node_id
                )
            })?;
        provider
            .terminate_nodes(&[])
            .await
            .map_err(|e| format!("terminating no node failed: {e:#}"))?;
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// After `arm` armed a partial launch, a launch of 3 nodes answers `Ok` with the nodes
/// it created (at least one, fewer than 3) and a shortfall, and the list shows exactly
/// those nodes. Trying again with the same token keeps them and creates no more than
/// the missing ones.
pub async fn partial_launch(
    provider: &dyn NodeProvider,
    config: &ConformanceConfig,
    arm: &(dyn Fn() -> BoxFuture<'static, ()> + Send + Sync),
) -> CheckResult {
    let run = Run::new("partial_launch", provider, config);
    let result = async {
        let request = run.request(NodeKind::Worker, 3, &[]);
        arm().await;
        let outcome = provider.create_nodes(&request).await.map_err(|e| {
            format!(
                "the armed launch of 3 nodes failed: {e:#}; a partial launch must answer Ok with a \
                 shortfall (or the hook did not arm one that creates at least one node)"
            )
        })?;
        let shortfall = outcome.shortfall.as_ref().ok_or_else(|| {
            format!(
                "the armed launch answered {} nodes and no shortfall; the hook must arm a partial launch",
                outcome.nodes.len()
            )
        })?;
        ensure!(
            (1..3).contains(&outcome.nodes.len()),
            "a partial launch of 3 answered {} nodes (shortfall: {shortfall}); expected 1 or 2",
            outcome.nodes.len()
        );
        check_tags(
            &outcome.nodes,
            &request,
            provider.cluster_name(),
            "the partial launch answer",
        )?;
        let listed = run
            .list(provider, &[(tags::LAUNCH_TOKEN, request.token.as_str())])
            .await?;
        ensure_same_ids(&listed, &outcome.nodes, "the list after the partial launch")?;

        let retry = provider
            .create_nodes(&request)
            .await
            .map_err(|e| format!("retrying the partial launch with the same token failed: {e:#}"))?;
        for node in &outcome.nodes {
            ensure!(
                retry.nodes.iter().any(|n| n.id == node.id),
                "the retry with the same token does not answer node {} of the partial launch",
                node.id
            );
        }
        let listed = run
            .list(provider, &[(tags::LAUNCH_TOKEN, request.token.as_str())])
            .await?;
        ensure_same_ids(&listed, &retry.nodes, "the list after the retry")?;
        ensure!(
            listed.len() <= 3,
            "the token of a launch of 3 has {} nodes after the retry",
            listed.len()
        );
        Ok(())
    }
    .await;
    run.finish(result, &[provider]).await
}

/// One run of one check: its name, its unique run tag value and the launch defaults.
struct Run<'a> {
    check: &'static str,
    run_id: String,
    cluster: &'a str,
    config: &'a ConformanceConfig,
}

impl<'a> Run<'a> {
    fn new(check: &'static str, provider: &'a dyn NodeProvider, config: &'a ConformanceConfig) -> Self {
        Run {
            check,
            run_id: format!("{check}-{}", &new_launch_token()[..12]),
            cluster: provider.cluster_name(),
            config,
        }
    }

    /// A request of `count` nodes of `kind` with CloudTik's tags, the run tag and `extra`.
    fn request(&self, kind: NodeKind, count: usize, extra: &[(&str, &str)]) -> LaunchRequest {
        let mut request_tags = tag_map(&[
            (tags::NODE_KIND, kind.as_str()),
            (tags::USER_NODE_TYPE, self.config.node_type.as_str()),
            (tags::NODE_STATUS, NodeStatus::Uninitialized.as_str()),
            (tags::NODE_NAME, &format!("cloudtik-{}-{kind}", self.cluster)),
            (RUN_TAG, self.run_id.as_str()),
        ]);
        request_tags.extend(tag_map(extra));
        LaunchRequest::new(
            self.config.node_type.clone(),
            self.config.node_config.clone(),
            request_tags,
            count,
        )
    }

    /// Launches and insists on all `count` nodes.
    async fn launch_all(
        &self,
        provider: &dyn NodeProvider,
        request: &LaunchRequest,
    ) -> Result<Vec<NodeInfo>, String> {
        let outcome = provider.create_nodes(request).await.map_err(|e| {
            format!(
                "launching {} nodes on cluster {} failed: {e:#}",
                request.count,
                provider.cluster_name()
            )
        })?;
        ensure!(
            outcome.shortfall.is_none(),
            "launching {} nodes reported a shortfall: {}",
            request.count,
            display_opt(&outcome.shortfall)
        );
        ensure!(
            outcome.nodes.len() == request.count,
            "launching {} nodes answered {} nodes",
            request.count,
            outcome.nodes.len()
        );
        Ok(outcome.nodes)
    }

    /// Lists the run's nodes on `provider` that also carry `filters`.
    async fn list(
        &self,
        provider: &dyn NodeProvider,
        filters: &[(&str, &str)],
    ) -> Result<Vec<NodeInfo>, String> {
        let mut all = tag_map(filters);
        all.insert(RUN_TAG.to_string(), self.run_id.clone());
        provider
            .list_nodes(&all)
            .await
            .map_err(|e| format!("list_nodes with filters {all:?} failed: {e:#}"))
    }

    /// Terminates the run's nodes on every provider and turns the body's result into
    /// the check's result, failing it when the cleanup failed.
    async fn finish(&self, result: Result<(), String>, providers: &[&dyn NodeProvider]) -> CheckResult {
        let mut problems: Vec<String> = result.err().into_iter().collect();
        for provider in providers {
            if let Err(e) = self.cleanup(*provider).await {
                problems.push(format!("cleanup on cluster {}: {e:#}", provider.cluster_name()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CheckFailure {
                check: self.check,
                message: problems.join("; "),
            })
        }
    }

    async fn cleanup(&self, provider: &dyn NodeProvider) -> Result<(), String> {
        let ids: Vec<String> = self
            .list(provider, &[])
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        let batch = provider.capabilities().max_terminate_batch.max(1);
        for chunk in ids.chunks(batch) {
            provider
                .terminate_nodes(chunk)
                .await
                .map_err(|e| format!("terminating {} nodes failed: {e:#}", chunk.len()))?;
        }
        let left = self.list(provider, &[]).await?;
        ensure!(
            left.is_empty(),
            "{} nodes are still listed after the terminate: {:?}",
            left.len(),
            left.iter().map(|n| &n.id).collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// Filters (besides the run tag), the nodes they must select, and what they are.
type FilterCase<'a> = (&'a [(&'a str, &'a str)], &'a [NodeInfo], &'a str);

fn outcome(result: CheckResult) -> CheckOutcome {
    match result {
        Ok(()) => CheckOutcome::Passed,
        Err(failure) => CheckOutcome::Failed(failure.message),
    }
}

fn tag_map(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn display_opt(err: &Option<crate::Error>) -> String {
    err.as_ref()
        .map_or_else(|| "none".to_string(), |e| format!("{e:#}"))
}

/// The nodes carry every tag of the request, the cluster name and the token.
fn check_tags(
    nodes: &[NodeInfo],
    request: &LaunchRequest,
    cluster: &str,
    seen_in: &str,
) -> Result<(), String> {
    for node in nodes {
        for (k, v) in &request.tags {
            ensure!(
                node.tag(k) == Some(v.as_str()),
                "node {} in {seen_in} has tag {k}={:?}; the launch set {v:?}",
                node.id,
                node.tag(k)
            );
        }
        ensure!(
            node.tag(tags::CLUSTER_NAME) == Some(cluster),
            "node {} in {seen_in} has {}={:?}; expected {cluster:?}",
            node.id,
            tags::CLUSTER_NAME,
            node.tag(tags::CLUSTER_NAME)
        );
        ensure!(
            node.tag(tags::LAUNCH_TOKEN) == Some(request.token.as_str()),
            "node {} in {seen_in} has {}={:?}; expected the request's token {:?}",
            node.id,
            tags::LAUNCH_TOKEN,
            node.tag(tags::LAUNCH_TOKEN),
            request.token
        );
    }
    Ok(())
}

/// `actual` and `expected` hold the same ids, each once.
fn ensure_same_ids(actual: &[NodeInfo], expected: &[NodeInfo], what: &str) -> Result<(), String> {
    let ids = |nodes: &[NodeInfo]| nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    let actual_set: BTreeSet<&str> = actual.iter().map(|n| n.id.as_str()).collect();
    let expected_set: BTreeSet<&str> = expected.iter().map(|n| n.id.as_str()).collect();
    ensure!(
        actual_set.len() == actual.len() && actual_set == expected_set,
        "{what} shows nodes {:?}; expected {:?}",
        ids(actual),
        ids(expected)
    );
    Ok(())
}
