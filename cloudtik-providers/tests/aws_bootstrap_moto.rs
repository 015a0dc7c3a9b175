//! Cluster bootstrap from an AWS workspace against moto (harness: `tests/moto`, see the
//! docs of `aws_moto.rs`; with `CI=true` a missing moto fails instead of skipping): the
//! node types get the workspace's subnets, security group, instance profiles and the
//! cluster's key pair, and nodes launched with them land there.
#![cfg(feature = "aws")]

mod moto;

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{Filter, Instance};
use cloudtik_core::config::ClusterConfig;
use cloudtik_core::{ErrorKind, LaunchRequest, NodeProvider, Tags, WorkspaceProvider};
use cloudtik_providers::aws::{
    AwsClusterBootstrap, AwsNodeProvider, AwsSettings, AwsWorkspaceOptions, AwsWorkspaceProvider,
    key_pair_name,
};
use cloudtik_providers::provider_config::AwsProviderConfig;
use moto::{CallLog, Moto, raw_client, sdk_config, settings, start_moto};
use serde_json::{Value, json};

/// The cluster's public key (made with `ssh-keygen -t ed25519`).
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII80T4WbiRbvsCITP1J26Ole8qs4CbWbc1DXxNfD3g4V cloudtik-cluster";
/// Another key.
const OTHER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ9nM3mgaW1JdW8tlsJCUF0sIb/O/4xbx8VrEAJrjxXS other";
/// moto's Deep Learning AMI (owner 898082745236), picked by `image_owners`/`image_name`.
const DLAMI: &str = "ami-dca37ea5";

fn options() -> AwsWorkspaceOptions {
    AwsWorkspaceOptions::default()
        .with_timeouts(
            Duration::from_secs(20),
            Duration::from_secs(2),
            Duration::from_millis(20),
        )
        .with_iam_propagation_wait(Duration::ZERO)
}

async fn workspace(moto: &Moto, name: &str) -> AwsWorkspaceProvider {
    AwsWorkspaceProvider::from_sdk_config(name, &sdk_config(&moto.url).await, settings(&moto.url), options())
        .unwrap()
}

async fn create_workspace(moto: &Moto, name: &str) -> AwsWorkspaceProvider {
    let ws = workspace(moto, name).await;
    ws.create_workspace().await.unwrap();
    ws
}

/// A cluster config on moto with a head type and the node types of `node_types` (YAML
/// lines under `available_node_types`), the public key written to `dir`.
fn cluster_config(
    moto: &Moto,
    dir: &Path,
    cluster: &str,
    ws: &str,
    extra_provider: &str,
    node_types: &str,
) -> ClusterConfig {
    let key_file = dir.join("id_ed25519.pub");
    std::fs::write(&key_file, format!("{PUBLIC_KEY}\n")).unwrap();
    let text = format!(
        "cluster_name: {cluster}\nworkspace_name: {ws}\n\
         provider:\n  type: aws\n  region: us-east-1\n  endpoint_url: {url}\n{extra_provider}\
         auth:\n  ssh_user: ubuntu\n  ssh_private_key: {private}\n  ssh_public_key: {public}\n\
         head_node_type: head\navailable_node_types:\n\
         \x20 head:\n    node_config: {{InstanceType: t3.micro}}\n{node_types}",
        url = moto.url,
        private = dir.join("id_ed25519").display(),
        public = key_file.display(),
    );
    cloudtik_providers::config_loader()
        .load_cluster_str("cluster.yaml", &text)
        .unwrap()
}

/// A bootstrap whose EC2 calls are logged in `log`.
async fn logged_bootstrap(moto: &Moto, config: &ClusterConfig, log: &CallLog) -> AwsClusterBootstrap {
    let sdk = sdk_config(&moto.url).await;
    let ec2 = aws_sdk_ec2::config::Builder::from(&sdk).interceptor(log.clone());
    let nodes = AwsNodeProvider::from_ec2_config(&config.cluster_name, ec2, settings(&moto.url)).unwrap();
    AwsClusterBootstrap::new(workspace(moto, &config.workspace_name).await, nodes)
}

