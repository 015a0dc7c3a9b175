//! The AWS node provider against moto's EC2 server.
//!
//! The harness needs `python3` with the `venv` module (and network access to PyPI, or a
//! pip mirror, the first time): it creates a virtual environment in
//! `$CLOUDTIK_MOTO_VENV`, or else `$XDG_CACHE_HOME/cloudtik-moto-venv`, or else
//! `~/.cache/cloudtik-moto-venv`, pip-installs `moto[server]` into it when its
//! `moto_server` is missing, and reuses it afterwards. Each test starts its own
//! `moto_server` on a free loopback port and kills it when done.
//!
//! Without python3, venv or pip the tests are skipped with a message, unless `CI=true`:
//! then they fail.
#![cfg(feature = "aws")]

mod moto;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use cloudtik_core::node::tags;
use cloudtik_core::provider::new_launch_token;
use cloudtik_core::testing::conformance::{CheckOutcome, ConformanceConfig, run_all};
use cloudtik_core::{ErrorKind, ErrorStatus, LaunchRequest, NodeKind, NodeProvider, TagUpdate, Tags};
use cloudtik_providers::aws::{AwsNodeProvider, DEFAULT_IMAGE_NAME};
use moto::{CallLog, Moto, free_port, raw_client, sdk_config, settings, start_moto};
use serde_json::json;

async fn provider(moto: &Moto, cluster: &str) -> AwsNodeProvider {
    AwsNodeProvider::from_sdk_config(cluster, &sdk_config(&moto.url).await, settings(&moto.url)).unwrap()
}

/// A node config with an AMI moto knows.
async fn node_config(moto: &Moto) -> serde_json::Value {
    let images = raw_client(moto)
        .await
        .describe_images()
        .send()
        .await
        .expect("DescribeImages on moto");
    let image = images
        .images()
        .iter()
        .find_map(|i| i.image_id())
        .expect("moto lists at least one AMI")
        .to_string();
    json!({"InstanceType": "t3.micro", "ImageId": image})
}

fn worker_request(config: &serde_json::Value, count: usize) -> LaunchRequest {
    let mut t = Tags::new();
    t.insert(tags::NODE_KIND.into(), NodeKind::Worker.as_str().into());
    t.insert(tags::USER_NODE_TYPE.into(), "worker.default".into());
    LaunchRequest::new("worker.default", config.clone(), t, count)
}

