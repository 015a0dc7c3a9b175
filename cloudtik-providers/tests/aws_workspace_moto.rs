//! The AWS workspace provider against moto's EC2 server (harness: `tests/moto`, see the
//! docs of `aws_moto.rs`; with `CI=true` a missing moto fails instead of skipping).
#![cfg(feature = "aws")]

mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use aws_sdk_ec2::types::{Filter, IpPermission, ResourceType, Tag, TagSpecification};
use cloudtik_core::node::tags;
use cloudtik_core::{
    DeleteWorkspaceOptions, ErrorKind, LaunchRequest, NodeProvider, Tags, WorkspaceExistence,
    WorkspaceProvider,
};
use cloudtik_providers::aws::{
    AwsNodeProvider, AwsWorkspaceOptions, AwsWorkspaceProvider, VpcPeering, WorkspaceVpc,
};
use moto::{Moto, free_port, raw_client, sdk_config, settings, start_moto};
use serde_json::json;

const WS_TAG: &str = tags::WORKSPACE_NAME;

fn options() -> AwsWorkspaceOptions {
    AwsWorkspaceOptions::default()
        .with_timeouts(
            Duration::from_secs(20),
            Duration::from_secs(2),
            Duration::from_millis(20),
        )
        .with_iam_propagation_wait(Duration::ZERO)
}

async fn workspace(moto: &Moto, name: &str, options: AwsWorkspaceOptions) -> AwsWorkspaceProvider {
    AwsWorkspaceProvider::from_sdk_config(name, &sdk_config(&moto.url).await, settings(&moto.url), options)
        .unwrap()
}

async fn s3_config(moto: &Moto) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(&sdk_config(&moto.url).await)
}

/// An S3 client on moto (buckets by path).
async fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3_config(moto).await.force_path_style(true).build())
}

fn ws_filter(ws: &str) -> Filter {
    Filter::builder().name(format!("tag:{WS_TAG}")).values(ws).build()
}

fn has_ws_tag(tags: &[Tag], ws: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(WS_TAG) && t.value() == Some(ws))
}

/// The live resources that carry the workspace tag, by kind (listed with a raw client,
/// not the provider; NAT gateways and endpoints that are deleted are not live).
async fn inventory(ec2: &Client, ws: &str) -> BTreeMap<&'static str, Vec<String>> {
    let mut all = BTreeMap::new();
    let vpcs = ec2.describe_vpcs().filters(ws_filter(ws)).send().await.unwrap();
    all.insert(
        "vpc",
        vpcs.vpcs()
            .iter()
            .filter(|v| has_ws_tag(v.tags(), ws))
            .filter_map(|v| v.vpc_id())
            .map(String::from)
            .collect(),
    );
    let subnets = ec2
        .describe_subnets()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "subnet",
        subnets
            .subnets()
            .iter()
            .filter(|s| has_ws_tag(s.tags(), ws))
            .filter_map(|s| s.subnet_id())
            .map(String::from)
            .collect(),
    );
    let igws = ec2
        .describe_internet_gateways()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "internet-gateway",
        igws.internet_gateways()
            .iter()
            .filter(|g| has_ws_tag(g.tags(), ws))
            .filter_map(|g| g.internet_gateway_id())
            .map(String::from)
            .collect(),
    );
    let tables = ec2
        .describe_route_tables()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "route-table",
        tables
            .route_tables()
            .iter()
            .filter(|t| has_ws_tag(t.tags(), ws))
            .filter_map(|t| t.route_table_id())
            .map(String::from)
            .collect(),
    );
    let addresses = ec2
        .describe_addresses()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "elastic-ip",
        addresses
            .addresses()
            .iter()
            .filter(|a| has_ws_tag(a.tags(), ws))
            .filter_map(|a| a.allocation_id())
            .map(String::from)
            .collect(),
    );
    let nats = ec2.describe_nat_gateways().send().await.unwrap();
    all.insert(
        "nat-gateway",
        nats.nat_gateways()
            .iter()
            .filter(|n| has_ws_tag(n.tags(), ws))
            .filter(|n| n.state().is_some_and(|s| s.as_str() != "deleted"))
            .filter_map(|n| n.nat_gateway_id())
            .map(String::from)
            .collect(),
    );
    let endpoints = ec2
        .describe_vpc_endpoints()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "vpc-endpoint",
        endpoints
            .vpc_endpoints()
            .iter()
            .filter(|e| has_ws_tag(e.tags(), ws))
            .filter(|e| {
                e.state()
                    .is_some_and(|s| !s.as_str().eq_ignore_ascii_case("deleted"))
            })
            .filter_map(|e| e.vpc_endpoint_id())
            .map(String::from)
            .collect(),
    );
    let groups = ec2
        .describe_security_groups()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    all.insert(
        "security-group",
        groups
            .security_groups()
            .iter()
            .filter(|g| has_ws_tag(g.tags(), ws))
            .filter_map(|g| g.group_id())
            .map(String::from)
            .collect(),
    );
    all
}