fn node_config(config: &ClusterConfig, node_type: &str) -> Value {
    Value::Object(config.available_node_types[node_type].node_config.clone())
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

async fn describe_instance(ec2: &Client, id: &str) -> Instance {
    let answer = ec2.describe_instances().instance_ids(id).send().await.unwrap();
    answer.reservations()[0].instances()[0].clone()
}

async fn key_pairs(ec2: &Client) -> Vec<(String, Option<String>)> {
    let answer = ec2
        .describe_key_pairs()
        .include_public_key(true)
        .send()
        .await
        .unwrap();
    answer
        .key_pairs()
        .iter()
        .map(|k| {
            (
                k.key_name().unwrap().to_string(),
                k.public_key().map(str::to_string),
            )
        })
        .collect()
}

/// Bootstrap fills every node type from the workspace and the cluster's key; a second
/// run gives the same config and imports nothing; nodes launched with the filled
/// configs are in the workspace's subnets, with its security group, the head or worker
/// profile and the key pair, on the image `image_owners`/`image_name` pick.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_ties_node_types_to_the_workspace_and_nodes_land_there() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = create_workspace(&moto, "boot").await;
    let info = ws.workspace_info().await.unwrap();
    let public = ids(&info["public_subnets"]);
    let private = ids(&info["private_subnets"]);
    let sg = info["security_group_id"].as_str().unwrap().to_string();
    let head_arn = info["head_instance_profile_arn"].as_str().unwrap().to_string();
    let worker_arn = info["worker_instance_profile_arn"].as_str().unwrap().to_string();
    assert_eq!((public.len(), private.len()), (1, 2));

    let load = || {
        cluster_config(
            &moto,
            dir.path(),
            "spark",
            "boot",
            "  image_owners: ['898082745236']\n  image_name: 'Deep Learning AMI Ubuntu*'\n",
            "  worker:\n    min_workers: 1\n    node_config: {InstanceType: t3.micro}\n",
        )
    };
    let mut config = load();
    let log = CallLog::default();
    logged_bootstrap(&moto, &config, &log)
        .await
        .bootstrap(&mut config)
        .await
        .unwrap();
    assert_eq!(log.count("ImportKeyPair"), 1);
    assert_eq!(log.count("DescribeKeyPairs"), 1);
    assert_eq!(log.count("DescribeSubnets"), 0, "no user subnets to check");

    let key_name = key_pair_name("spark", PUBLIC_KEY).unwrap();
    let head = node_config(&config, "head");
    let worker = node_config(&config, "worker");
    // Private subnets: the one in the public subnet's zone first.
    let public_zone = info["public_subnets"][0]["availability_zone"].clone();
    let first_private = info["private_subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["availability_zone"] == public_zone)
        .map(|s| s["id"].as_str().unwrap().to_string());
    if let Some(first) = first_private {
        assert_eq!(worker["SubnetIds"][0], json!(first));
    }
    let mut worker_subnets: Vec<String> = serde_json::from_value(worker["SubnetIds"].clone()).unwrap();
    worker_subnets.sort();
    let mut expected = private.clone();
    expected.sort();
    assert_eq!(worker_subnets, expected);
    assert_eq!(
        head,
        json!({
            "InstanceType": "t3.micro",
            "SubnetIds": public,
            "SecurityGroupIds": [sg],
            "IamInstanceProfile": {"Arn": head_arn},
            "KeyName": key_name,
        })
    );
    assert_eq!(worker["SecurityGroupIds"], json!([sg]));
    assert_eq!(worker["IamInstanceProfile"], json!({"Arn": worker_arn}));
    assert_eq!(worker["KeyName"], json!(key_name));
    assert!(config.available_node_types["head"].resources.is_some());
    assert_eq!(
        key_pairs(&ec2).await,
        vec![(
            key_name.clone(),
            Some(PUBLIC_KEY.rsplit_once(' ').unwrap().0.to_string())
        )]
    );

    // Again, through the public entry point and through a logged one: the same config,
    // no new import.
    let mut again = load();
    AwsClusterBootstrap::from_sdk_config(&again, &sdk_config(&moto.url).await)
        .unwrap()
        .bootstrap(&mut again)
        .await
        .unwrap();
    assert_eq!(again, config);
    let mut third = load();
    let log = CallLog::default();
    logged_bootstrap(&moto, &third, &log)
        .await
        .bootstrap(&mut third)
        .await
        .unwrap();
    assert_eq!(third, config);
    assert_eq!(log.count("ImportKeyPair"), 0);
    assert_eq!(key_pairs(&ec2).await.len(), 1, "the key pair is imported once");

    // Launch a head and a worker with the filled configs.
    let aws: AwsProviderConfig = config.provider.parse().unwrap();
    let nodes = AwsNodeProvider::from_sdk_config(
        "spark",
        &sdk_config(&moto.url).await,
        AwsSettings::from_provider_config(&aws),
    )
    .unwrap();
    for (node_type, subnets, arn) in [("head", &public, &head_arn), ("worker", &private, &worker_arn)] {
        let outcome = nodes
            .create_nodes(&LaunchRequest::new(
                node_type,
                node_config(&config, node_type),
                Tags::new(),
                1,
            ))
            .await
            .unwrap();
        assert_eq!(outcome.nodes.len(), 1, "{:?}", outcome.shortfall);
        let instance = describe_instance(&ec2, &outcome.nodes[0].id).await;
        let subnet = instance.subnet_id().unwrap().to_string();
        assert!(
            subnets.contains(&subnet),
            "{node_type} in {subnet}, not in {subnets:?}"
        );
        assert_eq!(instance.vpc_id(), info["vpc_id"].as_str());
        let groups: Vec<&str> = instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, vec![sg.as_str()], "{node_type}");
        assert_eq!(
            instance.iam_instance_profile().and_then(|p| p.arn()),
            Some(arn.as_str()),
            "{node_type}"
        );
        assert_eq!(instance.key_name(), Some(key_name.as_str()), "{node_type}");
        assert_eq!(instance.image_id(), Some(DLAMI), "{node_type}");
    }
}

