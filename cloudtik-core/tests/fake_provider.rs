//! The fake provider's behaviour and every failure-injection knob.

use std::collections::BTreeSet;
use std::time::Duration;

use cloudtik_core::node::tags;
use cloudtik_core::testing::{CallCounts, FakeProvider, GateStage};
use cloudtik_core::{
    ErrorKind, LaunchRequest, NodeKind, NodeProvider, NodeProviderExt, NodeState, ProviderCapabilities,
    TagUpdate, Tags,
};

fn tag_map(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request(node_type: &str, count: usize) -> LaunchRequest {
    LaunchRequest::new(
        node_type,
        serde_json::json!({"InstanceType": "m5.large"}),
        tag_map(&[(tags::NODE_KIND, "worker"), (tags::USER_NODE_TYPE, node_type)]),
        count,
    )
}

fn ids(nodes: &[cloudtik_core::NodeInfo]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

#[tokio::test]
async fn launches_nodes_with_ids_ips_and_tags() {
    let p = FakeProvider::new("c1");
    let req = request("cpu", 2);
    let outcome = p.create_nodes(&req).await.unwrap();
    assert!(outcome.shortfall.is_none());
    assert_eq!(ids(&outcome.nodes), ["fake-1", "fake-2"]);
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(listed, outcome.nodes);
    let node = &listed[1];
    assert_eq!(node.internal_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(node.external_ip, None);
    assert_eq!(node.instance_type.as_deref(), Some("m5.large"));
    assert_eq!(node.state, NodeState::Running);
    assert_eq!(node.tag(tags::CLUSTER_NAME), Some("c1"));
    assert_eq!(node.tag(tags::LAUNCH_TOKEN), Some(req.token.as_str()));
    assert_eq!(node.kind(), Some(NodeKind::Worker));
    assert_eq!(node.node_type(), Some("cpu"));
    assert_eq!(p.provider_type(), "fake");
    assert_eq!(p.node_count(), 2);
    assert_eq!(p.nodes_created(), 2);
    assert_eq!(p.node("fake-2").await.unwrap().unwrap().id, "fake-2");
    assert!(p.node("fake-3").await.unwrap().is_none());
}

#[tokio::test]
async fn the_same_token_never_creates_more_than_count() {
    let p = FakeProvider::new("c1");
    let req = request("cpu", 3);
    let first = p.create_nodes(&req).await.unwrap();
    let again = p.create_nodes(&req).await.unwrap();
    assert_eq!(ids(&first.nodes), ids(&again.nodes));
    assert_eq!(p.nodes_created(), 3);

    // A node of the token that died is not replaced under the same token.
    assert!(p.kill_node("fake-2"));
    let after_kill = p.create_nodes(&req).await.unwrap();
    assert_eq!(ids(&after_kill.nodes), ["fake-1", "fake-3"]);
    assert!(after_kill.shortfall.is_none());
    assert_eq!(p.nodes_created(), 3);

    // Asking for more under the same token creates only the difference.
    let mut bigger = req.clone();
    bigger.count = 5;
    let more = p.create_nodes(&bigger).await.unwrap();
    assert_eq!(ids(&more.nodes), ["fake-1", "fake-3", "fake-4", "fake-5"]);
    assert_eq!(p.nodes_created(), 5);

    // Tokens are per cluster.
    let other = p.for_cluster("c2");
    let theirs = other.create_nodes(&req).await.unwrap();
    assert_eq!(ids(&theirs.nodes), ["fake-6", "fake-7", "fake-8"]);
}

#[tokio::test]
async fn list_filters_and_cluster_isolation() {
    let p = FakeProvider::new("c1");
    let other = p.for_cluster("c2");
    p.create_nodes(&request("cpu", 2)).await.unwrap();
    let mut head = request("head", 1);
    head.tags.insert(tags::NODE_KIND.into(), "head".into());
    p.create_nodes(&head).await.unwrap();
    other.create_nodes(&request("cpu", 4)).await.unwrap();

    assert_eq!(p.list_nodes(&Tags::new()).await.unwrap().len(), 3);
    assert_eq!(other.list_nodes(&Tags::new()).await.unwrap().len(), 4);
    assert_eq!(
        ids(&p.list_nodes_of_kind(NodeKind::Head).await.unwrap()),
        ["fake-3"]
    );
    assert_eq!(p.head_node().await.unwrap().unwrap().id, "fake-3");
    let cpu = tag_map(&[(tags::USER_NODE_TYPE, "cpu")]);
    assert_eq!(ids(&p.list_nodes(&cpu).await.unwrap()), ["fake-1", "fake-2"]);
    let by_other_name = tag_map(&[(tags::CLUSTER_NAME, "c2")]);
    assert!(p.list_nodes(&by_other_name).await.unwrap().is_empty());
    assert_eq!(p.cloud().node_count(), 7);
    assert_eq!(p.cloud().cluster_names(), ["c1", "c2"]);

    // Other clusters' ids are unknown: not taggable, not terminable.
    let err = p.set_tags("fake-4", tag_map(&[("x", "y")])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    p.terminate_node("fake-4").await.unwrap();
    assert!(!p.kill_node("fake-4"));
    assert_eq!(other.node_count(), 4);
}

#[tokio::test]
async fn clones_share_the_cloud_and_counters() {
    let p = FakeProvider::new("c1");
    let controller = p.clone();
    controller.create_nodes(&request("cpu", 2)).await.unwrap();
    controller.list_nodes(&Tags::new()).await.unwrap();
    controller
        .set_tags("fake-1", tag_map(&[("a", "b")]))
        .await
        .unwrap();
    controller.terminate_node("fake-2").await.unwrap();
    // A restarted controller (a new handle) sees the same nodes.
    let restarted = p.cloud().node_provider("c1");
    assert_eq!(
        ids(&restarted.list_nodes(&Tags::new()).await.unwrap()),
        ["fake-1"]
    );
    assert_eq!(
        p.calls(),
        CallCounts {
            list: 2,
            create: 1,
            set_tags: 1,
            terminate: 1
        }
    );
    assert_eq!(p.nodes_created(), 2);
    assert_eq!(p.snapshot()[0].tag("a"), Some("b"));
    assert_eq!(p.calls().list, 2, "snapshot is not a list call");
}

#[tokio::test]
async fn list_fails_the_next_n_calls() {
    let p = FakeProvider::new("c1");
    p.fail_list(2, ErrorKind::RateLimited);
    for _ in 0..2 {
        let err = p.list_nodes(&Tags::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(err.is_retryable());
        assert_eq!(err.operation(), Some("list_nodes"));
    }
    assert!(p.list_nodes(&Tags::new()).await.is_ok());
    assert_eq!(p.calls().list, 3);
}

#[tokio::test]
async fn create_fails_the_next_n_calls_and_creates_nothing() {
    let p = FakeProvider::new("c1");
    p.fail_create(2, ErrorKind::Quota);
    let req = request("cpu", 2);
    for _ in 0..2 {
        let err = p.create_nodes(&req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Quota);
        assert!(err.is_capacity_or_quota());
        assert_eq!(err.context_value("node_type"), Some("cpu"));
    }
    assert_eq!(p.node_count(), 0);
    assert_eq!(p.create_nodes(&req).await.unwrap().nodes.len(), 2);
    assert_eq!(p.calls().create, 3);
}

#[tokio::test]
async fn create_failures_can_target_one_node_type() {
    let p = FakeProvider::new("c1");
    p.fail_create_for_type("gpu", 2, ErrorKind::Capacity);
    // Other types go through and do not use the fault up.
    assert_eq!(p.create_nodes(&request("cpu", 1)).await.unwrap().nodes.len(), 1);
    for _ in 0..2 {
        let err = p.create_nodes(&request("gpu", 1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Capacity);
    }
    assert_eq!(p.create_nodes(&request("gpu", 1)).await.unwrap().nodes.len(), 1);

    // A typed and an untyped fault at once: the typed one does not block other types.
    p.fail_create_for_type("gpu", 1, ErrorKind::Capacity);
    p.fail_create(1, ErrorKind::Transient);
    assert_eq!(
        p.create_nodes(&request("cpu", 1)).await.unwrap_err().kind(),
        ErrorKind::Transient
    );
    assert_eq!(
        p.create_nodes(&request("gpu", 1)).await.unwrap_err().kind(),
        ErrorKind::Capacity
    );
    assert!(p.create_nodes(&request("gpu", 1)).await.is_ok());
}

#[tokio::test]
async fn partial_launches_report_a_shortfall_and_retries_top_up() {
    let p = FakeProvider::new("c1");
    p.fail_create_partially(1, 2, ErrorKind::Capacity);
    let req = request("cpu", 5);
    let outcome = p.create_nodes(&req).await.unwrap();
    assert!(outcome.is_partial());
    assert_eq!(outcome.nodes.len(), 2);
    let shortfall = outcome.shortfall.unwrap();
    assert_eq!(shortfall.kind(), ErrorKind::Capacity);
    assert_eq!(shortfall.context_value("requested"), Some("5"));
    // The fault was for one call: the retry with the same token creates the other 3.
    let retry = p.create_nodes(&req).await.unwrap();
    assert!(retry.shortfall.is_none());
    assert_eq!(retry.nodes.len(), 5);
    assert_eq!(p.nodes_created(), 5);

    // A request that fits under the limit is fulfilled (and uses up a call).
    p.fail_create_partially(2, 2, ErrorKind::Quota);
    assert!(
        p.create_nodes(&request("cpu", 2))
            .await
            .unwrap()
            .shortfall
            .is_none()
    );
    assert!(p.create_nodes(&request("cpu", 3)).await.unwrap().is_partial());
    assert!(
        p.create_nodes(&request("cpu", 3))
            .await
            .unwrap()
            .shortfall
            .is_none()
    );

    // Nothing created and nothing to answer with: an error.
    p.fail_create_partially(1, 0, ErrorKind::RateLimited);
    let err = p.create_nodes(&request("cpu", 3)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
}

#[tokio::test]
async fn capacity_limits_count_live_nodes_of_a_type_on_the_whole_cloud() {
    let p = FakeProvider::new("c1");
    let other = p.for_cluster("c2");
    p.set_capacity("cpu", Some(3));
    other.create_nodes(&request("cpu", 1)).await.unwrap();
    let outcome = p.create_nodes(&request("cpu", 5)).await.unwrap();
    assert_eq!(outcome.nodes.len(), 2);
    assert_eq!(outcome.shortfall.unwrap().kind(), ErrorKind::Capacity);
    let err = p.create_nodes(&request("cpu", 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Capacity);
    assert!(err.is_retryable());
    // Other types are not limited.
    assert!(
        p.create_nodes(&request("gpu", 4))
            .await
            .unwrap()
            .shortfall
            .is_none()
    );
    // Terminating (or losing) a node frees room.
    p.terminate_node(&outcome.nodes[0].id).await.unwrap();
    assert!(
        p.create_nodes(&request("cpu", 1))
            .await
            .unwrap()
            .shortfall
            .is_none()
    );
    other.kill_node("fake-1");
    assert!(
        p.create_nodes(&request("cpu", 1))
            .await
            .unwrap()
            .shortfall
            .is_none()
    );
    p.set_capacity("cpu", None);
    assert_eq!(p.create_nodes(&request("cpu", 10)).await.unwrap().nodes.len(), 10);
}

#[tokio::test]
async fn terminate_and_set_tags_fail_the_next_n_calls() {
    let p = FakeProvider::new("c1");
    p.create_nodes(&request("cpu", 1)).await.unwrap();
    p.fail_terminate(1, ErrorKind::Transient);
    let err = p.terminate_node("fake-1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.operation(), Some("terminate_nodes"));
    assert_eq!(p.node_count(), 1, "a failed terminate terminates nothing");

    p.fail_set_tags(1, ErrorKind::PermissionDenied);
    let err = p.set_tags("fake-1", tag_map(&[("a", "b")])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(p.snapshot()[0].tag("a"), None);

    p.set_tags("fake-1", tag_map(&[("a", "b")])).await.unwrap();
    p.terminate_node("fake-1").await.unwrap();
    p.terminate_node("fake-1").await.unwrap();
    p.terminate_node("no-such-node").await.unwrap();
    assert_eq!(p.node_count(), 0);
}

#[tokio::test]
async fn set_node_tags_updates_the_rest_and_names_the_missing() {
    let p = FakeProvider::new("c1");
    p.create_nodes(&request("cpu", 2)).await.unwrap();
    let updates = [
        TagUpdate::new("fake-1", tag_map(&[(tags::NODE_STATUS, "up-to-date")])),
        TagUpdate::new("fake-9", tag_map(&[("a", "b")])),
        TagUpdate::new("fake-2", tag_map(&[("a", "c")])),
        TagUpdate::new("fake-01", tag_map(&[("a", "d")])),
    ];
    let err = p.set_node_tags(&updates).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.context_value("node_ids"), Some("fake-9, fake-01"));
    let nodes = p.snapshot();
    assert_eq!(nodes[0].tag(tags::NODE_STATUS), Some("up-to-date"));
    assert_eq!(nodes[0].tag(tags::NODE_KIND), Some("worker"), "other tags stay");
    assert_eq!(nodes[1].tag("a"), Some("c"));
}

#[tokio::test]
async fn batch_limits_are_enforced() {
    let p = FakeProvider::new("c1").with_capabilities(
        ProviderCapabilities::default()
            .with_max_launch_batch(2)
            .with_max_tag_batch(1)
            .with_max_terminate_batch(1),
    );
    assert_eq!(p.capabilities().max_launch_batch, 2);
    let err = p.create_nodes(&request("cpu", 3)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unexpected);
    assert!(err.message().contains("max_launch_batch"), "{err}");
    assert_eq!(p.node_count(), 0);
    p.create_nodes(&request("cpu", 2)).await.unwrap();

    let two = |t: &str| {
        ["fake-1", "fake-2"]
            .map(|id| TagUpdate::new(id, tag_map(&[("t", t)])))
            .to_vec()
    };
    let err = p.set_node_tags(&two("x")).await.unwrap_err();
    assert!(err.message().contains("max_tag_batch"), "{err}");
    assert!(p.snapshot().iter().all(|n| n.tag("t").is_none()));
    p.set_node_tags(&two("x")[..1]).await.unwrap();

    let err = p
        .terminate_nodes(&["fake-1".into(), "fake-2".into()])
        .await
        .unwrap_err();
    assert!(err.message().contains("max_terminate_batch"), "{err}");
    assert_eq!(p.node_count(), 2);
    // for_cluster keeps the capabilities.
    assert_eq!(p.for_cluster("c2").capabilities().max_tag_batch, 1);
}

#[tokio::test]
async fn nodes_stay_pending_for_the_configured_list_calls() {
    let p = FakeProvider::new("c1");
    p.set_pending_lists(2);
    let outcome = p.create_nodes(&request("cpu", 1)).await.unwrap();
    assert_eq!(outcome.nodes[0].state, NodeState::Pending);
    assert_eq!(p.snapshot()[0].state, NodeState::Pending);
    assert_eq!(
        p.list_nodes(&Tags::new()).await.unwrap()[0].state,
        NodeState::Pending
    );
    // A failed list does not count.
    p.fail_list(1, ErrorKind::Transient);
    assert!(p.list_nodes(&Tags::new()).await.is_err());
    assert_eq!(
        p.list_nodes(&Tags::new()).await.unwrap()[0].state,
        NodeState::Pending
    );
    assert_eq!(
        p.list_nodes(&Tags::new()).await.unwrap()[0].state,
        NodeState::Running
    );
    // Later nodes get their own pending lists; zero makes them running at once.
    p.create_nodes(&request("cpu", 1)).await.unwrap();
    p.set_pending_lists(0);
    p.create_nodes(&request("cpu", 1)).await.unwrap();
    let states: Vec<NodeState> = p
        .list_nodes(&Tags::new())
        .await
        .unwrap()
        .iter()
        .map(|n| n.state)
        .collect();
    assert_eq!(
        states,
        [NodeState::Running, NodeState::Pending, NodeState::Running]
    );
}

#[tokio::test(start_paused = true)]
async fn create_delay_uses_tokio_time() {
    let p = FakeProvider::new("c1");
    p.set_create_delay(Duration::from_secs(10));
    let req = request("cpu", 1);
    // Cut off before the delay ends: the cloud has not acted.
    let cut = tokio::time::timeout(Duration::from_secs(9), p.create_nodes(&req)).await;
    assert!(cut.is_err());
    assert_eq!(p.node_count(), 0);
    let start = tokio::time::Instant::now();
    p.create_nodes(&req).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(p.node_count(), 1);
    p.set_create_delay(Duration::ZERO);
    let start = tokio::time::Instant::now();
    p.create_nodes(&request("cpu", 1)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn a_controller_crashing_before_the_cloud_acts_launches_nothing() {
    let p = FakeProvider::new("c1");
    p.hold_creates(GateStage::BeforeCreate);
    let controller = p.clone();
    let req = request("cpu", 2);
    let task = tokio::spawn({
        let req = req.clone();
        async move { controller.create_nodes(&req).await }
    });
    p.wait_for_creates_at_gate(1).await;
    assert_eq!(p.creates_at_gate(), 1);
    assert_eq!(p.node_count(), 0);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(p.creates_at_gate(), 0, "a dropped call leaves the gate");
    p.release_creates();
    assert_eq!(p.node_count(), 0);
    assert_eq!(p.nodes_created(), 0);
}

#[tokio::test]
async fn a_controller_crashing_after_the_cloud_acted_leaves_nodes_to_adopt() {
    let p = FakeProvider::new("c1");
    p.hold_creates(GateStage::AfterCreate);
    let controller = p.clone();
    let req = request("cpu", 2);
    let task = tokio::spawn({
        let req = req.clone();
        async move { controller.create_nodes(&req).await }
    });
    p.wait_for_creates_at_gate(1).await;
    assert_eq!(p.node_count(), 2, "the cloud acted");
    task.abort();
    let _ = task.await;
    assert_eq!(p.creates_at_gate(), 0);
    p.release_creates();
    // The restarted controller retries with the recorded token and adopts the nodes.
    let restarted = p.cloud().node_provider("c1");
    let outcome = restarted.create_nodes(&req).await.unwrap();
    assert_eq!(ids(&outcome.nodes), ["fake-1", "fake-2"]);
    assert_eq!(p.nodes_created(), 2);
}

#[tokio::test]
async fn held_creates_go_on_when_released() {
    let p = FakeProvider::new("c1");
    p.hold_creates(GateStage::BeforeCreate);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let controller = p.clone();
            tokio::spawn(async move { controller.create_nodes(&request("cpu", 1)).await })
        })
        .collect();
    p.wait_for_creates_at_gate(3).await;
    // Other calls are not held.
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
    p.release_creates();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().nodes.len(), 1);
    }
    assert_eq!(p.node_count(), 3);
    assert_eq!(p.creates_at_gate(), 0);
}

#[tokio::test]
async fn clear_faults_resets_every_knob() {
    let p = FakeProvider::new("c1");
    p.fail_list(5, ErrorKind::Transient);
    p.fail_create(5, ErrorKind::Quota);
    p.fail_create_for_type("cpu", 5, ErrorKind::Capacity);
    p.fail_create_partially(5, 0, ErrorKind::Capacity);
    p.fail_set_tags(5, ErrorKind::Transient);
    p.fail_terminate(5, ErrorKind::Transient);
    p.set_capacity("cpu", Some(0));
    p.set_pending_lists(3);
    p.hold_creates(GateStage::BeforeCreate);
    p.clear_faults();
    let outcome = p.create_nodes(&request("cpu", 2)).await.unwrap();
    assert!(outcome.shortfall.is_none());
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert!(listed.iter().all(|n| n.state == NodeState::Running));
    p.set_tags("fake-1", tag_map(&[("a", "b")])).await.unwrap();
    p.terminate_node("fake-1").await.unwrap();
    assert_eq!(p.node_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knobs_work_while_other_tasks_use_the_provider() {
    let p = FakeProvider::new("c1");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let controller = p.clone();
            tokio::spawn(async move {
                let mut created = 0;
                for _ in 0..25 {
                    if let Ok(outcome) = controller.create_nodes(&request("cpu", 2)).await {
                        created += outcome.nodes.len();
                    }
                    tokio::task::yield_now().await;
                }
                created
            })
        })
        .collect();
    p.fail_create(10, ErrorKind::RateLimited);
    let mut created = 0;
    for w in workers {
        created += w.await.unwrap();
    }
    assert_eq!(p.calls().create, 200);
    assert_eq!(created as u64, p.nodes_created());
    assert_eq!(created, p.node_count());
    // Up to 10 calls failed (each creating nothing), depending on when the knob was set.
    assert!((380..=400).contains(&created) && created % 2 == 0, "{created}");
    let unique: BTreeSet<String> = p.snapshot().into_iter().map(|n| n.id).collect();
    assert_eq!(unique.len(), created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_ten_thousand_nodes() {
    let p = FakeProvider::new("big").with_capabilities(
        ProviderCapabilities::default()
            .with_max_launch_batch(1000)
            .with_max_tag_batch(5000)
            .with_max_terminate_batch(5000),
    );
    for i in 0..10 {
        let node_type = if i % 2 == 0 { "cpu" } else { "gpu" };
        p.create_nodes(&request(node_type, 1000)).await.unwrap();
    }
    assert_eq!(p.node_count(), 10_000);
    let gpu = tag_map(&[(tags::USER_NODE_TYPE, "gpu")]);
    let gpu_nodes = p.list_nodes(&gpu).await.unwrap();
    assert_eq!(gpu_nodes.len(), 5000);
    let updates: Vec<TagUpdate> = gpu_nodes
        .iter()
        .map(|n| TagUpdate::new(n.id.clone(), tag_map(&[(tags::NODE_STATUS, "up-to-date")])))
        .collect();
    p.set_node_tags(&updates).await.unwrap();
    let up = tag_map(&[(tags::NODE_STATUS, "up-to-date")]);
    assert_eq!(p.list_nodes(&up).await.unwrap().len(), 5000);
    let last = p.snapshot().last().unwrap().clone();
    assert_eq!(last.id, "fake-10000");
    assert_eq!(last.internal_ip.as_deref(), Some("10.0.39.16"));
    let all: Vec<String> = p.snapshot().into_iter().map(|n| n.id).collect();
    for chunk in all.chunks(5000) {
        p.terminate_nodes(chunk).await.unwrap();
    }
    assert_eq!(p.node_count(), 0);
    assert_eq!(p.nodes_created(), 10_000);
}

mod model {
    use std::collections::HashMap;

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Create { token: usize, count: usize },
        Kill(usize),
        Terminate(usize),
        Partial(usize),
        FailCreate,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..3, 0usize..5).prop_map(|(token, count)| Op::Create { token, count }),
            1 => (0usize..20).prop_map(Op::Kill),
            1 => (0usize..20).prop_map(Op::Terminate),
            1 => (0usize..3).prop_map(Op::Partial),
            1 => Just(Op::FailCreate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever happens, a token never gets more nodes than the largest count asked
        /// with it, answers hold only live nodes of the token, and the counters add up.
        #[test]
        fn tokens_never_overlaunch(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let p = FakeProvider::new("model");
                let tokens = ["t0", "t1", "t2"];
                let mut max_count: HashMap<&str, usize> = HashMap::new();
                // Every node created appears in the answer of the call that created it,
                // so the union of the answers is every node ever launched per token.
                let mut launched: HashMap<&str, BTreeSet<String>> = HashMap::new();
                let mut removed = 0u64;
                for op in ops {
                    match op {
                        Op::Create { token, count } => {
                            let token = tokens[token];
                            let req = request("cpu", count).with_token(token);
                            let m = max_count.entry(token).or_default();
                            *m = (*m).max(count);
                            let created_before = p.nodes_created();
                            match p.create_nodes(&req).await {
                                Ok(outcome) => {
                                    let live: BTreeSet<String> = p.snapshot().into_iter().map(|n| n.id).collect();
                                    for node in &outcome.nodes {
                                        prop_assert_eq!(node.tag(tags::LAUNCH_TOKEN), Some(token));
                                        prop_assert!(live.contains(&node.id), "answered a dead node {}", node.id);
                                    }
                                    launched.entry(token).or_default().extend(outcome.nodes.iter().map(|n| n.id.clone()));
                                }
                                Err(_) => prop_assert_eq!(p.nodes_created(), created_before, "an Err created nodes"),
                            }
                            let ever = launched.get(token).map_or(0, BTreeSet::len);
                            prop_assert!(ever <= max_count[token], "token {} has {} nodes, max count {}", token, ever, max_count[token]);
                        }
                        Op::Kill(i) => removed += u64::from(p.kill_node(&format!("fake-{i}"))),
                        Op::Terminate(i) => {
                            let before = p.node_count();
                            p.terminate_node(&format!("fake-{i}")).await.unwrap();
                            removed += (before - p.node_count()) as u64;
                        }
                        Op::Partial(k) => p.fail_create_partially(1, k, ErrorKind::Capacity),
                        Op::FailCreate => p.fail_create(1, ErrorKind::RateLimited),
                    }
                }
                let ever: usize = launched.values().map(BTreeSet::len).sum();
                prop_assert_eq!(p.nodes_created(), ever as u64);
                prop_assert_eq!(p.nodes_created() - removed, p.node_count() as u64);
                let listed = p.list_nodes(&Tags::new()).await.unwrap();
                let seqs: Vec<u64> = listed.iter().map(|n| n.id["fake-".len()..].parse().unwrap()).collect();
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "listed in launch order: {:?}", seqs);
                Ok(())
            })?;
        }
    }
}