/// The workspace's IAM roles and instance profiles that exist, by name.
async fn iam_inventory(moto: &Moto, ws: &str) -> BTreeSet<String> {
    let iam = aws_sdk_iam::Client::new(&sdk_config(&moto.url).await);
    let mut found = BTreeSet::new();
    for kind in ["head", "worker"] {
        let role = format!("cloudtik-{ws}-{kind}-role");
        if iam.get_role().role_name(&role).send().await.is_ok() {
            found.insert(role);
        }
        let profile = format!("cloudtik-{ws}-{kind}-profile");
        if iam
            .get_instance_profile()
            .instance_profile_name(&profile)
            .send()
            .await
            .is_ok()
        {
            found.insert(profile);
        }
    }
    found
}

fn counts(inventory: &BTreeMap<&'static str, Vec<String>>) -> BTreeMap<&'static str, usize> {
    inventory.iter().map(|(k, v)| (*k, v.len())).collect()
}

/// The counts of a complete workspace with a created VPC, one public and two private
/// subnets.
fn complete_counts() -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("vpc", 1),
        ("subnet", 3),
        ("internet-gateway", 1),
        ("route-table", 2),
        ("elastic-ip", 1),
        ("nat-gateway", 1),
        ("vpc-endpoint", 1),
        ("security-group", 1),
    ])
}

fn assert_empty(inventory: &BTreeMap<&'static str, Vec<String>>) {
    for (kind, ids) in inventory {
        assert!(ids.is_empty(), "{kind} left behind after delete: {ids:?}");
    }
}

/// The ingress of a group as (protocol, port, source) triples.
fn ingress(permissions: &[IpPermission]) -> BTreeSet<(String, Option<i32>, String)> {
    let mut out = BTreeSet::new();
    for p in permissions {
        let proto = p.ip_protocol().unwrap_or_default().to_string();
        let port = if proto == "-1" { None } else { p.from_port() };
        for r in p.ip_ranges() {
            out.insert((proto.clone(), port, r.cidr_ip().unwrap_or_default().to_string()));
        }
        for g in p.user_id_group_pairs() {
            out.insert((proto.clone(), port, g.group_id().unwrap_or_default().to_string()));
        }
    }
    out
}

async fn group_ingress(ec2: &Client, id: &str) -> BTreeSet<(String, Option<i32>, String)> {
    let groups = ec2.describe_security_groups().group_ids(id).send().await.unwrap();
    ingress(groups.security_groups()[0].ip_permissions())
}

fn ssh(source: &str) -> (String, Option<i32>, String) {
    ("tcp".to_string(), Some(22), source.to_string())
}