/// A workspace that does not exist, or lacks a piece, stops bootstrap with a message
/// that says to create it.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_incomplete_workspace_is_refused() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let sdk = sdk_config(&moto.url).await;

    let mut config = cluster_config(&moto, dir.path(), "c", "nowhere", "", "");
    let before = config.clone();
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.operation(), Some("bootstrap_cluster"));
    let text = e.to_string();
    assert!(
        text.contains("workspace nowhere is missing in region us-east-1"),
        "{text}"
    );
    assert!(text.contains("run `cloudtik workspace create <file>`"), "{text}");
    assert_eq!(config, before, "nothing is filled");
    assert!(key_pairs(&ec2).await.is_empty(), "no key pair is imported");

    let ws = create_workspace(&moto, "partial").await;
    let sg = ws.workspace_info().await.unwrap()["security_group_id"]
        .as_str()
        .unwrap()
        .to_string();
    ec2.delete_security_group().group_id(&sg).send().await.unwrap();
    let mut config = cluster_config(&moto, dir.path(), "c", "partial", "", "");
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(text.contains("workspace partial is incomplete"), "{text}");
    assert!(text.contains("security-group"), "{text}");
    assert!(text.contains("cloudtik workspace create"), "{text}");

    let mut nameless = cluster_config(&moto, dir.path(), "c", "partial", "", "");
    nameless.workspace_name = String::new();
    let e = AwsClusterBootstrap::from_sdk_config(&nameless, &sdk).unwrap_err();
    assert_eq!(e.location().unwrap().path, "workspace_name");
}