fn ids(nodes: &[cloudtik_core::NodeInfo]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

/// A fault for the partial-launch check. moto has no capacity or quota simulation, but
/// it creates only `MinCount` (1) instances per `RunInstances`, so the provider asks
/// again for the rest; once armed, this interceptor lets one `RunInstances` through and
/// sends every later one to a closed port (a transient failure the provider retries,
/// then reports as the shortfall).
#[derive(Debug)]
struct LaunchFault {
    armed: AtomicBool,
    launches: AtomicUsize,
    dead_url: String,
}

#[derive(Debug, Clone)]
struct FailLaterLaunches(Arc<LaunchFault>);

impl Intercept for FailLaterLaunches {
    fn name(&self) -> &'static str {
        "FailLaterLaunches"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let is_launch = context
            .request()
            .body()
            .bytes()
            .is_some_and(|b| b.windows(19).any(|w| w == b"Action=RunInstances"));
        if is_launch
            && self.0.armed.load(Ordering::SeqCst)
            && self.0.launches.fetch_add(1, Ordering::SeqCst) >= 1
        {
            context
                .request_mut()
                .set_uri(self.0.dead_url.as_str())
                .map_err(|e| BoxError::from(format!("bad URI: {e}")))?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_updates_make_one_create_tags_per_distinct_tag() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(log.clone());
    let p = AwsNodeProvider::from_ec2_config("tag-batches", ec2_config, settings(&moto.url)).unwrap();
    let nodes = p
        .create_nodes(&worker_request(&node_config(&moto).await, 3))
        .await
        .unwrap()
        .nodes;
    let update = |node: &cloudtik_core::NodeInfo, status: &str| {
        let mut t = Tags::new();
        t.insert(tags::NODE_STATUS.into(), status.into());
        t.insert(tags::RUNTIME_CONFIG.into(), "hash-1".into());
        TagUpdate::new(node.id.clone(), t)
    };
    let updates = vec![
        update(&nodes[0], "up-to-date"),
        update(&nodes[1], "up-to-date"),
        update(&nodes[2], "update-failed"),
    ];
    let before = log.count("CreateTags");
    p.set_node_tags(&updates).await.unwrap();
    // (status, up-to-date), (status, update-failed), (runtime hash, hash-1).
    assert_eq!(log.count("CreateTags") - before, 3);
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    for u in &updates {
        let node = listed.iter().find(|n| n.id == u.node_id).unwrap();
        assert!(node.matches(&u.tags), "{node:?} lacks {:?}", u.tags);
    }

    // The node name also sets EC2's Name tag.
    let mut renamed = Tags::new();
    renamed.insert(tags::NODE_NAME.into(), "cloudtik-tag-batches-worker-x".into());
    p.set_node_tags(&[TagUpdate::new(nodes[0].id.clone(), renamed)])
        .await
        .unwrap();
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    let node = listed.iter().find(|n| n.id == nodes[0].id).unwrap();
    assert_eq!(node.tag("Name"), Some("cloudtik-tag-batches-worker-x"));

    // The identity tags cannot change.
    let mut moved = Tags::new();
    moved.insert(tags::CLUSTER_NAME.into(), "elsewhere".into());
    let e = p
        .set_node_tags(&[TagUpdate::new(nodes[1].id.clone(), moved)])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_on_moto() {
    let Some(moto) = start_moto() else { return };
    let fault = Arc::new(LaunchFault {
        armed: AtomicBool::new(false),
        launches: AtomicUsize::new(0),
        dead_url: format!("http://127.0.0.1:{}/", free_port()),
    });
    let ec2_config = aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await)
        .interceptor(FailLaterLaunches(fault.clone()));
    let ours = AwsNodeProvider::from_ec2_config("conformance-a", ec2_config, settings(&moto.url)).unwrap();
    let other = ours.for_cluster("conformance-b").unwrap();
    let config = ConformanceConfig::new("worker.default", node_config(&moto).await)
        .with_missing_node_id("i-0123456789abcdef0")
        .with_partial_launch(move || {
            let fault = fault.clone();
            Box::pin(async move {
                fault.launches.store(0, Ordering::SeqCst);
                fault.armed.store(true, Ordering::SeqCst);
            })
        });
    let report = run_all(&ours, Some(&other), &config).await;
    report.assert_passed();
    for check in &report.checks {
        assert_eq!(check.outcome, CheckOutcome::Passed, "{report}");
    }
}

/// A repeated launch with the same token creates nothing, and every `RunInstances` call
/// carried a `ClientToken` derived from the launch token and the number of instances
/// that existed. (moto ignores `ClientToken` for deduplication, so EC2's side of the
/// idempotency cannot be shown here; moto does record the token sent.)
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_launch_creates_no_duplicates_and_sends_client_tokens() {
    let Some(moto) = start_moto() else { return };
    let p = provider(&moto, "client-token").await;
    let config = node_config(&moto).await;
    let request = worker_request(&config, 2);
    let first = p.create_nodes(&request).await.unwrap();
    assert_eq!(first.nodes.len(), 2);
    assert!(first.shortfall.is_none());
    for _ in 0..2 {
        let again = p.create_nodes(&request).await.unwrap();
        assert!(again.shortfall.is_none());
        assert_eq!(ids(&again.nodes), ids(&first.nodes));
    }
    let all = p.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(ids(&all), ids(&first.nodes), "the repeat launched more instances");

    let described = raw_client(&moto)
        .await
        .describe_instances()
        .set_instance_ids(Some(ids(&first.nodes).into_iter().collect()))
        .send()
        .await
        .unwrap();
    let client_tokens: BTreeSet<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| i.client_token().unwrap_or_default().to_string())
        .collect();
    // One call per created instance on moto (it creates MinCount instances): the first
    // with 0 instances existing, the second with 1.
    let expected: BTreeSet<String> = [0, 1]
        .iter()
        .map(|n| format!("{}-{n}-0", request.token))
        .collect();
    assert_eq!(client_tokens, expected);

    // A new token launches new instances.
    let other = p
        .create_nodes(&request.clone().with_token(new_launch_token()))
        .await
        .unwrap();
    assert_eq!(other.nodes.len(), 2);
    assert!(ids(&other.nodes).is_disjoint(&ids(&first.nodes)));
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_twice_succeeds_and_spares_other_clusters() {
    let Some(moto) = start_moto() else { return };
    let p = provider(&moto, "terminate-a").await;
    let other = p.for_cluster("terminate-b").unwrap();
    let config = node_config(&moto).await;
    let ours = p.create_nodes(&worker_request(&config, 3)).await.unwrap().nodes;
    let theirs = other
        .create_nodes(&worker_request(&config, 1))
        .await
        .unwrap()
        .nodes;
    let mut targets: Vec<String> = ids(&ours).into_iter().collect();
    targets.push(theirs[0].id.clone());
    p.terminate_nodes(&targets).await.unwrap();
    p.terminate_nodes(&targets).await.unwrap();
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
    assert_eq!(
        ids(&other.list_nodes(&Tags::new()).await.unwrap()),
        ids(&theirs),
        "terminate on one cluster touched another cluster's instance"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_nodes_list_over_several_pages() {
    let Some(moto) = start_moto() else { return };
    let url = moto.url.clone();
    let p =
        AwsNodeProvider::from_sdk_config("paged", &sdk_config(&url).await, settings(&url).with_page_size(5))
            .unwrap();
    let config = node_config(&moto).await;
    let launched = p.create_nodes(&worker_request(&config, 30)).await.unwrap();
    assert_eq!(launched.nodes.len(), 30);
    assert!(launched.shortfall.is_none());

    // moto creates MinCount (1) instances per RunInstances, so the launch made 30
    // reservations; moto pages by reservation as EC2 does, so a page of 5 holds 5.
    let first_page = raw_client(&moto)
        .await
        .describe_instances()
        .max_results(5)
        .send()
        .await
        .unwrap();
    assert!(first_page.next_token().is_some(), "moto did not paginate");

    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(listed.len(), 30);
    assert_eq!(ids(&listed), ids(&launched.nodes));
    let mut workers = Tags::new();
    workers.insert(tags::NODE_KIND.into(), "worker".into());
    assert_eq!(p.list_nodes(&workers).await.unwrap().len(), 30);
    let ids: Vec<String> = ids(&listed).into_iter().collect();
    p.terminate_nodes(&ids).await.unwrap();
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

/// An EC2 error that stops a launch before anything exists is an `Err` with the kind
/// of the error code, naming the operation, the call and the subnet, and is not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_launch_ec2_refuses_fails_with_a_classified_error() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(log.clone());
    let p = AwsNodeProvider::from_ec2_config("refused", ec2_config, settings(&moto.url)).unwrap();
    let mut config = node_config(&moto).await;
    config["SubnetId"] = json!("subnet-00000000");
    let e = p.create_nodes(&worker_request(&config, 2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.operation(), Some("create_nodes"));
    assert_eq!(e.context_value("call"), Some("RunInstances"));
    assert_eq!(e.context_value("subnet"), Some("subnet-00000000"));
    let text = e.to_string();
    assert!(text.contains("InvalidSubnetID.NotFound"), "{text}");
    assert_eq!(log.count("RunInstances"), 1, "a permanent error was retried");
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_node_config_fails_before_any_call() {
    let Some(moto) = start_moto() else { return };
    let p = provider(&moto, "bad-config").await;
    let e = p
        .create_nodes(&worker_request(&json!({"ImageId": "ami-1"}), 1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("InstanceType"), "{e}");
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

/// No moto needed: a closed port gives connection failures, which are transient,
/// retried a bounded number of times, and then reported as persistent.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_fails_transient_after_bounded_retries() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let p = AwsNodeProvider::from_sdk_config("unreachable", &sdk_config(&url).await, settings(&url)).unwrap();
    let e = p.list_nodes(&Tags::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert_eq!(e.status(), ErrorStatus::Persistent, "{e}");
    assert_eq!(e.operation(), Some("list_nodes"));
    assert!(e.to_string().contains("DescribeInstances"), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

fn aws_cluster_config(node_types: &str) -> cloudtik_core::config::ClusterConfig {
    let text = format!(
        "cluster_name: resources\nworkspace_name: ws\nprovider:\n  type: aws\n  region: us-east-1\nhead_node_type: head\navailable_node_types:\n{node_types}"
    );
    cloudtik_providers::config_loader()
        .load_cluster_str("test.yaml", &text)
        .unwrap()
}

/// Node types without `resources` get CPU, memory and GPU from one
/// `DescribeInstanceTypes` call for all their instance types; types that set
/// `resources` keep them.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_fills_node_type_resources_from_describe_instance_types() {
    use cloudtik_core::resources::{CPU, GPU, MEMORY};
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(log.clone());
    let p = AwsNodeProvider::from_ec2_config("resources", ec2_config, settings(&moto.url)).unwrap();
    let mut config = aws_cluster_config(
        "  head:\n    node_config: {InstanceType: t3.micro, ImageId: ami-1}\n\
         \x20 gpu:\n    node_config: {InstanceType: g4dn.12xlarge, ImageId: ami-1}\n\
         \x20 same:\n    node_config: {InstanceType: t3.micro, ImageId: ami-1}\n\
         \x20 custom:\n    node_config: {InstanceType: g4dn.12xlarge, ImageId: ami-1}\n    resources: {CPU: 3}\n",
    );
    p.bootstrap_resources(&mut config).await.unwrap();
    assert_eq!(log.count("DescribeInstanceTypes"), 1);
    let r = |name: &str| config.available_node_types[name].resources.clone().unwrap();
    assert_eq!(r("head").get(CPU), 2.0);
    assert_eq!(r("head").get(MEMORY), 1024.0 * 1024.0 * 1024.0);
    assert_eq!(r("head").get(GPU), 0.0);
    assert_eq!(r("same"), r("head"));
    assert_eq!(r("gpu").get(CPU), 48.0);
    assert_eq!(r("gpu").get(MEMORY), 196_608.0 * 1024.0 * 1024.0);
    assert_eq!(r("gpu").get(GPU), 4.0);
    assert_eq!(r("custom").get(CPU), 3.0);
    assert_eq!(r("custom").get(GPU), 0.0);

    let types = p
        .instance_type_resources(&["t3.micro".to_string(), "g4dn.12xlarge".to_string()])
        .await
        .unwrap();
    assert_eq!(types.len(), 2);
    assert_eq!(types["g4dn.12xlarge"], r("gpu"));
}

/// An instance type EC2 does not know is an `InvalidConfig` error at the node type's
/// `InstanceType`.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_names_the_node_type_of_an_unknown_instance_type() {
    let Some(moto) = start_moto() else { return };
    let p = provider(&moto, "resources").await;
    let mut config = aws_cluster_config(
        "  head:\n    node_config: {InstanceType: t3.micro, ImageId: ami-1}\n\
         \x20 worker:\n    node_config: {InstanceType: x9.nonesuch, ImageId: ami-1}\n",
    );
    let e = p.bootstrap_resources(&mut config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert_eq!(
        e.location().unwrap().path,
        "available_node_types.worker.node_config.InstanceType"
    );
    assert!(e.to_string().contains("x9.nonesuch"), "{e}");
    assert!(config.available_node_types["head"].resources.is_none());

    let e = p
        .instance_type_resources(&["x9.nonesuch".to_string()])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.context_value("instance_types"), Some("x9.nonesuch"));
}

/// A server that answers every request with EC2's `InsufficientInstanceCapacity`
/// error (moto has no capacity simulation); returns its URL and a count of requests.
async fn no_capacity_server() -> (String, Arc<AtomicUsize>) {
    error_server("InsufficientInstanceCapacity").await
}

/// A server that answers every request with the EC2 error `code` (HTTP 500); returns
/// its URL and a count of requests.
async fn error_server(code: &'static str) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
<Code>{code}</Code><Message>No capacity or price for the request.</Message></Error></Errors>\
<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let served = count.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            served.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                // Read the head and the body, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + length {
                            break;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, count)
}

/// Sends every `RunInstances` into one of `subnets` to the no-capacity server.
#[derive(Debug, Clone)]
struct FullSubnets {
    subnets: Vec<String>,
    url: String,
}

impl Intercept for FullSubnets {
    fn name(&self) -> &'static str {
        "FullSubnets"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let body = String::from_utf8_lossy(body).to_string();
        let is_launch = body.split('&').any(|kv| kv == "Action=RunInstances");
        let full = self
            .subnets
            .iter()
            .any(|s| body.split('&').any(|kv| kv == format!("SubnetId={s}")));
        if is_launch && full {
            context
                .request_mut()
                .set_uri(self.url.as_str())
                .map_err(|e| BoxError::from(format!("bad URI: {e}")))?;
        }
        Ok(())
    }
}

/// Two subnets of moto's default VPC.
async fn two_subnets(moto: &Moto) -> (String, String) {
    let subnets = raw_client(moto).await.describe_subnets().send().await.unwrap();
    let ids: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_string))
        .collect();
    assert!(ids.len() >= 2, "moto has fewer than two default subnets: {ids:?}");
    (ids[0].clone(), ids[1].clone())
}

/// `InsufficientInstanceCapacity` in the first of `SubnetIds` moves the launch to the
/// next subnet, where every instance is created; with no capacity in any subnet the
/// launch fails with a `Capacity` error.
#[tokio::test(flavor = "multi_thread")]
async fn a_capacity_error_moves_the_launch_to_the_next_subnet() {
    let Some(moto) = start_moto() else { return };
    let (full, free) = two_subnets(&moto).await;
    let (url, refused) = no_capacity_server().await;
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(FullSubnets {
            subnets: vec![full.clone()],
            url,
        });
    let p = AwsNodeProvider::from_ec2_config("subnets", ec2_config, settings(&moto.url)).unwrap();
    let mut config = node_config(&moto).await;
    config["SubnetIds"] = json!([full, free]);
    let outcome = p.create_nodes(&worker_request(&config, 3)).await.unwrap();
    assert!(outcome.shortfall.is_none(), "{:?}", outcome.shortfall);
    assert_eq!(outcome.nodes.len(), 3);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "the full subnet was asked once"
    );
    let described = raw_client(&moto)
        .await
        .describe_instances()
        .set_instance_ids(Some(ids(&outcome.nodes).into_iter().collect()))
        .send()
        .await
        .unwrap();
    let subnets: BTreeSet<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.subnet_id().map(str::to_string))
        .collect();
    assert_eq!(subnets, BTreeSet::from([free.clone()]));

    // No capacity anywhere: a Capacity error naming the last subnet tried.
    let (url, _) = no_capacity_server().await;
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(FullSubnets {
            subnets: vec![full.clone(), free.clone()],
            url,
        });
    let p = AwsNodeProvider::from_ec2_config("subnets-full", ec2_config, settings(&moto.url)).unwrap();
    let e = p.create_nodes(&worker_request(&config, 2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Capacity, "{e}");
    assert_eq!(e.context_value("subnet"), Some(free.as_str()));
    assert!(e.to_string().contains("InsufficientInstanceCapacity"), "{e}");
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

/// Sends every spot `RunInstances` to an error server.
#[derive(Debug, Clone)]
struct NoSpot {
    url: String,
}

impl Intercept for NoSpot {
    fn name(&self) -> &'static str {
        "NoSpot"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let body = String::from_utf8_lossy(body).to_string();
        let is_launch = body.split('&').any(|kv| kv == "Action=RunInstances");
        let spot = body
            .split('&')
            .any(|kv| kv == "InstanceMarketOptions.MarketType=spot");
        if is_launch && spot {
            context
                .request_mut()
                .set_uri(self.url.as_str())
                .map_err(|e| BoxError::from(format!("bad URI: {e}")))?;
        }
        Ok(())
    }
}

/// The lifecycle moto records for each instance (`spot`, or `None` for on-demand).
async fn lifecycles(moto: &Moto, nodes: &[cloudtik_core::NodeInfo]) -> Vec<Option<String>> {
    let described = raw_client(moto)
        .await
        .describe_instances()
        .set_instance_ids(Some(ids(nodes).into_iter().collect()))
        .send()
        .await
        .unwrap();
    described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| i.instance_lifecycle().map(|l| l.as_str().to_string()))
        .collect()
}

/// With `prefer_spot` instances are launched as spot; a spot capacity or price error
/// launches the rest on-demand.
#[tokio::test(flavor = "multi_thread")]
async fn spot_launches_fall_back_to_on_demand() {
    let Some(moto) = start_moto() else { return };
    let config = node_config(&moto).await;
    let spot_settings = settings(&moto.url).with_prefer_spot(true);

    let p = AwsNodeProvider::from_sdk_config("spot", &sdk_config(&moto.url).await, spot_settings.clone())
        .unwrap();
    let outcome = p.create_nodes(&worker_request(&config, 2)).await.unwrap();
    assert!(outcome.shortfall.is_none());
    assert_eq!(
        lifecycles(&moto, &outcome.nodes).await,
        vec![Some("spot".to_string()); 2]
    );

    for code in [
        "InsufficientInstanceCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
    ] {
        let (url, refused) = error_server(code).await;
        let ec2_config =
            aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(NoSpot { url });
        let p = AwsNodeProvider::from_ec2_config(
            &format!("on-demand-{}", code.len()),
            ec2_config,
            spot_settings.clone(),
        )
        .unwrap();
        let outcome = p.create_nodes(&worker_request(&config, 3)).await.unwrap();
        assert!(outcome.shortfall.is_none(), "{code}: {:?}", outcome.shortfall);
        assert_eq!(outcome.nodes.len(), 3, "{code}");
        assert_eq!(
            refused.load(Ordering::SeqCst),
            1,
            "{code}: spot was asked more than once"
        );
        assert_eq!(lifecycles(&moto, &outcome.nodes).await, vec![None; 3], "{code}");
    }
}

/// An x86_64 image owned by the test account (`self`) named `name`: a copy of one of
/// moto's x86_64 AMIs (moto's RegisterImage drops the architecture). moto stamps
/// `CreationDate` to the second.
async fn register_image(moto: &Moto, name: &str) -> String {
    let client = raw_client(moto).await;
    let source = client
        .describe_images()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("architecture")
                .values("x86_64")
                .build(),
        )
        .send()
        .await
        .expect("DescribeImages on moto")
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .expect("moto has an x86_64 AMI");
    client
        .copy_image()
        .source_image_id(source)
        .source_region("us-east-1")
        .name(name)
        .send()
        .await
        .expect("CopyImage on moto")
        .image_id()
        .expect("an image id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launch_without_image_id_uses_the_newest_default_image() {
    let Some(moto) = start_moto() else { return };
    let _other = register_image(&moto, "debian-12-amd64-20990101").await;
    let older = register_image(
        &moto,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newest = register_image(
        &moto,
        "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20250101",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let _wrong_release = register_image(
        &moto,
        "ubuntu/images/hvm-ssd/ubuntu-noble-24.04-amd64-server-20250601",
    )
    .await;
    let p = AwsNodeProvider::from_sdk_config(
        "default-image",
        &sdk_config(&moto.url).await,
        settings(&moto.url).with_image_owners(["self"]),
    )
    .unwrap();
    let config = json!({"InstanceType": "t3.micro"});
    let outcome = p.create_nodes(&worker_request(&config, 1)).await.unwrap();
    assert_eq!(outcome.nodes.len(), 1);
    let images: Vec<String> = raw_client(&moto)
        .await
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    assert_eq!(images, std::slice::from_ref(&newest));
    // Looked up once: a later image is not seen by the same provider.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    register_image(
        &moto,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20260101",
    )
    .await;
    assert_eq!(p.default_image_id().await.unwrap(), newest);
    // An ImageId in node_config wins.
    let explicit = json!({"InstanceType": "t3.micro", "ImageId": older});
    let mut request = worker_request(&explicit, 1);
    request.token = new_launch_token();
    p.create_nodes(&request).await.unwrap();
    let images: BTreeSet<String> = raw_client(&moto)
        .await
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    assert_eq!(images, BTreeSet::from([newest, older]));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_default_image_is_not_found_naming_the_filter() {
    let Some(moto) = start_moto() else { return };
    register_image(&moto, "debian-12-amd64-20990101").await;
    let p = AwsNodeProvider::from_sdk_config(
        "no-image",
        &sdk_config(&moto.url).await,
        settings(&moto.url).with_image_owners(["self"]),
    )
    .unwrap();
    let e = p
        .create_nodes(&worker_request(&json!({"InstanceType": "t3.micro"}), 1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(text.contains(DEFAULT_IMAGE_NAME), "{text}");
    assert!(text.contains("us-east-1"), "{text}");
    assert!(text.contains("node_config.ImageId"), "{text}");
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

/// A provider of `cluster` on moto whose EC2 calls `log` records.
async fn logged_provider(
    moto: &Moto,
    cluster: &str,
    log: &CallLog,
    settings: cloudtik_providers::aws::AwsSettings,
) -> AwsNodeProvider {
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(log.clone());
    AwsNodeProvider::from_ec2_config(cluster, ec2_config, settings).unwrap()
}

/// A worker request as the controller makes it: node kind, node type, launch hash and
/// status `uninitialized`.
fn hashed_request(config: &serde_json::Value, launch_hash: &str, count: usize) -> LaunchRequest {
    let mut request = worker_request(config, count);
    request
        .tags
        .insert(tags::LAUNCH_CONFIG.into(), launch_hash.into());
    request
        .tags
        .insert(tags::NODE_STATUS.into(), "uninitialized".into());
    request
}

/// The state moto reports for each of `ids`, by id.
async fn states(moto: &Moto, ids: &BTreeSet<String>) -> std::collections::BTreeMap<String, String> {
    raw_client(moto)
        .await
        .describe_instances()
        .set_instance_ids(Some(ids.iter().cloned().collect()))
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state().and_then(|s| s.name()).unwrap().as_str().to_string(),
            )
        })
        .collect()
}

/// With `cache_stopped_nodes`, terminate stops instances (listed by a raw describe, not
/// by `list_nodes`); a launch of the same node kind, node type and launch hash starts
/// exactly those instances with no `RunInstances`, tagged with the new token and
/// status; a re-run of that token starts nothing more; another launch hash is not
/// reused; `terminate_stopped_nodes` removes them for good.
#[tokio::test(flavor = "multi_thread")]
async fn cached_stopped_nodes_are_reused_by_the_same_launch_hash() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let p = logged_provider(
        &moto,
        "cache",
        &log,
        settings(&moto.url).with_cache_stopped_nodes(true),
    )
    .await;
    assert!(p.capabilities().stop_nodes);
    let config = node_config(&moto).await;
    let first = p
        .create_nodes(&hashed_request(&config, "hash-a", 2))
        .await
        .unwrap();
    let cached = ids(&first.nodes);
    assert_eq!(cached.len(), 2);
    let mut up = Tags::new();
    up.insert(tags::NODE_STATUS.into(), "up-to-date".into());
    for id in &cached {
        p.set_node_tags(&[TagUpdate::new(id.clone(), up.clone())])
            .await
            .unwrap();
    }

    let ids_vec: Vec<String> = cached.iter().cloned().collect();
    p.terminate_nodes(&ids_vec).await.unwrap();
    assert_eq!(log.count("StopInstances"), 1);
    assert_eq!(log.count("TerminateInstances"), 0);
    p.terminate_nodes(&ids_vec).await.unwrap(); // again: nothing to do, no error
    let raw = states(&moto, &cached).await;
    assert!(raw.values().all(|s| s == "stopped"), "{raw:?}");
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
    assert_eq!(ids(&p.stopped_nodes().await.unwrap()), cached);

    // The same node type and launch hash: the stopped instances are started.
    let run_before = log.count("RunInstances");
    let again = hashed_request(&config, "hash-a", 2);
    let outcome = p.create_nodes(&again).await.unwrap();
    assert!(outcome.shortfall.is_none());
    assert_eq!(ids(&outcome.nodes), cached);
    assert_eq!(
        log.count("RunInstances"),
        run_before,
        "a reuse launched new instances"
    );
    assert_eq!(log.count("StartInstances"), 1);
    let raw = states(&moto, &cached).await;
    assert!(raw.values().all(|s| s == "running" || s == "pending"), "{raw:?}");
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(ids(&listed), cached);
    for node in &listed {
        assert_eq!(node.tag(tags::LAUNCH_TOKEN), Some(again.token.as_str()));
        assert_eq!(node.tag(tags::NODE_STATUS), Some("uninitialized"));
    }
    for node in &outcome.nodes {
        assert_eq!(node.tag(tags::LAUNCH_TOKEN), Some(again.token.as_str()));
    }
    // A re-run of the token starts and creates nothing more.
    let rerun = p.create_nodes(&again).await.unwrap();
    assert_eq!(ids(&rerun.nodes), cached);
    assert_eq!(log.count("StartInstances"), 1);
    assert_eq!(log.count("RunInstances"), run_before);

    // Another launch hash is not reused.
    p.terminate_nodes(&ids_vec).await.unwrap();
    let other = p
        .create_nodes(&hashed_request(&config, "hash-b", 1))
        .await
        .unwrap();
    assert_eq!(other.nodes.len(), 1);
    assert!(ids(&other.nodes).is_disjoint(&cached));
    assert_eq!(log.count("RunInstances"), run_before + 1);
    assert_eq!(log.count("StartInstances"), 1);

    // Removed for good.
    let mut gone = p.terminate_stopped_nodes().await.unwrap();
    gone.sort();
    assert_eq!(gone, ids_vec);
    let raw = states(&moto, &cached).await;
    assert!(
        raw.values().all(|s| s == "terminated" || s == "shutting-down"),
        "{raw:?}"
    );
    assert!(p.stopped_nodes().await.unwrap().is_empty());
}

/// A launch that tagged stopped instances with its token and stopped before
/// `StartInstances` (a crash) is finished by a re-run of the token: the instances
/// carrying the token are started first, and no more than `count` in total.
#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_after_a_crash_before_start_starts_the_tokens_instances() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let p = logged_provider(
        &moto,
        "cache-crash",
        &log,
        settings(&moto.url).with_cache_stopped_nodes(true),
    )
    .await;
    let config = node_config(&moto).await;
    let launched = p
        .create_nodes(&hashed_request(&config, "hash-a", 3))
        .await
        .unwrap();
    let all: Vec<String> = ids(&launched.nodes).into_iter().collect();
    p.terminate_nodes(&all).await.unwrap();

    // The crashed launch had tagged the last instance with its token.
    let request = hashed_request(&config, "hash-a", 1);
    raw_client(&moto)
        .await
        .create_tags()
        .resources(&all[2])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(tags::LAUNCH_TOKEN)
                .value(&request.token)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let outcome = p.create_nodes(&request).await.unwrap();
    assert_eq!(ids(&outcome.nodes), BTreeSet::from([all[2].clone()]));
    for _ in 0..2 {
        let rerun = p.create_nodes(&request).await.unwrap();
        assert_eq!(ids(&rerun.nodes), BTreeSet::from([all[2].clone()]));
    }
    assert_eq!(log.count("StartInstances"), 1);
    assert_eq!(p.list_nodes(&Tags::new()).await.unwrap().len(), 1);
    assert_eq!(p.stopped_nodes().await.unwrap().len(), 2);
}

/// With `cache_stopped_nodes`, spot instances are terminated (EC2 cannot stop one-time
/// spot instances) and on-demand ones stopped.
#[tokio::test(flavor = "multi_thread")]
async fn caching_terminates_spot_instances() {
    let Some(moto) = start_moto() else { return };
    let config = node_config(&moto).await;
    let cache = settings(&moto.url).with_cache_stopped_nodes(true);
    let spot = AwsNodeProvider::from_sdk_config(
        "cache-spot",
        &sdk_config(&moto.url).await,
        cache.clone().with_prefer_spot(true),
    )
    .unwrap();
    let on_demand =
        AwsNodeProvider::from_sdk_config("cache-spot", &sdk_config(&moto.url).await, cache).unwrap();
    let s = spot
        .create_nodes(&hashed_request(&config, "h", 1))
        .await
        .unwrap()
        .nodes;
    let d = on_demand
        .create_nodes(&hashed_request(&config, "h", 1))
        .await
        .unwrap()
        .nodes;
    assert_eq!(lifecycles(&moto, &s).await, vec![Some("spot".to_string())]);
    assert_eq!(lifecycles(&moto, &d).await, vec![None]);
    on_demand
        .terminate_nodes(&[s[0].id.clone(), d[0].id.clone()])
        .await
        .unwrap();
    let raw = states(&moto, &BTreeSet::from([s[0].id.clone(), d[0].id.clone()])).await;
    assert!(
        matches!(raw[&s[0].id].as_str(), "terminated" | "shutting-down"),
        "{raw:?}"
    );
    assert_eq!(raw[&d[0].id], "stopped", "{raw:?}");
}

/// `node_config.InstanceMarketOptions` is sent with `RunInstances` (moto records the
/// instance as spot); a spot shortage of such a launch does not fall back to on-demand.
#[tokio::test(flavor = "multi_thread")]
async fn node_config_spot_market_options_are_sent_and_do_not_fall_back() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let p = logged_provider(&moto, "explicit-spot", &log, settings(&moto.url)).await;
    let mut config = node_config(&moto).await;
    config["InstanceMarketOptions"] = json!({
        "MarketType": "spot",
        "SpotOptions": {"MaxPrice": "0.05", "SpotInstanceType": "one-time"}
    });
    let outcome = p.create_nodes(&worker_request(&config, 1)).await.unwrap();
    assert_eq!(
        lifecycles(&moto, &outcome.nodes).await,
        vec![Some("spot".to_string())]
    );
    let body = &log.bodies("RunInstances")[0];
    for kv in [
        "InstanceMarketOptions.MarketType=spot",
        "InstanceMarketOptions.SpotOptions.MaxPrice=0.05",
        "InstanceMarketOptions.SpotOptions.SpotInstanceType=one-time",
    ] {
        assert!(body.split('&').any(|x| x == kv), "{kv} not in {body}");
    }

    // No spot capacity: the launch fails, nothing is launched on-demand.
    let (url, refused) = error_server("InsufficientInstanceCapacity").await;
    let ec2_config =
        aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(NoSpot { url });
    let p = AwsNodeProvider::from_ec2_config(
        "explicit-spot-short",
        ec2_config,
        settings(&moto.url).with_prefer_spot(true),
    )
    .unwrap();
    let e = p.create_nodes(&worker_request(&config, 2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Capacity, "{e}");
    assert_eq!(e.context_value("market"), Some("spot"));
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert!(p.list_nodes(&Tags::new()).await.unwrap().is_empty());
}

/// After a spot shortage of an instance type, `prefer_spot` launches of that type go
/// on-demand without asking for spot, for `spot_backoff`.
#[tokio::test(flavor = "multi_thread")]
async fn a_spot_shortage_is_remembered_for_the_backoff() {
    let Some(moto) = start_moto() else { return };
    let config = node_config(&moto).await;
    for (backoff, spot_asks) in [
        (std::time::Duration::from_secs(300), 1),
        (std::time::Duration::ZERO, 3),
    ] {
        let (url, refused) = error_server("InsufficientInstanceCapacity").await;
        let ec2_config =
            aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(NoSpot { url });
        let p = AwsNodeProvider::from_ec2_config(
            &format!("spot-memory-{}", backoff.as_secs()),
            ec2_config,
            settings(&moto.url)
                .with_prefer_spot(true)
                .with_spot_backoff(backoff),
        )
        .unwrap();
        for _ in 0..3 {
            let outcome = p.create_nodes(&worker_request(&config, 1)).await.unwrap();
            assert_eq!(lifecycles(&moto, &outcome.nodes).await, vec![None]);
        }
        assert_eq!(
            refused.load(Ordering::SeqCst),
            spot_asks,
            "backoff {backoff:?}: spot asked a wrong number of times"
        );
    }
}

/// 50 concurrent `set_node_tags` calls with the same tag on nodes the provider listed
/// make one `CreateTags` and no `DescribeInstances`.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_tag_updates_make_one_create_tags() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let p = logged_provider(&moto, "coalesce", &log, settings(&moto.url)).await;
    let config = node_config(&moto).await;
    let nodes = p.create_nodes(&worker_request(&config, 50)).await.unwrap().nodes;
    assert_eq!(nodes.len(), 50);
    p.list_nodes(&Tags::new()).await.unwrap();
    let (tags_before, describes_before) = (log.count("CreateTags"), log.count("DescribeInstances"));
    let mut calls = tokio::task::JoinSet::new();
    for node in &nodes {
        let p = p.clone();
        let id = node.id.clone();
        calls.spawn(async move {
            let mut t = Tags::new();
            t.insert(tags::NODE_STATUS.into(), "up-to-date".into());
            p.set_node_tags(&[TagUpdate::new(id, t)]).await
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(log.count("CreateTags") - tags_before, 1);
    assert_eq!(log.count("DescribeInstances") - describes_before, 0);
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert_eq!(listed.len(), 50);
    assert!(
        listed
            .iter()
            .all(|n| n.tag(tags::NODE_STATUS) == Some("up-to-date"))
    );
}

/// In a coalesced batch, a caller naming a missing node fails with `NotFound` naming
/// it, and only that caller; a fresh provider (no listing yet) describes the ids once.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_node_fails_only_its_caller_in_a_batch() {
    let Some(moto) = start_moto() else { return };
    let log = CallLog::default();
    let launcher = provider(&moto, "coalesce-missing").await;
    let config = node_config(&moto).await;
    let nodes = launcher
        .create_nodes(&worker_request(&config, 5))
        .await
        .unwrap()
        .nodes;
    let p = logged_provider(&moto, "coalesce-missing", &log, settings(&moto.url)).await;
    let missing = "i-0123456789abcdef0".to_string();
    let mut targets: Vec<String> = ids(&nodes).into_iter().collect();
    targets.push(missing.clone());
    let mut calls = tokio::task::JoinSet::new();
    for id in targets {
        let p = p.clone();
        calls.spawn(async move {
            let mut t = Tags::new();
            t.insert(tags::NODE_STATUS.into(), "setting-up".into());
            let r = p.set_node_tags(&[TagUpdate::new(id.clone(), t)]).await;
            (id, r)
        });
    }
    while let Some(r) = calls.join_next().await {
        let (id, r) = r.unwrap();
        if id == missing {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains(&missing), "{e}");
        } else {
            r.unwrap();
        }
    }
    assert_eq!(log.count("CreateTags"), 1);
    assert_eq!(log.count("DescribeInstances"), 1);
    let listed = p.list_nodes(&Tags::new()).await.unwrap();
    assert!(
        listed
            .iter()
            .all(|n| n.tag(tags::NODE_STATUS) == Some("setting-up"))
    );
}

/// `node_config.BlockDeviceMappings` as CloudTik's templates write it (a 100 GiB gp3
/// root volume) reaches `RunInstances`: the instance's volume has that size and type.
#[tokio::test(flavor = "multi_thread")]
async fn block_device_mappings_size_the_root_volume() {
    let Some(moto) = start_moto() else { return };
    let p = provider(&moto, "volumes").await;
    let mut config = node_config(&moto).await;
    config["BlockDeviceMappings"] = json!([{
        "DeviceName": "/dev/sda1",
        "Ebs": {"VolumeSize": 100, "VolumeType": "gp3", "DeleteOnTermination": true}
    }]);
    let outcome = p.create_nodes(&worker_request(&config, 1)).await.unwrap();
    let ec2 = raw_client(&moto).await;
    let described = ec2
        .describe_instances()
        .instance_ids(outcome.nodes[0].id.clone())
        .send()
        .await
        .unwrap();
    let instance = &described.reservations()[0].instances()[0];
    let volume_id = instance
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some("/dev/sda1"))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_id())
        .expect("a volume at /dev/sda1")
        .to_string();
    let volumes = ec2.describe_volumes().volume_ids(volume_id).send().await.unwrap();
    let volume = &volumes.volumes()[0];
    assert_eq!(volume.size(), Some(100));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
}