fn str_at<'a>(info: &'a serde_json::Value, key: &str) -> &'a str {
    info[key]
        .as_str()
        .unwrap_or_else(|| panic!("info has no {key}: {info:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn full_lifecycle_creates_updates_and_deletes_everything() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let ws = "lifecycle";
    let p = workspace(
        &moto,
        ws,
        options()
            .with_allowed_ssh_sources(vec!["203.0.113.0/24".into()])
            .with_managed_cloud_storage(true),
    )
    .await;

    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert_eq!(p.workspace_info().await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        p.update_workspace().await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let created = inventory(&ec2, ws).await;
    assert_eq!(counts(&created), complete_counts());

    // Info names everything, and the pieces are wired together.
    let info = p.workspace_info().await.unwrap();
    let vpc = str_at(&info, "vpc_id");
    assert_eq!(created["vpc"], vec![vpc.to_string()]);
    assert_eq!(str_at(&info, "vpc_cidr"), "10.0.0.0/16");
    assert_eq!(info["working_vpc"], json!(false));
    assert_eq!(info["missing"], json!([]));
    let public = info["public_subnets"].as_array().unwrap();
    let private = info["private_subnets"].as_array().unwrap();
    assert_eq!((public.len(), private.len()), (1, 2));
    let zones: BTreeSet<&str> = private
        .iter()
        .map(|s| s["availability_zone"].as_str().unwrap())
        .collect();
    assert_eq!(
        zones.len(),
        2,
        "private subnets are not spread across zones: {info:#}"
    );
    let cidrs: BTreeSet<&str> = public
        .iter()
        .chain(private)
        .map(|s| s["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs.len(), 3);
    let igw = str_at(&info, "internet_gateway_id");
    let nat = str_at(&info, "nat_gateway_id");
    let sg = str_at(&info, "security_group_id").to_string();
    assert_eq!(created["security-group"], vec![sg.clone()]);
    assert_eq!(created["nat-gateway"], vec![nat.to_string()]);
    assert_eq!(
        created["vpc-endpoint"],
        vec![str_at(&info, "s3_endpoint_id").to_string()]
    );

    let tables = ec2
        .describe_route_tables()
        .filters(ws_filter(ws))
        .send()
        .await
        .unwrap();
    let route_of = |id: &str| {
        let t = tables
            .route_tables()
            .iter()
            .find(|t| t.route_table_id() == Some(id))
            .unwrap();
        let default = t
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .unwrap();
        let subnets: BTreeSet<String> = t
            .associations()
            .iter()
            .filter_map(|a| a.subnet_id())
            .map(String::from)
            .collect();
        (
            default
                .gateway_id()
                .or(default.nat_gateway_id())
                .unwrap()
                .to_string(),
            subnets,
        )
    };
    let (to, subnets) = route_of(str_at(&info, "public_route_table_id"));
    assert_eq!(to, igw);
    assert_eq!(
        subnets,
        BTreeSet::from([public[0]["id"].as_str().unwrap().to_string()])
    );
    let (to, subnets) = route_of(str_at(&info, "private_route_table_id"));
    assert_eq!(to, nat);
    assert_eq!(subnets.len(), 2);
    let igws = ec2
        .describe_internet_gateways()
        .internet_gateway_ids(igw)
        .send()
        .await
        .unwrap();
    assert_eq!(igws.internet_gateways()[0].attachments()[0].vpc_id(), Some(vpc));
    let subnet = ec2
        .describe_subnets()
        .subnet_ids(public[0]["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(subnet.subnets()[0].map_public_ip_on_launch(), Some(true));

    assert_eq!(
        group_ingress(&ec2, &sg).await,
        BTreeSet::from([
            ("-1".to_string(), None, sg.clone()),
            ssh("10.0.0.0/16"),
            ssh("203.0.113.0/24"),
        ])
    );

    // The roles, in their instance profiles, with CloudTik's policies.
    assert_eq!(iam_inventory(&moto, ws).await.len(), 4);
    let iam = aws_sdk_iam::Client::new(&sdk_config(&moto.url).await);
    let profile = iam
        .get_instance_profile()
        .instance_profile_name("cloudtik-lifecycle-head-profile")
        .send()
        .await
        .unwrap();
    let roles: Vec<&str> = profile
        .instance_profile()
        .unwrap()
        .roles()
        .iter()
        .map(|r| r.role_name())
        .collect();
    assert_eq!(roles, vec!["cloudtik-lifecycle-head-role"]);
    assert_eq!(
        info["head_instance_profile_arn"].as_str(),
        Some(profile.instance_profile().unwrap().arn())
    );
    let attached = iam
        .list_attached_role_policies()
        .role_name("cloudtik-lifecycle-worker-role")
        .send()
        .await
        .unwrap();
    let policies: BTreeSet<&str> = attached
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_name())
        .collect();
    assert_eq!(
        policies,
        BTreeSet::from([
            "AmazonEC2ReadOnlyAccess",
            "AmazonS3FullAccess",
            "ElasticLoadBalancingFullAccess"
        ])
    );

    // The managed bucket, tagged and encrypted.
    let bucket = "cloudtik-lifecycle-us-east-1-default";
    assert_eq!(info["managed_cloud_storage"]["bucket"], json!(bucket));
    assert_eq!(
        info["managed_cloud_storage"]["uri"],
        json!(format!("s3://{bucket}"))
    );
    let s3 = s3(&moto).await;
    let tagging = s3.get_bucket_tagging().bucket(bucket).send().await.unwrap();
    assert!(
        tagging
            .tag_set()
            .iter()
            .any(|t| t.key() == WS_TAG && t.value() == ws)
    );
    let encryption = s3.get_bucket_encryption().bucket(bucket).send().await.unwrap();
    let rule = &encryption.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm()
            .as_str(),
        "AES256"
    );
    s3.put_object()
        .bucket(bucket)
        .key("data/part-0")
        .body(b"some data".to_vec().into())
        .send()
        .await
        .unwrap();

    // Create again: nothing new.
    p.create_workspace().await.unwrap();
    assert_eq!(inventory(&ec2, ws).await, created);

    // Update with other SSH sources: only the firewall changes.
    let changed = workspace(
        &moto,
        ws,
        options().with_allowed_ssh_sources(vec!["198.51.100.7/32".into()]),
    )
    .await;
    changed.update_workspace().await.unwrap();
    assert_eq!(
        group_ingress(&ec2, &sg).await,
        BTreeSet::from([
            ("-1".to_string(), None, sg.clone()),
            ssh("10.0.0.0/16"),
            ssh("198.51.100.7/32"),
        ])
    );
    changed.update_workspace().await.unwrap();
    assert_eq!(
        changed.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    assert_eq!(inventory(&ec2, ws).await, created);

    // A running cluster in the workspace blocks delete, and so do its stopped
    // instances (cache_stopped_nodes) until they are terminated.
    assert!(p.list_clusters().await.unwrap().is_empty());
    let nodes = AwsNodeProvider::from_sdk_config(
        "in-ws",
        &sdk_config(&moto.url).await,
        settings(&moto.url).with_cache_stopped_nodes(true),
    )
    .unwrap();
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let config = json!({
        "InstanceType": "t3.micro",
        "ImageId": image,
        "SubnetIds": [private[0]["id"]],
        "SecurityGroupIds": [sg],
    });
    let launched = nodes
        .create_nodes(&LaunchRequest::new("worker.default", config, Tags::new(), 1))
        .await
        .unwrap();
    assert_eq!(p.list_clusters().await.unwrap(), vec!["in-ws".to_string()]);
    let e = p
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("in-ws"), "{e}");
    assert_eq!(
        inventory(&ec2, ws).await,
        created,
        "a refused delete deleted something"
    );
    let ids: Vec<String> = launched.nodes.iter().map(|n| n.id.clone()).collect();
    nodes.terminate_nodes(&ids).await.unwrap();
    let e = p
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let text = e.to_string();
    for part in [
        "stopped instances",
        ids[0].as_str(),
        "cluster in-ws",
        "terminate_stopped_nodes",
    ] {
        assert!(text.contains(part), "{part} not in {text}");
    }
    assert_eq!(nodes.terminate_stopped_nodes().await.unwrap(), ids);

    // Without delete_managed_storage the bucket (and its data) stays.
    p.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_empty(&inventory(&ec2, ws).await);
    match p.workspace_existence().await.unwrap() {
        WorkspaceExistence::Incomplete { missing } => {
            assert!(!missing.contains(&"managed-storage".to_string()))
        }
        other => panic!("a workspace with only its bucket left is {other:?}"),
    }
    s3.head_object()
        .bucket(bucket)
        .key("data/part-0")
        .send()
        .await
        .unwrap();
    p.delete_workspace(DeleteWorkspaceOptions::default().with_delete_managed_storage(true))
        .await
        .unwrap();
    assert!(
        s3.head_bucket().bucket(bucket).send().await.is_err(),
        "the bucket is still there"
    );
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert_empty(&inventory(&ec2, ws).await);
    let vpcs = ec2.describe_vpcs().send().await.unwrap();
    assert!(
        vpcs.vpcs().iter().all(|v| v.vpc_id() != Some(vpc)),
        "the VPC is still there"
    );
    let eips = ec2.describe_addresses().send().await.unwrap();
    assert!(eips.addresses().is_empty(), "an elastic IP is still allocated");
    assert!(
        iam_inventory(&moto, ws).await.is_empty(),
        "IAM roles or profiles left behind"
    );
    // Deleting again succeeds.
    p.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
}

/// Sends the named EC2 action to a closed port while armed.
#[derive(Debug, Clone)]
struct FailAction {
    action: &'static str,
    armed: Arc<AtomicBool>,
    dead_url: String,
}

impl Intercept for FailAction {
    fn name(&self) -> &'static str {
        "FailAction"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let wanted = format!("Action={}&", self.action);
        let hit = context
            .request()
            .body()
            .bytes()
            .is_some_and(|b| b.windows(wanted.len()).any(|w| w == wanted.as_bytes()));
        if hit && self.armed.load(Ordering::SeqCst) {
            context
                .request_mut()
                .set_uri(self.dead_url.as_str())
                .map_err(|e| BoxError::from(format!("bad URI: {e}")))?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_create_is_incomplete_and_a_rerun_completes_it() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let ws = "interrupted";
    let fault = FailAction {
        action: "CreateNatGateway",
        armed: Arc::new(AtomicBool::new(true)),
        dead_url: format!("http://127.0.0.1:{}/", free_port()),
    };
    let builder = aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(fault.clone());
    let iam = aws_sdk_iam::config::Builder::from(&sdk_config(&moto.url).await);
    let p = AwsWorkspaceProvider::from_client_configs(
        ws,
        builder,
        iam,
        s3_config(&moto).await,
        settings(&moto.url),
        options(),
    )
    .unwrap();

    let e = p.create_workspace().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert_eq!(e.operation(), Some("create_workspace"));
    assert_eq!(e.context_value("step"), Some("nat-gateway"), "{e}");
    assert_eq!(
        e.context_value("resource"),
        Some("cloudtik-interrupted-nat-gateway"),
        "{e}"
    );
    assert_eq!(e.context_value("call"), Some("CreateNatGateway"), "{e}");
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: vec![
                "nat-gateway".into(),
                "private-route-table".into(),
                "s3-endpoint".into(),
                "security-group".into(),
                "head-role".into(),
                "worker-role".into(),
            ]
        }
    );
    let partial = inventory(&ec2, ws).await;
    assert_eq!(partial["vpc"].len(), 1);
    assert_eq!(partial["subnet"].len(), 3);
    assert_eq!(partial["elastic-ip"].len(), 1);
    assert!(partial["nat-gateway"].is_empty());
    let info = p.workspace_info().await.unwrap();
    assert_eq!(info["nat_gateway_id"], json!(null));
    assert_eq!(info["missing"][0], json!("nat-gateway"));

    // The re-run continues where the first stopped, without duplicates.
    fault.armed.store(false, Ordering::SeqCst);
    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let complete = inventory(&ec2, ws).await;
    assert_eq!(counts(&complete), complete_counts());
    for kind in ["vpc", "subnet", "internet-gateway", "elastic-ip"] {
        assert_eq!(complete[kind], partial[kind], "{kind} was created again");
    }

    // A piece deleted behind the workspace's back is missing, and create puts it back.
    let endpoint = complete["vpc-endpoint"][0].clone();
    ec2.delete_vpc_endpoints()
        .vpc_endpoint_ids(&endpoint)
        .send()
        .await
        .unwrap();
    let group = complete["security-group"][0].clone();
    ec2.delete_security_group().group_id(&group).send().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: vec!["s3-endpoint".into(), "security-group".into()]
        }
    );
    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let repaired = inventory(&ec2, ws).await;
    assert_eq!(counts(&repaired), complete_counts());
    assert_ne!(repaired["vpc-endpoint"], complete["vpc-endpoint"]);
    assert_eq!(repaired["nat-gateway"], complete["nat-gateway"]);

    // A delete that fails half-way can be run again.
    let stop = FailAction {
        action: "DeleteInternetGateway",
        armed: Arc::new(AtomicBool::new(true)),
        dead_url: fault.dead_url.clone(),
    };
    let builder = aws_sdk_ec2::config::Builder::from(&sdk_config(&moto.url).await).interceptor(stop.clone());
    let iam = aws_sdk_iam::config::Builder::from(&sdk_config(&moto.url).await);
    let q = AwsWorkspaceProvider::from_client_configs(
        ws,
        builder,
        iam,
        s3_config(&moto).await,
        settings(&moto.url),
        options(),
    )
    .unwrap();
    let e = q
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.context_value("step"), Some("internet-gateway"), "{e}");
    match q.workspace_existence().await.unwrap() {
        WorkspaceExistence::Incomplete { missing } => assert!(missing.contains(&"nat-gateway".to_string())),
        other => panic!("half-deleted workspace is {other:?}"),
    }
    stop.armed.store(false, Ordering::SeqCst);
    q.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        q.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert_empty(&inventory(&ec2, ws).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_working_vpc_is_used_and_kept() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let ws = "working";
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.1.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(Tag::builder().key("Name").value("theirs").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let their_subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.1.0.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    let their_subnet = their_subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let their_igw = ec2.create_internet_gateway().send().await.unwrap();
    let their_igw = their_igw
        .internet_gateway()
        .unwrap()
        .internet_gateway_id()
        .unwrap()
        .to_string();
    ec2.attach_internet_gateway()
        .internet_gateway_id(&their_igw)
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();

    let p = workspace(
        &moto,
        ws,
        options()
            .with_vpc(WorkspaceVpc::Working {
                vpc_id: Some(vpc_id.clone()),
            })
            .with_availability_zones(vec!["us-east-1b".into(), "us-east-1c".into()]),
    )
    .await;
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let info = p.workspace_info().await.unwrap();
    assert_eq!(str_at(&info, "vpc_id"), vpc_id);
    assert_eq!(info["working_vpc"], json!(true));
    assert_eq!(
        str_at(&info, "internet_gateway_id"),
        their_igw,
        "the VPC's own gateway is reused"
    );
    let subnets: Vec<&serde_json::Value> = info["public_subnets"]
        .as_array()
        .unwrap()
        .iter()
        .chain(info["private_subnets"].as_array().unwrap())
        .collect();
    for s in &subnets {
        assert_ne!(
            s["cidr"],
            json!("10.1.0.0/24"),
            "a workspace subnet overlaps an existing one"
        );
        assert!(["us-east-1b", "us-east-1c"].contains(&s["availability_zone"].as_str().unwrap()));
    }
    let made = inventory(&ec2, ws).await;
    assert_eq!(made["vpc"], vec![vpc_id.clone()]);
    assert!(made["internet-gateway"].is_empty());
    p.create_workspace().await.unwrap();
    assert_eq!(inventory(&ec2, ws).await, made);

    // An existing machine in the working VPC (outside the workspace's subnets) does not
    // block delete.
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    ec2.run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .subnet_id(&their_subnet)
        .send()
        .await
        .unwrap();
    assert!(p.list_clusters().await.unwrap().is_empty());

    p.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert_empty(&inventory(&ec2, ws).await);
    assert!(iam_inventory(&moto, ws).await.is_empty());
    let left = ec2.describe_vpcs().vpc_ids(&vpc_id).send().await.unwrap();
    let tags = left.vpcs()[0].tags();
    assert!(!has_ws_tag(tags, ws), "the working VPC keeps the workspace tag");
    assert!(
        tags.iter()
            .any(|t| t.key() == Some("Name") && t.value() == Some("theirs"))
    );
    ec2.describe_subnets()
        .subnet_ids(&their_subnet)
        .send()
        .await
        .unwrap();
    let igw = ec2
        .describe_internet_gateways()
        .internet_gateway_ids(&their_igw)
        .send()
        .await
        .unwrap();
    assert_eq!(
        igw.internet_gateways()[0].attachments()[0].vpc_id(),
        Some(vpc_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_configs_are_checked_before_any_call() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let sdk = sdk_config(&url).await;
    let long = "w".repeat(32);
    let e = AwsWorkspaceProvider::from_sdk_config(&long, &sdk, settings(&url), options()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let bad_cidr = options().with_vpc(WorkspaceVpc::Create {
        cidr: "10.0.0.0/28".into(),
    });
    let e = AwsWorkspaceProvider::from_sdk_config("ok", &sdk, settings(&url), bad_cidr).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
}

/// A "working VPC" (10.0.0.0/16) as the machine running the CLI would sit in: its main
/// route table, and a subnet with a route table of its own. Returns the VPC's id and
/// its route tables' ids.
async fn working_vpc(ec2: &Client) -> (String, BTreeSet<String>) {
    let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .unwrap();
    let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let table = ec2.create_route_table().vpc_id(&vpc).send().await.unwrap();
    let table = table.route_table().unwrap().route_table_id().unwrap().to_string();
    ec2.associate_route_table()
        .route_table_id(&table)
        .subnet_id(&subnet)
        .send()
        .await
        .unwrap();
    let tables = vpc_tables(ec2, &vpc).await;
    assert_eq!(
        tables.len(),
        2,
        "the working VPC has a main and a subnet route table"
    );
    (vpc, tables.into_keys().collect())
}

/// The route tables of a VPC: id -> routes as (destination, peering connection).
async fn vpc_tables(ec2: &Client, vpc: &str) -> BTreeMap<String, BTreeSet<(String, Option<String>)>> {
    let tables = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .send()
        .await
        .unwrap();
    tables
        .route_tables()
        .iter()
        .map(|t| {
            let routes = t
                .routes()
                .iter()
                .filter_map(|r| {
                    r.destination_cidr_block()
                        .map(|d| (d.to_string(), r.vpc_peering_connection_id().map(String::from)))
                })
                .collect();
            (t.route_table_id().unwrap().to_string(), routes)
        })
        .collect()
}

/// The workspace's peering connections that are not deleted: id -> status (listed with
/// a raw client; moto ignores the filters of this call, so the tag is checked here).
async fn live_peerings(ec2: &Client, ws: &str) -> BTreeMap<String, String> {
    let all = ec2.describe_vpc_peering_connections().send().await.unwrap();
    all.vpc_peering_connections()
        .iter()
        .filter(|p| has_ws_tag(p.tags(), ws))
        .map(|p| {
            let status = p.status().and_then(|s| s.code()).unwrap().as_str().to_string();
            (p.vpc_peering_connection_id().unwrap().to_string(), status)
        })
        .filter(|(_, status)| status != "deleted")
        .collect()
}

/// Workspace options from a `provider` section with `use_internal_ips` and
/// `use_working_vpc: false` (plus `extra` keys), as a workspace config gives them.
fn peering_options(working: &str, extra: serde_json::Value) -> AwsWorkspaceOptions {
    let mut provider = json!({
        "region": "us-east-1",
        "use_internal_ips": true,
        "use_working_vpc": false,
        "working_vpc_id": working,
    });
    provider
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let config: cloudtik_providers::provider_config::AwsProviderConfig =
        serde_json::from_value(provider).unwrap();
    AwsWorkspaceOptions::from_provider_config(&config)
        .with_timeouts(
            Duration::from_secs(20),
            Duration::from_secs(2),
            Duration::from_millis(20),
        )
        .with_iam_propagation_wait(Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_ips_without_a_working_vpc_peer_the_workspace_with_it() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let ws = "peered";
    let (working, working_tables) = working_vpc(&ec2).await;
    let p = workspace(&moto, ws, peering_options(&working, json!({}))).await;
    assert_eq!(p.options().peering, Some(VpcPeering::new(Some(working.clone()))));

    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let created = inventory(&ec2, ws).await;
    assert_eq!(counts(&created), complete_counts());

    // The workspace's VPC does not overlap the working VPC.
    let info = p.workspace_info().await.unwrap();
    let vpc = str_at(&info, "vpc_id").to_string();
    assert_eq!(str_at(&info, "vpc_cidr"), "10.1.0.0/16");

    // One active peering connection from the working VPC to the workspace's.
    let peerings = live_peerings(&ec2, ws).await;
    assert_eq!(peerings.values().collect::<Vec<_>>(), vec!["active"]);
    let pcx = peerings.keys().next().unwrap().clone();
    let described = ec2
        .describe_vpc_peering_connections()
        .vpc_peering_connection_ids(&pcx)
        .send()
        .await
        .unwrap();
    let peering = &described.vpc_peering_connections()[0];
    assert_eq!(
        peering.requester_vpc_info().unwrap().vpc_id(),
        Some(working.as_str())
    );
    assert_eq!(peering.accepter_vpc_info().unwrap().vpc_id(), Some(vpc.as_str()));
    assert!(
        peering
            .tags()
            .iter()
            .any(|t| t.key() == Some("Name") && t.value() == Some("cloudtik-peered-vpc-peering-connection"))
    );
    assert_eq!(
        info["vpc_peering"],
        json!({
            "id": pcx,
            "name": "cloudtik-peered-vpc-peering-connection",
            "status": "active",
            "working_vpc_id": working,
            "working_vpc_cidr": "10.0.0.0/16",
        })
    );

    // Routes through it on both sides.
    let to_working = ("10.0.0.0/16".to_string(), Some(pcx.clone()));
    let to_workspace = ("10.1.0.0/16".to_string(), Some(pcx.clone()));
    let ws_tables = vpc_tables(&ec2, &vpc).await;
    for key in ["public_route_table_id", "private_route_table_id"] {
        let routes = &ws_tables[str_at(&info, key)];
        assert!(
            routes.contains(&to_working),
            "{key} has no route to the working VPC: {routes:?}"
        );
    }
    let tables = vpc_tables(&ec2, &working).await;
    assert_eq!(tables.keys().cloned().collect::<BTreeSet<_>>(), working_tables);
    for (id, routes) in &tables {
        assert!(
            routes.contains(&to_workspace),
            "working table {id} has no route to the workspace: {routes:?}"
        );
    }

    // The security group lets SSH in from the working VPC.
    let sg = str_at(&info, "security_group_id").to_string();
    assert_eq!(
        group_ingress(&ec2, &sg).await,
        BTreeSet::from([
            ("-1".to_string(), None, sg.clone()),
            ssh("10.1.0.0/16"),
            ssh("10.0.0.0/16"),
        ])
    );

    // Create again: nothing new.
    p.create_workspace().await.unwrap();
    assert_eq!(inventory(&ec2, ws).await, created);
    assert_eq!(live_peerings(&ec2, ws).await, peerings);
    assert_eq!(vpc_tables(&ec2, &working).await, tables);

    // peering_firewall_allow_ssh_only: false opens every TCP port to the working VPC;
    // peering_firewall_allow_working_subnet: false closes it.
    let all_ports = workspace(
        &moto,
        ws,
        peering_options(&working, json!({"peering_firewall_allow_ssh_only": false})),
    )
    .await;
    all_ports.update_workspace().await.unwrap();
    assert_eq!(
        group_ingress(&ec2, &sg).await,
        BTreeSet::from([
            ("-1".to_string(), None, sg.clone()),
            ssh("10.1.0.0/16"),
            ("tcp".to_string(), Some(0), "10.0.0.0/16".to_string()),
        ])
    );
    let closed = workspace(
        &moto,
        ws,
        peering_options(&working, json!({"peering_firewall_allow_working_subnet": false})),
    )
    .await;
    closed.update_workspace().await.unwrap();
    assert_eq!(
        group_ingress(&ec2, &sg).await,
        BTreeSet::from([("-1".to_string(), None, sg.clone()), ssh("10.1.0.0/16")])
    );
    p.update_workspace().await.unwrap();
    assert!(group_ingress(&ec2, &sg).await.contains(&ssh("10.0.0.0/16")));

    // A route removed behind the workspace's back is missing, and create puts it back.
    let main = working_tables.iter().next().unwrap().clone();
    ec2.delete_route()
        .route_table_id(&main)
        .destination_cidr_block("10.1.0.0/16")
        .send()
        .await
        .unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: vec!["vpc-peering".into()]
        }
    );
    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    assert_eq!(vpc_tables(&ec2, &working).await, tables);

    // Delete removes the routes in the working VPC and the peering, and leaves the
    // working VPC as it was.
    p.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert_empty(&inventory(&ec2, ws).await);
    assert!(iam_inventory(&moto, ws).await.is_empty());
    assert!(
        live_peerings(&ec2, ws).await.is_empty(),
        "the peering is still there"
    );
    let left = vpc_tables(&ec2, &working).await;
    assert_eq!(left.keys().cloned().collect::<BTreeSet<_>>(), working_tables);
    for (id, routes) in &left {
        assert!(
            routes.iter().all(|(_, via)| via.is_none()),
            "working table {id} keeps a route through the peering: {routes:?}"
        );
        assert!(routes.contains(&("10.0.0.0/16".to_string(), None)));
    }
    let vpcs = ec2.describe_vpcs().send().await.unwrap();
    assert!(vpcs.vpcs().iter().all(|v| v.vpc_id() != Some(vpc.as_str())));
    assert!(vpcs.vpcs().iter().any(|v| v.vpc_id() == Some(working.as_str())));
    // Deleting again succeeds.
    p.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_peering_is_accepted_and_routed_by_a_rerun() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let ws = "halfpeered";
    let (working, _) = working_vpc(&ec2).await;
    let dead_url = format!("http://127.0.0.1:{}/", free_port());
    let options = peering_options(&working, json!({}));
    let provider = |fault: &FailAction| {
        let fault = fault.clone();
        let moto_url = moto.url.clone();
        let options = options.clone();
        async move {
            let sdk = sdk_config(&moto_url).await;
            AwsWorkspaceProvider::from_client_configs(
                ws,
                aws_sdk_ec2::config::Builder::from(&sdk).interceptor(fault),
                aws_sdk_iam::config::Builder::from(&sdk),
                aws_sdk_s3::config::Builder::from(&sdk),
                settings(&moto_url),
                options,
            )
            .unwrap()
        }
    };

    // The connection is made but not accepted.
    let accept = FailAction {
        action: "AcceptVpcPeeringConnection",
        armed: Arc::new(AtomicBool::new(true)),
        dead_url: dead_url.clone(),
    };
    let p = provider(&accept).await;
    let e = p.create_workspace().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert_eq!(e.context_value("step"), Some("vpc-peering"), "{e}");
    assert_eq!(
        e.context_value("resource"),
        Some("cloudtik-halfpeered-vpc-peering-connection"),
        "{e}"
    );
    assert_eq!(e.context_value("call"), Some("AcceptVpcPeeringConnection"), "{e}");
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Incomplete {
            missing: vec!["vpc-peering".into(), "head-role".into(), "worker-role".into()]
        }
    );
    let pending = live_peerings(&ec2, ws).await;
    assert_eq!(pending.values().collect::<Vec<_>>(), vec!["pending-acceptance"]);
    let info = p.workspace_info().await.unwrap();
    assert_eq!(info["vpc_peering"]["status"], json!("pending-acceptance"));

    // The re-run accepts that connection (no second one) and adds the routes.
    accept.armed.store(false, Ordering::SeqCst);
    p.create_workspace().await.unwrap();
    assert_eq!(
        p.workspace_existence().await.unwrap(),
        WorkspaceExistence::Completed
    );
    let active = live_peerings(&ec2, ws).await;
    assert_eq!(
        active.keys().collect::<Vec<_>>(),
        pending.keys().collect::<Vec<_>>()
    );
    assert_eq!(active.values().collect::<Vec<_>>(), vec!["active"]);
    let pcx = active.keys().next().unwrap().clone();
    for (id, routes) in vpc_tables(&ec2, &working).await {
        assert!(
            routes.contains(&("10.1.0.0/16".to_string(), Some(pcx.clone()))),
            "working table {id}: {routes:?}"
        );
    }

    // A delete that fails at the peering connection has removed the routes to it; the
    // next delete finishes.
    let delete = FailAction {
        action: "DeleteVpcPeeringConnection",
        armed: Arc::new(AtomicBool::new(true)),
        dead_url,
    };
    let q = provider(&delete).await;
    let e = q
        .delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.context_value("step"), Some("vpc-peering"), "{e}");
    assert_eq!(e.context_value("call"), Some("DeleteVpcPeeringConnection"), "{e}");
    for (id, routes) in vpc_tables(&ec2, &working).await {
        assert!(
            routes.iter().all(|(_, via)| via.is_none()),
            "working table {id}: {routes:?}"
        );
    }
    assert_eq!(live_peerings(&ec2, ws).await, active);
    delete.armed.store(false, Ordering::SeqCst);
    q.delete_workspace(DeleteWorkspaceOptions::default())
        .await
        .unwrap();
    assert_eq!(
        q.workspace_existence().await.unwrap(),
        WorkspaceExistence::NotExist
    );
    assert!(live_peerings(&ec2, ws).await.is_empty());
    assert_empty(&inventory(&ec2, ws).await);
}