/// What the user set is kept but checked: subnets and groups outside the workspace's VPC,
/// unknown key pairs, and a key pair of the cluster's name holding another key are
/// refused, naming the key and the resource.
#[tokio::test(flavor = "multi_thread")]
async fn user_settings_are_kept_and_checked() {
    let Some(moto) = start_moto() else { return };
    let ec2 = raw_client(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let sdk = sdk_config(&moto.url).await;
    let ws = create_workspace(&moto, "checks").await;
    let info = ws.workspace_info().await.unwrap();
    let private = ids(&info["private_subnets"]);

    // Kept: a pinned subnet of the workspace, an existing key pair, a named profile.
    ec2.import_key_pair()
        .key_name("mine")
        .public_key_material(Blob::new(OTHER_KEY))
        .send()
        .await
        .unwrap();
    let pinned = format!(
        "  pinned:\n    node_config: {{InstanceType: t3.micro, SubnetId: {}, KeyName: mine, \
         IamInstanceProfile: {{Name: cloudtik-checks-head-profile}}}}\n",
        private[1]
    );
    let mut config = cluster_config(&moto, dir.path(), "keep", "checks", "", &pinned);
    let log = CallLog::default();
    logged_bootstrap(&moto, &config, &log)
        .await
        .bootstrap(&mut config)
        .await
        .unwrap();
    let c = node_config(&config, "pinned");
    assert_eq!(c["SubnetId"], json!(private[1]));
    assert_eq!(c.get("SubnetIds"), None);
    assert_eq!(c["KeyName"], json!("mine"));
    assert_eq!(
        c["IamInstanceProfile"],
        json!({"Name": "cloudtik-checks-head-profile"})
    );
    assert_eq!(c["SecurityGroupIds"], json!([info["security_group_id"]]));
    assert_eq!(log.count("DescribeSubnets"), 1, "the pinned subnet is checked");
    assert_eq!(
        node_config(&config, "head")["KeyName"],
        json!(key_pair_name("keep", PUBLIC_KEY).unwrap())
    );

    // A subnet and a group of the default VPC.
    let default_subnet = ec2
        .describe_subnets()
        .filters(Filter::builder().name("default-for-az").values("true").build())
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let outside =
        format!("  w:\n    node_config: {{InstanceType: t3.micro, SubnetIds: [{default_subnet}]}}\n");
    let mut config = cluster_config(&moto, dir.path(), "keep", "checks", "", &outside);
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert_eq!(
        e.location().unwrap().path,
        "available_node_types.w.node_config.SubnetIds"
    );
    assert!(e.to_string().contains(&default_subnet), "{e}");
    assert!(e.to_string().contains("not in the VPC"), "{e}");

    let default_group = ec2
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values("default").build())
        .send()
        .await
        .unwrap()
        .security_groups()
        .iter()
        .find(|g| g.vpc_id() != info["vpc_id"].as_str())
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let outside =
        format!("  w:\n    node_config: {{InstanceType: t3.micro, SecurityGroupIds: [{default_group}]}}\n");
    let mut config = cluster_config(&moto, dir.path(), "keep", "checks", "", &outside);
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(
        e.location().unwrap().path,
        "available_node_types.w.node_config.SecurityGroupIds"
    );

    let unknown = "  w:\n    node_config: {InstanceType: t3.micro, KeyName: nonesuch}\n";
    let mut config = cluster_config(&moto, dir.path(), "keep", "checks", "", unknown);
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(
        e.location().unwrap().path,
        "available_node_types.w.node_config.KeyName"
    );
    assert!(e.to_string().contains("EC2 has no key pair nonesuch"), "{e}");

    // Another key under the cluster key's name.
    let clash_name = key_pair_name("clash", PUBLIC_KEY).unwrap();
    ec2.import_key_pair()
        .key_name(&clash_name)
        .public_key_material(Blob::new(OTHER_KEY))
        .send()
        .await
        .unwrap();
    let mut config = cluster_config(&moto, dir.path(), "clash", "checks", "", "");
    let e = AwsClusterBootstrap::from_sdk_config(&config, &sdk)
        .unwrap()
        .bootstrap(&mut config)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("EC2 key pair {clash_name}")), "{text}");
    assert!(text.contains("another public key"), "{text}");
    assert!(text.contains("aws ec2 delete-key-pair"), "{text}");
}
